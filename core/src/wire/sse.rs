//! Server-Sent Events framing (spec C2): `event: NAME\ndata: JSON\n\n`, LF only,
//! exactly one space after each field name, an `id:` on every event, and comment
//! heartbeats. The parser reads providers' streams (and our own, in tests).

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

/// Why a stream could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseError {
    /// A line, or one event's data, passed the parser's limit.
    TooLong(usize),
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::TooLong(max) => {
                write!(f, "an event stream line or event exceeds {max} bytes")
            }
        }
    }
}

/// Incremental SSE parser (WHATWG rules: LF, CRLF or CR line ends, `data`
/// lines joined with LF, comments skipped, an event dispatched at a blank
/// line), bounded: a line or an event's data longer than `max` is an error.
/// It reads provider streams (LLM answers) as they arrive.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous byte was CR (a following LF belongs to it).
    after_cr: bool,
    id: Option<String>,
    event: String,
    data: Vec<u8>,
    has_data: bool,
    any: bool,
    max: usize,
}

impl SseParser {
    pub fn new(max: usize) -> Self {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            id: None,
            event: String::new(),
            data: Vec::new(),
            has_data: false,
            any: false,
            max,
        }
    }

    /// Feeds bytes; complete events go to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    self.line_done(out)?;
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() >= self.max {
                        return Err(SseError::TooLong(self.max));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    fn line_done(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.any {
                out.push(SseEvent {
                    id: self.id.take(),
                    event: if self.event.is_empty() {
                        "message".to_string()
                    } else {
                        std::mem::take(&mut self.event)
                    },
                    data: String::from_utf8_lossy(&self.data).into_owned(),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            self.any = false;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                if self.data.len() + value.len() > self.max {
                    return Err(SseError::TooLong(self.max));
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
                self.any = true;
            }
            b"event" => {
                self.event = String::from_utf8_lossy(value).into_owned();
                self.any = true;
            }
            b"id" => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
                self.any = true;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Unbounded incremental decoder for our own streams (tests and fuzzing).
#[derive(Debug)]
pub struct SseDecoder(SseParser);

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder(SseParser::new(usize::MAX))
    }
}

impl SseDecoder {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        // Unbounded: `feed` cannot fail.
        let _ = self.0.feed(bytes, &mut out);
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
