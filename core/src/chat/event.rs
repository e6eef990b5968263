//! Chat stream events, typed: what a turn emits, in order, each with its
//! position (`message_id:seq`) so a client that drops can resume exactly after
//! the last one it saw. The dialects encode them (SSE `token`/`done`/`error`,
//! WebSocket `ChatStreamChunk`/`ChatStreamEnd`/`ChatStreamError`).

use crate::providers::Failure;
use crate::time::Timestamp;
use serde_json::Value as J;

#[derive(Clone, Debug, PartialEq)]
pub struct ChatEvent {
    pub chat_id: String,
    pub message_id: String,
    pub seq: u32,
    /// When the event happened (dialects that stamp their frames).
    pub at: Timestamp,
    /// The emotion the model tagged its answer with, once read (EVA).
    pub emotion: Option<&'static str>,
    pub kind: ChatEventKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ChatEventKind {
    /// The answer is under way (the first event of every turn; ekoDB sends
    /// nothing for it, other dialects open their answer frames with it).
    Started,
    /// A piece of the answer.
    Token(String),
    /// A tool call: a server tool (progress) or, with `client`, a call the
    /// client must answer.
    ToolCall {
        call_id: String,
        tool: String,
        args: J,
        client: bool,
    },
    /// A server tool's result.
    ToolResult {
        call_id: String,
        tool: String,
        /// The call's arguments (the query a dialect shows with its rows).
        args: J,
        success: bool,
        result: J,
    },
    /// The answer is complete and stored.
    Done {
        content: String,
        execution_time_ms: u64,
        token_usage: J,
        context_window: u64,
        tool_call_history: J,
        /// Where the context came from: a document's file name, or
        /// `collection/record id`.
        sources: Vec<String>,
        /// How many times the conversation's history was summarized.
        summary_version: u64,
    },
    /// The answer failed (a provider failure carries its classification) or
    /// was cancelled.
    Error {
        error: String,
        failure: Option<Failure>,
        cancelled: bool,
    },
}

impl ChatEvent {
    /// The last event of a turn.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.kind,
            ChatEventKind::Done { .. } | ChatEventKind::Error { .. }
        )
    }

    /// The event's id, the resume token (`Last-Event-ID`).
    pub fn id(&self) -> String {
        format!("{}:{}", self.message_id, self.seq)
    }
}

/// Parses a resume token: `message_id:seq`.
pub fn parse_event_id(text: &str) -> Option<(String, u32)> {
    let (mid, seq) = text.trim().rsplit_once(':')?;
    Some((mid.to_string(), seq.parse().ok()?))
}
