//! How many values a body decodes to, counted before anything is decoded.
//!
//! A body's decoded size is not bounded by its length: a MessagePack `0x90`
//! (an empty array) is one byte on the wire and 32 bytes decoded, and a
//! length prefix can ask for a vector of millions of slots. Counting first,
//! without allocating, lets a hostile body be refused for the cost of one
//! pass over its bytes.

/// The most values (array elements, map keys and map values, scalars, the
/// containers themselves) one body may decode to. A few hundred MiB decoded
/// at worst, whatever the body's shape; a batch of 1,000 records of 1,536
/// dimensions fits.
pub const MAX_BODY_VALUES: usize = 2_000_000;

/// The refusal when a body holds more than `limit` values.
pub fn too_many(limit: usize) -> String {
    format!(
        "the body holds more than {limit} values (arrays, keys and scalars count); split it into smaller requests"
    )
}

/// What the pass over a body found that refuses it before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// More values than the limit.
    TooMany,
    /// An integer outside the signed 64-bit range: the decoder would turn it
    /// into a float and change it, so it is refused instead.
    WideInteger,
}

/// The refusal of an integer that does not fit in 64 bits.
pub const WIDE_INTEGER: &str = "an integer in the body does not fit in 64 bits (-9223372036854775808 to 9223372036854775807), and numbers are kept exactly, never rounded; send it as a Decimal ({\"type\": \"Decimal\", \"value\": \"123...\"}) or a string";

/// Whether a JSON integer literal (no fraction, no exponent) fits in i64.
fn fits_i64(literal: &[u8]) -> bool {
    std::str::from_utf8(literal).is_ok_and(|t| t.parse::<i64>().is_ok())
}

/// Checks a JSON text: at most `limit` values (an upper bound: every value
/// after the first is introduced by `[`, `{`, `,` or `:` outside a string,
/// so their count plus one covers every value and key) and no integer
/// literal outside i64. Malformed text passes here and is refused by the
/// parser.
pub fn json_check(body: &[u8], limit: usize) -> Result<(), Refusal> {
    let mut count = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    // The number being read: where it started, and whether it is a float.
    let mut number: Option<(usize, bool)> = None;
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match (b, number) {
            (b'0'..=b'9', _) | (b'-', None) => {
                number.get_or_insert((i, false));
                continue;
            }
            (b'.' | b'e' | b'E' | b'+' | b'-', Some((start, _))) => {
                number = Some((start, true));
                continue;
            }
            _ => {}
        }
        // Only long literals can overflow: 19 digits and a sign at most fit.
        if let Some((start, false)) = number.take() {
            if i - start > 18 && !fits_i64(&body[start..i]) {
                return Err(Refusal::WideInteger);
            }
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' | b',' | b':' => {
                count += 1;
                if count > limit {
                    return Err(Refusal::TooMany);
                }
            }
            _ => {}
        }
    }
    match number {
        Some((start, false)) if body.len() - start > 18 && !fits_i64(&body[start..]) => {
            Err(Refusal::WideInteger)
        }
        _ => Ok(()),
    }
}

/// Checks a MessagePack message: at most `limit` values, walking its markers
/// and skipping payloads without allocating, and no `uint 64` above i64.
/// Truncated or malformed input passes here and is refused by the decoder.
pub fn msgpack_check(body: &[u8], limit: usize) -> Result<(), Refusal> {
    let mut pos = 0usize;
    // Values still to read: 1 for the top level, plus every announced
    // element.
    let mut pending: u64 = 1;
    let mut count = 0usize;
    let be = |at: usize, n: usize| -> Option<u64> {
        body.get(at..at.checked_add(n)?)
            .map(|s| s.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
    };
    while pending > 0 {
        let Some(&marker) = body.get(pos) else {
            return Ok(());
        };
        pos += 1;
        pending -= 1;
        count += 1;
        if count > limit {
            return Err(Refusal::TooMany);
        }
        // (payload bytes to skip, elements announced)
        let (skip, elements): (u64, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0..=0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc4..=0xc6 | 0xd9..=0xdb => {
                let width = match marker {
                    0xc4 | 0xd9 => 1,
                    0xc5 | 0xda => 2,
                    _ => 4,
                };
                let Some(n) = be(pos, width) else {
                    return Ok(());
                };
                pos += width;
                (n, 0)
            }
            0xc7..=0xc9 => {
                let width = 1 << (marker - 0xc7);
                let Some(n) = be(pos, width) else {
                    return Ok(());
                };
                pos += width;
                (n + 1, 0)
            }
            0xca | 0xce | 0xd2 => (4, 0),
            0xcf if be(pos, 8).is_some_and(|v| v > i64::MAX as u64) => {
                return Err(Refusal::WideInteger)
            }
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xd4..=0xd8 => (1 + (1u64 << (marker - 0xd4)), 0),
            0xdc | 0xdd => {
                let width = if marker == 0xdc { 2 } else { 4 };
                let Some(n) = be(pos, width) else {
                    return Ok(());
                };
                pos += width;
                (0, n)
            }
            0xde | 0xdf => {
                let width = if marker == 0xde { 2 } else { 4 };
                let Some(n) = be(pos, width) else {
                    return Ok(());
                };
                pos += width;
                (0, 2 * n)
            }
        };
        let Some(next) = usize::try_from(skip)
            .ok()
            .and_then(|s| pos.checked_add(s))
            .filter(|p| *p <= body.len())
        else {
            return Ok(());
        };
        pos = next;
        pending = pending.saturating_add(elements);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_counts_every_value_and_key() {
        assert!(json_check(br#"{"a":1,"b":[1,2]}"#, 7).is_ok());
        assert_eq!(
            json_check(br#"{"a":1,"b":[1,2]}"#, 5),
            Err(Refusal::TooMany)
        );
        // Structure inside strings is text, not values.
        assert!(json_check(br#"["[,{:,\"]"]"#, 2).is_ok());
        assert!(json_check(b"[[],[],[],[]]", 4).is_err());
    }

    #[test]
    fn msgpack_counts_without_reading_payloads() {
        // [nil, "abc", {"k": 1}]: the array, nil, the string, the map, its key and value.
        let body = [0x93, 0xc0, 0xa3, b'a', b'b', b'c', 0x81, 0xa1, b'k', 0x01];
        assert!(msgpack_check(&body, 6).is_ok());
        assert_eq!(msgpack_check(&body, 5), Err(Refusal::TooMany));
    }

    #[test]
    fn integers_beyond_64_bits_are_found() {
        let json = |t: &str| json_check(t.as_bytes(), 100);
        for ok in [
            "9223372036854775807",
            "-9223372036854775808",
            r#"{"n": 1.8446744073709552e19, "m": 18446744073709551616.5}"#,
            r#"{"s": "18446744073709551616"}"#,
            "[1e400, -0.0000000000000000001]",
        ] {
            assert_eq!(json(ok), Ok(()), "{ok}");
        }
        for wide in [
            "9223372036854775808",
            "-9223372036854775809",
            r#"{"n": 18446744073709551616}"#,
            "[1, 99999999999999999999999, 2]",
        ] {
            assert_eq!(json(wide), Err(Refusal::WideInteger), "{wide}");
        }
        let mut top = vec![0xcf];
        top.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
        assert!(msgpack_check(&top, 10).is_ok());
        top[1..].copy_from_slice(&(i64::MAX as u64 + 1).to_be_bytes());
        assert_eq!(msgpack_check(&top, 10), Err(Refusal::WideInteger));
    }

    #[test]
    fn a_flood_of_empty_arrays_is_refused_early() {
        let mut body = vec![0xdd];
        body.extend_from_slice(&(3_000_000u32).to_be_bytes());
        body.extend(std::iter::repeat_n(0x90, 3_000_000));
        assert!(msgpack_check(&body, MAX_BODY_VALUES).is_err());
        let json = format!("[{}[]]", "[],".repeat(3_000_000));
        assert!(json_check(json.as_bytes(), MAX_BODY_VALUES).is_err());
    }

    #[test]
    fn truncated_input_is_left_to_the_decoder() {
        assert!(msgpack_check(&[0xdd, 0xff, 0xff, 0xff, 0xff], 10).is_ok());
        assert!(msgpack_check(&[0xd9], 10).is_ok());
    }
}
