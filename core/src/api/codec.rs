//! Content negotiation (spec 1.3): the request body's format comes from
//! `Content-Type`, the response's from `Accept`. Both JSON and MessagePack bodies
//! decode into the same `serde_json::Value`, so handlers never see the difference.

use crate::error::{Error, Result};
use crate::http::Request;
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value as J;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    MsgPack,
}

const MAX_DEPTH: usize = 128;

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

pub fn decode(body: &[u8], format: Format) -> Result<J> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(J::Object(Default::default()));
    }
    match format {
        Format::Json => serde_json::from_slice(body)
            .map_err(|e| Error::invalid(format!("malformed JSON body: {e}"))),
        Format::MsgPack => decode_msgpack(body),
    }
}

fn decode_msgpack(body: &[u8]) -> Result<J> {
    let mut rest = body;
    let value = rmpv::decode::read_value_with_max_depth(&mut rest, MAX_DEPTH)
        .map_err(|e| Error::invalid(format!("malformed MessagePack body: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::invalid(
            "malformed MessagePack body: trailing bytes after the value",
        ));
    }
    msgpack_to_json(value)
}

/// MessagePack → JSON model. `bin` becomes a Binary envelope and the timestamp
/// extension an RFC 3339 string, so the usual inference types them (spec 1.3.3).
pub fn msgpack_to_json(v: rmpv::Value) -> Result<J> {
    use rmpv::Value as M;
    Ok(match v {
        M::Nil => J::Null,
        M::Boolean(b) => J::Bool(b),
        M::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(x), _) => J::from(x),
            (None, Some(x)) => J::from(x),
            _ => J::Null,
        },
        M::F32(f) => float(f64::from(f))?,
        M::F64(f) => float(f)?,
        M::String(s) => match s.into_str() {
            Some(s) => J::String(s),
            None => return Err(Error::invalid("MessagePack string is not valid UTF-8")),
        },
        M::Binary(b) => serde_json::json!({
            "type": "Binary",
            "value": base64::engine::general_purpose::STANDARD.encode(b),
        }),
        M::Array(items) => J::Array(
            items
                .into_iter()
                .map(msgpack_to_json)
                .collect::<Result<_>>()?,
        ),
        M::Map(pairs) => {
            let mut obj = serde_json::Map::with_capacity(pairs.len());
            for (k, v) in pairs {
                let key = match k {
                    M::String(s) => s
                        .into_str()
                        .ok_or_else(|| Error::invalid("MessagePack map key is not valid UTF-8"))?,
                    M::Integer(i) => i.to_string(),
                    other => {
                        return Err(Error::invalid(format!(
                            "MessagePack map keys must be strings, got {other}"
                        )))
                    }
                };
                obj.insert(key, msgpack_to_json(v)?);
            }
            J::Object(obj)
        }
        M::Ext(-1, data) => J::String(timestamp_ext(&data)?),
        M::Ext(tag, _) => {
            return Err(Error::invalid(format!(
                "unsupported MessagePack extension type {tag}"
            )))
        }
    })
}

fn float(f: f64) -> Result<J> {
    serde_json::Number::from_f64(f)
        .map(J::Number)
        .ok_or_else(|| Error::invalid("NaN and infinite numbers cannot be stored"))
}

/// The MessagePack timestamp extension (4, 8 or 12 bytes) as RFC 3339.
fn timestamp_ext(data: &[u8]) -> Result<String> {
    let bad = || Error::invalid("malformed MessagePack timestamp");
    let (secs, nanos): (i64, u32) = match data.len() {
        4 => (
            i64::from(u32::from_be_bytes(data.try_into().map_err(|_| bad())?)),
            0,
        ),
        8 => {
            let v = u64::from_be_bytes(data.try_into().map_err(|_| bad())?);
            ((v & 0x3_FFFF_FFFF) as i64, (v >> 34) as u32)
        }
        12 => {
            let nanos = u32::from_be_bytes(data[..4].try_into().map_err(|_| bad())?);
            let secs = i64::from_be_bytes(data[4..].try_into().map_err(|_| bad())?);
            (secs, nanos)
        }
        _ => return Err(bad()),
    };
    let micros = secs
        .checked_mul(1_000_000)
        .and_then(|m| m.checked_add(i64::from(nanos / 1000)))
        .ok_or_else(bad)?;
    Ok(crate::time::Timestamp::from_micros(micros).to_rfc3339())
}

/// Encodes a response body; MessagePack always with named maps (spec 1.3.4).
pub fn encode<T: Serialize + ?Sized>(format: Format, value: &T) -> Result<Bytes> {
    match format {
        Format::Json => serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| Error::internal(e.to_string())),
        Format::MsgPack => rmp_serde::to_vec_named(value)
            .map(Bytes::from)
            .map_err(|e| Error::internal(e.to_string())),
    }
}

pub fn content_type(format: Format) -> &'static str {
    match format {
        Format::Json => "application/json",
        Format::MsgPack => "application/msgpack",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn msgpack_decodes_like_json() {
        let v = json!({"a": 1, "b": [true, null, "x"], "c": {"d": -5}, "e": 1.5});
        let packed = rmp_serde::to_vec_named(&v).unwrap();
        assert_eq!(decode(&packed, Format::MsgPack).unwrap(), v);
    }

    #[test]
    fn bin_and_timestamps() {
        let bin = rmpv::Value::Binary(vec![1, 2, 3]);
        assert_eq!(
            msgpack_to_json(bin).unwrap(),
            json!({"type":"Binary","value":"AQID"})
        );
        let ts = rmpv::Value::Ext(-1, 1_700_000_000u32.to_be_bytes().to_vec());
        assert_eq!(
            msgpack_to_json(ts).unwrap(),
            json!("2023-11-14T22:13:20.000000+00:00")
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"{not json", Format::Json).is_err());
        assert!(decode(&[0xd9], Format::MsgPack).is_err()); // str8 without its length
        assert!(decode(&[0x91], Format::MsgPack).is_err()); // truncated array
        let mut deep = vec![0x91u8; 10_000];
        deep.push(0xc0);
        assert!(decode(&deep, Format::MsgPack).is_err());
        assert_eq!(decode(b"  ", Format::Json).unwrap(), json!({}));
    }
}
