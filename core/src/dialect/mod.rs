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
//!
//! A streaming connection is registered with the hub under an `EventCodec`;
//! the hub asks `encode_event` once per codec and filter, and the connection
//! asks `encode_notice` for the stream-level messages (overflow, reset).

pub mod ekodb_chat;
pub mod ekodb_events;
pub mod ekodb_sse;
pub mod ekodb_ws;
pub mod rest;

use crate::chat::event::ChatEvent;
use crate::ids::Lsn;
use crate::realtime::events::Event;
use crate::wire::format::Format;
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
}

/// How a codec's messages travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// WebSocket frames: text, or binary when `true`.
    WebSocket { binary: bool },
    /// Server-Sent Events (each message is a whole event).
    Sse,
}

impl EventCodec {
    pub fn framing(self) -> Framing {
        match self {
            EventCodec::EkodbWs(format) => Framing::WebSocket {
                binary: format == Format::MsgPack,
            },
            EventCodec::EkodbSse | EventCodec::EkodbChatSse => Framing::Sse,
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
        EventCodec::EkodbChatSse => None,
    }
}

/// Encodes one chat event for one codec; `None` if the codec sends nothing
/// for it (a change feed, or a server tool's progress on WebSocket).
pub fn encode_chat_event(event: &ChatEvent, codec: EventCodec) -> Option<Bytes> {
    match codec {
        EventCodec::EkodbWs(format) => ekodb_chat::encode_ws(event, format),
        EventCodec::EkodbChatSse => ekodb_chat::encode_sse(event),
        EventCodec::EkodbSse => None,
    }
}

/// Encodes a notice for one codec.
pub fn encode_notice(notice: &Notice<'_>, codec: EventCodec) -> Bytes {
    match codec {
        EventCodec::EkodbWs(format) => ekodb_ws::encode_notice(notice, format),
        EventCodec::EkodbSse => ekodb_sse::encode_notice(notice),
        EventCodec::EkodbChatSse => ekodb_chat::sse_overflow(),
    }
}
