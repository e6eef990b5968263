//! Goals, goal templates, tasks and agents over REST (spec F1-F4). Single
//! entities are the document itself (plain string `id` at the top); lists
//! are objects keyed by the kind (`{"goals": […]}`, which the Go client
//! needs); deletes answer `{"ok": true}`. The documents and their lenient
//! status machines are `crate::assist`.

use super::Ctx;
use crate::assist::goals::{self, StepAction};
use crate::assist::{self, tasks, Doc, Kind};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::wire::http::Response;
use serde_json::{json, Value as J};

fn list_key(kind: Kind) -> &'static str {
    match kind {
        Kind::Goal => "goals",
        Kind::Template => "templates",
        Kind::Task => "tasks",
        Kind::Agent => "agents",
    }
}

fn one(ctx: &Ctx<'_>, doc: &Doc) -> Result<Response> {
    ctx.ok_json(doc)
}

fn many(ctx: &Ctx<'_>, kind: Kind, docs: Vec<Doc>) -> Result<Response> {
    let mut o = serde_json::Map::new();
    o.insert(
        list_key(kind).into(),
        J::Array(docs.into_iter().map(J::Object).collect()),
    );
    ctx.ok_json(&J::Object(o))
}

fn body(ctx: &Ctx<'_>) -> Result<Doc> {
    assist::object(&ctx.body()?)
}

/// `POST /api/chat/{kind}`
pub fn create(e: &mut Engine, ctx: &Ctx<'_>, kind: Kind) -> Result<Response> {
    let doc = assist::create(e, kind, &ctx.body()?, ctx.now)?;
    one(ctx, &doc)
}

/// `GET /api/chat/{kind}`
pub fn list(e: &mut Engine, ctx: &Ctx<'_>, kind: Kind) -> Result<Response> {
    many(ctx, kind, assist::list(e, kind, ctx.now))
}

/// `GET /api/chat/{kind}/{id}`
pub fn get(e: &mut Engine, ctx: &Ctx<'_>, kind: Kind) -> Result<Response> {
    one(ctx, &assist::load(e, kind, ctx.arg("id"), ctx.now)?)
}

/// `PUT /api/chat/{kind}/{id}`: a partial merge.
pub fn update(e: &mut Engine, ctx: &Ctx<'_>, kind: Kind) -> Result<Response> {
    let doc = assist::update(e, kind, ctx.arg("id"), &ctx.body()?, ctx.now)?;
    one(ctx, &doc)
}

/// `DELETE /api/chat/{kind}/{id}`
pub fn delete(e: &mut Engine, ctx: &Ctx<'_>, kind: Kind) -> Result<Response> {
    assist::delete(e, kind, ctx.arg("id"), ctx.now)?;
    ctx.ok_json(&json!({"ok": true}))
}

// ----- goals -------------------------------------------------------------------

/// `GET /api/chat/goals/search?q=`
pub fn goal_search(e: &mut Engine, ctx: &Ctx<'_>) -> Result<Response> {
    let q = ctx.param("q").unwrap_or("");
    let found = assist::list(e, Kind::Goal, ctx.now)
        .into_iter()
        .filter(|g| goals::matches(g, q))
        .collect();
    many(ctx, Kind::Goal, found)
}

/// `POST /api/chat/goals/{id}/{complete|approve|reject}`
pub fn goal_action(e: &mut Engine, ctx: &Ctx<'_>, action: &str) -> Result<Response> {
    let b = body(ctx)?;
    let now = ctx.now;
    let doc = assist::change(e, Kind::Goal, ctx.arg("id"), now, |g| {
        match action {
            "complete" => goals::complete(g, &b, now),
            "approve" => goals::approve(g, now),
            _ => goals::reject(g, &b, now),
        }
        Ok(())
    })?;
    one(ctx, &doc)
}

/// `POST /api/chat/goals/{id}/steps/{index}/{start|complete|fail}`
pub fn goal_step(e: &mut Engine, ctx: &Ctx<'_>, action: StepAction) -> Result<Response> {
    let b = body(ctx)?;
    let now = ctx.now;
    let index = ctx.arg("index").to_string();
    let doc = assist::change(e, Kind::Goal, ctx.arg("id"), now, |g| {
        goals::step(g, &index, action, &b, now)
    })?;
    one(ctx, &doc)
}

// ----- tasks -------------------------------------------------------------------

/// `GET /api/chat/tasks/due?now=<RFC 3339>` (the server's time without it).
pub fn task_due(e: &mut Engine, ctx: &Ctx<'_>) -> Result<Response> {
    let at = match ctx.param("now").filter(|s| !s.is_empty()) {
        None => ctx.now,
        Some(s) => Timestamp::parse_rfc3339(s).ok_or_else(|| {
            Error::invalid(format!(
                "`now` must be an RFC 3339 time such as `2026-03-21T00:00:00Z`, not `{s}`"
            ))
        })?,
    };
    let due = assist::list(e, Kind::Task, ctx.now)
        .into_iter()
        .filter(|t| tasks::is_due(t, at))
        .collect();
    many(ctx, Kind::Task, due)
}

/// `POST /api/chat/tasks/{id}/{start|succeed|fail|pause|resume}`
pub fn task_action(e: &mut Engine, ctx: &Ctx<'_>, action: &str) -> Result<Response> {
    let b = body(ctx)?;
    let now = ctx.now;
    let doc = assist::change(e, Kind::Task, ctx.arg("id"), now, |t| match action {
        "start" => {
            tasks::start(t, now);
            Ok(())
        }
        "succeed" => tasks::succeed(t, &b, now),
        "fail" => tasks::fail(t, &b, now),
        "pause" => {
            tasks::pause(t, now);
            Ok(())
        }
        _ => tasks::resume(t, &b, now),
    })?;
    one(ctx, &doc)
}

// ----- agents ------------------------------------------------------------------

/// `GET /api/chat/agents/by-name/{name}`: the oldest agent of that name.
pub fn agent_by_name(e: &mut Engine, ctx: &Ctx<'_>) -> Result<Response> {
    let name = ctx.arg("name");
    let found = assist::agents_named(e, name, ctx.now);
    let first = found
        .first()
        .ok_or_else(|| Error::not_found(format!("no agent named `{name}`")))?;
    one(ctx, first)
}

/// `GET /api/chat/agents/by-deployment/{deployment_id}`
pub fn agents_by_deployment(e: &mut Engine, ctx: &Ctx<'_>) -> Result<Response> {
    let found = assist::agents_of_deployment(e, ctx.arg("deployment_id"), ctx.now);
    many(ctx, Kind::Agent, found)
}
