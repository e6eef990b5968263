//! One schedule: what the client said (its free-form keys, kept as sent),
//! the cron expression and zone, whether it is enabled, when it runs next,
//! and its last runs. Pure: every change takes `now`.
//!
//! A run's life: `Started` (accepted, still running elsewhere) ->
//! `Succeeded(summary)` | `Failed(message)`; a run that ends at once is
//! recorded with its end outcome directly.

use super::cron::{Cron, DEFAULT_ZONE};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as J};
use std::collections::VecDeque;

/// Runs kept per schedule (older ones are dropped).
pub const MAX_RUNS: usize = 20;

/// Keys the server owns: what a client sends under these names is read
/// (`cron`, `timezone`, `enabled`) or ignored, never stored as sent.
const OWNED: &[&str] = &[
    "id",
    "created_at",
    "updated_at",
    "status",
    "enabled",
    "cron",
    "cron_expression",
    "timezone",
    "next_execution",
    "last_execution",
    "run_count",
    "runs",
    "last_run",
];

/// How a run ended, or that it is still going.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Done; a summary of what it did.
    Succeeded(J),
    /// Done, with an error.
    Failed(String),
    /// Accepted; it goes on asynchronously and is finished later
    /// (`Schedule::finish_run`).
    Started,
}

impl Outcome {
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Failed(_) => "failed",
            Outcome::Started => "started",
        }
    }
}

/// What started a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    /// Its cron expression came due.
    Cron,
    /// `POST /api/schedules/{id}/trigger`.
    Manual,
    /// The catch-up run at startup for runs missed while the server was down.
    Missed,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Cron => "cron",
            Trigger::Manual => "manual",
            Trigger::Missed => "missed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// 1 for a schedule's first run, then counting up.
    pub number: u64,
    pub trigger: Trigger,
    /// The occurrence it ran for (none for a manual run).
    pub scheduled_for: Option<Timestamp>,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: String,
    /// The client's own keys (`name`, `description`, `function_label`,
    /// `parameters`, `action`, …), as sent.
    pub document: Map<String, J>,
    pub cron: String,
    /// The key the client named the expression with (`cron` or
    /// `cron_expression`); both are echoed.
    #[serde(default = "cron_key", skip_serializing_if = "is_cron_key")]
    pub cron_key: String,
    pub timezone: String,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub next_execution: Option<Timestamp>,
    // What a schedule that never ran would store is left out of its record
    // (a server may hold many thousands of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_execution: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run_count: u64,
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub runs: VecDeque<Run>,
}

fn cron_key() -> String {
    "cron".into()
}

fn is_cron_key(key: &str) -> bool {
    key == "cron"
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn opt_str<'a>(o: &'a Map<String, J>, k: &str) -> Result<Option<&'a str>> {
    match o.get(k) {
        None | Some(J::Null) => Ok(None),
        Some(J::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::invalid(format!("`{k}` must be a string"))),
    }
}

/// The expression a body names, and under which key (`None`: neither key).
fn cron_of(o: &Map<String, J>) -> Result<Option<(&str, &'static str)>> {
    match (opt_str(o, "cron")?, opt_str(o, "cron_expression")?) {
        (Some(a), Some(b)) if a.trim() != b.trim() => Err(Error::invalid(
            "`cron` and `cron_expression` name the same thing; send one of them (or both equal)",
        )),
        (Some(a), _) => Ok(Some((a, "cron"))),
        (None, Some(b)) => Ok(Some((b, "cron_expression"))),
        (None, None) => Ok(None),
    }
}

fn opt_bool(o: &Map<String, J>, k: &str) -> Result<Option<bool>> {
    match o.get(k) {
        None | Some(J::Null) => Ok(None),
        Some(J::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::invalid(format!("`{k}` must be true or false"))),
    }
}

/// The next occurrence, or an error saying the expression never fires.
fn first_after(cron: &Cron, now: Timestamp) -> Result<Timestamp> {
    cron.next_after(now).ok_or_else(|| {
        Error::invalid(format!(
            "cron expression `{}` never fires (in {})",
            cron.expression(),
            cron.zone()
        ))
    })
}

impl Schedule {
    /// A new schedule from a client's document (`POST /api/schedules`).
    pub fn create(id: String, body: &Map<String, J>, now: Timestamp) -> Result<Schedule> {
        let (expr, key) = cron_of(body)?.ok_or_else(|| {
            Error::invalid(
                "`cron` (or `cron_expression`) is required: a cron expression such as `0 3 * * *`",
            )
        })?;
        let zone = opt_str(body, "timezone")?.unwrap_or(DEFAULT_ZONE);
        let cron = Cron::parse(expr, zone)?;
        let enabled = opt_bool(body, "enabled")?.unwrap_or(true);
        let next = first_after(&cron, now)?;
        let mut s = Schedule {
            id,
            document: Map::new(),
            cron: cron.expression().to_string(),
            cron_key: key.to_string(),
            timezone: cron.zone().to_string(),
            enabled,
            created_at: now,
            updated_at: now,
            next_execution: enabled.then_some(next),
            last_execution: None,
            run_count: 0,
            runs: VecDeque::new(),
        };
        s.merge_document(body);
        Ok(s)
    }

    fn merge_document(&mut self, body: &Map<String, J>) {
        for (k, v) in body {
            if OWNED.contains(&k.as_str()) || v.is_null() {
                continue;
            }
            self.document.insert(k.clone(), v.clone());
        }
    }

    /// A partial update (`PUT /api/schedules/{id}`): the keys given replace
    /// the stored ones (`null` counts as absent). A change of expression,
    /// zone or `enabled` recomputes the next execution from `now`.
    pub fn update(&mut self, patch: &Map<String, J>, now: Timestamp) -> Result<()> {
        let named = cron_of(patch)?;
        let expr = named.map_or(self.cron.as_str(), |(e, _)| e);
        let zone = opt_str(patch, "timezone")?.unwrap_or(self.timezone.as_str());
        let cron = Cron::parse(expr, zone)?;
        let enabled = opt_bool(patch, "enabled")?.unwrap_or(self.enabled);
        let changed = cron.expression() != self.cron
            || cron.zone() != self.timezone
            || enabled != self.enabled;
        let next = first_after(&cron, now)?;
        if let Some((_, key)) = named {
            self.cron_key = key.to_string();
        }
        self.cron = cron.expression().to_string();
        self.timezone = cron.zone().to_string();
        self.enabled = enabled;
        if changed || (enabled && self.next_execution.is_none()) {
            self.next_execution = enabled.then_some(next);
        }
        self.merge_document(patch);
        self.updated_at = now;
        Ok(())
    }

    /// Pauses (`false`) or resumes (`true`); resuming computes the next
    /// execution from `now`.
    pub fn set_enabled(&mut self, enabled: bool, now: Timestamp) -> Result<()> {
        let mut patch = Map::new();
        patch.insert("enabled".into(), J::Bool(enabled));
        self.update(&patch, now)
    }

    pub fn parsed_cron(&self) -> Result<Cron> {
        Cron::parse(&self.cron, &self.timezone)
    }

    pub fn status(&self) -> &'static str {
        if self.enabled {
            "active"
        } else {
            "paused"
        }
    }

    /// The stored function it runs: `function_label`, or the label an
    /// `action` object names (`function_label`, `label` or `script_id`).
    pub fn function_label(&self) -> Option<&str> {
        if let Some(J::String(l)) = self.document.get("function_label") {
            return Some(l);
        }
        let action = self.document.get("action")?.as_object()?;
        ["function_label", "label", "script_id"]
            .iter()
            .find_map(|k| action.get(*k).and_then(J::as_str))
    }

    /// The parameters it passes: `parameters`, or the `action`'s.
    pub fn parameters(&self) -> Option<J> {
        self.document
            .get("parameters")
            .or_else(|| self.document.get("action")?.as_object()?.get("parameters"))
            .filter(|v| !v.is_null())
            .cloned()
    }

    /// Records a run that began at `now` and returns its number.
    pub fn record_run(
        &mut self,
        trigger: Trigger,
        scheduled_for: Option<Timestamp>,
        outcome: Outcome,
        now: Timestamp,
    ) -> u64 {
        self.run_count += 1;
        let finished_at = (outcome != Outcome::Started).then_some(now);
        self.runs.push_back(Run {
            number: self.run_count,
            trigger,
            scheduled_for,
            started_at: now,
            finished_at,
            outcome,
        });
        while self.runs.len() > MAX_RUNS {
            self.runs.pop_front();
        }
        self.last_execution = Some(now);
        self.run_count
    }

    /// A run that was `Started` has ended; `false` if it is no longer in the
    /// history (or had ended already).
    pub fn finish_run(&mut self, number: u64, outcome: Outcome, now: Timestamp) -> bool {
        match self
            .runs
            .iter_mut()
            .find(|r| r.number == number && r.outcome == Outcome::Started)
        {
            Some(run) => {
                run.outcome = outcome;
                run.finished_at = Some(now);
                true
            }
            None => false,
        }
    }

    /// After a run for its occurrence: the next one strictly after `now`
    /// (one run however late the timer was).
    pub fn advance(&mut self, now: Timestamp) {
        self.next_execution = if self.enabled {
            self.parsed_cron().ok().and_then(|c| c.next_after(now))
        } else {
            None
        };
    }

    /// Whether its stored next execution passed while the server was down.
    pub fn missed_by(&self, now: Timestamp) -> bool {
        self.enabled && self.next_execution.is_some_and(|t| t <= now)
    }

    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_stored(text: &str) -> Option<Schedule> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: J) -> Map<String, J> {
        match v {
            J::Object(o) => o,
            _ => panic!("object"),
        }
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).expect("time")
    }

    #[test]
    fn create_update_pause_resume() {
        let now = at("2026-01-01T10:00:30Z");
        let body = obj(
            json!({"name": "n", "cron_expression": "0 * * * *", "id": "x", "status": "weird", "function_label": "f"}),
        );
        let mut s = Schedule::create("s1".into(), &body, now).unwrap();
        assert_eq!(s.cron_key, "cron_expression");
        assert_eq!(s.timezone, "UTC");
        assert_eq!(s.next_execution, Some(at("2026-01-01T11:00:00Z")));
        assert_eq!(
            s.document.keys().collect::<Vec<_>>(),
            ["function_label", "name"]
        );
        assert_eq!(s.function_label(), Some("f"));
        s.set_enabled(false, now).unwrap();
        assert_eq!((s.status(), s.next_execution), ("paused", None));
        let later = at("2026-01-01T12:10:00Z");
        s.set_enabled(true, later).unwrap();
        assert_eq!(s.next_execution, Some(at("2026-01-01T13:00:00Z")));
        // A name change keeps the next execution; a new expression moves it.
        s.update(&obj(json!({"name": "m", "cron": "30 * * * *"})), later)
            .unwrap();
        assert_eq!(s.next_execution, Some(at("2026-01-01T12:30:00Z")));
        assert_eq!(
            (s.cron_key.as_str(), s.document["name"].clone()),
            ("cron", json!("m"))
        );
        let back = Schedule::from_stored(&s.to_stored()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn a_fresh_schedule_stores_only_what_it_has() {
        let now = at("2026-01-01T10:00:00Z");
        for body in [
            json!({"cron": "0 0 1 1 *", "function_label": "f"}),
            json!({"cron_expression": "0 0 1 1 *", "function_label": "f"}),
        ] {
            let mut s = Schedule::create("s".into(), &obj(body), now).unwrap();
            let text = s.to_stored();
            for absent in ["\"runs\"", "run_count", "last_execution"] {
                assert!(!text.contains(absent), "{text}");
            }
            assert_eq!(Schedule::from_stored(&text).unwrap(), s);
            // Once it ran, its history is stored and read back.
            s.record_run(Trigger::Manual, None, Outcome::Started, now);
            assert_eq!(Schedule::from_stored(&s.to_stored()).unwrap(), s);
        }
    }

    #[test]
    fn history_keeps_the_last_runs() {
        let now = at("2026-01-01T10:00:00Z");
        let mut s = Schedule::create("s".into(), &obj(json!({"cron": "* * * * *"})), now).unwrap();
        for i in 0..25 {
            let n = s.record_run(Trigger::Cron, None, Outcome::Failed(format!("{i}")), now);
            assert_eq!(n, i + 1);
        }
        assert_eq!(s.runs.len(), MAX_RUNS);
        assert_eq!(s.runs.front().unwrap().number, 6);
        assert_eq!(s.run_count, 25);
        let n = s.record_run(Trigger::Manual, None, Outcome::Started, now);
        assert!(s.runs.back().unwrap().finished_at.is_none());
        assert!(s.finish_run(n, Outcome::Succeeded(json!({"ok": 1})), now));
        assert!(!s.finish_run(n, Outcome::Failed("again".into()), now));
    }

    #[test]
    fn bad_documents() {
        let now = at("2026-01-01T10:00:00Z");
        for (body, words) in [
            (
                json!({"name": "x"}),
                "`cron` (or `cron_expression`) is required",
            ),
            (json!({"cron": 5}), "`cron` must be a string"),
            (json!({"cron": "nope"}), "invalid cron expression"),
            (
                json!({"cron": "0 3 * * *", "timezone": "Nowhere/City"}),
                "unknown time zone",
            ),
            (
                json!({"cron": "0 3 * * *", "enabled": "yes"}),
                "`enabled` must be true or false",
            ),
            (
                json!({"cron": "0 3 * * *", "cron_expression": "0 4 * * *"}),
                "send one of them",
            ),
            (json!({"cron": "0 0 30 2 *"}), "never fires"),
        ] {
            let e =
                Schedule::create("s".into(), &obj(body.clone()), now).expect_err(&body.to_string());
            assert_eq!(e.status(), 400);
            assert!(e.message.contains(words), "{body}: {}", e.message);
        }
    }
}
