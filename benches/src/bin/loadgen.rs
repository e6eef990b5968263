//! Load generator for a Tidepool server over HTTP/1.1 keep-alive.
//!
//! ```sh
//! cargo build --release -p tidepool-smol -p tidepool-std -p tidepool-benches
//! target/release/loadgen --spawn tidepool --connections 64 --seconds 10
//! ```
//!
//! With `--pocketbase --url http://host:port` it drives a running PocketBase
//! instead (the peer of issue 15's side-by-side table), with the same
//! workloads on the same documents through PocketBase's records API, as
//! the superuser `--pb-email`/`--pb-password` (it creates the collections).
//!
//! With `--spawn BIN` it starts the server itself (from the same target directory)
//! on a fresh data directory next to the build, so the fsync measurement below
//! runs on the same disk. With `--url` it drives a server that is already running.
//!
//! Each workload runs for `--seconds` with N connections, each a thread doing one
//! request at a time, and reports ops/s and p50/p99/p999 latency. The raw fsync rate
//! of the disk (4 KiB append + fdatasync in a loop) is measured in the same run,
//! because a durable insert cannot be acknowledged faster than its fsync allows.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidepool_benches::http::{json_str, self_signed, AsyncConn, Conn, TLS};
use tidepool_benches::SpawnedServer;

struct Args {
    url: Option<String>,
    spawn: Option<String>,
    api_key: String,
    connections: usize,
    seconds: u64,
    workloads: Vec<String>,
    prefill: usize,
    fill: usize,
    fsync: String,
    /// Drive the workloads with a non-admin key granted exactly what they
    /// touch (permission checks and field shaping on every request).
    scoped: bool,
    /// Extra flags for a spawned server (`--server-args "--rate-limit-per-key 100000000"`).
    server_args: Vec<String>,
    /// Serve and drive over TLS (a spawned server, with a fresh self-signed
    /// certificate).
    tls: bool,
    /// While the workloads run, another client runs a long scan of
    /// `bench_read` (a filter of this many conditions, matching nothing)
    /// over and over: how much do the others slow down?
    background_scan: usize,
    /// Drive a PocketBase server (`--url`) instead of Tidepool.
    pocketbase: bool,
    pb_email: String,
    pb_password: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        url: None,
        spawn: None,
        api_key: "loadgen-key".into(),
        connections: 64,
        seconds: 10,
        workloads: vec!["insert".into(), "get".into(), "query".into(), "kv".into()],
        prefill: 10_000,
        fill: 0,
        fsync: "sync".into(),
        scoped: false,
        server_args: Vec::new(),
        tls: false,
        background_scan: 0,
        pocketbase: false,
        pb_email: "bench@example.com".into(),
        pb_password: "bench-password-123".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = Some(val()),
            "--spawn" => a.spawn = Some(val()),
            "--api-key" => a.api_key = val(),
            "--connections" => a.connections = val().parse().expect("number"),
            "--seconds" => a.seconds = val().parse().expect("number"),
            "--workloads" => a.workloads = val().split(',').map(str::to_string).collect(),
            "--prefill" => a.prefill = val().parse().expect("number"),
            "--fill" => a.fill = val().parse().expect("number"),
            "--fsync" => a.fsync = val(),
            "--scoped" => a.scoped = true,
            "--tls" => a.tls = true,
            "--background-scan" => a.background_scan = val().parse().expect("number"),
            "--pocketbase" => a.pocketbase = true,
            "--pb-email" => a.pb_email = val(),
            "--pb-password" => a.pb_password = val(),
            "--server-args" => {
                a.server_args = val().split_whitespace().map(str::to_string).collect()
            }
            "--help" | "-h" => {
                println!(
                    "loadgen [--spawn tidepool|tidepool-std | --url http://host:port --api-key KEY]\n\
                     \t[--connections 64] [--seconds 10] [--workloads insert,get,query,kv,search]\n\
                     \t[--prefill 10000] [--fill N (bulk-load N docs and report server RSS)] [--fsync sync]\n\
                     \t[--scoped (a non-admin key granted what the workloads touch)] [--server-args \"FLAGS\"]\n\
                     \t[--tls (with --spawn: HTTPS with a fresh self-signed certificate)]\n\
                     \t[--background-scan CONDITIONS (another client scans bench_read meanwhile)]\n\
                     \t[--pocketbase --url http://host:port [--pb-email E --pb-password P]]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown flag {other} (see --help)"),
        }
    }
    a
}

fn doc(i: u64) -> String {
    format!(
        r#"{{"name":"user-{i}","email":"user{i}@example.com","age":{},"city":"{}","score":{}.5,"active":{},"tags":["t{}","bench"],"bio":"A short line of profile text, as long as a typical one."}}"#,
        i % 100,
        ["Lisbon", "Osaka", "Quito", "Tromso"][(i % 4) as usize],
        i % 1000,
        i.is_multiple_of(2),
        i % 10
    )
}

/// Words in the text-search documents: `word0` .. `word4999`.
const TEXT_VOCAB: u64 = 5000;
/// Words per text-search document.
const TEXT_WORDS: u64 = 20;

/// The `k`-th word of text document `i`: a hash of (i, k) into the
/// vocabulary, squared so that low-numbered words are common (a skew like a
/// real text's). benches/scripts/peers.sh computes the same in SQL.
fn text_word(i: u64, k: u64) -> u64 {
    let h = ((i * 7919 + k * 104_729) * 2_654_435_761) % (1 << 32) % TEXT_VOCAB;
    h * h / TEXT_VOCAB
}

/// Text document `i`: `{"body": "word.. word.."}`.
fn text_doc(i: u64) -> String {
    let words: Vec<String> = (0..TEXT_WORDS)
        .map(|k| format!("word{}", text_word(i, k)))
        .collect();
    format!(r#"{{"body":"{}"}}"#, words.join(" "))
}

/// The two query words of search `n` (from the commoner half of the
/// vocabulary), as peers.sh's pgbench script picks them.
fn text_query(n: u64) -> (u64, u64) {
    (n * 31 % 1000, n * 17 % 2500)
}

/// 4 KiB append + fdatasync in a loop for `secs`: the disk's durable-write ceiling.
fn fsync_rate(dir: &Path, secs: f64) -> f64 {
    std::fs::create_dir_all(dir).ok();
    let path = dir.join("fsync-probe");
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("probe file");
    let block = vec![0x5au8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all_at(&block, n * 4096).expect("write");
        f.sync_data().expect("fsync");
        n += 1;
    }
    let _ = std::fs::remove_file(&path);
    n as f64 / start.elapsed().as_secs_f64()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct Outcome {
    ops: u64,
    errors: u64,
    secs: f64,
    lat_us: Vec<u32>,
}

/// A request the workload makes: (method, path, body).
type Req = (&'static str, String, String);

/// Runs `make` on `conns` connections for `secs`, all on ONE thread (async), so
/// the generator itself needs at most one core. `make` gets (worker, seq).
fn run<F>(addr: &str, token: &str, conns: usize, secs: u64, make: F) -> Outcome
where
    F: Fn(usize, u64) -> Req + 'static,
{
    let make = std::rc::Rc::new(make);
    let ex = smol::LocalExecutor::new();
    let stop = std::rc::Rc::new(std::cell::Cell::new(false));
    let errors = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let start = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|w| {
            let (make, stop, errors) = (make.clone(), stop.clone(), errors.clone());
            let (addr, token) = (addr.to_string(), token.to_string());
            ex.spawn(async move {
                let mut c = AsyncConn::open(&addr).await;
                let mut lat = Vec::with_capacity(1 << 16);
                let mut seq = 0u64;
                while !stop.get() {
                    let (method, path, body) = make(w, seq);
                    let t = Instant::now();
                    if c.call(method, &path, &token, &body).await != 200 {
                        errors.set(errors.get() + 1);
                    }
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    seq += 1;
                }
                lat
            })
        })
        .collect();
    let lat_us = smol::block_on(ex.run(async {
        smol::Timer::after(Duration::from_secs(secs)).await;
        stop.set(true);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await);
        }
        all
    }));
    let secs = start.elapsed().as_secs_f64();
    let mut lat_us = lat_us;
    lat_us.sort_unstable();
    Outcome {
        ops: lat_us.len() as u64,
        errors: errors.get(),
        secs,
        lat_us,
    }
}

fn pct(lat: &[u32], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
    lat[i] as f64 / 1000.0
}

fn report(name: &str, o: &Outcome) -> f64 {
    let rate = o.ops as f64 / o.secs;
    println!(
        "| {name:<22} | {rate:>10.0} | {:>8.2} | {:>8.2} | {:>8.2} | {:>6} |",
        pct(&o.lat_us, 0.50),
        pct(&o.lat_us, 0.99),
        pct(&o.lat_us, 0.999),
        o.errors
    );
    rate
}

/// (last LSN, syncs) from the server's health report.
fn log_stats(addr: &str) -> (u64, u64) {
    let mut c = Conn::open(addr);
    let (_, body) = c.call("GET", "/api/health", "", "");
    let text = String::from_utf8_lossy(&body);
    let num = |key: &str| -> u64 {
        text.split(&format!("\"{key}\":"))
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    (num("last_lsn"), num("syncs"))
}

fn token(addr: &str, key: &str) -> String {
    let mut c = Conn::open(addr);
    let (status, body) = c.call(
        "POST",
        "/api/auth/token",
        "",
        &format!("{{\"api_key\":\"{key}\"}}"),
    );
    assert_eq!(status, 200, "token: {}", String::from_utf8_lossy(&body));
    json_str(&body, "token").expect("token in body")
}

/// Registers a non-admin key granted the bench collections and KV keys,
/// and returns a token for it.
fn scoped_token(addr: &str, admin: &str) -> String {
    let mut c = Conn::open(addr);
    let body = r#"{"is_admin":false,"collection_permissions":{"bench_read":["read","write"],"bench_write":["read","write"]},"kv_permissions":[{"prefix":"k-","read":true,"write":true}]}"#;
    let (status, resp) = c.call("POST", "/api/auth/register", admin, body);
    assert_eq!(status, 200, "register: {}", String::from_utf8_lossy(&resp));
    let key = json_str(&resp, "key").expect("key in body");
    token(addr, &key)
}

/// Starts a client that scans `bench_read` with a filter of `conditions`
/// `Contains` conditions (matching nothing) until told to stop; it reports
/// how many scans it finished and the time they took.
fn background_scan(
    addr: &str,
    token: &str,
    conditions: usize,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<(u64, Duration)>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let expressions: Vec<String> = (0..conditions)
        .map(|i| {
            format!(
                r#"{{"type":"Condition","content":{{"field":"bio","operator":"Contains","value":"absent {i}"}}}}"#
            )
        })
        .collect();
    let body = format!(
        r#"{{"filter":{{"type":"Logical","content":{{"operator":"Or","expressions":[{}]}}}}}}"#,
        expressions.join(",")
    );
    let (addr, token, flag) = (addr.to_string(), token.to_string(), stop.clone());
    let scanner = std::thread::spawn(move || {
        let mut c = Conn::open(&addr);
        let (mut n, start) = (0u64, Instant::now());
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let (status, resp) = c.call("POST", "/api/find/bench_read", &token, &body);
            assert_eq!(status, 200, "scan: {}", String::from_utf8_lossy(&resp));
            n += 1;
        }
        (n, start.elapsed())
    });
    (stop, scanner)
}

fn main() {
    let args = parse_args();
    let cert_dir = std::env::temp_dir().join(format!("loadgen-tls-{}", std::process::id()));
    let mut tls_flags = Vec::new();
    if args.tls {
        if args.spawn.is_none() {
            eprintln!("--tls needs --spawn (the server gets a fresh self-signed certificate)");
            std::process::exit(2);
        }
        let (cert, key, config) = self_signed(&cert_dir);
        let _ = TLS.set(config);
        tls_flags = vec![
            "--tls-cert".to_string(),
            cert.display().to_string(),
            "--tls-key".to_string(),
            key.display().to_string(),
        ];
    }
    let server = args.spawn.as_deref().map(|bin| {
        let mut flags = vec!["--api-key", &args.api_key, "--fsync", &args.fsync];
        flags.extend(args.server_args.iter().map(String::as_str));
        flags.extend(tls_flags.iter().map(String::as_str));
        SpawnedServer::start(bin, "loadgen", &flags)
    });
    let addr = match (&server, &args.url) {
        (Some(s), _) => s.addr.clone(),
        (None, Some(url)) => url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string(),
        _ => {
            eprintln!("give --spawn tidepool or --url http://host:port (see --help)");
            std::process::exit(2);
        }
    };
    let pb = args.pocketbase;
    let mut tok = if pb {
        pocketbase::setup(&addr, &args.pb_email, &args.pb_password)
    } else {
        token(&addr, &args.api_key)
    };
    if args.scoped {
        tok = scoped_token(&addr, &tok);
        println!("driving the workloads with a non-admin key (--scoped)");
    }
    let probe_dir = server
        .as_ref()
        .map_or_else(std::env::temp_dir, |s| s.dir.clone());
    let fsync = fsync_rate(&probe_dir, 2.0);
    println!(
        "server {addr}, {} connections, {} s per workload",
        args.connections, args.seconds
    );
    println!("raw fsync rate (4 KiB append + fdatasync): {fsync:.0}/s\n");
    println!("| workload               |      ops/s | p50 (ms) | p99 (ms) | p999 (ms) | errors |");
    println!("|------------------------|-----------:|---------:|---------:|----------:|-------:|");

    // Prefill for reads and queries (batch inserts, 1,000 per request).
    let mut ids: Vec<String> = Vec::new();
    let reads = args.workloads.iter().any(|w| w == "get" || w == "query");
    if pb && reads {
        ids = pocketbase::prefill(&addr, &tok, args.prefill);
    } else if args.background_scan > 0 || reads {
        let mut c = Conn::open(&addr);
        let mut i = 0u64;
        while (i as usize) < args.prefill {
            let n = 1000.min(args.prefill - i as usize) as u64;
            let items: Vec<String> = (i..i + n)
                .map(|j| format!("{{\"data\":{}}}", doc(j)))
                .collect();
            let body = format!("{{\"inserts\":[{}]}}", items.join(","));
            let (status, resp) = c.call("POST", "/api/batch/insert/bench_read", &tok, &body);
            assert_eq!(status, 200, "prefill: {}", String::from_utf8_lossy(&resp));
            let text = String::from_utf8_lossy(&resp);
            let list = text
                .split("\"successful\":[")
                .nth(1)
                .and_then(|s| s.split(']').next())
                .unwrap_or("");
            ids.extend(
                list.split(',')
                    .map(|s| s.trim_matches('"').to_string())
                    .filter(|s| !s.is_empty()),
            );
            i += n;
        }
    }
    let ids = Arc::new(ids);
    let scans =
        (args.background_scan > 0).then(|| background_scan(&addr, &tok, args.background_scan));
    let mut insert_rate = 0.0;
    let mut batches_per_sync = 0.0;
    for w in &args.workloads {
        match w.as_str() {
            "insert" => {
                let before = if pb { (0, 0) } else { log_stats(&addr) };
                let path = if pb {
                    "/api/collections/bench_write/records"
                } else {
                    "/api/insert/bench_write"
                };
                let o = run(
                    &addr,
                    &tok,
                    args.connections,
                    args.seconds,
                    move |w, seq| {
                        let i = (w as u64) << 32 | seq;
                        ("POST", path.to_string(), doc(i))
                    },
                );
                insert_rate = report("insert (durable)", &o);
                let after = if pb { (0, 0) } else { log_stats(&addr) };
                batches_per_sync = (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64;
            }
            "get" => {
                let ids = ids.clone();
                let o = run(
                    &addr,
                    &tok,
                    args.connections,
                    args.seconds,
                    move |w, seq| {
                        let id =
                            &ids[((w as u64 * 7919 + seq * 104_729) % ids.len() as u64) as usize];
                        if pb {
                            let path = format!("/api/collections/bench_read/records/{id}");
                            return ("GET", path, String::new());
                        }
                        ("GET", format!("/api/find/bench_read/{id}"), String::new())
                    },
                );
                report("get by id", &o);
            }
            "query" => {
                let o = run(
                    &addr,
                    &tok,
                    args.connections,
                    args.seconds,
                    move |w, seq| {
                        let age = (w as u64 + seq) % 100;
                        if pb {
                            let path = format!("/api/collections/bench_read/records?filter=(age%3D{age}%26%26active%3Dtrue)&perPage=10&skipTotal=1");
                            return ("GET", path, String::new());
                        }
                        let body = format!(
                            r#"{{"filter":{{"type":"Logical","content":{{"operator":"And","expressions":[{{"type":"Condition","content":{{"field":"age","operator":"Eq","value":{age}}}}},{{"type":"Condition","content":{{"field":"active","operator":"Eq","value":true}}}}]}}}},"limit":10}}"#
                        );
                        ("POST", "/api/find/bench_read".to_string(), body)
                    },
                );
                report(&format!("query ({} docs)", args.prefill), &o);
            }
            "kv" => {
                let o = run(
                    &addr,
                    &tok,
                    args.connections,
                    args.seconds,
                    move |w, seq| {
                        let body = format!(r#"{{"value":{{"n":{seq},"w":{w}}}}}"#);
                        ("POST", format!("/api/kv/set/k-{w}-{}", seq % 1000), body)
                    },
                );
                report("kv set (durable)", &o);
                let o = run(
                    &addr,
                    &tok,
                    args.connections,
                    args.seconds,
                    move |w, seq| {
                        (
                            "GET",
                            format!("/api/kv/get/k-{w}-{}", seq % 1000),
                            String::new(),
                        )
                    },
                );
                report("kv get", &o);
            }
            "search" if pb => eprintln!("search: PocketBase has no full-text search"),
            "search" => {
                // 10,000 documents of 20 words; searches for two words (OR),
                // ranked by BM25 (as PostgreSQL's ts_rank ranks), whole words
                // only, top 10. The first search builds the index.
                let mut c = Conn::open(&addr);
                for start in (0..args.prefill as u64).step_by(1000) {
                    let end = (start + 1000).min(args.prefill as u64);
                    let items: Vec<String> = (start..end)
                        .map(|j| format!("{{\"data\":{}}}", text_doc(j)))
                        .collect();
                    let body = format!("{{\"inserts\":[{}]}}", items.join(","));
                    let (status, resp) =
                        c.call("POST", "/api/batch/insert/bench_text", &tok, &body);
                    assert_eq!(status, 200, "prefill: {}", String::from_utf8_lossy(&resp));
                }
                let (status, resp) = c.call(
                    "POST",
                    "/api/search/bench_text",
                    &tok,
                    r#"{"query":"word1","limit":10}"#,
                );
                assert_eq!(status, 200, "search: {}", String::from_utf8_lossy(&resp));
                let o = run(
                    &addr,
                    &tok,
                    args.connections,
                    args.seconds,
                    move |w, seq| {
                        let (a, b) = text_query((w as u64) << 20 | seq);
                        let body = format!(
                            r#"{{"query":"word{a} word{b}","limit":10,"prefix":false,"scoring":"bm25"}}"#
                        );
                        ("POST", "/api/search/bench_text".to_string(), body)
                    },
                );
                report(&format!("text search ({} docs)", args.prefill), &o);
            }
            "none" => {}
            other => eprintln!("unknown workload {other}"),
        }
    }
    if let Some((stop, scanner)) = scans {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (n, took) = scanner.join().expect("scanner");
        println!(
            "\nbackground: {n} scans of {} docs with {} conditions meanwhile, {:.2} s each",
            args.prefill,
            args.background_scan,
            took.as_secs_f64() / n.max(1) as f64
        );
    }
    if insert_rate > 0.0 && !pb {
        let floor = 0.5 * args.connections as f64 * fsync;
        println!(
            "\ndurable inserts: {insert_rate:.0}/s = {:.1} x the raw fsync rate (floor: half of {} x fsync = {floor:.0}/s)",
            insert_rate / fsync,
            args.connections
        );
        println!(
            "group commit: {batches_per_sync:.1} committed batches per fsync during the insert run"
        );
    }
    if args.fill > 0 {
        let pid = server.as_ref().map(SpawnedServer::pid);
        let before = pid.and_then(rss_kib).unwrap_or(0);
        let mut c = Conn::open(&addr);
        let start = Instant::now();
        let mut i = 0u64;
        while (i as usize) < args.fill {
            let n = 2000.min(args.fill - i as usize) as u64;
            let items: Vec<String> = (i..i + n)
                .map(|j| format!("{{\"data\":{}}}", doc(j)))
                .collect();
            let (status, _) = c.call(
                "POST",
                "/api/batch/insert/bench_fill",
                &tok,
                &format!("{{\"inserts\":[{}]}}", items.join(",")),
            );
            assert_eq!(status, 200);
            i += n;
        }
        let secs = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        let after = pid.and_then(rss_kib).unwrap_or(0);
        let rss = match pid {
            Some(_) => format!("; server RSS {} MiB -> {} MiB", before / 1024, after / 1024),
            None => String::new(),
        };
        println!(
            "\nbulk load: {} docs (~{} bytes of JSON each) in {secs:.1} s ({:.0} docs/s){rss}",
            args.fill,
            doc(123_456).len(),
            args.fill as f64 / secs,
        );
    }
    if args.tls {
        let _ = std::fs::remove_dir_all(&cert_dir);
    }
}

/// PocketBase as a peer: the same documents through its records API.
mod pocketbase {
    use super::{doc, Conn};
    use serde_json::{json, Value};

    /// Signs in as the superuser and creates the bench collections with
    /// the documents' fields; the token.
    pub fn setup(addr: &str, email: &str, password: &str) -> String {
        let mut c = Conn::open(addr);
        let body = json!({"identity": email, "password": password}).to_string();
        let (status, resp) = c.call(
            "POST",
            "/api/collections/_superusers/auth-with-password",
            "",
            &body,
        );
        assert_eq!(
            status,
            200,
            "PocketBase sign-in: {}",
            String::from_utf8_lossy(&resp)
        );
        let token = serde_json::from_slice::<Value>(&resp).expect("json")["token"]
            .as_str()
            .expect("token")
            .to_string();
        let fields = json!([
            {"name": "name", "type": "text"}, {"name": "email", "type": "text"},
            {"name": "age", "type": "number"}, {"name": "city", "type": "text"},
            {"name": "score", "type": "number"}, {"name": "active", "type": "bool"},
            {"name": "tags", "type": "json"}, {"name": "bio", "type": "text"}
        ]);
        for name in ["bench_write", "bench_read"] {
            let body = json!({"name": name, "type": "base", "fields": fields}).to_string();
            let (status, resp) = c.call("POST", "/api/collections", &token, &body);
            assert!(
                status == 200 || String::from_utf8_lossy(&resp).contains("unique"),
                "PocketBase collection {name}: {status} {}",
                String::from_utf8_lossy(&resp)
            );
        }
        token
    }

    /// `n` documents into `bench_read`, one request each over a few
    /// connections (PocketBase's batch API is off by default); their ids.
    pub fn prefill(addr: &str, token: &str, n: usize) -> Vec<String> {
        let workers = 16;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    s.spawn(move || {
                        let mut c = Conn::open(addr);
                        let mut ids = Vec::new();
                        for i in (w..n).step_by(workers) {
                            let (status, resp) = c.call(
                                "POST",
                                "/api/collections/bench_read/records",
                                token,
                                &doc(i as u64),
                            );
                            assert_eq!(status, 200, "prefill: {}", String::from_utf8_lossy(&resp));
                            let v: Value = serde_json::from_slice(&resp).expect("json");
                            ids.push(v["id"].as_str().expect("id").to_string());
                        }
                        ids
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("prefill"))
                .collect()
        })
    }
}
