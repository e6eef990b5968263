//! Chat streaming overhead: what relaying a provider's streamed answer
//! through Tidepool adds, against reading the same provider directly, with
//! 1, 100 and 1,000 answers streaming at once; server CPU per streamed token
//! and memory per active stream.
//!
//! ```sh
//! cargo build --release -p tidepool-smol -p tidepool-std -p tidepool-benches
//! target/release/chat_stream --spawn tidepool --streams 1,100,1000 --tokens 20 --gap-ms 20
//! ```
//!
//! A fake OpenAI-compatible provider runs in this process on loopback and
//! answers each Chat Completions call with `--tokens` SSE chunks, `--gap-ms`
//! apart. Each token carries the time it was written (nanoseconds on this
//! process's monotonic clock), so a reader in the same process knows each
//! token's latency exactly. The direct run reads the provider's stream
//! itself; the Tidepool run reads `POST /api/chat/{id}/messages/stream`, which
//! stores the question, calls the provider, and relays each token as an SSE
//! event. Added latency = Tidepool's per-token latency minus the direct one,
//! at the same concurrency, in the same run. Time to first token is measured
//! from the request's write to the first token read (Tidepool's includes the
//! fsync of the question, which is durable before any token is shown).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};
use tidepool_benches::SpawnedServer;

const KEY: &str = "chat-bench-key";

fn origin() -> Instant {
    static O: OnceLock<Instant> = OnceLock::new();
    *O.get_or_init(Instant::now)
}

fn stamp() -> u64 {
    origin().elapsed().as_nanos() as u64
}

struct Args {
    spawn: String,
    streams: Vec<usize>,
    tokens: usize,
    gap: Duration,
}

fn parse_args() -> Args {
    let mut a = Args {
        spawn: "tidepool".into(),
        streams: vec![1, 100, 1000],
        tokens: 20,
        gap: Duration::from_millis(20),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--spawn" => a.spawn = val(),
            "--streams" => {
                a.streams = val()
                    .split(',')
                    .map(|n| n.trim().parse().expect("number"))
                    .collect()
            }
            "--tokens" => a.tokens = val().parse().expect("number"),
            "--gap-ms" => a.gap = Duration::from_millis(val().parse().expect("number")),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

// ----- the fake provider -------------------------------------------------------

/// How the provider answers: tokens `gap` apart, or (for the memory run) one
/// token and then a wait at the barrier.
#[derive(Clone)]
struct Plan {
    tokens: usize,
    gap: Duration,
    hold: Option<Arc<Barrier>>,
}

fn read_request(s: &mut TcpStream) -> bool {
    let mut r = BufReader::new(s);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
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

fn token_chunk(t: u64) -> String {
    format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{t}| \"}}}}]}}\n\n")
}

fn serve(mut s: TcpStream, plan: &Plan) {
    if !read_request(&mut s) {
        return;
    }
    let _ = s.set_nodelay(true);
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for i in 0..plan.tokens {
        if i > 0 {
            std::thread::sleep(plan.gap);
        }
        if chunk(&mut s, &token_chunk(stamp())).is_err() {
            return;
        }
        if let (0, Some(hold)) = (i, &plan.hold) {
            hold.wait();
        }
    }
    let _ = chunk(
        &mut s,
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
    );
    let _ = s.write_all(b"0\r\n\r\n");
}

fn provider(plan: Plan) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let plan = plan.clone();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || serve(s, &plan))
                .expect("thread");
        }
    });
    addr
}

// ----- readers -----------------------------------------------------------------

/// The stamps of the tokens in `line` (`"<nanos>| "` anywhere in it).
fn stamps(line: &str, out: &mut Vec<u64>) {
    for (i, _) in line.match_indices("| ") {
        let digits = line[..i]
            .bytes()
            .rev()
            .take_while(u8::is_ascii_digit)
            .count();
        if let Ok(t) = line[i - digits..i].parse() {
            out.push(t);
        }
    }
}

/// One streamed answer: time to first token, and each token's latency.
struct Sample {
    ttft: Duration,
    latencies: Vec<Duration>,
}

/// Writes `request`, then reads the stream to its end, timing each token.
fn read_stream(addr: &str, request: &str) -> Sample {
    let mut s = TcpStream::connect(addr).expect("connect");
    let _ = s.set_nodelay(true);
    let sent = Instant::now();
    s.write_all(request.as_bytes()).expect("write");
    let mut r = BufReader::new(s);
    let mut ttft = None;
    let mut latencies = Vec::new();
    let mut found = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let now = stamp();
        found.clear();
        stamps(&line, &mut found);
        for t in &found {
            ttft.get_or_insert_with(|| sent.elapsed());
            latencies.push(Duration::from_nanos(now.saturating_sub(*t)));
        }
        // Tidepool ends with `done` and closes; the provider with [DONE].
        if line.contains("[DONE]") || line.starts_with("event: done") {
            // Read the done event's data line, then stop.
            if line.starts_with("event: done") {
                let _ = r.read_line(&mut line);
            }
            break;
        }
    }
    Sample {
        ttft: ttft.unwrap_or_default(),
        latencies,
    }
}

fn post(path: &str, token: Option<&str>, body: &str, accept_sse: bool) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let accept = if accept_sse {
        "Accept: text/event-stream\r\n"
    } else {
        ""
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}{accept}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn call(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(
        request
            .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

fn json_str(body: &str, key: &str) -> String {
    body.split(&format!("\"{key}\":\""))
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap_or_else(|| panic!("no {key} in {body}"))
        .to_string()
}

/// Runs `n` readers at once; all samples.
fn concurrently(n: usize, make: impl Fn(usize) -> (String, String)) -> Vec<Sample> {
    let start = Arc::new(Barrier::new(n));
    let readers: Vec<_> = (0..n)
        .map(|i| {
            let (addr, req) = make(i);
            let start = start.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    start.wait();
                    read_stream(&addr, &req)
                })
                .expect("thread")
        })
        .collect();
    readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .collect()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn summary(samples: &[Sample]) -> (Duration, Duration, Duration, Duration, usize) {
    let mut lat: Vec<Duration> = samples.iter().flat_map(|s| s.latencies.clone()).collect();
    let mut ttft: Vec<Duration> = samples.iter().map(|s| s.ttft).collect();
    let n = lat.len();
    (
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        percentile(&mut ttft, 0.5),
        percentile(&mut ttft, 0.99),
        n,
    )
}

fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn start_server(args: &Args, provider: &str, streams: usize) -> (SpawnedServer, String) {
    let url = format!("http://{provider}/v1");
    let max = (streams + 16).to_string();
    let conns = (2 * streams + 64).to_string();
    let server = SpawnedServer::start(
        &args.spawn,
        "chat-stream",
        &[
            "--api-key",
            KEY,
            "--openai-url",
            &url,
            "--openai-api-key",
            "sk-bench",
            "--outbound-max-calls",
            &max,
            "--max-connections",
            &conns,
        ],
    );
    let addr = server.addr.clone();
    let body = call(
        &addr,
        &post(
            "/api/auth/token",
            None,
            &format!(r#"{{"api_key":"{KEY}"}}"#),
            false,
        ),
    );
    (server, json_str(&body, "token"))
}

fn sessions(addr: &str, token: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let body = call(
                addr,
                &post(
                    "/api/chat",
                    Some(token),
                    r#"{"llm_provider":"openai"}"#,
                    false,
                ),
            );
            json_str(&body, "chat_id")
        })
        .collect()
}

fn main() {
    let args = parse_args();
    origin();
    println!(
        "chat_stream: {} tokens per answer, {} ms apart, against {}",
        args.tokens,
        args.gap.as_millis(),
        args.spawn
    );
    println!("| streams | token latency direct p50 / p99 | through Tidepool p50 / p99 | added p50 / p99 | first token direct p50 / p99 | through Tidepool p50 / p99 | server CPU per token |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &args.streams {
        let prov = provider(Plan {
            tokens: args.tokens,
            gap: args.gap,
            hold: None,
        });
        let direct_req = post(
            "/v1/chat/completions",
            None,
            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            true,
        );
        let direct = concurrently(n, |_| (prov.clone(), direct_req.clone()));
        let (server, token) = start_server(&args, &prov, n);
        let chats = sessions(&server.addr, &token, n);
        // Warm up: one answer.
        let warm = post(
            &format!("/api/chat/{}/messages/stream", chats[0]),
            Some(&token),
            r#"{"message":"warm up"}"#,
            true,
        );
        read_stream(&server.addr, &warm);
        let before = cpu(server.pid());
        let through = concurrently(n, |i| {
            let req = post(
                &format!("/api/chat/{}/messages/stream", chats[i]),
                Some(&token),
                r#"{"message":"Tell me something"}"#,
                true,
            );
            (server.addr.clone(), req)
        });
        let spent = cpu(server.pid()) - before;
        let (d50, d99, dt50, dt99, dn) = summary(&direct);
        let (t50, t99, tt50, tt99, tn) = summary(&through);
        assert_eq!(dn, n * args.tokens, "every direct token arrived");
        assert_eq!(tn, n * args.tokens, "every relayed token arrived");
        println!(
            "| {n} | {:.3} / {:.3} ms | {:.3} / {:.3} ms | {:.3} / {:.3} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.1} µs |",
            ms(d50),
            ms(d99),
            ms(t50),
            ms(t99),
            ms(t50.saturating_sub(d50)),
            ms(t99.saturating_sub(d99)),
            ms(dt50),
            ms(dt99),
            ms(tt50),
            ms(tt99),
            spent.as_secs_f64() * 1e6 / tn as f64,
        );
    }

    // Memory per active stream: answers that stream one token, then wait.
    let n = *args.streams.iter().max().unwrap_or(&100);
    let hold = Arc::new(Barrier::new(n + 1));
    let prov = provider(Plan {
        tokens: 2,
        gap: Duration::ZERO,
        hold: Some(hold.clone()),
    });
    let (server, token) = start_server(&args, &prov, n);
    let chats = sessions(&server.addr, &token, n);
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(server.pid());
    let readers: Vec<_> = chats
        .iter()
        .map(|c| {
            let req = post(
                &format!("/api/chat/{c}/messages/stream"),
                Some(&token),
                r#"{"message":"hold on"}"#,
                true,
            );
            let addr = server.addr.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || read_stream(&addr, &req).latencies.len())
                .expect("thread")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let busy = rss_kib(server.pid());
    hold.wait();
    let tokens: usize = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    println!(
        "memory: {idle} KiB idle, {busy} KiB with {n} answers streaming (provider call, client stream, turn): {:.1} KiB per stream; {tokens} tokens read",
        busy.saturating_sub(idle) as f64 / n as f64
    );
}
