//! The seed products' dialects through a whole connection: the first byte
//! picks one (General Bots with a query token or an `auth` frame, meet,
//! Fluxbase, EVA, or Lanonasis' HTTP memory API and stream), the second is
//! the harness's control byte, and the rest, split at 0xFF, are the client's
//! messages: WebSocket text frames after the dialect's upgrade, or request
//! bodies and stream queries for Lanonasis. Checked as in `connection`
//! (`harness.rs`): no panic, whole responses, well-formed server frames, a
//! connection that closes after EOF.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "harness.rs"]
mod harness;

fn upgrade(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A masked client text frame (mask key 0, so the payload reads as is).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x81];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// Bytes safe inside a request target.
fn query(piece: &[u8]) -> String {
    piece
        .iter()
        .map(|&b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'&' | b'=' | b'[' | b']' | b'.' | b',' | b'_' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn lanonasis(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, body) in pieces.iter().enumerate() {
        let (method, path) = match i % 5 {
            0 => ("POST", "/api/v1/memory".to_string()),
            1 => ("PUT", format!("/api/v1/memories/{}", query(&body[..body.len().min(12)]))),
            2 => ("POST", "/api/v1/memory/search".to_string()),
            3 => ("GET", format!("/api/v1/memory?{}", query(body))),
            _ => ("DELETE", format!("/api/v1/memory/{}", query(&body[..body.len().min(12)]))),
        };
        out.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(body);
    }
    // Last, a stream with the first piece as its query: it runs until EOF.
    let q = pieces.first().map(|p| query(p)).unwrap_or_default();
    out.extend_from_slice(
        format!("GET /api/v1/stream?{q} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\nLast-Event-ID: event_1.0\r\n\r\n")
            .as_bytes(),
    );
    out
}

fuzz_target!(|data: &[u8]| {
    let [dialect, control, rest @ ..] = data else {
        return;
    };
    let pieces: Vec<&[u8]> = rest.split(|b| *b == 0xff).collect();
    let mut input = match dialect % 6 {
        0 => upgrade("/ws?token=TOKEN", ""),
        1 => upgrade("/ws", ""),
        2 => upgrade("/ws/meet?token=TOKEN", ""),
        3 => upgrade("/ai/ws?token=TOKEN", ""),
        4 => upgrade("/eva/ws", "Authorization: Bearer TOKEN\r\n"),
        _ => {
            harness::run(*control, &lanonasis(&pieces));
            return;
        }
    };
    for p in &pieces {
        input.extend_from_slice(&frame(p));
    }
    harness::run(*control, &input);
});
