//! Wall-clock instants as plain numbers. `core` never reads the clock: the runtime
//! passes `now` into every entry point, so tests can run on a simulated clock.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Microseconds since the Unix epoch, UTC.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const EPOCH: Timestamp = Timestamp(0);
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis.saturating_mul(1000))
    }

    pub const fn from_secs(secs: i64) -> Self {
        Timestamp(secs.saturating_mul(1_000_000))
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    pub const fn millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    pub const fn secs(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(micros))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// Parses an RFC 3339 date-time (`2026-07-14T13:45:42.98Z`, `…+02:00`).
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        // Cheap pre-check: every RFC 3339 date-time starts `dddd-dd-dd` and has a `T`.
        let b = text.as_bytes();
        if b.len() < 20 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
            return None;
        }
        let dt = chrono::DateTime::parse_from_rfc3339(text).ok()?;
        Some(Timestamp(dt.timestamp_micros()))
    }

    fn to_chrono(self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_micros(self.0).unwrap_or_default()
    }

    /// `2026-07-14T14:45:42.001156Z`: the form of a record's `ttl` field.
    pub fn to_rfc3339_z(self) -> String {
        self.to_chrono()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    /// `2026-07-14T13:45:42.982112+00:00`: the form of DateTime values and event times.
    pub fn to_rfc3339(self) -> String {
        self.to_chrono()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
    }
}

/// Parses a duration as the clients send TTLs: `"30s"`, `"5m"`, `"1h30m"`, `"2d"`,
/// `"250ms"`, or a bare number of seconds (`"3600"`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return None;
        }
        let (number, tail) = rest.split_at(digits);
        let number: u128 = number.parse().ok()?;
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let millis_per_unit: u128 = match unit {
            "ms" => 1,
            "s" | "sec" | "secs" => 1_000,
            "m" | "min" | "mins" => 60_000,
            "h" | "hr" | "hrs" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            "w" => 604_800_000,
            _ => return None,
        };
        total = total.checked_add(number.checked_mul(millis_per_unit)?)?;
        rest = tail;
    }
    u64::try_from(total).ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let check = |s: &str, ms: Option<u64>| {
            assert_eq!(parse_duration(s), ms.map(Duration::from_millis), "{s}")
        };
        check("30s", Some(30_000));
        check("5m", Some(300_000));
        check("1h30m", Some(5_400_000));
        check("2d", Some(172_800_000));
        check("250ms", Some(250));
        check("3600", Some(3_600_000));
        check("", None);
        check("1x", None);
        check("h", None);
        check("-5s", None);
        check("99999999999999999999s", None);
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-07-14T13:45:42.982112+00:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-07-14T13:45:42.982112+00:00");
        assert_eq!(t.to_rfc3339_z(), "2026-07-14T13:45:42.982112Z");
        let z = Timestamp::parse_rfc3339("2026-07-14T15:45:42.982112+02:00").unwrap();
        assert_eq!(t, z);
        assert!(Timestamp::parse_rfc3339("2026-07-14").is_none());
        assert!(Timestamp::parse_rfc3339("not a date at all, really").is_none());
    }
}
