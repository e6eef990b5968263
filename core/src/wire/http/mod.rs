//! HTTP/1.1 as bytes in, bytes out: an incremental request parser and a response
//! encoder. No sockets here; `conn` drives these from the runtime's reads.

pub mod client;
pub mod request;
pub mod response;
pub mod url;

pub use request::{HttpError, Limits, Method, Phase, Request, RequestParser};
pub use response::{Deferred, Response};
