//! Server-Sent Events framing (spec C2): `event: NAME\ndata: JSON\n\n`, LF only,
//! exactly one space after each field name, an `id:` on every event, and comment
//! heartbeats. The decoder is for tests and fuzzing.

use bytes::Bytes;

/// One event as bytes. `data` must be a single line (JSON from serde_json is).
pub fn event(id: Option<&str>, name: &str, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + name.len() + 32);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend(id.bytes().filter(|b| *b != b'\n' && *b != b'\r'));
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend(
        data.iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

pub const HEARTBEAT: &[u8] = b": keepalive\n\n";

/// A parsed event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Incremental SSE parser (WHATWG rules, enough for our own streams).
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
}

impl SseDecoder {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block[..end]);
            let mut ev = SseEvent::default();
            let mut data: Vec<&str> = Vec::new();
            let mut any = false;
            for line in text.split('\n') {
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => {
                        ev.id = Some(value.to_string());
                        any = true
                    }
                    "event" => {
                        ev.event = value.to_string();
                        any = true
                    }
                    "data" => {
                        data.push(value);
                        any = true
                    }
                    _ => {}
                }
            }
            if any {
                ev.data = data.join("\n");
                if ev.event.is_empty() {
                    ev.event = "message".to_string();
                }
                out.push(ev);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&event(Some("7:1"), "mutation", br#"{"a":1}"#));
        stream.extend_from_slice(HEARTBEAT);
        stream.extend_from_slice(&event(None, "heartbeat", b"{}"));
        for split in 0..stream.len() {
            let mut d = SseDecoder::default();
            let mut got = d.push(&stream[..split]);
            got.extend(d.push(&stream[split..]));
            assert_eq!(
                got,
                vec![
                    SseEvent {
                        id: Some("7:1".into()),
                        event: "mutation".into(),
                        data: r#"{"a":1}"#.into()
                    },
                    SseEvent {
                        id: None,
                        event: "heartbeat".into(),
                        data: "{}".into()
                    },
                ]
            );
        }
        assert_eq!(&event(None, "x", b"a\nb")[..], b"event: x\ndata: a b\n\n");
    }
}
