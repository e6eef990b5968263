//! Browsers and the server's names, against a real process on both
//! runtimes: CORS for trusted origins (`--trusted-origins`), WebSocket
//! upgrades from other origins refused, and `Host` checked against
//! `--trusted-hosts` (DNS rebinding).

use tidepool_tests::{both_runtimes, HttpReply, Runtime, TestServer};

fn raw_request(srv: &TestServer, head: &str) -> HttpReply {
    HttpReply::parse(&srv.raw(head.as_bytes())).expect("a response")
}

both_runtimes!(trusted_origins_and_hosts, |rt: Runtime| {
    let srv = TestServer::start_with(
        rt,
        &[
            "--trusted-origins",
            "https://app.example.com",
            "--trusted-hosts",
            "127.0.0.1,localhost",
            "--rate-limit-per-key",
            "1000",
        ],
    );
    let token = srv.token();
    // A preflight from the trusted page: allowed, with what it asked for.
    let r = raw_request(
        &srv,
        "OPTIONS /api/insert/c HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    // From another page: refused.
    let r = raw_request(
        &srv,
        "OPTIONS /api/insert/c HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // The real request: readable by the trusted page only.
    let insert = |origin: &str| {
        let body = r#"{"n":1}"#;
        raw_request(
            &srv,
            &format!(
                "POST /api/insert/c HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let r = insert("https://app.example.com");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = insert("https://evil.example");
    assert!(r.header("access-control-allow-origin").is_none());
    // A reply that comes later (a chat answer, here from the offline
    // provider) carries the same headers as one given at once.
    let r = srv.call(&token, "POST", "/api/chat", r#"{"collections": []}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let chat = r.json()["chat_id"].as_str().unwrap().to_string();
    let body = r#"{"message":"hello"}"#;
    let r = raw_request(
        &srv,
        &format!(
            "POST /api/chat/{chat}/messages HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example.com\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["responses"][0].is_string(), "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("x-ratelimit-limit"), Some("1000"));
    // WebSocket upgrades: another page's origin is refused before the 101.
    let upgrade = |origin: &str| {
        raw_request(
            &srv,
            &format!(
                "GET /api/ws HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
        )
    };
    let r = upgrade("https://evil.example");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("--trusted-origins"), "{}", r.text());
    // A Host the operator did not list (a rebound DNS name): refused.
    let r = raw_request(
        &srv,
        "GET /api/health HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = raw_request(
        &srv,
        "GET /api/health HTTP/1.1\r\nHost: localhost:9\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
});
