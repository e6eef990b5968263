//! Change events: derived from a committed log batch, so a live subscriber and
//! one resuming from the log see exactly the same events in the same order.

use crate::engine::mutation::{Batch, Mutation};
use crate::engine::record::{Record, RecordOut};
use crate::ids::Lsn;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// Where an event sits in the stream: its batch's LSN and its index within the
/// batch. Rendered as `42` (index 0) or `42:1`; this is the SSE `id:` and the
/// resume token (`Last-Event-ID`, WebSocket `resume_from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventPos {
    pub lsn: Lsn,
    pub idx: u32,
}

impl EventPos {
    pub fn parse(text: &str) -> Option<EventPos> {
        let text = text.trim();
        let (lsn, idx) = match text.split_once(':') {
            Some((l, i)) => (l, i.parse().ok()?),
            None => (text, 0),
        };
        Some(EventPos {
            lsn: Lsn(lsn.parse().ok()?),
            idx,
        })
    }
}

impl fmt::Display for EventPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.idx == 0 {
            write!(f, "{}", self.lsn)
        } else {
            write!(f, "{}:{}", self.lsn, self.idx)
        }
    }
}

/// One change, borrowed from a decoded batch.
#[derive(Debug)]
pub enum Change<'a> {
    /// Records inserted, updated or deleted in one collection. A deleted record
    /// comes with its last contents when the log has them (soft deletes), not for
    /// TTL expiry.
    Mutation {
        collection: &'a str,
        event: &'static str,
        items: Vec<(&'a str, Option<Cow<'a, Record>>)>,
    },
    SchemaChanged {
        collection: &'a str,
        version: u32,
        primary_key_alias: &'a str,
        /// The collection was created by the first write into it, in the same
        /// batch: not news to that collection's data subscribers.
        implicit: bool,
    },
}

impl Change<'_> {
    pub fn collection(&self) -> &str {
        match self {
            Change::Mutation { collection, .. } | Change::SchemaChanged { collection, .. } => {
                collection
            }
        }
    }
}

/// The changes of a batch, in order; consecutive writes of one kind to one
/// collection (a batch insert) form one event.
pub fn changes<'a>(batch: &'a Batch<'_>) -> Vec<Change<'a>> {
    let mut out: Vec<Change<'a>> = Vec::new();
    for (i, m) in batch.mutations.iter().enumerate() {
        let (collection, event, item): (&str, &'static str, (&str, Option<Cow<'a, Record>>)) =
            match m {
                Mutation::Put {
                    collection,
                    id,
                    record,
                    insert,
                } => (
                    collection,
                    if *insert { "insert" } else { "update" },
                    (id, Some(record.to_record())),
                ),
                Mutation::Restore {
                    collection,
                    id,
                    record,
                } => (collection, "insert", (id, Some(record.to_record()))),
                Mutation::Remove {
                    collection,
                    id,
                    trash,
                } => (
                    collection,
                    "delete",
                    (id, trash.as_ref().map(|(r, _)| r.to_record())),
                ),
                Mutation::SetSchema { collection, schema } => {
                    let implicit = schema.fields.is_empty()
                        && matches!(batch.mutations.get(i + 1),
                            Some(Mutation::Put { collection: c, .. }) if c == collection);
                    out.push(Change::SchemaChanged {
                        collection,
                        version: schema.version,
                        primary_key_alias: &schema.primary_key_alias,
                        implicit,
                    });
                    continue;
                }
                _ => continue,
            };
        if let Some(Change::Mutation {
            collection: c,
            event: e,
            items,
        }) = out.last_mut()
        {
            if *c == collection && *e == event {
                items.push(item);
                continue;
            }
        }
        out.push(Change::Mutation {
            collection,
            event,
            items: vec![item],
        });
    }
    out
}

/// Whether a record matches a subscription filter (`filter_field` equals
/// `filter_value`, compared as text). Without the record (TTL expiry) the event
/// is delivered: it cannot be ruled out.
pub fn filter_matches(
    pk: &str,
    id: &str,
    record: Option<&Record>,
    field: &str,
    value: &str,
) -> bool {
    if field == pk || field == "id" {
        return id == value;
    }
    match record {
        None => true,
        Some(r) => r.lookup(field).is_some_and(|v| v.render() == value),
    }
}

/// The `MutationNotification` payload (spec B6), shared by WebSocket and SSE.
pub struct MutationPayload<'a> {
    pub collection: &'a str,
    pub event: &'a str,
    pub pk: &'a str,
    pub items: &'a [(&'a str, Option<&'a Record>)],
    pub timestamp: String,
    pub pos: EventPos,
}

impl Serialize for MutationPayload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Ids<'a>(&'a [(&'a str, Option<&'a Record>)]);
        impl Serialize for Ids<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for (id, _) in self.0 {
                    seq.serialize_element(id)?;
                }
                seq.end()
            }
        }
        struct Records<'a>(&'a str, &'a [(&'a str, Option<&'a Record>)]);
        impl Serialize for Records<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let with: Vec<RecordOut<'_>> = self
                    .1
                    .iter()
                    .filter_map(|(id, r)| r.map(|r| RecordOut::new(self.0, id, r)))
                    .collect();
                match with.as_slice() {
                    [one] if self.1.len() == 1 => one.serialize(s),
                    _ => with.serialize(s),
                }
            }
        }
        let has_records = self.items.iter().any(|(_, r)| r.is_some());
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("collection", self.collection)?;
        m.serialize_entry("event", self.event)?;
        m.serialize_entry("record_ids", &Ids(self.items))?;
        if has_records {
            m.serialize_entry("records", &Records(self.pk, self.items))?;
        }
        m.serialize_entry("timestamp", &self.timestamp)?;
        m.serialize_entry("event_id", &self.pos.to_string())?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        for text in ["0", "42", "42:3"] {
            assert_eq!(EventPos::parse(text).unwrap().to_string(), text);
        }
        assert!(EventPos::parse("x").is_none());
        assert!(EventPos::parse("1:y").is_none());
        assert!(EventPos::parse("42").unwrap() < EventPos::parse("42:1").unwrap());
        assert!(EventPos::parse("42:9").unwrap() < EventPos::parse("43").unwrap());
    }
}
