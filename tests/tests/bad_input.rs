//! Bad input over raw HTTP, on both runtimes: malformed bodies, bad filters,
//! limits, broken and garbage connections, unknown routes and methods.
//!
//! Every case checks the status, that the error body is JSON
//! `{"error","code","message"}` naming the problem, and that the server is
//! still up with the data stored before the bad request intact.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;
use tidepool_tests::{both_runtimes, HttpReply, Runtime, TestServer};

/// Stores one record (`safe/keep`) and returns a token.
fn seed(srv: &TestServer) -> String {
    let token = srv.token();
    let r = srv.call(
        &token,
        "POST",
        "/api/insert/safe",
        r#"{"id":"keep","n":1,"s":"x"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    token
}

/// The server answers, `safe/keep` is unchanged and `safe` holds `count`
/// records.
#[track_caller]
fn assert_intact(srv: &TestServer, token: &str, count: usize) {
    let r = srv.request("GET", "/api/health", &[], "");
    assert_eq!(r.status, 200, "health: {}", r.text());
    let r = srv.call(token, "GET", "/api/find/safe/keep", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["n"]["value"], 1, "{body}");
    assert_eq!(body["s"]["value"], "x", "{body}");
    let r = srv.call(token, "POST", "/api/find/safe", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let n = r.json().as_array().map(Vec::len);
    assert_eq!(n, Some(count), "records in safe: {}", r.text());
}

/// Asserts an error response: the status, a JSON body with `error`, `code`
/// (equal to the status) and `message`, and that the text mentions at least
/// one of `any_of` (case-insensitive).
#[track_caller]
fn assert_error(r: &HttpReply, status: u16, any_of: &[&str]) {
    assert_eq!(r.status, status, "body: {}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "content-type {ct:?} for {}",
        r.text()
    );
    let body = r.json();
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string: {body}"));
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message string: {body}"));
    assert!(!error.is_empty() && !message.is_empty(), "{body}");
    assert_eq!(body["code"], status, "{body}");
    let text = format!("{error} {message}").to_lowercase();
    assert!(
        any_of.iter().any(|w| text.contains(&w.to_lowercase())),
        "error {body} mentions none of {any_of:?}"
    );
}

/// Sends `bytes` on a fresh connection (ignoring a write refused by a server
/// that already answered), then reads until close or `wait`. Returns what was
/// read and whether the server closed the connection.
fn exchange(srv: &TestServer, bytes: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(wait)).ok();
    for chunk in bytes.chunks(8192) {
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let closed = s.read_to_end(&mut out).is_ok();
    (out, closed)
}

/// One request with a binary body on a fresh connection.
fn request_bytes(
    srv: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    let (out, _) = exchange(srv, &bytes, Duration::from_secs(5));
    HttpReply::parse(&out)
        .unwrap_or_else(|| panic!("no complete response: {:?}", String::from_utf8_lossy(&out)))
}

fn msgpack(srv: &TestServer, token: &str, method: &str, path: &str, body: &[u8]) -> HttpReply {
    let auth = format!("Bearer {token}");
    request_bytes(
        srv,
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/msgpack"),
            ("Accept", "application/msgpack"),
        ],
        body,
    )
}

both_runtimes!(malformed_json_bodies, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let json_words = ["json", "parse", "syntax", "malformed", "invalid", "body"];
    let cases = [
        ("POST", "/api/insert/safe", r#"{"name": "x","#),
        ("POST", "/api/insert/safe", r#"{"name": x}"#),
        ("POST", "/api/insert/safe", "{'single': 'quotes'}"),
        ("POST", "/api/insert/safe", r#"{"a":1}{"b":2}"#),
        ("POST", "/api/find/safe", "not json at all"),
        ("PUT", "/api/update/safe/keep", "[1, 2"),
        (
            "PUT",
            "/api/update/safe/keep/action/increment",
            r#"{"field":"n","value":}"#,
        ),
        (
            "PUT",
            "/api/update/sequence/safe/keep",
            r#"[["increment","n",1]"#,
        ),
        (
            "POST",
            "/api/batch/insert/safe",
            r#"{"inserts":[{"data":{"x":1}}"#,
        ),
        ("PUT", "/api/batch/update/safe", "{"),
        (
            "DELETE",
            "/api/batch/delete/safe",
            r#"{"deletes":[{"id":"keep"}"#,
        ),
        ("POST", "/api/distinct/safe/n", "{]"),
        ("POST", "/api/kv/set/k", r#"{"value": }"#),
        ("POST", "/api/kv/batch/get", r#"{"keys": ["a""#),
        ("POST", "/api/collections/other", r#"{"fields": {"#),
        ("PUT", "/api/schemas/safe", "}{"),
    ];
    for (method, path, body) in cases {
        let r = srv.call(&token, method, path, body);
        assert_error(&r, 400, &json_words);
    }
    // Invalid UTF-8 inside a JSON string.
    let auth = format!("Bearer {token}");
    let r = request_bytes(
        &srv,
        "POST",
        "/api/insert/safe",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        b"{\"name\":\"\xff\xfe\"}",
    );
    assert_error(&r, 400, &["utf", "json", "invalid", "parse"]);
    assert_intact(&srv, &token, 1);
    let r = srv.call(&token, "GET", "/api/kv/get/k", "");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = srv.call(&token, "GET", "/api/collections/other", "");
    assert_eq!(r.status, 404, "{}", r.text());
});

both_runtimes!(malformed_msgpack_bodies, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let words = [
        "msgpack",
        "messagepack",
        "decode",
        "invalid",
        "body",
        "parse",
    ];
    let cases: [(&str, &str, &[u8]); 6] = [
        // A map of two entries with only one key.
        ("POST", "/api/insert/safe", b"\x82\xa4name"),
        // A str8 that claims 200 bytes and has 3.
        ("POST", "/api/insert/safe", b"\x81\xa1a\xd9\xc8abc"),
        ("POST", "/api/find/safe", b"\x85\xa6filter"),
        ("PUT", "/api/update/safe/keep", b"\x81\xa1n\xcd\x01"),
        (
            "PUT",
            "/api/update/safe/keep/action/increment",
            b"\x92\xa1n",
        ),
        ("POST", "/api/batch/insert/safe", b"\x91\x91\x92\x81"),
    ];
    for (method, path, body) in cases {
        let r = msgpack(&srv, &token, method, path, body);
        assert_error(&r, 400, &words);
    }
    // Well-formed MessagePack that is not a record.
    let r = msgpack(&srv, &token, "POST", "/api/insert/safe", b"\x05");
    assert_error(&r, 400, &["object", "map", "record"]);
    let r = msgpack(&srv, &token, "POST", "/api/insert/safe", b"\x92\x01\x02");
    assert_error(&r, 400, &["object", "map", "record"]);
    assert_intact(&srv, &token, 1);
});

both_runtimes!(wrong_body_shapes, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let cases = [
        (
            "POST",
            "/api/insert/safe",
            "[1, 2]",
            &["object", "record", "map"][..],
        ),
        (
            "POST",
            "/api/insert/safe",
            r#""just a string""#,
            &["object", "record", "map"][..],
        ),
        (
            "POST",
            "/api/insert/safe",
            "42",
            &["object", "record", "map"][..],
        ),
        (
            "POST",
            "/api/insert/safe",
            r#"{"x": 1, "ttl": "forever"}"#,
            &["ttl"][..],
        ),
        (
            "POST",
            "/api/insert/safe",
            r#"{"x": 1, "ttl": -5}"#,
            &["ttl"][..],
        ),
        ("POST", "/api/find/safe", r#"{"limit": -1}"#, &["limit"][..]),
        (
            "POST",
            "/api/find/safe",
            r#"{"limit": 1e30}"#,
            &["limit"][..],
        ),
        ("POST", "/api/find/safe", r#"{"skip": 1e30}"#, &["skip"][..]),
        (
            "POST",
            "/api/find/safe",
            r#"{"sort": [{"field": "x", "order": "sideways"}]}"#,
            &["order"][..],
        ),
        (
            "POST",
            "/api/find/safe",
            r#"{"limit": "ten"}"#,
            &["limit"][..],
        ),
        (
            "POST",
            "/api/find/safe",
            r#"{"filter": 5}"#,
            &["filter", "expression"][..],
        ),
        (
            "PUT",
            "/api/update/sequence/safe/keep",
            r#"{"increment": 1}"#,
            &["array", "sequence", "action"][..],
        ),
        (
            "PUT",
            "/api/update/sequence/safe/keep",
            r#"[["increment"]]"#,
            &["action", "triple", "array", "sequence"][..],
        ),
        (
            "POST",
            "/api/kv/batch/set",
            r#"{"keys": ["a", "b"], "values": [{"x": 1}]}"#,
            &["keys", "values", "length"][..],
        ),
        (
            "POST",
            "/api/kv/batch/get",
            r#"{"keys": "a"}"#,
            &["keys"][..],
        ),
    ];
    for (method, path, body, words) in cases {
        let r = srv.call(&token, method, path, body);
        assert_error(&r, 400, words);
    }
    assert_intact(&srv, &token, 1);
    let r = srv.call(&token, "GET", "/api/kv/get/a", "");
    assert_eq!(r.status, 404, "half a KV batch was written: {}", r.text());
});

/// A find body with one filter.
fn filter_body(filter: &str) -> String {
    format!(r#"{{"filter": {filter}}}"#)
}

both_runtimes!(bad_filters, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let cond = |op: &str, value: &str| {
        format!(
            r#"{{"type":"Condition","content":{{"field":"n","operator":"{op}","value":{value}}}}}"#
        )
    };
    let cases = [
        (cond("Regex", r#""^x""#), &["regex", "operator"][..]),
        (cond("Exists", "true"), &["exists", "operator"][..]),
        (cond("In", "5"), &["in", "array"][..]),
        (cond("NotIn", r#""x""#), &["notin", "array"][..]),
        (cond("Gt", r#"{"a": 1}"#), &["gt", "value", "object"][..]),
        (cond("Lte", "[1, 2]"), &["lte", "value", "array"][..]),
        (cond("StartsWith", "5"), &["startswith", "string"][..]),
        (
            r#"{"type":"Condition","content":{"operator":"Eq","value":1}}"#.to_string(),
            &["field"][..],
        ),
        (
            r#"{"type":"Logical","content":{"operator":"Xor","expressions":[]}}"#.to_string(),
            &["xor", "operator"][..],
        ),
        (
            format!(
                r#"{{"type":"Logical","content":{{"operator":"Not","expressions":[{},{}]}}}}"#,
                cond("Eq", "1"),
                cond("Eq", "2")
            ),
            &["not", "one", "exactly"][..],
        ),
        (
            r#"{"type":"Weird","content":{}}"#.to_string(),
            &["weird", "type", "filter"][..],
        ),
        (
            r#"{"type":"Condition","content":"n = 1"}"#.to_string(),
            &["condition", "content", "filter"][..],
        ),
    ];
    for (filter, words) in &cases {
        let r = srv.call(&token, "POST", "/api/find/safe", &filter_body(filter));
        assert_error(&r, 400, words);
        // Distinct takes the same expressions and must refuse them the same way.
        let r = srv.call(&token, "POST", "/api/distinct/safe/n", &filter_body(filter));
        assert_error(&r, 400, words);
    }
    // A bad filter nested inside a valid one is found too.
    let nested = format!(
        r#"{{"type":"Logical","content":{{"operator":"And","expressions":[{},{{"type":"Logical","content":{{"operator":"Or","expressions":[{}]}}}}]}}}}"#,
        cond("Eq", "1"),
        cond("Like", r#""x""#)
    );
    let r = srv.call(&token, "POST", "/api/find/safe", &filter_body(&nested));
    assert_error(&r, 400, &["like", "operator"]);
    assert_intact(&srv, &token, 1);
});

both_runtimes!(missing_collection_and_record_are_404, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let not_found = ["not found", "no such", "does not exist", "missing"];
    let r = srv.call(&token, "GET", "/api/find/nope/x", "");
    assert_error(&r, 404, &not_found);
    let r = srv.call(&token, "GET", "/api/find/safe/ghost", "");
    assert_error(&r, 404, &not_found);
    let r = srv.call(&token, "PUT", "/api/update/safe/ghost", r#"{"n": 2}"#);
    assert_error(&r, 404, &not_found);
    let r = srv.call(&token, "DELETE", "/api/delete/nope/x", "");
    assert_error(&r, 404, &not_found);
    let r = srv.call(&token, "GET", "/api/schemas/nope", "");
    assert_error(&r, 404, &not_found);
    let r = srv.call(&token, "GET", "/api/kv/get/nope", "");
    assert_error(&r, 404, &not_found);
    // Even when the client negotiated MessagePack, errors are JSON.
    let auth = format!("Bearer {token}");
    let r = srv.request(
        "GET",
        "/api/find/safe/ghost",
        &[
            ("Authorization", &auth),
            ("Accept", "application/msgpack"),
            ("Content-Type", "application/msgpack"),
        ],
        "",
    );
    assert_error(&r, 404, &not_found);
    assert_intact(&srv, &token, 1);
});

both_runtimes!(oversized_body_is_413, |rt: Runtime| {
    let srv = TestServer::start_with(rt, &["--max-body-bytes", "1024"]);
    let token = seed(&srv);
    let words = ["large", "limit", "1024", "size", "body"];
    // Just under the limit is fine.
    let ok_body = format!(r#"{{"id":"fits","pad":"{}"}}"#, "a".repeat(900));
    assert!(ok_body.len() <= 1024);
    let r = srv.call(&token, "POST", "/api/insert/safe", &ok_body);
    assert_eq!(r.status, 200, "{}", r.text());

    let big = format!(r#"{{"id":"big","pad":"{}"}}"#, "a".repeat(2000));
    let r = srv.call(&token, "POST", "/api/insert/safe", &big);
    assert_error(&r, 413, &words);
    let big_batch = format!(
        r#"{{"inserts":[{}]}}"#,
        vec![r#"{"data":{"x":"0123456789"}}"#; 100].join(",")
    );
    let r = srv.call(&token, "POST", "/api/batch/insert/safe", &big_batch);
    assert_error(&r, 413, &words);

    // A huge declared length is refused before any body arrives.
    let auth = format!("Bearer {token}");
    let head = format!(
        "POST /api/insert/safe HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    );
    let (out, _) = exchange(&srv, head.as_bytes(), Duration::from_secs(5));
    let r = HttpReply::parse(&out).unwrap_or_else(|| {
        panic!(
            "no 413 before the body: {:?}",
            String::from_utf8_lossy(&out)
        )
    });
    assert_error(&r, 413, &words);

    let r = srv.call(&token, "GET", "/api/find/safe/big", "");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_intact(&srv, &token, 2);
});

both_runtimes!(oversized_headers_are_431, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let words = ["header", "large", "head", "too"];
    let long = "v".repeat(20 * 1024);
    let r = srv.request("GET", "/api/health", &[("X-Long", &long)], "");
    assert_error(&r, 431, &words);
    let auth = format!("Bearer {token}");
    let r = srv.request(
        "POST",
        "/api/insert/safe",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("X-Long", &long),
        ],
        r#"{"id":"nope"}"#,
    );
    assert_error(&r, 431, &words);
    let names: Vec<String> = (0..200).map(|i| format!("X-H{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = srv.request("GET", "/api/health", &many, "");
    assert_error(&r, 431, &words);
    assert_intact(&srv, &token, 1);
});

both_runtimes!(truncated_requests_do_not_hurt, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let auth = format!("Bearer {token}");
    let head = format!(
        "POST /api/insert/safe HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );

    // Body cut short, then the client half-closes: whatever the server says, it
    // must not be a success, and nothing is stored.
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(br#"{"id":"half","x":"#).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    if let Some(r) = HttpReply::parse(&out) {
        assert!(
            (400..500).contains(&r.status),
            "a truncated body got {}: {}",
            r.status,
            r.text()
        );
    }

    // A connection left hanging mid-body does not block others.
    let mut hanging = TcpStream::connect(srv.addr).expect("connect");
    hanging.write_all(head.as_bytes()).unwrap();
    hanging.write_all(br#"{"id":"hang"#).unwrap();
    // Dropped mid-headers and mid-body.
    for partial in [
        &b"GET /api/hea"[..],
        &head.as_bytes()[..40],
        format!("{head}{{\"id\":").as_bytes(),
    ] {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.write_all(partial).unwrap();
        drop(s);
    }
    assert_intact(&srv, &token, 1);
    drop(hanging);
    for id in ["half", "hang"] {
        let r = srv.call(&token, "GET", &format!("/api/find/safe/{id}"), "");
        assert_eq!(r.status, 404, "{id}: {}", r.text());
    }
    assert_intact(&srv, &token, 1);
});

both_runtimes!(garbage_bytes_get_400_and_server_lives, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let words = ["request", "http", "malformed", "invalid", "bad"];
    for garbage in [
        &b"\x00\x01\x02\xffGARBAGE\r\n\r\n"[..],
        b"HELLO WORLD\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nContent-Length: banana\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\n\x7f\x7f: y\r\n\r\n",
    ] {
        let (out, closed) = exchange(&srv, garbage, Duration::from_secs(5));
        let r = HttpReply::parse(&out).unwrap_or_else(|| {
            panic!(
                "no response to {:?}: {:?}",
                String::from_utf8_lossy(garbage),
                String::from_utf8_lossy(&out)
            )
        });
        assert_error(&r, 400, &words);
        assert!(
            closed,
            "the server kept an unframeable connection open after {:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    // Binary noise with no request boundary at all.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = exchange(&srv, &noise, Duration::from_secs(5));
    assert_intact(&srv, &token, 1);
});

both_runtimes!(unknown_route_is_404, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let words = ["route", "not found", "unknown", "no such"];
    for (method, path) in [
        ("GET", "/api/nope"),
        ("GET", "/index.html"),
        ("GET", "/console/missing.js"),
        ("POST", "/api/find"),
        ("POST", "/api/insert/safe/extra/segments"),
        ("GET", "/apix/health"),
        ("GET", "/api/health/more"),
    ] {
        let r = srv.call(&token, method, path, "");
        assert_error(&r, 404, &words);
    }
    assert_intact(&srv, &token, 1);
});

both_runtimes!(wrong_method_is_405, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let words = ["method", "not allowed"];
    for (method, path) in [
        ("GET", "/api/insert/safe"),
        ("DELETE", "/api/find/safe"),
        ("POST", "/api/find/safe/keep"),
        ("PATCH", "/api/update/safe/keep"),
        ("GET", "/api/delete/safe/keep"),
        ("PUT", "/api/kv/get/k"),
        ("DELETE", "/api/health"),
    ] {
        let r = srv.call(&token, method, path, "");
        assert_error(&r, 405, &words);
    }
    assert_intact(&srv, &token, 1);
});

both_runtimes!(wrong_method_405_lists_allowed_methods, |rt: Runtime| {
    // RFC 9110 15.5.6: a 405 MUST carry an Allow header.
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let r = srv.call(&token, "GET", "/api/insert/safe", "");
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("POST"), "{:?}", r.headers);
    let r = srv.call(&token, "PUT", "/api/collections/safe", "");
    assert_eq!(r.status, 405, "{}", r.text());
    let allow = r.header("allow").unwrap_or_default().to_string();
    for m in ["GET", "POST", "DELETE"] {
        assert!(allow.contains(m), "Allow {allow:?} lacks {m}");
    }
});

both_runtimes!(bad_path_encoding_is_400, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    // Segments that do not decode to UTF-8. (A `%` without two hex digits is
    // kept literally, as WHATWG URL parsers do; that is not tested here.)
    let words = ["utf", "encod", "percent", "invalid"];
    for path in [
        "/api/find/safe/%FF%FE",
        "/api/kv/get/%C3%28",
        "/api/find/%80/keep",
    ] {
        let r = srv.call(&token, "GET", path, "");
        assert_error(&r, 400, &words);
    }
    let r = srv.call(&token, "GET", "/api/find/safe/keep?select_fields=%FF", "");
    assert_error(&r, 400, &words);
    assert_intact(&srv, &token, 1);
});

both_runtimes!(deep_nesting_is_refused_not_a_crash, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let depth = 100_000;
    let json = format!(r#"{{"a":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
    let r = srv.call(&token, "POST", "/api/insert/safe", &json);
    assert_error(
        &r,
        400,
        &["depth", "nest", "deep", "recursion", "json", "invalid"],
    );
    let filter = format!(
        "{}{}{}",
        r#"{"type":"Logical","content":{"operator":"Not","expressions":["#.repeat(depth / 100),
        r#"{"type":"Condition","content":{"field":"n","operator":"Eq","value":1}}"#,
        "]}}".repeat(depth / 100)
    );
    let r = srv.call(&token, "POST", "/api/find/safe", &filter_body(&filter));
    assert!(
        r.status == 400 || r.status == 200,
        "deep filter: {} {}",
        r.status,
        r.text()
    );
    if r.status == 400 {
        assert_error(
            &r,
            400,
            &[
                "depth",
                "nest",
                "deep",
                "recursion",
                "json",
                "invalid",
                "filter",
            ],
        );
    }
    // MessagePack: a map holding 100,000 nested one-element arrays.
    let mut mp = b"\x81\xa1a".to_vec();
    mp.extend(std::iter::repeat_n(0x91u8, depth));
    mp.push(0xc0);
    let r = msgpack(&srv, &token, "POST", "/api/insert/safe", &mp);
    assert_error(
        &r,
        400,
        &[
            "depth",
            "nest",
            "deep",
            "recursion",
            "msgpack",
            "messagepack",
            "invalid",
        ],
    );
    assert_intact(&srv, &token, 1);
});

both_runtimes!(bad_request_keeps_the_connection, |rt: Runtime| {
    // A bad request is answered and the connection serves the next one.
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let bad = format!(
        "POST /api/insert/safe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{{\"a\":"
    );
    let good = format!(
        "GET /api/find/safe/keep HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let (out, _) = exchange(
        &srv,
        format!("{bad}{good}").as_bytes(),
        Duration::from_secs(5),
    );
    let (first, used) = HttpReply::parse_one(&out).expect("first response");
    assert_error(&first, 400, &["json", "parse", "invalid", "eof"]);
    let (second, _) = HttpReply::parse_one(&out[used..]).unwrap_or_else(|| {
        panic!(
            "no second response on the same connection: {:?}",
            String::from_utf8_lossy(&out[used..])
        )
    });
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.json()["n"]["value"], 1);
    assert_intact(&srv, &token, 1);
});

both_runtimes!(empty_bodies_mean_no_parameters, |rt: Runtime| {
    // Spec 1.2: POST/PUT/DELETE with a Content-Type and no body mean `{}`.
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let auth = format!("Bearer {token}");
    let json = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let mp = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/msgpack"),
        ("Accept", "application/msgpack"),
    ];
    let r = srv.request("POST", "/api/find/safe", &json, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    let r = srv.request("POST", "/api/distinct/safe/s", &json, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["values"], serde_json::json!(["x"]));
    let r = srv.request("PUT", "/api/update/safe/keep", &json, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["n"]["value"], 1);
    let r = srv.request("POST", "/api/insert/safe", &json, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let empty_id = r.json()["id"].as_str().expect("id").to_string();
    // In MessagePack mode a bodyless DELETE still carries the Content-Type.
    let r = srv.request("DELETE", &format!("/api/delete/safe/{empty_id}"), &mp, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = rmp_serde::from_slice(&r.body).expect("a MessagePack map");
    assert_eq!(v["id"], empty_id.as_str());
    // Trash restore with no body and no Content-Type.
    let r = srv.request(
        "POST",
        "/api/trash/safe",
        &[("Authorization", auth.as_str())],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["records_restored"], 1);
    // GET with a JSON Content-Type and no body.
    let r = srv.request("GET", "/api/collections", &json, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_intact(&srv, &token, 2);
});

both_runtimes!(conflicting_content_length_is_400, |rt: Runtime| {
    // RFC 9112 6.3: differing Content-Length values make the framing invalid;
    // the server must answer 400 and close (else requests can be smuggled).
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let req = format!(
        "POST /api/insert/safe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 13\r\nContent-Length: 2\r\n\r\n{{\"id\":\"smug\"}}"
    );
    let (out, closed) = exchange(&srv, req.as_bytes(), Duration::from_secs(3));
    let r = HttpReply::parse(&out)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&out)));
    assert_error(&r, 400, &["content-length"]);
    assert!(closed, "connection left open after invalid framing");
    let r = srv.call(&token, "GET", "/api/find/safe/smug", "");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_intact(&srv, &token, 1);
});

both_runtimes!(
    unsupported_transfer_coding_is_refused_and_closed,
    |rt: Runtime| {
        // RFC 9112 6.1 / 6.3: an unknown coding (501) or chunked not last (400);
        // either way the body cannot be framed, so the connection is closed.
        let srv = TestServer::start(rt);
        let token = seed(&srv);
        for te in ["gzip, chunked, mystery", "chunked, gzip", "mystery"] {
            let req = format!(
            "POST /api/insert/safe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: {te}\r\n\r\n"
        );
            let (out, closed) = exchange(&srv, req.as_bytes(), Duration::from_secs(3));
            let r = HttpReply::parse(&out).unwrap_or_else(|| {
                panic!(
                    "no response for {te:?}: {:?}",
                    String::from_utf8_lossy(&out)
                )
            });
            assert!(
                r.status == 400 || r.status == 501,
                "{te:?}: {} {}",
                r.status,
                r.text()
            );
            assert_error(
                &r,
                r.status,
                &["transfer-encoding", "transfer coding", "chunked"],
            );
            assert!(closed, "connection left open after {te:?}");
        }
        assert_intact(&srv, &token, 1);
    }
);

both_runtimes!(reserved_msgpack_marker_is_malformed, |rt: Runtime| {
    // 0xc1 is "never used" in the MessagePack format: a body holding it is
    // malformed, wherever it appears.
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let words = ["msgpack", "messagepack", "marker", "invalid", "malformed"];
    let r = msgpack(&srv, &token, "POST", "/api/insert/safe", b"\x81\xa1a\xc1");
    assert_error(&r, 400, &words);
    let r = msgpack(&srv, &token, "POST", "/api/insert/safe", b"\xc1");
    assert_error(&r, 400, &words);
    let r = msgpack(&srv, &token, "POST", "/api/find/safe", b"\xc1");
    assert_error(&r, 400, &words);
    assert_intact(&srv, &token, 1);
});

both_runtimes!(
    a_second_transfer_encoding_header_cannot_smuggle_a_request,
    |rt: Runtime| {
        // The adversarial run's attack: `chunked`, then `gzip` in a second
        // header, and a request hidden in the body. The coding list is
        // `chunked, gzip`: refused, the connection closed, nothing hidden run.
        let srv = TestServer::start(rt);
        let token = seed(&srv);
        let hidden = format!(
            "POST /api/insert/safe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{{\"id\":\"smugg\"}}"
        );
        let req = format!(
            "POST /api/insert/safe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n{hidden}"
        );
        let (out, closed) = exchange(&srv, req.as_bytes(), Duration::from_secs(3));
        let r = HttpReply::parse(&out)
            .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&out)));
        assert!(
            r.status == 400 || r.status == 501,
            "{} {}",
            r.status,
            r.text()
        );
        assert!(closed, "connection left open after ambiguous framing");
        let r = srv.call(&token, "GET", "/api/find/safe/smugg", "");
        assert_eq!(r.status, 404, "the hidden request ran: {}", r.text());
        assert_intact(&srv, &token, 1);
    }
);

both_runtimes!(query_tokens_only_where_headers_cannot_go, |rt: Runtime| {
    // `?token=` ends up in logs and browser histories: only the routes a
    // browser opens without headers (WebSocket, EventSource) take it.
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let r = srv.request(
        "GET",
        &format!("/api/find/safe/keep?token={token}"),
        &[],
        "",
    );
    assert_error(&r, 401, &["token", "authorization"]);
    let r = srv.call(&token, "GET", "/api/find/safe/keep", "");
    assert_eq!(r.status, 200, "{}", r.text());
    // An EventSource subscription still can.
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /api/subscribe/safe?token={token} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
});

both_runtimes!(api_key_guessing_is_throttled_per_address, |rt: Runtime| {
    // The adversarial run tried 14,500 keys in 3 s. After 10 wrong keys in a
    // minute an address gets 429 with Retry-After; other requests go on.
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    let attempt = |key: &str| {
        srv.request(
            "POST",
            "/api/auth/token",
            &[("Content-Type", "application/json")],
            &format!("{{\"api_key\":\"{key}\"}}"),
        )
    };
    for i in 0..10 {
        let r = attempt(&format!("guess-{i}"));
        assert_eq!(r.status, 401, "attempt {i}: {}", r.text());
    }
    let r = attempt("guess-10");
    assert_error(&r, 429, &["too many", "api key"]);
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Even the right key waits out the window from this address...
    assert_eq!(attempt(tidepool_tests::API_KEY).status, 429);
    // ...while requests with a token are served as before.
    let r = srv.call(&token, "GET", "/api/find/safe/keep", "");
    assert_eq!(r.status, 200, "{}", r.text());
});

both_runtimes!(a_name_has_one_unicode_spelling, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = seed(&srv);
    // `café` composed (NFC, U+00E9) is a name; decomposed (NFD, e + U+0301)
    // is refused rather than becoming a second, look-alike collection.
    let r = srv.call(&token, "POST", "/api/insert/caf%C3%A9", r#"{"n":1}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = srv.call(&token, "POST", "/api/insert/cafe%CC%81", r#"{"n":2}"#);
    assert_error(&r, 400, &["NFC"]);
    let r = srv.call(&token, "POST", "/api/kv/set/cafe%CC%81", r#"{"value":1}"#);
    assert_error(&r, 400, &["NFC"]);
    let r = srv.call(&token, "POST", "/api/find/caf%C3%A9", "{}");
    assert_eq!(r.json().as_array().map(Vec::len), Some(1), "{}", r.text());
    assert_intact(&srv, &token, 1);
});

// Integers are kept exactly or refused: one outside the signed 64-bit range
// (JSON literal or MessagePack uint 64) is a 400 with nothing stored, never
// a float that reads back changed; the extremes of i64 round-trip exactly.
both_runtimes!(
    integers_beyond_64_bits_are_refused_not_rounded,
    |rt: Runtime| {
        let srv = TestServer::start(rt);
        let token = seed(&srv);
        for body in [
            r#"{"n": 18446744073709551616}"#,
            r#"{"n": 9223372036854775808}"#,
            r#"{"nested": {"list": [1, -9223372036854775809]}}"#,
        ] {
            let r = srv.call(&token, "POST", "/api/insert/safe", body);
            assert_error(&r, 400, &["64 bits"]);
        }
        let wide = rmp_serde::to_vec_named(&serde_json::json!({"n": u64::MAX})).unwrap();
        let r = msgpack(&srv, &token, "POST", "/api/insert/safe", &wide);
        assert_eq!(r.status, 400);
        assert_intact(&srv, &token, 1);
        for exact in [i64::MAX, i64::MIN] {
            let r = srv.call(
                &token,
                "POST",
                "/api/insert/exact",
                &format!(r#"{{"n": {exact}}}"#),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            let id = r.json()["id"].as_str().unwrap().to_string();
            let r = srv.call(&token, "GET", &format!("/api/find/exact/{id}"), "");
            assert_eq!(r.json()["n"]["value"].as_i64(), Some(exact), "{}", r.text());
        }
    }
);

// `--max-query-work`: a filter that would check more conditions than the
// budget (records examined times its conditions) is stopped with 400 and a
// message naming the setting, and the server answers the next request; the
// budget changes at run time with PUT /api/config.
both_runtimes!(a_query_past_its_work_budget_is_refused, |rt: Runtime| {
    let srv = TestServer::start_with(rt, &["--max-query-work", "1000000"]);
    let token = srv.token();
    let items: Vec<String> = (0..2_000)
        .map(|i| format!(r#"{{"data":{{"s":"record {i}"}}}}"#))
        .collect();
    let r = srv.call(
        &token,
        "POST",
        "/api/batch/insert/many",
        &format!(r#"{{"inserts":[{}]}}"#, items.join(",")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // 2,000 records x 1,000 conditions = 2,000,000 checks.
    let conditions: Vec<String> = (0..1_000)
        .map(|i| format!(r#"{{"type":"Condition","content":{{"field":"s","operator":"Contains","value":"nothing {i}"}}}}"#))
        .collect();
    let query = format!(
        r#"{{"filter":{{"type":"Logical","content":{{"operator":"Or","expressions":[{}]}}}}}}"#,
        conditions.join(",")
    );
    let r = srv.call(&token, "POST", "/api/find/many", &query);
    assert_error(&r, 400, &["--max-query-work"]);
    let r = srv.request("GET", "/api/health", &[], "");
    assert_eq!(r.status, 200);
    let r = srv.call(
        &token,
        "PUT",
        "/api/config",
        r#"{"max_query_work": 10000000}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = srv.call(&token, "POST", "/api/find/many", &query);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().map(Vec::len), Some(0));
});
