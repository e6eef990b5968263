//! HTTP/1.1 responses: a status, a few headers and a body, encoded in one buffer.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// The body; empty while `deferred` is set (read such a response
    /// through `encode` or `into_rendered`).
    pub body: Bytes,
    /// A body serialised when the response is encoded rather than when it
    /// is decided (`body` is empty then): a connection encodes its replies
    /// after it lets go of the server lock, so a large record's JSON does
    /// not hold up every other client.
    pub deferred: Option<Deferred>,
}

/// The work of a deferred body: the bytes, or why they could not be made.
type Render = dyn Fn() -> Result<Bytes, String> + Send + Sync;

/// A body to serialise later (`Response::deferred`), from data it owns.
#[derive(Clone)]
pub struct Deferred(Arc<Render>);

impl Deferred {
    pub fn new(render: impl Fn() -> Result<Bytes, String> + Send + Sync + 'static) -> Self {
        Deferred(Arc::new(render))
    }
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Deferred(..)")
    }
}

impl PartialEq for Deferred {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
            deferred: None,
        }
    }

    /// A response whose body `render` makes when it is encoded.
    pub fn deferred(status: u16, content_type: &'static str, render: Deferred) -> Self {
        Response {
            deferred: Some(render),
            ..Response::new(status, content_type, Bytes::new())
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

    /// The response with a deferred body rendered into `body` (one that
    /// cannot be rendered becomes a 500, keeping the headers).
    pub fn into_rendered(self) -> Response {
        let Some(render) = &self.deferred else {
            return self;
        };
        match (render.0)() {
            Ok(body) => Response {
                body,
                deferred: None,
                ..self
            },
            Err(why) => self.failed(&why),
        }
    }

    fn failed(&self, why: &str) -> Response {
        let mut failed = Response::error(500, &format!("could not encode the reply: {why}"));
        failed.headers.clone_from(&self.headers);
        failed
    }

    /// Serialises the head and body (rendering a deferred body first; one
    /// that cannot be rendered becomes a 500). `head_only` answers a HEAD
    /// request.
    pub fn encode(&self, keep_alive: bool, head_only: bool) -> Bytes {
        match self.deferred.as_ref().map(|d| (d.0)()) {
            None => self.encode_body(&self.body, keep_alive, head_only),
            Some(Ok(body)) => self.encode_body(&body, keep_alive, head_only),
            Some(Err(why)) => {
                let mut failed =
                    Response::error(500, &format!("could not encode the reply: {why}"));
                failed.headers.clone_from(&self.headers);
                failed.encode_body(&failed.body, keep_alive, head_only)
            }
        }
    }

    fn encode_body(&self, body: &Bytes, keep_alive: bool, head_only: bool) -> Bytes {
        let mut out = BytesMut::with_capacity(128 + body.len());
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
            out.put_slice(body.len().to_string().as_bytes());
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
            out.put_slice(body);
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

    #[test]
    fn a_deferred_body_is_rendered_when_encoded() {
        let r = Response::deferred(
            200,
            "application/json",
            Deferred::new(|| Ok(Bytes::from_static(b"[1,2]"))),
        )
        .with_header("X-A", "1");
        assert!(r.body.is_empty());
        assert_eq!(
            &r.encode(true, false)[..],
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n[1,2]"
        );
        // HEAD: the length of the body it would have had, and no body.
        assert!(r
            .encode(true, true)
            .ends_with(b"Content-Length: 5\r\nX-A: 1\r\n\r\n"));

        let failing =
            Response::deferred(200, "application/json", Deferred::new(|| Err("no".into())))
                .with_header("X-A", "1");
        let text = String::from_utf8(failing.encode(true, false).to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 500 "), "{text}");
        assert!(text.contains("X-A: 1\r\n"), "{text}");
        assert!(
            text.ends_with(r#""message":"could not encode the reply: no"}"#),
            "{text}"
        );

        assert_eq!(&r.clone().into_rendered().body[..], b"[1,2]");
        let failed = failing.into_rendered();
        assert_eq!((failed.status, failed.deferred.is_none()), (500, true));
        assert_eq!(failed.headers, [("X-A", "1".to_string())]);
    }
}
