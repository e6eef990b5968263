//! Outbound HTTP/1.1 as data: `core` builds request bytes and parses response
//! bytes *as they arrive*; the runtime only connects (TLS for `https://`),
//! writes, and feeds back what it reads. Every request says
//! `Connection: close`. Used for LLM and embedding providers.
//!
//! ```text
//! Head ──(status line + headers)──▶ Body: Length(n) | Chunked | UntilClose ──▶ Done
//!   └─ 1xx: skipped, back to Head
//! ```
//!
//! The parser is incremental and total: any split of the bytes gives the same
//! events, lengths are checked before anything is buffered, and malformed input
//! is an error, never a panic.

use bytes::{Buf, Bytes, BytesMut};
use std::fmt;

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// `https://`: the runtime wraps the connection in TLS for `host`.
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// A request ready for the runtime: where, and the exact bytes to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundRequest {
    pub target: Target,
    pub bytes: Bytes,
}

/// Why a URL cannot be called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlError {
    /// Not `http://` or `https://`.
    Scheme(String),
    /// No host, or a port that is not a number.
    Malformed(String),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Scheme(url) => write!(f, "`{url}` is not an http:// or https:// URL"),
            UrlError::Malformed(url) => write!(f, "`{url}` has no host or a bad port"),
        }
    }
}

/// Splits `http(s)://host:port/base` into the target and the path prefix.
pub fn parse_url(url: &str) -> Result<(Target, String), UrlError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(UrlError::Scheme(url.to_string()));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| UrlError::Malformed(url.to_string()))?,
        ),
        _ => (authority, default_port),
    };
    if host.is_empty() {
        return Err(UrlError::Malformed(url.to_string()));
    }
    Ok((
        Target {
            tls,
            host: host.trim_matches(['[', ']']).to_string(),
            port,
        },
        path.trim_end_matches('/').to_string(),
    ))
}

/// A POST of `body` to `base_url` + `path`, with extra headers.
pub fn post(
    base_url: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> Result<OutboundRequest, UrlError> {
    let (target, prefix) = parse_url(base_url)?;
    let mut head = format!(
        "POST {prefix}{path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: tidepool/{}\r\n",
        target.host,
        target.port,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in headers {
        // A header value never carries a line break into the request.
        let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    Ok(OutboundRequest {
        target,
        bytes: Bytes::from(bytes),
    })
}

/// Any request: `method` to `url` (path and query included) with headers
/// and an optional body. Header names and values never carry a line break
/// into the request; a method must be a plain token.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> Result<OutboundRequest, UrlError> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(UrlError::Malformed(format!("{method} {url}")));
    }
    let (target, _) = parse_url(url)?;
    // The path and query exactly as given (parse_url trims a final `/`).
    let after_scheme = url.split_once("://").map_or("", |(_, r)| r);
    let path = match after_scheme.find(['/', '?']) {
        Some(i) if after_scheme[i..].starts_with('?') => format!("/{}", &after_scheme[i..]),
        Some(i) => after_scheme[i..].to_string(),
        None => "/".to_string(),
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(UrlError::Malformed(url.to_string()));
    }
    let clean = |t: &str| -> String { t.chars().filter(|c| *c != '\r' && *c != '\n').collect() };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nUser-Agent: tidepool/{}\r\n",
        target.host,
        target.port,
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in headers {
        let name = clean(name);
        if name.is_empty()
            || name.contains(':')
            || ["host", "content-length", "connection", "transfer-encoding"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        head.push_str(&format!("{name}: {}\r\n", clean(value)));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || !matches!(method, "GET" | "HEAD" | "DELETE") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    Ok(OutboundRequest {
        target,
        bytes: Bytes::from(bytes),
    })
}

/// A JSON POST with an optional bearer key.
pub fn post_json(
    base_url: &str,
    path: &str,
    bearer: Option<&str>,
    body: &[u8],
) -> Result<OutboundRequest, UrlError> {
    let auth = bearer
        .filter(|k| !k.is_empty())
        .map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Accept", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    post(base_url, path, &headers, "application/json", body)
}

/// A response's status line and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the parser found in the bytes fed so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseEvent {
    Head(ResponseHead),
    /// A piece of the body (de-chunked), in order.
    Data(Bytes),
    /// The response is complete.
    End,
}

/// Why a response cannot be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// Not HTTP/1.x, or broken framing (the reason says where).
    Malformed(String),
    /// The head is larger than the parser's limit.
    HeadTooLarge,
    /// The peer closed before the response was complete.
    Truncated,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::Malformed(why) => write!(f, "malformed HTTP response: {why}"),
            ResponseError::HeadTooLarge => write!(f, "the response head is too large"),
            ResponseError::Truncated => write!(f, "the connection closed mid-response"),
        }
    }
}

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Waiting for a chunk-size line.
    Size,
    /// Inside a chunk: bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// An incremental HTTP/1.1 response parser.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    buf: BytesMut,
    max_head: usize,
}

impl ResponseParser {
    pub fn new(max_head: usize) -> Self {
        ResponseParser {
            state: State::Head,
            buf: BytesMut::new(),
            max_head,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes held while waiting for more (part of a head or a chunk line).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes read from the peer; events go to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<ResponseEvent>) -> Result<(), ResponseError> {
        if self.state == State::Done {
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        self.run(out)
    }

    /// The peer closed its side: an until-close body ends here; anything else
    /// unfinished was truncated.
    pub fn finish(&mut self, out: &mut Vec<ResponseEvent>) -> Result<(), ResponseError> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                out.push(ResponseEvent::End);
                Ok(())
            }
            _ => Err(ResponseError::Truncated),
        }
    }

    fn run(&mut self, out: &mut Vec<ResponseEvent>) -> Result<(), ResponseError> {
        loop {
            match self.state {
                State::Head => {
                    if !self.head(out)? {
                        return Ok(());
                    }
                }
                State::Length(0) => {
                    self.state = State::Done;
                    out.push(ResponseEvent::End);
                }
                State::Length(left) => {
                    if self.buf.is_empty() {
                        return Ok(());
                    }
                    let n = (self.buf.len() as u64).min(left) as usize;
                    out.push(ResponseEvent::Data(self.buf.split_to(n).freeze()));
                    self.state = State::Length(left - n as u64);
                }
                State::UntilClose => {
                    if !self.buf.is_empty() {
                        out.push(ResponseEvent::Data(self.buf.split().freeze()));
                    }
                    return Ok(());
                }
                State::Chunked(chunk) => {
                    if !self.chunked(chunk, out)? {
                        return Ok(());
                    }
                }
                State::Done => {
                    // The request said `Connection: close`: nothing may follow.
                    self.buf.clear();
                    return Ok(());
                }
            }
        }
    }

    /// Parses the head if complete; `false` means "need more".
    fn head(&mut self, out: &mut Vec<ResponseEvent>) -> Result<bool, ResponseError> {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut slots);
        let used = match resp.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() > self.max_head {
                    return Err(ResponseError::HeadTooLarge);
                }
                return Ok(false);
            }
            Err(e) => return Err(ResponseError::Malformed(e.to_string())),
        };
        if used > self.max_head {
            return Err(ResponseError::HeadTooLarge);
        }
        let status = resp.code.unwrap_or(0);
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).trim().to_string(),
                )
            })
            .collect();
        self.buf.advance(used);
        if (100..200).contains(&status) {
            // Interim (100 Continue, 103 Early Hints): the real head follows.
            return Ok(true);
        }
        let head = ResponseHead { status, headers };
        let chunked = head.header("transfer-encoding").map(|te| {
            te.rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        });
        self.state = if status == 204 || status == 304 {
            State::Length(0)
        } else {
            match (chunked, head.header("content-length")) {
                (Some(true), _) => State::Chunked(Chunk::Size),
                (Some(false), _) => {
                    return Err(ResponseError::Malformed(
                        "a transfer coding other than chunked".into(),
                    ))
                }
                (None, Some(len)) => State::Length(
                    len.parse()
                        .map_err(|_| ResponseError::Malformed(format!("Content-Length `{len}`")))?,
                ),
                (None, None) => State::UntilClose,
            }
        };
        out.push(ResponseEvent::Head(head));
        Ok(true)
    }

    /// One step of a chunked body; `false` means "need more".
    fn chunked(
        &mut self,
        chunk: Chunk,
        out: &mut Vec<ResponseEvent>,
    ) -> Result<bool, ResponseError> {
        match chunk {
            Chunk::Size => {
                let Some(line_end) = find_crlf(&self.buf) else {
                    if self.buf.len() > MAX_CHUNK_LINE {
                        return Err(ResponseError::Malformed("chunk-size line too long".into()));
                    }
                    return Ok(false);
                };
                let size = match httparse::parse_chunk_size(&self.buf[..line_end + 2]) {
                    Ok(httparse::Status::Complete((_, size))) => size,
                    _ => return Err(ResponseError::Malformed("bad chunk size".into())),
                };
                self.buf.advance(line_end + 2);
                self.state = State::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(true)
            }
            Chunk::Data(left) => {
                if self.buf.is_empty() {
                    return Ok(false);
                }
                let n = (self.buf.len() as u64).min(left) as usize;
                out.push(ResponseEvent::Data(self.buf.split_to(n).freeze()));
                let left = left - n as u64;
                self.state = State::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Ok(true)
            }
            Chunk::DataEnd => {
                if self.buf.len() < 2 {
                    return Ok(false);
                }
                if &self.buf[..2] != b"\r\n" {
                    return Err(ResponseError::Malformed(
                        "chunk data longer than its size".into(),
                    ));
                }
                self.buf.advance(2);
                self.state = State::Chunked(Chunk::Size);
                Ok(true)
            }
            Chunk::Trailers => {
                let Some(line_end) = find_crlf(&self.buf) else {
                    if self.buf.len() > MAX_CHUNK_LINE {
                        return Err(ResponseError::Malformed("trailer line too long".into()));
                    }
                    return Ok(false);
                };
                self.buf.advance(line_end + 2);
                if line_end == 0 {
                    self.state = State::Done;
                    out.push(ResponseEvent::End);
                }
                Ok(true)
            }
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// A whole response, assembled from the events (for callers that want the
/// complete body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    pub head: ResponseHead,
    pub body: Vec<u8>,
}

impl ClientResponse {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = |tls, host: &str, port| Target {
            tls,
            host: host.into(),
            port,
        };
        assert_eq!(
            parse_url("http://127.0.0.1:11434/v1/").unwrap(),
            (t(false, "127.0.0.1", 11434), "/v1".into())
        );
        assert_eq!(
            parse_url("http://example.com").unwrap(),
            (t(false, "example.com", 80), "".into())
        );
        assert_eq!(
            parse_url("https://api.openai.com/v1").unwrap(),
            (t(true, "api.openai.com", 443), "/v1".into())
        );
        assert_eq!(
            parse_url("https://[::1]:8443/x").unwrap(),
            (t(true, "::1", 8443), "/x".into())
        );
        assert!(matches!(parse_url("ftp://x"), Err(UrlError::Scheme(_))));
        assert!(matches!(
            parse_url("http://:80/"),
            Err(UrlError::Malformed(_))
        ));
        assert!(matches!(
            parse_url("http://h:x/"),
            Err(UrlError::Malformed(_))
        ));
    }

    /// Feeds `input` cut at every point (and byte by byte); all give `want`.
    fn check(input: &[u8], want: Result<(u16, &[u8]), ResponseError>) {
        let mut cuts: Vec<Vec<usize>> = (0..=input.len()).map(|c| vec![c]).collect();
        cuts.push((1..input.len()).collect());
        for cut in cuts {
            let mut p = ResponseParser::new(1024);
            let mut events = Vec::new();
            let mut at = 0;
            let mut result = Ok(());
            for &c in cut.iter().chain(std::iter::once(&input.len())) {
                if result.is_ok() {
                    result = p.feed(&input[at..c], &mut events);
                }
                at = c;
            }
            if result.is_ok() {
                result = p.finish(&mut events);
            }
            let got = result.map(|()| {
                let status = events
                    .iter()
                    .find_map(|e| match e {
                        ResponseEvent::Head(h) => Some(h.status),
                        _ => None,
                    })
                    .unwrap_or(0);
                let body: Vec<u8> = events
                    .iter()
                    .flat_map(|e| match e {
                        ResponseEvent::Data(d) => d.to_vec(),
                        _ => Vec::new(),
                    })
                    .collect();
                assert_eq!(events.last(), Some(&ResponseEvent::End), "{cut:?}");
                (status, body)
            });
            let want = want.clone().map(|(s, b)| (s, b.to_vec()));
            assert_eq!(got, want, "cut at {cut:?}");
        }
    }

    #[test]
    fn responses_split_anywhere() {
        check(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            Ok((200, b"{}")),
        );
        check(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n3;ext=1\r\na\":\r\n1\r\n1\r\n0\r\nX-T: y\r\n\r\n",
            Ok((200, b"{\"a\":1")),
        );
        check(b"HTTP/1.0 500 Oops\r\n\r\nboom", Ok((500, b"boom")));
        check(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            Ok((204, b"")),
        );
        check(
            b"HTTP/1.1 200 OK\r\nContent-Le",
            Err(ResponseError::Truncated),
        );
        check(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            Err(ResponseError::Truncated),
        );
        check(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
            Err(ResponseError::Malformed(
                "chunk data longer than its size".into(),
            )),
        );
    }

    #[test]
    fn garbage_and_limits_are_errors() {
        let mut out = Vec::new();
        assert!(matches!(
            ResponseParser::new(1024).feed(b"garbage\r\n\r\n", &mut out),
            Err(ResponseError::Malformed(_))
        ));
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            ResponseParser::new(1024).feed(big.as_bytes(), &mut out),
            Err(ResponseError::HeadTooLarge)
        );
        assert!(matches!(
            ResponseParser::new(1024).feed(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                &mut out
            ),
            Err(ResponseError::Malformed(_))
        ));
    }

    #[test]
    fn requests_carry_no_injected_lines() {
        let r = post(
            "https://h:1/v1",
            "/x",
            &[("Authorization", "Bearer a\r\nEvil: 1")],
            "application/json",
            b"{}",
        )
        .unwrap();
        assert!(r.target.tls);
        let text = String::from_utf8(r.bytes.to_vec()).unwrap();
        assert!(text.starts_with("POST /v1/x HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(text.contains("Authorization: Bearer aEvil: 1\r\n"));
        assert!(text.ends_with("\r\nAuthorization: Bearer aEvil: 1\r\n\r\n{}"));
    }
}
