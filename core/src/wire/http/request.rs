//! An incremental HTTP/1.1 request parser. Feed it the connection's buffer; it
//! consumes one complete request at a time and leaves the rest (pipelining). Limits
//! are checked before anything is allocated for a head or body.

use bytes::{Buf, Bytes, BytesMut};

/// A chunk-size line (size and extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 1024;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line plus headers (431 above this).
    pub max_head_bytes: usize,
    /// Decoded body (413 above this).
    pub max_body_bytes: usize,
    pub max_headers: usize,
    /// A body longer than this (or chunked, length unknown) is read only
    /// once its head is admitted (`RequestParser::admit`): the caller
    /// checks credentials and memory before the bytes arrive.
    pub admit_bodies_above: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            max_headers: 64,
            admit_bodies_above: usize::MAX,
        }
    }
}

/// Where the parser is in the current request, for its deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Between requests.
    Idle,
    /// A request head has started arriving.
    Head,
    /// The head is in; its body is awaited (or its admission).
    Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other(String),
}

impl Method {
    fn parse(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Other(s) => s,
            standard => standard.standard_name().unwrap_or_default(),
        }
    }

    /// The name of a standard method (`None` for `Other`): a bounded set,
    /// for labels a client may not grow.
    pub fn standard_name(&self) -> Option<&'static str> {
        Some(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other(_) => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    /// The raw (still percent-encoded) path, without the query.
    pub path: String,
    /// The raw query string, without `?` (may be empty).
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header names lowercased; values as sent (trimmed).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection stays open after this request.
    pub fn keep_alive(&self) -> bool {
        let conn = self.header("connection").map(str::to_ascii_lowercase);
        match conn.as_deref() {
            Some(c) if c.split(',').any(|t| t.trim() == "close") => false,
            Some(c) if c.split(',').any(|t| t.trim() == "keep-alive") => true,
            _ => self.minor_version >= 1,
        }
    }

    /// Test helper and embedding convenience: a request from parts.
    pub fn new(method: Method, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method,
            path: path.to_string(),
            query: query.to_string(),
            minor_version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect(),
            body: Bytes::copy_from_slice(body),
        }
    }
}

/// Why a request could not be read. Each ends the connection after an error
/// response, because the byte stream can no longer be trusted to be in sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// 400: not HTTP, or contradictory framing.
    Malformed(String),
    /// 431
    HeadTooLarge,
    /// 413
    BodyTooLarge { limit: usize },
    /// 501: a transfer coding we do not speak.
    UnsupportedTransferEncoding(String),
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::UnsupportedTransferEncoding(_) => 501,
        }
    }

    pub fn message(&self) -> String {
        match self {
            HttpError::Malformed(why) => format!("malformed HTTP request: {why}"),
            HttpError::HeadTooLarge => "request headers are too large".to_string(),
            HttpError::BodyTooLarge { limit } => {
                format!("request body is larger than the limit of {limit} bytes")
            }
            HttpError::UnsupportedTransferEncoding(te) => {
                format!("transfer-encoding `{te}` is not supported (use chunked or Content-Length)")
            }
        }
    }
}

#[derive(Debug)]
enum State {
    Head,
    Body {
        head: Request,
        remaining: usize,
    },
    Chunked {
        head: Request,
        body: BytesMut,
        step: ChunkStep,
    },
}

#[derive(Debug, Clone, Copy)]
enum ChunkStep {
    Size,
    Data(usize),
    DataEnd,
    Trailers,
}

/// See the module doc. After `parse` returns `Ok(None)`, check `take_continue`: a
/// client that sent `Expect: 100-continue` waits for the interim response.
#[derive(Debug)]
pub struct RequestParser {
    state: State,
    limits: Limits,
    send_continue: bool,
    /// The current request's head waits for `admit` before its body is read.
    awaiting_admission: bool,
    /// The current request's body limit (`admit` may lower it).
    body_limit: usize,
}

impl RequestParser {
    pub fn new(limits: Limits) -> Self {
        RequestParser {
            state: State::Head,
            limits,
            send_continue: false,
            awaiting_admission: false,
            body_limit: limits.max_body_bytes,
        }
    }

    /// The head waiting to be admitted, with its body's length (`None`:
    /// chunked, unknown until it ends).
    pub fn awaiting_admission(&self) -> Option<(&Request, Option<usize>)> {
        if !self.awaiting_admission {
            return None;
        }
        match &self.state {
            State::Body { head, remaining } => Some((head, Some(*remaining))),
            State::Chunked { head, .. } => Some((head, None)),
            State::Head => None,
        }
    }

    /// Lets the waiting head's body be read, up to `body_limit` bytes.
    pub fn admit(&mut self, body_limit: usize) {
        self.awaiting_admission = false;
        self.body_limit = body_limit.min(self.limits.max_body_bytes);
    }

    /// Where the current request stands (`buf`: the bytes not yet parsed).
    pub fn phase(&self, buf: &BytesMut) -> Phase {
        match self.state {
            State::Head if buf.is_empty() || buf.starts_with(b"\r\n") && buf.len() <= 2 => {
                Phase::Idle
            }
            State::Head => Phase::Head,
            _ => Phase::Body,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a `100 Continue` should be sent now (returns true once; not
    /// before the head is admitted, so a refused client never sends its body).
    pub fn take_continue(&mut self) -> bool {
        !self.awaiting_admission && std::mem::take(&mut self.send_continue)
    }

    /// Whether a request has started arriving but is not complete.
    pub fn in_progress(&self, buf: &BytesMut) -> bool {
        !matches!(self.state, State::Head) || !buf.is_empty()
    }

    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, HttpError> {
        let parsed = self.parse_one(buf)?;
        if parsed.is_some() {
            self.body_limit = self.limits.max_body_bytes;
        }
        Ok(parsed)
    }

    fn parse_one(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, HttpError> {
        loop {
            if self.awaiting_admission {
                return Ok(None);
            }
            match std::mem::replace(&mut self.state, State::Head) {
                State::Head => {
                    let Some(head) = self.parse_head(buf)? else {
                        return Ok(None);
                    };
                    self.state = self.body_state(head)?;
                    self.awaiting_admission = match &self.state {
                        State::Body { remaining, .. } => {
                            *remaining > self.limits.admit_bodies_above
                        }
                        State::Chunked { .. } => {
                            self.limits.admit_bodies_above < self.limits.max_body_bytes
                        }
                        State::Head => false,
                    };
                }
                State::Body {
                    mut head,
                    remaining,
                } => {
                    if remaining > self.body_limit {
                        return Err(HttpError::BodyTooLarge {
                            limit: self.body_limit,
                        });
                    }
                    if buf.len() < remaining {
                        self.state = State::Body { head, remaining };
                        return Ok(None);
                    }
                    head.body = buf.split_to(remaining).freeze();
                    return Ok(Some(head));
                }
                State::Chunked { head, body, step } => {
                    match self.parse_chunks(buf, head, body, step)? {
                        Some(req) => return Ok(Some(req)),
                        None => return Ok(None),
                    }
                }
            }
        }
    }

    fn parse_head(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, HttpError> {
        // Tolerate stray CRLFs between pipelined requests (RFC 9112 2.2).
        while buf.starts_with(b"\r\n") {
            buf.advance(2);
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let mut slots = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut req = httparse::Request::new(&mut slots);
        // Parse at most the limit, so the verdict on an oversized head does not
        // depend on how the bytes were split across reads.
        let window = buf.len().min(self.limits.max_head_bytes);
        let status = match req.parse(&buf[..window]) {
            Ok(s) => s,
            Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        };
        let consumed = match status {
            httparse::Status::Partial => {
                if buf.len() >= self.limits.max_head_bytes {
                    return Err(HttpError::HeadTooLarge);
                }
                return Ok(None);
            }
            httparse::Status::Complete(n) => n,
        };
        if consumed > self.limits.max_head_bytes {
            return Err(HttpError::HeadTooLarge);
        }
        let method = Method::parse(req.method.unwrap_or(""));
        let target = req.path.unwrap_or("/");
        let target = strip_authority(target);
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers = Vec::with_capacity(req.headers.len());
        for h in req.headers.iter() {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| HttpError::Malformed(format!("header `{}` is not UTF-8", h.name)))?;
            headers.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let request = Request {
            method,
            path: path.to_string(),
            query: query.to_string(),
            minor_version: req.version.unwrap_or(1),
            headers,
            body: Bytes::new(),
        };
        buf.advance(consumed);
        Ok(Some(request))
    }

    fn body_state(&mut self, head: Request) -> Result<State, HttpError> {
        // Every Transfer-Encoding header counts: `chunked` then `gzip` in two
        // headers is the coding list `chunked, gzip`, which we cannot frame
        // (RFC 9112 6.1): reading only the first smuggles a request.
        let te_values: Vec<String> = head
            .headers
            .iter()
            .filter(|(n, _)| n == "transfer-encoding")
            .map(|(_, v)| v.to_ascii_lowercase())
            .collect();
        let te = (!te_values.is_empty()).then(|| te_values.join(","));
        // Every Content-Length header counts: differing values are a smuggling
        // attempt (RFC 9112 6.3), identical repeats are harmless.
        let cl_values: Vec<&str> = head
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_str())
            .collect();
        let joined = cl_values.join(",");
        let cl = (!cl_values.is_empty()).then_some(joined.as_str());
        if te.is_some() && cl.is_some() {
            return Err(HttpError::Malformed(
                "both Transfer-Encoding and Content-Length".into(),
            ));
        }
        let expects_continue = head
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
        if let Some(te) = te {
            let codings: Vec<&str> = te.split(',').map(str::trim).collect();
            if codings != ["chunked"] {
                return Err(HttpError::UnsupportedTransferEncoding(te));
            }
            self.send_continue = expects_continue;
            return Ok(State::Chunked {
                head,
                body: BytesMut::new(),
                step: ChunkStep::Size,
            });
        }
        let len = match cl {
            None => 0,
            Some(v) => {
                let all_same = v.split(',').map(str::trim).collect::<Vec<_>>();
                let first = all_same.first().copied().unwrap_or("");
                if !all_same.iter().all(|x| *x == first)
                    || first.is_empty()
                    || !first.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(HttpError::Malformed(format!(
                        "invalid Content-Length `{v}`"
                    )));
                }
                first
                    .parse::<usize>()
                    .map_err(|_| HttpError::BodyTooLarge {
                        limit: self.limits.max_body_bytes,
                    })?
            }
        };
        if len > self.limits.max_body_bytes {
            return Err(HttpError::BodyTooLarge {
                limit: self.limits.max_body_bytes,
            });
        }
        self.send_continue = expects_continue && len > 0;
        Ok(State::Body {
            head,
            remaining: len,
        })
    }

    fn parse_chunks(
        &mut self,
        buf: &mut BytesMut,
        mut head: Request,
        mut body: BytesMut,
        mut step: ChunkStep,
    ) -> Result<Option<Request>, HttpError> {
        loop {
            match step {
                ChunkStep::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, _))) if used > MAX_CHUNK_LINE => {
                        return Err(HttpError::Malformed("chunk size line too long".into()));
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        let size = usize::try_from(size).unwrap_or(usize::MAX);
                        if size > self.body_limit.saturating_sub(body.len()) {
                            return Err(HttpError::BodyTooLarge {
                                limit: self.body_limit,
                            });
                        }
                        step = if size == 0 {
                            ChunkStep::Trailers
                        } else {
                            ChunkStep::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(HttpError::Malformed("chunk size line too long".into()));
                        }
                        break;
                    }
                    Err(_) => return Err(HttpError::Malformed("invalid chunk size".into())),
                },
                ChunkStep::Data(n) => {
                    if buf.is_empty() {
                        break;
                    }
                    let take = n.min(buf.len());
                    body.extend_from_slice(&buf[..take]);
                    buf.advance(take);
                    step = if take == n {
                        ChunkStep::DataEnd
                    } else {
                        ChunkStep::Data(n - take)
                    };
                }
                ChunkStep::DataEnd => {
                    if buf.len() < 2 {
                        break;
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
                    }
                    buf.advance(2);
                    step = ChunkStep::Size;
                }
                ChunkStep::Trailers => {
                    // Trailer fields are ignored; the section ends at an empty line.
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        head.body = body.freeze();
                        return Ok(Some(head));
                    }
                    match buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        Some(pos) if pos + 4 > self.limits.max_head_bytes => {
                            return Err(HttpError::HeadTooLarge)
                        }
                        Some(pos) => {
                            buf.advance(pos + 4);
                            head.body = body.freeze();
                            return Ok(Some(head));
                        }
                        None if buf.len() > self.limits.max_head_bytes => {
                            return Err(HttpError::HeadTooLarge)
                        }
                        None => break,
                    }
                }
            }
        }
        self.state = State::Chunked { head, body, step };
        Ok(None)
    }
}

/// `http://host:port/path` (absolute-form) → `/path`.
fn strip_authority(target: &str) -> &str {
    for scheme in ["http://", "https://", "ws://", "wss://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8], limits: Limits) -> Result<Vec<Request>, HttpError> {
        let mut p = RequestParser::new(limits);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = p.parse(&mut buf)? {
            out.push(r);
        }
        Ok(out)
    }

    /// Feeds one byte at a time, as the slowest network would.
    fn parse_bytewise(input: &[u8], limits: Limits) -> Result<Vec<Request>, HttpError> {
        let mut p = RequestParser::new(limits);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in input {
            buf.extend_from_slice(&[*b]);
            while let Some(r) = p.parse(&mut buf)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn check(input: &[u8], expect: &[(&str, &str, &str, &[u8])]) {
        for reqs in [
            parse_all(input, Limits::default()).unwrap(),
            parse_bytewise(input, Limits::default()).unwrap(),
        ] {
            let got: Vec<(String, String, String, Vec<u8>)> = reqs
                .iter()
                .map(|r| {
                    (
                        r.method.as_str().to_string(),
                        r.path.clone(),
                        r.query.clone(),
                        r.body.to_vec(),
                    )
                })
                .collect();
            let want: Vec<(String, String, String, Vec<u8>)> = expect
                .iter()
                .map(|(m, p, q, b)| (m.to_string(), p.to_string(), q.to_string(), b.to_vec()))
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn simple_and_pipelined() {
        check(
            b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n",
            &[("GET", "/api/health", "", b"")],
        );
        check(
            b"POST /api/insert/c?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /a? HTTP/1.1\r\n\r\n",
            &[("POST", "/api/insert/c", "x=1", b"{}"), ("GET", "/a", "", b"")],
        );
    }

    #[test]
    fn chunked_bodies() {
        check(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\nGET /y HTTP/1.1\r\n\r\n",
            &[("POST", "/x", "", b"abcde"), ("GET", "/y", "", b"")],
        );
        check(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            &[("POST", "/x", "", b"")],
        );
    }

    #[test]
    fn a_large_body_waits_for_admission_and_its_limit() {
        let limits = Limits {
            admit_bodies_above: 4,
            ..Limits::default()
        };
        let mut p = RequestParser::new(limits);
        let mut buf = BytesMut::from(
            &b"POST /x HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n0123456789"[..],
        );
        assert!(p.parse(&mut buf).unwrap().is_none());
        let (head, size) = p.awaiting_admission().expect("waits");
        assert_eq!((head.path.as_str(), size), ("/x", Some(10)));
        assert!(!p.take_continue(), "100 Continue before admission");
        assert_eq!(buf.len(), 10, "the body was read before admission");
        p.admit(10);
        assert!(p.take_continue());
        assert_eq!(&p.parse(&mut buf).unwrap().unwrap().body[..], b"0123456789");
        // Admitted with a smaller limit than the body: 413.
        let mut buf = BytesMut::from(&b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n"[..]);
        assert!(p.parse(&mut buf).unwrap().is_none());
        p.admit(5);
        assert_eq!(p.parse(&mut buf).unwrap_err().status(), 413);
        // A small body needs no admission.
        let mut p = RequestParser::new(limits);
        let mut buf = BytesMut::from(&b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..]);
        assert!(p.parse(&mut buf).unwrap().is_some());
    }

    #[test]
    fn limits_and_errors() {
        let small = Limits {
            max_head_bytes: 64,
            max_body_bytes: 4,
            max_headers: 4,
            ..Limits::default()
        };
        let err = |input: &[u8]| parse_all(input, small).unwrap_err().status();
        assert_eq!(err(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n"), 413);
        assert_eq!(
            err(b"POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            err(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n"),
            413
        );
        assert_eq!(err(b"G\x01T / HTTP/1.1\r\n\r\n"), 400);
        let mut long = b"GET /".to_vec();
        long.extend(vec![b'a'; 100]);
        assert_eq!(err(&long), 431);
        assert_eq!(
            err(b"GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n"),
            431
        );
        let err = |input: &[u8]| parse_all(input, Limits::default()).unwrap_err().status();
        assert_eq!(
            err(b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(err(b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(
            err(b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 13\r\n\r\n{}"),
            400
        );
        assert_eq!(
            err(b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
        assert_eq!(err(b"\x00\x01\x02garbage\r\n\r\n"), 400);
        assert_eq!(
            err(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            400
        );
    }

    #[test]
    fn partial_input_is_not_an_error() {
        for cut in 1..40 {
            let full = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
            let cut = cut.min(full.len() - 1);
            assert!(parse_all(&full[..cut], Limits::default())
                .unwrap()
                .is_empty());
        }
    }

    #[test]
    fn keep_alive_rules() {
        let r = parse_all(b"GET / HTTP/1.0\r\n\r\n", Limits::default()).unwrap();
        assert!(!r[0].keep_alive());
        let r = parse_all(
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            Limits::default(),
        )
        .unwrap();
        assert!(!r[0].keep_alive());
        let r = parse_all(b"GET / HTTP/1.1\r\n\r\n", Limits::default()).unwrap();
        assert!(r[0].keep_alive());
    }

    #[test]
    fn absolute_form_targets() {
        check(
            b"GET http://h:1/api/health?a HTTP/1.1\r\n\r\n",
            &[("GET", "/api/health", "a", b"")],
        );
    }

    #[test]
    fn a_second_transfer_encoding_header_is_not_ignored() {
        // Two headers, `chunked` then `gzip`: a smuggling attempt, refused.
        let mut p = RequestParser::new(Limits::default());
        let mut buf = BytesMut::from(
            &b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\nGET /hidden HTTP/1.1\r\n\r\n"[..],
        );
        assert!(matches!(
            p.parse(&mut buf),
            Err(HttpError::UnsupportedTransferEncoding(_))
        ));
        // `chunked` repeated, or listed twice, is no single coding either.
        for te in ["chunked, chunked", "gzip, chunked", "chunked,"] {
            let mut p = RequestParser::new(Limits::default());
            let mut buf = BytesMut::from(
                format!("POST /x HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n").as_bytes(),
            );
            assert!(p.parse(&mut buf).is_err(), "{te}");
        }
    }
}
