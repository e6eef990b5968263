//! Record CRUD, batches and distinct values (spec 6, 7, 8, 10).

use super::{access, ok_in, txn, Ctx, Outcome};
use crate::engine::actions::Action;
use crate::engine::filter::Filter;
use crate::engine::query::FindQuery;
use crate::engine::record::{Projection, RecordOut};
use crate::engine::{BatchOutcome, Engine, Found, Row};
use crate::error::{Error, Result};
use crate::server::reads::ReadWork;
use crate::server::Server;
use crate::value::{Json, Plain};
use crate::wire::format::{self, Format};
use crate::wire::http::Response;
use serde_json::{json, Value as J};

/// The caller's `select_fields`/`exclude_fields`, narrowed to what its key
/// may read of `c`.
pub(super) fn projection(ctx: &Ctx<'_>, c: &str) -> Projection {
    let asked = Projection {
        select: ctx.list_param("select_fields"),
        exclude: ctx.list_param("exclude_fields"),
    };
    access::view(ctx, c, asked)
}

/// What the key may read of `c`, when the caller asked for no projection.
fn readable(ctx: &Ctx<'_>, c: &str) -> Projection {
    access::view(ctx, c, Projection::default())
}

fn out<'a>(found: Found<'a>, projection: Option<&'a Projection>) -> RecordOut<'a> {
    RecordOut {
        projection: projection.filter(|p| !p.is_empty()),
        ..RecordOut::new(found.pk, found.id, found.record)
    }
}

pub fn insert(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    if let Some(tx) = ctx.transaction() {
        return txn::insert(engine, ctx, tx, c);
    }
    let body = ctx.body()?;
    if !body.is_object() {
        return Err(Error::invalid("the record must be a JSON object"));
    }
    access::check_write(ctx, c, &body)?;
    let id = engine.insert(c, body, ctx.now)?;
    let pk = engine.pk_name(c);
    let mut reply = serde_json::Map::new();
    reply.insert("id".into(), J::String(id.clone()));
    reply.insert(pk.to_string(), J::String(id));
    ctx.ok(&reply)
}

pub fn find_by_id(engine: &mut Engine, ctx: &Ctx<'_>, c: &str, id: &str) -> Result<Response> {
    if let Some(tx) = ctx.transaction() {
        return txn::find_by_id(engine, ctx, tx, c, id);
    }
    let p = projection(ctx, c);
    let (pk, record) = engine.find_shared(c, id, ctx.now)?;
    let id = id.to_string();
    ctx.ok_deferred(move |format| {
        let found = Found {
            pk: &pk,
            id: &id,
            record: &record,
        };
        format::encode(format, &out(found, Some(&p)))
    })
}

pub fn find(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    if let Some(tx) = ctx.transaction() {
        return txn::find(engine, ctx, tx, c);
    }
    let (q, shown) = find_request(ctx, c)?;
    let rows = engine.find(c, &q, ctx.now)?;
    shown.reply(ctx.out, rows)
}

/// `find` for REST: outside a transaction the query runs on a snapshot,
/// outside the server lock (`server::reads`), so a long scan, sort or join
/// holds up no other client.
pub fn find_outside_lock(server: &mut Server, ctx: &Ctx<'_>, c: &str) -> Result<Outcome> {
    let Some(conn) = ctx.conn.filter(|_| ctx.transaction().is_none()) else {
        return find(server.engine_mut(), ctx, c).map(Outcome::Reply);
    };
    let work = find_work(server, ctx, c)?;
    Ok(server.defer_read(conn, work))
}

/// A find's work outside the lock: the request checked and a snapshot of
/// the collections it reads taken (under the lock), the query to run.
pub fn find_work(server: &mut Server, ctx: &Ctx<'_>, c: &str) -> Result<ReadWork> {
    let (q, shown) = find_request(ctx, c)?;
    let collections = std::iter::once(c).chain(
        q.joins
            .iter()
            .flat_map(|j| j.collections.iter().map(String::as_str)),
    );
    let snapshot = server.engine().snapshot(collections);
    let (c, now, format) = (c.to_string(), ctx.now, ctx.out);
    Ok(Box::new(move |expired: &dyn Fn() -> bool| {
        let rows = snapshot.find(&c, &q, now, expired)?;
        shown.reply(format, rows)
    }))
}

/// A find's query, checked against the caller's grants, and what it may see.
fn find_request(ctx: &Ctx<'_>, c: &str) -> Result<(FindQuery, Shown)> {
    let q = FindQuery::parse(&ctx.body()?)?;
    access::check_query(ctx, c, &q)?;
    let shown = Shown {
        rows: access::view(ctx, c, q.projection.clone()),
        joins: join_views(ctx, &q)?,
    };
    Ok((q, shown))
}

/// What a find shows: the fields of its rows, and of each join's records
/// (by the join's `as_field`).
struct Shown {
    rows: Projection,
    joins: Vec<(String, Projection)>,
}

impl Shown {
    fn reply(&self, format: Format, rows: Vec<Row<'_>>) -> Result<Response> {
        let records: Vec<RecordOut<'_>> = rows
            .into_iter()
            .map(|row| {
                let mut r = out(row.found, Some(&self.rows));
                r.joined = row
                    .joined
                    .into_iter()
                    .map(|(name, found)| {
                        let view = self.joins.iter().find(|(n, _)| n == name).map(|(_, v)| v);
                        (name, found.into_iter().map(|f| out(f, view)).collect())
                    })
                    .collect();
                r
            })
            .collect();
        ok_in(format, &records)
    }
}

/// What the key may read of each join's records, by the join's `as_field`.
/// A join over several collections is shaped by one grant, so a key with a
/// field restriction on any of them may not join them together.
fn join_views(ctx: &Ctx<'_>, q: &FindQuery) -> Result<Vec<(String, Projection)>> {
    let mut views = Vec::new();
    for join in &q.joins {
        let view = match join.collections.as_slice() {
            [one] => readable(ctx, one),
            several => {
                if several
                    .iter()
                    .any(|c| ctx.access.read_projection(c).is_some())
                {
                    return Err(crate::auth::grants::forbidden(
                        "this API key may read only some fields of a joined collection: join one collection at a time",
                    ));
                }
                Projection::default()
            }
        };
        views.push((join.as_field.clone(), view));
    }
    Ok(views)
}

pub fn update(engine: &mut Engine, ctx: &Ctx<'_>, c: &str, id: &str) -> Result<Response> {
    if let Some(tx) = ctx.transaction() {
        return txn::update(engine, ctx, tx, c, id);
    }
    let body = ctx.body()?;
    if !body.is_object() {
        return Err(Error::invalid("the update must be a JSON object of fields"));
    }
    access::check_write(ctx, c, &body)?;
    let p = projection(ctx, c);
    let found = engine.update(c, id, body, ctx.now)?;
    ctx.ok(&out(found, Some(&p)))
}

/// `{"field","value"}`, Rust's positional `[field, value]`, or Go's `{"Field","Value"}`.
fn action_operands(body: J) -> Result<(String, Option<J>)> {
    match body {
        J::Array(mut items) if !items.is_empty() => {
            let value = if items.len() > 1 {
                Some(items.remove(1))
            } else {
                None
            };
            match items.remove(0) {
                J::String(f) => Ok((f, value)),
                _ => Err(Error::invalid("the action's field must be a string")),
            }
        }
        J::Object(map) => {
            let mut field = None;
            let mut value = None;
            for (k, v) in map {
                if k.eq_ignore_ascii_case("field") {
                    field = v.as_str().map(str::to_string);
                } else if k.eq_ignore_ascii_case("value") {
                    value = Some(v);
                }
            }
            let field = field.ok_or_else(|| Error::invalid("an action needs a string `field`"))?;
            Ok((field, value))
        }
        _ => Err(Error::invalid(
            "an action body is {\"field\": name, \"value\": operand}",
        )),
    }
}

pub fn action(engine: &mut Engine, ctx: &Ctx<'_>, c: &str, id: &str, a: &str) -> Result<Response> {
    let action = Action::parse(a)?;
    let (field, value) = action_operands(ctx.body()?)?;
    access::check_write_field(ctx, c, &field)?;
    let p = readable(ctx, c);
    let found = engine.apply_actions(c, id, vec![(action, field, value)], ctx.now)?;
    ctx.ok(&out(found, Some(&p)))
}

pub fn sequence(engine: &mut Engine, ctx: &Ctx<'_>, c: &str, id: &str) -> Result<Response> {
    let J::Array(items) = ctx.body()? else {
        return Err(Error::invalid(
            "an action sequence is an array of [action, field, value]",
        ));
    };
    let mut steps = Vec::with_capacity(items.len());
    for item in items {
        let (a, field, value) = match item {
            J::Array(mut t) if t.len() >= 2 => {
                let value = if t.len() > 2 { Some(t.remove(2)) } else { None };
                let field = t.remove(1);
                (t.remove(0), field, value)
            }
            J::Object(mut o) => (
                o.remove("action").unwrap_or(J::Null),
                o.remove("field").unwrap_or(J::Null),
                o.remove("value"),
            ),
            _ => return Err(Error::invalid("each step is [action, field, value]")),
        };
        let (Some(a), Some(field)) = (a.as_str(), field.as_str()) else {
            return Err(Error::invalid(
                "each step's action and field must be strings",
            ));
        };
        access::check_write_field(ctx, c, field)?;
        steps.push((Action::parse(a)?, field.to_string(), value));
    }
    let p = readable(ctx, c);
    let found = engine.apply_actions(c, id, steps, ctx.now)?;
    ctx.ok(&out(found, Some(&p)))
}

pub fn delete(engine: &mut Engine, ctx: &Ctx<'_>, c: &str, id: &str) -> Result<Response> {
    if let Some(tx) = ctx.transaction() {
        return txn::delete(engine, ctx, tx, c, id);
    }
    let p = readable(ctx, c);
    let found = engine.delete(c, id, ctx.now)?;
    ctx.ok(&out(found, Some(&p)))
}

pub fn restore_one(engine: &mut Engine, ctx: &Ctx<'_>, c: &str, id: &str) -> Result<Response> {
    if engine.restore(c, id, ctx.now)? {
        ctx.ok_json(&json!({"status": "restored", "restored": true, "collection": c, "id": id}))
    } else {
        ctx.ok_json(&json!({"status": "not_found", "restored": false, "collection": c, "id": id}))
    }
}

pub fn restore_all(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    let n = engine.restore_all(c, ctx.now)?;
    ctx.ok_json(
        &json!({"status": "restored", "collection": c, "records_restored": n, "cleared_count": n}),
    )
}

pub(super) fn batch_reply(ctx: &Ctx<'_>, outcome: BatchOutcome) -> Result<Response> {
    let failed: Vec<J> = outcome
        .failed
        .into_iter()
        .map(|(id, error)| match id {
            Some(id) => json!({"id": id, "error": error}),
            None => json!({"error": error}),
        })
        .collect();
    ctx.ok(&json!({"successful": outcome.successful, "failed": failed}))
}

/// The list inside a batch body: `{"<key>": [...]}`, the Rust MessagePack struct
/// form `[[...]]`, or a bare array.
pub(super) fn batch_items(body: J, key: &str) -> Result<Vec<J>> {
    match body {
        J::Object(mut o) => match o.remove(key) {
            Some(J::Array(items)) => Ok(items),
            Some(_) => Err(Error::invalid(format!("`{key}` must be an array"))),
            None => Err(Error::invalid(format!("the batch body needs `{key}`"))),
        },
        J::Array(mut items) => {
            if items.len() == 1 && items[0].is_array() {
                match items.remove(0) {
                    J::Array(inner) => Ok(inner),
                    _ => Ok(Vec::new()),
                }
            } else {
                Ok(items)
            }
        }
        _ => Err(Error::invalid(format!(
            "the batch body must be {{\"{key}\": [...]}}"
        ))),
    }
}

fn id_of(v: &J) -> Result<String> {
    match v {
        J::String(s) => Ok(s.clone()),
        J::Number(n) => Ok(n.to_string()),
        _ => Err(Error::invalid("each batch item needs a string `id`")),
    }
}

pub(super) fn parse_batch_inserts(items: Vec<J>) -> Result<Vec<J>> {
    let mut records = Vec::with_capacity(items.len());
    for item in items {
        records.push(match item {
            J::Object(mut o) if o.get("data").is_some_and(J::is_object) => {
                o.remove("data").unwrap_or(J::Null)
            }
            J::Object(o) => J::Object(o),
            J::Array(mut t) if !t.is_empty() => t.remove(0),
            _ => return Err(Error::invalid("each insert is {\"data\": {...}}")),
        });
    }
    Ok(records)
}

pub(super) fn parse_batch_updates(items: Vec<J>) -> Result<Vec<(String, J)>> {
    let mut updates = Vec::with_capacity(items.len());
    for item in items {
        updates.push(match item {
            J::Object(mut o) => (
                id_of(o.get("id").unwrap_or(&J::Null))?,
                o.remove("data")
                    .or_else(|| o.remove("record"))
                    .unwrap_or(J::Null),
            ),
            J::Array(mut t) if t.len() >= 2 => {
                let data = t.remove(1);
                (id_of(&t[0])?, data)
            }
            _ => {
                return Err(Error::invalid(
                    "each update is {\"id\": ..., \"data\": {...}}",
                ))
            }
        });
    }
    Ok(updates)
}

pub(super) fn parse_batch_deletes(body: J) -> Result<Vec<String>> {
    let items = match body {
        J::Object(ref o) if o.contains_key("ids") => match o.get("ids") {
            Some(J::Array(ids)) => ids.clone(),
            _ => return Err(Error::invalid("`ids` must be an array")),
        },
        other => batch_items(other, "deletes")?,
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        ids.push(match item {
            J::Object(o) => id_of(o.get("id").unwrap_or(&J::Null))?,
            J::Array(t) if !t.is_empty() => id_of(&t[0])?,
            other => id_of(&other)?,
        });
    }
    Ok(ids)
}

pub fn batch_insert(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    if let Some(tx) = ctx.transaction() {
        return txn::batch_insert(engine, ctx, tx, c);
    }
    let records = parse_batch_inserts(batch_items(ctx.body()?, "inserts")?)?;
    for r in &records {
        access::check_write(ctx, c, r)?;
    }
    let outcome = engine.batch_insert(c, records, ctx.now)?;
    batch_reply(ctx, outcome)
}

pub fn batch_update(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    if let Some(tx) = ctx.transaction() {
        return txn::batch_update(engine, ctx, tx, c);
    }
    let updates = parse_batch_updates(batch_items(ctx.body()?, "updates")?)?;
    for (_, patch) in &updates {
        access::check_write(ctx, c, patch)?;
    }
    let outcome = engine.batch_update(c, updates, ctx.now)?;
    batch_reply(ctx, outcome)
}

pub fn batch_delete(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    if let Some(tx) = ctx.transaction() {
        return txn::batch_delete(engine, ctx, tx, c);
    }
    let ids = parse_batch_deletes(ctx.body()?)?;
    let outcome = engine.batch_delete(c, ids, ctx.now)?;
    batch_reply(ctx, outcome)
}

pub fn distinct(engine: &mut Engine, ctx: &Ctx<'_>, c: &str, field: &str) -> Result<Response> {
    let filter = distinct_request(ctx, c, field)?;
    let values = engine.distinct(c, field, &filter, ctx.now)?;
    distinct_reply(ctx.out, c, field, &values)
}

/// `distinct` for REST, on a snapshot outside the server lock (as
/// `find_outside_lock`).
pub fn distinct_outside_lock(
    server: &mut Server,
    ctx: &Ctx<'_>,
    c: &str,
    field: &str,
) -> Result<Outcome> {
    let Some(conn) = ctx.conn else {
        return distinct(server.engine_mut(), ctx, c, field).map(Outcome::Reply);
    };
    let work = distinct_work(server, ctx, c, field)?;
    Ok(server.defer_read(conn, work))
}

/// A distinct call's work outside the lock (as `find_work`).
pub fn distinct_work(server: &mut Server, ctx: &Ctx<'_>, c: &str, field: &str) -> Result<ReadWork> {
    let filter = distinct_request(ctx, c, field)?;
    let snapshot = server.engine().snapshot([c]);
    let (c, field, now, format) = (c.to_string(), field.to_string(), ctx.now, ctx.out);
    Ok(Box::new(move |expired: &dyn Fn() -> bool| {
        let values = snapshot.distinct(&c, &field, &filter, now, expired)?;
        distinct_reply(format, &c, &field, &values)
    }))
}

/// A distinct call's filter, checked against the caller's grants.
fn distinct_request(ctx: &Ctx<'_>, c: &str, field: &str) -> Result<Filter> {
    let body = ctx.body()?;
    let filter = Filter::parse(body.get("filter"))?;
    ctx.access.check_readable_field(c, field)?;
    access::check_filter(ctx, c, &filter)?;
    Ok(filter)
}

fn distinct_reply(format: Format, c: &str, field: &str, values: &[Json]) -> Result<Response> {
    let plain: Vec<Plain<'_>> = values.iter().map(Plain).collect();
    ok_in(
        format,
        &json!({
            "collection": c,
            "field": field,
            "values": serde_json::to_value(&plain).map_err(|e| Error::internal(e.to_string()))?,
            "count": values.len(),
        }),
    )
}
