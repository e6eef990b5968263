//! Chat sessions and messages are records in two internal collections, so they
//! are logged, replayed after a crash, compacted and visible to the data API
//! like any document. A message's id is its session's id, `_`, and a six-digit
//! sequence number, so one session's messages are one id range, in order.

use super::session::Session;
use crate::engine::{Engine, Found};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::value::{Json, Value};
use serde_json::Value as J;

pub const SESSIONS: &str = "chat_sessions__ek0_tidepool";
pub const MESSAGES: &str = "chat_messages__ek0_tidepool";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        }
    }

    fn parse(s: &str) -> Role {
        match s {
            "assistant" => Role::Assistant,
            "system" => Role::System,
            _ => Role::User,
        }
    }
}

/// Where an answer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Complete,
    /// Being generated, or interrupted by a restart.
    Incomplete,
    Cancelled,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Incomplete => "incomplete",
            Status::Cancelled => "cancelled",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "incomplete" => Status::Incomplete,
            "cancelled" => Status::Cancelled,
            "failed" => Status::Failed,
            _ => Status::Complete,
        }
    }
}

/// A stored message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub id: String,
    pub chat_id: String,
    pub seq: u64,
    pub role: Role,
    pub content: String,
    pub created_at: Timestamp,
    pub forgotten: bool,
    pub status: Status,
    /// A summary of older messages (it stands in for them in the context).
    pub summary: bool,
    /// Which model answered (assistant messages).
    pub model: Option<String>,
    pub provider: Option<String>,
    pub token_usage: Option<J>,
    pub context_snippets: Option<J>,
    pub tool_call_history: Option<J>,
}

pub fn message_id(chat_id: &str, seq: u64) -> String {
    format!("{chat_id}_{seq:06}")
}

fn prefix(chat_id: &str) -> String {
    format!("{chat_id}_")
}

pub fn session_missing() -> Error {
    Error::not_found("chat session not found")
}

pub fn message_missing() -> Error {
    Error::not_found("chat message not found")
}

impl Message {
    pub fn new(chat_id: &str, seq: u64, role: Role, content: String, now: Timestamp) -> Message {
        Message {
            id: message_id(chat_id, seq),
            chat_id: chat_id.to_string(),
            seq,
            role,
            content,
            created_at: now,
            forgotten: false,
            status: Status::Complete,
            summary: false,
            model: None,
            provider: None,
            token_usage: None,
            context_snippets: None,
            tool_call_history: None,
        }
    }

    fn to_fields(&self) -> Vec<(&'static str, Value)> {
        let s = |v: &str| Value::String(v.into());
        let j = |v: &J| Value::from_json(Json::from(v.clone()));
        let mut f = vec![
            ("chat_id", s(&self.chat_id)),
            ("seq", Value::Integer(self.seq as i64)),
            ("role", s(self.role.as_str())),
            ("content", s(&self.content)),
            ("created_at", Value::DateTime(self.created_at)),
            ("forgotten", Value::Boolean(self.forgotten)),
            ("status", s(self.status.as_str())),
        ];
        if self.summary {
            f.push(("summary", Value::Boolean(true)));
        }
        for (k, v) in [("model", &self.model), ("provider", &self.provider)] {
            if let Some(v) = v {
                f.push((k, s(v)));
            }
        }
        for (k, v) in [
            ("token_usage", &self.token_usage),
            ("context_snippets", &self.context_snippets),
            ("tool_call_history", &self.tool_call_history),
        ] {
            if let Some(v) = v {
                f.push((k, j(v)));
            }
        }
        f
    }

    fn from_found(f: &Found<'_>) -> Message {
        let r = f.record;
        let text = |k: &str| match r.get(k) {
            Some(Value::String(s)) => Some(s.to_string()),
            _ => None,
        };
        let json = |k: &str| {
            r.get(k)
                .map(|v| v.to_json().to_serde())
                .filter(|v| !v.is_null())
        };
        Message {
            id: f.id.to_string(),
            chat_id: text("chat_id").unwrap_or_default(),
            seq: match r.get("seq") {
                Some(Value::Integer(i)) => (*i).max(0) as u64,
                _ => 0,
            },
            role: Role::parse(&text("role").unwrap_or_default()),
            content: text("content").unwrap_or_default(),
            created_at: match r.get("created_at") {
                Some(Value::DateTime(t)) => *t,
                _ => Timestamp::EPOCH,
            },
            forgotten: matches!(r.get("forgotten"), Some(Value::Boolean(true))),
            status: Status::parse(&text("status").unwrap_or_default()),
            summary: matches!(r.get("summary"), Some(Value::Boolean(true))),
            model: text("model"),
            provider: text("provider"),
            token_usage: json("token_usage"),
            context_snippets: json("context_snippets"),
            tool_call_history: json("tool_call_history"),
        }
    }
}

pub fn load_session(engine: &Engine, chat_id: &str, now: Timestamp) -> Result<Session> {
    engine
        .get_internal(SESSIONS, chat_id, now)
        .map(|f| Session::from_record(f.id, f.record))
        .ok_or_else(session_missing)
}

pub fn save_session(engine: &mut Engine, session: &Session, now: Timestamp) -> Result<()> {
    engine.put_internal(SESSIONS, &session.chat_id, session.to_fields(), now)
}

pub fn list_sessions(engine: &Engine, now: Timestamp) -> Vec<Session> {
    engine
        .with_id_prefix(SESSIONS, "", now)
        .map(|f| Session::from_record(f.id, f.record))
        .collect()
}

/// Removes a session and every one of its messages.
pub fn delete_session(engine: &mut Engine, chat_id: &str, now: Timestamp) -> Result<()> {
    load_session(engine, chat_id, now)?;
    let p = prefix(chat_id);
    let ids: Vec<String> = engine
        .with_id_prefix(MESSAGES, &p, now)
        .map(|f| f.id.to_string())
        .collect();
    for id in ids {
        engine.purge(MESSAGES, &id);
    }
    engine.purge(SESSIONS, chat_id);
    Ok(())
}

/// A session's messages in order.
pub fn messages(engine: &Engine, chat_id: &str, now: Timestamp) -> Vec<Message> {
    let p = prefix(chat_id);
    engine
        .with_id_prefix(MESSAGES, &p, now)
        .map(|f| Message::from_found(&f))
        .collect()
}

pub fn message_count(engine: &Engine, chat_id: &str, now: Timestamp) -> usize {
    let p = prefix(chat_id);
    engine.with_id_prefix(MESSAGES, &p, now).count()
}

/// A message of a session (its id must be one of that session's).
pub fn message_record<'a>(
    engine: &'a Engine,
    chat_id: &str,
    message_id: &str,
    now: Timestamp,
) -> Result<Found<'a>> {
    if !message_id.starts_with(&prefix(chat_id)) {
        return Err(message_missing());
    }
    engine
        .get_internal(MESSAGES, message_id, now)
        .ok_or_else(message_missing)
}

pub fn load_message(
    engine: &Engine,
    chat_id: &str,
    message_id: &str,
    now: Timestamp,
) -> Result<Message> {
    message_record(engine, chat_id, message_id, now).map(|f| Message::from_found(&f))
}

pub fn save_message(engine: &mut Engine, m: &Message, now: Timestamp) -> Result<()> {
    engine.put_internal(MESSAGES, &m.id, m.to_fields(), now)
}

pub fn delete_message(
    engine: &mut Engine,
    chat_id: &str,
    message_id: &str,
    now: Timestamp,
) -> Result<()> {
    message_record(engine, chat_id, message_id, now)?;
    engine.purge(MESSAGES, message_id);
    Ok(())
}

/// Adds a message at the end of a session (the session's sequence moves on;
/// the caller saves the session).
pub fn append(
    engine: &mut Engine,
    session: &mut Session,
    role: Role,
    content: String,
    now: Timestamp,
) -> Result<Message> {
    let m = Message::new(&session.chat_id, session.next_seq, role, content, now);
    session.next_seq += 1;
    session.updated_at = now;
    save_message(engine, &m, now)?;
    Ok(m)
}
