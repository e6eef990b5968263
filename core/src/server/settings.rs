//! The settings an admin may change while the server runs (`GET` / `PUT
//! /api/config`, spec 14.6). A change applies at once (limits of
//! connections to new connections) and is stored as an internal record, so it
//! is logged like any write and outlives a restart: stored values win over
//! the command line until changed again. Everything else (addresses, the data
//! directory, the fsync policy) is fixed at start and reported read-only.

use super::Server;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::value::Value;
use serde_json::{json, Map, Value as J};

/// The internal collection holding the changed settings (one record).
pub const SETTINGS: &str = "settings__ek0_tidepool";
const RECORD: &str = "config";

/// Where a changeable number lives in the configuration.
#[derive(Clone, Copy)]
enum Field {
    U64(fn(&mut Config) -> &mut u64),
    Usize(fn(&mut Config) -> &mut usize),
}

/// A changeable number: its name on the wire, bounds, and where it lives.
struct Limit {
    name: &'static str,
    min: u64,
    max: u64,
    field: Field,
}

impl Limit {
    fn get(&self, config: &mut Config) -> u64 {
        match self.field {
            Field::U64(f) => *f(config),
            Field::Usize(f) => *f(config) as u64,
        }
    }

    fn set(&self, config: &mut Config, value: u64) {
        match self.field {
            Field::U64(f) => *f(config) = value,
            Field::Usize(f) => *f(config) = value as usize,
        }
    }
}

const fn limit(name: &'static str, min: u64, max: u64, field: Field) -> Limit {
    Limit {
        name,
        min,
        max,
        field,
    }
}

#[rustfmt::skip]
const LIMITS: &[Limit] = &[
    limit("request_head_timeout_secs", 1, 3600, Field::U64(|c| &mut c.request_head_timeout_secs)),
    limit("request_body_timeout_secs", 1, 86_400, Field::U64(|c| &mut c.request_body_timeout_secs)),
    limit("idle_timeout_secs", 1, 86_400, Field::U64(|c| &mut c.idle_timeout_secs)),
    limit("rate_limit_per_key", 0, 1_000_000_000, Field::U64(|c| &mut c.rate_limit_per_key)),
    limit("rate_limit_per_address", 0, 1_000_000_000, Field::U64(|c| &mut c.rate_limit_per_address)),
    limit("max_body_bytes", 1024, 1 << 34, Field::Usize(|c| &mut c.max_body_bytes)),
    limit("max_body_bytes_in_flight", 1024, 1 << 36, Field::Usize(|c| &mut c.max_body_bytes_in_flight)),
    limit("max_connections_per_address", 1, 10_000_000, Field::Usize(|c| &mut c.max_connections_per_address)),
    limit("max_query_work", 1000, 1 << 40, Field::U64(|c| &mut c.max_query_work)),
    limit("max_query_time_secs", 1, 86_400, Field::U64(|c| &mut c.max_query_time_secs)),
    limit("max_streams_per_key", 0, 10_000_000, Field::Usize(|c| &mut c.max_streams_per_key)),
    limit("ws_max_message_bytes", 1024, 1 << 34, Field::Usize(|c| &mut c.ws_max_message_bytes)),
];

const DURABLE: &str = "durable_operations";

impl Server {
    /// The settings document: every changeable value, and the fixed ones
    /// that explain them.
    pub fn settings(&self) -> J {
        let mut config = self.config.clone();
        let mut o = Map::new();
        o.insert(DURABLE.into(), J::Bool(self.durable_acks));
        for l in LIMITS {
            o.insert(l.name.into(), json!(l.get(&mut config)));
        }
        o.insert(
            "fixed".into(),
            json!({
                "fsync": self.config.fsync,
                "listen": self.config.listen,
                "max_connections": self.config.max_connections,
                "token_lifetime_secs": self.config.token_lifetime_secs,
                "version": env!("CARGO_PKG_VERSION"),
            }),
        );
        J::Object(o)
    }

    /// Applies a change (all of it, or nothing when any value is refused)
    /// and stores what was changed.
    pub fn change_settings(&mut self, change: &J, now: Timestamp) -> Result<J> {
        let J::Object(change) = change else {
            return Err(Error::invalid("a configuration change is a JSON object"));
        };
        let mut config = self.config.clone();
        let mut durable = self.durable_acks;
        for (name, value) in change {
            apply(&mut config, &mut durable, name, value)?;
        }
        let mut stored = self.stored_settings(now);
        for (name, value) in change {
            stored.insert(name.clone(), value.clone());
        }
        let text = Value::String(J::Object(stored).to_string().into());
        self.engine
            .put_internal(SETTINGS, RECORD, vec![("settings", text)], now)?;
        self.config = config;
        self.durable_acks = durable;
        self.engine.set_query_work(self.config.max_query_work);
        Ok(self.settings())
    }

    /// The changes stored by earlier `PUT /api/config` calls.
    fn stored_settings(&self, now: Timestamp) -> Map<String, J> {
        let found = self.engine.get_internal(SETTINGS, RECORD, now);
        match found.and_then(|f| f.record.get("settings")) {
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_default(),
            _ => Map::new(),
        }
    }

    /// Re-applies stored changes after recovery. A value that is no longer
    /// acceptable is skipped and said.
    pub(super) fn restore_settings(&mut self, now: Timestamp) {
        let stored = self.stored_settings(now);
        if stored.is_empty() {
            return;
        }
        let mut config = self.config.clone();
        let mut durable = self.durable_acks;
        for (name, value) in &stored {
            if let Err(e) = apply(&mut config, &mut durable, name, value) {
                self.note(format!("config: stored setting skipped: {}", e.message));
            }
        }
        self.config = config;
        self.durable_acks = durable;
        self.engine.set_query_work(self.config.max_query_work);
        self.note(format!(
            "config: {} setting(s) changed through /api/config apply (they win over flags)",
            stored.len()
        ));
    }
}

fn apply(config: &mut Config, durable: &mut bool, name: &str, value: &J) -> Result<()> {
    if name == DURABLE {
        *durable = value
            .as_bool()
            .ok_or_else(|| Error::invalid(format!("`{DURABLE}` is a boolean")))?;
        return Ok(());
    }
    if let Some(l) = LIMITS.iter().find(|l| l.name == name) {
        let n = value
            .as_u64()
            .filter(|n| (l.min..=l.max).contains(n))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "`{name}` is an integer from {} to {}",
                    l.min, l.max
                ))
            })?;
        l.set(config, n);
        return Ok(());
    }
    let known: Vec<&str> = std::iter::once(DURABLE)
        .chain(LIMITS.iter().map(|l| l.name))
        .collect();
    Err(Error::invalid(format!(
        "`{name}` cannot be changed while the server runs (changeable: {})",
        known.join(", ")
    )))
}
