//! The in-process models (`--embed-model-dir`, `--chat-model-file`) as the
//! server's providers. Core sends them ordinary OpenAI-format calls to
//! `providers::IN_PROCESS_HOST`; the host answers those here, with no
//! socket, on worker threads: `/embeddings` as one JSON response (one
//! thread), and `/chat/completions` as an SSE stream, one event per piece
//! of text the moment the model makes it (`--chat-model-answers` threads,
//! so that many answers stream at once; more wait their turn). So the provider parsers, deadlines,
//! cancellation and metrics that serve hosted models serve these unchanged.

use crate::clock::now;
use crate::shared::Host;
use bytes::Bytes;
use crossbeam_channel::{unbounded, Receiver, Sender};
use serde_json::{json, Value as J};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use tidepool_core::config::Config;
use tidepool_core::server::calls::CallId;
use tidepool_models::{ChatModel, Embedder, Finish, Options, Role, Turn};

/// Tokens an answer may have when the request sets no `max_tokens`.
const DEFAULT_MAX_TOKENS: usize = 512;

/// The loaded models and their workers.
pub struct Models {
    embed: Option<Sender<Job>>,
    chat: Option<Sender<Job>>,
    /// Calls started and not cancelled; a worker stops one that leaves.
    running: Mutex<HashSet<CallId>>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models").finish_non_exhaustive()
    }
}

struct Job {
    host: Arc<Host>,
    id: CallId,
    request: Bytes,
}

/// What was loaded, for the banner.
#[derive(Default)]
pub struct Loaded {
    pub models: Option<Arc<Models>>,
    pub banner: Vec<String>,
}

/// Loads the configured models (a clear error naming the file when one is
/// missing or unreadable) and starts a worker thread for each.
pub fn load(config: &Config) -> Result<Loaded, String> {
    let mut banner = Vec::new();
    let embed = match config.embed_model_dir.as_str() {
        "" => None,
        dir => {
            let started = std::time::Instant::now();
            let model = Embedder::load(Path::new(dir)).map_err(|e| e.to_string())?;
            banner.push(format!(
                "embedding model {} ({} dimensions, up to {} word pieces a text) loaded in {:.1} s",
                model.name(),
                model.dimensions(),
                model.max_tokens(),
                started.elapsed().as_secs_f64()
            ));
            Some(Arc::new(model))
        }
    };
    let chat = match config.chat_model_file.as_str() {
        "" => None,
        file => {
            let started = std::time::Instant::now();
            let model = ChatModel::load(Path::new(file)).map_err(|e| e.to_string())?;
            banner.push(format!(
                "chat model {} loaded in {:.1} s: the offline provider answers with it, {} answers at a time",
                model.name(),
                started.elapsed().as_secs_f64(),
                config.chat_model_answers
            ));
            Some(Arc::new(model))
        }
    };
    let (embed_tx, embed_rx) = unbounded::<Job>();
    let (chat_tx, chat_rx) = unbounded::<Job>();
    let models = Arc::new(Models {
        embed: embed.is_some().then_some(embed_tx),
        chat: chat.is_some().then_some(chat_tx),
        running: Mutex::new(HashSet::new()),
    });
    if let Some(model) = embed {
        spawn("embedder", 1, embed_rx, models.clone(), move |m, job| {
            answer_embeddings(&model, m, job)
        })?;
    }
    if let Some(model) = chat {
        // Each answer has a cache of its own over the shared weights, so
        // answers on different threads stream side by side.
        let threads = config.chat_model_answers;
        spawn(
            "chat-model",
            threads,
            chat_rx,
            models.clone(),
            move |m, job| answer_chat(&model, m, job),
        )?;
    }
    Ok(Loaded {
        models: Some(models),
        banner,
    })
}

/// Starts `threads` workers named after `name` that take jobs from one
/// queue, so up to `threads` jobs run at once and the rest wait in order.
fn spawn(
    name: &str,
    threads: usize,
    jobs: Receiver<Job>,
    models: Arc<Models>,
    answer: impl Fn(&Models, &Job) + Send + Sync + 'static,
) -> Result<(), String> {
    let answer = Arc::new(answer);
    for n in 0..threads.max(1) {
        let (jobs, models, answer) = (jobs.clone(), models.clone(), answer.clone());
        let thread_name = if threads > 1 {
            format!("tidepool-{name}-{n}")
        } else {
            format!("tidepool-{name}")
        };
        thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                for job in jobs {
                    if models.is_running(job.id) {
                        answer(&models, &job);
                    }
                    models.lock().remove(&job.id);
                }
            })
            .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
    }
    Ok(())
}

impl Models {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<CallId>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_running(&self, id: CallId) -> bool {
        self.lock().contains(&id)
    }

    /// A call to the in-process host: queued for the model its path names.
    pub fn start(&self, host: Arc<Host>, id: CallId, request: Bytes) {
        let path = request_path(&request);
        let queue = if path.ends_with("/embeddings") {
            &self.embed
        } else if path.ends_with("/chat/completions") {
            &self.chat
        } else {
            &None
        };
        match queue {
            Some(q) => {
                self.lock().insert(id);
                let _ = q.send(Job { host, id, request });
            }
            None => {
                let what = if path.ends_with("/embeddings") {
                    "no embedding model is loaded (start with --embed-model-dir)".to_string()
                } else if path.ends_with("/chat/completions") {
                    "no chat model is loaded (start with --chat-model-file)".to_string()
                } else {
                    format!("no in-process endpoint `{path}`")
                };
                respond(&host, id, &error_response(404, &what));
            }
        }
    }

    /// The call is no longer wanted: a queued one is skipped, a running
    /// answer stops at its next token.
    pub fn cancel(&self, id: CallId) {
        self.lock().remove(&id);
    }
}

fn request_path(request: &[u8]) -> String {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(line)
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn request_body(request: &[u8]) -> Result<J, String> {
    let at = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the request has no body")?;
    serde_json::from_slice(&request[at + 4..]).map_err(|e| format!("the body is not JSON: {e}"))
}

/// Reports a whole response: connected, its bytes, the end.
fn respond(host: &Host, id: CallId, bytes: &[u8]) {
    host.with_server(|s| {
        s.handle_call_connected(id, now());
        s.handle_call_data(id, bytes, now());
        s.handle_call_eof(id, now());
    });
}

fn error_response(status: u16, message: &str) -> Vec<u8> {
    let body = json!({"error": {"message": message, "type": "invalid_request_error"}}).to_string();
    let reason = if status == 404 {
        "Not Found"
    } else {
        "Bad Request"
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn json_response(body: &J) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `POST /embeddings`: `input` is a string or an array of strings.
fn answer_embeddings(model: &Embedder, _models: &Models, job: &Job) {
    let texts: Result<Vec<String>, String> =
        request_body(&job.request).and_then(|body| match body.get("input") {
            Some(J::String(s)) => Ok(vec![s.clone()]),
            Some(J::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| "`input` must hold strings".to_string())
                })
                .collect(),
            _ => Err("`input` must be a string or an array of strings".into()),
        });
    let response = match texts.and_then(|t| model.embed(&t)) {
        Ok(done) => json_response(&json!({
            "object": "list",
            "data": done.vectors.iter().enumerate().map(|(i, v)| json!({
                "object": "embedding", "index": i, "embedding": v,
            })).collect::<Vec<J>>(),
            "model": model.name(),
            "usage": {"prompt_tokens": done.tokens, "total_tokens": done.tokens},
        })),
        Err(e) => error_response(400, &e),
    };
    respond(&job.host, job.id, &response);
}

/// The conversation a Chat Completions body holds, in the model's roles.
/// Tool results (the local model is offered no tools) come back as user
/// text, so nothing the chat engine sends is lost.
fn turns(body: &J) -> Result<Vec<Turn>, String> {
    let messages = body
        .get("messages")
        .and_then(J::as_array)
        .ok_or("`messages` must be an array")?;
    messages
        .iter()
        .map(|m| {
            let text = match m.get("content") {
                Some(J::String(s)) => s.clone(),
                Some(J::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(J::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            };
            let role = match m.get("role").and_then(J::as_str) {
                Some("system" | "developer") => Role::System,
                Some("assistant") => Role::Assistant,
                Some("tool") => {
                    return Ok(Turn {
                        role: Role::User,
                        text: format!("Tool result: {text}"),
                    })
                }
                Some("user") => Role::User,
                other => return Err(format!("unknown message role {other:?}")),
            };
            Ok(Turn { role, text })
        })
        .collect()
}

/// `POST /chat/completions`, streamed as `chat.completion.chunk` events
/// (or one `chat.completion` when `stream` is false).
fn answer_chat(model: &ChatModel, models: &Models, job: &Job) {
    let body = match request_body(&job.request) {
        Ok(b) => b,
        Err(e) => return respond(&job.host, job.id, &error_response(400, &e)),
    };
    let turns = match turns(&body) {
        Ok(t) => t,
        Err(e) => return respond(&job.host, job.id, &error_response(400, &e)),
    };
    let options = Options {
        max_tokens: body
            .get("max_tokens")
            .or_else(|| body.get("max_completion_tokens"))
            .and_then(J::as_u64)
            .map_or(DEFAULT_MAX_TOKENS, |n| n as usize),
        temperature: body.get("temperature").and_then(J::as_f64),
        seed: body.get("seed").and_then(J::as_u64).unwrap_or(0),
    };
    let stream = body.get("stream").and_then(J::as_bool).unwrap_or(false);
    let id = format!("chatcmpl-tidepool-{}", job.id.0);
    let name = model.name().to_string();
    let chunk = |delta: J, finish: J| {
        json!({
            "id": id, "object": "chat.completion.chunk", "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let host = &job.host;
    if stream {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        host.with_server(|s| {
            s.handle_call_connected(job.id, now());
            s.handle_call_data(job.id, head, now());
        });
    }
    let send = |events: &[J]| {
        let mut text = String::new();
        for e in events {
            text.push_str(&format!("data: {e}\n\n"));
        }
        let bytes = format!("{:x}\r\n{text}\r\n", text.len());
        host.with_server(|s| s.handle_call_data(job.id, bytes.as_bytes(), now()));
    };
    let mut answer = String::new();
    let result = model.generate(&turns, &options, |piece| {
        if !models.is_running(job.id) {
            return false;
        }
        if stream {
            send(&[chunk(json!({"content": piece}), J::Null)]);
        } else {
            answer.push_str(piece);
        }
        true
    });
    let done = match result {
        Ok(done) if done.finish == Finish::Cancelled => return,
        Ok(done) => done,
        Err(e) => {
            if stream {
                // Ending without `[DONE]` tells the parser the answer broke.
                host.with_server(|s| s.handle_call_eof(job.id, now()));
            } else {
                respond(
                    host,
                    job.id,
                    &error_response(400, &format!("the model failed: {e}")),
                );
            }
            crate::log::warn(&format!("the chat model failed: {e}"));
            return;
        }
    };
    let finish = if done.finish == Finish::Length {
        "length"
    } else {
        "stop"
    };
    let usage = json!({
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    });
    if stream {
        send(&[
            chunk(json!({}), json!(finish)),
            json!({"id": id, "object": "chat.completion.chunk", "model": name, "choices": [], "usage": usage}),
        ]);
        let tail = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";
        host.with_server(|s| {
            s.handle_call_data(job.id, tail, now());
            s.handle_call_eof(job.id, now());
        });
    } else {
        respond(
            host,
            job.id,
            &json_response(&json!({
                "id": id, "object": "chat.completion", "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": finish}],
                "usage": usage,
            })),
        );
    }
}
