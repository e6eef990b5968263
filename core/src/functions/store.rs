//! Stored definitions live in an internal collection (one record per
//! function: its label and its canonical JSON), so they are logged,
//! replayed, snapshotted and backed up like any record. Parsed definitions
//! are cached by id and checked against the record's version on every use,
//! so a change made any way (the API, a restore, the data API) is seen.

use super::definition::{self, Definition};
use super::interp::Library;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ids::Lsn;
use crate::time::Timestamp;
use crate::value::Value;
use serde_json::Value as J;
use std::collections::HashMap;
use std::sync::Arc;

pub const FUNCTIONS: &str = "functions__ek0_tidepool";

/// Functions one server keeps at most.
pub const MAX_FUNCTIONS: usize = 10_000;

#[derive(Debug, Default)]
pub struct FunctionStore {
    by_id: HashMap<String, (Lsn, Arc<Definition>)>,
    label_to_id: HashMap<String, String>,
}

fn stored_label(engine: &Engine, id: &str) -> Option<String> {
    let f = engine.get_internal(FUNCTIONS, id, Timestamp::EPOCH)?;
    match f.record.get("label") {
        Some(Value::String(s)) => Some(s.to_string()),
        _ => None,
    }
}

impl FunctionStore {
    /// The definition stored under `id`, parsed once per version.
    fn by_id(&mut self, engine: &Engine, id: &str) -> Option<Arc<Definition>> {
        let found = engine.get_internal(FUNCTIONS, id, Timestamp::EPOCH)?;
        let version = found.record.version;
        if let Some((v, d)) = self.by_id.get(id) {
            if *v == version {
                return Some(d.clone());
            }
        }
        let Some(Value::String(text)) = found.record.get("definition") else {
            return None;
        };
        let mut def: Definition = serde_json::from_str(text).ok()?;
        def.id = Some(id.to_string());
        let def = Arc::new(def);
        self.label_to_id.insert(def.label.clone(), id.to_string());
        self.by_id.insert(id.to_string(), (version, def.clone()));
        Some(def)
    }

    /// The id of the function labelled `label`.
    fn id_of_label(&mut self, engine: &Engine, label: &str) -> Option<String> {
        if let Some(id) = self.label_to_id.get(label) {
            if stored_label(engine, id).as_deref() == Some(label) {
                return Some(id.clone());
            }
        }
        let id = engine
            .with_id_prefix(FUNCTIONS, "", Timestamp::EPOCH)
            .find(|f| matches!(f.record.get("label"), Some(Value::String(s)) if &**s == label))
            .map(|f| f.id.to_string())?;
        self.label_to_id.insert(label.to_string(), id.clone());
        Some(id)
    }

    /// `{id_or_label}`: an id first, then a label.
    pub fn resolve(&mut self, engine: &Engine, id_or_label: &str) -> Option<Arc<Definition>> {
        if let Some(d) = self.by_id(engine, id_or_label) {
            return Some(d);
        }
        let id = self.id_of_label(engine, id_or_label)?;
        self.by_id(engine, &id)
    }

    /// Every stored function, oldest first.
    pub fn all(&mut self, engine: &Engine) -> Vec<Arc<Definition>> {
        let ids: Vec<String> = engine
            .with_id_prefix(FUNCTIONS, "", Timestamp::EPOCH)
            .map(|f| f.id.to_string())
            .collect();
        self.by_id.retain(|id, _| ids.contains(id));
        let mut all: Vec<Arc<Definition>> =
            ids.iter().filter_map(|id| self.by_id(engine, id)).collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        all
    }

    /// Saves a new function; a label already taken is a conflict.
    pub fn create(&mut self, engine: &mut Engine, body: &J, now: Timestamp) -> Result<String> {
        let mut def = definition::parse(body)?;
        if self.id_of_label(engine, &def.label).is_some() {
            return Err(Error::conflict(format!(
                "a function labelled `{}` already exists",
                def.label
            )));
        }
        if engine
            .with_id_prefix(FUNCTIONS, "", Timestamp::EPOCH)
            .count()
            >= MAX_FUNCTIONS
        {
            return Err(Error::invalid(format!(
                "this server keeps at most {MAX_FUNCTIONS} functions"
            )));
        }
        let id = engine.new_id(now);
        let at = now.to_rfc3339_z();
        def.created_at = Some(at.clone());
        def.updated_at = Some(at);
        self.write(engine, &id, def, now)?;
        Ok(id)
    }

    /// Replaces a function's definition (the label may change).
    pub fn replace(
        &mut self,
        engine: &mut Engine,
        id_or_label: &str,
        body: &J,
        now: Timestamp,
    ) -> Result<String> {
        let old = self
            .resolve(engine, id_or_label)
            .ok_or_else(|| missing(id_or_label))?;
        let id = old.id.clone().unwrap_or_default();
        let mut def = definition::parse(body)?;
        if def.label != old.label {
            if let Some(other) = self.id_of_label(engine, &def.label) {
                if other != id {
                    return Err(Error::conflict(format!(
                        "a function labelled `{}` already exists",
                        def.label
                    )));
                }
            }
        }
        def.created_at = old.created_at.clone();
        def.updated_at = Some(now.to_rfc3339_z());
        self.label_to_id.remove(&old.label);
        self.write(engine, &id, def, now)?;
        Ok(id)
    }

    pub fn delete(&mut self, engine: &mut Engine, id_or_label: &str) -> Result<()> {
        let def = self
            .resolve(engine, id_or_label)
            .ok_or_else(|| missing(id_or_label))?;
        let id = def.id.clone().unwrap_or_default();
        engine.purge(FUNCTIONS, &id);
        self.by_id.remove(&id);
        self.label_to_id.remove(&def.label);
        Ok(())
    }

    fn write(
        &mut self,
        engine: &mut Engine,
        id: &str,
        mut def: Definition,
        now: Timestamp,
    ) -> Result<()> {
        def.id = None;
        let text = serde_json::to_string(&def).map_err(|e| Error::internal(e.to_string()))?;
        engine.put_internal(
            FUNCTIONS,
            id,
            vec![
                ("label", Value::String(def.label.clone().into())),
                ("definition", Value::String(text.into())),
            ],
            now,
        )?;
        self.label_to_id.insert(def.label.clone(), id.to_string());
        self.by_id.remove(id);
        Ok(())
    }
}

pub fn missing(id_or_label: &str) -> Error {
    Error::not_found(format!("no function with id or label `{id_or_label}`"))
}

impl Library for FunctionStore {
    fn function(&mut self, engine: &Engine, id_or_label: &str) -> Option<Arc<Definition>> {
        self.resolve(engine, id_or_label)
    }
}
