//! A chat session's settings: what clients send (every accepted variant), how
//! they are stored (a record in the sessions collection), and how they go back
//! on the wire (one normalized form, spec E1-E2).

use crate::engine::record::Record;
use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::value::{Json, Value};
use serde_json::{json, Map, Value as J};

/// The context window assumed when no setting says otherwise.
pub const DEFAULT_MAX_CONTEXT_MESSAGES: usize = 50;

/// One field of a collection the chat retrieves from.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldConfig {
    pub name: String,
    pub search_options: Option<J>,
}

/// A collection the chat retrieves context from, with the fields to search
/// (all string fields when empty) and search options.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectionConfig {
    pub name: String,
    pub fields: Vec<FieldConfig>,
    pub search_options: Option<J>,
}

impl CollectionConfig {
    /// Accepts every client's shape: `fields` absent or null, `["title"]`,
    /// `[{"field_name": "title", "search_options": {..}}]` or
    /// `[{"field": "title"}]`.
    pub fn parse(v: &J) -> Result<CollectionConfig> {
        let o = v
            .as_object()
            .ok_or_else(|| Error::invalid("each collection config must be an object"))?;
        let name = o
            .get("collection_name")
            .or_else(|| o.get("collection"))
            .and_then(J::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::invalid("a collection config needs `collection_name`"))?
            .to_string();
        crate::engine::validate_name("collection", &name)?;
        let fields = match o.get("fields") {
            None | Some(J::Null) => Vec::new(),
            Some(J::Array(items)) => items
                .iter()
                .map(|f| match f {
                    J::String(s) => Ok(FieldConfig {
                        name: s.clone(),
                        search_options: None,
                    }),
                    J::Object(fo) => {
                        let name = fo
                            .get("field_name")
                            .or_else(|| fo.get("field"))
                            .and_then(J::as_str)
                            .ok_or_else(|| Error::invalid("a field config needs `field_name`"))?;
                        Ok(FieldConfig {
                            name: name.to_string(),
                            search_options: fo
                                .get("search_options")
                                .filter(|o| o.is_object())
                                .cloned(),
                        })
                    }
                    _ => Err(Error::invalid(
                        "`fields` lists field names or {\"field_name\": ...} objects",
                    )),
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(Error::invalid("`fields` must be an array")),
        };
        let search_options = o.get("search_options").filter(|o| o.is_object()).cloned();
        Ok(CollectionConfig {
            name,
            fields,
            search_options,
        })
    }

    /// The one output form: `field_name` always (plus `field` for older
    /// clients), `search_options` only when set.
    pub fn to_wire(&self) -> J {
        let fields: Vec<J> = self
            .fields
            .iter()
            .map(|f| {
                let mut o = json!({"field_name": f.name, "field": f.name});
                if let Some(so) = &f.search_options {
                    o["search_options"] = so.clone();
                }
                o
            })
            .collect();
        let mut o = json!({"collection_name": self.name, "fields": fields});
        if let Some(so) = &self.search_options {
            o["search_options"] = so.clone();
        }
        o
    }
}

/// `collections` of a request: `None` when absent or null.
pub fn parse_collections(v: Option<&J>) -> Result<Option<Vec<CollectionConfig>>> {
    match v {
        None | Some(J::Null) => Ok(None),
        Some(J::Array(items)) => items
            .iter()
            .map(CollectionConfig::parse)
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(Error::invalid("`collections` must be an array")),
    }
}

/// A stored chat session.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub chat_id: String,
    /// The provider and model the client asked for (or the defaults).
    pub llm_provider: String,
    pub llm_model: String,
    pub system_prompt: Option<String>,
    pub title: Option<String>,
    pub agent_id: Option<String>,
    pub collections: Vec<CollectionConfig>,
    pub tool_config: Option<J>,
    pub max_context_messages: Option<usize>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub parent_id: Option<String>,
    pub branch_point_idx: Option<usize>,
    pub memory: Option<J>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Sequence number of the next message (message ids sort by it).
    pub next_seq: u64,
    /// How many times older messages were folded into a summary.
    pub summary_version: u64,
}

/// Optional settings shared by create and update requests.
fn opt_str(o: &Map<String, J>, k: &str) -> Result<Option<String>> {
    match o.get(k) {
        None | Some(J::Null) => Ok(None),
        Some(J::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::invalid(format!("`{k}` must be a string"))),
    }
}

fn opt_uint(o: &Map<String, J>, k: &str) -> Result<Option<u64>> {
    match o.get(k) {
        None | Some(J::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("`{k}` must be a non-negative integer"))),
    }
}

fn opt_obj(o: &Map<String, J>, k: &str) -> Result<Option<J>> {
    match o.get(k) {
        None | Some(J::Null) => Ok(None),
        Some(v @ J::Object(_)) => Ok(Some(v.clone())),
        Some(_) => Err(Error::invalid(format!("`{k}` must be an object"))),
    }
}

impl Session {
    /// A new session from a create (or branch) request body. Provider and
    /// model defaults are filled by the caller.
    pub fn from_request(chat_id: String, body: &J, now: Timestamp) -> Result<Session> {
        let empty = Map::new();
        let o = match body {
            J::Object(o) => o,
            J::Null => &empty,
            _ => return Err(Error::invalid("the body must be a JSON object")),
        };
        let temperature = match o.get("temperature") {
            None | Some(J::Null) => None,
            Some(v) => Some(
                v.as_f64()
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .ok_or_else(|| Error::invalid("`temperature` must be a non-negative number"))?,
            ),
        };
        let max_tokens = match o.get("max_tokens") {
            None | Some(J::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|t| *t > 0 && *t <= u64::from(u32::MAX))
                    .ok_or_else(|| Error::invalid("`max_tokens` must be a positive integer"))?
                    as u32,
            ),
        };
        Ok(Session {
            chat_id,
            llm_provider: opt_str(o, "llm_provider")?.unwrap_or_default(),
            llm_model: opt_str(o, "llm_model")?.unwrap_or_default(),
            system_prompt: opt_str(o, "system_prompt")?,
            title: opt_str(o, "title")?,
            agent_id: opt_str(o, "agent_id")?,
            collections: parse_collections(o.get("collections"))?.unwrap_or_default(),
            tool_config: opt_obj(o, "tool_config")?,
            max_context_messages: opt_uint(o, "max_context_messages")?.map(|n| n as usize),
            max_tokens,
            temperature,
            parent_id: opt_str(o, "parent_id")?,
            branch_point_idx: opt_uint(o, "branch_point_idx")?.map(|n| n as usize),
            memory: o.get("memory").filter(|m| !m.is_null()).cloned(),
            created_at: now,
            updated_at: now,
            next_seq: 0,
            summary_version: 0,
        })
    }

    /// Applies a partial update (spec E2: only the keys present change).
    pub fn apply_update(&mut self, body: &J, now: Timestamp) -> Result<()> {
        let o = body
            .as_object()
            .ok_or_else(|| Error::invalid("the body must be a JSON object"))?;
        if let Some(p) = opt_str(o, "system_prompt")? {
            self.system_prompt = Some(p);
        }
        if let Some(m) = opt_str(o, "llm_model")? {
            self.llm_model = m;
        }
        if let Some(t) = opt_str(o, "title")? {
            self.title = Some(t);
        }
        if let Some(c) = parse_collections(o.get("collections"))? {
            self.collections = c;
        }
        if let Some(n) = opt_uint(o, "max_context_messages")? {
            self.max_context_messages = Some(n as usize);
        }
        if let Some(tc) = opt_obj(o, "tool_config")? {
            self.tool_config = Some(tc);
        }
        if let Some(m) = o.get("memory") {
            self.memory = Some(m.clone()).filter(|m| !m.is_null());
        }
        self.updated_at = now;
        Ok(())
    }

    pub fn max_context_messages(&self) -> usize {
        self.max_context_messages
            .unwrap_or(DEFAULT_MAX_CONTEXT_MESSAGES)
            .max(1)
    }

    /// The record the session is stored as.
    pub fn to_fields(&self) -> Vec<(&'static str, Value)> {
        let s = |v: &str| Value::String(v.into());
        let j = |v: &J| Value::from_json(Json::from(v.clone()));
        let mut f: Vec<(&'static str, Value)> = vec![
            ("llm_provider", s(&self.llm_provider)),
            ("llm_model", s(&self.llm_model)),
            (
                "collections",
                Value::Array(
                    self.collections
                        .iter()
                        .map(|c| Json::from(c.to_wire()))
                        .collect(),
                ),
            ),
            ("created_at", Value::DateTime(self.created_at)),
            ("updated_at", Value::DateTime(self.updated_at)),
            ("next_seq", Value::Integer(self.next_seq as i64)),
            (
                "summary_version",
                Value::Integer(self.summary_version as i64),
            ),
        ];
        let opt = |f: &mut Vec<(&'static str, Value)>, k, v: Option<Value>| {
            if let Some(v) = v {
                f.push((k, v));
            }
        };
        opt(
            &mut f,
            "system_prompt",
            self.system_prompt.as_deref().map(s),
        );
        opt(&mut f, "title", self.title.as_deref().map(s));
        opt(&mut f, "agent_id", self.agent_id.as_deref().map(s));
        opt(&mut f, "tool_config", self.tool_config.as_ref().map(j));
        opt(
            &mut f,
            "max_context_messages",
            self.max_context_messages.map(|n| Value::Integer(n as i64)),
        );
        opt(
            &mut f,
            "max_tokens",
            self.max_tokens.map(|n| Value::Integer(i64::from(n))),
        );
        opt(&mut f, "temperature", self.temperature.map(Value::Float));
        opt(&mut f, "parent_id", self.parent_id.as_deref().map(s));
        opt(
            &mut f,
            "branch_point_idx",
            self.branch_point_idx.map(|n| Value::Integer(n as i64)),
        );
        opt(&mut f, "memory", self.memory.as_ref().map(j));
        f
    }

    /// Reads a stored session back.
    pub fn from_record(chat_id: &str, r: &Record) -> Session {
        let text = |k: &str| match r.get(k) {
            Some(Value::String(s)) => Some(s.to_string()),
            _ => None,
        };
        let int = |k: &str| match r.get(k) {
            Some(Value::Integer(i)) => Some(*i),
            _ => None,
        };
        let time = |k: &str| match r.get(k) {
            Some(Value::DateTime(t)) => *t,
            _ => Timestamp::EPOCH,
        };
        let json = |k: &str| {
            r.get(k)
                .map(|v| v.to_json().to_serde())
                .filter(|v| !v.is_null())
        };
        let collections = match json("collections") {
            Some(J::Array(items)) => items
                .iter()
                .filter_map(|c| CollectionConfig::parse(c).ok())
                .collect(),
            _ => Vec::new(),
        };
        Session {
            chat_id: chat_id.to_string(),
            llm_provider: text("llm_provider").unwrap_or_default(),
            llm_model: text("llm_model").unwrap_or_default(),
            system_prompt: text("system_prompt"),
            title: text("title"),
            agent_id: text("agent_id"),
            collections,
            tool_config: json("tool_config"),
            max_context_messages: int("max_context_messages").map(|n| n.max(0) as usize),
            max_tokens: int("max_tokens").map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
            temperature: match r.get("temperature") {
                Some(Value::Float(f)) => Some(*f),
                Some(Value::Integer(i)) => Some(*i as f64),
                _ => None,
            },
            parent_id: text("parent_id"),
            branch_point_idx: int("branch_point_idx").map(|n| n.max(0) as usize),
            memory: json("memory"),
            created_at: time("created_at"),
            updated_at: time("updated_at"),
            next_seq: int("next_seq").unwrap_or(0).max(0) as u64,
            summary_version: int("summary_version").unwrap_or(0).max(0) as u64,
        }
    }

    /// The session as the clients read it (spec E1; every key the Rust client
    /// requires is present, `llm_model` never null). `answered_by` names the
    /// model that actually answers when it is not the one asked for (the
    /// offline provider standing in for a provider with no key).
    pub fn to_wire(&self, message_count: usize, answered_by: Option<(&str, &str)>) -> J {
        let mut o = json!({
            "chat_id": self.chat_id,
            "created_at": self.created_at.to_rfc3339_z(),
            "updated_at": self.updated_at.to_rfc3339_z(),
            "llm_provider": self.llm_provider,
            "llm_model": self.llm_model,
            "collections": self.collections.iter().map(CollectionConfig::to_wire).collect::<Vec<J>>(),
            "message_count": message_count,
            "system_prompt": self.system_prompt,
            "title": self.title,
            "agent_id": self.agent_id,
            "max_context_messages": self.max_context_messages(),
        });
        if let Some((model, why)) = answered_by {
            o["requested_model"] = J::String(self.llm_model.clone());
            o["llm_model"] = J::String(model.to_string());
            o["model_note"] = J::String(why.to_string());
        }
        let extra = |o: &mut J, k: &str, v: Option<J>| {
            if let Some(v) = v {
                o[k] = v;
            }
        };
        extra(&mut o, "tool_config", self.tool_config.clone());
        extra(&mut o, "max_tokens", self.max_tokens.map(J::from));
        extra(&mut o, "temperature", self.temperature.map(J::from));
        extra(&mut o, "parent_id", self.parent_id.clone().map(J::String));
        extra(
            &mut o,
            "branch_point_idx",
            self.branch_point_idx.map(J::from),
        );
        extra(&mut o, "memory", self.memory.clone());
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_collection_shape_normalizes_to_one() {
        for input in [
            json!({"collection_name": "p", "fields": ["title"]}),
            json!({"collection_name": "p", "fields": [{"field_name": "title"}]}),
            json!({"collection_name": "p", "fields": [{"field": "title"}]}),
        ] {
            let c = CollectionConfig::parse(&input).unwrap();
            assert_eq!(
                c.to_wire(),
                json!({"collection_name": "p", "fields": [{"field_name": "title", "field": "title"}]})
            );
        }
        let c = CollectionConfig::parse(&json!({"collection_name": "p", "fields": null})).unwrap();
        assert_eq!(c.to_wire()["fields"], json!([]));
        assert!(CollectionConfig::parse(&json!({"fields": []})).is_err());
    }

    #[test]
    fn stored_sessions_read_back_the_same() {
        let now = Timestamp::from_secs(1_800_000_000);
        let body = json!({
            "llm_provider": "openai", "llm_model": "gpt-4o-mini", "system_prompt": "Be brief",
            "collections": [{"collection_name": "docs", "fields": ["title"], "search_options": {"fuzzy_match": true}}],
            "max_context_messages": 12, "max_tokens": 300, "temperature": 0.5,
            "tool_config": {"enabled": true}, "memory": {"k": 1}
        });
        let s = Session::from_request("c1".into(), &body, now).unwrap();
        let mut r = Record::new();
        for (k, v) in s.to_fields() {
            r.set(k.into(), v);
        }
        assert_eq!(Session::from_record("c1", &r), s);
        assert!(Session::from_request("c".into(), &json!({"temperature": "hot"}), now).is_err());
    }
}
