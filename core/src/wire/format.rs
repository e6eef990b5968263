//! Body encodings: JSON and MessagePack, decoded into the same JSON model and
//! encoded from any `Serialize` value. MessagePack is read by a total decoder:
//! every length is checked against the bytes that remain before anything is
//! allocated, `bin` becomes a Binary envelope and the timestamp extension an
//! RFC 3339 string (spec 1.3.3), and the reserved marker 0xc1 is an error.

use crate::error::{Error, ErrorKind, Result};
use crate::wire::value_count::{self, Refusal, MAX_BODY_VALUES};
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value as J;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    MsgPack,
}

const MAX_DEPTH: usize = 128;

pub fn decode(body: &[u8], format: Format) -> Result<J> {
    match decode_reporting_wide(body, format)? {
        (value, None) => Ok(value),
        (_, Some(refusal)) => Err(refusal),
    }
}

/// `decode` for a message that is answered even when refused (a WebSocket
/// message carries the id its error must name): a body with an integer
/// beyond i64 still decodes, and the refusal comes beside it.
pub fn decode_reporting_wide(body: &[u8], format: Format) -> Result<(J, Option<Error>)> {
    // In MessagePack, whitespace bytes are small integers: only JSON may be blank.
    let blank = match format {
        Format::Json => body.iter().all(u8::is_ascii_whitespace),
        Format::MsgPack => body.is_empty(),
    };
    if blank {
        return Ok((J::Object(Default::default()), None));
    }
    // Checked before decoding: a hostile body is refused without building
    // it, and a number the decoder would change is refused, not changed.
    let checked = match format {
        Format::Json => value_count::json_check(body, MAX_BODY_VALUES),
        Format::MsgPack => value_count::msgpack_check(body, MAX_BODY_VALUES),
    };
    let wide = match checked {
        Ok(()) => None,
        Err(Refusal::TooMany) => {
            return Err(Error::new(
                ErrorKind::TooLarge,
                value_count::too_many(MAX_BODY_VALUES),
            ))
        }
        Err(Refusal::WideInteger) => Some(Error::invalid(value_count::WIDE_INTEGER)),
    };
    let value = match format {
        Format::Json => serde_json::from_slice(body)
            .map_err(|e| Error::invalid(format!("malformed JSON body: {e}")))?,
        Format::MsgPack => decode_msgpack(body)?,
    };
    Ok((value, wide))
}

fn decode_msgpack(body: &[u8]) -> Result<J> {
    let mut reader = MsgPackReader { buf: body, pos: 0 };
    let value = reader
        .value(0)
        .map_err(|e| Error::invalid(format!("malformed MessagePack body: {e}")))?;
    if reader.pos != body.len() {
        return Err(Error::invalid(
            "malformed MessagePack body: trailing bytes after the value",
        ));
    }
    Ok(value)
}

/// A total MessagePack decoder straight into the JSON model. Every length is
/// checked against the bytes that remain before anything is allocated; the
/// reserved marker 0xc1 is an error; `bin` becomes a Binary envelope and the
/// timestamp extension an RFC 3339 string, so inference types them (spec 1.3.3).
struct MsgPackReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Step<T> = std::result::Result<T, String>;

impl<'a> MsgPackReader<'a> {
    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        match self.pos.checked_add(n).filter(|e| *e <= self.buf.len()) {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!("truncated at byte {}", self.pos)),
        }
    }

    fn uint(&mut self, n: usize) -> Step<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
    }

    /// A length prefix; a claim beyond the bytes that remain is refused before
    /// anything is allocated (every element takes at least one byte).
    fn len(&mut self, n: usize) -> Step<usize> {
        let len = self.uint(n)?;
        usize::try_from(len)
            .ok()
            .filter(|l| *l <= self.buf.len() - self.pos)
            .ok_or_else(|| format!("length {len} exceeds the message"))
    }

    fn value(&mut self, depth: usize) -> Step<J> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f => J::from(marker),
            0xe0..=0xff => J::from(marker as i8),
            0x80..=0x8f => self.map((marker & 0x0f) as usize, depth)?,
            0x90..=0x9f => self.array((marker & 0x0f) as usize, depth)?,
            0xa0..=0xbf => self.string((marker & 0x1f) as usize)?,
            0xc0 => J::Null,
            0xc1 => return Err("reserved marker 0xc1".to_string()),
            0xc2 => J::Bool(false),
            0xc3 => J::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (marker - 0xc4))?;
                let bytes = self.take(n)?;
                serde_json::json!({
                    "type": "Binary",
                    "value": base64::engine::general_purpose::STANDARD.encode(bytes),
                })
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (marker - 0xc7))?;
                self.ext(n)?
            }
            0xca => {
                let bits = self.uint(4)? as u32;
                float(f64::from(f32::from_bits(bits))).map_err(|e| e.message)?
            }
            0xcb => float(f64::from_bits(self.uint(8)?)).map_err(|e| e.message)?,
            0xcc..=0xcf => J::from(self.uint(1 << (marker - 0xcc))?),
            0xd0 => J::from(self.take(1)?[0] as i8),
            0xd1 => J::from(self.uint(2)? as u16 as i16),
            0xd2 => J::from(self.uint(4)? as u32 as i32),
            0xd3 => J::from(self.uint(8)? as i64),
            0xd4..=0xd8 => self.ext(1 << (marker - 0xd4))?,
            0xd9..=0xdb => {
                let n = self.len(1 << (marker - 0xd9))?;
                self.string(n)?
            }
            0xdc | 0xdd => {
                let n = self.len(if marker == 0xdc { 2 } else { 4 })?;
                self.array(n, depth)?
            }
            0xde | 0xdf => {
                let n = self.len(if marker == 0xde { 2 } else { 4 })?;
                self.map(n, depth)?
            }
        })
    }

    fn string(&mut self, n: usize) -> Step<J> {
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(|s| J::String(s.to_string()))
            .map_err(|_| "a string is not valid UTF-8".to_string())
    }

    fn array(&mut self, n: usize, depth: usize) -> Step<J> {
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(J::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Step<J> {
        let mut obj = serde_json::Map::new();
        for _ in 0..n {
            let key = match self.value(depth + 1)? {
                J::String(s) => s,
                J::Number(n) => n.to_string(),
                other => return Err(format!("map keys must be strings, got {other}")),
            };
            obj.insert(key, self.value(depth + 1)?);
        }
        Ok(J::Object(obj))
    }

    fn ext(&mut self, n: usize) -> Step<J> {
        let tag = self.take(1)?[0] as i8;
        let data = self.take(n)?;
        if tag != -1 {
            return Err(format!("unsupported extension type {tag}"));
        }
        timestamp_ext(data).map(J::String).map_err(|e| e.message)
    }
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
    // The extension's nanoseconds are within a second (MessagePack spec).
    if nanos >= 1_000_000_000 {
        return Err(Error::invalid(
            "malformed MessagePack timestamp: nanoseconds must be under 10^9",
        ));
    }
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
        let bin = [0xc4, 3, 1, 2, 3];
        assert_eq!(
            decode(&bin, Format::MsgPack).unwrap(),
            json!({"type":"Binary","value":"AQID"})
        );
        let mut ts = vec![0xd6, 0xff];
        ts.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        assert_eq!(
            decode(&ts, Format::MsgPack).unwrap(),
            json!("2023-11-14T22:13:20.000000+00:00")
        );
        // timestamp96 with 10^9 nanoseconds: not a time.
        let mut bad = vec![0xc7, 12, 0xff];
        bad.extend_from_slice(&1_000_000_000u32.to_be_bytes());
        bad.extend_from_slice(&1_700_000_000i64.to_be_bytes());
        let e = decode(&bad, Format::MsgPack).unwrap_err();
        assert!(e.message.contains("nanoseconds"), "{}", e.message);
        // timestamp64 packs nanoseconds in 30 bits: 10^9 and above refused too.
        let v: u64 = (1_000_000_000u64 << 34) | 1_700_000_000;
        let mut bad = vec![0xd7, 0xff];
        bad.extend_from_slice(&v.to_be_bytes());
        assert!(decode(&bad, Format::MsgPack).is_err());
    }

    #[test]
    fn every_width_of_integer_and_float() {
        let check = |bytes: &[u8], want: serde_json::Value| {
            assert_eq!(
                decode(bytes, Format::MsgPack).unwrap(),
                want,
                "{bytes:02x?}"
            )
        };
        check(&[0x05], json!(5));
        check(&[0xff], json!(-1));
        check(&[0xcc, 200], json!(200));
        check(&[0xcd, 1, 0], json!(256));
        check(
            &[0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            json!(i64::MAX),
        );
        // Above i64 it would become a float: refused rather than changed.
        let e = decode(
            &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            Format::MsgPack,
        )
        .unwrap_err();
        assert!(e.message.contains("64 bits"), "{}", e.message);
        check(&[0xd0, 0x80], json!(-128));
        check(&[0xd1, 0xff, 0x00], json!(-256));
        check(
            &[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe],
            json!(-2),
        );
        check(&[0xca, 0x3f, 0xc0, 0, 0], json!(1.5));
        check(
            &[0x81, 0xa1, b'a', 0x92, 0xc3, 0xc0],
            json!({"a": [true, null]}),
        );
        let wide = json!({"k": "x".repeat(300), "n": -70000, "f": 0.1, "m": {"z": [1, 2]}});
        let packed = rmp_serde::to_vec_named(&wide).unwrap();
        assert_eq!(decode(&packed, Format::MsgPack).unwrap(), wide);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"{not json", Format::Json).is_err());
        assert!(decode(&[0xd9], Format::MsgPack).is_err()); // str8 without its length
        assert!(decode(&[0x91], Format::MsgPack).is_err()); // truncated array
        assert!(decode(&[0xc1], Format::MsgPack).is_err()); // reserved marker
        assert!(decode(&[0x81, 0xa1, b'a', 0xc1], Format::MsgPack).is_err());
        assert!(decode(&[0xdd, 0xff, 0xff, 0xff, 0xff], Format::MsgPack).is_err()); // huge length
        let mut deep = vec![0x91u8; 10_000];
        deep.push(0xc0);
        assert!(decode(&deep, Format::MsgPack).is_err());
        assert_eq!(decode(b"  ", Format::Json).unwrap(), json!({}));
    }
}
