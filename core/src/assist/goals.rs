//! A goal's status machine (spec F1), lenient: every action is allowed from
//! every state, because the clients' own examples approve goals never
//! completed and fail steps never started.
//!
//! ```text
//! goal:  active --complete--> pending_review --approve--> in_progress
//!        (any) --reject--> failed        (`completed` is the client's to set)
//! step:  pending --start--> in_progress --complete--> completed
//!                                       --fail--> failed
//! ```

use super::{keep, Doc};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use serde_json::{Map, Value as J};

fn set(doc: &mut Doc, key: &str, value: &str) {
    doc.insert(key.to_string(), J::String(value.to_string()));
}

fn stamp(doc: &mut Doc, key: &str, now: Timestamp) {
    doc.insert(key.to_string(), J::String(now.to_rfc3339_z()));
}

/// A new goal: status `active`, steps normalised.
pub fn init(doc: &mut Doc) -> Result<()> {
    set(doc, "status", "active");
    normalize_steps(doc)
}

/// Steps are objects with a `status` (default `pending`); a bare string is
/// taken as a step's description.
pub fn normalize_steps(doc: &mut Doc) -> Result<()> {
    let Some(steps) = doc.get_mut("steps") else {
        return Ok(());
    };
    let J::Array(items) = steps else {
        return Err(Error::invalid("`steps` must be an array"));
    };
    for item in items.iter_mut() {
        if let J::String(s) = item {
            let mut step = Map::new();
            step.insert("description".into(), J::String(std::mem::take(s)));
            *item = J::Object(step);
        }
        let J::Object(step) = item else {
            return Err(Error::invalid(
                "each step must be an object (`{\"description\": …}`) or a string",
            ));
        };
        if step.get("status").is_none_or(J::is_null) {
            step.insert("status".into(), J::String("pending".into()));
        }
    }
    Ok(())
}

/// `complete`: the goal waits for review; `summary` is kept.
pub fn complete(doc: &mut Doc, body: &Doc, now: Timestamp) {
    set(doc, "status", "pending_review");
    keep(doc, "summary", body.get("summary"));
    stamp(doc, "completed_at", now);
}

/// `approve`: work goes on (`in_progress`).
pub fn approve(doc: &mut Doc, now: Timestamp) {
    set(doc, "status", "in_progress");
    stamp(doc, "approved_at", now);
}

/// `reject`: the goal failed; `reason` is kept.
pub fn reject(doc: &mut Doc, body: &Doc, now: Timestamp) {
    set(doc, "status", "failed");
    keep(doc, "reason", body.get("reason"));
    stamp(doc, "rejected_at", now);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepAction {
    Start,
    Complete,
    Fail,
}

/// Moves step `index` (a zero-based path segment). An index that is not a
/// number, or past the last step, is a 400.
pub fn step(
    doc: &mut Doc,
    index: &str,
    action: StepAction,
    body: &Doc,
    now: Timestamp,
) -> Result<()> {
    let i: usize = index
        .parse()
        .map_err(|_| Error::invalid(format!("step index `{index}` is not a zero-based integer")))?;
    let count = doc.get("steps").and_then(J::as_array).map_or(0, Vec::len);
    let step = doc
        .get_mut("steps")
        .and_then(J::as_array_mut)
        .and_then(|s| s.get_mut(i))
        .and_then(J::as_object_mut)
        .ok_or_else(|| {
            Error::invalid(format!(
                "step index {i} is out of range: the goal has {count} step(s)"
            ))
        })?;
    let (status, key, at) = match action {
        StepAction::Start => ("in_progress", None, "started_at"),
        StepAction::Complete => ("completed", Some("result"), "completed_at"),
        StepAction::Fail => ("failed", Some("error"), "failed_at"),
    };
    step.insert("status".into(), J::String(status.into()));
    if let Some(key) = key {
        keep(step, key, body.get(key));
    }
    stamp(step, at, now);
    Ok(())
}

/// Whether `q` occurs in the goal's title or description, ignoring case
/// (an empty `q` matches every goal).
pub fn matches(doc: &Doc, q: &str) -> bool {
    let q = q.trim().to_lowercase();
    q.is_empty()
        || ["title", "description"].iter().any(|k| {
            doc.get(*k)
                .and_then(J::as_str)
                .is_some_and(|t| t.to_lowercase().contains(&q))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: J) -> Doc {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn steps_and_lenient_lifecycle() {
        let now = Timestamp::from_secs(1_767_225_600);
        let mut g = doc(
            json!({"title": "Ship", "steps": ["a", {"description": "b", "status": "completed"}]}),
        );
        init(&mut g).unwrap();
        assert_eq!(g["status"], "active");
        assert_eq!(
            g["steps"][0],
            json!({"description": "a", "status": "pending"})
        );
        assert_eq!(g["steps"][1]["status"], "completed");
        // Fail a step never started; approve a goal never completed.
        step(
            &mut g,
            "0",
            StepAction::Fail,
            &doc(json!({"error": "boom"})),
            now,
        )
        .unwrap();
        assert_eq!(
            (
                g["steps"][0]["status"].clone(),
                g["steps"][0]["error"].clone()
            ),
            (json!("failed"), json!("boom"))
        );
        approve(&mut g, now);
        assert_eq!(g["status"], "in_progress");
        reject(&mut g, &doc(json!({"reason": "no"})), now);
        assert_eq!(
            (g["status"].clone(), g["reason"].clone()),
            (json!("failed"), json!("no"))
        );
        for bad in ["2", "-1", "x"] {
            let e = step(&mut g, bad, StepAction::Start, &Map::new(), now).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
        assert!(matches(&g, "SHI") && !matches(&g, "nothing"));
        let mut bad = doc(json!({"steps": [1]}));
        assert_eq!(init(&mut bad).unwrap_err().status(), 400);
    }
}
