//! Lanonasis (seed 002, `spec/dialects.md` §5): the real-time stream
//! (`GET /api/v1/stream`, named SSE events) and the memory REST API the
//! official `@lanonasis/memory-client` writes through.
//!
//! Memories are records of an internal collection, so every memory event is
//! derived from the log like any change event: it survives a restart and a
//! stream resumed with `Last-Event-ID` replays exactly what it missed. A
//! delete leaves a tombstone for a week (who deleted, when, why) so the
//! `memory.deleted` event carries them and the memory's metadata (for
//! `filters`). Searches are reads, not log changes: the latest 1,024
//! `search.performed` events are kept in memory, and a stream that resumes
//! gets the ones it missed between the replayed changes, in id order (those
//! older than that, or from before a restart, are gone).
//!
//! Event ids are positions `<lsn>.<n>` in one order: a memory event is the
//! n-th change of batch `lsn`; a search event, heartbeat or error takes
//! `n` above 2^32 from a counter, after every batch up to `lsn`. So a
//! `Last-Event-ID` naming a heartbeat resumes after the batches that
//! heartbeat followed.

pub mod memory;
pub mod stream;

use crate::ids::Lsn;
use crate::realtime::events::EventPos;
use std::fmt;

/// Where memories are kept.
pub const MEMORIES: &str = "memories__ek0_tidepool";

/// The event types a stream may ask for (seed 002:23-32), by bit.
pub const EVENT_TYPES: [&str; 7] = [
    "memory.created",
    "memory.updated",
    "memory.deleted",
    "search.performed",
    "user.activity",
    "system.health",
    "analytics.update",
];

/// A set of event types (a stream's `events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventTypes(u8);

impl EventTypes {
    pub const ALL: EventTypes = EventTypes((1 << EVENT_TYPES.len()) - 1);

    /// The set named by `names`; every type when empty. Errs with the first
    /// unknown name.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<EventTypes, String> {
        if names.is_empty() {
            return Ok(EventTypes::ALL);
        }
        let mut bits = 0u8;
        for name in names {
            let name = name.as_ref();
            let i = EVENT_TYPES
                .iter()
                .position(|t| *t == name)
                .ok_or_else(|| name.to_string())?;
            bits |= 1 << i;
        }
        Ok(EventTypes(bits))
    }

    pub fn contains(self, name: &str) -> bool {
        EVENT_TYPES
            .iter()
            .position(|t| *t == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

/// Positions at or above this are events that are not log changes.
const EPHEMERAL: u64 = 1 << 32;

/// An event id's position: batch `lsn`, then `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedPos {
    pub lsn: Lsn,
    pub n: u64,
}

impl FeedPos {
    /// The id of the `idx`-th change of batch `pos.lsn`.
    pub fn of_change(pos: EventPos) -> FeedPos {
        FeedPos {
            lsn: pos.lsn,
            n: u64::from(pos.idx),
        }
    }

    /// The id of an event that follows every batch up to `lsn`; `counter`
    /// keeps such events in order.
    pub fn after(lsn: Lsn, counter: u64) -> FeedPos {
        FeedPos {
            lsn,
            n: EPHEMERAL.saturating_add(counter),
        }
    }

    /// Parses an id we issued (`event_42.0`, `heartbeat_42.4294967301`).
    pub fn parse(id: &str) -> Option<FeedPos> {
        let pos = id.trim().rsplit_once('_').map_or(id.trim(), |(_, p)| p);
        let (lsn, n) = pos.split_once('.')?;
        Some(FeedPos {
            lsn: Lsn(lsn.parse().ok()?),
            n: n.parse().ok()?,
        })
    }

    /// Where a log replay resumes: after this change, or after the whole
    /// batch for an event that followed it.
    pub fn resume_point(self) -> EventPos {
        EventPos {
            lsn: self.lsn,
            idx: u32::try_from(self.n).unwrap_or(u32::MAX),
        }
    }
}

impl fmt::Display for FeedPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.lsn, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_parse_and_match() {
        let t = EventTypes::parse(&["memory.created", "search.performed"]).unwrap();
        assert!(t.contains("memory.created") && t.contains("search.performed"));
        assert!(!t.contains("memory.deleted"));
        assert_eq!(EventTypes::parse::<&str>(&[]).unwrap(), EventTypes::ALL);
        assert_eq!(
            EventTypes::parse(&["memory.created", "nope"]),
            Err("nope".into())
        );
    }

    #[test]
    fn ids_order_changes_before_what_follows_their_batch() {
        let change = FeedPos::of_change(EventPos {
            lsn: Lsn(7),
            idx: 1,
        });
        let hb = FeedPos::after(Lsn(7), 0);
        let next = FeedPos::of_change(EventPos {
            lsn: Lsn(8),
            idx: 0,
        });
        assert!(change < hb && hb < next);
        for p in [change, hb, next] {
            assert_eq!(FeedPos::parse(&format!("heartbeat_{p}")), Some(p));
        }
        assert_eq!(
            hb.resume_point(),
            EventPos {
                lsn: Lsn(7),
                idx: u32::MAX
            }
        );
        assert_eq!(
            change.resume_point(),
            EventPos {
                lsn: Lsn(7),
                idx: 1
            }
        );
        assert_eq!(FeedPos::parse("event_x"), None);
    }
}
