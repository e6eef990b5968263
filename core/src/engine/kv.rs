//! The key-value store (spec 12): values stored verbatim, optional expiry, and
//! links from a key to documents.

use crate::time::Timestamp;
use crate::value::Json;
use serde::{Deserialize, Serialize};

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
