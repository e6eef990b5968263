//! Single-record CRUD through the official Rust client (`ekodb_client` 0.32):
//! insert, find by id (with projection), update, atomic actions and action
//! sequences, upsert, delete and the trash, typed values, and a restart between
//! write and read. Spec sections 3, 6 and 9.

#[macro_use]
mod common;

use common::*;
use ekodb_client::options::{DeleteOptions, InsertOptions, UpdateOptions};
use ekodb_client::{FieldType, Query, QueryBuilder, Record, SerializationFormat};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::str::FromStr;

client_test!(insert_generated_id_and_find_by_id);
/// A generated id is a non-empty URL-safe string, returned plainly; the record
/// reads back with every field in its typed envelope and nothing added.
async fn insert_generated_id_and_find_by_id(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    let r = ok(c
        .insert("users", rec(json!({"name": "Alice", "age": 30})), None)
        .await);
    let id = id_of(&r);
    assert!(!id.is_empty());
    assert!(
        id.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
        "generated id is not URL-safe: {id:?}"
    );
    let other = id_of(&ok(c
        .insert("users", rec(json!({"name": "Bob"})), None)
        .await));
    assert_ne!(other, id, "two inserts got the same id");

    let got = ok(c.find_by_id("users", &id, None).await);
    assert_eq!(
        wire(&got),
        json!({
            "id": id,
            "name": {"type": "String", "value": "Alice"},
            "age": {"type": "Integer", "value": 30},
        })
    );
    assert_eq!(got.get_string("name"), Some("Alice"));

    assert_not_found(c.find_by_id("users", "no-such-id", None).await);
    assert_not_found(c.find_by_id("no_such_collection", &id, None).await);
    assert!(ok(c.exists("users", &id).await));
    assert!(!ok(c.exists("users", "no-such-id").await));
    assert!(!ok(c.exists("no_such_collection", &id).await));

    ok(c.health().await);
    let h = c.health_status().await;
    assert!(h.reachable, "{h:?}");
}

client_test!(caller_supplied_ids_are_kept);
/// Caller-supplied ids are kept verbatim, including reserved URL characters,
/// and the record is reachable under that id by every id-addressed call.
async fn caller_supplied_ids_are_kept(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let weird = [
        "bob-user-id",
        "a/b c",
        "session:user123",
        "ünïcødé 雪/🌊",
        "with space",
        "q?x=1&y=2#frag",
        "100%",
        "plus+sign",
        "dot.ted..",
        "comma,semi;colon:",
    ];
    for (n, id) in weird.iter().enumerate() {
        let r = ok(c.insert("ids", rec(json!({"id": id, "n": n})), None).await);
        assert_eq!(id_of(&r), *id, "insert answered another id");
    }
    for (n, id) in weird.iter().enumerate() {
        let got = ok(c.find_by_id("ids", id, None).await);
        assert_eq!(id_of(&got), *id);
        assert_eq!(val(&got, "n"), json!(n), "wrong record behind {id:?}");
        let upd = ok(c
            .update("ids", id, rec(json!({"touched": true})), None)
            .await);
        assert_eq!(id_of(&upd), *id);
        assert_eq!(val(&upd, "touched"), json!(true));
        // A filter on `id` addresses the primary key.
        let found = ok(c
            .find("ids", QueryBuilder::new().eq("id", *id).build(), None)
            .await);
        assert_eq!(id_list(&found), vec![id.to_string()], "Eq id {id:?}");
    }
    assert_eq!(ok(c.count_documents("ids").await), weird.len());

    // An id that already exists is refused and the stored record is untouched.
    let msg = assert_api_err(
        c.insert("ids", rec(json!({"id": "a/b c", "n": 999})), None)
            .await,
        &[409],
    );
    assert!(!msg.is_empty());
    let got = ok(c.find_by_id("ids", "a/b c", None).await);
    assert_eq!(val(&got, "n"), json!(1));
    assert_eq!(ok(c.count_documents("ids").await), weird.len());

    // Deleting under a weird id works too.
    ok(c.delete("ids", "ünïcødé 雪/🌊", None).await);
    assert_not_found(c.find_by_id("ids", "ünïcødé 雪/🌊", None).await);
    assert!(ok(c.exists("ids", "a/b c").await));
}

client_test!(find_by_id_with_projection);
/// `find_by_id_with_projection`: select keeps the named fields plus the id,
/// exclude drops the named ones, both apply select then exclude, unknown
/// names are ignored and empty lists mean no projection.
async fn find_by_id_with_projection(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let full = json!({
        "id": "p1",
        "name": "Ann", "email": "ann@example.com", "age": 40, "city": "Oslo",
        "first name": "Ann-Marie",
    });
    ok(c.insert("people", rec(full), None).await);
    let proj = |sel: &[&str], exc: &[&str]| {
        let sel: Vec<String> = sel.iter().map(|s| s.to_string()).collect();
        let exc: Vec<String> = exc.iter().map(|s| s.to_string()).collect();
        c.find_by_id_with_projection("people", "p1", Some(sel), Some(exc))
    };

    let r = ok(proj(&["name", "email"], &[]).await);
    assert_eq!(keys(&r), set(&["id", "name", "email"]));
    assert_eq!(val(&r, "email"), json!("ann@example.com"));
    assert_eq!(id_of(&r), "p1");

    let r = ok(proj(&[], &["email", "age"]).await);
    assert_eq!(keys(&r), set(&["id", "name", "city", "first name"]));

    let r = ok(proj(&["name", "city"], &["city"]).await);
    assert_eq!(keys(&r), set(&["id", "name"]));

    let r = ok(proj(&["no_such_field"], &[]).await);
    assert_eq!(keys(&r), set(&["id"]));

    // Field names with a space travel form-encoded.
    let r = ok(proj(&["first name"], &[]).await);
    assert_eq!(keys(&r), set(&["id", "first name"]));
    assert_eq!(val(&r, "first name"), json!("Ann-Marie"));

    // The primary key is never excluded.
    let r = ok(proj(&[], &["id", "name"]).await);
    assert_eq!(keys(&r), set(&["id", "email", "age", "city", "first name"]));

    let r = ok(proj(&[], &[]).await);
    assert_eq!(
        keys(&r),
        set(&["id", "name", "email", "age", "city", "first name"])
    );
    let r = ok(c
        .find_by_id_with_projection("people", "p1", None, None)
        .await);
    assert_eq!(r.len(), 6);

    assert_not_found(
        c.find_by_id_with_projection("people", "nope", Some(vec!["name".into()]), None)
            .await,
    );
}

client_test!(update_merges_and_missing_id_is_not_found);
/// Update merges: fields in the body replace stored ones, the rest are kept;
/// the response is the full updated record. A missing id is a 404 and does
/// not create the record.
async fn update_merges_and_missing_id_is_not_found(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    ok(c.insert(
        "u",
        rec(json!({"id": "u1", "name": "Alice", "age": 30, "city": "Oslo"})),
        None,
    )
    .await);
    let r = ok(c
        .update("u", "u1", rec(json!({"age": 31, "email": "a@x.org"})), None)
        .await);
    let expect = json!({
        "id": "u1",
        "name": {"type": "String", "value": "Alice"},
        "age": {"type": "Integer", "value": 31},
        "city": {"type": "String", "value": "Oslo"},
        "email": {"type": "String", "value": "a@x.org"},
    });
    assert_eq!(wire(&r), expect);
    assert_eq!(wire(&ok(c.find_by_id("u", "u1", None).await)), expect);

    // A field can change type.
    let r = ok(c
        .update("u", "u1", rec(json!({"age": "thirty-one"})), None)
        .await);
    assert_eq!(
        field(&r, "age"),
        json!({"type": "String", "value": "thirty-one"})
    );

    // Projection applies to the returned record only.
    let opts = UpdateOptions::new().select_fields(vec!["city".into()]);
    let r = ok(c
        .update("u", "u1", rec(json!({"city": "Bergen"})), Some(opts))
        .await);
    assert_eq!(keys(&r), set(&["id", "city"]));
    assert_eq!(val(&r, "city"), json!("Bergen"));
    let opts = UpdateOptions::new().exclude_fields(vec!["name".into(), "email".into()]);
    let r = ok(c
        .update("u", "u1", rec(json!({"zip": "5003"})), Some(opts))
        .await);
    assert_eq!(keys(&r), set(&["id", "age", "city", "zip"]));
    let stored = ok(c.find_by_id("u", "u1", None).await);
    assert_eq!(
        keys(&stored),
        set(&["id", "name", "age", "city", "email", "zip"])
    );

    assert_not_found(c.update("u", "ghost", rec(json!({"x": 1})), None).await);
    assert_not_found(c.find_by_id("u", "ghost", None).await);
    assert_not_found(
        c.update("no_such_collection", "u1", rec(json!({"x": 1})), None)
            .await,
    );
    assert_eq!(ok(c.count_documents("u").await), 1);
}

client_test!(update_with_action_every_action);
/// Every atomic action on its own, reading the result both from the response
/// and from a fresh find.
async fn update_with_action_every_action(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    ok(c.insert(
        "acts",
        rec(json!({
            "id": "a1",
            "n": 10,
            "f": 1.5,
            "tags": ["a", "b", "c", "b"],
            "s": "foo",
            "keep": "untouched",
        })),
        None,
    )
    .await);

    let steps: Vec<(&str, &str, FieldType, &str, Value)> = vec![
        ("increment", "n", FieldType::Integer(5), "n", json!(15)),
        ("decrement", "n", FieldType::Integer(3), "n", json!(12)),
        ("multiply", "n", FieldType::Integer(2), "n", json!(24)),
        ("divide", "n", FieldType::Integer(4), "n", json!(6)),
        ("modulo", "n", FieldType::Integer(4), "n", json!(2)),
        ("increment", "f", FieldType::Float(0.25), "f", json!(1.75)),
        ("multiply", "f", FieldType::Float(2.0), "f", json!(3.5)),
        (
            "push",
            "tags",
            FieldType::String("d".into()),
            "tags",
            json!(["a", "b", "c", "b", "d"]),
        ),
        (
            "pop",
            "tags",
            FieldType::Null,
            "tags",
            json!(["a", "b", "c", "b"]),
        ),
        (
            "shift",
            "tags",
            FieldType::Null,
            "tags",
            json!(["b", "c", "b"]),
        ),
        (
            "unshift",
            "tags",
            FieldType::String("z".into()),
            "tags",
            json!(["z", "b", "c", "b"]),
        ),
        (
            "remove",
            "tags",
            FieldType::String("b".into()),
            "tags",
            json!(["z", "c"]),
        ),
        (
            "append",
            "s",
            FieldType::String("bar".into()),
            "s",
            json!("foobar"),
        ),
        ("clear", "s", FieldType::Null, "s", json!("")),
        ("clear", "n", FieldType::Null, "n", json!(0)),
        ("clear", "tags", FieldType::Null, "tags", json!([])),
    ];
    for (action, fld, value, check, expect) in steps {
        let r = ok(c.update_with_action("acts", "a1", action, fld, value).await);
        assert_eq!(val(&r, check), expect, "{action} {fld}: response");
        assert_eq!(
            val(&r, "keep"),
            json!("untouched"),
            "{action} touched another field"
        );
        let stored = ok(c.find_by_id("acts", "a1", None).await);
        assert_eq!(val(&stored, check), expect, "{action} {fld}: stored");
    }
    // The types survive: n stays an Integer, f a Float, tags an Array.
    let stored = ok(c.find_by_id("acts", "a1", None).await);
    assert_eq!(field(&stored, "n"), json!({"type": "Integer", "value": 0}));
    assert_eq!(field(&stored, "f"), json!({"type": "Float", "value": 3.5}));
    assert_eq!(
        field(&stored, "tags"),
        json!({"type": "Array", "value": []})
    );
    assert_eq!(field(&stored, "s"), json!({"type": "String", "value": ""}));

    assert_not_found(
        c.update_with_action("acts", "ghost", "increment", "n", FieldType::Integer(1))
            .await,
    );
    // A type error is a 400 and changes nothing.
    let before = wire(&stored);
    let msg = assert_api_err(
        c.update_with_action("acts", "a1", "increment", "s", FieldType::Integer(1))
            .await,
        &[400],
    );
    assert!(!msg.is_empty());
    assert_api_err(
        c.update_with_action("acts", "a1", "push", "keep", FieldType::Integer(1))
            .await,
        &[400],
    );
    assert_api_err(
        c.update_with_action("acts", "a1", "explode", "n", FieldType::Integer(1))
            .await,
        &[400],
    );
    assert_eq!(wire(&ok(c.find_by_id("acts", "a1", None).await)), before);
}

client_test!(update_with_action_sequence_is_all_or_nothing);
/// An action sequence is applied in order and at once; if any step fails,
/// nothing is written.
async fn update_with_action_sequence_is_all_or_nothing(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    ok(c.insert(
        "seq",
        rec(json!({"id": "s1", "score": 0, "lives": 3, "log": [], "name": "p"})),
        None,
    )
    .await);
    let step = |a: &str, f: &str, v: FieldType| (a.to_string(), f.to_string(), v);

    let r = ok(c
        .update_with_action_sequence(
            "seq",
            "s1",
            vec![
                step("increment", "score", FieldType::Integer(10)),
                step("decrement", "lives", FieldType::Integer(1)),
                step("push", "log", FieldType::String("hit".into())),
                step("push", "log", FieldType::String("miss".into())),
                step("append", "name", FieldType::String("layer".into())),
            ],
        )
        .await);
    let expect = json!({
        "id": "s1",
        "score": {"type": "Integer", "value": 10},
        "lives": {"type": "Integer", "value": 2},
        "log": {"type": "Array", "value": ["hit", "miss"]},
        "name": {"type": "String", "value": "player"},
    });
    assert_eq!(wire(&r), expect);
    assert_eq!(wire(&ok(c.find_by_id("seq", "s1", None).await)), expect);

    // Step 2 fails (append to an Integer): step 1 must not stick.
    assert_api_err(
        c.update_with_action_sequence(
            "seq",
            "s1",
            vec![
                step("increment", "score", FieldType::Integer(5)),
                step("append", "lives", FieldType::String("x".into())),
            ],
        )
        .await,
        &[400],
    );
    assert_eq!(wire(&ok(c.find_by_id("seq", "s1", None).await)), expect);

    // An unknown action in the middle: same.
    assert_api_err(
        c.update_with_action_sequence(
            "seq",
            "s1",
            vec![
                step("push", "log", FieldType::String("x".into())),
                step("teleport", "score", FieldType::Integer(1)),
                step("increment", "score", FieldType::Integer(1)),
            ],
        )
        .await,
        &[400],
    );
    assert_eq!(wire(&ok(c.find_by_id("seq", "s1", None).await)), expect);

    assert_not_found(
        c.update_with_action_sequence(
            "seq",
            "ghost",
            vec![step("increment", "score", FieldType::Integer(1))],
        )
        .await,
    );
}

client_test!(upsert_both_paths);
/// Upsert inserts under the caller's id when missing, merges when present.
async fn upsert_both_paths(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let r = ok(c
        .upsert(
            "people",
            "p-42",
            rec(json!({"name": "Zed", "age": 1})),
            None,
        )
        .await);
    assert_eq!(id_of(&r), "p-42");
    let got = ok(c.find_by_id("people", "p-42", None).await);
    assert_eq!(val(&got, "name"), json!("Zed"));
    assert_eq!(val(&got, "age"), json!(1));

    // The id argument wins over an id in the record.
    let r = ok(c
        .upsert(
            "people",
            "p-43",
            rec(json!({"id": "other", "name": "Yan"})),
            None,
        )
        .await);
    assert_eq!(id_of(&r), "p-43");
    assert_not_found(c.find_by_id("people", "other", None).await);

    let r = ok(c
        .upsert(
            "people",
            "p-42",
            rec(json!({"age": 2, "city": "Rome"})),
            None,
        )
        .await);
    assert_eq!(
        wire(&r),
        json!({
            "id": "p-42",
            "name": {"type": "String", "value": "Zed"},
            "age": {"type": "Integer", "value": 2},
            "city": {"type": "String", "value": "Rome"},
        })
    );
    assert_eq!(ok(c.count_documents("people").await), 2);
}

client_test!(delete_returns_record_then_not_found);
/// Delete answers with the deleted record; afterwards the id is gone for
/// every call, and deleting again is a 404.
async fn delete_returns_record_then_not_found(
    srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    for (id, name) in [("d1", "x"), ("d2", "y"), ("d3", "z")] {
        ok(
            c.insert("things", rec(json!({"id": id, "name": name})), None)
                .await,
        );
    }
    ok(c.delete("things", "d1", None).await);
    assert_not_found(c.find_by_id("things", "d1", None).await);
    assert!(!ok(c.exists("things", "d1").await));
    assert_not_found(c.delete("things", "d1", None).await);
    assert_not_found(
        c.update("things", "d1", rec(json!({"name": "again"})), None)
            .await,
    );
    assert_not_found(
        c.update_with_action(
            "things",
            "d1",
            "append",
            "name",
            FieldType::String("!".into()),
        )
        .await,
    );
    assert_not_found(c.delete("things", "never-was", None).await);
    assert_not_found(c.delete("no_such_collection", "d2", None).await);

    // The body of a delete is the deleted record (checked on the wire).
    let token = srv.token();
    let reply = srv.call(&token, "DELETE", "/api/delete/things/d2", "");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["id"], "d2", "{body}");
    assert_eq!(
        body["name"],
        json!({"type": "String", "value": "y"}),
        "{body}"
    );

    let left = ok(c.find("things", Query::new(), None).await);
    assert_eq!(id_list(&left), vec!["d3".to_string()]);
    assert_eq!(ok(c.count_documents("things").await), 1);
}

client_test!(restore_deleted_and_restore_collection);
/// Deleted records go to the trash: restore one, then restore a collection.
async fn restore_deleted_and_restore_collection(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    for i in 1..=4 {
        ok(
            c.insert("trash", rec(json!({"id": format!("r{i}"), "n": i})), None)
                .await,
        );
    }
    ok(c.delete("trash", "r1", None).await);
    assert!(ok(c.restore_deleted("trash", "r1").await));
    let back = ok(c.find_by_id("trash", "r1", None).await);
    assert_eq!(
        wire(&back),
        json!({"id": "r1", "n": {"type": "Integer", "value": 1}})
    );
    // Nothing in the trash for these ids.
    assert!(!ok(c.restore_deleted("trash", "r2").await));
    assert!(!ok(c.restore_deleted("trash", "never").await));
    assert!(!ok(c.restore_deleted("trash", "r1").await));

    ok(c.delete("trash", "r2", None).await);
    ok(c.delete("trash", "r3", None).await);
    assert_eq!(ok(c.count_documents("trash").await), 2);
    assert_eq!(ok(c.restore_collection("trash").await), 2);
    assert_eq!(ok(c.count_documents("trash").await), 4);
    for i in 1..=4 {
        let r = ok(c.find_by_id("trash", &format!("r{i}"), None).await);
        assert_eq!(val(&r, "n"), json!(i));
    }
    assert_eq!(ok(c.restore_collection("trash").await), 0);
}

client_test!(typed_values_round_trip);
/// Every value type the client can send reads back with the right type name
/// and value, through find-by-id and find.
async fn typed_values_round_trip(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let dt = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let mut r = Record::new();
    r.insert("id", "t1");
    r.insert("s", FieldType::String("hello".into()));
    r.insert("i", FieldType::Integer(-42));
    r.insert("big", FieldType::Integer(9_007_199_254_740_993));
    r.insert("max", FieldType::Integer(i64::MAX));
    r.insert("min", FieldType::Integer(i64::MIN));
    r.insert("huge", FieldType::Float(1e20));
    r.insert("tiny", FieldType::Float(5e-324));
    r.insert("f", FieldType::Float(99.0));
    r.insert("f2", FieldType::Float(-0.125));
    r.insert("b", FieldType::Boolean(true));
    r.insert("b2", FieldType::Boolean(false));
    r.insert(
        "obj",
        FieldType::from(json!({"k": "v", "nested": {"deep": true, "n": 1, "x": 1.5}})),
    );
    r.insert("arr", FieldType::from(json!([1, "two", 3.5, null, [true]])));
    r.insert("dt", FieldType::DateTime(dt));
    r.insert("vec", FieldType::vector(vec![0.1, 0.2, 0.3]));
    r.insert("nul", FieldType::Null);
    r.insert(
        "dec",
        FieldType::Decimal(Decimal::from_str("1234.5678").unwrap()),
    );
    r.insert("uuidish", "550e8400-e29b-41d4-a716-446655440000");
    r.insert("dateish", "2026-01-02");
    r.insert(
        "userobj",
        FieldType::from(json!({"type": "admin", "value": 3})),
    );
    r.insert("bin", FieldType::Binary(vec![1, 2, 255]));
    ok(c.insert("typed", r, None).await);

    let expect = json!({
        "id": "t1",
        "s": {"type": "String", "value": "hello"},
        "i": {"type": "Integer", "value": -42},
        "big": {"type": "Integer", "value": 9_007_199_254_740_993_i64},
        "max": {"type": "Integer", "value": i64::MAX},
        "min": {"type": "Integer", "value": i64::MIN},
        "huge": {"type": "Float", "value": 1e20},
        "tiny": {"type": "Float", "value": 5e-324},
        "f": {"type": "Float", "value": 99.0},
        "f2": {"type": "Float", "value": -0.125},
        "b": {"type": "Boolean", "value": true},
        "b2": {"type": "Boolean", "value": false},
        "obj": {"type": "Object", "value": {"k": "v", "nested": {"deep": true, "n": 1, "x": 1.5}}},
        "arr": {"type": "Array", "value": [1, "two", 3.5, null, [true]]},
        "vec": {"type": "Vector", "value": [0.1, 0.2, 0.3]},
        "nul": {"type": "Null", "value": null},
        "dec": {"type": "String", "value": "1234.5678"},
        "uuidish": {"type": "String", "value": "550e8400-e29b-41d4-a716-446655440000"},
        "dateish": {"type": "String", "value": "2026-01-02"},
        "userobj": {"type": "Object", "value": {"type": "admin", "value": 3}},
        "bin": {"type": "Array", "value": [1, 2, 255]},
    });
    let by_id = ok(c.find_by_id("typed", "t1", None).await);
    let by_query = ok(c.find("typed", Query::new(), None).await);
    assert_eq!(by_query.len(), 1);
    for got in [&by_id, &by_query[0]] {
        let mut w = wire(got);
        let dt_field = w.as_object_mut().unwrap().remove("dt").expect("dt present");
        for (k, v) in expect.as_object().unwrap() {
            assert_eq!(&w[k], v, "field {k}");
        }
        assert_eq!(
            w.as_object().unwrap().len(),
            expect.as_object().unwrap().len(),
            "{w}"
        );
        // The vector decodes as the client's native Vector.
        assert!(
            matches!(got.get("vec"), Some(FieldType::Vector(_))),
            "{:?}",
            got.get("vec")
        );
        // 99.0 stays a Float (not Integer 99) in both formats.
        match got.get("f") {
            Some(FieldType::Object(m)) => {
                assert_eq!(m.get("value"), Some(&FieldType::Float(99.0)))
            }
            other => panic!("f: {other:?}"),
        }
        assert_eq!(dt_field["type"], "DateTime", "{dt_field}");
        let s = dt_field["value"]
            .as_str()
            .expect("DateTime value is a string");
        let back = chrono::DateTime::parse_from_rfc3339(s).expect("RFC 3339");
        assert_eq!(back.with_timezone(&chrono::Utc), dt, "{s}");
    }
}

client_test!(nulls_empty_bodies_and_unicode);
/// Explicit nulls are stored as Null, an empty record is a record with only
/// an id, an empty update changes nothing, and unicode survives in keys,
/// values and collection names.
async fn nulls_empty_bodies_and_unicode(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    let r = ok(c
        .insert("misc", rec(json!({"id": "n1", "a": null, "b": 1})), None)
        .await);
    assert_eq!(id_of(&r), "n1");
    let got = ok(c.find_by_id("misc", "n1", None).await);
    assert_eq!(field(&got, "a"), json!({"type": "Null", "value": null}));
    assert_eq!(val(&got, "b"), json!(1));
    // Setting a field to null keeps the field, as Null.
    let got = ok(c.update("misc", "n1", rec(json!({"b": null})), None).await);
    assert_eq!(field(&got, "b"), json!({"type": "Null", "value": null}));

    let empty = ok(c.insert("misc", Record::new(), None).await);
    let eid = id_of(&empty);
    assert_eq!(
        wire(&ok(c.find_by_id("misc", &eid, None).await)),
        json!({"id": eid})
    );
    let same = ok(c.update("misc", &eid, Record::new(), None).await);
    assert_eq!(wire(&same), json!({"id": eid}));
    let same = ok(c.update("misc", "n1", Record::new(), None).await);
    assert_eq!(keys(&same), set(&["id", "a", "b"]));

    // Query::new() sends explicit nulls for the projection and cache keys.
    assert_eq!(ok(c.find("misc", Query::new(), None).await).len(), 2);

    let text = "雪 🌊 é — مرحبا \"quoted\"\nline\ttab \\ back";
    let u = rec(
        json!({"id": "ü-1", "名前": text, "emoji🙂": ["🙂", "ß"], "nested": {"ключ": "значение"}}),
    );
    ok(c.insert("unicode 集合", u, None).await);
    let got = ok(c.find_by_id("unicode 集合", "ü-1", None).await);
    assert_eq!(val(&got, "名前"), json!(text));
    assert_eq!(val(&got, "emoji🙂"), json!(["🙂", "ß"]));
    assert_eq!(val(&got, "nested"), json!({"ключ": "значение"}));
    let found = ok(c
        .find(
            "unicode 集合",
            QueryBuilder::new().eq("名前", text).build(),
            None,
        )
        .await);
    assert_eq!(id_list(&found), vec!["ü-1".to_string()]);
    assert!(ok(c.collection_exists("unicode 集合").await));
}

client_test!(restart_between_write_and_read);
/// Writes acknowledged before a kill -9 are all there after the restart,
/// read back with a new client: inserts, updates, actions, deletes (and their
/// trash), batches, KV and schemas.
async fn restart_between_write_and_read(srv: &mut TestServer, c: Client, fmt: SerializationFormat) {
    use ekodb_client::{FieldTypeSchema, Schema};
    ok(c.insert(
        "durable",
        rec(json!({"id": "k1", "name": "one", "f": 99.0, "tags": ["a"]})),
        None,
    )
    .await);
    ok(
        c.insert("durable", rec(json!({"id": "k2", "name": "two"})), None)
            .await,
    );
    ok(
        c.insert("durable", rec(json!({"id": "k3", "name": "three"})), None)
            .await,
    );
    ok(c.insert("durable", rec(json!({"id": "k4", "n": 1})), None)
        .await);
    ok(c.update(
        "durable",
        "k2",
        rec(json!({"name": "TWO", "extra": true})),
        None,
    )
    .await);
    ok(c.delete("durable", "k3", None).await);
    ok(
        c.update_with_action("durable", "k4", "increment", "n", FieldType::Integer(41))
            .await,
    );
    let batch: Vec<Record> = (0..100).map(|i| rec(json!({"i": i}))).collect();
    let batch_ids = ids(&ok(c.batch_insert("durable", batch, None).await));
    assert_eq!(batch_ids.len(), 100);
    ok(c.kv_set("kv:durable", json!({"v": 1}), None).await);
    let schema = Schema::new().add_field("name", FieldTypeSchema::new("String").required());
    ok(c.create_collection("strict", schema).await);
    let k1_before = wire(&ok(c.find_by_id("durable", "k1", None).await));

    srv.restart();
    let c = client(srv, fmt);

    assert_eq!(
        wire(&ok(c.find_by_id("durable", "k1", None).await)),
        k1_before
    );
    let k2 = ok(c.find_by_id("durable", "k2", None).await);
    assert_eq!(val(&k2, "name"), json!("TWO"));
    assert_eq!(val(&k2, "extra"), json!(true));
    assert_not_found(c.find_by_id("durable", "k3", None).await);
    assert_eq!(
        val(&ok(c.find_by_id("durable", "k4", None).await), "n"),
        json!(42)
    );
    assert_eq!(ok(c.count_documents("durable").await), 103);
    let all = ok(c.find_all("durable", 1000).await);
    assert!(batch_ids.is_subset(&ids(&all)));
    assert_eq!(
        ok(c.kv_get("kv:durable").await),
        Some(json!({"type": "Object", "value": {"v": 1}}))
    );
    let s = ok(c.get_schema("strict").await);
    assert!(s.fields["name"].required);
    assert_api_err(
        c.insert("strict", rec(json!({"other": 1})), None).await,
        &[400],
    );

    // The trash survives too.
    assert!(ok(c.restore_deleted("durable", "k3").await));
    assert_eq!(
        val(&ok(c.find_by_id("durable", "k3", None).await), "name"),
        json!("three")
    );
}

client_test!(bypass_flags_are_accepted);
/// The optional flags every call can carry (`bypass_ripple`, `bypass_cache`)
/// are accepted and change nothing on a single node.
async fn bypass_flags_are_accepted(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let opts = InsertOptions::new().bypass_ripple(true).bypass_cache(true);
    ok(
        c.insert("flags", rec(json!({"id": "f1", "n": 1})), Some(opts))
            .await,
    );
    let opts = InsertOptions::new().bypass_ripple(false);
    ok(
        c.insert("flags", rec(json!({"id": "f2", "n": 2})), Some(opts))
            .await,
    );
    assert_eq!(
        val(&ok(c.find_by_id("flags", "f1", Some(true)).await), "n"),
        json!(1)
    );
    assert_eq!(
        val(&ok(c.find_by_id("flags", "f1", Some(false)).await), "n"),
        json!(1)
    );
    let q = QueryBuilder::new()
        .gte("n", 1)
        .bypass_cache(true)
        .bypass_ripple(true)
        .build();
    assert_eq!(
        ids(&ok(c.find("flags", q, Some(true)).await)),
        set(&["f1", "f2"])
    );
    let opts = UpdateOptions::new().bypass_ripple(true).bypass_cache(false);
    assert_eq!(
        val(
            &ok(c
                .update("flags", "f1", rec(json!({"n": 10})), Some(opts))
                .await),
            "n"
        ),
        json!(10)
    );
    let d = ok(c
        .distinct_values(
            "flags",
            "n",
            ekodb_client::DistinctValuesQuery::new()
                .bypass_ripple(true)
                .bypass_cache(true),
        )
        .await);
    assert_eq!(d.values, vec![json!(2), json!(10)]);
    let b = ok(c
        .batch_insert("flags", vec![rec(json!({"id": "f3", "n": 3}))], Some(true))
        .await);
    assert_eq!(id_list(&b), vec!["f3"]);
    assert_eq!(
        ok(c.batch_update(
            "flags",
            vec![("f3".into(), rec(json!({"n": 30})))],
            Some(false)
        )
        .await)
        .len(),
        1
    );
    ok(c.delete("flags", "f2", Some(true)).await);
    ok(
        c.delete_with_options("flags", "f3", DeleteOptions::new().bypass_ripple(false))
            .await,
    );
    assert_eq!(
        ok(c.batch_delete("flags", vec!["f1".into()], Some(true)).await),
        1
    );
    assert_eq!(ok(c.count_documents("flags").await), 0);
}

client_test!(format_dependent_values_read_back);
/// Values the Rust client encodes differently per format (a UUID is a string
/// in JSON and 16 raw bytes in MessagePack; a Duration is `{secs, nanos}` or
/// `[secs, nanos]`) are stored and read back without error.
async fn format_dependent_values_read_back(
    srv: &mut TestServer,
    c: Client,
    fmt: SerializationFormat,
) {
    let uuid_text = "550e8400-e29b-41d4-a716-446655440000";
    let uuid = uuid_bytes(uuid_text);
    let mut r = Record::new();
    r.insert("id", "x1");
    r.insert(
        "u",
        FieldType::UUID(uuid::Uuid::parse_str(uuid_text).unwrap()),
    );
    r.insert(
        "set",
        FieldType::Set(vec![FieldType::Integer(1), FieldType::Integer(2)]),
    );
    r.insert("dur", FieldType::Duration(std::time::Duration::new(90, 5)));
    ok(c.insert("fmt", r, None).await);
    // Reads succeed in both formats: the server never emits `bin`.
    let got = ok(c.find_by_id("fmt", "x1", None).await);
    match fmt {
        SerializationFormat::Json => {
            assert_eq!(
                field(&got, "u"),
                json!({"type": "String", "value": uuid_text})
            )
        }
        SerializationFormat::MessagePack => {
            assert_eq!(
                field(&got, "u"),
                json!({"type": "Binary", "value": uuid.to_vec()})
            )
        }
    }
    assert_eq!(val(&got, "set"), json!([1, 2]));
    let dur = val(&got, "dur");
    assert!(
        dur == json!({"secs": 90, "nanos": 5}) || dur == json!([90, 5]),
        "duration came back as {dur}"
    );
    // A 16-byte MessagePack `bin` is kept as Binary (array of byte values).
    let mut body = b"\x82\xa2id\xa2x2\xa1b\xc4\x10".to_vec();
    body.extend_from_slice(&uuid);
    let token = srv.token();
    let auth = format!("Bearer {token}");
    let head = format!(
        "POST /api/insert/fmt HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Type: application/msgpack\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    let reply = tidepool_tests::HttpReply::parse(&srv.raw(&bytes)).expect("reply");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let got = ok(c.find_by_id("fmt", "x2", None).await);
    assert_eq!(
        field(&got, "b"),
        json!({"type": "Binary", "value": uuid.to_vec()})
    );
}

/// The 16 bytes of a UUID in its canonical text form.
fn uuid_bytes(s: &str) -> [u8; 16] {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}
