//! Errors a request can end in, typed by whose fault they are. Each maps to one HTTP
//! status (and the same code in WebSocket `Error` frames).

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or violates a rule (400).
    Invalid,
    /// No or bad credentials (401). Only for token problems: clients refresh on it.
    Unauthorized,
    /// Authenticated but not allowed (403).
    Forbidden,
    /// The record, collection, key or route does not exist (404).
    NotFound,
    /// The route exists but not for this method (405).
    MethodNotAllowed,
    /// Duplicate id, unique value, or a transaction conflict (409).
    Conflict,
    /// The body is larger than the configured limit (413).
    TooLarge,
    /// The request head is larger than the configured limit (431).
    HeadersTooLarge,
    /// A bug or invariant violation on our side (500).
    Internal,
    /// The feature is not built yet (501). Never a fake success.
    NotImplemented,
    /// An upstream provider failed (502).
    BadGateway,
    /// Too many attempts from one client; retry after a while (429).
    TooManyRequests,
    /// Storage refuses writes after an I/O error, or a bound on concurrent
    /// work is reached; retry later (503).
    Unavailable,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Conflict => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::TooManyRequests => 429,
            ErrorKind::Internal => 500,
            ErrorKind::NotImplemented => 501,
            ErrorKind::BadGateway => 502,
            ErrorKind::Unavailable => 503,
        }
    }
}

/// An error with a message meant for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// Headers the error response must carry (`Allow` on a 405,
    /// `Sec-WebSocket-Version` on a refused upgrade).
    pub headers: Vec<(&'static str, String)>,
    /// Keys the JSON error body carries besides `error`, `code` and
    /// `message` (a provider failure's classification, spec E10).
    pub details: Vec<(&'static str, serde_json::Value)>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            headers: Vec::new(),
            details: Vec::new(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Conflict, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    pub fn not_implemented(what: &str) -> Self {
        Error::new(
            ErrorKind::NotImplemented,
            format!("{what} is not implemented in this version of Tidepool"),
        )
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_detail(mut self, key: &'static str, value: impl Into<serde_json::Value>) -> Self {
        self.details.push((key, value.into()));
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
