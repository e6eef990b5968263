//! Batch insert, update and delete through the official client (spec 7),
//! including partial failures and a 10,000-document batch.

#[macro_use]
mod common;

use common::*;
use ekodb_client::{QueryBuilder, Record};
use serde_json::json;

client_test!(batch_insert_update_delete);
/// Batch insert answers the new ids in input order and keeps caller ids;
/// batch update merges; batch delete counts and sends records to the trash.
async fn batch_insert_update_delete(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let records = vec![
        rec(json!({"name": "A", "n": 1})),
        rec(json!({"id": "b/fixed id", "name": "B", "n": 2})),
        rec(json!({"name": "C", "n": 3, "tags": ["x"]})),
    ];
    let out = ok(c.batch_insert("items", records, None).await);
    assert_eq!(out.len(), 3);
    let got = id_list(&out);
    assert_eq!(got[1], "b/fixed id");
    assert_eq!(ids(&out).len(), 3, "ids are distinct");
    for (i, id) in got.iter().enumerate() {
        let r = ok(c.find_by_id("items", id, None).await);
        assert_eq!(val(&r, "n"), json!(i + 1), "batch order for {id}");
    }

    let updates = vec![
        (got[0].clone(), rec(json!({"status": "on"}))),
        (got[1].clone(), rec(json!({"n": 20, "status": "off"}))),
        ("missing".to_string(), rec(json!({"status": "on"}))),
    ];
    let out = ok(c.batch_update("items", updates, None).await);
    assert_eq!(
        ids(&out),
        [got[0].clone(), got[1].clone()].into_iter().collect(),
        "only existing ids succeed"
    );
    let a = ok(c.find_by_id("items", &got[0], None).await);
    assert_eq!(
        wire(&a),
        json!({
            "id": got[0],
            "name": {"type": "String", "value": "A"},
            "n": {"type": "Integer", "value": 1},
            "status": {"type": "String", "value": "on"},
        })
    );
    let b = ok(c.find_by_id("items", &got[1], None).await);
    assert_eq!((val(&b, "n"), val(&b, "name")), (json!(20), json!("B")));
    assert_not_found(c.find_by_id("items", "missing", None).await);

    let n = ok(c
        .batch_delete(
            "items",
            vec![got[0].clone(), got[2].clone(), "missing".into()],
            None,
        )
        .await);
    assert_eq!(n, 2);
    assert_not_found(c.find_by_id("items", &got[0], None).await);
    assert_not_found(c.find_by_id("items", &got[2], None).await);
    assert_eq!(ok(c.count_documents("items").await), 1);
    assert_eq!(ok(c.restore_collection("items").await), 2);
    assert_eq!(ok(c.count_documents("items").await), 3);

    // Empty batches are fine.
    assert!(ok(c.batch_insert("items", vec![], None).await).is_empty());
    assert!(ok(c.batch_update("items", vec![], None).await).is_empty());
    assert_eq!(ok(c.batch_delete("items", vec![], None).await), 0);
    assert_eq!(ok(c.count_documents("items").await), 3);
}

client_test!(batch_partial_failure);
/// One bad item (a duplicate id) fails alone: the others are written, the
/// existing record is untouched, and the answer lists the failure.
async fn batch_partial_failure(srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    ok(
        c.insert("dups", rec(json!({"id": "taken", "v": "original"})), None)
            .await,
    );
    let out = ok(c
        .batch_insert(
            "dups",
            vec![
                rec(json!({"id": "new-1", "v": 1})),
                rec(json!({"id": "taken", "v": "clobbered"})),
                rec(json!({"id": "new-2", "v": 2})),
            ],
            None,
        )
        .await);
    assert_eq!(id_list(&out), vec!["new-1", "new-2"]);
    assert_eq!(
        val(&ok(c.find_by_id("dups", "taken", None).await), "v"),
        json!("original")
    );
    assert_eq!(ok(c.count_documents("dups").await), 3);

    // The failure itself, on the wire.
    let token = srv.token();
    let body = json!({
        "inserts": [{"data": {"id": "taken", "v": 0}}, {"data": {"id": "new-3"}, "bypass_ripple": null}],
        "bypass_ripple": false,
    });
    let r = srv.call(&token, "POST", "/api/batch/insert/dups", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["successful"], json!(["new-3"]), "{body}");
    let failed = body["failed"].as_array().expect("failed is an array");
    assert_eq!(failed.len(), 1, "{body}");
    assert_eq!(failed[0]["id"], "taken", "{body}");
    assert!(
        failed[0]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert_eq!(
        val(&ok(c.find_by_id("dups", "taken", None).await), "v"),
        json!("original")
    );
}

client_test!(batch_insert_10k_then_count);
/// 10,000 documents in one batch: every id comes back, every record is
/// counted and queryable.
async fn batch_insert_10k_then_count(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let records: Vec<Record> = (0..10_000)
        .map(|i| rec(json!({"n": i, "group": format!("g{}", i % 10), "payload": "x".repeat(32)})))
        .collect();
    let out = ok(c.batch_insert("bulk", records, None).await);
    assert_eq!(out.len(), 10_000);
    assert_eq!(ids(&out).len(), 10_000, "ids are distinct");
    assert_eq!(ok(c.count_documents("bulk").await), 10_000);
    let top = ok(c
        .find(
            "bulk",
            QueryBuilder::new().gte("n", 9_990).sort_asc("n").build(),
            None,
        )
        .await);
    assert_eq!(top.len(), 10);
    assert_eq!(val(&top[0], "n"), json!(9_990));
    assert_eq!(val(&top[9], "n"), json!(9_999));
    let g3 = ok(c
        .find(
            "bulk",
            QueryBuilder::new()
                .eq("group", "g3")
                .select_fields(vec!["n".into()])
                .build(),
            None,
        )
        .await);
    assert_eq!(g3.len(), 1_000);
    // Spot-check a record by the id the batch answered.
    let mid = id_of(&out[5_000]);
    assert_eq!(
        val(&ok(c.find_by_id("bulk", &mid, None).await), "n"),
        json!(5_000)
    );
    let d = ok(c
        .distinct_values("bulk", "group", ekodb_client::DistinctValuesQuery::new())
        .await);
    assert_eq!(d.count, 10);
}
