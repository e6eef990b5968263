//! Schedules at scale (issue 13), against a spawned server:
//!
//! 1. **Memory per schedule**: the server's RSS before and after
//!    registering `--schedules` schedules (a yearly cron, so they sit in the
//!    due index without firing), divided by their number.
//! 2. **Firing delay**: with those registered, `--firing` schedules fire
//!    every second for `--seconds`, each running a stored function whose
//!    `HttpRequest` reaches a listener in this process; the delay of a run
//!    is when its request arrived minus the whole second it was due (every
//!    occurrence is a whole second), so it includes the queue of runs due
//!    at the same second. Reports p50/p99/max, and the same from the run
//!    history (`started_at - scheduled_for`, the server's clock reading for
//!    the batch).
//!
//! ```sh
//! cargo build --release -p tidepool-smol -p tidepool-benches
//! target/release/schedule_bench --schedules 10000 --firing 100 --seconds 5
//! ```

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tidepool_benches::http::{json_str, Conn};
use tidepool_benches::{rss_kib, SpawnedServer};

struct Args {
    spawn: String,
    schedules: usize,
    firing: usize,
    seconds: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        spawn: "tidepool".into(),
        schedules: 10_000,
        firing: 100,
        seconds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--spawn" => a.spawn = val(),
            "--schedules" => a.schedules = val().parse().expect("number"),
            "--firing" => a.firing = val().parse().expect("number"),
            "--seconds" => a.seconds = val().parse().expect("number"),
            "--help" | "-h" => {
                println!("schedule_bench [--spawn tidepool|tidepool-std] [--schedules 10000] [--firing 100] [--seconds 5]");
                std::process::exit(0);
            }
            other => panic!("unknown flag {other} (see --help)"),
        }
    }
    a
}

fn create(setup: &mut Conn, token: &str, body: &Value) -> String {
    let (status, resp) = setup.call("POST", "/api/schedules", token, &body.to_string());
    assert_eq!(status, 200, "schedule: {}", String::from_utf8_lossy(&resp));
    let v: Value = serde_json::from_slice(&resp).expect("json");
    v["id"].as_str().expect("id").to_string()
}

fn time(v: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()
}

fn main() {
    let args = parse_args();
    let key = "schedule-bench-key";
    let server = SpawnedServer::start(
        &args.spawn,
        "schedule_bench",
        &["--api-key", key, "--function-http-allow", "127.0.0.1"],
    );
    // Arrival times (µs past their second) of the functions' requests.
    let arrivals: Arc<Mutex<Vec<f64>>> = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let seen = arrivals.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let at = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .push(f64::from(at.subsec_micros()) / 1000.0);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                );
            });
        }
    });
    let mut setup = Conn::open(&server.addr);
    let (status, body) = setup.call(
        "POST",
        "/api/auth/token",
        "",
        &format!(r#"{{"api_key":"{key}"}}"#),
    );
    assert_eq!(status, 200, "token: {}", String::from_utf8_lossy(&body));
    let token = json_str(&body, "token").expect("token");
    let function = json!({"label": "tick", "name": "tick",
        "functions": [{"type": "HttpRequest", "method": "GET",
            "url": format!("http://127.0.0.1:{port}/tick")}]});
    let (status, resp) = setup.call("POST", "/api/functions", &token, &function.to_string());
    assert_eq!(status, 200, "function: {}", String::from_utf8_lossy(&resp));

    // Settle the allocator with a few first, then measure the rest.
    for i in 0..100 {
        create(
            &mut setup,
            &token,
            &json!({"name": format!("warm{i}"),
            "cron": "0 0 1 1 *", "function_label": "tick"}),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(server.pid());
    for i in 0..args.schedules {
        create(
            &mut setup,
            &token,
            &json!({"name": format!("yearly{i}"),
            "cron": "0 0 1 1 *", "function_label": "tick"}),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(server.pid());
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / args.schedules as f64;
    println!(
        "memory: {per:.0} bytes per schedule ({} schedules, RSS {before} -> {after} KiB; each is a stored record with its history and a due-index entry)",
        args.schedules
    );

    let ids: Vec<String> = (0..args.firing)
        .map(|i| {
            create(
                &mut setup,
                &token,
                &json!({"name": format!("tick{i}"),
                "cron": "* * * * * *", "function_label": "tick"}),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.seconds));
    for id in &ids {
        let (status, _) = setup.call("POST", &format!("/api/schedules/{id}/pause"), &token, "");
        assert_eq!(status, 200);
    }
    let mut delays_ms: Vec<f64> = Vec::new();
    let mut failed = 0;
    for id in &ids {
        let (status, resp) = setup.call("GET", &format!("/api/schedules/{id}/runs"), &token, "");
        assert_eq!(status, 200, "runs: {}", String::from_utf8_lossy(&resp));
        let v: Value = serde_json::from_slice(&resp).expect("json");
        let runs = v
            .get("runs")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for r in runs {
            if r["status"] != "succeeded" {
                failed += 1;
            }
            if let (Some(s), Some(d)) = (time(&r["started_at"]), time(&r["scheduled_for"])) {
                delays_ms.push((s - d).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            }
        }
    }
    let report = |what: &str, mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            v.get(((v.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "firing delay ({what}), {} schedules registered: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} runs of {} every-second schedules",
            args.schedules + 100 + args.firing,
            pct(0.5),
            pct(0.99),
            v.last().copied().unwrap_or(f64::NAN),
            v.len(),
            args.firing,
        );
    };
    report("request arrival", arrivals.lock().unwrap().clone());
    report("run history", delays_ms);
    println!("runs not succeeded: {failed}");
}
