//! What a handler does with the caller's grants beyond the route table's
//! check (`rest::permit`): the fields a key may read shape every record it
//! gets back (merged with the caller's own projection), a read may not
//! filter or sort on a field the key cannot read (the order or choice of
//! results would reveal it), and a write may touch only the writable fields.

use super::Ctx;
use crate::auth::grants::{forbidden, Access, Action};
use crate::engine::filter::Filter;
use crate::engine::query::FindQuery;
use crate::engine::record::Projection;
use crate::error::Result;
use serde_json::Value as J;

/// The caller's projection narrowed to what the key may read of `collection`.
pub fn view(ctx: &Ctx<'_>, collection: &str, mut asked: Projection) -> Projection {
    let Some(allowed) = ctx.access.read_projection(collection) else {
        return asked;
    };
    asked.select = if asked.select.is_empty() {
        allowed.select
    } else if allowed.select.is_empty() {
        asked.select
    } else {
        let mut kept: Vec<String> = asked
            .select
            .into_iter()
            .filter(|f| {
                let top = f.split('.').next().unwrap_or(f);
                allowed.select.iter().any(|a| a == top || a == f)
            })
            .collect();
        if kept.is_empty() {
            // Nothing asked for is readable: only the primary key.
            kept = Projection::key_only().select;
        }
        kept
    };
    asked.exclude.extend(allowed.exclude);
    asked
}

/// Refuses a filter naming a field the key may not read.
pub fn check_filter(ctx: &Ctx<'_>, collection: &str, filter: &Filter) -> Result<()> {
    if ctx.access.is_admin() {
        return Ok(());
    }
    let mut fields = Vec::new();
    filter.fields(&mut fields);
    for field in fields {
        ctx.access.check_readable_field(collection, field)?;
    }
    Ok(())
}

/// Checks a find: its filter and sort use readable fields, and each joined
/// collection is readable (its records are shaped by its own grant).
pub fn check_query(ctx: &Ctx<'_>, collection: &str, q: &FindQuery) -> Result<()> {
    if ctx.access.is_admin() {
        return Ok(());
    }
    if let Some(f) = &q.filter {
        check_filter(ctx, collection, f)?;
    }
    for key in &q.sort {
        ctx.access.check_readable_field(collection, &key.field)?;
    }
    for join in &q.joins {
        ctx.access
            .check_readable_field(collection, &join.local_field)?;
        for other in &join.collections {
            ctx.access.collection(other, Action::Read)?;
            ctx.access
                .check_readable_field(other, &join.foreign_field)?;
        }
    }
    Ok(())
}

/// Refuses a write of a record (an object of fields) with a field outside
/// the key's writable fields.
pub fn check_write(ctx: &Ctx<'_>, collection: &str, record: &J) -> Result<()> {
    if ctx.access.is_admin() {
        return Ok(());
    }
    match record {
        J::Object(o) => ctx
            .access
            .check_writable_fields(collection, o.keys().map(String::as_str)),
        _ => Ok(()),
    }
}

/// Refuses a write of one named field outside the writable fields.
pub fn check_write_field(ctx: &Ctx<'_>, collection: &str, field: &str) -> Result<()> {
    ctx.access
        .check_writable_fields(collection, std::iter::once(field))
}

/// Refuses a stream of whole records (a subscription) to a key that may
/// read only some fields of `collection`: events are encoded once for every
/// subscriber, so they cannot be shaped per key yet.
pub fn check_whole_records(access: &Access, collection: &str) -> Result<()> {
    if access.read_projection(collection).is_some() {
        return Err(forbidden(format!(
            "this API key may read only some fields of `{collection}`; subscriptions deliver whole records"
        )));
    }
    Ok(())
}
