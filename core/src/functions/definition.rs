//! A stored function's definition (spec G1-G4, G9): parsed leniently on save
//! (unknown keys dropped, flattened filters nested, `HasRecords` without a
//! value) and written back in exactly the shape the strict clients decode
//! (the Rust client forbids unknown keys at every level), so what `GET`
//! returns is always something every client can read.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as J};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A list of stages, shared between a definition and the runs executing it.
pub type Stages = Arc<[Stage]>;

/// Stage lists nest at most this deep (If inside ForEach inside ...).
const MAX_NESTING: usize = 32;

/// Stages one definition may hold, nested ones included.
pub const MAX_STAGES: usize = 1000;

/// The whole definition document.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Definition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub label: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub parameters: BTreeMap<String, ParamDef>,
    pub functions: Stages,
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_config: Option<TransactionConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
}

fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A declared parameter. Clients may also send `name` and a `type` hint;
/// both are dropped (G9).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ParamDef {
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<J>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransactionConfig {
    pub enabled: bool,
    #[serde(default)]
    pub auto_rollback: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation_level: Option<String>,
}

/// A query expression inside a stage (G4), kept in the canonical nested
/// form `{"type": "Condition", "content": {...}}` /
/// `{"type": "Logical", "content": {"operator", "expressions"}}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct StageFilter(pub J);

impl<'de> Deserialize<'de> for StageFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = J::deserialize(d)?;
        canonical_filter(raw, 0)
            .map(StageFilter)
            .map_err(serde::de::Error::custom)
    }
}

const CONDITION_OPERATORS: [&str; 19] = [
    "Eq",
    "Ne",
    "Gt",
    "Gte",
    "Lt",
    "Lte",
    "In",
    "NotIn",
    "Contains",
    "StartsWith",
    "EndsWith",
    "Equals",
    "Equal",
    "NotEquals",
    "NotEqual",
    "GreaterThan",
    "LessThan",
    "GreaterThanOrEqual",
    "LessThanOrEqual",
];

/// Nests a flattened condition, checks shape and operators (what the Rust
/// client re-validates on read), and drops unknown keys.
fn canonical_filter(raw: J, depth: usize) -> std::result::Result<J, String> {
    if depth > MAX_NESTING {
        return Err("the filter nests too deeply".into());
    }
    let J::Object(mut o) = raw else {
        return Err("a filter must be a JSON object".into());
    };
    let kind = o
        .get("type")
        .and_then(J::as_str)
        .ok_or("a filter needs a string `type` (Condition or Logical)")?
        .to_string();
    let content = match o.remove("content") {
        Some(J::Object(c)) => c,
        Some(_) => return Err("a filter's `content` must be an object".into()),
        None => o,
    };
    match kind.as_str() {
        "Condition" => {
            let field = content
                .get("field")
                .and_then(J::as_str)
                .ok_or("a Condition needs a string `field`")?;
            let op = content
                .get("operator")
                .and_then(J::as_str)
                .ok_or("a Condition needs a string `operator`")?;
            if !CONDITION_OPERATORS.contains(&op) {
                return Err(format!(
                    "unsupported condition operator `{op}` (one of {})",
                    CONDITION_OPERATORS.join(", ")
                ));
            }
            let value = content
                .get("value")
                .cloned()
                .ok_or("a Condition needs a `value`")?;
            Ok(serde_json::json!({"type": "Condition",
                "content": {"field": field, "operator": op, "value": value}}))
        }
        "Logical" => {
            let op = content
                .get("operator")
                .and_then(J::as_str)
                .ok_or("a Logical filter needs a string `operator`")?
                .to_string();
            let Some(J::Array(items)) = content.get("expressions") else {
                return Err("a Logical filter needs an array `expressions`".into());
            };
            match op.as_str() {
                "And" | "Or" if items.is_empty() => {
                    return Err(format!("`{op}` needs at least one expression"))
                }
                "Not" if items.len() != 1 => {
                    return Err("`Not` needs exactly one expression".into())
                }
                "And" | "Or" | "Not" => {}
                other => return Err(format!("unsupported logical operator `{other}`")),
            }
            let expressions = items
                .iter()
                .map(|e| canonical_filter(e.clone(), depth + 1))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(serde_json::json!({"type": "Logical",
                "content": {"operator": op, "expressions": expressions}}))
        }
        other => Err(format!(
            "unsupported filter type `{other}` (Condition or Logical)"
        )),
    }
}

/// `{"field", "ascending"}`; `ascending` defaults to true.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SortField {
    pub field: String,
    #[serde(default = "yes")]
    pub ascending: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupOp {
    Sum,
    Average,
    Count,
    Min,
    Max,
    First,
    Last,
    Push,
    AddToSet,
    StandardDeviation,
    ApproxDistinct,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupFunction {
    pub output_field: String,
    pub operation: GroupOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_field: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// `If.condition` (G3): adjacently tagged, `HasRecords` without a value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum Condition {
    FieldEquals { field: String, value: J },
    FieldExists { field: String },
    FieldGreaterThan { field: String, value: J },
    FieldLessThan { field: String, value: J },
    FieldGreaterThanOrEqual { field: String, value: J },
    FieldLessThanOrEqual { field: String, value: J },
    HasRecords,
    CountEquals { count: usize },
    CountGreaterThan { count: usize },
    CountLessThan { count: usize },
    And { conditions: Vec<Condition> },
    Or { conditions: Vec<Condition> },
    Not { condition: Box<Condition> },
}

/// Every stage (G2), internally tagged by `type`. Fields that may hold a
/// placeholder are strings or raw JSON; they are resolved when the stage
/// runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
#[allow(clippy::upper_case_acronyms)]
pub enum Stage {
    FindAll {
        collection: String,
    },
    Query {
        collection: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<StageFilter>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sort: Option<Vec<SortField>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<J>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skip: Option<J>,
    },
    Project {
        fields: Vec<String>,
        #[serde(default)]
        exclude: bool,
    },
    Group {
        by_fields: Vec<String>,
        functions: Vec<GroupFunction>,
    },
    Count {
        output_field: String,
    },
    FindById {
        collection: String,
        record_id: String,
    },
    FindOne {
        collection: String,
        key: String,
        value: J,
    },
    Insert {
        collection: String,
        record: J,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_ripple: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl: Option<J>,
    },
    Update {
        collection: String,
        filter: StageFilter,
        updates: J,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_ripple: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl: Option<J>,
    },
    UpdateById {
        collection: String,
        record_id: String,
        updates: J,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_ripple: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl: Option<J>,
    },
    FindOneAndUpdate {
        collection: String,
        record_id: String,
        updates: J,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_ripple: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl: Option<J>,
    },
    UpdateWithAction {
        collection: String,
        record_id: String,
        action: String,
        field: String,
        #[serde(default)]
        value: J,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_ripple: Option<bool>,
    },
    Upsert {
        collection: String,
        key: String,
        value: J,
        record: J,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_ripple: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl: Option<J>,
    },
    Increment {
        collection: String,
        record_id: String,
        field: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<J>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_ripple: Option<bool>,
    },
    Push {
        collection: String,
        record_id: String,
        field: String,
        value: J,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_ripple: Option<bool>,
    },
    Delete {
        collection: String,
        filter: StageFilter,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_ripple: Option<bool>,
    },
    DeleteById {
        collection: String,
        record_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_ripple: Option<bool>,
    },
    BatchInsert {
        collection: String,
        records: J,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_ripple: Option<bool>,
    },
    BatchDelete {
        collection: String,
        record_ids: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_ripple: Option<bool>,
    },
    HttpRequest {
        url: String,
        #[serde(default = "get")]
        method: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        headers: Option<BTreeMap<String, String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<J>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_seconds: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_field: Option<String>,
    },
    VectorSearch {
        collection: String,
        query_vector: Vec<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        threshold: Option<f64>,
    },
    TextSearch {
        collection: String,
        query_text: J,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fields: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<J>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fuzzy: Option<bool>,
    },
    HybridSearch {
        collection: String,
        query_text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query_vector: Option<Vec<f64>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    SetField {
        field: String,
        value: J,
    },
    AddFields {
        fields: Vec<J>,
    },
    CurrentDatetime {
        output_field: String,
    },
    Chat {
        messages: Vec<ChatMessage>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        temperature: Option<f32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_tokens: Option<i32>,
    },
    Embed {
        input_field: String,
        output_field: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    If {
        condition: Condition,
        then_functions: Stages,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        else_functions: Option<Stages>,
    },
    ForEach {
        functions: Stages,
    },
    CallFunction {
        function_label: String,
        #[serde(default)]
        params: Option<BTreeMap<String, J>>,
    },
    CreateSavepoint {
        name: String,
    },
    RollbackToSavepoint {
        name: String,
    },
    ReleaseSavepoint {
        name: String,
    },
    KvGet {
        key: J,
    },
    KvSet {
        key: J,
        value: J,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl: Option<J>,
    },
    KvDelete {
        key: J,
    },
    KvExists {
        key: J,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_field: Option<String>,
    },
    KvQuery {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pattern: Option<J>,
        #[serde(default)]
        include_expired: bool,
    },
    SWR {
        cache_key: String,
        ttl: J,
        url: String,
        #[serde(default = "get")]
        method: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        headers: Option<BTreeMap<String, String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<J>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_seconds: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_field: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        collection: Option<String>,
    },
    BcryptHash {
        plain: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost: Option<u32>,
        output_field: String,
    },
    BcryptVerify {
        plain: String,
        hash_field: String,
        output_field: String,
    },
    RandomToken {
        bytes: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encoding: Option<String>,
        output_field: String,
    },
    JwtSign {
        claims: BTreeMap<String, J>,
        secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algorithm: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_in_secs: Option<i64>,
        output_field: String,
    },
    JwtVerify {
        token_field: String,
        secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algorithm: Option<String>,
        output_field: String,
    },
    EmailSend {
        to: String,
        subject: String,
        body: String,
        from: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
        api_key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        html: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_field: Option<String>,
    },
    HmacSign {
        input: String,
        secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algorithm: Option<String>,
        output_field: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encoding: Option<String>,
    },
    HmacVerify {
        input: String,
        provided_mac: String,
        secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algorithm: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encoding: Option<String>,
        output_field: String,
    },
    AesEncrypt {
        plaintext: String,
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_encoding: Option<String>,
        output_field: String,
    },
    AesDecrypt {
        ciphertext_field: String,
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_encoding: Option<String>,
        output_field: String,
    },
    UuidGenerate {
        output_field: String,
    },
    TotpGenerate {
        secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digits: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        period: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algorithm: Option<String>,
        output_field: String,
    },
    TotpVerify {
        code: String,
        secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digits: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        period: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algorithm: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skew: Option<u8>,
        output_field: String,
    },
    Base64Encode {
        input: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url_safe: Option<bool>,
        output_field: String,
    },
    Base64Decode {
        input: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url_safe: Option<bool>,
        output_field: String,
    },
    HexEncode {
        input: String,
        output_field: String,
    },
    HexDecode {
        input: String,
        output_field: String,
    },
    Slugify {
        input: String,
        output_field: String,
    },
    IdempotencyClaim {
        key: String,
        ttl_secs: u64,
        output_field: String,
    },
    RateLimit {
        key: String,
        limit: u64,
        window_secs: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_exceed: Option<String>,
        output_field: String,
    },
    LockAcquire {
        key: String,
        ttl_secs: u64,
        output_field: String,
    },
    LockRelease {
        key: String,
        token: String,
        output_field: String,
    },
    TryCatch {
        try_functions: Stages,
        catch_functions: Stages,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_error_field: Option<String>,
    },
    Parallel {
        functions: Stages,
        #[serde(default)]
        wait_for_all: bool,
    },
    Sleep {
        duration_ms: J,
    },
    Return {
        fields: BTreeMap<String, J>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_code: Option<u16>,
    },
    Validate {
        schema: J,
        data_field: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_error: Option<Stages>,
    },
}

fn get() -> String {
    "GET".to_string()
}

/// Every stage type, as clients spell it.
pub const STAGE_TYPES: [&str; 67] = [
    "FindAll",
    "Query",
    "Project",
    "Group",
    "Count",
    "FindById",
    "FindOne",
    "Insert",
    "Update",
    "UpdateById",
    "FindOneAndUpdate",
    "UpdateWithAction",
    "Upsert",
    "Increment",
    "Push",
    "Delete",
    "DeleteById",
    "BatchInsert",
    "BatchDelete",
    "HttpRequest",
    "VectorSearch",
    "TextSearch",
    "HybridSearch",
    "SetField",
    "AddFields",
    "CurrentDatetime",
    "Chat",
    "Embed",
    "If",
    "ForEach",
    "CallFunction",
    "CreateSavepoint",
    "RollbackToSavepoint",
    "ReleaseSavepoint",
    "KvGet",
    "KvSet",
    "KvDelete",
    "KvExists",
    "KvQuery",
    "SWR",
    "BcryptHash",
    "BcryptVerify",
    "RandomToken",
    "JwtSign",
    "JwtVerify",
    "EmailSend",
    "HmacSign",
    "HmacVerify",
    "AesEncrypt",
    "AesDecrypt",
    "UuidGenerate",
    "TotpGenerate",
    "TotpVerify",
    "Base64Encode",
    "Base64Decode",
    "HexEncode",
    "HexDecode",
    "Slugify",
    "IdempotencyClaim",
    "RateLimit",
    "LockAcquire",
    "LockRelease",
    "TryCatch",
    "Parallel",
    "Sleep",
    "Return",
    "Validate",
];

impl Stage {
    /// The stage's type name (as in `STAGE_TYPES`).
    pub fn kind(&self) -> &'static str {
        match self {
            Stage::FindAll { .. } => "FindAll",
            Stage::Query { .. } => "Query",
            Stage::Project { .. } => "Project",
            Stage::Group { .. } => "Group",
            Stage::Count { .. } => "Count",
            Stage::FindById { .. } => "FindById",
            Stage::FindOne { .. } => "FindOne",
            Stage::Insert { .. } => "Insert",
            Stage::Update { .. } => "Update",
            Stage::UpdateById { .. } => "UpdateById",
            Stage::FindOneAndUpdate { .. } => "FindOneAndUpdate",
            Stage::UpdateWithAction { .. } => "UpdateWithAction",
            Stage::Upsert { .. } => "Upsert",
            Stage::Increment { .. } => "Increment",
            Stage::Push { .. } => "Push",
            Stage::Delete { .. } => "Delete",
            Stage::DeleteById { .. } => "DeleteById",
            Stage::BatchInsert { .. } => "BatchInsert",
            Stage::BatchDelete { .. } => "BatchDelete",
            Stage::HttpRequest { .. } => "HttpRequest",
            Stage::VectorSearch { .. } => "VectorSearch",
            Stage::TextSearch { .. } => "TextSearch",
            Stage::HybridSearch { .. } => "HybridSearch",
            Stage::SetField { .. } => "SetField",
            Stage::AddFields { .. } => "AddFields",
            Stage::CurrentDatetime { .. } => "CurrentDatetime",
            Stage::Chat { .. } => "Chat",
            Stage::Embed { .. } => "Embed",
            Stage::If { .. } => "If",
            Stage::ForEach { .. } => "ForEach",
            Stage::CallFunction { .. } => "CallFunction",
            Stage::CreateSavepoint { .. } => "CreateSavepoint",
            Stage::RollbackToSavepoint { .. } => "RollbackToSavepoint",
            Stage::ReleaseSavepoint { .. } => "ReleaseSavepoint",
            Stage::KvGet { .. } => "KvGet",
            Stage::KvSet { .. } => "KvSet",
            Stage::KvDelete { .. } => "KvDelete",
            Stage::KvExists { .. } => "KvExists",
            Stage::KvQuery { .. } => "KvQuery",
            Stage::SWR { .. } => "SWR",
            Stage::BcryptHash { .. } => "BcryptHash",
            Stage::BcryptVerify { .. } => "BcryptVerify",
            Stage::RandomToken { .. } => "RandomToken",
            Stage::JwtSign { .. } => "JwtSign",
            Stage::JwtVerify { .. } => "JwtVerify",
            Stage::EmailSend { .. } => "EmailSend",
            Stage::HmacSign { .. } => "HmacSign",
            Stage::HmacVerify { .. } => "HmacVerify",
            Stage::AesEncrypt { .. } => "AesEncrypt",
            Stage::AesDecrypt { .. } => "AesDecrypt",
            Stage::UuidGenerate { .. } => "UuidGenerate",
            Stage::TotpGenerate { .. } => "TotpGenerate",
            Stage::TotpVerify { .. } => "TotpVerify",
            Stage::Base64Encode { .. } => "Base64Encode",
            Stage::Base64Decode { .. } => "Base64Decode",
            Stage::HexEncode { .. } => "HexEncode",
            Stage::HexDecode { .. } => "HexDecode",
            Stage::Slugify { .. } => "Slugify",
            Stage::IdempotencyClaim { .. } => "IdempotencyClaim",
            Stage::RateLimit { .. } => "RateLimit",
            Stage::LockAcquire { .. } => "LockAcquire",
            Stage::LockRelease { .. } => "LockRelease",
            Stage::TryCatch { .. } => "TryCatch",
            Stage::Parallel { .. } => "Parallel",
            Stage::Sleep { .. } => "Sleep",
            Stage::Return { .. } => "Return",
            Stage::Validate { .. } => "Validate",
        }
    }

    /// The stage lists nested in this stage.
    pub fn children(&self) -> Vec<&Stages> {
        match self {
            Stage::If {
                then_functions,
                else_functions,
                ..
            } => std::iter::once(then_functions)
                .chain(else_functions.iter())
                .collect(),
            Stage::ForEach { functions } | Stage::Parallel { functions, .. } => vec![functions],
            Stage::TryCatch {
                try_functions,
                catch_functions,
                ..
            } => vec![try_functions, catch_functions],
            Stage::Validate {
                on_error: Some(s), ..
            } => vec![s],
            _ => Vec::new(),
        }
    }
}

/// HTTP methods a path-routed function may answer.
pub const ROUTE_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Reads a definition a client sent: checks it and drops what the strict
/// readers would refuse. `id`, `created_at` and `updated_at` are the
/// server's and are ignored.
pub fn parse(body: &J) -> Result<Definition> {
    let J::Object(o) = body else {
        return Err(Error::invalid(
            "a function definition must be a JSON object",
        ));
    };
    let mut o = o.clone();
    for k in ["id", "created_at", "updated_at", "_id"] {
        o.remove(k);
    }
    for k in ["label", "name"] {
        match o.get(k) {
            Some(J::String(s)) if !s.trim().is_empty() => {}
            Some(J::String(_)) => return Err(Error::invalid(format!("`{k}` must not be empty"))),
            Some(_) => return Err(Error::invalid(format!("`{k}` must be a string"))),
            None => return Err(Error::invalid(format!("a function needs a `{k}`"))),
        }
    }
    let stages = match o.remove("functions") {
        Some(J::Array(items)) => items,
        Some(_) => return Err(Error::invalid("`functions` must be an array of stages")),
        None => return Err(Error::invalid("a function needs `functions` (its stages)")),
    };
    let mut count = 0;
    let stages = normalize_stages(stages, "functions", 0, &mut count)?;
    o.insert("functions".into(), J::Array(stages));
    if let Some(J::Object(params)) = o.get_mut("parameters") {
        for (name, def) in params.iter_mut() {
            if def.is_null() {
                *def = J::Object(Map::new());
            }
            if !def.is_object() {
                return Err(Error::invalid(format!(
                    "parameter `{name}` must be defined by an object"
                )));
            }
        }
    }
    let def: Definition = serde_json::from_value(J::Object(o))
        .map_err(|e| Error::invalid(format!("invalid function definition: {e}")))?;
    check_route(&def)?;
    if def.label.len() > 256 {
        return Err(Error::invalid("a label is at most 256 bytes"));
    }
    Ok(def)
}

/// Checks each stage's type, decodes it (so a missing or mistyped key is
/// named with the stage's position), and puts it back in canonical form.
fn normalize_stages(stages: Vec<J>, path: &str, depth: usize, count: &mut usize) -> Result<Vec<J>> {
    if depth > MAX_NESTING {
        return Err(Error::invalid(format!(
            "{path}: stages nest more than {MAX_NESTING} deep"
        )));
    }
    let mut out = Vec::with_capacity(stages.len());
    for (i, mut stage) in stages.into_iter().enumerate() {
        *count += 1;
        if *count > MAX_STAGES {
            return Err(Error::invalid(format!(
                "a function holds at most {MAX_STAGES} stages"
            )));
        }
        let here = format!("{path}[{i}]");
        let kind = stage
            .get("type")
            .and_then(J::as_str)
            .ok_or_else(|| Error::invalid(format!("{here}: a stage needs a string `type`")))?
            .to_string();
        if !STAGE_TYPES.contains(&kind.as_str()) {
            return Err(Error::invalid(format!(
                "{here}: unknown stage type `{kind}`"
            )));
        }
        if let J::Object(o) = &mut stage {
            for key in [
                "then_functions",
                "else_functions",
                "functions",
                "try_functions",
                "catch_functions",
                "on_error",
            ] {
                // A Group's `functions` are its aggregations, not stages.
                if key == "functions" && kind == "Group" {
                    continue;
                }
                if let Some(J::Array(nested)) = o.get_mut(key) {
                    let taken = std::mem::take(nested);
                    *nested = normalize_stages(taken, &format!("{here}.{key}"), depth + 1, count)?;
                }
            }
            if let Some(c) = o.get_mut("condition") {
                normalize_condition(c, 0);
            }
            if kind == "Group" {
                if let Some(J::Array(fs)) = o.get_mut("functions") {
                    for f in fs {
                        lift_group_operation(f);
                    }
                }
            }
        }
        let typed: Stage = serde_json::from_value(stage)
            .map_err(|e| Error::invalid(format!("{here} ({kind}): {e}")))?;
        out.push(serde_json::to_value(&typed).map_err(|e| Error::internal(e.to_string()))?);
    }
    Ok(out)
}

/// `HasRecords` carries no value (`null` or `{}` accepted); nested
/// conditions the same.
fn normalize_condition(c: &mut J, depth: usize) {
    let J::Object(o) = c else { return };
    if depth > MAX_NESTING {
        return;
    }
    if o.get("type").and_then(J::as_str) == Some("HasRecords") {
        o.remove("value");
        return;
    }
    if let Some(J::Object(v)) = o.get_mut("value") {
        if let Some(J::Array(cs)) = v.get_mut("conditions") {
            for c in cs {
                normalize_condition(c, depth + 1);
            }
        }
        if let Some(inner) = v.get_mut("condition") {
            normalize_condition(inner, depth + 1);
        }
    }
}

/// Group operations arrive as `Count` or `count`: clients read PascalCase.
fn lift_group_operation(f: &mut J) {
    let Some(op) = f.get_mut("operation") else {
        return;
    };
    let Some(s) = op.as_str() else { return };
    let canonical = match s.to_ascii_lowercase().replace('_', "").as_str() {
        "sum" => "Sum",
        "average" | "avg" => "Average",
        "count" => "Count",
        "min" => "Min",
        "max" => "Max",
        "first" => "First",
        "last" => "Last",
        "push" => "Push",
        "addtoset" => "AddToSet",
        "standarddeviation" | "stddev" => "StandardDeviation",
        "approxdistinct" => "ApproxDistinct",
        _ => return,
    };
    *op = J::String(canonical.into());
}

fn check_route(def: &Definition) -> Result<()> {
    match (&def.http_method, &def.http_path) {
        (None, None) => Ok(()),
        (Some(m), Some(p)) => {
            if !ROUTE_METHODS.iter().any(|r| r.eq_ignore_ascii_case(m)) {
                return Err(Error::invalid(format!(
                    "`http_method` `{m}` is not one of {}",
                    ROUTE_METHODS.join(", ")
                )));
            }
            if !p.starts_with('/') {
                return Err(Error::invalid("`http_path` must start with `/`"));
            }
            Ok(())
        }
        _ => Err(Error::invalid(
            "`http_method` and `http_path` go together: give both or neither",
        )),
    }
}

impl Definition {
    /// The definition as clients read it.
    pub fn to_json(&self) -> J {
        serde_json::to_value(self).unwrap_or(J::Null)
    }

    /// Every stage, nested ones included.
    pub fn all_stages(&self) -> Vec<&Stage> {
        fn walk<'a>(stages: &'a [Stage], out: &mut Vec<&'a Stage>) {
            for s in stages {
                out.push(s);
                for c in s.children() {
                    walk(c, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.functions, &mut out);
        out
    }
}
