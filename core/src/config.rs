//! Server settings. One table drives `--help`, command-line flags and environment
//! variables, so the three can never disagree. Parsing is pure: the runtime hands
//! in the arguments and an environment lookup.

use crate::dialect::mounts::Mounts;
use std::fmt::Write as _;
use tidepool_search::HalfRows;

/// One setting: its flag (`--data-dir`), variable (`TIDEPOOL_DATA_DIR`), default
/// and description.
pub struct Setting {
    pub flag: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

pub const SETTINGS: &[Setting] = &[
    Setting { flag: "listen", env: "TIDEPOOL_LISTEN", default: "127.0.0.1:8080", help: "address to listen on" },
    Setting { flag: "data-dir", env: "TIDEPOOL_DATA_DIR", default: "./data", help: "directory for the log, snapshots and generated secrets" },
    Setting { flag: "api-key", env: "TIDEPOOL_API_KEY", default: "", help: "API key(s), comma-separated; if empty one is generated on first start, saved in the data directory and printed" },
    Setting { flag: "jwt-secret", env: "TIDEPOOL_JWT_SECRET", default: "", help: "secret that signs tokens; if empty one is generated and kept in the data directory" },
    Setting { flag: "token-lifetime", env: "TIDEPOOL_TOKEN_LIFETIME", default: "3600", help: "seconds a token stays valid" },
    Setting { flag: "fsync", env: "TIDEPOOL_FSYNC", default: "sync", help: "durability policy: sync (acknowledge after fsync), batch:MS (fsync at least every MS ms, acknowledge after it), none (UNSAFE: acknowledge once handed to the store, before any fsync; a crash of the process or the machine can lose acknowledged writes)" },
    Setting { flag: "threads", env: "TIDEPOOL_THREADS", default: "0", help: "worker threads (0 = one per CPU core)" },
    Setting { flag: "max-body-bytes", env: "TIDEPOOL_MAX_BODY_BYTES", default: "67108864", help: "largest request body accepted (413 above)" },
    Setting { flag: "max-head-bytes", env: "TIDEPOOL_MAX_HEAD_BYTES", default: "16384", help: "largest request head accepted (431 above)" },
    Setting { flag: "max-connections", env: "TIDEPOOL_MAX_CONNECTIONS", default: "20000", help: "open connections beyond which new ones are refused" },
    Setting { flag: "max-connections-per-address", env: "TIDEPOOL_MAX_CONNECTIONS_PER_ADDRESS", default: "0", help: "open connections one client address may hold, beyond which its new ones are refused (503); 0 = a quarter of --max-connections, at least 64" },
    Setting { flag: "max-streams-per-key", env: "TIDEPOOL_MAX_STREAMS_PER_KEY", default: "0", help: "ekoDB WebSocket and SSE streams one API key may hold open together, beyond which its new ones are refused (429); 0 = no limit; changeable with PUT /api/config" },
    Setting { flag: "max-body-bytes-in-flight", env: "TIDEPOOL_MAX_BODY_BYTES_IN_FLIGHT", default: "268435456", help: "bytes all connections together may be receiving for request bodies larger than 64 KiB; a body that would go over is refused (503) before it is read" },
    Setting { flag: "request-head-timeout", env: "TIDEPOOL_REQUEST_HEAD_TIMEOUT", default: "10", help: "seconds a request head may take to arrive once it has started (408 and close above)" },
    Setting { flag: "request-body-timeout", env: "TIDEPOOL_REQUEST_BODY_TIMEOUT", default: "60", help: "seconds a request body may take to arrive once its head is in (408 and close above)" },
    Setting { flag: "rate-limit-per-key", env: "TIDEPOOL_RATE_LIMIT_PER_KEY", default: "0", help: "requests a minute one API key may make (a bucket of that size refilling evenly; 429 with Retry-After beyond, X-RateLimit-* headers within); 0 = no limit; changeable with PUT /api/config" },
    Setting { flag: "rate-limit-per-address", env: "TIDEPOOL_RATE_LIMIT_PER_ADDRESS", default: "0", help: "requests a minute one client address may make, with or without a key (as --rate-limit-per-key); 0 = no limit" },
    Setting { flag: "stream-credentials", env: "TIDEPOOL_STREAM_CREDENTIALS", default: "expire", help: "what a WebSocket or SSE stream opened with a token does when the token expires: expire (it is closed then, WebSocket code 1008; clients reconnect with a fresh token) or connect (checked once, when the stream opens); streams opened with an API key itself never expire" },
    Setting { flag: "log-level", env: "TIDEPOOL_LOG_LEVEL", default: "info", help: "the least severe lines of the operator's log (stderr) written: error, warn (security events, refusals, storage trouble), info (the default: also startup, settings and document changes) or debug (also one line per HTTP request with its X-Request-Id, method, path without its query, status and time)" },
    Setting { flag: "log-format", env: "TIDEPOOL_LOG_FORMAT", default: "text", help: "how the operator's log lines are written: text (`tidepool: ...`) or json (one object a line: time, level, message)" },
    Setting { flag: "metrics", env: "TIDEPOOL_METRICS", default: "admin", help: "who may read GET /metrics (Prometheus text format: requests by route and status with latency histograms, fsyncs and group-commit sizes, connections, streams by protocol, subscribers, outbox bytes and overflows, rate-limit refusals): admin (an admin key's bearer token), public (anyone who reaches the port), or off (404)" },
    Setting { flag: "trusted-origins", env: "TIDEPOOL_TRUSTED_ORIGINS", default: "", help: "browser origins allowed to call the API cross-origin and to open WebSockets, comma-separated (e.g. https://app.example.com; * = any); TRUSTED_ORIGINS is read too; empty = no cross-origin access (same-origin pages and non-browser clients are unaffected)" },
    Setting { flag: "trusted-hosts", env: "TIDEPOOL_TRUSTED_HOSTS", default: "", help: "Host header values accepted, comma-separated (e.g. localhost,127.0.0.1,db.example.com), against DNS rebinding; TRUSTED_HOSTS is read too; empty = any" },
    Setting { flag: "transaction-idle-timeout", env: "TIDEPOOL_TRANSACTION_IDLE_TIMEOUT", default: "60", help: "seconds a transaction may go without a call before it is rolled back (each key and each client address may hold 100 open)" },
    Setting { flag: "max-batch-bytes", env: "TIDEPOOL_MAX_BATCH_BYTES", default: "268431360", help: "bytes one operation may log at once (a transaction's commit, a batch, a restore); past it the operation is refused with 413 before anything is applied; at most 268431360, what the store writes as one frame" },
    Setting { flag: "max-query-time", env: "TIDEPOOL_MAX_QUERY_TIME", default: "30", help: "seconds a find or distinct may run (on a snapshot, outside the server lock) before it is stopped with 400" },
    Setting { flag: "read-threads", env: "TIDEPOOL_READ_THREADS", default: "0", help: "threads that run finds and distincts outside the server lock (0: one per CPU, at least 2)" },
    Setting { flag: "max-query-work", env: "TIDEPOOL_MAX_QUERY_WORK", default: "50000000", help: "work one query may do (records examined times the filter's conditions, plus sort comparisons and records joined) before it is stopped with 400, so one request cannot hold the server for long; changeable with PUT /api/config" },
    Setting { flag: "vector-half-rows", env: "TIDEPOOL_VECTOR_HALF_ROWS", default: "auto", help: "whether a cosine HNSW graph walks a half-precision copy of its vectors (2 bytes more per component; faster builds and searches): auto = on CPUs with AVX-512, which widen it in hardware; on = everywhere; off = never, for less memory" },
    Setting { flag: "idle-timeout", env: "TIDEPOOL_IDLE_TIMEOUT", default: "300", help: "seconds before an idle HTTP connection is closed" },
    Setting { flag: "heartbeat", env: "TIDEPOOL_HEARTBEAT", default: "20", help: "seconds between SSE heartbeats and WebSocket pings" },
    Setting { flag: "ws-max-message-bytes", env: "TIDEPOOL_WS_MAX_MESSAGE_BYTES", default: "16777216", help: "largest WebSocket message accepted (close 1009 above)" },
    Setting { flag: "outbound-queue-bytes", env: "TIDEPOOL_OUTBOUND_QUEUE_BYTES", default: "4194304", help: "bytes queued for a slow subscriber before it is disconnected" },
    Setting { flag: "segment-bytes", env: "TIDEPOOL_SEGMENT_BYTES", default: "67108864", help: "log segment size before rolling to a new file" },
    Setting { flag: "history-bytes", env: "TIDEPOOL_HISTORY_BYTES", default: "268435456", help: "log kept for resuming subscribers (Last-Event-ID)" },
    Setting { flag: "backup-max-mib-per-sec", env: "TIDEPOOL_BACKUP_MAX_MIB_PER_SEC", default: "64", help: "how fast an online backup may copy, so durable writes keep most of the machine (0 = no limit)" },
    Setting { flag: "compact-after-bytes", env: "TIDEPOOL_COMPACT_AFTER_BYTES", default: "268435456", help: "log growth since the last snapshot that triggers compaction (0 = never)" },
    Setting { flag: "embed-url", env: "TIDEPOOL_EMBED_URL", default: "", help: "OpenAI-compatible embeddings endpoint base URL, e.g. http://127.0.0.1:11434/v1 (Ollama), http://127.0.0.1:8000/v1 (vLLM); empty = built-in offline embedder only" },
    Setting { flag: "embed-api-key", env: "TIDEPOOL_EMBED_API_KEY", default: "", help: "bearer key for the embeddings endpoint" },
    Setting { flag: "embed-model", env: "TIDEPOOL_EMBED_MODEL", default: "text-embedding-3-small", help: "model sent to the provider when a request names none" },
    Setting { flag: "embed-model-dir", env: "TIDEPOOL_EMBED_MODEL_DIR", default: "", help: "a sentence-transformers model directory (config.json, model.safetensors, tokenizer.json; e.g. all-MiniLM-L6-v2) run in-process on the CPU for /api/embed and the Embed stage; replaces --embed-url" },
    Setting { flag: "chat-model-file", env: "TIDEPOOL_CHAT_MODEL_FILE", default: "", help: "a Gemma 3 GGUF file (e.g. gemma-3-270m-q4_k_m.gguf) run in-process on the CPU: the offline chat provider answers with this model instead of composing from records" },
    Setting { flag: "chat-model-answers", env: "TIDEPOOL_CHAT_MODEL_ANSWERS", default: "2", help: "answers the in-process chat model writes at once, each on a thread with its own cache (more wait their turn; at least 1)" },
    Setting { flag: "embed-dimensions", env: "TIDEPOOL_EMBED_DIMENSIONS", default: "384", help: "dimensions of the built-in offline embedder (feature hashing, deterministic, not a neural model)" },
    Setting { flag: "outbound-connect-timeout", env: "TIDEPOOL_OUTBOUND_CONNECT_TIMEOUT", default: "10", help: "seconds an outbound provider call may take to connect (TCP and TLS) and send its request" },
    Setting { flag: "outbound-timeout", env: "TIDEPOOL_OUTBOUND_TIMEOUT", default: "30", help: "seconds a provider may take to start answering once the request is sent" },
    Setting { flag: "outbound-idle-timeout", env: "TIDEPOOL_OUTBOUND_IDLE_TIMEOUT", default: "30", help: "seconds a provider's answer may stall between two pieces" },
    Setting { flag: "outbound-max-calls", env: "TIDEPOOL_OUTBOUND_MAX_CALLS", default: "64", help: "outbound provider calls in flight at once; up to 16 times as many wait, more are refused (503)" },
    Setting { flag: "tls-cert", env: "TIDEPOOL_TLS_CERT", default: "", help: "PEM certificate chain to serve HTTPS and WSS with (every listener); reloaded for new connections when the file changes; needs --tls-key; empty = plain HTTP" },
    Setting { flag: "tls-key", env: "TIDEPOOL_TLS_KEY", default: "", help: "PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert" },
    Setting { flag: "tls-ca-file", env: "TIDEPOOL_TLS_CA_FILE", default: "", help: "PEM file of extra certificate authorities to trust for https:// providers (besides the bundled Mozilla roots)" },
    Setting { flag: "openai-url", env: "TIDEPOOL_OPENAI_URL", default: "https://api.openai.com/v1", help: "base URL of the `openai` chat provider (any OpenAI-compatible Chat Completions endpoint)" },
    Setting { flag: "openai-api-key", env: "TIDEPOOL_OPENAI_API_KEY", default: "", help: "key of the `openai` provider (OPENAI_API_KEY is read too); empty = not configured" },
    Setting { flag: "openai-model", env: "TIDEPOOL_OPENAI_MODEL", default: "gpt-4o-mini", help: "default model of the `openai` provider" },
    Setting { flag: "anthropic-url", env: "TIDEPOOL_ANTHROPIC_URL", default: "https://api.anthropic.com", help: "base URL of the `anthropic` provider (Messages API)" },
    Setting { flag: "anthropic-api-key", env: "TIDEPOOL_ANTHROPIC_API_KEY", default: "", help: "key of the `anthropic` provider (ANTHROPIC_API_KEY is read too); empty = not configured" },
    Setting { flag: "anthropic-model", env: "TIDEPOOL_ANTHROPIC_MODEL", default: "claude-sonnet-4-5", help: "default model of the `anthropic` provider" },
    Setting { flag: "local-llm-url", env: "TIDEPOOL_LOCAL_LLM_URL", default: "", help: "an OpenAI-compatible server needing no key (Ollama, llama.cpp, vLLM, LM Studio), provider name `local`, e.g. http://127.0.0.1:11434/v1" },
    Setting { flag: "local-llm-model", env: "TIDEPOOL_LOCAL_LLM_MODEL", default: "llama3.2", help: "default model of the `local` provider" },
    Setting { flag: "chat-provider", env: "TIDEPOOL_CHAT_PROVIDER", default: "", help: "provider for sessions that name none (empty = the first configured of openai, anthropic, local, else the offline provider)" },
    Setting { flag: "chat-offline-fallback", env: "TIDEPOOL_CHAT_OFFLINE_FALLBACK", default: "true", help: "a session naming a provider with no key is answered by the built-in offline provider (and says so in its model); false = answer provider_not_configured instead" },
    Setting { flag: "chat-context-tokens", env: "TIDEPOOL_CHAT_CONTEXT_TOKENS", default: "8192", help: "context window assumed for models whose window is not known" },
    Setting { flag: "chat-cancel-on-disconnect", env: "TIDEPOOL_CHAT_CANCEL_ON_DISCONNECT", default: "false", help: "stop a streamed answer when its client disconnects (default: it runs to completion, is stored, and can be resumed)" },
    Setting { flag: "chat-client-tool-timeout", env: "TIDEPOOL_CHAT_CLIENT_TOOL_TIMEOUT", default: "60", help: "seconds to wait for a client tool's result" },
    Setting { flag: "chat-fold-after", env: "TIDEPOOL_CHAT_FOLD_AFTER", default: "40", help: "a chat with more messages than this (or more than its model's window holds) has its older half folded into a summary before the next answer" },
    Setting { flag: "eva-listen", env: "TIDEPOOL_EVA_LISTEN", default: "", help: "a second address serving only EVA chat at the paths its document uses, /ws and /health (e.g. 127.0.0.1:8000); empty = off (EVA stays at /eva/ws and /eva/health on the main listener)" },
    Setting { flag: "mounts", env: "TIDEPOOL_MOUNTS", default: "", help: "dialect endpoints moved to other paths, NAME=PATH comma-separated (a moved endpoint answers only at its new path); NAME is one of general-bots (/ws), meet (/ws/meet), fluxbase (/ai/ws), fluxbase-chatbots (/api/v1/ai/{chatbots}), eva (/eva/ws), eva-health (/eva/health), lanonasis (/api/v1/{stream,memory,memories})" },
    Setting { flag: "fluxbase-chatbots", env: "TIDEPOOL_FLUXBASE_CHATBOTS", default: "", help: "a JSON file with an array of Fluxbase chatbots (name, namespace, description, system_prompt, collections, llm_provider, llm_model, tool_config), read at start; chatbots stored through /api/v1/ai/chatbots take precedence" },
    Setting { flag: "general-bots-ping-interval", env: "TIDEPOOL_GENERAL_BOTS_PING_INTERVAL", default: "30", help: "seconds between pings on General Bots sockets (its documented 30)" },
    Setting { flag: "general-bots-idle-timeout", env: "TIDEPOOL_GENERAL_BOTS_IDLE_TIMEOUT", default: "300", help: "seconds a General Bots socket may send nothing before it is told session_closed and closed (its documented 5 minutes; the session stays)" },
    Setting { flag: "rag-docs-folder", env: "TIDEPOOL_RAG_DOCS_FOLDER", default: "", help: "a folder of text and Markdown documents kept in a collection for chat retrieval (chunked, text and vector indexed, file names as sources, re-read when files change); RAG_DOCS_FOLDER is read too; empty = off" },
    Setting { flag: "rag-collection", env: "TIDEPOOL_RAG_COLLECTION", default: "documents", help: "the collection the document folder's chunks go to" },
    Setting { flag: "rag-scan-interval", env: "TIDEPOOL_RAG_SCAN_INTERVAL", default: "5", help: "seconds between scans of the document folder for changes" },
    Setting { flag: "function-timeout", env: "TIDEPOOL_FUNCTION_TIMEOUT", default: "30", help: "seconds one stored-function run may take, waits for HTTP calls and sleeps included, before it is stopped with 400" },
    Setting { flag: "function-max-steps", env: "TIDEPOOL_FUNCTION_MAX_STEPS", default: "100000", help: "stages one stored-function run may execute (each ForEach item's stages counted) before it is stopped with 400" },
    Setting { flag: "function-http-allow", env: "TIDEPOOL_FUNCTION_HTTP_ALLOW", default: "", help: "hosts a stored function's HttpRequest may call even though they are loopback or private addresses (e.g. 127.0.0.1,intranet.local; * = any), comma-separated; empty = only public addresses" },
    Setting { flag: "function-env", env: "TIDEPOOL_FUNCTION_ENV", default: "", help: "environment variables stored functions may read as {{env.NAME}}, comma-separated names; empty = none" },
    Setting { flag: "salvage", env: "TIDEPOOL_SALVAGE", default: "false", help: "start even if the log is corrupt, keeping everything before the damage (the rest is moved aside)" },
];

/// How severe an operator's log line is; lines below `--log-level` are not
/// made at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    pub fn parse(s: &str) -> Option<LogLevel> {
        match s {
            "error" => Some(LogLevel::Error),
            "warn" => Some(LogLevel::Warn),
            "info" => Some(LogLevel::Info),
            "debug" => Some(LogLevel::Debug),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// How the host writes the operator's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parsed settings with their types.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: String,
    pub data_dir: String,
    pub api_keys: Vec<String>,
    pub jwt_secret: String,
    pub token_lifetime_secs: u64,
    pub fsync: String,
    pub threads: usize,
    pub max_body_bytes: usize,
    pub max_head_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// ekoDB streams (WebSocket and SSE) one key may hold; 0 = no limit.
    pub max_streams_per_key: usize,
    pub max_body_bytes_in_flight: usize,
    pub request_head_timeout_secs: u64,
    pub request_body_timeout_secs: u64,
    pub rate_limit_per_key: u64,
    pub rate_limit_per_address: u64,
    /// Streams opened with a token close when it expires.
    pub streams_expire_with_token: bool,
    /// Who may read `/metrics`.
    pub metrics: crate::server::metrics::MetricsAccess,
    /// The least severe operator's log lines written.
    pub log_level: LogLevel,
    /// How the operator's log lines are written (the host prints them).
    pub log_format: LogFormat,
    pub trusted_origins: Vec<String>,
    pub trusted_hosts: Vec<String>,
    pub idle_timeout_secs: u64,
    pub transaction_idle_timeout_secs: u64,
    /// Conditions one query may evaluate (records × filter conditions).
    pub max_query_work: u64,
    pub max_query_time_secs: u64,
    pub read_threads: usize,
    /// Whether cosine graphs walk a half-precision copy of their vectors.
    pub vector_half_rows: HalfRows,
    /// Bytes one operation may log at once.
    pub max_batch_bytes: usize,
    pub heartbeat_secs: u64,
    pub ws_max_message_bytes: usize,
    pub outbound_queue_bytes: usize,
    pub segment_bytes: u64,
    pub history_bytes: u64,
    pub compact_after_bytes: u64,
    pub backup_max_mib_per_sec: u64,
    pub salvage: bool,
    pub embed_url: String,
    pub embed_api_key: String,
    pub embed_model: String,
    pub embed_dimensions: usize,
    /// The in-process embedding model's directory (the host loads it).
    pub embed_model_dir: String,
    /// The in-process chat model's file (the host loads it).
    pub chat_model_file: String,
    /// Answers the in-process chat model writes at once (at least 1).
    pub chat_model_answers: usize,
    pub outbound_connect_timeout_secs: u64,
    pub outbound_timeout_secs: u64,
    pub outbound_idle_timeout_secs: u64,
    pub outbound_max_calls: usize,
    pub tls_ca_file: String,
    /// Serve TLS with this certificate chain and key (both set, or neither).
    pub tls_cert: String,
    pub tls_key: String,
    pub openai_url: String,
    pub openai_api_key: String,
    pub openai_model: String,
    pub anthropic_url: String,
    pub anthropic_api_key: String,
    pub anthropic_model: String,
    pub local_llm_url: String,
    pub local_llm_model: String,
    pub chat_provider: String,
    pub chat_offline_fallback: bool,
    pub chat_context_tokens: usize,
    pub chat_cancel_on_disconnect: bool,
    pub chat_client_tool_timeout_secs: u64,
    pub chat_fold_after: usize,
    pub eva_listen: String,
    pub mounts: Mounts,
    pub fluxbase_chatbots: String,
    pub general_bots_ping_interval_secs: u64,
    pub general_bots_idle_timeout_secs: u64,
    pub rag_docs_folder: String,
    pub rag_collection: String,
    pub rag_scan_interval_secs: u64,
    pub function_timeout_secs: u64,
    pub function_max_steps: u64,
    pub function_http_allow: Vec<String>,
    /// The allowed environment variables and their values (read at start).
    pub function_env: std::collections::BTreeMap<String, String>,
}

/// What the command line asked for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Box<Config>),
    Help(String),
    Version,
}

impl Config {
    /// Connections one address may hold (`--max-connections-per-address`,
    /// or a quarter of the total so one client cannot take them all).
    pub fn connections_per_address(&self) -> usize {
        match self.max_connections_per_address {
            0 => (self.max_connections / 4).max(64),
            n => n,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        match Config::parse(Vec::<String>::new(), |_| None) {
            Ok(Command::Run(c)) => *c,
            _ => unreachable_default(),
        }
    }
}

fn unreachable_default() -> Config {
    // The defaults in SETTINGS parse; a test checks it.
    Config {
        listen: String::new(),
        data_dir: String::new(),
        api_keys: Vec::new(),
        jwt_secret: String::new(),
        token_lifetime_secs: 3600,
        fsync: "sync".into(),
        threads: 0,
        max_body_bytes: 1 << 26,
        max_head_bytes: 1 << 14,
        max_connections: 20_000,
        max_connections_per_address: 0,
        max_streams_per_key: 0,
        max_body_bytes_in_flight: 1 << 28,
        request_head_timeout_secs: 10,
        request_body_timeout_secs: 60,
        rate_limit_per_key: 0,
        rate_limit_per_address: 0,
        streams_expire_with_token: true,
        metrics: Default::default(),
        log_level: LogLevel::Info,
        log_format: LogFormat::Text,
        trusted_origins: Vec::new(),
        trusted_hosts: Vec::new(),
        idle_timeout_secs: 300,
        transaction_idle_timeout_secs: 60,
        max_query_work: 50_000_000,
        max_query_time_secs: 30,
        read_threads: 0,
        vector_half_rows: HalfRows::Auto,
        max_batch_bytes: 268_431_360,
        heartbeat_secs: 20,
        ws_max_message_bytes: 1 << 24,
        outbound_queue_bytes: 1 << 22,
        segment_bytes: 1 << 26,
        history_bytes: 1 << 28,
        compact_after_bytes: 1 << 28,
        backup_max_mib_per_sec: 64,
        salvage: false,
        embed_url: String::new(),
        embed_api_key: String::new(),
        embed_model: String::new(),
        embed_dimensions: 384,
        embed_model_dir: String::new(),
        chat_model_file: String::new(),
        chat_model_answers: 2,
        outbound_connect_timeout_secs: 10,
        outbound_timeout_secs: 30,
        outbound_idle_timeout_secs: 30,
        outbound_max_calls: 64,
        tls_ca_file: String::new(),
        tls_cert: String::new(),
        tls_key: String::new(),
        openai_url: String::new(),
        openai_api_key: String::new(),
        openai_model: String::new(),
        anthropic_url: String::new(),
        anthropic_api_key: String::new(),
        anthropic_model: String::new(),
        local_llm_url: String::new(),
        local_llm_model: String::new(),
        chat_provider: String::new(),
        chat_offline_fallback: true,
        chat_context_tokens: 8192,
        chat_cancel_on_disconnect: false,
        chat_client_tool_timeout_secs: 60,
        chat_fold_after: 40,
        eva_listen: String::new(),
        mounts: Mounts::default(),
        fluxbase_chatbots: String::new(),
        general_bots_ping_interval_secs: 30,
        general_bots_idle_timeout_secs: 300,
        rag_docs_folder: String::new(),
        rag_collection: "documents".into(),
        rag_scan_interval_secs: 5,
        function_timeout_secs: 30,
        function_max_steps: 100_000,
        function_http_allow: Vec::new(),
        function_env: Default::default(),
    }
}

pub fn help_text(program: &str) -> String {
    let mut out = format!(
        "{program}: Tidepool, an embeddable real-time document database (ekoDB wire-compatible)\n\n\
         USAGE: {program} [--SETTING VALUE]...\n\n\
         Every setting can also be given as an environment variable; flags win.\n\n"
    );
    for s in SETTINGS {
        let _ = writeln!(out, "  --{:<22} {:<32} {}", s.flag, s.env, s.help);
        if !s.default.is_empty() {
            let _ = writeln!(out, "  {:<57} (default: {})", "", s.default);
        }
    }
    out.push_str("\n  --help                  print this help\n  --version               print the version\n");
    out
}

impl Config {
    /// Parses `args` (without the program name); `env` looks up a variable.
    pub fn parse<I, S>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Command, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut given: Vec<(usize, String)> = Vec::new();
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                return Ok(Command::Help(help_text("tidepool")));
            }
            if arg == "--version" || arg == "-V" {
                return Ok(Command::Version);
            }
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument `{arg}` (see --help)"));
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            let idx = SETTINGS
                .iter()
                .position(|s| s.flag == name)
                .ok_or_else(|| format!("unknown option `--{name}` (see --help)"))?;
            let value = match inline {
                Some(v) => v,
                None if name == "salvage" => "true".to_string(),
                None => args
                    .next()
                    .ok_or_else(|| format!("option `--{name}` needs a value"))?,
            };
            given.push((idx, value));
        }
        let get = |flag: &str| -> String {
            let idx = SETTINGS.iter().position(|s| s.flag == flag).unwrap_or(0);
            given
                .iter()
                .rev()
                .find(|(i, _)| *i == idx)
                .map(|(_, v)| v.clone())
                .or_else(|| env(SETTINGS[idx].env))
                .unwrap_or_else(|| SETTINGS[idx].default.to_string())
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.trim()
                .parse()
                .map_err(|_| format!("`--{flag}` must be a non-negative integer, got `{v}`"))
        }
        fn flag(flag: &str, v: String) -> Result<bool, String> {
            match v.trim() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(format!("`--{flag}` must be true or false, got `{v}`")),
            }
        }
        /// A comma-separated list, lowercased (origins and hosts are
        /// case-insensitive), without trailing slashes.
        fn list(v: Option<String>) -> Vec<String> {
            v.unwrap_or_default()
                .split(',')
                .map(|s| s.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        }
        fn nonempty(v: String) -> Option<String> {
            Some(v).filter(|v| !v.trim().is_empty())
        }
        let fsync = get("fsync");
        let ok_fsync = fsync == "sync"
            || fsync == "none"
            || fsync == "batch"
            || fsync
                .strip_prefix("batch:")
                .is_some_and(|ms| ms.parse::<u64>().is_ok());
        if !ok_fsync {
            return Err(format!(
                "`--fsync` must be sync, batch, batch:MS or none, got `{fsync}`"
            ));
        }
        if get("tls-cert").trim().is_empty() != get("tls-key").trim().is_empty() {
            return Err("`--tls-cert` and `--tls-key` go together: give both or neither".into());
        }
        let salvage = get("salvage");
        let config = Config {
            listen: get("listen"),
            data_dir: get("data-dir"),
            api_keys: get("api-key")
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect(),
            jwt_secret: get("jwt-secret"),
            token_lifetime_secs: num("token-lifetime", get("token-lifetime"))?,
            fsync,
            threads: num("threads", get("threads"))?,
            max_body_bytes: num("max-body-bytes", get("max-body-bytes"))?,
            max_head_bytes: num("max-head-bytes", get("max-head-bytes"))?,
            max_connections: num("max-connections", get("max-connections"))?,
            max_connections_per_address: num(
                "max-connections-per-address",
                get("max-connections-per-address"),
            )?,
            max_streams_per_key: num("max-streams-per-key", get("max-streams-per-key"))?,
            max_body_bytes_in_flight: num(
                "max-body-bytes-in-flight",
                get("max-body-bytes-in-flight"),
            )?,
            request_head_timeout_secs: num("request-head-timeout", get("request-head-timeout"))?,
            request_body_timeout_secs: num("request-body-timeout", get("request-body-timeout"))?,
            rate_limit_per_key: num("rate-limit-per-key", get("rate-limit-per-key"))?,
            rate_limit_per_address: num("rate-limit-per-address", get("rate-limit-per-address"))?,
            trusted_origins: list(
                nonempty(get("trusted-origins")).or_else(|| env("TRUSTED_ORIGINS")),
            ),
            trusted_hosts: list(nonempty(get("trusted-hosts")).or_else(|| env("TRUSTED_HOSTS"))),
            streams_expire_with_token: match get("stream-credentials").as_str() {
                "expire" => true,
                "connect" => false,
                other => {
                    return Err(format!(
                        "`--stream-credentials` must be expire or connect, got `{other}`"
                    ))
                }
            },
            metrics: crate::server::metrics::MetricsAccess::parse(&get("metrics")).ok_or_else(
                || {
                    format!(
                        "`--metrics` must be admin, public or off, got `{}`",
                        get("metrics")
                    )
                },
            )?,
            log_level: LogLevel::parse(&get("log-level")).ok_or_else(|| {
                format!(
                    "`--log-level` must be error, warn, info or debug, got `{}`",
                    get("log-level")
                )
            })?,
            log_format: match get("log-format").as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(format!(
                        "`--log-format` must be text or json, got `{other}`"
                    ))
                }
            },
            idle_timeout_secs: num("idle-timeout", get("idle-timeout"))?,
            max_query_work: num("max-query-work", get("max-query-work"))?,
            max_query_time_secs: num("max-query-time", get("max-query-time"))?,
            read_threads: num("read-threads", get("read-threads"))?,
            vector_half_rows: {
                let v = get("vector-half-rows");
                HalfRows::parse(v.trim()).ok_or_else(|| {
                    format!("`--vector-half-rows` must be auto, on or off, got `{v}`")
                })?
            },
            max_batch_bytes: num("max-batch-bytes", get("max-batch-bytes"))?,
            transaction_idle_timeout_secs: num(
                "transaction-idle-timeout",
                get("transaction-idle-timeout"),
            )?,
            heartbeat_secs: num("heartbeat", get("heartbeat"))?,
            ws_max_message_bytes: num("ws-max-message-bytes", get("ws-max-message-bytes"))?,
            outbound_queue_bytes: num("outbound-queue-bytes", get("outbound-queue-bytes"))?,
            segment_bytes: num("segment-bytes", get("segment-bytes"))?,
            history_bytes: num("history-bytes", get("history-bytes"))?,
            compact_after_bytes: num("compact-after-bytes", get("compact-after-bytes"))?,
            backup_max_mib_per_sec: num("backup-max-mib-per-sec", get("backup-max-mib-per-sec"))?,
            salvage: matches!(salvage.as_str(), "true" | "1" | "yes"),
            embed_url: get("embed-url"),
            embed_api_key: get("embed-api-key"),
            embed_model: get("embed-model"),
            embed_dimensions: num("embed-dimensions", get("embed-dimensions"))?,
            embed_model_dir: get("embed-model-dir"),
            chat_model_file: get("chat-model-file"),
            chat_model_answers: match num("chat-model-answers", get("chat-model-answers"))? {
                0 => return Err("`--chat-model-answers` must be at least 1".into()),
                n => n,
            },
            outbound_connect_timeout_secs: num(
                "outbound-connect-timeout",
                get("outbound-connect-timeout"),
            )?,
            outbound_timeout_secs: num("outbound-timeout", get("outbound-timeout"))?,
            outbound_idle_timeout_secs: num("outbound-idle-timeout", get("outbound-idle-timeout"))?,
            outbound_max_calls: num("outbound-max-calls", get("outbound-max-calls"))?,
            tls_ca_file: get("tls-ca-file"),
            tls_cert: get("tls-cert").trim().to_string(),
            tls_key: get("tls-key").trim().to_string(),
            openai_url: get("openai-url"),
            openai_api_key: nonempty(get("openai-api-key"))
                .or_else(|| env("OPENAI_API_KEY"))
                .unwrap_or_default(),
            openai_model: get("openai-model"),
            anthropic_url: get("anthropic-url"),
            anthropic_api_key: nonempty(get("anthropic-api-key"))
                .or_else(|| env("ANTHROPIC_API_KEY"))
                .unwrap_or_default(),
            anthropic_model: get("anthropic-model"),
            local_llm_url: get("local-llm-url"),
            local_llm_model: get("local-llm-model"),
            chat_provider: get("chat-provider"),
            chat_offline_fallback: flag("chat-offline-fallback", get("chat-offline-fallback"))?,
            chat_context_tokens: num("chat-context-tokens", get("chat-context-tokens"))?,
            chat_cancel_on_disconnect: flag(
                "chat-cancel-on-disconnect",
                get("chat-cancel-on-disconnect"),
            )?,
            chat_client_tool_timeout_secs: num(
                "chat-client-tool-timeout",
                get("chat-client-tool-timeout"),
            )?,
            chat_fold_after: num("chat-fold-after", get("chat-fold-after"))?,
            eva_listen: get("eva-listen").trim().to_string(),
            mounts: Mounts::parse(&get("mounts"))?,
            fluxbase_chatbots: get("fluxbase-chatbots").trim().to_string(),
            general_bots_ping_interval_secs: num(
                "general-bots-ping-interval",
                get("general-bots-ping-interval"),
            )?,
            general_bots_idle_timeout_secs: num(
                "general-bots-idle-timeout",
                get("general-bots-idle-timeout"),
            )?,
            rag_docs_folder: nonempty(get("rag-docs-folder"))
                .or_else(|| env("RAG_DOCS_FOLDER"))
                .unwrap_or_default(),
            rag_collection: {
                let c = get("rag-collection");
                crate::engine::validate_name("collection", &c)
                    .map_err(|e| format!("`--rag-collection`: {}", e.message))?;
                c
            },
            rag_scan_interval_secs: num("rag-scan-interval", get("rag-scan-interval"))?,
            function_timeout_secs: num("function-timeout", get("function-timeout"))?,
            function_max_steps: num("function-max-steps", get("function-max-steps"))?,
            function_http_allow: list(Some(get("function-http-allow"))),
            function_env: get("function-env")
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .filter_map(|name| env(name).map(|v| (name.to_string(), v)))
                .collect(),
        };
        Ok(Command::Run(Box::new(config.with_local_models()?)))
    }

    /// `--embed-model-dir` makes the in-process model the embedding
    /// provider, so everything that embeds through one (`/api/embed`, the
    /// `Embed` stage) reaches it unchanged.
    fn with_local_models(mut self) -> Result<Config, String> {
        if !self.embed_model_dir.is_empty() {
            if !self.embed_url.is_empty() {
                return Err(
                    "`--embed-model-dir` and `--embed-url` are two embedding providers: give one"
                        .into(),
                );
            }
            self.embed_url = crate::providers::IN_PROCESS_URL.into();
            self.embed_model = last_component(&self.embed_model_dir).to_string();
        }
        Ok(self)
    }

    /// The in-process chat model's name (its file's stem), when there is one.
    pub fn local_chat_model(&self) -> Option<String> {
        (!self.chat_model_file.is_empty()).then(|| file_stem(&self.chat_model_file))
    }
}

/// A path's last component (`/m/all-MiniLM-L6-v2/`: `all-MiniLM-L6-v2`).
fn last_component(path: &str) -> &str {
    path.trim_end_matches(['/', '\\'])
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(path)
}

/// A path's last component without its extension (`/m/gemma.gguf`: `gemma`).
fn file_stem(path: &str) -> String {
    let last = last_component(path);
    match last.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem.to_string(),
        _ => last.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_model_answers_at_once_is_at_least_one() {
        let none = |_: &str| None;
        let parse = |n: &'static str| Config::parse(["--chat-model-answers", n], none);
        let Command::Run(c) = parse("3").unwrap() else {
            panic!()
        };
        assert_eq!(c.chat_model_answers, 3);
        let Command::Run(c) = Config::parse(Vec::<String>::new(), none).unwrap() else {
            panic!()
        };
        assert_eq!(c.chat_model_answers, 2);
        assert!(parse("0").unwrap_err().contains("at least 1"));
        assert!(parse("x").unwrap_err().contains("--chat-model-answers"));
    }

    #[test]
    fn vector_half_rows_is_auto_on_or_off() {
        let run = |args: Vec<&str>, env: Option<&str>| {
            let env = env.map(str::to_string);
            match Config::parse(args, |name| {
                (name == "TIDEPOOL_VECTOR_HALF_ROWS")
                    .then(|| env.clone())
                    .flatten()
            }) {
                Ok(Command::Run(c)) => Ok(c.vector_half_rows),
                Ok(_) => panic!("not a run"),
                Err(e) => Err(e),
            }
        };
        assert_eq!(run(vec![], None), Ok(HalfRows::Auto));
        assert_eq!(
            run(vec!["--vector-half-rows", "off"], None),
            Ok(HalfRows::Off)
        );
        assert_eq!(run(vec!["--vector-half-rows=on"], None), Ok(HalfRows::On));
        assert_eq!(run(vec![], Some("off")), Ok(HalfRows::Off));
        let err = run(vec!["--vector-half-rows", "yes"], None).unwrap_err();
        assert!(err.contains("auto, on or off"), "{err}");
    }

    #[test]
    fn local_models_become_the_providers() {
        let none = |_: &str| None;
        let Command::Run(c) = Config::parse(
            [
                "--embed-model-dir",
                "/m/all-MiniLM-L6-v2/",
                "--chat-model-file",
                "/m/gemma-3-270m-q4_k_m.gguf",
            ],
            none,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.embed_url, crate::providers::IN_PROCESS_URL);
        assert_eq!(c.embed_model, "all-MiniLM-L6-v2");
        assert_eq!(c.local_chat_model().as_deref(), Some("gemma-3-270m-q4_k_m"));
        let offline = crate::providers::Provider::offline_for(&c);
        assert_eq!(offline.base_url, crate::providers::IN_PROCESS_URL);
        assert_eq!(offline.default_model, "gemma-3-270m-q4_k_m");
        let chosen = crate::providers::choose(&c, "offline", "").unwrap();
        assert_eq!(chosen.model, "gemma-3-270m-q4_k_m");
        let wrong = crate::providers::choose(&c, "offline", "tidepool-offline-v1").unwrap_err();
        assert!(
            wrong.message.contains("gemma-3-270m-q4_k_m"),
            "{}",
            wrong.message
        );

        let err = Config::parse(
            ["--embed-model-dir", "/m/x", "--embed-url", "http://e/v1"],
            none,
        )
        .expect_err("two embedding providers");
        assert!(err.contains("--embed-url"), "{err}");
        assert!(Config::default().local_chat_model().is_none());
    }

    #[test]
    fn tls_cert_and_key_go_together() {
        let none = |_: &str| None;
        let err = Config::parse(["--tls-cert", "c.pem"], none).expect_err("refused");
        assert!(err.contains("--tls-key"), "{err}");
        let Command::Run(c) =
            Config::parse(["--tls-cert", "c.pem", "--tls-key", "k.pem"], none).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (c.tls_cert.as_str(), c.tls_key.as_str()),
            ("c.pem", "k.pem")
        );
    }

    #[test]
    fn defaults_flags_and_env() {
        let c = Config::default();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.data_dir, "./data");
        assert!(c.api_keys.is_empty());
        let env = |k: &str| (k == "TIDEPOOL_LISTEN").then(|| "0.0.0.0:1".to_string());
        let Command::Run(c) = Config::parse(["--api-key", "a,b", "--data-dir=/x"], env).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.listen, "0.0.0.0:1");
        assert_eq!(c.api_keys, vec!["a", "b"]);
        assert_eq!(c.data_dir, "/x");
        let Command::Run(c) = Config::parse(["--listen", "1.2.3.4:5"], env).unwrap() else {
            panic!()
        };
        assert_eq!(c.listen, "1.2.3.4:5");
        assert!(Config::parse(["--bogus", "1"], |_| None).is_err());
        assert!(Config::parse(["--threads", "x"], |_| None).is_err());
        assert!(Config::parse(["--fsync", "sometimes"], |_| None).is_err());
        assert!(
            matches!(Config::parse(["--help"], |_| None), Ok(Command::Help(h)) if h.contains("TIDEPOOL_DATA_DIR"))
        );
    }
}
