//! The SSE framing both ways.
//!
//! (a) The input as raw stream bytes: `SseDecoder` never panics, and feeding it in
//!     two pieces (split at the first byte's share) yields the same events as one.
//! (b) The input as a list of events: strings the fuzzer picks for id, name and
//!     data go through `sse::event` (with heartbeats between some events), and
//!     decoding the concatenation, cut into fuzzer-sized pieces, yields exactly
//!     those events. Names never hold a line break (our names are constants);
//!     ids and data may: `event` strips CR/LF from ids and turns them into spaces
//!     in data, so that is what must come back. An empty name reads back as
//!     `message`, the SSE default.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tidepool_core::wire::sse::{self, SseDecoder, SseEvent};

fn decode_pieces(stream: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
    let mut d = SseDecoder::default();
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let c = c.clamp(at, stream.len());
        out.extend(d.push(&stream[at..c]));
        at = c;
    }
    out.extend(d.push(&stream[at..]));
    out
}

fn raw(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let at = stream.len() * usize::from(cut) / 255;
    let whole = decode_pieces(stream, &[]);
    let split = decode_pieces(stream, &[at]);
    assert_eq!(whole, split, "split at {at}");
    for ev in &whole {
        assert!(!ev.event.is_empty());
    }
}

fn round_trip(u: &mut Unstructured<'_>) -> Result<()> {
    let n = u.int_in_range(0..=8)?;
    let mut stream = Vec::new();
    let mut want = Vec::new();
    for _ in 0..n {
        let id: Option<String> = u.arbitrary()?;
        let name: String = u.arbitrary()?;
        let name: String = name.chars().filter(|c| *c != '\n' && *c != '\r').collect();
        let data: String = u.arbitrary()?;
        if u.arbitrary()? {
            stream.extend_from_slice(sse::HEARTBEAT);
        }
        stream.extend_from_slice(&sse::event(id.as_deref(), &name, data.as_bytes()));
        want.push(SseEvent {
            id: id.map(|i| i.chars().filter(|c| *c != '\n' && *c != '\r').collect()),
            event: if name.is_empty() {
                "message".to_string()
            } else {
                name
            },
            data: data.replace(['\n', '\r'], " "),
        });
    }
    let mut cuts = Vec::new();
    while !u.is_empty() && cuts.len() < 16 {
        cuts.push(u.int_in_range(0..=stream.len())?);
    }
    cuts.sort_unstable();
    let got = decode_pieces(&stream, &cuts);
    assert_eq!(got, want, "stream {:?}", String::from_utf8_lossy(&stream));
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    raw(data);
    let _ = round_trip(&mut Unstructured::new(data));
});
