//! Stages that reshape the working set without touching storage: Project,
//! Group, Count, SetField, AddFields (spec G2, "Transforms").

use super::definition::{GroupFunction, GroupOp};
use super::scope::{plain, Doc};
use crate::error::{Error, Result};
use serde_json::{json, Map, Value as J};

/// Keeps only `fields` (the id stays), or drops them.
pub fn project(ws: &mut [Doc], fields: &[String], exclude: bool) {
    for r in ws.iter_mut() {
        if exclude {
            for f in fields {
                r.remove(f);
            }
        } else {
            r.retain(|k, _| k == "id" || fields.iter().any(|f| f == k));
        }
    }
}

/// One record per distinct combination of `by`, with each aggregate.
pub fn group(ws: &[Doc], by: &[String], functions: &[GroupFunction]) -> Result<Vec<Doc>> {
    let mut keys: Vec<Vec<J>> = Vec::new();
    let mut members: Vec<Vec<&Doc>> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    for r in ws {
        let key: Vec<J> = by
            .iter()
            .map(|f| r.get(f).map(|v| plain(v).clone()).unwrap_or(J::Null))
            .collect();
        let text = J::Array(key.clone()).to_string();
        let i = *index.entry(text).or_insert_with(|| {
            keys.push(key);
            members.push(Vec::new());
            keys.len() - 1
        });
        members[i].push(r);
    }
    let mut out = Vec::with_capacity(keys.len());
    for (key, rows) in keys.into_iter().zip(members) {
        let mut doc = Map::new();
        for (f, v) in by.iter().zip(key) {
            doc.insert(f.clone(), typed(v));
        }
        for g in functions {
            doc.insert(g.output_field.clone(), typed(aggregate(g, &rows)?));
        }
        out.push(doc);
    }
    Ok(out)
}

/// A plain value in the typed envelope the clients read records in.
pub fn typed(v: J) -> J {
    let kind = match &v {
        J::Null => "Null",
        J::Bool(_) => "Boolean",
        J::Number(n) if n.is_i64() || n.is_u64() => "Integer",
        J::Number(_) => "Float",
        J::String(_) => "String",
        J::Array(_) => "Array",
        J::Object(_) => "Object",
    };
    json!({"type": kind, "value": v})
}

fn aggregate(g: &GroupFunction, rows: &[&Doc]) -> Result<J> {
    if g.operation == GroupOp::Count {
        return Ok(json!(rows.len()));
    }
    let field = g.input_field.as_deref().ok_or_else(|| {
        Error::invalid(format!("Group: `{:?}` needs an `input_field`", g.operation))
    })?;
    let values: Vec<&J> = rows
        .iter()
        .filter_map(|r| r.get(field).map(plain))
        .filter(|v| !v.is_null())
        .collect();
    let numbers: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
    let all_ints = values.iter().all(|v| v.is_i64());
    Ok(match g.operation {
        GroupOp::Count => unreachable!("handled above"),
        GroupOp::Sum if all_ints => json!(values.iter().filter_map(|v| v.as_i64()).sum::<i64>()),
        GroupOp::Sum => json!(numbers.iter().sum::<f64>()),
        GroupOp::Average if numbers.is_empty() => J::Null,
        GroupOp::Average => json!(round2(numbers.iter().sum::<f64>() / numbers.len() as f64)),
        GroupOp::Min => values
            .iter()
            .min_by(|a, b| cmp(a, b))
            .map_or(J::Null, |v| (*v).clone()),
        GroupOp::Max => values
            .iter()
            .max_by(|a, b| cmp(a, b))
            .map_or(J::Null, |v| (*v).clone()),
        GroupOp::First => values.first().map_or(J::Null, |v| (*v).clone()),
        GroupOp::Last => values.last().map_or(J::Null, |v| (*v).clone()),
        GroupOp::Push => J::Array(values.iter().map(|v| (*v).clone()).collect()),
        GroupOp::AddToSet => J::Array(distinct(&values)),
        GroupOp::StandardDeviation if numbers.is_empty() => J::Null,
        GroupOp::StandardDeviation => {
            let n = numbers.len() as f64;
            let mean = numbers.iter().sum::<f64>() / n;
            json!((numbers.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt())
        }
        // Exact: the groups a function sees fit in memory anyway.
        GroupOp::ApproxDistinct => json!(distinct(&values).len()),
    })
}

/// Averages are reported to two decimals, as ekoDB's recorded output shows
/// (`365.67`).
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn cmp(a: &J, b: &J) -> std::cmp::Ordering {
    super::condition::order(a, b).unwrap_or(std::cmp::Ordering::Equal)
}

fn distinct(values: &[&J]) -> Vec<J> {
    let mut seen = std::collections::HashSet::new();
    values
        .iter()
        .filter(|v| seen.insert(v.to_string()))
        .map(|v| (*v).clone())
        .collect()
}

/// `AddFields`: each `{"field_name", "expression"}`; an expression is
/// `{"type": "Literal", "value": ...}` (the only kind the clients build) or
/// `{"type": "Field", "name"|"field": ...}`, a copy of another field.
pub fn add_fields(
    ws: &mut Vec<Doc>,
    fields: &[J],
    resolve: &dyn Fn(&J) -> Result<J>,
) -> Result<()> {
    if ws.is_empty() {
        ws.push(Map::new());
    }
    for spec in fields {
        let name = spec
            .get("field_name")
            .or_else(|| spec.get("field"))
            .and_then(J::as_str)
            .ok_or_else(|| Error::invalid("AddFields: each entry needs a `field_name`"))?;
        let expr = spec
            .get("expression")
            .ok_or_else(|| Error::invalid(format!("AddFields: `{name}` needs an `expression`")))?;
        let kind = expr.get("type").and_then(J::as_str).unwrap_or("Literal");
        for r in ws.iter_mut() {
            let value = match kind {
                "Literal" => resolve(expr.get("value").unwrap_or(&J::Null))?,
                "Field" => {
                    let from = expr
                        .get("name")
                        .or_else(|| expr.get("field"))
                        .and_then(J::as_str)
                        .unwrap_or_default();
                    r.get(from).cloned().unwrap_or(J::Null)
                }
                other => {
                    return Err(Error::not_implemented(&format!(
                        "AddFields expression type `{other}` (Literal and Field are supported)"
                    )))
                }
            };
            r.insert(name.to_string(), value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(v: J) -> Vec<Doc> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_object().unwrap().clone())
            .collect()
    }

    #[test]
    fn group_matches_ekodbs_recorded_output() {
        let ws = docs(json!([
            {"category": {"type": "String", "value": "Furniture"}, "price": {"type": "Float", "value": 300.0}},
            {"category": {"type": "String", "value": "Furniture"}, "price": {"type": "Float", "value": 399.0}},
            {"category": "Furniture", "price": 398},
            {"category": "Books", "price": 10}
        ]));
        let fns: Vec<GroupFunction> = serde_json::from_value(json!([
            {"output_field": "count", "operation": "Count"},
            {"output_field": "avg_price", "operation": "Average", "input_field": "price"}
        ]))
        .unwrap();
        let out = group(&ws, &["category".into()], &fns).unwrap();
        assert_eq!(
            J::Object(out[0].clone()),
            json!({"category": {"type": "String", "value": "Furniture"},
                   "count": {"type": "Integer", "value": 3},
                   "avg_price": {"type": "Float", "value": 365.67}})
        );
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn project_keeps_the_id() {
        let mut ws = docs(json!([{"id": "1", "a": 1, "b": 2}]));
        project(&mut ws, &["a".into()], false);
        assert_eq!(J::Object(ws[0].clone()), json!({"id": "1", "a": 1}));
        project(&mut ws, &["a".into()], true);
        assert_eq!(J::Object(ws[0].clone()), json!({"id": "1"}));
    }
}
