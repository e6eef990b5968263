//! Writing records: building a typed record from a body (schema coercion and
//! validation, TTL), inserts, updates, atomic actions, soft deletes into the
//! trash, restores, and the batch forms of each.

use super::actions::{self, Action};
use super::mutation::{LoggedRecord, Mutation};
use super::record::Record;
use super::{
    missing_collection, parse_ttl, validate_id, validate_name, BatchOutcome, Engine, Found,
};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::value::Value;
use serde_json::Value as J;

impl Engine {
    /// Turns a write body into typed fields on top of `base` (empty for inserts).
    /// Returns the id the body names, if any.
    pub(super) fn build_record(
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
    pub(super) fn store(
        &mut self,
        collection: &str,
        id: &str,
        record: Record,
        now: Timestamp,
    ) -> Result<()> {
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
        self.log_checked(Mutation::Put {
            collection: collection.into(),
            id: id.into(),
            record: LoggedRecord::Owned(record),
            insert,
        })
        .map_err(|_| self.batch_too_large())?;
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
        self.apply_steps(collection, &mut record, steps)?;
        record.version = self.op_lsn();
        self.store(collection, id, record, now)?;
        self.found(collection, id)
    }

    /// Applies atomic actions to a copy of a record, each checked against
    /// the collection's schema.
    pub(super) fn apply_steps(
        &mut self,
        collection: &str,
        record: &mut Record,
        steps: Vec<(Action, String, Option<J>)>,
    ) -> Result<()> {
        for (action, field, value) in steps {
            if field.is_empty() {
                return Err(Error::invalid("an action needs a `field`"));
            }
            let key = self.interner.intern(&field);
            actions::apply(record, key, action, value.as_ref())?;
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
        Ok(())
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
        let logged = self.log_checked(Mutation::Remove {
            collection: collection.into(),
            id: id.into(),
            trash: Some((LoggedRecord::Owned(record), now)),
        });
        if let Err(m) = logged {
            // Refused: the record goes back where it was.
            if let Mutation::Remove {
                trash: Some((LoggedRecord::Owned(record), _)),
                ..
            } = *m
            {
                if let Some(c) = self.collections.get_mut(collection) {
                    c.put(id, record);
                }
            }
            return Err(self.batch_too_large());
        }
        let c = self.collection(collection)?;
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
        let (record, at) = c
            .trash_take(id)
            .ok_or_else(|| Error::internal("trash entry vanished"))?;
        let logged = self.log_checked(Mutation::Restore {
            collection: collection.into(),
            id: id.into(),
            record: LoggedRecord::Owned(record),
        });
        if let Err(m) = logged {
            // Refused: the record stays in the trash.
            if let Mutation::Restore {
                record: LoggedRecord::Owned(record),
                ..
            } = *m
            {
                if let Some(c) = self.collections.get_mut(collection) {
                    c.trash_put(id, record, at);
                }
            }
            return Err(self.batch_too_large());
        }
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
            match self.restore(collection, &id, now) {
                Ok(true) => n += 1,
                // The batch is full: what is restored stays (the count says
                // how much), the rest waits in the trash for another call.
                Err(e) if e.kind == crate::error::ErrorKind::TooLarge => break,
                _ => {}
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
}
