//! Nobody waits for anybody: while one client runs a long query (a scan with
//! a costly filter, a sort with a deep skip, a large join), other clients'
//! health checks, lookups and writes are answered at once, and the long
//! query still sees the records as they were when it started. Queries have a
//! time budget (`--max-query-time`) besides their work budget.

use serde_json::{json, Value};
use std::thread;
use std::time::{Duration, Instant};
use tidepool_tests::{both_runtimes, HttpReply, Runtime, TestServer};

/// Records in the big collection.
const RECORDS: usize = 60_000;
/// How fast other clients are answered while a long query runs (the
/// issue's bar): 95 % of their calls within `PROMPT`, every one within
/// `MAX_STALL`. A lookup costs well under a millisecond and the long queries
/// seconds; the allowance for the slowest 5 % is for a loaded CI machine.
const PROMPT: Duration = Duration::from_millis(50);
const MAX_STALL: Duration = Duration::from_millis(500);

/// Checks the other clients' latencies (sorted) while `what` ran for `took`.
fn assert_prompt(what: &str, took: Duration, probes: &[Duration]) {
    let (Some(slowest), Some(median)) = (probes.last(), probes.get(probes.len() / 2)) else {
        panic!("{what} ended before anything else happened ({took:?})");
    };
    let p95 = probes[probes.len() * 95 / 100];
    assert!(
        p95 < PROMPT && *slowest < MAX_STALL,
        "{what} ran {took:?}; others waited p95 {p95:?}, slowest {slowest:?} ({} calls)",
        probes.len()
    );
    eprintln!(
        "{what}: ran {took:?}; {} calls meanwhile, median {median:?}, p95 {p95:?}, slowest {slowest:?}",
        probes.len()
    );
}

/// `n` numbered records with a name and a group, 2,000 per batch.
fn fill(srv: &TestServer, token: &str, collection: &str, n: usize) {
    fill_with(
        srv,
        token,
        collection,
        n,
        |i| json!({"n": i, "name": format!("record {i}"), "group": i % 1000}),
    );
}

/// `n` records made by `record`, 2,000 per batch.
fn fill_with(
    srv: &TestServer,
    token: &str,
    collection: &str,
    n: usize,
    record: impl Fn(usize) -> Value,
) {
    for start in (0..n).step_by(2000) {
        let inserts: Vec<Value> = (start..(start + 2000).min(n))
            .map(|i| json!({ "data": record(i) }))
            .collect();
        let r = srv.call(
            token,
            "POST",
            &format!("/api/batch/insert/{collection}"),
            &json!({ "inserts": inserts }).to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// A number as a find returns it: plain, or typed (`{"type", "value"}`).
fn number(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v["value"].as_i64())
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

/// A filter that examines every record `conditions` times and matches none.
fn costly_filter(conditions: usize) -> Value {
    json!({"type": "Logical", "content": {
        "operator": "Or",
        "expressions": (0..conditions).map(|i| json!({"type": "Condition", "content": {
            "field": "name", "operator": "Contains", "value": format!("absent {i}")}})).collect::<Vec<_>>()
    }})
}

/// Runs `query` on another thread; meanwhile probes the server as other
/// clients would (health, a lookup, an insert elsewhere) until it answers.
/// Returns the query's reply, how long it took, and how long each probe
/// took (sorted).
fn probe_during(
    srv: &TestServer,
    token: &str,
    query: (&str, Value),
    lookup: &str,
) -> (HttpReply, Duration, Vec<Duration>) {
    let (path, body) = query;
    let started = Instant::now();
    thread::scope(|scope| {
        let long = scope.spawn(|| {
            let r = srv.call(token, "POST", path, &body.to_string());
            (r, started.elapsed())
        });
        // Let the query start.
        thread::sleep(Duration::from_millis(100));
        let mut probes = Vec::new();
        while !long.is_finished() {
            for (method, path, body) in [
                ("GET", lookup.to_string(), String::new()),
                ("GET", "/api/health".to_string(), String::new()),
                (
                    "POST",
                    "/api/insert/other".to_string(),
                    json!({"x": probes.len()}).to_string(),
                ),
            ] {
                let t = Instant::now();
                let r = srv.call(token, method, &path, &body);
                probes.push(t.elapsed());
                assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let (reply, took) = long.join().unwrap();
        probes.sort_unstable();
        (reply, took, probes)
    })
}

both_runtimes!(long_queries_do_not_stall_other_clients, |rt: Runtime| {
    let srv = TestServer::start_with(rt, &["--max-query-work", "1000000000000"]);
    let token = srv.token();
    fill(&srv, &token, "big", RECORDS);
    fill(&srv, &token, "side", 1000);
    let some = srv.call(&token, "POST", "/api/find/big", r#"{"limit": 1}"#);
    let id = some.json()[0]["id"].as_str().unwrap().to_string();
    let lookup = format!("/api/find/big/{id}");

    let queries = [
        (
            "scan",
            "/api/find/big",
            json!({"filter": costly_filter(600)}),
        ),
        (
            "deep skip and sort",
            "/api/find/big",
            json!({"filter": costly_filter(200), "sort": [{"field": "name", "ascending": false}], "skip": RECORDS - 5, "limit": 10}),
        ),
        (
            "join",
            "/api/find/big",
            json!({"filter": {"type": "Logical", "content": {"operator": "Or", "expressions": [
                costly_filter(300),
                {"type": "Condition", "content": {"field": "n", "operator": "LessThan", "value": 1000}}]}},
                "join": {"collections": ["side"], "local_field": "group", "foreign_field": "group", "as_field": "same"}}),
        ),
    ];
    for (what, path, body) in queries {
        let (reply, took, probes) = probe_during(&srv, &token, (path, body), &lookup);
        assert_eq!(reply.status, 200, "{what}: {}", reply.text());
        assert_prompt(what, took, &probes);
    }
});

both_runtimes!(
    a_query_sees_the_records_as_they_were_when_it_started,
    |rt: Runtime| {
        let srv = TestServer::start_with(rt, &["--max-query-work", "1000000000000"]);
        let token = srv.token();
        fill(&srv, &token, "big", RECORDS);
        // A long query matching every record, while another client inserts
        // numbered records into the same collection: the answer holds the
        // records of one moment, so exactly the inserts acknowledged before
        // some point, and none after.
        let everything = json!({"filter": {"type": "Logical", "content": {
        "operator": "Or",
        "expressions": [costly_filter(200), {"type": "Condition", "content": {
            "field": "n", "operator": "GreaterThanOrEqual", "value": 0}}]
    }}, "select_fields": ["n"]});
        let (reply, added) = thread::scope(|scope| {
            let long =
                scope.spawn(|| srv.call(&token, "POST", "/api/find/big", &everything.to_string()));
            let mut added = 0;
            while !long.is_finished() {
                let n = 1_000_000 + added;
                let r = srv.call(
                    &token,
                    "POST",
                    "/api/insert/big",
                    &json!({ "n": n }).to_string(),
                );
                assert_eq!(r.status, 200, "{}", r.text());
                added += 1;
                thread::sleep(Duration::from_millis(5));
            }
            (long.join().unwrap(), added)
        });
        assert_eq!(reply.status, 200, "{}", reply.text());
        let rows = reply.json();
        let mut late: Vec<i64> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| number(&r["n"]))
            .filter(|n| *n >= 1_000_000)
            .map(|n| n - 1_000_000)
            .collect();
        late.sort_unstable();
        let seen = late.len();
        assert_eq!(rows.as_array().unwrap().len(), RECORDS + seen);
        assert_eq!(
            late,
            (0..seen as i64).collect::<Vec<_>>(),
            "a prefix of the inserts"
        );
        assert!(
            seen < added,
            "all {added} inserts made while the query ran are in its answer"
        );
    }
);

both_runtimes!(a_query_past_its_time_budget_is_stopped, |rt: Runtime| {
    let srv = TestServer::start_with(
        rt,
        &["--max-query-work", "1000000000000", "--max-query-time", "1"],
    );
    let token = srv.token();
    fill(&srv, &token, "big", RECORDS);
    let t = Instant::now();
    let r = srv.call(
        &token,
        "POST",
        "/api/find/big",
        &json!({"filter": costly_filter(20_000)}).to_string(),
    );
    let took = t.elapsed();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("--max-query-time"), "{}", r.text());
    assert!(
        took < Duration::from_secs(10),
        "stopped only after {took:?}"
    );
    // Distinct values have the same budget.
    let r = srv.call(
        &token,
        "POST",
        "/api/distinct/big/name",
        &json!({"filter": costly_filter(20_000)}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("--max-query-time"), "{}", r.text());
    // The server is fine afterwards.
    let r = srv.call(&token, "POST", "/api/find/big", r#"{"limit": 2}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().unwrap().len(), 2);
});

both_runtimes!(
    the_first_search_builds_its_index_outside_the_lock,
    |rt: Runtime| {
        let srv = TestServer::start(rt);
        let token = srv.token();
        // Long texts, so the first index takes a while to build.
        let words = [
            "river", "otter", "stone", "lantern", "harbor", "meadow", "copper", "willow", "signal",
            "garden", "thunder", "marble", "orchid", "falcon", "ember", "glacier",
        ];
        fill_with(&srv, &token, "texts", RECORDS, |i| {
            let text: Vec<String> = (0..60)
                .map(|j| format!("{}{}", words[(i * 7 + j * 13) % words.len()], (i + j) % 97))
                .collect();
            json!({"n": i, "body": text.join(" ")})
        });
        let some = srv.call(&token, "POST", "/api/find/texts", r#"{"limit": 1}"#);
        let id = some.json()[0]["id"].as_str().unwrap().to_string();
        let (reply, took, probes) = probe_during(
            &srv,
            &token,
            ("/api/search/texts", json!({"query": "otter5", "limit": 5})),
            &format!("/api/find/texts/{id}"),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            reply.json()["total"].as_u64().unwrap() > 0,
            "{}",
            reply.text()
        );
        assert_prompt("first search (index build)", took, &probes);
        let r = srv.call(
            &token,
            "POST",
            "/api/insert/texts",
            &json!({"body": "a quokka"}).to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let found = srv.call(
            &token,
            "POST",
            "/api/search/texts",
            r#"{"query": "quokka"}"#,
        );
        assert_eq!(found.json()["total"], 1, "{}", found.text());
    }
);

// Over the ekoDB WebSocket: a long query on a socket does not hold up the
// same socket's next calls (replies carry their message id and come as
// they are ready), nor other clients.
both_runtimes!(
    a_long_query_over_the_websocket_holds_up_nobody,
    |rt: Runtime| {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Message;

        let srv = TestServer::start_with(rt, &["--max-query-work", "1000000000000"]);
        let token = srv.token();
        fill(&srv, &token, "big", RECORDS);
        let some = srv.call(&token, "POST", "/api/find/big", r#"{"limit": 1}"#);
        let id = some.json()[0]["id"].as_str().unwrap().to_string();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let mut req = format!("ws://{}/api/ws", srv.addr)
                    .into_client_request()
                    .unwrap();
                req.headers_mut()
                    .insert("Authorization", format!("Bearer {token}").parse().unwrap());
                let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
                let send = |v: Value| Message::Text(v.to_string().into());
                let started = Instant::now();
                ws.send(send(
                    json!({"type": "Query", "messageId": "long", "payload": {
                "collection": "big", "filter": costly_filter(600)}}),
                ))
                .await
                .unwrap();
                ws.send(send(
                    json!({"type": "FindById", "messageId": "quick", "payload": {
                "collection": "big", "id": id}}),
                ))
                .await
                .unwrap();
                let mut order = Vec::new();
                while order.len() < 2 {
                    let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
                        .await
                        .expect("a reply within a minute")
                        .expect("the socket is open")
                        .unwrap();
                    let Message::Text(t) = msg else { continue };
                    let v: Value = serde_json::from_str(&t).unwrap();
                    let Some(mid) = v["messageId"].as_str() else {
                        continue;
                    };
                    assert_eq!(v["type"], "Success", "{v}");
                    order.push((mid.to_string(), started.elapsed()));
                }
                assert_eq!(order[0].0, "quick", "{order:?}");
                assert_eq!(order[1].0, "long", "{order:?}");
                assert!(
                    order[0].1 < MAX_STALL && order[1].1 > order[0].1 * 2,
                    "{order:?}"
                );
                eprintln!("websocket: {order:?}");
            });
    }
);
