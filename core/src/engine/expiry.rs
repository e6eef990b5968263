//! Expiry: records and KV entries with a TTL, and trash past its retention.
//! Expired data is invisible at once; the sweep removes it for good (logged),
//! a bounded amount per call, when `next_deadline` comes.

use super::collection::Collection;
use super::mutation::Mutation;
use super::Engine;
use crate::time::Timestamp;
use std::borrow::Cow;
use std::time::Duration;

/// How long deleted records stay restorable.
pub const TRASH_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Upper bound of records removed per sweep, so one sweep never stalls the server.
const SWEEP_BATCH: usize = 5_000;

impl Engine {
    /// When the next record, KV entry or trash entry expires.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let records = self
            .collections
            .values()
            .filter_map(Collection::next_expiry)
            .min();
        let trash = self
            .collections
            .values()
            .filter_map(Collection::oldest_trash)
            .min()
            .map(|t| t.saturating_add(TRASH_RETENTION));
        let kv = self.kv_expiry.first().map(|(t, _)| *t);
        [records, trash, kv].into_iter().flatten().min()
    }

    /// Removes what has expired by `now` (bounded per call; `next_deadline` says
    /// when to come back). Expired records are gone for good, not trashed.
    pub fn sweep(&mut self, now: Timestamp) -> Vec<(String, Vec<String>)> {
        let mut removed = Vec::new();
        let mut budget = SWEEP_BATCH;
        let names: Vec<Box<str>> = self.collections.keys().cloned().collect();
        for name in names {
            let Some(c) = self.collections.get(&name) else {
                continue;
            };
            let ids = c.expired_ids(now, budget);
            budget -= ids.len();
            let cutoff = Timestamp::from_micros(
                now.micros()
                    .saturating_sub(TRASH_RETENTION.as_micros() as i64),
            );
            let purge = c.trash_older_than(cutoff, budget);
            budget -= purge.len();
            let mut gone = Vec::with_capacity(ids.len());
            for id in ids {
                self.log(Mutation::Remove {
                    collection: Cow::Borrowed(&name),
                    id: Cow::Borrowed(&id),
                    trash: None,
                });
                gone.push(id.into_string());
            }
            for id in purge {
                self.log(Mutation::TrashPurge {
                    collection: Cow::Borrowed(&name),
                    id: Cow::Borrowed(&id),
                });
            }
            if !gone.is_empty() {
                removed.push((name.into_string(), gone));
            }
            if budget == 0 {
                return removed;
            }
        }
        let expired_keys: Vec<Box<str>> = self
            .kv_expiry
            .iter()
            .take_while(|(t, _)| *t <= now)
            .take(budget)
            .map(|(_, k)| k.clone())
            .collect();
        for key in expired_keys {
            self.log(Mutation::KvRemove {
                key: Cow::Borrowed(&key),
            });
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;
    use serde_json::json;

    #[test]
    fn trash_is_kept_for_its_retention_then_purged() {
        let mut e = Engine::new(1);
        let t0 = Timestamp::from_secs(1_700_000_000);
        e.insert("c", json!({"id": "a", "n": 1}), t0).unwrap();
        e.insert("c", json!({"id": "b", "n": 2}), t0).unwrap();
        e.delete("c", "a", t0).unwrap();
        let later = t0.saturating_add(Duration::from_secs(3600));
        e.delete("c", "b", later).unwrap();
        e.commit(later);
        // The sweep is due when the oldest trash entry reaches its retention.
        assert_eq!(e.next_deadline(), Some(t0.saturating_add(TRASH_RETENTION)));
        let due = t0.saturating_add(TRASH_RETENTION + Duration::from_secs(1));
        e.sweep(due);
        assert!(e.commit(due).is_some(), "the purge is logged");
        assert!(!e.restore("c", "a", due).unwrap(), "past retention: gone");
        assert!(
            e.restore("c", "b", due).unwrap(),
            "within retention: restorable"
        );
        assert_eq!(
            e.find_by_id("c", "b", due).unwrap().record.get("n"),
            Some(&Value::Integer(2))
        );
    }
}
