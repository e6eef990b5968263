//! LLM providers as data: which provider answers a session, the request a turn
//! sends it (`openai`, `anthropic`), and a parser that turns the streamed
//! answer into `ProviderEvent`s as its bytes arrive. No I/O: the request goes
//! out as a server-owned outbound call.

pub mod anthropic;
pub mod openai;

use crate::config::Config;
use crate::error::Error;
use crate::wire::http::client::{OutboundRequest, UrlError};
use serde_json::Value as J;
use std::fmt;

/// The built-in provider: no network, no key, deterministic.
pub const OFFLINE: &str = "offline";
/// Its model name says what it is; it never pretends to be another model.
pub const OFFLINE_MODEL: &str = "tidepool-offline-v1";

/// Where the host serves the in-process models (`--embed-model-dir`,
/// `--chat-model-file`), in the OpenAI wire format: the host performs calls
/// to this host name itself, without a socket. `.invalid` never resolves
/// (RFC 2606), so no real server can be mistaken for it.
pub const IN_PROCESS_HOST: &str = "models.tidepool.invalid";
pub const IN_PROCESS_URL: &str = "http://models.tidepool.invalid/v1";

/// Provider names clients may send (ekoDB's, plus `local` and `offline`).
const KNOWN: &[&str] = &[
    "openai",
    "anthropic",
    "perplexity",
    "gemini",
    "local",
    OFFLINE,
    "tidepool",
];

/// Which wire API a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
    Offline,
}

/// A provider as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct Provider {
    pub name: String,
    pub api: Api,
    pub base_url: String,
    pub key: String,
    pub default_model: String,
}

impl Provider {
    /// The built-in provider: the in-process chat model when one is
    /// loaded (`--chat-model-file`), else answers composed from records.
    pub fn offline_for(config: &Config) -> Provider {
        match config.local_chat_model() {
            Some(model) => Provider {
                name: OFFLINE.into(),
                api: Api::OpenAi,
                base_url: IN_PROCESS_URL.into(),
                key: String::new(),
                default_model: model,
            },
            None => Provider::offline(),
        }
    }

    pub fn offline() -> Provider {
        Provider {
            name: OFFLINE.into(),
            api: Api::Offline,
            base_url: String::new(),
            key: String::new(),
            default_model: OFFLINE_MODEL.into(),
        }
    }
}

/// The providers that can answer, in order of preference.
pub fn configured(config: &Config) -> Vec<Provider> {
    let mut out = Vec::new();
    if !config.openai_api_key.is_empty() {
        out.push(Provider {
            name: "openai".into(),
            api: Api::OpenAi,
            base_url: config.openai_url.clone(),
            key: config.openai_api_key.clone(),
            default_model: config.openai_model.clone(),
        });
    }
    if !config.anthropic_api_key.is_empty() {
        out.push(Provider {
            name: "anthropic".into(),
            api: Api::Anthropic,
            base_url: config.anthropic_url.clone(),
            key: config.anthropic_api_key.clone(),
            default_model: config.anthropic_model.clone(),
        });
    }
    if !config.local_llm_url.is_empty() {
        out.push(Provider {
            name: "local".into(),
            api: Api::OpenAi,
            base_url: config.local_llm_url.clone(),
            key: String::new(),
            default_model: config.local_llm_model.clone(),
        });
    }
    out
}

/// The model a provider uses when a session names none.
pub fn default_model(config: &Config, name: &str) -> String {
    match name {
        "openai" => config.openai_model.clone(),
        "anthropic" => config.anthropic_model.clone(),
        "local" => config.local_llm_model.clone(),
        "perplexity" => "sonar".into(),
        "gemini" => "gemini-2.5-flash".into(),
        _ => Provider::offline_for(config).default_model,
    }
}

/// Whether clients may name this provider (configured or not).
pub fn is_known(name: &str) -> bool {
    KNOWN.contains(&name)
}

/// Who answers a session, with which model, and (when the offline provider
/// stands in for one with no key) why.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub provider: Provider,
    pub model: String,
    pub fallback: Option<String>,
}

/// The provider named by a session (empty: the default).
pub fn choose(config: &Config, name: &str, model: &str) -> std::result::Result<Choice, Failure> {
    let available = configured(config);
    let name = name.trim().to_ascii_lowercase();
    let pick = |p: Provider| {
        let model = if model.is_empty() {
            p.default_model.clone()
        } else {
            model.to_string()
        };
        Choice {
            provider: p,
            model,
            fallback: None,
        }
    };
    let offline = |why: Option<String>| {
        let provider = Provider::offline_for(config);
        Choice {
            model: provider.default_model.clone(),
            provider,
            fallback: why,
        }
    };
    if name.is_empty() {
        let default = config.chat_provider.trim().to_ascii_lowercase();
        if !default.is_empty() {
            return choose(config, &default, model);
        }
        return Ok(available
            .into_iter()
            .next()
            .map_or_else(|| offline(None), pick));
    }
    if name == OFFLINE || name == "tidepool" {
        let own = Provider::offline_for(config).default_model;
        if !model.is_empty() && model != own {
            return Err(Failure {
                kind: FailureKind::RequestError,
                provider: name.clone(),
                status: None,
                retry_after_secs: None,
                message: format!(
                    "unknown model `{model}` for the offline provider (it has one: {own})"
                ),
            });
        }
        return Ok(offline(None));
    }
    if let Some(p) = available.into_iter().find(|p| p.name == name) {
        return Ok(pick(p));
    }
    if !KNOWN.contains(&name.as_str()) {
        return Err(Failure {
            kind: FailureKind::RequestError,
            provider: name.clone(),
            status: None,
            retry_after_secs: None,
            message: format!(
                "unknown provider `{name}` (openai, anthropic, perplexity, gemini, local, offline)"
            ),
        });
    }
    let why = format!("provider `{name}` has no API key configured; the offline provider answers");
    if config.chat_offline_fallback {
        Ok(offline(Some(why)))
    } else {
        Err(Failure {
            kind: FailureKind::NotConfigured,
            provider: name.clone(),
            status: None,
            retry_after_secs: None,
            message: format!("provider `{name}` has no API key configured"),
        })
    }
}

/// A provider failure, classified as clients expect it (spec E10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub provider: String,
    /// The provider's HTTP status.
    pub status: Option<u16>,
    pub retry_after_secs: Option<u64>,
    pub message: String,
}

impl Failure {
    /// The error a client sees: a 502 carrying the classification (spec E10).
    pub fn to_error(&self) -> Error {
        let mut e = Error::new(crate::error::ErrorKind::BadGateway, self.message.clone())
            .with_detail("error_kind", self.kind.as_str())
            .with_detail("provider", self.provider.clone());
        if let Some(s) = self.status {
            e = e.with_detail("provider_status", s);
        }
        if let Some(r) = self.retry_after_secs {
            e = e.with_detail("retry_after_secs", r);
        }
        e
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    AuthFailed,
    PermissionDenied,
    Billing,
    RateLimited,
    Unavailable,
    Unreachable,
    NotConfigured,
    RequestError,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::AuthFailed => "provider_auth_failed",
            FailureKind::PermissionDenied => "provider_permission_denied",
            FailureKind::Billing => "provider_billing",
            FailureKind::RateLimited => "provider_rate_limited",
            FailureKind::Unavailable => "provider_unavailable",
            FailureKind::Unreachable => "provider_unreachable",
            FailureKind::NotConfigured => "provider_not_configured",
            FailureKind::RequestError => "provider_request_error",
        }
    }

    pub fn from_status(status: u16) -> FailureKind {
        match status {
            401 => FailureKind::AuthFailed,
            402 => FailureKind::Billing,
            403 => FailureKind::PermissionDenied,
            429 => FailureKind::RateLimited,
            500..=599 => FailureKind::Unavailable,
            _ => FailureKind::RequestError,
        }
    }

    /// Worth trying again (before the first token only).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            FailureKind::RateLimited | FailureKind::Unavailable | FailureKind::Unreachable
        )
    }
}

/// Builds the failure for a provider's error response.
pub fn http_failure(
    provider: &str,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Failure {
    let detail = serde_json::from_slice::<J>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error").filter(|e| e.is_string()))
                .or_else(|| v.get("message"))
                .and_then(J::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    let kind = if status == 429 && detail.to_ascii_lowercase().contains("quota") {
        FailureKind::Billing
    } else {
        FailureKind::from_status(status)
    };
    Failure {
        kind,
        provider: provider.to_string(),
        status: Some(status),
        retry_after_secs: retry_after.and_then(|r| r.trim().parse().ok()),
        message: format!("{provider} API error {status}: {detail}"),
    }
}

/// A conversation for a provider.
#[derive(Clone, Debug, Default)]
pub struct Prompt {
    pub model: String,
    pub system: Option<String>,
    pub messages: Vec<PromptMessage>,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PromptMessage {
    User(String),
    Assistant {
        text: String,
        tool_calls: Vec<ToolCall>,
    },
    /// A tool's result, answering an assistant's tool call.
    Tool {
        call_id: String,
        name: String,
        content: String,
    },
}

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: J,
}

/// A tool call the model made (arguments as the JSON text it produced).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// What a provider's stream says, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum ProviderEvent {
    Text(String),
    /// A complete tool call (its streamed pieces joined).
    ToolCall(ToolCall),
    Usage {
        prompt: Option<u64>,
        completion: Option<u64>,
    },
    /// The answer is complete (`stop`, `length`, `tool_calls`, ...).
    Finish(String),
}

/// The request for a prompt.
pub fn request(
    provider: &Provider,
    prompt: &Prompt,
) -> std::result::Result<OutboundRequest, UrlError> {
    match provider.api {
        Api::OpenAi => openai::request(provider, prompt),
        Api::Anthropic => anthropic::request(provider, prompt),
        // Never sent: the offline provider answers in core.
        Api::Offline => Err(UrlError::Scheme("offline://".into())),
    }
}

/// Largest line or event a provider stream may send.
pub const MAX_STREAM_EVENT: usize = 1 << 20;

/// A streamed answer's parser, for the provider's API.
#[derive(Debug)]
pub enum StreamParser {
    OpenAi(openai::Stream),
    Anthropic(anthropic::Stream),
}

/// Why a provider's stream cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// Not the format the API promises (the reason says where).
    Malformed(String),
    /// The provider reported an error inside the stream.
    Provider { kind: FailureKind, message: String },
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Malformed(why) => write!(f, "malformed stream: {why}"),
            StreamError::Provider { message, .. } => f.write_str(message),
        }
    }
}

impl StreamParser {
    pub fn new(api: Api) -> Option<StreamParser> {
        match api {
            Api::OpenAi => Some(StreamParser::OpenAi(openai::Stream::default())),
            Api::Anthropic => Some(StreamParser::Anthropic(anthropic::Stream::default())),
            Api::Offline => None,
        }
    }

    /// Bytes of the (de-chunked) response body.
    pub fn feed(&mut self, bytes: &[u8]) -> std::result::Result<Vec<ProviderEvent>, StreamError> {
        match self {
            StreamParser::OpenAi(s) => s.feed(bytes),
            StreamParser::Anthropic(s) => s.feed(bytes),
        }
    }

    /// The body ended: anything still pending, or an error if the answer was
    /// cut short.
    pub fn finish(&mut self) -> std::result::Result<Vec<ProviderEvent>, StreamError> {
        match self {
            StreamParser::OpenAi(s) => s.finish(),
            StreamParser::Anthropic(s) => s.finish(),
        }
    }
}

/// A 400 for a provider name nobody knows.
pub fn unknown_provider(f: &Failure) -> Error {
    Error::invalid(f.message.clone())
}

/// Estimated tokens of a text (about four characters each), for context
/// fitting and the offline provider's usage.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64)
        .div_ceil(4)
        .max(u64::from(!text.is_empty()))
}

/// The context window of a model, when known.
pub fn context_window(model: &str, default: usize) -> usize {
    let m = model.to_ascii_lowercase();
    if m.starts_with("gpt-4o")
        || m.starts_with("gpt-4.1")
        || m.starts_with("o1")
        || m.starts_with("o3")
        || m.starts_with("o4")
    {
        128_000
    } else if m.starts_with("gpt-5") {
        400_000
    } else if m.starts_with("claude") {
        200_000
    } else if m == OFFLINE_MODEL {
        32_000
    } else {
        default.max(1024)
    }
}
