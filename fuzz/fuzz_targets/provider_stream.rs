//! Arbitrary bytes as an LLM provider's streamed answer (the de-chunked body),
//! fed to the OpenAI-compatible or the Anthropic stream parser in pieces.
//! Invariants besides "no panic": the outcome does not depend on how the
//! bytes are split, the text and tool arguments that come out are never
//! longer than what went in, and at most one `Finish` comes from a stream.
//!
//! Input: a control byte (bit 0 picks the API, the rest seeds the piece
//! sizes), then the body bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool_core::providers::{Api, ProviderEvent, StreamParser};

fn parse(api: Api, pieces: &[&[u8]]) -> Result<Vec<ProviderEvent>, String> {
    let mut p = StreamParser::new(api).expect("a streaming API");
    let mut out = Vec::new();
    for piece in pieces {
        out.extend(p.feed(piece).map_err(|e| e.to_string())?);
    }
    out.extend(p.finish().map_err(|e| e.to_string())?);
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let api = if control & 1 == 0 { Api::OpenAi } else { Api::Anthropic };
    let whole = parse(api, &[input]);
    let mut seed = u32::from(control >> 1) | 1;
    let mut pieces = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (1 + seed % 48) as usize;
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    let split = parse(api, &pieces);
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the split changed the answer"),
        (Err(_), Err(_)) => {}
        _ => panic!("whole {whole:?} but split {split:?}"),
    }
    if let Ok(events) = whole {
        let mut text = 0;
        let mut finishes = 0;
        for e in &events {
            match e {
                ProviderEvent::Text(t) => text += t.len(),
                ProviderEvent::ToolCall(c) => {
                    // "{}" stands in for empty arguments.
                    assert!(c.arguments.len() <= input.len() + 2, "arguments out of nothing");
                }
                ProviderEvent::Finish(_) => finishes += 1,
                ProviderEvent::Usage { .. } => {}
            }
        }
        assert!(text <= input.len(), "more text out than bytes in");
        assert!(finishes <= 1, "two finishes: {events:?}");
    }
});
