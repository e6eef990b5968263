//! `GET /api/v1/stream`: named SSE events with ids (seed 002:84-94).
//!
//! Refusals are in-stream, as the seed documents them (an HTTP status never
//! reaches `stream.on('error')` with data): a bad or missing key gets
//! `AUTH_ERROR`, the sixth concurrent stream of a key `RATE_LIMITED`, and the
//! response ends. `events` comes repeated or comma-separated; `filters[k]=v`
//! keeps memory events whose `metadata.k` is `v`; `heartbeat` is in seconds,
//! at least 30. A key sees the memories it wrote (an admin key, all).

use super::{EventTypes, FeedPos, MEMORIES};
use crate::dialect::rest::{Ctx, Outcome};
use crate::dialect::socket::{self, iso};
use crate::dialect::{EventCodec, Notice};
use crate::engine::record::Record;
use crate::error::Result;
use crate::ids::Lsn;
use crate::realtime::events::{Change, Event, Filter};
use crate::server::health::Health;
use crate::server::{Server, Upgrade};
use crate::time::Timestamp;
use crate::wire::http::Response;
use crate::wire::sse;
use bytes::Bytes;
use serde_json::{json, Value as J};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Concurrent streams per key (seed 002:286).
pub const STREAMS_PER_KEY: usize = 5;
/// The documented default and minimum heartbeat (seed 002:22, 288).
const MIN_HEARTBEAT_SECS: u64 = 30;
/// An upper bound, so a typo cannot silence a stream for a day.
const MAX_HEARTBEAT_SECS: u64 = 3600;
/// How long a client told `RATE_LIMITED` should wait (seed 002:201).
const RATE_LIMITED_RETRY_MS: u64 = 60_000;
/// `filters[...]` entries a stream may have.
const MAX_FILTERS: usize = 16;
/// The key connection claims are counted under.
const CLAIM: EventCodec = EventCodec::Lanonasis(EventTypes::ALL);

/// A stream's own state on its connection: what its heartbeats say.
#[derive(Debug, Clone)]
pub struct Feed {
    /// Orders events that are not log changes (shared by every stream).
    counter: Arc<AtomicU64>,
    /// Every matching change up to this batch has been sent.
    seen: Lsn,
    pub every: Duration,
    connection_id: String,
}

/// Streams are compared by position and settings (the counter is shared).
impl PartialEq for Feed {
    fn eq(&self, other: &Feed) -> bool {
        self.seen == other.seen
            && self.every == other.every
            && self.connection_id == other.connection_id
    }
}

impl Feed {
    /// The stream sent (or skipped) everything up to batch `lsn`.
    pub fn seen(&mut self, lsn: Lsn) {
        self.seen = self.seen.max(lsn);
    }

    /// A `heartbeat` event, positioned after what was sent.
    pub fn heartbeat(&self, now: Timestamp) -> Bytes {
        let pos = FeedPos::after(self.seen, self.counter.fetch_add(1, Ordering::Relaxed));
        let data = json!({
            "timestamp": iso(now), "status": "healthy", "connection_id": self.connection_id,
        });
        sse::event(
            Some(&format!("heartbeat_{pos}")),
            "heartbeat",
            data.to_string().as_bytes(),
        )
    }
}

/// The counter every stream draws its non-change positions from.
#[derive(Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    fn next_after(&self, lsn: Lsn) -> FeedPos {
        FeedPos::after(lsn, self.0.fetch_add(1, Ordering::Relaxed))
    }
}

/// An `error` event (seed 002:190-202). Only an error that says where the
/// stream goes on has an id: EventSource keeps the last id it saw and
/// resumes after it, so a refusal with one would skip what was missed.
fn error_event(pos: Option<FeedPos>, code: &str, message: &str, retry_after_ms: u64) -> Bytes {
    let data = json!({"code": code, "message": message, "retry_after": retry_after_ms});
    let id = pos.map(|p| format!("error_{p}"));
    sse::event(id.as_deref(), "error", data.to_string().as_bytes())
}

/// A stream that ends after one `error` event (status 200: the client's
/// EventSource reads it, then reconnects after `retry`).
fn refuse(code: &str, message: &str, retry_after_ms: u64) -> Outcome {
    let mut body = format!("retry: {}\n", retry_after_ms.max(1000)).into_bytes();
    body.extend_from_slice(&error_event(None, code, message, retry_after_ms));
    Outcome::Reply(
        Response::new(200, "text/event-stream", body).with_header("Cache-Control", "no-cache"),
    )
}

/// The API key of a request: `Authorization: Bearer` (the stream's way) or
/// `X-API-Key` (the SDK's).
pub fn credential<'c>(ctx: &'c Ctx<'_>) -> Option<&'c str> {
    ctx.header("authorization")
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .or_else(|| ctx.header("x-api-key"))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// `GET /api/v1/stream`
pub fn open(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let Some(principal) =
        credential(ctx).and_then(|k| socket::open_with_credential(server, ctx.conn, k, ctx.now))
    else {
        return Ok(refuse("AUTH_ERROR", "Invalid API key", 0));
    };
    let types = match EventTypes::parse(&ctx.list_param("events")) {
        Ok(t) => t,
        Err(unknown) => {
            let message = format!(
                "unknown event type `{unknown}`; known: {}",
                super::EVENT_TYPES.join(", ")
            );
            return Ok(refuse("INVALID_REQUEST", &message, 0));
        }
    };
    let mut all: Vec<(String, String)> = Vec::new();
    if !principal.is_admin() {
        all.push(("user_id".into(), principal.key_id.clone()));
    }
    for (k, v) in ctx.params() {
        if let Some(key) = k.strip_prefix("filters[").and_then(|k| k.strip_suffix(']')) {
            if key.is_empty() || all.len() > MAX_FILTERS {
                return Ok(refuse(
                    "INVALID_REQUEST",
                    &format!("`filters` takes 1 to {MAX_FILTERS} entries `filters[key]=value`"),
                    0,
                ));
            }
            all.push((format!("metadata.{key}"), v.clone()));
        }
    }
    let every = ctx
        .param("heartbeat")
        .and_then(|h| h.trim().parse::<u64>().ok())
        .unwrap_or(MIN_HEARTBEAT_SECS)
        .clamp(MIN_HEARTBEAT_SECS, MAX_HEARTBEAT_SECS);
    let resume = ctx
        .header("last-event-id")
        .filter(|id| !id.trim().is_empty())
        .map(|id| {
            FeedPos::parse(id).ok_or_else(|| {
                format!("Last-Event-ID `{id}` is not an id this server issued (like event_42.0)")
            })
        })
        .transpose();
    let resume = match resume {
        Ok(r) => r,
        Err(message) => return Ok(refuse("INVALID_REQUEST", &message, 0)),
    };
    let Some(conn) = ctx.conn else {
        return Ok(refuse("CONNECTION_ERROR", "not a stream connection", 5000));
    };
    let codec = EventCodec::Lanonasis(types);
    if types.contains("system.health") {
        server.want_health(ctx.now);
    }
    if !server.socket_claim(conn, CLAIM, &principal.key_id, STREAMS_PER_KEY) {
        return Ok(refuse(
            "RATE_LIMITED",
            "Too many connections",
            RATE_LIMITED_RETRY_MS,
        ));
    }
    let seen = match resume {
        // The replay reports what it sends; until then, nothing past the
        // batch before the resume point is claimed.
        Some(p) => Lsn(p.lsn.0.saturating_sub(1)).min(server.last_lsn()),
        None => server.last_lsn(),
    };
    let feed = Feed {
        counter: server.feed_counter().0.clone(),
        seen,
        every: Duration::from_secs(every),
        connection_id: format!("conn_{}", conn.0),
    };
    // Searches it missed go between the replayed changes, in id order.
    let missed = match resume {
        Some(p) if types.contains("search.performed") => server.feed_recent_after(p),
        _ => Vec::new(),
    };
    Ok(Outcome::Upgrade(
        Response::new(200, "text/event-stream", ""),
        Box::new(Upgrade::Feed {
            codec,
            collection: MEMORIES.to_string(),
            filter: (!all.is_empty()).then_some(Filter { all }),
            resume: resume.map(FeedPos::resume_point),
            missed,
            feed,
        }),
    ))
}

/// A memory change as this stream's event; `None` for other changes, types
/// the stream did not ask for, and a tombstone's final removal.
pub fn encode_event(event: &Event<'_>, types: EventTypes) -> Option<Bytes> {
    let Change::Mutation {
        collection,
        event: kind,
        items,
        ..
    } = &event.change
    else {
        return None;
    };
    if *collection != MEMORIES {
        return None;
    }
    let id = format!("event_{}", FeedPos::of_change(event.pos));
    let mut out = Vec::new();
    for (memory_id, record) in items {
        let Some(record) = record else { continue };
        let Some((name, data)) = memory_event(kind, memory_id, record) else {
            continue;
        };
        if types.contains(name) {
            out.extend_from_slice(&sse::event(Some(&id), name, data.to_string().as_bytes()));
        }
    }
    (!out.is_empty()).then(|| Bytes::from(out))
}

fn memory_event(kind: &str, id: &str, r: &Record) -> Option<(&'static str, J)> {
    let f = |k: &str| r.get(k).map_or(J::Null, |v| v.to_json().to_serde());
    if kind == "delete" {
        return None;
    }
    if !f("deleted_at").is_null() {
        return Some((
            "memory.deleted",
            json!({
                "id": id, "deleted_at": f("deleted_at"), "deleted_by": f("deleted_by"),
                "reason": f("reason"),
            }),
        ));
    }
    Some(if kind == "insert" {
        (
            "memory.created",
            json!({
                "id": id, "title": f("title"), "content": f("content"),
                "memory_type": f("memory_type"), "metadata": f("metadata"), "tags": f("tags"),
                "created_at": f("created_at"), "created_by": f("created_by"),
            }),
        )
    } else {
        (
            "memory.updated",
            json!({
                "id": id, "title": f("title"), "content": f("content"),
                "memory_type": f("memory_type"), "metadata": f("metadata"), "tags": f("tags"),
                "updated_at": f("updated_at"), "updated_by": f("updated_by"),
                "changes": f("changes"),
            }),
        )
    })
}

/// A resume position this server cannot honour, or a subscriber too slow to
/// keep: an `error` event (the stream goes on after a reset).
pub fn encode_notice(notice: &Notice<'_>) -> Bytes {
    match notice {
        Notice::Overflowed => error_event(
            None,
            "CONNECTION_ERROR",
            "the stream fell too far behind and is closed; reconnect with Last-Event-ID",
            5000,
        ),
        // Events go on after `upto`: the client may resume from here.
        Notice::Reset { upto, reason, .. } => error_event(
            Some(FeedPos::after(*upto, 0)),
            "RESUME_UNAVAILABLE",
            &format!("{reason}; events continue after {upto}"),
            0,
        ),
    }
}

/// Sends an event that is not a change to every stream that asked for its
/// type, positioned after the current batch; returns its position and bytes.
fn publish(server: &mut Server, name: &'static str, data: &J) -> (FeedPos, Bytes) {
    let lsn = server.last_lsn();
    let pos = server.feed_counter().next_after(lsn);
    let bytes = sse::event(
        Some(&format!("event_{pos}")),
        name,
        data.to_string().as_bytes(),
    );
    server.broadcast(lsn, |codec| match codec {
        EventCodec::Lanonasis(types) if types.contains(name) => Some(bytes.clone()),
        _ => None,
    });
    (pos, bytes)
}

/// Tells every stream that asked for `search.performed` about a search, and
/// keeps it for streams that resume.
pub fn publish_search(server: &mut Server, data: &J) {
    let (pos, bytes) = publish(server, "search.performed", data);
    server.feed_remember(pos, bytes);
}

/// Sends `system.health` (seed 002:160-179) to every stream that asked for
/// it. Numbers the process could not measure are null.
pub fn publish_health(server: &mut Server, h: &Health, now: Timestamp) {
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let status = if h.degraded { "degraded" } else { "healthy" };
    let data = json!({
        "status": status,
        "timestamp": iso(now),
        "metrics": {
            "cpu_usage": h.cpu_percent.map(round),
            "memory_usage": h.memory_percent.map(round),
            "response_time": round(h.mean_response_ms),
            "error_rate": round(h.error_percent),
        },
        "services": {"api": "healthy", "database": status, "search": "healthy"},
    });
    publish(server, "system.health", &data);
}
