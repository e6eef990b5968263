//! The subscription hub: who listens to which collection, and a bounded queue of
//! encoded events per connection. The hub routes; it does not encode: each
//! typed event is handed to the encoder once per codec and filter (the
//! dialects own the wire shapes), and the same `Bytes` is queued for every
//! matching subscriber.
//!
//! Events wait in the queue until their batch is durable (the connection checks
//! the LSN). A connection whose queue passes its byte budget is marked overflowed:
//! it gets an error and is closed, instead of the server's memory growing.

pub use super::events::Filter;
use super::events::{Change, Event, EventPos};
use crate::dialect::EventCodec;
use crate::ids::{ConnId, Lsn};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
struct Sub {
    conn: ConnId,
    filter: Option<Filter>,
}

/// Why a stream's outbox was cut off: it ends instead of delivering more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The subscriber fell further behind than its byte budget.
    Overflowed,
    /// The key the stream was opened with was revoked or its grants changed;
    /// the client reconnects and is checked again.
    KeyChanged,
}

/// One queued, encoded event (for WebSocket: a whole message payload).
#[derive(Clone, Debug)]
pub struct Queued {
    pub lsn: Lsn,
    pub pos: EventPos,
    pub bytes: Bytes,
    /// The last event of a chat answer: a stream opened for that answer
    /// alone ends after it.
    pub terminal: bool,
    /// The codec the bytes were encoded with (set when queued): a session
    /// that switches format (an ekoDB `Hello`) still frames what was queued
    /// before as it was encoded.
    pub codec: Option<EventCodec>,
}

/// One connection's queue of encoded events. Shared: the hub pushes under the
/// server lock, the connection drains with only this queue's own lock, so fanning
/// an event out to thousands of subscribers never serialises them on the server.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    limit_bytes: usize,
}

/// What became of an event handed to an outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pushed {
    Queued,
    /// It would pass the byte budget: the subscriber is cut off now.
    Overflowed,
    /// The stream was already ended.
    Closed,
}

#[derive(Debug, Default)]
struct OutboxState {
    items: VecDeque<Queued>,
    bytes: usize,
    cut: Option<Cut>,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an event, unless this makes (or found) the queue overflowed.
    fn push(&self, item: Queued) -> Pushed {
        let mut q = self.lock();
        if q.cut.is_some() {
            return Pushed::Closed;
        }
        // An empty queue always takes one event, however large: the budget is
        // for backlog, and a single event must be deliverable.
        if q.bytes > 0 && q.bytes + item.bytes.len() > self.limit_bytes {
            q.cut_off(Cut::Overflowed);
            return Pushed::Overflowed;
        }
        q.bytes += item.bytes.len();
        q.items.push_back(item);
        Pushed::Queued
    }

    /// Bytes queued and not yet taken.
    fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Takes queued events up to about `max_bytes` (at least one). Fails if the
    /// subscriber fell further behind than its budget.
    pub fn drain(&self, max_bytes: usize) -> Result<Vec<Queued>, Cut> {
        let mut q = self.lock();
        if let Some(cut) = q.cut {
            return Err(cut);
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

    /// Whether events (or a cut) are waiting.
    pub fn is_pending(&self) -> bool {
        let q = self.lock();
        q.cut.is_some() || !q.items.is_empty()
    }
}

impl OutboxState {
    fn cut_off(&mut self, cut: Cut) {
        self.cut.get_or_insert(cut);
        self.items.clear();
        self.bytes = 0;
    }
}

#[derive(Debug)]
struct Registration {
    codec: EventCodec,
    outbox: Arc<Outbox>,
    /// Typed clients (that said Hello) also get every schema change.
    schema_events: bool,
}

#[derive(Debug)]
pub struct Hub {
    by_collection: HashMap<Box<str>, Vec<Sub>>,
    /// Connections watching a chat's answers, by chat id.
    by_chat: HashMap<String, Vec<ConnId>>,
    /// Connections following every answer of a chat (a General Bots
    /// `subscribe`), by chat id; they stay after an answer ends.
    followers: HashMap<String, Vec<ConnId>>,
    queues: HashMap<ConnId, Registration>,
    /// Connections to wake once an LSN is durable.
    wake: BTreeMap<Lsn, Vec<ConnId>>,
    limit_bytes: usize,
    /// Subscribers cut off for overflowing, ever (`/metrics`).
    overflows: u64,
}

impl Hub {
    pub fn new(limit_bytes: usize) -> Self {
        Hub {
            by_collection: HashMap::new(),
            by_chat: HashMap::new(),
            followers: HashMap::new(),
            queues: HashMap::new(),
            wake: BTreeMap::new(),
            limit_bytes: limit_bytes.max(64 * 1024),
            overflows: 0,
        }
    }

    /// Registers a streaming connection and hands back its outbox.
    pub fn open(&mut self, conn: ConnId, codec: EventCodec) -> Arc<Outbox> {
        let limit_bytes = self.limit_bytes;
        self.queues
            .entry(conn)
            .or_insert_with(|| Registration {
                codec,
                outbox: Arc::new(Outbox {
                    state: Mutex::new(OutboxState::default()),
                    limit_bytes,
                }),
                schema_events: false,
            })
            .outbox
            .clone()
    }

    /// The connection switched formats (a WebSocket `Hello`).
    pub fn set_codec(&mut self, conn: ConnId, codec: EventCodec) {
        if let Some(q) = self.queues.get_mut(&conn) {
            q.codec = codec;
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
        for map in [&mut self.by_chat, &mut self.followers] {
            map.retain(|_, conns| {
                conns.retain(|c| *c != conn);
                !conns.is_empty()
            });
        }
    }

    /// The connection follows every answer of a chat until it unfollows.
    pub fn follow_chat(&mut self, conn: ConnId, chat_id: &str) {
        let conns = self.followers.entry(chat_id.to_string()).or_default();
        if !conns.contains(&conn) {
            conns.push(conn);
        }
    }

    /// Stops following; false if it did not follow.
    pub fn unfollow_chat(&mut self, conn: ConnId, chat_id: &str) -> bool {
        let Some(conns) = self.followers.get_mut(chat_id) else {
            return false;
        };
        let before = conns.len();
        conns.retain(|c| *c != conn);
        let found = conns.len() != before;
        if conns.is_empty() {
            self.followers.remove(chat_id);
        }
        found
    }

    pub fn follows_chat(&self, conn: ConnId, chat_id: &str) -> bool {
        self.followers
            .get(chat_id)
            .is_some_and(|c| c.contains(&conn))
    }

    /// The connection watches a chat's answer until its last event.
    pub fn watch_chat(&mut self, conn: ConnId, chat_id: &str) {
        let conns = self.by_chat.entry(chat_id.to_string()).or_default();
        if !conns.contains(&conn) {
            conns.push(conn);
        }
    }

    /// Connections watching a chat.
    pub fn chat_watchers(&self, chat_id: &str) -> &[ConnId] {
        self.by_chat.get(chat_id).map_or(&[], Vec::as_slice)
    }

    /// Queues one chat event for every watcher of its chat, encoded once per
    /// codec; after a terminal event the chat has no watchers left.
    pub fn publish_chat(
        &mut self,
        chat_id: &str,
        lsn: Lsn,
        terminal: bool,
        encode: impl Fn(EventCodec) -> Option<Bytes>,
    ) {
        let mut conns = if terminal {
            self.by_chat.remove(chat_id).unwrap_or_default()
        } else {
            self.by_chat.get(chat_id).cloned().unwrap_or_default()
        };
        for f in self.followers.get(chat_id).into_iter().flatten() {
            if !conns.contains(f) {
                conns.push(*f);
            }
        }
        let mut cache: HashMap<EventCodec, Option<Bytes>> = HashMap::new();
        for conn in conns {
            let Some(codec) = self.queues.get(&conn).map(|q| q.codec) else {
                continue;
            };
            if let Some(bytes) = cache.entry(codec).or_insert_with(|| encode(codec)).clone() {
                self.enqueue(conn, lsn, bytes, terminal);
            }
        }
    }

    /// Whether any connection's codec passes `test`.
    pub fn any_codec(&self, test: impl Fn(EventCodec) -> bool) -> bool {
        self.queues.values().any(|q| test(q.codec))
    }

    /// Queues an event that is not a change for every connection whose codec
    /// has bytes for it (encoded once per codec), deliverable once `lsn` is
    /// durable (so it follows the changes queued before it).
    pub fn broadcast(&mut self, lsn: Lsn, encode: impl Fn(EventCodec) -> Option<Bytes>) {
        let mut cache: HashMap<EventCodec, Option<Bytes>> = HashMap::new();
        let targets: Vec<(ConnId, Bytes)> = self
            .queues
            .iter()
            .filter_map(|(conn, q)| {
                let bytes = cache
                    .entry(q.codec)
                    .or_insert_with(|| encode(q.codec))
                    .clone()?;
                Some((*conn, bytes))
            })
            .collect();
        for (conn, bytes) in targets {
            self.enqueue(conn, lsn, bytes, false);
        }
    }

    /// Queues bytes for one connection (a chat event it asked to replay, or
    /// a reply that comes later), deliverable once `lsn` is durable.
    pub fn enqueue(&mut self, conn: ConnId, lsn: Lsn, bytes: Bytes, terminal: bool) {
        self.push(
            conn,
            Queued {
                lsn,
                pos: EventPos { lsn, idx: 0 },
                bytes,
                terminal,
                codec: None,
            },
        );
    }

    /// The codec a connection's events are encoded with.
    pub fn codec_of(&self, conn: ConnId) -> Option<EventCodec> {
        self.queues.get(&conn).map(|q| q.codec)
    }

    /// Subscribes (or re-subscribes with a new filter) a connection to a collection.
    pub fn subscribe(&mut self, conn: ConnId, collection: &str, filter: Option<Filter>) {
        let subs = self.by_collection.entry(collection.into()).or_default();
        subs.retain(|s| s.conn != conn);
        subs.push(Sub { conn, filter });
    }

    /// Whether the connection is subscribed to any collection.
    pub fn is_subscribed(&self, conn: ConnId) -> bool {
        self.by_collection
            .values()
            .any(|subs| subs.iter().any(|s| s.conn == conn))
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

    /// The codec of every registered streaming connection.
    pub fn stream_codecs(&self) -> impl Iterator<Item = EventCodec> + '_ {
        self.queues.values().map(|q| q.codec)
    }

    /// Subscribers cut off for falling behind their byte budget, ever.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Bytes queued in every outbox, not yet taken by their connections.
    pub fn queued_bytes(&self) -> usize {
        self.queues.values().map(|q| q.outbox.queued_bytes()).sum()
    }

    /// Queues events for every matching subscriber. `encode` turns an event
    /// into one codec's bytes (`None`: nothing to send); it runs once per codec
    /// and filter, however many subscribers share them.
    pub fn publish(
        &mut self,
        events: &[Event<'_>],
        encode: impl Fn(&Event<'_>, EventCodec) -> Option<Bytes>,
    ) {
        for event in events {
            let targets: Vec<(ConnId, Option<&Filter>)> = match &event.change {
                Change::SchemaChanged {
                    collection,
                    implicit,
                    ..
                } => {
                    let mut t: Vec<(ConnId, Option<&Filter>)> = self
                        .queues
                        .iter()
                        .filter(|(_, q)| q.schema_events)
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
                    Some(subs) => subs.iter().map(|s| (s.conn, s.filter.as_ref())).collect(),
                    None => continue,
                },
            };
            let mut cache: HashMap<(EventCodec, Option<&Filter>), Option<Bytes>> = HashMap::new();
            let mut queued: Vec<(ConnId, Bytes)> = Vec::with_capacity(targets.len());
            for (conn, filter) in targets {
                let Some(codec) = self.queues.get(&conn).map(|q| q.codec) else {
                    continue;
                };
                let encoded = cache
                    .entry((codec, filter))
                    .or_insert_with(|| match filter {
                        None => encode(event, codec),
                        Some(f) => event.filtered(f).and_then(|e| encode(&e, codec)),
                    })
                    .clone();
                if let Some(bytes) = encoded {
                    queued.push((conn, bytes));
                }
            }
            let lsn = event.pos.lsn;
            for (conn, bytes) in queued {
                self.push(
                    conn,
                    Queued {
                        lsn,
                        pos: event.pos,
                        bytes,
                        terminal: false,
                        codec: None,
                    },
                );
            }
        }
    }

    fn push(&mut self, conn: ConnId, mut item: Queued) {
        let Some(q) = self.queues.get(&conn) else {
            return;
        };
        item.codec = Some(q.codec);
        let lsn = item.lsn;
        // An overflowed subscriber is woken at once to be told and closed.
        let at = match q.outbox.push(item) {
            Pushed::Queued => lsn,
            Pushed::Overflowed => {
                self.overflows += 1;
                Lsn::ZERO
            }
            Pushed::Closed => Lsn::ZERO,
        };
        let list = self.wake.entry(at).or_default();
        if list.last() != Some(&conn) {
            list.push(conn);
        }
    }

    /// Ends a connection's stream: it is told why and closed at its next
    /// look, which comes at once.
    pub fn cut(&mut self, conn: ConnId, cut: Cut) {
        let Some(q) = self.queues.get(&conn) else {
            return;
        };
        q.outbox.lock().cut_off(cut);
        self.wake.entry(Lsn::ZERO).or_default().push(conn);
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
