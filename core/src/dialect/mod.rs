//! Wire dialects: one module per protocol a client speaks, each a codec with
//! typed messages, turning bytes into engine calls and engine events into
//! bytes. Only this folder knows wire shapes (DESIGN.md, invariant 6): the
//! engine, the hub and the connection speak typed commands and events.
//!
//! | module | protocol |
//! |---|---|
//! | `rest` | the ekoDB REST API, with the one route table |
//! | `ekodb_ws` | the ekoDB WebSocket protocol (`/api/ws`) |
//! | `ekodb_sse` | ekoDB's SSE change feed (`/api/subscribe/{collection}`) |
//! | `ekodb_events` | the event payloads those two share |
//! | `ekodb_chat` | ekoDB's chat stream (SSE events and WebSocket frames) |
//! | `general_bots` | General Bots chat (`/ws`, seed 001) |
//! | `meet` | General Bots meet signaling (`/ws/meet`, seed 001) |
//! | `fluxbase` | Fluxbase AI chat (`/ai/ws`, seed 003) |
//! | `eva` | EVA chat (`/eva/ws`, seed 004) |
//! | `lanonasis` | Lanonasis stream (`/api/v1/stream`) and memory API (seed 002) |
//! | `mounts` | where each dialect's endpoints live (movable; the EVA listener) |
//! | `socket` | what the chat sockets share: frames, JSON in, rate windows |
//!
//! A streaming connection is registered with the hub under an `EventCodec`;
//! the hub asks `encode_event` once per codec and filter, and the connection
//! asks `encode_notice` for the stream-level messages (overflow, reset).

pub mod ekodb_chat;
pub mod ekodb_events;
pub mod ekodb_sse;
pub mod ekodb_ws;
pub mod eva;
pub mod fluxbase;
pub mod general_bots;
pub mod lanonasis;
pub mod meet;
pub mod mounts;
pub mod rest;
pub mod socket;

use crate::chat::event::ChatEvent;
use crate::ids::{ConnId, Lsn};
use crate::realtime::events::{Event, EventPos, Filter};
use crate::server::Server;
use crate::time::Timestamp;
use crate::wire::format::Format;
use crate::wire::ws::Incoming;
use bytes::Bytes;

/// How a streaming connection wants its events encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventCodec {
    /// ekoDB WebSocket messages in JSON text or MessagePack binary frames.
    EkodbWs(Format),
    /// ekoDB SSE events.
    EkodbSse,
    /// ekoDB's chat answer stream over SSE (one answer, then the stream ends).
    EkodbChatSse,
    /// General Bots chat frames.
    GeneralBots,
    /// General Bots meet signaling (nothing from the hub but relayed frames).
    Meet,
    /// Fluxbase AI chat frames.
    Fluxbase,
    /// EVA chat frames.
    Eva,
    /// Lanonasis stream events of these types.
    Lanonasis(lanonasis::EventTypes),
}

/// How a codec's messages travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// WebSocket frames: text, or binary when `true`.
    WebSocket { binary: bool },
    /// Whole WebSocket frames already (one event may be several frames).
    Framed,
    /// Server-Sent Events (each message is a whole event).
    Sse,
}

impl EventCodec {
    pub fn framing(self) -> Framing {
        match self {
            EventCodec::EkodbWs(format) => Framing::WebSocket {
                binary: format == Format::MsgPack,
            },
            EventCodec::EkodbSse | EventCodec::EkodbChatSse | EventCodec::Lanonasis(_) => {
                Framing::Sse
            }
            EventCodec::GeneralBots | EventCodec::Meet | EventCodec::Fluxbase | EventCodec::Eva => {
                Framing::Framed
            }
        }
    }
}

/// A stream-level message that is not an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice<'a> {
    /// The subscriber fell further behind than its budget and is cut off.
    Overflowed,
    /// A resume position could not be honoured: resynchronise; live events
    /// continue after `upto`.
    Reset {
        collection: &'a str,
        upto: Lsn,
        reason: &'a str,
    },
}

/// Encodes one event for one codec; `None` if the codec sends nothing for it.
pub fn encode_event(event: &Event<'_>, codec: EventCodec) -> Option<Bytes> {
    match codec {
        EventCodec::EkodbWs(format) => ekodb_ws::encode_event(event, format),
        EventCodec::EkodbSse => ekodb_sse::encode_event(event),
        EventCodec::Lanonasis(types) => lanonasis::stream::encode_event(event, types),
        _ => None,
    }
}

/// Encodes one chat event for one codec; `None` if the codec sends nothing
/// for it (a change feed, or a server tool's progress on WebSocket).
pub fn encode_chat_event(event: &ChatEvent, codec: EventCodec) -> Option<Bytes> {
    match codec {
        EventCodec::EkodbWs(format) => ekodb_chat::encode_ws(event, format),
        EventCodec::EkodbChatSse => ekodb_chat::encode_sse(event),
        EventCodec::GeneralBots => general_bots::encode_chat_event(event),
        EventCodec::Fluxbase => fluxbase::encode_chat_event(event),
        EventCodec::Eva => eva::encode_chat_event(event),
        EventCodec::EkodbSse | EventCodec::Meet | EventCodec::Lanonasis(_) => None,
    }
}

/// Encodes a notice for one codec.
pub fn encode_notice(notice: &Notice<'_>, codec: EventCodec) -> Bytes {
    match codec {
        EventCodec::EkodbWs(format) => ekodb_ws::encode_notice(notice, format),
        EventCodec::EkodbSse => ekodb_sse::encode_notice(notice),
        EventCodec::EkodbChatSse => ekodb_chat::sse_overflow(),
        EventCodec::GeneralBots => socket::frames(&[general_bots::overflow()]),
        EventCodec::Fluxbase => socket::frames(&[fluxbase::overflow()]),
        EventCodec::Eva => socket::frames(&[eva::overflow()]),
        EventCodec::Meet => socket::frames(&[meet::overflow()]),
        EventCodec::Lanonasis(_) => lanonasis::stream::encode_notice(notice),
    }
}

/// One message to send on a WebSocket: its bytes (the connection frames
/// them), its frame kind, and the LSN that must be durable first.
#[derive(Debug)]
pub struct Outgoing {
    pub wait_for: Lsn,
    pub binary: bool,
    pub payload: Bytes,
}

impl Outgoing {
    /// A JSON text message deliverable at once.
    pub fn json(value: &serde_json::Value) -> Outgoing {
        Outgoing {
            wait_for: Lsn::ZERO,
            binary: false,
            payload: Bytes::from(value.to_string()),
        }
    }
}

/// What a message asks the connection to do besides replying.
#[derive(Debug, Clone, PartialEq)]
pub enum Followup {
    None,
    /// Replay the log for this subscription from a position, then go live.
    Resume {
        collection: String,
        filter: Option<Filter>,
        from: EventPos,
    },
    /// Close the WebSocket with this code after the replies.
    Close {
        code: u16,
        reason: &'static str,
    },
}

/// A WebSocket connection's protocol and its per-connection state.
#[derive(Debug, Clone, PartialEq)]
pub enum WsSession {
    Ekodb(ekodb_ws::Session),
    GeneralBots(general_bots::Session),
    Meet(meet::Session),
    Fluxbase(fluxbase::Session),
    Eva(eva::Session),
}

impl WsSession {
    /// The codec the hub encodes this connection's events with.
    pub fn codec(&self) -> EventCodec {
        match self {
            WsSession::Ekodb(s) => s.codec(),
            WsSession::GeneralBots(_) => EventCodec::GeneralBots,
            WsSession::Meet(_) => EventCodec::Meet,
            WsSession::Fluxbase(_) => EventCodec::Fluxbase,
            WsSession::Eva(_) => EventCodec::Eva,
        }
    }

    /// How often the server pings, when the dialect documents it (else
    /// `--heartbeat`).
    pub fn ping_every(&self) -> Option<std::time::Duration> {
        match self {
            WsSession::GeneralBots(s) => Some(s.limits.ping_every),
            WsSession::Meet(_) => Some(general_bots::PING_EVERY),
            _ => None,
        }
    }

    /// How long the client may send nothing before the server closes.
    pub fn idle_after(&self) -> Option<std::time::Duration> {
        match self {
            WsSession::GeneralBots(s) => Some(s.limits.idle_after),
            _ => None,
        }
    }

    /// What the dialect says before an idle close.
    pub fn idle_goodbye(&self) -> Vec<Outgoing> {
        match self {
            WsSession::GeneralBots(s) => general_bots::idle_goodbye(s),
            _ => Vec::new(),
        }
    }

    /// The socket is open: what the dialect says first (a session, or a
    /// refusal that closes).
    pub fn opened(
        &mut self,
        server: &mut Server,
        conn: ConnId,
        now: Timestamp,
    ) -> (Vec<Outgoing>, Followup) {
        match self {
            WsSession::GeneralBots(s) => general_bots::opened(s, server, conn, now),
            WsSession::Eva(s) => eva::opened(s, server, conn, now),
            WsSession::Ekodb(_) | WsSession::Meet(_) | WsSession::Fluxbase(_) => {
                (Vec::new(), Followup::None)
            }
        }
    }

    /// Handles one message: the replies to send, in order, and a follow-up.
    pub fn handle(
        &mut self,
        server: &mut Server,
        conn: ConnId,
        msg: &Incoming,
        now: Timestamp,
    ) -> (Vec<Outgoing>, Followup) {
        match self {
            WsSession::Ekodb(s) => ekodb_ws::handle(server, conn, s, msg, now),
            WsSession::GeneralBots(s) => general_bots::handle(s, server, conn, msg, now),
            WsSession::Meet(s) => meet::handle(s, server, conn, msg, now),
            WsSession::Fluxbase(s) => fluxbase::handle(s, server, conn, msg, now),
            WsSession::Eva(s) => eva::handle(s, server, conn, msg, now),
        }
    }
}
