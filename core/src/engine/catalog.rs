//! Collections and their schemas: create (explicitly, or implicitly by a first
//! write), change constraints, drop.

use super::collection::Collection;
use super::mutation::Mutation;
use super::schema::Schema;
use super::{missing_collection, validate_name, Engine};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use serde_json::Value as J;
use std::borrow::Cow;

impl Engine {
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
        self.log(Mutation::SetSchema {
            collection: name.into(),
            schema: Cow::Owned(schema),
        });
        Ok(())
    }

    /// Ensures a collection exists (WebSocket `CreateCollection` with no schema).
    pub fn ensure_collection(&mut self, name: &str, now: Timestamp) -> Result<()> {
        validate_name("collection", name)?;
        self.implicit_collection(name, now);
        Ok(())
    }

    pub(super) fn implicit_collection(&mut self, name: &str, now: Timestamp) {
        if !self.collections.contains_key(name) {
            self.log(Mutation::SetSchema {
                collection: name.into(),
                schema: Cow::Owned(Schema::empty(now)),
            });
        }
    }

    pub fn update_constraints(&mut self, name: &str, body: &J, now: Timestamp) -> Result<&Schema> {
        let c = self.collection(name)?;
        let mut schema = c.schema.clone();
        schema.apply_constraints(body, now)?;
        self.log(Mutation::SetSchema {
            collection: name.into(),
            schema: Cow::Owned(schema),
        });
        Ok(&self.collection(name)?.schema)
    }

    pub fn drop_collection(&mut self, name: &str) -> Result<()> {
        if !self.collections.contains_key(name) {
            return Err(missing_collection(name));
        }
        self.log(Mutation::DropCollection {
            collection: name.into(),
        });
        Ok(())
    }
}
