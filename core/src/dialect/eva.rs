//! EVA chat over WebSocket (`/eva/ws`; seed 004, `spec/dialects.md` §4).
//!
//! Authentication tries four places in order (Authorization header,
//! `Sec-WebSocket-Protocol: chat, <key>`, `?token=`, `Cookie: token=`) and
//! the first present decides. A refusal is an accepted upgrade, an
//! `INVALID_API_KEY` error frame and close 1008, as the documented clients
//! expect. `start_conversation` opens a conversation (an ordinary chat
//! session) or resumes one; `user_message` is answered with `message`
//! chunks, the last `is_final`, carrying an emotion, the sources and, once
//! the history was summarized, `has_summary` / `summary_version`. The
//! emotion is the model's: a new conversation's system prompt asks it to
//! lead with a tag the turn reads off (`chat::emotion::TagReader`); without
//! one (the offline provider) a small word-list classifier picks it.

use super::rest::{Ctx, Outcome};
use super::socket::{self, RateWindow, Unreadable};
use super::{EventCodec, Followup, Outgoing};
use crate::chat::emotion;
use crate::chat::event::{ChatEvent, ChatEventKind};
use crate::error::Result;
use crate::ids::ConnId;
use crate::server::chat::SendRequest;
use crate::server::Server;
use crate::time::Timestamp;
use crate::wire::ws::Incoming;
use bytes::Bytes;
use serde_json::{json, Value as J};
use std::time::Duration;

/// `user_message` content, in characters (seed 004:200).
pub const MAX_CHARS: usize = 4096;
/// Messages per minute per connection (seed 004:199).
const MESSAGES_PER_MINUTE: usize = 60;
/// Connections per key (seed 004:198).
pub const CONNECTIONS_PER_KEY: usize = 10;
/// Messages (user and assistant) before older ones are summarized (seed
/// 004:190, `SUMMARY_THRESHOLD`).
pub const SUMMARY_THRESHOLD: usize = 30;
/// Frames larger than this are refused before parsing (a 4096-character
/// message is at most 16 KiB of UTF-8, plus JSON).
const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The key the upgrade carried, if any, and whether it was valid.
    key: Option<String>,
    conversation: Option<String>,
    messages: RateWindow,
    new_conversations: RateWindow,
}

/// Where an EVA client put its key: the first present source decides.
fn credential(ctx: &Ctx<'_>) -> Option<String> {
    if let Some(h) = ctx.header("authorization") {
        let key = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .unwrap_or(h);
        return Some(key.trim().to_string());
    }
    if let Some(p) = ctx.header("sec-websocket-protocol") {
        let entries: Vec<&str> = p.split(',').map(str::trim).collect();
        let key = match entries.as_slice() {
            [_, second] => second.rsplit(':').next().unwrap_or_default(),
            _ => "",
        };
        return Some(key.to_string());
    }
    if let Some(t) = ctx.param("token") {
        return Some(t.to_string());
    }
    let cookie = ctx.header("cookie")?;
    cookie
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_string())
}

/// `GET /eva/ws`: always upgrades (answering subprotocol `chat` when the
/// client offered one); the key is judged when the socket opens.
pub fn upgrade(_server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let protocol = ctx
        .header("sec-websocket-protocol")
        .and_then(|p| p.split(',').next())
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty());
    let session = Session {
        key: Some(credential(ctx).unwrap_or_default()),
        conversation: None,
        messages: RateWindow::new(MESSAGES_PER_MINUTE, Duration::from_secs(60)),
        new_conversations: socket::new_chats_window(),
    };
    super::rest::system::upgrade_to(ctx, super::WsSession::Eva(session), protocol)
}

/// `GET /eva/health` (seed 004:394-406).
pub fn health(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let stats = server.stats();
    ctx.ok_json(&json!({
        "status": if server.storage_failure().is_some() { "degraded" } else { "healthy" },
        "timestamp": socket::iso(ctx.now),
        "version": crate::server::VERSION,
        "uptime": server.uptime(ctx.now).as_secs_f64(),
        "active_connections": stats.connections,
    }))
    .map(Outcome::Reply)
}

fn error(code: &str, content: &str, now: Timestamp) -> Outgoing {
    Outgoing::json(&json!({
        "type": "error", "content": content, "emotion": "concerned",
        "metadata": {"error_code": code, "timestamp": socket::iso(now)},
    }))
}

pub fn opened(
    s: &mut Session,
    server: &mut Server,
    conn: ConnId,
    now: Timestamp,
) -> (Vec<Outgoing>, Followup) {
    let key = s.key.take().unwrap_or_default();
    let close = Followup::Close {
        code: 1008,
        reason: "policy violation",
    };
    let Some(principal) = socket::open_chat_with_credential(server, Some(conn), &key, now) else {
        let text = "Invalid or missing API key";
        return (vec![error("INVALID_API_KEY", text, now)], close);
    };
    if !server.socket_claim(
        conn,
        EventCodec::Eva,
        &principal.key_id,
        CONNECTIONS_PER_KEY,
    ) {
        let text = format!("at most {CONNECTIONS_PER_KEY} connections per key");
        return (vec![error("RATE_LIMIT_EXCEEDED", &text, now)], close);
    }
    (Vec::new(), Followup::None)
}

pub fn handle(
    s: &mut Session,
    server: &mut Server,
    conn: ConnId,
    msg: &Incoming,
    now: Timestamp,
) -> (Vec<Outgoing>, Followup) {
    let frame = match socket::read_frame(msg, MAX_FRAME, |why| match why {
        Unreadable::TooLarge => {
            let text = format!("Message too long (at most {MAX_CHARS} characters)");
            error("MESSAGE_TOO_LONG", &text, now)
        }
        Unreadable::Malformed => error(
            "INVALID_FORMAT",
            "Invalid message format: expected a JSON object",
            now,
        ),
    }) {
        Ok(f) => f,
        Err(reply) => return reply,
    };
    let reply = match socket::str_field(&frame, "type").unwrap_or_default() {
        "start_conversation" => start(s, server, frame.get("conversation_id"), now),
        "user_message" => {
            let content = frame.get("content").and_then(J::as_str).unwrap_or_default();
            user_message(s, server, conn, content, now)
        }
        // A keep-alive: no answer.
        "ping" => Vec::new(),
        other => vec![error(
            "INVALID_MESSAGE_TYPE",
            &format!("Unknown message type: {other}"),
            now,
        )],
    };
    (reply, Followup::None)
}

fn start(s: &mut Session, server: &mut Server, id: Option<&J>, now: Timestamp) -> Vec<Outgoing> {
    let id = match id {
        None | Some(J::Null) if !s.new_conversations.admit(now) => {
            return vec![error(
                "RATE_LIMIT_EXCEEDED",
                "Too many new conversations; continue one or wait a minute",
                now,
            )]
        }
        // The model is asked for its emotion (a real provider answers with
        // a tag the turn reads; the offline one ignores it).
        None | Some(J::Null) => match socket::open_chat(server, Some(emotion::INSTRUCTION), now) {
            Ok(id) => id,
            Err(e) => return vec![error("INTERNAL_ERROR", &e.message, now)],
        },
        Some(J::String(id)) if socket::chat_exists(server, id, now) => id.clone(),
        Some(_) => {
            return vec![error(
                "CONVERSATION_NOT_FOUND",
                "Conversation not found",
                now,
            )]
        }
    };
    s.conversation = Some(id.clone());
    let lsn = server.finish_operation(now);
    vec![Outgoing {
        wait_for: lsn,
        ..Outgoing::json(&json!({
            "type": "conversation_started", "conversation_id": id,
            "metadata": {"timestamp": socket::iso(now)},
        }))
    }]
}

fn user_message(
    s: &mut Session,
    server: &mut Server,
    conn: ConnId,
    content: &str,
    now: Timestamp,
) -> Vec<Outgoing> {
    let Some(id) = s.conversation.clone() else {
        let text = "Start a conversation first (start_conversation)";
        return vec![error("NO_ACTIVE_CONVERSATION", text, now)];
    };
    if content.chars().count() > MAX_CHARS {
        let text = format!("Message too long (at most {MAX_CHARS} characters)");
        return vec![error("MESSAGE_TOO_LONG", &text, now)];
    }
    if !s.messages.admit(now) {
        let text =
            format!("Rate limit exceeded: at most {MESSAGES_PER_MINUTE} messages per minute");
        return vec![error("RATE_LIMIT_EXCEEDED", &text, now)];
    }
    let req = SendRequest {
        message: content.to_string(),
        fold_after: Some(SUMMARY_THRESHOLD),
        ..SendRequest::default()
    };
    match server.chat_send(&id, req, None, now) {
        Ok(started) => {
            server.chat_attach(conn, &started.chat_key, Some(&started.message_id), None);
            Vec::new()
        }
        Err(e) => {
            let lsn = server.finish_operation(now);
            let code = match e.kind {
                crate::error::ErrorKind::Invalid => "INVALID_MESSAGE",
                crate::error::ErrorKind::NotFound => "CONVERSATION_NOT_FOUND",
                _ => "INTERNAL_ERROR",
            };
            vec![Outgoing {
                wait_for: lsn,
                ..error(code, &e.message, now)
            }]
        }
    }
}

/// A chat event as EVA frames.
pub fn encode_chat_event(e: &ChatEvent) -> Option<Bytes> {
    let meta = |sources: &[String]| json!({"conversation_id": e.chat_id, "timestamp": socket::iso(e.at), "sources": sources});
    let frame = match &e.kind {
        ChatEventKind::Token(t) if !t.is_empty() => json!({
            "type": "message", "content": t, "emotion": e.emotion.unwrap_or_else(|| emotion::classify(t)),
            "chunk_id": e.id(), "is_final": false, "metadata": meta(&[]),
        }),
        ChatEventKind::Done {
            content,
            sources,
            summary_version,
            ..
        } => {
            let mut m = meta(sources);
            m["has_summary"] = J::Bool(*summary_version > 0);
            if *summary_version > 0 {
                m["summary_version"] = J::from(*summary_version);
            }
            json!({
                "type": "message", "content": "", "emotion": e.emotion.unwrap_or_else(|| emotion::classify(content)),
                "chunk_id": e.id(), "is_final": true, "metadata": m,
            })
        }
        ChatEventKind::Error { error, .. } => json!({
            "type": "error", "content": error, "emotion": "concerned",
            "metadata": {"error_code": "INTERNAL_ERROR", "timestamp": socket::iso(e.at), "request_id": e.message_id},
        }),
        _ => return None,
    };
    Some(socket::frames(&[frame]))
}

pub fn overflow() -> J {
    json!({"type": "error", "content": "too far behind; reconnect", "emotion": "concerned",
           "metadata": {"error_code": "INTERNAL_ERROR"}})
}
