//! The transfer workload (issue 11): N connections each move a random amount
//! between two random accounts in a `Serializable` transaction (read both,
//! write both, commit), for `--seconds`. Reports committed transactions per
//! second, the abort rate (409 at a read or at commit) and commit latency, then
//! checks the invariant: the total of all balances is unchanged.
//!
//! ```sh
//! cargo build --release -p tidepool-smol -p tidepool-benches
//! target/release/txbench --spawn tidepool --connections 64 --accounts 1000 --seconds 10
//! ```

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tidepool_benches::http::{json_str, AsyncConn, Conn};
use tidepool_benches::SpawnedServer;

const START_BALANCE: i64 = 1_000;

struct Args {
    spawn: String,
    connections: usize,
    accounts: usize,
    seconds: u64,
    isolation: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        spawn: "tidepool".into(),
        connections: 64,
        accounts: 1_000,
        seconds: 10,
        isolation: "Serializable".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--spawn" => a.spawn = val(),
            "--connections" => a.connections = val().parse().expect("number"),
            "--accounts" => a.accounts = val().parse().expect("number"),
            "--seconds" => a.seconds = val().parse().expect("number"),
            "--isolation" => a.isolation = val(),
            "--help" | "-h" => {
                println!(
                    "txbench [--spawn tidepool|tidepool-std] [--connections 64] [--accounts 1000] [--seconds 10] [--isolation Serializable]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown flag {other} (see --help)"),
        }
    }
    a
}

/// A record's `balance` from a find-by-id reply.
fn balance(body: &[u8]) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let b = &v["balance"];
    b.as_i64().or_else(|| b["value"].as_i64())
}

#[derive(Default)]
struct Tally {
    committed: Cell<u64>,
    aborted: Cell<u64>,
    errors: Cell<u64>,
    latencies_us: std::cell::RefCell<Vec<u32>>,
}

/// One transfer; `Ok(true)` committed, `Ok(false)` aborted by a conflict.
async fn transfer(
    c: &mut AsyncConn,
    token: &str,
    isolation: &str,
    from: usize,
    to: usize,
    amount: i64,
) -> Result<bool, String> {
    let begin = format!(r#"{{"isolation_level":"{isolation}"}}"#);
    if c.call("POST", "/api/transactions", token, &begin).await != 200 {
        return Err(format!("begin: {}", String::from_utf8_lossy(c.body())));
    }
    let tx = json_str(c.body(), "transaction_id").ok_or("no transaction id")?;
    let mut balances = [0i64; 2];
    for (slot, acct) in [from, to].into_iter().enumerate() {
        let path = format!("/api/find/acct/a{acct}?transaction_id={tx}");
        match c.call("GET", &path, token, "").await {
            200 => balances[slot] = balance(c.body()).ok_or("no balance")?,
            409 => return Ok(false),
            s => return Err(format!("read {s}: {}", String::from_utf8_lossy(c.body()))),
        }
    }
    for (acct, value) in [(from, balances[0] - amount), (to, balances[1] + amount)] {
        let path = format!("/api/update/acct/a{acct}?transaction_id={tx}");
        let body = format!(r#"{{"balance":{value}}}"#);
        match c.call("PUT", &path, token, &body).await {
            200 => {}
            409 => return Ok(false),
            s => return Err(format!("write {s}: {}", String::from_utf8_lossy(c.body()))),
        }
    }
    match c
        .call("POST", &format!("/api/transactions/{tx}/commit"), token, "")
        .await
    {
        200 => Ok(true),
        409 => Ok(false),
        s => Err(format!("commit {s}: {}", String::from_utf8_lossy(c.body()))),
    }
}

fn main() {
    let args = parse_args();
    let key = "txbench-key";
    let server = SpawnedServer::start(&args.spawn, "txbench", &["--api-key", key]);
    let addr = server.addr.clone();
    let mut setup = Conn::open(&addr);
    let (status, body) = setup.call(
        "POST",
        "/api/auth/token",
        "",
        &format!(r#"{{"api_key":"{key}"}}"#),
    );
    assert_eq!(status, 200, "token: {}", String::from_utf8_lossy(&body));
    let token = json_str(&body, "token").expect("token");
    for chunk in (0..args.accounts).collect::<Vec<_>>().chunks(1_000) {
        let items: Vec<String> = chunk
            .iter()
            .map(|i| format!(r#"{{"data":{{"id":"a{i}","balance":{START_BALANCE}}}}}"#))
            .collect();
        let body = format!(r#"{{"inserts":[{}]}}"#, items.join(","));
        let (status, resp) = setup.call("POST", "/api/batch/insert/acct", &token, &body);
        assert_eq!(status, 200, "accounts: {}", String::from_utf8_lossy(&resp));
    }

    let tally = Rc::new(Tally::default());
    let stop = Rc::new(Cell::new(false));
    let ex = smol::LocalExecutor::new();
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|w| {
            let (tally, stop) = (tally.clone(), stop.clone());
            let (addr, token, isolation) = (addr.clone(), token.clone(), args.isolation.clone());
            let accounts = args.accounts;
            ex.spawn(async move {
                let mut c = AsyncConn::open(&addr).await;
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                while !stop.get() {
                    let from = (next() % accounts as u64) as usize;
                    let to = (from + 1 + (next() % (accounts as u64 - 1)) as usize) % accounts;
                    let amount = 1 + (next() % 10) as i64;
                    let t = Instant::now();
                    match transfer(&mut c, &token, &isolation, from, to, amount).await {
                        Ok(true) => {
                            tally.committed.set(tally.committed.get() + 1);
                            tally
                                .latencies_us
                                .borrow_mut()
                                .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                        Ok(false) => tally.aborted.set(tally.aborted.get() + 1),
                        Err(e) => {
                            if tally.errors.get() == 0 {
                                eprintln!("first error: {e}");
                            }
                            tally.errors.set(tally.errors.get() + 1);
                        }
                    }
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
    let secs = start.elapsed().as_secs_f64();

    // The invariant: money moved, none made or lost.
    let (status, body) = setup.call("POST", "/api/find/acct", &token, "{}");
    assert_eq!(status, 200);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("records");
    let total: i64 = rows
        .iter()
        .map(|r| {
            let b = &r["balance"];
            b.as_i64().or_else(|| b["value"].as_i64()).expect("balance")
        })
        .sum();
    let want = START_BALANCE * args.accounts as i64;

    let (committed, aborted) = (tally.committed.get(), tally.aborted.get());
    let mut lat = tally.latencies_us.borrow_mut();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    println!(
        "{} ({}), {} connections, {} accounts, {:.1} s",
        args.spawn, args.isolation, args.connections, args.accounts, secs
    );
    println!(
        "committed {:.0} tx/s ({committed}), aborted {:.1} % ({aborted}), errors {}",
        committed as f64 / secs,
        100.0 * aborted as f64 / (committed + aborted).max(1) as f64,
        tally.errors.get()
    );
    println!(
        "commit latency p50 {:.2} ms, p99 {:.2} ms",
        pct(0.5),
        pct(0.99)
    );
    println!(
        "invariant: total {total}, expected {want}: {}",
        if total == want { "OK" } else { "VIOLATED" }
    );
    drop(server);
    if total != want {
        std::process::exit(1);
    }
}
