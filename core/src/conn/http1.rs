//! HTTP/1.1 on a connection: pipelined requests parsed ahead of their replies
//! (up to `MAX_PIPELINE`), `Expect: 100-continue`, keep-alive, large bodies
//! admitted from their head before they are read, bodies decoded outside the
//! server lock, the idle and per-request deadlines, and the switch to
//! WebSocket or SSE.

use super::{ConnTimer, Connection, Mode, PendingCall, SseMode, State, Work, WsMode, MAX_PIPELINE};
use crate::dialect::rest::codec;
use crate::dialect::{ekodb_sse, EventCodec};
use crate::error::{Error, ErrorKind};
use crate::ids::Lsn;
use crate::server::{Server, Upgrade};
use crate::time::Timestamp;
use crate::wire::http::{response, Method, Phase, Request, Response};
use crate::wire::sse;
use crate::wire::ws::{self, WsTransport};
use bytes::Bytes;
use std::time::Duration;

/// No keepalive ping in the first seconds (spec B9: some clients read the first
/// frame after their request as its reply).
const FIRST_PING_AFTER: Duration = Duration::from_secs(5);

impl Connection {
    pub(super) fn parse_http(&mut self) {
        while self.state == State::Open
            && matches!(self.mode, Mode::Http)
            && !self.input_failed
            && !self.upgrade_pending
            && self.work.len() + self.out.len() < MAX_PIPELINE
        {
            match self.parser.parse(&mut self.inbuf) {
                Ok(Some(req)) => {
                    self.upgrade_pending = ws::asks_for_upgrade(&req);
                    self.work.push_back(Work::Request(req, None));
                }
                Ok(None) => {
                    if self.parser.awaiting_admission().is_some() && !self.admission_queued {
                        self.admission_queued = true;
                        self.work.push_back(Work::Admit);
                    }
                    if self.parser.take_continue() {
                        self.push_out(
                            Lsn::ZERO,
                            Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"),
                        );
                    }
                    break;
                }
                Err(e) => {
                    self.work.push_back(Work::Fail(e));
                    self.input_failed = true;
                    self.inbuf.clear();
                }
            }
        }
    }

    /// Decodes the bodies of parsed requests, so the work is done by the
    /// connection's own thread or task rather than under the server lock.
    pub(super) fn decode_bodies(&mut self) {
        for work in self.work.iter_mut() {
            if let Work::Request(req, decoded @ None) = work {
                if !req.body.is_empty() {
                    *decoded = Some(codec::decode_body(req));
                }
            }
        }
    }

    /// The server's verdict on a head whose large body waits: read it, or
    /// answer now (401, 404, 413, 503) and close, without reading it.
    pub(super) fn execute_admission(&mut self, server: &mut Server, now: Timestamp) {
        self.admission_queued = false;
        let Some((head, size)) = self.parser.awaiting_admission() else {
            return;
        };
        let head_only = head.method == Method::Head;
        let verdict = match &self.refusal {
            Some(message) => Err(Error::new(ErrorKind::Unavailable, message.clone())),
            None => server.admit_body(self.id, head, size, now),
        };
        match verdict {
            Ok(limit) => {
                self.parser.admit(limit);
                // Room for the whole body at once, rather than a buffer
                // that doubles its way there (and peaks at twice the size).
                if let Some(n) = size.filter(|n| *n <= limit) {
                    self.inbuf.reserve(n);
                }
            }
            Err(e) => {
                let r = crate::dialect::rest::error_response(&e);
                self.push_out(Lsn::ZERO, r.encode(false, head_only));
                self.state = State::Closing;
                self.input_failed = true;
                self.inbuf.clear();
                self.work.clear();
            }
        }
    }

    /// Arms the deadline of the request under way when it enters a new
    /// phase: its head must be in `head_timeout` after its first byte, its
    /// body `body_timeout` after its head. Bytes arriving do not extend them.
    pub(super) fn arm_request_deadline(&mut self, now: Timestamp) {
        let paused = self.work.len() + self.out.len() >= MAX_PIPELINE;
        let phase = match self.mode {
            Mode::Http if !paused && self.state == State::Open => self.parser.phase(&self.inbuf),
            _ => Phase::Idle,
        };
        if phase == self.deadline_for {
            return;
        }
        self.deadline_for = phase;
        let at = match phase {
            Phase::Idle => None,
            Phase::Head => Some(now.saturating_add(self.head_timeout)),
            Phase::Body => Some(now.saturating_add(self.body_timeout)),
        };
        self.timers.set(ConnTimer::Request, at);
    }

    /// The request under way missed its deadline: 408, then close.
    pub(super) fn request_expired(&mut self) {
        if self.handshaking {
            // TLS never got going: there is no channel to answer on.
            self.state = State::Closing;
            self.work.clear();
            return;
        }
        if !matches!(self.mode, Mode::Http) || self.parser.phase(&self.inbuf) == Phase::Idle {
            return;
        }
        let (part, took) = match self.deadline_for {
            Phase::Body => ("body", self.body_timeout),
            _ => ("head", self.head_timeout),
        };
        let r = Response::error(
            408,
            &format!(
                "the request {part} did not arrive within {} s",
                took.as_secs()
            ),
        );
        self.push_out(Lsn::ZERO, r.encode(false, false));
        self.state = State::Closing;
        self.input_failed = true;
        self.inbuf.clear();
        self.work.clear();
    }

    pub(super) fn execute_request(
        &mut self,
        server: &mut Server,
        req: Request,
        body: Option<crate::error::Result<serde_json::Value>>,
        now: Timestamp,
    ) {
        self.upgrade_pending = false;
        let keep_alive = req.keep_alive() && self.state == State::Open;
        let head_only = req.method == Method::Head;
        if let Some(message) = &self.refusal {
            let e = Error::new(ErrorKind::Unavailable, message.clone());
            let r = crate::dialect::rest::error_response(&e);
            self.push_out(Lsn::ZERO, r.encode(false, head_only));
            self.state = State::Closing;
            return;
        }
        let reply = server.handle_request(self.id, &req, body, now);
        if let Some(ticket) = reply.pending {
            self.pending_call = Some(PendingCall {
                ticket,
                keep_alive,
                head_only,
                headers: reply.response.headers,
            });
            // It may be ready already.
            self.notified = true;
            return;
        }
        match reply.upgrade {
            None => {
                if !keep_alive {
                    self.state = State::Closing;
                }
                self.push_reply(reply.wait_for, reply.response, keep_alive, head_only);
            }
            Some(Upgrade::WebSocket {
                accept,
                protocol,
                session,
            }) => {
                let protocol = protocol
                    .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
                    .unwrap_or_default();
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
                );
                self.push_out(Lsn::ZERO, Bytes::from(head));
                let mut transport = WsTransport::new(self.max_message);
                // Bytes that arrived behind the upgrade request are frames.
                transport.handle_input(&self.inbuf.split());
                self.outbox = Some(server.open_stream(self.id, session.codec()));
                let every = session.ping_every().unwrap_or(self.heartbeat);
                self.mode = Mode::WebSocket(Box::new(WsMode {
                    transport,
                    session,
                    last_message: now,
                }));
                self.ws_opened(server, now);
                self.timers.cancel(ConnTimer::Idle);
                self.timers.set(
                    ConnTimer::Heartbeat,
                    Some(now.saturating_add(every.max(FIRST_PING_AFTER))),
                );
                self.work.clear();
                self.read_ws();
            }
            Some(Upgrade::Sse {
                collection,
                filter,
                resume,
            }) => {
                let head = response::encode_stream_head(200, "text/event-stream", &[]);
                self.push_out(Lsn::ZERO, head);
                self.mode = Mode::Sse(SseMode {
                    codec: ekodb_sse::CODEC,
                    ends_with_answer: false,
                    feed: None,
                });
                self.inbuf.clear();
                self.work.clear();
                self.outbox = Some(server.open_stream(self.id, ekodb_sse::CODEC));
                let hello = ekodb_sse::open(server, self.id, &collection, filter.clone());
                self.push_out(Lsn::ZERO, hello);
                self.timers.cancel(ConnTimer::Idle);
                self.timers.set(
                    ConnTimer::Heartbeat,
                    Some(now.saturating_add(self.heartbeat)),
                );
                if let Some(from) = resume {
                    self.start_replay(server, collection, filter, from);
                }
            }
            Some(Upgrade::Feed {
                codec,
                collection,
                filter,
                resume,
                missed,
                feed,
            }) => {
                let head = response::encode_stream_head(200, "text/event-stream", &[]);
                self.push_out(Lsn::ZERO, head);
                let every = feed.every;
                self.mode = Mode::Sse(SseMode {
                    codec,
                    ends_with_answer: false,
                    feed: Some(feed),
                });
                self.inbuf.clear();
                self.work.clear();
                self.outbox = Some(server.open_stream(self.id, codec));
                server.subscribe(self.id, &collection, filter.clone());
                self.timers.cancel(ConnTimer::Idle);
                self.timers
                    .set(ConnTimer::Heartbeat, Some(now.saturating_add(every)));
                if let Some(from) = resume {
                    self.start_replay_with(server, collection, filter, from, missed);
                }
            }
            Some(Upgrade::ChatStream {
                chat_key,
                message_id,
                after,
            }) => {
                let head = response::encode_stream_head(200, "text/event-stream", &[]);
                self.push_out(Lsn::ZERO, head);
                let codec = EventCodec::EkodbChatSse;
                self.mode = Mode::Sse(SseMode {
                    codec,
                    ends_with_answer: true,
                    feed: None,
                });
                self.inbuf.clear();
                self.work.clear();
                self.outbox = Some(server.open_stream(self.id, codec));
                let attached = server.chat_attach(self.id, &chat_key, message_id.as_deref(), after);
                if !attached {
                    // The events are gone: a stored answer goes whole.
                    let mid = message_id.unwrap_or_default();
                    if let Err(e) = server.chat_replay_stored(self.id, &chat_key, &mid, now) {
                        let bytes = sse::event(
                            None,
                            "error",
                            &serde_json::to_vec(&serde_json::json!({ "error": e.message }))
                                .unwrap_or_default(),
                        );
                        self.push_out(Lsn::ZERO, bytes);
                        self.state = State::Closing;
                    }
                }
                self.timers.cancel(ConnTimer::Idle);
                self.timers.set(
                    ConnTimer::Heartbeat,
                    Some(now.saturating_add(self.heartbeat)),
                );
            }
        }
    }

    /// The idle deadline passed: a half-received request gets a 408; either
    /// way the connection closes.
    pub(super) fn idle_expired(&mut self) {
        if !matches!(self.mode, Mode::Http) {
            return;
        }
        if self.parser.in_progress(&self.inbuf) {
            let r = Response::error(408, "timed out waiting for the rest of the request");
            self.push_out(Lsn::ZERO, r.encode(false, false));
        }
        self.state = State::Closing;
        self.work.clear();
    }
}
