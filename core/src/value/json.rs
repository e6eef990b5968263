//! `Json`: the plain JSON tree stored inside records (nested values are never typed).
//!
//! It mirrors `serde_json::Value` but derives a compact, bincode-friendly encoding
//! for the log (serde_json's own `Deserialize` needs a self-describing format) and
//! keeps objects as sorted vectors, which are smaller than maps for small objects.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use std::cmp::Ordering;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Box<str>),
    Array(Vec<Json>),
    Object(JsonMap),
}

/// An object: keys unique and sorted, so lookups are binary searches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JsonMap(Vec<(Box<str>, Json)>);

impl JsonMap {
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.0
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn insert(&mut self, key: Box<str>, value: Json) {
        match self.0.binary_search_by(|(k, _)| k.as_ref().cmp(&key)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Json)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Builds from pairs in any order; a later duplicate key wins.
    pub fn from_pairs(mut pairs: Vec<(Box<str>, Json)>) -> Self {
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, earlier| later.0 == earlier.0);
        JsonMap(pairs)
    }
}

impl From<serde_json::Value> for Json {
    fn from(v: serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Json::Null,
            serde_json::Value::Bool(b) => Json::Bool(b),
            serde_json::Value::Number(n) => Json::from_number(&n),
            serde_json::Value::String(s) => Json::Str(s.into_boxed_str()),
            serde_json::Value::Array(a) => Json::Array(a.into_iter().map(Json::from).collect()),
            serde_json::Value::Object(o) => Json::Object(JsonMap::from_pairs(
                o.into_iter()
                    .map(|(k, v)| (k.into_boxed_str(), Json::from(v)))
                    .collect(),
            )),
        }
    }
}

impl Json {
    pub fn from_number(n: &serde_json::Number) -> Json {
        if let Some(i) = n.as_i64() {
            Json::Int(i)
        } else if let Some(u) = n.as_u64() {
            Json::UInt(u)
        } else {
            Json::Float(n.as_f64().unwrap_or(0.0))
        }
    }

    pub fn to_serde(&self) -> serde_json::Value {
        serde_json::to_value(Plain(self)).unwrap_or(serde_json::Value::Null)
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Int(i) => Some(*i as f64),
            Json::UInt(u) => Some(*u as f64),
            Json::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Follows a dotted path (`a.b.c`) through nested objects.
    pub fn path(&self, path: &[&str]) -> Option<&Json> {
        let mut cur = self;
        for seg in path {
            match cur {
                Json::Object(m) => cur = m.get(seg)?,
                Json::Array(items) => cur = items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            }
        }
        Some(cur)
    }
}

/// Serializes a `Json` as ordinary JSON / MessagePack (maps with string keys).
pub struct Plain<'a>(pub &'a Json);

impl Serialize for Plain<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Int(i) => s.serialize_i64(*i),
            Json::UInt(u) => s.serialize_u64(*u),
            Json::Float(f) => serialize_float(*f, s),
            Json::Str(v) => s.serialize_str(v),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Plain(item))?;
                }
                seq.end()
            }
            Json::Object(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map.iter() {
                    m.serialize_entry(k, &Plain(v))?;
                }
                m.end()
            }
        }
    }
}

/// Floats go out with a fraction (`99.0`): clients decide Integer vs Float from the
/// token. Non-finite floats have no JSON form and become null.
pub fn serialize_float<S: Serializer>(f: f64, s: S) -> Result<S::Ok, S::Error> {
    if f.is_finite() {
        s.serialize_f64(f)
    } else {
        s.serialize_unit()
    }
}

/// The total order used for sorting and range filters across plain values:
/// null < bool < number < string < array < object.
pub fn compare_json(a: &Json, b: &Json) -> Ordering {
    fn rank(j: &Json) -> u8 {
        match j {
            Json::Null => 0,
            Json::Bool(_) => 1,
            Json::Int(_) | Json::UInt(_) | Json::Float(_) => 2,
            Json::Str(_) => 3,
            Json::Array(_) => 4,
            Json::Object(_) => 5,
        }
    }
    match (a, b) {
        (Json::Bool(x), Json::Bool(y)) => x.cmp(y),
        (Json::Int(x), Json::Int(y)) => x.cmp(y),
        (Json::Str(x), Json::Str(y)) => x.cmp(y),
        (x, y) if rank(x) == 2 && rank(y) == 2 => {
            let (fx, fy) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            fx.total_cmp(&fy)
        }
        (Json::Array(x), Json::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let c = compare_json(p, q);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Equality as filters see it: numbers compare by value (1 == 1.0).
pub fn json_eq(a: &Json, b: &Json) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => match (a, b) {
            (Json::Int(p), Json::Int(q)) => p == q,
            _ => x == y,
        },
        _ => match (a, b) {
            (Json::Array(x), Json::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
            }
            (Json::Object(x), Json::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y.iter())
                        .all(|((kx, vx), (ky, vy))| kx == ky && json_eq(vx, vy))
            }
            _ => a == b,
        },
    }
}
