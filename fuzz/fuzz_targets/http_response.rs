//! Arbitrary bytes as a provider's HTTP response, fed to the incremental
//! `ResponseParser` in pieces. Invariants besides "no panic": the events do not
//! depend on how the bytes are split (whole versus the control byte's cuts),
//! `Data` comes only between a `Head` and `End`, nothing follows `End`, and the
//! parser never holds more than its head limit plus one chunk line.
//!
//! Input: a control byte (seeds the piece sizes), then the response bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool_core::wire::http::client::{ResponseEvent, ResponseParser};

const MAX_HEAD: usize = 4096;

/// Status, body and whether it ended cleanly; or the error.
fn parse(pieces: &[&[u8]]) -> Result<(Option<u16>, Vec<u8>), String> {
    let mut p = ResponseParser::new(MAX_HEAD);
    let mut events = Vec::new();
    for piece in pieces {
        p.feed(piece, &mut events).map_err(|e| e.to_string())?;
        assert!(p.buffered() <= MAX_HEAD + 4096 + piece.len(), "unbounded buffer");
    }
    p.finish(&mut events).map_err(|e| e.to_string())?;
    let (mut status, mut body, mut ended) = (None, Vec::new(), false);
    for e in events {
        assert!(!ended, "an event after End");
        match e {
            ResponseEvent::Head(h) => {
                assert!(status.is_none(), "two heads");
                status = Some(h.status);
            }
            ResponseEvent::Data(d) => {
                assert!(status.is_some(), "data before the head");
                body.extend_from_slice(&d);
            }
            ResponseEvent::End => {
                assert!(status.is_some(), "End before the head");
                ended = true;
            }
        }
    }
    assert!(ended, "finish succeeded without End");
    Ok((status, body))
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let whole = parse(&[input]);
    let mut seed = u32::from(control) | 1;
    let mut pieces = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (1 + seed % 64) as usize;
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    let split = parse(&pieces);
    // The same outcome, except that an error may be noticed at a different
    // place (its wording can differ): success must agree exactly.
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the split changed the response"),
        (Err(_), Err(_)) => {}
        _ => panic!("whole {whole:?} but split {split:?}"),
    }
});
