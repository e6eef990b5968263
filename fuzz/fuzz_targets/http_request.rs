//! Arbitrary bytes through `RequestParser`, once in one piece and once split in
//! two `parse` calls. The parser must never consume more than it was given, never
//! hand back a body over the limit, and must not care how the bytes were cut: both
//! feeds yield the same requests, then the same error status (or none).
//!
//! Input: one split byte, then the stream. The split point is the byte's share of
//! the stream (0 = everything in the second call, 255 = everything in the first).
#![no_main]

use libfuzzer_sys::fuzz_target;
use bytes::BytesMut;
use tidepool_core::wire::http::{HttpError, Limits, Request, RequestParser};

/// Small enough that the fuzzer reaches every limit with inputs of a few KiB.
const LIMITS: Limits = Limits {
    max_head_bytes: 512,
    max_body_bytes: 256,
    max_headers: 8,
    admit_bodies_above: 64,
};

/// What an admitted body may carry (as a server admits an unauthenticated
/// route's body with a smaller limit).
const ADMITTED: usize = 128;

/// Everything a request carries, comparable.
type Seen = (String, String, String, u8, Vec<(String, String)>, Vec<u8>);

fn seen(r: &Request) -> Seen {
    (
        r.method.as_str().to_string(),
        r.path.clone(),
        r.query.clone(),
        r.minor_version,
        r.headers.clone(),
        r.body.to_vec(),
    )
}

/// Feeds `pieces` one after the other, parsing everything complete after each.
fn run(pieces: &[&[u8]]) -> (Vec<Seen>, Option<u16>) {
    let mut parser = RequestParser::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut given = 0usize;
    let mut consumed = 0usize;
    for piece in pieces {
        buf.extend_from_slice(piece);
        given += piece.len();
        loop {
            let before = buf.len();
            let step = parser.parse(&mut buf);
            assert!(buf.len() <= before, "parse grew its input");
            consumed += before - buf.len();
            assert!(consumed <= given, "consumed {consumed} of {given} bytes");
            assert_eq!(consumed + buf.len(), given);
            match step {
                Ok(Some(r)) => {
                    assert!(
                        r.body.len() <= LIMITS.admit_bodies_above.max(ADMITTED),
                        "body of {} bytes over the limit",
                        r.body.len()
                    );
                    out.push(seen(&r));
                }
                Ok(None) => {
                    let Some((head, size)) = parser.awaiting_admission() else {
                        break;
                    };
                    assert!(size.is_none_or(|n| n > LIMITS.admit_bodies_above));
                    assert!(head.body.is_empty());
                    parser.admit(ADMITTED);
                }
                Err(e) => {
                    check_error(&e);
                    return (out, Some(e.status()));
                }
            }
        }
    }
    (out, None)
}

fn check_error(e: &HttpError) {
    assert!(matches!(e.status(), 400 | 413 | 431 | 501));
    let _ = e.message();
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let at = stream.len() * usize::from(cut) / 255;
    let whole = run(&[stream]);
    let split = run(&[&stream[..at], &stream[at..]]);
    assert_eq!(whole, split, "one piece vs split at {at}");
});
