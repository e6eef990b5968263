//! `GET /metrics` end to end: read by the Prometheus project's own parser
//! (`tests/python/parse_metrics.py`, installed by `scripts/setup-test-deps`),
//! its counters move by exactly the requests sent, its gauges follow the
//! streams that are open, `--metrics` decides who may read it, and every
//! reply carries a request id.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tidepool_tests::{both_runtimes, Runtime, TestServer};

/// One parsed sample.
#[derive(Debug, Clone)]
struct Sample {
    family_type: String,
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// Parses an exposition with `prometheus_client`'s parser.
fn parse(text: &str) -> Vec<Sample> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new("python3")
        .arg(format!("{dir}/python/parse_metrics.py"))
        .env("PYTHONPATH", format!("{dir}/python/site"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (run scripts/setup-test-deps first)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Sample {
                family_type: v["type"].as_str().unwrap().to_string(),
                name: v["name"].as_str().unwrap().to_string(),
                labels: v["labels"].as_object().unwrap().clone(),
                value: v["value"].as_f64().unwrap(),
            }
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels` (0 if none).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k) == Some(&json!(v)))
        })
        .map(|s| s.value)
        .sum()
}

fn scrape(srv: &TestServer, token: &str) -> Vec<Sample> {
    let r = srv.call(token, "GET", "/metrics", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&r.text())
}

both_runtimes!(metrics_count_exactly_what_was_sent, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = srv.token();
    // Only an admin key reads them by default.
    assert_eq!(srv.request("GET", "/metrics", &[], "").status, 401);

    let before = scrape(&srv, &token);
    let insert = [("route", "/api/insert/{collection}"), ("status", "200")];
    let missing = [("route", "/api/find/{collection}/{id}"), ("status", "404")];
    let base_inserts = value(&before, "tidepool_http_requests_total", &insert);
    let base_syncs = value(&before, "tidepool_fsyncs_total", &[]);

    for i in 0..4 {
        let r = srv.call(
            &token,
            "POST",
            "/api/insert/things",
            &json!({"n": i}).to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..2 {
        let r = srv.call(&token, "GET", "/api/find/things/nope", "");
        assert_eq!(r.status, 404);
    }
    assert_eq!(srv.call(&token, "GET", "/no/such/route", "").status, 404);

    let after = scrape(&srv, &token);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(delta("tidepool_http_requests_total", &insert), 4.0);
    assert_eq!(
        value(&after, "tidepool_http_requests_total", &insert) - base_inserts,
        4.0
    );
    assert_eq!(delta("tidepool_http_requests_total", &missing), 2.0);
    assert_eq!(
        delta("tidepool_http_requests_total", &[("route", "(unmatched)")]),
        1.0
    );
    // The first scrape itself is counted (after it was rendered).
    assert_eq!(
        delta(
            "tidepool_http_requests_total",
            &[("route", "/metrics"), ("status", "200")]
        ),
        1.0
    );
    let route = [("route", "/api/insert/{collection}")];
    assert_eq!(
        delta("tidepool_http_request_duration_seconds_count", &route),
        4.0
    );
    assert_eq!(
        delta(
            "tidepool_http_request_duration_seconds_bucket",
            &[("route", "/api/insert/{collection}"), ("le", "+Inf")]
        ),
        4.0
    );
    assert!(delta("tidepool_http_request_duration_seconds_sum", &route) > 0.0);
    // Each insert waited for its own durable write: at least one sync, and
    // at least as many commits as inserts made durable.
    assert!(value(&after, "tidepool_fsyncs_total", &[]) > base_syncs);
    assert!(
        delta("tidepool_group_commit_batches_sum", &[]) >= 4.0,
        "{:?}",
        after
            .iter()
            .filter(|s| s.name.contains("group_commit") || s.name.contains("fsync"))
            .collect::<Vec<_>>()
    );
    assert!(delta("tidepool_log_appended_bytes_total", &[]) > 0.0);
    let types: Vec<(&str, &str)> = after
        .iter()
        .map(|s| (s.name.as_str(), s.family_type.as_str()))
        .collect();
    assert!(types.contains(&("tidepool_http_requests_total", "counter")));
    assert!(types.contains(&("tidepool_fsync_duration_seconds_count", "histogram")));
    assert!(types.contains(&("tidepool_connections", "gauge")));

    // A chat answer the offline provider gives while its request runs is
    // counted too (its reply is ready before the request returns).
    let chat = srv.call(&token, "POST", "/api/chat", "{}");
    assert_eq!(chat.status, 200, "{}", chat.text());
    let chat_id = chat.json()["chat_id"].as_str().unwrap().to_string();
    let sent = srv.call(
        &token,
        "POST",
        &format!("/api/chat/{chat_id}/messages"),
        &json!({"message": "hello"}).to_string(),
    );
    assert_eq!(sent.status, 200, "{}", sent.text());
    let now = scrape(&srv, &token);
    let send = [
        ("route", "/api/chat/{chat_id}/messages"),
        ("method", "POST"),
    ];
    assert_eq!(value(&now, "tidepool_http_requests_total", &send), 1.0);
    assert_eq!(value(&now, "tidepool_replies_waiting", &[]), 0.0);
    assert_eq!(
        value(
            &now,
            "tidepool_chat_answers_total",
            &[("outcome", "complete")]
        ),
        1.0
    );
    assert_eq!(
        value(&now, "tidepool_chat_answer_duration_seconds_count", &[]),
        1.0
    );
    assert!(
        value(
            &now,
            "tidepool_chat_tokens_total",
            &[("kind", "completion")]
        ) > 0.0
    );

    // A live SSE subscription shows as a stream and a subscriber.
    let mut sse = TcpStream::connect(srv.addr).unwrap();
    write!(
        sse,
        "GET /api/subscribe/things?token={token} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = [0u8; 12];
    sse.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = scrape(&srv, &token);
        let streams = value(&now, "tidepool_streams", &[("protocol", "ekodb_sse")]);
        if streams == 1.0 {
            assert_eq!(value(&now, "tidepool_subscribers", &[]), 1.0);
            assert!(value(&now, "tidepool_connections", &[]) >= 2.0);
            break;
        }
        assert!(Instant::now() < deadline, "the stream never showed");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(sse);

    // Request ids: generated, different per request, or the client's own.
    let a = srv.call(&token, "GET", "/api/health", "");
    let b = srv.call(&token, "GET", "/api/health", "");
    let (ia, ib) = (a.header("x-request-id"), b.header("x-request-id"));
    assert!(
        ia.is_some_and(|i| !i.is_empty()) && ia != ib,
        "{ia:?} {ib:?}"
    );
    let mine = srv.request(
        "GET",
        "/api/health",
        &[("X-Request-Id", "trace-42.a:b")],
        "",
    );
    assert_eq!(mine.header("x-request-id"), Some("trace-42.a:b"));
    let unsafe_id = srv.request("GET", "/api/health", &[("X-Request-Id", "a b\"c")], "");
    assert_ne!(unsafe_id.header("x-request-id"), Some("a b\"c"));
});

both_runtimes!(metrics_setting_decides_who_reads_them, |rt: Runtime| {
    let open = TestServer::start_with(rt, &["--metrics", "public"]);
    let r = open.request("GET", "/metrics", &[], "");
    assert_eq!(r.status, 200);
    assert!(!parse(&r.text()).is_empty());
    drop(open);

    let off = TestServer::start_with(rt, &["--metrics", "off"]);
    let r = off.call(&off.token(), "GET", "/metrics", "");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("--metrics"), "{}", r.text());
});

both_runtimes!(
    debug_json_log_has_a_line_per_request_with_its_id,
    |rt: Runtime| {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(rt.binary())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(["--api-key", tidepool_tests::API_KEY])
            .args(["--log-level", "debug", "--log-format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr: std::net::SocketAddr = loop {
            let line = out.next().expect("the server printed its address").unwrap();
            if let Some((_, url)) = line.split_once("listening on http://") {
                break url.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Collect stderr on a thread (the pipe must keep draining).
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(
        b"GET /api/health?token=secret-value HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-7\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

        let deadline = Instant::now() + Duration::from_secs(10);
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("a log line for the request");
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            assert!(v["time"].is_string() && v["level"].is_string(), "{v}");
            if v["message"].as_str().unwrap_or_default().contains("req-7") {
                break v;
            }
        };
        assert_eq!(line["level"], "debug");
        let message = line["message"].as_str().unwrap();
        assert!(
            message.starts_with("request req-7 GET /api/health 200 "),
            "{message}"
        );
        assert!(
            !message.contains("secret-value"),
            "no query in the log: {message}"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
);

/// The bytes `/metrics` reports for `collection`'s `index` (`text` or
/// `vector`).
fn index_bytes(srv: &TestServer, collection: &str, index: &str) -> f64 {
    let samples = scrape(srv, &srv.token());
    value(
        &samples,
        "tidepool_search_index_bytes",
        &[("collection", collection), ("index", index)],
    )
}

/// Fills `vecs` with `n` pseudo-random `dim`-dimensional vectors (more than
/// a flat index holds, so a graph is built) and searches it once.
fn fill_and_search(srv: &TestServer, n: usize, dim: usize) {
    let token = srv.token();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f64 / (1u64 << 24) as f64 - 0.5
    };
    for chunk in 0..n.div_ceil(500) {
        let inserts: Vec<Value> = (chunk * 500..n.min((chunk + 1) * 500))
            .map(|i| {
                let v: Vec<f64> = (0..dim).map(|_| next()).collect();
                json!({"data": {"id": format!("v{i}"), "e": v}})
            })
            .collect();
        let body = json!({ "inserts": inserts }).to_string();
        let r = srv.call(&token, "POST", "/api/batch/insert/vecs", &body);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let q: Vec<f64> = (0..dim).map(|_| next()).collect();
    let r = srv.call(
        &token,
        "POST",
        "/api/search/vecs",
        &json!({"query": "", "vector": q, "vector_field": "e", "limit": 3}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["results"].as_array().map(Vec::len), Some(3));
}

// `--vector-half-rows` decides whether a cosine graph keeps a half-precision
// copy of its vectors, and `/metrics` shows what it costs: two bytes a
// component. Switched off, only the `f32` rows (and the graph) remain.
both_runtimes!(
    search_index_memory_follows_the_half_precision_setting,
    |rt: Runtime| {
        let (n, dim) = (2_100, 64);
        let mut bytes = Vec::new();
        for setting in ["on", "off"] {
            let srv = TestServer::start_with(rt, &["--vector-half-rows", setting]);
            assert_eq!(index_bytes(&srv, "vecs", "vector"), 0.0, "no index yet");
            fill_and_search(&srv, n, dim);
            bytes.push(index_bytes(&srv, "vecs", "vector"));
        }
        let (on, off) = (bytes[0], bytes[1]);
        let rows = (n * dim * 4) as f64;
        assert!(off >= rows, "the f32 rows are counted: {off} < {rows}");
        // The copy grows with the vectors (up to twice their bytes in
        // capacity), and the two graphs may differ a little in their edges.
        let copy = (n * dim * 2) as f64;
        assert!(
            on - off > copy * 0.9 && on - off < copy * 2.1,
            "on {on}, off {off}: the copy is {copy} bytes"
        );

        let (ok, _, err) = rt.subcommand(&["--vector-half-rows", "sometimes"]);
        assert!(!ok, "an unknown setting is refused");
        assert!(err.contains("--vector-half-rows"), "{err}");
    }
);

// Replaced records leave their old versions in the text index until a sweep
// drops them. Writes start one only once removed versions outnumber live
// records; a server with idle time sweeps a third of them away unasked, and
// its index shrinks without another write.
both_runtimes!(
    idle_time_sweeps_replaced_versions_out_of_the_text_index,
    |rt: Runtime| {
        let srv = TestServer::start(rt);
        let token = srv.token();
        let body = |i: usize, round: usize| {
            let word = ["zucchini", "xylophone"][round];
            format!(
                "note {i} about topic{} with a {word} in round {round}",
                i % 17
            )
        };
        let inserts: Vec<Value> = (0..600)
            .map(|i| json!({"data": {"id": format!("n{i}"), "body": body(i, 0)}}))
            .collect();
        let batch = json!({ "inserts": inserts }).to_string();
        let r = srv.call(&token, "POST", "/api/batch/insert/notes", &batch);
        assert_eq!(r.status, 200, "{}", r.text());
        let search = |q: &str| {
            let r = srv.call(
                &token,
                "POST",
                "/api/search/notes",
                &json!({"query": q}).to_string(),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["total"].as_u64()
        };
        assert_eq!(search("zucchini"), Some(600));
        let built = index_bytes(&srv, "notes", "text");
        assert!(built > 0.0);

        let updates: Vec<Value> = (0..200)
            .map(|i| json!({"id": format!("n{i}"), "data": {"body": body(i, 1)}}))
            .collect();
        let batch = json!({ "updates": updates }).to_string();
        let r = srv.call(&token, "PUT", "/api/batch/update/notes", &batch);
        assert_eq!(r.status, 200, "{}", r.text());
        let replaced = index_bytes(&srv, "notes", "text");
        assert!(
            replaced > built,
            "the new versions are indexed: {replaced} <= {built}"
        );

        let deadline = Instant::now() + Duration::from_secs(20);
        let mut now = replaced;
        while now >= replaced && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            now = index_bytes(&srv, "notes", "text");
        }
        assert!(now < replaced, "swept while idle: still {now} bytes");
        // The replaced versions' words are gone, the new ones found.
        assert_eq!(search("zucchini"), Some(400));
        assert_eq!(search("xylophone"), Some(200));
    }
);
