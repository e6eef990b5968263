//! The ekoDB chat API over REST (spec E1-E10): sessions, messages, answers
//! (whole, or streamed as SSE), branch and merge, compaction, tools, models
//! and raw completions. Shapes follow what the official clients decode
//! (every key they require is present, integers are integers).

use super::{Ctx, Outcome};
use crate::chat::event::parse_event_id;
use crate::chat::session::Session;
use crate::chat::store::{self, Message, Role};
use crate::chat::tools::{self, Policy};
use crate::chat::turn::{Listener, Shape};
use crate::chat::{compact, offline};
use crate::engine::record::RecordOut;
use crate::engine::Found;
use crate::error::{Error, Result};
use crate::providers::{self, ToolSpec, OFFLINE, OFFLINE_MODEL};
use crate::server::chat::{Answer, RawRequest, SendRequest, Started};
use crate::server::{Server, Upgrade};
use crate::time::Timestamp;
use crate::wire::http::Response;
use serde_json::{json, Map, Value as J};

/// Tools one message may bring.
const MAX_TOOLS: usize = 64;

// ----- parsing ---------------------------------------------------------------

fn object(body: &J) -> Result<&Map<String, J>> {
    static EMPTY: std::sync::OnceLock<Map<String, J>> = std::sync::OnceLock::new();
    match body {
        J::Object(o) => Ok(o),
        J::Null => Ok(EMPTY.get_or_init(Map::new)),
        _ => Err(Error::invalid("the body must be a JSON object")),
    }
}

fn opt_str(o: &Map<String, J>, k: &str) -> Result<Option<String>> {
    match o.get(k) {
        None | Some(J::Null) => Ok(None),
        Some(J::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::invalid(format!("`{k}` must be a string"))),
    }
}

fn opt_u32(o: &Map<String, J>, k: &str) -> Result<Option<u32>> {
    match o.get(k) {
        None | Some(J::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= u64::from(u32::MAX))
            .map(|n| Some(n as u32))
            .ok_or_else(|| Error::invalid(format!("`{k}` must be a non-negative integer"))),
    }
}

fn names(o: &Map<String, J>, k: &str) -> Result<Vec<String>> {
    match o.get(k) {
        None | Some(J::Null) => Ok(Vec::new()),
        Some(J::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::invalid(format!("`{k}` must be an array of strings")))
            })
            .collect(),
        Some(_) => Err(Error::invalid(format!("`{k}` must be an array of strings"))),
    }
}

/// Tool definitions a client brings: `[{"name","description","parameters"}]`.
pub fn parse_tools(v: Option<&J>) -> Result<Vec<ToolSpec>> {
    let items = match v {
        None | Some(J::Null) => return Ok(Vec::new()),
        Some(J::Array(items)) => items,
        Some(_) => return Err(Error::invalid("tools must be an array")),
    };
    if items.len() > MAX_TOOLS {
        return Err(Error::invalid(format!("at most {MAX_TOOLS} tools")));
    }
    items
        .iter()
        .map(|t| {
            let name = t
                .get("name")
                .and_then(J::as_str)
                .filter(|n| !n.is_empty() && n.len() <= 64)
                .ok_or_else(|| Error::invalid("every tool needs a `name` (1-64 characters)"))?;
            Ok(ToolSpec {
                name: name.to_string(),
                description: t
                    .get("description")
                    .and_then(J::as_str)
                    .unwrap_or("")
                    .to_string(),
                parameters: t
                    .get("parameters")
                    .filter(|p| p.is_object())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            })
        })
        .collect()
}

/// A message request (`/messages`, `/messages/stream`, WebSocket `ChatSend`).
pub fn parse_send(body: &J, with_client_tools: bool) -> Result<SendRequest> {
    let o = object(body)?;
    let message = match o.get("message") {
        Some(J::String(s)) => s.clone(),
        _ => return Err(Error::invalid("`message` is required (a string)")),
    };
    let tool_config = match o.get("tool_config") {
        None | Some(J::Null) => None,
        Some(v @ J::Object(_)) => Some(v.clone()),
        Some(_) => return Err(Error::invalid("`tool_config` must be an object")),
    };
    Ok(SendRequest {
        message,
        llm_model: opt_str(o, "llm_model")?,
        tool_config,
        max_iterations: opt_u32(o, "max_iterations")?,
        max_tokens: opt_u32(o, "max_tokens")?.filter(|n| *n > 0),
        client_tools: if with_client_tools {
            parse_tools(o.get("client_tools"))?
        } else {
            Vec::new()
        },
        confirm_tools: names(o, "confirm_tools")?,
        exclude_tools: names(o, "exclude_tools")?,
        fold_after: None,
    })
}

/// A raw completion request (REST body, or a WebSocket `RawComplete`).
pub fn parse_raw(body: &J) -> Result<RawRequest> {
    let o = object(body)?;
    Ok(RawRequest {
        system_prompt: opt_str(o, "system_prompt")?.unwrap_or_default(),
        message: opt_str(o, "message")?
            .ok_or_else(|| Error::invalid("`message` is required (a string)"))?,
        provider: opt_str(o, "provider")?.filter(|p| !p.is_empty()),
        model: opt_str(o, "model")?.filter(|m| !m.is_empty()),
        max_tokens: opt_u32(o, "max_tokens")?.filter(|n| *n > 0),
    })
}

// ----- shapes ----------------------------------------------------------------

/// A finished answer as the REST reply: `ChatResponse`, or `{"content"}`.
pub fn answer_response(a: &Answer) -> Response {
    let body = match a.shape {
        Shape::Chat => json!({
            "chat_id": a.chat_id,
            "message_id": a.message_id,
            "responses": [a.content],
            "context_snippets": a.snippets,
            "execution_time_ms": a.execution_time_ms,
            "token_usage": a.token_usage,
        }),
        Shape::Raw => json!({ "content": a.content }),
    };
    Response::json(200, serde_json::to_vec(&body).unwrap_or_default())
}

/// A stored message as a record (`id` plain, the rest wrapped).
fn message_wire(found: &Found<'_>) -> J {
    serde_json::to_value(RecordOut::new("id", found.id, found.record)).unwrap_or(J::Null)
}

/// The session as clients read it; when the offline provider stands in for
/// the one it names, its model says so.
fn session_wire(server: &Server, s: &Session, now: Timestamp) -> J {
    let count = store::message_count(server.engine(), &s.chat_id, now);
    let choice = providers::choose(server.config(), &s.llm_provider, &s.llm_model).ok();
    let standing_in = choice
        .as_ref()
        .and_then(|c| c.fallback.as_deref())
        .map(|why| (OFFLINE_MODEL, why));
    s.to_wire(count, standing_in)
}

fn session_response(server: &Server, ctx: &Ctx<'_>, s: &Session) -> Result<Outcome> {
    let count = store::message_count(server.engine(), &s.chat_id, ctx.now);
    let body = json!({"session": session_wire(server, s, ctx.now), "message_count": count});
    ctx.ok_json(&body).map(Outcome::Reply)
}

fn created(ctx: &Ctx<'_>, chat_id: &str) -> Result<Outcome> {
    ctx.ok_json(&json!({
        "chat_id": chat_id, "message_id": "", "responses": [],
        "context_snippets": [], "execution_time_ms": 0,
    }))
    .map(Outcome::Reply)
}

fn ok(ctx: &Ctx<'_>) -> Result<Outcome> {
    ctx.ok_json(&json!({"ok": true})).map(Outcome::Reply)
}

/// `limit`, `skip` and `sort` of a list call.
fn paging(ctx: &Ctx<'_>, default_desc: bool) -> Result<(Option<usize>, usize, bool)> {
    let num = |k: &str| -> Result<Option<usize>> {
        match ctx.param(k) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Error::invalid(format!("`{k}` must be a non-negative integer"))),
        }
    };
    let desc = match ctx.param("sort") {
        None | Some("") => default_desc,
        Some(s) if s.eq_ignore_ascii_case("desc") => true,
        Some(s) if s.eq_ignore_ascii_case("asc") => false,
        Some(s) => {
            return Err(Error::invalid(format!(
                "`sort` must be asc or desc, not `{s}`"
            )))
        }
    };
    Ok((num("limit")?, num("skip")?.unwrap_or(0), desc))
}

// ----- sessions --------------------------------------------------------------

/// Fills what a new session left out: the default provider, its model.
fn fill_defaults(server: &Server, s: &mut Session) -> Result<()> {
    let name = s.llm_provider.trim().to_ascii_lowercase();
    if !name.is_empty() && !providers::is_known(&name) {
        return Err(Error::invalid(format!(
            "unknown provider `{name}` (openai, anthropic, perplexity, gemini, local, offline)"
        )));
    }
    if name.is_empty() {
        let choice = providers::choose(server.config(), "", &s.llm_model).ok();
        s.llm_provider = choice
            .as_ref()
            .map_or(OFFLINE.to_string(), |c| c.provider.name.clone());
    } else {
        s.llm_provider = name;
    }
    if s.llm_model.is_empty() {
        s.llm_model = providers::default_model(server.config(), &s.llm_provider);
    }
    match providers::choose(server.config(), &s.llm_provider, &s.llm_model) {
        Err(f) if f.status.is_none() && f.kind == providers::FailureKind::RequestError => {
            Err(Error::invalid(f.message))
        }
        _ => Ok(()),
    }
}

pub fn create(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let s = new_session(server, &ctx.body()?, ctx.now)?;
    created(ctx, &s.chat_id)
}

/// Creates and stores a chat session from a create request's body (also
/// how the other dialects open their sessions and conversations).
pub fn new_session(server: &mut Server, body: &J, now: Timestamp) -> Result<Session> {
    server.check_writable()?;
    let id = server.engine_mut().new_id(now);
    let mut s = Session::from_request(id, body, now)?;
    s.parent_id = None;
    s.branch_point_idx = None;
    fill_defaults(server, &mut s)?;
    store::save_session(server.engine_mut(), &s, now)?;
    Ok(s)
}

pub fn list(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let (limit, skip, desc) = paging(ctx, true)?;
    let mut sessions = store::list_sessions(server.engine(), ctx.now);
    sessions.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.chat_id.cmp(&b.chat_id))
    });
    if desc {
        sessions.reverse();
    }
    let total = sessions.len();
    let page: Vec<J> = sessions
        .iter()
        .skip(skip)
        .take(limit.unwrap_or(usize::MAX))
        .map(|s| session_wire(server, s, ctx.now))
        .collect();
    ctx.ok_json(&json!({
        "sessions": page, "total": total, "returned": page.len(), "skip": skip, "limit": limit,
    }))
    .map(Outcome::Reply)
}

pub fn get(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let s = store::load_session(server.engine(), ctx.arg("chat_id"), ctx.now)?;
    session_response(server, ctx, &s)
}

pub fn update(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let mut s = store::load_session(server.engine(), ctx.arg("chat_id"), ctx.now)?;
    s.apply_update(&ctx.body()?, ctx.now)?;
    store::save_session(server.engine_mut(), &s, ctx.now)?;
    session_response(server, ctx, &s)
}

pub fn delete(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let chat_id = ctx.arg("chat_id");
    store::delete_session(server.engine_mut(), chat_id, ctx.now)?;
    server.chat_deleted(chat_id, ctx.now);
    ok(ctx)
}

/// A new session from a parent's settings (the request's override them) and
/// its messages up to `branch_point_idx` (inclusive; absent: all).
pub fn branch(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let body = ctx.body()?;
    let parent_id = opt_str(object(&body)?, "parent_id")?
        .ok_or_else(|| Error::invalid("`parent_id` is required"))?;
    let parent = store::load_session(server.engine(), &parent_id, ctx.now)?;
    let id = server.engine_mut().new_id(ctx.now);
    let mut s = Session::from_request(id, &body, ctx.now)?;
    if s.collections.is_empty() {
        s.collections = parent.collections.clone();
    }
    if s.llm_provider.is_empty()
        || (s.llm_model.is_empty() && s.llm_provider == parent.llm_provider)
    {
        s.llm_provider = parent.llm_provider.clone();
        if s.llm_model.is_empty() {
            s.llm_model = parent.llm_model.clone();
        }
    }
    s.system_prompt = s.system_prompt.or(parent.system_prompt.clone());
    s.tool_config = s.tool_config.or(parent.tool_config.clone());
    s.max_context_messages = s.max_context_messages.or(parent.max_context_messages);
    s.max_tokens = s.max_tokens.or(parent.max_tokens);
    s.temperature = s.temperature.or(parent.temperature);
    s.memory = s.memory.or(parent.memory.clone());
    s.title = s.title.or(parent.title.clone());
    s.parent_id = Some(parent_id.clone());
    fill_defaults(server, &mut s)?;
    let messages = store::messages(server.engine(), &parent_id, ctx.now);
    let upto = s
        .branch_point_idx
        .map_or(messages.len(), |i| (i + 1).min(messages.len()));
    copy_messages(server, &mut s, &messages[..upto], ctx.now)?;
    created(ctx, &s.chat_id)
}

/// Appends copies of messages to a session (in the given order) and saves it.
fn copy_messages(
    server: &mut Server,
    s: &mut Session,
    messages: &[Message],
    now: Timestamp,
) -> Result<()> {
    for m in messages {
        let mut copy = m.clone();
        copy.chat_id = s.chat_id.clone();
        copy.seq = s.next_seq;
        copy.id = store::message_id(&s.chat_id, s.next_seq);
        s.next_seq += 1;
        store::save_message(server.engine_mut(), &copy, now)?;
    }
    s.updated_at = now;
    store::save_session(server.engine_mut(), s, now)
}

/// Copies the sources' messages into the target (spec E2 merge strategies).
pub fn merge(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let body = ctx.body()?;
    let o = object(&body)?;
    let target_id = opt_str(o, "target_chat_id")?
        .ok_or_else(|| Error::invalid("`target_chat_id` is required"))?;
    let sources = names(o, "source_chat_ids")?;
    if sources.is_empty() {
        return Err(Error::invalid(
            "`source_chat_ids` must name at least one chat",
        ));
    }
    let strategy = opt_str(o, "merge_strategy")?.unwrap_or_else(|| "Chronological".into());
    let mut target = store::load_session(server.engine(), &target_id, ctx.now)?;
    let mut per_source: Vec<Vec<Message>> = Vec::new();
    for id in &sources {
        if *id == target_id {
            return Err(Error::invalid("a chat cannot be merged into itself"));
        }
        store::load_session(server.engine(), id, ctx.now)?;
        per_source.push(store::messages(server.engine(), id, ctx.now));
    }
    let merged: Vec<Message> = match strategy.as_str() {
        "Chronological" => {
            let mut all: Vec<Message> = per_source.into_iter().flatten().collect();
            all.sort_by(|a, b| {
                a.created_at
                    .cmp(&b.created_at)
                    .then_with(|| a.id.cmp(&b.id))
            });
            all
        }
        "Interleaved" => {
            let mut out = Vec::new();
            let longest = per_source.iter().map(Vec::len).max().unwrap_or(0);
            for i in 0..longest {
                for msgs in &per_source {
                    out.extend(msgs.get(i).cloned());
                }
            }
            out
        }
        "LatestOnly" => per_source
            .iter()
            .flat_map(|msgs| {
                let last_user = msgs.iter().rposition(|m| m.role == Role::User);
                last_user
                    .map_or(&msgs[msgs.len().saturating_sub(1)..], |i| &msgs[i..])
                    .to_vec()
            })
            .collect(),
        "Summarized" => per_source
            .iter()
            .zip(&sources)
            .filter(|(msgs, _)| !msgs.is_empty())
            .map(|(msgs, id)| {
                let pairs: Vec<(Role, String)> =
                    msgs.iter().map(|m| (m.role, m.content.clone())).collect();
                let mut m = Message::new(
                    id,
                    0,
                    Role::System,
                    format!("From chat {id}. {}", offline::summarize(&pairs)),
                    ctx.now,
                );
                m.summary = true;
                m
            })
            .collect(),
        other => {
            return Err(Error::invalid(format!(
            "unknown merge_strategy `{other}` (Chronological, Summarized, LatestOnly, Interleaved)"
        )))
        }
    };
    copy_messages(server, &mut target, &merged, ctx.now)?;
    session_response(server, ctx, &target)
}

// ----- messages --------------------------------------------------------------

pub fn messages(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let chat_id = ctx.arg("chat_id");
    store::load_session(server.engine(), chat_id, ctx.now)?;
    let (limit, skip, desc) = paging(ctx, false)?;
    let prefix = format!("{chat_id}_");
    let mut all: Vec<Found<'_>> = server
        .engine()
        .with_id_prefix(store::MESSAGES, &prefix, ctx.now)
        .collect();
    if desc {
        all.reverse();
    }
    let total = all.len();
    let page: Vec<J> = all
        .iter()
        .skip(skip)
        .take(limit.unwrap_or(usize::MAX))
        .map(message_wire)
        .collect();
    ctx.ok_json(&json!({
        "messages": page, "total": total, "skip": skip, "returned": page.len(), "limit": limit,
    }))
    .map(Outcome::Reply)
}

fn message_reply(server: &Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let found = store::message_record(
        server.engine(),
        ctx.arg("chat_id"),
        ctx.arg("message_id"),
        ctx.now,
    )?;
    ctx.ok_json(&message_wire(&found)).map(Outcome::Reply)
}

pub fn message(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    store::load_session(server.engine(), ctx.arg("chat_id"), ctx.now)?;
    message_reply(server, ctx)
}

/// Changes a stored message (its content, or whether it is forgotten).
fn edit(server: &mut Server, ctx: &Ctx<'_>, change: impl FnOnce(&mut Message)) -> Result<Outcome> {
    let chat_id = ctx.arg("chat_id");
    store::load_session(server.engine(), chat_id, ctx.now)?;
    let mut m = store::load_message(server.engine(), chat_id, ctx.arg("message_id"), ctx.now)?;
    change(&mut m);
    store::save_message(server.engine_mut(), &m, ctx.now)?;
    message_reply(server, ctx)
}

pub fn update_message(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let body = ctx.body()?;
    let content = opt_str(object(&body)?, "content")?
        .ok_or_else(|| Error::invalid("`content` is required (a string)"))?;
    edit(server, ctx, |m| m.content = content)
}

pub fn forget_message(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let body = ctx.body()?;
    let forgotten = match object(&body)?.get("forgotten") {
        Some(J::Bool(b)) => *b,
        _ => return Err(Error::invalid("`forgotten` is required (true or false)")),
    };
    edit(server, ctx, |m| m.forgotten = forgotten)
}

pub fn delete_message(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let chat_id = ctx.arg("chat_id");
    store::load_session(server.engine(), chat_id, ctx.now)?;
    store::delete_message(server.engine_mut(), chat_id, ctx.arg("message_id"), ctx.now)?;
    ok(ctx)
}

// ----- answers ---------------------------------------------------------------

/// Runs a turn whose whole answer is the reply.
fn pending_answer(
    server: &mut Server,
    ctx: &Ctx<'_>,
    start: impl FnOnce(&mut Server, Listener) -> Result<Started>,
) -> Result<Outcome> {
    let conn = ctx
        .conn
        .ok_or_else(|| Error::internal("an answer needs a connection to go to"))?;
    let ticket = server.reply_ticket(conn);
    match start(server, Listener::Reply(ticket)) {
        Ok(_) => Ok(Outcome::Pending(ticket)),
        Err(e) => {
            server.cancel_ticket(ticket);
            Err(e)
        }
    }
}

fn stream(started: Started) -> Outcome {
    Outcome::Upgrade(
        Response::new(200, "text/event-stream", ""),
        Box::new(Upgrade::ChatStream {
            chat_key: started.chat_key,
            message_id: Some(started.message_id),
            after: None,
        }),
    )
}

/// `POST /api/chat/{id}/messages`: the whole answer (client tools need a
/// stream, so they are ignored here).
pub fn send(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let req = parse_send(&ctx.body()?, false)?;
    let chat_id = ctx.arg("chat_id").to_string();
    pending_answer(server, ctx, |s, l| {
        s.chat_send(&chat_id, req, Some(l), ctx.now)
    })
}

/// `POST /api/chat/{id}/messages/stream`: the answer as SSE.
pub fn send_stream(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let req = parse_send(&ctx.body()?, true)?;
    server
        .chat_send(ctx.arg("chat_id"), req, None, ctx.now)
        .map(stream)
}

pub fn regenerate(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let chat_id = ctx.arg("chat_id").to_string();
    let mid = ctx.arg("message_id").to_string();
    pending_answer(server, ctx, |s, l| {
        s.chat_regenerate(&chat_id, &mid, Some(l), ctx.now)
    })
}

/// `GET /api/chat/{id}/messages/{mid}/stream`: follows an answer (running,
/// or finished and kept), from after `Last-Event-ID` when given.
pub fn resume(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let chat_id = ctx.arg("chat_id");
    let mid = ctx.arg("message_id");
    store::load_session(server.engine(), chat_id, ctx.now)?;
    let after = match ctx.header("last-event-id").or(ctx.param("last_event_id")) {
        None | Some("") => None,
        Some(text) => match parse_event_id(text) {
            Some((m, seq)) if m == mid => Some(seq),
            _ => {
                return Err(Error::invalid(format!(
                    "Last-Event-ID `{text}` is not an event of message {mid} (like {mid}:3)"
                )))
            }
        },
    };
    if !server.chat_log_known(chat_id, Some(mid)) {
        // The events are gone, but a stored answer can still be sent whole.
        let m = store::load_message(server.engine(), chat_id, mid, ctx.now)?;
        if m.role != Role::Assistant {
            return Err(Error::invalid(
                "only an answer (an assistant message) can be streamed",
            ));
        }
    }
    Ok(Outcome::Upgrade(
        Response::new(200, "text/event-stream", ""),
        Box::new(Upgrade::ChatStream {
            chat_key: chat_id.to_string(),
            message_id: Some(mid.to_string()),
            after,
        }),
    ))
}

pub fn cancel(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let chat_id = ctx.arg("chat_id");
    store::load_session(server.engine(), chat_id, ctx.now)?;
    if !server.chat_cancel(chat_id, ctx.now) {
        return Err(Error::conflict(format!(
            "no answer is running in chat {chat_id}: nothing to cancel"
        )));
    }
    ctx.ok_json(&json!({ "cancelled": true }))
        .map(Outcome::Reply)
}

pub fn tool_result(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let body = ctx.body()?;
    let o = object(&body)?;
    let call_id = opt_str(o, "call_id")?.ok_or_else(|| Error::invalid("`call_id` is required"))?;
    let outcome = if o.get("keepalive").and_then(J::as_bool) == Some(true) {
        None
    } else {
        let success = o
            .get("success")
            .and_then(J::as_bool)
            .ok_or_else(|| Error::invalid("`success` is required (true or false)"))?;
        let value = if success {
            o.get("result").cloned().unwrap_or(J::Null)
        } else {
            J::String(opt_str(o, "error")?.unwrap_or_else(|| "the client tool failed".into()))
        };
        Some((success, value))
    };
    server.chat_tool_result(ctx.arg("chat_id"), &call_id, outcome, ctx.now)?;
    ok(ctx)
}

/// Folds older messages into one summary (they stay listed, forgotten).
pub fn compact(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let chat_id = ctx.arg("chat_id");
    let mut s = store::load_session(server.engine(), chat_id, ctx.now)?;
    let body = ctx.body()?;
    let keep = match object(&body)?.get("keep_recent") {
        None | Some(J::Null) => s.max_context_messages(),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| Error::invalid("`keep_recent` must be a non-negative integer"))?
            as usize,
    };
    let f = compact::fold(server.engine_mut(), &mut s, keep, ctx.now)?;
    ctx.ok_json(&json!({
        "folded": f.folded, "kept_recent": f.kept, "summary_chars": f.summary_chars,
        "summary_message_id": f.summary_id, "already_compact": f.folded == 0,
    }))
    .map(Outcome::Reply)
}

// ----- tools, models, raw completions ------------------------------------------

pub fn tool_catalog(_server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    ctx.ok_json(&tools::catalog()).map(Outcome::Reply)
}

/// Runs a server tool directly: the same limits as in a chat (the chat's
/// tool config when `chat_id` is given; read-only otherwise).
pub fn tool_execute(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let body = ctx.body()?;
    let o = object(&body)?;
    let tool = opt_str(o, "tool")?.ok_or_else(|| Error::invalid("`tool` is required"))?;
    let params = o.get("params").cloned().unwrap_or_else(|| json!({}));
    // Failures are the tool's answer, never a 404: the clients read 404 here
    // as "this server has no tool endpoint".
    let fail = |error: String| {
        ctx.ok_json(&json!({"success": false, "error": error}))
            .map(Outcome::Reply)
    };
    let policy = match opt_str(o, "chat_id")? {
        Some(chat_id) => match store::load_session(server.engine(), &chat_id, ctx.now) {
            Ok(s) => {
                let names = s.collections.iter().map(|c| c.name.clone()).collect();
                Policy::new(s.tool_config.as_ref(), None, names)
            }
            Err(e) => return fail(e.message),
        },
        None => Policy::new(None, None, Vec::new()),
    };
    let out = match tools::execute(server.engine_mut(), &policy, &tool, &params, ctx.now) {
        Ok(result) => json!({"success": true, "result": result}),
        Err(error) => json!({"success": false, "error": error}),
    };
    ctx.ok_json(&out).map(Outcome::Reply)
}

/// Models per provider, and each provider's state.
pub fn models(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let configured = providers::configured(server.config());
    let mut out = json!({
        "openai": [], "anthropic": [], "perplexity": [], "gemini": [],
        OFFLINE: [OFFLINE_MODEL],
    });
    let mut states = Map::new();
    for name in ["openai", "anthropic", "perplexity", "gemini", "local"] {
        let state = match configured.iter().find(|p| p.name == name) {
            Some(p) => {
                out[name] = json!([p.default_model]);
                json!({"status": "ok", "verified": false, "model_count": 1,
                    "message": "configured; the key is checked on first use"})
            }
            None => json!({"status": "not_configured", "verified": false,
                "message": "no API key configured"}),
        };
        states.insert(name.into(), state);
    }
    states.insert(
        OFFLINE.into(),
        json!({"status": "ok", "verified": true, "model_count": 1,
            "message": "built in: answers from your data without a language model"}),
    );
    out["providers"] = J::Object(states);
    ctx.ok_json(&out).map(Outcome::Reply)
}

pub fn provider_models(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let name = ctx.arg("provider").to_ascii_lowercase();
    if !providers::is_known(&name) {
        return Err(Error::not_found(format!("unknown provider `{name}`")));
    }
    let list: Vec<String> = if name == OFFLINE || name == "tidepool" {
        vec![OFFLINE_MODEL.into()]
    } else {
        providers::configured(server.config())
            .into_iter()
            .filter(|p| p.name == name)
            .map(|p| p.default_model)
            .collect()
    };
    ctx.ok_json(&list).map(Outcome::Reply)
}

pub fn complete(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let req = parse_raw(&ctx.body()?)?;
    pending_answer(server, ctx, |s, l| s.raw_complete(req, Some(l), ctx.now))
}

pub fn complete_stream(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let req = parse_raw(&ctx.body()?)?;
    server.raw_complete(req, None, ctx.now).map(stream)
}
