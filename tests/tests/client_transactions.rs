//! Transactions through the official client (spec 13): begin, status, staged
//! writes that only the transaction sees, commit, rollback, savepoints, and
//! `transaction_id` on insert, update, delete, batches and finds.

#[macro_use]
mod common;

use common::*;
use ekodb_client::options::{
    BatchDeleteOptions, BatchInsertOptions, BatchUpdateOptions, DeleteOptions, InsertOptions,
    UpdateOptions, UpsertOptions,
};
use ekodb_client::{Query, QueryBuilder};
use serde_json::json;

client_test!(begin_and_status);
/// Begin and status: an id string, state Active, staged writes counted.
async fn begin_and_status(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let tx = ok(c.begin_transaction(None).await);
    assert!(!tx.is_empty());
    let st = ok(c.get_transaction_status(&tx).await);
    assert_eq!(st["state"], "Active", "{st}");
    assert_eq!(st["transaction_id"], tx.as_str(), "{st}");
    assert_eq!(st["operations_count"], 0, "{st}");

    let tx2 = ok(c.begin_transaction(Some("Serializable")).await);
    assert_ne!(tx, tx2);
    assert_eq!(
        ok(c.get_transaction_status(&tx2).await)["isolation_level"],
        "Serializable"
    );

    ok(c.insert(
        "acc",
        rec(json!({"id": "a", "n": 1})),
        Some(InsertOptions::new().transaction_id(&tx)),
    )
    .await);
    let ids = vec![rec(json!({"id": "b"})), rec(json!({"id": "c"}))];
    ok(
        c.batch_insert_with_options("acc", ids, BatchInsertOptions::new().transaction_id(&tx))
            .await,
    );
    assert_eq!(
        ok(c.get_transaction_status(&tx).await)["operations_count"],
        3
    );

    ok(c.commit_transaction(&tx).await);
    let st = ok(c.get_transaction_status(&tx).await);
    assert_eq!(st["state"], "Committed", "{st}");
    assert_not_found(c.get_transaction_status("no-such-transaction").await);
}

client_test!(commit_applies_staged_writes);
/// Staged inserts, updates and deletes are invisible outside the
/// transaction, visible inside it, and applied together at commit.
async fn commit_applies_staged_writes(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    ok(
        c.insert("acc", rec(json!({"id": "alice", "balance": 100})), None)
            .await,
    );
    ok(
        c.insert("acc", rec(json!({"id": "bob", "balance": 50})), None)
            .await,
    );
    ok(
        c.insert("acc", rec(json!({"id": "old", "balance": 0})), None)
            .await,
    );
    let tx = ok(c.begin_transaction(Some("ReadCommitted")).await);
    let in_tx = || UpdateOptions::new().transaction_id(&tx);

    let staged = ok(c
        .update("acc", "alice", rec(json!({"balance": 70})), Some(in_tx()))
        .await);
    assert_eq!(val(&staged, "balance"), json!(70));
    ok(
        c.update("acc", "bob", rec(json!({"balance": 80})), Some(in_tx()))
            .await,
    );
    let ins = ok(c
        .insert(
            "acc",
            rec(json!({"id": "carol", "balance": 5})),
            Some(InsertOptions::new().transaction_id(&tx)),
        )
        .await);
    assert_eq!(id_of(&ins), "carol");
    ok(
        c.delete_with_options("acc", "old", DeleteOptions::new().transaction_id(&tx))
            .await,
    );

    // Outside: nothing happened yet.
    assert_eq!(
        val(&ok(c.find_by_id("acc", "alice", None).await), "balance"),
        json!(100)
    );
    assert_not_found(c.find_by_id("acc", "carol", None).await);
    assert!(ok(c.exists("acc", "old").await));
    assert_eq!(ok(c.count_documents("acc").await), 3);
    // Inside: read-your-writes.
    assert_eq!(
        val(
            &ok(c.find_by_id_in_transaction("acc", "alice", &tx, None).await),
            "balance"
        ),
        json!(70)
    );
    assert_eq!(
        val(
            &ok(c.find_by_id_in_transaction("acc", "carol", &tx, None).await),
            "balance"
        ),
        json!(5)
    );
    assert_not_found(c.find_by_id_in_transaction("acc", "old", &tx, None).await);
    let seen = ok(c
        .find_in_transaction(
            "acc",
            QueryBuilder::new().gte("balance", 60).build(),
            &tx,
            None,
        )
        .await);
    assert_eq!(ids(&seen), set(&["alice", "bob"]));

    ok(c.commit_transaction(&tx).await);
    assert_eq!(
        val(&ok(c.find_by_id("acc", "alice", None).await), "balance"),
        json!(70)
    );
    assert_eq!(
        val(&ok(c.find_by_id("acc", "bob", None).await), "balance"),
        json!(80)
    );
    assert_eq!(
        val(&ok(c.find_by_id("acc", "carol", None).await), "balance"),
        json!(5)
    );
    assert_not_found(c.find_by_id("acc", "old", None).await);
    assert_eq!(ok(c.count_documents("acc").await), 3);

    // A finished transaction cannot take more writes.
    assert_api_err(
        c.insert(
            "acc",
            rec(json!({"id": "late"})),
            Some(InsertOptions::new().transaction_id(&tx)),
        )
        .await,
        &[400],
    );
    assert_not_found(c.find_by_id("acc", "late", None).await);
}

client_test!(rollback_discards);
/// Rollback discards every staged write.
async fn rollback_discards(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    ok(
        c.insert("acc", rec(json!({"id": "alice", "balance": 100})), None)
            .await,
    );
    let tx = ok(c.begin_transaction(None).await);
    ok(c.update(
        "acc",
        "alice",
        rec(json!({"balance": 1})),
        Some(UpdateOptions::new().transaction_id(&tx)),
    )
    .await);
    ok(c.insert(
        "acc",
        rec(json!({"id": "ghost"})),
        Some(InsertOptions::new().transaction_id(&tx)),
    )
    .await);
    ok(
        c.delete_with_options("acc", "alice", DeleteOptions::new().transaction_id(&tx))
            .await,
    );
    ok(c.rollback_transaction(&tx).await);

    assert_eq!(
        val(&ok(c.find_by_id("acc", "alice", None).await), "balance"),
        json!(100)
    );
    assert_not_found(c.find_by_id("acc", "ghost", None).await);
    assert_eq!(ok(c.count_documents("acc").await), 1);
    let st = ok(c.get_transaction_status(&tx).await);
    assert_eq!(st["state"], "RolledBack", "{st}");
    // Committing a rolled-back transaction fails and applies nothing.
    assert!(c.commit_transaction(&tx).await.is_err());
    assert_not_found(c.find_by_id("acc", "ghost", None).await);
}

client_test!(savepoints);
/// Savepoints: roll back to one discards what came after it, releasing one
/// keeps the staged writes, and names are arbitrary strings.
async fn savepoints(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let tx = ok(c.begin_transaction(None).await);
    let opts = || InsertOptions::new().transaction_id(&tx);
    ok(c.insert("sp", rec(json!({"id": "one"})), Some(opts()))
        .await);
    ok(c.create_savepoint(&tx, "sp 1/a").await);
    ok(c.insert("sp", rec(json!({"id": "two"})), Some(opts()))
        .await);
    ok(c.create_savepoint(&tx, "second").await);
    ok(c.insert("sp", rec(json!({"id": "three"})), Some(opts()))
        .await);
    ok(c.rollback_to_savepoint(&tx, "sp 1/a").await);
    assert_not_found(c.find_by_id_in_transaction("sp", "two", &tx, None).await);
    assert_not_found(c.find_by_id_in_transaction("sp", "three", &tx, None).await);
    assert!(ok(c.find_by_id_in_transaction("sp", "one", &tx, None).await).contains_key("id"));

    ok(c.create_savepoint(&tx, "keep").await);
    ok(c.insert("sp", rec(json!({"id": "four"})), Some(opts()))
        .await);
    ok(c.release_savepoint(&tx, "keep").await);
    assert!(
        c.rollback_to_savepoint(&tx, "keep").await.is_err(),
        "a released savepoint is gone"
    );
    assert!(c.rollback_to_savepoint(&tx, "never-made").await.is_err());

    ok(c.commit_transaction(&tx).await);
    assert_eq!(
        ids(&ok(c.find("sp", Query::new(), None).await)),
        set(&["one", "four"])
    );
}

client_test!(batches_and_upsert_in_a_transaction);
/// Batches and upsert inside a transaction are staged as a whole.
async fn batches_and_upsert_in_a_transaction(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    ok(c.batch_insert(
        "b",
        vec![
            rec(json!({"id": "x", "s": "old"})),
            rec(json!({"id": "y", "s": "old"})),
        ],
        None,
    )
    .await);
    let tx = ok(c.begin_transaction(None).await);
    ok(c.batch_update_with_options(
        "b",
        vec![
            ("x".into(), rec(json!({"s": "new"}))),
            ("y".into(), rec(json!({"s": "new"}))),
        ],
        BatchUpdateOptions::new().transaction_id(&tx),
    )
    .await);
    assert_eq!(
        ok(c.get_transaction_status(&tx).await)["operations_count"],
        2
    );
    ok(c.batch_insert_with_options(
        "b",
        vec![rec(json!({"id": "z"}))],
        BatchInsertOptions::new().transaction_id(&tx),
    )
    .await);
    ok(c.upsert(
        "b",
        "w",
        rec(json!({"s": "up"})),
        Some(UpsertOptions::new().transaction_id(&tx)),
    )
    .await);
    assert_eq!(
        val(&ok(c.find_by_id("b", "x", None).await), "s"),
        json!("old")
    );
    assert_eq!(ok(c.count_documents("b").await), 2);
    ok(c.commit_transaction(&tx).await);
    assert_eq!(
        val(&ok(c.find_by_id("b", "x", None).await), "s"),
        json!("new")
    );
    assert_eq!(
        val(&ok(c.find_by_id("b", "w", None).await), "s"),
        json!("up")
    );
    assert_eq!(ok(c.count_documents("b").await), 4);

    let tx = ok(c.begin_transaction(None).await);
    assert_eq!(
        ok(c.batch_delete_with_options(
            "b",
            vec!["x".into(), "y".into()],
            BatchDeleteOptions::new().transaction_id(&tx)
        )
        .await),
        2
    );
    assert_eq!(ok(c.count_documents("b").await), 4);
    ok(c.commit_transaction(&tx).await);
    assert_eq!(
        ids(&ok(c.find("b", Query::new(), None).await)),
        set(&["z", "w"])
    );
}

client_test!(conflicting_commit_is_refused);
/// Two transactions touch the same record: the second commit conflicts
/// (409) and its writes are not applied.
async fn conflicting_commit_is_refused(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    ok(c.insert("acc", rec(json!({"id": "a", "n": 0})), None).await);
    let t1 = ok(c.begin_transaction(Some("Serializable")).await);
    let t2 = ok(c.begin_transaction(Some("Serializable")).await);
    ok(c.find_by_id_in_transaction("acc", "a", &t1, None).await);
    ok(c.find_by_id_in_transaction("acc", "a", &t2, None).await);
    ok(c.update(
        "acc",
        "a",
        rec(json!({"n": 1})),
        Some(UpdateOptions::new().transaction_id(&t1)),
    )
    .await);
    ok(c.update(
        "acc",
        "a",
        rec(json!({"n": 2})),
        Some(UpdateOptions::new().transaction_id(&t2)),
    )
    .await);
    ok(c.commit_transaction(&t1).await);
    let err = c
        .commit_transaction(&t2)
        .await
        .expect_err("second commit must conflict");
    assert!(format!("{err:?}").contains("409"), "{err:?}");
    assert_eq!(
        val(&ok(c.find_by_id("acc", "a", None).await), "n"),
        json!(1)
    );
}
