//! WebSocket framing over bytes: tungstenite's protocol state machine driven
//! through an in-memory duplex, so `core` never touches a socket. The runtime's
//! bytes go into `handle_input`; complete messages come out of `poll_message`;
//! control frames (pong, close replies) tungstenite writes land in the output.
//!
//! Data frames we send are framed here directly (server frames are unmasked), so
//! one encoded event is shared by every subscriber as a `Bytes` clone:
//! `data_frame` returns a small header plus the shared payload.
//!
//! ```text
//! Open ──(peer Close | our close())──▶ Closing ──(close handshake done)──▶ Closed
//!   └──(protocol error / too big)──▶ close(1002 | 1007 | 1009) ──▶ Closing
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use std::io::{self, Read, Write};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

/// Whether a request asks to switch to WebSocket: `Upgrade` lists the token
/// `websocket` (RFC 9110 7.8: a comma-separated list, case-insensitive). The
/// connection (which must stop parsing HTTP behind such a request) and the
/// upgrade handler both ask this one function, so they cannot disagree.
pub fn asks_for_upgrade(req: &crate::wire::http::Request) -> bool {
    lists_token(req.header("upgrade"), "websocket")
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub fn lists_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// The `Sec-WebSocket-Accept` value for a client's key.
pub fn accept_key(client_key: &str) -> String {
    tungstenite::handshake::derive_accept_key(client_key.as_bytes())
}

/// Bytes in from the socket, bytes out to it.
#[derive(Debug, Default)]
struct Duplex {
    input: BytesMut,
    output: Vec<u8>,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input.split_to(n));
        Ok(n)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A message as the application sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
}

/// Why the transport is closing, as a WebSocket close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: String,
}

#[derive(Debug)]
pub struct WsTransport {
    ctx: WebSocketContext,
    io: Duplex,
    closed: bool,
    failed: bool,
}

impl WsTransport {
    pub fn new(max_message_bytes: usize) -> Self {
        // tungstenite preallocates its read buffer: keep it small, since an idle
        // subscriber should cost kilobytes, and it grows for large messages.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .max_message_size(Some(max_message_bytes))
            .max_frame_size(Some(max_message_bytes));
        WsTransport {
            ctx: WebSocketContext::new(Role::Server, Some(config)),
            io: Duplex::default(),
            closed: false,
            failed: false,
        }
    }

    pub fn handle_input(&mut self, data: &[u8]) {
        self.io.input.extend_from_slice(data);
    }

    /// The next complete data message. `Ok(None)`: need more bytes (or only
    /// control frames arrived). `Err`: the connection must close with that code.
    pub fn poll_message(&mut self) -> Result<Option<Incoming>, Closing> {
        if self.closed || self.failed {
            return Ok(None);
        }
        loop {
            match self.ctx.read(&mut self.io) {
                Ok(Message::Text(t)) => return Ok(Some(Incoming::Text(Bytes::from(t)))),
                Ok(Message::Binary(b)) => return Ok(Some(Incoming::Binary(b))),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(_)) => {
                    // tungstenite queued the Close reply; flush it out.
                    let _ = self.ctx.flush(&mut self.io);
                    return Ok(None);
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    self.closed = true;
                    return Ok(None);
                }
                Err(e) => {
                    // Nothing after a protocol error is a message: tungstenite would
                    // still pass frames through while our Close is in flight.
                    self.failed = true;
                    return Err(close_for(&e));
                }
            }
        }
    }

    /// Starts the close handshake with a code and reason.
    pub fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.chars().take(100).collect::<String>().into(),
        };
        let _ = self.ctx.close(&mut self.io, Some(frame));
        let _ = self.ctx.flush(&mut self.io);
    }

    /// Sends a ping (keepalive).
    pub fn ping(&mut self) {
        let _ = self.ctx.write(&mut self.io, Message::Ping(Bytes::new()));
        let _ = self.ctx.flush(&mut self.io);
    }

    /// Bytes tungstenite wrote (pongs, close frames).
    pub fn take_output(&mut self) -> Option<Bytes> {
        if self.io.output.is_empty() {
            None
        } else {
            Some(Bytes::from(std::mem::take(&mut self.io.output)))
        }
    }

    /// Whether data frames may still be sent.
    pub fn can_write(&self) -> bool {
        !self.closed && self.ctx.can_write()
    }

    /// Whether the close handshake finished (or the peer vanished).
    pub fn is_terminated(&self) -> bool {
        self.closed || !self.ctx.can_read()
    }
}

fn close_for(e: &WsError) -> Closing {
    let (code, reason) = match e {
        WsError::Capacity(_) => (1009, "message too big"),
        WsError::Utf8(_) => (1007, "invalid UTF-8 in a text message"),
        WsError::Protocol(_) => (1002, "WebSocket protocol error"),
        WsError::AttackAttempt => (1008, "rejected"),
        _ => (1011, "internal error"),
    };
    Closing {
        code,
        reason: format!("{reason}: {e}"),
    }
}

/// The header of an unmasked server data frame (FIN set) for a payload.
pub fn frame_header(binary: bool, len: usize) -> Bytes {
    let mut h = BytesMut::with_capacity(10);
    h.put_u8(if binary { 0x82 } else { 0x81 });
    if len < 126 {
        h.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        h.put_u8(126);
        h.put_u16(len as u16);
    } else {
        h.put_u8(127);
        h.put_u64(len as u64);
    }
    h.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(opcode: u8, payload: &[u8], fin: bool) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn messages_split_at_every_byte() {
        let mut wire = client_frame(0x1, br#"{"type":"Hello"}"#, true);
        wire.extend(client_frame(0x2, &[1, 2, 3], true));
        // Fragmented text: "ab" + "cd".
        wire.extend(client_frame(0x1, b"ab", false));
        wire.extend(client_frame(0x9, b"p", true)); // ping between fragments
        wire.extend(client_frame(0x0, b"cd", true));
        for split in 0..wire.len() {
            let mut t = WsTransport::new(1 << 20);
            let mut got = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                t.handle_input(part);
                while let Some(m) = t.poll_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(
                got,
                vec![
                    Incoming::Text(Bytes::from_static(br#"{"type":"Hello"}"#)),
                    Incoming::Binary(Bytes::from_static(&[1, 2, 3])),
                    Incoming::Text(Bytes::from_static(b"abcd")),
                ],
                "split at {split}"
            );
            let out = t.take_output().expect("a pong");
            assert_eq!(&out[..], &[0x8a, 0x01, b'p']);
        }
    }

    #[test]
    fn oversized_and_unmasked_frames_close() {
        let mut t = WsTransport::new(16);
        t.handle_input(&client_frame(0x1, &[b'a'; 40], true));
        assert_eq!(t.poll_message().unwrap_err().code, 1009);

        let mut t = WsTransport::new(1024);
        t.handle_input(&[0x81, 0x02, b'h', b'i']); // no mask bit
        assert_eq!(t.poll_message().unwrap_err().code, 1002);

        let mut t = WsTransport::new(1024);
        t.handle_input(&client_frame(0x1, &[0xff, 0xfe], true));
        assert_eq!(t.poll_message().unwrap_err().code, 1007);
    }

    #[test]
    fn close_handshake_is_answered() {
        let mut t = WsTransport::new(1024);
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        t.handle_input(&client_frame(0x8, &payload, true));
        assert_eq!(t.poll_message().unwrap(), None);
        let out = t.take_output().expect("close reply");
        assert_eq!(out[0], 0x88);
        assert!(!t.can_write());
    }

    #[test]
    fn frame_headers() {
        assert_eq!(&frame_header(false, 5)[..], &[0x81, 5]);
        assert_eq!(&frame_header(true, 300)[..], &[0x82, 126, 1, 44]);
        assert_eq!(frame_header(false, 70_000).len(), 10);
    }
}
