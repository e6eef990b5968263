//! ekoDB's change feed over Server-Sent Events (spec C): after the stream head,
//! a `subscribed` event, then `mutation` and `schema_changed` events with their
//! position as `id:` (the resume token for `Last-Event-ID`), `reset` when a
//! resume position cannot be honoured, and `error` before an overflow cut-off.

use super::ekodb_events::{Payload, ResetPayload, OVERFLOW_MESSAGE};
use super::{EventCodec, Notice};
use crate::ids::ConnId;
use crate::realtime::events::{Change, Event, Filter};
use crate::server::Server;
use crate::wire::sse;
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

/// JSON for an SSE `data:` line. Our payloads always serialise (string keys,
/// finite numbers); should one not, the event carries an error instead of
/// vanishing.
fn data<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| {
        serde_json::to_vec(&json!({"error": format!("event could not be encoded: {e}")}))
            .unwrap_or_default()
    })
}

/// Registers the stream with the hub and returns its first event.
pub fn open(server: &mut Server, conn: ConnId, collection: &str, filter: Option<Filter>) -> Bytes {
    server.subscribe(conn, collection, filter);
    let sub = format!("sub_{}", server.new_token(16));
    sse::event(
        None,
        "subscribed",
        &data(&json!({"collection": collection, "subscription_id": sub})),
    )
}

/// The codec the hub uses for these streams.
pub const CODEC: EventCodec = EventCodec::EkodbSse;

pub fn encode_event(event: &Event<'_>) -> Option<Bytes> {
    let name = match event.change {
        Change::Mutation { .. } => "mutation",
        Change::SchemaChanged { .. } => "schema_changed",
    };
    Some(sse::event(
        Some(&event.pos.to_string()),
        name,
        &data(&Payload::of(event)),
    ))
}

pub fn encode_notice(notice: &Notice<'_>) -> Bytes {
    match (notice, ResetPayload::of(notice)) {
        (Notice::Reset { upto, .. }, Some(reset)) => {
            sse::event(Some(&upto.to_string()), "reset", &data(&reset))
        }
        _ => sse::event(None, "error", &data(&json!({ "error": OVERFLOW_MESSAGE }))),
    }
}
