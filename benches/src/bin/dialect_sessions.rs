//! Dialect sessions: 1,000 concurrent EVA conversations and 1,000 General Bots
//! sessions streaming answers from a fake provider: the latency each dialect
//! adds per streamed chunk, against reading the provider directly at the same
//! concurrency in the same run; and the server memory per idle dialect
//! connection (EVA, General Bots, and the ekoDB WebSocket for comparison).
//!
//! ```sh
//! cargo build --release -p tidepool-smol -p tidepool-std -p tidepool-benches
//! target/release/dialect_sessions --spawn tidepool,tidepool-std --sessions 100,1000 --tokens 40 --gap-ms 50 --rounds 2 --idle 1000
//! ```
//!
//! (Those are the defaults; about 80 s per runtime on a quiet two-core
//! machine. `DIALECT_TIMELINE=1` also prints each run's latency per 100 ms of
//! read time on stderr.)
//!
//! Targets (from the issue): p99 added latency per chunk < 2 ms at 1,000
//! sessions of each dialect; memory per idle dialect connection < 20 KiB.
//!
//! The fake OpenAI-compatible provider is chat_stream's: in this process, on
//! loopback, it answers each Chat Completions call with `--tokens` SSE chunks,
//! `--gap-ms` apart, each token carrying the time it was written (nanoseconds
//! on this process's monotonic clock). Unlike chat_stream's it writes each
//! chunk in one write and, unless `--provider threads`, runs every call as a
//! task on one thread (a thread per call costs most of a core at 1,000
//! streams, taken from the server on this machine). The server is started
//! with `--chat-provider openai --openai-url http://<fake>/v1`, so every
//! dialect conversation is answered by it.
//!
//! * EVA: `GET /eva/ws` with `Authorization: Bearer <key>` (at most 10
//!   connections per key, so the server gets one key per 10 sessions),
//!   `start_conversation` -> `conversation_started`, then `user_message` ->
//!   `message` frames, the last `is_final`. EVA sends one `message` per
//!   provider token (`dialect::eva::encode_chat_event`), but a chunk's
//!   latency is taken from the newest token stamp it contains in any case.
//! * General Bots: `POST /api/auth/token`, `GET /ws?token=`, `session_created`,
//!   then `message` -> `stream_start`, `stream_chunk`* (one per provider
//!   token), `stream_end` (checked to be the chunks joined). The server admits
//!   100 `/ws` connections per client address, so these sockets are bound to
//!   127.0.0.2, 127.0.0.3, ... (50 per address, fresh ones for every run)
//!   before connecting.
//!
//! All clients (direct and through Tidepool) are async tasks on this
//! process's main thread (one smol executor, as loadgen and fanout use).
//! Every session first connects and sets up (at most 64 at a time); then,
//! once the machine is quiet (other processes under 15% of a core), they
//! start, spread evenly over `--stagger-ms` (default: one answer's length),
//! and each asks `--rounds` questions back to back, so that answers start
//! and end all the time, as in a service with 1,000 conversations under way,
//! rather than all at once. Latency per chunk = read time at the client
//! minus the write time of the newest provider token in it, for the chunks
//! after each answer's first (the first is the time to first chunk, which
//! through Tidepool also waits for the question's fsync). Added = Tidepool's
//! percentile minus the direct read's, measured right before it with the
//! same sessions, spread and rounds. The steady window keeps the chunks read
//! while every session was under way (from the last session's first chunk
//! to the first session's last). The CPU columns say how busy the server,
//! this process (clients and provider) and everything else were.
//!
//! Memory: a fresh server, one connection of each kind opened and kept as a
//! warm-up, then N idle ekoDB WebSockets (`/api/ws?token=`, upgraded), N EVA
//! connections (after `conversation_started`) and N General Bots connections
//! (after `session_created`), all kept open (and answering pings); server
//! RSS (`VmRSS`) is read after each group settles, and the growth divided
//! by N. An EVA or General Bots connection's figure includes the chat
//! session each one creates.

use smol::channel::{Receiver, Sender};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::lock::Semaphore;
use smol::net::TcpStream;
use smol::{LocalExecutor, Task, Timer};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tidepool_benches::{
    client_frame, http_body, process_cpu, rss_kib, token_stamps, SpawnedServer,
};

fn origin() -> Instant {
    static O: OnceLock<Instant> = OnceLock::new();
    *O.get_or_init(Instant::now)
}

fn stamp() -> u64 {
    origin().elapsed().as_nanos() as u64
}

struct Args {
    spawn: Vec<String>,
    sessions: Vec<usize>,
    tokens: usize,
    gap: Duration,
    /// Spreads of the sessions' start (message `i` of `n` is sent `i/n` of
    /// the spread after the go signal); `None`: one token gap.
    staggers: Vec<Option<Duration>>,
    /// Answers each session streams, one after the other.
    rounds: usize,
    idle: usize,
    provider_threads: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        spawn: vec!["tidepool".into()],
        sessions: vec![100, 1000],
        tokens: 40,
        gap: Duration::from_millis(50),
        staggers: vec![None],
        rounds: 2,
        idle: 1000,
        provider_threads: false,
    };
    let list = |v: String| -> Vec<String> {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--spawn" => a.spawn = list(val()),
            "--sessions" => {
                a.sessions = list(val())
                    .iter()
                    .map(|n| n.parse().expect("number"))
                    .collect()
            }
            "--tokens" => a.tokens = val().parse().expect("number"),
            "--gap-ms" => a.gap = Duration::from_millis(val().parse().expect("number")),
            "--stagger-ms" => {
                a.staggers = list(val())
                    .iter()
                    .map(|n| Some(Duration::from_millis(n.parse().expect("number"))))
                    .collect()
            }
            "--idle" => a.idle = val().parse().expect("number"),
            "--rounds" => a.rounds = val().parse().expect("number"),
            "--provider" => {
                a.provider_threads = match val().as_str() {
                    "threads" => true,
                    "async" => false,
                    other => panic!("--provider threads|async, not {other}"),
                }
            }
            "--help" | "-h" => {
                println!(
                    "dialect_sessions [--spawn tidepool,tidepool-std] [--sessions 100,1000]\n\
                     \t[--tokens 40] [--gap-ms 50] [--rounds 2 (answers per session, back to back)]\n\
                     \t[--stagger-ms TOKENS*GAP (spread of the sessions' start; a list runs each)]\n\
                     \t[--idle 1000 (idle connections per kind; 0 = skip)]\n\
                     \t[--provider async|threads (one provider thread, or chat_stream's thread per call)]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown flag {other} (see --help)"),
        }
    }
    assert!(a.tokens >= 2, "--tokens must be at least 2");
    a
}

// ----- the fake provider ---------------------------------------------------------

/// How the provider answers every call: `tokens` SSE chunks, `gap` apart.
#[derive(Clone)]
struct Plan {
    tokens: usize,
    gap: Duration,
    /// chat_stream's provider: a thread per call, sleeping between tokens.
    /// Otherwise every call is a task on one provider thread (the same
    /// stream, for a fraction of the CPU: 1,000 threads waking 50 times a
    /// second each take a core of this two-core machine from the server).
    threads: bool,
}

/// One HTTP chunk holding an SSE event (one write, as a provider sends it).
fn http_chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

fn token_chunk(t: u64) -> Vec<u8> {
    http_chunk(&format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{t}| \"}}}}]}}\n\n"
    ))
}

const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

fn last_chunks() -> Vec<u8> {
    let mut end = http_chunk(
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
    );
    end.extend_from_slice(b"0\r\n\r\n");
    end
}

/// The length of a whole request in `buf` (head and body), once there.
fn request_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= end + body).then_some(end + body)
}

fn serve_blocking(mut s: std::net::TcpStream, plan: &Plan) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while request_len(&buf).is_none() {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = s.set_nodelay(true);
    let _ = s.write_all(HEAD);
    for i in 0..plan.tokens {
        if i > 0 {
            std::thread::sleep(plan.gap);
        }
        if s.write_all(&token_chunk(stamp())).is_err() {
            return;
        }
    }
    let _ = s.write_all(&last_chunks());
}

async fn serve_async(mut s: TcpStream, plan: Plan) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while request_len(&buf).is_none() {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = s.set_nodelay(true);
    let _ = s.write_all(HEAD).await;
    for i in 0..plan.tokens {
        if i > 0 {
            Timer::after(plan.gap).await;
        }
        if s.write_all(&token_chunk(stamp())).await.is_err() {
            return;
        }
    }
    let _ = s.write_all(&last_chunks()).await;
}

/// Starts the provider on loopback; its address.
fn provider(plan: Plan) -> String {
    let listener = bound::listener(4096).expect("provider listener");
    let addr = listener.local_addr().expect("addr").to_string();
    if plan.threads {
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let plan = plan.clone();
                std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || serve_blocking(s, &plan))
                    .expect("thread");
            }
        });
    } else {
        std::thread::spawn(move || {
            let ex = LocalExecutor::new();
            let listener = smol::net::TcpListener::try_from(listener).expect("async listener");
            smol::block_on(ex.run(async {
                loop {
                    if let Ok((s, _)) = listener.accept().await {
                        ex.spawn(serve_async(s, plan.clone())).detach();
                    }
                }
            }))
        });
    }
    addr
}

// ----- sockets from other loopback addresses ------------------------------------

/// A blocking TCP connect from a chosen local IPv4 address (std cannot bind a
/// client socket; the few libc calls are declared here rather than adding a
/// dependency).
mod bound {
    use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
    use std::os::fd::{FromRawFd, OwnedFd};

    #[repr(C)]
    struct SockaddrIn {
        family: u16,
        port: [u8; 2],
        addr: [u8; 4],
        zero: [u8; 8],
    }

    extern "C" {
        fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
        fn bind(fd: i32, addr: *const SockaddrIn, len: u32) -> i32;
        fn connect(fd: i32, addr: *const SockaddrIn, len: u32) -> i32;
        fn listen(fd: i32, backlog: i32) -> i32;
    }

    const AF_INET: i32 = 2;
    const SOCK_STREAM: i32 = 1;
    const SOCK_CLOEXEC: i32 = 0o2_000_000;

    fn sockaddr(a: SocketAddrV4) -> SockaddrIn {
        SockaddrIn {
            family: AF_INET as u16,
            port: a.port().to_be_bytes(),
            addr: a.ip().octets(),
            zero: [0; 8],
        }
    }

    /// A listener on 127.0.0.1 with room for `backlog` connections not yet
    /// accepted (std's is 128: 1,000 provider calls opened at once would
    /// overflow it, and a dropped SYN costs its caller a second).
    pub fn listener(backlog: i32) -> std::io::Result<std::net::TcpListener> {
        let len = std::mem::size_of::<SockaddrIn>() as u32;
        // SAFETY: as in `connect_from`.
        let fd = unsafe { socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh socket nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let local = sockaddr(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        // SAFETY: as in `connect_from`.
        if unsafe { bind(fd, &local, len) } != 0 || unsafe { listen(fd, backlog) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::net::TcpListener::from(owned))
    }

    pub fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
        let len = std::mem::size_of::<SockaddrIn>() as u32;
        // SAFETY: plain syscalls on an fd this function owns; the address
        // structs outlive the calls.
        let fd = unsafe { socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh socket nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let local = sockaddr(SocketAddrV4::new(src, 0));
        // SAFETY: see above.
        if unsafe { bind(fd, &local, len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr(dst);
        loop {
            // SAFETY: see above.
            if unsafe { connect(fd, &remote, len) } == 0 {
                return Ok(TcpStream::from(owned));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// The next unused loopback address for General Bots clients (127.0.0.2 on):
/// each group of sessions takes fresh ones, so connections the server has not
/// finished closing never count against a new group's per-address limit.
fn next_source() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(2);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 0x00ff_fff0, "out of loopback addresses");
    Ipv4Addr::from(0x7f00_0000 | n)
}

const PER_SOURCE: usize = 50;

// ----- a raw WebSocket client --------------------------------------------------

type Res<T> = Result<T, String>;

/// A frame arrives within this, or the session is reported as stalled.
const STALL: Duration = Duration::from_secs(15);

async fn within<T>(d: Duration, what: &str, f: impl Future<Output = Res<T>>) -> Res<T> {
    let what = what.to_string();
    smol::future::or(f, async move {
        Timer::after(d).await;
        Err(format!("{what}: nothing within {} s", d.as_secs()))
    })
    .await
}

struct Ws {
    s: TcpStream,
    buf: Vec<u8>,
}

async fn connect(addr: &str, src: Option<Ipv4Addr>) -> Res<TcpStream> {
    let s = match src {
        None => TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?,
        Some(ip) => {
            let dst: SocketAddrV4 = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
            let std = smol::unblock(move || bound::connect_from(ip, dst))
                .await
                .map_err(|e| format!("connect from {ip}: {e}"))?;
            TcpStream::try_from(std).map_err(|e| format!("async socket: {e}"))?
        }
    };
    let _ = s.set_nodelay(true);
    Ok(s)
}

impl Ws {
    /// Connects and upgrades `path`; `headers` are extra request lines.
    async fn open(addr: &str, src: Option<Ipv4Addr>, path: &str, headers: &str) -> Res<Ws> {
        let mut s = connect(addr, src).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("upgrade write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("upgrade read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "upgrade of {path}: closed after {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let text = String::from_utf8_lossy(&buf);
            return Err(format!(
                "upgrade of {path} refused: {}",
                text.split("\r\n").next().unwrap_or_default()
            ));
        }
        buf.drain(..end);
        Ok(Ws { s, buf })
    }

    async fn send(&mut self, text: &str) -> Res<()> {
        self.s
            .write_all(&client_frame(0x1, text.as_bytes()))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    /// The next data frame's payload; answers pings; an error on close or EOF.
    async fn next(&mut self) -> Res<Vec<u8>> {
        let mut chunk = [0u8; 16384];
        loop {
            let buf = &self.buf;
            if buf.len() >= 2 {
                let op = buf[0] & 0x0f;
                let (len, hdr) = match buf[1] & 0x7f {
                    126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                    127 if buf.len() >= 10 => (
                        u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && buf.len() >= hdr + len {
                    let payload = buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    match op {
                        0x9 => {
                            let pong = client_frame(0xa, &payload);
                            let _ = self.s.write_all(&pong).await;
                        }
                        0xa => {}
                        0x8 => {
                            let code = payload
                                .get(..2)
                                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                                .unwrap_or(0);
                            return Err(format!(
                                "closed by the server: {code} {}",
                                String::from_utf8_lossy(payload.get(2..).unwrap_or_default())
                            ));
                        }
                        _ => return Ok(payload),
                    }
                    continue;
                }
            }
            let n = self
                .s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed without a close frame".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn next_text(&mut self) -> Res<String> {
        let f = within(STALL, "waiting for a frame", self.next()).await?;
        String::from_utf8(f).map_err(|_| "a frame that is not UTF-8".to_string())
    }
}

// ----- sessions -----------------------------------------------------------------

/// What one session's answers looked like at its reader.
#[derive(Default)]
struct Outcome {
    /// Each chunk after its answer's first: (read at, latency), ns.
    lat: Vec<(u64, u64)>,
    /// Per answer, message written to first chunk read.
    ttft: Vec<Duration>,
    /// When the session's first and last chunk were read (ns on `stamp`'s
    /// clock).
    first_at: u64,
    last_at: u64,
    chunks: usize,
    tokens: usize,
    /// The answer under way: when its message was written, and whether a
    /// chunk of it arrived yet.
    sent: Option<Instant>,
    answer_started: bool,
}

impl Outcome {
    /// A new answer: its message is being written now.
    fn ask(&mut self) {
        self.sent = Some(Instant::now());
        self.answer_started = false;
    }

    /// Times one chunk carrying `found` token stamps, read at `now`.
    fn chunk(&mut self, found: &[u64], now: u64) {
        let Some(newest) = found.iter().max() else {
            return;
        };
        self.chunks += 1;
        self.tokens += found.len();
        if self.first_at == 0 {
            self.first_at = now;
        }
        self.last_at = now;
        if self.answer_started {
            self.lat.push((now, now.saturating_sub(*newest)));
        } else {
            self.answer_started = true;
            self.ttft.extend(self.sent.map(|s| s.elapsed()));
        }
    }
}

/// A session waits here after its setup until every session is set up. A
/// session that ends before (an error) is counted as ready when its gate
/// drops.
struct Gate {
    ready: Option<Sender<()>>,
    go: Receiver<()>,
    /// How long after the go signal this session starts.
    delay: Duration,
}

impl Gate {
    fn signal(&mut self) {
        if let Some(r) = self.ready.take() {
            let _ = r.try_send(());
        }
    }

    async fn pass(&mut self) {
        self.signal();
        let _ = self.go.recv().await;
        if !self.delay.is_zero() {
            Timer::after(self.delay).await;
        }
    }

    /// `pass`, reading `ws` meanwhile (so the server's pings are answered
    /// however long the wait).
    async fn pass_reading(&mut self, ws: &mut Ws) -> Res<()> {
        self.signal();
        let go = self.go.clone();
        smol::future::or(
            async move {
                let _ = go.recv().await;
                Ok(())
            },
            async {
                let f = ws.next().await?;
                Err(format!(
                    "a frame while waiting: {}",
                    String::from_utf8_lossy(&f)
                ))
            },
        )
        .await?;
        if !self.delay.is_zero() {
            Timer::after(self.delay).await;
        }
        Ok(())
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(r) = self.ready.take() {
            let _ = r.try_send(());
        }
    }
}

/// Setup work is limited to this many sessions at once.
const SETUP_AT_ONCE: usize = 64;

/// Reads the provider directly: the baseline.
async fn direct(addr: String, rounds: usize, mut gate: Gate) -> Res<Outcome> {
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    gate.pass().await;
    let mut out = Outcome::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut found = Vec::new();
    for _ in 0..rounds {
        let mut s = connect(&addr, None).await?;
        out.ask();
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        buf.clear();
        'answer: loop {
            let n = within(STALL, "direct read", async {
                s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))
            })
            .await?;
            if n == 0 {
                return Err("provider closed early".into());
            }
            let now = stamp();
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                found.clear();
                token_stamps(&line, &mut found);
                out.chunk(&found, now);
                if line.contains("[DONE]") {
                    break 'answer;
                }
            }
        }
    }
    Ok(out)
}

struct EvaSession {
    addr: String,
    key: String,
    /// Answers to stream (0: stay idle).
    rounds: usize,
}

async fn eva(p: EvaSession, mut gate: Gate, setup: Rc<Semaphore>) -> Res<Outcome> {
    let mut ws = {
        let _slot = setup.acquire().await;
        let auth = format!("Authorization: Bearer {}\r\n", p.key);
        let mut ws = Ws::open(&p.addr, None, "/eva/ws", &auth).await?;
        ws.send(r#"{"type":"start_conversation","conversation_id":null}"#)
            .await?;
        let f = ws.next_text().await?;
        if !f.contains(r#""type":"conversation_started""#) {
            return Err(format!("EVA: expected conversation_started, got {f}"));
        }
        ws
    };
    gate.pass_reading(&mut ws).await?;
    let mut out = Outcome::default();
    let mut found = Vec::new();
    for _ in 0..p.rounds {
        out.ask();
        ws.send(r#"{"type":"user_message","content":"Tell me something"}"#)
            .await?;
        loop {
            let f = ws.next_text().await?;
            let now = stamp();
            if !f.contains(r#""type":"message""#) {
                return Err(format!(
                    "EVA: unexpected frame after {} chunks: {f}",
                    out.chunks
                ));
            }
            found.clear();
            token_stamps(&f, &mut found);
            out.chunk(&found, now);
            if f.contains(r#""is_final":true"#) {
                break;
            }
        }
    }
    Ok(out)
}

struct GbSession {
    addr: String,
    token: String,
    src: Ipv4Addr,
    /// Answers to stream (0: stay idle).
    rounds: usize,
}

/// A frame's `content` string, cheaply when it has no escapes.
fn content_of(frame: &str) -> String {
    let key = "\"content\":\"";
    if let Some(at) = frame.find(key).map(|i| i + key.len()) {
        if let Some(end) = frame[at..].find(['"', '\\']) {
            if frame[at + end..].starts_with('"') {
                return frame[at..at + end].to_string();
            }
        }
    }
    field(frame, "content").unwrap_or_default()
}

fn field(frame: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(frame).ok()?;
    v.get(key)?.as_str().map(str::to_string)
}

async fn general_bots(p: GbSession, mut gate: Gate, setup: Rc<Semaphore>) -> Res<Outcome> {
    let (mut ws, session) = {
        let _slot = setup.acquire().await;
        let path = format!("/ws?token={}", p.token);
        let mut ws = Ws::open(&p.addr, Some(p.src), &path, "").await?;
        let f = ws.next_text().await?;
        let session = match field(&f, "type").as_deref() {
            Some("session_created") => field(&f, "session_id").unwrap_or_default(),
            _ => return Err(format!("General Bots: expected session_created, got {f}")),
        };
        (ws, session)
    };
    gate.pass_reading(&mut ws).await?;
    let mut out = Outcome::default();
    let msg = serde_json::json!({"type": "message", "session_id": session, "content": "Tell me something"})
        .to_string();
    let mut found = Vec::new();
    for _ in 0..p.rounds {
        out.ask();
        ws.send(&msg).await?;
        let mut joined = String::new();
        loop {
            let f = ws.next_text().await?;
            let now = stamp();
            if f.contains(r#""type":"stream_chunk""#) {
                found.clear();
                token_stamps(&f, &mut found);
                out.chunk(&found, now);
                joined.push_str(&content_of(&f));
            } else if f.contains(r#""type":"stream_end""#) {
                let end = field(&f, "content").unwrap_or_default();
                if end != joined {
                    return Err(format!(
                        "General Bots: stream_end content ({} bytes) is not the chunks joined ({} bytes)",
                        end.len(),
                        joined.len()
                    ));
                }
                break;
            } else if !f.contains(r#""type":"stream_start""#)
                && !f.contains(r#""type":"bot_typing""#)
            {
                return Err(format!(
                    "General Bots: unexpected frame after {} chunks: {f}",
                    out.chunks
                ));
            }
        }
    }
    Ok(out)
}

/// An ekoDB WebSocket, upgraded and then left idle.
async fn ekodb(addr: String, token: String, mut gate: Gate, setup: Rc<Semaphore>) -> Res<Outcome> {
    let mut ws = {
        let _slot = setup.acquire().await;
        Ws::open(&addr, None, &format!("/api/ws?token={token}"), "").await?
    };
    gate.pass_reading(&mut ws).await?;
    drop(ws);
    Ok(Outcome::default())
}

/// Starts `n` sessions on `ex` and waits until each is set up (or failed);
/// dropping the returned sender lets them all go at once.
async fn open_all<'a, Fut>(
    ex: &LocalExecutor<'a>,
    n: usize,
    stagger: Duration,
    mut make: impl FnMut(usize, Gate) -> Fut,
) -> (Sender<()>, Vec<Task<Res<Outcome>>>)
where
    Fut: Future<Output = Res<Outcome>> + 'a,
{
    let (go_tx, go_rx) = smol::channel::bounded::<()>(1);
    let (ready_tx, ready_rx) = smol::channel::unbounded::<()>();
    let tasks = (0..n)
        .map(|i| {
            let gate = Gate {
                ready: Some(ready_tx.clone()),
                go: go_rx.clone(),
                delay: stagger.mul_f64(i as f64 / n as f64),
            };
            ex.spawn(make(i, gate))
        })
        .collect();
    drop(ready_tx);
    for _ in 0..n {
        if ready_rx.recv().await.is_err() {
            break;
        }
    }
    (go_tx, tasks)
}

/// Everything `n` sessions of one kind measured.
#[derive(Default)]
struct Phase {
    /// (read at, latency) of every chunk after each answer's first, ns.
    lat: Vec<(u64, u64)>,
    /// The steady window: from the last session's first chunk to the first
    /// session's last chunk (every session streaming).
    window: (u64, u64),
    ttft: Vec<Duration>,
    chunks: usize,
    tokens: usize,
    ok: usize,
    errors: Vec<String>,
    /// Server CPU from the go signal to the last answer.
    cpu: Duration,
    /// This process's CPU (the clients and the provider) in that time.
    bench_cpu: Duration,
    /// The machine's CPU (all processes) in that time.
    machine_cpu: Duration,
    /// From the go signal to the last answer.
    wall: Duration,
}

impl Phase {
    /// Latencies of all chunks (after each answer's first), ns.
    fn all(&self) -> Vec<u64> {
        self.lat.iter().map(|l| l.1).collect()
    }

    /// Latencies of the chunks read while every session was streaming.
    fn steady(&self) -> Vec<u64> {
        let (from, to) = self.window;
        self.lat
            .iter()
            .filter(|l| l.0 >= from && l.0 <= to)
            .map(|l| l.1)
            .collect()
    }
}

/// Waits (up to 20 s) until other processes leave the machine alone:
/// less than 15% of a core used by anything but this process for half a
/// second. False when they never did.
fn wait_quiet() -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (m0, b0) = (machine_cpu(), process_cpu(std::process::id()));
        std::thread::sleep(Duration::from_millis(500));
        let other = machine_cpu()
            .saturating_sub(m0)
            .saturating_sub(process_cpu(std::process::id()).saturating_sub(b0));
        if other < Duration::from_millis(75) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// Runs `n` sessions: all set up, then (once the machine is quiet) they
/// start, `stagger` apart from first to last, and stream their answers.
fn run_phase<Fut>(
    n: usize,
    stagger: Duration,
    pid: Option<u32>,
    make: impl FnMut(usize, Gate) -> Fut,
) -> Phase
where
    Fut: Future<Output = Res<Outcome>>,
{
    if !wait_quiet() {
        eprintln!("warning: other processes kept the machine busy; measuring anyway");
    }
    let ex = LocalExecutor::new();
    smol::block_on(ex.run(async {
        let (go, tasks) = open_all(&ex, n, stagger, make).await;
        let before = pid.map(process_cpu);
        let bench_before = process_cpu(std::process::id());
        let machine_before = machine_cpu();
        let t0 = Instant::now();
        drop(go);
        let mut phase = Phase {
            window: (0, u64::MAX),
            ..Phase::default()
        };
        for t in tasks {
            match t.await {
                Ok(o) => {
                    phase.ok += 1;
                    phase.window.0 = phase.window.0.max(o.first_at);
                    phase.window.1 = phase.window.1.min(o.last_at);
                    phase.lat.extend(o.lat);
                    phase.ttft.extend(o.ttft);
                    phase.chunks += o.chunks;
                    phase.tokens += o.tokens;
                }
                Err(e) => phase.errors.push(e),
            }
        }
        phase.wall = t0.elapsed();
        phase.bench_cpu = process_cpu(std::process::id()).saturating_sub(bench_before);
        phase.machine_cpu = machine_cpu().saturating_sub(machine_before);
        if let (Some(pid), Some(before)) = (pid, before) {
            phase.cpu = process_cpu(pid).saturating_sub(before);
        }
        phase
    }))
}

// ----- the server ---------------------------------------------------------------

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("dialect-bench-key-{i}")).collect()
}

/// Starts the server with `nkeys` API keys, the fake provider as its default
/// chat provider and room for `calls` provider calls at once; a token.
fn start_server(bin: &str, provider: &str, nkeys: usize, calls: usize) -> (SpawnedServer, String) {
    let url = format!("http://{provider}/v1");
    let all = keys(nkeys).join(",");
    let calls = (calls + 16).to_string();
    let server = SpawnedServer::start(
        bin,
        "dialect-sessions",
        &[
            "--api-key",
            &all,
            "--openai-url",
            &url,
            "--openai-api-key",
            "sk-bench",
            "--chat-provider",
            "openai",
            "--outbound-max-calls",
            &calls,
        ],
    );
    let body = format!(r#"{{"api_key":"{}"}}"#, keys(1)[0]);
    let req = format!(
        "POST /api/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let reply = http_body(&server.addr, &req);
    let token = field(&reply, "token").unwrap_or_else(|| panic!("no token in {reply}"));
    (server, token)
}

/// CPU time all processes used so far (the busy columns of /proc/stat).
fn machine_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal: not idle, iowait.
        .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6 | 7))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

// ----- reporting ----------------------------------------------------------------

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// p50, p99, max in ns.
fn spread(v: &mut [u64]) -> [u64; 3] {
    v.sort_unstable();
    [pct(v, 0.5), pct(v, 0.99), v.last().copied().unwrap_or(0)]
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn trio(v: [u64; 3]) -> String {
    format!("{:.3} / {:.3} / {:.2}", ms(v[0]), ms(v[1]), ms(v[2]))
}

fn signed_ms(a: u64, b: u64) -> String {
    let d = a as f64 - b as f64;
    format!("{:.3}", d / 1e6)
}

struct Row<'a> {
    dialect: &'a str,
    n: usize,
    tokens: usize,
    rounds: usize,
    stagger: Duration,
}

/// Latency over time (stderr): per 100 ms of read time, chunks, p99, max.
fn timeline(dialect: &str, p: &Phase) {
    let Some(start) = p.lat.iter().map(|l| l.0).min() else {
        return;
    };
    let mut buckets = std::collections::BTreeMap::<u64, Vec<u64>>::new();
    for &(at, lat) in &p.lat {
        buckets
            .entry((at - start) / 100_000_000)
            .or_default()
            .push(lat);
    }
    eprintln!(
        "{dialect} timeline (window {:.0}..{:.0} ms):",
        (p.window.0.saturating_sub(start)) as f64 / 1e6,
        (p.window.1.saturating_sub(start)) as f64 / 1e6
    );
    for (b, mut v) in buckets {
        let [p50, p99, max] = spread(&mut v);
        eprintln!(
            "  {:>5} ms: {:>6} chunks p50 {:.2} p99 {:.2} max {:.2}",
            b * 100,
            v.len(),
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
}

/// Prints one row of the latency table; the added p99 (ms) when complete.
fn report_row(
    row: &Row<'_>,
    direct: &mut Phase,
    through: &mut Phase,
    problems: &mut Vec<String>,
) -> Option<(f64, Option<f64>)> {
    let Row {
        dialect,
        n,
        tokens,
        rounds,
        stagger,
    } = *row;
    if std::env::var_os("DIALECT_TIMELINE").is_some() {
        timeline(dialect, through);
    }
    let d = spread(&mut direct.all());
    let t = spread(&mut through.all());
    let (ds, ts) = (direct.steady(), through.steady());
    let mut steady_p99 = None;
    let steady = if ds.is_empty() || ts.is_empty() {
        "- (no window)".to_string()
    } else {
        let (d, t) = (spread(&mut ds.clone()), spread(&mut ts.clone()));
        steady_p99 = Some(ms(t[1]) - ms(d[1]));
        format!(
            "{} / {} ({} chunks)",
            signed_ms(t[0], d[0]),
            signed_ms(t[1], d[1]),
            ts.len()
        )
    };
    let mut dt: Vec<u64> = direct.ttft.iter().map(|d| d.as_nanos() as u64).collect();
    let mut tt: Vec<u64> = through.ttft.iter().map(|d| d.as_nanos() as u64).collect();
    dt.sort_unstable();
    tt.sort_unstable();
    let expected = n * tokens * rounds;
    let per_chunk = if through.chunks > 0 {
        format!(
            "{:.1} µs",
            through.cpu.as_secs_f64() * 1e6 / through.chunks as f64
        )
    } else {
        "-".into()
    };
    let tpc = if through.chunks > 0 {
        through.tokens as f64 / through.chunks as f64
    } else {
        0.0
    };
    let errors = direct.errors.len() + through.errors.len();
    let busy = |cpu: Duration| 100.0 * cpu.as_secs_f64() / through.wall.as_secs_f64().max(1e-9);
    let other = through
        .machine_cpu
        .saturating_sub(through.cpu + through.bench_cpu);
    let direct_bench = 100.0 * direct.bench_cpu.as_secs_f64() / direct.wall.as_secs_f64().max(1e-9);
    println!(
        "| {dialect} | {n} | {} ms | {} ({:.2} tokens/chunk) | {} | {} | {} / {} / {} | {steady} | {:.2} / {:.2} | {per_chunk} | {:.0}% / {:.0}% (direct run: {direct_bench:.0}%) / {:.0}% | {}/{n} ok, {} of {expected} tokens{} |",
        stagger.as_millis(),
        through.chunks,
        tpc,
        trio(d),
        trio(t),
        signed_ms(t[0], d[0]),
        signed_ms(t[1], d[1]),
        signed_ms(t[2], d[2]),
        ms(pct(&dt, 0.99)),
        ms(pct(&tt, 0.99)),
        busy(through.cpu),
        busy(through.bench_cpu),
        busy(other),
        through.ok,
        through.tokens,
        if errors > 0 { format!(", {errors} errors") } else { String::new() },
    );
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for e in direct.errors.iter().map(|e| format!("direct: {e}")) {
        *seen.entry(e).or_default() += 1;
    }
    for e in &through.errors {
        *seen.entry(format!("{dialect}: {e}")).or_default() += 1;
    }
    for (e, count) in seen {
        problems.push(format!("{dialect} x{n}: {count} sessions: {e}"));
    }
    if direct.tokens != expected {
        problems.push(format!(
            "{dialect} x{n}: the direct read got {} of {expected} tokens",
            direct.tokens
        ));
    }
    if through.tokens != expected {
        problems.push(format!(
            "{dialect} x{n}: {} of {expected} tokens reached the clients",
            through.tokens
        ));
    }
    (errors == 0 && through.tokens == expected).then(|| (ms(t[1]) - ms(d[1]), steady_p99))
}

/// One runtime's latency runs.
fn latency(
    bin: &str,
    args: &Args,
    prov: &str,
    summary: &mut Vec<String>,
    problems: &mut Vec<String>,
) {
    println!(
        "\nPer-chunk latency after each answer's first chunk (provider write of the chunk's newest token to the client's read), p50 / p99 / max, ms; added = Tidepool minus direct at the same percentile; the steady window is the chunks read while every session was streaming (from the last session's first chunk to the first session's last), without the answers' start and end work; first chunk p99 = message written to first chunk read (Tidepool's includes the question's fsync); server CPU per chunk includes each answer's own work:"
    );
    println!("| dialect | sessions | start spread | chunks | direct | through Tidepool | added p50 / p99 / max | added in the steady window p50 / p99 | first chunk p99 direct / Tidepool | server CPU per chunk | CPU busy, % of one core: server / bench / other processes | sessions |");
    println!("|---|---:|---:|---|---|---|---|---|---|---|---|---|");
    for &n in &args.sessions {
        let nkeys = n.div_ceil(10) + 1;
        let (server, token) = start_server(bin, prov, nkeys, n);
        let addr = server.addr.clone();
        let pid = server.pid();
        // EVA keys: session i uses key i % nkeys-1 (the last key warms up).
        let ks = keys(nkeys);
        let eva_run = |count: usize, warm: bool, stagger: Duration, rounds: usize| {
            let setup = Rc::new(Semaphore::new(SETUP_AT_ONCE));
            let ks = ks.clone();
            let addr = addr.clone();
            run_phase(count, stagger, Some(pid), move |i, gate| {
                let key = if warm {
                    ks[nkeys - 1].clone()
                } else {
                    ks[i % (nkeys - 1)].clone()
                };
                let p = EvaSession {
                    addr: addr.clone(),
                    key,
                    rounds,
                };
                eva(p, gate, setup.clone())
            })
        };
        let gb_run = |count: usize, stagger: Duration, rounds: usize| {
            let setup = Rc::new(Semaphore::new(SETUP_AT_ONCE));
            let mut src = next_source();
            let addr = addr.clone();
            let token = token.clone();
            run_phase(count, stagger, Some(pid), move |i, gate| {
                if i > 0 && i % PER_SOURCE == 0 {
                    src = next_source();
                }
                let p = GbSession {
                    addr: addr.clone(),
                    token: token.clone(),
                    src,
                    rounds,
                };
                general_bots(p, gate, setup.clone())
            })
        };
        let direct_run = |count: usize, stagger: Duration, rounds: usize| {
            let prov = prov.to_string();
            run_phase(count, stagger, None, move |_, gate| {
                direct(prov.clone(), rounds, gate)
            })
        };
        // Warm up: one answer each way.
        let warm = [
            eva_run(1, true, Duration::ZERO, 1),
            gb_run(1, Duration::ZERO, 1),
        ];
        for (name, w) in ["EVA", "General Bots"].iter().zip(&warm) {
            for e in &w.errors {
                problems.push(format!("{name} warm-up: {e}"));
            }
        }
        for stagger in &args.staggers {
            let stagger = stagger.unwrap_or(args.gap * args.tokens as u32);
            let rounds = args.rounds;
            for (dialect, is_eva) in [("EVA", true), ("General Bots", false)] {
                let mut d = direct_run(n, stagger, rounds);
                let overflows = listen_overflows();
                let mut t = if is_eva {
                    eva_run(n, false, stagger, rounds)
                } else {
                    gb_run(n, stagger, rounds)
                };
                let overflows = listen_overflows().saturating_sub(overflows);
                if overflows > 0 {
                    problems.push(format!(
                        "{bin} {dialect} x{n}: {overflows} connections dropped by a full listen queue (TcpExt ListenOverflows) during the run"
                    ));
                }
                let row = Row {
                    dialect,
                    n,
                    tokens: args.tokens,
                    rounds,
                    stagger,
                };
                let added = report_row(&row, &mut d, &mut t, problems);
                if n == *args.sessions.iter().max().unwrap_or(&n) {
                    let spread = stagger.as_millis();
                    summary.push(match added {
                        Some((a, steady)) => format!(
                            "{bin}: {dialect}, {n} sessions (start spread {spread} ms): p99 added latency per chunk {a:.3} ms (steady window: {}) (target < 2 ms): {}",
                            steady.map_or("-".to_string(), |s| format!("{s:.3} ms")),
                            if a < 2.0 { "PASS" } else { "FAIL" }
                        ),
                        None => format!(
                            "{bin}: {dialect}, {n} sessions (start spread {spread} ms): FAIL (incomplete: errors or missing chunks, see below)"
                        ),
                    });
                }
            }
        }
        if exited(&server) {
            problems.push(format!("{bin} exited during the run with {n} sessions"));
        }
        drop(server);
    }
}

/// The kernel's count of connections dropped because a listen queue was full.
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines();
    while let (Some(head), Some(values)) = (lines.next(), lines.next()) {
        if !head.starts_with("TcpExt:") {
            continue;
        }
        let at = head.split_whitespace().position(|h| h == "ListenOverflows");
        return at
            .and_then(|i| values.split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    0
}

/// Whether the server process has exited (gone, or a zombie not yet reaped).
fn exited(server: &SpawnedServer) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", server.pid())) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// One runtime's idle-connection memory.
fn memory(
    bin: &str,
    args: &Args,
    prov: &str,
    summary: &mut Vec<String>,
    problems: &mut Vec<String>,
) {
    let n = args.idle;
    if n == 0 {
        return;
    }
    let nkeys = n.div_ceil(10) + 1;
    let (server, token) = start_server(bin, prov, nkeys, 16);
    let addr = server.addr.clone();
    let pid = server.pid();
    let ks = keys(nkeys);
    let ex = LocalExecutor::new();
    let rows = smol::block_on(ex.run(async {
        let setup = Rc::new(Semaphore::new(SETUP_AT_ONCE));
        let settle = || async {
            Timer::after(Duration::from_millis(1500)).await;
            (rss_kib(pid), threads(pid))
        };
        let mut held = Vec::new();
        let mut failures: Vec<(String, String)> = Vec::new();
        let eva_at = |key: String| {
            let addr = addr.clone();
            let setup = setup.clone();
            move |_: usize, gate: Gate| {
                eva(
                    EvaSession {
                        addr: addr.clone(),
                        key: key.clone(),
                        rounds: 0,
                    },
                    gate,
                    setup.clone(),
                )
            }
        };
        // Warm-up: one of each, kept open.
        let warm_src = next_source();
        held.push(
            open_all(&ex, 1, Duration::ZERO, |_, g| {
                ekodb(addr.clone(), token.clone(), g, setup.clone())
            })
            .await,
        );
        held.push(open_all(&ex, 1, Duration::ZERO, eva_at(ks[nkeys - 1].clone())).await);
        held.push(
            open_all(&ex, 1, Duration::ZERO, |_, g| {
                let p = GbSession {
                    addr: addr.clone(),
                    token: token.clone(),
                    src: warm_src,
                    rounds: 0,
                };
                general_bots(p, g, setup.clone())
            })
            .await,
        );
        let mut rows = Vec::new();
        let mut before = settle().await;
        let kinds = [
            "ekoDB WebSocket (/api/ws)",
            "EVA (/eva/ws)",
            "General Bots (/ws)",
        ];
        for (k, kind) in kinds.into_iter().enumerate() {
            let group = match k {
                0 => {
                    open_all(&ex, n, Duration::ZERO, |_, g| {
                        ekodb(addr.clone(), token.clone(), g, setup.clone())
                    })
                    .await
                }
                1 => {
                    open_all(&ex, n, Duration::ZERO, |i, g| {
                        let key = ks[i % (nkeys - 1)].clone();
                        eva_at(key)(i, g)
                    })
                    .await
                }
                _ => {
                    let mut src = next_source();
                    open_all(&ex, n, Duration::ZERO, |i, g| {
                        if i > 0 && i % PER_SOURCE == 0 {
                            src = next_source();
                        }
                        let p = GbSession {
                            addr: addr.clone(),
                            token: token.clone(),
                            src,
                            rounds: 0,
                        };
                        general_bots(p, g, setup.clone())
                    })
                    .await
                }
            };
            // Sessions that failed their setup have finished already.
            let failed: Vec<usize> = group
                .1
                .iter()
                .enumerate()
                .filter(|(_, t)| t.is_finished())
                .map(|(i, _)| i)
                .collect();
            let after = settle().await;
            let open = n - failed.len();
            rows.push((kind, open, before.0, after.0, after.1));
            before = after;
            held.push(group);
            if !failed.is_empty() {
                failures.push((
                    kind.to_string(),
                    format!("{} of {n} connections failed to set up", failed.len()),
                ));
            }
        }
        // Collect the failures' messages, then release everyone.
        let mut errors = Vec::new();
        for (go, tasks) in held {
            drop(go);
            for t in tasks {
                if let Err(e) = t.await {
                    errors.push(e);
                }
            }
        }
        (rows, failures, errors)
    }));
    let (rows, failures, errors) = rows;
    println!("\nServer memory per idle connection ({n} of each kind opened on a fresh server after one warm-up connection of each, all kept open; VmRSS after each group settles):");
    println!("| idle connection | open | RSS before, KiB | RSS after, KiB | per connection, KiB | server threads after | target |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (kind, open, before, after, threads) in rows {
        let per = after.saturating_sub(before) as f64 / open.max(1) as f64;
        let dialect = !kind.starts_with("ekoDB");
        let target = if dialect {
            if per < 20.0 {
                "< 20 KiB: PASS"
            } else {
                "< 20 KiB: FAIL"
            }
        } else {
            "(comparison)"
        };
        println!("| {kind} | {open} | {before} | {after} | {per:.1} | {threads} | {target} |");
        if dialect {
            let ok = per < 20.0 && open == n;
            summary.push(format!(
                "{bin}: memory per idle {kind} connection: {per:.1} KiB (target < 20 KiB): {}",
                if ok { "PASS" } else { "FAIL" }
            ));
        } else {
            summary.push(format!(
                "{bin}: memory per idle {kind} connection: {per:.1} KiB (comparison, no target)"
            ));
        }
    }
    for (kind, f) in failures {
        problems.push(format!("{bin} memory, {kind}: {f}"));
    }
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for e in errors {
        *seen.entry(e).or_default() += 1;
    }
    for (e, count) in seen {
        problems.push(format!("{bin} memory: {count} connections: {e}"));
    }
    drop(server);
}

fn main() {
    let args = parse_args();
    origin();
    let prov = provider(Plan {
        tokens: args.tokens,
        gap: args.gap,
        threads: args.provider_threads,
    });
    let mut summary = Vec::new();
    let mut problems = Vec::new();
    let started = Instant::now();
    for bin in &args.spawn {
        println!(
            "\n## dialect_sessions against {bin}: {} tokens per answer, {} ms apart; sessions {:?}; {} idle connections per kind",
            args.tokens,
            args.gap.as_millis(),
            args.sessions,
            args.idle
        );
        latency(bin, &args, &prov, &mut summary, &mut problems);
        memory(bin, &args, &prov, &mut summary, &mut problems);
    }
    println!("\nSummary:");
    for s in &summary {
        println!("- {s}");
    }
    if problems.is_empty() {
        println!("No errors: every session completed with every token.");
    } else {
        println!("Problems seen:");
        for p in &problems {
            println!("- {p}");
        }
    }
    println!("(total {:.0} s)", started.elapsed().as_secs_f64());
}
