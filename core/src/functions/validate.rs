//! The `Validate` stage's JSON Schema subset: `type` (one or a list),
//! `required`, `properties`, `additionalProperties: false`, `enum`,
//! `const`, `minimum`/`maximum` (and the exclusive forms), `minLength`/
//! `maxLength`, `pattern`, `format: "email"`, `items`, `minItems`/
//! `maxItems`. A keyword outside the subset is refused when the schema is
//! used, rather than silently passing data it was meant to stop.

use serde_json::Value as J;

const KNOWN: [&str; 20] = [
    "type",
    "required",
    "properties",
    "additionalProperties",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "items",
    "minItems",
    "maxItems",
    "title",
    "description",
    "$schema",
];

/// `Ok` if `value` satisfies `schema`, else why not.
pub fn check(schema: &J, value: &J) -> Result<(), String> {
    at(schema, value, "", 0)
}

fn at(schema: &J, v: &J, path: &str, depth: usize) -> Result<(), String> {
    if depth > 32 {
        return Err("the schema nests too deeply".into());
    }
    let J::Object(s) = schema else {
        return match schema {
            J::Bool(true) => Ok(()),
            J::Bool(false) => Err(format!("{} is not allowed", name(path))),
            _ => Err("the schema must be an object".into()),
        };
    };
    if let Some(k) = s.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "uses the schema keyword `{k}`, which Validate does not support"
        ));
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            J::String(t) => vec![t.as_str()],
            J::Array(ts) => ts.iter().filter_map(J::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.iter().any(|t| is_type(v, t)) {
            return Err(format!(
                "{} must be of type {}",
                name(path),
                types.join(" or ")
            ));
        }
    }
    if let Some(J::Array(options)) = s.get("enum") {
        if !options.contains(v) {
            return Err(format!(
                "{} must be one of {}",
                name(path),
                J::Array(options.clone())
            ));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            return Err(format!("{} must be {c}", name(path)));
        }
    }
    if let Some(x) = v.as_f64() {
        let bound = |k: &str| s.get(k).and_then(J::as_f64);
        if bound("minimum").is_some_and(|m| x < m)
            || bound("exclusiveMinimum").is_some_and(|m| x <= m)
        {
            return Err(format!("{} is too small", name(path)));
        }
        if bound("maximum").is_some_and(|m| x > m)
            || bound("exclusiveMaximum").is_some_and(|m| x >= m)
        {
            return Err(format!("{} is too large", name(path)));
        }
    }
    if let J::String(text) = v {
        let chars = text.chars().count() as u64;
        if s.get("minLength")
            .and_then(J::as_u64)
            .is_some_and(|m| chars < m)
        {
            return Err(format!("{} is too short", name(path)));
        }
        if s.get("maxLength")
            .and_then(J::as_u64)
            .is_some_and(|m| chars > m)
        {
            return Err(format!("{} is too long", name(path)));
        }
        if let Some(p) = s.get("pattern").and_then(J::as_str) {
            let re = regex::RegexBuilder::new(p)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("has a bad pattern: {e}"))?;
            if !re.is_match(text) {
                return Err(format!("{} does not match {p}", name(path)));
            }
        }
        if s.get("format").and_then(J::as_str) == Some("email") && !looks_like_email(text) {
            return Err(format!("{} is not an email address", name(path)));
        }
    }
    if let J::Object(o) = v {
        if let Some(J::Array(req)) = s.get("required") {
            for k in req.iter().filter_map(J::as_str) {
                if !o.contains_key(k) {
                    return Err(format!("is missing the required field `{}`", join(path, k)));
                }
            }
        }
        let props = s.get("properties").and_then(J::as_object);
        if let Some(props) = props {
            for (k, sub) in props {
                if let Some(x) = o.get(k) {
                    at(sub, x, &join(path, k), depth + 1)?;
                }
            }
        }
        if s.get("additionalProperties") == Some(&J::Bool(false)) {
            if let Some(k) = o.keys().find(|k| props.is_none_or(|p| !p.contains_key(*k))) {
                return Err(format!(
                    "has the field `{}`, which is not allowed",
                    join(path, k)
                ));
            }
        }
    }
    if let J::Array(items) = v {
        let n = items.len() as u64;
        if s.get("minItems").and_then(J::as_u64).is_some_and(|m| n < m) {
            return Err(format!("{} has too few items", name(path)));
        }
        if s.get("maxItems").and_then(J::as_u64).is_some_and(|m| n > m) {
            return Err(format!("{} has too many items", name(path)));
        }
        if let Some(sub) = s.get("items") {
            for (i, x) in items.iter().enumerate() {
                at(sub, x, &format!("{path}[{i}]"), depth + 1)?;
            }
        }
    }
    Ok(())
}

fn is_type(v: &J, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

fn looks_like_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !s.contains(' ')
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn name(path: &str) -> String {
    if path.is_empty() {
        "the value".into()
    } else {
        format!("`{path}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_user_schema() {
        let schema = json!({"type": "object", "required": ["email", "age"],
            "properties": {"email": {"type": "string", "format": "email"},
                           "age": {"type": "integer", "minimum": 18}}});
        assert!(check(&schema, &json!({"email": "a@b.co", "age": 30})).is_ok());
        assert!(check(&schema, &json!({"email": "a@b.co"}))
            .unwrap_err()
            .contains("`age`"));
        assert!(check(&schema, &json!({"email": "nope", "age": 30})).is_err());
        assert!(check(&schema, &json!({"email": "a@b.co", "age": 3})).is_err());
        assert!(check(&json!({"oneOf": []}), &json!(1))
            .unwrap_err()
            .contains("oneOf"));
    }
}
