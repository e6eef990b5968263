//! The ekoDB REST API (spec parts 1-14): one route table (`routes`), content
//! negotiation (`codec`), and handlers per area. Each handler reads its
//! arguments from a `Ctx` and answers in the negotiated format; the ekoDB
//! WebSocket dialect calls the same handlers with message bodies, so a
//! WebSocket `Insert` answers exactly what `POST /api/insert` does.
//! Errors become `{"error","code","message"}` JSON bodies.

pub mod access;
pub mod assist;
pub mod backup;
pub mod chat;
pub mod codec;
pub mod collections;
pub mod console;
mod ctx;
pub mod embed;
pub mod functions;
pub mod keys;
pub mod kv;
pub mod origins;
pub mod records;
pub mod routes;
pub mod schedules;
pub mod search;
pub mod system;
pub mod transfer;
pub mod txn;

pub use ctx::{ok_in, Ctx};

use crate::dialect::mounts::Listener;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::ConnId;
use crate::server::calls::ReplyKind;
use crate::server::pending::Ticket;
use crate::server::rate::Quota;
use crate::server::{Server, Upgrade};
use crate::time::Timestamp;
use crate::wire::http::client::OutboundRequest;
use crate::wire::http::{url, Request, Response};
use routes::{Handler, Scope};

/// What a route produced.
#[derive(Debug)]
pub enum Outcome {
    /// The response, ready.
    Reply(Response),
    /// The response switches the connection to another protocol.
    Upgrade(Response, Box<Upgrade>),
    /// The response needs an outbound call first.
    Call(OutboundRequest, ReplyKind),
    /// The response comes later, for this ticket (`Server::fulfil`).
    Pending(Ticket),
}

/// The JSON error response for an error.
pub fn error_response(e: &Error) -> Response {
    let mut r = if e.details.is_empty() {
        Response::error(e.status(), &e.message)
    } else {
        let mut body =
            serde_json::json!({"error": e.message, "code": e.status(), "message": e.message});
        for (k, v) in &e.details {
            body[*k] = v.clone();
        }
        Response::json(e.status(), serde_json::to_vec(&body).unwrap_or_default())
    };
    if e.kind == ErrorKind::Unavailable {
        r = r.with_header("Retry-After", "1");
    }
    for (name, value) in &e.headers {
        r = r.with_header(name, value.clone());
    }
    r
}

/// Bodies an unauthenticated route (token exchange, health) reads at most:
/// a client that proved nothing cannot make the server hold or decode more.
pub const PUBLIC_BODY_LIMIT: usize = 64 * 1024;

/// Answers one REST request: finds its row, checks who may call it and whether
/// storage takes writes, and runs its handler. The quota its caller spent
/// goes with the outcome, for the reply's rate-limit headers (also a reply
/// that comes later).
/// Answers `req`; `route_seen` is set to the pattern of the route it
/// matched (for `/metrics`), even when the answer is an error. Requests
/// answered before routing (a refused Host, a CORS preflight) leave it
/// unset.
pub fn respond(
    server: &mut Server,
    conn: ConnId,
    req: &Request,
    body: Option<Result<serde_json::Value>>,
    now: Timestamp,
    route_seen: &mut Option<&'static str>,
) -> Result<(Outcome, Option<Quota>)> {
    origins::check_host(server.config(), req)?;
    if let Some(answer) = origins::preflight(server.config(), req) {
        return Ok((Outcome::Reply(answer), None));
    }
    if crate::wire::ws::asks_for_upgrade(req) {
        origins::check_upgrade_origin(server.config(), req)?;
    }
    let (route, args) = route_for(server, conn, req)?;
    *route_seen = Some(route.path);
    let mut ctx = Ctx::http(req, now)?.with_args(args).with_decoded_body(body);
    ctx.conn = Some(conn);
    ctx.clock = server.clock();
    let ip = server.peer_of(conn).ip;
    let quota = if route.scope == Scope::Public {
        server.take_rate(None, ip, now)?
    } else {
        let who = authorize(server, conn, route, ctx.header("authorization"), &ctx, now)?;
        ctx.set_principal(who.clone());
        let quota = server.take_rate(Some(&who.key_id), ip, now)?;
        if let Err(e) = permit(route, &ctx) {
            let key = ctx.key_id();
            let what = format!(
                "denied: {} {} ({})",
                req.method.as_str(),
                req.path,
                e.message
            );
            server.security_event(&ctx, key, &what);
            return Err(e);
        }
        quota
    };
    if let Some(tx) = ctx.transaction() {
        if !routes::IN_TRANSACTION.contains(&route.path) {
            return Err(Error::invalid(format!(
                "{} {} does not run inside a transaction (only record inserts, updates, deletes, batches and finds do); send it without `transaction_id`",
                req.method.as_str(),
                route.path
            )));
        }
        server.engine_mut().tx_touch(tx, ctx.key_id(), now)?;
    }
    if route.path.starts_with("/api/transactions/{tx}") {
        server
            .engine_mut()
            .tx_touch(ctx.arg("tx"), ctx.key_id(), now)?;
    }
    if route.writes {
        server.check_writable()?;
    }
    let outcome = match route.handler {
        Handler::Data(f) => f(server.engine_mut(), &ctx).map(Outcome::Reply),
        Handler::Server(f) => f(server, &ctx),
    }?;
    Ok((outcome, quota))
}

/// Decides, from a request's head alone, whether its large body (`size`
/// bytes, `None` when chunked) may be read, and up to how many bytes: an
/// unknown route, a missing or bad token, or a body over an unauthenticated
/// route's small limit is answered before the body arrives.
pub fn admit_body(
    server: &mut Server,
    conn: ConnId,
    head: &Request,
    size: Option<usize>,
    now: Timestamp,
) -> Result<usize> {
    origins::check_host(server.config(), head)?;
    let (route, args) = route_for(server, conn, head)?;
    if route.scope == Scope::Public {
        if size.is_some_and(|n| n > PUBLIC_BODY_LIMIT) {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "{} takes a body of at most {PUBLIC_BODY_LIMIT} bytes",
                    route.path
                ),
            ));
        }
        return Ok(PUBLIC_BODY_LIMIT);
    }
    let mut ctx = Ctx::http(head, now)?.with_args(args);
    let who = authorize(server, conn, route, head.header("authorization"), &ctx, now)?;
    ctx.set_principal(who);
    permit(route, &ctx)?;
    Ok(server.config().max_body_bytes)
}

/// The route table's permission check, in one place: what a route's scope
/// demands of the caller's grants. Handlers of `AnyKey` routes limit what
/// they show or change further (`access`).
pub fn permit(route: &routes::Route, ctx: &Ctx<'_>) -> Result<()> {
    if route.scope == Scope::Admin {
        return ctx.access.require_admin(route.path);
    }
    let args = [
        ("collection", route.path.contains("{collection}")),
        ("key", route.path.contains("{key}")),
    ];
    let named: Vec<(&str, &str)> = args
        .iter()
        .filter(|(_, present)| *present)
        .map(|(name, _)| (*name, ctx.arg(name)))
        .collect();
    permit_args(route.scope, &ctx.access, &named)
}

/// `permit` for a call whose path variables are `args`: a `Read` or `Write`
/// scope needs the grant on every `collection` and `key` named.
pub fn permit_args(
    scope: Scope,
    access: &crate::auth::grants::Access,
    args: &[(&str, &str)],
) -> Result<()> {
    use crate::auth::grants::Action;
    let action = match scope {
        Scope::Public | Scope::AnyKey => return Ok(()),
        Scope::Admin => return access.require_admin("this call"),
        Scope::Read => Action::Read,
        Scope::Write => Action::Write,
    };
    for (name, value) in args {
        match *name {
            "collection" => {
                access.collection(value, action)?;
            }
            "key" => access.kv(value, action)?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks the caller's token for a route that needs one. A stream's
/// credential is bound to the connection (it may close when it expires).
fn authorize(
    server: &mut Server,
    conn: ConnId,
    route: &routes::Route,
    authorization: Option<&str>,
    ctx: &Ctx,
    now: Timestamp,
) -> Result<crate::auth::Principal> {
    // `?token=` is how browsers' EventSource and WebSocket pass a token;
    // elsewhere it would only put tokens in logs and histories. The routes
    // that take it are exactly the streams.
    let stream = routes::takes_query_token(route);
    let query_token = stream.then(|| ctx.param("token")).flatten();
    let principal = server.authenticate(authorization, query_token, now)?;
    if stream {
        server.bind_stream_credential(conn, &principal);
    }
    Ok(principal)
}

/// The route table's row for a request, after `--mounts` moved endpoints.
fn route_for(
    server: &Server,
    conn: ConnId,
    req: &Request,
) -> Result<(&'static routes::Route, routes::Args)> {
    let segments = url::split_path(&req.path).map_err(Error::invalid)?;
    // Mounts match the decoded path, so `/%77s` is `/ws` here as it is to
    // the route table.
    let listener = server.peer_of(conn).listener;
    if listener == Listener::Main && server.config().mounts.moves_nothing() {
        return routes::resolve(&req.method, &segments);
    }
    let decoded = format!("/{}", segments.join("/"));
    let segments = match server.config().mounts.resolve(listener, &decoded) {
        Some(path) if path == decoded => segments,
        Some(path) => path
            .trim_start_matches('/')
            .split('/')
            .map(str::to_string)
            .collect(),
        None => {
            let why = match listener {
                Listener::Eva => "this listener serves EVA only (/ws, /health)",
                Listener::Main => "its endpoint was moved with --mounts",
            };
            return Err(Error::not_found(format!(
                "no route for {} {}: {why}",
                req.method.as_str(),
                req.path
            )));
        }
    };
    routes::resolve(&req.method, &segments)
}
