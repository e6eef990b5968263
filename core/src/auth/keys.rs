//! Registered API keys (spec 14): stored as records of an internal
//! collection, so they are logged, replayed and snapshotted like any write
//! and survive a crash once acknowledged. A key is never stored in clear: a
//! record holds its SHA-256, and its id is the first half of that digest,
//! so finding a key by its secret is one lookup.

use super::grants::Grants;
use crate::engine::record::Record;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::value::Value;
use serde_json::{json, Map, Value as J};
use sha2::{Digest, Sha256};

/// The internal collection of registered keys.
pub const KEYS: &str = "api_keys__ek0_tidepool";

/// What the list shows instead of a secret it does not keep.
pub const HIDDEN: &str = "(hidden: shown only when the key is registered)";

/// A registered key.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredKey {
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub is_admin: bool,
    pub grants: Grants,
    pub label: Option<String>,
    pub description: Option<String>,
    /// Unix seconds. Tokens issued before it are not this key's (a key
    /// revoked and registered again does not revive old tokens).
    pub created_at: i64,
    /// Keys of the registration Tidepool does not interpret, kept.
    pub extra: Map<String, J>,
}

pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key's id: 32 lowercase hex characters derived from its secret.
pub fn id_of(secret: &str) -> String {
    hex(&digest(secret)[..16])
}

/// Whether `s` has the shape of a key id (the clients check it too).
pub fn is_key_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A custom key must be at least 32 characters with at least 8 distinct
/// ones (spec 2.1), so registered keys cannot be guessed.
pub fn validate_custom(secret: &str) -> Result<()> {
    let mut distinct: Vec<char> = secret.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if secret.chars().count() < 32 || distinct.len() < 8 {
        return Err(Error::invalid(
            "a custom key needs at least 32 characters, at least 8 of them distinct",
        ));
    }
    if secret.chars().any(char::is_control) {
        return Err(Error::invalid(
            "a custom key may not contain control characters",
        ));
    }
    Ok(())
}

impl StoredKey {
    pub fn new(secret: &str, is_admin: bool, grants: Grants, now: Timestamp) -> StoredKey {
        StoredKey {
            id: id_of(secret),
            hash: hex(&digest(secret)),
            is_admin,
            grants,
            label: None,
            description: None,
            created_at: now.secs(),
            extra: Map::new(),
        }
    }

    /// Whether `secret` is this key (compared in constant time).
    pub fn matches(&self, secret: &str) -> bool {
        let want = hex(&digest(secret));
        want.len() == self.hash.len()
            && want
                .bytes()
                .zip(self.hash.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// The key record the clients read (spec 14.1). `secret` is the key
    /// itself right after registering it, and a placeholder afterwards.
    pub fn to_wire(&self, secret: &str) -> J {
        let mut o = self.extra.clone();
        o.insert("id".into(), J::String(self.id.clone()));
        o.insert("key".into(), J::String(secret.to_string()));
        o.insert("is_admin".into(), J::Bool(self.is_admin));
        o.insert(
            "collection_permissions".into(),
            self.grants.collections_wire(),
        );
        o.insert("kv_permissions".into(), self.grants.kv_wire());
        o.insert("label".into(), json!(self.label));
        o.insert("description".into(), json!(self.description));
        o.insert("ripple_warning".into(), J::Null);
        o.insert("created_at".into(), json!(self.created_at));
        J::Object(o)
    }

    /// The permissions document of the modern routes (spec 14.5).
    pub fn permissions_wire(&self) -> J {
        json!({
            "admin": self.is_admin,
            "collections": self.grants.collections_wire(),
            "kv": self.grants.kv_wire(),
        })
    }

    fn to_stored(&self) -> J {
        let mut o = self.to_wire("");
        if let J::Object(m) = &mut o {
            m.remove("key");
            m.insert("hash".into(), J::String(self.hash.clone()));
        }
        o
    }

    fn from_stored(id: &str, j: &J) -> Option<StoredKey> {
        let text = |k: &str| j.get(k).and_then(J::as_str).map(str::to_string);
        let grants =
            Grants::parse(j.get("collection_permissions"), j.get("kv_permissions")).ok()?;
        let mut extra = j.as_object()?.clone();
        for k in [
            "id",
            "hash",
            "is_admin",
            "collection_permissions",
            "kv_permissions",
            "label",
            "description",
            "ripple_warning",
            "created_at",
        ] {
            extra.remove(k);
        }
        Some(StoredKey {
            id: id.to_string(),
            hash: text("hash")?,
            is_admin: j.get("is_admin").and_then(J::as_bool).unwrap_or(false),
            grants,
            label: text("label"),
            description: text("description"),
            created_at: j.get("created_at").and_then(J::as_i64).unwrap_or(0),
            extra,
        })
    }
}

/// A registered key by id.
pub fn load(engine: &Engine, id: &str, now: Timestamp) -> Option<StoredKey> {
    from_record(id, engine.get_internal(KEYS, id, now)?.record)
}

/// A key from its stored record (`None` if the record is not one).
fn from_record(id: &str, record: &Record) -> Option<StoredKey> {
    match record.get("key") {
        Some(Value::String(s)) => serde_json::from_str::<J>(s)
            .ok()
            .and_then(|j| StoredKey::from_stored(id, &j)),
        _ => None,
    }
}

/// Stores (or replaces) a key.
pub fn save(engine: &mut Engine, key: &StoredKey, now: Timestamp) -> Result<()> {
    let text = Value::String(key.to_stored().to_string().into());
    engine.put_internal(KEYS, &key.id, vec![("key", text)], now)
}

/// Every registered key, in id order.
pub fn list(engine: &Engine, now: Timestamp) -> Vec<StoredKey> {
    engine
        .with_id_prefix(KEYS, "", now)
        .filter_map(|f| from_record(f.id, f.record))
        .collect()
}

/// Removes a key; false if there was none.
pub fn remove(engine: &mut Engine, id: &str) -> bool {
    engine.purge(KEYS, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_keys_must_be_hard_to_guess() {
        assert!(validate_custom("short").is_err());
        assert!(validate_custom(&"ab".repeat(20)).is_err());
        assert!(validate_custom("0123456789abcdef0123456789abcdef").is_ok());
    }

    #[test]
    fn a_key_is_stored_without_its_secret() {
        let mut engine = Engine::new(1);
        let now = Timestamp::from_secs(1_700_000_000);
        let secret = "0123456789abcdef0123456789abcdef-x";
        let key = StoredKey::new(secret, false, Grants::default(), now);
        assert!(is_key_id(&key.id));
        save(&mut engine, &key, now).unwrap();
        engine.commit(now);
        let back = load(&engine, &key.id, now).unwrap();
        assert_eq!(back, key);
        assert!(back.matches(secret) && !back.matches("other"));
        let stored = engine.get_internal(KEYS, &key.id, now).unwrap();
        let Some(Value::String(text)) = stored.record.get("key") else {
            panic!("no key record")
        };
        assert!(!text.contains(secret));
        assert_eq!(list(&engine, now).len(), 1);
        assert!(remove(&mut engine, &key.id));
        assert!(load(&engine, &key.id, now).is_none());
    }
}
