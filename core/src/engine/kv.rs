//! The key-value store (spec 12): values stored verbatim, optional expiry, and
//! links from a key to documents.

use super::mutation::Mutation;
use super::{validate_name, Engine};
use crate::error::Result;
use crate::time::Timestamp;
use crate::value::Json;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvEntry {
    pub value: Json,
    pub expires_at: Option<Timestamp>,
}

impl KvEntry {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        matches!(self.expires_at, Some(t) if t <= now)
    }
}

/// A link from a KV key to a document (spec 12.9).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub collection: String,
    pub document_id: String,
    pub field_path: Option<String>,
    pub keys: Option<Vec<String>>,
    pub metadata: Option<Json>,
    pub created_at: Timestamp,
}

impl Engine {
    pub(super) fn kv_store(&mut self, key: &str, entry: KvEntry) {
        self.kv_take(key);
        if let Some(t) = entry.expires_at {
            self.kv_expiry.insert((t, key.into()));
        }
        self.kv.insert(key.into(), entry);
    }

    pub(super) fn kv_take(&mut self, key: &str) -> Option<KvEntry> {
        let old = self.kv.remove(key)?;
        if let Some(t) = old.expires_at {
            self.kv_expiry.remove(&(t, key.into()));
        }
        Some(old)
    }

    pub fn kv_set(&mut self, key: &str, value: Json, expires_at: Option<Timestamp>) -> Result<()> {
        validate_name("key", key)?;
        let entry = KvEntry { value, expires_at };
        self.log_checked(Mutation::KvPut {
            key: key.into(),
            entry: Cow::Owned(entry),
        })
        .map_err(|_| self.batch_too_large())
    }

    pub fn kv_get(&self, key: &str, now: Timestamp) -> Option<&KvEntry> {
        self.kv.get(key).filter(|e| !e.is_expired(now))
    }

    /// Deletes a key; `false` if it was not there (or already expired).
    pub fn kv_delete(&mut self, key: &str, now: Timestamp) -> bool {
        let existed = self.kv_get(key, now).is_some();
        if self.kv.contains_key(key) {
            self.log(Mutation::KvRemove { key: key.into() });
        }
        existed
    }

    pub fn kv_clear(&mut self, now: Timestamp) -> usize {
        let n = self.kv.values().filter(|e| !e.is_expired(now)).count();
        if !self.kv.is_empty() {
            self.log(Mutation::KvClear);
        }
        n
    }

    /// Keys matching `pattern` (unanchored) with their entries, in key order
    /// from after `after` when given, lazily: the caller takes a page.
    pub fn kv_find<'a>(
        &'a self,
        pattern: Option<&'a regex::Regex>,
        include_expired: bool,
        after: Option<&str>,
        now: Timestamp,
    ) -> impl Iterator<Item = (&'a str, &'a KvEntry)> + 'a {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = after.map_or(Unbounded, |a| Excluded(Box::<str>::from(a)));
        self.kv
            .range((start, Unbounded))
            .filter(move |(_, e)| include_expired || !e.is_expired(now))
            .filter(move |(k, _)| pattern.is_none_or(|p| p.is_match(k)))
            .map(|(k, e)| (k.as_ref(), e))
    }

    pub fn kv_links(&self, key: &str) -> &[Link] {
        self.links.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn kv_link(&mut self, key: &str, link: Link) -> Result<()> {
        validate_name("key", key)?;
        let mut links = self.kv_links(key).to_vec();
        links.retain(|l| !(l.collection == link.collection && l.document_id == link.document_id));
        links.push(link);
        self.log(Mutation::KvLinks {
            key: key.into(),
            links: Cow::Owned(links),
        });
        Ok(())
    }

    pub fn kv_unlink(&mut self, key: &str, collection: &str, document_id: &str) -> bool {
        let mut links = self.kv_links(key).to_vec();
        let before = links.len();
        links.retain(|l| !(l.collection == collection && l.document_id == document_id));
        if links.len() == before {
            return false;
        }
        self.log(Mutation::KvLinks {
            key: key.into(),
            links: Cow::Owned(links),
        });
        true
    }
}
