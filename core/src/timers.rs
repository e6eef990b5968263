//! One timer table (quinn's `TimerTable`): every deadline an owner has, keyed
//! by what it is for, in one place. The owner reports the earliest
//! (`next`), the runtime arms one timer for it, and when it fires the owner
//! takes what is due (`expired`) and handles each kind in one `match`.
//!
//! The server keeps one for TTL expiry, abandoned transactions and outbound
//! calls (schedules and chat turns join it); each connection keeps one for its
//! idle and heartbeat deadlines. Time comes in as an argument, never from a
//! clock.

use crate::time::Timestamp;
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

#[derive(Debug)]
pub struct TimerTable<K> {
    at: HashMap<K, Timestamp>,
    by_time: BTreeSet<(Timestamp, K)>,
}

impl<K> Default for TimerTable<K> {
    fn default() -> Self {
        TimerTable {
            at: HashMap::new(),
            by_time: BTreeSet::new(),
        }
    }
}

impl<K: Copy + Ord + Hash> TimerTable<K> {
    /// Arms `kind` at `when`, or disarms it with `None`.
    pub fn set(&mut self, kind: K, when: Option<Timestamp>) {
        match when {
            Some(t) => {
                if let Some(old) = self.at.insert(kind, t) {
                    if old == t {
                        return;
                    }
                    self.by_time.remove(&(old, kind));
                }
                self.by_time.insert((t, kind));
            }
            None => self.cancel(kind),
        }
    }

    pub fn cancel(&mut self, kind: K) {
        if let Some(old) = self.at.remove(&kind) {
            self.by_time.remove(&(old, kind));
        }
    }

    pub fn get(&self, kind: K) -> Option<Timestamp> {
        self.at.get(&kind).copied()
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Timestamp> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Disarms and returns every timer due by `now`, earliest first.
    pub fn expired(&mut self, now: Timestamp) -> Vec<K> {
        let mut due = Vec::new();
        while let Some(&(t, kind)) = self.by_time.first() {
            if t > now {
                break;
            }
            self.by_time.pop_first();
            self.at.remove(&kind);
            due.push(kind);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    enum T {
        A,
        B,
        C(u8),
    }

    #[test]
    fn fires_in_order_and_rearming_moves_a_timer() {
        let at = Timestamp::from_secs;
        let mut t = TimerTable::default();
        t.set(T::A, Some(at(30)));
        t.set(T::B, Some(at(10)));
        t.set(T::C(1), Some(at(20)));
        assert_eq!(t.next(), Some(at(10)));
        t.set(T::B, Some(at(40)));
        assert_eq!(t.next(), Some(at(20)));
        assert_eq!(t.expired(at(5)), vec![]);
        assert_eq!(t.expired(at(30)), vec![T::C(1), T::A]);
        t.set(T::B, None);
        assert_eq!(t.next(), None);
        assert_eq!(t.expired(at(100)), vec![]);
    }
}
