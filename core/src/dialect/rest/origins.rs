//! Who may reach the API from a browser: the `Host` a request names
//! (`--trusted-hosts`, against DNS rebinding), and the cross-origin pages
//! that may call it or open its WebSockets (`--trusted-origins`, CORS).
//! Non-browser clients send no `Origin` and are unaffected.

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::http::{Method, Request, Response};

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: &str = "600";
/// Response headers a cross-origin page may read besides the simple ones.
const EXPOSED: &str = "Retry-After, Content-Type";

/// The request's `Host` is one the operator trusts (any, when none are set).
pub fn check_host(config: &Config, req: &Request) -> Result<()> {
    if config.trusted_hosts.is_empty() {
        return Ok(());
    }
    let host = req.header("host").unwrap_or_default().to_ascii_lowercase();
    let name = strip_port(&host);
    if config.trusted_hosts.iter().any(|h| h == &host || h == name) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Forbidden,
        format!("host `{host}` is not trusted (--trusted-hosts)"),
    ))
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

fn trusted<'a>(config: &Config, req: &'a Request) -> Option<&'a str> {
    let origin = req.header("origin")?;
    let lower = origin.trim_end_matches('/').to_ascii_lowercase();
    config
        .trusted_origins
        .iter()
        .any(|o| o == "*" || *o == lower)
        .then_some(origin)
}

/// A page's origin is the server's own when it names the same host.
fn same_origin(req: &Request, origin: &str) -> bool {
    let host = req.header("host").unwrap_or_default();
    let after_scheme = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    !host.is_empty() && after_scheme.eq_ignore_ascii_case(host)
}

/// A CORS preflight (`OPTIONS` with `Access-Control-Request-Method`):
/// answered here for a trusted origin (204), refused for another (403).
pub fn preflight(config: &Config, req: &Request) -> Option<Response> {
    if req.method != Method::Options || req.header("access-control-request-method").is_none() {
        return None;
    }
    let Some(origin) = trusted(config, req) else {
        let origin = req.header("origin").unwrap_or_default();
        return Some(Response::error(
            403,
            &format!("origin `{origin}` is not trusted (--trusted-origins)"),
        ));
    };
    let headers = req
        .header("access-control-request-headers")
        .unwrap_or("Authorization, Content-Type")
        .to_string();
    Some(
        Response::new(204, "", "")
            .with_header("Access-Control-Allow-Origin", origin.to_string())
            .with_header(
                "Access-Control-Allow-Methods",
                "GET, POST, PUT, PATCH, DELETE, OPTIONS",
            )
            .with_header("Access-Control-Allow-Headers", headers)
            .with_header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE)
            .with_header("Vary", "Origin"),
    )
}

/// Lets a trusted origin's page read the response.
pub fn allow(config: &Config, req: &Request, response: Response) -> Response {
    match trusted(config, req) {
        Some(origin) => response
            .with_header("Access-Control-Allow-Origin", origin.to_string())
            .with_header("Access-Control-Expose-Headers", EXPOSED)
            .with_header("Vary", "Origin"),
        None => response,
    }
}

/// A browser opening a WebSocket sends its page's origin, and WebSockets
/// are not covered by CORS: once origins are configured, a page from
/// another, untrusted origin is refused (403) before the upgrade.
pub fn check_upgrade_origin(config: &Config, req: &Request) -> Result<()> {
    let Some(origin) = req.header("origin") else {
        return Ok(());
    };
    if config.trusted_origins.is_empty()
        || trusted(config, req).is_some()
        || same_origin(req, origin)
    {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Forbidden,
        format!("origin `{origin}` may not open a WebSocket here (--trusted-origins)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(origins: &[&str], hosts: &[&str]) -> Config {
        Config {
            trusted_origins: origins.iter().map(|s| s.to_string()).collect(),
            trusted_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            ..Config::default()
        }
    }

    #[test]
    fn hosts_match_with_or_without_their_port() {
        let c = config(&[], &["localhost", "db.example.com:8080"]);
        let req = |host: &str| Request::new(Method::Get, "/", &[("host", host)], b"");
        assert!(check_host(&c, &req("localhost:8080")).is_ok());
        assert!(check_host(&c, &req("db.example.com:8080")).is_ok());
        assert!(check_host(&c, &req("evil.example")).is_err());
        assert!(check_host(&config(&[], &[]), &req("anything")).is_ok());
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn preflight_and_responses_name_only_trusted_origins() {
        let c = config(&["https://app.example.com"], &[]);
        let pre = |origin: &str| {
            Request::new(
                Method::Options,
                "/api/insert/c",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "authorization, content-type",
                    ),
                ],
                b"",
            )
        };
        let ok = preflight(&c, &pre("https://App.example.com")).expect("a preflight");
        assert_eq!(ok.status, 204);
        assert!(ok.headers.iter().any(
            |(n, v)| *n == "Access-Control-Allow-Headers" && v == "authorization, content-type"
        ));
        assert_eq!(
            preflight(&c, &pre("https://evil.example")).unwrap().status,
            403
        );
        let get = Request::new(Method::Get, "/", &[("origin", "https://evil.example")], b"");
        let r = allow(&c, &get, Response::new(200, "", ""));
        assert!(r
            .headers
            .iter()
            .all(|(n, _)| !n.starts_with("Access-Control")));
    }

    #[test]
    fn websocket_origins() {
        let c = config(&["https://app.example.com"], &[]);
        let up = |origin: &str| {
            Request::new(
                Method::Get,
                "/api/ws",
                &[("origin", origin), ("host", "db:8080")],
                b"",
            )
        };
        assert!(check_upgrade_origin(&c, &up("https://app.example.com")).is_ok());
        assert!(check_upgrade_origin(&c, &up("http://db:8080")).is_ok());
        assert!(check_upgrade_origin(&c, &up("https://evil.example")).is_err());
        assert!(check_upgrade_origin(&config(&[], &[]), &up("https://evil.example")).is_ok());
    }
}
