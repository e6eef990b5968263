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
//! The inputs are the `handle_*` methods (bytes, EOF, a wake-up, a timer, a
//! history read), each with `now` where time matters; the outputs are
//! `poll_transmit`, `poll_effect` and `poll_timeout`. `driver::step` is the one
//! place that drains them in the documented order; runtimes, the simulation
//! and the fuzz targets all call it.
//!
//! Every outgoing piece carries the LSN that must be durable before it may be
//! sent, so nothing a client sees can be taken back by a crash.
//!
//! The rooms: `http1` (pipelining, upgrades), `stream` (WebSocket and SSE:
//! messages, outbox, heartbeats, overflow), `replay` (resuming from the log).

mod http1;
mod replay;
mod stream;

use crate::dialect::lanonasis::stream::Feed;
use crate::dialect::{EventCodec, WsSession};
use crate::ids::{ConnId, Lsn};
use crate::realtime::hub::Outbox;
use crate::server::pending::Ticket;
use crate::time::Timestamp;
use crate::timers::TimerTable;
use crate::wire::http::{HttpError, Limits, Phase, Request, RequestParser, Response};
use crate::wire::ws::{Incoming, WsTransport};
use bytes::{Bytes, BytesMut};
use replay::Replay;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

pub use replay::{History, HistoryError, HISTORY_CHUNK_BYTES};

/// Pipelined requests (or WebSocket messages) accepted ahead of their replies.
const MAX_PIPELINE: usize = 256;
/// Bytes a connection holds for the socket before it stops taking more events
/// from the hub (the hub's own budget then absorbs bursts, up to its limit).
const LOCAL_OUT_BYTES: usize = 256 * 1024;
/// How long a connection refused at the connection limit waits for its
/// request before it is simply closed.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// A request whose reply comes later (an outbound call, a chat answer).
#[derive(Debug)]
struct PendingCall {
    ticket: Ticket,
    keep_alive: bool,
    head_only: bool,
    /// Headers set when the request was answered (rate limits, CORS), for
    /// the reply when it comes.
    headers: Vec<(&'static str, String)>,
}

#[derive(Debug)]
enum Work {
    /// A request, with its body decoded if that was done outside the lock.
    Request(Request, Option<crate::error::Result<serde_json::Value>>),
    /// The parser holds a head whose large body waits for the server's
    /// consent (credentials, memory) before it is read.
    Admit,
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
    session: WsSession,
    /// When the client last sent a message (for dialects with an idle
    /// timeout).
    last_message: Timestamp,
}

#[derive(Debug)]
enum Mode {
    Http,
    WebSocket(Box<WsMode>),
    Sse(SseMode),
}

/// An SSE stream: its codec, and whether it ends with its last event (a chat
/// answer) or runs until the client leaves (a change feed).
#[derive(Debug, Clone)]
struct SseMode {
    codec: EventCodec,
    ends_with_answer: bool,
    /// A Lanonasis stream's heartbeat state (its heartbeats are events).
    feed: Option<Feed>,
}

/// The connection's deadlines (one timer table, `timers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum ConnTimer {
    /// HTTP: close after this long without input (408 if a request is half in).
    Idle,
    /// HTTP: the request under way must be in by then (its head, or its
    /// body), however slowly its bytes trickle in (408 and close).
    Request,
    /// WebSocket ping or SSE comment; three missed pings close a WebSocket.
    Heartbeat,
    /// The token the stream was opened with expires (`--stream-credentials`).
    Credential,
}

/// Something the runtime must do for the connection (I/O that `core` cannot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Read committed batches with LSN > `after` (at most
    /// `HISTORY_CHUNK_BYTES`; everything up to `upto` is already durable) and
    /// hand them to `handle_history`.
    ReadHistory { after: Lsn, upto: Lsn },
}

/// The settings a connection is made with.
#[derive(Clone, Copy, Debug)]
pub struct ConnConfig {
    pub limits: Limits,
    pub idle_timeout: Duration,
    pub heartbeat: Duration,
    pub max_message: usize,
    /// How long a request head may take once started.
    pub head_timeout: Duration,
    /// How long a request body may take once its head is in.
    pub body_timeout: Duration,
}

/// What waits in `Connection::out`: bytes, or an HTTP reply (with whether
/// to keep the connection alive, and whether it answers a HEAD) whose body
/// is encoded when it is sent.
#[derive(Debug)]
enum Out {
    Bytes(Bytes),
    Reply(Box<Response>, bool, bool),
}

impl Out {
    /// Bytes it holds (none for a reply not encoded yet).
    fn len(&self) -> usize {
        match self {
            Out::Bytes(b) => b.len(),
            Out::Reply(r, ..) => r.body.len(),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Out::Bytes(b) => b,
            Out::Reply(r, keep_alive, head_only) => r.encode(keep_alive, head_only),
        }
    }
}

#[derive(Debug)]
pub struct Connection {
    id: ConnId,
    state: State,
    mode: Mode,
    /// At the connection limit: every request is answered with this 503 and
    /// the connection closes.
    refusal: Option<String>,
    parser: RequestParser,
    inbuf: BytesMut,
    work: VecDeque<Work>,
    out: VecDeque<(Lsn, Out)>,
    out_bytes: usize,
    last_activity: Timestamp,
    opened: Timestamp,
    timers: TimerTable<ConnTimer>,
    idle_timeout: Duration,
    head_timeout: Duration,
    body_timeout: Duration,
    /// The phase the `Request` deadline was armed for.
    deadline_for: Phase,
    /// A TLS handshake is under way (the `Request` deadline is armed for it).
    handshaking: bool,
    /// A `Work::Admit` is queued for the parser's waiting head.
    admission_queued: bool,
    heartbeat: Duration,
    max_message: usize,
    eof: bool,
    effects: VecDeque<Effect>,
    /// A history read waiting for its position to be durable.
    history_due: Option<(Lsn, Lsn)>,
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
    /// A reply that comes later (an outbound call, a chat answer), with
    /// keep-alive and HEAD; later requests wait behind it. The server wakes
    /// us when it is ready.
    pending_call: Option<PendingCall>,
    /// Storage failure was already handled.
    storage_failed: bool,
}

impl Connection {
    pub fn new(id: ConnId, config: ConnConfig, now: Timestamp) -> Self {
        let mut timers = TimerTable::default();
        timers.set(
            ConnTimer::Idle,
            Some(now.saturating_add(config.idle_timeout)),
        );
        Connection {
            id,
            state: State::Open,
            mode: Mode::Http,
            refusal: None,
            parser: RequestParser::new(config.limits),
            inbuf: BytesMut::new(),
            work: VecDeque::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            last_activity: now,
            opened: now,
            timers,
            idle_timeout: config.idle_timeout,
            head_timeout: config.head_timeout,
            body_timeout: config.body_timeout,
            deadline_for: Phase::Idle,
            handshaking: false,
            admission_queued: false,
            heartbeat: config.heartbeat.max(Duration::from_secs(1)),
            max_message: config.max_message,
            eof: false,
            effects: VecDeque::new(),
            history_due: None,
            replays: VecDeque::new(),
            notified: false,
            pending_call: None,
            outbox: None,
            input_failed: false,
            upgrade_pending: false,
            deferred_close: None,
            storage_failed: false,
        }
    }

    /// A connection over the server's limit: its request is answered with a
    /// 503 carrying `message`, then it closes (or closes after a short wait if
    /// no request comes).
    pub(crate) fn refusing(mut self, message: String, now: Timestamp) -> Self {
        self.refusal = Some(message);
        self.idle_timeout = self.idle_timeout.min(REFUSAL_DEADLINE);
        self.timers
            .set(ConnTimer::Idle, Some(now.saturating_add(self.idle_timeout)));
        self
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Whether this connection streams events (WebSocket or SSE).
    pub fn is_streaming(&self) -> bool {
        !matches!(self.mode, Mode::Http)
    }

    /// The codec this connection's events are encoded with, once streaming.
    fn codec(&self) -> Option<EventCodec> {
        match &self.mode {
            Mode::Http => None,
            Mode::WebSocket(ws) => Some(ws.session.codec()),
            Mode::Sse(sse) => Some(sse.codec),
        }
    }

    fn push_out(&mut self, lsn: Lsn, bytes: Bytes) {
        self.out_bytes += bytes.len();
        self.out.push_back((lsn, Out::Bytes(bytes)));
    }

    /// Queues an HTTP reply; one with a deferred body is encoded when it is
    /// sent, which is outside the server lock (`driver::step`).
    fn push_reply(&mut self, lsn: Lsn, response: Response, keep_alive: bool, head_only: bool) {
        if response.deferred.is_some() {
            self.out
                .push_back((lsn, Out::Reply(Box::new(response), keep_alive, head_only)));
        } else {
            self.push_out(lsn, response.encode(keep_alive, head_only));
        }
    }

    fn recount_out(&mut self) {
        self.out_bytes = self.out.iter().map(|(_, o)| o.len()).sum();
    }

    // ----- inputs -----------------------------------------------------------

    /// Bytes of a TLS handshake arrived (nothing for the protocol yet);
    /// `complete` once it is done. The handshake gets the same deadline as a
    /// request head, from its first byte, so a client trickling it cannot hold
    /// the connection for the idle timeout; past the deadline the connection
    /// closes without a word.
    pub fn handle_handshake_input(&mut self, now: Timestamp, complete: bool) {
        if self.state != State::Open || !matches!(self.mode, Mode::Http) {
            return;
        }
        self.last_activity = now;
        if complete {
            if std::mem::take(&mut self.handshaking) {
                self.timers.set(ConnTimer::Request, None);
            }
        } else if !self.handshaking {
            self.handshaking = true;
            self.timers.set(
                ConnTimer::Request,
                Some(now.saturating_add(self.head_timeout)),
            );
        }
    }

    /// Bytes read from the socket (decrypted, under TLS).
    pub fn handle_input(&mut self, data: &[u8], now: Timestamp) {
        if self.state != State::Open || self.input_failed {
            return;
        }
        self.last_activity = now;
        if std::mem::take(&mut self.handshaking) {
            self.timers.set(ConnTimer::Request, None);
        }
        match &mut self.mode {
            Mode::Http => {
                self.timers
                    .set(ConnTimer::Idle, Some(now.saturating_add(self.idle_timeout)));
                self.inbuf.extend_from_slice(data);
                self.parse_http();
                self.decode_bodies();
                self.arm_request_deadline(now);
            }
            Mode::WebSocket(ws) => {
                ws.transport.handle_input(data);
                self.read_ws();
            }
            // SSE clients send nothing after the request; ignore stray bytes.
            Mode::Sse(_) => {}
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
            self.history_due = None;
        }
    }

    /// Something this connection waits for may be ready (hub events, a
    /// finished call). Needs no server lock.
    pub fn handle_notify(&mut self) {
        self.notified = true;
        self.pull_events();
    }

    // ----- execution --------------------------------------------------------

    /// Whether `execute` has something to do (needs the server lock).
    pub fn wants_server(&self) -> bool {
        match self.pending_call {
            // Woken: the call's reply may be ready.
            Some(_) => self.notified,
            None => !self.work.is_empty(),
        }
    }

    /// Whether the runtime should keep reading the socket. Not while a reply
    /// waits for an outbound call: later requests wait behind it anyway, and
    /// the runtime then waits for the wake-up that says the reply is ready.
    pub fn wants_read(&self) -> bool {
        self.state == State::Open
            && self.pending_call.is_none()
            && !self.eof
            && !self.input_failed
            && self.work.len() < MAX_PIPELINE
            && self.parser.awaiting_admission().is_none()
            && self.out_bytes < 4 * LOCAL_OUT_BYTES
            && self.out.len() < 4 * MAX_PIPELINE
    }

    /// Runs parsed requests or messages against the server, and takes queued
    /// events from the hub.
    pub fn execute(&mut self, server: &mut crate::server::Server, now: Timestamp) {
        if let Some(ticket) = self.pending_call.as_ref().map(|c| c.ticket) {
            self.notified = false;
            let Some((mut response, wait_for)) = server.take_reply(ticket) else {
                return;
            };
            let Some(call) = self.pending_call.take() else {
                return;
            };
            if !call.keep_alive {
                self.state = State::Closing;
            }
            response.headers.extend(call.headers);
            self.push_reply(wait_for, response, call.keep_alive, call.head_only);
        }
        while self.pending_call.is_none() {
            if self.state != State::Open && !self.is_streaming() {
                self.work.clear();
            }
            let Some(work) = self.work.pop_front() else {
                break;
            };
            match work {
                Work::Request(req, body) => self.execute_request(server, req, body, now),
                Work::Admit => self.execute_admission(server, now),
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
        if let Some(expires) = server.take_stream_expiry(self.id) {
            // Only a stream outlives the request that authenticated it.
            let expires = expires.filter(|_| self.is_streaming());
            self.timers.set(ConnTimer::Credential, expires);
        }
        self.pull_events();
        match self.mode {
            Mode::Http => {
                self.parse_http();
                self.arm_request_deadline(now);
            }
            Mode::WebSocket(_) => self.read_ws(),
            Mode::Sse(_) => {}
        }
    }

    /// The next effect for the runtime to perform. A history read is handed out
    /// only once everything it covers is durable (`durable`), so the runtime
    /// never waits for durability on the connection's behalf.
    pub fn poll_effect(&mut self, durable: Lsn) -> Option<Effect> {
        if let Some(e) = self.effects.pop_front() {
            return Some(e);
        }
        match self.history_due {
            Some((after, upto)) if upto <= durable => {
                self.history_due = None;
                Some(Effect::ReadHistory { after, upto })
            }
            _ => None,
        }
    }

    // ----- output -----------------------------------------------------------

    /// The next bytes to write, once what they depend on is durable.
    pub fn poll_transmit(&mut self, durable: Lsn) -> Option<Bytes> {
        match self.out.front() {
            Some((lsn, _)) if *lsn <= durable => {
                let (_, out) = self.out.pop_front()?;
                self.out_bytes = self.out_bytes.saturating_sub(out.len());
                let bytes = out.into_bytes();
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
                if self.finished() {
                    self.state = State::Closed;
                }
                None
            }
        }
    }

    /// Nothing more will be read or sent: the connection can close. (A
    /// connection that wants no more input closes itself here; runtimes never
    /// decide that.)
    fn finished(&self) -> bool {
        let no_more_input = self.state == State::Closing || self.eof;
        no_more_input
            && self.out.is_empty()
            && self.work.is_empty()
            && self.pending_call.is_none()
            && self.deferred_close.is_none()
            && self.history_due.is_none()
    }

    /// The LSN held-back output waits for, if any: a reply or event not yet
    /// durable, or a history read whose position is not.
    pub fn awaiting_durability(&self, durable: Lsn) -> Option<Lsn> {
        let out = self
            .out
            .front()
            .map(|(lsn, _)| *lsn)
            .filter(|l| *l > durable);
        let history = self
            .history_due
            .map(|(_, upto)| upto)
            .filter(|l| *l > durable);
        out.or(history)
    }

    /// Storage failed: output waiting for batches beyond `durable` will never be
    /// released. The first such HTTP reply becomes a 500 saying the write was
    /// applied but its durability is unknown (not a 503, which promises the
    /// write was not applied and invites a retry that could apply it twice),
    /// and the connection closes; a stream holding such events is closed. A
    /// connection with nothing in doubt carries on (reads still work).
    pub fn handle_storage_failure(&mut self, durable: Lsn, message: &str) {
        let in_doubt = self.out.iter().any(|(lsn, _)| *lsn > durable)
            || self.history_due.is_some_and(|(_, upto)| upto > durable);
        if self.storage_failed || !in_doubt {
            return;
        }
        self.storage_failed = true;
        if self.is_streaming() {
            self.out.retain(|(lsn, _)| *lsn <= durable);
            if let Mode::WebSocket(ws) = &mut self.mode {
                ws.transport.close(1011, "storage failure");
                if let Some(b) = ws.transport.take_output() {
                    self.out.push_back((Lsn::ZERO, Out::Bytes(b)));
                }
            }
        } else if let Some(at) = self.out.iter().position(|(lsn, _)| *lsn > durable) {
            // The first reply whose write is in doubt says so and closes the
            // connection; nothing after it is sent.
            self.out.truncate(at);
            let r = Response::error(
                500,
                &format!(
                    "the write was applied but could not be made durable ({message}): it is visible now and may or may not survive a restart; check before retrying"
                ),
            )
            .with_header("X-Tidepool-Durability", "unknown")
            .encode(false, false);
            self.out.push_back((Lsn::ZERO, Out::Bytes(r)));
        }
        self.recount_out();
        self.history_due = None;
        self.work.clear();
        self.pending_call = None;
        self.deferred_close = None;
        self.state = State::Closing;
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
        self.timers.next()
    }

    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.state != State::Open {
            return;
        }
        for timer in self.timers.expired(now) {
            // Deadlines that fall together (idle and request) answer once.
            if self.state != State::Open {
                break;
            }
            match timer {
                ConnTimer::Idle => self.idle_expired(),
                ConnTimer::Request => self.request_expired(),
                ConnTimer::Heartbeat => self.heartbeat_due(now),
                ConnTimer::Credential => self.credential_expired(),
            }
        }
    }
}
