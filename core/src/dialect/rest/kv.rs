//! The key-value store (spec 12). Values are stored verbatim; only `get` wraps
//! the value once in a typed envelope, as the reference server does.

use super::Ctx;
use crate::auth::grants::Action;
use crate::engine::kv::Link;
use crate::engine::{parse_ttl, Engine};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::value::{Json, Plain};
use crate::wire::http::Response;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{json, Value as J};

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "Null",
        Json::Bool(_) => "Boolean",
        Json::Int(_) | Json::UInt(_) => "Integer",
        Json::Float(_) => "Float",
        Json::Str(_) => "String",
        Json::Array(_) => "Array",
        Json::Object(_) => "Object",
    }
}

struct Wrapped<'a>(&'a Json);

impl Serialize for Wrapped<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("type", kind(self.0))?;
        m.serialize_entry("value", &Plain(self.0))?;
        m.end()
    }
}

/// The `keys` of a batch body, each of which the caller may `action`.
fn keys_of(ctx: &Ctx<'_>, body: &J, action: Action) -> Result<Vec<String>> {
    let keys = names_of(body)?;
    for k in &keys {
        ctx.access.kv(k, action)?;
    }
    Ok(keys)
}

fn names_of(body: &J) -> Result<Vec<String>> {
    body.get("keys")
        .and_then(J::as_array)
        .ok_or_else(|| Error::invalid("the body needs `keys`: an array of strings"))?
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::invalid("`keys` must be strings"))
        })
        .collect()
}

pub fn set(engine: &mut Engine, ctx: &Ctx<'_>, key: &str) -> Result<Response> {
    let mut body = ctx.body()?;
    let obj = body
        .as_object_mut()
        .ok_or_else(|| Error::invalid("the body must be {\"value\": ..., \"ttl\"?: ...}"))?;
    let value = obj
        .remove("value")
        .ok_or_else(|| Error::invalid("the body needs a `value`"))?;
    let ttl = match (obj.get("ttl"), ctx.param("ttl")) {
        (Some(t), _) if !t.is_null() => parse_ttl(t, ctx.now)?,
        (_, Some(q)) => parse_ttl(&J::String(q.to_string()), ctx.now)?,
        _ => None,
    };
    engine.kv_set(key, Json::from(value), ttl)?;
    ctx.ok_json(&json!({"success": true, "key": key}))
}

pub fn get(engine: &mut Engine, ctx: &Ctx<'_>, key: &str) -> Result<Response> {
    let entry = engine
        .kv_get(key, ctx.now)
        .ok_or_else(|| Error::not_found(format!("Key not found: {key}")))?;
    #[derive(Serialize)]
    struct Reply<'a> {
        key: &'a str,
        value: Wrapped<'a>,
    }
    ctx.ok_json(&Reply {
        key,
        value: Wrapped(&entry.value),
    })
}

pub fn delete(engine: &mut Engine, ctx: &Ctx<'_>, key: &str) -> Result<Response> {
    let deleted = engine.kv_delete(key, ctx.now);
    ctx.ok_json(&json!({"deleted": deleted, "key": key}))
}

pub fn clear(engine: &mut Engine, ctx: &Ctx<'_>) -> Result<Response> {
    let n = engine.kv_clear(ctx.now);
    ctx.ok_json(&json!({"message": "success", "cleared": n}))
}

pub fn batch_get(engine: &mut Engine, ctx: &Ctx<'_>) -> Result<Response> {
    let keys = keys_of(ctx, &ctx.body()?, Action::Read)?;
    let values: Vec<Plain<'_>> = keys
        .iter()
        .filter_map(|k| engine.kv_get(k, ctx.now))
        .map(|e| Plain(&e.value))
        .collect();
    ctx.ok_json(&values)
}

pub fn batch_set(engine: &mut Engine, ctx: &Ctx<'_>) -> Result<Response> {
    let body = ctx.body()?;
    let keys = keys_of(ctx, &body, Action::Write)?;
    let values = body
        .get("values")
        .and_then(J::as_array)
        .ok_or_else(|| Error::invalid("the body needs `values`: an array as long as `keys`"))?;
    if values.len() != keys.len() {
        return Err(Error::invalid(format!(
            "`keys` has {} entries but `values` has {}",
            keys.len(),
            values.len()
        )));
    }
    let ttl: Option<Timestamp> = match body.get("ttl") {
        Some(t) if !t.is_null() => parse_ttl(t, ctx.now)?,
        _ => None,
    };
    for k in &keys {
        crate::engine::validate_name("key", k)?;
    }
    let mut out = Vec::with_capacity(keys.len());
    for (k, v) in keys.into_iter().zip(values) {
        engine.kv_set(&k, Json::from(v.clone()), ttl)?;
        out.push((k, true));
    }
    ctx.ok_json(&out)
}

pub fn batch_delete(engine: &mut Engine, ctx: &Ctx<'_>) -> Result<Response> {
    let keys = keys_of(ctx, &ctx.body()?, Action::Write)?;
    let out: Vec<(String, bool)> = keys
        .into_iter()
        .map(|k| {
            let deleted = engine.kv_delete(&k, ctx.now);
            (k, deleted)
        })
        .collect();
    ctx.ok_json(&out)
}

pub fn find(engine: &mut Engine, ctx: &Ctx<'_>) -> Result<Response> {
    let body = ctx.body()?;
    let pattern = match body.get("pattern") {
        None | Some(J::Null) => None,
        Some(J::String(p)) if p.is_empty() => None,
        Some(J::String(p)) => Some(
            regex::RegexBuilder::new(p)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| Error::invalid(format!("invalid `pattern`: {e}")))?,
        ),
        Some(_) => return Err(Error::invalid("`pattern` must be a string")),
    };
    let include_expired = body
        .get("include_expired")
        .and_then(J::as_bool)
        .unwrap_or(false);
    // Paging (Tidepool's, optional): at most `limit` entries, in key order,
    // after the key `after` (the last key of the previous page).
    let after = match body.get("after") {
        None | Some(J::Null) => None,
        Some(J::String(a)) => Some(a.as_str()),
        Some(_) => return Err(Error::invalid("`after` must be a string (a key)")),
    };
    let limit = match body.get("limit") {
        None | Some(J::Null) => usize::MAX,
        Some(n) => n
            .as_u64()
            .filter(|n| *n > 0)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .ok_or_else(|| Error::invalid("`limit` must be a positive integer"))?,
    };
    #[derive(Serialize)]
    struct Entry<'a> {
        key: &'a str,
        value: Plain<'a>,
        expires_at: Option<String>,
    }
    let entries: Vec<Entry<'_>> = engine
        .kv_find(pattern.as_ref(), include_expired, after, ctx.now)
        .filter(|(key, _)| ctx.access.sees_kv(key, Action::Read))
        .take(limit)
        .map(|(key, e)| Entry {
            key,
            value: Plain(&e.value),
            expires_at: e.expires_at.map(Timestamp::to_rfc3339_z),
        })
        .collect();
    ctx.ok_json(&entries)
}

fn link_json(key: &str, l: &Link) -> J {
    json!({
        "key": key,
        "collection": l.collection,
        "document_id": l.document_id,
        "field_path": l.field_path,
        "keys": l.keys,
        "metadata": l.metadata.as_ref().map(Json::to_serde),
        "created_at": l.created_at.to_rfc3339_z(),
    })
}

pub fn links(engine: &mut Engine, ctx: &Ctx<'_>, key: &str) -> Result<Response> {
    let links: Vec<J> = engine
        .kv_links(key)
        .iter()
        .filter(|l| ctx.access.sees_collection(&l.collection))
        .map(|l| link_json(key, l))
        .collect();
    ctx.ok_json(&links)
}

pub fn link(engine: &mut Engine, ctx: &Ctx<'_>, key: &str, c: &str, doc: &str) -> Result<Response> {
    let body = ctx.body()?;
    let text_list = |k: &str| -> Option<Vec<String>> {
        body.get(k)?.as_array().map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
    };
    let link = Link {
        collection: c.to_string(),
        document_id: doc.to_string(),
        field_path: body
            .get("field_path")
            .and_then(J::as_str)
            .map(str::to_string),
        keys: text_list("keys"),
        metadata: body
            .get("metadata")
            .filter(|m| !m.is_null())
            .cloned()
            .map(Json::from),
        created_at: ctx.now,
    };
    engine.kv_link(key, link)?;
    ctx.ok_json(&J::Null)
}

pub fn unlink(
    engine: &mut Engine,
    ctx: &Ctx<'_>,
    key: &str,
    c: &str,
    doc: &str,
) -> Result<Response> {
    engine.kv_unlink(key, c, doc);
    ctx.ok_json(&J::Null)
}

pub fn legacy_links(engine: &mut Engine, ctx: &Ctx<'_>, key: &str) -> Result<Response> {
    let links: Vec<J> = engine
        .kv_links(key)
        .iter()
        .filter(|l| ctx.access.sees_collection(&l.collection))
        .map(|l| link_json(key, l))
        .collect();
    ctx.ok_json(&json!({ "key": key, "links": links }))
}

pub fn legacy_link(engine: &mut Engine, ctx: &Ctx<'_>, linking: bool) -> Result<Response> {
    let body = ctx.body()?;
    let field = |k: &str| {
        body.get(k)
            .and_then(J::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::invalid(format!("the body needs a string `{k}`")))
    };
    let (key, c, doc) = (field("key")?, field("collection")?, field("document_id")?);
    ctx.access.kv(&key, Action::Write)?;
    ctx.access.collection(&c, Action::Write)?;
    if linking {
        link(engine, ctx, &key, &c, &doc)?;
    } else {
        engine.kv_unlink(&key, &c, &doc);
    }
    ctx.ok_json(&json!({"success": true}))
}
