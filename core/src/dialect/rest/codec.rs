//! Content negotiation (spec 1.3): the request body's format comes from
//! `Content-Type`, the response's from `Accept`. Both JSON and MessagePack bodies
//! decode into the same `serde_json::Value` (`wire::format`), so handlers never
//! see the difference.

use crate::error::Result;
use crate::wire::format::{decode, Format};
use crate::wire::http::Request;
use serde_json::Value as J;

fn is_msgpack(media: &str) -> bool {
    let media = media.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/msgpack")
        || media.eq_ignore_ascii_case("application/x-msgpack")
        || media.eq_ignore_ascii_case("application/vnd.msgpack")
}

pub fn request_format(req: &Request) -> Format {
    match req.header("content-type") {
        Some(ct) if is_msgpack(ct) => Format::MsgPack,
        _ => Format::Json,
    }
}

pub fn response_format(req: &Request) -> Format {
    match req.header("accept") {
        Some(a) if a.split(',').any(is_msgpack) => Format::MsgPack,
        _ => Format::Json,
    }
}

/// Decodes a request body; an empty body is `{}` (clients send bodyless POSTs and
/// DELETEs with a Content-Type).
pub fn decode_body(req: &Request) -> Result<J> {
    decode(&req.body, request_format(req))
}
