//! What a non-admin API key may touch (spec 14.1, 14.7): grants per
//! collection (read, write, and the fields it may read or write) and per KV
//! key prefix. Everything a key was not granted is refused with 403; an admin
//! key is not limited at all.

use crate::engine::record::Projection;
use crate::error::{Error, ErrorKind, Result};
use serde_json::{json, Map, Value as J};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Reading or writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
        }
    }
}

/// One collection's grant. The field lists are `None` when unrestricted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CollectionGrant {
    pub read: bool,
    pub write: bool,
    pub select_fields: Option<Vec<String>>,
    pub exclude_fields: Option<Vec<String>>,
    pub writable_fields: Option<Vec<String>>,
    /// Keys of the grant Tidepool does not interpret, kept as they came.
    pub extra: Map<String, J>,
}

/// One KV prefix's grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvGrant {
    pub prefix: String,
    pub read: bool,
    pub write: bool,
}

/// Everything a non-admin key was granted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Grants {
    pub collections: BTreeMap<String, CollectionGrant>,
    pub kv: Vec<KvGrant>,
}

/// What the caller of one request may do.
#[derive(Clone, Debug, PartialEq)]
pub enum Access {
    /// An admin key (or an internal call): anything.
    Admin,
    /// A non-admin key: its grants only.
    Limited(Arc<Grants>),
}

pub(crate) fn forbidden(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Forbidden, msg)
}

impl Access {
    pub fn is_admin(&self) -> bool {
        matches!(self, Access::Admin)
    }

    /// Refuses a non-admin key (server administration).
    pub fn require_admin(&self, what: &str) -> Result<()> {
        match self {
            Access::Admin => Ok(()),
            Access::Limited(_) => Err(forbidden(format!("{what} needs an admin key"))),
        }
    }

    /// The key's grant on a collection, or 403 when it may not `action` it.
    /// `None` for an admin (no restriction).
    pub fn collection(&self, name: &str, action: Action) -> Result<Option<&CollectionGrant>> {
        if name == super::keys::KEYS {
            return Err(forbidden(format!("`{name}` holds API keys: use /api/auth")));
        }
        let Access::Limited(grants) = self else {
            return Ok(None);
        };
        match grants.collections.get(name) {
            Some(g) if g.allows(action) => Ok(Some(g)),
            _ => Err(forbidden(format!(
                "this API key may not {} collection `{name}`",
                action.as_str()
            ))),
        }
    }

    /// Whether a collection is visible at all (listed, readable).
    pub fn sees_collection(&self, name: &str) -> bool {
        self.collection(name, Action::Read).is_ok()
    }

    /// The fields of a collection this key may read, as a projection to
    /// apply on top of the caller's own (`None`: every field).
    pub fn read_projection(&self, collection: &str) -> Option<Projection> {
        let Access::Limited(grants) = self else {
            return None;
        };
        let g = grants.collections.get(collection)?;
        if g.select_fields.is_none() && g.exclude_fields.is_none() {
            return None;
        }
        // An explicit empty select list is a real value: no field but the
        // primary key.
        let select = match &g.select_fields {
            Some(fields) if fields.is_empty() => Projection::key_only().select,
            fields => fields.clone().unwrap_or_default(),
        };
        Some(Projection {
            select,
            exclude: g.exclude_fields.clone().unwrap_or_default(),
        })
    }

    /// Refuses a read that names (filters, sorts, groups on) a field the key
    /// may not read: results ordered or chosen by a hidden field would
    /// reveal it.
    pub fn check_readable_field(&self, collection: &str, field: &str) -> Result<()> {
        let Some(p) = self.read_projection(collection) else {
            return Ok(());
        };
        let top = field.split('.').next().unwrap_or(field);
        if is_primary_key(top) || p.keeps(top) {
            return Ok(());
        }
        Err(forbidden(format!(
            "this API key may not read field `{field}` of collection `{collection}`"
        )))
    }

    /// Refuses a write of a field outside the collection's writable fields.
    pub fn check_writable_fields<'f>(
        &self,
        collection: &str,
        fields: impl IntoIterator<Item = &'f str>,
    ) -> Result<()> {
        let Some(grant) = self.collection(collection, Action::Write)? else {
            return Ok(());
        };
        let Some(writable) = &grant.writable_fields else {
            return Ok(());
        };
        for field in fields {
            let top = field.split('.').next().unwrap_or(field);
            if !is_primary_key(top) && !writable.iter().any(|w| w == top) {
                return Err(forbidden(format!(
                    "this API key may not write field `{top}` of collection `{collection}`"
                )));
            }
        }
        Ok(())
    }

    /// 403 unless the key may `action` the KV key `key`: a grant whose
    /// prefix it starts with allows it (the longest such prefix decides).
    pub fn kv(&self, key: &str, action: Action) -> Result<()> {
        if self.sees_kv(key, action) {
            return Ok(());
        }
        Err(forbidden(format!(
            "this API key may not {} KV key `{key}`",
            action.as_str()
        )))
    }

    /// Whether the key may `action` the KV key `key`.
    pub fn sees_kv(&self, key: &str, action: Action) -> bool {
        let Access::Limited(grants) = self else {
            return true;
        };
        grants
            .kv
            .iter()
            .filter(|g| key.starts_with(g.prefix.as_str()))
            .max_by_key(|g| g.prefix.len())
            .is_some_and(|g| match action {
                Action::Read => g.read,
                Action::Write => g.write,
            })
    }
}

fn is_primary_key(field: &str) -> bool {
    field == "id" || field == "_id"
}

impl CollectionGrant {
    pub fn allows(&self, action: Action) -> bool {
        match action {
            Action::Read => self.read,
            Action::Write => self.write,
        }
    }

    /// A grant as the clients send it: an action list (`["read"]`) or an
    /// object `{read, write, select_fields?, exclude_fields?, writable_fields?}`.
    pub fn parse(j: &J) -> Result<CollectionGrant> {
        match j {
            J::Array(actions) => {
                let mut g = CollectionGrant::default();
                for a in actions {
                    match a.as_str() {
                        Some("read") => g.read = true,
                        Some("write") => g.write = true,
                        _ => {
                            return Err(Error::invalid(format!(
                                "a grant's actions are \"read\" and \"write\", not {a}"
                            )))
                        }
                    }
                }
                Ok(g)
            }
            J::Object(o) => {
                let mut g = CollectionGrant::default();
                g.apply(o, true)?;
                Ok(g)
            }
            _ => Err(Error::invalid(
                "a collection grant is an action list or an object {read, write, ...}",
            )),
        }
    }

    /// Applies an edit (spec 14.5): `read`/`write` set when present (required
    /// when `full`); each field list kept when omitted, cleared by `null`,
    /// replaced by an array (an empty one is a real value).
    pub fn apply(&mut self, o: &Map<String, J>, full: bool) -> Result<()> {
        for action in ["read", "write"] {
            match o.get(action) {
                Some(J::Bool(b)) => *self.flag(action) = *b,
                None if !full => {}
                _ => {
                    return Err(Error::invalid(format!(
                        "a grant needs a boolean `{action}`"
                    )))
                }
            }
        }
        for (name, slot) in [
            ("select_fields", &mut self.select_fields),
            ("exclude_fields", &mut self.exclude_fields),
            ("writable_fields", &mut self.writable_fields),
        ] {
            match o.get(name) {
                None => {}
                Some(J::Null) => *slot = None,
                Some(J::Array(items)) => {
                    let fields = items
                        .iter()
                        .map(|f| match f.as_str() {
                            Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
                            _ => Err(Error::invalid(format!(
                                "`{name}` must be a list of non-empty field names"
                            ))),
                        })
                        .collect::<Result<Vec<String>>>()?;
                    *slot = Some(fields);
                }
                Some(_) => {
                    return Err(Error::invalid(format!(
                        "`{name}` must be null or a list of field names"
                    )))
                }
            }
        }
        for (k, v) in o {
            if !matches!(
                k.as_str(),
                "read" | "write" | "select_fields" | "exclude_fields" | "writable_fields"
            ) {
                self.extra.insert(k.clone(), v.clone());
            }
        }
        Ok(())
    }

    fn flag(&mut self, action: &str) -> &mut bool {
        if action == "read" {
            &mut self.read
        } else {
            &mut self.write
        }
    }

    /// The object form (spec 14.1).
    pub fn to_wire(&self) -> J {
        let mut o = self.extra.clone();
        o.insert("read".into(), J::Bool(self.read));
        o.insert("write".into(), J::Bool(self.write));
        for (name, v) in [
            ("select_fields", &self.select_fields),
            ("exclude_fields", &self.exclude_fields),
            ("writable_fields", &self.writable_fields),
        ] {
            o.insert(name.into(), json!(v));
        }
        J::Object(o)
    }
}

impl KvGrant {
    pub fn parse(j: &J) -> Result<KvGrant> {
        let prefix = j
            .get("prefix")
            .and_then(J::as_str)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Error::invalid("a KV grant needs a non-empty `prefix`"))?;
        let flag = |k: &str| match j.get(k) {
            Some(J::Bool(b)) => Ok(*b),
            None | Some(J::Null) => Ok(false),
            Some(_) => Err(Error::invalid(format!("a KV grant's `{k}` is a boolean"))),
        };
        Ok(KvGrant {
            prefix: prefix.to_string(),
            read: flag("read")?,
            write: flag("write")?,
        })
    }

    pub fn to_wire(&self) -> J {
        json!({"prefix": self.prefix, "read": self.read, "write": self.write})
    }
}

impl Grants {
    /// `collection_permissions` and `kv_permissions` as the clients send them.
    pub fn parse(collections: Option<&J>, kv: Option<&J>) -> Result<Grants> {
        let mut g = Grants::default();
        match collections {
            None | Some(J::Null) => {}
            Some(J::Object(o)) => {
                for (name, grant) in o {
                    crate::engine::validate_name("collection", name)?;
                    g.collections
                        .insert(name.clone(), CollectionGrant::parse(grant)?);
                }
            }
            Some(_) => {
                return Err(Error::invalid(
                    "`collection_permissions` is an object of collection grants",
                ))
            }
        }
        match kv {
            None | Some(J::Null) => {}
            Some(J::Array(items)) => {
                for item in items {
                    g.set_kv(KvGrant::parse(item)?);
                }
            }
            Some(_) => {
                return Err(Error::invalid(
                    "`kv_permissions` is a list of {prefix, read, write}",
                ))
            }
        }
        Ok(g)
    }

    /// Replaces the grant of a prefix (or adds it).
    pub fn set_kv(&mut self, grant: KvGrant) {
        match self.kv.iter_mut().find(|g| g.prefix == grant.prefix) {
            Some(g) => *g = grant,
            None => self.kv.push(grant),
        }
    }

    pub fn collections_wire(&self) -> J {
        J::Object(
            self.collections
                .iter()
                .map(|(k, g)| (k.clone(), g.to_wire()))
                .collect(),
        )
    }

    pub fn kv_wire(&self) -> J {
        J::Array(self.kv.iter().map(KvGrant::to_wire).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(collections: J, kv: J) -> Access {
        Access::Limited(Arc::new(
            Grants::parse(Some(&collections), Some(&kv)).unwrap(),
        ))
    }

    #[test]
    fn collections_and_fields() {
        let a = limited(
            json!({"users": ["read"], "orders": {"read": true, "write": true,
                "select_fields": ["total", "status"], "writable_fields": ["status"]}}),
            json!([]),
        );
        assert!(a.collection("users", Action::Read).is_ok());
        assert_eq!(
            a.collection("users", Action::Write).unwrap_err().status(),
            403
        );
        assert_eq!(
            a.collection("secrets", Action::Read).unwrap_err().status(),
            403
        );
        assert!(a.read_projection("users").is_none());
        let p = a.read_projection("orders").unwrap();
        assert!(p.keeps("total") && !p.keeps("card"));
        assert!(a.check_readable_field("orders", "status").is_ok());
        assert!(a.check_readable_field("orders", "id").is_ok());
        assert_eq!(
            a.check_readable_field("orders", "card.number")
                .unwrap_err()
                .status(),
            403
        );
        assert!(a.check_writable_fields("orders", ["status"]).is_ok());
        assert!(a.check_writable_fields("orders", ["total"]).is_err());
        assert!(Access::Admin.collection("x", Action::Write).is_ok());
    }

    #[test]
    fn an_empty_select_list_leaves_only_the_key() {
        let a = limited(
            json!({"c": {"read": true, "write": false, "select_fields": []}}),
            json!([]),
        );
        let p = a.read_projection("c").unwrap();
        assert!(!p.keeps("name"));
    }

    #[test]
    fn the_longest_kv_prefix_decides() {
        let a = limited(
            json!({}),
            json!([{"prefix": "session:", "read": true, "write": true},
                   {"prefix": "session:admin:", "read": false, "write": false}]),
        );
        assert!(a.kv("session:1", Action::Write).is_ok());
        assert_eq!(
            a.kv("session:admin:1", Action::Read).unwrap_err().status(),
            403
        );
        assert!(a.kv("other", Action::Read).is_err());
    }

    #[test]
    fn edits_keep_clear_or_replace() {
        let mut g = CollectionGrant::parse(
            &json!({"read": true, "write": false, "select_fields": ["a"], "exclude_fields": ["b"]}),
        )
        .unwrap();
        g.apply(
            json!({"write": true, "exclude_fields": null, "writable_fields": []})
                .as_object()
                .unwrap(),
            false,
        )
        .unwrap();
        assert!(g.read && g.write);
        assert_eq!(g.select_fields, Some(vec!["a".to_string()]));
        assert_eq!(g.exclude_fields, None);
        assert_eq!(g.writable_fields, Some(vec![]));
        assert!(CollectionGrant::parse(&json!({"read": true})).is_err());
        assert!(CollectionGrant::parse(&json!(["delete"])).is_err());
        assert!(KvGrant::parse(&json!({"prefix": "", "read": true})).is_err());
    }
}
