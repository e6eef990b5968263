//! Atomic field actions (spec 6.5, 6.6): applied to a copy of the record, so a
//! failing action (or any action of a failing sequence) changes nothing.

use super::record::{Key, Record};
use crate::error::{Error, Result};
use crate::value::{json_eq, value_from_input, Json, Num, Value};
use serde_json::Value as J;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Increment,
    Decrement,
    Multiply,
    Divide,
    Modulo,
    Push,
    Pop,
    Shift,
    Unshift,
    Remove,
    Append,
    Clear,
}

impl Action {
    pub fn parse(name: &str) -> Result<Action> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "increment" => Action::Increment,
            "decrement" => Action::Decrement,
            "multiply" => Action::Multiply,
            "divide" => Action::Divide,
            "modulo" => Action::Modulo,
            "push" => Action::Push,
            "pop" => Action::Pop,
            "shift" => Action::Shift,
            "unshift" => Action::Unshift,
            "remove" => Action::Remove,
            "append" => Action::Append,
            "clear" => Action::Clear,
            _ => {
                return Err(Error::invalid(format!(
                    "unknown action `{name}` (increment, decrement, multiply, divide, modulo, push, pop, shift, unshift, remove, append, clear)"
                )))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Action::Increment => "increment",
            Action::Decrement => "decrement",
            Action::Multiply => "multiply",
            Action::Divide => "divide",
            Action::Modulo => "modulo",
            Action::Push => "push",
            Action::Pop => "pop",
            Action::Shift => "shift",
            Action::Unshift => "unshift",
            Action::Remove => "remove",
            Action::Append => "append",
            Action::Clear => "clear",
        }
    }
}

fn fail(action: Action, why: &str) -> Error {
    Error::invalid(format!("Failed to apply action '{}': {why}", action.name()))
}

/// The operand as plain JSON, unwrapping a typed envelope.
fn operand_json(value: &J) -> Result<Json> {
    match value {
        J::Object(_) => value_from_input(value.clone())
            .map(|v| v.to_json())
            .map_err(|e| Error::invalid(e.0)),
        other => Ok(Json::from(other.clone())),
    }
}

#[derive(Clone, Copy)]
enum N {
    I(i64),
    F(f64),
}

fn number_of(v: &Json) -> Option<N> {
    match v {
        Json::Int(i) => Some(N::I(*i)),
        Json::UInt(u) => Some(i64::try_from(*u).map(N::I).unwrap_or(N::F(*u as f64))),
        Json::Float(f) => Some(N::F(*f)),
        _ => None,
    }
}

fn arith(action: Action, a: N, b: N) -> Result<N> {
    let as_f = |n: N| match n {
        N::I(i) => i as f64,
        N::F(f) => f,
    };
    if let (N::I(x), N::I(y)) = (a, b) {
        let r = match action {
            Action::Increment => x.checked_add(y),
            Action::Decrement => x.checked_sub(y),
            Action::Multiply => x.checked_mul(y),
            Action::Divide | Action::Modulo if y == 0 => {
                return Err(fail(action, "division by zero"))
            }
            Action::Divide if x % y != 0 => return Ok(N::F(x as f64 / y as f64)),
            Action::Divide => x.checked_div(y),
            _ => x.checked_rem(y),
        };
        return r.map(N::I).ok_or_else(|| fail(action, "integer overflow"));
    }
    let (x, y) = (as_f(a), as_f(b));
    let r = match action {
        Action::Increment => x + y,
        Action::Decrement => x - y,
        Action::Multiply => x * y,
        Action::Divide | Action::Modulo if y == 0.0 => {
            return Err(fail(action, "division by zero"))
        }
        Action::Divide => x / y,
        _ => x % y,
    };
    if r.is_finite() {
        Ok(N::F(r))
    } else {
        Err(fail(action, "result is not a finite number"))
    }
}

/// Applies one action to `record[field]`.
pub fn apply(record: &mut Record, field: Key, action: Action, value: Option<&J>) -> Result<()> {
    let need_value = || -> Result<Json> {
        match value {
            Some(v) if !v.is_null() => operand_json(v),
            _ => Err(fail(action, "a `value` is required")),
        }
    };
    let current = record.get(&field).cloned();
    let next = match action {
        Action::Increment
        | Action::Decrement
        | Action::Multiply
        | Action::Divide
        | Action::Modulo => {
            let operand =
                number_of(&need_value()?).ok_or_else(|| fail(action, "value not numeric"))?;
            let (base, kind) = match &current {
                None | Some(Value::Null) => (N::I(0), 'i'),
                Some(Value::Integer(i)) => (N::I(*i), 'i'),
                Some(Value::Float(f)) => (N::F(*f), 'f'),
                Some(Value::Number(Num::Int(i))) => (N::I(*i), 'n'),
                Some(Value::Number(Num::Float(f))) => (N::F(*f), 'n'),
                Some(_) => return Err(fail(action, "field not numeric")),
            };
            let result = arith(action, base, operand)?;
            match (kind, result) {
                ('n', N::I(i)) => Value::Number(Num::Int(i)),
                ('n', N::F(f)) => Value::Number(Num::Float(f)),
                ('f', n) => Value::Float(match n {
                    N::I(i) => i as f64,
                    N::F(f) => f,
                }),
                (_, N::I(i)) => Value::Integer(i),
                (_, N::F(f)) => Value::Float(f),
            }
        }
        Action::Push | Action::Unshift => {
            let item = need_value()?;
            match current {
                None | Some(Value::Null) => Value::Array(vec![item].into_boxed_slice()),
                Some(Value::Array(items)) => {
                    Value::Array(insert(items, item, action).into_boxed_slice())
                }
                Some(Value::Set(items)) => {
                    if items.iter().any(|i| json_eq(i, &item)) {
                        Value::Set(items)
                    } else {
                        Value::Set(insert(items, item, action).into_boxed_slice())
                    }
                }
                Some(Value::Vector(v)) => {
                    let f = item
                        .as_f64()
                        .ok_or_else(|| fail(action, "vectors hold numbers"))?;
                    let mut v = v.into_vec();
                    if action == Action::Push {
                        v.push(f)
                    } else {
                        v.insert(0, f)
                    }
                    Value::Vector(v.into_boxed_slice())
                }
                Some(_) => return Err(fail(action, "field is not an array")),
            }
        }
        Action::Pop | Action::Shift => {
            let take = |mut v: Vec<Json>| {
                if !v.is_empty() {
                    if action == Action::Pop {
                        v.pop();
                    } else {
                        v.remove(0);
                    }
                }
                v.into_boxed_slice()
            };
            match current {
                None => return Err(fail(action, "field does not exist")),
                Some(Value::Array(items)) => Value::Array(take(items.into_vec())),
                Some(Value::Set(items)) => Value::Set(take(items.into_vec())),
                Some(Value::Vector(v)) => {
                    let mut v = v.into_vec();
                    if !v.is_empty() {
                        if action == Action::Pop {
                            v.pop();
                        } else {
                            v.remove(0);
                        }
                    }
                    Value::Vector(v.into_boxed_slice())
                }
                Some(_) => return Err(fail(action, "field is not an array")),
            }
        }
        Action::Remove => {
            let item = need_value()?;
            match current {
                None => return Err(fail(action, "field does not exist")),
                Some(Value::Array(items)) => Value::Array(
                    items
                        .into_vec()
                        .into_iter()
                        .filter(|i| !json_eq(i, &item))
                        .collect(),
                ),
                Some(Value::Set(items)) => Value::Set(
                    items
                        .into_vec()
                        .into_iter()
                        .filter(|i| !json_eq(i, &item))
                        .collect(),
                ),
                Some(Value::Vector(v)) => {
                    let f = item.as_f64();
                    Value::Vector(v.iter().copied().filter(|x| Some(*x) != f).collect())
                }
                Some(_) => return Err(fail(action, "field is not an array")),
            }
        }
        Action::Append => {
            let suffix = match need_value()? {
                Json::Str(s) => s,
                _ => return Err(fail(action, "value is not a string")),
            };
            match current {
                None | Some(Value::Null) => Value::String(suffix),
                Some(Value::String(s)) => Value::String(format!("{s}{suffix}").into_boxed_str()),
                Some(_) => return Err(fail(action, "field is not a string")),
            }
        }
        Action::Clear => match current {
            None => return Err(fail(action, "field does not exist")),
            Some(Value::Integer(_)) => Value::Integer(0),
            Some(Value::Float(_)) => Value::Float(0.0),
            Some(Value::Number(_)) => Value::Number(Num::Int(0)),
            Some(Value::String(_)) => Value::String("".into()),
            Some(Value::Array(_)) => Value::Array(Box::default()),
            Some(Value::Set(_)) => Value::Set(Box::default()),
            Some(Value::Vector(_)) => Value::Vector(Box::default()),
            Some(Value::Object(_)) => Value::Object(Box::default()),
            Some(Value::Boolean(_)) => Value::Boolean(false),
            Some(_) => Value::Null,
        },
    };
    record.set(field, next);
    Ok(())
}

fn insert(items: Box<[Json]>, item: Json, action: Action) -> Vec<Json> {
    let mut v = items.into_vec();
    if action == Action::Push {
        v.push(item);
    } else {
        v.insert(0, item);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(start: Option<Value>, action: &str, value: J) -> Result<Value> {
        let mut r = Record::new();
        if let Some(v) = start {
            r.set("f".into(), v);
        }
        apply(&mut r, "f".into(), Action::parse(action)?, Some(&value))?;
        Ok(r.get("f").cloned().unwrap())
    }

    #[test]
    fn arithmetic() {
        assert_eq!(
            run(Some(Value::Integer(5)), "increment", json!(10)).unwrap(),
            Value::Integer(15)
        );
        assert_eq!(
            run(Some(Value::Float(1.5)), "decrement", json!(1)).unwrap(),
            Value::Float(0.5)
        );
        assert_eq!(run(None, "increment", json!(2)).unwrap(), Value::Integer(2));
        assert_eq!(
            run(Some(Value::Integer(7)), "modulo", json!(4)).unwrap(),
            Value::Integer(3)
        );
        assert_eq!(
            run(Some(Value::Integer(6)), "divide", json!(3)).unwrap(),
            Value::Integer(2)
        );
        assert!(run(Some(Value::Integer(6)), "divide", json!(0))
            .unwrap_err()
            .message
            .contains("division by zero"));
        assert!(run(Some(Value::String("x".into())), "increment", json!(1))
            .unwrap_err()
            .message
            .contains("field not numeric"));
        assert!(run(Some(Value::Integer(i64::MAX)), "increment", json!(1)).is_err());
    }

    #[test]
    fn arrays_and_strings() {
        let arr = Value::Array(vec![Json::Int(1), Json::Int(2)].into_boxed_slice());
        assert_eq!(
            run(Some(arr.clone()), "push", json!(3)).unwrap(),
            Value::Array(vec![Json::Int(1), Json::Int(2), Json::Int(3)].into())
        );
        assert_eq!(
            run(Some(arr.clone()), "unshift", json!(0)).unwrap(),
            Value::Array(vec![Json::Int(0), Json::Int(1), Json::Int(2)].into())
        );
        assert_eq!(
            run(Some(arr.clone()), "pop", J::Null).unwrap(),
            Value::Array(vec![Json::Int(1)].into())
        );
        assert_eq!(
            run(Some(arr.clone()), "shift", J::Null).unwrap(),
            Value::Array(vec![Json::Int(2)].into())
        );
        assert_eq!(
            run(Some(arr.clone()), "remove", json!(1)).unwrap(),
            Value::Array(vec![Json::Int(2)].into())
        );
        assert_eq!(
            run(Some(arr), "clear", J::Null).unwrap(),
            Value::Array(Box::default())
        );
        assert_eq!(
            run(Some(Value::String("ab".into())), "append", json!("c")).unwrap(),
            Value::String("abc".into())
        );
        assert!(Action::parse("explode").is_err());
    }
}
