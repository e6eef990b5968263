//! A streaming connection (WebSocket or SSE): messages in, replies and events
//! out, the outbox the hub fills, heartbeats, and the cut-off of a subscriber
//! that falls too far behind.

use super::{ConnTimer, Connection, Mode, SseMode, State, Work, LOCAL_OUT_BYTES, MAX_PIPELINE};
use crate::dialect::{encode_notice, EventCodec, Followup, Framing, Notice, Outgoing};
use crate::ids::Lsn;
use crate::realtime::hub;
use crate::server::Server;
use crate::time::Timestamp;
use crate::wire::sse;
use crate::wire::ws::{frame_header, Incoming};
use bytes::Bytes;

impl Connection {
    pub(super) fn read_ws(&mut self) {
        let Mode::WebSocket(ws) = &mut self.mode else {
            return;
        };
        // Once closing, no further message is read (and so none is answered).
        while self.state == State::Open {
            if self.work.len() >= MAX_PIPELINE {
                break;
            }
            match ws.transport.poll_message() {
                Ok(Some(m)) => self.work.push_back(Work::Message(m)),
                Ok(None) => break,
                Err(closing) => {
                    ws.transport.close(closing.code, &closing.reason);
                    self.state = State::Closing;
                    self.work.clear();
                    break;
                }
            }
        }
        let Mode::WebSocket(ws) = &mut self.mode else {
            return;
        };
        let output = ws.transport.take_output();
        let ended = ws.transport.is_terminated() || !ws.transport.can_write();
        if ended {
            // The peer closed (or broke) the stream. Messages that came before
            // its Close are still answered; the close reply goes out after them,
            // since no data frame may follow it.
            self.state = State::Closing;
            if self.work.is_empty() {
                if let Some(bytes) = output {
                    self.push_out(Lsn::ZERO, bytes);
                }
            } else if let Some(bytes) = output {
                self.deferred_close = Some(bytes);
            }
        } else if let Some(bytes) = output {
            self.push_out(Lsn::ZERO, bytes);
        }
    }

    pub(super) fn execute_message(&mut self, server: &mut Server, msg: Incoming, now: Timestamp) {
        let Mode::WebSocket(ws) = &mut self.mode else {
            return;
        };
        ws.last_message = now;
        let (replies, followup) = ws.session.handle(server, self.id, &msg, now);
        self.ws_replies(server, replies, followup);
    }

    /// The socket just opened: the dialect's first words, if any.
    pub(super) fn ws_opened(&mut self, server: &mut Server, now: Timestamp) {
        let Mode::WebSocket(ws) = &mut self.mode else {
            return;
        };
        let (replies, followup) = ws.session.opened(server, self.id, now);
        self.ws_replies(server, replies, followup);
    }

    fn ws_replies(&mut self, server: &mut Server, replies: Vec<Outgoing>, followup: Followup) {
        self.push_replies(replies);
        match followup {
            Followup::None => {}
            Followup::Resume {
                collection,
                filter,
                from,
            } => self.start_replay(server, collection, filter, from),
            Followup::Close { code, reason } => self.close_socket(code, reason),
        }
    }

    fn push_replies(&mut self, replies: Vec<Outgoing>) {
        for r in replies {
            self.push_out(r.wait_for, frame_header(r.binary, r.payload.len()));
            self.push_out(r.wait_for, r.payload);
        }
    }

    /// Closes the WebSocket with `code` after what is queued.
    /// The stream's token expired: a WebSocket closes with 1008 (policy),
    /// an SSE stream ends; clients reconnect with a fresh token.
    pub(super) fn credential_expired(&mut self) {
        if self.is_streaming() {
            self.close_socket(1008, "token expired: reconnect with a fresh token");
        }
    }

    fn close_socket(&mut self, code: u16, reason: &str) {
        if let Mode::WebSocket(ws) = &mut self.mode {
            ws.transport.close(code, reason);
            if let Some(b) = ws.transport.take_output() {
                // After the replies, which are durable no later.
                let lsn = self.out.back().map_or(Lsn::ZERO, |(l, _)| *l);
                self.push_out(lsn, b);
            }
        }
        self.state = State::Closing;
        self.work.clear();
    }

    /// Queues one encoded message of this connection's codec: framed as a
    /// WebSocket message, or as is for SSE (its bytes are a whole event).
    pub(super) fn push_message(&mut self, lsn: Lsn, bytes: Bytes) {
        self.push_encoded(lsn, bytes, None);
    }

    /// `push_message` for bytes encoded with `codec` (default: the
    /// connection's codec now).
    fn push_encoded(&mut self, lsn: Lsn, bytes: Bytes, codec: Option<EventCodec>) {
        if let Some(Framing::WebSocket { binary }) = codec.or(self.codec()).map(|c| c.framing()) {
            self.push_out(lsn, frame_header(binary, bytes.len()));
        }
        self.push_out(lsn, bytes);
    }

    /// Moves queued events from the outbox to the socket queue (unless a replay
    /// is running: live events wait behind history).
    pub(super) fn pull_events(&mut self) {
        if !self.replays.is_empty()
            || self.state != State::Open
            || self.out_bytes >= LOCAL_OUT_BYTES
        {
            return;
        }
        let Some(outbox) = self.outbox.clone() else {
            return;
        };
        self.notified = false;
        match outbox.drain(LOCAL_OUT_BYTES - self.out_bytes) {
            Ok(items) => {
                let ends = matches!(&self.mode, Mode::Sse(s) if s.ends_with_answer);
                for item in items {
                    if let Mode::Sse(SseMode { feed: Some(f), .. }) = &mut self.mode {
                        f.seen(item.lsn);
                    }
                    self.push_encoded(item.lsn, item.bytes, item.codec);
                    if item.terminal && ends {
                        // The answer is complete: the stream ends with it.
                        self.state = State::Closing;
                        return;
                    }
                }
                // More than fitted: come back when the socket queue drains.
                self.notified = outbox.is_pending();
            }
            Err(hub::Cut::Overflowed) => self.overflowed(),
            Err(hub::Cut::KeyChanged) => self.close_socket(
                1008,
                "the API key was revoked or its permissions changed: reconnect",
            ),
        }
    }

    /// The subscriber fell further behind than its budget: say so and close.
    fn overflowed(&mut self) {
        let Some(codec) = self.codec() else {
            return;
        };
        let notice = encode_notice(&Notice::Overflowed, codec);
        self.push_message(Lsn::ZERO, notice);
        if let Mode::WebSocket(ws) = &mut self.mode {
            ws.transport.close(1013, "subscriber too slow");
            if let Some(b) = ws.transport.take_output() {
                self.out.push_back((Lsn::ZERO, super::Out::Bytes(b)));
            }
        }
        self.recount_out();
        self.state = State::Closing;
    }

    /// Sends a keepalive (a ping, or an SSE comment); a WebSocket peer that
    /// showed no sign of life for three heartbeats is gone.
    pub(super) fn heartbeat_due(&mut self, now: Timestamp) {
        match &mut self.mode {
            Mode::Http => return,
            Mode::WebSocket(ws) => {
                let every = ws.session.ping_every().unwrap_or(self.heartbeat);
                let idle = ws.session.idle_after();
                if idle.is_some_and(|idle| now.since(ws.last_message) >= idle) {
                    // The dialect's idle timeout: its goodbye, then a close.
                    let goodbye = ws.session.idle_goodbye();
                    self.push_replies(goodbye);
                    self.close_socket(1000, "idle timeout");
                    return;
                }
                if now.since(self.last_activity) > every * 3 && now.since(self.opened) > every * 3 {
                    ws.transport.close(1001, "no response to pings");
                    self.state = State::Closing;
                } else {
                    ws.transport.ping();
                }
                let mut next = now.saturating_add(every);
                if let Some(idle) = idle {
                    next = next.min(ws.last_message.saturating_add(idle));
                }
                if let Some(b) = ws.transport.take_output() {
                    self.push_out(Lsn::ZERO, b);
                }
                self.timers.set(ConnTimer::Heartbeat, Some(next));
                return;
            }
            Mode::Sse(SseMode { feed: Some(f), .. }) => {
                let every = f.every;
                // A heartbeat's id says what came before it: not while a
                // replay is still sending the past.
                if self.replays.is_empty() {
                    let bytes = f.heartbeat(now);
                    self.push_out(Lsn::ZERO, bytes);
                }
                self.timers
                    .set(ConnTimer::Heartbeat, Some(now.saturating_add(every)));
                return;
            }
            Mode::Sse(_) => self.push_out(Lsn::ZERO, Bytes::from_static(sse::HEARTBEAT)),
        }
        self.timers.set(
            ConnTimer::Heartbeat,
            Some(now.saturating_add(self.heartbeat)),
        );
    }
}
