//! When each enabled schedule is due next: an index over the stored
//! schedules, so the server keeps one timer (the earliest) however many
//! schedules there are. It is a cache: the stored schedule is the truth,
//! checked again when an entry fires.

use crate::time::Timestamp;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// Each id is held once, shared by both maps (a server may hold many
/// thousands of schedules).
#[derive(Debug, Default)]
pub struct Due {
    at: HashMap<Arc<str>, Timestamp>,
    by_time: BTreeSet<(Timestamp, Arc<str>)>,
    /// Schedules whose run was missed while the server was down: their next
    /// run is a catch-up run (trigger `missed`).
    missed: HashSet<String>,
}

impl Due {
    /// Sets when `id` is due next (`None`: not at all, paused or deleted).
    pub fn set(&mut self, id: &str, when: Option<Timestamp>) {
        let key = match self.at.remove_entry(id) {
            Some((key, old)) => {
                self.by_time.remove(&(old, key.clone()));
                key
            }
            None => Arc::from(id),
        };
        if let Some(t) = when {
            self.by_time.insert((t, key.clone()));
            self.at.insert(key, t);
        } else {
            self.missed.remove(id);
        }
    }

    /// Marks `id` as missed while the server was down and due at `now`.
    pub fn set_missed(&mut self, id: &str, now: Timestamp) {
        self.set(id, Some(now));
        self.missed.insert(id.to_string());
    }

    /// The earliest due time (what the server's one timer is armed for).
    pub fn next(&self) -> Option<Timestamp> {
        self.by_time.first().map(|(t, _)| *t)
    }

    pub fn get(&self, id: &str) -> Option<Timestamp> {
        self.at.get(id).copied()
    }

    /// Takes every schedule due by `now`, earliest first, each with whether
    /// its run is a catch-up for one missed while the server was down.
    pub fn take_due(&mut self, now: Timestamp) -> Vec<(String, bool)> {
        let mut due = Vec::new();
        while let Some((t, _)) = self.by_time.first() {
            if *t > now {
                break;
            }
            let Some((_, id)) = self.by_time.pop_first() else {
                break;
            };
            self.at.remove(&id);
            let missed = self.missed.remove(&*id);
            due.push((id.to_string(), missed));
        }
        due
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_moves() {
        let t = Timestamp::from_secs;
        let mut d = Due::default();
        d.set("a", Some(t(30)));
        d.set("b", Some(t(10)));
        d.set_missed("c", t(20));
        assert_eq!(d.next(), Some(t(10)));
        d.set("b", Some(t(40)));
        assert_eq!(d.next(), Some(t(20)));
        assert_eq!(d.take_due(t(5)), vec![]);
        assert_eq!(
            d.take_due(t(30)),
            vec![("c".to_string(), true), ("a".to_string(), false)]
        );
        d.set("b", None);
        assert!(d.is_empty());
        assert_eq!(d.next(), None);
    }
}
