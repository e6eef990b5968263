//! Online backup (issue 15), in one run against one spawned server with
//! `--fsync sync`:
//!
//! 1. the store is filled with `--megabytes` of records (batch inserts);
//! 2. durable single-record inserts by `--connections` clients for
//!    `--seconds`: the rate without a backup;
//! 3. the same while backups run back to back (`POST /api/admin/backup`),
//!    each into a fresh directory, then again each into one new `.tar`
//!    file: the rate during backups, their MiB/s.
//!
//! It prints the backup throughput and the insert rate during backups as a
//! ratio of the rate without (target >= 0.8x).
//!
//! ```sh
//! cargo build --release -p tidepool-smol -p tidepool-benches
//! target/release/backup_bench --megabytes 256 --connections 32 --seconds 5
//! ```

use serde_json::{json, Value};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tidepool_benches::http::{json_str, AsyncConn, Conn};
use tidepool_benches::SpawnedServer;

struct Args {
    spawn: String,
    megabytes: usize,
    connections: usize,
    seconds: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        spawn: "tidepool".into(),
        megabytes: 256,
        connections: 32,
        seconds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--spawn" => a.spawn = val(),
            "--megabytes" => a.megabytes = val().parse().expect("number"),
            "--connections" => a.connections = val().parse().expect("number"),
            "--seconds" => a.seconds = val().parse().expect("number"),
            "--help" | "-h" => {
                println!("backup_bench [--spawn tidepool|tidepool-std] [--megabytes 256] [--connections 32] [--seconds 5]");
                std::process::exit(0);
            }
            other => panic!("unknown flag {other} (see --help)"),
        }
    }
    a
}

/// Durable single-record inserts per second over `connections`.
fn inserts(addr: &str, token: &str, args: &Args) -> f64 {
    let done = Rc::new(Cell::new(0u64));
    let stop = Rc::new(Cell::new(false));
    let ex = smol::LocalExecutor::new();
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|w| {
            let (done, stop) = (done.clone(), stop.clone());
            let (addr, token) = (addr.to_string(), token.to_string());
            ex.spawn(async move {
                let mut c = AsyncConn::open(&addr).await;
                let mut n = 0u64;
                while !stop.get() {
                    let body = format!(r#"{{"writer":{w},"n":{n},"note":"live write"}}"#);
                    let s = c.call("POST", "/api/insert/live", &token, &body).await;
                    assert_eq!(s, 200, "insert: {}", String::from_utf8_lossy(c.body()));
                    n += 1;
                    done.set(done.get() + 1);
                }
            })
        })
        .collect();
    smol::block_on(ex.run(async {
        smol::Timer::after(Duration::from_secs(args.seconds)).await;
        stop.set(true);
        for t in tasks {
            t.await;
        }
    }));
    done.get() as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args = parse_args();
    let key = "backup-bench-key";
    let server = SpawnedServer::start(
        &args.spawn,
        "backup_bench",
        &["--api-key", key, "--fsync", "sync"],
    );
    let mut setup = Conn::open(&server.addr);
    let (status, body) = setup.call(
        "POST",
        "/api/auth/token",
        "",
        &format!(r#"{{"api_key":"{key}"}}"#),
    );
    assert_eq!(status, 200, "token: {}", String::from_utf8_lossy(&body));
    let token = json_str(&body, "token").expect("token");

    // 1. Fill: batches of 1,000 records of about 500 bytes.
    let filler = "x".repeat(440);
    let batches = (args.megabytes * 1024 * 1024).div_ceil(1000 * 500);
    let t = Instant::now();
    for b in 0..batches {
        let inserts: Vec<Value> = (0..1000)
            .map(|i| json!({"data": {"batch": b, "i": i, "text": filler}}))
            .collect();
        let body = json!({ "inserts": inserts }).to_string();
        let (s, resp) = setup.call("POST", "/api/batch/insert/bulk", &token, &body);
        assert_eq!(s, 200, "fill: {}", String::from_utf8_lossy(&resp));
    }
    println!(
        "filled: {} records in {:.1} s",
        batches * 1000,
        t.elapsed().as_secs_f64()
    );

    // 2. Inserts alone.
    let alone = inserts(&server.addr, &token, &args);

    // 3. Inserts while backups run back to back, into directories, then
    //    into one file each.
    for one_file in [false, true] {
        let (during, backups) = during_backups(&server.addr, &token, &args, one_file);
        let (bytes, secs) = backups
            .iter()
            .fold((0u64, 0.0f64), |(b, s), (bb, ss)| (b + bb, s + ss));
        let mib = bytes as f64 / (1024.0 * 1024.0);
        let form = if one_file {
            "one .tar file"
        } else {
            "a directory"
        };
        println!(
            "backups into {form}: {} of {:.0} MiB each, {:.0} MiB/s while {} clients insert",
            backups.len(),
            mib / backups.len().max(1) as f64,
            mib / secs.max(1e-9),
            args.connections
        );
        println!(
            "durable inserts: {alone:.0}/s alone, {during:.0}/s during backups into {form} ({:.2}x; target >= 0.8x)",
            during / alone
        );
    }
}

/// The insert rate while backups (into directories, or into one file
/// each) run back to back, and each backup's (bytes, seconds).
fn during_backups(addr: &str, token: &str, args: &Args, one_file: bool) -> (f64, Vec<(u64, f64)>) {
    let root = std::env::temp_dir().join(format!("backup_bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("bench directory");
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        let backups = s.spawn(|| {
            let mut c = Conn::open(addr);
            let mut done = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let target = root.join(if one_file {
                    format!("b{n}.tar")
                } else {
                    format!("b{n}")
                });
                n += 1;
                let key = if one_file { "file" } else { "dir" };
                let body = json!({ key: target.display().to_string() }).to_string();
                let (s, resp) = c.call("POST", "/api/admin/backup", token, &body);
                assert_eq!(s, 200, "backup: {}", String::from_utf8_lossy(&resp));
                let reply: Value = serde_json::from_slice(&resp).expect("json");
                done.push((
                    reply["bytes"].as_u64().unwrap_or(0),
                    reply["seconds"].as_f64().unwrap_or(0.0),
                ));
                let _ = std::fs::remove_dir_all(&target);
                let _ = std::fs::remove_file(&target);
            }
            done
        });
        // Let the first backup start before measuring.
        std::thread::sleep(Duration::from_millis(50));
        let rate = inserts(addr, token, args);
        stop.store(true, Ordering::SeqCst);
        (rate, backups.join().expect("backups"))
    });
    let _ = std::fs::remove_dir_all(&root);
    result
}
