//! Scoped API keys (spec 14) against real server processes on both runtimes:
//! the official `AdminClient` registers keys and edits their grants, the
//! official `Client` works with a limited key and is refused (403, never 401)
//! outside its grants, grants survive `kill -9`, and revoking a key ends its
//! tokens. `every_route_checks_its_credential` walks the route table itself,
//! so a new route cannot be forgotten.

#[allow(unused_macros)]
mod common;

use common::{block_on, rec};
use ekodb_client::admin::{
    AdminClient, ApiKeyAction, CreateApiKeyRequest, PermissionEdit,
    UpdateApiKeyCollectionPermissionsRequest, UpdateApiKeyKvPermissionsRequest,
};
use ekodb_client::{Client, Error, QueryBuilder, SerializationFormat};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use tidepool_core::dialect::rest::routes::{Scope, ROUTES};
use tidepool_core::wire::http::Method;
use tidepool_tests::{both_runtimes, Runtime, TestServer, API_KEY};

fn client_for(srv: &TestServer, key: &str) -> Client {
    Client::builder()
        .base_url(srv.base_url())
        .api_key(key)
        .serialization_format(SerializationFormat::Json)
        .timeout(Duration::from_secs(20))
        .should_retry(false)
        .build()
        .expect("client")
}

fn status<T: std::fmt::Debug>(r: Result<T, Error>) -> u16 {
    match r {
        Err(Error::Api { code, .. }) => code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn fields(records: &[ekodb_client::Record]) -> Vec<Vec<String>> {
    records
        .iter()
        .map(|r| {
            let mut f: Vec<String> = serde_json::to_value(r)
                .unwrap()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            f.sort();
            f
        })
        .collect()
}

both_runtimes!(a_limited_key_sees_only_its_grants, |rt: Runtime| {
    let mut srv = TestServer::start(rt);
    srv.insert("users", &json!({"name": "ada"}));
    srv.insert(
        "orders",
        &json!({"item": "pen", "qty": 2, "status": "new", "card": "4111"}),
    );
    srv.insert("secrets", &json!({"plan": "x"}));
    let base = srv.base_url();
    let admin = AdminClient::new(&base, API_KEY).unwrap();
    let key = block_on_value(async {
        assert!(admin.uses_key_permission_routes().await.unwrap());
        let me = admin.get_permissions().await.unwrap();
        assert!(me.is_admin);
        let key = admin
            .create_api_key(&CreateApiKeyRequest {
                label: Some("reader".into()),
                description: None,
                is_admin: false,
                collection_permissions: HashMap::from([(
                    "users".to_string(),
                    vec![ApiKeyAction::Read],
                )]),
            })
            .await
            .unwrap();
        let id = key.id.clone().unwrap();
        let change = admin
            .put_api_key_collection_permissions(&UpdateApiKeyCollectionPermissionsRequest {
                key_id: id.clone(),
                collection: "orders".into(),
                read: true,
                write: true,
                select_fields: PermissionEdit::Set(vec![
                    "item".into(),
                    "qty".into(),
                    "status".into(),
                ]),
                exclude_fields: PermissionEdit::Keep,
                writable_fields: PermissionEdit::Set(vec!["status".into()]),
            })
            .await
            .unwrap();
        assert!(change.before.is_none());
        assert!(change.after.unwrap().write);
        admin
            .put_api_key_kv_permissions(&UpdateApiKeyKvPermissionsRequest {
                key_id: id.clone(),
                prefix: "session:".into(),
                read: true,
                write: true,
            })
            .await
            .unwrap();
        let listed = admin.list_api_keys().await.unwrap();
        let mine = listed
            .iter()
            .find(|k| k.id.as_deref() == Some(&id))
            .unwrap();
        assert_ne!(mine.key, key.key, "the list never shows a secret");
        assert_eq!(mine.label.as_deref(), Some("reader"));
        key
    });
    let id = key.id.clone().unwrap();
    // Grants are durable: they survive kill -9.
    srv.restart();
    let base = srv.base_url();
    let c = client_for(&srv, &key.key);
    block_on(async {
        // Read-only on users.
        assert_eq!(
            c.find("users", QueryBuilder::new().build(), None)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            status(c.insert("users", rec(json!({"name": "x"})), None).await),
            403
        );
        // Orders: only the granted fields come back, only status is writable.
        let orders = c
            .find("orders", QueryBuilder::new().build(), None)
            .await
            .unwrap();
        assert_eq!(fields(&orders), vec![vec!["id", "item", "qty", "status"]]);
        let order_id = orders[0].get("id").and_then(|v| match v {
            ekodb_client::FieldType::String(s) => Some(s.clone()),
            _ => None,
        });
        let order_id = order_id.expect("order id");
        c.update("orders", &order_id, rec(json!({"status": "paid"})), None)
            .await
            .unwrap();
        assert_eq!(
            status(
                c.update("orders", &order_id, rec(json!({"card": "0000"})), None)
                    .await
            ),
            403
        );
        // A hidden field cannot be filtered on either (the answer would reveal it).
        let by_card = QueryBuilder::new().eq("card", "4111").build();
        assert_eq!(status(c.find("orders", by_card, None).await), 403);
        // Nothing else exists for this key.
        assert_eq!(
            status(c.find("secrets", QueryBuilder::new().build(), None).await),
            403
        );
        let mut names = c.list_collections().await.unwrap();
        names.sort();
        assert_eq!(names, vec!["orders", "users"]);
        // KV: its prefix only, and the scan shows only its keys.
        c.kv_set("session:1", json!(1), None).await.unwrap();
        assert_eq!(status(c.kv_set("other", json!(2), None).await), 403);
        let found = c.kv_find(None, false).await.unwrap();
        assert!(found
            .iter()
            .all(|e| e["key"].as_str().unwrap().starts_with("session:")));
        // Its own permissions, through the modern routes.
        let limited = AdminClient::new(&base, &key.key).unwrap();
        let mine = limited.get_permissions().await.unwrap();
        assert!(!mine.is_admin);
        assert!(mine.collection_permissions["users"].read);
        assert_eq!(
            mine.collection_permissions["orders"].writable_fields,
            Some(vec!["status".to_string()])
        );
        // ...but nobody else's, and no administration.
        assert!(limited.list_api_keys().await.is_err());
    });
    // The admin sees the change the limited key made.
    let admin_c = client_for(&srv, API_KEY);
    block_on(async {
        let orders = admin_c
            .find("orders", QueryBuilder::new().build(), None)
            .await
            .unwrap();
        let o = serde_json::to_value(&orders[0]).unwrap();
        assert_eq!(o["status"]["value"], "paid");
        assert_eq!(o["card"]["value"], "4111");
    });
    // Revoking the key ends it and its tokens at once.
    let token = srv.token_for(&key.key);
    assert_eq!(
        srv.call(&token, "POST", "/api/find/users", "{}").status,
        200
    );
    let admin = AdminClient::new(&base, API_KEY).unwrap();
    block_on(async { admin.revoke_api_key(&id).await.unwrap() });
    let r = srv.call(&token, "POST", "/api/find/users", "{}");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = srv.request(
        "POST",
        "/api/auth/token",
        &[],
        &json!({"api_key": key.key}).to_string(),
    );
    assert_eq!(r.status, 401);
});

fn block_on_value<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A path of the table with its variables filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{collection}" => "c".to_string(),
            "{key}" => "k".to_string(),
            "{key_id}" => "me".to_string(),
            s if s.starts_with("{*") => "x".to_string(),
            s if s.starts_with('{') => "v1".to_string(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn method_name(m: &Method) -> String {
    m.as_str().to_string()
}

/// A token signed with the server's secret whose `exp` has passed.
fn expired_token(secret: &str) -> String {
    let auth = tidepool_core::auth::Auth::new(
        secret.as_bytes(),
        &[API_KEY.to_string()],
        Duration::from_secs(60),
    );
    let engine = tidepool_core::engine::Engine::new(1);
    let past = tidepool_core::time::Timestamp::from_secs(1_000_000_000);
    auth.issue(&engine, API_KEY, past).unwrap()
}

both_runtimes!(every_route_checks_its_credential, |rt: Runtime| {
    let secret = "route-table-test-secret-0123456789";
    let srv = TestServer::start_with(rt, &["--jwt-secret", secret]);
    let admin = srv.token();
    // A key with no grants at all, and a revoked key's token.
    let register = |body: Value| {
        let r = srv.call(&admin, "POST", "/api/auth/register", &body.to_string());
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    let nothing = register(json!({"is_admin": false, "collection_permissions": {}}));
    let nothing_token = srv.token_for(nothing["key"].as_str().unwrap());
    let revoked = register(json!({"is_admin": true, "collection_permissions": {}}));
    let revoked_token = srv.token_for(revoked["key"].as_str().unwrap());
    let r = srv.call(
        &admin,
        "DELETE",
        &format!("/api/auth/keys/{}", revoked["id"].as_str().unwrap()),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let expired = expired_token(secret);
    let mut checked = 0;
    for route in ROUTES {
        if route.scope == Scope::Public {
            continue;
        }
        let path = concrete(route.path);
        for method in route.methods {
            let m = method_name(method);
            let send = |auth: Option<&str>| {
                let bearer = auth.map(|t| format!("Bearer {t}"));
                let mut headers = vec![("Content-Type", "application/json")];
                if let Some(b) = &bearer {
                    headers.push(("Authorization", b.as_str()));
                }
                srv.request(&m, &path, &headers, "{}")
            };
            for (what, auth) in [
                ("no token", None),
                ("a bad token", Some("not-a-token")),
                ("an expired token", Some(expired.as_str())),
                ("a revoked key's token", Some(revoked_token.as_str())),
            ] {
                let r = send(auth);
                assert_eq!(r.status, 401, "{m} {path} with {what}: {}", r.text());
            }
            let r = send(Some(&nothing_token));
            match route.scope {
                Scope::Read | Scope::Write | Scope::Admin => {
                    assert_eq!(
                        r.status,
                        403,
                        "{m} {path} with a key without grants: {}",
                        r.text()
                    )
                }
                // Routes that filter for the key answer, but never with
                // a credential error.
                _ => assert!(
                    r.status != 401 && r.status < 500 || r.status == 501,
                    "{m} {path} with a key without grants: {} {}",
                    r.status,
                    r.text()
                ),
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} route methods checked");
});

both_runtimes!(rate_limits_and_settings, |rt: Runtime| {
    let mut srv = TestServer::start_with(rt, &["--rate-limit-per-key", "5"]);
    let admin = srv.token();
    // A second admin key for the settings calls (registering is not a
    // keyed call, so it spends no key's budget).
    let ops = srv.call(
        &admin,
        "POST",
        "/api/auth/register",
        &json!({"is_admin": true, "collection_permissions": {}}).to_string(),
    );
    assert_eq!(ops.status, 200, "{}", ops.text());
    let ops_key = ops.json()["key"].as_str().unwrap().to_string();
    let ops_token = |srv: &TestServer| srv.token_for(&ops_key);
    // Within the budget: the three headers of spec 1.6, counting down.
    for left in (0..5).rev() {
        let r = srv.call(&admin, "POST", "/api/find/c", "{}");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some(left.to_string().as_str())
        );
        assert!(
            r.header("x-ratelimit-reset")
                .unwrap()
                .parse::<i64>()
                .unwrap()
                > 1_700_000_000
        );
    }
    // The official client sees the 429 as a rate limit with its delay.
    let c = client_for(&srv, API_KEY);
    block_on(async {
        match c.find("c", QueryBuilder::new().build(), None).await {
            Err(Error::RateLimit { retry_after_secs }) => {
                assert!((1..=60).contains(&retry_after_secs))
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
    });
    let r = srv.call(&admin, "POST", "/api/find/c", "{}");
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(r.json()["code"], 429);
    // Settings: read, refused for a key that is not an admin, changed.
    let ops = ops_token(&srv);
    let r = srv.call(&ops, "GET", "/api/config", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["durable_operations"], true);
    assert_eq!(r.json()["rate_limit_per_key"], 5);
    let r = srv.call(&ops, "PUT", "/api/config", r#"{"listen": "0.0.0.0:1"}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = srv.call(
        &ops,
        "PUT",
        "/api/config",
        r#"{"rate_limit_per_key": 0, "durable_operations": false}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["durable_operations"], false);
    // No limit now: the exhausted key works again.
    let r = srv.call(&admin, "POST", "/api/find/c", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-ratelimit-limit").is_none());
    // The change outlives a crash, and wins over the flag.
    srv.restart();
    let ops = ops_token(&srv);
    let r = srv.call(&ops, "GET", "/api/config", "");
    assert_eq!(r.json()["rate_limit_per_key"], 0, "{}", r.text());
    assert_eq!(r.json()["durable_operations"], false);
    let reader = srv.call(
        &ops,
        "POST",
        "/api/auth/register",
        &json!({"is_admin": false, "collection_permissions": {"c": ["read"]}}).to_string(),
    );
    let reader_token = srv.token_for(reader.json()["key"].as_str().unwrap());
    let r = srv.call(
        &reader_token,
        "PUT",
        "/api/config",
        r#"{"durable_operations": true}"#,
    );
    assert_eq!(r.status, 403);
});

/// Opens a stream (`GET path` with `extra` header lines) and reads only its
/// head: the status, and the socket that holds the stream open.
fn open_stream(
    srv: &TestServer,
    token: &str,
    path: &str,
    extra: &str,
) -> (u16, std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{extra}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head[9..12]).parse().unwrap();
    (status, s)
}

const WS_UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

// `--max-streams-per-key`: a key's WebSocket and SSE streams count together;
// past the cap a new one is refused with 429 (other keys unaffected), a
// closed one frees its place, and the cap changes with PUT /api/config.
both_runtimes!(streams_per_key_are_capped, |rt: Runtime| {
    let srv = TestServer::start_with(rt, &["--max-streams-per-key", "2"]);
    let admin = srv.token();
    let reg = srv.call(
        &admin,
        "POST",
        "/api/auth/register",
        &json!({"is_admin": false, "collection_permissions": {"c": ["read"]}}).to_string(),
    );
    let other = srv.token_for(reg.json()["key"].as_str().unwrap());
    let (status, sse) = open_stream(&srv, &admin, "/api/subscribe/c", "");
    assert_eq!(status, 200);
    let (status, _ws) = open_stream(&srv, &admin, "/api/ws", WS_UPGRADE);
    assert_eq!(status, 101);
    // The third, SSE or WebSocket: 429 with a JSON message naming the setting.
    let r = srv.request(
        "GET",
        "/api/subscribe/c",
        &[("Authorization", &format!("Bearer {admin}"))],
        "",
    );
    assert_eq!(r.status, 429, "{}", r.text());
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("--max-streams-per-key"), "{message}");
    assert_eq!(open_stream(&srv, &admin, "/api/ws", WS_UPGRADE).0, 429);
    // Another key has its own places.
    let (status, _theirs) = open_stream(&srv, &other, "/api/subscribe/c", "");
    assert_eq!(status, 200);
    // A closed stream frees its place (once the server has seen the close).
    drop(sse);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let _again = loop {
        let (status, s) = open_stream(&srv, &admin, "/api/subscribe/c", "");
        if status == 200 {
            break s;
        }
        assert_eq!(status, 429);
        assert!(
            std::time::Instant::now() < deadline,
            "the place was not freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // A higher cap at run time.
    let r = srv.call(
        &admin,
        "PUT",
        "/api/config",
        r#"{"max_streams_per_key": 3}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["max_streams_per_key"], 3);
    let (status, _third) = open_stream(&srv, &admin, "/api/ws", WS_UPGRADE);
    assert_eq!(status, 101);
});

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends one message and returns the reply (or `{"closed": code}`).
async fn ask(ws: &mut Ws, msg: &Value) -> Value {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str::<Value>(&t).unwrap(),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return json!({"closed": frame.map(|f| u16::from(f.code))})
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no reply: {other:?}"),
        }
    }
}

/// The close code the server ends the socket with (other messages skipped).
async fn closed_with(ws: &mut Ws) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("not closed: {other:?}"),
        }
    }
}

both_runtimes!(a_websocket_follows_its_key, |rt: Runtime| {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let srv = TestServer::start(rt);
    let admin = srv.token();
    srv.insert("open", &json!({"n": 1}));
    let reg = srv.call(
        &admin,
        "POST",
        "/api/auth/register",
        &json!({"is_admin": false, "collection_permissions": {"open": ["read"]}}).to_string(),
    );
    let key = reg.json();
    let id = key["id"].as_str().unwrap().to_string();
    let token = srv.token_for(key["key"].as_str().unwrap());
    block_on_value(async {
        let mut req = format!("ws://{}/api/ws", srv.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let find = json!({"type": "FindAll", "messageId": "1", "payload": {"collection": "open"}});
        let r = ask(&mut ws, &find).await;
        assert_eq!(r["type"], "Success", "{r}");
        // A write is refused with the REST route's status.
        let insert = json!({"type": "Insert", "messageId": "2", "payload": {"collection": "open", "record": {"n": 2}}});
        let r = ask(&mut ws, &insert).await;
        assert_eq!(r["type"], "Error", "{r}");
        assert_eq!(r["code"], 403, "{r}");
        // Streams with subscriptions: a second WebSocket and an SSE stream.
        let mut subscribed = {
            let mut req = format!("ws://{}/api/ws", srv.addr)
                .into_client_request()
                .unwrap();
            req.headers_mut()
                .insert("Authorization", format!("Bearer {token}").parse().unwrap());
            tokio_tungstenite::connect_async(req).await.unwrap().0
        };
        let sub = json!({"type": "Subscribe", "messageId": "s", "payload": {"collection": "open"}});
        let r = ask(&mut subscribed, &sub).await;
        assert_eq!(r["type"], "Success", "{r}");
        let (status, mut sse) = open_stream(&srv, &token, "/api/subscribe/open", "");
        assert_eq!(status, 200);
        // The grant taken away: the subscribed streams end at once (1008, and
        // the SSE stream closes), so no event of `open` reaches them any
        // more; the socket without subscriptions stays and its next message
        // is refused.
        let r = srv.call(
            &admin,
            "DELETE",
            &format!("/api/auth/keys/{id}/permissions/collections/open"),
            "",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(closed_with(&mut subscribed).await, Some(1008));
        let ended = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut rest = Vec::new();
            sse.read_to_end(&mut rest).is_ok()
        });
        assert!(ended.await.unwrap(), "the SSE stream ends");
        let r = ask(&mut ws, &find).await;
        assert_eq!(r["code"], 403, "{r}");
        // The key revoked: the remaining socket is closed with 1008 without
        // having to send anything.
        let r = srv.call(&admin, "DELETE", &format!("/api/auth/keys/{id}"), "");
        assert_eq!(r.status, 200, "{}", r.text());
        let closed = closed_with(&mut ws).await;
        assert_eq!(closed, Some(1008));
    });
});
