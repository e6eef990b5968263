//! A Server-Sent Events client on a plain socket: the request is written
//! by hand, events are read with the server's own spec-checked parser.

use crate::TestServer;
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tidepool_core::wire::sse::{SseDecoder, SseEvent};

/// An SSE stream read from a plain socket.
pub struct SseStream {
    socket: TcpStream,
    decoder: SseDecoder,
    pending: VecDeque<SseEvent>,
    closed: bool,
}

impl SseStream {
    /// Sends a request with a bearer `token` and `headers` (whole lines,
    /// each ending in CRLF) and reads the head, which must be a 200 SSE one.
    pub fn open(
        srv: &TestServer,
        token: &str,
        method: &str,
        path: &str,
        headers: &str,
        body: &Value,
    ) -> SseStream {
        let mut socket = TcpStream::connect(srv.addr).unwrap();
        let body = body.to_string();
        write!(
            socket,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/event-stream"), "{head}");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        SseStream {
            socket,
            decoder: SseDecoder::default(),
            pending: VecDeque::new(),
            closed: false,
        }
    }

    /// The next event (comments skipped), or None when the server closed.
    pub fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.closed || Instant::now() > deadline {
                return None;
            }
            let mut buf = [0u8; 16 * 1024];
            match self.socket.read(&mut buf) {
                Ok(0) => self.closed = true,
                Ok(n) => self.pending.extend(self.decoder.push(&buf[..n])),
                Err(_) => {}
            }
        }
    }

    /// Every event until the server closes the stream.
    pub fn rest(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next(Duration::from_secs(20)) {
            out.push(e);
        }
        assert!(self.closed, "the stream did not end: {out:?}");
        out
    }
}
