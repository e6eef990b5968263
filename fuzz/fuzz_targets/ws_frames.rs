//! Arbitrary bytes into `WsTransport` as a client would send them, in pieces of
//! fuzzer-chosen sizes, polling after each piece until nothing more comes out.
//! Every message respects the size limit and text is UTF-8; an error leaves the
//! transport closing (no data frames may be sent, no message comes out after it);
//! and the piece sizes change nothing: one piece yields the same messages and the
//! same close code.
//!
//! Input: a limit byte (max message = 2^(b % 16) bytes), a piece-size seed byte,
//! then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool_core::wire::ws::{Incoming, WsTransport};

#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Incoming>,
    close: Option<u16>,
}

fn run(stream: &[u8], max: usize, mut seed: u32) -> Outcome {
    let mut t = WsTransport::new(max);
    let mut out = Outcome {
        messages: Vec::new(),
        close: None,
    };
    let mut rest = stream;
    while !rest.is_empty() {
        let n = if seed == 0 {
            rest.len()
        } else {
            // xorshift: pieces of 1..=64 bytes.
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            1 + (seed % 64) as usize
        };
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        t.handle_input(piece);
        loop {
            match t.poll_message() {
                Ok(Some(m)) => {
                    let len = match &m {
                        Incoming::Text(b) => {
                            assert!(std::str::from_utf8(b).is_ok(), "text is not UTF-8");
                            b.len()
                        }
                        Incoming::Binary(b) => b.len(),
                    };
                    assert!(len <= max, "message of {len} bytes, limit {max}");
                    out.messages.push(m);
                }
                Ok(None) => break,
                Err(closing) => {
                    assert!(
                        matches!(closing.code, 1002 | 1007 | 1008 | 1009 | 1011),
                        "close code {}",
                        closing.code
                    );
                    // What `Connection` does: answer with a close frame, stop reading.
                    t.close(closing.code, &closing.reason);
                    assert!(!t.can_write(), "data frames still allowed after {closing:?}");
                    if let Ok(Some(m)) = t.poll_message() {
                        panic!("message {m:?} after the transport failed");
                    }
                    let _ = t.take_output();
                    out.close = Some(closing.code);
                    return out;
                }
            }
        }
        let _ = t.take_output();
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [limit, seed, stream @ ..] = data else {
        return;
    };
    let max = 1usize << (limit % 16);
    let pieces = run(stream, max, u32::from(*seed) | 0x100);
    let whole = run(stream, max, 0);
    assert_eq!(pieces, whole, "piece sizes changed the outcome");
});
