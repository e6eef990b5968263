//! Parameters and placeholders (spec G5). A run's scope holds the call's
//! parameters (defaults applied) and what earlier stages produced; a
//! placeholder looks there first, then at the first record of the working
//! set. `"{{name}}"` as a whole string keeps the value's JSON type;
//! `{{name}}` inside a longer string is text; `{"type": "Parameter",
//! "name": ...}` is a typed reference; `{{env.NAME}}` reads an environment
//! value the operator allowed (never the caller's).

use crate::error::{Error, Result};
use serde_json::{Map, Value as J};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One working-set record, in the clients' typed form.
pub type Doc = Map<String, J>;

/// Placeholders nest in values at most this deep.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// The call's parameters, defaults applied.
    pub params: Map<String, J>,
    /// Values stages produced (`output_field`s, `http_response`, ...).
    pub outputs: Map<String, J>,
    /// Environment values the operator allowed functions to read.
    pub env: Arc<BTreeMap<String, String>>,
}

/// The value inside a typed envelope (`{"type": "String", "value": "x"}`
/// is `"x"`); anything else as it is.
pub fn plain(v: &J) -> &J {
    match v {
        J::Object(o)
            if o.len() == 2
                && o.get("type").is_some_and(J::is_string)
                && o.contains_key("value") =>
        {
            &o["value"]
        }
        other => other,
    }
}

/// A value as text: strings as they are, anything else as compact JSON.
pub fn text(v: &J) -> Cow<'_, str> {
    match plain(v) {
        J::String(s) => Cow::Borrowed(s.as_str()),
        J::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

fn walk<'a>(mut v: &'a J, path: &[&str]) -> Option<&'a J> {
    for seg in path {
        v = match plain(v) {
            J::Object(o) => o.get(*seg)?,
            J::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

impl Scope {
    /// The value a name refers to: parameters, then stage outputs, then the
    /// first record; a dotted name reaches into objects. `None` if unbound.
    pub fn lookup(&self, name: &str, ws: &[Doc]) -> Result<Option<J>> {
        let name = name.trim();
        if let Some(var) = name.strip_prefix("env.") {
            return match self.env.get(var) {
                Some(v) => Ok(Some(J::String(v.clone()))),
                None => Err(Error::invalid(format!(
                    "environment value `{var}` is not one the server lets functions read"
                ))),
            };
        }
        let first = ws.first();
        let find = |key: &str| -> Option<&J> {
            self.params
                .get(key)
                .or_else(|| self.outputs.get(key))
                .or_else(|| first.and_then(|r| r.get(key)))
        };
        if let Some(v) = find(name) {
            return Ok(Some(plain(v).clone()));
        }
        let mut parts = name.split('.');
        let head = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        if rest.is_empty() {
            return Ok(None);
        }
        Ok(find(head)
            .and_then(|v| walk(v, &rest))
            .map(|v| plain(v).clone()))
    }

    /// Resolves every placeholder in a value.
    pub fn resolve(&self, v: &J, ws: &[Doc]) -> Result<J> {
        self.resolve_at(v, ws, 0)
    }

    fn resolve_at(&self, v: &J, ws: &[Doc], depth: usize) -> Result<J> {
        if depth > MAX_DEPTH {
            return Err(Error::invalid("a stage value nests too deeply"));
        }
        Ok(match v {
            J::String(s) => match whole(s) {
                Some(name) => self.lookup(name, ws)?.unwrap_or(J::Null),
                None if s.contains("{{") => J::String(self.interpolate(s, ws)?),
                None => v.clone(),
            },
            J::Object(o) => {
                if o.len() == 2 && o.get("type").and_then(J::as_str) == Some("Parameter") {
                    if let Some(name) = o.get("name").and_then(J::as_str) {
                        return Ok(self.lookup(name, ws)?.unwrap_or(J::Null));
                    }
                }
                let mut out = Map::with_capacity(o.len());
                for (k, x) in o {
                    out.insert(k.clone(), self.resolve_at(x, ws, depth + 1)?);
                }
                J::Object(out)
            }
            J::Array(items) => J::Array(
                items
                    .iter()
                    .map(|x| self.resolve_at(x, ws, depth + 1))
                    .collect::<Result<_>>()?,
            ),
            other => other.clone(),
        })
    }

    /// A string field: placeholders become text.
    pub fn string<'a>(&self, s: &'a str, ws: &[Doc]) -> Result<Cow<'a, str>> {
        if !s.contains("{{") {
            return Ok(Cow::Borrowed(s));
        }
        if let Some(name) = whole(s) {
            return Ok(Cow::Owned(
                self.lookup(name, ws)?
                    .map(|v| text(&v).into_owned())
                    .unwrap_or_default(),
            ));
        }
        self.interpolate(s, ws).map(Cow::Owned)
    }

    /// `{{name}}` inside text; an unbound name becomes the empty string.
    fn interpolate(&self, s: &str, ws: &[Doc]) -> Result<String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find("}}") {
                Some(end) => {
                    if let Some(v) = self.lookup(&after[..end], ws)? {
                        out.push_str(&text(&v));
                    }
                    rest = &after[end + 2..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The name in a string that is one placeholder and nothing else.
fn whole(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope {
        let mut s = Scope::default();
        s.params.insert("page_size".into(), json!(3));
        s.params.insert("user_id".into(), json!("u1"));
        s.outputs
            .insert("lock".into(), json!({"acquired": true, "token": "t9"}));
        s
    }

    #[test]
    fn a_whole_placeholder_keeps_the_type_and_an_embedded_one_is_text() {
        let s = scope();
        assert_eq!(s.resolve(&json!("{{page_size}}"), &[]).unwrap(), json!(3));
        assert_eq!(
            s.resolve(&json!("user-{{user_id}}:{{page_size}}"), &[])
                .unwrap(),
            json!("user-u1:3")
        );
        assert_eq!(s.resolve(&json!("{{nope}}"), &[]).unwrap(), J::Null);
        assert_eq!(s.resolve(&json!("a{{nope}}b"), &[]).unwrap(), json!("ab"));
        assert_eq!(
            s.resolve(&json!("{{lock.token}}"), &[]).unwrap(),
            json!("t9")
        );
        assert_eq!(
            s.resolve(&json!({"type": "Parameter", "name": "page_size"}), &[])
                .unwrap(),
            json!(3)
        );
        assert_eq!(
            s.resolve(
                &json!({"id": {"type": "String", "value": "{{user_id}}"}}),
                &[]
            )
            .unwrap(),
            json!({"id": {"type": "String", "value": "u1"}})
        );
    }

    #[test]
    fn record_fields_are_in_scope_unwrapped_and_env_needs_permission() {
        let s = scope();
        let ws = vec![json!({"name": {"type": "String", "value": "Ann"}})
            .as_object()
            .unwrap()
            .clone()];
        assert_eq!(s.string("hi {{name}}", &ws).unwrap(), "hi Ann");
        assert!(s.lookup("env.HOME", &ws).is_err());
        let mut allowed = s.clone();
        allowed.env = Arc::new([("API".to_string(), "k".to_string())].into());
        assert_eq!(allowed.string("{{env.API}}", &ws).unwrap(), "k");
    }
}
