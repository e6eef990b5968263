//! Model-based test of the query engine (STYLE.md, convention 12).
//!
//! Random records (ints, floats, strings, RFC 3339 dates, bools, nulls, missing
//! fields, nested objects, arrays) are inserted, updated and deleted through
//! `Server::handle_request`, interleaved with random finds: filters over every
//! operator (with aliases, flat forms, typed envelopes, And/Or/Not nesting,
//! dotted paths and `id`), sort keys, skip, limit and projections. Each reply
//! is compared with a plain model: a `BTreeMap` of `serde_json` records and an
//! evaluator written from spec 8 of `ekodb-data-plane.md`, independently of
//! `core::engine`.
//!
//! Where the spec leaves a case open, the model follows the choice documented
//! in `core/src/engine/filter.rs`, `query.rs` and `value/view.rs`, and says so
//! in a comment marked CHOICE.

use chrono::{DateTime, SecondsFormat, Utc};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Map, Value as J};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use tidepool_core::wire::http::Method;

mod support;
use support::Sut;

// ----- the model: values --------------------------------------------------------

type Record = Map<String, J>;

/// RFC 3339 text as an instant (microseconds), as spec 3.2 reads strings.
fn instant(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_micros())
}

/// A field value as the query language sees it.
#[derive(Clone, Copy, Debug)]
enum MV<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    /// A top-level string in RFC 3339 form: stored as DateTime (spec 3.2).
    Time(i64),
    Arr(&'a [J]),
    Obj(&'a Map<String, J>),
}

impl MV<'_> {
    fn num(&self) -> Option<f64> {
        match *self {
            MV::Int(i) => Some(i as f64),
            MV::Float(f) => Some(f),
            _ => None,
        }
    }

    /// CHOICE (value/view.rs): the order of kinds when a sort key mixes them.
    fn rank(&self) -> u8 {
        match self {
            MV::Null => 0,
            MV::Bool(_) => 1,
            MV::Int(_) | MV::Float(_) => 2,
            MV::Time(_) => 4,
            MV::Str(_) => 5,
            MV::Arr(_) => 7,
            MV::Obj(_) => 8,
        }
    }

    fn to_json(self) -> J {
        match self {
            MV::Null => J::Null,
            MV::Bool(b) => J::Bool(b),
            MV::Int(i) => json!(i),
            MV::Float(f) => json!(f),
            MV::Str(s) => J::String(s.to_string()),
            MV::Time(t) => J::String(rfc3339(t)),
            MV::Arr(a) => J::Array(a.to_vec()),
            MV::Obj(m) => J::Object(m.clone()),
        }
    }
}

fn rfc3339(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .expect("in range")
        .to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// A value below the top level: plain JSON, strings stay strings.
fn plain(v: &J) -> MV<'_> {
    match v {
        J::Null => MV::Null,
        J::Bool(b) => MV::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => MV::Int(i),
            None => MV::Float(n.as_f64().expect("finite")),
        },
        J::String(s) => MV::Str(s),
        J::Array(a) => MV::Arr(a),
        J::Object(m) => MV::Obj(m),
    }
}

/// A top-level field: RFC 3339 strings are DateTimes (spec 3.2).
fn top(v: &J) -> MV<'_> {
    match v {
        J::String(s) => instant(s).map_or(MV::Str(s), MV::Time),
        other => plain(other),
    }
}

/// `id` is the primary key; `a.b.c` walks nested objects (and array indices).
fn lookup<'a>(id: &'a str, rec: &'a Record, path: &str) -> Option<MV<'a>> {
    if path == "id" {
        return Some(MV::Str(id));
    }
    if let Some(v) = rec.get(path) {
        return Some(top(v));
    }
    let (head, rest) = path.split_once('.')?;
    let mut cur = rec.get(head)?;
    for seg in rest.split('.') {
        cur = match cur {
            J::Object(m) => m.get(seg)?,
            J::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(plain(cur))
}

/// Equality of plain JSON: numbers by value (1 == 1.0).
fn json_eq(a: &J, b: &J) -> bool {
    match (a, b) {
        (J::Number(x), J::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(p), Some(q)) => p == q,
            _ => x.as_f64() == y.as_f64(),
        },
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Equality as filters see it (spec 8.2 Eq): numbers numerically, a DateTime
/// equals RFC 3339 text of the same instant.
fn loose_eq(a: MV<'_>, b: MV<'_>) -> bool {
    match (a, b) {
        (MV::Int(x), MV::Int(y)) => x == y,
        (x, y) if x.num().is_some() && y.num().is_some() => x.num() == y.num(),
        (MV::Str(x), MV::Str(y)) => x == y,
        (MV::Time(t), MV::Str(s)) | (MV::Str(s), MV::Time(t)) => instant(s) == Some(t),
        (MV::Time(x), MV::Time(y)) => x == y,
        (MV::Null, MV::Null) => true,
        (MV::Bool(x), MV::Bool(y)) => x == y,
        (MV::Arr(x), MV::Arr(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (MV::Obj(_), MV::Obj(_)) => json_eq(&a.to_json(), &b.to_json()),
        _ => false,
    }
}

fn num_cmp(a: MV<'_>, b: MV<'_>) -> Ordering {
    match (a, b) {
        (MV::Int(x), MV::Int(y)) => x.cmp(&y),
        _ => a.num().unwrap_or(0.0).total_cmp(&b.num().unwrap_or(0.0)),
    }
}

/// The order of plain JSON (inside arrays). CHOICE (value/json.rs): null <
/// bool < number < string < array < object; arrays element by element, then
/// by length; objects all compare equal.
fn compare_json(a: &J, b: &J) -> Ordering {
    fn rank(j: &J) -> u8 {
        match j {
            J::Null => 0,
            J::Bool(_) => 1,
            J::Number(_) => 2,
            J::String(_) => 3,
            J::Array(_) => 4,
            J::Object(_) => 5,
        }
    }
    match (a, b) {
        (J::Bool(x), J::Bool(y)) => x.cmp(y),
        (J::String(x), J::String(y)) => x.cmp(y),
        (J::Number(_), J::Number(_)) => num_cmp(plain(a), plain(b)),
        (J::Array(x), J::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(p, q)| compare_json(p, q))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// The order of sort keys (spec 8.3): numbers numerically, strings
/// lexicographically, DateTimes chronologically; other kinds by `rank`.
fn total_cmp(a: MV<'_>, b: MV<'_>) -> Ordering {
    match (a, b) {
        (x, y) if x.num().is_some() && y.num().is_some() => num_cmp(x, y),
        (MV::Str(x), MV::Str(y)) => x.cmp(y),
        (MV::Time(x), MV::Time(y)) => x.cmp(&y),
        (MV::Time(x), MV::Str(s)) => instant(s).map_or(a.rank().cmp(&b.rank()), |y| x.cmp(&y)),
        (MV::Str(s), MV::Time(y)) => instant(s).map_or(a.rank().cmp(&b.rank()), |x| x.cmp(&y)),
        (MV::Bool(x), MV::Bool(y)) => x.cmp(&y),
        (x, y) if x.rank() == y.rank() => compare_json(&x.to_json(), &y.to_json()),
        (x, y) => x.rank().cmp(&y.rank()),
    }
}

// ----- the model: filters ------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
}

/// Operator names as clients send them (spec 8.2, with its aliases).
const OPS: &[(&str, Op)] = &[
    ("Eq", Op::Eq),
    ("Equals", Op::Eq),
    ("Equal", Op::Eq),
    ("Ne", Op::Ne),
    ("NotEquals", Op::Ne),
    ("NotEqual", Op::Ne),
    ("Gt", Op::Gt),
    ("GreaterThan", Op::Gt),
    ("Gte", Op::Gte),
    ("GreaterThanOrEqual", Op::Gte),
    ("Lt", Op::Lt),
    ("LessThan", Op::Lt),
    ("Lte", Op::Lte),
    ("LessThanOrEqual", Op::Lte),
    ("In", Op::In),
    ("NotIn", Op::NotIn),
    ("Contains", Op::Contains),
    ("StartsWith", Op::StartsWith),
    ("EndsWith", Op::EndsWith),
];

/// A filter value with typed envelopes unwrapped (spec 8.2) and its reading
/// as an instant.
#[derive(Clone, Debug)]
struct Operand {
    value: J,
    time: Option<i64>,
    list: Vec<Operand>,
}

fn operand(raw: &J) -> Operand {
    let value = unwrap(raw);
    let time = value.as_str().and_then(instant);
    let list = match &value {
        J::Array(items) => items.iter().map(operand).collect(),
        _ => Vec::new(),
    };
    Operand { value, time, list }
}

/// `{"type": T, "value": v}` with a known `T` is an envelope (spec 3.2).
fn unwrap(raw: &J) -> J {
    let Some(m) = raw.as_object().filter(|m| m.len() == 2) else {
        return raw.clone();
    };
    let (Some(J::String(t)), Some(v)) = (m.get("type"), m.get("value")) else {
        return raw.clone();
    };
    match t.as_str() {
        "Integer" | "String" | "Boolean" | "Array" | "Object" => v.clone(),
        "Float" => json!(v.as_f64().expect("a number")),
        "Null" => J::Null,
        // Becomes a DateTime, which reads back as its canonical text.
        "DateTime" => J::String(rfc3339(instant(v.as_str().expect("text")).expect("a date"))),
        _ => raw.clone(),
    }
}

#[derive(Clone, Debug)]
enum Filter {
    Cond(String, Op, Operand),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

/// Parses a filter expression; `Err` means the server must answer 400.
fn parse_filter(v: &J) -> Result<Filter, String> {
    let obj = v.as_object().ok_or("not an object")?;
    if let Some(kind) = obj.get("type").and_then(J::as_str) {
        let content = obj.get("content").ok_or("no content")?;
        return match kind {
            "Condition" => parse_condition(content),
            "Logical" => {
                let exprs = content["expressions"]
                    .as_array()
                    .ok_or("no expressions")?
                    .iter()
                    .map(parse_filter)
                    .collect::<Result<Vec<_>, _>>()?;
                match content["operator"].as_str() {
                    Some("And") => Ok(Filter::And(exprs)),
                    Some("Or") => Ok(Filter::Or(exprs)),
                    Some("Not") if exprs.len() == 1 => Ok(Filter::Not(Box::new(
                        exprs.into_iter().next().expect("one"),
                    ))),
                    _ => Err("bad logical operator".into()),
                }
            }
            _ => Err("bad type".into()),
        };
    }
    if obj.contains_key("field") && obj.contains_key("operator") {
        return parse_condition(v);
    }
    let list = |k: &str| -> Result<Vec<Filter>, String> {
        obj[k]
            .as_array()
            .ok_or("not an array")?
            .iter()
            .map(parse_filter)
            .collect()
    };
    if obj.contains_key("and") {
        return Ok(Filter::And(list("and")?));
    }
    if obj.contains_key("or") {
        return Ok(Filter::Or(list("or")?));
    }
    if let Some(inner) = obj.get("not") {
        return Ok(Filter::Not(Box::new(parse_filter(inner)?)));
    }
    Err("unrecognised".into())
}

fn parse_condition(c: &J) -> Result<Filter, String> {
    let field = c["field"].as_str().ok_or("no field")?;
    let name = c["operator"].as_str().ok_or("no operator")?;
    let op = OPS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, op)| *op)
        .ok_or("unknown operator")?;
    let o = operand(c.get("value").unwrap_or(&J::Null));
    // The operand kinds each operator accepts (spec 8.2, `value` column).
    let ok = match op {
        Op::In | Op::NotIn => o.value.is_array(),
        Op::StartsWith | Op::EndsWith => o.value.is_string(),
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => o.value.is_number() || o.value.is_string(),
        Op::Contains => !o.value.is_object(),
        Op::Eq | Op::Ne => true,
    };
    if !ok {
        return Err(format!("{name} cannot take {}", o.value));
    }
    Ok(Filter::Cond(field.to_string(), op, o))
}

fn equals(field: MV<'_>, o: &Operand) -> bool {
    if let (MV::Time(t), Some(ot)) = (field, o.time) {
        return t == ot;
    }
    loose_eq(field, plain(&o.value))
}

/// Range comparisons (spec 8.2): numeric for numbers, chronological when both
/// sides read as RFC 3339, else lexicographic for strings. CHOICE (filter.rs):
/// values of different kinds are incomparable and match no range condition.
fn order(field: MV<'_>, o: &Operand) -> Option<Ordering> {
    match (field, &o.value) {
        (MV::Int(_) | MV::Float(_), J::Number(_)) => Some(num_cmp(field, plain(&o.value))),
        (MV::Time(t), _) => o.time.map(|ot| t.cmp(&ot)),
        (MV::Str(s), J::String(os)) => match (instant(s), o.time) {
            (Some(st), Some(ot)) => Some(st.cmp(&ot)),
            _ => Some(s.as_bytes().cmp(os.as_bytes())),
        },
        _ => None,
    }
}

fn matches(f: &Filter, id: &str, rec: &Record) -> bool {
    match f {
        // CHOICE (filter.rs; spec: [ambiguous]): `And []` is true, `Or []` false.
        Filter::And(fs) => fs.iter().all(|f| matches(f, id, rec)),
        Filter::Or(fs) => fs.iter().any(|f| matches(f, id, rec)),
        Filter::Not(f) => !matches(f, id, rec),
        Filter::Cond(path, op, o) => {
            // Spec 8.2 [ambiguous], recommended reading: a missing field fails
            // every condition except Ne and NotIn.
            let Some(v) = lookup(id, rec, path) else {
                return matches!(op, Op::Ne | Op::NotIn);
            };
            match op {
                Op::Eq => equals(v, o),
                Op::Ne => !equals(v, o),
                Op::Gt => order(v, o).is_some_and(Ordering::is_gt),
                Op::Gte => order(v, o).is_some_and(Ordering::is_ge),
                Op::Lt => order(v, o).is_some_and(Ordering::is_lt),
                Op::Lte => order(v, o).is_some_and(Ordering::is_le),
                Op::In => o.list.iter().any(|x| equals(v, x)),
                Op::NotIn => !o.list.iter().any(|x| equals(v, x)),
                // Substring of a string; membership for an array (spec 8.2).
                // CHOICE (filter.rs): a DateTime is not a string here, and
                // array items are compared as plain values.
                Op::Contains => match (v, &o.value) {
                    (MV::Str(s), J::String(needle)) => s.contains(needle.as_str()),
                    (MV::Arr(items), _) => {
                        items.iter().any(|i| loose_eq(plain(i), plain(&o.value)))
                    }
                    _ => false,
                },
                Op::StartsWith => {
                    matches!((v, &o.value), (MV::Str(s), J::String(p)) if s.starts_with(p.as_str()))
                }
                Op::EndsWith => {
                    matches!((v, &o.value), (MV::Str(s), J::String(p)) if s.ends_with(p.as_str()))
                }
            }
        }
    }
}

// ----- the model: queries ------------------------------------------------------

#[derive(Clone, Debug)]
struct Query {
    body: J,
    filter: Result<Option<Filter>, String>,
    sort: Vec<(String, bool)>,
    /// `id` was appended as the last sort key, so the order is total.
    total: bool,
    skip: usize,
    limit: Option<usize>,
    select: Vec<String>,
    exclude: Vec<String>,
}

/// Spec 8.3: key by key; records missing the field (CHOICE, query.rs: or
/// holding null) sort last, in either direction.
fn compare(sort: &[(String, bool)], a: (&str, &Record), b: (&str, &Record)) -> Ordering {
    for (field, asc) in sort {
        let va = lookup(a.0, a.1, field).filter(|v| !matches!(v, MV::Null));
        let vb = lookup(b.0, b.1, field).filter(|v| !matches!(v, MV::Null));
        let o = match (va, vb) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) if *asc => total_cmp(x, y),
            (Some(x), Some(y)) => total_cmp(x, y).reverse(),
        };
        if o.is_ne() {
            return o;
        }
    }
    Ordering::Equal
}

/// Spec 8.5: `select_fields` keeps the named fields plus the primary key
/// (CHOICE, record.rs: a dotted name keeps its whole top-level field);
/// `exclude_fields` then drops names, never the primary key.
fn keeps(q: &Query, field: &str) -> bool {
    let selected = q.select.is_empty()
        || q.select
            .iter()
            .any(|s| s == field || s.split('.').next() == Some(field));
    selected && !q.exclude.iter().any(|e| e == field)
}

/// The expected reply: matching ids in order (spec 8.4: skip, then limit).
fn run_query(model: &BTreeMap<String, Record>, q: &Query) -> Result<Vec<String>, String> {
    let filter = q.filter.clone()?;
    let mut hits: Vec<(&str, &Record)> = model
        .iter()
        .filter(|(id, r)| filter.as_ref().is_none_or(|f| matches(f, id, r)))
        .map(|(id, r)| (id.as_str(), r))
        .collect();
    hits.sort_by(|a, b| compare(&q.sort, *a, *b));
    Ok(hits
        .into_iter()
        .skip(q.skip)
        .take(q.limit.unwrap_or(usize::MAX))
        .map(|(id, _)| id.to_string())
        .collect())
}

/// Whether `got` is a field as spec 3.3 writes the stored value `want`.
fn same_wire(got: &J, want: &J) -> bool {
    let (Some(t), Some(v)) = (got["type"].as_str(), got.get("value")) else {
        return false;
    };
    if got.as_object().map(Map::len) != Some(2) {
        return false;
    }
    match want {
        J::Null => t == "Null" && v.is_null(),
        J::Bool(_) => t == "Boolean" && v == want,
        J::Number(n) if n.is_i64() => t == "Integer" && v == want,
        J::Number(n) => t == "Float" && v.is_f64() && v.as_f64() == n.as_f64(),
        J::String(s) => match instant(s) {
            Some(i) => t == "DateTime" && v.as_str().and_then(instant) == Some(i),
            None => t == "String" && v == want,
        },
        J::Array(_) => t == "Array" && v == want,
        J::Object(_) => t == "Object" && v == want,
    }
}

fn check_record(got: &J, id: &str, rec: &Record, q: Option<&Query>) -> Result<(), String> {
    let obj = got
        .as_object()
        .ok_or_else(|| format!("not an object: {got}"))?;
    let want_keys: BTreeSet<&str> = std::iter::once("id")
        .chain(
            rec.keys()
                .map(String::as_str)
                .filter(|k| q.is_none_or(|q| keeps(q, k))),
        )
        .collect();
    let got_keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    if got_keys != want_keys {
        return Err(format!("{id}: fields {got_keys:?}, want {want_keys:?}"));
    }
    if obj["id"] != id {
        return Err(format!("id {} for {id}", obj["id"]));
    }
    for (k, v) in rec.iter().filter(|(k, _)| want_keys.contains(k.as_str())) {
        if !same_wire(&obj[k], v) {
            return Err(format!("{id}.{k}: got {}, stored {v}", obj[k]));
        }
    }
    Ok(())
}

// ----- generators --------------------------------------------------------------

const STRINGS: &[&str] = &[
    "", "a", "ab", "abc", "b", "ba", "B", "é", "a b", "2026", "r1", "x00Z",
];
/// Same instant in two spellings; an instant whose text sorts the other way
/// from its time; sub-second precision; and a date-like string that is not one.
const DATES: &[&str] = &[
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00+00:00",
    "2026-01-01T01:00:00+02:00",
    "2025-12-31T23:30:00Z",
    "2026-06-15T12:00:00.5Z",
    "2026-01-01T00:00:00.000001Z",
    "2026-13-01T00:00:00Z",
];
const NEEDLES: &[&str] = &["", "a", "b", "ab", "2026", "00Z", "+00:00", "é", "r", "1"];
const PATHS: &[&str] = &[
    "n",
    "x",
    "s",
    "d",
    "flag",
    "o",
    "arr",
    "o.a",
    "o.b.c",
    "o.arr.0",
    "o.d",
    "arr.0",
    "arr.1",
    "missing",
    "o.missing",
    "n.x",
    "id",
];
const IDS: usize = 8;

fn int() -> impl Strategy<Value = J> {
    (-3i64..4).prop_map(J::from)
}

/// Quarter steps, so 1.0 meets Integer 1.
fn float() -> impl Strategy<Value = J> {
    (-8i64..9).prop_map(|n| json!(n as f64 / 4.0))
}

fn string() -> impl Strategy<Value = J> {
    select(STRINGS).prop_map(J::from)
}

fn date() -> impl Strategy<Value = J> {
    select(DATES).prop_map(J::from)
}

fn scalar() -> BoxedStrategy<J> {
    prop_oneof![
        3 => int(),
        2 => float(),
        3 => string(),
        2 => date(),
        1 => any::<bool>().prop_map(J::from),
        1 => Just(J::Null),
    ]
    .boxed()
}

fn array() -> BoxedStrategy<J> {
    prop::collection::vec(scalar(), 0..4)
        .prop_map(J::Array)
        .boxed()
}

fn object() -> BoxedStrategy<J> {
    (
        prop::option::weighted(0.8, scalar()),
        prop::option::weighted(0.6, prop::option::weighted(0.8, scalar())),
        prop::option::weighted(0.5, array()),
        prop::option::weighted(0.5, date()),
    )
        .prop_map(|(a, b, arr, d)| {
            let mut m = Map::new();
            let mut put = |k: &str, v: Option<J>| {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            };
            put("a", a);
            put(
                "b",
                b.map(|c| {
                    let mut inner = Map::new();
                    if let Some(c) = c {
                        inner.insert("c".into(), c);
                    }
                    J::Object(inner)
                }),
            );
            put("arr", arr);
            put("d", d);
            J::Object(m)
        })
        .boxed()
}

fn any_value() -> BoxedStrategy<J> {
    prop_oneof![6 => scalar(), 1 => array(), 1 => object()].boxed()
}

/// A record: each field usually of its own kind, sometimes of any kind, often
/// missing.
fn record() -> BoxedStrategy<Record> {
    let field = |typical: BoxedStrategy<J>| {
        prop::option::weighted(0.75, prop_oneof![3 => typical, 1 => any_value()])
    };
    (
        field(prop_oneof![int(), float()].boxed()),
        field(prop_oneof![int(), float(), string()].boxed()),
        field(string().boxed()),
        field(date().boxed()),
        field(any::<bool>().prop_map(J::from).boxed()),
        field(object()),
        field(array()),
    )
        .prop_map(|(n, x, s, d, flag, o, arr)| {
            let mut m = Map::new();
            for (k, v) in [
                ("n", n),
                ("x", x),
                ("s", s),
                ("d", d),
                ("flag", flag),
                ("o", o),
                ("arr", arr),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            m
        })
        .boxed()
}

fn envelope() -> BoxedStrategy<J> {
    prop_oneof![
        int().prop_map(|v| json!({"type":"Integer","value":v})),
        float().prop_map(|v| json!({"type":"Float","value":v})),
        int().prop_map(|v| json!({"type":"Float","value":v})),
        string().prop_map(|v| json!({"type":"String","value":v})),
        select(&DATES[..6]).prop_map(|v| json!({"type":"DateTime","value":v})),
        any::<bool>().prop_map(|v| json!({"type":"Boolean","value":v})),
    ]
    .boxed()
}

fn ids() -> impl Strategy<Value = J> {
    (0..IDS).prop_map(|i| J::from(format!("r{i}")))
}

/// An operand for an operator: mostly the kind it takes, sometimes not.
fn operand_for(op: &str) -> BoxedStrategy<J> {
    let value = prop_oneof![6 => scalar(), 2 => envelope(), 1 => ids()].boxed();
    let list = prop::collection::vec(value.clone(), 0..4).prop_map(J::Array);
    match op {
        "In" | "NotIn" => prop_oneof![9 => list, 1 => scalar()].boxed(),
        "Contains" | "StartsWith" | "EndsWith" => prop_oneof![
            6 => select(NEEDLES).prop_map(J::from),
            2 => scalar(),
            1 => array(),
        ]
        .boxed(),
        "Eq" | "Equals" | "Equal" | "Ne" | "NotEquals" | "NotEqual" => {
            prop_oneof![8 => value, 1 => array()].boxed()
        }
        _ => prop_oneof![
            4 => prop_oneof![int(), float(), string(), date(), ids()],
            1 => envelope(),
            1 => scalar(),
        ]
        .boxed(),
    }
}

fn condition() -> BoxedStrategy<J> {
    let names: Vec<&str> = OPS.iter().map(|(n, _)| *n).chain(["Regex"]).collect();
    (select(PATHS), select(names), any::<bool>())
        .prop_flat_map(|(field, op, flat)| {
            operand_for(op).prop_map(move |value| {
                let c = json!({"field": field, "operator": op, "value": value});
                if flat {
                    c
                } else {
                    json!({"type": "Condition", "content": c})
                }
            })
        })
        .boxed()
}

fn filter() -> BoxedStrategy<J> {
    condition()
        .prop_recursive(3, 8, 3, |inner| {
            prop_oneof![
                (
                    select(vec!["And", "Or"]),
                    prop::collection::vec(inner.clone(), 0..4),
                    any::<bool>()
                )
                    .prop_map(|(op, exprs, flat)| if flat {
                        let mut m = Map::new();
                        m.insert(op.to_ascii_lowercase(), J::Array(exprs));
                        J::Object(m)
                    } else {
                        json!({"type":"Logical","content":{"operator":op,"expressions":exprs}})
                    }),
                (inner, any::<bool>()).prop_map(|(e, flat)| if flat {
                    json!({ "not": e })
                } else {
                    json!({"type":"Logical","content":{"operator":"Not","expressions":[e]}})
                }),
            ]
        })
        .boxed()
}

fn fields() -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::weighted(
        0.3,
        prop::collection::vec(select(PATHS), 0..4)
            .prop_map(|v| v.into_iter().map(str::to_string).collect()),
    )
}

fn query() -> BoxedStrategy<Query> {
    (
        prop::option::weighted(0.85, filter()),
        prop::collection::vec((select(PATHS), any::<bool>(), any::<bool>()), 0..3),
        any::<bool>(),
        prop::option::weighted(0.3, 0usize..10),
        prop::option::weighted(0.3, 0usize..10),
        fields(),
        fields(),
        any::<bool>(),
    )
        .prop_map(
            |(filter, sort, total, skip, limit, select, exclude, rust_nulls)| {
                let mut body = Map::new();
                if let Some(f) = &filter {
                    body.insert("filter".into(), f.clone());
                }
                let mut keys: Vec<(String, bool)> = sort
                    .iter()
                    .map(|(f, asc, _)| (f.to_string(), *asc))
                    .collect();
                let total = total && !keys.is_empty();
                if total {
                    keys.push(("id".into(), true));
                }
                if !keys.is_empty() {
                    let wire: Vec<J> = keys
                        .iter()
                        .zip(sort.iter().map(|(_, _, explicit)| *explicit).chain([true]))
                        .map(|((f, asc), explicit)| match (asc, explicit) {
                            // `ascending` defaults to true (spec 8.1).
                            (true, false) => json!({ "field": f }),
                            _ => json!({ "field": f, "ascending": asc }),
                        })
                        .collect();
                    body.insert("sort".into(), J::Array(wire));
                }
                if let Some(s) = skip {
                    body.insert("skip".into(), s.into());
                }
                if let Some(l) = limit {
                    body.insert("limit".into(), l.into());
                }
                if let Some(s) = &select {
                    body.insert("select_fields".into(), json!(s));
                }
                if let Some(e) = &exclude {
                    body.insert("exclude_fields".into(), json!(e));
                }
                if rust_nulls {
                    // The Rust client always sends these, null when unset (spec 8.1).
                    for k in ["bypass_cache", "select_fields", "exclude_fields"] {
                        body.entry(k).or_insert(J::Null);
                    }
                }
                Query {
                    filter: filter.as_ref().map(parse_filter).transpose(),
                    body: J::Object(body),
                    sort: keys,
                    total,
                    skip: skip.unwrap_or(0),
                    limit,
                    select: select.unwrap_or_default(),
                    exclude: exclude.unwrap_or_default(),
                }
            },
        )
        .boxed()
}

#[derive(Clone, Debug)]
enum Step {
    Insert(usize, Record),
    Update(usize, Record),
    Delete(usize),
    Find(Box<Query>),
}

fn step() -> BoxedStrategy<Step> {
    prop_oneof![
        4 => (0..IDS, record()).prop_map(|(i, r)| Step::Insert(i, r)),
        1 => (0..IDS, record(), 1usize..4).prop_map(|(i, r, n)| {
            Step::Update(i, r.into_iter().take(n).collect())
        }),
        1 => (0..IDS).prop_map(Step::Delete),
        5 => query().prop_map(|q| Step::Find(Box::new(q))),
    ]
    .boxed()
}

// ----- the system under test: `support::Sut` ----------------------------------

fn run(steps: &[Step]) -> Result<(), String> {
    let mut sut = Sut::new();
    let mut model: BTreeMap<String, Record> = BTreeMap::new();
    for (n, step) in steps.iter().enumerate() {
        let ctx = |what: String| format!("step {n} {step:?}: {what}");
        match step {
            Step::Insert(i, rec) => {
                let id = format!("r{i}");
                let mut body = rec.clone();
                body.insert("id".into(), J::from(id.clone()));
                let (status, v) = sut.call(Method::Post, "/api/insert/c", Some(&J::Object(body)));
                let want = if model.contains_key(&id) { 409 } else { 200 };
                if status != want {
                    return Err(ctx(format!("status {status}, want {want}: {v}")));
                }
                if want == 200 {
                    if v != json!({ "id": id }) {
                        return Err(ctx(format!("insert reply {v}")));
                    }
                    model.insert(id, rec.clone());
                }
            }
            Step::Update(i, patch) => {
                let id = format!("r{i}");
                let target = format!("/api/update/c/{id}");
                let (status, v) = sut.call(Method::Put, &target, Some(&J::Object(patch.clone())));
                match model.get_mut(&id) {
                    None if status == 404 => {}
                    None => return Err(ctx(format!("status {status} for a missing id: {v}"))),
                    Some(rec) => {
                        if status != 200 {
                            return Err(ctx(format!("status {status}: {v}")));
                        }
                        // Spec 6.4: top-level fields replace, others stay.
                        rec.extend(patch.clone());
                        check_record(&v, &id, rec, None).map_err(ctx)?;
                    }
                }
            }
            Step::Delete(i) => {
                let id = format!("r{i}");
                let (status, v) = sut.call(Method::Delete, &format!("/api/delete/c/{id}"), None);
                let want = if model.remove(&id).is_some() {
                    200
                } else {
                    404
                };
                if status != want {
                    return Err(ctx(format!("status {status}, want {want}: {v}")));
                }
            }
            Step::Find(q) => {
                let (status, v) = sut.call(Method::Post, "/api/find/c", Some(&q.body));
                check_find(&model, q, status, &v).map_err(ctx)?;
            }
        }
    }
    Ok(())
}

fn check_find(
    model: &BTreeMap<String, Record>,
    q: &Query,
    status: u16,
    v: &J,
) -> Result<(), String> {
    let want = match run_query(model, q) {
        Err(_) if status == 400 => return Ok(()),
        Err(why) => return Err(format!("status {status}, want 400 ({why}): {v}")),
        Ok(ids) if status == 200 => ids,
        Ok(ids) => return Err(format!("status {status}, want 200 with {ids:?}: {v}")),
    };
    let rows = v.as_array().ok_or_else(|| format!("not an array: {v}"))?;
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r["id"].as_str().ok_or_else(|| format!("no id in {r}")))
        .collect::<Result<_, _>>()?;
    for (row, id) in rows.iter().zip(&got) {
        let rec = model.get(*id).ok_or_else(|| format!("unknown id {id}"))?;
        check_record(row, id, rec, Some(q))?;
    }
    let show = || format!("got {got:?}, model {want:?} for {}", q.body);
    if got.len() != want.len() {
        return Err(format!("count: {}", show()));
    }
    if q.sort.is_empty() {
        // Spec 8.3: without `sort` the order is unspecified; without skip or
        // limit the set is determined.
        if q.skip == 0 && q.limit.is_none() {
            let (a, b): (BTreeSet<&str>, BTreeSet<&str>) = (
                got.iter().copied().collect(),
                want.iter().map(String::as_str).collect(),
            );
            if a != b {
                return Err(format!("set: {}", show()));
            }
        } else {
            let all = run_query(
                model,
                &Query {
                    skip: 0,
                    limit: None,
                    ..q.clone()
                },
            )?;
            if got.iter().any(|g| !all.iter().any(|a| a == g)) {
                return Err(format!("non-matching record: {}", show()));
            }
        }
    } else if q.total {
        if got != want {
            return Err(format!("order: {}", show()));
        }
    } else {
        // Ties may come in any order: each position must hold a record that
        // sorts the same as the model's.
        for (g, w) in got.iter().zip(&want) {
            let (gr, wr) = (&model[*g], &model[w]);
            if compare(&q.sort, (g, gr), (w.as_str(), wr)).is_ne() {
                return Err(format!("order at {g} vs {w}: {}", show()));
            }
        }
        let distinct: BTreeSet<&&str> = got.iter().collect();
        if distinct.len() != got.len() {
            return Err(format!("duplicates: {}", show()));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn queries_match_the_model(
        first in prop::collection::vec((0..IDS, record()), 2..8),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let seeded = first.into_iter().map(|(i, r)| Step::Insert(i, r));
        let steps: Vec<Step> = seeded.chain(steps).collect();
        if let Err(e) = run(&steps) {
            return Err(TestCaseError::fail(e));
        }
    }
}

// ----- documented cases ---------------------------------------------------------

/// Inserts `records` (ids r0, r1, …), runs a find and compares the ids.
fn check(records: &[J], query: J, expect: &[&str]) {
    let mut sut = Sut::new();
    for (i, r) in records.iter().enumerate() {
        let mut r = r.as_object().expect("an object").clone();
        r.insert("id".into(), J::from(format!("r{i}")));
        assert_eq!(
            sut.call(Method::Post, "/api/insert/c", Some(&J::Object(r)))
                .0,
            200
        );
    }
    let (status, v) = sut.call(Method::Post, "/api/find/c", Some(&query));
    assert_eq!(status, 200, "{query}: {v}");
    let got: Vec<&str> = v
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| r["id"].as_str().expect("an id"))
        .collect();
    assert_eq!(got, expect, "{query}");
}

fn cond(field: &str, op: &str, value: J) -> J {
    json!({"type":"Condition","content":{"field":field,"operator":op,"value":value}})
}

#[test]
fn documented_choices() {
    let people = [
        json!({"age": 25, "status": "active", "name": "Alice"}),
        json!({"age": 30, "status": "inactive", "name": "Bob"}),
        json!({"age": 35.0, "status": "active", "name": "Carol"}),
        json!({"age": 28, "name": "Dave"}),
        json!({"age": null, "status": "active", "name": "Eve"}),
    ];
    let sorted = |filter: J| json!({"filter": filter, "sort": [{"field":"id","ascending":true}]});
    // Spec 8.2's recorded run, adapted.
    let and = json!({"type":"Logical","content":{"operator":"And","expressions":[
        cond("age", "Gte", json!(28)), cond("age", "Lt", json!(35))]}});
    check(&people, sorted(and), &["r1", "r3"]);
    // Integer 35 equals Float 35.0.
    check(&people, sorted(cond("age", "Eq", json!(35))), &["r2"]);
    // A missing field matches only Ne and NotIn.
    check(
        &people,
        sorted(cond("status", "Ne", json!("active"))),
        &["r1", "r3"],
    );
    check(
        &people,
        sorted(cond("status", "NotIn", json!(["active"]))),
        &["r1", "r3"],
    );
    check(&people, sorted(cond("status", "Eq", json!(null))), &[]);
    // A stored null is a value: Eq null finds it, ranges skip it.
    check(&people, sorted(cond("age", "Eq", json!(null))), &["r4"]);
    check(
        &people,
        sorted(cond("age", "Gt", json!(0))),
        &["r0", "r1", "r2", "r3"],
    );
    // Empty And is true, empty Or is false.
    check(
        &people,
        sorted(json!({"and": []})),
        &["r0", "r1", "r2", "r3", "r4"],
    );
    check(&people, sorted(json!({"or": []})), &[]);
    // Missing (and null) sort last in both directions.
    check(
        &people,
        json!({"sort": [{"field":"age","ascending":false}]}),
        &["r2", "r1", "r3", "r0", "r4"],
    );
    check(
        &people,
        json!({"sort": [{"field":"status"}, {"field":"age","ascending":false}], "skip": 1, "limit": 3}),
        &["r0", "r4", "r1"],
    );

    let times = [
        json!({"t": "2026-01-01T01:00:00+02:00", "o": {"t": "2026-01-01T01:00:00+02:00"}}),
        json!({"t": "2025-12-31T23:30:00Z", "o": {"t": "2025-12-31T23:30:00Z"}}),
        json!({"t": "not a date", "o": {"t": "not a date"}}),
    ];
    let by_id = |filter: J| json!({"filter": filter, "sort": ["id"]});
    // Top-level RFC 3339 strings are DateTimes: chronological, not textual.
    check(
        &times,
        by_id(cond("t", "Lt", json!("2025-12-31T23:30:00Z"))),
        &["r0"],
    );
    check(
        &times,
        by_id(cond("t", "Eq", json!("2025-12-31T23:00:00Z"))),
        &["r0"],
    );
    check(
        &times,
        json!({"sort": [{"field":"t"}]}),
        &["r0", "r1", "r2"],
    );
    // Nested date strings stay strings: ranges are still chronological when
    // both sides parse, equality is textual, sorting lexicographic.
    check(
        &times,
        by_id(cond("o.t", "Lt", json!("2025-12-31T23:30:00Z"))),
        &["r0"],
    );
    check(
        &times,
        by_id(cond("o.t", "Eq", json!("2025-12-31T23:00:00Z"))),
        &[],
    );
    check(
        &times,
        json!({"sort": [{"field":"o.t"}]}),
        &["r1", "r0", "r2"],
    );
    // Substring operators work on strings, not on DateTimes.
    check(&times, by_id(cond("t", "Contains", json!("2026"))), &[]);
    check(
        &times,
        by_id(cond("o.t", "StartsWith", json!("2026"))),
        &["r0"],
    );
    // Contains on arrays is membership, numbers by value.
    let tags = [
        json!({"tags": ["x", 1]}),
        json!({"tags": ["y"]}),
        json!({"tags": "x1"}),
    ];
    check(&tags, by_id(cond("tags", "Contains", json!(1.0))), &["r0"]);
    check(
        &tags,
        by_id(cond("tags", "Contains", json!("x"))),
        &["r0", "r2"],
    );
    // Typed envelopes are unwrapped.
    check(
        &people,
        by_id(cond(
            "age",
            "In",
            json!([{"type":"Integer","value":25}, {"type":"Float","value":30}]),
        )),
        &["r0", "r1"],
    );
}

#[test]
fn invalid_filters_are_400() {
    let mut sut = Sut::new();
    for filter in [
        cond("a", "Regex", json!("x")),
        cond("a", "In", json!(3)),
        cond("a", "StartsWith", json!(3)),
        cond("a", "Gt", json!(true)),
        cond("a", "Gt", json!({"type":"Boolean","value":true})),
        cond("a", "Contains", json!({"k": 1})),
        json!({"type":"Logical","content":{"operator":"Not","expressions":[]}}),
        json!({"type":"Logical","content":{"operator":"Xor","expressions":[]}}),
        json!("a string"),
        json!({"nothing": 1}),
    ] {
        let (status, v) = sut.call(
            Method::Post,
            "/api/find/c",
            Some(&json!({ "filter": filter })),
        );
        assert_eq!(status, 400, "{filter}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
}
