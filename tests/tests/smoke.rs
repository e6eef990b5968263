//! The basics over raw HTTP: health, auth, a write that survives kill -9.

use tidepool_tests::{both_runtimes, Runtime, TestServer};

both_runtimes!(health_and_auth, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let r = srv.request("GET", "/api/health", &[], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let r = srv.request("POST", "/api/auth/token", &[], r#"{"api_key":"wrong"}"#);
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].is_string());
    let r = srv.request("POST", "/api/find/users", &[], "{}");
    assert_eq!(r.status, 401);
    let r = srv.request(
        "POST",
        "/api/find/users",
        &[("Authorization", "Bearer x.y.z")],
        "{}",
    );
    assert_eq!(r.status, 401);
});

both_runtimes!(acknowledged_write_survives_kill9, |rt: Runtime| {
    let mut srv = TestServer::start(rt);
    let token = srv.token();
    let r = srv.call(
        &token,
        "POST",
        "/api/insert/things",
        r#"{"id":"a/b c","n":1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    srv.restart();
    let token = srv.token();
    let r = srv.call(&token, "GET", "/api/find/things/a%2Fb%20c", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["n"]["value"], 1);
});
