//! The filter language of spec 8.2: parsed once per request into a tree of
//! conditions, then evaluated against each record.

use super::record::Record;
use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::value::{value_from_input, Json, View};
use serde_json::Value as J;

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// Matches everything (no filter given).
    All,
    Cond(Condition),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
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

impl Op {
    fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "Eq" | "Equals" | "Equal" | "eq" | "equals" => Op::Eq,
            "Ne" | "NotEquals" | "NotEqual" | "ne" => Op::Ne,
            "Gt" | "GreaterThan" | "gt" => Op::Gt,
            "Gte" | "GreaterThanOrEqual" | "gte" => Op::Gte,
            "Lt" | "LessThan" | "lt" => Op::Lt,
            "Lte" | "LessThanOrEqual" | "lte" => Op::Lte,
            "In" | "in" => Op::In,
            "NotIn" | "nin" | "not_in" => Op::NotIn,
            "Contains" | "contains" => Op::Contains,
            "StartsWith" | "starts_with" => Op::StartsWith,
            "EndsWith" | "ends_with" => Op::EndsWith,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub field: String,
    pub op: Op,
    pub operand: Operand,
}

/// A filter value, unwrapped from any typed envelope, with its time reading cached.
#[derive(Clone, Debug, PartialEq)]
pub struct Operand {
    pub value: Json,
    pub time: Option<Timestamp>,
    pub list: Vec<Operand>,
}

impl Operand {
    fn new(raw: J) -> Result<Operand> {
        let value = match raw {
            J::Object(_) => value_from_input(raw)
                .map_err(|e| Error::invalid(format!("invalid filter value: {e}")))?
                .to_json(),
            other => Json::from(other),
        };
        let time = match &value {
            Json::Str(s) => Timestamp::parse_rfc3339(s),
            _ => None,
        };
        let list = match &value {
            Json::Array(items) => items
                .iter()
                .map(|i| Operand::new(i.to_serde()))
                .collect::<Result<_>>()?,
            _ => Vec::new(),
        };
        Ok(Operand { value, time, list })
    }

    fn view(&self) -> View<'_> {
        View::of_json(&self.value)
    }
}

const MAX_DEPTH: usize = 64;

impl Filter {
    /// The fields a filter reads, appended to `out`.
    pub fn fields<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Filter::All => {}
            Filter::Cond(c) => out.push(&c.field),
            Filter::And(all) | Filter::Or(all) => all.iter().for_each(|f| f.fields(out)),
            Filter::Not(f) => f.fields(out),
        }
    }

    /// Parses a filter expression; `null` or absent means "everything".
    pub fn parse(raw: Option<&J>) -> Result<Filter> {
        match raw {
            None | Some(J::Null) => Ok(Filter::All),
            Some(v) => parse_expr(v, 0),
        }
    }

    /// The conditions one evaluation checks at most (at least 1: looking at a
    /// record at all is work), for the query budget.
    pub fn cost(&self) -> u64 {
        match self {
            Filter::All | Filter::Cond(_) => 1,
            Filter::And(fs) | Filter::Or(fs) => fs.iter().map(Filter::cost).sum::<u64>().max(1),
            Filter::Not(f) => f.cost(),
        }
    }

    /// Evaluates against a record whose primary key is `id` (addressed as `pk`).
    pub fn matches(&self, pk: &str, id: &str, record: &Record) -> bool {
        match self {
            Filter::All => true,
            Filter::Cond(c) => c.matches(pk, id, record),
            Filter::And(fs) => fs.iter().all(|f| f.matches(pk, id, record)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(pk, id, record)),
            Filter::Not(f) => !f.matches(pk, id, record),
        }
    }
}

fn parse_expr(v: &J, depth: usize) -> Result<Filter> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid(format!(
            "filter is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let obj = v
        .as_object()
        .ok_or_else(|| Error::invalid("a filter must be a JSON object"))?;
    if let Some(kind) = obj.get("type").and_then(J::as_str) {
        let content = obj.get("content").ok_or_else(|| {
            Error::invalid(format!("filter of type `{kind}` needs a `content` object"))
        })?;
        return match kind {
            "Condition" => parse_condition(content),
            "Logical" => {
                let op = content
                    .get("operator")
                    .and_then(J::as_str)
                    .ok_or_else(|| Error::invalid("a Logical filter needs an `operator`"))?;
                let exprs = content
                    .get("expressions")
                    .and_then(J::as_array)
                    .ok_or_else(|| {
                        Error::invalid("a Logical filter needs an `expressions` array")
                    })?;
                logical(op, exprs, depth)
            }
            other => Err(Error::invalid(format!(
                "unknown filter type `{other}` (expected Condition or Logical)"
            ))),
        };
    }
    if obj.contains_key("field") && obj.contains_key("operator") {
        return parse_condition(v);
    }
    for (key, op) in [("and", "And"), ("or", "Or"), ("And", "And"), ("Or", "Or")] {
        if let Some(items) = obj.get(key) {
            let items = items
                .as_array()
                .ok_or_else(|| Error::invalid(format!("`{key}` must be an array of filters")))?;
            return logical(op, items, depth);
        }
    }
    for key in ["not", "Not"] {
        if let Some(inner) = obj.get(key) {
            return Ok(Filter::Not(Box::new(parse_expr(inner, depth + 1)?)));
        }
    }
    Err(Error::invalid(
        "unrecognised filter: expected {\"type\":\"Condition\"|\"Logical\",\"content\":{...}} or {\"field\",\"operator\",\"value\"}",
    ))
}

fn logical(op: &str, exprs: &[J], depth: usize) -> Result<Filter> {
    let parsed = exprs
        .iter()
        .map(|e| parse_expr(e, depth + 1))
        .collect::<Result<Vec<_>>>()?;
    match op {
        "And" | "and" | "AND" => Ok(Filter::And(parsed)),
        "Or" | "or" | "OR" => Ok(Filter::Or(parsed)),
        "Not" | "not" | "NOT" => {
            let mut parsed = parsed;
            match (parsed.pop(), parsed.is_empty()) {
                (Some(only), true) => Ok(Filter::Not(Box::new(only))),
                _ => Err(Error::invalid("`Not` takes exactly one expression")),
            }
        }
        other => Err(Error::invalid(format!(
            "unknown logical operator `{other}` (expected And, Or or Not)"
        ))),
    }
}

fn parse_condition(content: &J) -> Result<Filter> {
    let field = content
        .get("field")
        .and_then(J::as_str)
        .ok_or_else(|| Error::invalid("a condition needs a string `field`"))?;
    let op_name = content
        .get("operator")
        .and_then(J::as_str)
        .ok_or_else(|| Error::invalid("a condition needs a string `operator`"))?;
    let op = Op::parse(op_name).ok_or_else(|| {
        Error::invalid(format!(
            "unknown filter operator `{op_name}` (supported: Eq, Ne, Gt, Gte, Lt, Lte, In, NotIn, Contains, StartsWith, EndsWith)"
        ))
    })?;
    let raw = content.get("value").cloned().unwrap_or(J::Null);
    let operand = Operand::new(raw)?;
    let wrong = |want: &str| {
        Err(Error::invalid(format!(
            "operator {op_name} on `{field}` needs {want}"
        )))
    };
    match op {
        Op::In | Op::NotIn if !matches!(operand.value, Json::Array(_)) => {
            return wrong("an array value")
        }
        Op::StartsWith | Op::EndsWith if operand.value.as_str().is_none() => {
            return wrong("a string value")
        }
        Op::Gt | Op::Gte | Op::Lt | Op::Lte
            if !matches!(
                operand.value,
                Json::Int(_) | Json::UInt(_) | Json::Float(_) | Json::Str(_)
            ) =>
        {
            return wrong("a number, string or date-time value")
        }
        Op::Contains if matches!(operand.value, Json::Object(_)) => {
            return wrong("a string or scalar value")
        }
        _ => {}
    }
    Ok(Filter::Cond(Condition {
        field: field.to_string(),
        op,
        operand,
    }))
}

impl Condition {
    fn matches(&self, pk: &str, id: &str, record: &Record) -> bool {
        let field = if self.field == pk || self.field == "id" || self.field == "_id" {
            Some(View::Str(id))
        } else {
            record.lookup(&self.field)
        };
        let Some(field) = field else {
            return matches!(self.op, Op::Ne | Op::NotIn);
        };
        let operand = &self.operand;
        match self.op {
            Op::Eq => equals(&field, operand),
            Op::Ne => !equals(&field, operand),
            Op::Gt => order(&field, operand).is_some_and(|o| o.is_gt()),
            Op::Gte => order(&field, operand).is_some_and(|o| o.is_ge()),
            Op::Lt => order(&field, operand).is_some_and(|o| o.is_lt()),
            Op::Lte => order(&field, operand).is_some_and(|o| o.is_le()),
            Op::In => operand.list.iter().any(|o| equals(&field, o)),
            Op::NotIn => !operand.list.iter().any(|o| equals(&field, o)),
            Op::Contains => match field {
                View::Str(s) => match &operand.value {
                    Json::Str(needle) => s.contains(needle.as_ref()),
                    _ => false,
                },
                View::Items(items) => items
                    .iter()
                    .any(|i| View::of_json(i).loose_eq(&operand.view())),
                View::Floats(fs) => operand.value.as_f64().is_some_and(|x| fs.contains(&x)),
                _ => false,
            },
            Op::StartsWith => match (field, &operand.value) {
                (View::Str(s), Json::Str(p)) => s.starts_with(p.as_ref()),
                _ => false,
            },
            Op::EndsWith => match (field, &operand.value) {
                (View::Str(s), Json::Str(p)) => s.ends_with(p.as_ref()),
                _ => false,
            },
        }
    }
}

fn equals(field: &View<'_>, operand: &Operand) -> bool {
    if let (View::Time(t), Some(o)) = (field, operand.time) {
        return *t == o;
    }
    field.loose_eq(&operand.view())
}

/// Orders a field against an operand of the same kind; values of different kinds
/// (a number against a string) are incomparable and match no range condition.
fn order(field: &View<'_>, operand: &Operand) -> Option<std::cmp::Ordering> {
    match (field, &operand.value) {
        (View::Int(_) | View::Float(_), Json::Int(_) | Json::UInt(_) | Json::Float(_)) => {
            Some(field.total_cmp(&operand.view()))
        }
        (View::Time(t), _) => operand.time.map(|o| t.cmp(&o)),
        (View::Str(s), Json::Str(o)) => match (operand.time, Timestamp::parse_rfc3339(s)) {
            (Some(ot), Some(st)) => Some(st.cmp(&ot)),
            _ => Some((*s).cmp(o.as_ref())),
        },
        (View::Duration(..), _) => None,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::record::Interner;
    use crate::value::value_from_input;
    use serde_json::json;

    fn record(v: serde_json::Value) -> Record {
        let mut interner = Interner::default();
        let mut r = Record::new();
        for (k, v) in v.as_object().unwrap() {
            r.set(interner.intern(k), value_from_input(v.clone()).unwrap());
        }
        r
    }

    fn check(filter: serde_json::Value, doc: serde_json::Value, expect: bool) {
        let f = Filter::parse(Some(&filter)).unwrap();
        assert_eq!(
            f.matches("id", "r1", &record(doc.clone())),
            expect,
            "{filter} on {doc}"
        );
    }

    fn cond(field: &str, op: &str, value: serde_json::Value) -> serde_json::Value {
        json!({"type":"Condition","content":{"field":field,"operator":op,"value":value}})
    }

    #[test]
    fn operators() {
        let doc = json!({"age": 30, "name": "Alice", "email": "a@example.com", "tags": ["x","y"],
                          "price": 9.5, "when": "2026-01-02T00:00:00Z", "meta": {"owner": {"n": 1}}});
        check(cond("age", "Eq", json!(30)), doc.clone(), true);
        check(cond("age", "Eq", json!(30.0)), doc.clone(), true);
        check(
            cond("age", "Equals", json!({"type":"Integer","value":30})),
            doc.clone(),
            true,
        );
        check(cond("age", "Ne", json!(30)), doc.clone(), false);
        check(cond("age", "Gte", json!(30)), doc.clone(), true);
        check(cond("age", "Gt", json!(30)), doc.clone(), false);
        check(cond("age", "Lt", json!("40")), doc.clone(), false);
        check(cond("price", "Lte", json!(9.5)), doc.clone(), true);
        check(
            cond("name", "In", json!(["Bob", "Alice"])),
            doc.clone(),
            true,
        );
        check(cond("name", "NotIn", json!(["Alice"])), doc.clone(), false);
        check(
            cond("email", "Contains", json!("@example.com")),
            doc.clone(),
            true,
        );
        check(cond("tags", "Contains", json!("y")), doc.clone(), true);
        check(cond("name", "StartsWith", json!("A")), doc.clone(), true);
        check(cond("name", "EndsWith", json!("ce")), doc.clone(), true);
        check(
            cond("when", "Gt", json!("2026-01-01T23:00:00-02:00")),
            doc.clone(),
            false,
        );
        check(
            cond("when", "Lt", json!("2026-01-02T01:00:00+00:00")),
            doc.clone(),
            true,
        );
        check(cond("meta.owner.n", "Eq", json!(1)), doc.clone(), true);
        check(cond("id", "Eq", json!("r1")), doc.clone(), true);
        check(cond("missing", "Eq", json!(1)), doc.clone(), false);
        check(cond("missing", "Ne", json!(1)), doc.clone(), true);
        check(cond("missing", "NotIn", json!([1])), doc.clone(), true);
    }

    #[test]
    fn combinators_and_flat_forms() {
        let doc = json!({"age": 30, "status": "active"});
        let and = json!({"type":"Logical","content":{"operator":"And","expressions":[
            cond("age","Gte",json!(28)), cond("age","Lt",json!(35))]}});
        check(and, doc.clone(), true);
        let not = json!({"type":"Logical","content":{"operator":"Not","expressions":[
            cond("status","Eq",json!("inactive"))]}});
        check(not, doc.clone(), true);
        check(
            json!({"field":"status","operator":"Eq","value":"active"}),
            doc.clone(),
            true,
        );
        check(
            json!({"or":[{"field":"age","operator":"Lt","value":1},{"field":"age","operator":"Gt","value":29}]}),
            doc.clone(),
            true,
        );
        check(
            json!({"not":{"field":"age","operator":"Eq","value":30}}),
            doc,
            false,
        );
    }

    #[test]
    fn bad_filters_name_the_problem() {
        let err = |f: serde_json::Value| Filter::parse(Some(&f)).unwrap_err().message;
        assert!(err(cond("a", "Regex", json!("x"))).contains("unknown filter operator `Regex`"));
        assert!(err(cond("a", "In", json!(3))).contains("needs an array"));
        assert!(err(cond("a", "Gt", json!({"x":1}))).contains("needs a number"));
        assert!(
            err(json!({"type":"Logical","content":{"operator":"Not","expressions":[]}}))
                .contains("exactly one")
        );
        assert!(err(json!("just a string")).contains("must be a JSON object"));
        assert!(err(json!({"type":"Bogus","content":{}})).contains("unknown filter type"));
    }
}
