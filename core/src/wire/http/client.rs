//! Outbound HTTP/1.1 as data: `core` builds the request bytes and parses the
//! response bytes; the runtime only connects, writes, and reads until the peer
//! closes (every request says `Connection: close`). Used for LLM and embedding
//! providers.

use bytes::Bytes;
use std::time::Duration;

/// A request for the runtime to perform (`conn::Effect::Http`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    pub host: String,
    pub port: u16,
    pub request: Bytes,
    pub timeout: Duration,
    /// Refuse responses larger than this.
    pub max_response_bytes: usize,
}

/// A parsed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `http://host:port/base` into (host, port, path prefix). Only plain
/// HTTP: local providers (llama.cpp, vLLM, Ollama) and proxies speak it.
pub fn parse_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err(format!(
            "`{url}`: https is not supported for providers yet; use http (a local server or a TLS-terminating proxy)"
        ));
    } else {
        return Err(format!("`{url}` is not an http:// URL"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("bad port in `{url}`"))?,
        ),
        _ => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("no host in `{url}`"));
    }
    Ok((
        host.trim_matches(['[', ']']).to_string(),
        port,
        path.trim_end_matches('/').to_string(),
    ))
}

/// A JSON POST to `base_url` + `path`.
pub fn post_json(
    base_url: &str,
    path: &str,
    bearer: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<Outbound, String> {
    let (host, port, prefix) = parse_url(base_url)?;
    let mut head = format!(
        "POST {prefix}{path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: tidepool/{}\r\n",
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    if let Some(key) = bearer.filter(|k| !k.is_empty()) {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    Ok(Outbound {
        host,
        port,
        request: Bytes::from(bytes),
        timeout,
        max_response_bytes: 64 << 20,
    })
}

/// Parses a complete response (the connection was closed after it).
pub fn parse_response(bytes: &[u8]) -> Result<ClientResponse, String> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut slots);
    let head_len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the response ended inside its headers".into()),
        Err(e) => return Err(format!("not an HTTP response: {e}")),
    };
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
    let rest = &bytes[head_len..];
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    let body =
        if find("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked")) {
            dechunk(rest)?
        } else if let Some(len) = find("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| format!("bad Content-Length `{len}`"))?;
            rest.get(..len)
                .ok_or("the response body is shorter than its Content-Length")?
                .to_vec()
        } else {
            rest.to_vec()
        };
    Ok(ClientResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete((used, size))) => {
                rest = &rest[used..];
                let size = usize::try_from(size).map_err(|_| "chunk too large")?;
                if size == 0 {
                    return Ok(out);
                }
                let chunk = rest
                    .get(..size)
                    .ok_or("the response ended inside a chunk")?;
                out.extend_from_slice(chunk);
                rest = rest
                    .get(size + 2..)
                    .ok_or("the response ended inside a chunk")?;
            }
            _ => return Err("malformed chunked response".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:11434/v1/").unwrap(),
            ("127.0.0.1".into(), 11434, "/v1".into())
        );
        assert_eq!(
            parse_url("http://example.com").unwrap(),
            ("example.com".into(), 80, "".into())
        );
        assert!(parse_url("https://api.openai.com/v1")
            .unwrap_err()
            .contains("https"));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://:80/").is_err());
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n3\r\na\":\r\n1\r\n1\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"{\"a\":1");
        let r = parse_response(b"HTTP/1.0 500 Oops\r\n\r\nboom").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, &b"boom"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
        assert!(parse_response(b"garbage").is_err());
    }
}
