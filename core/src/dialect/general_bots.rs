//! General Bots chat over WebSocket (`/ws`; seed 001, `spec/dialects.md` §2).
//!
//! Flat frames (`{"type": ..., ...fields}`). A connection authenticates with
//! `?token=` or a first `auth` frame and gets `session_created` with a new
//! chat session; `message` to any chat session is answered with
//! `stream_start`, `bot_typing`, `stream_chunk`*, `stream_end` (whose
//! `content` is the chunks joined). Sessions are ordinary chat sessions, so
//! they outlive the socket; `subscribe` follows every answer of a session
//! until `unsubscribe` or the socket closes. Errors are `error` frames with
//! the documented codes; the socket stays open except after a failed
//! authentication.

use super::socket::{self, RateWindow, Unreadable};
use super::{EventCodec, Followup, Outgoing};
use crate::chat::event::{ChatEvent, ChatEventKind};
use crate::error::ErrorKind;
use crate::ids::{ConnId, Lsn};
use crate::server::Server;
use crate::time::Timestamp;
use crate::wire::ws::Incoming;
use bytes::Bytes;
use serde_json::{json, Value as J};
use std::time::Duration;

/// The documented frame limit (seed 001:224): larger frames get
/// `MESSAGE_TOO_LARGE`, not a close.
pub const MAX_FRAME: usize = 64 * 1024;
/// `message` frames per connection: a burst of 30, then one per second on
/// average (60 back-to-back draw `RATE_LIMITED`).
const MESSAGES_PER_WINDOW: usize = 30;
const WINDOW: Duration = Duration::from_secs(30);
/// Open `/ws` connections per client address (seed 001:223).
pub const CONNECTIONS_PER_IP: usize = 100;
/// The documented ping interval and idle timeout (seed 001:225-226);
/// `--general-bots-ping-interval` and `--general-bots-idle-timeout`.
pub const PING_EVERY: Duration = Duration::from_secs(30);

/// A socket's timing, from the server's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub ping_every: Duration,
    /// A socket the client sent nothing on for this long is told
    /// `session_closed` (the session itself stays) and closed.
    pub idle_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The `?token=` of the upgrade, checked when the socket opens.
    query_token: Option<String>,
    authenticated: bool,
    /// The session `session_created` announced (one per connection: a
    /// repeated `auth` frame gets the same one).
    session: Option<String>,
    messages: RateWindow,
    pub limits: Limits,
}

impl Session {
    pub fn new(query_token: Option<String>, limits: Limits) -> Self {
        Session {
            query_token,
            authenticated: false,
            session: None,
            messages: RateWindow::new(MESSAGES_PER_WINDOW, WINDOW),
            limits,
        }
    }
}

/// Before an idle close: `session_closed` for the connection's session
/// (which lives on, and can be resumed by its id).
pub fn idle_goodbye(s: &Session) -> Vec<Outgoing> {
    s.session
        .iter()
        .map(|id| {
            Outgoing::json(
                &json!({"type": "session_closed", "session_id": id, "reason": "idle_timeout"}),
            )
        })
        .collect()
}

pub(super) fn error(code: &str, message: &str) -> Outgoing {
    Outgoing::json(&json!({"type": "error", "code": code, "message": message}))
}

fn out(value: J, wait_for: Lsn) -> Outgoing {
    Outgoing {
        wait_for,
        ..Outgoing::json(&value)
    }
}

/// The socket opened: a token in the query is checked now.
pub fn opened(
    s: &mut Session,
    server: &mut Server,
    conn: ConnId,
    now: Timestamp,
) -> (Vec<Outgoing>, Followup) {
    match s.query_token.take() {
        Some(token) => authenticate(s, server, conn, &token, now),
        None => (Vec::new(), Followup::None),
    }
}

fn authenticate(
    s: &mut Session,
    server: &mut Server,
    conn: ConnId,
    token: &str,
    now: Timestamp,
) -> (Vec<Outgoing>, Followup) {
    if socket::open_chat_with_credential(server, Some(conn), token, now).is_none() {
        let refusal = error("AUTH_FAILED", "Invalid or expired token");
        return (
            vec![refusal],
            Followup::Close {
                code: 1008,
                reason: "authentication failed",
            },
        );
    }
    s.authenticated = true;
    if let Some(chat_id) = &s.session {
        let created = json!({"type": "session_created", "session_id": chat_id});
        return (vec![Outgoing::json(&created)], Followup::None);
    }
    match socket::open_chat(server, None, now) {
        Ok(chat_id) => {
            s.session = Some(chat_id.clone());
            let lsn = server.finish_operation(now);
            let created = json!({"type": "session_created", "session_id": chat_id});
            (vec![out(created, lsn)], Followup::None)
        }
        Err(e) => (vec![error("INTERNAL_ERROR", &e.message)], Followup::None),
    }
}

/// The answer to a frame that cannot be read (meet answers the same way).
pub fn refuse(why: Unreadable) -> Outgoing {
    match why {
        Unreadable::TooLarge => {
            let text = format!("frames are limited to {} KB", MAX_FRAME / 1024);
            error("MESSAGE_TOO_LARGE", &text)
        }
        Unreadable::Malformed => error("INVALID_FORMAT", "frames are JSON objects with a `type`"),
    }
}

/// Handles one client frame.
pub fn handle(
    s: &mut Session,
    server: &mut Server,
    conn: ConnId,
    msg: &Incoming,
    now: Timestamp,
) -> (Vec<Outgoing>, Followup) {
    let frame = match socket::read_frame(msg, MAX_FRAME, refuse) {
        Ok(f) => f,
        Err(reply) => return reply,
    };
    let kind = socket::str_field(&frame, "type").unwrap_or_default();
    if kind == "auth" {
        let token = socket::str_field(&frame, "token").unwrap_or_default();
        return authenticate(s, server, conn, token, now);
    }
    if !s.authenticated {
        let text = "authenticate first: ?token= or an `auth` frame";
        return (vec![error("AUTH_FAILED", text)], Followup::None);
    }
    let session_id = socket::str_field(&frame, "session_id");
    let reply = match (kind, session_id) {
        ("ping", _) => vec![Outgoing::json(
            &json!({"type": "pong", "timestamp": socket::iso(now)}),
        )],
        ("message", Some(id)) => {
            let Some(content) = frame.get("content").and_then(J::as_str) else {
                return (
                    vec![error("INVALID_FORMAT", "`content` is required (a string)")],
                    Followup::None,
                );
            };
            message(s, server, conn, id, content, now)
        }
        ("typing_start" | "typing_stop", Some(id)) => known(server, id, now, Vec::new()),
        ("subscribe", Some(id)) => {
            let reply = known(server, id, now, Vec::new());
            if reply.is_empty() {
                server.chat_follow(conn, id);
            }
            reply
        }
        ("unsubscribe", Some(id)) => {
            server.chat_unfollow(conn, id);
            Vec::new()
        }
        ("message" | "typing_start" | "typing_stop" | "subscribe" | "unsubscribe", None) => {
            vec![error(
                "INVALID_FORMAT",
                &format!("`{kind}` needs a `session_id`"),
            )]
        }
        _ => vec![error(
            "INVALID_FORMAT",
            &format!("unknown frame type `{kind}`"),
        )],
    };
    (reply, Followup::None)
}

/// `reply` when the session exists, else `SESSION_NOT_FOUND`.
fn known(server: &Server, id: &str, now: Timestamp, reply: Vec<Outgoing>) -> Vec<Outgoing> {
    if socket::chat_exists(server, id, now) {
        reply
    } else {
        vec![error(
            "SESSION_NOT_FOUND",
            "Session does not exist or has expired",
        )]
    }
}

fn message(
    s: &mut Session,
    server: &mut Server,
    conn: ConnId,
    id: &str,
    content: &str,
    now: Timestamp,
) -> Vec<Outgoing> {
    if !socket::chat_exists(server, id, now) {
        return known(server, id, now, Vec::new());
    }
    if !s.messages.admit(now) {
        return vec![error("RATE_LIMITED", "Too many messages; slow down")];
    }
    match socket::send(server, conn, id, content, now) {
        Ok(_) => Vec::new(),
        Err(e) => {
            let lsn = server.finish_operation(now);
            let code = match e.kind {
                ErrorKind::NotFound => "SESSION_NOT_FOUND",
                ErrorKind::Conflict => "RATE_LIMITED",
                ErrorKind::Invalid if e.message.contains("long") => "MESSAGE_TOO_LARGE",
                ErrorKind::Invalid => "INVALID_FORMAT",
                _ => "INTERNAL_ERROR",
            };
            vec![out(
                json!({"type": "error", "code": code, "message": e.message}),
                lsn,
            )]
        }
    }
}

/// A chat event as General Bots frames (`None`: nothing to send).
pub fn encode_chat_event(e: &ChatEvent) -> Option<Bytes> {
    let session = &e.chat_id;
    let frames = match &e.kind {
        ChatEventKind::Started => vec![
            json!({"type": "stream_start", "session_id": session, "message_id": e.message_id}),
            json!({"type": "bot_typing", "session_id": session, "is_typing": true}),
        ],
        ChatEventKind::Token(t) => vec![
            json!({"type": "stream_chunk", "session_id": session, "message_id": e.message_id, "content": t}),
        ],
        ChatEventKind::ToolCall { tool, args, .. } => vec![
            json!({"type": "tool_call", "session_id": session, "tool": tool, "arguments": args}),
        ],
        ChatEventKind::ToolResult { tool, result, .. } => {
            let result = match result {
                J::Object(_) => result.clone(),
                other => json!({ "value": other }),
            };
            vec![
                json!({"type": "tool_result", "session_id": session, "tool": tool, "result": result}),
            ]
        }
        ChatEventKind::Done { content, .. } => vec![
            json!({"type": "stream_end", "session_id": session, "message_id": e.message_id, "content": content}),
            json!({"type": "bot_typing", "session_id": session, "is_typing": false}),
        ],
        ChatEventKind::Error {
            error, cancelled, ..
        } => {
            let code = if *cancelled {
                "CANCELLED"
            } else {
                "PROVIDER_ERROR"
            };
            vec![
                json!({"type": "error", "code": code, "message": error, "session_id": session, "message_id": e.message_id}),
                json!({"type": "bot_typing", "session_id": session, "is_typing": false}),
            ]
        }
    };
    Some(socket::frames(&frames))
}

/// The notice for a subscriber cut off for falling behind.
pub fn overflow() -> J {
    json!({"type": "error", "code": "RATE_LIMITED", "message": "too far behind; reconnect"})
}

/// `GET /ws`: the General Bots chat socket (the token is checked in-socket).
pub fn upgrade(
    server: &mut Server,
    ctx: &super::rest::Ctx<'_>,
) -> crate::error::Result<super::rest::Outcome> {
    let token = ctx.param("token").map(str::to_string);
    let limits = Limits {
        ping_every: Duration::from_secs(server.config().general_bots_ping_interval_secs.max(1)),
        idle_after: Duration::from_secs(server.config().general_bots_idle_timeout_secs.max(1)),
    };
    // A valid handshake first: a refused one must not hold a place.
    let upgrade = super::rest::system::upgrade_to(
        ctx,
        super::WsSession::GeneralBots(Session::new(token, limits)),
        None,
    )?;
    // 100 connections per address (seed 001:223); the 101st is refused at
    // the upgrade (503), one of the forms the contract allows.
    if let (Some(conn), Some(ip)) = (ctx.conn, ctx.conn.and_then(|c| server.peer_of(c).ip)) {
        let key = format!("ip:{ip}");
        if !server.socket_claim(conn, EventCodec::GeneralBots, &key, CONNECTIONS_PER_IP) {
            return Err(crate::error::Error::new(
                ErrorKind::Unavailable,
                format!(
                    "RATE_LIMITED: {CONNECTIONS_PER_IP} connections from {ip} are open already"
                ),
            ));
        }
    }
    Ok(upgrade)
}
