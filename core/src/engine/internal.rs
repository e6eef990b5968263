//! Records the server keeps for itself in internal collections (chat sessions
//! and messages): written like any record, so they are logged, replayed,
//! snapshotted and visible to the data API, plus the few operations the
//! data API does not need: a scan by id prefix, and removal without trash.

use super::mutation::{LoggedRecord, Mutation};
use super::record::Record;
use super::{validate_id, validate_name, Engine, Found};
use crate::error::Result;
use crate::time::Timestamp;
use crate::value::Value;
use std::borrow::Cow;

impl Engine {
    /// Live records whose id starts with `prefix`, in id order.
    pub fn with_id_prefix<'a>(
        &'a self,
        collection: &str,
        prefix: &'a str,
        now: Timestamp,
    ) -> impl Iterator<Item = Found<'a>> + 'a {
        let c = self.collections.get(collection);
        let pk = c.map_or("id", |c| c.schema.primary_key_alias.as_str());
        c.into_iter()
            .flat_map(move |c| c.range_from(prefix))
            .take_while(move |(id, _)| id.starts_with(prefix))
            .filter(move |(_, r)| !r.is_expired(now))
            .map(move |(id, record)| Found { pk, id, record })
    }

    /// Writes a whole record (replacing any previous version), typed as given.
    pub fn put_internal(
        &mut self,
        collection: &str,
        id: &str,
        fields: Vec<(&str, Value)>,
        now: Timestamp,
    ) -> Result<()> {
        self.put_internal_until(collection, id, fields, None, now)
    }

    /// Writes a whole record that expires at `expires_at` (swept like any
    /// record with a TTL).
    pub fn put_internal_until(
        &mut self,
        collection: &str,
        id: &str,
        fields: Vec<(&str, Value)>,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<()> {
        validate_name("collection", collection)?;
        validate_id(id)?;
        let mut record = Record::new();
        for (name, value) in fields {
            record.set(self.interner.intern(name), value);
        }
        record.expires_at = expires_at;
        record.version = self.op_lsn();
        self.implicit_collection(collection, now);
        let insert = self
            .collections
            .get(collection)
            .and_then(|c| c.raw(id))
            .is_none();
        self.log(Mutation::Put {
            collection: Cow::Borrowed(collection),
            id: Cow::Borrowed(id),
            record: LoggedRecord::Owned(record),
            insert,
        });
        Ok(())
    }

    /// One internal record.
    pub fn get_internal(&self, collection: &str, id: &str, now: Timestamp) -> Option<Found<'_>> {
        let c = self.collections.get(collection)?;
        let (id, record) = c.raw_entry(id)?;
        (!record.is_expired(now)).then_some(Found {
            pk: c.schema.primary_key_alias.as_str(),
            id,
            record,
        })
    }

    /// Removes a record for good (no trash); `false` if it was not there.
    pub fn purge(&mut self, collection: &str, id: &str) -> bool {
        let present = self
            .collections
            .get(collection)
            .is_some_and(|c| c.raw(id).is_some());
        if present {
            self.log(Mutation::Remove {
                collection: Cow::Borrowed(collection),
                id: Cow::Borrowed(id),
                trash: None,
            });
        }
        present
    }
}
