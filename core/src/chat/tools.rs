//! Server tools the model may call (spec E6): read-only queries and searches
//! over the session's collections by default; writes only when the session's
//! tool config allows them. Each tool's arguments are a JSON object described
//! by its JSON Schema; a failure is a result the model reads, never a panic.

use crate::engine::filter::Filter;
use crate::engine::query::FindQuery;
use crate::engine::record::{PlainRecordOut, RecordOut};
use crate::engine::search::SearchRequest;
use crate::engine::Engine;
use crate::providers::ToolSpec;
use crate::time::Timestamp;
use serde_json::{json, Value as J};
use tidepool_search::{Metric, TextQuery};

/// Records a tool returns at most.
const MAX_ROWS: usize = 50;

/// Rounds of tool calls one message may make, unless its config says.
pub const DEFAULT_MAX_ITERATIONS: u32 = 5;

struct Tool {
    name: &'static str,
    description: &'static str,
    writes: bool,
    parameters: fn() -> J,
}

fn coll() -> J {
    json!({"type": "string", "description": "collection name"})
}

const TOOLS: &[Tool] = &[
    Tool {
        name: "list_collections",
        description: "List the collections this chat may read.",
        writes: false,
        parameters: || json!({"type": "object", "properties": {}}),
    },
    Tool {
        name: "search_records",
        description: "Full-text search a collection; returns the best matching records.",
        writes: false,
        parameters: || json!({"type": "object", "properties": {"collection": coll(), "query": {"type": "string"}, "limit": {"type": "integer"}}, "required": ["collection", "query"]}),
    },
    Tool {
        name: "find_records",
        description:
            "Query a collection with an ekoDB filter expression (optional); returns records.",
        writes: false,
        parameters: || json!({"type": "object", "properties": {"collection": coll(), "filter": {"type": "object"}, "limit": {"type": "integer"}}, "required": ["collection"]}),
    },
    Tool {
        name: "get_record",
        description: "Fetch one record by id.",
        writes: false,
        parameters: || json!({"type": "object", "properties": {"collection": coll(), "id": {"type": "string"}}, "required": ["collection", "id"]}),
    },
    Tool {
        name: "count_records",
        description: "Count the records of a collection, optionally matching a filter.",
        writes: false,
        parameters: || json!({"type": "object", "properties": {"collection": coll(), "filter": {"type": "object"}}, "required": ["collection"]}),
    },
    Tool {
        name: "insert_record",
        description: "Insert a record (only when the chat allows writes).",
        writes: true,
        parameters: || json!({"type": "object", "properties": {"collection": coll(), "record": {"type": "object"}}, "required": ["collection", "record"]}),
    },
    Tool {
        name: "update_record",
        description: "Update fields of a record (only when the chat allows writes).",
        writes: true,
        parameters: || json!({"type": "object", "properties": {"collection": coll(), "id": {"type": "string"}, "record": {"type": "object"}}, "required": ["collection", "id", "record"]}),
    },
    Tool {
        name: "delete_record",
        description: "Delete a record (only when the chat allows writes).",
        writes: true,
        parameters: || json!({"type": "object", "properties": {"collection": coll(), "id": {"type": "string"}}, "required": ["collection", "id"]}),
    },
];

/// The catalog (`GET /api/chat/tools`).
pub fn catalog() -> J {
    J::Array(
        TOOLS
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "parameters": (t.parameters)()}))
            .collect(),
    )
}

pub fn is_server_tool(name: &str) -> bool {
    TOOLS.iter().any(|t| t.name == name)
}

/// What a message's tools may do: merged from the session's and the
/// message's tool config.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub enabled: bool,
    pub allowed_tools: Option<Vec<String>>,
    /// Collections tools may touch (empty: any non-internal one).
    pub collections: Vec<String>,
    pub writes: bool,
    pub max_iterations: u32,
}

impl Policy {
    pub fn new(
        session: Option<&J>,
        message: Option<&J>,
        session_collections: Vec<String>,
    ) -> Policy {
        let get = |k: &str| {
            message
                .and_then(|m| m.get(k))
                .or_else(|| session.and_then(|s| s.get(k)))
        };
        let names = |v: Option<&J>| {
            v.and_then(J::as_array).map(|a| {
                a.iter()
                    .filter_map(J::as_str)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
        };
        let allowed_collections = names(get("allowed_collections")).filter(|c| !c.is_empty());
        Policy {
            enabled: get("enabled").and_then(J::as_bool).unwrap_or(false),
            allowed_tools: names(get("allowed_tools")).filter(|t| !t.is_empty()),
            collections: allowed_collections.unwrap_or(session_collections),
            writes: get("allow_write_operations")
                .and_then(J::as_bool)
                .unwrap_or(false),
            max_iterations: get("max_iterations")
                .and_then(J::as_u64)
                .map_or(DEFAULT_MAX_ITERATIONS, |n| n.clamp(1, 20) as u32),
        }
    }

    /// The server tools offered to the model.
    pub fn specs(&self, exclude: &[String]) -> Vec<ToolSpec> {
        if !self.enabled {
            return Vec::new();
        }
        TOOLS
            .iter()
            .filter(|t| self.writes || !t.writes)
            .filter(|t| {
                self.allowed_tools
                    .as_ref()
                    .is_none_or(|a| a.iter().any(|n| n == t.name))
            })
            .filter(|t| !exclude.iter().any(|e| e == t.name))
            .map(|t| ToolSpec {
                name: t.name.into(),
                description: t.description.into(),
                parameters: (t.parameters)(),
            })
            .collect()
    }
}

fn text(args: &J, k: &str) -> Result<String, String> {
    args.get(k)
        .and_then(J::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("`{k}` (a string) is required"))
}

fn limit(args: &J) -> usize {
    args.get("limit")
        .and_then(J::as_u64)
        .map_or(10, |n| (n as usize).clamp(1, MAX_ROWS))
}

/// Runs a server tool. `Err` is the failure text the model (and the client)
/// sees.
pub fn execute(
    engine: &mut Engine,
    policy: &Policy,
    name: &str,
    args: &J,
    now: Timestamp,
) -> Result<J, String> {
    let tool = TOOLS
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| format!("unknown tool `{name}`"))?;
    if tool.writes && !policy.writes {
        return Err(format!(
            "`{name}` writes, and this chat's tool config does not allow writes"
        ));
    }
    if !args.is_object() {
        return Err("tool arguments must be a JSON object".into());
    }
    if name == "list_collections" {
        let names: Vec<&str> = engine
            .collection_names()
            .filter(|n| !n.contains("__ek0_"))
            .filter(|n| policy.collections.is_empty() || policy.collections.iter().any(|c| c == n))
            .collect();
        return Ok(json!({"collections": names}));
    }
    let collection = text(args, "collection")?;
    if collection.contains("__ek0_")
        || (!policy.collections.is_empty() && !policy.collections.contains(&collection))
    {
        return Err(format!("this chat may not use collection `{collection}`"));
    }
    let plain = |engine: &Engine, ids: Vec<String>| -> J {
        let Ok(c) = engine.collection(&collection) else {
            return json!([]);
        };
        let pk = c.schema.primary_key_alias.as_str();
        J::Array(
            ids.iter()
                .filter_map(|id| c.raw_entry(id))
                .map(|(id, r)| {
                    serde_json::to_value(PlainRecordOut(RecordOut::new(pk, id, r)))
                        .unwrap_or(J::Null)
                })
                .collect(),
        )
    };
    let filter = Filter::parse(args.get("filter")).map_err(|e| e.message)?;
    match name {
        "search_records" => {
            let mut q = TextQuery::new(text(args, "query")?);
            q.fuzzy = true;
            q.max_edit_distance = 1;
            q.limit = limit(args);
            let req = SearchRequest {
                text: q,
                vector: None,
                vector_field: "embedding".into(),
                metric: Metric::Cosine,
                vector_k: None,
                ef_search: 0,
                threshold: None,
                text_weight: 0.5,
                vector_weight: 0.5,
                limit: limit(args),
            };
            let ids: Vec<String> = engine
                .search(&collection, &req, &Filter::All, now)
                .map_err(|e| e.message)?
                .0
                .iter()
                .map(|h| h.found.id.to_string())
                .collect();
            Ok(json!({"records": plain(engine, ids)}))
        }
        "find_records" => {
            let q = FindQuery::parse(&json!({"filter": args.get("filter").cloned().unwrap_or(J::Null), "limit": limit(args)}))
                .map_err(|e| e.message)?;
            let ids: Vec<String> = engine
                .find(&collection, &q, now)
                .map_err(|e| e.message)?
                .iter()
                .map(|r| r.found.id.to_string())
                .collect();
            Ok(json!({"records": plain(engine, ids)}))
        }
        "get_record" => {
            let id = text(args, "id")?;
            let found = engine
                .find_by_id(&collection, &id, now)
                .map_err(|e| e.message)?;
            let id = found.id.to_string();
            Ok(json!({"record": plain(engine, vec![id]).get(0).cloned().unwrap_or(J::Null)}))
        }
        "count_records" => {
            let n = match engine.collection(&collection) {
                Ok(c) => {
                    let pk = c.schema.primary_key_alias.as_str();
                    c.iter_live(now)
                        .filter(|(id, r)| filter.matches(pk, id, r))
                        .count()
                }
                Err(_) => 0,
            };
            Ok(json!({"collection": collection, "count": n}))
        }
        "insert_record" => {
            let record = args.get("record").cloned().unwrap_or(J::Null);
            let id = engine
                .insert(&collection, record, now)
                .map_err(|e| e.message)?;
            Ok(json!({"inserted": id}))
        }
        "update_record" => {
            let id = text(args, "id")?;
            let record = args.get("record").cloned().unwrap_or(J::Null);
            engine
                .update(&collection, &id, record, now)
                .map_err(|e| e.message)?;
            Ok(json!({"updated": id}))
        }
        "delete_record" => {
            let id = text(args, "id")?;
            engine
                .delete(&collection, &id, now)
                .map_err(|e| e.message)?;
            Ok(json!({"deleted": id}))
        }
        _ => Err(format!("unknown tool `{name}`")),
    }
}
