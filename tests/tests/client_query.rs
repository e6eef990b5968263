//! The query language through the official client (spec 8, 10): every filter
//! operator and combinator, sort, skip/limit and pagination, projection, the
//! find helpers, joins and distinct values.

#[macro_use]
mod common;

use common::*;
use ekodb_client::{Client, DistinctValuesQuery, Query, QueryBuilder, Record};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Five users, the data set of the recorded reference run (ages 25, 30, 35, 28,
/// 32), plus a few typed fields.
async fn seed_users(c: &Client) {
    let users = [
        json!({"id": "u1", "name": "Alice", "age": 25, "status": "active", "email": "alice@example.com",
               "score": 88.5, "dept": "d1", "vip": true, "joined": "2024-01-10T00:00:00Z", "tags": ["admin", "dev"]}),
        json!({"id": "u2", "name": "Bob", "age": 30, "status": "inactive", "email": "bob@example.com",
               "score": 72.0, "dept": "d2", "vip": false, "joined": "2024-03-05T12:00:00Z", "tags": ["dev"]}),
        json!({"id": "u3", "name": "Carol", "age": 35, "status": "active", "email": "carol@example.com",
               "score": 95.25, "dept": "d1", "vip": false, "joined": "2023-11-20T08:30:00Z", "tags": []}),
        json!({"id": "u4", "name": "Dave", "age": 28, "status": "pending", "email": "dave@example.org",
               "score": 60.0, "dept": "d3", "vip": true, "joined": "2024-06-01T00:00:00Z", "tags": ["ops"]}),
        json!({"id": "u5", "name": "Eve", "age": 32, "status": "active", "email": "eve@example.com",
               "score": 79.5, "dept": "d2", "vip": false, "joined": "2022-02-02T02:02:02Z", "tags": ["dev", "ops"]}),
    ];
    for u in users {
        ok(c.insert("users", rec(u), None).await);
    }
}

async fn find_ids(c: &Client, q: Query) -> BTreeSet<String> {
    ids(&ok(c.find("users", q, None).await))
}

async fn find_order(c: &Client, q: Query) -> Vec<String> {
    id_list(&ok(c.find("users", q, None).await))
}

fn cond(field: &str, op: &str, value: Value) -> Value {
    json!({"type": "Condition", "content": {"field": field, "operator": op, "value": value}})
}

client_test!(every_condition_operator);
/// Each comparison and string operator on its own.
async fn every_condition_operator(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    seed_users(&c).await;
    let q = QueryBuilder::new;
    let cases: Vec<(&str, Query, &[&str])> = vec![
        (
            "Eq",
            q().eq("status", "active").build(),
            &["u1", "u3", "u5"],
        ),
        ("Eq bool", q().eq("vip", true).build(), &["u1", "u4"]),
        ("Eq int/float", q().eq("score", 72).build(), &["u2"]),
        ("Eq float", q().eq("score", 95.25).build(), &["u3"]),
        ("Eq id", q().eq("id", "u3").build(), &["u3"]),
        ("Eq none", q().eq("status", "gone").build(), &[]),
        ("Ne", q().ne("status", "active").build(), &["u2", "u4"]),
        ("Gt", q().gt("age", 30).build(), &["u3", "u5"]),
        ("Gte", q().gte("age", 30).build(), &["u2", "u3", "u5"]),
        ("Lt", q().lt("age", 28).build(), &["u1"]),
        ("Lte", q().lte("age", 28).build(), &["u1", "u4"]),
        ("Gt float", q().gt("score", 80).build(), &["u1", "u3"]),
        ("Lt float", q().lt("score", 72.5).build(), &["u2", "u4"]),
        ("Gt string", q().gt("name", "Carol").build(), &["u4", "u5"]),
        (
            "Gt datetime",
            q().gt("joined", "2024-01-01T00:00:00Z").build(),
            &["u1", "u2", "u4"],
        ),
        (
            "Lte datetime",
            q().lte("joined", "2023-11-20T08:30:00Z").build(),
            &["u3", "u5"],
        ),
        (
            "In",
            q().in_array("status", vec![json!("active"), json!("pending")])
                .build(),
            &["u1", "u3", "u4", "u5"],
        ),
        (
            "In numbers",
            q().in_array("age", vec![json!(25), json!(35), json!(99)])
                .build(),
            &["u1", "u3"],
        ),
        (
            "In id",
            q().in_array("id", vec![json!("u2"), json!("u4")]).build(),
            &["u2", "u4"],
        ),
        (
            "NotIn",
            q().nin("status", vec![json!("inactive")]).build(),
            &["u1", "u3", "u4", "u5"],
        ),
        (
            "NotIn many",
            q().nin("age", vec![json!(25), json!(30), json!(35)])
                .build(),
            &["u4", "u5"],
        ),
        (
            "Contains",
            q().contains("email", "@example.com").build(),
            &["u1", "u2", "u3", "u5"],
        ),
        (
            "Contains middle",
            q().contains("name", "ar").build(),
            &["u3"],
        ),
        ("StartsWith", q().starts_with("name", "A").build(), &["u1"]),
        (
            "StartsWith email",
            q().starts_with("email", "da").build(),
            &["u4"],
        ),
        ("EndsWith", q().ends_with("email", ".org").build(), &["u4"]),
        (
            "EndsWith name",
            q().ends_with("name", "e").build(),
            &["u1", "u4", "u5"],
        ),
    ];
    for (what, query, expect) in cases {
        assert_eq!(find_ids(&c, query).await, set(expect), "{what}");
    }
}

client_test!(logical_combinators);
/// And / Or / Not, nested, and several builder conditions (implicit And).
async fn logical_combinators(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    seed_users(&c).await;
    let q = QueryBuilder::new;
    // Gte 28 AND Lt 35: the reference run matched 3.
    assert_eq!(
        find_ids(&c, q().gte("age", 28).lt("age", 35).build()).await,
        set(&["u2", "u4", "u5"])
    );
    assert_eq!(
        find_ids(
            &c,
            q().and(vec![
                cond("age", "Gte", json!(28)),
                cond("age", "Lt", json!(35))
            ])
            .build()
        )
        .await,
        set(&["u2", "u4", "u5"])
    );
    // Or(Lt 28, Gt 32): 2.
    assert_eq!(
        find_ids(
            &c,
            q().or(vec![
                cond("age", "Lt", json!(28)),
                cond("age", "Gt", json!(32))
            ])
            .build()
        )
        .await,
        set(&["u1", "u3"])
    );
    // Not(Eq inactive): 4.
    assert_eq!(
        find_ids(&c, q().not(cond("status", "Eq", json!("inactive"))).build()).await,
        set(&["u1", "u3", "u4", "u5"])
    );
    // Or(And(active, age > 30), name = Bob)
    let nested = q()
        .or(vec![
            json!({"type": "Logical", "content": {"operator": "And", "expressions": [
            cond("status", "Eq", json!("active")), cond("age", "Gt", json!(30))]}}),
            cond("name", "Eq", json!("Bob")),
        ])
        .build();
    assert_eq!(find_ids(&c, nested).await, set(&["u2", "u3", "u5"]));
    // Not(Or(...)) and And with Not inside.
    let not_or = q()
        .not(
            json!({"type": "Logical", "content": {"operator": "Or", "expressions": [
        cond("dept", "Eq", json!("d1")), cond("dept", "Eq", json!("d2"))]}}),
        )
        .build();
    assert_eq!(find_ids(&c, not_or).await, set(&["u4"]));
    let mixed = q()
        .eq("vip", false)
        .not(cond("status", "Eq", json!("active")))
        .build();
    assert_eq!(find_ids(&c, mixed).await, set(&["u2"]));
    // Conditions that contradict each other.
    assert_eq!(
        find_ids(&c, q().gt("age", 30).lt("age", 30).build()).await,
        set(&[])
    );
    // A single-expression Or is just that expression.
    assert_eq!(
        find_ids(&c, q().or(vec![cond("id", "Eq", json!("u5"))]).build()).await,
        set(&["u5"])
    );
}

client_test!(sort_skip_limit_paginate);
/// Sorting (one and several keys, both directions) with skip, limit and
/// pages.
async fn sort_skip_limit_paginate(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    seed_users(&c).await;
    let q = QueryBuilder::new;
    let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        find_order(&c, q().sort_asc("age").build()).await,
        v(&["u1", "u4", "u2", "u5", "u3"])
    );
    assert_eq!(
        find_order(&c, q().sort_desc("age").build()).await,
        v(&["u3", "u5", "u2", "u4", "u1"])
    );
    assert_eq!(
        find_order(&c, q().sort_desc("score").limit(3).build()).await,
        v(&["u3", "u1", "u5"])
    );
    assert_eq!(
        find_order(&c, q().sort_asc("name").skip(2).limit(2).build()).await,
        v(&["u3", "u4"])
    );
    // `page` counts from 0 in the builder: page 1 of size 2 skips 2.
    assert_eq!(
        find_order(&c, q().sort_asc("name").page(1, 2).build()).await,
        v(&["u3", "u4"])
    );
    assert_eq!(
        find_order(&c, q().sort_asc("joined").build()).await,
        v(&["u5", "u3", "u1", "u2", "u4"])
    );
    assert_eq!(
        find_order(&c, q().sort_asc("dept").sort_desc("age").build()).await,
        v(&["u3", "u1", "u5", "u2", "u4"])
    );
    // Filter, then sort, then skip, then limit.
    assert_eq!(
        find_order(
            &c,
            q().eq("status", "active")
                .sort_desc("age")
                .skip(1)
                .limit(5)
                .build()
        )
        .await,
        v(&["u5", "u1"])
    );
    assert_eq!(
        find_order(&c, q().sort_asc("age").skip(10).build()).await,
        v(&[])
    );
    assert_eq!(
        find_order(&c, q().sort_asc("age").limit(1).build()).await,
        v(&["u1"])
    );
    assert_eq!(
        ok(c.find("users", q().limit(2).build(), None).await).len(),
        2
    );
    assert_eq!(
        ok(c.find("users", q().skip(3).build(), None).await).len(),
        2
    );

    // The client's `paginate` counts pages from 1; pages partition the set.
    let p1 = ids(&ok(c.paginate("users", 1, 2).await));
    let p2 = ids(&ok(c.paginate("users", 2, 2).await));
    let p3 = ids(&ok(c.paginate("users", 3, 2).await));
    let p4 = ok(c.paginate("users", 4, 2).await);
    assert_eq!((p1.len(), p2.len(), p3.len(), p4.len()), (2, 2, 1, 0));
    let all: BTreeSet<String> = p1.iter().chain(&p2).chain(&p3).cloned().collect();
    assert_eq!(all, set(&["u1", "u2", "u3", "u4", "u5"]));
}

client_test!(projection_and_find_helpers);
/// Projection on find, and the find helpers: find_one, find_all,
/// count_documents, exists.
async fn projection_and_find_helpers(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    seed_users(&c).await;
    let q = QueryBuilder::new;
    let rs = ok(c
        .find(
            "users",
            q().select_fields(vec!["name".into(), "age".into()]).build(),
            None,
        )
        .await);
    assert_eq!(rs.len(), 5);
    for r in &rs {
        assert_eq!(keys(r), set(&["id", "name", "age"]));
    }
    let rs = ok(c
        .find(
            "users",
            q().eq("id", "u2")
                .exclude_fields(vec!["email".into(), "tags".into(), "joined".into()])
                .build(),
            None,
        )
        .await);
    assert_eq!(rs.len(), 1);
    assert_eq!(
        keys(&rs[0]),
        set(&["id", "name", "age", "status", "score", "dept", "vip"])
    );
    assert_eq!(val(&rs[0], "score"), json!(72.0));
    // Projection does not change which records match.
    let rs = ok(c
        .find(
            "users",
            q().eq("status", "active")
                .select_fields(vec!["name".into()])
                .sort_asc("name")
                .build(),
            None,
        )
        .await);
    assert_eq!(id_list(&rs), vec!["u1", "u3", "u5"]);
    assert_eq!(val(&rs[2], "name"), json!("Eve"));

    let one = ok(c.find_one("users", "email", "bob@example.com").await).expect("Bob");
    assert_eq!(id_of(&one), "u2");
    assert_eq!(val(&one, "name"), json!("Bob"));
    assert!(ok(c.find_one("users", "email", "nobody@example.com").await).is_none());
    let one = ok(c.find_one("users", "age", 35).await).expect("Carol");
    assert_eq!(id_of(&one), "u3");

    // find_all sends empty projection lists: every field comes back.
    let all = ok(c.find_all("users", 100).await);
    assert_eq!(all.len(), 5);
    for r in &all {
        assert_eq!(r.len(), 10, "{}", wire(r));
    }
    assert_eq!(ok(c.find_all("users", 3).await).len(), 3);

    assert_eq!(ok(c.count_documents("users").await), 5);
    ok(c.delete("users", "u5", None).await);
    assert_eq!(ok(c.count_documents("users").await), 4);
    assert!(ok(c.exists("users", "u1").await));
    assert!(!ok(c.exists("users", "u5").await));
    // An empty filterless query returns everything.
    assert_eq!(ok(c.find("users", Query::new(), None).await).len(), 4);
}

/// Employees, departments, offices and tasks for the join scenarios.
async fn seed_org(c: &Client) {
    for e in [
        json!({"id": "e1", "name": "Ann", "dept": "d1"}),
        json!({"id": "e2", "name": "Ben", "dept": "d2"}),
        json!({"id": "e3", "name": "Cid", "dept": "d9"}),
    ] {
        ok(c.insert("employees", rec(e), None).await);
    }
    for d in [
        json!({"id": "d1", "name": "Engineering", "location": "Building A", "code": "d1"}),
        json!({"id": "d2", "name": "Sales", "code": "d2"}),
    ] {
        ok(c.insert("departments", rec(d), None).await);
    }
    for o in [
        json!({"id": "o1", "city": "Oslo", "code": "d1"}),
        json!({"id": "o2", "city": "Rome", "code": "d1"}),
        json!({"id": "o3", "city": "Lima", "code": "d3"}),
    ] {
        ok(c.insert("offices", rec(o), None).await);
    }
    for t in [
        json!({"id": "t1", "title": "ship", "employee_id": "e1"}),
        json!({"id": "t2", "title": "test", "employee_id": "e1"}),
        json!({"id": "t3", "title": "sell", "employee_id": "e2"}),
    ] {
        ok(c.insert("tasks", rec(t), None).await);
    }
}

fn join(collections: &[&str], local: &str, foreign: &str, as_field: &str) -> Value {
    json!({"collections": collections, "local_field": local, "foreign_field": foreign, "as_field": as_field})
}

/// The joined array of `r` (plain JSON array of typed records), sorted by id.
fn joined(r: &Record, as_field: &str) -> Vec<Value> {
    let v = field(r, as_field);
    let mut arr = v
        .as_array()
        .unwrap_or_else(|| panic!("{as_field} is not a plain array: {v}"))
        .clone();
    arr.sort_by_key(|x| x["id"].as_str().unwrap_or_default().to_string());
    arr
}

client_test!(joins_single_and_multi_collection);
/// Joins: one collection, several collections, child records, no match, and
/// a join combined with filter, sort and limit.
async fn joins_single_and_multi_collection(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    seed_org(&c).await;
    let q = QueryBuilder::new;

    let rs = ok(c
        .find(
            "employees",
            q().eq("id", "e1")
                .join(join(&["departments"], "dept", "id", "department"))
                .build(),
            None,
        )
        .await);
    assert_eq!(rs.len(), 1);
    assert_eq!(val(&rs[0], "name"), json!("Ann"));
    assert_eq!(
        field(&rs[0], "department"),
        json!([{"id": "d1",
                "name": {"type": "String", "value": "Engineering"},
                "location": {"type": "String", "value": "Building A"},
                "code": {"type": "String", "value": "d1"}}])
    );

    // Every base record gets the field, an empty array when nothing matches.
    let rs = ok(c
        .find(
            "employees",
            q().sort_asc("name")
                .join(join(&["departments"], "dept", "id", "department"))
                .build(),
            None,
        )
        .await);
    assert_eq!(id_list(&rs), vec!["e1", "e2", "e3"]);
    assert_eq!(joined(&rs[1], "department").len(), 1);
    assert_eq!(joined(&rs[1], "department")[0]["name"]["value"], "Sales");
    assert_eq!(field(&rs[2], "department"), json!([]));

    // Child records: local id -> foreign employee_id, several matches.
    let rs = ok(c
        .find(
            "employees",
            q().eq("id", "e1")
                .join(join(&["tasks"], "id", "employee_id", "tasks"))
                .build(),
            None,
        )
        .await);
    let tasks = joined(&rs[0], "tasks");
    assert_eq!(
        tasks.iter().map(|t| t["id"].clone()).collect::<Vec<_>>(),
        vec![json!("t1"), json!("t2")]
    );
    assert_eq!(
        tasks[0]["title"],
        json!({"type": "String", "value": "ship"})
    );

    // Two collections: the matches of each, concatenated in the listed order.
    let rs = ok(c
        .find(
            "employees",
            q().eq("id", "e1")
                .join(join(&["departments", "offices"], "dept", "code", "org"))
                .build(),
            None,
        )
        .await);
    let org = field(&rs[0], "org");
    let org = org.as_array().expect("array");
    let ids: Vec<&str> = org.iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{org:?}");
    assert_eq!(ids[0], "d1", "departments come first: {ids:?}");
    assert_eq!(
        ids[1..].iter().copied().collect::<BTreeSet<_>>(),
        ["o1", "o2"].into_iter().collect()
    );
    let rs = ok(c
        .find(
            "employees",
            q().eq("id", "e2")
                .join(join(&["departments", "offices"], "dept", "code", "org"))
                .build(),
            None,
        )
        .await);
    assert_eq!(joined(&rs[0], "org").len(), 1);

    // Filter, sort and limit apply to the base records.
    let rs = ok(c
        .find(
            "employees",
            q().ne("dept", "d9")
                .sort_desc("name")
                .limit(1)
                .join(join(&["tasks"], "id", "employee_id", "tasks"))
                .build(),
            None,
        )
        .await);
    assert_eq!(id_list(&rs), vec!["e2"]);
    assert_eq!(joined(&rs[0], "tasks").len(), 1);

    // A join to a collection that does not exist attaches nothing.
    let rs = ok(c
        .find(
            "employees",
            q().eq("id", "e1")
                .join(join(&["nowhere"], "dept", "id", "x"))
                .build(),
            None,
        )
        .await);
    assert_eq!(field(&rs[0], "x"), json!([]));
}

client_test!(distinct_values);
/// Distinct values: plain, deduplicated, sorted, without missing or null
/// values, optionally filtered.
async fn distinct_values(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    seed_users(&c).await;
    ok(c.insert(
        "users",
        rec(json!({"id": "u6", "name": "Fay", "status": null})),
        None,
    )
    .await);
    ok(
        c.insert("users", rec(json!({"id": "u7", "name": "Gus"})), None)
            .await,
    );

    let r = ok(c
        .distinct_values("users", "status", DistinctValuesQuery::new())
        .await);
    assert_eq!(r.collection, "users");
    assert_eq!(r.field, "status");
    assert_eq!(
        r.values,
        vec![json!("active"), json!("inactive"), json!("pending")]
    );
    assert_eq!(r.count, 3);

    let filter = cond("age", "Gt", json!(29));
    let r = ok(c
        .distinct_values("users", "status", DistinctValuesQuery::new().filter(filter))
        .await);
    assert_eq!(r.values, vec![json!("active"), json!("inactive")]);
    assert_eq!(r.count, 2);

    let r = ok(c
        .distinct_values("users", "age", DistinctValuesQuery::new())
        .await);
    assert_eq!(
        r.values,
        vec![json!(25), json!(28), json!(30), json!(32), json!(35)]
    );
    let r = ok(c
        .distinct_values("users", "vip", DistinctValuesQuery::new())
        .await);
    assert_eq!(r.values, vec![json!(false), json!(true)]);
    let r = ok(c
        .distinct_values("users", "no_such_field", DistinctValuesQuery::new())
        .await);
    assert_eq!((r.values.len(), r.count), (0, 0));

    // Deleted records no longer count.
    ok(c.delete("users", "u4", None).await);
    let r = ok(c
        .distinct_values("users", "status", DistinctValuesQuery::new())
        .await);
    assert_eq!(r.values, vec![json!("active"), json!("inactive")]);
}

client_test!(nested_fields_time_zones_and_missing_values);
/// Dotted paths reach into Object fields; DateTime comparisons are by
/// instant, not by text; records missing a sort field sort last.
async fn nested_fields_time_zones_and_missing_values(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    seed_users(&c).await;
    let q = QueryBuilder::new;
    // 2024-01-10T01:00:00+01:00 is the same instant as Alice's join time.
    assert_eq!(
        find_ids(&c, q().gt("joined", "2024-01-10T01:00:00+01:00").build()).await,
        set(&["u2", "u4"])
    );
    assert_eq!(
        find_ids(&c, q().gte("joined", "2024-01-10T01:00:00+01:00").build()).await,
        set(&["u1", "u2", "u4"])
    );
    assert_eq!(
        find_ids(&c, q().eq("joined", "2024-01-09T19:00:00-05:00").build()).await,
        set(&["u1"])
    );

    for (id, level, city) in [("n1", 3, "Oslo"), ("n2", 1, "Rome"), ("n3", 2, "Oslo")] {
        ok(c.insert(
            "nested",
            rec(json!({"id": id, "meta": {"level": level, "addr": {"city": city}}})),
            None,
        )
        .await);
    }
    ok(
        c.insert("nested", rec(json!({"id": "n4", "other": true})), None)
            .await,
    );
    let rs = ok(c
        .find("nested", q().eq("meta.addr.city", "Oslo").build(), None)
        .await);
    assert_eq!(ids(&rs), set(&["n1", "n3"]));
    let rs = ok(c
        .find("nested", q().gte("meta.level", 2).build(), None)
        .await);
    assert_eq!(ids(&rs), set(&["n1", "n3"]));
    let rs = ok(c
        .find("nested", q().sort_asc("meta.level").build(), None)
        .await);
    assert_eq!(id_list(&rs), vec!["n2", "n3", "n1", "n4"]);
    let rs = ok(c
        .find("nested", q().sort_desc("meta.level").build(), None)
        .await);
    assert_eq!(id_list(&rs), vec!["n1", "n3", "n2", "n4"]);
}
