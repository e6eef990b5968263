//! The event payloads ekoDB's WebSocket (spec B6) and SSE (spec C2) feeds
//! share: a record change (`MutationNotification` / `mutation`), a schema
//! change, and a resume reset.

use super::Notice;
use crate::engine::record::{Record, RecordOut};
use crate::realtime::events::{Change, Event, EventPos};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use std::borrow::Cow;

/// The payload of one event, ready to serialise in any format.
pub enum Payload<'a> {
    Mutation(MutationPayload<'a>),
    Schema {
        collection: &'a str,
        version: u32,
        primary_key_alias: &'a str,
    },
}

impl<'a> Payload<'a> {
    pub fn of(event: &'a Event<'a>) -> Payload<'a> {
        match &event.change {
            Change::Mutation {
                collection,
                pk,
                event: kind,
                items,
            } => Payload::Mutation(MutationPayload {
                collection,
                event: kind,
                pk,
                items,
                timestamp: event.at.to_rfc3339(),
                pos: event.pos,
            }),
            Change::SchemaChanged {
                collection,
                version,
                primary_key_alias,
                ..
            } => Payload::Schema {
                collection,
                version: *version,
                primary_key_alias,
            },
        }
    }
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Mutation(m) => m.serialize(s),
            Payload::Schema {
                collection,
                version,
                primary_key_alias,
            } => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("collection", collection)?;
                m.serialize_entry("version", version)?;
                m.serialize_entry("primary_key_alias", primary_key_alias)?;
                m.end()
            }
        }
    }
}

/// The `MutationNotification` payload (spec B6), shared by WebSocket and SSE.
pub struct MutationPayload<'a> {
    pub collection: &'a str,
    pub event: &'a str,
    pub pk: &'a str,
    pub items: &'a [(&'a str, Option<Cow<'a, Record>>)],
    pub timestamp: String,
    pub pos: EventPos,
}

type Items<'a> = [(&'a str, Option<Cow<'a, Record>>)];

impl Serialize for MutationPayload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Ids<'a, 'b>(&'b Items<'a>);
        impl Serialize for Ids<'_, '_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for (id, _) in self.0 {
                    seq.serialize_element(id)?;
                }
                seq.end()
            }
        }
        struct Records<'a, 'b>(&'b str, &'b Items<'a>);
        impl Serialize for Records<'_, '_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let with: Vec<RecordOut<'_>> = self
                    .1
                    .iter()
                    .filter_map(|(id, r)| r.as_deref().map(|r| RecordOut::new(self.0, id, r)))
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

/// The `SubscriptionReset` payload: where live events continue.
#[derive(Serialize)]
pub struct ResetPayload<'a> {
    pub collection: &'a str,
    pub reason: &'a str,
    pub resume_from: String,
    pub last_event_id: String,
}

impl<'a> ResetPayload<'a> {
    pub fn of(notice: &'a Notice<'a>) -> Option<ResetPayload<'a>> {
        match notice {
            Notice::Reset {
                collection,
                upto,
                reason,
            } => Some(ResetPayload {
                collection,
                reason,
                resume_from: EventPos {
                    lsn: *upto,
                    idx: u32::MAX,
                }
                .to_string(),
                last_event_id: upto.to_string(),
            }),
            Notice::Overflowed => None,
        }
    }
}

/// What an overflowed subscriber is told before it is cut off.
pub const OVERFLOW_MESSAGE: &str = "subscriber too slow: events were queued beyond the outbound limit; reconnect and resume from your last event id";
