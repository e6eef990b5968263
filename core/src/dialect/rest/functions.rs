//! Stored functions over REST (spec G7, G8): management under
//! `/api/functions`, a call by id or label, and the path-routed dispatcher
//! under `/api/route/...`. Shapes follow what the strict clients decode:
//! a save answers `{"status": "success", "id"}`, a definition is echoed
//! with only the keys the clients know.

use super::{Ctx, Outcome};
use crate::error::{Error, Result};
use crate::functions::{route, store};
use crate::server::functions::Shape;
use crate::server::Server;
use crate::wire::http::Response;
use serde_json::{json, Map, Value as J};

fn saved(id: &str) -> Result<Outcome> {
    Ok(Outcome::Reply(Response::json(
        200,
        json!({"status": "success", "id": id}).to_string(),
    )))
}

pub fn create(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let body = ctx.body()?;
    let (engine, functions) = server.function_parts();
    let id = functions.create(engine, &body, ctx.now)?;
    saved(&id)
}

pub fn list(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let mut tags = ctx.list_param("tag");
    tags.extend(ctx.list_param("tags"));
    let (engine, functions) = server.function_parts();
    let all: Vec<J> = functions
        .all(engine)
        .into_iter()
        .filter(|d| tags.is_empty() || d.tags.iter().any(|t| tags.contains(t)))
        .map(|d| d.to_json())
        .collect();
    Ok(Outcome::Reply(Response::json(
        200,
        J::Array(all).to_string(),
    )))
}

pub fn get(server: &mut Server, _ctx: &Ctx<'_>, id_or_label: &str) -> Result<Outcome> {
    let (engine, functions) = server.function_parts();
    let def = functions
        .resolve(engine, id_or_label)
        .ok_or_else(|| store::missing(id_or_label))?;
    Ok(Outcome::Reply(Response::json(
        200,
        def.to_json().to_string(),
    )))
}

pub fn replace(server: &mut Server, ctx: &Ctx<'_>, id_or_label: &str) -> Result<Outcome> {
    let body = ctx.body()?;
    let (engine, functions) = server.function_parts();
    let id = functions.replace(engine, id_or_label, &body, ctx.now)?;
    saved(&id)
}

pub fn delete(server: &mut Server, _ctx: &Ctx<'_>, id_or_label: &str) -> Result<Outcome> {
    let (engine, functions) = server.function_parts();
    functions.delete(engine, id_or_label)?;
    Ok(Outcome::Reply(Response::json(
        200,
        json!({"status": "success"}).to_string(),
    )))
}

/// The call body: a flat object of parameter values (`{}` or none when the
/// function takes none).
fn parameters(body: J) -> Result<Map<String, J>> {
    match body {
        J::Null => Ok(Map::new()),
        J::Object(o) => Ok(o),
        _ => Err(Error::invalid(
            "the call body must be a JSON object of parameter values",
        )),
    }
}

pub fn call(server: &mut Server, ctx: &Ctx<'_>, id_or_label: &str) -> Result<Outcome> {
    let params = parameters(ctx.body()?)?;
    let (engine, functions) = server.function_parts();
    let def = functions
        .resolve(engine, id_or_label)
        .ok_or_else(|| store::missing(id_or_label))?;
    server.run_function(&def, params, Shape::Call, ctx.conn, ctx.now)
}

/// `<METHOD> /api/route/<path>`: parameters are the path's bindings, then
/// the query string's values, then the body's keys (the body wins).
pub fn dispatch(server: &mut Server, ctx: &Ctx<'_>, path: &str) -> Result<Outcome> {
    let method = ctx
        .method()
        .and_then(|m| m.standard_name())
        .unwrap_or("POST");
    let (engine, functions) = server.function_parts();
    let all = functions.all(engine);
    let (def, bound) = route::choose(&all, method, path)
        .ok_or_else(|| Error::not_found(format!("no function answers {method} /{path}")))?;
    let mut params = Map::new();
    for (k, v) in bound {
        params.insert(k, J::String(v));
    }
    for (k, v) in ctx.params() {
        params.insert(k.clone(), J::String(v.clone()));
    }
    let has_body = ctx.raw_body().is_some_and(|b| !b.is_empty());
    if has_body {
        for (k, v) in parameters(ctx.body()?)? {
            params.insert(k, v);
        }
    }
    server.run_function(&def, params, Shape::Route, ctx.conn, ctx.now)
}
