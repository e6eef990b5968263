//! Schedules over REST (spec F5): create, list, get, partial update
//! (`{"enabled"}` pauses and resumes), delete, trigger now, the legacy
//! pause/resume routes, and the run history. A schedule is echoed with the
//! client's own keys, both `cron` and `cron_expression`, `status`,
//! `next_execution`, `last_execution` and its last runs (newest first).

use super::{Ctx, Outcome};
use crate::error::{Error, Result};
use crate::schedule::{Outcome as RunOutcome, Run, Schedule};
use crate::server::Server;
use crate::time::Timestamp;
use serde_json::{json, Map, Value as J};

fn time(t: Option<Timestamp>) -> J {
    t.map_or(J::Null, |t| J::String(t.to_rfc3339_z()))
}

fn run_wire(r: &Run) -> J {
    let mut o = json!({
        "run": r.number,
        "trigger": r.trigger.as_str(),
        "status": r.outcome.status(),
        "scheduled_for": time(r.scheduled_for),
        "started_at": time(Some(r.started_at)),
        "finished_at": time(r.finished_at),
    });
    match &r.outcome {
        RunOutcome::Succeeded(summary) => o["result"] = summary.clone(),
        RunOutcome::Failed(message) => o["error"] = J::String(message.clone()),
        RunOutcome::Started => {}
    }
    o
}

fn runs_wire(s: &Schedule) -> J {
    J::Array(s.runs.iter().rev().map(run_wire).collect())
}

fn wire(s: &Schedule) -> J {
    let mut o = s.document.clone();
    let mut put = |k: &str, v: J| {
        o.insert(k.to_string(), v);
    };
    put("id", J::String(s.id.clone()));
    put("cron", J::String(s.cron.clone()));
    put("cron_expression", J::String(s.cron.clone()));
    put("timezone", J::String(s.timezone.clone()));
    put("enabled", J::Bool(s.enabled));
    put("status", J::String(s.status().into()));
    put("created_at", time(Some(s.created_at)));
    put("updated_at", time(Some(s.updated_at)));
    put("next_execution", time(s.next_execution));
    put("last_execution", time(s.last_execution));
    put("run_count", J::from(s.run_count));
    put("last_run", s.runs.back().map_or(J::Null, run_wire));
    put("runs", runs_wire(s));
    J::Object(o)
}

fn object(ctx: &Ctx<'_>) -> Result<Map<String, J>> {
    match ctx.body()? {
        J::Object(o) => Ok(o),
        J::Null => Ok(Map::new()),
        _ => Err(Error::invalid("the body must be a JSON object")),
    }
}

fn reply(ctx: &Ctx<'_>, body: &J) -> Result<Outcome> {
    ctx.ok_json(body).map(Outcome::Reply)
}

/// `POST /api/schedules`
pub fn create(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let s = server.create_schedule(&object(ctx)?, ctx.now)?;
    reply(ctx, &wire(&s))
}

/// `GET /api/schedules`
pub fn list(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let all: Vec<J> = server.schedules(ctx.now).iter().map(wire).collect();
    reply(ctx, &json!({ "schedules": all }))
}

/// `GET /api/schedules/{id}`
pub fn get(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    reply(ctx, &wire(&server.schedule(ctx.arg("id"), ctx.now)?))
}

/// `PUT /api/schedules/{id}`
pub fn update(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let s = server.update_schedule(ctx.arg("id"), &object(ctx)?, ctx.now)?;
    reply(ctx, &wire(&s))
}

/// `DELETE /api/schedules/{id}`
pub fn delete(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    server.delete_schedule(ctx.arg("id"), ctx.now)?;
    reply(ctx, &json!({"ok": true}))
}

/// `POST /api/schedules/{id}/trigger`: runs it once now; the answer names
/// the run.
pub fn trigger(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let id = ctx.arg("id");
    let s = server.trigger_schedule(id, ctx.now)?;
    let run = s.runs.back().map_or(J::Null, run_wire);
    reply(
        ctx,
        &json!({"status": "triggered", "schedule_id": id, "run": run}),
    )
}

/// The legacy `POST /api/schedules/{id}/pause` and `/resume`.
pub fn set_enabled(server: &mut Server, ctx: &Ctx<'_>, enabled: bool) -> Result<Outcome> {
    let s = server.set_schedule_enabled(ctx.arg("id"), enabled, ctx.now)?;
    reply(ctx, &wire(&s))
}

/// `GET /api/schedules/{id}/runs`: the last runs, newest first.
pub fn runs(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let s = server.schedule(ctx.arg("id"), ctx.now)?;
    reply(
        ctx,
        &json!({"schedule_id": s.id, "run_count": s.run_count, "runs": runs_wire(&s)}),
    )
}
