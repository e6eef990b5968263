//! Fluxbase AI chat over WebSocket (`/ai/ws`; seed 003, `spec/dialects.md`
//! §3) and its chatbots.
//!
//! A chatbot is a named chat configuration (system prompt, collections,
//! provider, model, tool config) in a namespace, stored durably and managed
//! through `/api/v1/ai/chatbots`; `sql-assistant` in `default` (a read-only
//! query assistant over every collection) always exists. `start_chat`
//! opens a conversation (an ordinary chat session) or resumes one; only
//! conversations started or resumed on this connection take `message`s
//! (`NO_SESSION`). An answer is `progress{thinking}`,
//! `progress{generating}`, `content`*, `done{usage}`; a query tool's rows
//! come as `query_result`; `cancel` ends the answer with `cancelled`.
//! A bad token is refused at the upgrade (401), as the real server does.

use super::rest::{Ctx, Outcome};
use super::socket::{self, RateWindow, Unreadable};
use super::{Followup, Outgoing};
use crate::chat::event::{ChatEvent, ChatEventKind};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::ConnId;
use crate::server::Server;
use crate::time::Timestamp;
use crate::value::Value;
use crate::wire::ws::Incoming;
use bytes::Bytes;
use serde_json::{json, Map, Value as J};

/// Where chatbots are kept (an internal collection: logged and replayed).
pub const CHATBOTS: &str = "chatbots__ek0_tidepool";
/// The chatbot of the seed document's example, always present.
pub const SQL_ASSISTANT: &str = "sql-assistant";
const DEFAULT_NAMESPACE: &str = "default";
/// No limit is documented for `/ai/ws`; this bounds memory per frame.
const MAX_FRAME: usize = 256 * 1024;
/// Conversations one connection may have open.
const MAX_CONVERSATIONS: usize = 64;

const SQL_ASSISTANT_PROMPT: &str = "You are a read-only query assistant for this database. \
Answer questions about the data by querying the collections with your tools; never change data. \
Say which collection and filter you used.";

/// A named chat configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Chatbot {
    pub name: String,
    pub namespace: String,
    pub description: String,
    pub system_prompt: String,
    /// Collections it retrieves from and queries (empty: every collection).
    pub collections: Vec<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// The chat tool config (spec E6); `None`: read-only tools.
    pub tool_config: Option<J>,
}

impl Chatbot {
    fn builtin() -> Chatbot {
        Chatbot {
            name: SQL_ASSISTANT.into(),
            namespace: DEFAULT_NAMESPACE.into(),
            description: "A read-only query assistant over the collections you may read".into(),
            system_prompt: SQL_ASSISTANT_PROMPT.into(),
            collections: Vec::new(),
            provider: None,
            model: None,
            tool_config: None,
        }
    }

    fn key(namespace: &str, name: &str) -> String {
        format!("{namespace}/{name}")
    }

    pub fn to_wire(&self) -> J {
        json!({
            "name": self.name, "namespace": self.namespace, "description": self.description,
            "system_prompt": self.system_prompt, "collections": self.collections,
            "llm_provider": self.provider, "llm_model": self.model, "tool_config": self.tool_config,
        })
    }

    fn parse(body: &J) -> Result<Chatbot> {
        let o = body
            .as_object()
            .ok_or_else(|| Error::invalid("a chatbot is a JSON object"))?;
        let text = |k: &str| o.get(k).and_then(J::as_str).map(str::to_string);
        let name = text("name")
            .filter(|n| !n.is_empty() && n.len() <= 128 && !n.contains('/'))
            .ok_or_else(|| Error::invalid("`name` is required (1 to 128 characters, no `/`)"))?;
        let namespace = text("namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        if namespace.is_empty() || namespace.len() > 128 || namespace.contains('/') {
            return Err(Error::invalid(
                "`namespace` must be 1 to 128 characters, no `/`",
            ));
        }
        let collections = match o.get("collections") {
            None | Some(J::Null) => Vec::new(),
            Some(J::Array(a)) => a
                .iter()
                .map(|c| {
                    c.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| Error::invalid("`collections` is a list of names"))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(Error::invalid("`collections` is a list of names")),
        };
        Ok(Chatbot {
            name,
            namespace,
            description: text("description").unwrap_or_default(),
            system_prompt: text("system_prompt").unwrap_or_default(),
            collections,
            provider: text("llm_provider"),
            model: text("llm_model"),
            tool_config: o.get("tool_config").filter(|v| v.is_object()).cloned(),
        })
    }

    fn from_record(r: &crate::engine::record::Record) -> Option<Chatbot> {
        match r.get("config") {
            Some(Value::String(s)) => serde_json::from_str::<J>(s)
                .ok()
                .and_then(|j| Chatbot::parse(&j).ok()),
            _ => None,
        }
    }
}

/// The chatbots of a `--fluxbase-chatbots` file: a JSON array of chatbots in
/// the shape `POST /api/v1/ai/chatbots` takes.
pub fn parse_chatbots(text: &str) -> std::result::Result<Vec<Chatbot>, String> {
    let list: J = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let items = list
        .as_array()
        .ok_or("a JSON array of chatbots is expected")?;
    let mut bots: Vec<Chatbot> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let bot = Chatbot::parse(item).map_err(|e| format!("chatbot {i}: {}", e.message))?;
        if bots
            .iter()
            .any(|b| b.namespace == bot.namespace && b.name == bot.name)
        {
            return Err(format!(
                "chatbot {i}: {}/{} appears twice",
                bot.namespace, bot.name
            ));
        }
        bots.push(bot);
    }
    Ok(bots)
}

/// A chatbot by namespace and name: stored through the API, else from the
/// config file, else the built-in one.
pub fn chatbot(server: &Server, namespace: &str, name: &str, now: Timestamp) -> Option<Chatbot> {
    let stored = server
        .engine()
        .get_internal(CHATBOTS, &Chatbot::key(namespace, name), now)
        .and_then(|f| Chatbot::from_record(f.record));
    stored
        .or_else(|| {
            server
                .configured_chatbots()
                .iter()
                .find(|b| b.namespace == namespace && b.name == name)
                .cloned()
        })
        .or_else(|| {
            (namespace == DEFAULT_NAMESPACE && name == SQL_ASSISTANT).then(Chatbot::builtin)
        })
}

fn all_chatbots(server: &Server, now: Timestamp) -> Vec<Chatbot> {
    let mut bots: Vec<Chatbot> = server
        .engine()
        .with_id_prefix(CHATBOTS, "", now)
        .filter_map(|f| Chatbot::from_record(f.record))
        .collect();
    let builtin = std::iter::once(Chatbot::builtin());
    for b in server.configured_chatbots().iter().cloned().chain(builtin) {
        if !bots
            .iter()
            .any(|x| x.namespace == b.namespace && x.name == b.name)
        {
            bots.push(b);
        }
    }
    bots
}

// ----- REST: /api/v1/ai/chatbots ---------------------------------------------

/// `GET /api/v1/ai/chatbots[?namespace=]`
pub fn list(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let ns = ctx.param("namespace");
    let bots: Vec<J> = all_chatbots(server, ctx.now)
        .iter()
        .filter(|b| ns.is_none_or(|n| n == b.namespace))
        .map(Chatbot::to_wire)
        .collect();
    ctx.ok_json(&json!({ "chatbots": bots, "count": bots.len() }))
        .map(Outcome::Reply)
}

/// `GET /api/v1/ai/chatbots/by-name/{name}[?namespace=]`
pub fn get(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let ns = ctx.param("namespace").unwrap_or(DEFAULT_NAMESPACE);
    let bot = chatbot(server, ns, ctx.arg("name"), ctx.now)
        .ok_or_else(|| Error::not_found(format!("no chatbot `{}` in `{ns}`", ctx.arg("name"))))?;
    ctx.ok_json(&bot.to_wire()).map(Outcome::Reply)
}

/// `POST /api/v1/ai/chatbots`: creates or replaces a chatbot.
pub fn put(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let bot = Chatbot::parse(&ctx.body()?)?;
    server.check_writable()?;
    let config = Value::String(bot.to_wire().to_string().into());
    server.engine_mut().put_internal(
        CHATBOTS,
        &Chatbot::key(&bot.namespace, &bot.name),
        vec![("config", config)],
        ctx.now,
    )?;
    ctx.ok_json(&bot.to_wire()).map(Outcome::Reply)
}

/// `DELETE /api/v1/ai/chatbots/{namespace}/{name}`
pub fn delete(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let key = Chatbot::key(ctx.arg("namespace"), ctx.arg("name"));
    if !server.engine_mut().purge(CHATBOTS, &key) {
        let configured = server
            .configured_chatbots()
            .iter()
            .any(|b| Chatbot::key(&b.namespace, &b.name) == key);
        let why = if configured {
            "is defined in the --fluxbase-chatbots file (edit it there)"
        } else {
            "is not stored"
        };
        return Err(Error::not_found(format!("chatbot `{key}` {why}")));
    }
    ctx.ok_json(&json!({ "deleted": key })).map(Outcome::Reply)
}

// ----- the socket --------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Conversations started or resumed on this connection.
    conversations: Vec<String>,
    /// The upgrade carried a valid credential. Anonymous sockets are let in
    /// (as the real server does) but may not chat: a chatbot reads the
    /// database.
    signed_in: bool,
    new_conversations: RateWindow,
}

/// `GET /ai/ws`: refused with 401 for a bad token, anonymous without one.
pub fn upgrade(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let bearer = ctx.header("authorization").and_then(|h| {
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    });
    let mut signed_in = false;
    if let Some(token) = ctx.param("token").or(bearer) {
        if socket::open_chat_with_credential(server, ctx.conn, token, ctx.now).is_none() {
            return Err(Error::new(
                ErrorKind::Unauthorized,
                "Invalid or expired Bearer token",
            ));
        }
        signed_in = true;
    }
    let session = Session {
        conversations: Vec::new(),
        signed_in,
        new_conversations: socket::new_chats_window(),
    };
    super::rest::system::upgrade_to(ctx, super::WsSession::Fluxbase(session), None)
}

fn error(code: &str, message: &str, conversation: Option<&str>) -> Outgoing {
    let mut v = json!({"type": "error", "error": message, "code": code});
    if let Some(c) = conversation {
        v["conversation_id"] = J::String(c.into());
    }
    Outgoing::json(&v)
}

pub fn handle(
    s: &mut Session,
    server: &mut Server,
    conn: ConnId,
    msg: &Incoming,
    now: Timestamp,
) -> (Vec<Outgoing>, Followup) {
    let frame = match socket::read_frame(msg, MAX_FRAME, |why| match why {
        Unreadable::TooLarge => error("INVALID_MESSAGE", "Message too large", None),
        Unreadable::Malformed => error("INVALID_MESSAGE", "Invalid message format", None),
    }) {
        Ok(f) => f,
        Err(reply) => return reply,
    };
    let reply = match socket::str_field(&frame, "type").unwrap_or_default() {
        "start_chat" => start_chat(s, server, &frame, now),
        "message" => message(s, server, conn, &frame, now),
        "cancel" => {
            let id = socket::str_field(&frame, "conversation_id").unwrap_or_default();
            if !s.conversations.iter().any(|c| c == id) {
                vec![error("NO_SESSION", "No active chat session", Some(id))]
            } else {
                let running = server.chat_cancel(id, now);
                let lsn = server.finish_operation(now);
                if running {
                    // The `cancelled` frame comes from the answer's end, in order.
                    Vec::new()
                } else {
                    vec![Outgoing {
                        wait_for: lsn,
                        ..Outgoing::json(&json!({"type": "cancelled", "conversation_id": id}))
                    }]
                }
            }
        }
        other => vec![error(
            "UNKNOWN_TYPE",
            &format!("Unknown message type: {other}"),
            None,
        )],
    };
    (reply, Followup::None)
}

fn start_chat(
    s: &mut Session,
    server: &mut Server,
    frame: &Map<String, J>,
    now: Timestamp,
) -> Vec<Outgoing> {
    if !s.signed_in {
        return vec![error(
            "AUTH_REQUIRED",
            "Sign in to chat: connect with ?token=<token> (chatbots read the database)",
            None,
        )];
    }
    let name = socket::str_field(frame, "chatbot").unwrap_or_default();
    let ns = socket::str_field(frame, "namespace").unwrap_or(DEFAULT_NAMESPACE);
    let Some(bot) = chatbot(server, ns, name, now) else {
        return vec![error(
            "CHATBOT_NOT_FOUND",
            &format!("Chatbot not found: {ns}/{name}"),
            None,
        )];
    };
    // Resuming an existing conversation; an unknown id silently starts anew.
    let resumed = socket::str_field(frame, "conversation_id")
        .filter(|id| socket::chat_exists(server, id, now))
        .map(str::to_string);
    let id = match resumed {
        Some(id) => id,
        None if !s.new_conversations.admit(now) => {
            return vec![error(
                "RATE_LIMITED",
                "Too many new conversations; resume one or wait a minute",
                None,
            )]
        }
        None => match open_conversation(server, &bot, now) {
            Ok(id) => id,
            Err(e) => return vec![error("CONVERSATION_ERROR", &e.message, None)],
        },
    };
    if !s.conversations.contains(&id) {
        if s.conversations.len() >= MAX_CONVERSATIONS {
            s.conversations.remove(0);
        }
        s.conversations.push(id.clone());
    }
    let lsn = server.finish_operation(now);
    vec![Outgoing {
        wait_for: lsn,
        ..Outgoing::json(
            &json!({"type": "chat_started", "conversation_id": id, "chatbot": bot.name}),
        )
    }]
}

fn open_conversation(server: &mut Server, bot: &Chatbot, now: Timestamp) -> Result<String> {
    let names: Vec<String> = if bot.collections.is_empty() {
        server
            .engine()
            .collection_names()
            .map(str::to_string)
            .collect()
    } else {
        bot.collections.clone()
    };
    let collections: Vec<J> = names
        .iter()
        .map(|c| json!({ "collection_name": c }))
        .collect();
    let mut body = json!({
        "collections": collections,
        "system_prompt": bot.system_prompt,
        "title": format!("{}/{}", bot.namespace, bot.name),
    });
    if let Some(p) = &bot.provider {
        body["llm_provider"] = J::String(p.clone());
    }
    if let Some(m) = &bot.model {
        body["llm_model"] = J::String(m.clone());
    }
    if let Some(t) = &bot.tool_config {
        body["tool_config"] = t.clone();
    }
    Ok(super::rest::chat::new_session(server, &body, now)?.chat_id)
}

fn message(
    s: &Session,
    server: &mut Server,
    conn: ConnId,
    frame: &Map<String, J>,
    now: Timestamp,
) -> Vec<Outgoing> {
    let id = socket::str_field(frame, "conversation_id").unwrap_or_default();
    if !s.conversations.iter().any(|c| c == id) {
        return vec![error("NO_SESSION", "No active chat session", Some(id))];
    }
    let content = frame.get("content").and_then(J::as_str).unwrap_or_default();
    match socket::send(server, conn, id, content, now) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let lsn = server.finish_operation(now);
            let code = match e.kind {
                ErrorKind::Conflict => "TURN_LIMIT",
                ErrorKind::Invalid => "INVALID_MESSAGE",
                _ => "PROVIDER_ERROR",
            };
            vec![Outgoing {
                wait_for: lsn,
                ..error(code, &e.message, Some(id))
            }]
        }
    }
}

/// A chat event as Fluxbase frames.
pub fn encode_chat_event(e: &ChatEvent) -> Option<Bytes> {
    let c = &e.chat_id;
    let frames = match &e.kind {
        ChatEventKind::Started => vec![
            json!({"type": "progress", "conversation_id": c, "step": "thinking", "message": "Retrieving context"}),
            json!({"type": "progress", "conversation_id": c, "step": "generating", "message": "Generating the answer"}),
        ],
        ChatEventKind::Token(t) if !t.is_empty() => {
            vec![json!({"type": "content", "conversation_id": c, "delta": t})]
        }
        ChatEventKind::Token(_) => return None,
        ChatEventKind::ToolCall { tool, .. } => vec![json!({
            "type": "progress", "conversation_id": c, "step": "querying",
            "message": format!("Running {tool}"),
        })],
        ChatEventKind::ToolResult {
            tool,
            args,
            success,
            result,
            ..
        } => {
            let rows: Vec<J> = match result.get("records").or_else(|| result.get("record")) {
                Some(J::Array(a)) => a.clone(),
                Some(o @ J::Object(_)) => vec![o.clone()],
                _ if result.is_object() && *success => vec![result.clone()],
                _ => Vec::new(),
            };
            let summary = if *success {
                format!("{tool}: {} row(s)", rows.len())
            } else {
                format!("{tool} failed: {}", result.as_str().unwrap_or("error"))
            };
            vec![json!({
                "type": "query_result", "conversation_id": c, "query": args.to_string(),
                "summary": summary, "row_count": rows.len(), "data": rows,
            })]
        }
        ChatEventKind::Done { token_usage, .. } => {
            let n = |k: &str| token_usage.get(k).and_then(J::as_u64).unwrap_or(0);
            let (p, q) = (n("prompt_tokens"), n("completion_tokens"));
            vec![json!({
                "type": "done", "conversation_id": c, "message_id": e.message_id,
                "usage": {"prompt_tokens": p, "completion_tokens": q, "total_tokens": p.saturating_add(q)},
            })]
        }
        ChatEventKind::Error {
            cancelled: true, ..
        } => vec![json!({"type": "cancelled", "conversation_id": c})],
        ChatEventKind::Error { error, .. } => vec![json!({
            "type": "error", "conversation_id": c, "error": error, "code": "PROVIDER_ERROR",
        })],
    };
    Some(socket::frames(&frames))
}

pub fn overflow() -> J {
    json!({"type": "error", "error": "too far behind; reconnect", "code": "STREAM_ERROR"})
}
