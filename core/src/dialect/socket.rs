//! What the chat-socket dialects (General Bots, Fluxbase, EVA, meet) share:
//! whole text frames for events, decoding a client's JSON frame, credentials
//! in any of their places, and a sliding-window rate limit.

use super::{Followup, Outgoing};
use crate::auth::Principal;
use crate::chat::store;
use crate::error::Result;
use crate::ids::ConnId;
use crate::server::chat::{SendRequest, Started};
use crate::server::Server;
use crate::time::Timestamp;
use crate::wire::ws::{frame_header, Incoming};
use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value as J};
use std::collections::VecDeque;
use std::time::Duration;

/// Whole WebSocket text frames, one per value (a hub event may be several).
pub fn frames(values: &[J]) -> Bytes {
    let mut out = BytesMut::new();
    for v in values {
        let text = v.to_string();
        out.extend_from_slice(&frame_header(false, text.len()));
        out.extend_from_slice(text.as_bytes());
    }
    out.freeze()
}

/// Why a client frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// Not a JSON object (or not UTF-8 text).
    Malformed,
    /// Larger than the dialect allows.
    TooLarge,
}

/// A client frame as a JSON object, refusing frames over `max_bytes`.
pub fn decode(msg: &Incoming, max_bytes: usize) -> Result<Map<String, J>, Unreadable> {
    let bytes = match msg {
        Incoming::Text(b) | Incoming::Binary(b) => b,
    };
    if bytes.len() > max_bytes {
        return Err(Unreadable::TooLarge);
    }
    match serde_json::from_slice::<J>(bytes) {
        Ok(J::Object(o)) => Ok(o),
        _ => Err(Unreadable::Malformed),
    }
}

/// A client frame as a JSON object, or the dialect's answer to an
/// unreadable one (`refuse` words it; the socket stays open).
pub fn read_frame(
    msg: &Incoming,
    max_bytes: usize,
    refuse: impl FnOnce(Unreadable) -> Outgoing,
) -> std::result::Result<Map<String, J>, (Vec<Outgoing>, Followup)> {
    decode(msg, max_bytes).map_err(|why| (vec![refuse(why)], Followup::None))
}

/// A string field of a frame (`None` when absent, empty or not a string).
pub fn str_field<'a>(frame: &'a Map<String, J>, key: &str) -> Option<&'a str> {
    frame.get(key).and_then(J::as_str).filter(|s| !s.is_empty())
}

/// Checks a credential a dialect client sent: a token from
/// `/api/auth/token` or an API key itself (dialect clients are configured
/// with a key; all dialects share one credential store).
pub fn check_credential(server: &Server, credential: &str, now: Timestamp) -> Option<Principal> {
    let credential = credential.trim();
    if credential.is_empty() {
        return None;
    }
    server.authenticate_credential(credential, now).ok()
}

/// `check_credential` for a stream being opened (or re-authenticated) on
/// `conn`: the stream is bound to the credential, so it closes when a token
/// expires (`--stream-credentials`).
pub fn open_with_credential(
    server: &mut Server,
    conn: Option<ConnId>,
    credential: &str,
    now: Timestamp,
) -> Option<Principal> {
    let principal = check_credential(server, credential, now)?;
    Some(bind(server, conn, principal))
}

/// Binds a stream on `conn` to the credential it was opened with.
fn bind(server: &mut Server, conn: Option<ConnId>, principal: Principal) -> Principal {
    if let Some(conn) = conn {
        server.bind_stream_credential(conn, &principal);
    }
    principal
}

/// `open_with_credential` for a chat dialect's socket: chat reads every
/// collection a session retrieves from, so it needs an admin key until
/// chat sessions are scoped per key; a non-admin key is refused like a
/// bad one (with the dialect's own code).
pub fn open_chat_with_credential(
    server: &mut Server,
    conn: Option<ConnId>,
    credential: &str,
    now: Timestamp,
) -> Option<Principal> {
    let principal = check_credential(server, credential, now)?;
    principal.is_admin().then(|| bind(server, conn, principal))
}

/// New conversations one socket may open per minute (each is a stored
/// chat session: a client looping on "new" must not fill the disk).
pub const NEW_CHATS_PER_MINUTE: usize = 30;

/// The rate window for `NEW_CHATS_PER_MINUTE`.
pub fn new_chats_window() -> RateWindow {
    RateWindow::new(NEW_CHATS_PER_MINUTE, Duration::from_secs(60))
}

/// A new chat session for a dialect's conversation: the default provider
/// and model, with retrieval over every collection there is now.
pub fn open_chat(
    server: &mut Server,
    system_prompt: Option<&str>,
    now: Timestamp,
) -> Result<String> {
    let collections: Vec<J> = server
        .engine()
        .collection_names()
        .map(|c| serde_json::json!({ "collection_name": c }))
        .collect();
    let mut body = serde_json::json!({ "collections": collections });
    if let Some(p) = system_prompt {
        body["system_prompt"] = J::String(p.to_string());
    }
    let s = super::rest::chat::new_session(server, &body, now)?;
    Ok(s.chat_id)
}

/// Whether a chat session exists.
pub fn chat_exists(server: &Server, chat_id: &str, now: Timestamp) -> bool {
    store::load_session(server.engine(), chat_id, now).is_ok()
}

/// Sends a user's message to a chat and streams the answer's events to
/// `conn` in its codec (unless it follows the chat already, and so gets
/// them anyway).
pub fn send(
    server: &mut Server,
    conn: ConnId,
    chat_id: &str,
    message: &str,
    now: Timestamp,
) -> Result<Started> {
    let req = SendRequest {
        message: message.to_string(),
        ..SendRequest::default()
    };
    let started = server.chat_send(chat_id, req, None, now)?;
    if !server.chat_follows(conn, chat_id) {
        server.chat_attach(conn, &started.chat_key, Some(&started.message_id), None);
    }
    Ok(started)
}

/// At most `limit` events in any `window`: a sliding window of their times.
#[derive(Debug, Clone, PartialEq)]
pub struct RateWindow {
    limit: usize,
    window: Duration,
    times: VecDeque<Timestamp>,
}

impl RateWindow {
    pub fn new(limit: usize, window: Duration) -> Self {
        RateWindow {
            limit: limit.max(1),
            window,
            times: VecDeque::new(),
        }
    }

    /// Counts one event at `now`; false (and not counted) when over the limit.
    pub fn admit(&mut self, now: Timestamp) -> bool {
        while self
            .times
            .front()
            .is_some_and(|t| now.since(*t) >= self.window)
        {
            self.times.pop_front();
        }
        if self.times.len() >= self.limit {
            return false;
        }
        self.times.push_back(now);
        true
    }
}

/// An ISO-8601 UTC time with milliseconds and `Z`, as the dialects print it.
pub fn iso(t: Timestamp) -> String {
    let micros = t.to_rfc3339_z();
    // `2026-01-01T00:00:00.123456Z` -> `2026-01-01T00:00:00.123Z`
    match micros.rfind('.') {
        Some(dot) if micros.len() >= dot + 4 => format!("{}Z", &micros[..dot + 4]),
        _ => micros,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_its_limit_then_refuses_until_time_passes() {
        let mut w = RateWindow::new(3, Duration::from_secs(60));
        let t0 = Timestamp::from_micros(1_000_000);
        assert!((0..3).all(|_| w.admit(t0)));
        assert!(!w.admit(t0));
        assert!(!w.admit(t0.saturating_add(Duration::from_secs(59))));
        assert!(w.admit(t0.saturating_add(Duration::from_secs(60))));
    }

    #[test]
    fn frames_are_whole_text_frames() {
        let b = frames(&[serde_json::json!({"a": 1}), serde_json::json!({"b": 2})]);
        assert_eq!(&b[..9], b"\x81\x07{\"a\":1}");
        assert_eq!(b.len(), 18);
    }

    #[test]
    fn iso_has_milliseconds_and_z() {
        let t = Timestamp::parse_rfc3339("2026-07-14T13:45:42.982112+00:00").unwrap();
        assert_eq!(iso(t), "2026-07-14T13:45:42.982Z");
    }

    #[test]
    fn oversized_and_malformed_frames_are_told_apart() {
        let big = Incoming::Text(Bytes::from(vec![b' '; 100]));
        assert_eq!(decode(&big, 10), Err(Unreadable::TooLarge));
        let bad = Incoming::Text(Bytes::from_static(b"{nope"));
        assert_eq!(decode(&bad, 100), Err(Unreadable::Malformed));
        let arr = Incoming::Text(Bytes::from_static(b"[1]"));
        assert_eq!(decode(&arr, 100), Err(Unreadable::Malformed));
    }
}
