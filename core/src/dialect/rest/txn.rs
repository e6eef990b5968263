//! Transactions (spec 13): begin, status, commit, rollback, savepoints, and the
//! data calls that carry `?transaction_id=`.

use super::records::{
    batch_items, batch_reply, parse_batch_deletes, parse_batch_inserts, parse_batch_updates,
    projection,
};
use super::{access, Ctx, Outcome};
use crate::engine::query::FindQuery;
use crate::engine::record::{Projection, RecordOut};
use crate::engine::txn::Owner;
use crate::engine::{BatchOutcome, Engine};
use crate::error::{Error, Result};
use crate::server::Server;
use crate::wire::http::Response;
use serde_json::{json, Value as J};

/// `POST /api/transactions`: begins one, owned by the calling key.
pub fn begin(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let body = ctx.body()?;
    let level = body.get("isolation_level").and_then(J::as_str);
    let owner = Owner {
        key: ctx.key_id().to_string(),
        address: ctx
            .conn
            .and_then(|c| server.peer_of(c).ip)
            .map(|ip| ip.to_string()),
    };
    let (id, isolation) = server.engine_mut().tx_begin(level, owner, ctx.now)?;
    ctx.ok_json(&json!({"transaction_id": id, "isolation_level": isolation, "state": "Active", "status": "active"}))
        .map(Outcome::Reply)
}

pub fn status(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str) -> Result<Response> {
    let (state, isolation, ops) = engine.tx_status(tx)?;
    ctx.ok_json(&json!({
        "transaction_id": tx,
        "state": state.name(),
        "status": state.name().to_ascii_lowercase(),
        "operations_count": ops,
        "isolation_level": isolation,
    }))
}

pub fn commit(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str) -> Result<Response> {
    let ops = engine.tx_commit(tx, ctx.now)?;
    ctx.ok_json(&json!({"status": "committed", "transaction_id": tx, "operations_count": ops}))
}

pub fn rollback(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str) -> Result<Response> {
    engine.tx_rollback(tx)?;
    ctx.ok_json(&json!({"status": "rolled_back", "transaction_id": tx}))
}

pub fn savepoint(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str) -> Result<Response> {
    let body = ctx.body()?;
    let name = body
        .get("name")
        .and_then(J::as_str)
        .ok_or_else(|| Error::invalid("a savepoint needs a string `name`"))?;
    engine.tx_savepoint(tx, name)?;
    ctx.ok_json(&json!({"ok": true, "savepoint": name}))
}

pub fn rollback_to(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str, name: &str) -> Result<Response> {
    engine.tx_rollback_to(tx, name)?;
    ctx.ok_json(&json!({"ok": true, "savepoint": name}))
}

pub fn release(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str, name: &str) -> Result<Response> {
    engine.tx_release(tx, name)?;
    ctx.ok_json(&json!({"ok": true, "savepoint": name}))
}

pub fn insert(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str, c: &str) -> Result<Response> {
    let body = ctx.body()?;
    if !body.is_object() {
        return Err(Error::invalid("the record must be a JSON object"));
    }
    access::check_write(ctx, c, &body)?;
    let id = engine.tx_insert(tx, c, body, ctx.now)?;
    ctx.ok(&json!({"id": id}))
}

pub fn update(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str, c: &str, id: &str) -> Result<Response> {
    let patch = ctx.body()?;
    access::check_write(ctx, c, &patch)?;
    let record = engine.tx_update(tx, c, id, patch, ctx.now)?;
    let p = projection(ctx, c);
    let mut out = RecordOut::new(engine.pk_name(c), id, &record);
    out.projection = Some(&p).filter(|p| !p.is_empty());
    ctx.ok(&out)
}

pub fn delete(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str, c: &str, id: &str) -> Result<Response> {
    let record = engine.tx_delete(tx, c, id, ctx.now)?;
    let p = access::view(ctx, c, Projection::default());
    let mut out = RecordOut::new(engine.pk_name(c), id, &record);
    out.projection = Some(&p).filter(|p| !p.is_empty());
    ctx.ok(&out)
}

pub fn find_by_id(
    engine: &mut Engine,
    ctx: &Ctx<'_>,
    tx: &str,
    c: &str,
    id: &str,
) -> Result<Response> {
    let record = engine.tx_find_by_id(tx, c, id, ctx.now)?;
    let p = projection(ctx, c);
    let mut out = RecordOut::new(engine.pk_name(c), id, &record);
    out.projection = Some(&p).filter(|p| !p.is_empty());
    ctx.ok(&out)
}

pub fn find(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str, c: &str) -> Result<Response> {
    let q = FindQuery::parse(&ctx.body()?)?;
    if !q.joins.is_empty() {
        return Err(Error::invalid(
            "joins are not supported inside a transaction",
        ));
    }
    access::check_query(ctx, c, &q)?;
    let p = access::view(ctx, c, q.projection.clone());
    let rows = engine.tx_find(tx, c, &q, ctx.now)?;
    let pk = engine.pk_name(c);
    let records: Vec<RecordOut<'_>> = rows
        .iter()
        .map(|(id, r)| {
            let mut out = RecordOut::new(pk, id, r);
            out.projection = Some(&p).filter(|p| !p.is_empty());
            out
        })
        .collect();
    ctx.ok(&records)
}

pub fn batch_insert(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str, c: &str) -> Result<Response> {
    let records = parse_batch_inserts(batch_items(ctx.body()?, "inserts")?)?;
    for r in &records {
        access::check_write(ctx, c, r)?;
    }
    let mut out = BatchOutcome::default();
    for record in records {
        let named = record.get("id").and_then(J::as_str).map(str::to_string);
        match engine.tx_insert(tx, c, record, ctx.now) {
            Ok(id) => out.successful.push(id),
            Err(e) => out.failed.push((named, e.message)),
        }
    }
    batch_reply(ctx, out)
}

pub fn batch_update(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str, c: &str) -> Result<Response> {
    let updates = parse_batch_updates(batch_items(ctx.body()?, "updates")?)?;
    for (_, patch) in &updates {
        access::check_write(ctx, c, patch)?;
    }
    let mut out = BatchOutcome::default();
    for (id, patch) in updates {
        match engine.tx_update(tx, c, &id, patch, ctx.now) {
            Ok(_) => out.successful.push(id),
            Err(e) => out.failed.push((Some(id), e.message)),
        }
    }
    batch_reply(ctx, out)
}

pub fn batch_delete(engine: &mut Engine, ctx: &Ctx<'_>, tx: &str, c: &str) -> Result<Response> {
    let ids = parse_batch_deletes(ctx.body()?)?;
    let mut out = BatchOutcome::default();
    for id in ids {
        match engine.tx_delete(tx, c, &id, ctx.now) {
            Ok(_) => out.successful.push(id),
            Err(e) => out.failed.push((Some(id), e.message)),
        }
    }
    batch_reply(ctx, out)
}
