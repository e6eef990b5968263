//! A deterministic simulation of Tidepool's sans-io core (STYLE.md, convention 11).
//!
//! `World` owns one `Server`, the `Connection`s of a few clients together with
//! the bytes each client has received, a clock that only moves when a test says
//! so (jumping from deadline to deadline, like quinn-proto's tests), and a
//! simulated log. Batches the server hands over (`poll_log`) are *written*; a
//! `sync` makes them *durable* and reports it (`handle_durable`); a `crash`
//! throws away the server, every connection and every written-but-unsynced
//! batch, and rebuilds a server by replaying only the durable batches.
//!
//! The driver loop is the one the runtimes run: `driver::step` after every
//! input (history reads it hands out are answered from the simulated log), then
//! timers re-armed from `poll_timeout`.
//!
//! Requests are fed cut at every byte boundary and at seeded random places,
//! because the answers must not depend on how the network splits the input.
//! Server frames, SSE streams and HTTP responses are parsed here, by hand, so
//! the checks do not trust the code under test.

use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::OnceLock;
use std::time::Duration;
use tidepool_core::config::Config;
use tidepool_core::conn::{Connection, Effect, History};
use tidepool_core::driver::{self, Shared};
use tidepool_core::ids::{ConnId, Lsn};
use tidepool_core::server::calls::{CallCommand, CallId, TransportError};
use tidepool_core::server::Server;
use tidepool_core::time::Timestamp;
use tidepool_core::wire::http::{Method, Request};

const API_KEY: &str = "sim-api-key";
const SECRET: &[u8] = b"sim-jwt-secret";
/// 2026-01-01T00:00:00Z.
const T0: Timestamp = Timestamp::from_secs(1_767_225_600);
const IDLE: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(10);
/// The hub never budgets less than this per subscriber (`Hub::new`).
const HUB_FLOOR: usize = 64 * 1024;
/// What a connection buffers for its socket before it stops pulling events
/// (`conn::LOCAL_OUT_BYTES`, private).
const LOCAL_OUT: usize = 256 * 1024;

// ----- a tiny deterministic RNG (splitmix64) ---------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Every way the tests cut an input: whole, at each byte boundary, one byte at
/// a time, and seeded random partitions. Each entry lists the cut points.
fn splittings(len: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new()];
    out.extend((1..len).map(|k| vec![k]));
    out.push((1..len).collect());
    let mut rng = Rng::new(seed);
    for _ in 0..24 {
        let mut cuts: Vec<usize> = (0..1 + rng.below(12))
            .map(|_| 1 + rng.below(len.saturating_sub(1)))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        out.push(cuts);
    }
    out
}

fn pieces<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        if c > start {
            out.push(&input[start..c]);
            start = c;
        }
    }
    out
}

fn random_pieces<'a>(input: &'a [u8], rng: &mut Rng) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = (0..rng.below(4))
        .map(|_| 1 + rng.below(input.len().saturating_sub(1)))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    pieces(input, &cuts)
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ----- the world --------------------------------------------------------------

struct Peer {
    conn: Connection,
    /// Bytes the client received and has not parsed yet.
    rx: Vec<u8>,
    /// Bytes the client received in total.
    received: usize,
    /// `is_closed` was seen and the server told.
    closed: bool,
    /// The runtime's writer is stuck: nothing is executed or transmitted, and
    /// wake-ups wait in `woken` (the runtime's waker flag) until it thaws.
    frozen: bool,
    /// A wake-up from the hub not yet handed to the connection.
    woken: bool,
    /// The socket is full: `execute` runs, nothing is transmitted.
    blocked: bool,
}

#[derive(Clone, Copy, Debug)]
struct Read {
    peer: usize,
    after: Lsn,
    upto: Lsn,
}

struct World {
    server: Server,
    config: Config,
    peers: Vec<Peer>,
    now: Timestamp,
    /// Handed to storage, not yet synced.
    written: Vec<(Lsn, Vec<u8>)>,
    /// Survived an fsync.
    durable: Vec<(Lsn, Vec<u8>)>,
    /// Log before this LSN was truncated: resuming from before it is `Truncated`.
    retained_from: Lsn,
    /// Most batches one history read returns.
    history_chunk: usize,
    /// History reads waiting until the log is durable far enough.
    reads: Vec<Read>,
    history_reads: usize,
    token: String,
    restarts: u64,
    /// What the server asked of outbound calls, in order (the test scripts
    /// the answers).
    call_commands: Vec<CallCommand>,
}

/// The simulated runtime around the server: batches the server hands over are
/// written to the simulated log, wake-ups are collected for the peers, call
/// commands for the test.
struct SimHost<'a> {
    server: &'a mut Server,
    written: &'a mut Vec<(Lsn, Vec<u8>)>,
    calls: &'a mut Vec<CallCommand>,
    woken: Vec<ConnId>,
    now: Timestamp,
}

impl SimHost<'_> {
    fn drain(&mut self) {
        // Reads deferred outside the lock run at once here (no clock: no
        // time budget), before the wake-ups they cause are collected.
        while let Some(job) = self.server.poll_read() {
            let done = job.run(&|| false);
            self.server.finish_read(done, self.now);
        }
        while let Some(c) = self.server.poll_log() {
            self.written.push((c.lsn, c.payload));
        }
        while let Some(id) = self.server.poll_wakeup() {
            self.woken.push(id);
        }
        while let Some(c) = self.server.poll_call() {
            self.calls.push(c);
        }
    }
}

impl Shared for SimHost<'_> {
    fn with_server<R>(&mut self, f: impl FnOnce(&mut Server) -> R) -> R {
        let r = f(self.server);
        self.drain();
        r
    }

    fn durable(&self) -> Lsn {
        self.server.durable_lsn()
    }

    fn storage_failed(&self) -> bool {
        self.server.storage_failure().is_some()
    }
}

fn issue_token(server: &mut Server, now: Timestamp) -> String {
    let body = json!({ "api_key": API_KEY }).to_string();
    let req = Request::new(
        Method::Post,
        "/api/auth/token",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    let reply = server.handle_request(ConnId(0), &req, None, now);
    assert_eq!(reply.response.status, 200, "token: {:?}", reply.response);
    let v: Value = serde_json::from_slice(&reply.response.body).expect("token JSON");
    v["token"].as_str().expect("a token").to_string()
}

/// The token every world issues at `T0` (tokens are deterministic).
fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| World::new().token.clone())
}

impl World {
    fn new() -> World {
        World::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut Config)) -> World {
        let mut config = Config {
            api_keys: vec![API_KEY.to_string()],
            idle_timeout_secs: IDLE.as_secs(),
            heartbeat_secs: HEARTBEAT.as_secs(),
            ws_max_message_bytes: 1 << 20,
            ..Config::default()
        };
        tweak(&mut config);
        let mut server = Server::new(config.clone(), SECRET, 7);
        let token = issue_token(&mut server, T0);
        World {
            server,
            config,
            peers: Vec::new(),
            now: T0,
            written: Vec::new(),
            durable: Vec::new(),
            retained_from: Lsn::ZERO,
            history_chunk: usize::MAX,
            reads: Vec::new(),
            history_reads: 0,
            token,
            restarts: 0,
            call_commands: Vec::new(),
        }
    }

    fn connect(&mut self) -> usize {
        self.connect_from(tidepool_core::server::Peer::default())
    }

    fn connect_from(&mut self, from: tidepool_core::server::Peer) -> usize {
        let id = self.peers.len();
        let conn = self.server.accept_from(self.now, from);
        self.peers.push(Peer {
            conn,
            rx: Vec::new(),
            received: 0,
            closed: false,
            frozen: false,
            woken: false,
            blocked: false,
        });
        id
    }

    /// One read from the socket, then everything it leads to. Bytes sent
    /// after the server closed the connection go nowhere.
    fn send(&mut self, p: usize, bytes: &[u8]) {
        if self.peers[p].closed {
            return;
        }
        self.peers[p].conn.handle_input(bytes, self.now);
        self.run();
    }

    fn send_in(&mut self, p: usize, chunks: &[&[u8]]) {
        for c in chunks {
            self.send(p, c);
        }
    }

    fn eof(&mut self, p: usize) {
        self.peers[p].conn.handle_eof();
        self.run();
    }

    /// Drives every connection until none makes progress.
    fn run(&mut self) {
        for _ in 0..100_000 {
            let mut progress = false;
            for p in 0..self.peers.len() {
                progress |= self.pump(p);
            }
            if !progress {
                return;
            }
        }
        panic!("livelock: the connections never went quiet");
    }

    fn pump(&mut self, p: usize) -> bool {
        let peer = &mut self.peers[p];
        if peer.closed || peer.frozen {
            return false;
        }
        let mut progress = false;
        if std::mem::take(&mut peer.woken) {
            peer.conn.handle_notify();
            progress = true;
        }
        let mut host = SimHost {
            server: &mut self.server,
            written: &mut self.written,
            calls: &mut self.call_commands,
            woken: Vec::new(),
            now: self.now,
        };
        host.drain();
        // A full socket: the runtime's task waits on its write and steps nothing.
        if !peer.blocked {
            let executes = peer.conn.wants_server();
            let mut out = Vec::new();
            let step = driver::step(&mut peer.conn, &mut host, self.now, &mut out);
            progress |= executes || !out.is_empty() || !step.effects.is_empty();
            peer.received += out.len();
            peer.rx.extend_from_slice(&out);
            for effect in step.effects {
                #[allow(unreachable_patterns)]
                match effect {
                    Effect::ReadHistory { after, upto } => self.reads.push(Read {
                        peer: p,
                        after,
                        upto,
                    }),
                    other => panic!("the simulation does not perform {other:?}"),
                }
            }
        }
        let woken = std::mem::take(&mut host.woken);
        progress |= !woken.is_empty();
        self.wake(&woken);
        progress |= self.answer_reads();
        let peer = &mut self.peers[p];
        if peer.conn.is_closed() && !peer.closed {
            peer.closed = true;
            self.server.connection_closed(peer.conn.id(), self.now);
            progress = true;
        }
        progress
    }

    /// Marks peers woken (their runtime's waker flag).
    fn wake(&mut self, ids: &[ConnId]) {
        for id in ids {
            if let Some(peer) = self.peers.iter_mut().find(|p| p.conn.id() == *id) {
                peer.woken = true;
            }
        }
    }

    fn answer_reads(&mut self) -> bool {
        let durable = self.server.durable_lsn();
        let mut progress = false;
        let mut i = 0;
        while i < self.reads.len() {
            let r = self.reads[i];
            if r.upto > durable {
                i += 1;
                continue;
            }
            self.reads.remove(i);
            self.history_reads += 1;
            let history = self.read_log(r.after);
            let peer = &mut self.peers[r.peer];
            if !peer.closed {
                peer.conn.handle_history(&mut self.server, history);
            }
            progress = true;
        }
        progress
    }

    fn read_log(&self, after: Lsn) -> History {
        if after.0 + 1 < self.retained_from.0 {
            return History::Truncated;
        }
        let rest: Vec<(Lsn, Vec<u8>)> = self
            .durable
            .iter()
            .filter(|(lsn, _)| *lsn > after)
            .cloned()
            .collect();
        let more = rest.len() > self.history_chunk;
        History::Batches {
            batches: rest.into_iter().take(self.history_chunk).collect(),
            more,
        }
    }

    /// fsync: every written batch becomes durable.
    fn sync(&mut self) {
        self.run();
        let n = self.written.len();
        self.sync_batches(n);
    }

    /// fsync of only the oldest `n` written batches.
    fn sync_batches(&mut self, n: usize) {
        self.run();
        let n = n.min(self.written.len());
        let synced: Vec<(Lsn, Vec<u8>)> = self.written.drain(..n).collect();
        self.durable.extend(synced);
        let lsn = self.durable.last().map_or(Lsn::ZERO, |(l, _)| *l);
        self.server.handle_durable(lsn);
        let woken: Vec<ConnId> = std::iter::from_fn(|| self.server.poll_wakeup()).collect();
        self.wake(&woken);
        self.run();
    }

    fn next_deadline(&self) -> Option<Timestamp> {
        self.peers
            .iter()
            .filter(|p| !p.closed && !p.frozen)
            .filter_map(|p| p.conn.poll_timeout())
            .chain(self.server.poll_timeout())
            .min()
    }

    /// Moves the clock by `d`, firing every timer at its deadline on the way.
    fn advance(&mut self, d: Duration) {
        let target = self.now.saturating_add(d);
        for _ in 0..100_000 {
            let Some(t) = self.next_deadline().filter(|t| *t <= target) else {
                self.now = target;
                return;
            };
            self.now = self.now.max(t);
            for peer in self.peers.iter_mut().filter(|p| !p.closed && !p.frozen) {
                if peer.conn.poll_timeout().is_some_and(|t| t <= self.now) {
                    peer.conn.handle_timeout(self.now);
                }
            }
            if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
                self.server.handle_timeout(self.now);
            }
            self.run();
        }
        panic!("timers keep firing without the clock moving");
    }

    /// The socket broke (reset, or a write failed): the runtime closes the
    /// connection without waiting for anything.
    fn reset(&mut self, p: usize) {
        let peer = &mut self.peers[p];
        if !peer.closed {
            peer.closed = true;
            self.server.connection_closed(peer.conn.id(), self.now);
        }
        self.run();
    }

    /// What the server asked of outbound calls since the last look.
    fn take_calls(&mut self) -> Vec<CallCommand> {
        self.run();
        while let Some(c) = self.server.poll_call() {
            self.call_commands.push(c);
        }
        std::mem::take(&mut self.call_commands)
    }

    /// Reports something about an outbound call, as the runtime would.
    fn on_call(&mut self, report: impl FnOnce(&mut Server, Timestamp)) {
        report(&mut self.server, self.now);
        self.run();
    }

    /// Moves the clock without running any timer (a late sweeper).
    fn jump(&mut self, d: Duration) {
        self.now = self.now.saturating_add(d);
    }

    /// Power cut: unsynced batches, the server and every connection are lost;
    /// a new server replays the durable log.
    fn crash(&mut self) {
        self.written.clear();
        self.reads.clear();
        for peer in &mut self.peers {
            peer.closed = true;
        }
        self.restarts += 1;
        let mut server = Server::new(self.config.clone(), SECRET, 7 + self.restarts);
        let mut last = Lsn::ZERO;
        for (lsn, payload) in &self.durable {
            let batch =
                tidepool_core::engine::mutation::decode(payload).expect("a durable batch decodes");
            server.replay(*lsn, batch);
            last = *lsn;
        }
        server.handle_recovered(last, self.now);
        self.server = server;
    }

    fn last_lsn(&self) -> Lsn {
        self.server.last_lsn()
    }

    /// Creates collections up front (each logs a schema change, which
    /// subscribers of that collection would otherwise see first).
    fn create(&mut self, names: &[&str]) {
        let p = self.connect();
        for c in names {
            let schema = json!({"fields": {"unused": "String"}});
            self.send(
                p,
                &authed("POST", &format!("/api/collections/{c}"), Some(&schema)),
            );
        }
        self.sync();
        let r = self.responses(p);
        assert_eq!(r.len(), names.len());
        assert!(r.iter().all(|r| r.status == 200), "{r:?}");
    }

    fn is_closed(&self, p: usize) -> bool {
        self.peers[p].closed
    }

    fn responses(&mut self, p: usize) -> Vec<Resp> {
        parse_responses(&mut self.peers[p].rx)
    }

    fn frames(&mut self, p: usize) -> Vec<Frame> {
        parse_frames(&mut self.peers[p].rx)
    }

    fn events(&mut self, p: usize) -> Vec<Sse> {
        parse_sse(&mut self.peers[p].rx)
    }

    /// A connection upgraded to WebSocket (the 101 is checked and consumed).
    fn open_ws(&mut self) -> usize {
        let p = self.connect();
        self.send(p, &ws_upgrade(&[]));
        let r = self.responses(p);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].status, 101);
        assert_eq!(
            r[0].header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        p
    }

    /// A WebSocket subscribed to `collection` (the ack is checked and consumed).
    fn ws_subscriber(&mut self, collection: &str) -> usize {
        let p = self.open_ws();
        self.send(
            p,
            &ws_json(
                &json!({"type":"Subscribe","messageId":"sub","payload":{"collection":collection}}),
            ),
        );
        let f = self.frames(p);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].json()["type"], "Success");
        p
    }

    /// An SSE subscriber (the head and the `subscribed` event are checked).
    fn sse_subscriber(&mut self, collection: &str, last_event_id: Option<&str>) -> usize {
        self.sse_subscriber_with(collection, "", last_event_id)
    }

    /// The same with a query string (`?filter_field=…`).
    fn sse_subscriber_with(
        &mut self,
        collection: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> usize {
        let p = self.connect();
        self.send(
            p,
            &sse_request(&format!("{collection}{query}"), last_event_id),
        );
        let r = self.responses(p);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].status, 200);
        assert_eq!(r[0].header("content-type"), Some("text/event-stream"));
        assert_eq!(r[0].header("cache-control"), Some("no-cache"));
        assert!(r[0].header("content-length").is_none());
        let ev = self.events(p);
        assert_eq!(
            ev.first().and_then(Sse::name),
            Some("subscribed"),
            "the first event is `subscribed`: {ev:?}"
        );
        assert_eq!(ev[0].data()["collection"], collection.to_string());
        // Anything else (a resume) stays for the test to read.
        let rest: Vec<u8> = ev[1..].iter().flat_map(Sse::encode).collect();
        let tail = std::mem::take(&mut self.peers[p].rx);
        self.peers[p].rx = [rest, tail].concat();
        p
    }
}

// ----- requests ---------------------------------------------------------------

fn http(method: &str, target: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: sim\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    if !body.is_empty() {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

fn bearer() -> String {
    format!("Bearer {}", token())
}

fn authed(method: &str, target: &str, body: Option<&Value>) -> Vec<u8> {
    http(method, target, &[("Authorization", &bearer())], body)
}

fn insert(c: &str, record: Value) -> Vec<u8> {
    authed("POST", &format!("/api/insert/{c}"), Some(&record))
}

fn update(c: &str, id: &str, patch: Value) -> Vec<u8> {
    authed("PUT", &format!("/api/update/{c}/{id}"), Some(&patch))
}

fn delete(c: &str, id: &str) -> Vec<u8> {
    authed("DELETE", &format!("/api/delete/{c}/{id}"), None)
}

fn get(c: &str, id: &str) -> Vec<u8> {
    authed("GET", &format!("/api/find/{c}/{id}"), None)
}

fn find(c: &str, query: Value) -> Vec<u8> {
    authed("POST", &format!("/api/find/{c}"), Some(&query))
}

fn health() -> Vec<u8> {
    http("GET", "/api/health", &[], None)
}

/// A WebSocket upgrade with the RFC 6455 sample key; `extra` overrides or removes
/// (empty value) the default headers.
fn ws_upgrade(extra: &[(&str, &str)]) -> Vec<u8> {
    let b = bearer();
    let mut headers: Vec<(&str, &str)> = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Authorization", &b),
    ];
    for (k, v) in extra {
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case(k));
        if !v.is_empty() {
            headers.push((k, v));
        }
    }
    http("GET", "/api/ws", &headers, None)
}

fn sse_request(c: &str, last_event_id: Option<&str>) -> Vec<u8> {
    let b = bearer();
    let mut headers = vec![
        ("Authorization", b.as_str()),
        ("Accept", "text/event-stream"),
    ];
    if let Some(id) = last_event_id {
        headers.push(("Last-Event-ID", id));
    }
    http("GET", &format!("/api/subscribe/{c}"), &headers, None)
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame; `mask: None` sends it unmasked (a protocol error).
fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

fn ws_json(v: &Value) -> Vec<u8> {
    client_frame(true, 0x1, v.to_string().as_bytes(), Some(MASK))
}

fn ws_close(code: u16) -> Vec<u8> {
    client_frame(true, 0x8, &code.to_be_bytes(), Some(MASK))
}

// ----- parsing what the server sent -------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

/// Complete responses off the front of `buf`. Stops after a `101` or an event
/// stream head: what follows is frames or events.
fn parse_responses(buf: &mut Vec<u8>) -> Vec<Resp> {
    let mut out = Vec::new();
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut slots);
        let head = match r.parse(buf).expect("the server wrote a malformed response") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => break,
        };
        let status = r.code.expect("a status");
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let stream = status == 101 || find("content-type").as_deref() == Some("text/event-stream");
        let len = if stream || status == 100 {
            0
        } else {
            find("content-length")
                .expect("every response has a Content-Length")
                .parse::<usize>()
                .expect("a numeric Content-Length")
        };
        if buf.len() < head + len {
            break;
        }
        let body = buf[head..head + len].to_vec();
        buf.drain(..head + len);
        out.push(Resp {
            status,
            headers,
            body,
        });
        if stream {
            break;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn json(&self) -> Value {
        assert_eq!(self.opcode, 1, "a text frame: {self:?}");
        serde_json::from_slice(&self.payload).expect("a JSON text frame")
    }

    fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

fn parse_frames(buf: &mut Vec<u8>) -> Vec<Frame> {
    let mut out = Vec::new();
    while buf.len() >= 2 {
        let (b0, b1) = (buf[0], buf[1]);
        assert_eq!(b1 & 0x80, 0, "server frames are never masked");
        assert_eq!(b0 & 0x70, 0, "no RSV bits without extensions");
        let (len, head) = match b1 & 0x7f {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 if buf.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if buf.len() < head + len {
            break;
        }
        out.push(Frame {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            payload: buf[head..head + len].to_vec(),
        });
        buf.drain(..head + len);
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Sse {
    Comment(String),
    Event {
        id: Option<String>,
        name: String,
        data: String,
    },
}

impl Sse {
    fn name(&self) -> Option<&str> {
        match self {
            Sse::Event { name, .. } => Some(name),
            Sse::Comment(_) => None,
        }
    }

    fn id(&self) -> Option<&str> {
        match self {
            Sse::Event { id, .. } => id.as_deref(),
            Sse::Comment(_) => None,
        }
    }

    fn data(&self) -> Value {
        match self {
            Sse::Event { data, .. } => serde_json::from_str(data).expect("JSON data"),
            Sse::Comment(c) => panic!("a comment, not an event: {c}"),
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Sse::Comment(c) => format!(":{c}\n\n").into_bytes(),
            Sse::Event { id, name, data } => {
                let id = id
                    .as_ref()
                    .map(|i| format!("id: {i}\n"))
                    .unwrap_or_default();
                format!("{id}event: {name}\ndata: {data}\n\n").into_bytes()
            }
        }
    }
}

/// Events off the front of `buf`, checked against spec C2: LF line endings,
/// exactly one space after `event:` and `data:`, single-line JSON data.
fn parse_sse(buf: &mut Vec<u8>) -> Vec<Sse> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let block = String::from_utf8(buf[..end].to_vec()).expect("UTF-8 events");
        buf.drain(..end + 2);
        assert!(!block.contains('\r'), "LF-only line endings: {block:?}");
        if block.lines().all(|l| l.starts_with(':')) {
            out.push(Sse::Comment(
                block
                    .lines()
                    .map(|l| &l[1..])
                    .collect::<Vec<_>>()
                    .join("\n"),
            ));
            continue;
        }
        let (mut id, mut name, mut data) = (None, None, None);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("event: ") {
                name = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                assert!(data.is_none(), "one data line per event: {block:?}");
                data = Some(v.to_string());
            } else if !line.starts_with(':') {
                panic!("unexpected SSE line {line:?} in {block:?}");
            }
        }
        out.push(Sse::Event {
            id,
            name: name.expect("every event is named"),
            data: data.expect("every event has data"),
        });
    }
    out
}

// ----- HTTP: data-driven cases ------------------------------------------------

/// Feeds `input` to a fresh connection cut every way `splittings` knows, syncs
/// the log, and checks the replies (status, a piece of the body, in order) and
/// whether the connection ended closed.
///
/// An expected `100 Continue` is optional: a server may omit it once the body
/// has arrived (RFC 9110 10.1.1), which depends on the cuts. When sent it must
/// come before the final response of its request; `expect_100_continue`
/// checks that it is sent when the client waits for it.
fn check(input: &[u8], expect: &[(u16, &str)], closed: bool) {
    let continues = expect.iter().filter(|(s, _)| *s == 100).count();
    let expect: Vec<(u16, &str)> = expect.iter().copied().filter(|(s, _)| *s != 100).collect();
    for cuts in splittings(input.len(), input.len() as u64) {
        let mut w = World::new();
        let p = w.connect();
        w.send_in(p, &pieces(input, &cuts));
        w.sync();
        let mut got = w.responses(p);
        let sent = got.iter().filter(|r| r.status == 100).count();
        assert!(sent <= continues, "cuts {cuts:?}: {sent} interim responses");
        if sent > 0 {
            assert_eq!(
                got[0].status, 100,
                "cuts {cuts:?}: 100 after the final response"
            );
        }
        got.retain(|r| r.status != 100);
        let summary: Vec<(u16, String)> = got.iter().map(|r| (r.status, r.text())).collect();
        assert_eq!(got.len(), expect.len(), "cuts {cuts:?}: {summary:?}");
        for (r, (status, needle)) in got.iter().zip(&expect) {
            assert_eq!(r.status, *status, "cuts {cuts:?}: {summary:?}");
            assert!(
                r.text().contains(needle),
                "cuts {cuts:?}: `{needle}` not in {}",
                r.text()
            );
        }
        assert!(w.peers[p].rx.is_empty(), "cuts {cuts:?}: stray bytes");
        assert_eq!(w.is_closed(p), closed, "cuts {cuts:?}: closed?");
    }
}

#[test]
fn pipelined_keep_alive_requests_are_answered_in_order() {
    check(
        &cat(&[
            insert("c", json!({"id":"a","n":1})),
            insert("c", json!({"id":"b","n":2})),
            get("c", "a"),
            find(
                "c",
                json!({"filter":{"type":"Condition","content":{"field":"n","operator":"Gt","value":1}}}),
            ),
            delete("c", "a"),
            get("c", "a"),
            insert("c", json!({"id":"b"})),
            health(),
        ]),
        &[
            (200, r#"{"id":"a"}"#),
            (200, r#"{"id":"b"}"#),
            (200, r#""n":{"type":"Integer","value":1}"#),
            (200, r#"[{"id":"b","n":{"type":"Integer","value":2}}]"#),
            (200, r#""id":"a""#),
            (404, "Record not found"),
            (409, "already exists"),
            (200, r#""status":"ok""#),
        ],
        false,
    );
}

/// A read's reply is encoded after the server lock is let go, when the
/// requests pipelined behind it may have run already: it still shows the
/// record as it was when the read ran.
#[test]
fn a_read_answers_with_the_record_as_it_was_when_it_ran() {
    check(
        &cat(&[
            insert("c", json!({"id":"a","n":1})),
            get("c", "a"),
            update("c", "a", json!({"n":2})),
            get("c", "a"),
            delete("c", "a"),
            get("c", "a"),
        ]),
        &[
            (200, r#"{"id":"a"}"#),
            (200, r#""n":{"type":"Integer","value":1}"#),
            (200, r#""n":{"type":"Integer","value":2}"#),
            (200, r#""n":{"type":"Integer","value":2}"#),
            (200, r#""id":"a""#),
            (404, "Record not found"),
        ],
        false,
    );
}

#[test]
fn connection_close_and_http_1_0_end_the_connection() {
    let close = http("GET", "/api/health", &[("Connection", "close")], None);
    check(&close, &[(200, "ok")], true);
    // A request behind `Connection: close` is never answered.
    check(&cat(&[close, health()]), &[(200, "ok")], true);
    check(b"GET /api/health HTTP/1.0\r\n\r\n", &[(200, "ok")], true);
    check(
        b"GET /api/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        &[(200, "ok")],
        false,
    );
}

#[test]
fn expect_100_continue() {
    let body = json!({"id":"e","n":1}).to_string();
    let head = format!(
        "POST /api/insert/c HTTP/1.1\r\nHost: sim\r\nAuthorization: {}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        bearer(),
        body.len()
    );
    let input = [head.as_bytes(), body.as_bytes()].concat();
    check(&input, &[(100, ""), (200, r#"{"id":"e"}"#)], false);
    check(
        &cat(&[input.clone(), get("c", "e")]),
        &[(100, ""), (200, r#"{"id":"e"}"#), (200, r#""id":"e""#)],
        false,
    );

    // The interim response is sent before the body arrives, and only once.
    let mut w = World::new();
    let p = w.connect();
    w.send(p, head.as_bytes());
    let r = w.responses(p);
    assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), vec![100]);
    w.send(p, &body.as_bytes()[..3]);
    assert!(w.responses(p).is_empty());
    w.send(p, &body.as_bytes()[3..]);
    w.sync();
    let r = w.responses(p);
    assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), vec![200]);

    // No `100 Continue` for a body that will be refused.
    let huge = format!(
        "POST /api/insert/c HTTP/1.1\r\nAuthorization: {}\r\nExpect: 100-continue\r\nContent-Length: 999999999999\r\n\r\n",
        bearer()
    );
    check(huge.as_bytes(), &[(413, "larger than the limit")], true);
}

#[test]
fn chunked_bodies() {
    let chunked = |extra: &str, chunks: &[&str], trailer: &str| -> Vec<u8> {
        let mut s = format!(
            "POST /api/insert/c HTTP/1.1\r\nHost: sim\r\nAuthorization: {}\r\nContent-Type: application/json\r\n{extra}Transfer-Encoding: chunked\r\n\r\n",
            bearer()
        );
        for c in chunks {
            s.push_str(&format!("{:x};ext=1\r\n{c}\r\n", c.len()));
        }
        s.push_str(&format!("0\r\n{trailer}\r\n"));
        s.into_bytes()
    };
    let parts = [r#"{"id":"#, r#""ch","#, r#""n":7}"#];
    check(
        &cat(&[chunked("", &parts, ""), get("c", "ch")]),
        &[
            (200, r#"{"id":"ch"}"#),
            (200, r#""n":{"type":"Integer","value":7}"#),
        ],
        false,
    );
    check(
        &cat(&[chunked("", &parts, "X-Checksum: 1\r\n"), get("c", "ch")]),
        &[(200, r#"{"id":"ch"}"#), (200, r#""id":"ch""#)],
        false,
    );
    check(
        &chunked("Expect: 100-continue\r\n", &parts, ""),
        &[(100, ""), (200, r#"{"id":"ch"}"#)],
        false,
    );
    let bad_chunk = format!(
        "POST /api/insert/c HTTP/1.1\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        bearer()
    );
    check(bad_chunk.as_bytes(), &[(400, "chunk")], true);
    // A chunked body's length is unknown: without a token it is not read.
    check(
        b"POST /api/insert/c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        &[(401, "token")],
        true,
    );
}

#[test]
fn bad_requests() {
    check(b"\x00\x01garbage\r\n\r\n", &[(400, "malformed")], true);
    check(
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        &[(400, "malformed")],
        true,
    );
    check(
        &http("GET", "/api/find/c/x", &[], None),
        &[(401, "")],
        false,
    );
    check(&authed("GET", "/api/nothing", None), &[(404, "")], false);
    check(
        &authed("DELETE", "/api/insert/c", None),
        &[(405, "")],
        false,
    );
}

#[test]
fn websocket_upgrade_refusals() {
    // Each is an ordinary error reply; the connection stays usable.
    let refused = |req: Vec<u8>, status: u16, needle: &str| {
        check(
            &cat(&[req, health()]),
            &[(status, needle), (200, "ok")],
            false,
        )
    };
    refused(
        ws_upgrade(&[("Sec-WebSocket-Key", "")]),
        400,
        "Sec-WebSocket-Key",
    );
    refused(
        ws_upgrade(&[("Sec-WebSocket-Version", "8")]),
        400,
        "Version",
    );
    refused(ws_upgrade(&[("Authorization", "")]), 401, "");
    refused(
        ws_upgrade(&[("Authorization", "Bearer not.a.token")]),
        401,
        "",
    );
    refused(ws_upgrade(&[("Upgrade", "")]), 400, "Upgrade: websocket");
    refused(ws_upgrade(&[("Connection", "keep-alive")]), 400, "");
}

/// RFC 6455 4.2.2: a version the server does not speak is answered with a
/// `Sec-WebSocket-Version` header naming the versions it does.
#[test]
fn websocket_version_refusal_names_the_supported_version() {
    let mut w = World::new();
    let p = w.connect();
    w.send(p, &ws_upgrade(&[("Sec-WebSocket-Version", "8")]));
    let r = w.responses(p);
    assert_eq!(r[0].status, 400);
    assert_eq!(r[0].header("sec-websocket-version"), Some("13"));
}

#[test]
fn sse_refusals() {
    check(
        &http("GET", "/api/subscribe/c", &[], None),
        &[(401, "")],
        false,
    );
    check(
        &authed_with("/api/subscribe/c", &[("Last-Event-ID", "x:y")]),
        &[(400, "Last-Event-ID")],
        false,
    );
}

/// A malformed request pipelined behind a good one gets its 400 whatever the
/// cuts (RFC 9112 2.2 SHOULD). Today it depends on whether both arrive in the
/// same read: then `execute` clears the queued `Work::Fail` when the first
/// reply turns the connection to Closing, and the client only sees the close.
#[test]
fn a_malformed_pipelined_request_gets_its_400() {
    check(
        &cat(&[health(), b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec()]),
        &[(200, "ok"), (400, "malformed")],
        true,
    );
}

fn authed_with(target: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let b = bearer();
    let mut headers = vec![("Authorization", b.as_str())];
    headers.extend_from_slice(extra);
    http("GET", target, &headers, None)
}

/// A client may pipeline more requests than `MAX_PIPELINE` (256) in one write.
#[test]
fn deep_pipelines_are_answered() {
    let mut w = World::new();
    let p = w.connect();
    let input: Vec<u8> = (0..300).flat_map(|_| health()).collect();
    w.send(p, &input);
    w.sync();
    assert_eq!(w.responses(p).len(), 300);
}

// ----- durability -------------------------------------------------------------

#[test]
fn replies_wait_for_durability_and_so_do_later_reads() {
    let mut w = World::new();
    let (a, b) = (w.connect(), w.connect());
    w.send(a, &insert("c", json!({"id":"x","n":1})));
    let write_lsn = w.last_lsn();
    assert_eq!(write_lsn, Lsn(1));
    assert_eq!(
        w.peers[a].conn.awaiting_durability(w.server.durable_lsn()),
        Some(write_lsn)
    );
    assert!(
        w.responses(a).is_empty(),
        "acknowledged before it is durable"
    );
    // A read on the same connection, and one on another, wait too: both would
    // show data a crash could still take back.
    w.send(a, &get("c", "x"));
    w.send(b, &get("c", "x"));
    w.send(b, &health());
    assert_eq!(w.peers[a].received, 0);
    assert_eq!(w.peers[b].received, 0);
    // Even a read of unrelated data waits: what a read depends on is not
    // tracked, only that it ran after LSN 1 was applied.
    let fresh = w.connect();
    w.send(fresh, &get("other", "y"));
    assert_eq!(w.peers[fresh].received, 0);

    w.sync();
    let ra = w.responses(a);
    assert_eq!(
        ra.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 200]
    );
    assert_eq!(ra[1].json()["n"]["value"], 1);
    let rb = w.responses(b);
    assert_eq!(
        rb.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 200]
    );
    assert_eq!(rb[0].json()["id"], "x");
    assert_eq!(w.responses(fresh)[0].status, 404);
}

#[test]
fn a_partial_sync_releases_replies_in_log_order() {
    let mut w = World::new();
    let p = w.connect();
    for id in ["a", "b", "c"] {
        w.send(p, &insert("c", json!({ "id": id })));
    }
    assert_eq!(w.written.len(), 3);
    w.sync_batches(1);
    let r = w.responses(p);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].json()["id"], "a");
    w.sync_batches(1);
    assert_eq!(w.responses(p)[0].json()["id"], "b");
    w.sync_batches(1);
    assert_eq!(w.responses(p)[0].json()["id"], "c");
}

#[test]
fn a_crash_before_sync_loses_the_unacknowledged_write_and_only_it() {
    let mut w = World::new();
    let p = w.connect();
    w.send(p, &insert("c", json!({"id":"kept","n":1})));
    w.send(p, &update("c", "kept", json!({"n":2})));
    w.sync();
    assert_eq!(w.responses(p).len(), 2);
    w.send(p, &insert("c", json!({"id":"lost"})));
    w.send(p, &update("c", "kept", json!({"n":3})));
    assert!(
        w.responses(p).is_empty(),
        "nothing about the lost writes was acknowledged"
    );
    w.crash();
    assert_eq!(w.last_lsn(), Lsn(2));

    let q = w.connect();
    w.send(q, &find("c", json!({})));
    let r = w.responses(q);
    assert_eq!(
        r[0].json(),
        json!([{"id":"kept","n":{"type":"Integer","value":2}}])
    );
    // Writing on goes on from the durable LSN.
    w.send(q, &insert("c", json!({"id":"after"})));
    assert_eq!(w.last_lsn(), Lsn(3));
    w.sync();
    assert_eq!(w.responses(q)[0].status, 200);
}

// ----- timers -----------------------------------------------------------------

/// Over `max_connections` a connection is refused with a clear answer (503
/// with a JSON body, `Retry-After`, then close), never dropped without a word;
/// a closed connection frees its place.
#[test]
fn connections_over_the_limit_get_a_503_and_a_reason() {
    let mut w = World::with(|c| c.max_connections = 2);
    let (a, b) = (w.connect(), w.connect());
    let refused = w.connect();
    w.send(refused, &health());
    let r = w.responses(refused);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, 503);
    assert_eq!(r[0].header("retry-after"), Some("1"));
    assert_eq!(r[0].header("connection"), Some("close"));
    assert!(r[0].json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("connection limit (2)")));
    assert!(w.is_closed(refused));
    // The open ones are served; a refused one that never speaks is closed soon.
    w.send(a, &health());
    assert_eq!(w.responses(a)[0].status, 200);
    let silent = w.connect();
    w.advance(Duration::from_secs(5));
    assert!(w.is_closed(silent));
    assert!(w.responses(silent).is_empty());
    // A closed connection frees its place.
    w.eof(b);
    assert!(w.is_closed(b));
    let c = w.connect();
    w.send(c, &health());
    assert_eq!(w.responses(c)[0].status, 200);
}

/// An abandoned transaction is rolled back when its hour is up, by the
/// server's timer (not by the next client that happens to begin one).
#[test]
fn an_idle_transaction_is_rolled_back_on_time() {
    let mut w = World::new();
    let p = w.connect();
    w.send(p, &authed("POST", "/api/transactions", Some(&json!({}))));
    w.sync();
    let tx = w.responses(p)[0].json()["transaction_id"]
        .as_str()
        .expect("a transaction id")
        .to_string();
    let status = |w: &mut World| {
        let q = w.connect();
        w.send(q, &authed("GET", &format!("/api/transactions/{tx}"), None));
        w.sync();
        w.responses(q)[0].json()["state"].clone()
    };
    assert_eq!(status(&mut w), "Active");
    // Every call naming it keeps it alive (the idle timeout is 60 s)...
    for _ in 0..3 {
        w.advance(Duration::from_secs(59));
        assert_eq!(status(&mut w), "Active");
    }
    // ...and a minute without one rolls it back.
    w.advance(Duration::from_secs(61));
    let (state, _, _) = w.server.engine().tx_status(&tx).expect("remembered");
    assert_eq!(state.name(), "RolledBack");
}

#[test]
fn idle_timeout() {
    // (input before going idle, the reply the timeout produces)
    let cases: &[(&[u8], Option<u16>)] = &[
        (b"", None),
        (b"GET /api/hea", Some(408)),
        (b"GET /api/health HTTP/1.1\r\nHost: x\r\n", Some(408)),
        (
            b"POST /api/insert/c HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"id\"",
            Some(408),
        ),
    ];
    let chunked = format!(
        "POST /api/insert/c HTTP/1.1\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        bearer()
    );
    let chunked_case = [(chunked.as_bytes(), Some(408))];
    for (input, expect) in cases.iter().chain(&chunked_case) {
        let mut w = World::new();
        let p = w.connect();
        w.send(p, &health());
        assert_eq!(w.responses(p)[0].status, 200);
        // Activity restarts the timer.
        w.advance(IDLE / 2);
        if input.is_empty() {
            w.send(p, &health());
            assert_eq!(w.responses(p)[0].status, 200);
        } else {
            w.send(p, input);
        }
        w.advance(IDLE - Duration::from_millis(1));
        assert!(!w.is_closed(p), "{input:?}: closed too early");
        w.advance(Duration::from_millis(1));
        assert!(w.is_closed(p), "{input:?}: still open");
        let r = w.responses(p);
        assert_eq!(r.iter().map(|r| r.status).next(), *expect, "{input:?}");
        if let Some(r) = r.first() {
            assert_eq!(r.header("connection"), Some("close"));
        }
    }
}

#[test]
fn ttl_expiry_is_immediate_and_the_sweep_is_logged() {
    let mut w = World::new();
    let sub = w.sse_subscriber("c", None);
    let p = w.connect();
    w.send(p, &insert("c", json!({"id":"t","n":1,"ttl":"2s"})));
    w.send(p, &insert("c", json!({"id":"stays","n":2})));
    w.sync();
    let r = w.responses(p);
    assert_eq!(r.len(), 2);
    w.send(p, &get("c", "t"));
    let rec = w.responses(p)[0].json();
    assert_eq!(rec["ttl"], "2026-01-01T00:00:02.000000Z");
    assert_eq!(
        w.server.poll_timeout(),
        Some(T0.saturating_add(Duration::from_secs(2)))
    );
    w.events(sub);

    // The sweeper is late: the record is already invisible.
    w.jump(Duration::from_secs(3));
    let before = w.last_lsn();
    w.send(p, &get("c", "t"));
    w.send(p, &find("c", json!({})));
    w.send(p, &update("c", "t", json!({"n":5})));
    w.send(p, &delete("c", "t"));
    let r = w.responses(p);
    let statuses: Vec<u16> = r.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![404, 200, 404, 404]);
    assert!(r[0].text().contains("expired"), "{}", r[0].text());
    assert_eq!(
        r[1].json(),
        json!([{"id":"stays","n":{"type":"Integer","value":2}}])
    );
    assert_eq!(
        w.last_lsn(),
        before,
        "reading an expired record logs nothing"
    );

    // The sweep removes it for good, as one logged batch.
    let due = w.server.poll_timeout().expect("a sweep is due");
    assert!(due <= w.now);
    w.server.handle_timeout(w.now);
    let batch = w.server.poll_log().expect("the sweep is logged");
    assert_eq!(batch.lsn, before.next());
    w.written.push((batch.lsn, batch.payload));
    assert!(w.server.poll_log().is_none());
    assert_eq!(w.server.poll_timeout(), None, "nothing else expires");
    w.sync();
    // Subscribers hear of it as a delete (spec B7).
    let ev = w.events(sub);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].name(), Some("mutation"));
    assert_eq!(ev[0].data()["event"], "delete");
    assert_eq!(ev[0].data()["record_ids"], json!(["t"]));
    assert_eq!(ev[0].id(), Some(batch.lsn.to_string().as_str()));

    // And a restart replays the sweep.
    w.crash();
    let q = w.connect();
    w.send(q, &get("c", "t"));
    let r = w.responses(q);
    assert_eq!(r[0].status, 404);
    assert!(!r[0].text().contains("expired"), "{}", r[0].text());
}

// ----- WebSocket --------------------------------------------------------------

/// Frames sent after the upgrade (in their own chunks, cut every way) and the
/// frames expected back: (opcode, a piece of the payload). `closed` also
/// requires the last frame to be a Close with that code.
fn check_ws(input: &[u8], expect: &[(u8, &str)], close: Option<u16>) {
    for cuts in splittings(input.len(), input.len() as u64 + 1) {
        let mut w = World::new();
        w.create(&["c"]);
        let p = w.open_ws();
        w.send_in(p, &pieces(input, &cuts));
        w.sync();
        let frames = w.frames(p);
        check_frames(&frames, expect, close, &format!("cuts {cuts:?}"));
        assert!(w.peers[p].rx.is_empty(), "cuts {cuts:?}: a partial frame");
        assert_eq!(w.is_closed(p), close.is_some(), "cuts {cuts:?}: closed?");
    }
}

fn check_frames(frames: &[Frame], expect: &[(u8, &str)], close: Option<u16>, ctx: &str) {
    let show: Vec<(u8, String)> = frames
        .iter()
        .map(|f| (f.opcode, String::from_utf8_lossy(&f.payload).into_owned()))
        .collect();
    let (body, last) = match close {
        Some(_) => (&frames[..frames.len().saturating_sub(1)], frames.last()),
        None => (frames, None),
    };
    assert_eq!(body.len(), expect.len(), "{ctx}: {show:?}");
    for (f, (op, needle)) in body.iter().zip(expect) {
        assert!(f.fin, "{ctx}: server messages are single frames");
        assert_eq!(f.opcode, *op, "{ctx}: {show:?}");
        assert!(
            String::from_utf8_lossy(&f.payload).contains(needle),
            "{ctx}: `{needle}` not in {show:?}"
        );
    }
    if let Some(code) = close {
        assert_eq!(
            last.and_then(Frame::close_code),
            Some(code),
            "{ctx}: {show:?}"
        );
    }
}

#[test]
fn websocket_messages_split_at_every_byte() {
    let hello = ws_json(&json!({"type":"Hello","payload":{"formats":["json"]}}));
    let ins = ws_json(
        &json!({"type":"Insert","messageId":"m1","payload":{"collection":"c","record":{"id":"w","n":1}}}),
    );
    let all = ws_json(&json!({"type":"FindAll","messageId":"m2","payload":{"collection":"c"}}));
    check_ws(
        &cat(&[hello.clone(), ins, all]),
        &[
            (1, r#"{"payload":{"format":"json"},"type":"Welcome"}"#),
            (1, r#""messageId":"m1""#),
            (1, r#""data":[{"id":"w","n":{"type":"Integer","value":1}}]"#),
        ],
        None,
    );
    // A fragmented text message with a ping between its fragments.
    let text = json!({"type":"FindAll","messageId":"f","payload":{"collection":"c"}}).to_string();
    let (x, y) = text.as_bytes().split_at(10);
    check_ws(
        &cat(&[
            client_frame(false, 0x1, x, Some(MASK)),
            client_frame(true, 0x9, b"hi", Some(MASK)),
            client_frame(true, 0x0, y, Some(MASK)),
        ]),
        &[(0xA, "hi"), (1, r#""messageId":"f","payload":{"data":[]"#)],
        None,
    );
    // Unknown types with an id get an Error; unparseable frames get nothing.
    check_ws(
        &cat(&[
            client_frame(true, 0x1, b"not json", Some(MASK)),
            client_frame(true, 0x2, &[0xc1], Some(MASK)),
            ws_json(&json!({"type":"Bogus","messageId":"b"})),
        ]),
        &[(1, r#""code":400"#)],
        None,
    );
}

#[test]
fn websocket_protocol_errors_close_with_the_right_code() {
    let max = World::new().config.ws_max_message_bytes;
    // (frames, close code)
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (
            client_frame(true, 0x1, &vec![b'a'; max + 1], Some(MASK)),
            1009,
        ),
        (client_frame(true, 0x1, br#"{"type":"Hello"}"#, None), 1002),
        (
            client_frame(true, 0x1, &[b'"', 0xff, 0xfe, b'"'], Some(MASK)),
            1007,
        ),
        (client_frame(true, 0x3, b"", Some(MASK)), 1002),
        (client_frame(true, 0x9, &[b'p'; 126], Some(MASK)), 1002),
        (client_frame(false, 0x9, b"p", Some(MASK)), 1002),
        (client_frame(true, 0x0, b"orphan", Some(MASK)), 1002),
        (
            {
                let mut f = client_frame(true, 0x1, b"{}", Some(MASK));
                f[0] |= 0x40; // RSV1 without an extension
                f
            },
            1002,
        ),
    ];
    for (frame, code) in cases {
        // Whole and cut at every byte of the first 20 (the header).
        for cut in 0..frame.len().min(20) {
            let mut w = World::new();
            let p = w.open_ws();
            w.send_in(p, &pieces(&frame, &[cut]));
            let frames = w.frames(p);
            check_frames(&frames, &[], Some(code), &format!("code {code} cut {cut}"));
            assert!(w.is_closed(p), "code {code} cut {cut}");
        }
    }
}

#[test]
fn client_close_is_answered_then_the_connection_ends() {
    check_ws(&ws_close(1000), &[], Some(1000));
    check_ws(&ws_close(1001), &[], Some(1001));
    // EOF without a Close frame just ends it.
    let mut w = World::new();
    let p = w.ws_subscriber("c");
    w.eof(p);
    assert!(w.is_closed(p));
    assert_eq!(w.server.stats().subscribers, 0);
}

/// RFC 6455 5.5.1: after sending a Close frame an endpoint sends no more data
/// frames. A request that arrives in the same read as the client's Close must
/// be answered before the Close reply, or not at all.
#[test]
fn no_data_frame_follows_the_close_reply() {
    check_ws(
        &cat(&[
            ws_json(&json!({"type":"Hello","payload":{}})),
            ws_close(1001),
        ]),
        &[(1, "Welcome")],
        Some(1001),
    );
    // A query runs outside the lock: when the Close came before its answer
    // was ready, the Close reply goes out and the answer never does (RFC
    // 6455 lets an endpoint close without sending what it has not sent);
    // either way nothing follows the Close.
    let input = cat(&[
        ws_json(&json!({"type":"FindAll","messageId":"late","payload":{"collection":"c"}})),
        ws_close(1000),
    ]);
    for cuts in splittings(input.len(), input.len() as u64 + 1) {
        let mut w = World::new();
        w.create(&["c"]);
        let p = w.open_ws();
        w.send_in(p, &pieces(&input, &cuts));
        w.sync();
        let frames = w.frames(p);
        let answered = frames.len() == 2;
        let expect: &[(u8, &str)] = if answered { &[(1, "late")] } else { &[] };
        check_frames(&frames, expect, Some(1000), &format!("cuts {cuts:?}"));
        assert!(w.is_closed(p), "cuts {cuts:?}: closed?");
    }
    // An answer ready before the Close still precedes it.
    check_ws(
        &cat(&[
            ws_json(
                &json!({"type":"FindById","messageId":"late","payload":{"collection":"c","id":"x"}}),
            ),
            ws_close(1000),
        ]),
        &[(1, "late")],
        Some(1000),
    );
}

#[test]
fn close_race_with_queued_events() {
    for synced_before_close in [0, 1, 3] {
        for blocked in [false, true] {
            let mut w = World::new();
            w.create(&["c"]);
            let s = w.ws_subscriber("c");
            let p = w.connect();
            for i in 0..3 {
                w.send(p, &insert("c", json!({ "id": format!("r{i}") })));
            }
            w.peers[s].blocked = blocked;
            w.sync_batches(synced_before_close);
            w.send(s, &ws_close(1000));
            w.peers[s].blocked = false;
            w.sync();
            let frames = w.frames(s);
            let ctx = format!("synced {synced_before_close} blocked {blocked}");
            let close_at = frames
                .iter()
                .position(|f| f.opcode == 8)
                .unwrap_or_else(|| panic!("{ctx}: no Close reply in {frames:?}"));
            assert_eq!(close_at, frames.len() - 1, "{ctx}: frames after Close");
            assert_eq!(frames[close_at].close_code(), Some(1000));
            let events: Vec<Value> = frames[..close_at].iter().map(Frame::json).collect();
            assert!(events.len() <= 3, "{ctx}");
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e["type"], "MutationNotification", "{ctx}");
                assert_eq!(
                    e["payload"]["record_ids"],
                    json!([format!("r{i}")]),
                    "{ctx}"
                );
            }
            assert!(
                events.len() >= synced_before_close,
                "{ctx}: events delivered before the Close went missing"
            );
            assert!(w.is_closed(s), "{ctx}");
            assert_eq!(w.server.stats().subscribers, 0, "{ctx}");
            assert_eq!(w.responses(p).len(), 3, "{ctx}");
        }
    }
}

#[test]
fn welcome_is_the_first_frame_and_no_ping_comes_early() {
    let mut w = World::with(|c| c.heartbeat_secs = 1);
    let p = w.open_ws();
    // Raw clients get nothing unsolicited in the first seconds.
    w.advance(Duration::from_secs(3));
    assert!(w.frames(p).is_empty());
    w.send(
        p,
        &ws_json(&json!({"type":"Hello","payload":{"formats":["msgpack","json"]}})),
    );
    let f = w.frames(p);
    assert_eq!(f.len(), 1);
    assert_eq!(
        f[0].json(),
        json!({"type":"Welcome","payload":{"format":"msgpack"}})
    );
    // Keepalive pings start after the quiet period.
    w.advance(Duration::from_secs(2));
    let f = w.frames(p);
    assert!(!f.is_empty() && f.iter().all(|f| f.opcode == 9), "{f:?}");
    // Replies are now MessagePack in binary frames.
    w.send(
        p,
        &ws_json(&json!({"type":"FindAll","messageId":"m","payload":{"collection":"c"}})),
    );
    let f = w.frames(p);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].opcode, 2);
    let reply: Value = rmp_serde::from_slice(&f[0].payload).expect("a MessagePack map");
    assert_eq!(reply["type"], "Success");
    assert_eq!(reply["messageId"], "m");
    assert_eq!(reply["payload"]["data"], json!([]));

    // Hello sent right behind the upgrade, before the 101 was read.
    let mut w = World::new();
    let p = w.connect();
    w.send(p, &ws_upgrade(&[]));
    w.send(p, &ws_json(&json!({"type":"Hello","payload":{}})));
    assert_eq!(w.responses(p)[0].status, 101);
    assert_eq!(w.frames(p)[0].json()["type"], "Welcome");
}

/// Bytes behind the upgrade request in the same read are frames (tungstenite's
/// handshake hands them to the codec; so must we).
#[test]
fn frames_in_the_same_read_as_the_upgrade_are_processed() {
    // `Upgrade` is a token list: `websocket, foo` asks for WebSocket too
    // (regression: it was answered 101 and then no frame was ever read).
    for upgrade in ["websocket", "websocket, foo", "foo, WebSocket"] {
        frames_behind_the_upgrade(upgrade);
    }
}

fn frames_behind_the_upgrade(upgrade_header: &str) {
    let hello = ws_json(&json!({"type":"Hello","payload":{}}));
    let all = ws_json(&json!({"type":"FindAll","messageId":"m","payload":{"collection":"c"}}));
    let head = ws_upgrade(&[("upgrade", upgrade_header)]);
    let input = cat(&[head.clone(), hello, all]);
    let upgrade_len = head.len();
    for cuts in splittings(input.len(), 3) {
        // Only the cuts that put frame bytes in the upgrade's read matter, but
        // every cut must work.
        let mut w = World::new();
        let p = w.connect();
        w.send_in(p, &pieces(&input, &cuts));
        let r = w.responses(p);
        let ctx =
            format!("Upgrade: {upgrade_header}, cuts {cuts:?} (upgrade is {upgrade_len} bytes)");
        assert_eq!(r.len(), 1, "{ctx}: {r:?}");
        assert_eq!(r[0].status, 101, "{ctx}");
        let frames = w.frames(p);
        check_frames(
            &frames,
            &[(1, "Welcome"), (1, r#""messageId":"m""#)],
            None,
            &ctx,
        );
        assert!(!w.is_closed(p), "{ctx}");
    }
}

/// Regression: a first insert creates its collection implicitly. A WebSocket
/// subscriber of that collection must get the insert's `MutationNotification`
/// as its next frame (ekoDB clients read "the next frame" after an insert), not
/// a `SchemaChanged` first; a connection that asked for schema events (Hello)
/// still gets the schema change, and an explicit schema change still reaches
/// data subscribers.
#[test]
fn implicit_creation_is_not_announced_to_data_subscribers() {
    let mut w = World::new();
    let sub = w.ws_subscriber("fresh");
    let typed = w.open_ws();
    w.send(typed, &ws_json(&json!({"type":"Hello","payload":{}})));
    assert_eq!(w.frames(typed)[0].json()["type"], "Welcome");
    let p = w.connect();
    w.send(p, &insert("fresh", json!({"id":"a"})));
    w.sync();
    let f = w.frames(sub);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].json()["type"], "MutationNotification");
    assert_eq!(f[0].json()["payload"]["record_ids"], json!(["a"]));
    let t = w.frames(typed);
    let kinds: Vec<Value> = t.iter().map(|f| f.json()["type"].clone()).collect();
    assert_eq!(kinds, vec![json!("SchemaChanged")], "{t:?}");
    // An explicit schema change is news to data subscribers.
    w.send(
        p,
        &authed(
            "PUT",
            "/api/schemas/fresh",
            Some(&json!({"constraints": {"n": {"field_type": "Integer"}}})),
        ),
    );
    w.sync();
    assert_eq!(w.responses(p).last().map(|r| r.status), Some(200));
    let f = w.frames(sub);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].json()["type"], "SchemaChanged");
}

// ----- SSE --------------------------------------------------------------------

#[test]
fn sse_events_carry_their_position_and_heartbeats_keep_time() {
    let mut w = World::new();
    let s = w.sse_subscriber("c", None);
    let p = w.connect();
    // The first write creates the collection: a schema change (event 0 of the
    // batch), then the insert (event 1). The implicit creation is not announced
    // to a data subscriber, but the insert keeps its position.
    w.send(p, &insert("c", json!({"id":"a","n":1})));
    let lsn_a = w.last_lsn();
    w.send(p, &insert("other", json!({"id":"z"})));
    w.send(p, &update("c", "a", json!({"n":2})));
    let lsn_u = w.last_lsn();
    assert!(w.events(s).is_empty(), "events wait for durability");
    w.sync();
    let ev = w.events(s);
    assert_eq!(
        ids(&ev),
        vec![format!("{lsn_a}:1"), lsn_u.to_string()],
        "{ev:?}"
    );
    for (e, kind) in ev.iter().zip(["insert", "update"]) {
        assert_eq!(e.name(), Some("mutation"));
        let d = e.data();
        assert_eq!(d["event"], kind);
        assert_eq!(d["collection"], "c");
        assert_eq!(d["record_ids"], json!(["a"]));
        assert!(d["timestamp"]
            .as_str()
            .is_some_and(|t| t.starts_with("2026-01-01T")));
    }
    assert_eq!(
        ev[1].data()["records"]["n"],
        json!({"type":"Integer","value":2})
    );

    // Changes in one batch (a transaction) are `lsn`, `lsn:1`, ...
    let commit = transaction(
        &mut w,
        p,
        &[
            ("POST", "/api/insert/c", Some(json!({"id":"t1"}))),
            ("DELETE", "/api/delete/c/a", None),
        ],
    );
    let ev = w.events(s);
    assert_eq!(ids(&ev), vec![commit.to_string(), format!("{commit}:1")]);
    assert_eq!(ev[1].data()["event"], "delete");

    // Heartbeats: a comment every interval, nothing before.
    w.advance(HEARTBEAT - Duration::from_millis(1));
    assert!(w.events(s).is_empty());
    w.advance(Duration::from_millis(1));
    assert_eq!(w.events(s), vec![Sse::Comment(" keepalive".into())]);
    w.advance(HEARTBEAT * 2);
    assert_eq!(w.events(s).len(), 2);
    assert!(
        !w.is_closed(s),
        "SSE streams are not subject to the idle timeout"
    );
    // The client going away ends the subscription.
    w.eof(s);
    assert!(w.is_closed(s));
    assert_eq!(w.server.stats().subscribers, 0);
}

/// Runs `ops` in one transaction and commits it (synced); returns the
/// commit's LSN.
fn transaction(w: &mut World, p: usize, ops: &[(&str, &str, Option<Value>)]) -> Lsn {
    w.sync();
    w.responses(p);
    w.send(p, &authed("POST", "/api/transactions", Some(&json!({}))));
    w.sync();
    let r = w.responses(p);
    let tx = r[0].json()["transaction_id"]
        .as_str()
        .expect("a transaction id")
        .to_string();
    for (method, target, body) in ops {
        let target = format!("{target}?transaction_id={tx}");
        w.send(p, &authed(method, &target, body.as_ref()));
    }
    w.send(
        p,
        &authed(
            "POST",
            &format!("/api/transactions/{tx}/commit"),
            Some(&json!({})),
        ),
    );
    let commit = w.last_lsn();
    w.sync();
    let r = w.responses(p);
    assert_eq!(r.len(), ops.len() + 1);
    assert!(r.iter().all(|r| r.status == 200), "{r:?}");
    commit
}

/// Creates `c` and `other`, then writes `n` single-insert batches to `c` with
/// one to `other` between each, synced. Returns the LSN that created `c` and
/// those of the `c` inserts.
fn write_history(w: &mut World, p: usize, n: usize) -> (Lsn, Vec<Lsn>) {
    w.create(&["c"]);
    let created = w.last_lsn();
    w.create(&["other"]);
    let mut lsns = Vec::new();
    for i in 0..n {
        w.send(p, &insert("c", json!({ "id": format!("h{i}") })));
        lsns.push(w.last_lsn());
        w.send(p, &insert("other", json!({ "id": format!("o{i}") })));
    }
    w.sync();
    assert_eq!(w.responses(p).len(), 2 * n);
    (created, lsns)
}

/// The ids of mutation and schema events (checking `event_id` matches `id:`).
fn ids(events: &[Sse]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let id = e.id().unwrap_or_else(|| panic!("no id: {e:?}")).to_string();
            match e.name() {
                Some("mutation") => assert_eq!(e.data()["event_id"], id),
                Some("schema_changed") => {}
                other => panic!("unexpected event {other:?}: {e:?}"),
            }
            id
        })
        .collect()
}

#[test]
fn sse_resume_delivers_exactly_the_missed_events_in_order() {
    for chunk in [1, 2, 3, usize::MAX] {
        for resume_after in 0..=6 {
            let ctx = format!("chunk {chunk} resume after #{resume_after}");
            let mut w = World::new();
            w.history_chunk = chunk;
            let p = w.connect();
            let (created, mut lsns) = write_history(&mut w, p, 5);
            // One more write is applied but not yet durable when the client
            // resumes; another lands while the history is being read.
            w.send(p, &insert("c", json!({"id":"pending"})));
            lsns.push(w.last_lsn());
            let (from, mut want) = match resume_after {
                0 => ("0".to_string(), vec![created.to_string()]),
                k => (lsns[k - 1].to_string(), Vec::new()),
            };
            want.extend(lsns[resume_after..].iter().map(Lsn::to_string));
            let s = w.sse_subscriber("c", Some(&from));
            assert!(
                w.events(s).is_empty(),
                "{ctx}: history waits for durability"
            );
            w.send(p, &insert("c", json!({"id":"live"})));
            want.push(w.last_lsn().to_string());
            w.sync();
            let ev = w.events(s);
            assert_eq!(ids(&ev), want, "{ctx}");
            let last = ev.last().expect("events").data();
            assert_eq!(last["record_ids"], json!(["live"]), "{ctx}");
            if chunk < 5 && resume_after < 4 {
                assert!(w.history_reads > 1, "{ctx}: read in several chunks");
            }
            // Live events keep coming, once each.
            w.send(p, &insert("c", json!({"id":"later"})));
            let later = w.last_lsn();
            w.sync();
            assert_eq!(ids(&w.events(s)), vec![later.to_string()], "{ctx}");
        }
    }
}

#[test]
fn sse_resume_within_a_batch() {
    let mut w = World::new();
    w.create(&["c", "other"]);
    let p = w.connect();
    let commit = transaction(
        &mut w,
        p,
        &[
            ("POST", "/api/insert/c", Some(json!({"id":"x"}))),
            ("POST", "/api/insert/other", Some(json!({"id":"y"}))),
            ("POST", "/api/insert/c", Some(json!({"id":"z"}))),
        ],
    );
    // Events of that batch: c (0), other (1), c (2).
    for (from, want) in [
        (commit.to_string(), vec![format!("{commit}:2")]),
        (format!("{commit}:1"), vec![format!("{commit}:2")]),
        (format!("{commit}:2"), vec![]),
        (
            Lsn(commit.0 - 1).to_string(),
            vec![commit.to_string(), format!("{commit}:2")],
        ),
    ] {
        let s = w.sse_subscriber("c", Some(&from));
        w.sync();
        assert_eq!(ids(&w.events(s)), want, "resume from {from}");
    }
}

#[test]
fn sse_resume_from_a_truncated_or_future_position_resets() {
    let mut w = World::new();
    let p = w.connect();
    let (_, lsns) = write_history(&mut w, p, 4);
    w.retained_from = lsns[2];
    let upto = w.last_lsn();

    // Older than the retained log.
    let s = w.sse_subscriber("c", Some(&lsns[0].to_string()));
    w.sync();
    let ev = w.events(s);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].name(), Some("reset"));
    assert_eq!(ev[0].id(), Some(upto.to_string().as_str()));
    assert_eq!(ev[0].data()["last_event_id"], upto.to_string());
    // Live events go on after the reset.
    w.send(p, &insert("c", json!({"id":"next"})));
    w.sync();
    assert_eq!(ids(&w.events(s)), vec![w.last_lsn().to_string()]);

    // The oldest position still covered resumes normally.
    let s = w.sse_subscriber("c", Some(&lsns[2].to_string()));
    w.sync();
    let want = vec![lsns[3].to_string(), w.last_lsn().to_string()];
    assert_eq!(ids(&w.events(s)), want);

    // Ahead of this server's log (a client of another server, or of a log
    // that lost its tail in a crash).
    let s = w.sse_subscriber("c", Some("999"));
    let ev = w.events(s);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].name(), Some("reset"));
}

#[test]
fn sse_resume_across_a_crash() {
    let mut w = World::new();
    let p = w.connect();
    let (_, lsns) = write_history(&mut w, p, 3);
    w.send(p, &insert("c", json!({"id":"lost"})));
    let lost = w.last_lsn();
    w.crash();
    let p = w.connect();
    w.send(p, &insert("c", json!({"id":"new"})));
    let new = w.last_lsn();
    assert_eq!(new, lost, "the lost LSN is reused");
    w.sync();
    let s = w.sse_subscriber("c", Some(&lsns[1].to_string()));
    w.sync();
    let ev = w.events(s);
    assert_eq!(ids(&ev), vec![lsns[2].to_string(), new.to_string()]);
    assert_eq!(ev[1].data()["record_ids"], json!(["new"]));
}

#[test]
fn filtered_subscriptions_replay_what_they_would_have_seen_live() {
    let mut w = World::new();
    w.create(&["c"]);
    let first = w.last_lsn();
    let live = w.sse_subscriber("c", None);
    let filter = "?filter_field=n&filter_value=1";
    let live_filtered = w.sse_subscriber_with("c", filter, None);
    let p = w.connect();
    for (id, n) in [
        ("a", json!(1)),
        ("b", json!(2)),
        ("c", json!("1")),
        ("d", json!(1)),
    ] {
        w.send(p, &insert("c", json!({ "id": id, "n": n })));
    }
    w.send(p, &delete("c", "a"));
    w.send(p, &delete("c", "b"));
    w.sync();
    let all = ids(&w.events(live));
    assert_eq!(all.len(), 6);
    let seen = w.events(live_filtered);
    let record_ids: Vec<Value> = seen
        .iter()
        .map(|e| e.data()["record_ids"][0].clone())
        .collect();
    // Rendered as text, Integer 1 and String "1" both match; a delete is
    // matched against the record as it was.
    assert_eq!(
        record_ids,
        vec![json!("a"), json!("c"), json!("d"), json!("a")]
    );
    let resumed = w.sse_subscriber_with("c", filter, Some(&first.to_string()));
    w.sync();
    assert_eq!(ids(&w.events(resumed)), ids(&seen));
}

#[test]
fn websocket_resume_replays_each_subscription_once() {
    let mut w = World::new();
    w.history_chunk = 2;
    let p = w.connect();
    let (_, lsns) = write_history(&mut w, p, 4);
    let s = w.open_ws();
    let subscribe = |id: &str, c: &str, from: Lsn| {
        ws_json(&json!({"type":"Subscribe","messageId":id,
            "payload":{"collection":c,"resume_from":from.to_string()}}))
    };
    w.send(
        s,
        &cat(&[
            subscribe("a", "c", lsns[1]),
            subscribe("b", "other", lsns[2]),
        ]),
    );
    w.send(p, &insert("c", json!({"id":"live-c"})));
    let live_c = w.last_lsn();
    w.send(p, &insert("other", json!({"id":"live-o"})));
    let live_o = w.last_lsn();
    w.sync();
    let frames: Vec<Value> = w.frames(s).iter().map(Frame::json).collect();
    let acks: Vec<&Value> = frames.iter().filter(|f| f["type"] == "Success").collect();
    assert_eq!(acks.len(), 2, "{frames:?}");
    let events = |c: &str| -> Vec<String> {
        frames
            .iter()
            .filter(|f| f["type"] == "MutationNotification" && f["payload"]["collection"] == c)
            .map(|f| {
                f["payload"]["event_id"]
                    .as_str()
                    .expect("an event id")
                    .to_string()
            })
            .collect()
    };
    // `other` was written right after each `c` insert.
    assert_eq!(
        events("c"),
        vec![lsns[2].to_string(), lsns[3].to_string(), live_c.to_string()]
    );
    assert_eq!(
        events("other"),
        vec![
            lsns[2].next().to_string(),
            lsns[3].next().to_string(),
            live_o.to_string()
        ]
    );
    assert_eq!(frames.len(), 2 + 6, "{frames:?}");
}

// ----- slow subscribers -------------------------------------------------------

fn padded(i: usize) -> Value {
    json!({ "id": format!("r{i:04}"), "pad": "x".repeat(2000) })
}

#[test]
fn a_stuck_sse_subscriber_is_cut_off_and_state_stays_bounded() {
    let mut w = World::with(|c| c.outbound_queue_bytes = 1);
    let s = w.sse_subscriber("c", None);
    w.peers[s].frozen = true;
    let p = w.connect();
    for i in 0..200 {
        w.send(p, &insert("c", padded(i)));
        w.sync();
    }
    // Writers are never slowed down by a stuck subscriber.
    assert_eq!(w.responses(p).len(), 200);
    w.peers[s].frozen = false;
    w.run();
    let ev = w.events(s);
    let last = ev.last().expect("an error event");
    assert_eq!(last.name(), Some("error"), "{ev:?}");
    assert!(last.data()["error"]
        .as_str()
        .is_some_and(|e| e.contains("too slow")));
    assert!(w.is_closed(s));
    assert!(
        w.peers[s].received < HUB_FLOOR + 8 * 1024,
        "{}",
        w.peers[s].received
    );
    assert_eq!(w.server.stats().subscribers, 0);
}

#[test]
fn a_stuck_websocket_subscriber_is_closed_with_1013() {
    let mut w = World::with(|c| c.outbound_queue_bytes = 1);
    let s = w.ws_subscriber("c");
    w.peers[s].frozen = true;
    let p = w.connect();
    for i in 0..200 {
        w.send(p, &insert("c", padded(i)));
        w.sync();
    }
    assert_eq!(w.responses(p).len(), 200);
    w.peers[s].frozen = false;
    w.run();
    let frames = w.frames(s);
    let n = frames.len();
    assert!(n >= 2, "{frames:?}");
    let err = frames[n - 2].json();
    assert_eq!(err["type"], "Error");
    assert_eq!(err["code"], 1013);
    assert_eq!(frames[n - 1].close_code(), Some(1013));
    assert!(w.is_closed(s));
    assert!(w.peers[s].received < HUB_FLOOR + 8 * 1024);
    assert_eq!(w.server.stats().subscribers, 0);
}

/// The socket is full: the connection keeps pulling events into its own buffer
/// until `LOCAL_OUT_BYTES`, the hub then overflows. Memory stays bounded, and
/// once the socket drains the client learns it was cut off. (Regression: when
/// `pull_events` returned early on a full buffer without re-arming, nothing
/// woke the connection again: no error event, never closed.)
#[test]
fn a_subscriber_behind_a_full_socket_is_told_when_it_drains() {
    let mut w = World::with(|c| c.outbound_queue_bytes = 1);
    let s = w.sse_subscriber("c", None);
    w.peers[s].blocked = true;
    let p = w.connect();
    for i in 0..400 {
        w.send(p, &insert("c", padded(i)));
        w.sync();
    }
    w.peers[s].blocked = false;
    w.run();
    let received = w.peers[s].received;
    assert!(received < LOCAL_OUT + HUB_FLOOR + 8 * 1024, "{received}");
    let ev = w.events(s);
    assert_eq!(
        ev.last().and_then(Sse::name),
        Some("error"),
        "{} events",
        ev.len()
    );
    assert!(w.is_closed(s));
}

/// A burst bigger than the connection's own buffer (but well within the hub's
/// budget) is delivered in full to a subscriber that keeps reading.
#[test]
fn a_burst_larger_than_the_connection_buffer_is_delivered() {
    let mut w = World::new();
    w.create(&["c"]);
    let s = w.sse_subscriber("c", None);
    let p = w.connect();
    for i in 0..200 {
        w.send(p, &insert("c", padded(i)));
    }
    w.sync();
    let ev = w.events(s);
    assert_eq!(ev.len(), 200, "only {} of 200 events arrived", ev.len());
}

/// The same burst while the log is slower than the writers: the subscriber is
/// woken by the first durable batch and pulls events that are not durable yet
/// into its buffer until it is full. Once everything is durable, all of them
/// must arrive. (Regression: 120 of 200 arrived, the rest waited for the next
/// write.)
#[test]
fn a_burst_ahead_of_the_log_is_delivered_once_durable() {
    let mut w = World::new();
    w.create(&["c"]);
    let s = w.sse_subscriber("c", None);
    let p = w.connect();
    for i in 0..200 {
        w.send(p, &insert("c", padded(i)));
    }
    w.sync_batches(1);
    w.sync();
    let ev = w.events(s);
    assert_eq!(ev.len(), 200, "only {} of 200 events arrived", ev.len());
}

// ----- model-based: random operations, syncs and crashes ----------------------

#[derive(Debug, Clone)]
struct Expected {
    status: u16,
    /// Everything up to this LSN was applied before the request ran: the reply
    /// may not be seen before it is durable.
    after: Lsn,
    /// For reads: the value the model holds.
    value: Option<i64>,
}

/// Random inserts, updates, deletes and reads on a few connections, cut into
/// random chunks, with random partial syncs and crashes. Checked against a
/// `BTreeMap`: every reply in order and never before what it depends on is
/// durable, and after each crash the server holds exactly the model's state at
/// the last durable LSN.
#[test]
fn random_operations_match_the_model_across_crashes() {
    let crashes: usize = (0..40).map(run_model).sum();
    assert!(crashes >= 40, "only {crashes} crashes exercised");
}

fn run_model(seed: u64) -> usize {
    let mut rng = Rng::new(seed);
    let mut w = World::new();
    let mut peers: Vec<usize> = (0..3).map(|_| w.connect()).collect();
    let mut expected: Vec<VecDeque<Expected>> = vec![VecDeque::new(); 3];
    let mut model: BTreeMap<String, i64> = BTreeMap::new();
    let mut states: Vec<(Lsn, BTreeMap<String, i64>)> = vec![(Lsn::ZERO, BTreeMap::new())];
    let mut crashes = 0;
    for step in 0..120 {
        let ctx = format!("seed {seed} step {step}");
        match rng.below(12) {
            0..=6 => {
                let k = rng.below(peers.len());
                let id = format!("k{}", rng.below(6));
                let v = rng.below(1000) as i64;
                let (bytes, status, value) = match rng.below(4) {
                    0 => match model.contains_key(&id) {
                        true => (insert("m", json!({"id":id,"v":v})), 409, None),
                        false => {
                            model.insert(id.clone(), v);
                            (insert("m", json!({"id":id,"v":v})), 200, None)
                        }
                    },
                    1 => match model.get_mut(&id) {
                        Some(old) => {
                            *old = v;
                            (update("m", &id, json!({ "v": v })), 200, None)
                        }
                        None => (update("m", &id, json!({ "v": v })), 404, None),
                    },
                    2 => match model.remove(&id) {
                        Some(_) => (delete("m", &id), 200, None),
                        None => (delete("m", &id), 404, None),
                    },
                    _ => match model.get(&id) {
                        Some(v) => (get("m", &id), 200, Some(*v)),
                        None => (get("m", &id), 404, None),
                    },
                };
                let before = w.last_lsn();
                let chunks = random_pieces(&bytes, &mut rng);
                w.send_in(peers[k], &chunks);
                let after = w.last_lsn();
                assert_eq!(
                    after > before,
                    status == 200 && value.is_none(),
                    "{ctx}: only successful writes commit a batch"
                );
                if after > before {
                    states.push((after, model.clone()));
                }
                expected[k].push_back(Expected {
                    status,
                    after,
                    value,
                });
            }
            7 | 8 => {
                let n = rng.below(w.written.len() + 1);
                w.sync_batches(n);
            }
            9 | 10 => w.sync(),
            _ => {
                crashes += 1;
                w.crash();
                let durable = w.server.durable_lsn();
                states.retain(|(lsn, _)| *lsn <= durable);
                model = states.last().expect("the empty state").1.clone();
                // Every reply that was due has been checked below; the rest
                // were never acknowledged and are lost with their connection.
                peers = (0..3).map(|_| w.connect()).collect();
                expected = vec![VecDeque::new(); 3];
                assert_eq!(read_all(&mut w), model, "{ctx}: state after the crash");
            }
        }
        let durable = w.server.durable_lsn();
        for (k, &p) in peers.iter().enumerate() {
            for r in w.responses(p) {
                let e = expected[k]
                    .pop_front()
                    .unwrap_or_else(|| panic!("{ctx}: unexpected reply {r:?}"));
                assert_eq!(r.status, e.status, "{ctx}: {}", r.text());
                assert!(
                    e.after <= durable,
                    "{ctx}: replied before LSN {} was durable",
                    e.after
                );
                if let Some(v) = e.value {
                    assert_eq!(r.json()["v"]["value"], v, "{ctx}");
                }
            }
            if let Some(e) = expected[k].front() {
                assert!(
                    e.after > durable,
                    "{ctx}: a reply that is due was held back"
                );
            }
        }
    }
    w.sync();
    assert_eq!(read_all(&mut w), model, "seed {seed}: final state");
    crashes
}

fn read_all(w: &mut World) -> BTreeMap<String, i64> {
    let q = w.connect();
    w.send(q, &find("m", json!({})));
    let r = w.responses(q);
    assert_eq!(r.len(), 1, "a read after recovery is not held");
    r[0].json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|rec| {
            (
                rec["id"].as_str().expect("an id").to_string(),
                rec["v"]["value"].as_i64().expect("v"),
            )
        })
        .collect()
}

// ----- outbound calls -----------------------------------------------------------

/// A world whose embeddings go to a provider at `http://provider:9/v1`.
fn provider_world(tweak: impl FnOnce(&mut Config)) -> World {
    World::with(|c| {
        c.embed_url = "http://provider:9/v1".into();
        tweak(c);
    })
}

fn embed_request(texts: &[&str]) -> Vec<u8> {
    authed(
        "POST",
        "/api/embed",
        Some(&json!({"texts": texts, "model": "m"})),
    )
}

/// The provider's answer for `n` texts: text i embeds as [i, seed].
fn provider_body(n: usize, seed: u64) -> Vec<u8> {
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"index": i, "embedding": [i as f64, seed as f64]}))
        .collect();
    json!({"data": data, "model": "m"}).to_string().into_bytes()
}

fn with_length(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for c in body.chunks(piece.max(1)) {
        r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        r.extend_from_slice(c);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

/// The ids of the calls started among `commands`.
fn started(commands: &[CallCommand]) -> Vec<CallId> {
    commands
        .iter()
        .filter_map(|c| match c {
            CallCommand::Start { id, .. } => Some(*id),
            CallCommand::Cancel(_) => None,
        })
        .collect()
}

fn cancelled(commands: &[CallCommand]) -> Vec<CallId> {
    commands
        .iter()
        .filter_map(|c| match c {
            CallCommand::Cancel(id) => Some(*id),
            CallCommand::Start { .. } => None,
        })
        .collect()
}

/// A provider's response arrives cut at every byte boundary (and byte by
/// byte, and at random places), framed by length or in chunks: the client
/// gets the same reply every time, parsed as the bytes came.
#[test]
fn outbound_responses_are_parsed_however_they_are_split() {
    let body = provider_body(2, 7);
    for response in [with_length(&body), chunked(&body, 5)] {
        for cuts in splittings(response.len(), 11) {
            let mut w = provider_world(|_| {});
            let p = w.connect();
            w.send(p, &embed_request(&["a", "b"]));
            let commands = w.take_calls();
            let [CallCommand::Start {
                id,
                target,
                request,
                ..
            }] = commands.as_slice()
            else {
                panic!("one call starts: {commands:?}")
            };
            assert_eq!(
                (target.host.as_str(), target.port, target.tls),
                ("provider", 9, false)
            );
            let text = String::from_utf8_lossy(request);
            assert!(
                text.starts_with("POST /v1/embeddings HTTP/1.1\r\n"),
                "{text}"
            );
            assert!(w.responses(p).is_empty(), "the reply waits for the call");
            let id = *id;
            w.on_call(|s, now| s.handle_call_connected(id, now));
            for piece in pieces(&response, &cuts) {
                w.on_call(|s, now| s.handle_call_data(id, piece, now));
            }
            let r = w.responses(p);
            assert_eq!(r.len(), 1, "cuts {cuts:?}");
            assert_eq!(r[0].status, 200, "{}", r[0].text());
            assert_eq!(r[0].json()["embeddings"], json!([[0.0, 7.0], [1.0, 7.0]]));
            // The response was complete: the runtime is told to close the call.
            assert_eq!(cancelled(&w.take_calls()), vec![id]);
            // The connection carries on.
            w.send(p, &health());
            assert_eq!(w.responses(p)[0].status, 200);
        }
    }
}

/// The connection breaks mid-body, or the provider closes early: a 502 that
/// says so, and the client's connection carries on.
#[test]
fn an_outbound_failure_mid_body_is_a_502() {
    let response = with_length(&provider_body(1, 1));
    let half = &response[..response.len() - 5];
    for break_with_error in [true, false] {
        let mut w = provider_world(|_| {});
        let p = w.connect();
        w.send(p, &embed_request(&["a"]));
        let id = started(&w.take_calls())[0];
        w.on_call(|s, now| s.handle_call_connected(id, now));
        w.on_call(|s, now| s.handle_call_data(id, half, now));
        if break_with_error {
            w.on_call(|s, now| {
                s.handle_call_error(id, TransportError::Io("connection reset".into()), now)
            });
        } else {
            w.on_call(|s, now| s.handle_call_eof(id, now));
        }
        let r = w.responses(p);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, 502, "{}", r[0].text());
        let message = r[0].json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let want = if break_with_error {
            "connection reset"
        } else {
            "closed mid-response"
        };
        assert!(message.contains(want), "{message}");
        // Late reports about a finished call are ignored.
        w.on_call(|s, now| s.handle_call_data(id, b"junk", now));
        w.send(p, &health());
        assert_eq!(w.responses(p)[0].status, 200);
    }
}

/// Each phase of a call has a deadline: connecting, the first byte, then
/// between pieces. A missed one cancels the call and answers 502 (a provider
/// failure, spec E10) saying it timed out.
#[test]
fn outbound_deadlines_cancel_and_answer_502() {
    let response = with_length(&provider_body(1, 3));
    for phase in ["connect", "first byte", "idle"] {
        let mut w = provider_world(|c| {
            c.outbound_connect_timeout_secs = 3;
            c.outbound_timeout_secs = 5;
            c.outbound_idle_timeout_secs = 4;
        });
        let p = w.connect();
        w.send(p, &embed_request(&["a"]));
        let id = started(&w.take_calls())[0];
        let deadline = match phase {
            "connect" => 3,
            "first byte" => {
                w.on_call(|s, now| s.handle_call_connected(id, now));
                5
            }
            _ => {
                w.on_call(|s, now| s.handle_call_connected(id, now));
                w.advance(Duration::from_secs(2));
                w.on_call(|s, now| s.handle_call_data(id, &response[..10], now));
                4
            }
        };
        // The idle deadline restarts with every piece.
        w.advance(Duration::from_secs(deadline) - Duration::from_millis(1));
        assert!(cancelled(&w.take_calls()).is_empty(), "{phase}: too early");
        assert!(w.responses(p).is_empty(), "{phase}");
        w.advance(Duration::from_millis(1));
        assert_eq!(cancelled(&w.take_calls()), vec![id], "{phase}");
        let r = w.responses(p);
        assert_eq!(r.len(), 1, "{phase}");
        assert_eq!(r[0].status, 502, "{phase}: {}", r[0].text());
        assert!(r[0].text().contains("timed out") || r[0].text().contains("stalled"));
    }
}

/// A client that leaves while its call runs: the call is cancelled (its
/// connection closed), and nothing is delivered to anyone. A client that only
/// half-closes still gets its answer.
#[test]
fn a_client_that_leaves_cancels_its_call() {
    let mut w = provider_world(|_| {});
    let p = w.connect();
    w.send(p, &embed_request(&["a"]));
    let id = started(&w.take_calls())[0];
    w.eof(p);
    assert!(
        !w.is_closed(p),
        "a half-closed client still reads its reply"
    );
    assert!(cancelled(&w.take_calls()).is_empty());
    w.reset(p);
    assert_eq!(cancelled(&w.take_calls()), vec![id]);
    w.on_call(|s, now| s.handle_call_data(id, &with_length(&provider_body(1, 1)), now));
    assert!(w.responses(p).is_empty());
    assert_eq!(w.server.stats().calls_in_flight, 0);
}

/// Many calls at once: at most `outbound_max_calls` run, the rest wait and
/// start as others finish; every answer reaches its own client. Timers fire
/// in deadline order under the simulated clock.
#[test]
fn many_outbound_calls_run_within_the_bound_and_reach_their_clients() {
    let mut w = provider_world(|c| c.outbound_max_calls = 4);
    let clients: Vec<usize> = (0..20).map(|_| w.connect()).collect();
    for &p in &clients {
        w.send(p, &embed_request(&["x"]));
    }
    let mut running = started(&w.take_calls());
    assert_eq!(running.len(), 4, "the bound holds");
    let mut answered = 0u64;
    // Answer in reverse order of start, each with a distinct payload (its id).
    while let Some(id) = running.pop() {
        assert!(w.server.stats().calls_in_flight <= 4);
        let body = with_length(&provider_body(1, id.0));
        w.on_call(|s, now| s.handle_call_connected(id, now));
        w.on_call(|s, now| s.handle_call_data(id, &body, now));
        answered += 1;
        running.extend(started(&w.take_calls()));
    }
    assert_eq!(answered, 20);
    let mut seen = Vec::new();
    for &p in &clients {
        let r = w.responses(p);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, 200);
        seen.push(r[0].json()["embeddings"][0][1].as_f64().expect("the seed") as u64);
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=20).collect::<Vec<u64>>(),
        "each client got its own answer"
    );

    // Deadlines in order: a connected call (5 s to first byte) and a
    // connecting one (3 s) time out in that order.
    let mut w = provider_world(|c| {
        c.outbound_connect_timeout_secs = 3;
        c.outbound_timeout_secs = 5;
    });
    let (a, b) = (w.connect(), w.connect());
    w.send(a, &embed_request(&["a"]));
    w.send(b, &embed_request(&["b"]));
    let ids = started(&w.take_calls());
    w.on_call(|s, now| s.handle_call_connected(ids[0], now));
    w.advance(Duration::from_secs(3));
    assert_eq!(cancelled(&w.take_calls()), vec![ids[1]]);
    assert_eq!(w.responses(b)[0].status, 502);
    assert!(w.responses(a).is_empty());
    w.advance(Duration::from_secs(2));
    assert_eq!(cancelled(&w.take_calls()), vec![ids[0]]);
    assert_eq!(w.responses(a)[0].status, 502);
}

/// Calls beyond the bound and its queue are refused at once (503), not
/// queued without limit.
#[test]
fn outbound_calls_beyond_the_queue_are_refused() {
    let mut w = provider_world(|c| c.outbound_max_calls = 1);
    // One runs, 16 wait, the next is refused.
    let clients: Vec<usize> = (0..18).map(|_| w.connect()).collect();
    for &p in &clients {
        w.send(p, &embed_request(&["x"]));
    }
    assert_eq!(started(&w.take_calls()).len(), 1);
    let r = w.responses(clients[17]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 503, "{}", r[0].text());
    assert!(clients[..17].iter().all(|&p| w.responses(p).is_empty()));
}

// ----- chat ---------------------------------------------------------------------

/// A chat answer (the offline provider, within the request) is shown only
/// once the question it answers is durable, ends its SSE stream with `done`,
/// and a crash before the sync takes the question and shows nothing.
#[test]
fn chat_answers_wait_for_the_question_to_be_durable() {
    let mut w = World::new();
    let p = w.connect();
    w.send(
        p,
        &insert("products", json!({"id": "p1", "name": "Pro", "price": 99})),
    );
    w.send(
        p,
        &authed(
            "POST",
            "/api/chat",
            Some(&json!({"collections": [{"collection_name": "products"}]})),
        ),
    );
    w.sync();
    let r = w.responses(p);
    assert_eq!(r.len(), 2, "{r:?}");
    let chat = r[1].json()["chat_id"].as_str().unwrap().to_string();
    let ask = |q: &str| {
        authed(
            "POST",
            &format!("/api/chat/{chat}/messages/stream"),
            Some(&json!({ "message": q })),
        )
    };
    let s = w.connect();
    w.send(s, &ask("What is the price of Pro?"));
    let head = w.responses(s);
    assert_eq!(head.len(), 1);
    assert_eq!(head[0].header("content-type"), Some("text/event-stream"));
    assert!(
        w.events(s).is_empty(),
        "no token before the question is durable"
    );
    w.sync();
    let ev = w.events(s);
    let names: Vec<&str> = ev.iter().filter_map(Sse::name).collect();
    assert!(
        names.len() > 2 && names[..names.len() - 1].iter().all(|n| *n == "token"),
        "{names:?}"
    );
    let done = ev.last().unwrap();
    assert_eq!(done.name(), Some("done"));
    assert_eq!(done.data()["content"], "The price of Pro is 99.");
    assert!(w.is_closed(s), "the stream ends with the answer");

    // A crash before the next question is synced: the client saw nothing, and
    // after the restart there is no trace of it.
    let s = w.connect();
    w.send(s, &ask("And the name?"));
    assert_eq!(w.responses(s).len(), 1);
    assert!(w.events(s).is_empty());
    w.crash();
    let p = w.connect();
    w.send(
        p,
        &authed("GET", &format!("/api/chat/{chat}/messages"), None),
    );
    w.sync();
    let r = w.responses(p);
    assert_eq!(r[0].json()["total"], 2, "{:?}", r[0].json());
}

/// With an embedding provider configured, a chat over a collection holding
/// vectors embeds the question first and retrieves with that vector (the
/// nearest record leads the context, though no word matches); when the
/// provider fails, text retrieval alone answers.
#[test]
fn chat_retrieval_embeds_the_question_with_the_provider() {
    let mut w = provider_world(|_| {});
    let p = w.connect();
    for (id, v) in [("north", [1.0, 0.0]), ("east", [0.0, 1.0])] {
        w.send(
            p,
            &insert("ways", json!({"id": id, "name": id, "embedding": v})),
        );
    }
    w.send(
        p,
        &authed(
            "POST",
            "/api/chat",
            Some(&json!({"collections": [{"collection_name": "ways", "fields": [{"field": "name"}]}]})),
        ),
    );
    w.sync();
    let r = w.responses(p);
    let chat = r[2].json()["chat_id"].as_str().unwrap().to_string();
    let ask = |q: &str| {
        authed(
            "POST",
            &format!("/api/chat/{chat}/messages"),
            Some(&json!({ "message": q })),
        )
    };

    let q = w.connect();
    w.send(q, &ask("Which way to the sunrise?"));
    w.sync();
    let commands = w.take_calls();
    let [CallCommand::Start { id, request, .. }] = commands.as_slice() else {
        panic!("the question is embedded first: {commands:?}")
    };
    let text = String::from_utf8_lossy(request);
    assert!(text.starts_with("POST /v1/embeddings"), "{text}");
    assert!(text.contains("Which way to the sunrise?"), "{text}");
    assert!(w.responses(q).is_empty(), "the answer waits for the vector");
    let body = json!({"data": [{"index": 0, "embedding": [0.1, 0.9]}], "model": "m"});
    let id = *id;
    w.on_call(|s, now| {
        s.handle_call_connected(id, now);
        s.handle_call_data(id, &with_length(body.to_string().as_bytes()), now);
        s.handle_call_eof(id, now);
    });
    w.sync();
    let r = w.responses(q);
    assert_eq!(r.len(), 1, "{r:?}");
    let reply = r[0].json();
    let snippets = reply["context_snippets"].as_array().unwrap();
    assert_eq!(snippets[0]["record"]["id"], "east", "{reply}");

    // The provider fails: text alone gives the context, and the answer comes.
    let q = w.connect();
    w.send(q, &ask("Where is north?"));
    w.sync();
    let commands = w.take_calls();
    let [id] = started(&commands)[..] else {
        panic!("{commands:?}")
    };
    w.on_call(|s, now| s.handle_call_error(id, TransportError::Connect("refused".into()), now));
    w.sync();
    let r = w.responses(q);
    assert_eq!(r.len(), 1, "{r:?}");
    let reply = r[0].json();
    let snippets = reply["context_snippets"].as_array().unwrap();
    assert_eq!(snippets[0]["record"]["id"], "north", "{reply}");
}

// ----- what a client may hold before it proves anything ----------------------

/// A head announcing a large body; the body itself is never sent.
fn large_head(target: &str, auth: Option<&str>, len: usize, extra: &str) -> Vec<u8> {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {target} HTTP/1.1\r\nHost: sim\r\n{auth}Content-Type: application/json\r\nContent-Length: {len}\r\n{extra}\r\n"
    )
    .into_bytes()
}

#[test]
fn a_large_body_is_refused_from_its_head_without_a_valid_token() {
    // (route, credential, status answered before any body byte)
    let cases: &[(&str, Option<&str>, u16)] = &[
        ("/api/insert/c", None, 401),
        ("/api/insert/c", Some("Bearer forged"), 401),
        // Unauthenticated routes take small bodies only.
        ("/api/auth/token", None, 413),
        // An unknown route is not worth reading.
        ("/api/nowhere/at/all", Some(&bearer()), 404),
    ];
    for (target, auth, status) in cases {
        let mut w = World::new();
        let p = w.connect();
        w.send(p, &large_head(target, *auth, 60 << 20, ""));
        let r = w.responses(p);
        assert_eq!(r.len(), 1, "{target} {auth:?}: {r:?}");
        assert_eq!(
            r[0].status,
            *status,
            "{target}: {}",
            String::from_utf8_lossy(&r[0].body)
        );
        assert_eq!(r[0].header("connection"), Some("close"));
        assert!(w.is_closed(p), "{target}: still reading the body");
    }
}

#[test]
fn a_large_body_with_a_token_is_read_and_100_continue_waits_for_admission() {
    let mut w = World::new();
    let p = w.connect();
    let body = format!(r#"{{"blob":"{}"}}"#, "x".repeat(100_000));
    w.send(
        p,
        &large_head(
            "/api/insert/c",
            Some(&bearer()),
            body.len(),
            "Expect: 100-continue\r\n",
        ),
    );
    let head = String::from_utf8_lossy(&w.peers[p].rx).to_string();
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    w.peers[p].rx.clear();
    w.send(p, body.as_bytes());
    w.sync();
    let r = w.responses(p);
    assert_eq!(r[0].status, 200, "{}", String::from_utf8_lossy(&r[0].body));

    // Without a token, no 100 Continue: the refusal comes instead.
    let q = w.connect();
    w.send(
        q,
        &large_head(
            "/api/insert/c",
            None,
            body.len(),
            "Expect: 100-continue\r\n",
        ),
    );
    let r = w.responses(q);
    assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), vec![401]);
}

#[test]
fn large_bodies_in_flight_share_one_budget() {
    let mut w = World::with(|c| {
        c.max_body_bytes = 1 << 20;
        c.max_body_bytes_in_flight = 3 << 20;
    });
    let heads: Vec<usize> = (0..4).map(|_| w.connect()).collect();
    for p in &heads {
        w.send(
            *p,
            &large_head("/api/insert/c", Some(&bearer()), 1 << 20, ""),
        );
    }
    // Three are admitted and wait for their bodies; the fourth is told to
    // come back.
    for p in &heads[..3] {
        assert!(w.responses(*p).is_empty());
    }
    let r = w.responses(heads[3]);
    assert_eq!(r[0].status, 503);
    assert_eq!(r[0].header("retry-after"), Some("1"));
    // One gives up: its share comes back.
    w.reset(heads[0]);
    let p = w.connect();
    w.send(
        p,
        &large_head("/api/insert/c", Some(&bearer()), 1 << 20, ""),
    );
    assert!(w.responses(p).is_empty(), "the freed share was not reused");
}

#[test]
fn a_request_head_or_body_trickled_in_times_out() {
    // One byte a second resets the idle timer, never the request's deadline.
    let mut w = World::with(|c| {
        c.idle_timeout_secs = 300;
        c.request_head_timeout_secs = 10;
        c.request_body_timeout_secs = 30;
    });
    let p = w.connect();
    let head = b"GET /api/health HTTP/1.1\r\nHost: slow\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for b in head.iter().take(9) {
        w.send(p, &[*b]);
        w.advance(Duration::from_secs(1));
    }
    assert!(!w.is_closed(p));
    for b in head.iter().skip(9) {
        if w.is_closed(p) {
            break;
        }
        w.send(p, &[*b]);
        w.advance(Duration::from_secs(1));
    }
    assert!(w.is_closed(p), "a trickled head was never cut off");
    let r = w.responses(p);
    assert_eq!(r[0].status, 408);

    // The body gets its own deadline once the head is in.
    let q = w.connect();
    w.send(q, &insert_head_with_length(10));
    w.advance(Duration::from_secs(29));
    w.send(q, b"{");
    assert!(!w.is_closed(q));
    w.advance(Duration::from_secs(1));
    assert!(w.is_closed(q));
    assert_eq!(w.responses(q)[0].status, 408);

    // A keep-alive connection between requests is governed by the idle
    // timeout alone.
    let k = w.connect();
    w.send(k, &health());
    w.advance(Duration::from_secs(60));
    assert!(!w.is_closed(k));
    w.send(k, &health());
    assert_eq!(
        w.responses(k).iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 200]
    );
}

fn insert_head_with_length(len: usize) -> Vec<u8> {
    format!(
        "POST /api/insert/c HTTP/1.1\r\nHost: sim\r\nAuthorization: {}\r\nContent-Length: {len}\r\n\r\n",
        bearer()
    )
    .into_bytes()
}

#[test]
fn one_address_cannot_take_every_connection() {
    let mut w = World::with(|c| {
        c.max_connections = 1000;
        c.max_connections_per_address = 3;
    });
    let from = |ip: &str| tidepool_core::server::Peer {
        ip: Some(ip.parse().unwrap()),
        ..Default::default()
    };
    let greedy: Vec<usize> = (0..4).map(|_| w.connect_from(from("10.0.0.9"))).collect();
    let other = w.connect_from(from("10.0.0.10"));
    for p in greedy.iter().chain([&other]) {
        w.send(*p, &health());
    }
    let statuses: Vec<u16> = greedy.iter().map(|p| w.responses(*p)[0].status).collect();
    assert_eq!(statuses, vec![200, 200, 200, 503]);
    assert_eq!(w.responses(other)[0].status, 200);
    let said = w.server.poll_note().map(|n| n.text).unwrap_or_default();
    assert!(said.contains("--max-connections-per-address"), "{said}");
}

#[test]
fn a_body_of_millions_of_empty_values_is_refused_before_it_is_built() {
    let mut w = World::new();
    let p = w.connect();
    let mut body = vec![0xdd];
    body.extend_from_slice(&3_000_000u32.to_be_bytes());
    body.extend(std::iter::repeat_n(0x90, 3_000_000));
    let head = format!(
        "POST /api/insert/c HTTP/1.1\r\nHost: sim\r\nAuthorization: {}\r\nContent-Type: application/msgpack\r\nContent-Length: {}\r\n\r\n",
        bearer(),
        body.len()
    );
    w.send_in(p, &[head.as_bytes(), &body]);
    let r = w.responses(p);
    assert_eq!(r[0].status, 413, "{}", String::from_utf8_lossy(&r[0].body));
    assert!(String::from_utf8_lossy(&r[0].body).contains("values"));
}

#[test]
fn a_stream_closes_when_its_token_expires_unless_told_otherwise() {
    let short = |c: &mut Config| {
        c.token_lifetime_secs = 60;
        c.heartbeat_secs = 1000;
    };
    // Streams opened with this world's own 60-second token.
    let open = |w: &mut World| {
        let auth = format!("Bearer {}", w.token);
        let ws = w.connect();
        w.send(ws, &ws_upgrade(&[("Authorization", &auth)]));
        assert_eq!(w.responses(ws)[0].status, 101);
        let sse = w.connect();
        let headers = [
            ("Authorization", auth.as_str()),
            ("Accept", "text/event-stream"),
        ];
        w.send(sse, &http("GET", "/api/subscribe/c", &headers, None));
        assert_eq!(w.responses(sse)[0].status, 200);
        (ws, sse)
    };
    let mut w = World::with(short);
    let (ws, sse) = open(&mut w);
    w.advance(Duration::from_secs(59));
    assert!(!w.is_closed(ws) && !w.is_closed(sse));
    w.advance(Duration::from_secs(1));
    let frames = w.frames(ws);
    let close = frames.last().expect("a close frame");
    assert_eq!(close.opcode, 8);
    assert_eq!(
        u16::from_be_bytes([close.payload[0], close.payload[1]]),
        1008
    );
    assert!(String::from_utf8_lossy(&close.payload[2..]).contains("token expired"));
    assert!(w.is_closed(sse), "the SSE stream outlived its token");

    // `--stream-credentials connect`: checked once, at connect.
    let mut w = World::with(|c| {
        short(c);
        c.streams_expire_with_token = false;
    });
    let (ws, sse) = open(&mut w);
    w.advance(Duration::from_secs(120));
    assert!(!w.is_closed(sse));
    assert!(!w.is_closed(ws));
    assert!(w.frames(ws).iter().all(|f| f.opcode != 8));
}

/// Regression (fuzz): a request's deadline and the idle deadline falling at
/// the same moment answered 408 twice, the second after `Connection: close`.
#[test]
fn deadlines_that_fall_together_answer_once() {
    let mut w = World::with(|c| c.request_head_timeout_secs = IDLE.as_secs());
    let p = w.connect();
    w.send(p, b"GET /api/hea");
    w.advance(IDLE);
    assert!(w.is_closed(p));
    let r = w.responses(p);
    assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), vec![408]);
    assert!(w.peers[p].rx.is_empty(), "bytes after the 408");
}

/// Regression (fuzz): events queued in MessagePack before a second `Hello`
/// switched the session back to JSON went out in text frames.
#[test]
fn events_keep_the_framing_they_were_encoded_for() {
    let mut w = World::new();
    let p = w.open_ws();
    let hello = |formats: &[&str]| ws_json(&json!({"type":"Hello","payload":{"formats":formats}}));
    let input = cat(&[
        hello(&["msgpack"]),
        ws_json(
            &json!({"type":"Insert","messageId":"i","payload":{"collection":"fresh","record":{"n":1}}}),
        ),
        hello(&["json"]),
    ]);
    w.send(p, &input);
    w.sync();
    let frames = w.frames(p);
    assert!(frames.iter().any(|f| f.opcode == 2), "{frames:?}");
    for f in frames.iter().filter(|f| f.opcode == 1 || f.opcode == 2) {
        if f.opcode == 1 {
            serde_json::from_slice::<Value>(&f.payload).expect("a text frame holds JSON");
        } else {
            rmp_serde::from_slice::<Value>(&f.payload).expect("a binary frame holds MessagePack");
        }
    }
}
