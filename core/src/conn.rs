//! One client connection as a state machine.
//!
//! ```text
//!             ┌────────── HTTP/1.1 (keep-alive, pipelining) ──────────┐
//!   bytes ──▶ │ parse ─▶ [work] ─execute(server)─▶ [out, each with an LSN] │ ──▶ socket
//!             └──────┬──────────────────────────────────────┬───────────┘
//!                    │ 101 Switching Protocols              │ GET /api/subscribe/{c}
//!                    ▼                                      ▼
//!        WebSocket: frames ⇄ messages              SSE: events, heartbeats
//!        (requests, replies, events)               (events only)
//!
//!   Open ──(Connection: close | error | EOF | close frame)──▶ Closing ──(flushed)──▶ Closed
//! ```
//!
//! Driving rule: after every input (bytes, EOF, a durability report, a wake-up
//! from the hub, a timer, a history read), call `execute` if `wants_server()`,
//! perform the effects from `poll_effect`, then drain `poll_transmit` until
//! `None` and re-arm the timer from `poll_timeout`. Once `is_closed()`, close the
//! socket and call `Server::connection_closed`.
//!
//! Every outgoing piece carries the LSN that must be durable before it may be
//! sent, so nothing a client sees can be taken back by a crash.

use crate::engine::mutation;
use crate::ids::{ConnId, Lsn};
use crate::realtime::ekodb_ws::{self, Followup, Session};
use crate::realtime::events::{changes, Change, EventPos};
use crate::realtime::hub::{self, Filter, Outbox, Proto};
use crate::server::{Call, Server, Upgrade};
use crate::time::Timestamp;
use crate::wire::http::client::Outbound;
use crate::wire::http::{HttpError, Limits, Method, Request, RequestParser, Response};
use crate::wire::sse;
use crate::wire::ws::{frame_header, Incoming, WsTransport};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Pipelined requests (or WebSocket messages) accepted ahead of their replies.
const MAX_PIPELINE: usize = 256;
/// Bytes a connection holds for the socket before it stops taking more events
/// from the hub (the hub's own budget then absorbs bursts, up to its limit).
const LOCAL_OUT_BYTES: usize = 256 * 1024;
/// How much log a resuming subscriber reads per step.
pub const HISTORY_CHUNK_BYTES: usize = 1 << 20;
/// No keepalive ping in the first seconds (spec B9: some clients read the first
/// frame after their request as its reply).
const FIRST_PING_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug)]
enum Work {
    Request(Request),
    Fail(HttpError),
    Message(Incoming),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// No more input is processed; queued output still goes out.
    Closing,
    Closed,
}

#[derive(Debug)]
struct WsMode {
    transport: WsTransport,
    session: Session,
}

#[derive(Debug)]
enum Mode {
    Http,
    WebSocket(Box<WsMode>),
    Sse,
}

/// Something the runtime must do for the connection (I/O that `core` cannot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Read committed batches with LSN > `after` (at most
    /// `HISTORY_CHUNK_BYTES`), once everything up to `upto` is durable, and hand
    /// them to `handle_history`.
    ReadHistory { after: Lsn, upto: Lsn },
    /// Perform an outbound HTTP request (connect, write `request`, read until
    /// the peer closes) and hand the bytes to `handle_call_result`.
    Http(Outbound),
}

/// The answer to `Effect::ReadHistory`.
#[derive(Debug)]
pub enum History {
    Batches {
        batches: Vec<(Lsn, Vec<u8>)>,
        more: bool,
    },
    /// The position is older than the retained log.
    Truncated,
    Failed(String),
}

#[derive(Debug)]
struct Replay {
    collection: String,
    filter: Option<Filter>,
    proto: Proto,
    from: EventPos,
    upto: Lsn,
}

#[derive(Debug)]
pub struct Connection {
    id: ConnId,
    state: State,
    mode: Mode,
    parser: RequestParser,
    inbuf: BytesMut,
    work: VecDeque<Work>,
    out: VecDeque<(Lsn, Bytes)>,
    out_bytes: usize,
    last_activity: Timestamp,
    opened: Timestamp,
    idle_timeout: Duration,
    heartbeat: Duration,
    max_message: usize,
    next_beat: Option<Timestamp>,
    eof: bool,
    effects: VecDeque<Effect>,
    replays: VecDeque<Replay>,
    /// The hub may have events for us.
    notified: bool,
    /// Where the hub queues this connection's events (WebSocket and SSE).
    outbox: Option<Arc<Outbox>>,
    /// The input stream broke (an unparseable request): answer what came before,
    /// then the error, then close. Nothing after it is read.
    input_failed: bool,
    /// A WebSocket upgrade request is queued: the bytes after it are frames, not
    /// requests, so HTTP parsing waits for its outcome.
    upgrade_pending: bool,
    /// The WebSocket close reply, held until the messages before it are answered.
    deferred_close: Option<Bytes>,
    /// A reply waiting for an outbound call; later requests wait behind it.
    pending_call: Option<(Call, bool, bool)>,
}

impl Connection {
    pub fn new(id: ConnId, server_limits: Limits, idle_timeout: Duration, now: Timestamp) -> Self {
        Connection {
            id,
            state: State::Open,
            mode: Mode::Http,
            parser: RequestParser::new(server_limits),
            inbuf: BytesMut::new(),
            work: VecDeque::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            last_activity: now,
            opened: now,
            idle_timeout,
            heartbeat: Duration::from_secs(20),
            max_message: 16 << 20,
            next_beat: None,
            eof: false,
            effects: VecDeque::new(),
            replays: VecDeque::new(),
            notified: false,
            pending_call: None,
            outbox: None,
            input_failed: false,
            upgrade_pending: false,
            deferred_close: None,
        }
    }

    /// Keepalive interval and largest WebSocket message (from the config).
    pub fn with_streaming(mut self, heartbeat: Duration, max_message: usize) -> Self {
        self.heartbeat = heartbeat.max(Duration::from_secs(1));
        self.max_message = max_message;
        self
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Whether this connection streams events (WebSocket or SSE).
    pub fn is_streaming(&self) -> bool {
        !matches!(self.mode, Mode::Http)
    }

    fn push_out(&mut self, lsn: Lsn, bytes: Bytes) {
        self.out_bytes += bytes.len();
        self.out.push_back((lsn, bytes));
    }

    // ----- inputs -----------------------------------------------------------

    /// Bytes read from the socket.
    pub fn handle_input(&mut self, data: &[u8], now: Timestamp) {
        if self.state != State::Open || self.input_failed {
            return;
        }
        self.last_activity = now;
        match &mut self.mode {
            Mode::Http => {
                self.inbuf.extend_from_slice(data);
                self.parse_http();
            }
            Mode::WebSocket(ws) => {
                ws.transport.handle_input(data);
                self.read_ws();
            }
            // SSE clients send nothing after the request; ignore stray bytes.
            Mode::Sse => {}
        }
    }

    /// The peer closed its side: answer what it sent before (a half-close may
    /// follow pipelined requests), then close.
    pub fn handle_eof(&mut self) {
        self.eof = true;
        if self.is_streaming() {
            self.state = State::Closing;
            // Nobody is listening any more.
            self.out.clear();
            self.out_bytes = 0;
            self.work.clear();
        }
    }

    /// The hub has (or may have) events for this connection: take them. Needs
    /// no server lock.
    pub fn handle_notify(&mut self) {
        self.notified = true;
        self.pull_events();
    }

    fn parse_http(&mut self) {
        while self.state == State::Open
            && matches!(self.mode, Mode::Http)
            && !self.input_failed
            && !self.upgrade_pending
            && self.work.len() + self.out.len() < MAX_PIPELINE
        {
            match self.parser.parse(&mut self.inbuf) {
                Ok(Some(req)) => {
                    self.upgrade_pending = crate::wire::ws::asks_for_upgrade(&req);
                    self.work.push_back(Work::Request(req));
                }
                Ok(None) => {
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

    fn read_ws(&mut self) {
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

    // ----- execution --------------------------------------------------------

    /// Whether `execute` has something to do (needs the server lock).
    pub fn wants_server(&self) -> bool {
        self.pending_call.is_none() && !self.work.is_empty()
    }

    /// Whether the runtime should keep reading the socket.
    pub fn wants_read(&self) -> bool {
        self.state == State::Open
            && !self.eof
            && !self.input_failed
            && self.work.len() < MAX_PIPELINE
            && self.out_bytes < 4 * LOCAL_OUT_BYTES
            && self.out.len() < 4 * MAX_PIPELINE
    }

    /// Runs parsed requests or messages against the server, and takes queued
    /// events from the hub.
    pub fn execute(&mut self, server: &mut Server, now: Timestamp) {
        while self.pending_call.is_none() {
            if self.state != State::Open && !self.is_streaming() {
                self.work.clear();
            }
            let Some(work) = self.work.pop_front() else {
                break;
            };
            match work {
                Work::Request(req) => self.execute_request(server, req, now),
                Work::Fail(e) => {
                    let r = Response::error(e.status(), &e.message());
                    self.push_out(Lsn::ZERO, r.encode(false, false));
                    self.state = State::Closing;
                    self.work.clear();
                }
                Work::Message(msg) => self.execute_message(server, msg, now),
            }
            if self.state != State::Open && !self.is_streaming() {
                self.work.clear();
            }
        }
        if self.work.is_empty() {
            if let Some(bytes) = self.deferred_close.take() {
                self.push_out(Lsn::ZERO, bytes);
            }
        }
        self.pull_events();
        match self.mode {
            Mode::Http => self.parse_http(),
            Mode::WebSocket(_) => self.read_ws(),
            Mode::Sse => {}
        }
    }

    fn execute_request(&mut self, server: &mut Server, req: Request, now: Timestamp) {
        self.upgrade_pending = false;
        let reply = server.handle_request(&req, now);
        if let Some((outbound, call)) = reply.call {
            let keep_alive = req.keep_alive() && self.state == State::Open;
            self.pending_call = Some((call, keep_alive, req.method == Method::Head));
            self.effects.push_back(Effect::Http(outbound));
            return;
        }
        match reply.upgrade {
            None => {
                let keep_alive = req.keep_alive() && self.state == State::Open;
                if !keep_alive {
                    self.state = State::Closing;
                }
                let head_only = req.method == Method::Head;
                self.push_out(reply.wait_for, reply.response.encode(keep_alive, head_only));
            }
            Some(Upgrade::WebSocket { accept }) => {
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                self.push_out(Lsn::ZERO, Bytes::from(head));
                let mut transport = WsTransport::new(self.max_message);
                // Bytes that arrived behind the upgrade request are frames.
                transport.handle_input(&self.inbuf.split());
                self.mode = Mode::WebSocket(Box::new(WsMode {
                    transport,
                    session: Session::default(),
                }));
                self.next_beat = Some(now.saturating_add(self.heartbeat.max(FIRST_PING_AFTER)));
                self.outbox = Some(server.hub.open(self.id, Proto::WsJson));
                self.work.clear();
                self.read_ws();
            }
            Some(Upgrade::Sse {
                collection,
                filter,
                resume,
            }) => {
                let head =
                    crate::wire::http::response::encode_stream_head(200, "text/event-stream", &[]);
                self.push_out(Lsn::ZERO, head);
                self.mode = Mode::Sse;
                self.inbuf.clear();
                self.work.clear();
                self.outbox = Some(server.hub.open(self.id, Proto::Sse));
                server.hub.subscribe(self.id, &collection, filter.clone());
                let sub = format!("sub_{}", server.engine.token(16));
                let hello = serde_json::json!({"collection": collection, "subscription_id": sub});
                self.push_out(
                    Lsn::ZERO,
                    sse::event(
                        None,
                        "subscribed",
                        &serde_json::to_vec(&hello).unwrap_or_default(),
                    ),
                );
                self.next_beat = Some(now.saturating_add(self.heartbeat));
                if let Some(from) = resume {
                    self.start_replay(server, collection, filter, Proto::Sse, from);
                }
            }
        }
    }

    fn execute_message(&mut self, server: &mut Server, msg: Incoming, now: Timestamp) {
        let Mode::WebSocket(ws) = &mut self.mode else {
            return;
        };
        let (replies, followup) = ekodb_ws::handle(server, self.id, &mut ws.session, &msg, now);
        let proto = if ws.session.binary {
            Proto::WsMsgPack
        } else {
            Proto::WsJson
        };
        for r in replies {
            self.push_out(r.wait_for, frame_header(r.binary, r.payload.len()));
            self.push_out(r.wait_for, r.payload);
        }
        if let Followup::Resume {
            collection,
            filter,
            from,
        } = followup
        {
            self.start_replay(server, collection, filter, proto, from);
        }
    }

    /// Moves queued events from the outbox to the socket queue (unless a replay
    /// is running: live events wait behind history).
    fn pull_events(&mut self) {
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
                let binary = matches!(&self.mode, Mode::WebSocket(ws) if ws.session.binary);
                for item in items {
                    if matches!(self.mode, Mode::WebSocket(_)) {
                        self.push_out(item.lsn, frame_header(binary, item.bytes.len()));
                    }
                    self.push_out(item.lsn, item.bytes);
                }
                // More than fitted: come back when the socket queue drains.
                self.notified = outbox.is_pending();
            }
            Err(hub::Overflowed) => self.overflowed(),
        }
    }

    /// The subscriber fell further behind than its budget: say so and close.
    fn overflowed(&mut self) {
        let msg = "subscriber too slow: events were queued beyond the outbound limit; reconnect and resume from your last event id";
        match &mut self.mode {
            Mode::WebSocket(ws) => {
                let err = serde_json::json!({"type": "Error", "code": 1013, "message": msg});
                let payload = Bytes::from(serde_json::to_vec(&err).unwrap_or_default());
                self.out
                    .push_back((Lsn::ZERO, frame_header(false, payload.len())));
                self.out.push_back((Lsn::ZERO, payload));
                ws.transport.close(1013, "subscriber too slow");
                if let Some(b) = ws.transport.take_output() {
                    self.out.push_back((Lsn::ZERO, b));
                }
            }
            Mode::Sse => {
                let data =
                    serde_json::to_vec(&serde_json::json!({"error": msg})).unwrap_or_default();
                self.out
                    .push_back((Lsn::ZERO, sse::event(None, "error", &data)));
            }
            Mode::Http => {}
        }
        self.out_bytes = self.out.iter().map(|(_, b)| b.len()).sum();
        self.state = State::Closing;
    }

    // ----- resuming from the log ---------------------------------------------

    fn start_replay(
        &mut self,
        server: &Server,
        collection: String,
        filter: Option<Filter>,
        proto: Proto,
        from: EventPos,
    ) {
        // Live events after this LSN reach the hub queue (the subscription is
        // already registered); history covers everything up to it.
        let upto = server.engine.last_lsn();
        if from.lsn > upto {
            self.reset(
                &collection,
                proto,
                upto,
                "the resume position is ahead of this server's log",
            );
            return;
        }
        let replay = Replay {
            collection,
            filter,
            proto,
            from,
            upto,
        };
        if self.replays.is_empty() {
            self.effects.push_back(Effect::ReadHistory {
                after: Lsn(from.lsn.0.saturating_sub(1)),
                upto,
            });
        }
        self.replays.push_back(replay);
    }

    /// Tells the subscriber its position could not be honoured: it must
    /// resynchronise, and live events continue after `upto`.
    fn reset(&mut self, collection: &str, proto: Proto, upto: Lsn, reason: &str) {
        let data = serde_json::json!({
            "collection": collection,
            "reason": reason,
            "resume_from": EventPos { lsn: upto, idx: u32::MAX }.to_string(),
            "last_event_id": upto.to_string(),
        });
        let bytes = match proto {
            Proto::Sse => sse::event(
                Some(&upto.to_string()),
                "reset",
                &serde_json::to_vec(&data).unwrap_or_default(),
            ),
            Proto::WsJson | Proto::WsMsgPack => {
                let msg = serde_json::json!({"type": "SubscriptionReset", "payload": data});
                let payload = if proto == Proto::WsMsgPack {
                    Bytes::from(rmp_serde::to_vec_named(&msg).unwrap_or_default())
                } else {
                    Bytes::from(serde_json::to_vec(&msg).unwrap_or_default())
                };
                self.push_out(
                    Lsn::ZERO,
                    frame_header(proto == Proto::WsMsgPack, payload.len()),
                );
                payload
            }
        };
        self.push_out(Lsn::ZERO, bytes);
    }

    /// The next effect for the runtime to perform.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The outcome of `Effect::Http`: the response bytes, or why there are none.
    pub fn handle_call_result(&mut self, server: &mut Server, result: Result<Vec<u8>, String>) {
        let Some((call, keep_alive, head_only)) = self.pending_call.take() else {
            return;
        };
        let response = server.finish_call(&call, result);
        if !keep_alive {
            self.state = State::Closing;
        }
        self.push_out(Lsn::ZERO, response.encode(keep_alive, head_only));
    }

    /// Log batches read for the running replay.
    pub fn handle_history(&mut self, server: &mut Server, result: History) {
        let Some(replay) = self.replays.front_mut() else {
            return;
        };
        let mut done = false;
        match result {
            History::Truncated => {
                let (c, p, u) = (replay.collection.clone(), replay.proto, replay.upto);
                self.reset(
                    &c,
                    p,
                    u,
                    "the resume position is older than the retained log",
                );
                done = true;
            }
            History::Failed(why) => {
                let (c, p, u) = (replay.collection.clone(), replay.proto, replay.upto);
                self.reset(&c, p, u, &format!("the log could not be read: {why}"));
                done = true;
            }
            History::Batches { batches, more } => {
                let mut out: Vec<(Proto, Bytes)> = Vec::new();
                let mut last = None;
                for (lsn, payload) in &batches {
                    if *lsn > replay.upto {
                        done = true;
                        break;
                    }
                    last = Some(*lsn);
                    let Ok(batch) = mutation::decode(payload) else {
                        continue;
                    };
                    let timestamp = batch.at.to_rfc3339();
                    for (idx, change) in changes(&batch).iter().enumerate() {
                        let pos = EventPos {
                            lsn: *lsn,
                            idx: idx as u32,
                        };
                        if pos <= replay.from
                            || change.collection() != replay.collection
                            || matches!(change, Change::SchemaChanged { implicit: true, .. })
                        {
                            continue;
                        }
                        if let Some(bytes) = hub::encode(
                            change,
                            replay.proto,
                            replay.filter.as_ref(),
                            &server.engine,
                            &timestamp,
                            pos,
                        ) {
                            out.push((replay.proto, bytes));
                        }
                    }
                }
                match last {
                    Some(lsn) if more && !done => {
                        replay.from = EventPos { lsn, idx: u32::MAX };
                        self.effects.push_back(Effect::ReadHistory {
                            after: lsn,
                            upto: replay.upto,
                        });
                    }
                    _ => done = true,
                }
                for (proto, bytes) in out {
                    if proto != Proto::Sse {
                        self.push_out(
                            Lsn::ZERO,
                            frame_header(proto == Proto::WsMsgPack, bytes.len()),
                        );
                    }
                    self.push_out(Lsn::ZERO, bytes);
                }
            }
        }
        if done {
            self.replays.pop_front();
            if let Some(next) = self.replays.front() {
                self.effects.push_back(Effect::ReadHistory {
                    after: Lsn(next.from.lsn.0.saturating_sub(1)),
                    upto: next.upto,
                });
            } else {
                self.pull_events();
            }
        }
    }

    // ----- output -----------------------------------------------------------

    /// The next bytes to write, once what they depend on is durable.
    pub fn poll_transmit(&mut self, durable: Lsn) -> Option<Bytes> {
        match self.out.front() {
            Some((lsn, _)) if *lsn <= durable => {
                let (_, bytes) = self.out.pop_front()?;
                self.out_bytes = self.out_bytes.saturating_sub(bytes.len());
                if self.notified && self.out_bytes < LOCAL_OUT_BYTES / 2 {
                    self.pull_events();
                }
                // Pipelined requests beyond the window wait in `inbuf`: parse
                // them as replies make room.
                if self.work.is_empty() && !self.inbuf.is_empty() {
                    self.parse_http();
                }
                Some(bytes)
            }
            _ => {
                if (self.state == State::Closing || self.eof)
                    && self.out.is_empty()
                    && self.work.is_empty()
                    && self.pending_call.is_none()
                    && self.deferred_close.is_none()
                {
                    self.state = State::Closed;
                }
                None
            }
        }
    }

    /// Storage failed: output waiting for batches beyond `durable` will never be
    /// released. Those HTTP replies become 503s (and the connection closes, as
    /// their outcome is unknown); a stream holding such events is closed. A
    /// connection with nothing in doubt carries on (reads still work).
    pub fn handle_storage_failure(&mut self, durable: Lsn, message: &str) {
        if !self.out.iter().any(|(lsn, _)| *lsn > durable) {
            return;
        }
        if self.is_streaming() {
            self.out.retain(|(lsn, _)| *lsn <= durable);
            self.out_bytes = self.out.iter().map(|(_, b)| b.len()).sum();
            if let Mode::WebSocket(ws) = &mut self.mode {
                ws.transport.close(1011, "storage failure");
                if let Some(b) = ws.transport.take_output() {
                    self.out.push_back((Lsn::ZERO, b));
                }
            }
            self.out_bytes = self.out.iter().map(|(_, b)| b.len()).sum();
        } else {
            // The first reply whose write is in doubt becomes a 503 that closes the
            // connection; nothing after it is sent.
            if let Some(at) = self.out.iter().position(|(lsn, _)| *lsn > durable) {
                self.out.truncate(at);
                let r = Response::error(
                    503,
                    &format!("the write could not be made durable: {message}"),
                )
                .with_header("Retry-After", "1")
                .encode(false, false);
                self.out.push_back((Lsn::ZERO, r));
            }
            self.out_bytes = self.out.iter().map(|(_, b)| b.len()).sum();
        }
        self.work.clear();
        self.pending_call = None;
        self.deferred_close = None;
        self.state = State::Closing;
    }

    /// Whether output is held back waiting for durability.
    pub fn awaiting_durability(&self, durable: Lsn) -> bool {
        self.out.front().is_some_and(|(lsn, _)| *lsn > durable)
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    // ----- timers -----------------------------------------------------------

    /// When `handle_timeout` should run next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.state != State::Open {
            return None;
        }
        match self.mode {
            Mode::Http => Some(self.last_activity.saturating_add(self.idle_timeout)),
            Mode::WebSocket(_) | Mode::Sse => self.next_beat,
        }
    }

    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.state != State::Open {
            return;
        }
        match &mut self.mode {
            Mode::Http => {
                if now < self.last_activity.saturating_add(self.idle_timeout) {
                    return;
                }
                if self.parser.in_progress(&self.inbuf) {
                    let r = Response::error(408, "timed out waiting for the rest of the request");
                    self.push_out(Lsn::ZERO, r.encode(false, false));
                }
                self.state = State::Closing;
                self.work.clear();
            }
            Mode::WebSocket(ws) => {
                let Some(beat) = self.next_beat else { return };
                if now < beat {
                    return;
                }
                // Three missed heartbeats with no sign of life: the peer is gone.
                if now.since(self.last_activity) > self.heartbeat * 3
                    && now.since(self.opened) > self.heartbeat * 3
                {
                    ws.transport.close(1001, "no response to pings");
                    self.state = State::Closing;
                } else {
                    ws.transport.ping();
                }
                if let Some(b) = ws.transport.take_output() {
                    self.push_out(Lsn::ZERO, b);
                }
                self.next_beat = Some(now.saturating_add(self.heartbeat));
            }
            Mode::Sse => {
                let Some(beat) = self.next_beat else { return };
                if now < beat {
                    return;
                }
                self.push_out(Lsn::ZERO, Bytes::from_static(sse::HEARTBEAT));
                self.next_beat = Some(now.saturating_add(self.heartbeat));
            }
        }
    }
}
