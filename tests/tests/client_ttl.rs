//! Expiry through the official client (spec 9, 12.1): documents and KV entries
//! with a TTL are visible, carry their expiry, and are gone a little after it.
//! The only suite that sleeps: about 3 s for fixed expiry, 4 s for sliding.

#[macro_use]
mod common;

use common::*;
use ekodb_client::options::{InsertOptions, UpsertOptions};
use ekodb_client::{DistinctValuesQuery, FieldType, Query, QueryBuilder};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime};

/// The record's `ttl`: a plain RFC 3339 UTC string, returned as an instant.
fn ttl_of(r: &ekodb_client::Record) -> chrono::DateTime<chrono::Utc> {
    match r.get("ttl") {
        Some(FieldType::String(s)) => {
            assert!(s.ends_with('Z'), "ttl is not UTC with a Z suffix: {s}");
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap_or_else(|e| panic!("ttl {s:?} is not RFC 3339: {e}"))
                .with_timezone(&chrono::Utc)
        }
        other => panic!("ttl is not a plain string: {other:?} in {}", wire(r)),
    }
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::<chrono::Utc>::from(SystemTime::now())
}

/// Asserts `t` lies `secs` seconds from `at`, give or take a second.
#[track_caller]
fn assert_expiry(t: chrono::DateTime<chrono::Utc>, at: chrono::DateTime<chrono::Utc>, secs: i64) {
    let delta = (t - at).num_milliseconds();
    assert!(
        (secs * 1000 - 1000..=secs * 1000 + 1000).contains(&delta),
        "expiry {t} is {delta} ms after {at}, expected about {secs} s"
    );
}

client_test!(ttl_documents_and_kv_expire);
/// Documents inserted with "2s" (option, string field, integer seconds,
/// upsert, batch) are readable with a `ttl`, keep it across an update, and
/// are gone from every read path 3 s later; KV entries likewise.
async fn ttl_documents_and_kv_expire(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let start = Instant::now();
    let t0 = now();
    let short = ok(c
        .insert(
            "sess",
            rec(json!({"name": "short"})),
            Some(InsertOptions::new().ttl("2s")),
        )
        .await);
    let short = id_of(&short);
    ok(c.insert(
        "sess",
        rec(json!({"id": "field-ttl", "name": "field"})).with_ttl("2s"),
        None,
    )
    .await);
    ok(c.insert(
        "sess",
        rec(json!({"id": "int-ttl", "name": "int", "ttl": 2})),
        None,
    )
    .await);
    ok(c.upsert(
        "sess",
        "ups",
        rec(json!({"name": "upserted"})),
        Some(UpsertOptions::new().ttl("2s")),
    )
    .await);
    let batch = ok(c
        .batch_insert(
            "sess",
            vec![rec(
                json!({"id": "batch-ttl", "name": "batch", "ttl": "2s"}),
            )],
            None,
        )
        .await);
    assert_eq!(id_list(&batch), vec!["batch-ttl"]);
    ok(c.insert(
        "sess",
        rec(json!({"id": "long", "name": "long"})),
        Some(InsertOptions::new().ttl("1h")),
    )
    .await);
    ok(c.insert(
        "sess",
        rec(json!({"id": "forever", "name": "forever"})),
        None,
    )
    .await);
    ok(c.kv_set("kv:short", json!({"v": 1}), Some("2s")).await);
    ok(
        c.kv_batch_set(vec!["kv:batch".into()], vec![rec(json!({"v": 2}))], Some(2))
            .await,
    );
    ok(c.kv_set("kv:long", json!({"v": 3}), Some("1h")).await);

    // Before expiry: visible, with an absolute expiry about 2 s out.
    for id in [short.as_str(), "field-ttl", "int-ttl", "ups", "batch-ttl"] {
        let r = ok(c.find_by_id("sess", id, None).await);
        assert_expiry(ttl_of(&r), t0, 2);
    }
    assert_expiry(
        ttl_of(&ok(c.find_by_id("sess", "long", None).await)),
        t0,
        3600,
    );
    assert!(ok(c.find_by_id("sess", "forever", None).await)
        .get("ttl")
        .is_none());
    assert_eq!(ok(c.count_documents("sess").await), 7);
    assert!(ok(c.kv_exists("kv:short").await));
    assert!(ok(c.kv_exists("kv:batch").await));

    // An update without a ttl keeps the expiry.
    let before = ttl_of(&ok(c.find_by_id("sess", "field-ttl", None).await));
    let upd = ok(c
        .update("sess", "field-ttl", rec(json!({"name": "field2"})), None)
        .await);
    assert_eq!(ttl_of(&upd), before);
    // The ttl is visible to queries too.
    let q = ok(c
        .find(
            "sess",
            QueryBuilder::new().eq("id", "int-ttl").build(),
            None,
        )
        .await);
    assert_expiry(ttl_of(&q[0]), t0, 2);

    let wait = Duration::from_millis(3200).saturating_sub(start.elapsed());
    tokio::time::sleep(wait).await;

    for id in [short.as_str(), "field-ttl", "int-ttl", "ups", "batch-ttl"] {
        assert_not_found(c.find_by_id("sess", id, None).await);
        assert!(!ok(c.exists("sess", id).await));
        assert_not_found(
            c.update("sess", id, rec(json!({"name": "late"})), None)
                .await,
        );
        assert_not_found(
            c.update_with_action("sess", id, "append", "name", FieldType::String("!".into()))
                .await,
        );
        assert_not_found(c.delete("sess", id, None).await);
    }
    let left = ok(c.find("sess", Query::new(), None).await);
    assert_eq!(ids(&left), set(&["long", "forever"]));
    assert_eq!(ok(c.count_documents("sess").await), 2);
    let names = ok(c
        .distinct_values("sess", "name", DistinctValuesQuery::new())
        .await);
    assert_eq!(names.values, vec![json!("forever"), json!("long")]);
    assert!(ok(c
        .find(
            "sess",
            QueryBuilder::new().eq("name", "short").build(),
            None
        )
        .await)
    .is_empty());

    assert_eq!(ok(c.kv_get("kv:short").await), None);
    assert!(!ok(c.kv_exists("kv:short").await));
    assert!(!ok(c.kv_exists("kv:batch").await));
    assert!(ok(c
        .kv_batch_get(vec!["kv:short".into(), "kv:batch".into()])
        .await)
    .is_empty());
    assert!(ok(c.kv_exists("kv:long").await));
    let live: Vec<_> = ok(c.kv_find(Some("^kv:"), false).await)
        .iter()
        .map(|e| e["key"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(live, vec!["kv:long".to_string()]);

    // An expired id can be used again.
    ok(
        c.insert("sess", rec(json!({"id": "int-ttl", "name": "again"})), None)
            .await,
    );
    assert_eq!(
        val(&ok(c.find_by_id("sess", "int-ttl", None).await), "name"),
        json!("again")
    );
}

client_test!(sliding_ttl_is_extended_by_reads);
/// Sliding expiry (`ttl_update_on_access`): each read pushes the expiry
/// forward by the original duration; without reads the record expires.
async fn sliding_ttl_is_extended_by_reads(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    let start = Instant::now();
    let r = rec(json!({"id": "slide", "v": 1})).with_ttl_update_on_access("1s", true);
    ok(c.insert("slide", r, None).await);
    ok(c.insert(
        "slide",
        rec(json!({"id": "fixed", "v": 2})).with_ttl("1s"),
        None,
    )
    .await);
    let first = ttl_of(&ok(c.find_by_id("slide", "slide", None).await));
    // Read every 300 ms for 2 s: well past the original 1 s.
    while start.elapsed() < Duration::from_millis(2000) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ok(c.find_by_id("slide", "slide", None).await);
    }
    let later = ttl_of(&ok(c.find_by_id("slide", "slide", None).await));
    assert!(later > first, "expiry did not move: {first} -> {later}");
    assert_expiry(later, now(), 1);
    assert_not_found(c.find_by_id("slide", "fixed", None).await);
    // Left alone, it expires.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_not_found(c.find_by_id("slide", "slide", None).await);
}
