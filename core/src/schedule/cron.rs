//! A cron expression in an IANA time zone: parsed once (croner), asked for
//! the next occurrence after an instant. Five fields (`0 3 * * *`), six with
//! seconds first (`*/1 * * * * *`), seven with a year, and the `@daily`
//! nicknames are accepted.

use crate::error::{Error, Result};
use crate::time::Timestamp;
use chrono_tz::Tz;
use std::str::FromStr;

/// Longest expression or zone name read (anything longer is refused before
/// it is parsed).
const MAX_EXPRESSION: usize = 256;
const MAX_ZONE: usize = 64;

/// The zone used when a schedule names none.
pub const DEFAULT_ZONE: &str = "UTC";

#[derive(Clone, Debug)]
pub struct Cron {
    expression: String,
    zone: Tz,
    cron: croner::Cron,
}

impl Cron {
    /// Parses `expression` for `zone` (an IANA name such as
    /// `America/New_York`). Refuses an expression that never fires.
    pub fn parse(expression: &str, zone: &str) -> Result<Cron> {
        let zone = parse_zone(zone)?;
        let text = expression.trim();
        if text.is_empty() || text.len() > MAX_EXPRESSION {
            return Err(Error::invalid(format!(
                "a cron expression is 1 to {MAX_EXPRESSION} characters, such as `0 3 * * *` (minute hour day month weekday) or `*/5 * * * * *` (with seconds first)"
            )));
        }
        let cron = croner::Cron::from_str(text).map_err(|e| {
            Error::invalid(format!(
                "invalid cron expression `{text}`: {e}; use 5 fields (minute hour day month weekday) or 6 with seconds first"
            ))
        })?;
        let parsed = Cron {
            expression: text.to_string(),
            zone,
            cron,
        };
        Ok(parsed)
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn zone(&self) -> &str {
        self.zone.name()
    }

    /// The first occurrence strictly after `after` (whole seconds: an
    /// occurrence in the same second as `after` is not after it), or `None`
    /// if there is none within croner's search horizon.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let utc = chrono::DateTime::from_timestamp_micros(after.micros())?;
        let local = utc.with_timezone(&self.zone);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        Some(Timestamp::from_micros(next.timestamp_micros()))
    }
}

/// An IANA zone name, case as in the database (`Europe/Paris`, `UTC`).
pub fn parse_zone(zone: &str) -> Result<Tz> {
    if zone.is_empty() || zone.len() > MAX_ZONE {
        return Err(Error::invalid(format!(
            "unknown time zone `{zone}`: use an IANA name such as `UTC` or `Europe/Paris`"
        )));
    }
    Tz::from_str(zone).map_err(|_| {
        Error::invalid(format!(
            "unknown time zone `{zone}`: use an IANA name such as `UTC` or `Europe/Paris`"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).expect("time")
    }

    fn next(expr: &str, zone: &str, after: &str) -> String {
        Cron::parse(expr, zone)
            .expect("parses")
            .next_after(at(after))
            .expect("fires")
            .to_rfc3339_z()
    }

    #[test]
    fn five_and_six_fields() {
        let t = "2026-01-01T10:00:00Z";
        assert_eq!(next("0 3 * * *", "UTC", t), "2026-01-02T03:00:00.000000Z");
        assert_eq!(next("0 0 2 * * *", "UTC", t), "2026-01-02T02:00:00.000000Z");
        assert_eq!(next("* * * * * *", "UTC", t), "2026-01-01T10:00:01.000000Z");
        assert_eq!(
            next("*/5 * * * *", "UTC", "2026-01-01T10:00:00.5Z"),
            "2026-01-01T10:05:00.000000Z"
        );
        assert_eq!(next("@daily", "UTC", t), "2026-01-02T00:00:00.000000Z");
        // In a zone: 03:00 in Paris (UTC+1 in winter) is 02:00 UTC.
        assert_eq!(
            next("0 3 * * *", "Europe/Paris", t),
            "2026-01-02T02:00:00.000000Z"
        );
    }

    #[test]
    fn dst_in_new_york() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT. A 02:30 job runs once, at 03:00 EDT.
        let z = "America/New_York";
        assert_eq!(
            next("30 2 * * *", z, "2026-03-07T12:00:00Z"),
            "2026-03-08T07:00:00.000000Z"
        );
        assert_eq!(
            next("30 2 * * *", z, "2026-03-08T07:00:00Z"),
            "2026-03-09T06:30:00.000000Z"
        );
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST. A 01:30 job runs once (EDT).
        assert_eq!(
            next("30 1 * * *", z, "2026-10-31T12:00:00Z"),
            "2026-11-01T05:30:00.000000Z"
        );
        assert_eq!(
            next("30 1 * * *", z, "2026-11-01T05:30:00Z"),
            "2026-11-02T06:30:00.000000Z"
        );
    }

    #[test]
    fn bad_input() {
        for (expr, zone, words) in [
            ("not a cron", "UTC", "invalid cron expression"),
            ("61 * * * *", "UTC", "invalid cron expression"),
            ("", "UTC", "cron expression is 1 to"),
            ("* * *", "UTC", "invalid cron expression"),
            (
                "0 3 * * *",
                "Mars/Olympus",
                "unknown time zone `Mars/Olympus`",
            ),
            ("0 3 * * *", "", "unknown time zone"),
        ] {
            let e = Cron::parse(expr, zone).expect_err(expr);
            assert_eq!(e.status(), 400);
            assert!(e.message.contains(words), "{expr}: {}", e.message);
        }
    }
}
