//! The key-value store through the official client (spec 12): single-key
//! calls, batches, pattern queries, clear and KV-to-document links. TTL is in
//! `client_ttl.rs`.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Keys that need per-segment percent-encoding (or none, for `:`).
const KEYS: [&str; 7] = [
    "simple",
    "session:user123",
    "session/abc",
    "a b+c",
    "ключ 雪 🌊",
    "q?x=1&y=2#frag",
    "100%",
];

client_test!(set_get_exists_delete);
/// Set, get (wrapped once in a typed envelope), exists, overwrite and delete,
/// for awkward keys and every kind of JSON value.
async fn set_get_exists_delete(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let values = [
        (
            json!({"userId": 123, "username": "john_doe"}),
            json!({"type": "Object", "value": {"userId": 123, "username": "john_doe"}}),
        ),
        (json!("plain"), json!({"type": "String", "value": "plain"})),
        (json!(42), json!({"type": "Integer", "value": 42})),
        (json!(2.5), json!({"type": "Float", "value": 2.5})),
        (json!(true), json!({"type": "Boolean", "value": true})),
        (
            json!([1, "a", {"b": null}]),
            json!({"type": "Array", "value": [1, "a", {"b": null}]}),
        ),
        (
            json!({"nested": {"deep": [1.5, 2]}, "u": "雪"}),
            json!({"type": "Object", "value": {"nested": {"deep": [1.5, 2]}, "u": "雪"}}),
        ),
    ];
    for (key, (value, wrapped)) in KEYS.iter().zip(values.iter()) {
        assert!(!ok(c.kv_exists(key).await), "{key} exists before set");
        assert_eq!(ok(c.kv_get(key).await), None);
        ok(c.kv_set(key, value.clone(), None).await);
        assert_eq!(ok(c.kv_get(key).await).as_ref(), Some(wrapped), "{key}");
        assert!(ok(c.kv_exists(key).await), "{key}");
    }
    // Every key is still distinct after all the sets.
    for (key, (_, wrapped)) in KEYS.iter().zip(values.iter()) {
        assert_eq!(ok(c.kv_get(key).await).as_ref(), Some(wrapped), "{key}");
    }
    ok(c.kv_set("simple", json!({"v": 2}), None).await);
    assert_eq!(
        ok(c.kv_get("simple").await),
        Some(json!({"type": "Object", "value": {"v": 2}}))
    );

    ok(c.kv_delete("session/abc").await);
    assert_eq!(ok(c.kv_get("session/abc").await), None);
    assert!(!ok(c.kv_exists("session/abc").await));
    // The neighbour that shares a prefix is untouched.
    assert!(ok(c.kv_exists("session:user123").await));
    // Deleting a missing key is not an error.
    ok(c.kv_delete("session/abc").await);
    ok(c.kv_delete("never-set").await);
}

client_test!(batch_set_get_delete);
/// Batch set answers `[key, true]` pairs in order; batch get returns the
/// stored objects unwrapped, in request order, skipping missing keys; batch
/// delete reports which keys existed.
async fn batch_set_get_delete(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let keys: Vec<String> = ["b:1", "b/2", "b 3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let values = vec![
        rec(json!({"x": 1})),
        rec(json!({"name": "Product 2", "price": 39.99})),
        rec(json!({"z": [1, 2], "o": {"k": "v"}})),
    ];
    let set = ok(c.kv_batch_set(keys.clone(), values, None).await);
    assert_eq!(
        set,
        keys.iter().map(|k| (k.clone(), true)).collect::<Vec<_>>()
    );

    let got = ok(c
        .kv_batch_get(vec![
            "b 3".into(),
            "missing".into(),
            "b:1".into(),
            "b/2".into(),
        ])
        .await);
    let got: Vec<Value> = got.iter().map(wire).collect();
    assert_eq!(
        got,
        vec![
            json!({"z": [1, 2], "o": {"k": "v"}}),
            json!({"x": 1}),
            json!({"name": "Product 2", "price": 39.99}),
        ]
    );
    // Batch-set keys are ordinary keys.
    assert_eq!(
        ok(c.kv_get("b/2").await),
        Some(json!({"type": "Object", "value": {"name": "Product 2", "price": 39.99}}))
    );
    // And single-set keys are visible to batch get.
    ok(c.kv_set("single", json!({"s": true}), None).await);
    let got = ok(c.kv_batch_get(vec!["single".into()]).await);
    assert_eq!(
        got.iter().map(wire).collect::<Vec<_>>(),
        vec![json!({"s": true})]
    );

    let del = ok(c
        .kv_batch_delete(vec!["b:1".into(), "missing".into(), "b 3".into()])
        .await);
    assert_eq!(
        del,
        vec![
            ("b:1".to_string(), true),
            ("missing".to_string(), false),
            ("b 3".to_string(), true)
        ]
    );
    assert_eq!(ok(c.kv_get("b:1").await), None);
    assert!(ok(c.kv_exists("b/2").await));
    assert!(ok(c.kv_batch_get(vec!["b:1".into(), "b 3".into()]).await).is_empty());
}

/// The keys in a `kv_find` answer.
fn found_keys(entries: &[Value]) -> BTreeSet<String> {
    entries
        .iter()
        .map(|e| {
            e["key"]
                .as_str()
                .unwrap_or_else(|| panic!("entry without a key: {e}"))
                .to_string()
        })
        .collect()
}

client_test!(find_pattern_and_clear);
/// `kv_find` runs an unanchored regex over keys; no pattern means every key;
/// `kv_clear` empties the store.
async fn find_pattern_and_clear(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    for (k, v) in [
        (
            "cache:product:1",
            json!({"name": "Product 1", "price": 29.99}),
        ),
        ("cache:product:2", json!({"name": "Product 2"})),
        ("cache:user:1", json!({"name": "U"})),
        ("session/x", json!("s")),
    ] {
        ok(c.kv_set(k, v, None).await);
    }
    let all = ok(c.kv_find(Some("cache:product:.*"), false).await);
    assert_eq!(
        found_keys(&all),
        set(&["cache:product:1", "cache:product:2"])
    );
    let one = all.iter().find(|e| e["key"] == "cache:product:1").unwrap();
    assert_eq!(
        one["value"],
        json!({"name": "Product 1", "price": 29.99}),
        "{one}"
    );

    assert_eq!(
        found_keys(&ok(c.kv_find(Some("user"), false).await)),
        set(&["cache:user:1"])
    );
    assert_eq!(
        found_keys(&ok(c.kv_find(Some("^session/"), false).await)),
        set(&["session/x"])
    );
    assert_eq!(
        found_keys(&ok(c.kv_find(Some(":1$"), false).await)),
        set(&["cache:product:1", "cache:user:1"])
    );
    assert!(ok(c.kv_find(Some("^nomatch"), false).await).is_empty());
    assert_eq!(
        found_keys(&ok(c.kv_find(None, false).await)),
        set(&[
            "cache:product:1",
            "cache:product:2",
            "cache:user:1",
            "session/x"
        ])
    );
    assert_eq!(ok(c.kv_query(None, true).await).len(), 4);

    ok(c.kv_clear().await);
    assert!(ok(c.kv_find(None, false).await).is_empty());
    assert_eq!(ok(c.kv_get("cache:product:1").await), None);
    assert!(!ok(c.kv_exists("session/x").await));
    // The store works after a clear, and clearing an empty store is fine.
    ok(c.kv_set("after", json!(1), None).await);
    assert!(ok(c.kv_exists("after").await));
    ok(c.kv_clear().await);
    ok(c.kv_clear().await);
}

client_test!(find_pages_in_key_order);
/// `/api/kv/find` with Tidepool's optional paging: `limit` entries in key
/// order after the key `after`, with the pattern applied first; a client
/// that sends neither still gets every match.
async fn find_pages_in_key_order(srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    for i in 0..25 {
        ok(c.kv_set(&format!("page:{i:02}"), json!(i), None).await);
    }
    ok(c.kv_set("other", json!("x"), None).await);
    let token = srv.token();
    let find = |body: Value| {
        let r = srv.call(&token, "POST", "/api/kv/find", &body.to_string());
        (r.status, r.json())
    };
    let keys = |page: &Value| -> Vec<String> {
        page.as_array()
            .unwrap_or_else(|| panic!("not an array: {page}"))
            .iter()
            .map(|e| e["key"].as_str().expect("key").to_string())
            .collect()
    };
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let (status, page) = find(json!({"pattern": "^page:", "limit": 10, "after": after}));
        assert_eq!(status, 200, "{page}");
        let got = keys(&page);
        pages += 1;
        seen.extend(got.iter().cloned());
        if got.len() < 10 {
            break;
        }
        after = got.last().cloned();
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..25).map(|i| format!("page:{i:02}")).collect();
    assert_eq!(seen, want);
    assert_eq!(keys(&find(json!({})).1).len(), 26);
    assert_eq!(keys(&find(json!({"limit": 1})).1), vec!["other"]);
    assert_eq!(keys(&find(json!({"after": "page:23"})).1), vec!["page:24"]);
    for bad in [
        json!({"limit": 0}),
        json!({"limit": "ten"}),
        json!({"after": 3}),
    ] {
        let (status, body) = find(bad.clone());
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

/// `(collection, document_id)` of each link entry.
fn link_targets(links: &Value) -> BTreeSet<(String, String)> {
    links
        .as_array()
        .unwrap_or_else(|| panic!("links are not an array: {links}"))
        .iter()
        .map(|l| {
            (
                l["collection"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no collection: {l}"))
                    .to_string(),
                l["document_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no document_id: {l}"))
                    .to_string(),
            )
        })
        .collect()
}

fn pair(c: &str, d: &str) -> (String, String) {
    (c.to_string(), d.to_string())
}

client_test!(links_between_keys_and_documents);
/// Link KV keys to documents, list the links, unlink.
async fn links_between_keys_and_documents(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    ok(c.insert("docs", rec(json!({"id": "doc1", "t": 1})), None)
        .await);
    ok(
        c.insert("docs", rec(json!({"id": "doc 2/b", "t": 2})), None)
            .await,
    );
    ok(c.kv_set("session:1", json!({"u": 1}), None).await);
    ok(c.kv_set("a/b key", json!({"u": 2}), None).await);

    assert_eq!(
        link_targets(&ok(c.kv_get_links("session:1").await)),
        BTreeSet::new()
    );
    ok(c.kv_link("session:1", "docs", "doc1").await);
    ok(c.kv_link("session:1", "docs", "doc 2/b").await);
    ok(c.kv_link("a/b key", "docs", "doc 2/b").await);

    let links = ok(c.kv_get_links("session:1").await);
    assert_eq!(
        link_targets(&links),
        [pair("docs", "doc1"), pair("docs", "doc 2/b")]
            .into_iter()
            .collect()
    );
    for l in links.as_array().unwrap() {
        assert_eq!(l["key"], "session:1", "{l}");
    }
    assert_eq!(
        link_targets(&ok(c.kv_get_links("a/b key").await)),
        [pair("docs", "doc 2/b")].into_iter().collect()
    );

    // Linking twice does not duplicate.
    ok(c.kv_link("session:1", "docs", "doc1").await);
    assert_eq!(
        ok(c.kv_get_links("session:1").await)
            .as_array()
            .unwrap()
            .len(),
        2
    );

    ok(c.kv_unlink("session:1", "docs", "doc1").await);
    assert_eq!(
        link_targets(&ok(c.kv_get_links("session:1").await)),
        [pair("docs", "doc 2/b")].into_iter().collect()
    );
    // The linked key and document are still there.
    assert!(ok(c.kv_exists("session:1").await));
    assert!(ok(c.exists("docs", "doc1").await));
    ok(c.kv_unlink("session:1", "docs", "doc 2/b").await);
    assert_eq!(
        link_targets(&ok(c.kv_get_links("session:1").await)),
        BTreeSet::new()
    );
    assert_eq!(link_targets(&ok(c.kv_get_links("a/b key").await)).len(), 1);
}

client_test!(keys_named_like_routes);
/// Keys spelled like route literals are ordinary keys on the get/set/delete
/// routes (spec 1.1: `GET /api/kv/get/links` gets the key `links`).
async fn keys_named_like_routes(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let literal = [
        "links", "get", "set", "delete", "batch", "find", "clear", "query", "link", "unlink",
    ];
    for (i, k) in literal.iter().enumerate() {
        ok(c.kv_set(k, json!({"i": i}), None).await);
    }
    for (i, k) in literal.iter().enumerate() {
        assert_eq!(
            ok(c.kv_get(k).await),
            Some(json!({"type": "Object", "value": {"i": i}})),
            "{k}"
        );
    }
    let got = ok(c
        .kv_batch_get(literal.iter().map(|s| s.to_string()).collect())
        .await);
    assert_eq!(got.len(), literal.len());
    ok(c.kv_delete("links").await);
    assert!(!ok(c.kv_exists("links").await));
    assert!(ok(c.kv_exists("get").await));
}
