//! The Lanonasis stream and memory API end to end against both runtimes:
//! named SSE events with ids for every memory write, `events` repeated or
//! comma-separated, `filters[key]`, search events, in-stream `AUTH_ERROR`
//! and `RATE_LIMITED`, `Last-Event-ID` resumption (across a `kill -9` too,
//! and from a heartbeat's id), and the REST answers the official SDK
//! expects (201 bare entry, 204, `{data, pagination}`, 401, 404).

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tidepool_core::wire::sse::SseEvent;
use tidepool_tests::sse::SseStream;
use tidepool_tests::{both_runtimes, TestServer, API_KEY};

const WAIT: Duration = Duration::from_secs(10);

fn stream(srv: &TestServer, query: &str, headers: &str) -> SseStream {
    SseStream::open(
        srv,
        API_KEY,
        "GET",
        &format!("/api/v1/stream{query}"),
        headers,
        &Value::Null,
    )
}

/// A memory API call with the SDK's headers.
fn memory(srv: &TestServer, method: &str, path: &str, body: &Value) -> tidepool_tests::HttpReply {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    srv.request(
        method,
        &format!("/api/v1{path}"),
        &[
            ("X-API-Key", API_KEY),
            ("X-Project-Scope", "lanonasis-maas"),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
}

fn create(srv: &TestServer, body: Value) -> Value {
    let r = memory(srv, "POST", "/memory", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn data(e: &SseEvent) -> Value {
    serde_json::from_str(&e.data).unwrap()
}

/// The next event that is not a heartbeat.
fn next_event(s: &mut SseStream) -> SseEvent {
    loop {
        let e = s.next(WAIT).expect("an event");
        if e.event != "heartbeat" {
            return e;
        }
    }
}

/// Nothing but heartbeats arrives within `wait`.
fn assert_quiet(s: &mut SseStream, wait: Duration) {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(e) = s.next(Duration::from_millis(100)) {
            assert_eq!(e.event, "heartbeat", "unexpected {e:?}");
        }
    }
}

/// Orders ids as the server issues them (`event_<lsn>.<n>`).
fn position(id: &str) -> (u64, u64) {
    let pos = id.rsplit_once('_').unwrap().1;
    let (a, b) = pos.split_once('.').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

both_runtimes!(memory_writes_arrive_as_named_events_in_order, |rt| {
    let srv = TestServer::start(rt);
    // Repeated (the seed's class) and comma-separated (its curl example).
    let mut s = stream(
        &srv,
        "?events=memory.created&events=memory.updated,memory.deleted",
        "",
    );
    let m = create(
        &srv,
        json!({"title": "Auth notes", "content": "Use short-lived tokens",
               "memory_type": "knowledge", "tags": ["security"],
               "metadata": {"category": "note"}}),
    );
    // The SDK's MemoryEntry, unwrapped.
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(m["title"], "Auth notes");
    assert_eq!(m["memory_type"], "knowledge");
    assert_eq!(m["status"], "active");
    assert_eq!(m["tags"], json!(["security"]));
    assert!(m["created_at"].as_str().unwrap().ends_with('Z'));

    let created = next_event(&mut s);
    assert_eq!(created.event, "memory.created");
    let d = data(&created);
    assert_eq!(d["id"], id.as_str());
    assert_eq!(d["content"], "Use short-lived tokens");
    assert_eq!(d["metadata"], json!({"category": "note"}));
    assert_eq!(d["tags"], json!(["security"]));
    assert!(d["created_by"].is_string() && d["created_at"].is_string());

    let r = memory(
        &srv,
        "PUT",
        &format!("/memory/{id}"),
        &json!({"tags": ["security", "updated"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tags"], json!(["security", "updated"]));
    assert_eq!(r.json()["content"], "Use short-lived tokens");
    let updated = next_event(&mut s);
    assert_eq!(updated.event, "memory.updated");
    let d = data(&updated);
    assert_eq!(d["tags"], json!(["security", "updated"]));
    assert_eq!(
        d["changes"],
        json!({"content": false, "metadata": false, "tags": true})
    );
    assert!(d["updated_at"].is_string() && d["updated_by"].is_string());

    // A search is not among the types asked for.
    let r = memory(&srv, "POST", "/memory/search", &json!({"query": "tokens"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["total_results"], 1);

    let r = memory(&srv, "DELETE", &format!("/memory/{id}"), &Value::Null);
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    // No content, so no content type: the SDK would try to parse nothing.
    assert_eq!(r.header("content-type"), None);
    let deleted = next_event(&mut s);
    assert_eq!(deleted.event, "memory.deleted");
    let d = data(&deleted);
    assert_eq!(d["id"], id.as_str());
    assert_eq!(d["reason"], "user_request");
    assert!(d["deleted_at"].is_string() && d["deleted_by"].is_string());
    assert_eq!(
        memory(&srv, "GET", &format!("/memory/{id}"), &Value::Null).status,
        404
    );

    let ids: Vec<(u64, u64)> = [&created, &updated, &deleted]
        .iter()
        .map(|e| position(e.id.as_deref().unwrap()))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_quiet(&mut s, Duration::from_millis(300));
});

both_runtimes!(filters_and_search_events, |rt| {
    let srv = TestServer::start(rt);
    let mut s = stream(
        &srv,
        "?events=memory.created&events=search.performed&filters[category]=work",
        "",
    );
    create(
        &srv,
        json!({"title": "Groceries", "content": "milk and eggs", "metadata": {"category": "home"}}),
    );
    let work = create(
        &srv,
        json!({"title": "Sprint", "content": "ship the release", "metadata": {"category": "work"}}),
    );
    let e = next_event(&mut s);
    assert_eq!(e.event, "memory.created");
    assert_eq!(
        data(&e)["id"],
        work["id"],
        "the home memory is filtered out"
    );

    let r = memory(
        &srv,
        "POST",
        "/memory/search",
        &json!({"query": "release", "limit": 5}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let found = r.json();
    assert_eq!(found["query"], "release");
    assert_eq!(found["total_results"], 1);
    assert_eq!(found["results"][0]["id"], work["id"]);
    assert!(found["results"][0]["similarity_score"].as_f64().unwrap() > 0.0);
    let e = next_event(&mut s);
    assert_eq!(e.event, "search.performed");
    let d = data(&e);
    assert_eq!(d["query"], "release");
    assert_eq!(d["results_count"], 1);
    assert!(d["execution_time"].is_number() && d["timestamp"].is_string());
});

both_runtimes!(
    a_stream_resumes_after_last_event_id_even_across_a_crash,
    |rt| {
        let mut srv = TestServer::start(rt);
        let mut s = stream(&srv, "?events=memory.created", "");
        create(&srv, json!({"title": "one", "content": "first"}));
        let first = next_event(&mut s);
        let last_id = first.id.clone().unwrap();
        drop(s);
        let two = create(&srv, json!({"title": "two", "content": "second"}));
        // The server dies with an event the client has not seen yet.
        srv.kill9();
        srv.restart();
        let three = create(&srv, json!({"title": "three", "content": "third"}));
        let mut s = stream(
            &srv,
            "?events=memory.created",
            &format!("Last-Event-ID: {last_id}\r\n"),
        );
        let a = next_event(&mut s);
        let b = next_event(&mut s);
        assert_eq!(data(&a)["id"], two["id"], "no gap, no repeat");
        assert_eq!(data(&b)["id"], three["id"]);
        // And live after the replay.
        let four = create(&srv, json!({"title": "four", "content": "fourth"}));
        assert_eq!(data(&next_event(&mut s))["id"], four["id"]);
        assert_quiet(&mut s, Duration::from_millis(300));
    }
);

both_runtimes!(heartbeats_are_events_a_client_can_resume_from, |rt| {
    let srv = TestServer::start(rt);
    create(
        &srv,
        json!({"title": "before", "content": "seen before the heartbeat"}),
    );
    // A heartbeat below the documented minimum is raised to 30 s.
    let mut s = stream(&srv, "?heartbeat=1", "");
    let started = Instant::now();
    // Both come after 30 s: the heartbeat, and (every type was asked for)
    // `system.health`, in either order.
    let (mut hb, mut health) = (None, None);
    while hb.is_none() || health.is_none() {
        let e = s
            .next(Duration::from_secs(40))
            .expect("a heartbeat and a health report");
        match e.event.as_str() {
            "heartbeat" => hb = Some(e),
            "system.health" => health = Some(e),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_secs(29),
        "{:?}",
        started.elapsed()
    );
    let h = data(&health.unwrap());
    assert_eq!(h["status"], "healthy");
    assert!(h["timestamp"].is_string());
    for m in ["cpu_usage", "memory_usage", "response_time", "error_rate"] {
        assert!(
            h["metrics"][m]
                .as_f64()
                .is_some_and(|v| (0.0..=100.0).contains(&v)),
            "{m}: {h}"
        );
    }
    assert_eq!(h["services"]["database"], "healthy");
    let hb = hb.unwrap();
    let d = data(&hb);
    assert_eq!(d["status"], "healthy");
    assert!(d["timestamp"].is_string() && d["connection_id"].is_string());
    let hb_id = hb.id.clone().unwrap();
    assert!(hb_id.starts_with("heartbeat_"), "{hb_id}");
    drop(s);
    let after = create(&srv, json!({"title": "after", "content": "missed"}));
    let mut s = stream(&srv, "", &format!("Last-Event-ID: {hb_id}\r\n"));
    let e = next_event(&mut s);
    assert_eq!(e.event, "memory.created");
    assert_eq!(
        data(&e)["id"],
        after["id"],
        "only what came after the heartbeat"
    );
    assert!(position(e.id.as_deref().unwrap()) > position(&hb_id));
});

both_runtimes!(refusals_are_in_stream_errors, |rt| {
    let srv = TestServer::start(rt);
    // No key, a bad key: status 200, `event: error`, and the stream ends.
    for auth in ["", "Authorization: Bearer not-a-key\r\n"] {
        let mut s = SseStream::open(
            &srv,
            "",
            "GET",
            "/api/v1/stream",
            &format!("{auth}Connection: close\r\n"),
            &Value::Null,
        );
        let events = s.rest();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].event, "error");
        let d = data(&events[0]);
        assert_eq!(d["code"], "AUTH_ERROR");
        assert_eq!(d["retry_after"], 0);
        // No id: a client's Last-Event-ID must not jump past what it missed.
        assert_eq!(events[0].id, None);
    }
    let mut s = stream(&srv, "?events=memory.exploded", "Connection: close\r\n");
    let events = s.rest();
    assert_eq!(data(&events[0])["code"], "INVALID_REQUEST");
    assert!(data(&events[0])["message"]
        .as_str()
        .unwrap()
        .contains("memory.exploded"));

    // Five concurrent streams per key; the sixth is told to wait.
    let open: Vec<SseStream> = (0..5).map(|_| stream(&srv, "", "")).collect();
    let mut sixth = stream(&srv, "", "Connection: close\r\n");
    let events = sixth.rest();
    let d = data(&events[0]);
    assert_eq!(d["code"], "RATE_LIMITED");
    assert_eq!(d["message"], "Too many connections");
    assert_eq!(d["retry_after"], 60000);
    // A closed stream stops counting.
    drop(open);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = stream(&srv, "", "");
        create(&srv, json!({"title": "t", "content": "c"}));
        let e = s.next(WAIT).expect("an event");
        if e.event == "memory.created" {
            break;
        }
        assert_eq!(data(&e)["code"], "RATE_LIMITED");
        assert!(Instant::now() < deadline, "closed streams still count");
        std::thread::sleep(Duration::from_millis(50));
    }
});

both_runtimes!(memory_api_answers_as_the_sdk_expects, |rt| {
    let srv = TestServer::start(rt);
    // Both mounts, as the real server has them.
    for (i, base) in ["/memory", "/memories"].iter().enumerate() {
        for n in 0..3 {
            let r = memory(
                &srv,
                "POST",
                base,
                &json!({"title": format!("m{i}{n}"), "content": "text", "memory_type": "project"}),
            );
            assert_eq!(r.status, 201, "{}", r.text());
        }
    }
    let r = memory(
        &srv,
        "GET",
        "/memories?limit=4&page=2&sort=title&order=asc",
        &Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    assert_eq!(
        page["pagination"],
        json!({"page": 2, "limit": 4, "total": 6, "pages": 2})
    );
    let titles: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["m11", "m12"]);

    // Errors: `{error, message}` with the status.
    let r = srv.request("GET", "/api/v1/memory", &[], "");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("API key"));
    for (body, word) in [
        (json!({"content": "no title"}), "title"),
        (
            json!({"title": "t", "content": "c", "memory_type": "dream"}),
            "memory_type",
        ),
        (json!({"title": "t", "content": "c", "tags": "one"}), "tags"),
        (
            json!({"title": "t", "content": "c", "metadata": [1]}),
            "metadata",
        ),
    ] {
        let r = memory(&srv, "POST", "/memory", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let e = r.json();
        assert!(e["error"].is_string());
        assert!(e["message"].as_str().unwrap().contains(word), "{e}");
    }
    let r = memory(&srv, "PUT", "/memory/mem_nope", &json!({"title": "x"}));
    assert_eq!(r.status, 404, "{}", r.text());
    let r = memory(&srv, "POST", "/memory/search", &json!({"query": ""}));
    assert_eq!(r.status, 400, "{}", r.text());
    // Memories live in an internal collection, as ekoDB's chat does.
    let token = srv.token();
    let r = srv.call(&token, "GET", "/api/collections?exclude_internal=true", "");
    assert!(!r.text().contains("memories"), "{}", r.text());
});

both_runtimes!(
    a_resumed_stream_gets_the_searches_it_missed_in_order,
    |rt| {
        let srv = TestServer::start(rt);
        let types = "?events=memory.created,search.performed";
        let mut s = stream(&srv, types, "");
        create(&srv, json!({"title": "seen", "content": "before the drop"}));
        let last_id = next_event(&mut s).id.unwrap();
        drop(s);
        // Missed: a search, a memory, another search.
        let search = |q: &str| {
            let r = memory(&srv, "POST", "/memory/search", &json!({"query": q}));
            assert_eq!(r.status, 200, "{}", r.text());
        };
        search("first");
        let m = create(&srv, json!({"title": "missed", "content": "while away"}));
        search("second");
        let mut s = stream(&srv, types, &format!("Last-Event-ID: {last_id}\r\n"));
        let got: Vec<SseEvent> = (0..3).map(|_| next_event(&mut s)).collect();
        let kinds: Vec<&str> = got.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(
            kinds,
            ["search.performed", "memory.created", "search.performed"]
        );
        assert_eq!(data(&got[0])["query"], "first");
        assert_eq!(data(&got[1])["id"], m["id"]);
        assert_eq!(data(&got[2])["query"], "second");
        let ids: Vec<(u64, u64)> = got
            .iter()
            .map(|e| position(e.id.as_deref().unwrap()))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_quiet(&mut s, Duration::from_millis(300));
    }
);
