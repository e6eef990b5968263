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

// Over `--max-connections` a client is told why (503, JSON, Retry-After)
// instead of being reset or left hanging, and a freed place is usable again.
both_runtimes!(connections_over_the_limit_get_a_503, |rt: Runtime| {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let srv = TestServer::start_with(rt, &["--max-connections", "2"]);
    let hold: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(srv.addr).expect("connect"))
        .collect();
    // Make sure both held connections are accepted before the third.
    for mut s in &hold {
        s.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    let r = srv.raw(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n");
    let reply = tidepool_tests::HttpReply::parse(&r).expect("an HTTP answer, not a reset");
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(reply.json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("connection limit")));
    drop(hold);
    // The server notices the closes; then a new client is served.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = srv.request("GET", "/api/health", &[], "");
        if r.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never freed: {}",
            r.status
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
});

// The connection cap stays under the process's file limit (past it a client
// could not even be accepted to be told no), and the server says so.
both_runtimes!(the_connection_cap_fits_the_file_limit, |rt: Runtime| {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "ulimit -n 300 && exec '{}' --listen 127.0.0.1:0 --data-dir '{}' --api-key k --max-connections 1000",
        rt.binary().display(),
        dir.path().display()
    );
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bash");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    for line in lines {
        let line = line.unwrap();
        let done = line.contains("listening on http://");
        said.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        said.iter()
            .any(|l| l.contains("--max-connections lowered from 1000 to 172")),
        "{said:?}"
    );
});
