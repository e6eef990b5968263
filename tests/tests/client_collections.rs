//! Collections and schemas through the official client (spec 5): list, create
//! with a schema, metadata, schema reads and partial updates, delete, and the
//! schema rules enforced on writes.

#[macro_use]
mod common;

use common::*;
use ekodb_client::{
    DistanceMetric, FieldType, FieldTypeSchema, IndexConfig, Record, Schema,
    SchemaConstraintUpdate, VectorIndexAlgorithm,
};
use rust_decimal::Decimal;
use serde_json::json;
use std::collections::HashMap;
use std::str::FromStr;

client_test!(list_exists_and_delete);
/// Collections appear on first insert, are listed, can be dropped (with
/// their records) and come back empty on the next insert.
async fn list_exists_and_delete(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    assert!(!ok(c.collection_exists("alpha").await));
    ok(c.insert("alpha", rec(json!({"id": "a1"})), None).await);
    ok(c.insert("alpha", rec(json!({"id": "a2"})), None).await);
    ok(c.insert("beta gamma", rec(json!({"id": "b1"})), None).await);

    let list = ok(c.list_collections().await);
    assert!(list.contains(&"alpha".to_string()), "{list:?}");
    assert!(list.contains(&"beta gamma".to_string()), "{list:?}");
    let user = ok(c.list_user_collections().await);
    assert!(
        user.contains(&"alpha".to_string()) && user.contains(&"beta gamma".to_string()),
        "{user:?}"
    );
    assert!(ok(c.collection_exists("alpha").await));
    assert!(ok(c.collection_exists("beta gamma").await));
    assert!(!ok(c.collection_exists("nope").await));

    ok(c.delete_collection("alpha").await);
    assert!(!ok(c.list_collections().await).contains(&"alpha".to_string()));
    assert!(!ok(c.collection_exists("alpha").await));
    assert_not_found(c.find_by_id("alpha", "a1", None).await);
    assert_not_found(c.delete_collection("alpha").await);
    assert!(
        ok(c.collection_exists("beta gamma").await),
        "dropping one collection touched another"
    );
    assert!(ok(c.exists("beta gamma", "b1").await));

    ok(c.insert("alpha", rec(json!({"id": "a3"})), None).await);
    assert_eq!(ok(c.count_documents("alpha").await), 1);
    assert_not_found(c.find_by_id("alpha", "a1", None).await);
    // A dropped collection's trash is gone too.
    assert!(!ok(c.restore_deleted("alpha", "a2").await));
}

fn members_schema() -> Schema {
    Schema::new()
        .add_field("name", FieldTypeSchema::new("string").required())
        .add_field("email", FieldTypeSchema::new("String").unique())
        .add_field(
            "age",
            FieldTypeSchema::new("integer")
                .range(Some(FieldType::Integer(0)), Some(FieldType::Integer(150))),
        )
        .add_field(
            "role",
            FieldTypeSchema::new("String")
                .enums(vec![
                    FieldType::String("admin".into()),
                    FieldType::String("user".into()),
                ])
                .default_value(FieldType::String("user".into())),
        )
        .add_field("code", FieldTypeSchema::new("string").pattern("^[A-Z]{3}$"))
}

client_test!(create_with_schema_and_read_it_back);
/// A collection created with a schema reports it back in canonical form,
/// through both the schema and the collection-metadata calls.
async fn create_with_schema_and_read_it_back(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    ok(c.create_collection("members", members_schema()).await);
    assert!(ok(c.collection_exists("members").await));

    let s = ok(c.get_schema("members").await);
    assert_eq!(s.fields.len(), 5);
    let name = &s.fields["name"];
    assert_eq!(name.field_type, "String");
    assert!(name.required && !name.unique);
    let email = &s.fields["email"];
    assert_eq!(email.field_type, "String");
    assert!(email.unique && !email.required);
    let age = &s.fields["age"];
    assert_eq!(age.field_type, "Integer");
    assert_eq!(age.min, Some(FieldType::Integer(0)));
    assert_eq!(age.max, Some(FieldType::Integer(150)));
    let role = &s.fields["role"];
    assert_eq!(
        role.enums,
        vec![
            FieldType::String("admin".into()),
            FieldType::String("user".into())
        ]
    );
    assert_eq!(role.default, Some(FieldType::String("user".into())));
    assert_eq!(s.fields["code"].regex.as_deref(), Some("^[A-Z]{3}$"));
    assert!(s.version >= 1);

    let meta = ok(c.get_collection("members").await);
    assert_eq!(meta.collection.fields.len(), 5);
    assert_eq!(meta.collection.fields["age"].field_type, "Integer");
    assert_eq!(meta.collection.version, s.version);

    assert_not_found(c.get_schema("nope").await);
    assert_not_found(c.get_collection("nope").await);

    // A schema needs at least one field.
    let msg = assert_api_err(c.create_collection("empty", Schema::new()).await, &[400]);
    assert!(!msg.is_empty());
    assert!(!ok(c.collection_exists("empty").await));

    ok(c.delete_collection("members").await);
    assert_not_found(c.get_schema("members").await);
}

client_test!(schema_enforcement);
/// Required, unique, enums, min/max, regex, type and default are enforced on
/// insert, update and batch insert; a refused write changes nothing.
async fn schema_enforcement(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    ok(c.create_collection("members", members_schema()).await);
    let ann = json!({
        "id": "m1", "name": "Ann", "email": "a@x.org", "age": 30, "role": "admin", "code": "ABC",
    });
    let good = ok(c.insert("members", rec(ann), None).await);
    assert_eq!(id_of(&good), "m1");
    // The default applies when the field is absent.
    ok(c.insert(
        "members",
        rec(json!({"id": "m2", "name": "Ben", "email": "b@x.org"})),
        None,
    )
    .await);
    assert_eq!(
        val(&ok(c.find_by_id("members", "m2", None).await), "role"),
        json!("user")
    );

    let bad = [
        (json!({"email": "c@x.org"}), "name", &[400][..]),
        (
            json!({"name": "Cy", "email": "a@x.org"}),
            "email",
            &[409, 400][..],
        ),
        (json!({"name": "Cy", "role": "root"}), "role", &[400][..]),
        (json!({"name": "Cy", "age": 151}), "age", &[400][..]),
        (json!({"name": "Cy", "age": -1}), "age", &[400][..]),
        (json!({"name": "Cy", "age": "old"}), "age", &[400][..]),
        (json!({"name": "Cy", "code": "abc"}), "code", &[400][..]),
        (json!({"name": "Cy", "code": "ABCD"}), "code", &[400][..]),
    ];
    for (body, fld, codes) in bad {
        let msg = assert_api_err(c.insert("members", rec(body.clone()), None).await, codes);
        assert_mentions(&msg, &[fld]);
    }
    assert_eq!(ok(c.count_documents("members").await), 2);

    // Boundaries are inclusive.
    ok(c.insert(
        "members",
        rec(json!({"id": "m3", "name": "Cy", "age": 150, "code": "XYZ"})),
        None,
    )
    .await);
    ok(c.insert(
        "members",
        rec(json!({"id": "m4", "name": "Di", "age": 0})),
        None,
    )
    .await);

    // Updates are checked against the merged record.
    let before = wire(&ok(c.find_by_id("members", "m1", None).await));
    assert_mentions(
        &assert_api_err(
            c.update("members", "m1", rec(json!({"role": "root"})), None)
                .await,
            &[400],
        ),
        &["role"],
    );
    assert_mentions(
        &assert_api_err(
            c.update("members", "m1", rec(json!({"email": "b@x.org"})), None)
                .await,
            &[409, 400],
        ),
        &["email"],
    );
    assert_mentions(
        &assert_api_err(
            c.update("members", "m1", rec(json!({"name": null})), None)
                .await,
            &[400],
        ),
        &["name"],
    );
    assert_api_err(
        c.update_with_action("members", "m1", "increment", "age", FieldType::Integer(500))
            .await,
        &[400],
    );
    assert_eq!(wire(&ok(c.find_by_id("members", "m1", None).await)), before);
    // Changing one's own unique value is fine.
    ok(
        c.update("members", "m1", rec(json!({"email": "ann@x.org"})), None)
            .await,
    );
    // The old value is free again.
    ok(c.insert(
        "members",
        rec(json!({"id": "m5", "name": "Ed", "email": "a@x.org"})),
        None,
    )
    .await);

    // A batch keeps the valid items and drops the invalid one.
    let out = ok(c
        .batch_insert(
            "members",
            vec![
                rec(json!({"id": "m6", "name": "Fa"})),
                rec(json!({"id": "m7"})),
                rec(json!({"id": "m8", "name": "Ga", "email": "a@x.org"})),
            ],
            None,
        )
        .await);
    assert_eq!(id_list(&out), vec!["m6"]);
    assert_eq!(ok(c.count_documents("members").await), 6);
}

client_test!(update_schema_constraints);
/// `update_schema_constraints` changes only what it names, bumps the
/// version, and is enforced from then on.
async fn update_schema_constraints(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    ok(c.create_collection("members", members_schema()).await);
    ok(c.insert(
        "members",
        rec(json!({"id": "m1", "name": "Ann", "email": "a@x.org", "age": 100})),
        None,
    )
    .await);
    let v1 = ok(c.get_schema("members").await);

    let mut changes = HashMap::new();
    changes.insert(
        "email".to_string(),
        SchemaConstraintUpdate {
            required: Some(true),
            ..Default::default()
        },
    );
    changes.insert(
        "age".to_string(),
        SchemaConstraintUpdate {
            max: Some(120.0),
            ..Default::default()
        },
    );
    changes.insert(
        "role".to_string(),
        SchemaConstraintUpdate {
            enums: Some(vec![json!("admin"), json!("user"), json!("guest")]),
            ..Default::default()
        },
    );
    ok(c.update_schema_constraints("members", changes).await);

    let v2 = ok(c.get_schema("members").await);
    assert!(
        v2.version > v1.version,
        "version {} -> {}",
        v1.version,
        v2.version
    );
    assert!(v2.fields["email"].required);
    assert!(
        v2.fields["email"].unique,
        "unique was not mentioned and must stay"
    );
    assert_eq!(v2.fields["email"].field_type, "String");
    let max = match &v2.fields["age"].max {
        Some(FieldType::Integer(n)) => *n as f64,
        Some(FieldType::Float(f)) => *f,
        other => panic!("age.max: {other:?}"),
    };
    assert_eq!(max, 120.0);
    assert_eq!(v2.fields["age"].min, Some(FieldType::Integer(0)));
    assert_eq!(v2.fields["role"].enums.len(), 3);
    assert_eq!(
        v2.fields["role"].default,
        Some(FieldType::String("user".into()))
    );
    assert_eq!(v2.fields["name"], v1.fields["name"]);

    assert_mentions(
        &assert_api_err(
            c.insert("members", rec(json!({"name": "Ben"})), None).await,
            &[400],
        ),
        &["email"],
    );
    assert_mentions(
        &assert_api_err(
            c.insert(
                "members",
                rec(json!({"name": "Ben", "email": "b@x.org", "age": 121})),
                None,
            )
            .await,
            &[400],
        ),
        &["age"],
    );
    ok(c.insert(
        "members",
        rec(json!({"name": "Ben", "email": "b@x.org", "age": 120, "role": "guest"})),
        None,
    )
    .await);

    // Unknown collection.
    let mut changes = HashMap::new();
    changes.insert(
        "x".to_string(),
        SchemaConstraintUpdate {
            required: Some(true),
            ..Default::default()
        },
    );
    assert_not_found(c.update_schema_constraints("nope", changes).await);
}

client_test!(index_configs_and_type_names);
/// Index settings round-trip with their lowercase tags, and field type names
/// are accepted in any case and reported in canonical PascalCase.
async fn index_configs_and_type_names(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let vector = IndexConfig::Vector {
        algorithm: VectorIndexAlgorithm::HNSW,
        metric: DistanceMetric::DotProduct,
        m: 8,
        ef_construction: 100,
        ef_search: Some(64),
        dimension: Some(3),
    };
    let text = IndexConfig::Text {
        language: "english".into(),
        analyzer: None,
    };
    let schema = Schema::new()
        .add_field(
            "title",
            FieldTypeSchema::new("STRING").with_index(text.clone()),
        )
        .add_field(
            "embedding",
            FieldTypeSchema::new("vector").with_index(vector.clone()),
        )
        .add_field(
            "sku",
            FieldTypeSchema::new("String").with_index(IndexConfig::Hash),
        )
        .add_field(
            "price",
            FieldTypeSchema::new("float").with_index(IndexConfig::BTree),
        )
        .add_field("at", FieldTypeSchema::new("datetime"))
        .add_field("flag", FieldTypeSchema::new("boolean"))
        .add_field("meta", FieldTypeSchema::new("object"))
        .add_field("list", FieldTypeSchema::new("array"))
        .add_field("n", FieldTypeSchema::new("number"));
    ok(c.create_collection("catalog", schema).await);
    let s = ok(c.get_schema("catalog").await);
    let names: Vec<(&str, &str)> = vec![
        ("title", "String"),
        ("embedding", "Vector"),
        ("sku", "String"),
        ("price", "Float"),
        ("at", "DateTime"),
        ("flag", "Boolean"),
        ("meta", "Object"),
        ("list", "Array"),
        ("n", "Number"),
    ];
    for (f, t) in names {
        assert_eq!(s.fields[f].field_type, t, "{f}");
    }
    assert_eq!(s.fields["title"].index, Some(text));
    assert_eq!(s.fields["embedding"].index, Some(vector));
    assert_eq!(s.fields["sku"].index, Some(IndexConfig::Hash));
    assert_eq!(s.fields["price"].index, Some(IndexConfig::BTree));
    assert_eq!(s.fields["at"].index, None);

    // Writes that fit the schema work; a vector of the wrong dimension does not.
    let mut r = Record::new();
    r.insert("title", "Rust book");
    r.insert("embedding", FieldType::vector(vec![0.1, 0.2, 0.3]));
    r.insert("price", FieldType::Float(29.5));
    r.insert("at", FieldType::String("2026-01-02T03:04:05Z".into()));
    let id = id_of(&ok(c.insert("catalog", r, None).await));
    let got = ok(c.find_by_id("catalog", &id, None).await);
    assert!(matches!(got.get("embedding"), Some(FieldType::Vector(v)) if v.len() == 3));
    assert_eq!(field(&got, "at")["type"], "DateTime");
    let mut bad = Record::new();
    bad.insert("embedding", FieldType::vector(vec![0.1, 0.2]));
    assert_mentions(
        &assert_api_err(c.insert("catalog", bad, None).await, &[400]),
        &["embedding"],
    );
    // Unknown type names are refused.
    let s = Schema::new().add_field("x", FieldTypeSchema::new("banana"));
    assert_mentions(
        &assert_api_err(c.create_collection("fruit", s).await, &[400]),
        &["banana"],
    );
}

client_test!(declared_types_coerce_client_encodings);
/// With a declared type, the bare encodings the Rust client sends are stored
/// as that type (spec 3.2): a string as Decimal or UUID, `{secs, nanos}` as
/// Duration, an integer array as Binary.
async fn declared_types_coerce_client_encodings(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    let schema = Schema::new()
        .add_field("dec", FieldTypeSchema::new("Decimal"))
        .add_field("uid", FieldTypeSchema::new("UUID"))
        .add_field("dur", FieldTypeSchema::new("Duration"))
        .add_field("bin", FieldTypeSchema::new("Binary"))
        .add_field("at", FieldTypeSchema::new("DateTime"));
    ok(c.create_collection("typed", schema).await);
    let uuid_text = "550e8400-e29b-41d4-a716-446655440000";
    let mut r = Record::new();
    r.insert("id", "t1");
    r.insert(
        "dec",
        FieldType::Decimal(Decimal::from_str("1234.5678").unwrap()),
    );
    r.insert(
        "uid",
        FieldType::UUID(uuid::Uuid::parse_str(uuid_text).unwrap()),
    );
    r.insert(
        "dur",
        FieldType::Duration(std::time::Duration::new(90, 500)),
    );
    r.insert("bin", FieldType::Binary(vec![0, 1, 255]));
    r.insert("at", FieldType::String("2026-01-02T03:04:05Z".into()));
    ok(c.insert("typed", r, None).await);
    let got = ok(c.find_by_id("typed", "t1", None).await);
    assert_eq!(
        field(&got, "dec"),
        json!({"type": "Decimal", "value": "1234.5678"})
    );
    assert_eq!(
        field(&got, "uid"),
        json!({"type": "UUID", "value": uuid_text})
    );
    assert_eq!(
        field(&got, "dur"),
        json!({"type": "Duration", "value": {"secs": 90, "nanos": 500}})
    );
    assert_eq!(
        field(&got, "bin"),
        json!({"type": "Binary", "value": [0, 1, 255]})
    );
    assert_eq!(field(&got, "at")["type"], "DateTime");
    // A value of another kind is refused.
    assert_mentions(
        &assert_api_err(
            c.insert("typed", rec(json!({"dur": "soon"})), None).await,
            &[400],
        ),
        &["dur"],
    );
    assert_mentions(
        &assert_api_err(
            c.insert("typed", rec(json!({"dec": true})), None).await,
            &[400],
        ),
        &["dec"],
    );
}

client_test!(declared_types_refuse_unparseable_strings);
/// A string that does not parse as the declared Decimal or UUID is a type
/// mismatch (spec 5.7: 400), not a Decimal "twelve".
async fn declared_types_refuse_unparseable_strings(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    let schema = Schema::new()
        .add_field("dec", FieldTypeSchema::new("Decimal"))
        .add_field("uid", FieldTypeSchema::new("UUID"));
    ok(c.create_collection("typed", schema).await);
    assert_mentions(
        &assert_api_err(
            c.insert("typed", rec(json!({"dec": "twelve"})), None).await,
            &[400],
        ),
        &["dec"],
    );
    assert_mentions(
        &assert_api_err(
            c.insert("typed", rec(json!({"uid": "not-a-uuid"})), None)
                .await,
            &[400],
        ),
        &["uid"],
    );
    ok(c.insert(
        "typed",
        rec(json!({"id": "ok", "dec": "12.50", "uid": "550e8400-e29b-41d4-a716-446655440000"})),
        None,
    )
    .await);
    assert_mentions(
        &assert_api_err(
            c.update("typed", "ok", rec(json!({"dec": "1.2.3"})), None)
                .await,
            &[400],
        ),
        &["dec"],
    );
    assert_eq!(ok(c.count_documents("typed").await), 1);
}
