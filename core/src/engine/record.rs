//! Records as the engine keeps them, and their wire form.

use crate::ids::Lsn;
use crate::time::Timestamp;
use crate::value::{Json, Typed, Value, View};
use rustc_hash::FxHashSet;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use std::sync::Arc;

/// A field name. Shared between records through the `Interner`, so a million records
/// with the same five fields store five names, not five million.
pub type Key = Arc<str>;

/// A stored record: user fields sorted by name (never the primary key, never `ttl`),
/// plus expiry metadata and the LSN of the write that produced this version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    fields: Vec<(Key, Value)>,
    pub expires_at: Option<Timestamp>,
    /// `ttl_update_on_access`: each read pushes `expires_at` forward by this much.
    pub sliding_micros: Option<u64>,
    pub version: Lsn,
}

impl Record {
    pub fn new() -> Self {
        Record {
            fields: Vec::new(),
            expires_at: None,
            sliding_micros: None,
            version: Lsn::ZERO,
        }
    }

    /// A record from decoded parts; fields are sorted here if they were not.
    pub fn from_parts(
        mut fields: Vec<(Key, Value)>,
        expires_at: Option<Timestamp>,
        sliding_micros: Option<u64>,
        version: Lsn,
    ) -> Self {
        if !fields.windows(2).all(|w| w[0].0 < w[1].0) {
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            fields.dedup_by(|a, b| a.0 == b.0);
        }
        Record {
            fields,
            expires_at,
            sliding_micros,
            version,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .binary_search_by(|(k, _)| k.as_ref().cmp(name))
            .ok()
            .map(|i| &self.fields[i].1)
    }

    pub fn set(&mut self, name: Key, value: Value) {
        match self.fields.binary_search_by(|(k, _)| k.as_ref().cmp(&name)) {
            Ok(i) => self.fields[i].1 = value,
            Err(i) => self.fields.insert(i, (name, value)),
        }
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        match self.fields.binary_search_by(|(k, _)| k.as_ref().cmp(name)) {
            Ok(i) => Some(&mut self.fields[i].1),
            Err(_) => None,
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Value> {
        match self.fields.binary_search_by(|(k, _)| k.as_ref().cmp(name)) {
            Ok(i) => Some(self.fields.remove(i).1),
            Err(_) => None,
        }
    }

    pub fn fields(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.fields.iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        matches!(self.expires_at, Some(t) if t <= now)
    }

    /// Replaces every field name with its interned copy (after decoding from the log).
    pub fn intern_keys(&mut self, interner: &mut Interner) {
        for (k, _) in &mut self.fields {
            *k = interner.intern(k);
        }
    }

    /// Looks up a field or a dotted path into nested objects (`metadata.owner.name`).
    /// The primary key is not a field: callers resolve `id` first.
    pub fn lookup(&self, path: &str) -> Option<View<'_>> {
        if let Some(v) = self.get(path) {
            return Some(v.view());
        }
        let mut parts = path.split('.');
        let head = parts.next()?;
        let rest: Vec<&str> = parts.collect();
        if rest.is_empty() {
            return None;
        }
        match self.get(head)? {
            Value::Object(m) => {
                let first = m.get(rest[0])?;
                first.path(&rest[1..]).map(View::of_json)
            }
            Value::Array(items) | Value::Set(items) => {
                let idx: usize = rest[0].parse().ok()?;
                items.get(idx)?.path(&rest[1..]).map(View::of_json)
            }
            _ => None,
        }
    }

    /// Approximate heap bytes, for memory accounting in benchmarks and limits.
    pub fn approx_size(&self) -> usize {
        fn json_size(j: &Json) -> usize {
            match j {
                Json::Str(s) => 32 + s.len(),
                Json::Array(a) => 32 + a.iter().map(json_size).sum::<usize>(),
                Json::Object(m) => {
                    32 + m.iter().map(|(k, v)| k.len() + json_size(v)).sum::<usize>()
                }
                _ => 32,
            }
        }
        let mut n = 64 + self.fields.len() * 40;
        for (_, v) in &self.fields {
            n += match v {
                Value::String(s) | Value::Decimal(s) | Value::Uuid(s) => s.len(),
                Value::Binary(b) | Value::Bytes(b) => b.len(),
                Value::Vector(v) => v.len() * 8,
                Value::Array(a) | Value::Set(a) => a.iter().map(json_size).sum(),
                Value::Object(m) => m.iter().map(|(k, v)| k.len() + json_size(v)).sum(),
                _ => 0,
            };
        }
        n
    }
}

impl Default for Record {
    fn default() -> Self {
        Record::new()
    }
}

/// Deduplicates field names. Bounded: past `MAX` distinct names it stops sharing
/// (correct, just less compact), so hostile input cannot grow it forever.
#[derive(Debug, Default)]
pub struct Interner {
    names: FxHashSet<Key>,
}

impl Interner {
    const MAX: usize = 100_000;

    pub fn intern(&mut self, name: &str) -> Key {
        if let Some(k) = self.names.get(name) {
            return k.clone();
        }
        let key: Key = Arc::from(name);
        if self.names.len() < Self::MAX {
            self.names.insert(key.clone());
        }
        key
    }
}

/// Which fields of a record go on the wire (spec 8.5).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Projection {
    /// Keep only these (plus the primary key). Empty means "all".
    pub select: Vec<String>,
    /// Then drop these (never the primary key).
    pub exclude: Vec<String>,
}

impl Projection {
    /// Keeps no field but the primary key (an empty `select` means "all",
    /// so this selects a name no field can have).
    pub fn key_only() -> Projection {
        Projection {
            select: vec![String::from("\u{0}")],
            exclude: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.select.is_empty() && self.exclude.is_empty()
    }

    pub fn keeps(&self, field: &str) -> bool {
        let selected = self.select.is_empty()
            || self
                .select
                .iter()
                .any(|s| s == field || s.split('.').next() == Some(field));
        selected && !self.exclude.iter().any(|e| e == field)
    }
}

/// A record as the clients receive it: the primary key as a plain string, every
/// other field in its typed envelope, `ttl` as a plain RFC 3339 expiry time, and an
/// optional joined array.
pub struct RecordOut<'a> {
    pub pk_name: &'a str,
    pub id: &'a str,
    pub record: &'a Record,
    pub projection: Option<&'a Projection>,
    pub joined: Vec<(&'a str, Vec<RecordOut<'a>>)>,
}

impl<'a> RecordOut<'a> {
    pub fn new(pk_name: &'a str, id: &'a str, record: &'a Record) -> Self {
        RecordOut {
            pk_name,
            id,
            record,
            projection: None,
            joined: Vec::new(),
        }
    }
}

impl Serialize for RecordOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let keep = |name: &str| self.projection.is_none_or(|p| p.keeps(name));
        let mut m = s.serialize_map(None)?;
        m.serialize_entry(self.pk_name, self.id)?;
        for (name, value) in self.record.fields() {
            if keep(name) {
                m.serialize_entry(name, &Typed(value))?;
            }
        }
        if let Some(t) = self.record.expires_at {
            if keep("ttl") {
                m.serialize_entry("ttl", &t.to_rfc3339_z())?;
            }
        }
        for (name, joined) in &self.joined {
            m.serialize_entry(name, joined)?;
        }
        m.end()
    }
}

/// A record with plain values (chat context snippets, function outputs).
pub struct PlainRecordOut<'a>(pub RecordOut<'a>);

impl Serialize for PlainRecordOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = &self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry(r.pk_name, r.id)?;
        for (name, value) in r.record.fields() {
            m.serialize_entry(name, &crate::value::PlainValue(value))?;
        }
        m.end()
    }
}
