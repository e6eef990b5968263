//! Change events, typed: derived from a committed log batch, so a live
//! subscriber and one resuming from the log see exactly the same events in the
//! same order. Each carries its position; the dialects encode them.

use crate::engine::mutation::{Batch, Mutation};
use crate::engine::record::Record;
use crate::ids::Lsn;
use crate::time::Timestamp;
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
        /// The collection's primary-key name, for rendering records.
        pk: &'a str,
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

/// One event: a change at its position, with its batch's commit time.
#[derive(Debug)]
pub struct Event<'a> {
    pub pos: EventPos,
    pub at: Timestamp,
    pub change: Change<'a>,
}

impl Event<'_> {
    /// The event as a subscriber with `filter` sees it: only the records that
    /// match, or nothing if none does. Schema changes pass unfiltered.
    pub fn filtered(&self, filter: &Filter) -> Option<Event<'_>> {
        let change = match &self.change {
            Change::Mutation {
                collection,
                pk,
                event,
                items,
            } => {
                let kept: Vec<(&str, Option<Cow<'_, Record>>)> = items
                    .iter()
                    .filter(|(id, r)| filter.matches(pk, id, r.as_deref()))
                    .map(|(id, r)| (*id, r.as_deref().map(Cow::Borrowed)))
                    .collect();
                if kept.is_empty() {
                    return None;
                }
                Change::Mutation {
                    collection,
                    pk,
                    event,
                    items: kept,
                }
            }
            Change::SchemaChanged {
                collection,
                version,
                primary_key_alias,
                implicit,
            } => Change::SchemaChanged {
                collection,
                version: *version,
                primary_key_alias,
                implicit: *implicit,
            },
        };
        Some(Event {
            pos: self.pos,
            at: self.at,
            change,
        })
    }
}

/// A subscription filter: every `field` equals its `value`, compared as
/// text (ekoDB subscriptions have one condition, a Lanonasis stream one per
/// `filters[key]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Filter {
    pub all: Vec<(String, String)>,
}

impl Filter {
    /// One condition: `field` equals `value`.
    pub fn equals(field: impl Into<String>, value: impl Into<String>) -> Filter {
        Filter {
            all: vec![(field.into(), value.into())],
        }
    }

    /// Whether a record passes every condition (see `filter_matches`).
    pub fn matches(&self, pk: &str, id: &str, record: Option<&Record>) -> bool {
        self.all
            .iter()
            .all(|(field, value)| filter_matches(pk, id, record, field, value))
    }
}

/// The events of the batch at `lsn`, each at its position. `pk_of` names a
/// collection's primary key.
pub fn events<'a>(
    lsn: Lsn,
    batch: &'a Batch<'_>,
    pk_of: impl Fn(&str) -> &'a str,
) -> Vec<Event<'a>> {
    changes(batch, pk_of)
        .into_iter()
        .enumerate()
        .map(|(idx, change)| Event {
            pos: EventPos {
                lsn,
                idx: idx as u32,
            },
            at: batch.at,
            change,
        })
        .collect()
}

/// The changes of a batch, in order; consecutive writes of one kind to one
/// collection (a batch insert) form one event.
fn changes<'a>(batch: &'a Batch<'_>, pk_of: impl Fn(&str) -> &'a str) -> Vec<Change<'a>> {
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
            ..
        }) = out.last_mut()
        {
            if *c == collection && *e == event {
                items.push(item);
                continue;
            }
        }
        out.push(Change::Mutation {
            collection,
            pk: pk_of(collection),
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
