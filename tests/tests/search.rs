//! Search and embeddings end to end: the official client's `search`,
//! `text_search`, `hybrid_search`, `embed` and `embed_batch` against both
//! runtimes; indexes that follow writes and restarts; the OpenAI-compatible
//! provider path against a fake provider on loopback that speaks the real wire
//! format (and fails the ways real ones do).

use ekodb_client::{Client, FieldType, Record, SearchQuery, SerializationFormat};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidepool_tests::{both_runtimes, Runtime, TestServer, API_KEY};

#[path = "common/certs.rs"]
mod certs;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

fn client(srv: &TestServer, fmt: SerializationFormat) -> Client {
    Client::builder()
        .base_url(srv.base_url())
        .api_key(API_KEY)
        .serialization_format(fmt)
        .max_retries(0)
        .build()
        .expect("client")
}

fn doc(title: &str, body: &str, category: &str, v: [f64; 3]) -> Record {
    Record::new()
        .field("title", title)
        .field("body", body)
        .field("category", category)
        .field("embedding", FieldType::vector(v.to_vec()))
}

async fn seed(c: &Client) -> Vec<String> {
    let docs = [
        doc(
            "Rust Programming",
            "Systems programming in Rust for engineers",
            "ml",
            [1.0, 0.0, 0.0],
        ),
        doc(
            "Cooking at home",
            "Recipes and kitchen programs",
            "food",
            [0.0, 1.0, 0.0],
        ),
        doc(
            "Gardening",
            "Rust on garden tools and how to remove it",
            "home",
            [0.0, 0.0, 1.0],
        ),
        doc(
            "Machine learning",
            "Engineers training machine learning models",
            "ml",
            [0.9, 0.1, 0.0],
        ),
    ];
    let mut ids = Vec::new();
    for d in docs {
        let r = c.insert("articles", d, None).await.expect("insert");
        ids.push(r.get_string("id").expect("id").to_string());
    }
    ids
}

both_runtimes!(official_client_search_modes, |rt: Runtime| {
    for fmt in [SerializationFormat::MessagePack, SerializationFormat::Json] {
        let mut srv = TestServer::start(rt);
        block_on(async {
            let c = client(&srv, fmt);
            let ids = seed(&c).await;
            // Text: the weighted title match ranks first; matched_fields says where.
            let r = c
                .search(
                    "articles",
                    SearchQuery::new("rust")
                        .fields("title,body")
                        .weights("title:3"),
                )
                .await
                .expect("text search");
            assert_eq!(r.total, 2);
            assert_eq!(r.results[0].record["id"], ids[0]);
            assert_eq!(r.results[0].matched_fields, vec!["body", "title"]);
            assert!(r.results[0].score > r.results[1].score);
            // Typo tolerance within distance 2, with the client's own knobs.
            let r = c
                .search(
                    "articles",
                    SearchQuery::new("enginers")
                        .fuzzy(true)
                        .max_edit_distance(2),
                )
                .await
                .unwrap();
            let found: Vec<&Value> = r.results.iter().map(|h| &h.record["id"]).collect();
            assert!(
                found.contains(&&json!(ids[0])) && found.contains(&&json!(ids[3])),
                "{found:?}"
            );
            // Pre-filter, projection, limit.
            let r = c
                .search(
                    "articles",
                    SearchQuery::new("engineers")
                        .filters(json!({"type":"Condition","content":{"field":"category","operator":"Eq","value":"ml"}}))
                        .select_fields(vec!["title".into()])
                        .limit(1),
                )
                .await
                .unwrap();
            assert_eq!(r.results.len(), 1);
            assert_eq!(r.total, 2);
            let rec = r.results[0].record.as_object().unwrap();
            assert!(
                rec.contains_key("title") && !rec.contains_key("body"),
                "{rec:?}"
            );
            // Vector: nearest first, similarity 1.0 for the identical vector.
            let r = c
                .search(
                    "articles",
                    SearchQuery::new("").vector(vec![1.0, 0.0, 0.0]).vector_k(2),
                )
                .await
                .unwrap();
            assert_eq!(r.results[0].record["id"], ids[0]);
            assert!((r.results[0].score - 1.0).abs() < 1e-6);
            assert_eq!(r.results[1].record["id"], ids[3]);
            assert!(r.results[0].matched_fields.is_empty());
            // Hybrid via the helper: text on "garden" + a vector near doc 2.
            let hits = c
                .hybrid_search("articles", "garden", vec![0.0, 0.0, 1.0], 3)
                .await
                .unwrap();
            assert_eq!(hits[0].get_string("id"), Some(ids[2].as_str()));
            assert!(hits[0].get("_score").is_some());
            let hits = c.text_search("articles", "kitchen", 5).await.unwrap();
            assert_eq!(hits.len(), 1);

            // Indexes follow writes: update, delete, and a restart.
            c.update(
                "articles",
                &ids[1],
                Record::new().field("body", "now about rust pans"),
                None,
            )
            .await
            .unwrap();
            let r = c
                .search("articles", SearchQuery::new("kitchen"))
                .await
                .unwrap();
            assert_eq!(r.total, 0, "the old text is gone from the index");
            let r = c
                .search("articles", SearchQuery::new("pans"))
                .await
                .unwrap();
            assert_eq!(r.results[0].record["id"], ids[1]);
            c.delete("articles", &ids[0], None).await.unwrap();
            let r = c
                .search(
                    "articles",
                    SearchQuery::new("").vector(vec![1.0, 0.0, 0.0]).limit(1),
                )
                .await
                .unwrap();
            assert_eq!(
                r.results[0].record["id"], ids[3],
                "deleted records never come back"
            );
        });
        srv.restart();
        block_on(async {
            let c = client(&srv, fmt);
            let r = c
                .search("articles", SearchQuery::new("pans"))
                .await
                .unwrap();
            assert_eq!(r.total, 1, "rebuilt after restart");
            let r = c
                .search("articles", SearchQuery::new("rust programming"))
                .await
                .unwrap();
            assert!(r
                .results
                .iter()
                .all(|h| h.record["title"]["value"] != "Rust Programming"));
        });
    }
});

both_runtimes!(search_bad_input_is_400, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = srv.token();
    let r = srv.call(
        &token,
        "POST",
        "/api/insert/v",
        r#"{"e":{"type":"Vector","value":[1,2,3]},"t":"hello"}"#,
    );
    assert_eq!(r.status, 200);
    let check = |body: &str, needle: &str| {
        let r = srv.call(&token, "POST", "/api/search/v", body);
        assert_eq!(r.status, 400, "{body} -> {}", r.text());
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{body}: {msg}");
    };
    check(
        r#"{"query":"","vector":[1,2],"vector_field":"e"}"#,
        "dimension",
    );
    check(
        r#"{"query":"","vector":[1,"x",3],"vector_field":"e"}"#,
        "finite numbers",
    );
    check(
        r#"{"query":"","vector":[1,2,3],"vector_field":"e","vector_metric":"manhattan"}"#,
        "unknown vector metric",
    );
    check(r#"{"query":"hello","limit":-1}"#, "limit");
    check(
        r#"{"query":"hello","fuzzy":true,"max_edit_distance":50}"#,
        "max_edit_distance",
    );
    check(r#"{"query":"hello","language":"klingon"}"#, "klingon");
    check(r#"{"query":""}"#, "needs a `query`");
    check(
        r#"{"query":"hello","filters":{"type":"Condition","content":{"field":"t","operator":"Like","value":1}}}"#,
        "Like",
    );
    // NaN cannot be written in JSON, but MessagePack carries it: refused too.
    let mut body = rmp_serde::to_vec_named(&json!({"query": "", "vector_field": "e"})).unwrap();
    body[0] = 0x83; // three entries instead of two: append `vector: [NaN]`
    body.extend_from_slice(&[0xa6]);
    body.extend_from_slice(b"vector");
    body.extend_from_slice(&[0x91, 0xcb]);
    body.extend_from_slice(&f64::NAN.to_bits().to_be_bytes());
    let auth = format!("Bearer {token}");
    let mut head = format!(
        "POST /api/search/v HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Type: application/msgpack\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    head.extend_from_slice(&body);
    let r = tidepool_tests::HttpReply::parse(&srv.raw(&head)).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    // An unknown collection has no results (not an error).
    let r = srv.call(
        &token,
        "POST",
        "/api/search/nothing_here",
        r#"{"query":"x"}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["results"], json!([]));
});

both_runtimes!(offline_embeddings_by_default, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv, SerializationFormat::Json);
        let a = c
            .embed("the quick brown fox", "text-embedding-3-small")
            .await
            .expect("embed");
        assert_eq!(a.len(), 384);
        let again = c.embed("the quick brown fox", "").await.unwrap();
        assert_eq!(a, again, "deterministic");
        let batch = c
            .embed_batch(
                vec![
                    "the quick brown fox".into(),
                    "a lazy dog".into(),
                    "quick brown foxes".into(),
                ],
                "",
            )
            .await
            .unwrap();
        assert_eq!(batch.len(), 3);
        let cos = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
        assert!(
            cos(&batch[0], &batch[2]) > cos(&batch[0], &batch[1]),
            "shared words are closer"
        );
        // Embed, store, and search with the same embedder.
        c.insert(
            "notes",
            Record::new()
                .field("text", "brown fox")
                .field("embedding", FieldType::vector(batch[0].clone())),
            None,
        )
        .await
        .unwrap();
        let r = c
            .search("notes", SearchQuery::new("").vector(a.clone()))
            .await
            .unwrap();
        assert_eq!(r.results.len(), 1);
    });
    let token = srv.token();
    let r = srv.call(&token, "POST", "/api/embed", r#"{"model":"x"}"#);
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("`text`"));
});

/// A fake OpenAI-compatible embeddings server. `mode` picks its behaviour.
struct FakeProvider {
    url: String,
    seen: Arc<Mutex<Vec<Value>>>,
}

fn fake_provider(mode: &'static str) -> FakeProvider {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let log = log.clone();
            std::thread::spawn(move || serve_fake(&mut s, mode, &log));
        }
    });
    FakeProvider { url, seen }
}

fn serve_fake<S: Read + Write>(s: &mut S, mode: &str, log: &Mutex<Vec<Value>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, len) = loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            break (i + 4, len);
        }
    };
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let body: Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    log.lock()
        .unwrap()
        .push(json!({"head": head, "body": body}));
    let (status, extra, reply) = match mode {
        "ok" => {
            let inputs = body["input"].as_array().cloned().unwrap_or_default();
            // Answer out of order, as the API allows; the server must sort by index.
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .rev()
                .map(|(i, _)| json!({"object": "embedding", "index": i, "embedding": [i as f64, 0.5, -0.25]}))
                .collect();
            (
                200,
                "",
                json!({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 3, "total_tokens": 3}}),
            )
        }
        "401" => (
            401,
            "",
            json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}),
        ),
        "429" => (
            429,
            "Retry-After: 7\r\n",
            json!({"error": {"message": "Rate limit reached", "type": "requests"}}),
        ),
        "500" => (
            500,
            "",
            json!({"error": {"message": "The server had an error"}}),
        ),
        _ => {
            // "slow": never answer.
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
    };
    let text = reply.to_string();
    // Chunked, as many providers send it.
    let _ = write!(
        s,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n{extra}\r\n{:x}\r\n{text}\r\n0\r\n\r\n",
        text.len()
    );
}

/// The same fake provider behind TLS, with a certificate for 127.0.0.1 issued
/// by a fresh test CA. Returns the provider and the CA's PEM.
fn fake_tls_provider(mode: &'static str) -> (FakeProvider, String) {
    let ca = certs::TestCa::new("Tidepool test CA");
    let leaf = ca.leaf("provider");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(tcp) = stream else { continue };
            let (log, config) = (log.clone(), config.clone());
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                serve_fake(&mut tls, mode, &log);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (FakeProvider { url, seen }, ca.pem)
}

// An https:// provider works when the server trusts its CA (`--tls-ca-file`),
// and is refused with a clear 502 when it does not.
both_runtimes!(https_provider_with_a_trusted_test_ca, |rt: Runtime| {
    let (fake, ca_pem) = fake_tls_provider("ok");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let srv = TestServer::start_with(
        rt,
        &[
            "--embed-url",
            &fake.url,
            "--tls-ca-file",
            ca_file.to_str().unwrap(),
        ],
    );
    let token = srv.token();
    let r = srv.call(
        &token,
        "POST",
        "/api/embed",
        r#"{"texts":["one","two"],"model":"m"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["embeddings"],
        json!([[0.0, 0.5, -0.25], [1.0, 0.5, -0.25]])
    );
    let head = fake.seen.lock().unwrap()[0]["head"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(head.starts_with("POST /v1/embeddings HTTP/1.1"), "{head}");
    // Not trusted: the handshake fails and the client is told.
    let untrusting = TestServer::start_with(rt, &["--embed-url", &fake.url]);
    let token = untrusting.token();
    let r = untrusting.call(
        &token,
        "POST",
        "/api/embed",
        r#"{"text":"one","model":"m"}"#,
    );
    assert_eq!(r.status, 502, "{}", r.text());
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("TLS"), "{msg}");
});

both_runtimes!(openai_compatible_provider, |rt: Runtime| {
    let fake = fake_provider("ok");
    let srv = TestServer::start_with(
        rt,
        &["--embed-url", &fake.url, "--embed-api-key", "sk-test"],
    );
    block_on(async {
        let c = client(&srv, SerializationFormat::Json);
        let v = c
            .embed_batch(
                vec!["one".into(), "two".into(), "three".into()],
                "nomic-embed-text",
            )
            .await
            .expect("provider embeddings");
        assert_eq!(
            v,
            vec![
                vec![0.0, 0.5, -0.25],
                vec![1.0, 0.5, -0.25],
                vec![2.0, 0.5, -0.25]
            ]
        );
        // The built-in embedder stays reachable by name.
        let local = c.embed("one", "tidepool-hash-v1").await.unwrap();
        assert_eq!(local.len(), 384);
    });
    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "the offline model never calls out");
    let head = seen[0]["head"].as_str().unwrap();
    assert!(head.starts_with("POST /v1/embeddings HTTP/1.1"), "{head}");
    assert!(head.contains("Authorization: Bearer sk-test"), "{head}");
    assert_eq!(
        seen[0]["body"],
        json!({"model": "nomic-embed-text", "input": ["one", "two", "three"]})
    );
});

both_runtimes!(provider_failures_are_clear_errors, |rt: Runtime| {
    for (mode, needle) in [
        ("401", "provider_auth_failed"),
        ("429", "provider_rate_limited"),
        ("500", "provider_unavailable"),
        ("slow", "timed out"),
    ] {
        let fake = fake_provider(mode);
        let srv =
            TestServer::start_with(rt, &["--embed-url", &fake.url, "--outbound-timeout", "1"]);
        let token = srv.token();
        let r = srv.call(
            &token,
            "POST",
            "/api/embed",
            r#"{"text":"hello","model":"m"}"#,
        );
        assert_eq!(r.status, 502, "{mode}: {}", r.text());
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{mode}: {msg}");
        if mode == "429" {
            assert!(msg.contains("retry after 7"), "{msg}");
        }
        // The server is unaffected and keeps serving.
        assert_eq!(srv.call(&token, "POST", "/api/find/x", "{}").status, 200);
    }
    // Nothing listening at all.
    let srv = TestServer::start_with(rt, &["--embed-url", "http://127.0.0.1:9/v1"]);
    let token = srv.token();
    let r = srv.call(
        &token,
        "POST",
        "/api/embed",
        r#"{"text":"hello","model":"m"}"#,
    );
    assert_eq!(r.status, 502);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
});

both_runtimes!(websocket_text_search, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv, SerializationFormat::Json);
        seed(&c).await;
        let ws = c.connect_ws().await.unwrap();
        let hits = ws
            .text_search("articles", "kitchen", None, Some(5))
            .await
            .expect("TextSearch");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0]["record"]["title"]["value"], "Cooking at home");
    });
});

// ekoDB's published `client_search` examples, run with the official client:
// the same hits, scores and result counts as ekoDB recorded for them
// (`ekoDB/ekodb-client`, `examples/*/test-examples-*.md`).
both_runtimes!(
    ekodb_examples_find_and_score_what_ekodb_does,
    |rt: Runtime| {
        let srv = TestServer::start(rt);
        block_on(async {
            let c = client(&srv, SerializationFormat::MessagePack);
            let people = [
                (
                    "John Doe",
                    "john@example.com",
                    "Software engineer specializing in JavaScript and TypeScript",
                ),
                (
                    "Jane Smith",
                    "jane@example.com",
                    "Product manager with experience in running agile teams",
                ),
                (
                    "Bob Johnson",
                    "bob@example.com",
                    "DevOps engineer running cloud infrastructure",
                ),
            ];
            for (name, email, bio) in people {
                let r = Record::new()
                    .field("name", name)
                    .field("email", email)
                    .field("bio", bio);
                c.insert("people", r, None).await.expect("insert");
            }
            // Prefix matching: `john` finds "Bob Johnson", below "John Doe".
            let r = c
                .search("people", SearchQuery::new("john").fields("name,email,bio"))
                .await
                .expect("search");
            let names: Vec<&Value> = r
                .results
                .iter()
                .map(|h| &h.record["name"]["value"])
                .collect();
            assert_eq!(names, [&json!("John Doe"), &json!("Bob Johnson")]);
            let scores: Vec<f64> = r.results.iter().map(|h| h.score).collect();
            assert_eq!(scores, [13.2, 6.27]);

            let articles = [
                (
                    "Rust Programming",
                    "Learn Rust programming language with hands-on examples and best practices.",
                ),
                (
                    "Python for Data Science",
                    "Master Python for data analysis, machine learning, and visualization.",
                ),
                (
                    "JavaScript Web Development",
                    "Build modern web applications using JavaScript, React, and Node.js.",
                ),
                (
                    "Database Design",
                    "Learn database design principles, normalization, and query optimization.",
                ),
                (
                    "Machine Learning Basics",
                    "Introduction to machine learning algorithms and neural networks.",
                ),
            ];
            for (title, description) in articles {
                let r = Record::new()
                    .field("title", title)
                    .field("description", description);
                c.insert("articles", r, None).await.expect("insert");
            }
            // ekoDB returns 4 records for this threshold: 2.0, 1.0, 0.5, 0.5.
            let query = SearchQuery::new("machine learning")
                .fields("title,description")
                .min_score(0.2)
                .limit(5);
            let r = c.search("articles", query).await.expect("search");
            let scores: Vec<f64> = r.results.iter().map(|h| h.score).collect();
            assert_eq!(scores, [2.0, 1.0, 0.5, 0.5]);
            assert_eq!(r.total, 4);
            assert_eq!(
                r.results[0].record["title"]["value"],
                json!("Machine Learning Basics")
            );
            assert_eq!(r.results[0].matched_fields, ["description", "title"]);
        });

        // BM25 on request, and prefixes off on request; a bad rule is a 400.
        let token = srv.token();
        let search = |body: Value| {
            let r = srv.call(&token, "POST", "/api/search/people", &body.to_string());
            (r.status, r.json())
        };
        let (status, bm25) =
            search(json!({"query": "john", "fields": "name,email,bio", "scoring": "bm25"}));
        assert_eq!(status, 200);
        let bm25_scores: Vec<f64> = bm25["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["score"].as_f64().unwrap())
            .collect();
        assert_eq!(bm25_scores.len(), 2);
        assert!(
            bm25_scores[0] > bm25_scores[1] && bm25_scores[0] < 6.0,
            "BM25 values, the exact name first: {bm25_scores:?}"
        );
        let (status, whole) = search(json!({"query": "john", "prefix": false}));
        assert_eq!(status, 200);
        assert_eq!(whole["total"], 1, "{whole}");
        let (status, err) = search(json!({"query": "john", "scoring": "tf-idf"}));
        assert_eq!(status, 400);
        assert!(
            err.to_string().contains("bm25"),
            "the message names the choices: {err}"
        );
    }
);
