//! The subscription hub: who listens to which collection, and a bounded queue of
//! encoded events per connection. Each event is encoded once per wire format and
//! filter, and the same `Bytes` is queued for every matching subscriber.
//!
//! Events wait in the queue until their batch is durable (the connection checks
//! the LSN). A connection whose queue passes its byte budget is marked overflowed:
//! it gets an error and is closed, instead of the server's memory growing.

use super::events::{changes, filter_matches, Change, EventPos, MutationPayload};
use crate::engine::mutation::Batch;
use crate::engine::Engine;
use crate::ids::{ConnId, Lsn};
use crate::wire::sse;
use bytes::Bytes;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// How a connection wants its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    WsJson,
    WsMsgPack,
    Sse,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Filter {
    pub field: String,
    pub value: String,
}

#[derive(Debug)]
struct Sub {
    conn: ConnId,
    filter: Option<Filter>,
}

/// A subscriber fell further behind than its byte budget and was cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflowed;

/// One queued, encoded event (for WebSocket: a whole message payload).
#[derive(Clone, Debug)]
pub struct Queued {
    pub lsn: Lsn,
    pub pos: EventPos,
    pub bytes: Bytes,
}

/// One connection's queue of encoded events. Shared: the hub pushes under the
/// server lock, the connection drains with only this queue's own lock, so fanning
/// an event out to thousands of subscribers never serialises them on the server.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    limit_bytes: usize,
}

#[derive(Debug, Default)]
struct OutboxState {
    items: VecDeque<Queued>,
    bytes: usize,
    overflowed: bool,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an event; returns false if this made (or found) the queue overflowed.
    fn push(&self, item: Queued) -> bool {
        let mut q = self.lock();
        if q.overflowed {
            return false;
        }
        // An empty queue always takes one event, however large: the budget is
        // for backlog, and a single event must be deliverable.
        if q.bytes > 0 && q.bytes + item.bytes.len() > self.limit_bytes {
            q.overflowed = true;
            q.items.clear();
            q.bytes = 0;
            return false;
        }
        q.bytes += item.bytes.len();
        q.items.push_back(item);
        true
    }

    /// Takes queued events up to about `max_bytes` (at least one). Fails if the
    /// subscriber fell further behind than its budget.
    pub fn drain(&self, max_bytes: usize) -> Result<Vec<Queued>, Overflowed> {
        let mut q = self.lock();
        if q.overflowed {
            return Err(Overflowed);
        }
        let mut out = Vec::new();
        let mut taken = 0;
        while let Some(front) = q.items.front() {
            if taken > 0 && taken + front.bytes.len() > max_bytes {
                break;
            }
            taken += front.bytes.len();
            q.bytes -= front.bytes.len();
            out.extend(q.items.pop_front());
        }
        Ok(out)
    }

    /// Whether events (or an overflow) are waiting.
    pub fn is_pending(&self) -> bool {
        let q = self.lock();
        q.overflowed || !q.items.is_empty()
    }
}

#[derive(Debug)]
struct Registration {
    proto: Proto,
    outbox: Arc<Outbox>,
    /// Typed clients (that said Hello) also get every schema change.
    schema_events: bool,
}

#[derive(Debug)]
pub struct Hub {
    by_collection: HashMap<Box<str>, Vec<Sub>>,
    queues: HashMap<ConnId, Registration>,
    /// Connections to wake once an LSN is durable.
    wake: BTreeMap<Lsn, Vec<ConnId>>,
    limit_bytes: usize,
}

impl Hub {
    pub fn new(limit_bytes: usize) -> Self {
        Hub {
            by_collection: HashMap::new(),
            queues: HashMap::new(),
            wake: BTreeMap::new(),
            limit_bytes: limit_bytes.max(64 * 1024),
        }
    }

    /// Registers a streaming connection and hands back its outbox.
    pub fn open(&mut self, conn: ConnId, proto: Proto) -> Arc<Outbox> {
        let limit_bytes = self.limit_bytes;
        self.queues
            .entry(conn)
            .or_insert_with(|| Registration {
                proto,
                outbox: Arc::new(Outbox {
                    state: Mutex::new(OutboxState::default()),
                    limit_bytes,
                }),
                schema_events: false,
            })
            .outbox
            .clone()
    }

    pub fn set_proto(&mut self, conn: ConnId, proto: Proto) {
        if let Some(q) = self.queues.get_mut(&conn) {
            q.proto = proto;
        }
    }

    pub fn want_schema_events(&mut self, conn: ConnId) {
        if let Some(q) = self.queues.get_mut(&conn) {
            q.schema_events = true;
        }
    }

    /// Forgets a connection: its subscriptions and queue.
    pub fn close(&mut self, conn: ConnId) {
        if self.queues.remove(&conn).is_none() {
            return;
        }
        self.by_collection.retain(|_, subs| {
            subs.retain(|s| s.conn != conn);
            !subs.is_empty()
        });
    }

    /// Subscribes (or re-subscribes with a new filter) a connection to a collection.
    pub fn subscribe(&mut self, conn: ConnId, collection: &str, filter: Option<Filter>) {
        let subs = self.by_collection.entry(collection.into()).or_default();
        subs.retain(|s| s.conn != conn);
        subs.push(Sub { conn, filter });
    }

    pub fn unsubscribe(&mut self, conn: ConnId, collection: &str) -> bool {
        let Some(subs) = self.by_collection.get_mut(collection) else {
            return false;
        };
        let before = subs.len();
        subs.retain(|s| s.conn != conn);
        let found = subs.len() != before;
        if subs.is_empty() {
            self.by_collection.remove(collection);
        }
        found
    }

    pub fn filter_of(&self, conn: ConnId, collection: &str) -> Option<Option<Filter>> {
        self.by_collection
            .get(collection)?
            .iter()
            .find(|s| s.conn == conn)
            .map(|s| s.filter.clone())
    }

    /// Whether publishing a batch could reach anyone.
    pub fn is_idle(&self) -> bool {
        self.by_collection.is_empty() && !self.queues.values().any(|q| q.schema_events)
    }

    pub fn subscriber_count(&self) -> usize {
        self.by_collection.values().map(Vec::len).sum()
    }

    /// Queues the events of a committed batch for every matching subscriber.
    pub fn publish(&mut self, lsn: Lsn, batch: &Batch, engine: &Engine) {
        let timestamp = batch.at.to_rfc3339();
        for (idx, change) in changes(batch).into_iter().enumerate() {
            let pos = EventPos {
                lsn,
                idx: idx as u32,
            };
            let targets: Vec<(ConnId, Option<Filter>)> = match &change {
                Change::SchemaChanged {
                    collection,
                    implicit,
                    ..
                } => {
                    let mut t: Vec<(ConnId, Option<Filter>)> = self
                        .queues
                        .iter()
                        .filter(|(_, q)| q.schema_events && q.proto != Proto::Sse)
                        .map(|(c, _)| (*c, None))
                        .collect();
                    // A collection created by its first write is announced only
                    // to those who asked for schema events: data subscribers
                    // expect the insert's own notification next.
                    let subs = self.by_collection.get(*collection).filter(|_| !*implicit);
                    for s in subs.into_iter().flatten() {
                        if !t.iter().any(|(c, _)| *c == s.conn) {
                            t.push((s.conn, None));
                        }
                    }
                    t
                }
                Change::Mutation { collection, .. } => match self.by_collection.get(*collection) {
                    Some(subs) => subs.iter().map(|s| (s.conn, s.filter.clone())).collect(),
                    None => continue,
                },
            };
            let mut cache: HashMap<(Proto, Option<Filter>), Option<Bytes>> = HashMap::new();
            for (conn, filter) in targets {
                let Some(proto) = self.queues.get(&conn).map(|q| q.proto) else {
                    continue;
                };
                let encoded = cache
                    .entry((proto, filter.clone()))
                    .or_insert_with(|| {
                        encode(&change, proto, filter.as_ref(), engine, &timestamp, pos)
                    })
                    .clone();
                if let Some(bytes) = encoded {
                    self.push(conn, Queued { lsn, pos, bytes });
                }
            }
        }
    }

    fn push(&mut self, conn: ConnId, item: Queued) {
        let Some(q) = self.queues.get(&conn) else {
            return;
        };
        let lsn = item.lsn;
        // An overflowed subscriber is woken at once to be told and closed.
        let at = if q.outbox.push(item) { lsn } else { Lsn::ZERO };
        let list = self.wake.entry(at).or_default();
        if list.last() != Some(&conn) {
            list.push(conn);
        }
    }

    /// Whether a connection has events (or an overflow) waiting in its outbox.
    pub fn has_pending(&self, conn: ConnId) -> bool {
        self.queues
            .get(&conn)
            .is_some_and(|q| q.outbox.is_pending())
    }

    /// Connections with events that became deliverable now that `durable` is.
    pub fn take_ready(&mut self, durable: Lsn) -> Vec<ConnId> {
        let later = self.wake.split_off(&durable.next());
        let ready = std::mem::replace(&mut self.wake, later);
        let mut conns: Vec<ConnId> = ready.into_values().flatten().collect();
        conns.sort_unstable();
        conns.dedup();
        conns
    }
}

/// Encodes one change for one wire format and filter; `None` if the filter
/// leaves nothing to send.
pub fn encode(
    change: &Change<'_>,
    proto: Proto,
    filter: Option<&Filter>,
    engine: &Engine,
    timestamp: &str,
    pos: EventPos,
) -> Option<Bytes> {
    match change {
        Change::SchemaChanged {
            collection,
            version,
            primary_key_alias,
            ..
        } => {
            let payload = json!({"collection": collection, "version": version, "primary_key_alias": primary_key_alias});
            Some(match proto {
                Proto::Sse => sse::event(
                    Some(&pos.to_string()),
                    "schema_changed",
                    &serde_json::to_vec(&payload).ok()?,
                ),
                Proto::WsJson => Bytes::from(
                    serde_json::to_vec(&json!({"type": "SchemaChanged", "payload": payload}))
                        .ok()?,
                ),
                Proto::WsMsgPack => Bytes::from(
                    rmp_serde::to_vec_named(&json!({"type": "SchemaChanged", "payload": payload}))
                        .ok()?,
                ),
            })
        }
        Change::Mutation {
            collection,
            event,
            items,
        } => {
            let pk = engine.pk_name(collection);
            let kept: Vec<(&str, Option<&crate::engine::record::Record>)> = items
                .iter()
                .map(|(id, r)| (*id, r.as_deref()))
                .filter(|(id, r)| {
                    filter.is_none_or(|f| filter_matches(pk, id, *r, &f.field, &f.value))
                })
                .collect();
            if kept.is_empty() {
                return None;
            }
            let payload = MutationPayload {
                collection,
                event,
                pk,
                items: &kept,
                timestamp: timestamp.to_string(),
                pos,
            };
            #[derive(serde::Serialize)]
            struct Envelope<'a> {
                r#type: &'static str,
                payload: &'a MutationPayload<'a>,
            }
            let envelope = Envelope {
                r#type: "MutationNotification",
                payload: &payload,
            };
            Some(match proto {
                Proto::Sse => sse::event(
                    Some(&pos.to_string()),
                    "mutation",
                    &serde_json::to_vec(&payload).ok()?,
                ),
                Proto::WsJson => Bytes::from(serde_json::to_vec(&envelope).ok()?),
                Proto::WsMsgPack => Bytes::from(rmp_serde::to_vec_named(&envelope).ok()?),
            })
        }
    }
}
