//! Chat streaming overhead: what relaying a provider's streamed answer
//! through Tidepool adds, against reading the same provider directly, with
//! 1, 100 and 1,000 answers streaming at once; server CPU per streamed token
//! and memory per active stream.
//!
//! ```sh
//! cargo build --release -p tidepool-smol -p tidepool-std -p tidepool-benches
//! benches/peers/install-nginx.sh   # once, for --peer nginx
//! target/release/chat_stream --spawn tidepool --streams 1,100,1000 --tokens 50 --gap-ms 20 --peer nginx
//! ```
//!
//! `--peer nginx` also relays the same streams through nginx (the proxy people
//! put in front of an LLM server: `proxy_buffering off`, as many workers as
//! Tidepool has threads), in the same run: the floor for relaying a stream
//! through any process on this machine.
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
use tidepool_benches::{http_body, process_cpu, rss_kib, token_stamps, SpawnedServer};

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
    nginx: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        spawn: "tidepool".into(),
        streams: vec![1, 100, 1000],
        tokens: 20,
        gap: Duration::from_millis(20),
        nginx: false,
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
            "--peer" => {
                assert_eq!(val(), "nginx", "the only peer is nginx");
                a.nginx = true;
            }
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
        token_stamps(&line, &mut found);
        for t in &found {
            // The first token's latency is in the time to first token (through
            // Tidepool it also waits for the question to be durable); the
            // latency figures are for the tokens after it.
            if ttft.is_none() {
                ttft = Some(sent.elapsed());
                continue;
            }
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
    let body = http_body(
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
            let body = http_body(
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

/// nginx relaying to the provider, started with its own config; killed on drop.
struct Nginx {
    child: std::process::Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(provider: &str, workers: usize, streams: usize) -> Nginx {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let dir = std::env::temp_dir().join(format!("chat-stream-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).expect("nginx dir");
        let conf = format!(
            "worker_processes {workers};\nerror_log {d}/logs/error.log error;\npid {d}/nginx.pid;\n\
             events {{ worker_connections {conns}; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n\
               upstream llm {{ server {provider}; }}\n\
               server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://llm;\n\
                 proxy_http_version 1.1; proxy_buffering off; proxy_request_buffering off;\n\
                 proxy_read_timeout 120s; }} }} }}\n",
            d = dir.display(),
            conns = 4 * streams + 64,
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off; user root;"])
            .spawn()
            .expect("nginx not found: run benches/peers/install-nginx.sh");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child, addr, dir }
    }

    /// CPU of the master and its workers.
    fn cpu(&self) -> Duration {
        let out = std::process::Command::new("pgrep")
            .args(["-P", &self.child.id().to_string()])
            .output()
            .expect("pgrep");
        let mut total = process_cpu(self.child.id());
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse() {
                total += process_cpu(pid);
            }
        }
        total
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM, not KILL: the master then stops its workers too.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
    println!("Token latency after the first token (write at the provider to read at the client) and time to first token, p50 / p99, ms; server CPU per relayed token (a turn's own work, storing the question and the answer, included):");
    println!("| streams | direct | through Tidepool | through nginx | added by Tidepool | added by nginx | first token: direct / Tidepool / nginx (p99) | CPU per token: Tidepool / nginx |");
    println!("|---|---|---|---|---|---|---|---|");
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
        let before = process_cpu(server.pid());
        let through = concurrently(n, |i| {
            let req = post(
                &format!("/api/chat/{}/messages/stream", chats[i]),
                Some(&token),
                r#"{"message":"Tell me something"}"#,
                true,
            );
            (server.addr.clone(), req)
        });
        let spent = process_cpu(server.pid()) - before;
        drop(server);
        let nginx = args.nginx.then(|| {
            let threads = 2;
            let proxy = Nginx::start(&prov, threads, n);
            read_stream(&proxy.addr, &direct_req);
            let before = proxy.cpu();
            let samples = concurrently(n, |_| (proxy.addr.clone(), direct_req.clone()));
            (samples, proxy.cpu() - before)
        });
        let (d50, d99, _, dt99, dn) = summary(&direct);
        let (t50, t99, _, tt99, tn) = summary(&through);
        assert_eq!(dn, n * (args.tokens - 1), "every direct token arrived");
        assert_eq!(tn, n * (args.tokens - 1), "every relayed token arrived");
        let per_token = |d: Duration, n: usize| d.as_secs_f64() * 1e6 / n as f64;
        let (ng, ng_added, ng_ttft, ng_cpu) = match &nginx {
            Some((samples, spent)) => {
                let (g50, g99, _, gt99, gn) = summary(samples);
                (
                    format!("{:.3} / {:.3}", ms(g50), ms(g99)),
                    format!(
                        "{:.3} / {:.3}",
                        ms(g50.saturating_sub(d50)),
                        ms(g99.saturating_sub(d99))
                    ),
                    format!("{:.2}", ms(gt99)),
                    format!("{:.1} µs", per_token(*spent, gn + n)),
                )
            }
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {n} | {:.3} / {:.3} | {:.3} / {:.3} | {ng} | {:.3} / {:.3} | {ng_added} | {:.2} / {:.2} / {ng_ttft} | {:.1} µs / {ng_cpu} |",
            ms(d50),
            ms(d99),
            ms(t50),
            ms(t99),
            ms(t50.saturating_sub(d50)),
            ms(t99.saturating_sub(d99)),
            ms(dt99),
            ms(tt99),
            per_token(spent, n * args.tokens),
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
                .spawn(move || read_stream(&addr, &req).latencies.len() + 1)
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
