//! The REST API: routes a parsed request to the engine and encodes the answer in
//! the negotiated format. Errors become `{"error","code","message"}` JSON bodies.

pub mod codec;
mod collections;
pub mod embed;
mod kv;
mod records;
pub mod router;
pub mod search;
mod txn;

use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::time::Timestamp;
use crate::wire::http::{url, Request, Response};
use codec::Format;
use router::Route;
use serde::Serialize;
use serde_json::Value as J;

/// One request's context: its decoded query parameters and negotiated format.
#[derive(Clone)]
pub struct Ctx<'a> {
    pub req: &'a Request,
    pub params: Vec<(String, String)>,
    pub out: Format,
    pub now: Timestamp,
    /// Reads the clock again, for `execution_time_ms`. Supplied by the runtime;
    /// `None` in simulations (then elapsed time reads as 0).
    pub clock: Option<fn() -> Timestamp>,
}

impl<'a> Ctx<'a> {
    pub fn new(req: &'a Request, now: Timestamp) -> Result<Ctx<'a>> {
        let params = url::parse_query(&req.query)
            .map_err(|e| Error::invalid(format!("bad query string: {e}")))?;
        Ok(Ctx {
            req,
            params,
            out: codec::response_format(req),
            now,
            clock: None,
        })
    }

    /// Milliseconds since the request started, if a clock was supplied.
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

    pub fn body(&self) -> Result<J> {
        codec::decode_body(self.req)
    }

    /// A 200 response in the negotiated format.
    pub fn ok<T: Serialize + ?Sized>(&self, value: &T) -> Result<Response> {
        Ok(Response::new(
            200,
            codec::content_type(self.out),
            codec::encode(self.out, value)?,
        ))
    }

    /// A 200 JSON response whatever was negotiated (endpoints the clients always
    /// read as JSON).
    pub fn ok_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<Response> {
        Ok(Response::json(200, codec::encode(Format::Json, value)?))
    }
}

/// The JSON error response for an error.
pub fn error_response(e: &Error) -> Response {
    let mut r = Response::error(e.status(), &e.message);
    if e.kind == ErrorKind::Unavailable {
        r = r.with_header("Retry-After", "1");
    }
    for (name, value) in &e.headers {
        r = r.with_header(name, value.clone());
    }
    r
}

/// Runs a routed data-plane request against the engine.
pub fn dispatch(engine: &mut Engine, ctx: &Ctx<'_>, route: Route) -> Result<Response> {
    use Route as R;
    if let Some(tx) = ctx.param("transaction_id").filter(|t| !t.is_empty()) {
        let tx = tx.to_string();
        match &route {
            R::Insert(c) => return txn::insert(engine, ctx, &tx, c),
            R::Update(c, id) => return txn::update(engine, ctx, &tx, c, id),
            R::Delete(c, id) => return txn::delete(engine, ctx, &tx, c, id),
            R::FindById(c, id) => return txn::find_by_id(engine, ctx, &tx, c, id),
            R::Find(c) => return txn::find(engine, ctx, &tx, c),
            R::BatchInsert(c) => return txn::batch_insert(engine, ctx, &tx, c),
            R::BatchUpdate(c) => return txn::batch_update(engine, ctx, &tx, c),
            R::BatchDelete(c) => return txn::batch_delete(engine, ctx, &tx, c),
            _ => {}
        }
    }
    match route {
        R::ListCollections => collections::list(engine, ctx),
        R::CollectionNames => collections::names(engine, ctx),
        R::EnsureCollection(c) => collections::ensure(engine, ctx, &c),
        R::CreateCollection(c) => collections::create(engine, ctx, &c),
        R::GetCollection(c) => collections::get(engine, ctx, &c),
        R::DropCollection(c) => collections::drop(engine, ctx, &c),
        R::GetSchema(c) => collections::schema(engine, ctx, &c),
        R::UpdateSchema(c) => collections::update_schema(engine, ctx, &c),
        R::Insert(c) => records::insert(engine, ctx, &c),
        R::Find(c) => records::find(engine, ctx, &c),
        R::FindById(c, id) => records::find_by_id(engine, ctx, &c, &id),
        R::Update(c, id) => records::update(engine, ctx, &c, &id),
        R::UpdateAction(c, id, a) => records::action(engine, ctx, &c, &id, &a),
        R::UpdateSequence(c, id) => records::sequence(engine, ctx, &c, &id),
        R::Delete(c, id) => records::delete(engine, ctx, &c, &id),
        R::RestoreOne(c, id) => records::restore_one(engine, ctx, &c, &id),
        R::RestoreAll(c) => records::restore_all(engine, ctx, &c),
        R::BatchInsert(c) => records::batch_insert(engine, ctx, &c),
        R::BatchUpdate(c) => records::batch_update(engine, ctx, &c),
        R::BatchDelete(c) => records::batch_delete(engine, ctx, &c),
        R::Distinct(c, f) => records::distinct(engine, ctx, &c, &f),
        R::KvSet(k) => kv::set(engine, ctx, &k),
        R::KvGet(k) => kv::get(engine, ctx, &k),
        R::KvDelete(k) => kv::delete(engine, ctx, &k),
        R::KvClear => kv::clear(engine, ctx),
        R::KvBatchGet => kv::batch_get(engine, ctx),
        R::KvBatchSet => kv::batch_set(engine, ctx),
        R::KvBatchDelete => kv::batch_delete(engine, ctx),
        R::KvFind => kv::find(engine, ctx),
        R::KvLinks(k) => kv::links(engine, ctx, &k),
        R::KvLink(k, c, d) => kv::link(engine, ctx, &k, &c, &d),
        R::KvUnlink(k, c, d) => kv::unlink(engine, ctx, &k, &c, &d),
        R::KvLegacyLinks(k) => kv::legacy_links(engine, ctx, &k),
        R::KvLegacyLink => kv::legacy_link(engine, ctx, true),
        R::KvLegacyUnlink => kv::legacy_link(engine, ctx, false),
        R::Search(c) => search::search(engine, ctx, &c),
        R::Embed => Err(Error::internal("embeddings are planned by the server")),
        R::TxBegin => txn::begin(engine, ctx),
        R::TxStatus(tx) => txn::status(engine, ctx, &tx),
        R::TxCommit(tx) => txn::commit(engine, ctx, &tx),
        R::TxRollback(tx) => txn::rollback(engine, ctx, &tx),
        R::TxSavepoint(tx) => txn::savepoint(engine, ctx, &tx),
        R::TxSavepointRollback(tx, name) => txn::rollback_to(engine, ctx, &tx, &name),
        R::TxSavepointRelease(tx, name) => txn::release(engine, ctx, &tx, &name),
        R::WebSocket => Err(Error::not_implemented("the WebSocket API")),
        R::Subscribe(_) => Err(Error::not_implemented("SSE subscriptions")),
        R::Unimplemented(what) => Err(Error::not_implemented(what)),
        R::Health | R::AuthToken => Err(Error::internal("handled by the server")),
    }
}
