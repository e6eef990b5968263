//! The database engine: collections, records, queries, TTL, trash and the key-value
//! store, all in memory. Each operation validates first and then mutates, so it is
//! applied whole or not at all; its log records collect in a `Journal` that
//! `commit` seals into one batch with the next LSN. The runtime persists batches
//! (`poll_log`) and reports them durable; the engine never waits for that itself.

pub mod actions;
pub mod collection;
pub mod filter;
pub mod kv;
pub mod mutation;
pub mod query;
pub mod record;
pub mod schema;
pub mod search;
mod snapshot;
pub mod txn;

pub use snapshot::SnapshotCursor;

use crate::error::{Error, Result};
use crate::ids::{IdGenerator, Lsn};
use crate::time::{parse_duration, Timestamp};
use crate::value::{compare_json, json_eq, Json, Value, View};
use actions::Action;
use collection::Collection;
use filter::Filter;
use kv::{KvEntry, Link};
pub use mutation::{decode_for_replay, Decoded};
use mutation::{Journal, Mutation, MutationRef, MutationWire};
use query::FindQuery;
use record::{Interner, Record};
use schema::Schema;
use serde_json::Value as J;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

/// How long deleted records stay restorable.
pub const TRASH_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Upper bound of records removed per sweep, so one sweep never stalls the server.
const SWEEP_BATCH: usize = 5_000;
const MAX_NAME_BYTES: usize = 512;
const MAX_ID_BYTES: usize = 1024;

/// A committed batch waiting to be made durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub lsn: Lsn,
    pub payload: Vec<u8>,
}

/// A record as found: its collection's primary-key name, its id and contents.
#[derive(Clone, Copy, Debug)]
pub struct Found<'a> {
    pub pk: &'a str,
    pub id: &'a str,
    pub record: &'a Record,
}

/// One result row of a query, with its joined records.
#[derive(Debug)]
pub struct Row<'a> {
    pub found: Found<'a>,
    pub joined: Vec<(&'a str, Vec<Found<'a>>)>,
}

/// One search result.
#[derive(Debug)]
pub struct SearchHit<'a> {
    pub found: Found<'a>,
    pub score: f32,
    pub matched_fields: Vec<String>,
}

/// Outcome of a batch call: ids that succeeded and per-item errors.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchOutcome {
    pub successful: Vec<String>,
    pub failed: Vec<(Option<String>, String)>,
}

#[derive(Debug)]
pub struct Engine {
    collections: BTreeMap<Box<str>, Collection>,
    kv: BTreeMap<Box<str>, KvEntry>,
    kv_expiry: BTreeSet<(Timestamp, Box<str>)>,
    links: BTreeMap<Box<str>, Vec<Link>>,
    interner: Interner,
    ids: IdGenerator,
    journal: Journal,
    last_lsn: Lsn,
    committed: VecDeque<Committed>,
    txns: txn::Transactions,
}

pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{kind} name must not be empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(format!(
            "{kind} name is longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{kind} name must not contain control characters"
        )));
    }
    Ok(())
}

fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(Error::invalid(format!(
            "a record id must be 1 to {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

fn not_found(record: Option<&Record>, now: Timestamp) -> Error {
    match record {
        Some(r) if r.is_expired(now) => Error::not_found("Record not found (expired)"),
        _ => Error::not_found("Record not found"),
    }
}

fn missing_collection(name: &str) -> Error {
    Error::not_found(format!("Collection not found: {name}"))
}

/// Reads a TTL as clients send it: duration text, integer seconds, an envelope, or
/// an absolute RFC 3339 time. `null` means "no expiry".
pub fn parse_ttl(v: &J, now: Timestamp) -> Result<Option<Timestamp>> {
    let bad = || {
        Error::invalid(
            "invalid ttl: use seconds (3600), a duration (\"30s\", \"5m\", \"1h30m\", \"2d\") or an RFC 3339 time",
        )
    };
    match v {
        J::Null => Ok(None),
        J::Number(n) => {
            let secs = n
                .as_f64()
                .filter(|s| *s > 0.0 && s.is_finite())
                .ok_or_else(bad)?;
            Ok(Some(
                now.saturating_add(Duration::from_secs_f64(secs.min(1e12))),
            ))
        }
        J::String(s) => {
            if let Some(d) = parse_duration(s) {
                if d.is_zero() {
                    return Err(bad());
                }
                return Ok(Some(now.saturating_add(d)));
            }
            Timestamp::parse_rfc3339(s).map(Some).ok_or_else(bad)
        }
        J::Object(o) => match (o.get("value"), o.get("secs")) {
            (Some(inner), _) => parse_ttl(inner, now),
            (None, Some(secs)) => parse_ttl(secs, now),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

impl Engine {
    pub fn new(seed: u64) -> Self {
        Engine {
            collections: BTreeMap::new(),
            kv: BTreeMap::new(),
            kv_expiry: BTreeSet::new(),
            links: BTreeMap::new(),
            interner: Interner::default(),
            ids: IdGenerator::new(seed),
            journal: Journal::default(),
            last_lsn: Lsn::ZERO,
            committed: VecDeque::new(),
            txns: txn::Transactions::default(),
        }
    }

    // ----- durability -------------------------------------------------------

    /// The LSN of the newest committed batch.
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// The LSN the current operation's batch will get.
    fn op_lsn(&self) -> Lsn {
        self.last_lsn.next()
    }

    /// Seals the current operation's mutations into a batch. Returns its LSN, or
    /// `None` if the operation changed nothing.
    pub fn commit(&mut self, now: Timestamp) -> Option<Lsn> {
        let payload = self.journal.take(now)?;
        self.last_lsn = self.last_lsn.next();
        self.committed.push_back(Committed {
            lsn: self.last_lsn,
            payload,
        });
        Some(self.last_lsn)
    }

    /// The payload of a committed batch still waiting to be persisted.
    pub fn peek_committed(&self, lsn: Lsn) -> Option<&[u8]> {
        self.committed
            .iter()
            .rev()
            .find(|c| c.lsn == lsn)
            .map(|c| c.payload.as_slice())
    }

    /// The next batch for the runtime to persist, oldest first.
    pub fn poll_log(&mut self) -> Option<Committed> {
        self.committed.pop_front()
    }

    pub fn has_log(&self) -> bool {
        !self.committed.is_empty()
    }

    /// Applies a batch read back from the log during recovery.
    pub fn replay(&mut self, lsn: Lsn, payload: &[u8]) -> std::result::Result<(), String> {
        self.replay_decoded(lsn, decode_for_replay(payload)?);
        Ok(())
    }

    /// Applies a batch decoded with `decode_for_replay` (which may run on another
    /// thread, so recovery decodes the next batch while this one is applied).
    pub fn replay_decoded(&mut self, lsn: Lsn, batch: Decoded<'_>) {
        for m in batch.0 {
            self.apply_wire(m);
        }
        self.last_lsn = self.last_lsn.max(lsn);
    }

    /// Recovery is over: the next commit follows `lsn` even if the log was empty
    /// after a snapshot.
    pub fn set_last_lsn(&mut self, lsn: Lsn) {
        self.last_lsn = self.last_lsn.max(lsn);
    }

    fn apply(&mut self, m: Mutation) {
        match m {
            Mutation::Put {
                collection,
                id,
                record,
                ..
            } => {
                self.collection_or_create(&collection).put(&id, record);
            }
            Mutation::Remove {
                collection,
                id,
                trash,
            } => {
                if let Some(c) = self.collections.get_mut(&collection) {
                    c.take(&id);
                    if let Some((record, at)) = trash {
                        c.trash_put(&id, record, at);
                    }
                }
            }
            Mutation::Restore {
                collection,
                id,
                record,
            } => {
                let c = self.collection_or_create(&collection);
                c.trash_take(&id);
                c.put(&id, record);
            }
            Mutation::TrashPurge { collection, id } => {
                if let Some(c) = self.collections.get_mut(&collection) {
                    c.trash_take(&id);
                }
            }
            Mutation::SetSchema { collection, schema } => {
                match self.collections.get_mut(&collection) {
                    Some(c) => {
                        c.schema = schema;
                        c.rebuild_unique();
                        c.build_declared_indexes();
                    }
                    None => {
                        self.collections.insert(collection, Collection::new(schema));
                    }
                }
            }
            Mutation::DropCollection { collection } => {
                self.collections.remove(&collection);
            }
            Mutation::KvPut { key, entry } => self.kv_store(&key, entry),
            Mutation::KvRemove { key } => {
                self.kv_take(&key);
            }
            Mutation::KvClear => {
                self.kv.clear();
                self.kv_expiry.clear();
            }
            Mutation::KvLinks { key, links } => {
                if links.is_empty() {
                    self.links.remove(&key);
                } else {
                    self.links.insert(key, links);
                }
            }
        }
    }

    /// Replays one logged mutation (field names interned as they are decoded).
    fn apply_wire(&mut self, m: MutationWire<'_>) {
        // Record writes go straight in: no owned copy of the names first.
        let owned = match m {
            MutationWire::Put {
                collection,
                id,
                record,
                ..
            } => {
                let record = record.into_record(&mut self.interner);
                self.collection_or_create(collection).put(id, record);
                return;
            }
            MutationWire::Remove {
                collection,
                id,
                trash,
            } => {
                let trash = trash.map(|(r, at)| (r.into_record(&mut self.interner), at));
                if let Some(c) = self.collections.get_mut(collection) {
                    c.take(id);
                    if let Some((record, at)) = trash {
                        c.trash_put(id, record, at);
                    }
                }
                return;
            }
            MutationWire::Restore {
                collection,
                id,
                record,
            } => {
                let record = record.into_record(&mut self.interner);
                let c = self.collection_or_create(collection);
                c.trash_take(id);
                c.put(id, record);
                return;
            }
            MutationWire::TrashPurge { collection, id } => Mutation::TrashPurge {
                collection: collection.into(),
                id: id.into(),
            },
            MutationWire::SetSchema { collection, schema } => Mutation::SetSchema {
                collection: collection.into(),
                schema,
            },
            MutationWire::DropCollection { collection } => Mutation::DropCollection {
                collection: collection.into(),
            },
            MutationWire::KvPut { key, entry } => Mutation::KvPut {
                key: key.into(),
                entry,
            },
            MutationWire::KvRemove { key } => Mutation::KvRemove { key: key.into() },
            MutationWire::KvClear => Mutation::KvClear,
            MutationWire::KvLinks { key, links } => Mutation::KvLinks {
                key: key.into(),
                links,
            },
        };
        self.apply(owned);
    }

    /// During replay a Put may precede its collection's schema record (fuzzy
    /// snapshots); an implicit schema stands in until the real one arrives.
    fn collection_or_create(&mut self, name: &str) -> &mut Collection {
        if !self.collections.contains_key(name) {
            self.collections.insert(
                name.into(),
                Collection::new(Schema::empty(Timestamp::EPOCH)),
            );
        }
        // Present: inserted just above if it was missing.
        self.collections
            .get_mut(name)
            .expect("collection was just ensured")
    }

    // ----- collections ------------------------------------------------------

    pub fn collection_names(&self) -> impl Iterator<Item = &str> {
        self.collections.keys().map(|k| k.as_ref())
    }

    pub fn collection(&self, name: &str) -> Result<&Collection> {
        self.collections
            .get(name)
            .ok_or_else(|| missing_collection(name))
    }

    /// The primary-key name of a collection (`id` unless aliased).
    pub fn pk_name(&self, collection: &str) -> &str {
        self.collections
            .get(collection)
            .map_or("id", |c| c.schema.primary_key_alias.as_str())
    }

    /// Creates a collection with a schema. A collection that exists only because
    /// of inserts (no declared fields) takes the schema; one with a schema is a 409.
    pub fn create_collection(&mut self, name: &str, schema: Schema) -> Result<()> {
        validate_name("collection", name)?;
        if schema.fields.is_empty() {
            return Err(Error::invalid("Schema must contain at least one field"));
        }
        let schema = match self.collections.get(name) {
            Some(c) if !c.schema.fields.is_empty() => {
                return Err(Error::conflict(format!(
                    "collection `{name}` already exists with a schema"
                )))
            }
            Some(c) => Schema {
                version: c.schema.version + 1,
                created_at: c.schema.created_at,
                ..schema
            },
            None => schema,
        };
        self.journal.record(&MutationRef::SetSchema {
            collection: name,
            schema: &schema,
        });
        self.apply(Mutation::SetSchema {
            collection: name.into(),
            schema,
        });
        Ok(())
    }

    /// Ensures a collection exists (WebSocket `CreateCollection` with no schema).
    pub fn ensure_collection(&mut self, name: &str, now: Timestamp) -> Result<()> {
        validate_name("collection", name)?;
        self.implicit_collection(name, now);
        Ok(())
    }

    fn implicit_collection(&mut self, name: &str, now: Timestamp) {
        if !self.collections.contains_key(name) {
            let schema = Schema::empty(now);
            self.journal.record(&MutationRef::SetSchema {
                collection: name,
                schema: &schema,
            });
            self.collections
                .insert(name.into(), Collection::new(schema));
        }
    }

    pub fn update_constraints(&mut self, name: &str, body: &J, now: Timestamp) -> Result<&Schema> {
        let c = self.collection(name)?;
        let mut schema = c.schema.clone();
        schema.apply_constraints(body, now)?;
        self.journal.record(&MutationRef::SetSchema {
            collection: name,
            schema: &schema,
        });
        self.apply(Mutation::SetSchema {
            collection: name.into(),
            schema,
        });
        Ok(&self.collection(name)?.schema)
    }

    pub fn drop_collection(&mut self, name: &str) -> Result<()> {
        if !self.collections.contains_key(name) {
            return Err(missing_collection(name));
        }
        self.journal
            .record(&MutationRef::DropCollection { collection: name });
        self.collections.remove(name);
        Ok(())
    }

    // ----- writing records --------------------------------------------------

    /// Turns a write body into typed fields on top of `base` (empty for inserts).
    /// Returns the id the body names, if any.
    fn build_record(
        &mut self,
        collection: &str,
        body: J,
        mut base: Record,
        now: Timestamp,
        inserting: bool,
    ) -> Result<(Option<String>, Record)> {
        let J::Object(body) = body else {
            return Err(Error::invalid("a record must be a JSON object"));
        };
        let schema = self.collections.get(collection).map(|c| &c.schema);
        let pk = schema.map_or("id", |s| s.primary_key_alias.as_str());
        let mut id = None;
        for (key, raw) in body {
            if key == pk || key == "id" {
                id = Some(match raw {
                    J::String(s) => s,
                    J::Number(n) => n.to_string(),
                    _ => return Err(Error::invalid(format!("`{key}` must be a string"))),
                });
                continue;
            }
            match key.as_str() {
                "ttl" => {
                    base.expires_at = parse_ttl(&raw, now)?;
                    base.sliding_micros = match (base.expires_at, base.sliding_micros) {
                        (Some(t), Some(_)) => {
                            Some(t.micros().saturating_sub(now.micros()).max(0) as u64)
                        }
                        (_, s) => s,
                    };
                    continue;
                }
                "ttl_update_on_access" => {
                    let on = raw.as_bool().unwrap_or(false);
                    base.sliding_micros = on.then_some(0);
                    continue;
                }
                _ => {}
            }
            let value = match schema.and_then(|s| s.fields.get(&key)) {
                Some(field) => field.coerce(&key, raw)?,
                None => crate::value::value_from_input(raw)
                    .map_err(|e| Error::invalid(format!("field `{key}`: {e}")))?,
            };
            let name = self.interner.intern(&key);
            base.set(name, value);
        }
        if base.sliding_micros.is_some() {
            // Sliding expiry slides by the TTL the record was given.
            base.sliding_micros = base
                .expires_at
                .map(|t| t.micros().saturating_sub(now.micros()).max(0) as u64);
        }
        if let Some(schema) = schema {
            for (name, field) in &schema.fields {
                let present = base.get(name).is_some_and(|v| !matches!(v, Value::Null));
                if !present && inserting {
                    if let Some(default) = &field.default {
                        let value = field.coerce(name, default.to_serde())?;
                        base.set(self.interner.intern(name), value);
                        continue;
                    }
                }
                if !present && field.required {
                    return Err(Error::invalid(format!("field `{name}` is required")));
                }
                if let Some(v) = base.get(name) {
                    field.check(name, v)?;
                }
            }
        }
        base.version = self.op_lsn();
        Ok((id, base))
    }

    /// Stores a validated record (checks unique fields first).
    fn store(&mut self, collection: &str, id: &str, record: Record, now: Timestamp) -> Result<()> {
        if let Some(c) = self.collections.get(collection) {
            if let Some(field) = c.find_unique_violation(id, &record, now) {
                return Err(Error::conflict(format!(
                    "duplicate value for unique field `{field}`"
                )));
            }
        }
        self.implicit_collection(collection, now);
        let insert = self
            .collections
            .get(collection)
            .and_then(|c| c.raw(id))
            .is_none_or(|r| r.is_expired(now));
        self.journal.record(&MutationRef::Put {
            collection,
            id,
            record: &record,
            insert,
        });
        if let Some(c) = self.collections.get_mut(collection) {
            c.put(id, record);
        }
        Ok(())
    }

    /// Inserts a record; returns its id (the caller's `id` if given).
    pub fn insert(&mut self, collection: &str, body: J, now: Timestamp) -> Result<String> {
        validate_name("collection", collection)?;
        let (id, record) = self.build_record(collection, body, Record::new(), now, true)?;
        let id = match id {
            Some(id) => {
                validate_id(&id)?;
                if let Some(existing) = self.collections.get(collection).and_then(|c| c.raw(&id)) {
                    if !existing.is_expired(now) {
                        return Err(Error::conflict(format!(
                            "a record with id `{id}` already exists"
                        )));
                    }
                }
                id
            }
            None => self.ids.next_id(now),
        };
        self.store(collection, &id, record, now)?;
        Ok(id)
    }

    fn live(&self, collection: &str, id: &str, now: Timestamp) -> Result<&Record> {
        let raw = self.collections.get(collection).and_then(|c| c.raw(id));
        match raw {
            Some(r) if !r.is_expired(now) => Ok(r),
            other => Err(not_found(other, now)),
        }
    }

    fn found(&self, collection: &str, id: &str) -> Result<Found<'_>> {
        let c = self.collection(collection)?;
        let (id, record) = c
            .raw_entry(id)
            .ok_or_else(|| Error::internal("record vanished during the operation"))?;
        Ok(Found {
            pk: &c.schema.primary_key_alias,
            id,
            record,
        })
    }

    /// Merges `patch` into a record (spec 6.4) and returns the result.
    pub fn update(
        &mut self,
        collection: &str,
        id: &str,
        patch: J,
        now: Timestamp,
    ) -> Result<Found<'_>> {
        let base = self.live(collection, id, now)?.clone();
        let (_, record) = self.build_record(collection, patch, base, now, false)?;
        self.store(collection, id, record, now)?;
        self.found(collection, id)
    }

    /// Applies actions in order, all or nothing (spec 6.5, 6.6).
    pub fn apply_actions(
        &mut self,
        collection: &str,
        id: &str,
        steps: Vec<(Action, String, Option<J>)>,
        now: Timestamp,
    ) -> Result<Found<'_>> {
        let mut record = self.live(collection, id, now)?.clone();
        for (action, field, value) in steps {
            if field.is_empty() {
                return Err(Error::invalid("an action needs a `field`"));
            }
            let key = self.interner.intern(&field);
            actions::apply(&mut record, key, action, value.as_ref())?;
            if let Some(schema) = self
                .collections
                .get(collection)
                .and_then(|c| c.schema.fields.get(&field))
            {
                if let Some(v) = record.get(&field) {
                    schema.check(&field, v)?;
                }
            }
        }
        record.version = self.op_lsn();
        self.store(collection, id, record, now)?;
        self.found(collection, id)
    }

    /// Soft-deletes a record into the trash and returns it.
    pub fn delete(&mut self, collection: &str, id: &str, now: Timestamp) -> Result<Found<'_>> {
        self.live(collection, id, now)?;
        let c = self
            .collections
            .get_mut(collection)
            .ok_or_else(|| missing_collection(collection))?;
        let record = c
            .take(id)
            .ok_or_else(|| Error::not_found("Record not found"))?;
        self.journal.record(&MutationRef::Remove {
            collection,
            id,
            trash: Some((&record, now)),
        });
        c.trash_put(id, record, now);
        let (id, (record, _)) = c
            .trash_entry(id)
            .ok_or_else(|| Error::internal("trash entry vanished"))?;
        Ok(Found {
            pk: &c.schema.primary_key_alias,
            id,
            record,
        })
    }

    /// Restores one record from the trash; `false` if it is not there.
    pub fn restore(&mut self, collection: &str, id: &str, now: Timestamp) -> Result<bool> {
        let Some(c) = self.collections.get_mut(collection) else {
            return Ok(false);
        };
        let Some((record, _)) = c.trash_get(id) else {
            return Ok(false);
        };
        if c.raw(id).is_some_and(|r| !r.is_expired(now)) {
            return Err(Error::conflict(format!(
                "a live record with id `{id}` exists; delete it before restoring"
            )));
        }
        if record.is_expired(now) {
            // Restoring an expired record would hand back something already gone.
            let mut fresh = record.clone();
            fresh.expires_at = None;
            fresh.sliding_micros = None;
            c.trash_put(id, fresh, now);
        }
        let (record, _) = c
            .trash_take(id)
            .ok_or_else(|| Error::internal("trash entry vanished"))?;
        self.journal.record(&MutationRef::Restore {
            collection,
            id,
            record: &record,
        });
        c.put(id, record);
        Ok(true)
    }

    /// Restores every trashed record of a collection; returns how many.
    pub fn restore_all(&mut self, collection: &str, now: Timestamp) -> Result<usize> {
        let ids = match self.collections.get(collection) {
            Some(c) => c.trash_ids(),
            None => return Ok(0),
        };
        let mut n = 0;
        for id in ids {
            if let Ok(true) = self.restore(collection, &id, now) {
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn batch_insert(
        &mut self,
        collection: &str,
        items: Vec<J>,
        now: Timestamp,
    ) -> Result<BatchOutcome> {
        validate_name("collection", collection)?;
        let mut out = BatchOutcome::default();
        for item in items {
            let named = item.get("id").and_then(J::as_str).map(str::to_string);
            match self.insert(collection, item, now) {
                Ok(id) => out.successful.push(id),
                Err(e) => out.failed.push((named, e.message)),
            }
        }
        Ok(out)
    }

    pub fn batch_update(
        &mut self,
        collection: &str,
        items: Vec<(String, J)>,
        now: Timestamp,
    ) -> Result<BatchOutcome> {
        let mut out = BatchOutcome::default();
        for (id, patch) in items {
            match self.update(collection, &id, patch, now) {
                Ok(_) => out.successful.push(id),
                Err(e) => out.failed.push((Some(id), e.message)),
            }
        }
        Ok(out)
    }

    pub fn batch_delete(
        &mut self,
        collection: &str,
        ids: Vec<String>,
        now: Timestamp,
    ) -> Result<BatchOutcome> {
        let mut out = BatchOutcome::default();
        for id in ids {
            match self.delete(collection, &id, now) {
                Ok(_) => out.successful.push(id),
                Err(e) => out.failed.push((Some(id), e.message)),
            }
        }
        Ok(out)
    }

    // ----- reading records --------------------------------------------------

    /// Finds one record. Records with sliding expiry get their expiry pushed on.
    pub fn find_by_id(&mut self, collection: &str, id: &str, now: Timestamp) -> Result<Found<'_>> {
        let record = self.live(collection, id, now)?;
        if let Some(slide) = record.sliding_micros.filter(|s| *s > 0) {
            let mut bumped = record.clone();
            bumped.expires_at = Some(now.saturating_add(Duration::from_micros(slide)));
            bumped.version = self.op_lsn();
            self.store(collection, id, bumped, now)?;
        }
        self.found(collection, id)
    }

    /// Runs a query (spec 8). An unknown collection has no records.
    pub fn find<'a>(
        &'a self,
        collection: &str,
        q: &'a FindQuery,
        now: Timestamp,
    ) -> Result<Vec<Row<'a>>> {
        let Some(c) = self.collections.get(collection) else {
            return Ok(Vec::new());
        };
        let pk = c.schema.primary_key_alias.as_str();
        let filter = q.filter();
        let matching = c.iter_live(now).filter(|(id, r)| filter.matches(pk, id, r));
        let limit = q.limit.unwrap_or(usize::MAX);
        let rows: Vec<(&str, &Record)> = if q.sort.is_empty() {
            // Unsorted results come in id order: stop scanning at skip + limit.
            matching.skip(q.skip).take(limit).collect()
        } else {
            let mut hits: Vec<(&str, &Record)> = matching.collect();
            let keep = q.skip.saturating_add(limit).min(hits.len());
            // Ties break by id, so pages of a sorted query never overlap or skip.
            let by = |a: &(&str, &Record), b: &(&str, &Record)| {
                query::compare_records(&q.sort, pk, *a, *b).then_with(|| a.0.cmp(b.0))
            };
            if keep < hits.len() / 2 {
                // Only the first skip + limit matter: select them, then sort those.
                hits.select_nth_unstable_by(keep, by);
                hits.truncate(keep);
            }
            hits.sort_by(by);
            hits.into_iter().skip(q.skip).take(limit).collect()
        };
        let mut out: Vec<Row<'a>> = rows
            .into_iter()
            .map(|(id, record)| Row {
                found: Found { pk, id, record },
                joined: Vec::new(),
            })
            .collect();
        for join in &q.joins {
            self.attach_join(join, &mut out, now);
        }
        Ok(out)
    }

    fn attach_join<'a>(&'a self, join: &'a query::Join, rows: &mut [Row<'a>], now: Timestamp) {
        // Index each foreign collection once: rendered foreign value → records.
        let mut lookup: Vec<(String, Found<'a>)> = Vec::new();
        for name in &join.collections {
            if let Some(c) = self.collections.get(name.as_str()) {
                let pk = c.schema.primary_key_alias.as_str();
                for (id, record) in c.iter_live(now) {
                    if let Some(v) = query::field_view(pk, &join.foreign_field, id, record) {
                        lookup.push((join_key(&v), Found { pk, id, record }));
                    }
                }
            }
        }
        let mut index: BTreeMap<&str, Vec<Found<'a>>> = BTreeMap::new();
        for (key, found) in &lookup {
            index.entry(key.as_str()).or_default().push(*found);
        }
        for row in rows.iter_mut() {
            let local = query::field_view(
                row.found.pk,
                &join.local_field,
                row.found.id,
                row.found.record,
            );
            let matches = local
                .map(|v| {
                    index
                        .get(join_key(&v).as_str())
                        .cloned()
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            row.joined.push((join.as_field.as_str(), matches));
        }
    }

    /// Distinct values of a field among matching records, sorted (spec 10).
    pub fn distinct(
        &self,
        collection: &str,
        field: &str,
        filter: &Filter,
        now: Timestamp,
    ) -> Result<Vec<Json>> {
        let Some(c) = self.collections.get(collection) else {
            return Ok(Vec::new());
        };
        let pk = c.schema.primary_key_alias.as_str();
        let mut values: Vec<Json> = c
            .iter_live(now)
            .filter(|(id, r)| filter.matches(pk, id, r))
            .filter_map(|(id, r)| query::field_view(pk, field, id, r))
            .filter(|v| !v.is_null())
            .map(|v| v.to_json())
            .collect();
        values.sort_by(compare_json);
        values.dedup_by(|a, b| json_eq(a, b));
        Ok(values)
    }

    pub fn count(&self, collection: &str, now: Timestamp) -> usize {
        self.collections
            .get(collection)
            .map_or(0, |c| c.iter_live(now).count())
    }

    // ----- search -----------------------------------------------------------

    /// Text, vector or hybrid search (spec 11, D1). `filter` pre-filters; an
    /// unknown collection has no results. Returns the hits (best first) and the
    /// number of matches before the limit.
    pub fn search<'a>(
        &'a mut self,
        collection: &str,
        req: &search::SearchRequest,
        filter: &Filter,
        now: Timestamp,
    ) -> Result<(Vec<SearchHit<'a>>, usize)> {
        let text_mode = !req.text.query.trim().is_empty();
        let vector_mode = req.vector.is_some();
        let Some(c) = self.collections.get_mut(collection) else {
            return Ok((Vec::new(), 0));
        };
        if text_mode {
            let declared = search::declared(&c.schema).0.flatten();
            c.text_index(declared.as_deref())?;
        }
        if vector_mode {
            c.vector_index(&req.vector_field, req.metric);
        }
        let c: &'a Collection = c;
        let pk = c.schema.primary_key_alias.as_str();
        let state = c.search_state();
        let accept = |doc: tidepool_search::DocId| {
            state
                .id(doc)
                .and_then(|id| c.raw_entry(id))
                .is_some_and(|(id, r)| !r.is_expired(now) && filter.matches(pk, id, r))
        };
        let hybrid = text_mode && vector_mode;
        // A hybrid blend needs candidates from both lists beyond the final limit.
        let candidates = if hybrid {
            req.limit
                .max(req.vector_k.unwrap_or(0))
                .saturating_mul(3)
                .max(50)
        } else {
            req.limit
        };
        let mut matched: HashMap<u32, Vec<String>> = HashMap::new();
        let mut text_hits: Vec<(tidepool_search::DocId, f32)> = Vec::new();
        let mut total = 0;
        if text_mode {
            if let Some(index) = state.text() {
                let mut q = req.text.clone();
                q.limit = candidates;
                let found = index
                    .search(&q, &accept)
                    .map_err(|e| Error::invalid(e.to_string()))?;
                total = found.total;
                for h in found.hits {
                    text_hits.push((h.doc, h.score));
                    matched.insert(h.doc.0, h.matched_fields);
                }
            }
        }
        let mut vector_hits = Vec::new();
        if let (Some(v), Some(index)) = (&req.vector, state.vector(&req.vector_field, req.metric)) {
            let k = if hybrid {
                candidates
            } else {
                req.vector_k.unwrap_or(req.limit)
            };
            vector_hits = index
                .search(v, k, req.ef_search, req.threshold, &accept)
                .map_err(|e| {
                    Error::invalid(format!("vector search on `{}`: {e}", req.vector_field))
                })?;
        }
        let ranked: Vec<(tidepool_search::DocId, f32)> = match (text_mode, vector_mode) {
            (true, true) => {
                let mut union: Vec<u32> = text_hits
                    .iter()
                    .chain(&vector_hits)
                    .map(|(d, _)| d.0)
                    .collect();
                union.sort_unstable();
                union.dedup();
                total = union.len();
                tidepool_search::hybrid(
                    &text_hits,
                    &vector_hits,
                    req.text_weight,
                    req.vector_weight,
                    req.limit,
                )
            }
            (true, false) => text_hits,
            (false, true) => {
                total = vector_hits.len();
                vector_hits.truncate(req.limit);
                vector_hits
            }
            (false, false) => Vec::new(),
        };
        let hits = ranked
            .into_iter()
            .filter_map(|(doc, score)| {
                let (id, record) = c.raw_entry(state.id(doc)?)?;
                Some(SearchHit {
                    found: Found { pk, id, record },
                    score,
                    matched_fields: matched.remove(&doc.0).unwrap_or_default(),
                })
            })
            .collect();
        Ok((hits, total))
    }

    // ----- key-value store --------------------------------------------------

    fn kv_store(&mut self, key: &str, entry: KvEntry) {
        self.kv_take(key);
        if let Some(t) = entry.expires_at {
            self.kv_expiry.insert((t, key.into()));
        }
        self.kv.insert(key.into(), entry);
    }

    fn kv_take(&mut self, key: &str) -> Option<KvEntry> {
        let old = self.kv.remove(key)?;
        if let Some(t) = old.expires_at {
            self.kv_expiry.remove(&(t, key.into()));
        }
        Some(old)
    }

    pub fn kv_set(&mut self, key: &str, value: Json, expires_at: Option<Timestamp>) -> Result<()> {
        validate_name("key", key)?;
        let entry = KvEntry { value, expires_at };
        self.journal
            .record(&MutationRef::KvPut { key, entry: &entry });
        self.kv_store(key, entry);
        Ok(())
    }

    pub fn kv_get(&self, key: &str, now: Timestamp) -> Option<&KvEntry> {
        self.kv.get(key).filter(|e| !e.is_expired(now))
    }

    /// Deletes a key; `false` if it was not there (or already expired).
    pub fn kv_delete(&mut self, key: &str, now: Timestamp) -> bool {
        let existed = self.kv_get(key, now).is_some();
        if self.kv.contains_key(key) {
            self.journal.record(&MutationRef::KvRemove { key });
            self.kv_take(key);
        }
        existed
    }

    pub fn kv_clear(&mut self, now: Timestamp) -> usize {
        let n = self.kv.values().filter(|e| !e.is_expired(now)).count();
        if !self.kv.is_empty() {
            self.journal.record(&MutationRef::KvClear);
            self.kv.clear();
            self.kv_expiry.clear();
        }
        n
    }

    /// Keys matching `pattern` (unanchored), with their entries.
    pub fn kv_find(
        &self,
        pattern: Option<&regex::Regex>,
        include_expired: bool,
        now: Timestamp,
    ) -> Vec<(&str, &KvEntry)> {
        self.kv
            .iter()
            .filter(|(_, e)| include_expired || !e.is_expired(now))
            .filter(|(k, _)| pattern.is_none_or(|p| p.is_match(k)))
            .map(|(k, e)| (k.as_ref(), e))
            .collect()
    }

    pub fn kv_links(&self, key: &str) -> &[Link] {
        self.links.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn kv_link(&mut self, key: &str, link: Link) -> Result<()> {
        validate_name("key", key)?;
        let mut links = self.kv_links(key).to_vec();
        links.retain(|l| !(l.collection == link.collection && l.document_id == link.document_id));
        links.push(link);
        self.journal
            .record(&MutationRef::KvLinks { key, links: &links });
        self.links.insert(key.into(), links);
        Ok(())
    }

    pub fn kv_unlink(&mut self, key: &str, collection: &str, document_id: &str) -> bool {
        let mut links = self.kv_links(key).to_vec();
        let before = links.len();
        links.retain(|l| !(l.collection == collection && l.document_id == document_id));
        if links.len() == before {
            return false;
        }
        self.journal
            .record(&MutationRef::KvLinks { key, links: &links });
        if links.is_empty() {
            self.links.remove(key);
        } else {
            self.links.insert(key.into(), links);
        }
        true
    }

    // ----- expiry -----------------------------------------------------------

    /// When the next record, KV entry or trash entry expires.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let records = self
            .collections
            .values()
            .filter_map(Collection::next_expiry)
            .min();
        let trash = self
            .collections
            .values()
            .filter_map(Collection::oldest_trash)
            .min()
            .map(|t| t.saturating_add(TRASH_RETENTION));
        let kv = self.kv_expiry.first().map(|(t, _)| *t);
        [records, trash, kv].into_iter().flatten().min()
    }

    /// Removes what has expired by `now` (bounded per call; `next_deadline` says
    /// when to come back). Expired records are gone for good, not trashed.
    pub fn sweep(&mut self, now: Timestamp) -> Vec<(String, Vec<String>)> {
        let mut removed = Vec::new();
        let mut budget = SWEEP_BATCH;
        let names: Vec<Box<str>> = self.collections.keys().cloned().collect();
        for name in names {
            let Some(c) = self.collections.get_mut(&name) else {
                continue;
            };
            let ids = c.expired_ids(now, budget);
            budget -= ids.len();
            let mut gone = Vec::with_capacity(ids.len());
            for id in ids {
                c.take(&id);
                self.journal.record(&MutationRef::Remove {
                    collection: &name,
                    id: &id,
                    trash: None,
                });
                gone.push(id.into_string());
            }
            let cutoff = Timestamp::from_micros(
                now.micros()
                    .saturating_sub(TRASH_RETENTION.as_micros() as i64),
            );
            for id in c.trash_older_than(cutoff, budget) {
                c.trash_take(&id);
                budget -= 1;
                self.journal.record(&MutationRef::TrashPurge {
                    collection: &name,
                    id: &id,
                });
            }
            if !gone.is_empty() {
                removed.push((name.into_string(), gone));
            }
            if budget == 0 {
                return removed;
            }
        }
        let expired_keys: Vec<Box<str>> = self
            .kv_expiry
            .iter()
            .take_while(|(t, _)| *t <= now)
            .take(budget)
            .map(|(_, k)| k.clone())
            .collect();
        for key in expired_keys {
            self.kv_take(&key);
            self.journal.record(&MutationRef::KvRemove { key: &key });
        }
        removed
    }

    // ----- snapshots --------------------------------------------------------

    /// Encodes up to `max_records` more of the live state as a batch of
    /// full-state mutations; `None` when the cursor has covered everything.
    pub fn snapshot_chunk(
        &self,
        cursor: &mut SnapshotCursor,
        max_records: usize,
    ) -> Option<Vec<u8>> {
        snapshot::chunk(self, cursor, max_records)
    }

    pub fn new_id(&mut self, now: Timestamp) -> String {
        self.ids.next_id(now)
    }

    pub fn token(&mut self, bytes: usize) -> String {
        self.ids.token(bytes)
    }
}

/// How a value is matched in a join: numbers by value, everything else by its text.
fn join_key(v: &View<'_>) -> String {
    match v.as_f64() {
        Some(f) => format!("n:{f}"),
        None => format!("s:{}", v.render()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trash_is_kept_for_its_retention_then_purged() {
        let mut e = Engine::new(1);
        let t0 = Timestamp::from_secs(1_700_000_000);
        e.insert("c", json!({"id": "a", "n": 1}), t0).unwrap();
        e.insert("c", json!({"id": "b", "n": 2}), t0).unwrap();
        e.delete("c", "a", t0).unwrap();
        let later = t0.saturating_add(Duration::from_secs(3600));
        e.delete("c", "b", later).unwrap();
        e.commit(later);
        // The sweep is due when the oldest trash entry reaches its retention.
        assert_eq!(e.next_deadline(), Some(t0.saturating_add(TRASH_RETENTION)));
        let due = t0.saturating_add(TRASH_RETENTION + Duration::from_secs(1));
        e.sweep(due);
        assert!(e.commit(due).is_some(), "the purge is logged");
        assert!(!e.restore("c", "a", due).unwrap(), "past retention: gone");
        assert!(
            e.restore("c", "b", due).unwrap(),
            "within retention: restorable"
        );
        assert_eq!(
            e.find_by_id("c", "b", due).unwrap().record.get("n"),
            Some(&Value::Integer(2))
        );
    }
}
