//! State the chat-socket dialects keep across connections: meet rooms,
//! connections per credential, and chats a connection follows. The dialects
//! own the wire shapes; this owns who is where, and cleans up when a
//! connection goes.

use super::Server;
use crate::dialect::fluxbase::Chatbot;
use crate::dialect::lanonasis::stream::Counter;
use crate::dialect::lanonasis::FeedPos;
use crate::dialect::{meet, EventCodec};
use crate::ids::{ConnId, Lsn};
use crate::realtime::hub::Cut;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};

/// A participant of a meet room.
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    pub conn: ConnId,
    pub id: String,
    pub name: String,
}

#[derive(Debug, Default)]
pub struct Sockets {
    /// Meet rooms by id; a room goes with its last participant.
    rooms: HashMap<String, Vec<Participant>>,
    /// Open dialect connections per (dialect, credential), and each
    /// connection's claim.
    per_key: HashMap<(EventCodec, String), usize>,
    claims: HashMap<ConnId, (EventCodec, String)>,
    /// The rooms each connection is in (so a close visits only those).
    member_of: HashMap<ConnId, Vec<String>>,
    /// Orders the Lanonasis events that are not log changes.
    feed_counter: Counter,
    /// The latest such events (searches), for streams that resume.
    recent_feed: VecDeque<(FeedPos, Bytes)>,
    /// Fluxbase chatbots from `--fluxbase-chatbots`.
    chatbots: Vec<Chatbot>,
}

/// Searches kept for resuming Lanonasis streams.
const RECENT_FEED: usize = 1024;

impl Server {
    /// The chatbots the config file defines (read by the host at boot).
    pub fn set_configured_chatbots(&mut self, bots: Vec<Chatbot>) {
        self.sockets.chatbots = bots;
    }

    pub fn configured_chatbots(&self) -> &[Chatbot] {
        &self.sockets.chatbots
    }

    /// The counter Lanonasis streams draw their non-change positions from.
    pub fn feed_counter(&self) -> &Counter {
        &self.sockets.feed_counter
    }

    /// Keeps a Lanonasis event that is not a change for streams that resume
    /// after it (the oldest goes past `RECENT_FEED`).
    pub fn feed_remember(&mut self, pos: FeedPos, bytes: Bytes) {
        let recent = &mut self.sockets.recent_feed;
        if recent.len() == RECENT_FEED {
            recent.pop_front();
        }
        recent.push_back((pos, bytes));
    }

    /// The kept events after `pos`, in order, each with the batch it follows.
    pub fn feed_recent_after(&self, pos: FeedPos) -> Vec<(Lsn, Bytes)> {
        self.sockets
            .recent_feed
            .iter()
            .filter(|(p, _)| *p > pos)
            .map(|(p, b)| (p.lsn, b.clone()))
            .collect()
    }

    /// Queues an event that is not a change for every stream whose codec
    /// encodes it (a Lanonasis `search.performed`).
    pub fn broadcast(&mut self, lsn: Lsn, encode: impl Fn(EventCodec) -> Option<Bytes>) {
        self.hub.broadcast(lsn, encode);
        let ready = self.hub.take_ready(self.durable);
        self.wakeups.extend(ready);
    }

    /// Counts a dialect connection against its credential's limit; false
    /// (and not counted) when `limit` are open already.
    pub fn socket_claim(
        &mut self,
        conn: ConnId,
        codec: EventCodec,
        key: &str,
        limit: usize,
    ) -> bool {
        if let Some((c, k)) = self.sockets.claims.get(&conn) {
            // One claim per connection: the same one again is no new place.
            return *c == codec && k == key;
        }
        let n = self
            .sockets
            .per_key
            .entry((codec, key.to_string()))
            .or_default();
        if *n >= limit {
            return false;
        }
        *n += 1;
        self.sockets.claims.insert(conn, (codec, key.to_string()));
        true
    }

    /// A key was revoked (`all`) or its grants changed: its streams end (a
    /// WebSocket with close 1008) and the clients reconnect, to be checked
    /// again. On a grant change only the streams with subscriptions end: a
    /// WebSocket without any checks each message against the grants as they
    /// are, so it needs no reconnect.
    pub fn end_streams_of_key(&mut self, key_id: &str, all: bool) {
        let conns: Vec<ConnId> = self
            .sockets
            .claims
            .iter()
            .filter(|(conn, (_, key))| key == key_id && (all || self.hub.is_subscribed(**conn)))
            .map(|(conn, _)| *conn)
            .collect();
        for conn in conns {
            self.hub.cut(conn, Cut::KeyChanged);
        }
        let ready = self.hub.take_ready(self.durable);
        self.wakeups.extend(ready);
    }

    /// The connection follows every answer of a chat (its frames in the
    /// connection's codec), until it unfollows or closes.
    pub fn chat_follow(&mut self, conn: ConnId, chat_id: &str) {
        self.hub.follow_chat(conn, chat_id);
    }

    pub fn chat_unfollow(&mut self, conn: ConnId, chat_id: &str) -> bool {
        self.hub.unfollow_chat(conn, chat_id)
    }

    pub fn chat_follows(&self, conn: ConnId, chat_id: &str) -> bool {
        self.hub.follows_chat(conn, chat_id)
    }

    /// Queues bytes already encoded for `conn`'s codec and wakes it.
    pub fn deliver(&mut self, conn: ConnId, bytes: Bytes) {
        self.hub.enqueue(conn, Lsn::ZERO, bytes, false);
        let ready = self.hub.take_ready(self.durable);
        self.wakeups.extend(ready);
    }

    /// Joins a meet room under a fresh participant id: the others already
    /// there (before the joiner).
    pub fn meet_join(
        &mut self,
        conn: ConnId,
        room: &str,
        name: &str,
    ) -> (String, Vec<Participant>) {
        let id = format!("p_{}", self.new_token(8));
        let members = self.sockets.rooms.entry(room.to_string()).or_default();
        let others = members.clone();
        members.push(Participant {
            conn,
            id: id.clone(),
            name: name.to_string(),
        });
        self.sockets
            .member_of
            .entry(conn)
            .or_default()
            .push(room.to_string());
        (id, others)
    }

    /// Leaves a room: the participant who left (if `conn` was in it) and
    /// who remains.
    pub fn meet_leave(
        &mut self,
        conn: ConnId,
        room: &str,
    ) -> Option<(Participant, Vec<Participant>)> {
        let members = self.sockets.rooms.get_mut(room)?;
        let at = members.iter().position(|p| p.conn == conn)?;
        let gone = members.remove(at);
        let rest = members.clone();
        if members.is_empty() {
            self.sockets.rooms.remove(room);
        }
        if let Some(rooms) = self.sockets.member_of.get_mut(&conn) {
            rooms.retain(|r| r != room);
            if rooms.is_empty() {
                self.sockets.member_of.remove(&conn);
            }
        }
        Some((gone, rest))
    }

    /// The members of a room.
    pub fn meet_members(&self, room: &str) -> &[Participant] {
        self.sockets.rooms.get(room).map_or(&[], Vec::as_slice)
    }

    /// Rooms that exist (for tests and health).
    pub fn meet_room_count(&self) -> usize {
        self.sockets.rooms.len()
    }

    /// A connection went: its claim is released and it leaves every room
    /// (the others are told).
    pub(super) fn sockets_closed(&mut self, conn: ConnId) {
        if let Some(claim) = self.sockets.claims.remove(&conn) {
            if let Some(n) = self.sockets.per_key.get_mut(&claim) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.sockets.per_key.remove(&claim);
                }
            }
        }
        let rooms = self.sockets.member_of.remove(&conn).unwrap_or_default();
        for room in rooms {
            if let Some((gone, rest)) = self.meet_leave(conn, &room) {
                let frame = meet::left(&room, &gone.id);
                for p in rest {
                    self.deliver(p.conn, frame.clone());
                }
            }
        }
    }
}
