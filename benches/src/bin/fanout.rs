//! Fan-out benchmark for live subscriptions.
//!
//! ```sh
//! cargo build --release -p tidepool-smol -p tidepool-std -p tidepool-benches
//! benches/peers/install-redis.sh   # once, for --peer redis
//! target/release/fanout --spawn tidepool --ws 10000 --sse 1000 --rate 100 --seconds 10 --peer redis
//! ```
//!
//! Starts the server (release build next to this binary), opens `--ws` WebSocket
//! subscribers and `--sse` SSE subscribers on one collection, measures the
//! server's resident memory per idle connection, then inserts `--rate` records a
//! second for `--seconds` and reports the delivery latency from commit (the
//! event's `timestamp`) to receipt, at every subscriber. Then it compares
//! pipelined inserts over one WebSocket with HTTP inserts on one keep-alive
//! connection, in the same run.
//!
//! `--peer redis` then runs the same number of subscribers against Redis
//! pub/sub (each a RESP `SUBSCRIBE`, the events `PUBLISH`ed with the same shape
//! and a timestamp taken at publish time) and reports Tidepool's latency as a
//! ratio of Redis's. Redis delivers without syncing anything to disk; Tidepool
//! delivers each event after its insert is durable.
//!
//! The subscribers run as tasks on one thread and parse as little as possible
//! (frame headers and the `timestamp` field). They share the machine with the
//! server, so the server runs one executor thread by default
//! (`--server-threads`, 0 for one per core), like Redis's single event loop:
//! on two cores the kernel's loopback work and the subscribers need the other.

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpStream;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tidepool_benches::{client_frame, SpawnedServer};

struct Args {
    spawn: String,
    ws: usize,
    sse: usize,
    rate: u64,
    seconds: u64,
    pipeline: usize,
    /// Also measure Redis pub/sub under the same subscribers and rate.
    peer_redis: bool,
    /// The server's executor threads (`--threads`; 0 = one per core).
    server_threads: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        spawn: "tidepool".into(),
        ws: 10_000,
        sse: 1_000,
        rate: 100,
        seconds: 10,
        pipeline: 20_000,
        peer_redis: false,
        server_threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--spawn" => a.spawn = val(),
            "--ws" => a.ws = val().parse().expect("number"),
            "--sse" => a.sse = val().parse().expect("number"),
            "--rate" => a.rate = val().parse().expect("number"),
            "--seconds" => a.seconds = val().parse().expect("number"),
            "--pipeline" => a.pipeline = val().parse().expect("number"),
            "--peer" => {
                let peer = val();
                assert_eq!(peer, "redis", "the only peer is redis");
                a.peer_redis = true;
            }
            "--server-threads" => a.server_threads = val().parse().expect("number"),
            "--readers" => std::env::set_var("FANOUT_READERS", val()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// How many WebSocket subscribers read and time their events (`--readers`,
/// default all): the rest stay connected without reading, which takes the
/// client's own CPU cost out of the measurement.
fn readers() -> usize {
    std::env::var("FANOUT_READERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
}

/// `2026-11-23T09:43:43.071644+00:00` (the server's fixed format) →
/// microseconds since the epoch, without a date library on the hot path.
fn parse_ts(s: &[u8]) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        std::str::from_utf8(s.get(r)?).ok()?.parse().ok()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us)
}

/// The value of `"timestamp":"…"` in an event, without parsing the JSON.
fn timestamp_of(payload: &[u8]) -> Option<i64> {
    let key = b"\"timestamp\":\"";
    let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let end = payload[at..].iter().position(|&b| b == b'"')? + at;
    parse_ts(&payload[at..end])
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

async fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    head
}

/// Reads one server frame: (opcode, payload).
async fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    loop {
        if buf.len() >= 2 {
            let op = buf[0] & 0x0f;
            let (len, hdr) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => {
                    (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10)
                }
                126 | 127 => (usize::MAX, 0),
                n => (n as usize, 2),
            };
            if len != usize::MAX && buf.len() >= hdr + len {
                let payload = buf[hdr..hdr + len].to_vec();
                buf.drain(..hdr + len);
                return Some((op, payload));
            }
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn ws_connect(addr: &str, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).ok();
    let req = format!(
        "GET /api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("upgrade");
    let head = read_head(&mut s).await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    per_subscriber: Vec<usize>,
}

impl Tally {
    /// Times the event in `payload` (by its `timestamp`) as received now.
    fn record(&mut self, payload: &[u8], slot: usize) {
        if let Some(ts) = timestamp_of(payload) {
            self.latencies_us.push((now_us() - ts).max(0) as u32);
            self.per_subscriber[slot] += 1;
        }
    }
}

async fn ws_subscriber(
    addr: String,
    token: String,
    tally: Rc<RefCell<Tally>>,
    ready: Rc<RefCell<usize>>,
    slot: usize,
) {
    let mut s = ws_connect(&addr, &token).await;
    let sub = br#"{"type":"Subscribe","messageId":"s","payload":{"collection":"fan"}}"#;
    s.write_all(&client_frame(0x1, sub))
        .await
        .expect("subscribe");
    let mut buf = Vec::new();
    let (_, ack) = read_frame(&mut s, &mut buf).await.expect("ack");
    assert!(
        ack.starts_with(br#"{"type":"Success""#),
        "{}",
        String::from_utf8_lossy(&ack)
    );
    *ready.borrow_mut() += 1;
    if slot >= readers() {
        // A subscriber that stays connected but does not read: the server still
        // delivers to it (into its socket buffers), the client spends nothing.
        let _hold = s;
        smol::Timer::after(Duration::from_secs(3600)).await;
        return;
    }
    while let Some((op, payload)) = read_frame(&mut s, &mut buf).await {
        if op == 0x8 {
            break;
        }
        if op == 0x9 {
            // Ping: answer with a pong carrying the same payload.
            let mut pong = client_frame(0x1, &payload);
            pong[0] = 0x8a;
            let _ = s.write_all(&pong).await;
            continue;
        }
        tally.borrow_mut().record(&payload, slot);
    }
}

async fn sse_subscriber(
    addr: String,
    token: String,
    tally: Rc<RefCell<Tally>>,
    ready: Rc<RefCell<usize>>,
    slot: usize,
) {
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    let req = format!("GET /api/subscribe/fan HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("request");
    let head = read_head(&mut s).await;
    assert!(head.starts_with(b"HTTP/1.1 200"));
    *ready.borrow_mut() += 1;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            if event.starts_with(b"id: ") || event.windows(15).any(|w| w == b"event: mutation") {
                tally.borrow_mut().record(&event, slot);
            }
        }
    }
}

/// A Redis server for the peer comparison, on a free loopback port with
/// persistence off and no output-buffer limit for subscribers (so none is cut
/// off and every delivery is timed). Install it with
/// `benches/peers/install-redis.sh`. Killed on drop.
struct RedisServer {
    child: std::process::Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!("fanout-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--maxclients", "30000"])
            .args(["--client-output-buffer-limit", "pubsub 0 0 0"])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server not found: run benches/peers/install-redis.sh");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, addr, dir }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A RESP bulk string at `at`: (payload range, index after it).
fn resp_bulk(buf: &[u8], at: usize) -> Option<(std::ops::Range<usize>, usize)> {
    if *buf.get(at)? != b'$' {
        return None;
    }
    let eol = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
    let len: usize = std::str::from_utf8(&buf[at + 1..eol]).ok()?.parse().ok()?;
    let start = eol + 2;
    (buf.len() >= start + len + 2).then_some((start..start + len, start + len + 2))
}

/// One complete `message` push (`*3` of kind, channel, payload) at the front
/// of `buf`: (payload range, bytes it takes).
fn resp_message(buf: &[u8]) -> Option<(std::ops::Range<usize>, usize)> {
    let rest = buf.strip_prefix(b"*3\r\n")?;
    let at = buf.len() - rest.len();
    let (_, at) = resp_bulk(buf, at)?;
    let (_, at) = resp_bulk(buf, at)?;
    resp_bulk(buf, at)
}

async fn redis_subscriber(
    addr: String,
    tally: Rc<RefCell<Tally>>,
    ready: Rc<RefCell<usize>>,
    slot: usize,
) {
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(b"SUBSCRIBE fan\r\n").await.expect("subscribe");
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    // The confirmation ends with the subscription count, `:1`.
    while !buf.windows(4).any(|w| w == b":1\r\n") {
        let n = s.read(&mut chunk).await.expect("confirmation");
        assert!(n > 0, "redis closed the subscriber");
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.windows(4).position(|w| w == b":1\r\n").unwrap_or(0) + 4;
    buf.drain(..end);
    *ready.borrow_mut() += 1;
    loop {
        let mut used = 0;
        while let Some((payload, len)) = resp_message(&buf[used..]) {
            let payload = payload.start + used..payload.end + used;
            tally.borrow_mut().record(&buf[payload], slot);
            used += len;
        }
        buf.drain(..used);
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Publishes event `seq`, shaped like Tidepool's, stamped now; returns how many
/// subscribers Redis says it reached.
fn redis_publish(s: &mut std::net::TcpStream, seq: u64) -> u64 {
    use std::io::{Read, Write};
    let timestamp = chrono::DateTime::from_timestamp_micros(now_us())
        .expect("a time after 1970")
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00");
    let id = format!("redis{seq:016}");
    let payload = format!(
        r#"{{"type":"MutationNotification","payload":{{"collection":"fan","event":"insert","record_ids":["{id}"],"records":{{"id":"{id}","seq":{seq},"note":"fan-out event"}},"timestamp":"{timestamp}","event_id":"{seq}"}}}}"#
    );
    let cmd = format!(
        "*3\r\n$7\r\nPUBLISH\r\n$3\r\nfan\r\n${}\r\n{payload}\r\n",
        payload.len()
    );
    s.write_all(cmd.as_bytes()).expect("publish");
    let mut reply = Vec::new();
    let mut b = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        let n = s.read(&mut b).expect("publish reply");
        assert!(n > 0, "redis closed the publisher");
        reply.extend_from_slice(&b[..n]);
    }
    assert_eq!(reply[0], b':', "{}", String::from_utf8_lossy(&reply));
    std::str::from_utf8(&reply[1..reply.len() - 2])
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("receiver count")
}

fn http_call(s: &mut std::net::TcpStream, req: &str) -> u16 {
    use std::io::{Read, Write};
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).expect("read");
                buf.extend_from_slice(&chunk[..n]);
            }
            return head[9..12].parse().unwrap_or(0);
        }
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn token(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let body = r#"{"api_key":"fanout-key"}"#;
    use std::io::{Read, Write};
    write!(s, "POST /api/auth/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let at = out.find("\"token\":\"").expect("token") + 9;
    out[at..at + out[at..].find('"').unwrap()].to_string()
}

fn pct(v: &[u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1000.0
}

/// Where the subscribers connect and the inserts go.
#[derive(Clone)]
enum Target {
    /// A Tidepool server: WebSocket and SSE subscribers, HTTP inserts.
    Tidepool { addr: String, token: String },
    /// Redis pub/sub: every subscriber is a RESP `SUBSCRIBE`, inserts are `PUBLISH`.
    Redis { addr: String },
}

/// What one server's run delivered.
struct Delivery {
    events: usize,
    complete: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Opens the subscribers, inserts `rate` records a second for `seconds` over
/// `insert` (a keep-alive connection), and times every delivery. `on_ready`
/// runs once every subscriber is connected and idle.
fn deliver(
    target: &Target,
    args: &Args,
    insert: &mut std::net::TcpStream,
    on_ready: impl FnOnce(),
) -> Delivery {
    let total = args.ws + args.sse;
    // Subscribers live on their own thread; the inserter runs here.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Tally>();
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    {
        let target = target.clone();
        let ws_n = args.ws;
        std::thread::spawn(move || {
            let ex = smol::LocalExecutor::new();
            let tally = Rc::new(RefCell::new(Tally {
                latencies_us: Vec::with_capacity(total * 1100),
                per_subscriber: vec![0; total],
            }));
            let ready = Rc::new(RefCell::new(0usize));
            let mut tasks = Vec::new();
            let result = smol::block_on(ex.run(async {
                for i in 0..total {
                    let (tally, ready) = (tally.clone(), ready.clone());
                    tasks.push(match &target {
                        Target::Tidepool { addr, token } if i < ws_n => {
                            ex.spawn(ws_subscriber(addr.clone(), token.clone(), tally, ready, i))
                        }
                        Target::Tidepool { addr, token } => {
                            ex.spawn(sse_subscriber(addr.clone(), token.clone(), tally, ready, i))
                        }
                        Target::Redis { addr } => {
                            ex.spawn(redis_subscriber(addr.clone(), tally, ready, i))
                        }
                    });
                    if i % 200 == 199 {
                        smol::Timer::after(Duration::from_millis(5)).await;
                    }
                }
                while *ready.borrow() < total {
                    smol::Timer::after(Duration::from_millis(20)).await;
                }
                let _ = ready_tx.send(());
                let _ = stop_rx.recv().await;
                // Let in-flight events arrive.
                smol::Timer::after(Duration::from_millis(1000)).await;
                std::mem::take(&mut *tally.borrow_mut())
            }));
            let _ = done_tx.send(result);
            drop(tasks);
        });
    }
    ready_rx.recv().expect("subscribers ready");
    std::thread::sleep(Duration::from_millis(500));
    on_ready();

    // Inserts at a steady rate.
    let n = args.rate * args.seconds;
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_micros(i * 1_000_000 / args.rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match target {
            Target::Tidepool { token, .. } => {
                let body = format!(r#"{{"seq":{i},"note":"fan-out event"}}"#);
                let req = format!("POST /api/insert/fan HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                assert_eq!(http_call(insert, &req), 200);
            }
            Target::Redis { .. } => {
                assert_eq!(redis_publish(insert, i), total as u64, "receivers");
            }
        }
    }
    let _ = stop_tx.send_blocking(());
    let mut tally = done_rx.recv().expect("tally");
    tally.latencies_us.sort_unstable();
    Delivery {
        events: tally.latencies_us.len(),
        complete: tally
            .per_subscriber
            .iter()
            .filter(|c| **c as u64 == n)
            .count(),
        p50: pct(&tally.latencies_us, 0.5),
        p99: pct(&tally.latencies_us, 0.99),
        max: pct(&tally.latencies_us, 1.0),
    }
}

fn report(name: &str, d: &Delivery, n: u64) {
    println!(
        "{name}: delivered {} events ({} subscribers got all {n}); commit-to-receipt latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        d.events, d.complete, d.p50, d.p99, d.max
    );
}

/// The same subscribers and publish rate against Redis pub/sub.
fn measure_redis(args: &Args) -> Delivery {
    let redis = RedisServer::start();
    let mut s = std::net::TcpStream::connect(&redis.addr).expect("connect to redis");
    s.set_nodelay(true).ok();
    let target = Target::Redis {
        addr: redis.addr.clone(),
    };
    deliver(&target, args, &mut s, || {})
}

fn main() {
    assert_eq!(
        parse_ts(b"2026-11-23T09:43:43.071644+00:00"),
        chrono::DateTime::parse_from_rfc3339("2026-11-23T09:43:43.071644+00:00")
            .ok()
            .map(|d| d.timestamp_micros())
    );
    let args = parse_args();
    let n = args.rate * args.seconds;
    let total = args.ws + args.sse;
    if args.spawn == "redis" {
        println!(
            "redis pub/sub, {total} subscribers, {} publishes/s for {} s",
            args.rate, args.seconds
        );
        report("redis", &measure_redis(&args), n);
        return;
    }
    let server = SpawnedServer::start(
        &args.spawn,
        "fanout",
        &[
            "--api-key",
            "fanout-key",
            "--max-connections",
            "30000",
            "--threads",
            &args.server_threads.to_string(),
        ],
    );
    let addr = server.addr.clone();
    let pid = server.pid();
    let token = token(&addr);
    let idle_rss = rss_kib(pid);
    println!(
        "server {addr} ({}, {} executor threads), {} WebSocket + {} SSE subscribers, {} inserts/s for {} s",
        args.spawn, args.server_threads, args.ws, args.sse, args.rate, args.seconds
    );
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    s.set_nodelay(true).ok();
    let target = Target::Tidepool {
        addr: addr.clone(),
        token: token.clone(),
    };
    let delivery = deliver(&target, &args, &mut s, || {
        let busy_rss = rss_kib(pid);
        println!(
            "server RSS: {} MiB idle -> {} MiB with {total} idle subscribers = {:.1} KiB per connection",
            idle_rss / 1024,
            busy_rss / 1024,
            (busy_rss.saturating_sub(idle_rss)) as f64 / total as f64
        );
    });
    if readers() < args.ws {
        println!("(only {} of the WebSocket subscribers read and timed their events; the rest stay subscribed without reading)", readers());
    }
    report(&args.spawn, &delivery, n);

    // Pipelined inserts over one WebSocket vs HTTP inserts on one connection.
    let http_n = 2_000u64;
    let t = Instant::now();
    for i in 0..http_n {
        let body = format!(r#"{{"seq":{i}}}"#);
        let req = format!("POST /api/insert/pipe_http HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        assert_eq!(http_call(&mut s, &req), 200);
    }
    let http_rate = http_n as f64 / t.elapsed().as_secs_f64();
    let ws_n = args.pipeline;
    let ws_rate = smol::block_on(async {
        let mut ws = ws_connect(&addr, &token).await;
        let (mut reader, mut writer) = (ws.clone(), ws.clone());
        let t = Instant::now();
        let send = async move {
            let mut batch = Vec::new();
            for i in 0..ws_n {
                let msg = format!(
                    r#"{{"type":"Insert","messageId":"m{i}","payload":{{"collection":"pipe_ws","record":{{"seq":{i}}}}}}}"#
                );
                batch.extend(client_frame(0x1, msg.as_bytes()));
                if batch.len() > 32 * 1024 {
                    writer.write_all(&batch).await.expect("send");
                    batch.clear();
                }
            }
            writer.write_all(&batch).await.expect("send");
        };
        let recv = async move {
            let mut buf = Vec::new();
            let mut got = 0;
            while got < ws_n {
                let (_, payload) = read_frame(&mut reader, &mut buf).await.expect("reply");
                assert!(
                    payload.starts_with(br#"{"type":"Success""#),
                    "{}",
                    String::from_utf8_lossy(&payload)
                );
                got += 1;
            }
        };
        smol::future::zip(send, recv).await;
        let _ = ws.close().await;
        ws_n as f64 / t.elapsed().as_secs_f64()
    });
    println!(
        "durable inserts on one connection: HTTP keep-alive {http_rate:.0}/s, WebSocket pipelined {ws_rate:.0}/s ({:.1}x)",
        ws_rate / http_rate
    );

    if args.peer_redis {
        drop(server);
        let redis = measure_redis(&args);
        report("redis pub/sub (same subscribers, not durable)", &redis, n);
        println!(
            "{} / redis: p50 {:.2}x, p99 {:.2}x",
            args.spawn,
            delivery.p50 / redis.p50,
            delivery.p99 / redis.p99
        );
    }
}
