//! Stored functions (issue 13), two measurements in one run:
//!
//! 1. **Interpreter overhead per stage**, in process: a function of 1,000
//!    cheap stages (SetField, If, Count, Project in turn) run on a fresh
//!    engine, nanoseconds per stage (target < 2 µs).
//! 2. **A 5-stage function over HTTP** (Query, Project, If, Insert, Return)
//!    against a spawned server, runs/s, next to the same operations sent as
//!    separate requests (a find, then an insert; the transforms done by the
//!    client) by the same connections in the same run.
//!
//! ```sh
//! cargo build --release -p tidepool-smol -p tidepool-benches
//! target/release/function_bench --connections 32 --seconds 5
//! ```

use serde_json::{json, Map, Value};
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidepool_benches::http::{json_str, AsyncConn, Conn};
use tidepool_benches::SpawnedServer;
use tidepool_core::engine::Engine;
use tidepool_core::functions::definition::{self, Definition};
use tidepool_core::functions::interp::{Library, World};
use tidepool_core::functions::{Budget, Poll, Run};
use tidepool_core::time::Timestamp;

struct Args {
    spawn: String,
    connections: usize,
    seconds: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        spawn: "tidepool".into(),
        connections: 32,
        seconds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--spawn" => a.spawn = val(),
            "--connections" => a.connections = val().parse().expect("number"),
            "--seconds" => a.seconds = val().parse().expect("number"),
            "--help" | "-h" => {
                println!("function_bench [--spawn tidepool|tidepool-std] [--connections 32] [--seconds 5]");
                std::process::exit(0);
            }
            other => panic!("unknown flag {other} (see --help)"),
        }
    }
    a
}

struct NoLibrary;

impl Library for NoLibrary {
    fn function(&mut self, _: &Engine, _: &str) -> Option<Arc<Definition>> {
        None
    }
}

/// Nanoseconds per stage of a long pipeline of cheap stages.
fn per_stage_overhead() -> f64 {
    let mut stages = Vec::new();
    for i in 0..250 {
        stages.push(json!({"type": "SetField", "field": "f", "value": i}));
        stages.push(json!({"type": "If", "condition": {"type": "HasRecords"},
            "then_functions": [], "else_functions": []}));
        stages.push(json!({"type": "Count", "output_field": "n"}));
        stages.push(json!({"type": "Project", "fields": ["n"], "exclude": false}));
    }
    // The If's empty branch is a stage of its own frame: count what ran.
    let def = definition::parse(&json!({"label": "cheap", "name": "cheap", "functions": stages}))
        .expect("definition");
    let now = Timestamp::from_secs(1_767_225_600);
    let mut engine = Engine::new(1);
    let mut random = |out: &mut [u8]| out.fill(7);
    let budget = Budget {
        max_steps: 10_000,
        ..Budget::default()
    };
    let mut run_once = || -> usize {
        let mut run = Run::new(&def, Map::new(), Arc::default(), budget, now).expect("run");
        let mut world = World {
            engine: &mut engine,
            library: &mut NoLibrary,
            now,
            random: &mut random,
        };
        match run.poll(&mut world) {
            Poll::Done(Ok(f)) => f.stats.stages_executed,
            Poll::Done(Err(e)) => panic!("{}", e.message),
            Poll::Wait(_) => panic!("no effects here"),
        }
    };
    let per_run = run_once();
    let runs = 2_000;
    let t = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(run_once());
    }
    t.elapsed().as_nanos() as f64 / (runs * per_run) as f64
}

fn five_stages() -> Value {
    json!({
        "label": "order_summary",
        "name": "Orders of a customer, audited",
        "parameters": {"customer": {"required": true}},
        "functions": [
            {"type": "Query", "collection": "orders", "limit": 20,
             "filter": {"type": "Condition", "content":
                {"field": "customer", "operator": "Eq", "value": "{{customer}}"}}},
            {"type": "Project", "fields": ["amount"], "exclude": false},
            {"type": "If", "condition": {"type": "HasRecords"},
             "then_functions": [{"type": "SetField", "field": "found", "value": true}],
             "else_functions": [{"type": "SetField", "field": "found", "value": false}]},
            {"type": "Insert", "collection": "audit",
             "record": {"customer": "{{customer}}", "found": "{{found}}"}},
            {"type": "Return", "fields": {"customer": "{{customer}}", "found": "{{found}}"}}
        ]
    })
}

/// One unit of work the HTTP way: `true` for the stored function.
async fn once(c: &mut AsyncConn, token: &str, customer: u64, function: bool) -> Result<(), String> {
    if function {
        let body = format!(r#"{{"customer":"c{customer}"}}"#);
        let s = c
            .call("POST", "/api/functions/order_summary", token, &body)
            .await;
        return (s == 200)
            .then_some(())
            .ok_or_else(|| format!("call {s}: {}", String::from_utf8_lossy(c.body())));
    }
    let find = format!(
        r#"{{"filter":{{"type":"Condition","content":{{"field":"customer","operator":"Eq","value":"c{customer}"}}}},"limit":20,"select_fields":["amount"]}}"#
    );
    let s = c.call("POST", "/api/find/orders", token, &find).await;
    if s != 200 {
        return Err(format!("find {s}: {}", String::from_utf8_lossy(c.body())));
    }
    let found = c.body().len() > 2;
    let insert = format!(r#"{{"customer":"c{customer}","found":{found}}}"#);
    let s = c.call("POST", "/api/insert/audit", token, &insert).await;
    (s == 200)
        .then_some(())
        .ok_or_else(|| format!("insert {s}: {}", String::from_utf8_lossy(c.body())))
}

/// Units of work per second over `connections` for `seconds`.
fn drive(addr: &str, token: &str, args: &Args, function: bool) -> f64 {
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
                let mut n = w as u64;
                while !stop.get() {
                    n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    if let Err(e) = once(&mut c, &token, (n >> 33) % 200, function).await {
                        panic!("{e}");
                    }
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
    let ns = per_stage_overhead();
    println!("interpreter overhead: {ns:.0} ns per stage (1,000-stage function, in process)");

    let key = "function-bench-key";
    let server = SpawnedServer::start(&args.spawn, "function_bench", &["--api-key", key]);
    let mut setup = Conn::open(&server.addr);
    let (status, body) = setup.call(
        "POST",
        "/api/auth/token",
        "",
        &format!(r#"{{"api_key":"{key}"}}"#),
    );
    assert_eq!(status, 200, "token: {}", String::from_utf8_lossy(&body));
    let token = json_str(&body, "token").expect("token");
    let orders: Vec<Value> = (0..2_000)
        .map(|i| json!({"data": {"customer": format!("c{}", i % 150), "amount": i}}))
        .collect();
    let (status, resp) = setup.call(
        "POST",
        "/api/batch/insert/orders",
        &token,
        &json!({"inserts": orders}).to_string(),
    );
    assert_eq!(status, 200, "orders: {}", String::from_utf8_lossy(&resp));
    let (status, resp) = setup.call("POST", "/api/functions", &token, &five_stages().to_string());
    assert_eq!(status, 200, "save: {}", String::from_utf8_lossy(&resp));

    // Alternate so drift on a shared machine hits both alike.
    let mut rates: HashMap<bool, Vec<f64>> = HashMap::new();
    for round in 0..2 {
        for function in [round == 0, round != 0] {
            rates
                .entry(function)
                .or_default()
                .push(drive(&server.addr, &token, &args, function));
        }
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let (f, s) = (mean(&rates[&true]), mean(&rates[&false]));
    println!(
        "5-stage function over HTTP: {f:.0} runs/s; the same as separate requests (find + insert): {s:.0}/s; ratio {:.2}x ({} connections, {} s x 2 each)",
        f / s,
        args.connections,
        args.seconds
    );
}
