//! A borrowed, uniform view of a stored value (typed top-level field or plain nested
//! JSON), so filters, sorting and distinct share one comparison.

use super::{compare_json, json_eq, Json, JsonMap, Num, Value};
use crate::time::Timestamp;
use std::cmp::Ordering;

#[derive(Clone, Copy, Debug)]
pub enum View<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Time(Timestamp),
    Items(&'a [Json]),
    Floats(&'a [f64]),
    Bytes(&'a [u8]),
    Object(&'a JsonMap),
    Duration(u64, u32),
}

impl<'a> View<'a> {
    pub fn of_value(v: &'a Value) -> View<'a> {
        match v {
            Value::Null => View::Null,
            Value::Boolean(b) => View::Bool(*b),
            Value::Integer(i) | Value::Number(Num::Int(i)) => View::Int(*i),
            Value::Float(f) | Value::Number(Num::Float(f)) => View::Float(*f),
            Value::String(s) | Value::Decimal(s) | Value::Uuid(s) => View::Str(s),
            Value::DateTime(t) => View::Time(*t),
            Value::Duration { secs, nanos } => View::Duration(*secs, *nanos),
            Value::Binary(b) | Value::Bytes(b) => View::Bytes(b),
            Value::Array(items) | Value::Set(items) => View::Items(items),
            Value::Vector(v) => View::Floats(v),
            Value::Object(m) => View::Object(m),
        }
    }

    pub fn of_json(j: &'a Json) -> View<'a> {
        match j {
            Json::Null => View::Null,
            Json::Bool(b) => View::Bool(*b),
            Json::Int(i) => View::Int(*i),
            Json::UInt(u) => match i64::try_from(*u) {
                Ok(i) => View::Int(i),
                Err(_) => View::Float(*u as f64),
            },
            Json::Float(f) => View::Float(*f),
            Json::Str(s) => View::Str(s),
            Json::Array(items) => View::Items(items),
            Json::Object(m) => View::Object(m),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            View::Int(i) => Some(i as f64),
            View::Float(f) => Some(f),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, View::Null)
    }

    /// The time this value denotes, if it is a DateTime or a string in RFC 3339 form.
    pub fn as_time(&self) -> Option<Timestamp> {
        match *self {
            View::Time(t) => Some(t),
            View::Str(s) => Timestamp::parse_rfc3339(s),
            _ => None,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            View::Null => 0,
            View::Bool(_) => 1,
            View::Int(_) | View::Float(_) => 2,
            View::Duration(..) => 3,
            View::Time(_) => 4,
            View::Str(_) => 5,
            View::Bytes(_) => 6,
            View::Items(_) | View::Floats(_) => 7,
            View::Object(_) => 8,
        }
    }

    /// Owned plain JSON (for distinct values and error messages).
    pub fn to_json(&self) -> Json {
        match *self {
            View::Null => Json::Null,
            View::Bool(b) => Json::Bool(b),
            View::Int(i) => Json::Int(i),
            View::Float(f) => Json::Float(f),
            View::Str(s) => Json::Str(s.into()),
            View::Time(t) => Json::Str(t.to_rfc3339().into_boxed_str()),
            View::Items(items) => Json::Array(items.to_vec()),
            View::Floats(v) => Json::Array(v.iter().map(|&f| Json::Float(f)).collect()),
            View::Bytes(b) => Json::Array(b.iter().map(|&x| Json::Int(i64::from(x))).collect()),
            View::Object(m) => Json::Object(m.clone()),
            View::Duration(secs, nanos) => Json::Object(JsonMap::from_pairs(vec![
                ("nanos".into(), Json::Int(i64::from(nanos))),
                ("secs".into(), Json::UInt(secs)),
            ])),
        }
    }

    /// Total order for sorting: numbers by value, strings lexicographically, times
    /// chronologically; a string compared with a time is read as a time if it can be.
    pub fn total_cmp(&self, other: &View<'_>) -> Ordering {
        match (*self, *other) {
            (View::Int(a), View::Int(b)) => a.cmp(&b),
            (a, b) if a.rank() == 2 && b.rank() == 2 => a
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&b.as_f64().unwrap_or(0.0)),
            (View::Str(a), View::Str(b)) => a.cmp(b),
            (View::Time(a), View::Time(b)) => a.cmp(&b),
            (View::Time(a), View::Str(s)) => match Timestamp::parse_rfc3339(s) {
                Some(b) => a.cmp(&b),
                None => self.rank().cmp(&other.rank()),
            },
            (View::Str(s), View::Time(b)) => match Timestamp::parse_rfc3339(s) {
                Some(a) => a.cmp(&b),
                None => self.rank().cmp(&other.rank()),
            },
            (View::Bool(a), View::Bool(b)) => a.cmp(&b),
            (View::Duration(a, x), View::Duration(b, y)) => (a, x).cmp(&(b, y)),
            (View::Bytes(a), View::Bytes(b)) => a.cmp(b),
            (View::Items(a), View::Items(b)) => {
                compare_json(&Json::Array(a.to_vec()), &Json::Array(b.to_vec()))
            }
            (a, b) if a.rank() == b.rank() => a.json_cmp(&b),
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }

    fn json_cmp(&self, other: &View<'_>) -> Ordering {
        compare_json(&self.to_json(), &other.to_json())
    }

    /// Equality as filters see it (1 == 1.0, a time equals its RFC 3339 text).
    pub fn loose_eq(&self, other: &View<'_>) -> bool {
        match (*self, *other) {
            (View::Int(a), View::Int(b)) => a == b,
            (a, b) if a.rank() == 2 && b.rank() == 2 => a.as_f64() == b.as_f64(),
            (View::Str(a), View::Str(b)) => a == b,
            (View::Time(_), View::Str(_)) | (View::Str(_), View::Time(_)) => {
                matches!((self.as_time(), other.as_time()), (Some(a), Some(b)) if a == b)
            }
            (View::Items(a), View::Items(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| json_eq(x, y))
            }
            (a, b) if a.rank() == b.rank() => json_eq(&a.to_json(), &b.to_json()),
            _ => false,
        }
    }

    /// The value as text, as subscription filters compare it (`filter_value`).
    pub fn render(&self) -> String {
        match *self {
            View::Str(s) => s.to_string(),
            View::Time(t) => t.to_rfc3339(),
            View::Null => "null".to_string(),
            other => serde_json::to_string(&super::Plain(&other.to_json())).unwrap_or_default(),
        }
    }
}
