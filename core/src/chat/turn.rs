//! A turn: one message answered. The server owns it (not a connection), so it
//! runs to the end when its client drops, any number of clients can watch it,
//! and its events stay available for resuming for a while after it ends.
//!
//! ```text
//! Started ──▶ Calling (provider stream: tokens) ──▶ Done
//!                │   ▲         │
//!                │   │         └─▶ tools: server tools run at once; client
//!                │   └──────────── tools wait for their results ──▶ Calling
//!                ├─▶ Retrying (before the first token only) ──▶ Calling
//!                └─▶ Failed | Cancelled
//! ```
//! The offline provider goes from Started to Done within the request.

use super::event::{ChatEvent, ChatEventKind};
use super::retrieval::Snippet;
use super::session::Session;
use super::store::Message;
use super::tools::Policy;
use crate::ids::{ConnId, Lsn};
use crate::providers::{Choice, Prompt, StreamParser, ToolCall, ToolSpec};
use crate::server::calls::CallId;
use crate::server::pending::Ticket;
use crate::time::Timestamp;
use crate::wire::format::Format;
use serde_json::Value as J;
use std::collections::{HashMap, VecDeque};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TurnId(pub u64);

/// How the answer goes back when the turn ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A chat message: `ChatResponse`, the message stored.
    Chat,
    /// A raw completion: `{"content"}`, nothing stored.
    Raw,
}

/// Who hears how a turn ends (besides the watchers of its stream).
#[derive(Clone, Debug, PartialEq)]
pub enum Listener {
    /// A REST reply waiting for the whole answer.
    Reply(Ticket),
    /// A WebSocket request waiting for a `Success`/`Error` reply.
    WsReply {
        conn: ConnId,
        id: Option<String>,
        format: Format,
    },
}

#[derive(Debug)]
pub enum Phase {
    /// Waiting for (or reading) the provider's answer.
    Calling {
        call: CallId,
        parser: StreamParser,
        /// The provider answered with an error status (and `Retry-After`):
        /// its body is kept for the message.
        error_status: Option<(u16, Option<String>)>,
        error_body: Vec<u8>,
    },
    /// Trying the provider again after a transient failure (before any token).
    Retrying,
    /// Waiting for the client's results of these tool calls (ids).
    AwaitingClient { waiting: Vec<String> },
    /// The offline provider answers within the request.
    Offline,
    /// Embedding the question (an embedding provider is configured and the
    /// chat's collections hold vectors); the prompt is built once it is in.
    Retrieving {
        call: CallId,
        pending: Box<Retrieval>,
    },
}

/// What a turn's prompt is built from once its question's vector arrives.
#[derive(Debug)]
pub struct Retrieval {
    pub session: Session,
    pub history: Vec<Message>,
    /// The words retrieval searches with (the question, or a follow-up
    /// with the question before it).
    pub query: String,
    pub window: usize,
}

#[derive(Debug)]
pub struct Turn {
    pub id: TurnId,
    pub shape: Shape,
    /// The chat the answer belongs to (for a raw completion, a key of its own).
    pub chat_id: String,
    /// The assistant message's id (reserved when the turn starts).
    pub message_id: String,
    pub seq: u64,
    pub question: String,
    pub choice: Choice,
    pub prompt: Prompt,
    pub policy: Policy,
    /// Tools the client answers (registered over WebSocket or sent with the
    /// message), and server tools it must confirm first.
    pub client_tools: Vec<ToolSpec>,
    pub confirm_tools: Vec<String>,
    pub started: Timestamp,
    pub phase: Phase,
    /// The answer so far.
    pub text: String,
    /// This provider round's text and tool calls (a tool round starts anew).
    pub round_text: String,
    pub round_calls: Vec<ToolCall>,
    /// Results of this round's tool calls, by call id: success and value.
    pub results: HashMap<String, (bool, J)>,
    pub snippets: Vec<Snippet>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub tool_history: Vec<J>,
    pub iterations: u32,
    pub attempts: u32,
    /// Events so far, for watchers that join late or resume.
    pub events: Vec<ChatEvent>,
    /// Events are deliverable once this LSN is durable (the user's message);
    /// the last one once `end_lsn` is (the stored answer).
    pub gate: Lsn,
    pub end_lsn: Lsn,
    pub listeners: Vec<Listener>,
    /// Reads the model's leading emotion tag, when the system prompt asks
    /// for one (EVA conversations with a real provider).
    pub tags: Option<crate::chat::emotion::TagReader>,
    pub emotion: Option<&'static str>,
}

impl Turn {
    pub fn next_seq(&self) -> u32 {
        self.events.len() as u32
    }

    pub fn got_tokens(&self) -> bool {
        !self.text.is_empty()
    }

    /// The LSN an event must wait for.
    pub fn lsn_of(&self, event: &ChatEvent) -> Lsn {
        if event.is_terminal() {
            self.end_lsn.max(self.gate)
        } else {
            self.gate
        }
    }
}

/// A finished turn's events, kept for resuming.
#[derive(Debug)]
pub struct Finished {
    pub chat_id: String,
    pub message_id: String,
    pub events: Vec<ChatEvent>,
    pub gate: Lsn,
    pub end_lsn: Lsn,
}

/// Finished turns kept for resuming, and the bytes of answer text they may hold.
const KEEP_FINISHED: usize = 256;
const KEEP_FINISHED_BYTES: usize = 16 << 20;

/// Roughly what a turn's events hold in memory.
fn weight(events: &[ChatEvent]) -> usize {
    events
        .iter()
        .map(|e| {
            64 + match &e.kind {
                ChatEventKind::Token(t) => t.len(),
                ChatEventKind::Done { content, .. } => content.len(),
                _ => 256,
            }
        })
        .sum()
}

/// A turn's events for a resuming client, with the LSNs they wait for.
#[derive(Debug)]
pub struct Log<'a> {
    pub events: &'a [ChatEvent],
    pub gate: Lsn,
    pub end_lsn: Lsn,
    /// Still running: more events come live.
    pub active: bool,
}

/// Every turn of the server.
#[derive(Debug, Default)]
pub struct Turns {
    next: u64,
    pub active: HashMap<TurnId, Turn>,
    pub by_chat: HashMap<String, TurnId>,
    finished: VecDeque<Finished>,
    finished_bytes: usize,
    /// Client tools registered over WebSocket, per chat.
    pub client_tools: HashMap<String, Vec<ToolSpec>>,
}

impl Turns {
    pub fn new_id(&mut self) -> TurnId {
        self.next += 1;
        TurnId(self.next)
    }

    /// Keeps a finished turn's events (bounded: the oldest go first).
    pub fn retire(&mut self, turn: Turn) {
        self.by_chat.remove(&turn.chat_id);
        self.finished_bytes += weight(&turn.events);
        self.finished.push_back(Finished {
            chat_id: turn.chat_id,
            message_id: turn.message_id,
            events: turn.events,
            gate: turn.gate,
            end_lsn: turn.end_lsn,
        });
        while self.finished.len() > KEEP_FINISHED || self.finished_bytes > KEEP_FINISHED_BYTES {
            let Some(old) = self.finished.pop_front() else {
                break;
            };
            self.finished_bytes = self.finished_bytes.saturating_sub(weight(&old.events));
        }
    }

    /// A turn's events (live or finished) for a message (`None`: the chat's
    /// latest).
    pub fn log(&self, chat_id: &str, message_id: Option<&str>) -> Option<Log<'_>> {
        if let Some(t) = self.by_chat.get(chat_id).and_then(|id| self.active.get(id)) {
            if message_id.is_none_or(|m| m == t.message_id) {
                return Some(Log {
                    events: &t.events,
                    gate: t.gate,
                    end_lsn: t.end_lsn,
                    active: true,
                });
            }
        }
        self.finished
            .iter()
            .rev()
            .find(|f| f.chat_id == chat_id && message_id.is_none_or(|m| m == f.message_id))
            .map(|f| Log {
                events: &f.events,
                gate: f.gate,
                end_lsn: f.end_lsn,
                active: false,
            })
    }

    /// Forgets what is kept about a deleted chat.
    pub fn forget_chat(&mut self, chat_id: &str) {
        self.client_tools.remove(chat_id);
        self.finished.retain(|f| f.chat_id != chat_id);
        self.finished_bytes = self.finished.iter().map(|f| weight(&f.events)).sum();
    }
}
