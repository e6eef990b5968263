//! Field values: what the clients send (plain JSON or typed envelopes), what the
//! engine stores (a typed `Value` per top-level field, plain `Json` below that), and
//! what goes back on the wire (`{"type": .., "value": ..}` envelopes, spec 3).

mod infer;
mod json;
mod view;

pub use infer::{binary_from_json, typed as typed_input, value_from_input, InputError};
pub use json::{compare_json, json_eq, serialize_float, Json, JsonMap, Plain};
pub use view::View;

use crate::time::Timestamp;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

/// The canonical type names of spec 3.2, in the PascalCase the clients expect back.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum FieldType {
    String,
    Integer,
    Float,
    Number,
    Boolean,
    Object,
    Array,
    Set,
    Vector,
    DateTime,
    #[serde(rename = "UUID")]
    Uuid,
    Decimal,
    Duration,
    Binary,
    Bytes,
    Null,
}

impl FieldType {
    pub const ALL: [FieldType; 16] = [
        FieldType::String,
        FieldType::Integer,
        FieldType::Float,
        FieldType::Number,
        FieldType::Boolean,
        FieldType::Object,
        FieldType::Array,
        FieldType::Set,
        FieldType::Vector,
        FieldType::DateTime,
        FieldType::Uuid,
        FieldType::Decimal,
        FieldType::Duration,
        FieldType::Binary,
        FieldType::Bytes,
        FieldType::Null,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "String",
            FieldType::Integer => "Integer",
            FieldType::Float => "Float",
            FieldType::Number => "Number",
            FieldType::Boolean => "Boolean",
            FieldType::Object => "Object",
            FieldType::Array => "Array",
            FieldType::Set => "Set",
            FieldType::Vector => "Vector",
            FieldType::DateTime => "DateTime",
            FieldType::Uuid => "UUID",
            FieldType::Decimal => "Decimal",
            FieldType::Duration => "Duration",
            FieldType::Binary => "Binary",
            FieldType::Bytes => "Bytes",
            FieldType::Null => "Null",
        }
    }

    /// Exact canonical name, as used to recognise a typed envelope on input.
    pub fn from_canonical(name: &str) -> Option<FieldType> {
        FieldType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Any case (`"string"`, `"VECTOR"`), as schemas are written by hand; a few
    /// common aliases too.
    pub fn parse_loose(name: &str) -> Option<FieldType> {
        let lower = name.to_ascii_lowercase();
        let alias = match lower.as_str() {
            "int" | "integer" | "i64" => Some(FieldType::Integer),
            "bool" | "boolean" => Some(FieldType::Boolean),
            "double" | "float" | "f64" => Some(FieldType::Float),
            "datetime" | "date" | "timestamp" => Some(FieldType::DateTime),
            "text" | "string" => Some(FieldType::String),
            _ => None,
        };
        alias.or_else(|| {
            FieldType::ALL
                .into_iter()
                .find(|t| t.name().eq_ignore_ascii_case(name))
        })
    }
}

/// A flexible numeric (`Number`): keeps the integer/float distinction it arrived with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// A stored top-level field value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Boolean(bool),
    Integer(i64),
    Float(f64),
    Number(Num),
    String(Box<str>),
    DateTime(Timestamp),
    Decimal(Box<str>),
    Uuid(Box<str>),
    Duration { secs: u64, nanos: u32 },
    Binary(Box<[u8]>),
    Bytes(Box<[u8]>),
    Array(Box<[Json]>),
    Set(Box<[Json]>),
    Vector(Box<[f64]>),
    Object(Box<JsonMap>),
}

impl Value {
    pub fn field_type(&self) -> FieldType {
        match self {
            Value::Null => FieldType::Null,
            Value::Boolean(_) => FieldType::Boolean,
            Value::Integer(_) => FieldType::Integer,
            Value::Float(_) => FieldType::Float,
            Value::Number(_) => FieldType::Number,
            Value::String(_) => FieldType::String,
            Value::DateTime(_) => FieldType::DateTime,
            Value::Decimal(_) => FieldType::Decimal,
            Value::Uuid(_) => FieldType::Uuid,
            Value::Duration { .. } => FieldType::Duration,
            Value::Binary(_) => FieldType::Binary,
            Value::Bytes(_) => FieldType::Bytes,
            Value::Array(_) => FieldType::Array,
            Value::Set(_) => FieldType::Set,
            Value::Vector(_) => FieldType::Vector,
            Value::Object(_) => FieldType::Object,
        }
    }

    pub fn view(&self) -> View<'_> {
        View::of_value(self)
    }

    /// The plain JSON form (what a filter, distinct or KV sees).
    pub fn to_json(&self) -> Json {
        self.view().to_json()
    }

    /// A value for server-written records: objects and arrays stay structured,
    /// strings stay strings (no inference of dates from text).
    pub fn from_json(j: Json) -> Value {
        match j {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Boolean(b),
            Json::Int(i) => Value::Integer(i),
            Json::UInt(u) => i64::try_from(u).map_or(Value::Float(u as f64), Value::Integer),
            Json::Float(f) => Value::Float(f),
            Json::Str(s) => Value::String(s),
            Json::Array(items) => Value::Array(items.into_boxed_slice()),
            Json::Object(m) => Value::Object(Box::new(m)),
        }
    }
}

/// Serializes a value as its typed envelope: `{"type":"Integer","value":42}`.
pub struct Typed<'a>(pub &'a Value);

impl Serialize for Typed<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("type", self.0.field_type().name())?;
        m.serialize_entry("value", &PlainValue(self.0))?;
        m.end()
    }
}

/// Serializes a value without its envelope.
pub struct PlainValue<'a>(pub &'a Value);

impl Serialize for PlainValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Boolean(b) => s.serialize_bool(*b),
            Value::Integer(i) | Value::Number(Num::Int(i)) => s.serialize_i64(*i),
            Value::Float(f) | Value::Number(Num::Float(f)) => serialize_float(*f, s),
            Value::String(v) | Value::Decimal(v) | Value::Uuid(v) => s.serialize_str(v),
            Value::DateTime(t) => s.serialize_str(&t.to_rfc3339()),
            Value::Duration { secs, nanos } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("secs", secs)?;
                m.serialize_entry("nanos", nanos)?;
                m.end()
            }
            Value::Binary(b) | Value::Bytes(b) => s.collect_seq(b.iter()),
            Value::Array(items) | Value::Set(items) => s.collect_seq(items.iter().map(Plain)),
            Value::Vector(v) => s.collect_seq(v.iter().map(|&f| FloatOut(f))),
            Value::Object(m) => s.collect_map(m.iter().map(|(k, v)| (k, Plain(v)))),
        }
    }
}

struct FloatOut(f64);

impl Serialize for FloatOut {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_float(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn typed(input: serde_json::Value) -> serde_json::Value {
        let v = value_from_input(input).unwrap();
        serde_json::to_value(Typed(&v)).unwrap()
    }

    #[test]
    fn plain_inputs_infer_types() {
        let check = |input: serde_json::Value, expect: serde_json::Value| {
            assert_eq!(typed(input.clone()), expect, "{input}")
        };
        check(json!(null), json!({"type":"Null","value":null}));
        check(json!(true), json!({"type":"Boolean","value":true}));
        check(json!(42), json!({"type":"Integer","value":42}));
        check(json!(99.0), json!({"type":"Float","value":99.0}));
        check(json!("hi"), json!({"type":"String","value":"hi"}));
        check(
            json!("2026-07-14T13:45:42.982112Z"),
            json!({"type":"DateTime","value":"2026-07-14T13:45:42.982112+00:00"}),
        );
        check(
            json!("550e8400-e29b-41d4-a716-446655440000"),
            json!({"type":"String","value":"550e8400-e29b-41d4-a716-446655440000"}),
        );
        check(json!(["a", 1]), json!({"type":"Array","value":["a",1]}));
        check(
            json!({"k": {"deep": true}}),
            json!({"type":"Object","value":{"k":{"deep":true}}}),
        );
        // Not an envelope: `type` is not a canonical name.
        check(
            json!({"type":"admin","value":3}),
            json!({"type":"Object","value":{"type":"admin","value":3}}),
        );
    }

    #[test]
    fn envelopes_are_unwrapped() {
        let check = |input: serde_json::Value, expect: serde_json::Value| {
            assert_eq!(typed(input.clone()), expect, "{input}")
        };
        check(
            json!({"type":"Vector","value":[0.1, 2]}),
            json!({"type":"Vector","value":[0.1, 2.0]}),
        );
        check(
            json!({"type":"Set","value":["a","b","a"]}),
            json!({"type":"Set","value":["a","b"]}),
        );
        check(
            json!({"type":"Decimal","value":"1234.56"}),
            json!({"type":"Decimal","value":"1234.56"}),
        );
        check(
            json!({"type":"Duration","value":1500}),
            json!({"type":"Duration","value":{"secs":1,"nanos":500000000}}),
        );
        check(
            json!({"type":"Binary","value":"aGk="}),
            json!({"type":"Binary","value":[104,105]}),
        );
        check(
            json!({"type":"Float","value":3}),
            json!({"type":"Float","value":3.0}),
        );
        check(
            json!({"type":"Number","value":3}),
            json!({"type":"Number","value":3}),
        );
    }

    #[test]
    fn bad_envelopes_are_errors() {
        assert!(value_from_input(json!({"type":"Integer","value":"x"})).is_err());
        assert!(value_from_input(json!({"type":"Vector","value":["x"]})).is_err());
        assert!(value_from_input(json!({"type":"DateTime","value":"yesterday"})).is_err());
    }
}
