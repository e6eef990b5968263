//! One call's context: its arguments (path variables, query parameters, body),
//! the format to answer in, and the time. A call arrives either as an HTTP
//! request (REST) or as a message another ekoDB dialect already decoded (a
//! WebSocket `Insert`, say): handlers read both the same way and never see
//! which, so no dialect has to dress its messages up as HTTP requests.

use super::codec;
use crate::auth::grants::Access;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::ids::ConnId;
use crate::time::Timestamp;
use crate::wire::format::{self, Format};
use crate::wire::http::{url, Deferred, Method, Request, Response};
use serde::Serialize;
use serde_json::Value as J;
use std::cell::RefCell;

#[derive(Clone, Debug)]
enum Input<'a> {
    /// A REST request: the body is decoded when a handler asks for it,
    /// unless the connection decoded it already (taken by the first ask).
    Http(&'a Request, RefCell<Option<Result<J>>>),
    /// A message body already decoded by its dialect.
    Value(J),
}

#[derive(Clone, Debug)]
pub struct Ctx<'a> {
    pub now: Timestamp,
    /// The format of the answer's body.
    pub out: Format,
    /// Reads the clock again, for `execution_time_ms`. Supplied by the runtime;
    /// `None` in simulations (then elapsed time reads as 0).
    pub clock: Option<fn() -> Timestamp>,
    /// The connection the call came on (for replies that come later, and
    /// streams it subscribes to).
    pub conn: Option<ConnId>,
    /// What the caller may do: set from its credential by the REST and
    /// WebSocket entry points; an internal call is an admin.
    pub access: Access,
    /// Who called, when the call needed a credential.
    pub principal: Option<Principal>,
    params: Vec<(String, String)>,
    args: Vec<(&'static str, String)>,
    input: Input<'a>,
}

impl<'a> Ctx<'a> {
    /// A REST call: query parameters decoded, the answer's format negotiated.
    pub fn http(req: &'a Request, now: Timestamp) -> Result<Ctx<'a>> {
        let params = url::parse_query(&req.query)
            .map_err(|e| Error::invalid(format!("bad query string: {e}")))?;
        Ok(Ctx {
            now,
            out: codec::response_format(req),
            clock: None,
            conn: None,
            access: Access::Admin,
            principal: None,
            params,
            args: Vec::new(),
            input: Input::Http(req, RefCell::new(None)),
        })
    }

    /// The body as the connection decoded it, outside the server lock.
    pub fn with_decoded_body(mut self, body: Option<Result<J>>) -> Self {
        if let Input::Http(_, slot) = &mut self.input {
            *slot.get_mut() = body;
        }
        self
    }

    /// A call made by a message-based dialect, with its body already decoded.
    pub fn message(body: J, out: Format, now: Timestamp) -> Ctx<'static> {
        Ctx {
            now,
            out,
            clock: None,
            conn: None,
            access: Access::Admin,
            principal: None,
            params: Vec::new(),
            args: Vec::new(),
            input: Input::Value(body),
        }
    }

    /// Sets a path variable (`{collection}`).
    pub fn with_arg(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.args.push((name, value.into()));
        self
    }

    /// Adds a query parameter.
    pub fn with_param(mut self, name: &str, value: impl Into<String>) -> Self {
        self.params.push((name.to_string(), value.into()));
        self
    }

    pub(super) fn with_args(mut self, args: Vec<(&'static str, String)>) -> Self {
        self.args.extend(args);
        self
    }

    /// A path variable named in the route table (empty if the route has none of
    /// that name, which the route table's tests rule out).
    pub fn arg(&self, name: &str) -> &str {
        self.args
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Milliseconds since the call started, if a clock was supplied.
    pub fn elapsed_ms(&self) -> u64 {
        self.clock
            .map_or(0, |clock| clock().since(self.now).as_millis() as u64)
    }

    /// The last value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every query parameter, in order (repeated names repeat).
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// Every value of a list parameter: repeated and/or comma-joined.
    pub fn list_param(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (k, v) in &self.params {
            if k == name {
                for f in crate::engine::query::split_fields(v) {
                    if !out.contains(&f) {
                        out.push(f);
                    }
                }
            }
        }
        out
    }

    /// The caller's credential: what it may do, and who it is.
    pub fn set_principal(&mut self, principal: Principal) {
        self.access = principal.access.clone();
        self.principal = Some(principal);
    }

    /// The caller's key id (empty when the call needed no credential).
    pub fn key_id(&self) -> &str {
        self.principal.as_ref().map_or("", |p| p.key_id.as_str())
    }

    /// The HTTP method (none for message calls).
    pub fn method(&self) -> Option<Method> {
        match &self.input {
            Input::Http(req, _) => Some(req.method.clone()),
            Input::Value(_) => None,
        }
    }

    /// A request header (none for message calls).
    pub fn header(&self, name: &str) -> Option<&str> {
        match &self.input {
            Input::Http(req, _) => req.header(name),
            Input::Value(_) => None,
        }
    }

    /// The transaction a data call runs in (`?transaction_id=`).
    pub fn transaction(&self) -> Option<&str> {
        self.param("transaction_id").filter(|t| !t.is_empty())
    }

    /// The request's body as it came (an HTTP request's; `None` for a
    /// message), for routes whose body is not one JSON document.
    pub fn raw_body(&self) -> Option<&bytes::Bytes> {
        match &self.input {
            Input::Http(req, _) => Some(&req.body),
            Input::Value(_) => None,
        }
    }

    pub fn body(&self) -> Result<J> {
        match &self.input {
            Input::Http(req, decoded) => decoded
                .borrow_mut()
                .take()
                .unwrap_or_else(|| codec::decode_body(req)),
            Input::Value(v) => Ok(v.clone()),
        }
    }

    /// A 200 response in the negotiated format.
    pub fn ok<T: Serialize + ?Sized>(&self, value: &T) -> Result<Response> {
        ok_in(self.out, value)
    }

    /// A 200 response in the negotiated format whose body `render` makes:
    /// for an HTTP request when the reply is sent, after the server lock is
    /// let go (so `render` works on data it owns); for a message call at once.
    pub fn ok_deferred(
        &self,
        render: impl Fn(Format) -> Result<bytes::Bytes> + Send + Sync + 'static,
    ) -> Result<Response> {
        let format = self.out;
        match self.input {
            Input::Http(..) => Ok(Response::deferred(
                200,
                format::content_type(format),
                Deferred::new(move || render(format).map_err(|e| e.message)),
            )),
            Input::Value(_) => Ok(Response::new(
                200,
                format::content_type(format),
                render(format)?,
            )),
        }
    }

    /// A 200 response in JSON whatever was negotiated, for the REST endpoints the
    /// clients always read as JSON; message calls get their session's format.
    pub fn ok_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<Response> {
        match self.input {
            Input::Http(..) => Ok(Response::json(200, format::encode(Format::Json, value)?)),
            Input::Value(_) => self.ok(value),
        }
    }
}

/// A 200 response in `format`: `Ctx::ok` for work finished away from its
/// `Ctx` (a read outside the lock).
pub fn ok_in<T: Serialize + ?Sized>(format: Format, value: &T) -> Result<Response> {
    Ok(Response::new(
        200,
        format::content_type(format),
        format::encode(format, value)?,
    ))
}
