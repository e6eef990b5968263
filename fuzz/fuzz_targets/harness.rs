//! The connection harness the `connection` and `dialect_frames` targets
//! share. A whole client connection: fuzzer bytes through `Connection` and `Server`,
//! driven as a runtime drives them (execute, persist, report durable, perform
//! effects, transmit) after every chunk, then a timer tick and EOF.
//!
//! Invariants besides "no panic":
//! * the driver loop settles (no livelock between execute and the hub);
//! * in HTTP mode every transmitted chunk is one whole response: it starts with
//!   `HTTP/1.1 `, its head parses, and the bytes after the head are exactly
//!   `Content-Length` (or none, for HEAD); nothing follows a `Connection: close`;
//! * after a `101`, the bytes are complete, unmasked server frames with known
//!   opcodes and UTF-8 text, and nothing follows our Close frame (RFC 6455 5.5.1);
//!   after an SSE head, the stream ends on an event boundary;
//! * after EOF and a drain, the connection is closed.
//!
//! Input: a control byte, then the bytes the client sends. Its low 5 bits seed the
//! chunk sizes (0: chunks end at each `<CUT>`, which is removed). Bit 0x80 makes
//! storage lag: each round only what was committed before the previous chunk is
//! reported durable, as when an fsync is still running while the next bytes
//! arrive. Bit 0x40 wakes the connection every round, as other clients' writes to
//! a subscribed collection do (`handle_notify` means "may have events"). Bit 0x20
//! fails storage when the second chunk arrives: from then on nothing more becomes
//! durable and every round tells the connection, as the runtimes do.
//!
//! Every `TOKEN` in the client bytes becomes a valid bearer token for the API key
//! `k`, so seeds can authenticate (`Authorization: Bearer TOKEN`,
//! `/api/ws?token=TOKEN`). `FUZZ_TRACE=1` prints what the server sends.
#![allow(dead_code)]


use std::sync::OnceLock;
use std::time::Duration;

use tidepool_core::auth::Auth;
use tidepool_core::config::Config;
use bytes::Bytes;
use tidepool_core::conn::{Connection, Effect, History};
use tidepool_core::driver::{self, Shared};
use tidepool_core::ids::Lsn;
use tidepool_core::engine::Engine;
use tidepool_core::server::calls::{CallCommand, TransportError};
use tidepool_core::server::{Server, StorageFailure, StorageOp};
use tidepool_core::time::Timestamp;

const SECRET: &[u8] = b"secret";
const NOW: Timestamp = Timestamp::from_secs(1_700_000_000);
const CUT: &[u8] = b"<CUT>";

fn token() -> &'static [u8] {
    static TOKEN: OnceLock<Vec<u8>> = OnceLock::new();
    TOKEN.get_or_init(|| {
        Auth::new(SECRET, &["k".into()], Duration::from_secs(3600))
            .issue(&Engine::new(1), "k", NOW)
            .expect("k is a configured key")
            .into_bytes()
    })
}

/// `FUZZ_TRACE=1` prints every transmitted chunk (to check what a seed does).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

fn substitute(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while !rest.is_empty() {
        if let Some(tail) = rest.strip_prefix(b"TOKEN") {
            out.extend_from_slice(token());
            rest = tail;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

#[derive(Debug, PartialEq)]
enum Mode {
    Http,
    /// After a `Connection: close` response: nothing more may be sent.
    HttpClosed,
    WebSocket,
    Sse,
}

struct Observer {
    mode: Mode,
    stream: Vec<u8>,
}

impl Observer {
    fn see(&mut self, chunk: &[u8]) {
        if trace() {
            eprintln!("<- {:?} {:?}", self.mode, String::from_utf8_lossy(chunk));
        }
        match self.mode {
            Mode::Http => self.response(chunk),
            Mode::HttpClosed => panic!(
                "bytes after a Connection: close response: {:?}",
                String::from_utf8_lossy(chunk)
            ),
            Mode::WebSocket | Mode::Sse => self.stream.extend_from_slice(chunk),
        }
    }

    fn response(&mut self, chunk: &[u8]) {
        let text = || String::from_utf8_lossy(chunk).into_owned();
        assert!(chunk.starts_with(b"HTTP/1.1 "), "not a response: {:?}", text());
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        let head = match r.parse(chunk) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("response head does not parse ({other:?}): {:?}", text()),
        };
        let status = r.code.expect("a status");
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        match status {
            100 => assert_eq!(head, chunk.len(), "100 Continue with a body"),
            101 => {
                assert_eq!(head, chunk.len());
                assert!(header("sec-websocket-accept").is_some());
                self.mode = Mode::WebSocket;
            }
            // A stream head (no length: events follow until the end). A
            // refusal in SSE form (a Lanonasis error event) has a length and
            // is an ordinary response.
            _ if header("content-type").as_deref() == Some("text/event-stream")
                && header("content-length").is_none() =>
            {
                assert_eq!(head, chunk.len());
                self.mode = Mode::Sse;
            }
            _ => {
                let len: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no Content-Length: {:?}", text()));
                let body = chunk.len() - head;
                assert!(
                    body == len || body == 0,
                    "Content-Length {len} but {body} body bytes: {:?}",
                    text()
                );
                if close {
                    self.mode = Mode::HttpClosed;
                }
            }
        }
    }

    /// At the end: the streamed bytes are whole frames / whole events.
    fn finish(&self) {
        match self.mode {
            Mode::WebSocket => check_frames(&self.stream),
            Mode::Sse => assert!(
                self.stream.is_empty() || self.stream.ends_with(b"\n\n"),
                "SSE stream ends mid-event: {:?}",
                String::from_utf8_lossy(&self.stream)
            ),
            Mode::Http | Mode::HttpClosed => {}
        }
    }
}

/// Server frames: unmasked, known opcodes, length as declared, UTF-8 text, and
/// none after a Close.
fn check_frames(mut b: &[u8]) {
    let mut closed = false;
    while !b.is_empty() {
        assert!(b.len() >= 2, "truncated frame header {b:02x?}");
        let (op, masked, len7) = (b[0] & 0x0f, b[1] & 0x80 != 0, b[1] & 0x7f);
        assert!(!closed, "a frame (opcode {op:#x}) after our Close frame");
        closed = op == 8;
        assert!(matches!(op, 0 | 1 | 2 | 8 | 9 | 10), "opcode {op:#x}");
        assert!(b[0] & 0x70 == 0, "reserved bits set");
        assert!(!masked, "a server frame is masked");
        let (len, at) = match len7 {
            126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 => (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")), 10),
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len).expect("frame length fits");
        assert!(b.len() >= at + len, "frame of {len} bytes is truncated");
        let payload = &b[at..at + len];
        if op == 1 && b[0] & 0x80 != 0 {
            assert!(
                std::str::from_utf8(payload).is_ok(),
                "text frame not UTF-8: {}",
                String::from_utf8_lossy(payload)
            );
        }
        if op >= 8 {
            assert!(len <= 125, "control frame of {len} bytes");
        }
        b = &b[at + len..];
    }
}

/// What storage has made durable: everything, or (lagging) what was committed
/// before the previous round.
struct Storage {
    lag: bool,
    wake: bool,
    /// Fail when the second chunk arrives; `failed` once it has.
    fail: bool,
    failed: bool,
    behind: Lsn,
}

/// The fuzzed runtime around the server: batches are dropped (storage reports
/// them durable by round, below), a failure is known once it happened.
struct FuzzHost<'a> {
    server: &'a mut Server,
    failed: bool,
    now: Timestamp,
}

impl Shared for FuzzHost<'_> {
    fn with_server<R>(&mut self, f: impl FnOnce(&mut Server) -> R) -> R {
        let r = f(self.server);
        while self.server.poll_log().is_some() {}
        // Reads deferred outside the lock run at once, as a reader thread would.
        while let Some(job) = self.server.poll_read() {
            let done = job.run(&|| false);
            self.server.finish_read(done, self.now);
        }
        r
    }

    fn durable(&self) -> Lsn {
        self.server.durable_lsn()
    }

    fn storage_failed(&self) -> bool {
        self.failed
    }
}

/// One round of the runtime's loop (`driver::step`, the effects, durability),
/// repeated until nothing moves.
fn drive(
    conn: &mut Connection,
    server: &mut Server,
    storage: &mut Storage,
    obs: &mut Observer,
    now: Timestamp,
) {
    let behind = if storage.lag {
        std::mem::replace(&mut storage.behind, server.last_lsn())
    } else {
        server.last_lsn()
    };
    for round in 0..10_000 {
        let mut moved = false;
        if storage.wake && round < 2 {
            conn.handle_notify();
        }
        if storage.failed {
            server.handle_storage_failure(StorageFailure {
                op: StorageOp::Sync,
                detail: "fuzzing: disk full".into(),
            });
        }
        let executes = conn.wants_server();
        let mut out: Vec<Bytes> = Vec::new();
        let step = {
            let mut host = FuzzHost {
                server: &mut *server,
                failed: storage.failed,
                now,
            };
            driver::step(conn, &mut host, now, &mut out)
        };
        moved |= executes || !out.is_empty() || !step.effects.is_empty();
        for bytes in &out {
            obs.see(bytes);
        }
        for effect in step.effects {
            match effect {
                Effect::ReadHistory { .. } => conn.handle_history(server, History::Truncated),
            }
        }
        // Outbound calls (embeddings) fail: there is no network here.
        while let Some(command) = server.poll_call() {
            if let CallCommand::Start { id, .. } = command {
                let e = TransportError::Connect("no network in fuzzing".into());
                server.handle_call_error(id, e, now);
                moved = true;
            }
        }
        if !storage.failed {
            let durable = if storage.lag { behind } else { server.last_lsn() };
            if durable > server.durable_lsn() {
                server.handle_durable(durable);
                moved = true;
            }
        }
        while let Some(id) = server.poll_wakeup() {
            if id == conn.id() {
                conn.handle_notify();
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
    panic!("the driver loop does not settle");
}

/// Drives one connection with `input` (after `TOKEN` substitution) as the
/// client's bytes; `control` as described above.
pub fn run(control: u8, body: &[u8]) {

    let input = substitute(body);
    let config = Config {
        api_keys: vec!["k".into()],
        // Embeddings with a model name become outbound calls (which fail).
        embed_url: "http://provider.invalid/v1".into(),
        ..Config::default()
    };
    let mut server = Server::new(config, SECRET, 1);
    let mut conn = server.accept(NOW);
    let mut obs = Observer {
        mode: Mode::Http,
        stream: Vec::new(),
    };

    let mut storage = Storage {
        lag: control & 0x80 != 0,
        wake: control & 0x40 != 0,
        fail: control & 0x20 != 0,
        failed: false,
        behind: Lsn::ZERO,
    };
    let mut seed = u32::from(control & 0x1f);
    let mut chunks = 0;
    let mut rest = &input[..];
    while !rest.is_empty() {
        let n = if seed == 0 {
            match rest.windows(CUT.len()).position(|w| w == CUT) {
                Some(0) => {
                    rest = &rest[CUT.len()..];
                    continue;
                }
                Some(at) => at,
                None => rest.len(),
            }
        } else {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            1 + (seed % 256) as usize
        };
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        conn.handle_input(chunk, NOW);
        chunks += 1;
        storage.failed |= storage.fail && chunks == 2;
        drive(&mut conn, &mut server, &mut storage, &mut obs, NOW);
    }

    // A timer tick well past every deadline (idle timeout, heartbeat), then EOF.
    let later = NOW.saturating_add(Duration::from_secs(600));
    // Storage catches up first.
    drive(&mut conn, &mut server, &mut storage, &mut obs, NOW);
    storage.lag = false;
    conn.handle_timeout(later);
    drive(&mut conn, &mut server, &mut storage, &mut obs, later);
    conn.handle_eof();
    drive(&mut conn, &mut server, &mut storage, &mut obs, later);
    assert!(conn.is_closed(), "still open after EOF and a full drain");
    server.connection_closed(conn.id(), later);
    obs.finish();
}
