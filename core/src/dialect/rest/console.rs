//! The web console at `/`: one page of plain HTML, CSS and JavaScript
//! compiled into the binary (no CDN, no build step: it works offline). It
//! signs in with an API key and then uses the same REST API as any client,
//! so it can do nothing the key could not do with curl.

use super::Ctx;
use crate::engine::Engine;
use crate::error::Result;
use crate::wire::http::Response;

const INDEX: &str = include_str!("../../../assets/console/index.html");
const APP_JS: &str = include_str!("../../../assets/console/app.js");
const APP_CSS: &str = include_str!("../../../assets/console/app.css");

/// Scripts and styles from this server only; no frames, no inline code.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Result<Response> {
    Ok(Response::new(200, content_type, body)
        .with_header("Cache-Control", "no-cache")
        .with_header("Content-Security-Policy", POLICY)
        .with_header("X-Content-Type-Options", "nosniff"))
}

/// `GET /`.
pub fn index(_: &mut Engine, _: &Ctx<'_>) -> Result<Response> {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /console/app.js`.
pub fn script(_: &mut Engine, _: &Ctx<'_>) -> Result<Response> {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /console/app.css`.
pub fn style(_: &mut Engine, _: &Ctx<'_>) -> Result<Response> {
    asset("text/css; charset=utf-8", APP_CSS)
}
