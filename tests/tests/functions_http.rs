//! Stored functions over raw HTTP against a real server process: an
//! `HttpRequest` stage calling a loopback server (allowed by the setting,
//! refused by default, private addresses refused too), the path-routed
//! dispatcher, budgets that stop runaway functions, `transaction_config`
//! leaving nothing written when a run fails, bad definitions, the
//! `/metrics` run counters, and the bcrypt stages (run off the lock).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use tidepool_tests::{both_runtimes, HttpReply, Runtime, TestServer};

fn save(srv: &TestServer, token: &str, def: Value) -> HttpReply {
    srv.call(token, "POST", "/api/functions", &def.to_string())
}

fn saved(srv: &TestServer, token: &str, def: Value) -> String {
    let r = save(srv, token, def);
    assert_eq!(r.status, 200, "save: {}", r.text());
    r.json()["id"].as_str().expect("id").to_string()
}

fn call(srv: &TestServer, token: &str, label: &str, params: Value) -> HttpReply {
    srv.call(
        token,
        "POST",
        &format!("/api/functions/{label}"),
        &params.to_string(),
    )
}

fn count(srv: &TestServer, token: &str, collection: &str) -> usize {
    let r = srv.call(token, "POST", &format!("/api/find/{collection}"), "{}");
    match r.status {
        200 => r.json().as_array().map_or(0, Vec::len),
        404 => 0,
        s => panic!("find {collection}: {s} {}", r.text()),
    }
}

/// A one-shot HTTP server on loopback: answers one request with JSON that
/// echoes its method, target and body, and hands the request head back.
fn echo_server() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            head.push_str(&line);
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let first = head.lines().next().unwrap_or("").to_string();
        let mut parts = first.split(' ');
        let reply = json!({
            "method": parts.next(),
            "target": parts.next(),
            "got": serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        })
        .to_string();
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
        let _ = tx.send(head);
    });
    (port, rx)
}

fn http_function(label: &str, url: &str) -> Value {
    json!({
        "label": label,
        "name": "Calls out",
        "parameters": {"who": {"required": true}},
        "functions": [
            {"type": "HttpRequest", "url": url, "method": "POST",
             "headers": {"X-Caller": "{{who}}"},
             "body": {"greeting": "hello {{who}}"},
             "output_field": "reply"},
        ],
    })
}

both_runtimes!(
    http_request_reaches_an_allowed_loopback_server,
    |rt: Runtime| {
        let srv = TestServer::start_with(rt, &["--function-http-allow", "127.0.0.1"]);
        let token = srv.token();
        let (port, heads) = echo_server();
        let url = format!("http://127.0.0.1:{port}/hook?x=1");
        saved(&srv, &token, http_function("hook", &url));
        let r = call(&srv, &token, "hook", json!({"who": "ann"}));
        assert_eq!(r.status, 200, "{}", r.text());
        let reply = &r.json()["records"][0]["reply"];
        assert_eq!(reply["method"], "POST");
        assert_eq!(reply["target"], "/hook?x=1");
        assert_eq!(reply["got"], json!({"greeting": "hello ann"}));
        let head = heads.recv().unwrap().to_ascii_lowercase();
        assert!(head.contains("x-caller: ann"), "{head}");
    }
);

both_runtimes!(
    http_request_refuses_loopback_and_private_hosts_by_default,
    |rt: Runtime| {
        let srv = TestServer::start(rt);
        let token = srv.token();
        let (port, _heads) = echo_server();
        for (label, url) in [
            ("loop", format!("http://127.0.0.1:{port}/hook")),
            ("named", format!("http://localhost:{port}/hook")),
            ("private", "http://10.1.2.3/hook".to_string()),
            ("metadata", "http://169.254.169.254/latest".to_string()),
        ] {
            saved(&srv, &token, http_function(label, &url));
            let r = call(&srv, &token, label, json!({"who": "ann"}));
            assert_eq!(r.status, 400, "{label}: {}", r.text());
            let msg = r.json()["message"].as_str().unwrap_or("").to_string();
            assert!(msg.contains("HTTP request failed"), "{label}: {msg}");
            assert!(msg.contains("--function-http-allow"), "{label}: {msg}");
        }
    }
);

both_runtimes!(
    route_dispatcher_answers_with_the_return_stage,
    |rt: Runtime| {
        let srv = TestServer::start(rt);
        let token = srv.token();
        srv.insert("pets", &json!({"name": "rex", "kind": "dog"}));
        srv.insert("pets", &json!({"name": "tom", "kind": "cat"}));
        saved(
            &srv,
            &token,
            json!({
                "label": "pets_by_kind",
                "name": "Pets of a kind",
                "http_method": "GET",
                "http_path": "/pets/:kind",
                "functions": [
                    {"type": "Query", "collection": "pets",
                     "filter": {"type": "Condition", "content":
                        {"field": "kind", "operator": "Eq", "value": "{{kind}}"}}},
                    {"type": "Count", "output_field": "n"},
                    {"type": "Return", "fields": {"kind": "{{kind}}", "count": "{{n}}", "page": "{{page}}"},
                     "status_code": 203},
                ],
            }),
        );
        let r = srv.call(&token, "GET", "/api/route/pets/dog?page=2", "");
        assert_eq!(r.status, 203, "{}", r.text());
        assert_eq!(r.json(), json!({"kind": "dog", "count": 1, "page": "2"}));
        // The same function through the management route answers G6's shape.
        let r = call(
            &srv,
            &token,
            "pets_by_kind",
            json!({"kind": "cat", "page": 1}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["records"][0]["count"], 1);
        // No function answers this path or this method.
        assert_eq!(
            srv.call(&token, "GET", "/api/route/nowhere", "").status,
            404
        );
        assert_eq!(
            srv.call(&token, "DELETE", "/api/route/pets/dog", "").status,
            404
        );
        // The dispatcher needs a key like every other route.
        assert_eq!(
            srv.request("GET", "/api/route/pets/dog", &[], "").status,
            401
        );
    }
);

both_runtimes!(budgets_stop_runaway_functions, |rt: Runtime| {
    let srv = TestServer::start_with(rt, &["--function-max-steps", "200"]);
    let token = srv.token();
    // Calls itself forever: stopped by the CallFunction depth budget.
    saved(
        &srv,
        &token,
        json!({"label": "forever", "name": "Recursion",
               "functions": [{"type": "CallFunction", "function_label": "forever"}]}),
    );
    let r = call(&srv, &token, "forever", json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("budget"), "{}", r.text());

    // A ForEach whose body outlasts the step budget, inside a TryCatch
    // that must not swallow the budget error.
    for i in 0..100 {
        srv.insert("many", &json!({"i": i}));
    }
    saved(
        &srv,
        &token,
        json!({"label": "busy", "name": "Too much work",
        "functions": [
          {"type": "FindAll", "collection": "many"},
          {"type": "TryCatch",
           "try_functions": [{"type": "ForEach", "functions": [
               {"type": "SetField", "field": "a", "value": 1},
               {"type": "SetField", "field": "b", "value": 2},
               {"type": "SetField", "field": "c", "value": 3}]}],
           "catch_functions": [{"type": "SetField", "field": "caught", "value": true}]},
        ]}),
    );
    let r = call(&srv, &token, "busy", json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("200 stages"), "{}", r.text());
    // The server goes on serving.
    assert_eq!(count(&srv, &token, "many"), 100);
});

both_runtimes!(transaction_config_writes_all_or_nothing, |rt: Runtime| {
    let srv = TestServer::start_with(rt, &["--function-max-steps", "50"]);
    let token = srv.token();
    let failing = |label: &str, transactional: bool| {
        let mut def = json!({
            "label": label, "name": "Two writes and a failure",
            "parameters": {"n": {"required": true}},
            "functions": [
                {"type": "Insert", "collection": label, "record": {"step": 1}},
                {"type": "Insert", "collection": label, "record": {"step": 2}},
                {"type": "Validate", "data_field": "payload", "schema": {"type": "object", "required": ["missing"]}},
            ],
        });
        if transactional {
            def["transaction_config"] = json!({"enabled": true, "auto_rollback": true});
        }
        def
    };
    saved(&srv, &token, failing("plain", false));
    saved(&srv, &token, failing("atomic", true));
    let r = call(&srv, &token, "plain", json!({"n": 1}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        count(&srv, &token, "plain"),
        2,
        "without a transaction the writes stay"
    );
    let r = call(&srv, &token, "atomic", json!({"n": 1}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        count(&srv, &token, "atomic"),
        0,
        "a failed transactional run writes nothing"
    );

    // A budget stop inside the transaction rolls back too.
    saved(
        &srv,
        &token,
        json!({"label": "spin", "name": "Writes then spins",
               "transaction_config": {"enabled": true, "auto_rollback": true},
               "functions": [
                 {"type": "Insert", "collection": "spin", "record": {"x": 1}},
                 {"type": "CallFunction", "function_label": "spin"}]}),
    );
    let r = call(&srv, &token, "spin", json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(count(&srv, &token, "spin"), 0);

    // A successful one commits, reads its own writes, and honours savepoints.
    saved(
        &srv,
        &token,
        json!({"label": "ok_tx", "name": "Commits",
               "transaction_config": {"enabled": true, "auto_rollback": true},
               "functions": [
                 {"type": "Insert", "collection": "ok_tx", "record": {"k": "kept"}},
                 {"type": "CreateSavepoint", "name": "s1"},
                 {"type": "Insert", "collection": "ok_tx", "record": {"k": "undone"}},
                 {"type": "RollbackToSavepoint", "name": "s1"},
                 {"type": "FindAll", "collection": "ok_tx"},
                 {"type": "Count", "output_field": "seen"}]}),
    );
    let r = call(&srv, &token, "ok_tx", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["records"][0]["seen"], 1);
    let found = srv.call(&token, "POST", "/api/find/ok_tx", "{}").json();
    let kinds: Vec<&Value> = found.as_array().unwrap().iter().map(|r| &r["k"]).collect();
    assert_eq!(kinds.len(), 1);
    assert!(
        kinds[0] == &json!("kept") || kinds[0]["value"] == json!("kept"),
        "{found}"
    );

    // Savepoints without a transaction are refused, not ignored.
    saved(
        &srv,
        &token,
        json!({"label": "no_tx", "name": "No transaction",
               "functions": [{"type": "CreateSavepoint", "name": "s1"}]}),
    );
    let r = call(&srv, &token, "no_tx", json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("transaction_config"), "{}", r.text());
});

both_runtimes!(bad_definitions_and_calls_get_clear_errors, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = srv.token();
    let cases = [
        (json!([1, 2]), 400, "object"),
        (
            json!({"label": "x", "name": "x", "functions": [{"type": "Teleport"}]}),
            400,
            "unknown stage type `Teleport`",
        ),
        (
            json!({"label": "x", "name": "x", "functions": [{"type": "FindAll", "collection": 5}]}),
            400,
            "functions[0] (FindAll)",
        ),
        (
            json!({"label": "x", "name": "x", "functions": [{"type": "If",
                "condition": {"type": "HasRecords"},
                "then_functions": [{"type": "Count"}]}]}),
            400,
            "functions[0].then_functions[0] (Count)",
        ),
        (
            json!({"label": "x", "name": "x", "functions": [{"collection": "c"}]}),
            400,
            "functions[0]",
        ),
        (
            json!({"label": "x", "name": "x", "functions": [], "http_method": "BREW", "http_path": "/x"}),
            400,
            "BREW",
        ),
    ];
    for (body, status, words) in cases {
        let r = save(&srv, &token, body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let msg = r.json()["message"].as_str().unwrap_or("").to_string();
        assert!(msg.contains(words), "{body}: {msg}");
    }
    let r = srv.call(&token, "POST", "/api/functions", "{not json");
    assert_eq!(r.status, 400, "{}", r.text());
    // Nothing was stored by any of them.
    let listed = srv.call(&token, "GET", "/api/functions", "");
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.json().as_array().map(Vec::len),
        Some(0),
        "{}",
        listed.text()
    );

    saved(
        &srv,
        &token,
        json!({"label": "needs", "name": "Needs a parameter",
               "parameters": {"id": {"required": true}},
               "functions": [{"type": "FindById", "collection": "c", "record_id": "{{id}}"}]}),
    );
    let r = call(&srv, &token, "needs", json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("missing required parameter 'id'"),
        "{}",
        r.text()
    );
    let r = call(&srv, &token, "needs", json!([1]));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = call(&srv, &token, "nobody", json!({}));
    assert_eq!(r.status, 404, "{}", r.text());
    let dup = save(
        &srv,
        &token,
        json!({"label": "needs", "name": "again", "functions": []}),
    );
    assert_eq!(dup.status, 409, "{}", dup.text());
    // The first definition is untouched.
    let r = srv.call(&token, "GET", "/api/functions/needs", "");
    assert_eq!(r.json()["name"], "Needs a parameter");
});

both_runtimes!(metrics_count_function_runs, |rt: Runtime| {
    let srv = TestServer::start_with(rt, &["--metrics", "public"]);
    let token = srv.token();
    saved(
        &srv,
        &token,
        json!({"label": "one", "name": "One", "functions": [{"type": "Count", "output_field": "n"}]}),
    );
    saved(
        &srv,
        &token,
        json!({"label": "bad", "name": "Bad",
               "functions": [{"type": "Validate", "data_field": "payload", "schema": {"type": "object", "required": ["x"]}}]}),
    );
    for _ in 0..3 {
        assert_eq!(call(&srv, &token, "one", json!({})).status, 200);
    }
    assert_eq!(call(&srv, &token, "bad", json!({})).status, 400);
    let text = srv.request("GET", "/metrics", &[], "").text();
    assert!(
        text.contains("tidepool_function_runs_total{outcome=\"ok\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("tidepool_function_runs_total{outcome=\"error\"} 1"),
        "{text}"
    );
    assert!(text.contains("tidepool_function_runs 0"), "{text}");
});

both_runtimes!(password_stages_sign_up_and_log_in, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = srv.token();
    saved(
        &srv,
        &token,
        json!({"label": "signup", "name": "Sign up",
        "functions": [
          {"type": "BcryptHash", "plain": "{{password}}", "cost": 4, "output_field": "hash"},
          {"type": "Insert", "collection": "users",
           "record": {"name": "{{name}}", "hash": "{{hash}}"}}]}),
    );
    saved(
        &srv,
        &token,
        json!({"label": "login", "name": "Log in",
        "functions": [
          {"type": "FindOne", "collection": "users", "key": "name", "value": "{{name}}"},
          {"type": "BcryptVerify", "plain": "{{password}}", "hash_field": "hash", "output_field": "ok"},
          {"type": "Return", "fields": {"ok": "{{ok}}"}}]}),
    );
    let r = call(
        &srv,
        &token,
        "signup",
        json!({"name": "ann", "password": "tide pool"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The stored hash is a real bcrypt hash, never the password.
    let users = srv.call(&token, "POST", "/api/find/users", "{}").json();
    let stored = users[0]["hash"].to_string();
    assert!(stored.contains("$2b$04$"), "{stored}");
    assert!(!stored.contains("tide pool"), "{stored}");

    let login_with = |params: Value| {
        let r = call(&srv, &token, "login", params);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["records"][0]["ok"].clone()
    };
    let login = |password: &str| login_with(json!({"name": "ann", "password": password}));
    assert_eq!(login("tide pool"), json!(true));
    assert_eq!(login("tide poo1"), json!(false));
    // The hash checked is the stored one: a caller's own `hash` parameter
    // (a hash of its own password) changes nothing.
    let hash_of = |plain: &str| {
        let r = call(&srv, &token, "hash-only", json!({"plain": plain}));
        r.json()["records"][0]["h"].as_str().unwrap().to_string()
    };
    saved(
        &srv,
        &token,
        json!({"label": "hash-only", "name": "Hash",
        "functions": [{"type": "BcryptHash", "plain": "{{plain}}", "cost": 4, "output_field": "h"}]}),
    );
    let forged = hash_of("evil");
    assert_eq!(
        login_with(json!({"name": "ann", "password": "evil", "hash": forged})),
        json!(false)
    );

    // A cost past the budget's reach is refused before any work.
    saved(
        &srv,
        &token,
        json!({"label": "too-slow", "name": "Cost 20",
        "functions": [{"type": "BcryptHash", "plain": "x", "cost": 20, "output_field": "h"}]}),
    );
    let r = call(&srv, &token, "too-slow", json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("between 4 and 16"), "{}", r.text());
});

both_runtimes!(bcrypt_runs_outside_the_server_lock, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = srv.token();
    srv.insert("notes", &json!({"n": 1}));
    // Cost 15: seconds of CPU, during which the server must go on serving.
    saved(
        &srv,
        &token,
        json!({"label": "slow-hash", "name": "Slow hash",
        "functions": [{"type": "BcryptHash", "plain": "pw", "cost": 15, "output_field": "h"}]}),
    );
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let hash_done = done_tx.clone();
        let (srv, token) = (&srv, &token);
        s.spawn(move || {
            let r = call(srv, token, "slow-hash", json!({}));
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(r.text().contains("$2b$15$"), "{}", r.text());
            hash_done.send("hash").unwrap();
        });
        // Give the hash a head start, then read and write meanwhile.
        std::thread::sleep(std::time::Duration::from_millis(300));
        for i in 0..3 {
            srv.insert("notes", &json!({"n": i + 2}));
            assert!(count(srv, token, "notes") >= 2);
        }
        done_tx.send("requests").unwrap();
    });
    let order: Vec<&str> = done_rx.try_iter().collect();
    assert_eq!(
        order,
        ["requests", "hash"],
        "reads and writes waited for the hash"
    );
});
