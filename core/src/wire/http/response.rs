//! HTTP/1.1 responses: a status, a few headers and a body, encoded in one buffer.

use bytes::{BufMut, Bytes, BytesMut};

#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Response::new(status, "application/json", body)
    }

    /// The JSON error body every client understands (spec 1.5.1).
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({"error": message, "code": status, "message": message});
        Response::json(status, serde_json::to_vec(&body).unwrap_or_default())
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Serialises the head and body. `head_only` answers a HEAD request.
    pub fn encode(&self, keep_alive: bool, head_only: bool) -> Bytes {
        let mut out = BytesMut::with_capacity(128 + self.body.len());
        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(self.status.to_string().as_bytes());
        out.put_u8(b' ');
        out.put_slice(reason(self.status).as_bytes());
        // A 204 has no content, so no content headers (RFC 9110 8.6, 15.3.5):
        // clients that see a JSON type try to parse the nothing.
        if self.status != 204 {
            if !self.content_type.is_empty() {
                out.put_slice(b"\r\nContent-Type: ");
                out.put_slice(self.content_type.as_bytes());
            }
            out.put_slice(b"\r\nContent-Length: ");
            out.put_slice(self.body.len().to_string().as_bytes());
        }
        for (name, value) in &self.headers {
            out.put_slice(b"\r\n");
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
        }
        if !keep_alive {
            out.put_slice(b"\r\nConnection: close");
        }
        out.put_slice(b"\r\n\r\n");
        if !head_only {
            out.put_slice(&self.body);
        }
        out.freeze()
    }
}

/// The head of a streaming response (SSE) that has no length and runs until closed.
pub fn encode_stream_head(status: u16, content_type: &str, extra: &[(&str, &str)]) -> Bytes {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\nConnection: keep-alive\r\nX-Accel-Buffering: no\r\n",
        reason(status)
    );
    for (k, v) in extra {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    Bytes::from(out)
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_head_and_body() {
        let r = Response::json(200, "{}").with_header("X-A", "1");
        assert_eq!(
            &r.encode(true, false)[..],
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-A: 1\r\n\r\n{}"
        );
        let closing = r.encode(false, true);
        assert!(closing.ends_with(b"Connection: close\r\n\r\n"));
    }
}
