//! A task's status machine (spec F3), lenient like goals':
//!
//! ```text
//! active --start--> running --succeed--> active
//!                           --fail--> active, or failed once
//!                                     `max_consecutive_failures` is reached
//! (any) --pause--> paused --resume--> active
//! ```
//!
//! A task is due when it is `active` and its `next_run` is at or before the
//! time asked about. `next_run` is the next occurrence of its cron
//! expression (`cron` or `schedule`, in `timezone`, default UTC) after its
//! last change, or its `due_at` until it has run once, or what `resume`
//! was given.

use super::{keep, Doc};
use crate::error::{Error, Result};
use crate::schedule::cron::{Cron, DEFAULT_ZONE};
use crate::time::Timestamp;
use serde_json::Value as J;

fn set(doc: &mut Doc, key: &str, value: &str) {
    doc.insert(key.to_string(), J::String(value.to_string()));
}

fn stamp(doc: &mut Doc, key: &str, now: Timestamp) {
    doc.insert(key.to_string(), J::String(now.to_rfc3339_z()));
}

fn count(doc: &Doc, key: &str) -> u64 {
    doc.get(key).and_then(J::as_u64).unwrap_or(0)
}

/// A time a client sent (`due_at`, `next_run`), checked.
fn time_of(doc: &Doc, key: &str) -> Result<Option<Timestamp>> {
    match doc.get(key) {
        None | Some(J::Null) => Ok(None),
        Some(J::String(s)) => Timestamp::parse_rfc3339(s).map(Some).ok_or_else(|| {
            Error::invalid(format!(
                "`{key}` must be an RFC 3339 time such as `2026-03-21T00:00:00Z`"
            ))
        }),
        Some(_) => Err(Error::invalid(format!(
            "`{key}` must be an RFC 3339 time string"
        ))),
    }
}

/// The task's cron expression, parsed (`None`: it has none).
fn cron(doc: &Doc) -> Result<Option<Cron>> {
    let expr = ["cron", "schedule"]
        .iter()
        .find_map(|k| doc.get(*k).filter(|v| !v.is_null()));
    let expr = match expr {
        None => return Ok(None),
        Some(J::String(s)) => s,
        Some(_) => {
            return Err(Error::invalid(
                "a task's `cron` (or `schedule`) must be a string",
            ))
        }
    };
    let zone = match doc.get("timezone") {
        None | Some(J::Null) => DEFAULT_ZONE,
        Some(J::String(z)) => z,
        Some(_) => return Err(Error::invalid("`timezone` must be a string")),
    };
    Cron::parse(expr, zone).map(Some)
}

/// Recomputes `next_run` from `now`.
fn refresh(doc: &mut Doc, now: Timestamp) -> Result<()> {
    let due_at = time_of(doc, "due_at")?;
    let next = match cron(doc)? {
        Some(c) => c.next_after(now),
        None if count(doc, "run_count") == 0 => due_at,
        None => None,
    };
    doc.insert(
        "next_run".into(),
        next.map_or(J::Null, |t| J::String(t.to_rfc3339_z())),
    );
    Ok(())
}

/// A new task: `active`, no runs, its first `next_run`.
pub fn init(doc: &mut Doc, now: Timestamp) -> Result<()> {
    set(doc, "status", "active");
    doc.insert("run_count".into(), J::from(0));
    doc.insert("consecutive_failures".into(), J::from(0));
    time_of(doc, "next_run")?;
    if doc.get("next_run").is_none_or(J::is_null) {
        refresh(doc, now)?;
    }
    Ok(())
}

/// After a partial update: an explicit `next_run` wins; a new expression,
/// zone or `due_at` recomputes it.
pub fn updated(doc: &mut Doc, patch: &Doc, now: Timestamp) -> Result<()> {
    if patch.get("next_run").is_some_and(|v| !v.is_null()) {
        time_of(doc, "next_run")?;
        return Ok(());
    }
    if ["cron", "schedule", "timezone", "due_at"]
        .iter()
        .any(|k| patch.contains_key(*k))
    {
        refresh(doc, now)?;
    }
    Ok(())
}

pub fn start(doc: &mut Doc, now: Timestamp) {
    set(doc, "status", "running");
    stamp(doc, "started_at", now);
}

/// A run ended well: `output` kept, the failure streak reset.
pub fn succeed(doc: &mut Doc, body: &Doc, now: Timestamp) -> Result<()> {
    set(doc, "status", "active");
    keep(doc, "last_output", body.get("output"));
    doc.remove("last_error");
    doc.insert("run_count".into(), J::from(count(doc, "run_count") + 1));
    doc.insert("consecutive_failures".into(), J::from(0));
    stamp(doc, "last_run_at", now);
    refresh(doc, now)
}

/// A run failed: `error` kept; `failed` once the streak reaches
/// `max_consecutive_failures` (when that is a positive integer).
pub fn fail(doc: &mut Doc, body: &Doc, now: Timestamp) -> Result<()> {
    let streak = count(doc, "consecutive_failures") + 1;
    let limit = doc.get("max_consecutive_failures").and_then(J::as_u64);
    let status = if limit.is_some_and(|l| l > 0 && streak >= l) {
        "failed"
    } else {
        "active"
    };
    set(doc, "status", status);
    keep(doc, "last_error", body.get("error"));
    doc.insert("run_count".into(), J::from(count(doc, "run_count") + 1));
    doc.insert("consecutive_failures".into(), J::from(streak));
    stamp(doc, "last_run_at", now);
    refresh(doc, now)
}

pub fn pause(doc: &mut Doc, now: Timestamp) {
    set(doc, "status", "paused");
    stamp(doc, "paused_at", now);
}

/// Back to `active`, with the failure streak reset; `next_run` as given,
/// or recomputed; `reason` kept as `resume_reason`.
pub fn resume(doc: &mut Doc, body: &Doc, now: Timestamp) -> Result<()> {
    set(doc, "status", "active");
    doc.insert("consecutive_failures".into(), J::from(0));
    keep(doc, "resume_reason", body.get("reason"));
    match time_of(body, "next_run")? {
        Some(t) => {
            doc.insert("next_run".into(), J::String(t.to_rfc3339_z()));
        }
        None => refresh(doc, now)?,
    }
    Ok(())
}

/// Whether the task is due at `now`: `active` with `next_run` at or before it.
pub fn is_due(doc: &Doc, now: Timestamp) -> bool {
    doc.get("status").and_then(J::as_str) == Some("active")
        && time_of(doc, "next_run")
            .ok()
            .flatten()
            .is_some_and(|t| t <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: J) -> Doc {
        v.as_object().cloned().expect("object")
    }

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn lifecycle_and_due() {
        let now = at("2026-01-01T10:15:00Z");
        let mut t = doc(json!({"name": "t", "cron": "0 * * * *", "max_consecutive_failures": 2}));
        init(&mut t, now).unwrap();
        assert_eq!(t["next_run"], "2026-01-01T11:00:00.000000Z");
        assert!(!is_due(&t, now) && is_due(&t, at("2026-01-01T11:00:00Z")));
        // Start a task that already succeeded; fail it twice: failed.
        succeed(&mut t, &doc(json!({"output": "ok"})), now).unwrap();
        start(&mut t, now);
        assert_eq!(t["status"], "running");
        fail(&mut t, &doc(json!({"error": "e1"})), now).unwrap();
        assert_eq!(t["status"], "active");
        fail(&mut t, &doc(json!({"error": "e2"})), now).unwrap();
        assert_eq!(
            (
                t["status"].clone(),
                t["last_error"].clone(),
                t["run_count"].clone()
            ),
            (json!("failed"), json!("e2"), json!(3))
        );
        pause(&mut t, now);
        resume(
            &mut t,
            &doc(json!({"next_run": "2026-03-21T00:00:00Z", "reason": "fixed"})),
            now,
        )
        .unwrap();
        assert_eq!(
            (t["status"].clone(), t["next_run"].clone()),
            (json!("active"), json!("2026-03-21T00:00:00.000000Z"))
        );
        // A one-shot task is due at `due_at` until it has run.
        let mut once = doc(json!({"title": "once", "due_at": "2026-01-01T09:00:00Z"}));
        init(&mut once, now).unwrap();
        assert!(is_due(&once, now));
        succeed(&mut once, &Doc::new(), now).unwrap();
        assert!(!is_due(&once, at("2030-01-01T00:00:00Z")));
        for bad in [
            json!({"cron": "nope"}),
            json!({"due_at": "tomorrow"}),
            json!({"cron": "* * * * *", "timezone": "X/Y"}),
        ] {
            let mut d = doc(bad.clone());
            assert_eq!(init(&mut d, now).unwrap_err().status(), 400, "{bad}");
        }
    }
}
