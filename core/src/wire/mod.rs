//! Framing only: bytes in, typed frames out, and back. HTTP/1.1 requests and
//! responses (and outbound requests to providers), WebSocket frames, SSE events.
//! No route, message type or JSON shape lives here; those are the dialects'.

pub mod format;
pub mod http;
pub mod sse;
pub mod value_count;
pub mod ws;
