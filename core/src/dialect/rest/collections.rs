//! Collections and schemas (spec 5).

use super::Ctx;
use crate::engine::schema::Schema;
use crate::engine::Engine;
use crate::error::Result;
use crate::wire::http::Response;
use serde_json::json;

pub fn list(engine: &mut Engine, ctx: &Ctx<'_>) -> Result<Response> {
    let exclude_internal = ctx.param("exclude_internal") == Some("true");
    let names: Vec<&str> = engine
        .collection_names()
        .filter(|n| !(exclude_internal && is_internal(n)) && ctx.access.sees_collection(n))
        .collect();
    ctx.ok_json(&json!({ "collections": names }))
}

/// A bare array of names (the WebSocket `GetCollections` reply).
pub fn names(engine: &mut Engine, ctx: &Ctx<'_>) -> Result<Response> {
    let names: Vec<&str> = engine
        .collection_names()
        .filter(|n| ctx.access.sees_collection(n))
        .collect();
    ctx.ok_json(&names)
}

/// Creates a collection without a schema if it does not exist.
pub fn ensure(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    engine.ensure_collection(c, ctx.now)?;
    ctx.ok_json(&json!({"status": "created", "collection": c}))
}

/// Names Tidepool reserves for its own collections (chat, functions, audit).
fn is_internal(name: &str) -> bool {
    name.contains("__ek0_") || name.starts_with("_tidepool")
}

pub fn create(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    let schema = Schema::from_wire(&ctx.body()?, ctx.now)?;
    engine.create_collection(c, schema)?;
    ctx.ok_json(&json!({"status": "created", "collection": c}))
}

pub fn get(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    let coll = engine.collection(c)?;
    let body = json!({
        "collection": coll.schema.to_wire(),
        "analytics": {"record_count": engine.count(c, ctx.now)},
    });
    ctx.ok_json(&body)
}

pub fn drop(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    engine.drop_collection(c)?;
    ctx.ok_json(&json!({"status": "deleted", "collection": c}))
}

pub fn schema(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    ctx.ok_json(&engine.collection(c)?.schema.to_wire())
}

pub fn update_schema(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    let body = ctx.body()?;
    let schema = engine.update_constraints(c, &body, ctx.now)?;
    ctx.ok_json(&schema.to_wire())
}
