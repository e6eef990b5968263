//! The routes that need the server rather than the engine alone: health, token
//! exchange, the protocol switches (WebSocket, SSE) and embeddings (which may
//! call a provider).

use super::{embed, Ctx, Outcome};
use crate::dialect::{EventCodec, WsSession};
use crate::error::{Error, ErrorKind, Result};
use crate::realtime::events::EventPos;
use crate::realtime::hub::Filter;
use crate::server::calls::ReplyKind;
use crate::server::{Server, Upgrade, COMPAT_VERSION, VERSION};
use crate::wire::http::Response;
use crate::wire::ws;
use serde_json::json;

/// `GET /metrics`: the Prometheus exposition, for whom `--metrics` allows
/// (an admin key's bearer token by default).
pub fn metrics(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    use crate::server::metrics::MetricsAccess;
    match server.config().metrics {
        MetricsAccess::Off => {
            return Err(Error::not_found(
                "metrics are turned off on this server (--metrics off)",
            ))
        }
        MetricsAccess::Public => {}
        MetricsAccess::Admin => server
            .authenticate(ctx.header("authorization"), None, ctx.now)?
            .access
            .require_admin("reading /metrics (or start the server with --metrics public)")?,
    }
    let text = server.metrics_text(ctx.now);
    Ok(Outcome::Reply(Response::new(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        text,
    )))
}

pub fn health(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let degraded = server.storage_failure().is_some();
    let stats = server.stats();
    ctx.ok_json(&json!({
        "status": if degraded { "degraded" } else { "ok" },
        "version": COMPAT_VERSION,
        "server": "tidepool",
        "server_version": VERSION,
        "integrity_ok": !degraded,
        "log": {
            "last_lsn": stats.last_lsn.0,
            "durable_lsn": stats.durable_lsn.0,
            "syncs": stats.syncs,
        },
        "subscribers": stats.subscribers,
    }))
    .map(Outcome::Reply)
}

pub fn token(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let body = ctx.body()?;
    let key = body
        .get("api_key")
        .and_then(|k| k.as_str())
        .ok_or_else(|| Error::invalid("the body needs `api_key`"))?;
    let ip = ctx.conn.and_then(|c| server.peer_of(c).ip);
    server.check_guesses(ip, ctx.now)?;
    let token = server.issue_token(key, ctx.now).inspect_err(|e| {
        if e.kind == ErrorKind::Unauthorized {
            server.failed_guess(ip, ctx.now);
            server.security_event(ctx, "", "failed login: wrong API key");
        }
    })?;
    ctx.ok_json(&json!({ "token": token })).map(Outcome::Reply)
}

/// Validates an RFC 6455 upgrade request (no subprotocol or extension
/// required) and answers with its accept key.
pub fn handshake(ctx: &Ctx<'_>) -> Result<String> {
    if !ws::lists_token(ctx.header("upgrade"), "websocket")
        || !ws::lists_token(ctx.header("connection"), "upgrade")
    {
        return Err(Error::new(
            ErrorKind::Invalid,
            "this endpoint speaks WebSocket: send Upgrade: websocket and Connection: Upgrade",
        ));
    }
    if ctx.header("sec-websocket-version") != Some("13") {
        return Err(Error::invalid("Sec-WebSocket-Version must be 13")
            .with_header("Sec-WebSocket-Version", "13"));
    }
    let key = ctx
        .header("sec-websocket-key")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Error::invalid("missing Sec-WebSocket-Key"))?;
    Ok(ws::accept_key(key))
}

/// Switches to a WebSocket speaking `session`'s dialect.
pub fn upgrade_to(ctx: &Ctx<'_>, session: WsSession, protocol: Option<String>) -> Result<Outcome> {
    Ok(Outcome::Upgrade(
        Response::new(101, "", ""),
        Box::new(Upgrade::WebSocket {
            accept: handshake(ctx)?,
            protocol,
            session,
        }),
    ))
}

/// ekoDB's streams, WebSocket and SSE, count together against their key's
/// `--max-streams-per-key` under this one claim.
const STREAM_CLAIM: EventCodec = EventCodec::EkodbSse;

/// Counts a new ekoDB stream against its key's limit (released when the
/// connection closes), or refuses it with 429. The claim also records whose
/// stream it is, so revoking the key ends it.
fn claim_stream(server: &mut Server, ctx: &Ctx<'_>) -> Result<()> {
    let Some(conn) = ctx.conn else {
        return Ok(());
    };
    let limit = match server.config().max_streams_per_key {
        0 => usize::MAX,
        n => n,
    };
    if server.socket_claim(conn, STREAM_CLAIM, ctx.key_id(), limit) {
        return Ok(());
    }
    server.security_event(
        ctx,
        ctx.key_id(),
        "stream refused: the key's streams are all open",
    );
    Err(Error::new(
        ErrorKind::TooManyRequests,
        format!(
            "this key already has {limit} WebSocket and SSE streams open (--max-streams-per-key); close one first"
        ),
    ))
}

/// `GET /api/ws`: the ekoDB WebSocket protocol.
pub fn websocket(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let key_id = ctx.principal.as_ref().map(|p| p.key_id.clone());
    let session = crate::dialect::ekodb_ws::Session::new(ctx.access.clone(), key_id);
    // The handshake is checked first, so a malformed upgrade holds no claim.
    let upgrade = upgrade_to(ctx, WsSession::Ekodb(session), None)?;
    claim_stream(server, ctx)?;
    Ok(upgrade)
}

/// `GET /api/subscribe/{collection}`: switches to an SSE stream of that
/// collection's changes, resuming after `Last-Event-ID` when given.
pub fn subscribe(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let collection = ctx.arg("collection").to_string();
    crate::engine::validate_name("collection", &collection)?;
    super::access::check_whole_records(&ctx.access, &collection)?;
    let filter = match (ctx.param("filter_field"), ctx.param("filter_value")) {
        (Some(f), Some(v)) if !f.is_empty() => Some(Filter::equals(f, v)),
        _ => None,
    };
    let resume = match ctx.header("last-event-id").or(ctx.param("last_event_id")) {
        None | Some("") => None,
        Some(text) => Some(EventPos::parse(text).ok_or_else(|| {
            Error::invalid(format!(
                "Last-Event-ID `{text}` is not an event id (like 42 or 42:1)"
            ))
        })?),
    };
    claim_stream(server, ctx)?;
    Ok(Outcome::Upgrade(
        Response::new(200, "text/event-stream", ""),
        Box::new(Upgrade::Sse {
            collection,
            filter,
            resume,
        }),
    ))
}

/// `GET /api/config`: the settings (spec 14.6).
pub fn config(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    ctx.ok_json(&server.settings()).map(Outcome::Reply)
}

/// `PUT /api/config`: changes settings, all or none; answers them all.
pub fn change_config(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let change = ctx.body()?;
    let after = server.change_settings(&change, ctx.now)?;
    let by = ctx.key_id();
    let names: Vec<&str> = change
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    server.security_event(ctx, by, &format!("changed settings: {}", names.join(", ")));
    ctx.ok_json(&after).map(Outcome::Reply)
}

pub fn embed(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    match embed::start(server.config(), ctx)? {
        embed::Plan::Done(r) => Ok(Outcome::Reply(r)),
        embed::Plan::Call(request, job) => Ok(Outcome::Call(request, ReplyKind::Embed(job))),
    }
}
