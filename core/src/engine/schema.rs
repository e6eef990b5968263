//! Collection schemas (spec 5.7): parsing the wire form, emitting it back in the
//! canonical shape the strict clients need, and checking writes against it.

use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::value::{value_from_input, FieldType, Json, Plain, Value, View};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as J};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub fields: BTreeMap<String, FieldSchema>,
    pub version: u32,
    pub created_at: Timestamp,
    pub last_modified: Timestamp,
    pub bypass_ripple: bool,
    pub primary_key_alias: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldSchema {
    pub field_type: FieldType,
    pub default: Option<Json>,
    pub unique: bool,
    pub required: bool,
    pub enums: Vec<Json>,
    pub max: Option<Json>,
    pub min: Option<Json>,
    pub regex: Option<String>,
    pub index: Option<IndexConfig>,
    /// `regex` compiled once, at its first use (compiling it for every
    /// written value cost 30 ms a value).
    #[serde(skip)]
    pub compiled: CompiledRegex,
}

/// A pattern compiled once and kept with its schema (not logged: it is
/// rebuilt from `regex`; equal whenever the patterns are).
#[derive(Clone, Debug, Default)]
pub struct CompiledRegex(std::sync::OnceLock<Option<regex::Regex>>);

impl PartialEq for CompiledRegex {
    fn eq(&self, _: &CompiledRegex) -> bool {
        true
    }
}

impl CompiledRegex {
    fn get(&self, pattern: &str) -> Option<&regex::Regex> {
        self.0
            .get_or_init(|| regex::Regex::new(pattern).ok())
            .as_ref()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum IndexConfig {
    Text {
        language: Option<String>,
        analyzer: Option<String>,
    },
    Vector {
        algorithm: String,
        metric: String,
        m: u32,
        ef_construction: u32,
        ef_search: Option<u32>,
        dimension: Option<u32>,
    },
    BTree,
    Hash,
}

impl Schema {
    /// The schema of a collection created implicitly by its first insert.
    pub fn empty(now: Timestamp) -> Schema {
        Schema {
            fields: BTreeMap::new(),
            version: 1,
            created_at: now,
            last_modified: now,
            bypass_ripple: false,
            primary_key_alias: "id".to_string(),
        }
    }

    /// Parses `POST /api/collections/{c}`'s body. Client-sent `version`,
    /// `created_at` and `last_modified` are ignored: the server owns them.
    pub fn from_wire(body: &J, now: Timestamp) -> Result<Schema> {
        let obj = body
            .as_object()
            .ok_or_else(|| Error::invalid("a schema must be a JSON object with `fields`"))?;
        let mut schema = Schema::empty(now);
        if let Some(fields) = obj.get("fields").filter(|f| !f.is_null()) {
            let fields = fields
                .as_object()
                .ok_or_else(|| Error::invalid("schema `fields` must be an object"))?;
            for (name, def) in fields {
                schema
                    .fields
                    .insert(name.clone(), FieldSchema::from_wire(name, def)?);
            }
        }
        if let Some(b) = obj.get("bypass_ripple").and_then(J::as_bool) {
            schema.bypass_ripple = b;
        }
        match obj.get("primary_key_alias") {
            None | Some(J::Null) => {}
            Some(J::String(alias)) if !alias.is_empty() => schema.primary_key_alias = alias.clone(),
            Some(_) => {
                return Err(Error::invalid(
                    "`primary_key_alias` must be a non-empty string",
                ))
            }
        }
        Ok(schema)
    }

    pub fn to_wire(&self) -> J {
        let fields: Map<String, J> = self
            .fields
            .iter()
            .map(|(k, f)| (k.clone(), f.to_wire()))
            .collect();
        json!({
            "fields": fields,
            "version": self.version,
            "created_at": self.created_at.to_rfc3339_z(),
            "last_modified": self.last_modified.to_rfc3339_z(),
            "bypass_ripple": self.bypass_ripple,
            "primary_key_alias": self.primary_key_alias,
        })
    }

    /// `PUT /api/schemas/{c}`: `{"constraints": {field: {attr: value}}}`; absent
    /// attributes stay as they are, a new field name adds a field.
    pub fn apply_constraints(&mut self, body: &J, now: Timestamp) -> Result<()> {
        let constraints = body
            .get("constraints")
            .and_then(J::as_object)
            .ok_or_else(|| Error::invalid("expected {\"constraints\": {field: {...}}}"))?;
        let mut next = self.fields.clone();
        for (name, patch) in constraints {
            let patch = patch.as_object().ok_or_else(|| {
                Error::invalid(format!("constraints for `{name}` must be an object"))
            })?;
            let field = match next.get(name) {
                Some(existing) => {
                    let mut merged = existing.to_wire();
                    if let Some(obj) = merged.as_object_mut() {
                        for (k, v) in patch {
                            obj.insert(k.clone(), v.clone());
                        }
                    }
                    FieldSchema::from_wire(name, &merged)?
                }
                None => FieldSchema::from_wire(name, &J::Object(patch.clone()))?,
            };
            next.insert(name.clone(), field);
        }
        self.fields = next;
        self.version += 1;
        self.last_modified = now;
        Ok(())
    }

    pub fn unique_fields(&self) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(|(_, f)| f.unique)
            .map(|(k, _)| k.as_str())
    }
}

impl FieldSchema {
    fn from_wire(name: &str, def: &J) -> Result<FieldSchema> {
        let type_name = match def {
            J::String(s) => s.as_str(),
            J::Object(o) => o
                .get("field_type")
                .or_else(|| o.get("type"))
                .and_then(J::as_str)
                .ok_or_else(|| Error::invalid(format!("field `{name}` needs a `field_type`")))?,
            _ => {
                return Err(Error::invalid(format!(
                    "field `{name}` must be an object with a `field_type`"
                )))
            }
        };
        let field_type = FieldType::parse_loose(type_name).ok_or_else(|| {
            Error::invalid(format!(
                "field `{name}` has unknown field_type `{type_name}`"
            ))
        })?;
        let get = |k: &str| def.get(k).filter(|v| !v.is_null());
        let flag = |k: &str| -> Result<bool> {
            match get(k) {
                None => Ok(false),
                Some(J::Bool(b)) => Ok(*b),
                Some(_) => Err(Error::invalid(format!(
                    "`{k}` of field `{name}` must be a boolean"
                ))),
            }
        };
        let enums = match get("enums") {
            None => Vec::new(),
            Some(J::Array(items)) => items.iter().cloned().map(Json::from).collect(),
            Some(_) => {
                return Err(Error::invalid(format!(
                    "`enums` of field `{name}` must be an array"
                )))
            }
        };
        let regex = match get("regex") {
            None => None,
            Some(J::String(r)) => {
                regex::Regex::new(r).map_err(|e| {
                    Error::invalid(format!("`regex` of field `{name}` is invalid: {e}"))
                })?;
                Some(r.clone())
            }
            Some(_) => {
                return Err(Error::invalid(format!(
                    "`regex` of field `{name}` must be a string"
                )))
            }
        };
        let index = match get("index") {
            None => None,
            Some(cfg) => Some(IndexConfig::from_wire(name, cfg)?),
        };
        Ok(FieldSchema {
            field_type,
            default: get("default").cloned().map(Json::from),
            unique: flag("unique")?,
            required: flag("required")?,
            enums,
            max: get("max").cloned().map(Json::from),
            min: get("min").cloned().map(Json::from),
            regex,
            index,
            compiled: CompiledRegex::default(),
        })
    }

    fn to_wire(&self) -> J {
        let opt = |v: &Option<Json>| v.as_ref().map_or(J::Null, Json::to_serde);
        let mut out = json!({
            "field_type": self.field_type.name(),
            "default": opt(&self.default),
            "unique": self.unique,
            "required": self.required,
            "enums": self.enums.iter().map(Json::to_serde).collect::<Vec<_>>(),
            "max": opt(&self.max),
            "min": opt(&self.min),
            "regex": self.regex,
        });
        if let (Some(index), Some(obj)) = (&self.index, out.as_object_mut()) {
            obj.insert("index".into(), index.to_wire());
        }
        out
    }

    /// Types a raw input value for this field, coercing the bare encodings some
    /// clients send (spec 3.2: Decimal/UUID as strings, Duration as {secs,nanos},
    /// Binary as byte arrays, Vector as a plain array).
    pub fn coerce(&self, name: &str, raw: J) -> Result<Value> {
        let mismatch = |got: FieldType| {
            Error::invalid(format!(
                "field `{name}` must be of type {} (got {})",
                self.field_type.name(),
                got.name()
            ))
        };
        let is_envelope = matches!(&raw, J::Object(o) if o.len() == 2
            && o.get("type").and_then(J::as_str).and_then(FieldType::from_canonical).is_some()
            && o.contains_key("value"));
        let value = if raw.is_null() {
            Value::Null
        } else if is_envelope {
            value_from_input(raw).map_err(|e| Error::invalid(format!("field `{name}`: {e}")))?
        } else {
            match crate::value::typed_input(self.field_type, raw.clone()) {
                Ok(v) => v,
                Err(_) => value_from_input(raw)
                    .map_err(|e| Error::invalid(format!("field `{name}`: {e}")))?,
            }
        };
        let got = value.field_type();
        let value = match (self.field_type, value) {
            (_, Value::Null) => Value::Null,
            (want, v) if want == got => v,
            (FieldType::Number, v @ (Value::Integer(_) | Value::Float(_))) => v,
            (FieldType::Float, Value::Integer(i)) => Value::Float(i as f64),
            (FieldType::Float | FieldType::Integer, Value::Number(n)) => match self.field_type {
                FieldType::Float => Value::Float(n.as_f64()),
                _ => match n {
                    crate::value::Num::Int(i) => Value::Integer(i),
                    crate::value::Num::Float(_) => return Err(mismatch(got)),
                },
            },
            (FieldType::Uuid, Value::Binary(b) | Value::Bytes(b)) if b.len() == 16 => {
                Value::Uuid(format_uuid(&b).into_boxed_str())
            }
            (FieldType::Binary, Value::Bytes(b)) => Value::Binary(b),
            (FieldType::Bytes, Value::Binary(b)) => Value::Bytes(b),
            (FieldType::Array, Value::Set(items)) => Value::Array(items),
            (FieldType::Set, Value::Array(items)) => Value::Set(items),
            (FieldType::Array, Value::Vector(v)) => {
                Value::Array(v.iter().map(|&f| Json::Float(f)).collect())
            }
            (FieldType::String, Value::DateTime(t)) => {
                Value::String(t.to_rfc3339().into_boxed_str())
            }
            _ => return Err(mismatch(got)),
        };
        if let (
            Some(IndexConfig::Vector {
                dimension: Some(d), ..
            }),
            Value::Vector(v),
        ) = (&self.index, &value)
        {
            if v.len() != *d as usize {
                return Err(Error::invalid(format!(
                    "field `{name}` is a vector of dimension {d}, got {}",
                    v.len()
                )));
            }
        }
        match &value {
            Value::Decimal(d) if !is_decimal(d) => {
                return Err(Error::invalid(format!(
                    "field `{name}` must be a Decimal like \"1234.56\", got \"{d}\""
                )))
            }
            Value::Uuid(u) if !is_uuid(u) => {
                return Err(Error::invalid(format!(
                    "field `{name}` must be a UUID like \"550e8400-e29b-41d4-a716-446655440000\", got \"{u}\""
                )))
            }
            _ => {}
        }
        Ok(value)
    }

    /// Checks enums, min/max and regex for one typed value (not `required`).
    pub fn check(&self, name: &str, value: &Value) -> Result<()> {
        if matches!(value, Value::Null) {
            return Ok(());
        }
        let view = value.view();
        if !self.enums.is_empty() && !self.enums.iter().any(|e| View::of_json(e).loose_eq(&view)) {
            let allowed: Vec<String> = self
                .enums
                .iter()
                .map(|e| serde_json::to_string(&Plain(e)).unwrap_or_default())
                .collect();
            return Err(Error::invalid(format!(
                "field `{name}` must be one of [{}]",
                allowed.join(", ")
            )));
        }
        let measure = |v: &View<'_>| -> Option<f64> {
            match v {
                View::Str(s) => Some(s.chars().count() as f64),
                View::Items(items) => Some(items.len() as f64),
                View::Floats(f) => Some(f.len() as f64),
                other => other.as_f64(),
            }
        };
        if let (Some(min), Some(actual)) =
            (self.min.as_ref().and_then(Json::as_f64), measure(&view))
        {
            if actual < min {
                return Err(Error::invalid(format!(
                    "field `{name}` is below its minimum {min}"
                )));
            }
        }
        if let (Some(max), Some(actual)) =
            (self.max.as_ref().and_then(Json::as_f64), measure(&view))
        {
            if actual > max {
                return Err(Error::invalid(format!(
                    "field `{name}` is above its maximum {max}"
                )));
            }
        }
        if let (Some(pattern), View::Str(s)) = (&self.regex, view) {
            // Patterns were validated when the schema was set.
            if let Some(re) = self.compiled.get(pattern) {
                if !re.is_match(s) {
                    return Err(Error::invalid(format!(
                        "field `{name}` does not match the pattern `{pattern}`"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl IndexConfig {
    fn from_wire(field: &str, cfg: &J) -> Result<IndexConfig> {
        let kind = cfg.get("type").and_then(J::as_str).unwrap_or("");
        let text = |k: &str| cfg.get(k).and_then(J::as_str).map(str::to_string);
        let num = |k: &str| -> Result<Option<u32>> {
            match cfg.get(k) {
                None | Some(J::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n > 0 && n <= 1_000_000)
                    .map(|n| Some(n as u32))
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "index `{k}` of field `{field}` must be a positive integer"
                        ))
                    }),
            }
        };
        match kind.to_ascii_lowercase().as_str() {
            "text" => Ok(IndexConfig::Text {
                language: text("language"),
                analyzer: text("analyzer"),
            }),
            "vector" => {
                let algorithm = text("algorithm")
                    .unwrap_or_else(|| "flat".into())
                    .to_ascii_lowercase();
                if !matches!(algorithm.as_str(), "flat" | "hnsw" | "ivf") {
                    return Err(Error::invalid(format!(
                        "unknown vector index algorithm `{algorithm}` (flat, hnsw, ivf)"
                    )));
                }
                let metric = text("metric")
                    .unwrap_or_else(|| "cosine".into())
                    .to_ascii_lowercase();
                if !matches!(
                    metric.as_str(),
                    "cosine" | "euclidean" | "dotproduct" | "dot"
                ) {
                    return Err(Error::invalid(format!(
                        "unknown vector metric `{metric}` (cosine, euclidean, dotproduct)"
                    )));
                }
                Ok(IndexConfig::Vector {
                    algorithm,
                    metric,
                    m: num("m")?.unwrap_or(16),
                    ef_construction: num("ef_construction")?.unwrap_or(200),
                    ef_search: num("ef_search")?,
                    dimension: num("dimension")?,
                })
            }
            "btree" => Ok(IndexConfig::BTree),
            "hash" => Ok(IndexConfig::Hash),
            other => Err(Error::invalid(format!(
                "unknown index type `{other}` for field `{field}` (text, vector, btree, hash)"
            ))),
        }
    }

    fn to_wire(&self) -> J {
        match self {
            IndexConfig::Text { language, analyzer } => {
                json!({"type": "text", "language": language, "analyzer": analyzer})
            }
            IndexConfig::Vector {
                algorithm,
                metric,
                m,
                ef_construction,
                ef_search,
                dimension,
            } => json!({
                "type": "vector", "algorithm": algorithm, "metric": metric, "m": m,
                "ef_construction": ef_construction, "ef_search": ef_search, "dimension": dimension,
            }),
            IndexConfig::BTree => json!({"type": "btree"}),
            IndexConfig::Hash => json!({"type": "hash"}),
        }
    }
}

/// `-12`, `1234.56`, `1e-3`: what a decimal type can hold.
fn is_decimal(s: &str) -> bool {
    let t = s.trim();
    !t.is_empty()
        && t.len() <= 128
        && t.parse::<f64>().is_ok_and(f64::is_finite)
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
}

/// Hyphenated (8-4-4-4-12) or plain 32-digit hexadecimal, optionally braced.
fn is_uuid(s: &str) -> bool {
    let t = s.trim_start_matches('{').trim_end_matches('}');
    let hex: String = t.chars().filter(|c| *c != '-').collect();
    let groups: Vec<usize> = t.split('-').map(str::len).collect();
    hex.len() == 32
        && hex.chars().all(|c| c.is_ascii_hexdigit())
        && (groups == [32] || groups == [8, 4, 4, 4, 12])
}

fn format_uuid(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regex_is_compiled_once_per_schema_not_per_value() {
        let spec = json!({"field_type": "String", "regex": "^[a-z]+(-[a-z]+)*$"});
        let field = FieldSchema::from_wire("slug", &spec).unwrap();
        let ok = Value::String("tide-pool".into());
        let bad = Value::String("Tide Pool".into());
        field.check("slug", &ok).unwrap();
        let first: *const regex::Regex = field.compiled.get("unused").unwrap();
        for _ in 0..3 {
            field.check("slug", &ok).unwrap();
            assert!(field.check("slug", &bad).is_err());
        }
        // The same compiled pattern serves every value, and copies of the
        // schema share it.
        let again: *const regex::Regex = field.compiled.get("unused").unwrap();
        assert_eq!(again, first);
        assert!(field.clone().compiled.0.get().is_some());
        // What is logged is the pattern alone.
        let logged = serde_json::to_value(&field).unwrap();
        assert!(logged.get("compiled").is_none(), "{logged}");
    }
}
