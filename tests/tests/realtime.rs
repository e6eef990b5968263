//! Real time, end to end: the official client's WebSocket and SSE calls, a raw
//! WebSocket client, a raw SSE reader, resumption (also across a restart) and
//! backpressure, against both runtimes.

use ekodb_client::{Client, SerializationFormat};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tidepool_core::wire::sse::{SseDecoder, SseEvent};
use tidepool_tests::{both_runtimes, Runtime, TestServer, API_KEY};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

fn client(srv: &TestServer) -> Client {
    Client::builder()
        .base_url(srv.base_url())
        .api_key(API_KEY)
        .serialization_format(SerializationFormat::Json)
        .build()
        .expect("client")
}

async fn raw_ws(srv: &TestServer, token: &str) -> Ws {
    let mut req = format!("ws://{}/api/ws", srv.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

/// The next text/binary message as JSON (pings and pongs skipped), or None on
/// close/timeout.
async fn next_json(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).ok(),
            Message::Binary(b) => return rmp_serde::from_slice(&b).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// A raw SSE subscription over a plain socket.
struct SseReader {
    stream: TcpStream,
    decoder: SseDecoder,
    pending: std::collections::VecDeque<SseEvent>,
}

impl SseReader {
    fn open(
        srv: &TestServer,
        token: &str,
        collection: &str,
        last_event_id: Option<&str>,
    ) -> SseReader {
        Self::open_split(srv, token, collection, last_event_id, Duration::ZERO)
    }

    /// `open`, with the request head sent in two pieces `pause` apart (as a
    /// slow network delivers it).
    fn open_split(
        srv: &TestServer,
        token: &str,
        collection: &str,
        last_event_id: Option<&str>,
        pause: Duration,
    ) -> SseReader {
        let mut stream = TcpStream::connect(srv.addr).unwrap();
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "GET /api/subscribe/{collection} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n{resume}\r\n"
        );
        let (first, rest) = head.split_at(20);
        stream.write_all(first.as_bytes()).unwrap();
        std::thread::sleep(pause);
        stream.write_all(rest.as_bytes()).unwrap();
        // Read the response head.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/event-stream"), "{head}");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        SseReader {
            stream,
            decoder: SseDecoder::default(),
            pending: Default::default(),
        }
    }

    /// The next event other than heartbeats, waiting up to `wait`.
    fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(e) = self.pending.pop_front() {
                if e.event == "heartbeat" {
                    continue;
                }
                return Some(e);
            }
            if Instant::now() > deadline {
                return None;
            }
            let mut buf = [0u8; 64 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend(self.decoder.push(&buf[..n])),
                Err(_) => {}
            }
        }
    }

    /// Reads `n` mutation events.
    fn mutations(&mut self, n: usize, wait: Duration) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let deadline = Instant::now() + wait;
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(e) if e.event == "mutation" => out.push(e),
                Some(_) => {}
                None => break,
            }
        }
        out
    }
}

fn insert(srv: &TestServer, token: &str, collection: &str, body: Value) -> String {
    let r = srv.call(
        token,
        "POST",
        &format!("/api/insert/{collection}"),
        &body.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// Writes `n` single-record inserts over one keep-alive connection.
fn insert_many(srv: &TestServer, token: &str, collection: &str, n: usize) -> Vec<String> {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut ids = Vec::with_capacity(n);
    let mut buf = Vec::new();
    for i in 0..n {
        let body = json!({"i": i, "id": format!("m{i:05}")}).to_string();
        let req = format!(
            "POST /api/insert/{collection} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        loop {
            if let Some((reply, used)) = tidepool_tests::HttpReply::parse_one(&buf) {
                assert_eq!(reply.status, 200, "{}", reply.text());
                ids.push(reply.json()["id"].as_str().unwrap().to_string());
                buf.drain(..used);
                break;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    ids
}

fn data(e: &SseEvent) -> Value {
    serde_json::from_str(&e.data).unwrap()
}

both_runtimes!(official_client_websocket, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv);
        let ws = c.connect_ws().await.expect("connect_ws");
        // CRUD over the socket (the client negotiates MessagePack with Hello).
        let inserted = ws
            .insert("ws_items", json!({"name": "first", "n": 1}), None)
            .await
            .unwrap();
        let id = inserted["id"]
            .as_str()
            .expect("insert returns the id")
            .to_string();
        let found = ws.find_by_id("ws_items", &id).await.unwrap();
        assert_eq!(found["name"]["value"], "first");
        let updated = ws
            .update("ws_items", &id, json!({"n": 2}), None)
            .await
            .unwrap();
        assert_eq!(updated["n"]["value"], 2);
        assert_eq!(updated["name"]["value"], "first");
        let acted = ws
            .update_with_action("ws_items", &id, "increment", "n", Some(json!(5)))
            .await
            .unwrap();
        assert_eq!(acted["n"]["value"], 7);
        let rows = ws
            .query(
                "ws_items",
                Some(json!({"type":"Condition","content":{"field":"n","operator":"Gt","value":3}})),
                None,
                None,
                None,
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        let all = ws.find_all("ws_items").await.unwrap();
        assert_eq!(all.len(), 1);
        let distinct = ws.distinct_values("ws_items", "name", None).await.unwrap();
        assert_eq!(distinct["values"], json!(["first"]));
        let names = ws.list_collections().await.unwrap();
        assert!(names.contains(&"ws_items".to_string()));
        ws.delete("ws_items", &id, None).await.unwrap();
        let err = ws.find_by_id("ws_items", &id).await.unwrap_err();
        assert!(
            err.to_string().contains("404") || err.to_string().contains("not found"),
            "{err}"
        );

        // A subscription sees writes made over REST by another client.
        let mut rx = ws
            .subscribe("ws_events", None, None)
            .await
            .expect("subscribe");
        let rid = c
            .insert(
                "ws_events",
                ekodb_client::Record::new().field("kind", "created"),
                None,
            )
            .await
            .unwrap();
        let rid = rid.get_string("id").unwrap().to_string();
        let note = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("notification in time")
            .unwrap();
        assert_eq!(note.collection, "ws_events");
        assert_eq!(note.event, "insert");
        assert_eq!(note.record_ids, vec![rid.clone()]);
        assert!(!note.timestamp.is_empty());
        c.delete("ws_events", &rid, None).await.unwrap();
        let note = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(note.event, "delete");
        ws.close().await.ok();
    });
});

both_runtimes!(official_client_sse_with_filter, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv);
        let mut all = c.subscribe_sse("orders", None, None).await.expect("sse");
        let mut paid = c
            .subscribe_sse("orders", Some("status"), Some("paid"))
            .await
            .expect("sse filtered");
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.insert(
            "orders",
            ekodb_client::Record::new().field("status", "open"),
            None,
        )
        .await
        .unwrap();
        c.insert(
            "orders",
            ekodb_client::Record::new().field("status", "paid"),
            None,
        )
        .await
        .unwrap();
        let a = tokio::time::timeout(Duration::from_secs(5), all.recv())
            .await
            .unwrap()
            .unwrap();
        let b = tokio::time::timeout(Duration::from_secs(5), all.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((a.event.as_str(), b.event.as_str()), ("insert", "insert"));
        let p = tokio::time::timeout(Duration::from_secs(5), paid.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.records.as_ref().unwrap()["status"]["value"], "paid");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), paid.recv())
                .await
                .is_err(),
            "the filter lets only `paid` through"
        );
    });
});

both_runtimes!(sse_resume_after_disconnect_and_restart, |rt: Runtime| {
    let mut srv = TestServer::start(rt);
    let token = srv.token();
    let mut sub = SseReader::open(&srv, &token, "feed", None);
    assert_eq!(
        sub.next(Duration::from_secs(5)).unwrap().event,
        "subscribed"
    );
    insert(&srv, &token, "feed", json!({"first": true}));
    let first = sub.mutations(1, Duration::from_secs(5));
    assert_eq!(first.len(), 1);
    let last_seen = first[0].id.clone().expect("every event has an id");
    drop(sub);

    let ids = insert_many(&srv, &token, "feed", 1000);

    let check = |sub: &mut SseReader| {
        assert_eq!(
            sub.next(Duration::from_secs(5)).unwrap().event,
            "subscribed"
        );
        let got = sub.mutations(1000, Duration::from_secs(30));
        let got_ids: Vec<String> = got
            .iter()
            .map(|e| data(e)["record_ids"][0].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got_ids, ids, "exactly the missed mutations, in order");
        assert!(
            sub.mutations(1, Duration::from_millis(300)).is_empty(),
            "no duplicates"
        );
        let positions: Vec<String> = got.iter().map(|e| e.id.clone().unwrap()).collect();
        let mut sorted = positions.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000);
    };
    let mut sub = SseReader::open(&srv, &token, "feed", Some(&last_seen));
    check(&mut sub);
    drop(sub);

    srv.restart();
    let token = srv.token();
    let mut sub = SseReader::open(&srv, &token, "feed", Some(&last_seen));
    check(&mut sub);
    // And live events continue after the replay.
    let live = insert(&srv, &token, "feed", json!({"live": true}));
    let next = sub.mutations(1, Duration::from_secs(5));
    assert_eq!(data(&next[0])["record_ids"][0], live);
});

// A stream whose request head came in pieces, then a client that never
// writes again: the head and idle deadlines belong to the request, not to the
// stream it became (tidepool-std once closed such a stream when they passed).
both_runtimes!(
    a_quiet_stream_outlives_the_request_deadlines,
    |rt: Runtime| {
        let srv =
            TestServer::start_with(rt, &["--request-head-timeout", "1", "--idle-timeout", "2"]);
        let token = srv.token();
        let mut sub =
            SseReader::open_split(&srv, &token, "quiet", None, Duration::from_millis(300));
        assert_eq!(
            sub.next(Duration::from_secs(5)).unwrap().event,
            "subscribed"
        );
        std::thread::sleep(Duration::from_millis(3500));
        let id = insert(&srv, &token, "quiet", json!({"late": true}));
        let got = sub.mutations(1, Duration::from_secs(5));
        assert_eq!(got.len(), 1, "the stream is still open");
        assert_eq!(data(&got[0])["record_ids"][0], id);
    }
);

both_runtimes!(websocket_resume_from_event_id, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = srv.token();
    let before = insert(&srv, &token, "res", json!({"n": 0}));
    let _ = before;
    block_on(async {
        let mut ws = raw_ws(&srv, &token).await;
        send(
            &mut ws,
            json!({"type":"Subscribe","messageId":"s1","payload":{"collection":"res"}}),
        )
        .await;
        let ack = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(ack["type"], "Success");
        insert(&srv, &token, "res", json!({"n": 1}));
        let ev = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(ev["type"], "MutationNotification");
        let last = ev["payload"]["event_id"].as_str().unwrap().to_string();
        drop(ws);
        let missed: Vec<String> = (2..7)
            .map(|n| insert(&srv, &token, "res", json!({"n": n})))
            .collect();
        let mut ws = raw_ws(&srv, &token).await;
        send(&mut ws, json!({"type":"Subscribe","messageId":"s2","payload":{"collection":"res","resume_from": last}})).await;
        let ack = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(ack["messageId"], "s2");
        let mut got = Vec::new();
        while got.len() < missed.len() {
            let ev = next_json(&mut ws, Duration::from_secs(5))
                .await
                .expect("replayed event");
            if ev["type"] == "MutationNotification" {
                got.push(ev["payload"]["record_ids"][0].as_str().unwrap().to_string());
            }
        }
        assert_eq!(got, missed);
        // A position the log no longer has (or never had) gets an explicit reset.
        send(&mut ws, json!({"type":"Subscribe","messageId":"s3","payload":{"collection":"other","resume_from": "999999"}})).await;
        let mut saw_reset = false;
        for _ in 0..3 {
            let m = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
            if m["type"] == "SubscriptionReset" {
                saw_reset = true;
                break;
            }
        }
        assert!(saw_reset);
    });
});

both_runtimes!(websocket_protocol_and_bad_input, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = srv.token();
    insert(&srv, &token, "things", json!({"id": "t1", "v": 1}));
    block_on(async {
        let mut ws = raw_ws(&srv, &token).await;
        // Without Hello the server never speaks first; a request without an id
        // still gets its reply (raw examples block on it).
        send(
            &mut ws,
            json!({"type":"FindAll","payload":{"collection":"things"}}),
        )
        .await;
        let r = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(r["type"], "Success");
        assert!(r.get("messageId").is_none());
        assert_eq!(r["payload"]["data"][0]["id"], "t1");
        // Not JSON: no reply, connection stays usable.
        ws.send(Message::Text("this is not json".into()))
            .await
            .unwrap();
        // Unknown type with an id: Error 400 naming it.
        send(
            &mut ws,
            json!({"type":"Frobnicate","messageId":"m1","payload":{}}),
        )
        .await;
        let r = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (
                r["type"].as_str(),
                r["code"].as_u64(),
                r["messageId"].as_str()
            ),
            (Some("Error"), Some(400), Some("m1"))
        );
        assert!(r["message"].as_str().unwrap().contains("Frobnicate"));
        // Missing fields.
        send(
            &mut ws,
            json!({"type":"FindById","messageId":"m2","payload":{"collection":"things"}}),
        )
        .await;
        let r = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(r["code"], 400);
        assert!(r["message"].as_str().unwrap().contains("`id`"));
        // A bad collection name on Subscribe.
        send(
            &mut ws,
            json!({"type":"Subscribe","messageId":"m3","payload":{"collection":""}}),
        )
        .await;
        let r = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (r["type"].as_str(), r["code"].as_u64()),
            (Some("Error"), Some(400))
        );
        // Missing record: 404 with the id echoed.
        send(&mut ws, json!({"type":"FindById","messageId":"m4","payload":{"collection":"things","id":"nope"}})).await;
        let r = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (r["code"].as_u64(), r["messageId"].as_str()),
            (Some(404), Some("m4"))
        );
        // A chat that does not exist: a clear terminal frame, not silence.
        send(
            &mut ws,
            json!({"type":"ChatSend","payload":{"chat_id":"c1","message":"hi"}}),
        )
        .await;
        let r = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(r["type"], "ChatStreamError");
        assert_eq!(r["payload"]["chat_id"], "c1");
        // Still alive: a subscription works after all of that.
        send(
            &mut ws,
            json!({"type":"Subscribe","messageId":"m5","payload":{"collection":"things"}}),
        )
        .await;
        assert_eq!(
            next_json(&mut ws, Duration::from_secs(5)).await.unwrap()["messageId"],
            "m5"
        );
        insert(&srv, &token, "things", json!({"id": "t2"}));
        let ev = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(ev["payload"]["record_ids"], json!(["t2"]));

        // Hello negotiates MessagePack; Welcome is a text frame and the first reply.
        let mut ws2 = raw_ws(&srv, &token).await;
        send(
            &mut ws2,
            json!({"type":"Hello","payload":{"formats":["msgpack","json"]}}),
        )
        .await;
        let first = ws2.next().await.unwrap().unwrap();
        let Message::Text(t) = first else {
            panic!("Welcome must be text, got {first:?}")
        };
        let welcome: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            welcome,
            json!({"type":"Welcome","payload":{"format":"msgpack"}})
        );
        let req = rmp_serde::to_vec_named(&json!({"type":"FindById","messageId":"b1","payload":{"collection":"things","id":"t1"}})).unwrap();
        ws2.send(Message::Binary(req.into())).await.unwrap();
        let reply = ws2.next().await.unwrap().unwrap();
        let Message::Binary(b) = reply else {
            panic!("binary reply expected")
        };
        let v: Value = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(v["payload"]["data"]["id"], "t1");
    });
});

both_runtimes!(unauthenticated_upgrades_are_refused, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let r = srv.request(
        "GET",
        "/api/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "",
    );
    assert_eq!(r.status, 401);
    let r = srv.request("GET", "/api/subscribe/x", &[], "");
    assert_eq!(r.status, 401);
    let token = srv.token();
    let r = srv.call(&token, "GET", "/api/ws", "");
    assert_eq!(r.status, 400, "a plain GET is not an upgrade: {}", r.text());
});

both_runtimes!(slow_subscriber_is_cut_off_not_buffered, |rt: Runtime| {
    let srv = TestServer::start_with(
        rt,
        &["--outbound-queue-bytes", "2097152", "--fsync", "none"],
    );
    let token = srv.token();
    block_on(async {
        // A subscriber that never reads.
        let mut slow = raw_ws(&srv, &token).await;
        send(
            &mut slow,
            json!({"type":"Subscribe","messageId":"s","payload":{"collection":"big"}}),
        )
        .await;
        // A subscriber that keeps up.
        let mut fast = raw_ws(&srv, &token).await;
        send(
            &mut fast,
            json!({"type":"Subscribe","messageId":"f","payload":{"collection":"big"}}),
        )
        .await;
        assert_eq!(
            next_json(&mut fast, Duration::from_secs(5)).await.unwrap()["messageId"],
            "f"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let blob = "x".repeat(1_000);
        let fast_reader = tokio::spawn(async move {
            let mut n = 0;
            while let Some(m) = next_json(&mut fast, Duration::from_secs(10)).await {
                if m["type"] == "MutationNotification" {
                    n += m["payload"]["record_ids"].as_array().unwrap().len();
                }
                if n == 25_000 {
                    break;
                }
            }
            n
        });
        // 25 MB of events in ~10 KB notifications: far more than the 2 MiB budget plus
        // what socket buffers hold.
        for batch in 0..2500 {
            let items: Vec<Value> = (0..10)
                .map(|i| json!({"data": {"b": batch, "i": i, "blob": blob}}))
                .collect();
            let r = srv.call(
                &token,
                "POST",
                "/api/batch/insert/big",
                &json!({"inserts": items}).to_string(),
            );
            assert_eq!(r.status, 200);
        }
        assert_eq!(
            fast_reader.await.unwrap(),
            25_000,
            "the subscriber that keeps up gets everything"
        );
        // The slow one: after what fitted, an Error 1013 and a close with 1013.
        let mut saw_error = false;
        let mut close_code = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, slow.next()).await {
            match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "Error" && v["code"] == 1013 {
                        saw_error = true;
                    }
                }
                Message::Close(f) => {
                    close_code = f.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
        assert!(saw_error, "the slow subscriber is told why");
        assert_eq!(close_code, Some(1013));
    });
    // The server is fine afterwards.
    assert_eq!(srv.request("GET", "/api/health", &[], "").status, 200);
});
