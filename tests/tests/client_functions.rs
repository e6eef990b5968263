//! Stored functions through the official client (spec G): save, get by id
//! and by label, list with tags, update, delete, call; the results and
//! errors a user of `ekodb_client` sees.

#[macro_use]
mod common;

use common::*;
use ekodb_client::{
    Function, FunctionCondition, GroupFunctionConfig, GroupFunctionOp, ParameterDefinition,
    QueryConditionOperator, QueryExpression, SortFieldConfig, UserFunction,
};
use serde_json::json;
use std::collections::HashMap;

fn active_users(label: &str) -> UserFunction {
    UserFunction::new(label, "Active users, paginated")
        .with_version("1.0")
        .with_parameter(ParameterDefinition::new("page_size").with_default(2i64.into()))
        .with_parameter(ParameterDefinition::new("page_offset").with_default(0i64.into()))
        .with_function(Function::Query {
            collection: "fn_users".into(),
            filter: Some(QueryExpression::condition(
                "status",
                QueryConditionOperator::Eq,
                json!("active"),
            )),
            sort: Some(vec![SortFieldConfig::new("score").descending()]),
            limit: Some(json!("{{page_size}}")),
            skip: Some(json!("{{page_offset}}")),
        })
        .with_function(Function::Project {
            fields: vec!["name".into(), "score".into()],
            exclude: false,
        })
        .with_tag("users")
        .with_tag("pagination")
}

async fn seed_users(c: &Client) {
    for (name, status, score) in [
        ("ann", "active", 90),
        ("bob", "active", 70),
        ("cid", "inactive", 99),
        ("dee", "active", 80),
    ] {
        ok(c.insert(
            "fn_users",
            rec(json!({"name": name, "status": status, "score": score})),
            None,
        )
        .await);
    }
}

client_test!(save_get_list_update_delete);
/// The whole life of a definition, by id and by label, as the strict client
/// decodes it.
async fn save_get_list_update_delete(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let id = ok(c.save_function(active_users("active_users")).await);
    assert!(!id.is_empty());
    let err = assert_api_err(c.save_function(active_users("active_users")).await, &[409]);
    assert_mentions(&err, &["active_users"]);

    let by_id = ok(c.get_function(&id).await);
    assert_eq!(by_id.label, "active_users");
    assert_eq!(by_id.id.as_deref(), Some(id.as_str()));
    assert_eq!(by_id.functions.len(), 2);
    assert!(by_id.created_at.is_some() && by_id.updated_at.is_some());
    let by_label = ok(c.get_user_function("active_users").await);
    assert_eq!(by_label.id.as_deref(), Some(id.as_str()));

    let other = UserFunction::new("counter", "Count users")
        .with_function(Function::FindAll {
            collection: "fn_users".into(),
        })
        .with_function(Function::Count {
            output_field: "total".into(),
        })
        .with_tag("stats");
    ok(c.save_function(other).await);
    assert_eq!(ok(c.list_functions(None).await).len(), 2);
    let tagged = ok(c.list_functions(Some(vec!["pagination".into()])).await);
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0].label, "active_users");

    // Update by label, renaming it: the id stays.
    ok(
        c.update_function("active_users", active_users("active_users_v2"))
            .await,
    );
    assert_eq!(ok(c.get_function(&id).await).label, "active_users_v2");
    assert_not_found(c.get_user_function("active_users").await);
    // Renaming onto a label in use is a conflict.
    assert_api_err(
        c.update_function(&id, active_users("counter")).await,
        &[409],
    );

    ok(c.delete_function(&id).await);
    assert_not_found(c.get_function(&id).await);
    assert_eq!(ok(c.list_functions(None).await).len(), 1);
}

client_test!(call_with_parameters_and_defaults);
/// A call reads the stored records with placeholders resolved to typed
/// values; the stats name every stage.
async fn call_with_parameters_and_defaults(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    seed_users(&c).await;
    ok(c.save_function(active_users("page")).await);
    let first = ok(c.call_function("page", None).await);
    let names: Vec<_> = first.records.iter().map(|r| val(r, "name")).collect();
    assert_eq!(names, vec![json!("ann"), json!("dee")]);
    assert!(first.records.iter().all(|r| r.get("status").is_none()));
    assert_eq!(first.stats.stages_executed, 2);
    assert_eq!(first.stats.stage_stats.len(), 2);
    assert_eq!(first.stats.stage_stats[0].stage, "Query");
    assert_eq!(first.stats.output_count, 2);

    let mut params = HashMap::new();
    params.insert("page_size".to_string(), 5i64.into());
    params.insert("page_offset".to_string(), 2i64.into());
    let rest = ok(c.call_function("page", Some(params)).await);
    let names: Vec<_> = rest.records.iter().map(|r| val(r, "name")).collect();
    assert_eq!(names, vec![json!("bob")]);

    // Group and count through a second function, called by id.
    let grouped = UserFunction::new("by_status", "Users by status")
        .with_function(Function::FindAll {
            collection: "fn_users".into(),
        })
        .with_function(Function::Group {
            by_fields: vec!["status".into()],
            functions: vec![
                GroupFunctionConfig::new("n", GroupFunctionOp::Count),
                GroupFunctionConfig::new("best", GroupFunctionOp::Max).with_input_field("score"),
            ],
        });
    let gid = ok(c.save_function(grouped).await);
    let out = ok(c.call_function(&gid, None).await);
    let mut rows: Vec<(serde_json::Value, serde_json::Value, serde_json::Value)> = out
        .records
        .iter()
        .map(|r| (val(r, "status"), val(r, "n"), val(r, "best")))
        .collect();
    rows.sort_by_key(|r| r.0.to_string());
    assert_eq!(
        rows,
        vec![
            (json!("active"), json!(3), json!(90)),
            (json!("inactive"), json!(1), json!(99))
        ]
    );

    // A required parameter that is missing, and an unknown function.
    let needs = UserFunction::new("needs_id", "Needs an id")
        .with_parameter(ParameterDefinition::new("user_id").required())
        .with_function(Function::FindById {
            collection: "fn_users".into(),
            record_id: "{{user_id}}".into(),
        });
    ok(c.save_function(needs).await);
    let err = assert_api_err(c.call_function("needs_id", None).await, &[400]);
    assert_mentions(&err, &["missing required parameter", "user_id"]);
    let mut p = HashMap::new();
    p.insert("user_id".to_string(), "nobody".into());
    assert!(ok(c.call_function("needs_id", Some(p)).await)
        .records
        .is_empty());
    assert!(c.call_function("no_such_function", None).await.is_err());
}

client_test!(writes_conditions_and_nested_calls);
/// Writes through a function are stored; `If`, `ForEach` and
/// `CallFunction` shape the result; a recursive function is stopped by its
/// budget and its caller sees a clear error.
async fn writes_conditions_and_nested_calls(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    let create = UserFunction::new("create_order", "Create an order")
        .with_parameter(ParameterDefinition::new("item").required())
        .with_parameter(ParameterDefinition::new("qty").with_default(1i64.into()))
        .with_function(Function::Insert {
            collection: "fn_orders".into(),
            record: json!({"item": "{{item}}", "qty": "{{qty}}", "status": "new"}),
            bypass_ripple: None,
            ttl: None,
        })
        .with_function(Function::If {
            condition: FunctionCondition::FieldGreaterThan {
                field: "qty".into(),
                value: json!(2),
            },
            then_functions: vec![Box::new(Function::SetField {
                field: "bulk".into(),
                value: json!(true),
            })],
            else_functions: Some(vec![Box::new(Function::SetField {
                field: "bulk".into(),
                value: json!(false),
            })]),
        });
    ok(c.save_function(create).await);
    let mut p = HashMap::new();
    p.insert("item".to_string(), "pen".into());
    p.insert("qty".to_string(), 3i64.into());
    let out = ok(c.call_function("create_order", Some(p)).await);
    assert_eq!(out.records.len(), 1);
    assert_eq!(val(&out.records[0], "qty"), json!(3));
    assert_eq!(val(&out.records[0], "bulk"), json!(true));
    let stored = ok(c
        .find_by_id("fn_orders", &id_of(&out.records[0]), None)
        .await);
    assert_eq!(val(&stored, "item"), json!("pen"));

    // ForEach over every order, each item calling `create_order` again.
    let copy = UserFunction::new("copy_orders", "Copy every order")
        .with_function(Function::FindAll {
            collection: "fn_orders".into(),
        })
        .with_function(Function::ForEach {
            functions: vec![Box::new(Function::CallFunction {
                function_label: "create_order".into(),
                params: Some(HashMap::from([
                    ("item".to_string(), json!("{{item}}-copy")),
                    ("qty".to_string(), json!(1)),
                ])),
            })],
        });
    ok(c.save_function(copy).await);
    let copied = ok(c.call_function("copy_orders", None).await);
    assert_eq!(copied.records.len(), 1);
    assert_eq!(val(&copied.records[0], "item"), json!("pen-copy"));
    assert_eq!(val(&copied.records[0], "bulk"), json!(false));

    let looping = UserFunction::new("loop", "Calls itself").with_function(Function::CallFunction {
        function_label: "loop".into(),
        params: None,
    });
    ok(c.save_function(looping).await);
    let err = assert_api_err(c.call_function("loop", None).await, &[400]);
    assert_mentions(&err, &["CallFunction", "budget"]);
}
