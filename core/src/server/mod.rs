//! `Server`: the state shared by all connections (engine, subscription hub,
//! auth, settings, timers) and the entry points for parsed requests. The runtime
//! keeps it behind a lock; connection state machines (`conn`) call in and get
//! replies that say which LSN must be durable before their bytes may be sent.
//!
//! Its own inputs and outputs, drained by the runtime after every call that
//! holds the lock: `poll_log` (batches to make durable) and `handle_durable`,
//! `poll_timeout` / `handle_timeout` (one timer table), `poll_wakeup`
//! (connections with something new to send), `poll_call` and the
//! `handle_call_*` reports (outbound calls, `calls`), `poll_read` and
//! `finish_read` (reads run outside the lock, `reads`), `poll_host_job` and
//! `finish_host_job` (backups, which need the runtime's store, `host_jobs`).

mod admission;
pub mod calls;
pub mod chat;
pub mod documents;
pub mod functions;
pub mod guesses;
pub mod health;
pub mod host_jobs;
pub mod metrics;
pub mod pending;
pub mod rate;
pub mod reads;
pub mod schedules;
pub mod settings;
pub mod sockets;

use crate::auth::{Auth, Principal};
use crate::chat::turn::{TurnId, Turns};
use crate::config::{Config, LogLevel};
use crate::conn::{ConnConfig, Connection};
use crate::dialect::rest::{self, embed, Outcome};
use crate::dialect::{self, EventCodec};
use crate::engine::mutation::{self, Batch};
use crate::engine::{Committed, Engine, SnapshotCursor};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ConnId, Lsn};
use crate::realtime::events::{self, EventPos};
use crate::realtime::hub::{Filter, Hub, Outbox};
use crate::time::Timestamp;
use crate::timers::TimerTable;
use crate::wire::http::{Limits, Request, Response};
use calls::{CallCommand, CallId, CallLimits, Calls, Purpose, TransportError};
use pending::{Pending, Ticket};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The ekoDB server version we answer to as, for clients that gate features on it.
pub const COMPAT_VERSION: &str = "0.80.0";

/// A response and the LSN that must be durable before it is released. Reads wait
/// for everything applied before them, so a client never sees data that a crash
/// could still take back.
#[derive(Debug)]
pub struct Reply {
    pub response: Response,
    pub wait_for: Lsn,
    /// The request switches the connection to another protocol.
    pub upgrade: Option<Upgrade>,
    /// The response comes later (`Server::take_reply` once the connection
    /// is woken): an outbound call or a chat answer is under way.
    pub pending: Option<Ticket>,
}

/// A protocol switch decided by a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Upgrade {
    WebSocket {
        accept: String,
        /// The subprotocol the handshake answer selects (EVA's `chat`).
        protocol: Option<String>,
        /// The dialect spoken on the socket, with its state.
        session: crate::dialect::WsSession,
    },
    Sse {
        collection: String,
        filter: Option<Filter>,
        resume: Option<EventPos>,
    },
    /// A dialect's SSE event stream over one collection's changes (the
    /// Lanonasis stream), resuming after `resume` when given.
    Feed {
        codec: crate::dialect::EventCodec,
        collection: String,
        filter: Option<Filter>,
        resume: Option<EventPos>,
        /// Events that are not changes the stream missed, each with the
        /// batch it follows (sent between the replayed ones).
        missed: Vec<(Lsn, bytes::Bytes)>,
        feed: crate::dialect::lanonasis::stream::Feed,
    },
    /// An SSE stream of one chat answer (events after `after`), which ends
    /// with the answer.
    ChatStream {
        chat_key: String,
        message_id: Option<String>,
        after: Option<u32>,
    },
}

/// How often a burst of refused connections is logged.
const REFUSALS_NOTED_EVERY: Duration = Duration::from_secs(10);

/// Where a connection came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub ip: Option<std::net::IpAddr>,
    pub listener: crate::dialect::mounts::Listener,
}

/// The server's deadlines (one timer table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum ServerTimer {
    /// The next record, KV entry or trash entry to expire: sweep.
    Expiry,
    /// The oldest open transaction is abandoned: roll it back.
    Transactions,
    /// An outbound call's current phase ran out of time.
    Call(CallId),
    /// A chat turn's retry is due, or its client tools ran out of time.
    Turn(TurnId),
    /// `system.health` for the streams that asked for it.
    Health,
    /// A function run's sleep ends, or its outbound call runs out of time.
    Function(functions::RunId),
    /// The earliest enabled schedule is due (`schedules`).
    Schedules,
    /// Text indexes may have removed versions to sweep with idle time.
    SearchUpkeep,
}

/// How soon after a write the text indexes' sweeps get idle time, and how
/// often while one is under way...
const UPKEEP_AFTER: Duration = Duration::from_millis(200);
const UPKEEP_EVERY: Duration = Duration::from_millis(20);
/// ... reading this many bytes of lists each time: 1.4-1.6 ms under the
/// lock on a 2-core EPYC (`search_bench`), under 8% of the lock's time
/// while a sweep is under way.
const UPKEEP_BYTES: usize = 128 * 1024;

/// What the store was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageOp {
    Append,
    Sync,
    InstallSnapshot,
}

/// A storage failure the host reports: after it the store refuses writes
/// until the server restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageFailure {
    pub op: StorageOp,
    /// The store's description (file, offset, cause).
    pub detail: String,
}

impl std::fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.op {
            StorageOp::Append => "appending to the log failed",
            StorageOp::Sync => "syncing the log failed",
            StorageOp::InstallSnapshot => "installing a snapshot failed",
        };
        write!(f, "{what}: {}", self.detail)
    }
}

/// Security events logged per window at most (`Server::security_event`).
const SECURITY_LINES: u32 = 50;
const SECURITY_WINDOW: Duration = Duration::from_secs(10);

/// Counters for the health report.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub last_lsn: Lsn,
    pub durable_lsn: Lsn,
    /// Durability reports (one per group commit).
    pub syncs: u64,
    pub subscribers: usize,
    pub connections: usize,
    pub calls_in_flight: usize,
}

/// A line for the operator's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub level: LogLevel,
    pub text: String,
}

#[derive(Debug)]
pub struct Server {
    engine: Engine,
    hub: Hub,
    auth: Auth,
    config: Config,
    durable: Lsn,
    storage_failure: Option<StorageFailure>,
    clock: Option<fn() -> Timestamp>,
    /// Samples the process (CPU, memory), supplied by the runtime.
    probe: Option<fn() -> health::ProcessSample>,
    /// Requests since the last health report.
    health: health::Window,
    /// Durability reports received (one per group commit): batches per sync is
    /// `last_lsn / syncs`.
    syncs: u64,
    timers: TimerTable<ServerTimer>,
    calls: Calls,
    pending: Pending,
    /// Chat answers running, and finished ones kept for resuming.
    turns: Turns,
    sockets: sockets::Sockets,
    /// Where connections came from (those with a known address, or from
    /// another listener than the main one).
    peers: HashMap<ConnId, Peer>,
    /// Since when, and how many, connections were refused at the limit.
    refusals: Option<(Timestamp, u64)>,
    /// Wrong API keys per client address.
    guesses: guesses::Guesses,
    /// Connections per address, and large bodies being received.
    admission: admission::Admission,
    /// Request budgets per key and per address.
    rates: rate::RateLimits,
    /// Replies wait until their writes are durable (`durable_operations`
    /// of `/api/config`); off, they go out once applied.
    durable_acks: bool,
    /// Security lines logged in the current window, and those held back.
    security_lines: (Option<Timestamp>, u32, u64),
    /// When the token a connection's stream was opened with expires (taken
    /// by the connection, which closes the stream then).
    /// (`None`: the latest credential does not expire.)
    stream_expiry: HashMap<ConnId, Option<Timestamp>>,
    /// When recovery finished (the server's uptime starts there).
    booted_at: Option<Timestamp>,
    /// Providers the offline one already stood in for (said once).
    fallback_noted: HashSet<String>,
    /// Lines for the operator's log (`poll_note`).
    notes: VecDeque<Note>,
    next_conn: u64,
    open_connections: usize,
    /// Connections to wake (their outbox has news).
    wakeups: VecDeque<ConnId>,
    /// Reads to run outside the lock (`poll_read`).
    reads: VecDeque<reads::ReadJob>,
    /// Deferred reads running per WebSocket (bounded).
    socket_reads: HashMap<ConnId, usize>,
    /// Jobs for the runtime (`poll_host_job`), and whether a backup runs.
    host_jobs: VecDeque<host_jobs::HostTask>,
    backup_running: bool,
    /// What `/metrics` reports.
    metrics: metrics::Metrics,
    /// Request ids: this process's prefix and the next number.
    request_ids: (u32, u64),
    /// Stored functions and their runs.
    functions: functions::Functions,
    /// When each enabled schedule is due next (`schedules`).
    schedules: crate::schedule::Due,
}

impl Server {
    /// `secret` signs tokens; `seed` drives id generation. Both come from the runtime.
    pub fn new(config: Config, secret: &[u8], seed: u64) -> Server {
        let auth = Auth::new(
            secret,
            &config.api_keys,
            Duration::from_secs(config.token_lifetime_secs.max(60)),
        );
        let limits = CallLimits {
            connect: Duration::from_secs(config.outbound_connect_timeout_secs.max(1)),
            first_byte: Duration::from_secs(config.outbound_timeout_secs.max(1)),
            idle: Duration::from_secs(config.outbound_idle_timeout_secs.max(1)),
            max_in_flight: config.outbound_max_calls.max(1),
            max_queued: config.outbound_max_calls.max(1) * 16,
        };
        let functions = functions::Functions::new(&config, secret, seed);
        let mut engine = Engine::new(seed);
        engine.set_transaction_idle_timeout(Duration::from_secs(
            config.transaction_idle_timeout_secs,
        ));
        engine.set_query_work(config.max_query_work);
        engine.set_vector_half_rows(config.vector_half_rows);
        engine.set_max_batch_bytes(config.max_batch_bytes);
        Server {
            engine,
            hub: Hub::new(config.outbound_queue_bytes),
            auth,
            config,
            durable: Lsn::ZERO,
            storage_failure: None,
            clock: None,
            probe: None,
            health: health::Window::default(),
            syncs: 0,
            timers: TimerTable::default(),
            calls: Calls::new(limits),
            pending: Pending::default(),
            turns: Turns::default(),
            sockets: Default::default(),
            peers: HashMap::new(),
            refusals: None,
            guesses: Default::default(),
            admission: Default::default(),
            rates: Default::default(),
            durable_acks: true,
            security_lines: (None, 0, 0),
            stream_expiry: HashMap::new(),
            booted_at: None,
            fallback_noted: HashSet::new(),
            notes: VecDeque::new(),
            next_conn: 1,
            open_connections: 0,
            wakeups: VecDeque::new(),
            reads: VecDeque::new(),
            socket_reads: HashMap::new(),
            host_jobs: VecDeque::new(),
            backup_running: false,
            metrics: Default::default(),
            request_ids: ((seed ^ (seed >> 32)) as u32, 0),
            functions,
            schedules: Default::default(),
        }
    }

    /// Lets handlers re-read the wall clock to report how long they took
    /// (`execution_time_ms`). The runtime passes its clock; simulations don't.
    pub fn set_clock(&mut self, clock: fn() -> Timestamp) {
        self.clock = Some(clock);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_head_bytes: self.config.max_head_bytes,
            max_body_bytes: self.config.max_body_bytes,
            max_headers: 64,
            admit_bodies_above: rest::PUBLIC_BODY_LIMIT,
        }
    }

    // ----- connections ------------------------------------------------------

    /// A new client connection. Over `max_connections` it is still accepted,
    /// so the client hears why: it answers its request with a 503 and closes.
    /// Every accepted connection ends with `connection_closed`.
    pub fn accept(&mut self, now: Timestamp) -> Connection {
        self.accept_from(now, Peer::default())
    }

    /// A new connection from `peer` (its address and the listener it came
    /// in on, which decide what it may reach).
    pub fn accept_from(&mut self, now: Timestamp, peer: Peer) -> Connection {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        if peer != Peer::default() {
            self.peers.insert(id, peer);
        }
        let config = ConnConfig {
            limits: self.limits(),
            idle_timeout: Duration::from_secs(self.config.idle_timeout_secs.max(1)),
            heartbeat: Duration::from_secs(self.config.heartbeat_secs.max(1)),
            max_message: self.config.ws_max_message_bytes,
            head_timeout: Duration::from_secs(self.config.request_head_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(self.config.request_body_timeout_secs.max(1)),
        };
        let conn = Connection::new(id, config, now);
        self.open_connections += 1;
        let per_address = self.config.connections_per_address();
        if let Some(ip) = peer.ip {
            if !self.admission.connect(ip, per_address) {
                self.note_refusal(
                    now,
                    format!(
                        "{ip} reached its limit of {per_address} (--max-connections-per-address)"
                    ),
                );
                return conn.refusing(
                    format!(
                        "this address has {per_address} connections open, its limit                          (--max-connections-per-address); close some and try again"
                    ),
                    now,
                );
            }
        }
        if self.open_connections > self.config.max_connections {
            let why = format!(
                "{} are open, the limit is {} (--max-connections)",
                self.open_connections - 1,
                self.config.max_connections
            );
            self.note_refusal(now, why);
            return conn.refusing(
                format!(
                    "the server is at its connection limit ({}); try again later",
                    self.config.max_connections
                ),
                now,
            );
        }
        conn
    }

    /// A connection is gone: drop its subscriptions and queued events, and
    /// stop the calls whose results only it wanted.
    pub fn connection_closed(&mut self, conn: ConnId, now: Timestamp) {
        if let Some(ip) = self.peers.remove(&conn).and_then(|p| p.ip) {
            self.admission.disconnect(ip);
        }
        self.admission.release_body(conn);
        self.stream_expiry.remove(&conn);
        self.open_connections = self.open_connections.saturating_sub(1);
        // Back under the limit: the burst is over (and said so if it grew).
        if self.open_connections < self.config.max_connections {
            if let Some((_, more)) = self.refusals.take().filter(|(_, n)| *n > 0) {
                self.note_at(
                    LogLevel::Warn,
                    format!("refused {more} more connections (503) before room came back"),
                );
            }
        }
        let abandoned = self.pending.forget(conn);
        for t in &abandoned {
            self.metrics.take_deferred(*t);
        }
        self.chat_connection_closed(conn, &abandoned, now);
        self.forget_run_replies(&abandoned);
        self.sockets_closed(conn);
        self.hub.close(conn);
        self.calls.cancel_for(&abandoned, now, &mut self.timers);
        self.finish_operation(now);
    }

    /// The next connection to wake: its outbox has events that are now
    /// deliverable, or its call finished. Drain after every call that holds
    /// the lock.
    pub fn poll_wakeup(&mut self) -> Option<ConnId> {
        self.complete_finished_calls();
        self.wakeups.extend(self.pending.woken.drain(..));
        self.wakeups.pop_front()
    }

    /// Connections refused at the limit are logged once per burst: the
    /// first at once, then how many more at most every
    /// `REFUSALS_NOTED_EVERY`.
    fn note_refusal(&mut self, now: Timestamp, why: String) {
        let line = match &mut self.refusals {
            None => {
                self.refusals = Some((now, 0));
                "refusing connections (503)".to_string()
            }
            Some((since, more)) => {
                *more += 1;
                if now.since(*since) < REFUSALS_NOTED_EVERY {
                    return;
                }
                let line = format!("refused {more} more connections (503)");
                self.refusals = Some((now, 0));
                line
            }
        };
        self.note_at(LogLevel::Warn, format!("{line}: {why}"));
    }

    /// An informational line for the operator's log (the runtime prints it).
    pub(crate) fn note(&mut self, line: String) {
        self.note_at(LogLevel::Info, line);
    }

    /// A line for the operator's log at `level`, if `--log-level` keeps it.
    pub(crate) fn note_at(&mut self, level: LogLevel, text: String) {
        if self.logs(level) && self.notes.len() < 1024 {
            self.notes.push_back(Note { level, text });
        }
    }

    /// Whether lines at `level` are written (so callers can skip making them).
    pub(crate) fn logs(&self, level: LogLevel) -> bool {
        level <= self.config.log_level
    }

    /// The next line for the operator's log. Drain after every call that
    /// holds the lock.
    pub fn poll_note(&mut self) -> Option<Note> {
        self.notes.pop_front()
    }

    // ----- outbound calls ---------------------------------------------------

    /// The next thing the runtime must do about outbound calls.
    pub fn poll_call(&mut self) -> Option<CallCommand> {
        self.calls.poll_command()
    }

    /// The call is connected and its request written.
    pub fn handle_call_connected(&mut self, id: CallId, now: Timestamp) {
        self.calls.connected(id, now, &mut self.timers);
        self.pump_turns(now);
        self.pump_functions(now);
    }

    /// Bytes read from the call's connection.
    pub fn handle_call_data(&mut self, id: CallId, data: &[u8], now: Timestamp) {
        self.calls.data(id, data, now, &mut self.timers);
        self.pump_turns(now);
        self.pump_functions(now);
    }

    /// The provider closed the call's connection.
    pub fn handle_call_eof(&mut self, id: CallId, now: Timestamp) {
        self.calls.eof(id, now, &mut self.timers);
        self.pump_turns(now);
        self.pump_functions(now);
    }

    /// The call's connection failed.
    pub fn handle_call_error(&mut self, id: CallId, error: TransportError, now: Timestamp) {
        self.calls.error(id, error, now, &mut self.timers);
        self.pump_turns(now);
        self.pump_functions(now);
    }

    /// A reply that was pending, once ready, for the connection waiting on
    /// it, with the LSN that must be durable before it is sent.
    pub fn take_reply(&mut self, ticket: Ticket) -> Option<(Response, Lsn)> {
        self.complete_finished_calls();
        self.pending.take(ticket)
    }

    /// Replies of outbound calls that finished, handed to their tickets.
    fn complete_finished_calls(&mut self) {
        for (ticket, response) in std::mem::take(&mut self.calls.done) {
            self.complete(ticket, response, Lsn::ZERO);
        }
    }

    // ----- durability -------------------------------------------------------

    /// The next committed batch to persist.
    pub fn poll_log(&mut self) -> Option<Committed> {
        self.engine.poll_log()
    }

    /// Whether committed batches wait to be persisted.
    pub fn has_log(&self) -> bool {
        self.engine.has_log()
    }

    /// The runtime made everything up to `lsn` durable; connections whose queued
    /// events just became deliverable come out of `poll_wakeup`.
    pub fn handle_durable(&mut self, lsn: Lsn) {
        self.durable = self.durable.max(lsn);
        self.syncs += 1;
        let ready = self.hub.take_ready(self.durable);
        self.wakeups.extend(ready);
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.durable
    }

    /// The LSN of the newest committed batch.
    pub fn last_lsn(&self) -> Lsn {
        self.engine.last_lsn()
    }

    /// Storage failed: refuse writes from now on; replies waiting for batches that
    /// will never be durable are failed by their connections.
    pub fn handle_storage_failure(&mut self, failure: StorageFailure) {
        self.storage_failure.get_or_insert(failure);
    }

    pub fn storage_failure(&self) -> Option<&StorageFailure> {
        self.storage_failure.as_ref()
    }

    /// Applies a batch read back from the log (or a snapshot chunk) at startup.
    pub fn replay(&mut self, lsn: Lsn, batch: Batch<'_>) {
        self.engine.replay_decoded(lsn, batch);
    }

    /// Recovery is complete: everything replayed is durable.
    pub fn handle_recovered(&mut self, last: Lsn, now: Timestamp) {
        self.booted_at.get_or_insert(now);
        self.engine.set_last_lsn(last);
        self.durable = self.engine.last_lsn();
        self.restore_settings(now);
        self.recover_schedules(now);
        self.rearm(now);
    }

    /// Encodes up to `max_records` more of the live state for a compaction
    /// snapshot; `None` when the cursor has covered everything.
    pub fn snapshot_chunk(
        &self,
        cursor: &mut SnapshotCursor,
        max_records: usize,
    ) -> Option<Vec<u8>> {
        self.engine.snapshot_chunk(cursor, max_records)
    }

    // ----- timers -----------------------------------------------------------

    /// When `handle_timeout` should run next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.storage_failure.is_some() {
            return None;
        }
        self.timers.next()
    }

    /// Runs what is due: the expiry sweep, abandoned transactions.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.storage_failure.is_some() {
            return;
        }
        for timer in self.timers.expired(now) {
            match timer {
                ServerTimer::Expiry => {
                    self.engine.sweep(now);
                }
                ServerTimer::Transactions => self.engine.expire_transactions(now),
                ServerTimer::Call(id) => self.calls.timeout(id, now, &mut self.timers),
                ServerTimer::Turn(id) => self.turn_timeout(id, now),
                ServerTimer::Health => self.health_due(now),
                ServerTimer::Function(id) => self.function_timeout(id, now),
                ServerTimer::Schedules => self.schedules_due(now),
                ServerTimer::SearchUpkeep => {
                    if self.engine.search_upkeep(UPKEEP_BYTES) {
                        let next = now.saturating_add(UPKEEP_EVERY);
                        self.timers.set(ServerTimer::SearchUpkeep, Some(next));
                    }
                }
            }
            self.pump_turns(now);
            self.pump_functions(now);
        }
        self.finish_operation(now);
    }

    /// Re-arms the deadlines an operation may have moved.
    fn rearm(&mut self, _now: Timestamp) {
        self.timers
            .set(ServerTimer::Expiry, self.engine.next_deadline());
        self.timers.set(
            ServerTimer::Transactions,
            self.engine.next_transaction_deadline(),
        );
        self.timers
            .set(ServerTimer::Schedules, self.schedules.next());
    }

    // ----- requests ---------------------------------------------------------

    /// Ends an operation: seals its mutations into a batch, publishes its change
    /// events, re-arms the timers, and returns the LSN its reply must wait for.
    pub fn finish_operation(&mut self, now: Timestamp) -> Lsn {
        self.rearm(now);
        match self.engine.commit(now) {
            Some(lsn) => {
                // A write may have left removed versions in a text index.
                if self.timers.get(ServerTimer::SearchUpkeep).is_none()
                    && self.engine.search_upkeep_wanted()
                {
                    let at = now.saturating_add(UPKEEP_AFTER);
                    self.timers.set(ServerTimer::SearchUpkeep, Some(at));
                }
                if !self.hub.is_idle() {
                    let engine = &self.engine;
                    if let Some(batch) = engine
                        .peek_committed(lsn)
                        .and_then(|p| mutation::decode(p).ok())
                    {
                        let events = events::events(lsn, &batch, |c| engine.pk_name(c));
                        self.hub.publish(&events, dialect::encode_event);
                    }
                }
                lsn
            }
            None if self.storage_failure.is_some() => self.durable,
            None => self.engine.last_lsn(),
        }
    }

    /// Answers one REST request from `conn` (the route table is
    /// `dialect::rest::routes`). `body` is the request's body if the
    /// connection already decoded it (outside the server lock).
    pub fn handle_request(
        &mut self,
        conn: ConnId,
        req: &Request,
        body: Option<Result<serde_json::Value>>,
        now: Timestamp,
    ) -> Reply {
        // The body is in: what was reserved for it is no longer at risk of
        // being held by a client that never finishes.
        self.admission.release_body(conn);
        let durable_acks = self.durable_acks;
        let mut route = None;
        let (outcome, quota) = match rest::respond(self, conn, req, body, now, &mut route) {
            Ok((outcome, quota)) => (Ok(outcome), quota),
            Err(e) => (Err(e), None),
        };
        // A reply that comes later is a placeholder here: the headers set on
        // it (rate limits, CORS) go onto the real reply (`Connection`).
        let (response, upgrade, pending) = match outcome {
            Ok(Outcome::Reply(r)) => (r, None, None),
            Ok(Outcome::Upgrade(r, u)) => (r, Some(*u), None),
            Ok(Outcome::Call(request, kind)) => {
                let ticket = self.pending.ticket(conn);
                let purpose = Purpose::Reply {
                    ticket,
                    kind: kind.clone(),
                    max_body: embed::MAX_RESPONSE_BYTES,
                };
                match self.calls.start(request, purpose, now, &mut self.timers) {
                    Ok(_) => (Response::new(0, "", ""), None, Some(ticket)),
                    Err(failure) => {
                        self.pending.cancel(ticket);
                        (calls::refused(&kind, failure), None, None)
                    }
                }
            }
            Ok(Outcome::Pending(ticket)) => (Response::new(0, "", ""), None, Some(ticket)),
            Err(e) => (rest::error_response(&e), None, None),
        };
        let response = rate::with_headers(response, quota);
        let response = if req.header("origin").is_some() {
            rest::origins::allow(&self.config, req, response)
        } else {
            response
        };
        let took = self.clock.map(|c| c().since(now));
        let request_id = self.request_id(req);
        let method = metrics::method_label(&req.method);
        // The debug line names the path without its query (`?token=`).
        let log = self.logs(LogLevel::Debug).then(|| {
            let path = req.path.split('?').next().unwrap_or_default();
            format!("request {request_id} {method} {path}").into_boxed_str()
        });
        let started = metrics::Started {
            route: route.unwrap_or(metrics::UNMATCHED),
            method,
            at: now,
            log,
        };
        match pending {
            None => {
                self.count_request(response.status, took);
                self.answered(started, response.status, took);
            }
            // Work that ended while its request ran (an offline chat answer,
            // a refused provider) is answered already: counted now.
            Some(ticket) => match self.pending.ready_status(ticket) {
                Some(status) => self.answered(started, status, took),
                None => self.metrics.defer(ticket, started),
            },
        }
        let response = response.with_header("x-request-id", request_id);
        // Operations validate before they mutate, so anything journaled was applied
        // and must be logged even if the response is an error (a partial batch).
        let wait_for = self.finish_operation(now);
        // `durable_operations: false`: the reply goes out once applied; the
        // write is still logged and synced by the fsync policy.
        // The change of the setting itself is acknowledged durably.
        let wait_for = if durable_acks || self.durable_acks {
            wait_for
        } else {
            self.durable
        };
        Reply {
            response,
            wait_for,
            upgrade,
            pending,
        }
    }

    // ----- for the dialects -------------------------------------------------

    /// A ticket for a reply `conn` will wait for (`Outcome::Pending`).
    pub fn reply_ticket(&mut self, conn: ConnId) -> Ticket {
        self.pending.ticket(conn)
    }

    /// A ticket whose work never started (its request failed first).
    pub fn cancel_ticket(&mut self, ticket: Ticket) {
        self.metrics.take_deferred(ticket);
        self.pending.cancel(ticket);
    }

    /// The reply for a ticket is ready (to be sent once `wait_for` is durable).
    pub fn fulfil(&mut self, ticket: Ticket, response: Response, wait_for: Lsn) {
        self.complete(ticket, response, wait_for);
    }

    /// The id a reply carries in `X-Request-Id`: the client's own, when it
    /// sent a short one of safe characters, or this process's next.
    fn request_id(&mut self, req: &Request) -> String {
        let theirs = req.header("x-request-id").filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
        if let Some(id) = theirs {
            return id.to_string();
        }
        self.request_ids.1 += 1;
        format!("{:08x}-{:x}", self.request_ids.0, self.request_ids.1)
    }

    /// What the host measured around one sync of the log.
    pub fn note_sync(&mut self, sample: metrics::SyncSample) {
        self.metrics.sync(sample);
    }

    /// The host installed a compaction snapshot.
    pub fn note_compaction(&mut self) {
        self.metrics.compaction();
    }

    /// The `/metrics` exposition, as of now.
    pub fn metrics_text(&self, now: Timestamp) -> String {
        let mut streams: std::collections::BTreeMap<&'static str, usize> = Default::default();
        for codec in self.hub.stream_codecs() {
            *streams.entry(metrics::codec_label(codec)).or_insert(0) += 1;
        }
        let gauges = metrics::Gauges {
            connections: self.open_connections,
            streams,
            subscribers: self.hub.subscriber_count(),
            outbox_bytes: self.hub.queued_bytes(),
            outbox_overflows: self.hub.overflows(),
            reads_queued: self.reads.len(),
            replies_waiting: self.pending.waiting(),
            chat_answers: self.turns.active.len(),
            function_runs: self.functions.running(),
            function_runs_ended: [self.functions.finished_ok, self.functions.finished_err],
            uptime_secs: self.booted_at.map(|t| now.since(t).as_secs()),
            search_index_bytes: self.engine.search_index_bytes(),
        };
        self.metrics.render(&gauges)
    }

    /// Every deferred reply ends here: counted (`/metrics`), then handed to
    /// its connection.
    pub(crate) fn complete(&mut self, ticket: Ticket, response: Response, wait_for: Lsn) {
        if let Some(s) = self.metrics.take_deferred(ticket) {
            let took = self.clock.map(|c| c().since(s.at));
            self.answered(s, response.status, took);
        }
        self.pending.fulfil(ticket, response, wait_for);
    }

    /// A request has its answer: counted, and logged at debug level.
    fn answered(&mut self, s: metrics::Started, status: u16, took: Option<Duration>) {
        self.metrics.request(s.route, s.method, status, took);
        if let Some(line) = s.log {
            let ms = took.map_or(0.0, |t| t.as_secs_f64() * 1000.0);
            self.note_at(LogLevel::Debug, format!("{line} {status} {ms:.1} ms"));
        }
    }

    /// Checks a bearer token (`Authorization`) or, for clients that cannot set
    /// headers, a `?token=` parameter.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        token_param: Option<&str>,
        now: Timestamp,
    ) -> Result<Principal> {
        match (authorization, token_param) {
            (None, Some(t)) => self.auth.verify(&self.engine, t, now),
            _ => self.auth.check_bearer(&self.engine, authorization, now),
        }
    }

    /// A stream is being opened (or re-authenticated) on `conn` with this
    /// credential: if it is a token and `--stream-credentials expire` is
    /// set, the stream is closed when the token expires.
    pub fn bind_stream_credential(&mut self, conn: ConnId, principal: &Principal) {
        let expires = principal
            .expires
            .filter(|_| self.config.streams_expire_with_token);
        self.stream_expiry.insert(conn, expires);
    }

    /// News of `conn`'s stream credential since the last look: when it
    /// expires (`Some(None)`: it no longer does).
    pub(crate) fn take_stream_expiry(&mut self, conn: ConnId) -> Option<Option<Timestamp>> {
        self.stream_expiry.remove(&conn)
    }

    /// Checks a token or an API key (the dialects accept either).
    pub fn authenticate_credential(&self, credential: &str, now: Timestamp) -> Result<Principal> {
        self.auth.check_credential(&self.engine, credential, now)
    }

    /// Where a connection came from.
    pub fn peer_of(&self, conn: ConnId) -> Peer {
        self.peers.get(&conn).copied().unwrap_or_default()
    }

    /// What the key `id` may do now (`None`: revoked).
    pub fn key_access(&self, id: &str, now: Timestamp) -> Option<crate::auth::grants::Access> {
        self.auth.current_access(&self.engine, id, now)
    }

    /// The credentials: configured keys and token signing.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Notes a security-relevant event (a key change, a denial, a limit
    /// hit) with the key id and the caller's address; never a secret.
    pub fn security_event(
        &mut self,
        ctx: &crate::dialect::rest::Ctx<'_>,
        key_id: &str,
        what: &str,
    ) {
        let from = ctx
            .conn
            .and_then(|c| self.peer_of(c).ip)
            .map_or_else(|| "-".to_string(), |ip| ip.to_string());
        let key = if key_id.is_empty() { "-" } else { key_id };
        // At most SECURITY_LINES lines per SECURITY_WINDOW: a client
        // drawing refusals in a loop must not fill the operator's disk.
        let now = ctx.now;
        let (start, shown, held) = &mut self.security_lines;
        if start.is_none_or(|s| now.since(s) >= SECURITY_WINDOW) {
            let held_back = std::mem::take(held);
            *start = Some(now);
            *shown = 0;
            if held_back > 0 {
                self.note_at(
                    LogLevel::Warn,
                    format!(
                        "security: {held_back} more event(s) in the last window were not logged"
                    ),
                );
            }
        }
        let (_, shown, held) = &mut self.security_lines;
        if *shown >= SECURITY_LINES {
            *held += 1;
            return;
        }
        *shown += 1;
        self.note_at(
            LogLevel::Warn,
            format!("security: {what} (key {key}, from {from})"),
        );
    }

    /// Exchanges an API key for a token.
    pub fn issue_token(&self, api_key: &str, now: Timestamp) -> Result<String> {
        self.auth.issue(&self.engine, api_key, now)
    }

    /// Refuses writes while storage is read-only after an I/O error.
    pub fn check_writable(&self) -> Result<()> {
        match &self.storage_failure {
            Some(why) => Err(Error::new(
                ErrorKind::Unavailable,
                format!("storage is read-only after an I/O error ({why}); restart the server"),
            )),
            None => Ok(()),
        }
    }

    /// The runtime's clock, for handlers that report their own duration.
    pub fn clock(&self) -> Option<fn() -> Timestamp> {
        self.clock
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// A random token (hex), for subscription ids.
    pub fn new_token(&mut self, bytes: usize) -> String {
        self.engine.token(bytes)
    }

    /// Registers a streaming connection with the hub; events come through the
    /// returned outbox.
    pub fn open_stream(&mut self, conn: ConnId, codec: EventCodec) -> Arc<Outbox> {
        self.hub.open(conn, codec)
    }

    /// Queues a message behind the stream's events (a reply that must not
    /// overtake them).
    pub fn queue_for_stream(&mut self, conn: ConnId, wait_for: Lsn, bytes: bytes::Bytes) {
        self.hub.enqueue(conn, wait_for, bytes, false);
        let ready = self.hub.take_ready(self.durable);
        self.wakeups.extend(ready);
    }

    /// The stream switched formats.
    pub fn set_stream_codec(&mut self, conn: ConnId, codec: EventCodec) {
        self.hub.set_codec(conn, codec);
    }

    /// The stream also wants every schema change.
    pub fn want_schema_events(&mut self, conn: ConnId) {
        self.hub.want_schema_events(conn);
    }

    pub fn subscribe(&mut self, conn: ConnId, collection: &str, filter: Option<Filter>) {
        self.hub.subscribe(conn, collection, filter);
    }

    pub fn unsubscribe(&mut self, conn: ConnId, collection: &str) -> bool {
        self.hub.unsubscribe(conn, collection)
    }

    /// How long the server has been up.
    pub fn uptime(&self, now: Timestamp) -> Duration {
        now.since(self.booted_at.unwrap_or(now))
    }

    /// Counters for the health report.
    pub fn stats(&self) -> Stats {
        Stats {
            last_lsn: self.engine.last_lsn(),
            durable_lsn: self.durable,
            syncs: self.syncs,
            subscribers: self.hub.subscriber_count(),
            connections: self.open_connections,
            calls_in_flight: self.calls.in_flight(),
        }
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    #[test]
    fn refused_connections_are_logged_once_per_burst() {
        let config = Config {
            max_connections: 1,
            ..Config::default()
        };
        let mut server = Server::new(config, b"secret", 1);
        let t0 = Timestamp::from_secs(1_700_000_000);
        let kept = server.accept(t0);
        let notes = |s: &mut Server| {
            std::iter::from_fn(|| s.poll_note().map(|n| n.text)).collect::<Vec<_>>()
        };
        let mut refused = Vec::new();
        for _ in 0..5 {
            refused.push(server.accept(t0));
        }
        let said = notes(&mut server);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("refusing connections (503)") && said[0].contains("--max-connections")
        );
        for c in refused.drain(..) {
            server.connection_closed(c.id(), t0);
        }
        assert!(notes(&mut server).is_empty(), "still at the limit");
        // Ten seconds on, the next refusal says how many came meanwhile.
        let later = t0.saturating_add(Duration::from_secs(11));
        let c = server.accept(later);
        let said = notes(&mut server);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("refused 5 more"), "{said:?}");
        server.connection_closed(c.id(), later);
        // Room again: the burst is over; the next refusal is a new one.
        server.connection_closed(kept.id(), later);
        let _kept = server.accept(later);
        let _refused = server.accept(later);
        let said = notes(&mut server);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].starts_with("refusing"), "{said:?}");
    }
}
