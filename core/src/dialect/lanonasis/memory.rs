//! The memory REST API (`spec/dialects.md` §5.3), served at both
//! `/api/v1/memory` and `/api/v1/memories` as the real server mounts it:
//! create (201, the bare entry), get, list (`{data, pagination}`), update
//! (PUT), delete (204), search. `X-API-Key` or `Authorization: Bearer`; a
//! key owns the memories it creates (an admin key sees all). Errors are
//! `{error, message}` with the HTTP status.

use super::stream::{credential, publish_search};
use super::MEMORIES;
use crate::auth::Principal;
use crate::dialect::rest::{Ctx, Outcome};
use crate::dialect::socket::{self, iso};
use crate::engine::filter::Filter;
use crate::engine::record::Record;
use crate::engine::search::SearchRequest;
use crate::error::{Error, ErrorKind, Result};
use crate::server::Server;
use crate::value::{Json, Value};
use crate::wire::http::Response;
use serde_json::{json, Map, Value as J};
use std::time::Duration;
use tidepool_search::{Metric, TextQuery};

/// The memory types the SDK knows (`MemoryType`).
const MEMORY_TYPES: [&str; 6] = [
    "context",
    "project",
    "knowledge",
    "reference",
    "personal",
    "workflow",
];
const MAX_TITLE_CHARS: usize = 500;
const MAX_CONTENT_BYTES: usize = 256 * 1024;
const MAX_TAGS: usize = 100;
const MAX_TAG_CHARS: usize = 100;
const MAX_PAGE: usize = 100;
/// Hits a search considers before ownership, type and tag filters.
const SEARCH_CANDIDATES: usize = 1000;
/// How long a deleted memory's tombstone (its `memory.deleted` event's
/// source) stays before it is swept.
const TOMBSTONE_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// The caller, or 401.
fn principal(server: &Server, ctx: &Ctx<'_>) -> Result<Principal> {
    credential(ctx)
        .and_then(|k| socket::check_credential(server, k, ctx.now))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unauthorized,
                "a valid API key is required (X-API-Key or Authorization: Bearer)",
            )
        })
}

fn field(r: &Record, k: &str) -> J {
    r.get(k).map_or(J::Null, |v| v.to_json().to_serde())
}

fn is_live(r: &Record) -> bool {
    r.get("deleted_at").is_none()
}

fn owned_by(r: &Record, who: &Principal) -> bool {
    who.is_admin() || field(r, "user_id").as_str() == Some(who.key_id.as_str())
}

/// The SDK's `MemoryEntry`.
fn entry(id: &str, r: &Record) -> J {
    let mut o = Map::new();
    o.insert("id".into(), J::String(id.to_string()));
    for k in [
        "title",
        "content",
        "summary",
        "memory_type",
        "status",
        "access_count",
        "last_accessed",
        "user_id",
        "topic_id",
        "project_ref",
        "tags",
        "metadata",
        "created_at",
        "updated_at",
    ] {
        o.insert(k.into(), field(r, k));
    }
    J::Object(o)
}

/// A live memory the caller owns, or 404.
fn find<'s>(server: &'s Server, ctx: &Ctx<'_>, who: &Principal) -> Result<(String, &'s Record)> {
    let id = ctx.arg("id");
    server
        .engine()
        .get_internal(MEMORIES, id, ctx.now)
        .filter(|f| is_live(f.record) && owned_by(f.record, who))
        .map(|f| (f.id.to_string(), f.record))
        .ok_or_else(|| Error::not_found(format!("Memory `{id}` not found")))
}

/// The writable fields of a create or update body, checked.
struct Fields {
    title: Option<String>,
    content: Option<String>,
    summary: Option<String>,
    memory_type: Option<String>,
    tags: Option<Vec<String>>,
    metadata: Option<J>,
    topic_id: Option<J>,
    project_ref: Option<J>,
}

impl Fields {
    fn parse(body: &J) -> Result<Fields> {
        let o = body
            .as_object()
            .ok_or_else(|| Error::invalid("the body is a JSON object"))?;
        let text = |k: &str| -> Result<Option<String>> {
            match o.get(k) {
                None | Some(J::Null) => Ok(None),
                Some(J::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(Error::invalid(format!("`{k}` must be a string"))),
            }
        };
        let title = text("title")?;
        if title
            .as_ref()
            .is_some_and(|t| t.trim().is_empty() || t.chars().count() > MAX_TITLE_CHARS)
        {
            return Err(Error::invalid(format!(
                "`title` must be 1 to {MAX_TITLE_CHARS} characters"
            )));
        }
        let content = text("content")?;
        if content
            .as_ref()
            .is_some_and(|c| c.trim().is_empty() || c.len() > MAX_CONTENT_BYTES)
        {
            return Err(Error::invalid(format!(
                "`content` must be 1 byte to {} KiB",
                MAX_CONTENT_BYTES / 1024
            )));
        }
        let memory_type = text("memory_type")?;
        if let Some(t) = &memory_type {
            if !MEMORY_TYPES.contains(&t.as_str()) {
                return Err(Error::invalid(format!(
                    "`memory_type` must be one of {}",
                    MEMORY_TYPES.join(", ")
                )));
            }
        }
        let tags = match o.get("tags") {
            None | Some(J::Null) => None,
            Some(J::Array(a)) if a.len() <= MAX_TAGS => Some(
                a.iter()
                    .map(|t| match t {
                        J::String(s) if !s.is_empty() && s.chars().count() <= MAX_TAG_CHARS => {
                            Ok(s.clone())
                        }
                        _ => Err(Error::invalid(format!(
                            "`tags` are strings of 1 to {MAX_TAG_CHARS} characters"
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(_) => {
                return Err(Error::invalid(format!(
                    "`tags` is a list of at most {MAX_TAGS} strings"
                )))
            }
        };
        let metadata = match o.get("metadata") {
            None | Some(J::Null) => None,
            Some(m @ J::Object(_)) => Some(m.clone()),
            Some(_) => return Err(Error::invalid("`metadata` must be an object")),
        };
        Ok(Fields {
            title,
            content,
            summary: text("summary")?,
            memory_type,
            tags,
            metadata,
            topic_id: o.get("topic_id").cloned(),
            project_ref: o.get("project_ref").cloned(),
        })
    }
}

fn value(j: J) -> Value {
    Value::from_json(Json::from(j))
}

/// A record's fields as a list to write back, with some replaced.
fn with(r: Option<&Record>, changes: Vec<(&'static str, J)>) -> Vec<(String, J)> {
    let mut out: Vec<(String, J)> = r
        .map(|r| {
            r.fields()
                .map(|(k, v)| (k.to_string(), v.to_json().to_serde()))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in changes {
        match out.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k.to_string(), v)),
        }
    }
    out
}

fn write(
    server: &mut Server,
    id: &str,
    fields: Vec<(String, J)>,
    expires: Option<crate::time::Timestamp>,
    ctx: &Ctx<'_>,
) -> Result<()> {
    server.check_writable()?;
    let fields: Vec<(&str, Value)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), value(v.clone())))
        .collect();
    server
        .engine_mut()
        .put_internal_until(MEMORIES, id, fields, expires, ctx.now)
}

fn created(ctx: &Ctx<'_>, body: &J) -> Result<Outcome> {
    let mut r = ctx.ok_json(body)?;
    r.status = 201;
    Ok(Outcome::Reply(r))
}

/// `POST /api/v1/memory`
pub fn create(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let who = principal(server, ctx)?;
    let f = Fields::parse(&ctx.body()?)?;
    let (Some(title), Some(content)) = (f.title, f.content) else {
        return Err(Error::invalid("`title` and `content` are required"));
    };
    let id = format!("mem_{}", server.new_token(12));
    let now = J::String(iso(ctx.now));
    let fields = with(
        None,
        vec![
            ("title", J::String(title)),
            ("content", J::String(content)),
            ("summary", f.summary.map_or(J::Null, J::String)),
            (
                "memory_type",
                J::String(f.memory_type.unwrap_or_else(|| "context".into())),
            ),
            ("status", J::String("active".into())),
            ("access_count", json!(0)),
            ("last_accessed", J::Null),
            ("user_id", J::String(who.key_id.clone())),
            ("topic_id", f.topic_id.unwrap_or(J::Null)),
            ("project_ref", f.project_ref.unwrap_or(J::Null)),
            ("tags", json!(f.tags.unwrap_or_default())),
            ("metadata", f.metadata.unwrap_or_else(|| json!({}))),
            ("created_at", now.clone()),
            ("updated_at", now),
            ("created_by", J::String(who.key_id.clone())),
        ],
    );
    write(server, &id, fields, None, ctx)?;
    let r = server
        .engine()
        .get_internal(MEMORIES, &id, ctx.now)
        .map(|f| entry(&id, f.record))
        .unwrap_or(J::Null);
    created(ctx, &r)
}

/// `GET /api/v1/memory/{id}`
pub fn get(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let who = principal(server, ctx)?;
    let (id, r) = find(server, ctx, &who)?;
    ctx.ok_json(&entry(&id, r)).map(Outcome::Reply)
}

/// `PUT /api/v1/memory/{id}`: the fields given change; `memory.updated`
/// says which (`changes`).
pub fn update(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let who = principal(server, ctx)?;
    let f = Fields::parse(&ctx.body()?)?;
    let (id, r) = find(server, ctx, &who)?;
    let changed = |k: &str, new: &Option<J>| new.as_ref().is_some_and(|v| *v != field(r, k));
    let tags = f.tags.map(|t| json!(t));
    let content = f.content.map(J::String);
    let changes = json!({
        "content": changed("content", &content),
        "metadata": changed("metadata", &f.metadata),
        "tags": changed("tags", &tags),
    });
    let mut set: Vec<(&'static str, J)> = Vec::new();
    for (k, v) in [
        ("title", f.title.map(J::String)),
        ("content", content),
        ("summary", f.summary.map(J::String)),
        ("memory_type", f.memory_type.map(J::String)),
        ("tags", tags),
        ("metadata", f.metadata),
        ("topic_id", f.topic_id),
        ("project_ref", f.project_ref),
    ] {
        if let Some(v) = v {
            set.push((k, v));
        }
    }
    set.extend([
        ("updated_at", J::String(iso(ctx.now))),
        ("updated_by", J::String(who.key_id.clone())),
        ("changes", changes),
    ]);
    let fields = with(Some(r), set);
    write(server, &id, fields, None, ctx)?;
    let r = server
        .engine()
        .get_internal(MEMORIES, &id, ctx.now)
        .map(|f| entry(&id, f.record))
        .unwrap_or(J::Null);
    ctx.ok_json(&r).map(Outcome::Reply)
}

/// `DELETE /api/v1/memory/{id}`: 204. The memory becomes a tombstone (its
/// `memory.deleted` event), swept after a week.
pub fn delete(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let who = principal(server, ctx)?;
    let (id, r) = find(server, ctx, &who)?;
    let fields = with(
        Some(r),
        vec![
            ("status", J::String("deleted".into())),
            ("deleted_at", J::String(iso(ctx.now))),
            ("deleted_by", J::String(who.key_id.clone())),
            ("reason", J::String("user_request".into())),
        ],
    );
    let until = ctx.now.saturating_add(TOMBSTONE_FOR);
    write(server, &id, fields, Some(until), ctx)?;
    Ok(Outcome::Reply(Response::new(204, "", "")))
}

/// The caller's live memories.
fn mine<'s>(server: &'s Server, who: &'s Principal, ctx: &Ctx<'_>) -> Vec<(String, &'s Record)> {
    server
        .engine()
        .with_id_prefix(MEMORIES, "", ctx.now)
        .filter(|f| is_live(f.record) && owned_by(f.record, who))
        .map(|f| (f.id.to_string(), f.record))
        .collect()
}

fn has_any_tag(r: &Record, tags: &[String]) -> bool {
    tags.is_empty()
        || field(r, "tags").as_array().is_some_and(|have| {
            have.iter()
                .any(|t| t.as_str().is_some_and(|t| tags.iter().any(|w| w == t)))
        })
}

fn of_type(r: &Record, types: &[String]) -> bool {
    types.is_empty()
        || field(r, "memory_type")
            .as_str()
            .is_some_and(|t| types.iter().any(|w| w == t))
}

/// `GET /api/v1/memory?page=&limit=&memory_type=&tags=&sort=&order=`
pub fn list(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let who = principal(server, ctx)?;
    let num = |k: &str, default: usize| -> Result<usize> {
        match ctx.param(k) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| Error::invalid(format!("`{k}` must be a positive integer"))),
        }
    };
    let page = num("page", 1)?;
    let limit = num("limit", 20)?.min(MAX_PAGE);
    let sort = ctx.param("sort").unwrap_or("created_at");
    if !["created_at", "updated_at", "title"].contains(&sort) {
        return Err(Error::invalid(
            "`sort` is one of created_at, updated_at, title",
        ));
    }
    let descending = match ctx.param("order") {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(Error::invalid("`order` is asc or desc")),
    };
    let types = ctx.list_param("memory_type");
    let tags = ctx.list_param("tags");
    let mut rows: Vec<(String, &Record)> = mine(server, &who, ctx)
        .into_iter()
        .filter(|(_, r)| of_type(r, &types) && has_any_tag(r, &tags))
        .collect();
    rows.sort_by(|a, b| {
        let key = |r: &Record| field(r, sort).as_str().unwrap_or_default().to_string();
        let o = key(a.1).cmp(&key(b.1)).then_with(|| a.0.cmp(&b.0));
        if descending {
            o.reverse()
        } else {
            o
        }
    });
    let total = rows.len();
    let data: Vec<J> = rows
        .iter()
        .skip((page - 1).saturating_mul(limit))
        .take(limit)
        .map(|(id, r)| entry(id, r))
        .collect();
    ctx.ok_json(&json!({
        "data": data,
        "pagination": {"page": page, "limit": limit, "total": total, "pages": total.div_ceil(limit)},
    }))
    .map(Outcome::Reply)
}

/// `POST /api/v1/memory/search {query, limit?, threshold?, memory_types?, tags?}`:
/// text search over titles and content (typo-tolerant), scores in 0..1;
/// every stream that asked for it gets `search.performed`.
pub fn search(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let who = principal(server, ctx)?;
    let body = ctx.body()?;
    let query = body
        .get("query")
        .and_then(J::as_str)
        .map(str::trim)
        .filter(|q| !q.is_empty() && q.len() <= 4096)
        .ok_or_else(|| Error::invalid("`query` is required (1 to 4096 bytes)"))?
        .to_string();
    let limit = match body.get("limit") {
        None | Some(J::Null) => 20,
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| Error::invalid("`limit` must be a positive integer"))?
            .min(MAX_PAGE as u64) as usize,
    };
    let threshold = match body.get("threshold") {
        None | Some(J::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|t| (0.0..=1.0).contains(t))
                .ok_or_else(|| Error::invalid("`threshold` must be a number from 0 to 1"))?,
        ),
    };
    let strings = |k: &str| -> Vec<String> {
        body.get(k)
            .and_then(J::as_array)
            .map(|a| a.iter().filter_map(J::as_str).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let (types, tags) = (strings("memory_types"), strings("tags"));

    let mut text = TextQuery::new(query.clone());
    text.fields = Some(vec!["title".into(), "content".into()]);
    text.fuzzy = true;
    text.max_edit_distance = 1;
    text.limit = SEARCH_CANDIDATES;
    let req = SearchRequest {
        text,
        vector: None,
        vector_field: String::new(),
        metric: Metric::Cosine,
        vector_k: None,
        ef_search: 0,
        threshold: None,
        text_weight: 1.0,
        vector_weight: 0.0,
        limit: SEARCH_CANDIDATES,
    };
    let hits = match server
        .engine_mut()
        .search(MEMORIES, &req, &Filter::All, ctx.now)
    {
        Ok((hits, _)) => hits
            .into_iter()
            .map(|h| (h.found.id.to_string(), f64::from(h.score)))
            .collect(),
        // No memory yet: nothing to find.
        Err(e) if e.kind == ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut results = Vec::new();
    for (id, score) in hits {
        let similarity = score / (score + 1.0);
        let Some(found) = server.engine().get_internal(MEMORIES, &id, ctx.now) else {
            continue;
        };
        let r = found.record;
        if !is_live(r)
            || !owned_by(r, &who)
            || !of_type(r, &types)
            || !has_any_tag(r, &tags)
            || threshold.is_some_and(|t| similarity < t)
        {
            continue;
        }
        let mut e = entry(&id, r);
        e["similarity_score"] = json!((similarity * 1000.0).round() / 1000.0);
        results.push(e);
        if results.len() == limit {
            break;
        }
    }
    let elapsed = ctx.elapsed_ms();
    let filters = json!({"memory_types": types, "tags": tags});
    publish_search(
        server,
        &json!({
            "query": query, "results_count": results.len(), "execution_time": elapsed as f64,
            "timestamp": iso(ctx.now), "user_id": who.key_id, "filters": filters,
        }),
    );
    ctx.ok_json(&json!({
        "results": results, "query": query, "total_results": results.len(),
        "search_time_ms": elapsed,
    }))
    .map(Outcome::Reply)
}
