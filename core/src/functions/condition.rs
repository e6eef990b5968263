//! `If` conditions (spec G3). Field conditions look at the first record of
//! the working set, or at a stage output of that name (`claim.claimed`,
//! `lock.acquired`); a dotted field reaches into objects, typed envelopes
//! compare by their inner value, a missing field equals `null`, and
//! ordering works on numbers, strings and RFC 3339 times.

use super::definition::Condition;
use super::scope::{Doc, Scope};
use crate::error::Result;
use crate::time::Timestamp;
use serde_json::Value as J;
use std::cmp::Ordering;

/// Whether `c` holds for the working set.
pub fn holds(c: &Condition, ws: &[Doc], scope: &Scope) -> Result<bool> {
    let field = |f: &str| -> Result<J> { Ok(scope.lookup(f, ws)?.unwrap_or(J::Null)) };
    let value = |v: &J| scope.resolve(v, ws);
    Ok(match c {
        Condition::FieldEquals { field: f, value: v } => loose_eq(&field(f)?, &value(v)?),
        Condition::FieldExists { field: f } => !field(f)?.is_null(),
        Condition::FieldGreaterThan { field: f, value: v } => {
            order(&field(f)?, &value(v)?) == Some(Ordering::Greater)
        }
        Condition::FieldLessThan { field: f, value: v } => {
            order(&field(f)?, &value(v)?) == Some(Ordering::Less)
        }
        Condition::FieldGreaterThanOrEqual { field: f, value: v } => matches!(
            order(&field(f)?, &value(v)?),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        Condition::FieldLessThanOrEqual { field: f, value: v } => matches!(
            order(&field(f)?, &value(v)?),
            Some(Ordering::Less | Ordering::Equal)
        ),
        Condition::HasRecords => !ws.is_empty(),
        Condition::CountEquals { count } => ws.len() == *count,
        Condition::CountGreaterThan { count } => ws.len() > *count,
        Condition::CountLessThan { count } => ws.len() < *count,
        Condition::And { conditions } => {
            for c in conditions {
                if !holds(c, ws, scope)? {
                    return Ok(false);
                }
            }
            true
        }
        Condition::Or { conditions } => {
            for c in conditions {
                if holds(c, ws, scope)? {
                    return Ok(true);
                }
            }
            false
        }
        Condition::Not { condition } => !holds(condition, ws, scope)?,
    })
}

/// Equality that ignores number representation (`3` equals `3.0`).
pub fn loose_eq(a: &J, b: &J) -> bool {
    match (a, b) {
        (J::Number(x), J::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Order of two values of comparable kinds; `None` when they are not.
pub fn order(a: &J, b: &J) -> Option<Ordering> {
    match (a, b) {
        (J::Number(x), J::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (J::String(x), J::String(y)) => {
            match (Timestamp::parse_rfc3339(x), Timestamp::parse_rfc3339(y)) {
                (Some(tx), Some(ty)) => Some(tx.cmp(&ty)),
                _ => Some(x.cmp(y)),
            }
        }
        (J::Bool(x), J::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(v: J) -> Condition {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn field_conditions_read_the_first_record_and_outputs() {
        let ws = vec![
            json!({"age": {"type": "Integer", "value": 30}, "name": "a"})
                .as_object()
                .unwrap()
                .clone(),
        ];
        let mut scope = Scope::default();
        scope
            .outputs
            .insert("lock".into(), json!({"acquired": false}));
        let t = |v: J| holds(&c(v), &ws, &scope).unwrap();
        assert!(t(
            json!({"type": "FieldGreaterThan", "value": {"field": "age", "value": 18}})
        ));
        assert!(!t(
            json!({"type": "FieldLessThan", "value": {"field": "age", "value": 18}})
        ));
        assert!(t(
            json!({"type": "FieldEquals", "value": {"field": "missing", "value": null}})
        ));
        assert!(t(
            json!({"type": "FieldEquals", "value": {"field": "lock.acquired", "value": false}})
        ));
        assert!(t(json!({"type": "HasRecords"})));
        assert!(t(
            json!({"type": "Not", "value": {"condition": {"type": "CountEquals", "value": {"count": 0}}}})
        ));
        assert!(t(json!({"type": "And", "value": {"conditions": [
            {"type": "FieldExists", "value": {"field": "name"}},
            {"type": "CountLessThan", "value": {"count": 2}}]}})));
        assert!(!holds(&c(json!({"type": "HasRecords"})), &[], &scope).unwrap());
    }

    #[test]
    fn times_order_as_times() {
        assert_eq!(
            order(
                &json!("2026-01-02T00:00:00Z"),
                &json!("2026-01-01T23:00:00-05:00")
            ),
            Some(Ordering::Less)
        );
    }
}
