//! `Server`: the state shared by all connections (engine, subscription hub,
//! auth, settings) and the entry points for parsed requests. The runtime keeps
//! it behind a lock; connection state machines (`conn`) call in and get replies
//! that say which LSN must be durable before their bytes may be sent.

use crate::api::{self, codec, embed, router, router::Route, Ctx};
use crate::auth::Auth;
use crate::config::Config;
use crate::engine::mutation;
use crate::engine::{Committed, Engine};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ConnId, Lsn};
use crate::realtime::events::EventPos;
use crate::realtime::hub::{Filter, Hub};
use crate::time::Timestamp;
use crate::wire::http::client::Outbound;
use crate::wire::http::{url, Limits, Request, Response};
use serde_json::json;
use std::time::Duration;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The ekoDB server version we answer to as, for clients that gate features on it.
pub const COMPAT_VERSION: &str = "0.80.0";

/// A response and the LSN that must be durable before it is released. Reads wait
/// for everything applied before them, so a client never sees data that a crash
/// could still take back.
#[derive(Debug)]
pub struct Reply {
    pub response: Response,
    pub wait_for: Lsn,
    /// The request switches the connection to another protocol.
    pub upgrade: Option<Upgrade>,
    /// The reply needs an outbound call first (`Server::finish_call`).
    pub call: Option<(Outbound, Call)>,
}

/// What an outbound call is for, to finish the reply when it returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Embed(embed::Job),
}

/// A protocol switch decided by a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Upgrade {
    WebSocket {
        accept: String,
    },
    Sse {
        collection: String,
        filter: Option<Filter>,
        resume: Option<EventPos>,
    },
}

#[derive(Debug)]
pub struct Server {
    pub engine: Engine,
    pub hub: Hub,
    auth: Auth,
    config: Config,
    durable: Lsn,
    storage_failure: Option<String>,
    clock: Option<fn() -> Timestamp>,
    /// Durability reports received (one per group commit): batches per sync is
    /// `last_lsn / syncs`.
    syncs: u64,
}

impl Server {
    /// `secret` signs tokens; `seed` drives id generation. Both come from the runtime.
    pub fn new(config: Config, secret: &[u8], seed: u64) -> Server {
        let auth = Auth::new(
            secret,
            &config.api_keys,
            Duration::from_secs(config.token_lifetime_secs.max(60)),
        );
        Server {
            engine: Engine::new(seed),
            hub: Hub::new(config.outbound_queue_bytes),
            auth,
            config,
            durable: Lsn::ZERO,
            storage_failure: None,
            clock: None,
            syncs: 0,
        }
    }

    /// Lets handlers re-read the wall clock to report how long they took
    /// (`execution_time_ms`). The runtime passes its clock; simulations don't.
    pub fn set_clock(&mut self, clock: fn() -> Timestamp) {
        self.clock = Some(clock);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_head_bytes: self.config.max_head_bytes,
            max_body_bytes: self.config.max_body_bytes,
            max_headers: 64,
        }
    }

    // ----- durability -------------------------------------------------------

    /// The next committed batch to persist.
    pub fn poll_log(&mut self) -> Option<Committed> {
        self.engine.poll_log()
    }

    /// The runtime made everything up to `lsn` durable. Returns the connections
    /// whose queued events just became deliverable (wake them).
    pub fn handle_durable(&mut self, lsn: Lsn) -> Vec<ConnId> {
        self.durable = self.durable.max(lsn);
        self.syncs += 1;
        self.hub.take_ready(self.durable)
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.durable
    }

    /// Storage failed: refuse writes from now on; replies waiting for batches that
    /// will never be durable are failed by their connections.
    pub fn handle_storage_failure(&mut self, message: String) {
        self.storage_failure.get_or_insert(message);
    }

    pub fn storage_failure(&self) -> Option<&str> {
        self.storage_failure.as_deref()
    }

    /// Applies a batch read back from the log (or a snapshot chunk) at startup.
    pub fn replay(&mut self, lsn: Lsn, batch: crate::engine::mutation::Batch<'_>) {
        self.engine.replay_decoded(lsn, batch);
    }

    /// Recovery is complete: everything replayed is durable.
    pub fn handle_recovered(&mut self, last: Lsn) {
        self.engine.set_last_lsn(last);
        self.durable = self.engine.last_lsn();
    }

    /// A connection is gone: drop its subscriptions and queued events.
    pub fn connection_closed(&mut self, conn: ConnId) {
        self.hub.close(conn);
    }

    // ----- timers -----------------------------------------------------------

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.storage_failure.is_some() {
            return None;
        }
        self.engine.next_deadline()
    }

    /// Sweeps expired records and keys.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.storage_failure.is_some() {
            return;
        }
        self.engine.sweep(now);
        self.finish_operation(now);
    }

    // ----- requests ---------------------------------------------------------

    /// Ends an operation: seals its mutations into a batch, publishes its change
    /// events, and returns the LSN its reply must wait for.
    pub fn finish_operation(&mut self, now: Timestamp) -> Lsn {
        match self.engine.commit(now) {
            Some(lsn) => {
                if !self.hub.is_idle() {
                    if let Some(batch) = self
                        .engine
                        .peek_committed(lsn)
                        .and_then(|p| mutation::decode(p).ok())
                    {
                        self.hub.publish(lsn, &batch, &self.engine);
                    }
                }
                lsn
            }
            None if self.storage_failure.is_some() => self.durable,
            None => self.engine.last_lsn(),
        }
    }

    pub fn handle_request(&mut self, req: &Request, now: Timestamp) -> Reply {
        let (response, upgrade, call) = match self.respond(req, now) {
            Ok(Respond::Now(r, u)) => (r, u, None),
            Ok(Respond::After(outbound, call)) => {
                (Response::new(0, "", ""), None, Some((outbound, call)))
            }
            Err(e) => (api::error_response(&e), None, None),
        };
        // Operations validate before they mutate, so anything journaled was applied
        // and must be logged even if the response is an error (a partial batch).
        let wait_for = self.finish_operation(now);
        Reply {
            response,
            wait_for,
            upgrade,
            call,
        }
    }

    /// Finishes a reply that waited for an outbound call.
    pub fn finish_call(
        &mut self,
        call: &Call,
        result: std::result::Result<Vec<u8>, String>,
    ) -> Response {
        let r = match call {
            Call::Embed(job) => embed::finish(job, result),
        };
        r.unwrap_or_else(|e| api::error_response(&e))
    }

    fn respond(&mut self, req: &Request, now: Timestamp) -> Result<Respond> {
        let segments = url::split_path(&req.path).map_err(Error::invalid)?;
        let route = router::route(&req.method, &segments)?;
        let ctx = Ctx::new(req, now)?;
        match route {
            Route::Health => return Ok(Respond::Now(self.health(&ctx)?, None)),
            Route::AuthToken => return Ok(Respond::Now(self.token(&ctx)?, None)),
            _ => {}
        }
        let bearer = req.header("authorization");
        match (bearer, ctx.param("token")) {
            (None, Some(t)) => self.auth.verify(t, now),
            _ => self.auth.check_bearer(bearer, now),
        }?;
        match route {
            Route::WebSocket => {
                let upgrade = websocket_upgrade(req)?;
                Ok(Respond::Now(Response::new(101, "", ""), Some(upgrade)))
            }
            Route::Subscribe(collection) => {
                crate::engine::validate_name("collection", &collection)?;
                let filter = match (ctx.param("filter_field"), ctx.param("filter_value")) {
                    (Some(f), Some(v)) if !f.is_empty() => Some(Filter {
                        field: f.to_string(),
                        value: v.to_string(),
                    }),
                    _ => None,
                };
                let resume = match req.header("last-event-id").or(ctx.param("last_event_id")) {
                    None | Some("") => None,
                    Some(text) => Some(EventPos::parse(text).ok_or_else(|| {
                        Error::invalid(format!(
                            "Last-Event-ID `{text}` is not an event id (like 42 or 42:1)"
                        ))
                    })?),
                };
                Ok(Respond::Now(
                    Response::new(200, "text/event-stream", ""),
                    Some(Upgrade::Sse {
                        collection,
                        filter,
                        resume,
                    }),
                ))
            }
            Route::Embed => match embed::start(&self.config, &ctx)? {
                embed::Plan::Done(r) => Ok(Respond::Now(r, None)),
                embed::Plan::Call(outbound, job) => Ok(Respond::After(outbound, Call::Embed(job))),
            },
            route => Ok(Respond::Now(self.dispatch(&ctx, route)?, None)),
        }
    }

    /// Runs a routed data-plane call (REST, or a WebSocket message mapped to one).
    pub fn dispatch(&mut self, ctx: &Ctx<'_>, route: Route) -> Result<Response> {
        if route.is_write() {
            if let Some(why) = &self.storage_failure {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("storage is read-only after an I/O error ({why}); restart the server"),
                ));
            }
        }
        let ctx = Ctx {
            clock: self.clock,
            ..ctx.clone()
        };
        api::dispatch(&mut self.engine, &ctx, route)
    }

    fn health(&self, ctx: &Ctx<'_>) -> Result<Response> {
        let degraded = self.storage_failure.is_some();
        ctx.ok_json(&json!({
            "status": if degraded { "degraded" } else { "ok" },
            "version": COMPAT_VERSION,
            "server": "tidepool",
            "server_version": VERSION,
            "integrity_ok": !degraded,
            "log": {
                "last_lsn": self.engine.last_lsn().0,
                "durable_lsn": self.durable.0,
                "syncs": self.syncs,
            },
            "subscribers": self.hub.subscriber_count(),
        }))
    }

    fn token(&self, ctx: &Ctx<'_>) -> Result<Response> {
        let body = codec::decode_body(ctx.req)?;
        let key = body
            .get("api_key")
            .and_then(|k| k.as_str())
            .ok_or_else(|| Error::invalid("the body needs `api_key`"))?;
        let token = self.auth.issue(key, ctx.now)?;
        ctx.ok_json(&json!({ "token": token }))
    }
}

enum Respond {
    Now(Response, Option<Upgrade>),
    After(Outbound, Call),
}

/// Validates an RFC 6455 upgrade request (no subprotocol or extension required).
fn websocket_upgrade(req: &Request) -> Result<Upgrade> {
    if !crate::wire::ws::asks_for_upgrade(req)
        || !crate::wire::ws::has_token(req, "connection", "upgrade")
    {
        return Err(Error::new(
            ErrorKind::Invalid,
            "this endpoint speaks WebSocket: send Upgrade: websocket and Connection: Upgrade",
        ));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(Error::invalid("Sec-WebSocket-Version must be 13")
            .with_header("Sec-WebSocket-Version", "13"));
    }
    let key = req
        .header("sec-websocket-key")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Error::invalid("missing Sec-WebSocket-Key"))?;
    Ok(Upgrade::WebSocket {
        accept: crate::wire::ws::accept_key(key),
    })
}
