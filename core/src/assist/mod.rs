//! Goals, goal templates, tasks and agents (spec F1-F4): free-form JSON
//! documents the server stores, stamps (`id`, `created_at`, `updated_at`)
//! and moves through a small, lenient status machine (any action from any
//! state). Each kind is an internal collection of records whose `document`
//! field holds the JSON text, so they are logged, replayed after a crash and
//! compacted like any record.
//!
//! Pure apart from the engine: every change takes `now`. The wire (list
//! keys, `{"ok": true}`) is `dialect::rest::assist`.

pub mod goals;
pub mod tasks;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::value::Value;
use serde_json::{Map, Value as J};

/// One stored document.
pub type Doc = Map<String, J>;

/// Largest document stored (its JSON text).
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Keys the server stamps; a client's values for them are ignored.
const STAMPED: &[&str] = &["id", "created_at", "updated_at"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Goal,
    Template,
    Task,
    Agent,
}

impl Kind {
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Goal => "goals__ek0_tidepool",
            Kind::Template => "goal_templates__ek0_tidepool",
            Kind::Task => "tasks__ek0_tidepool",
            Kind::Agent => "agents__ek0_tidepool",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Kind::Goal => "goal",
            Kind::Template => "goal template",
            Kind::Task => "task",
            Kind::Agent => "agent",
        }
    }

    fn missing(self, id: &str) -> Error {
        Error::not_found(format!("{} `{id}` not found", self.noun()))
    }
}

/// A request body as a document (`null` or empty: `{}`).
pub fn object(body: &J) -> Result<Doc> {
    match body {
        J::Object(o) => Ok(o.clone()),
        J::Null => Ok(Map::new()),
        _ => Err(Error::invalid("the body must be a JSON object")),
    }
}

fn stamp(now: Timestamp) -> J {
    J::String(now.to_rfc3339_z())
}

/// One document; 404 if there is none with that id.
pub fn load(engine: &Engine, kind: Kind, id: &str, now: Timestamp) -> Result<Doc> {
    engine
        .get_internal(kind.collection(), id, now)
        .and_then(|f| match f.record.get("document") {
            Some(Value::String(s)) => serde_json::from_str::<Doc>(s).ok(),
            _ => None,
        })
        .ok_or_else(|| kind.missing(id))
}

/// Every document of a kind, oldest first.
pub fn list(engine: &Engine, kind: Kind, now: Timestamp) -> Vec<Doc> {
    let mut docs: Vec<Doc> = engine
        .with_id_prefix(kind.collection(), "", now)
        .filter_map(|f| match f.record.get("document") {
            Some(Value::String(s)) => serde_json::from_str::<Doc>(s).ok(),
            _ => None,
        })
        .collect();
    let key = |d: &Doc| {
        (
            d.get("created_at")
                .and_then(J::as_str)
                .unwrap_or("")
                .to_string(),
            d.get("id").and_then(J::as_str).unwrap_or("").to_string(),
        )
    };
    docs.sort_by_key(key);
    docs
}

/// Stores a document (it carries its `id`), stamping `updated_at`.
pub fn save(engine: &mut Engine, kind: Kind, doc: &mut Doc, now: Timestamp) -> Result<()> {
    doc.insert("updated_at".into(), stamp(now));
    let id = doc
        .get("id")
        .and_then(J::as_str)
        .map(str::to_string)
        .ok_or_else(|| Error::invalid("a stored document needs an id"))?;
    let text = serde_json::to_string(doc).map_err(|e| Error::invalid(e.to_string()))?;
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::invalid(format!(
            "a {} is at most {MAX_DOCUMENT_BYTES} bytes of JSON",
            kind.noun()
        )));
    }
    engine.put_internal(
        kind.collection(),
        &id,
        vec![("document", Value::String(text.into()))],
        now,
    )
}

/// A new document from a client's body: stamped, initialised per kind,
/// stored.
pub fn create(engine: &mut Engine, kind: Kind, body: &J, now: Timestamp) -> Result<Doc> {
    let mut doc = Map::new();
    for (k, v) in object(body)? {
        if !STAMPED.contains(&k.as_str()) && !v.is_null() {
            doc.insert(k, v);
        }
    }
    doc.insert("id".into(), J::String(engine.token(16)));
    doc.insert("created_at".into(), stamp(now));
    match kind {
        Kind::Goal => goals::init(&mut doc)?,
        Kind::Task => tasks::init(&mut doc, now)?,
        Kind::Template => goals::normalize_steps(&mut doc)?,
        Kind::Agent => {}
    }
    save(engine, kind, &mut doc, now)?;
    Ok(doc)
}

/// A partial update: the keys given replace the stored ones (`null` counts
/// as absent; the stamps cannot be changed).
pub fn update(engine: &mut Engine, kind: Kind, id: &str, body: &J, now: Timestamp) -> Result<Doc> {
    let mut doc = load(engine, kind, id, now)?;
    let patch = object(body)?;
    for (k, v) in &patch {
        if !STAMPED.contains(&k.as_str()) && !v.is_null() {
            doc.insert(k.clone(), v.clone());
        }
    }
    match kind {
        Kind::Goal | Kind::Template => goals::normalize_steps(&mut doc)?,
        Kind::Task => tasks::updated(&mut doc, &patch, now)?,
        Kind::Agent => {}
    }
    save(engine, kind, &mut doc, now)?;
    Ok(doc)
}

/// Changes a stored document with `change` and stores it.
pub fn change(
    engine: &mut Engine,
    kind: Kind,
    id: &str,
    now: Timestamp,
    change: impl FnOnce(&mut Doc) -> Result<()>,
) -> Result<Doc> {
    let mut doc = load(engine, kind, id, now)?;
    change(&mut doc)?;
    save(engine, kind, &mut doc, now)?;
    Ok(doc)
}

pub fn delete(engine: &mut Engine, kind: Kind, id: &str, now: Timestamp) -> Result<()> {
    load(engine, kind, id, now)?;
    engine.purge(kind.collection(), id);
    Ok(())
}

/// Sets `key` to `value` unless the client sent none (`null` or absent).
pub(crate) fn keep(doc: &mut Doc, key: &str, value: Option<&J>) {
    if let Some(v) = value.filter(|v| !v.is_null()) {
        doc.insert(key.to_string(), v.clone());
    }
}

/// The agents named `name`, oldest first (names are not unique).
pub fn agents_named(engine: &Engine, name: &str, now: Timestamp) -> Vec<Doc> {
    list(engine, Kind::Agent, now)
        .into_iter()
        .filter(|d| d.get("name").and_then(J::as_str) == Some(name))
        .collect()
}

/// The agents of a deployment.
pub fn agents_of_deployment(engine: &Engine, deployment: &str, now: Timestamp) -> Vec<Doc> {
    list(engine, Kind::Agent, now)
        .into_iter()
        .filter(|d| d.get("deployment_id").and_then(J::as_str) == Some(deployment))
        .collect()
}
