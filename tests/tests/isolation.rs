//! Transactions against a real server process on both runtimes, two clients
//! on their own connections: every anomaly an isolation level forbids is
//! prevented (and what the weaker levels allow is shown, as documented in
//! `core/src/engine/txn.rs`); `transaction_id` on a route that cannot stage
//! is refused with nothing applied; transactions belong to their key, are
//! bounded per key, and are rolled back when idle.

use serde_json::{json, Value};
use std::time::Duration;
use tidepool_core::dialect::rest::routes::{IN_TRANSACTION, ROUTES};
use tidepool_tests::{both_runtimes, HttpReply, Runtime, TestServer};

const LEVELS: [&str; 4] = [
    "ReadUncommitted",
    "ReadCommitted",
    "RepeatableRead",
    "Serializable",
];

/// Whether a level keeps its reads as they were (and fails instead).
fn repeatable(level: &str) -> bool {
    matches!(level, "RepeatableRead" | "Serializable")
}

struct Client<'a> {
    srv: &'a TestServer,
    token: String,
}

impl Client<'_> {
    fn call(&self, method: &str, path: &str, body: &Value) -> HttpReply {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        self.srv.call(&self.token, method, path, &body)
    }

    fn begin(&self, level: &str) -> String {
        let r = self.call(
            "POST",
            "/api/transactions",
            &json!({"isolation_level": level}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["transaction_id"].as_str().unwrap().to_string()
    }

    /// A data call inside transaction `tx`.
    fn in_tx(&self, tx: &str, method: &str, path: &str, body: &Value) -> HttpReply {
        self.call(method, &format!("{path}?transaction_id={tx}"), body)
    }

    fn read(&self, tx: &str, id: &str) -> HttpReply {
        self.in_tx(tx, "GET", &format!("/api/find/acct/{id}"), &Value::Null)
    }

    fn commit(&self, tx: &str) -> u16 {
        self.call(
            "POST",
            &format!("/api/transactions/{tx}/commit"),
            &Value::Null,
        )
        .status
    }

    fn insert(&self, collection: &str, record: Value) -> String {
        let r = self.call("POST", &format!("/api/insert/{collection}"), &record);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    }

    fn set(&self, id: &str, patch: Value) {
        let r = self.call("PUT", &format!("/api/update/acct/{id}"), &patch);
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

fn balance(r: &HttpReply) -> i64 {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = &r.json()["n"];
    v.as_i64().or_else(|| v["value"].as_i64()).expect("n")
}

fn night_shifts(c: &Client<'_>, tx: &str) -> HttpReply {
    c.in_tx(
        tx,
        "POST",
        "/api/find/shifts",
        &json!({"filter": {"type": "Condition", "content": {"field": "slot", "operator": "Eq", "value": "night"}}}),
    )
}

both_runtimes!(each_level_prevents_what_it_promises, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let a = Client {
        srv: &srv,
        token: srv.token(),
    };
    let b = Client {
        srv: &srv,
        token: srv.token(),
    };
    for level in LEVELS {
        // Dirty read: a staged write is invisible to everybody else.
        let x = a.insert("acct", json!({"n": 10}));
        let t1 = a.begin(level);
        let r = a.in_tx(
            &t1,
            "PUT",
            &format!("/api/update/acct/{x}"),
            &json!({"n": 99}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let t2 = b.begin(level);
        assert_eq!(balance(&b.read(&t2, &x)), 10, "{level}: dirty read");
        assert_eq!(
            balance(&b.call("GET", &format!("/api/find/acct/{x}"), &Value::Null)),
            10
        );
        a.call(
            "POST",
            &format!("/api/transactions/{t1}/rollback"),
            &Value::Null,
        );
        b.call(
            "POST",
            &format!("/api/transactions/{t2}/rollback"),
            &Value::Null,
        );

        // Non-repeatable read: a second read sees the first value or fails.
        let t = a.begin(level);
        assert_eq!(balance(&a.read(&t, &x)), 10);
        b.set(&x, json!({"n": 11}));
        let again = a.read(&t, &x);
        if repeatable(level) {
            assert_eq!(
                again.status,
                409,
                "{level}: non-repeatable read: {}",
                again.text()
            );
        } else {
            assert_eq!(balance(&again), 11, "{level} reads the latest commit");
        }

        // Read skew: x + y = 100 always; a transfer commits between two reads.
        let (x, y) = (
            a.insert("acct", json!({"n": 50})),
            a.insert("acct", json!({"n": 50})),
        );
        let t = a.begin(level);
        let seen_x = balance(&a.read(&t, &x));
        let transfer = b.begin("Serializable");
        b.in_tx(
            &transfer,
            "PUT",
            &format!("/api/update/acct/{x}"),
            &json!({"n": 0}),
        );
        b.in_tx(
            &transfer,
            "PUT",
            &format!("/api/update/acct/{y}"),
            &json!({"n": 100}),
        );
        assert_eq!(b.commit(&transfer), 200);
        let ry = a.read(&t, &y);
        if repeatable(level) {
            assert_eq!(ry.status, 409, "{level}: read skew: {}", ry.text());
        } else {
            assert_eq!(seen_x + balance(&ry), 150, "{level} may see a skewed pair");
            // ...but cannot commit anything based on it.
            a.in_tx(
                &t,
                "PUT",
                &format!("/api/update/acct/{x}"),
                &json!({"n": seen_x}),
            );
            assert_eq!(a.commit(&t), 409, "{level}: commit after skew");
        }

        // Lost update: both read n and write n + 1; the second commit fails.
        let z = a.insert("acct", json!({"n": 1}));
        let (t1, t2) = (a.begin(level), b.begin(level));
        let n1 = balance(&a.read(&t1, &z));
        let n2 = balance(&b.read(&t2, &z));
        a.in_tx(
            &t1,
            "PUT",
            &format!("/api/update/acct/{z}"),
            &json!({"n": n1 + 1}),
        );
        b.in_tx(
            &t2,
            "PUT",
            &format!("/api/update/acct/{z}"),
            &json!({"n": n2 + 1}),
        );
        assert_eq!(a.commit(&t1), 200);
        assert_eq!(b.commit(&t2), 409, "{level}: lost update");

        // Write skew: two doctors on call, each leaves after checking the other.
        let (d1, d2) = (
            a.insert("acct", json!({"n": 1})),
            a.insert("acct", json!({"n": 1})),
        );
        let (t1, t2) = (a.begin(level), b.begin(level));
        for (c, t) in [(&a, &t1), (&b, &t2)] {
            assert_eq!(balance(&c.read(t, &d1)) + balance(&c.read(t, &d2)), 2);
        }
        a.in_tx(
            &t1,
            "PUT",
            &format!("/api/update/acct/{d1}"),
            &json!({"n": 0}),
        );
        b.in_tx(
            &t2,
            "PUT",
            &format!("/api/update/acct/{d2}"),
            &json!({"n": 0}),
        );
        assert_eq!(a.commit(&t1), 200);
        assert_eq!(b.commit(&t2), 409, "{level}: write skew");

        // Phantom: the same query twice around another client's insert.
        let slot = format!("phantom-{level}");
        let t = a.begin(level);
        let before = night_shifts(&a, &t);
        assert_eq!(before.status, 200, "{}", before.text());
        let had = before.json().as_array().map_or(0, Vec::len);
        b.insert("shifts", json!({"slot": "night", "who": slot}));
        let after = night_shifts(&a, &t);
        if level == "Serializable" {
            assert_eq!(after.status, 409, "{level}: phantom: {}", after.text());
        } else {
            let has = after.json().as_array().map_or(0, Vec::len);
            assert_eq!(has, had + 1, "{level} sees the new row");
            a.call(
                "POST",
                &format!("/api/transactions/{t}/rollback"),
                &Value::Null,
            );
        }

        // Predicate write skew: both see no night shift, both add one.
        let (t1, t2) = (a.begin(level), b.begin(level));
        let empty_before: Vec<usize> = [(&a, &t1), (&b, &t2)]
            .iter()
            .map(|(c, t)| {
                let r = night_shifts(c, t);
                assert_eq!(r.status, 200, "{}", r.text());
                r.json().as_array().map_or(0, Vec::len)
            })
            .collect();
        assert_eq!(empty_before[0], empty_before[1]);
        a.in_tx(
            &t1,
            "POST",
            "/api/insert/shifts",
            &json!({"slot": "night", "who": "a"}),
        );
        b.in_tx(
            &t2,
            "POST",
            "/api/insert/shifts",
            &json!({"slot": "night", "who": "b"}),
        );
        assert_eq!(a.commit(&t1), 200);
        let second = b.commit(&t2);
        if level == "Serializable" {
            assert_eq!(second, 409, "{level}: predicate write skew");
        } else {
            assert_eq!(second, 200, "{level} allows it, as documented");
        }
    }
});

both_runtimes!(transaction_id_is_staged_or_refused, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let a = Client {
        srv: &srv,
        token: srv.token(),
    };
    let id = a.insert("acct", json!({"n": 1}));
    let t = a.begin("Serializable");
    // An atomic action and a KV set cannot be staged: 400, nothing applied.
    let r = a.in_tx(
        &t,
        "PUT",
        &format!("/api/update/acct/{id}/action/increment"),
        &json!({"field": "n", "value": 5}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("transaction"));
    let r = a.in_tx(&t, "POST", "/api/kv/set/k", &json!({"value": 1}));
    assert_eq!(r.status, 400, "{}", r.text());
    a.call(
        "POST",
        &format!("/api/transactions/{t}/rollback"),
        &Value::Null,
    );
    assert_eq!(
        balance(&a.call("GET", &format!("/api/find/acct/{id}"), &Value::Null)),
        1
    );
    let r = a.call("GET", "/api/kv/get/k", &Value::Null);
    assert_eq!(r.status, 404, "{}", r.text());
    // Every route of the table outside the staged set refuses it.
    let t = a.begin("Serializable");
    for route in ROUTES.iter().filter(|r| !IN_TRANSACTION.contains(&r.path)) {
        let path: String = route
            .path
            .split('/')
            .map(|seg| match seg {
                "{collection}" => "acct",
                s if s.starts_with('{') => "x",
                s => s,
            })
            .collect::<Vec<_>>()
            .join("/");
        // (HEAD answers carry no body to read the message from.)
        for method in route.methods.iter().filter(|m| m.as_str() != "HEAD") {
            let r = a.in_tx(&t, method.as_str(), &path, &json!({}));
            assert_eq!(r.status, 400, "{} {path}: {}", method.as_str(), r.text());
        }
    }
    // The staged ones work.
    let r = a.in_tx(&t, "POST", "/api/insert/acct", &json!({"n": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.commit(&t), 200);
});

both_runtimes!(
    transactions_are_owned_and_expire_when_idle,
    |rt: Runtime| {
        let srv = TestServer::start_with(rt, &["--transaction-idle-timeout", "1"]);
        let a = Client {
            srv: &srv,
            token: srv.token(),
        };
        let reg = a.call(
            "POST",
            "/api/auth/register",
            &json!({"is_admin": true, "collection_permissions": {}}),
        );
        let b = Client {
            srv: &srv,
            token: srv.token_for(reg.json()["key"].as_str().unwrap()),
        };
        // Another key cannot see or use it.
        let t = a.begin("Serializable");
        let r = b.in_tx(&t, "POST", "/api/insert/acct", &json!({"n": 1}));
        assert_eq!(r.status, 404, "{}", r.text());
        let r = b.call(
            "POST",
            &format!("/api/transactions/{t}/commit"),
            &Value::Null,
        );
        assert_eq!(r.status, 404, "{}", r.text());
        // Idle for longer than the timeout: rolled back, its writes gone.
        a.in_tx(&t, "POST", "/api/insert/acct", &json!({"n": 1}));
        std::thread::sleep(Duration::from_millis(2500));
        let r = a.call("GET", &format!("/api/transactions/{t}"), &Value::Null);
        assert_eq!(r.json()["state"], "RolledBack", "{}", r.text());
        assert_eq!(a.commit(&t), 400);
    }
);

both_runtimes!(
    one_key_holds_a_bounded_number_of_transactions,
    |rt: Runtime| {
        let srv = TestServer::start(rt);
        let a = Client {
            srv: &srv,
            token: srv.token(),
        };
        let reg = a.call(
            "POST",
            "/api/auth/register",
            &json!({"is_admin": true, "collection_permissions": {}}),
        );
        let b = Client {
            srv: &srv,
            token: srv.token_for(reg.json()["key"].as_str().unwrap()),
        };
        // One key may hold 100 open; the next is refused with 429, others still begin.
        let open: Vec<String> = (0..100).map(|_| a.begin("ReadCommitted")).collect();
        let r = a.call("POST", "/api/transactions", &json!({}));
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(r.json()["message"]
            .as_str()
            .unwrap()
            .contains("open transactions"));
        let _ = b.begin("ReadCommitted");
        // Finishing one frees a place.
        assert_eq!(a.commit(&open[0]), 200);
        let _ = a.begin("ReadCommitted");
    }
);
