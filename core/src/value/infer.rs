//! Input values: plain JSON is typed by inference, typed envelopes by their `type`.

use super::{FieldType, Json, JsonMap, Num, Value};
use crate::time::{parse_duration, Timestamp};
use base64::Engine as _;
use std::fmt;

/// A value the client sent that cannot be stored as asked.
#[derive(Debug, Clone, PartialEq)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(ty: FieldType, what: &str) -> InputError {
    InputError(format!("a {} value must be {what}", ty.name()))
}

/// Types one top-level field value (spec 3.2).
pub fn value_from_input(input: serde_json::Value) -> Result<Value, InputError> {
    match input {
        serde_json::Value::Object(map) => {
            if map.len() == 2 {
                if let (Some(serde_json::Value::String(t)), Some(_)) =
                    (map.get("type"), map.get("value"))
                {
                    if let Some(ty) = FieldType::from_canonical(t) {
                        let value = map.into_iter().find(|(k, _)| k == "value").map(|(_, v)| v);
                        return typed(ty, value.unwrap_or(serde_json::Value::Null));
                    }
                }
            }
            Ok(Value::Object(Box::new(
                match Json::from(serde_json::Value::Object(map)) {
                    Json::Object(m) => m,
                    _ => JsonMap::default(),
                },
            )))
        }
        other => Ok(infer(other)),
    }
}

/// Plain JSON → Value by the inference rules.
fn infer(input: serde_json::Value) -> Value {
    match input {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Boolean(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => match Timestamp::parse_rfc3339(&s) {
            Some(t) => Value::DateTime(t),
            None => Value::String(s.into_boxed_str()),
        },
        serde_json::Value::Array(items) => {
            Value::Array(items.into_iter().map(Json::from).collect())
        }
        serde_json::Value::Object(_) => unreachable_object(),
    }
}

fn unreachable_object() -> Value {
    // `value_from_input` handles objects before calling `infer`.
    Value::Object(Box::default())
}

/// Converts the `value` of an envelope to the declared type. Also used to coerce
/// bare client encodings into a schema's declared type.
pub fn typed(ty: FieldType, v: serde_json::Value) -> Result<Value, InputError> {
    use serde_json::Value as J;
    Ok(match ty {
        FieldType::Null => Value::Null,
        FieldType::String => match v {
            J::String(s) => Value::String(s.into_boxed_str()),
            _ => return Err(bad(ty, "a string")),
        },
        FieldType::Integer => match &v {
            J::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Value::Integer(i),
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::Integer(f as i64),
                _ => return Err(bad(ty, "a whole number within 64 bits")),
            },
            J::String(s) => Value::Integer(s.trim().parse().map_err(|_| bad(ty, "an integer"))?),
            _ => return Err(bad(ty, "an integer")),
        },
        FieldType::Float => match &v {
            J::Number(n) => Value::Float(n.as_f64().unwrap_or(0.0)),
            J::String(s) => Value::Float(
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| bad(ty, "a number"))?,
            ),
            _ => return Err(bad(ty, "a number")),
        },
        FieldType::Number => match &v {
            J::Number(n) => Value::Number(match n.as_i64() {
                Some(i) => Num::Int(i),
                None => Num::Float(n.as_f64().unwrap_or(0.0)),
            }),
            _ => return Err(bad(ty, "a number")),
        },
        FieldType::Boolean => match v {
            J::Bool(b) => Value::Boolean(b),
            _ => return Err(bad(ty, "true or false")),
        },
        FieldType::Object => match Json::from(v) {
            Json::Object(m) => Value::Object(Box::new(m)),
            _ => return Err(bad(ty, "an object")),
        },
        FieldType::Array => match Json::from(v) {
            Json::Array(items) => Value::Array(items.into_boxed_slice()),
            _ => return Err(bad(ty, "an array")),
        },
        FieldType::Set => match Json::from(v) {
            Json::Array(items) => Value::Set(dedup(items).into_boxed_slice()),
            _ => return Err(bad(ty, "an array")),
        },
        FieldType::Vector => match v {
            J::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_f64() {
                        Some(f) if f.is_finite() => out.push(f),
                        _ => return Err(bad(ty, "an array of finite numbers")),
                    }
                }
                Value::Vector(out.into_boxed_slice())
            }
            _ => return Err(bad(ty, "an array of numbers")),
        },
        FieldType::DateTime => match &v {
            J::String(s) => Value::DateTime(
                Timestamp::parse_rfc3339(s).ok_or_else(|| bad(ty, "an RFC 3339 date-time"))?,
            ),
            J::Number(n) if n.as_i64().is_some() => {
                Value::DateTime(Timestamp::from_millis(n.as_i64().unwrap_or(0)))
            }
            _ => return Err(bad(ty, "an RFC 3339 date-time")),
        },
        FieldType::Uuid => match v {
            J::String(s) => Value::Uuid(s.into_boxed_str()),
            _ => return Err(bad(ty, "a string")),
        },
        FieldType::Decimal => match v {
            J::String(s) => Value::Decimal(s.into_boxed_str()),
            J::Number(n) => Value::Decimal(n.to_string().into_boxed_str()),
            _ => return Err(bad(ty, "a decimal string")),
        },
        FieldType::Duration => duration(&v).ok_or_else(|| {
            bad(
                ty,
                "milliseconds, {\"secs\":N,\"nanos\":M}, [secs, nanos] or a string like \"1h30m\"",
            )
        })?,
        FieldType::Binary => Value::Binary(
            binary_from_json(&v).ok_or_else(|| bad(ty, "base64 text or an array of bytes"))?,
        ),
        FieldType::Bytes => Value::Bytes(
            binary_from_json(&v).ok_or_else(|| bad(ty, "base64 text or an array of bytes"))?,
        ),
    })
}

fn duration(v: &serde_json::Value) -> Option<Value> {
    use serde_json::Value as J;
    let from_ms = |ms: u64| Value::Duration {
        secs: ms / 1000,
        nanos: (ms % 1000) as u32 * 1_000_000,
    };
    match v {
        J::Number(n) => n.as_u64().map(from_ms),
        J::String(s) => parse_duration(s).map(|d| Value::Duration {
            secs: d.as_secs(),
            nanos: d.subsec_nanos(),
        }),
        J::Object(m) => {
            let secs = m.get("secs")?.as_u64()?;
            let nanos = m.get("nanos").and_then(|n| n.as_u64()).unwrap_or(0);
            (nanos < 1_000_000_000).then_some(Value::Duration {
                secs,
                nanos: nanos as u32,
            })
        }
        J::Array(a) if a.len() == 2 => {
            let secs = a[0].as_u64()?;
            let nanos = a[1].as_u64()?;
            (nanos < 1_000_000_000).then_some(Value::Duration {
                secs,
                nanos: nanos as u32,
            })
        }
        _ => None,
    }
}

/// Bytes from base64 text (standard or URL-safe, padded or not) or an integer array.
pub fn binary_from_json(v: &serde_json::Value) -> Option<Box<[u8]>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    match v {
        serde_json::Value::String(s) => [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(s).ok())
            .map(Vec::into_boxed_slice),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| i.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect::<Option<Vec<u8>>>()
            .map(Vec::into_boxed_slice),
        _ => None,
    }
}

fn dedup(items: Vec<Json>) -> Vec<Json> {
    let mut out: Vec<Json> = Vec::with_capacity(items.len());
    for item in items {
        if !out.iter().any(|seen| super::json_eq(seen, &item)) {
            out.push(item);
        }
    }
    out
}
