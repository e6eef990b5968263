//! `Server`: the state shared by all connections (engine, auth, settings) and the
//! one entry point for a parsed HTTP request. The runtime keeps it behind a lock;
//! connection state machines (`conn`) call in with requests and get replies that
//! say which LSN must be durable before the bytes may be sent.

use crate::api::{self, codec, router, router::Route, Ctx};
use crate::auth::Auth;
use crate::config::Config;
use crate::engine::{Committed, Engine};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{url, Limits, Request, Response};
use crate::ids::Lsn;
use crate::time::Timestamp;
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
}

#[derive(Debug)]
pub struct Server {
    pub engine: Engine,
    auth: Auth,
    config: Config,
    durable: Lsn,
    storage_failure: Option<String>,
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
            auth,
            config,
            durable: Lsn::ZERO,
            storage_failure: None,
        }
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

    /// The runtime made everything up to `lsn` durable.
    pub fn handle_durable(&mut self, lsn: Lsn) {
        self.durable = self.durable.max(lsn);
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

    /// Recovery is complete: everything replayed is durable.
    pub fn handle_recovered(&mut self, last: Lsn) {
        self.engine.set_last_lsn(last);
        self.durable = self.engine.last_lsn();
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
        self.engine.commit(now);
    }

    // ----- requests ---------------------------------------------------------

    pub fn handle_request(&mut self, req: &Request, now: Timestamp) -> Reply {
        let response = self
            .respond(req, now)
            .unwrap_or_else(|e| api::error_response(&e));
        // Operations validate before they mutate, so anything journaled was applied
        // and must be logged even if the response is an error (a partial batch).
        let wait_for = match self.engine.commit(now) {
            Some(lsn) => lsn,
            None if self.storage_failure.is_some() => self.durable,
            None => self.engine.last_lsn(),
        };
        Reply { response, wait_for }
    }

    fn respond(&mut self, req: &Request, now: Timestamp) -> Result<Response> {
        let segments = url::split_path(&req.path).map_err(Error::invalid)?;
        let route = router::route(&req.method, &segments)?;
        let ctx = Ctx::new(req, now)?;
        match route {
            Route::Health => return self.health(&ctx),
            Route::AuthToken => return self.token(&ctx),
            _ => {}
        }
        if !route.is_public() {
            let bearer = req.header("authorization");
            let principal = match (bearer, ctx.param("token")) {
                (None, Some(t)) => self.auth.verify(t, now),
                _ => self.auth.check_bearer(bearer, now),
            };
            principal?;
        }
        if route.is_write() {
            if let Some(why) = &self.storage_failure {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("storage is read-only after an I/O error ({why}); restart the server"),
                ));
            }
        }
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
