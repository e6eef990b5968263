//! `POST /api/embed` (spec D3). The default is the built-in offline embedder
//! (feature hashing: deterministic, no network, no key; it is not a neural
//! model). With an OpenAI-compatible provider configured (`--embed-url`, http or
//! https), other model names go to its `/embeddings` endpoint as an outbound
//! call owned by the server.

use super::Ctx;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::server::calls::CallFailure;
use crate::wire::http::client::{post_json, ClientResponse, OutboundRequest};
use crate::wire::http::Response;
use serde_json::{json, Value as J};

pub const OFFLINE_MODEL: &str = "tidepool-hash-v1";
const MAX_TEXTS: usize = 2048;

/// What an embed request turns into.
#[derive(Debug)]
pub enum Plan {
    Done(Response),
    /// Ask the provider; finish with `finish` when the response is in.
    Call(OutboundRequest, Job),
}

/// What the provider call is for.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub model: String,
    pub count: usize,
}

fn is_offline_name(model: &str) -> bool {
    model.is_empty()
        || model.starts_with("tidepool")
        || matches!(model, "offline" | "local" | "builtin" | "default")
}

pub fn start(config: &Config, ctx: &Ctx<'_>) -> Result<Plan> {
    let body = ctx.body()?;
    let texts: Vec<String> = match (body.get("text"), body.get("texts")) {
        (Some(J::String(t)), _) => vec![t.clone()],
        (_, Some(J::Array(items))) => items
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::invalid("`texts` must be an array of strings"))
            })
            .collect::<Result<_>>()?,
        _ => {
            return Err(Error::invalid(
                "the body needs `text` (a string) or `texts` (an array of strings)",
            ))
        }
    };
    if texts.is_empty() {
        return Err(Error::invalid("`texts` must not be empty"));
    }
    if texts.len() > MAX_TEXTS {
        return Err(Error::invalid(format!(
            "at most {MAX_TEXTS} texts per request"
        )));
    }
    let requested = body
        .get("model")
        .and_then(J::as_str)
        .unwrap_or("")
        .to_string();
    let provider = (!config.embed_url.is_empty()).then_some(config.embed_url.as_str());
    match provider {
        Some(url) if !is_offline_name(&requested) || requested.is_empty() => {
            let model = if requested.is_empty() {
                config.embed_model.clone()
            } else {
                requested
            };
            let outbound = provider_request(config, url, &texts, &model)?;
            Ok(Plan::Call(
                outbound,
                Job {
                    model,
                    count: texts.len(),
                },
            ))
        }
        _ => {
            let dim = config.embed_dimensions.clamp(8, 4096);
            let vectors: Vec<Vec<f32>> = texts
                .iter()
                .map(|t| tidepool_search::embed(t, dim))
                .collect();
            let model = format!("{OFFLINE_MODEL}-{dim}");
            Ok(Plan::Done(ctx.ok_json(
                &json!({"embeddings": vectors, "model": model, "dimensions": dim}),
            )?))
        }
    }
}

/// The provider call that embeds `texts` with `model`.
pub fn provider_request(
    config: &Config,
    url: &str,
    texts: &[String],
    model: &str,
) -> Result<OutboundRequest> {
    let payload = json!({"model": model, "input": texts});
    let body = serde_json::to_vec(&payload).map_err(|e| Error::internal(e.to_string()))?;
    post_json(url, "/embeddings", Some(&config.embed_api_key), &body)
        .map_err(|e| Error::new(ErrorKind::BadGateway, format!("embedding provider: {e}")))
}

fn provider_error(message: String) -> Error {
    Error::new(ErrorKind::BadGateway, message)
}

/// The most a provider's embeddings response may hold.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Turns the provider's answer (or why there is none) into the API reply.
pub fn finish(job: &Job, result: std::result::Result<ClientResponse, CallFailure>) -> Response {
    answer(job, result).unwrap_or_else(|e| super::error_response(&e))
}

fn answer(job: &Job, result: std::result::Result<ClientResponse, CallFailure>) -> Result<Response> {
    let (embeddings, model) = vectors(job, result)?;
    let dims = embeddings[0].len();
    let body = json!({"embeddings": embeddings, "model": model, "dimensions": dims});
    let bytes = serde_json::to_vec(&body).map_err(|e| Error::internal(e.to_string()))?;
    Ok(Response::json(200, bytes))
}

/// The provider's vectors, in the order of the texts, and the model that
/// made them (or why there are none).
pub fn vectors(
    job: &Job,
    result: std::result::Result<ClientResponse, CallFailure>,
) -> Result<(Vec<Vec<f64>>, String)> {
    // Every provider failure is a 502 (spec A, E10: clients retry 503 on their
    // own, which only genuine overload here should cause).
    let resp = result.map_err(|failure| match failure {
        CallFailure::Overloaded => Error::new(
            ErrorKind::Unavailable,
            format!("embedding provider: {failure}"),
        ),
        CallFailure::Transport(e) => provider_error(format!("embedding provider unreachable: {e}")),
        CallFailure::Timeout(_) => provider_error(format!("embedding provider {failure}")),
        CallFailure::Response(_) | CallFailure::TooLarge(_) => {
            provider_error(format!("embedding provider sent a bad response: {failure}"))
        }
    })?;
    if resp.status() != 200 {
        let detail: String = String::from_utf8_lossy(&resp.body)
            .chars()
            .take(300)
            .collect();
        let kind = match resp.status() {
            401 => "rejected the API key (provider_auth_failed)",
            403 => "denied access (provider_permission_denied)",
            429 => "is rate limiting requests (provider_rate_limited)",
            500..=599 => "failed (provider_unavailable)",
            _ => "refused the request (provider_request_error)",
        };
        let mut e = provider_error(format!(
            "embedding provider {kind}: HTTP {} {detail}",
            resp.status()
        ));
        if resp.status() == 429 {
            if let Some(after) = resp.header("retry-after") {
                e.message.push_str(&format!(" (retry after {after} s)"));
            }
        }
        return Err(e);
    }
    let v: J = serde_json::from_slice(&resp.body)
        .map_err(|e| provider_error(format!("embedding provider sent invalid JSON: {e}")))?;
    let mut items: Vec<(u64, Vec<f64>)> = v
        .get("data")
        .and_then(J::as_array)
        .ok_or_else(|| provider_error("embedding provider response has no `data` array".into()))?
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let index = d.get("index").and_then(J::as_u64).unwrap_or(i as u64);
            let emb = d
                .get("embedding")
                .and_then(J::as_array)
                .map(|a| a.iter().filter_map(J::as_f64).collect::<Vec<f64>>())
                .unwrap_or_default();
            (index, emb)
        })
        .collect();
    items.sort_by_key(|(i, _)| *i);
    if items.len() != job.count || items.iter().any(|(_, e)| e.is_empty()) {
        return Err(provider_error(format!(
            "embedding provider returned {} embeddings for {} texts",
            items.len(),
            job.count
        )));
    }
    let embeddings: Vec<Vec<f64>> = items.into_iter().map(|(_, e)| e).collect();
    let model = v
        .get("model")
        .and_then(J::as_str)
        .unwrap_or(&job.model)
        .to_string();
    Ok((embeddings, model))
}
