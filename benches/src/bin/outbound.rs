//! Outbound streaming benchmark: what a provider's streamed answer costs the
//! server, per piece received and parsed, and what a call in flight holds.
//!
//! ```sh
//! cargo build --release -p tidepool-smol -p tidepool-std -p tidepool-benches
//! target/release/outbound --spawn tidepool --calls 200 --chunks 1000 --inflight 200
//! ```
//!
//! A fake OpenAI-compatible embeddings provider runs in this process on
//! loopback. For the CPU figure it answers each `/v1/embeddings` call with a
//! chunked body of `--chunks` pieces (one number of the vector per chunk,
//! each written and flushed on its own so the server reads them apart), and the
//! server's CPU time (from /proc) over `--calls` calls is divided by the pieces
//! it parsed. A baseline run with the same vector in one piece is measured in
//! the same run and subtracted, so the figure is the cost of the pieces, not of
//! the requests around them. For the memory figure it answers `--inflight`
//! calls with a head and one piece, then holds them; the server's resident
//! memory is read before and while they are all in flight.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tidepool_benches::{process_cpu, rss_kib, SpawnedServer};

const KEY: &str = "outbound-bench-key";

struct Args {
    spawn: String,
    calls: usize,
    chunks: usize,
    inflight: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        spawn: "tidepool".into(),
        calls: 200,
        chunks: 1000,
        inflight: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--spawn" => a.spawn = val(),
            "--calls" => a.calls = val().parse().expect("number"),
            "--chunks" => a.chunks = val().parse().expect("number"),
            "--inflight" => a.inflight = val().parse().expect("number"),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// How the fake provider answers.
#[derive(Clone, Copy)]
enum Mode {
    /// The vector of `n` numbers, one chunk per number.
    Pieces(usize),
    /// The same vector in one chunk.
    Whole(usize),
    /// A head and one piece, then wait at the barrier.
    Hold,
}

/// Reads a request (head and Content-Length body) off a connection.
fn read_request(s: &mut TcpStream) -> bool {
    let mut r = BufReader::new(s);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).is_ok()
}

fn chunk(s: &mut TcpStream, data: &str) -> std::io::Result<()> {
    write!(s, "{:x}\r\n{data}\r\n", data.len())?;
    s.flush()
}

fn serve(mut s: TcpStream, mode: Mode, hold: &Barrier) {
    if !read_request(&mut s) {
        return;
    }
    let _ = s.set_nodelay(true);
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let head = r#"{"model":"m","data":[{"index":0,"embedding":["#;
    match mode {
        Mode::Pieces(n) => {
            let _ = chunk(&mut s, head);
            for i in 0..n {
                let sep = if i + 1 < n { "," } else { "" };
                if chunk(&mut s, &format!("0.{i:06}{sep}")).is_err() {
                    return;
                }
            }
        }
        Mode::Whole(n) => {
            let nums: Vec<String> = (0..n).map(|i| format!("0.{i:06}")).collect();
            let _ = chunk(&mut s, &format!("{head}{}", nums.join(",")));
        }
        Mode::Hold => {
            let _ = chunk(&mut s, head);
            hold.wait();
            let _ = chunk(&mut s, "0.5");
        }
    }
    let _ = chunk(&mut s, "]}]}");
    let _ = s.write_all(b"0\r\n\r\n");
}

/// A provider on loopback; returns its base URL.
fn provider(mode: Mode, hold: Arc<Barrier>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let hold = hold.clone();
            std::thread::spawn(move || serve(s, mode, &hold));
        }
    });
    url
}

/// One request on a fresh connection; the status and body.
fn call(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

fn token(addr: &str) -> String {
    let (status, body) = call(
        addr,
        "POST",
        "/api/auth/token",
        None,
        &format!(r#"{{"api_key":"{KEY}"}}"#),
    );
    assert_eq!(status, 200, "{body}");
    body.split(r#""token":""#)
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("a token")
        .to_string()
}

/// Server CPU for `calls` sequential embeddings answered in `mode`.
fn cpu_for(args: &Args, mode: Mode) -> (Duration, Duration) {
    let url = provider(mode, Arc::new(Barrier::new(1)));
    let server = SpawnedServer::start(
        &args.spawn,
        "outbound",
        &["--api-key", KEY, "--embed-url", &url, "--fsync", "none"],
    );
    let addr = server.addr.clone();
    let t = token(&addr);
    let body = r#"{"text":"hello","model":"m"}"#;
    // Warm up.
    for _ in 0..5 {
        assert_eq!(call(&addr, "POST", "/api/embed", Some(&t), body).0, 200);
    }
    let before = process_cpu(server.pid());
    let started = Instant::now();
    for _ in 0..args.calls {
        let (status, reply) = call(&addr, "POST", "/api/embed", Some(&t), body);
        assert_eq!(status, 200, "{reply}");
    }
    (process_cpu(server.pid()) - before, started.elapsed())
}

fn main() {
    let args = parse_args();
    println!(
        "outbound: {} calls of {} chunks each against {}",
        args.calls, args.chunks, args.spawn
    );
    let (pieces, wall) = cpu_for(&args, Mode::Pieces(args.chunks));
    let (whole, _) = cpu_for(&args, Mode::Whole(args.chunks));
    let per_chunk =
        pieces.saturating_sub(whole).as_secs_f64() * 1e6 / (args.calls * args.chunks) as f64;
    println!(
        "server CPU: {:.1} ms for the pieces, {:.1} ms for the same vectors whole ({} calls, {:.1} s)",
        pieces.as_secs_f64() * 1e3,
        whole.as_secs_f64() * 1e3,
        args.calls,
        wall.as_secs_f64()
    );
    println!("server CPU per chunk received and parsed: {per_chunk:.2} µs");

    // Memory per call in flight.
    let hold = Arc::new(Barrier::new(args.inflight + 1));
    let url = provider(Mode::Hold, hold.clone());
    let max = (args.inflight + 8).to_string();
    let server = SpawnedServer::start(
        &args.spawn,
        "outbound-mem",
        &[
            "--api-key",
            KEY,
            "--embed-url",
            &url,
            "--outbound-max-calls",
            &max,
        ],
    );
    let addr = server.addr.clone();
    let t = token(&addr);
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(server.pid());
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..args.inflight)
        .map(|_| {
            let (addr, t, done) = (addr.clone(), t.clone(), done.clone());
            std::thread::spawn(move || {
                let r = call(
                    &addr,
                    "POST",
                    "/api/embed",
                    Some(&t),
                    r#"{"text":"x","model":"m"}"#,
                );
                done.fetch_add(1, Ordering::Relaxed);
                r.0
            })
        })
        .collect();
    // Every call has connected and received its first piece by now.
    std::thread::sleep(Duration::from_secs(2));
    let busy = rss_kib(server.pid());
    hold.wait();
    let ok = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .filter(|s| *s == 200)
        .count();
    println!(
        "memory: {} KiB idle, {} KiB with {} calls in flight (and their client connections): {:.1} KiB per call; {ok} of them answered 200",
        idle,
        busy,
        args.inflight,
        busy.saturating_sub(idle) as f64 / args.inflight as f64
    );
}
