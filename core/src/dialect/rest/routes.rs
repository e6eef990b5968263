//! THE route table of the REST API (spec 1.1, 17): one row per endpoint with its
//! methods, path, who may call it, whether it writes, and its handler. Adding a
//! route is adding a row; nothing else lists routes.
//!
//! Paths are matched segment by segment on decoded segments: `{name}` takes one
//! segment, `{*name}` takes the rest. When several rows match, the one whose
//! literal segments come first wins (`/api/kv/get/{key}` over
//! `/api/kv/{key}/links`); a path that matches with another method is a 405
//! listing the methods it has.

use super::{
    assist, chat, collections, functions, keys, kv, records, schedules, search, system, transfer,
    txn, Ctx, Outcome,
};
use crate::assist::goals::StepAction as Step;
use crate::assist::Kind as K;
use crate::dialect::{eva, fluxbase, general_bots, lanonasis, meet};
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::server::Server;
use crate::wire::http::{Method, Response};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Who may call a route. Checked in one place (`rest::permit`), for the
/// REST API and for the ekoDB WebSocket messages that run the same handlers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// No token needed (health, token exchange), or the route checks its
    /// own credential the way its protocol documents.
    Public,
    /// Reads what its path names: every `{collection}` and `{key}` in it
    /// must be granted for reading.
    Read,
    /// Changes what its path names: every `{collection}` and `{key}` in it
    /// must be granted for writing.
    Write,
    /// Any valid key. What a non-admin key sees or changes is limited by
    /// the handler: lists are filtered to its grants, and each item a body
    /// names is checked.
    AnyKey,
    /// Admin keys only (server administration, chat for now).
    Admin,
}

/// What runs a route.
#[derive(Clone, Copy)]
pub enum Handler {
    /// A data-plane call on the engine alone.
    Data(fn(&mut Engine, &Ctx<'_>) -> Result<Response>),
    /// A call that needs the server (auth, upgrades, outbound calls, health).
    Server(fn(&mut Server, &Ctx<'_>) -> Result<Outcome>),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handler::Data(_) => f.write_str("Data"),
            Handler::Server(_) => f.write_str("Server"),
        }
    }
}

/// One row of the table.
#[derive(Debug)]
pub struct Route {
    pub methods: &'static [Method],
    pub path: &'static str,
    pub scope: Scope,
    /// Refused while storage is read-only after an I/O error.
    pub writes: bool,
    pub handler: Handler,
}

/// The routes that take `?transaction_id=` (spec 13.3): their writes are
/// staged in the transaction and their reads go through it. Every other route
/// refuses the parameter (400), so nothing is applied outside a transaction
/// its caller believes it is in.
pub const IN_TRANSACTION: &[&str] = &[
    "/api/insert/{collection}",
    "/api/update/{collection}/{id}",
    "/api/delete/{collection}/{id}",
    "/api/batch/insert/{collection}",
    "/api/batch/update/{collection}",
    "/api/batch/delete/{collection}",
    "/api/find/{collection}",
    "/api/find/{collection}/{id}",
];

const READS: bool = false;
const WRITES: bool = true;

const fn row(
    methods: &'static [Method],
    path: &'static str,
    scope: Scope,
    writes: bool,
    handler: Handler,
) -> Route {
    Route {
        methods,
        path,
        scope,
        writes,
        handler,
    }
}

const ALL: &[Method] = &[
    Method::Get,
    Method::Post,
    Method::Put,
    Method::Patch,
    Method::Delete,
];

use Handler::{Data, Server as Srv};
use Method::{Delete, Get, Patch, Post, Put};
use Scope::{Admin, AnyKey, Public, Read, Write};

#[rustfmt::skip]
pub static ROUTES: &[Route] = &[
    row(&[Get], "/api/health", Public, READS, Srv(system::health)),
    // The web console's page and assets (it signs in like any client).
    row(&[Get], "/", Public, READS, Data(super::console::index)),
    row(&[Get], "/console/app.js", Public, READS, Data(super::console::script)),
    row(&[Get], "/console/app.css", Public, READS, Data(super::console::style)),
    // Checks its caller itself, as `--metrics` says (admin, public or off).
    row(&[Get], "/metrics", Public, READS, Srv(system::metrics)),
    row(&[Post], "/api/auth/token", Public, READS, Srv(system::token)),
    // API keys and their permissions (spec 14). Register takes the admin
    // key in its body as well as a bearer token, so it checks its caller.
    row(&[Post], "/api/auth/register", Public, WRITES, Srv(keys::register)),
    row(&[Get], "/api/auth/keys", Admin, READS, Srv(keys::list)),
    row(&[Delete], "/api/auth/keys/{key_id}", Admin, WRITES, Srv(keys::revoke)),
    row(&[Get], "/api/auth/keys/{key_id}/permissions", AnyKey, READS, Srv(keys::permissions)),
    row(&[Get], "/api/auth/keys/{key_id}/permissions/collections", AnyKey, READS, Srv(keys::collection_grants)),
    row(&[Get], "/api/auth/keys/{key_id}/permissions/collections/{name}", AnyKey, READS, Srv(keys::collection_grant)),
    row(&[Put, Patch, Delete], "/api/auth/keys/{key_id}/permissions/collections/{name}", Admin, WRITES, Srv(keys::change_collection_grant)),
    row(&[Get], "/api/auth/keys/{key_id}/permissions/kv", AnyKey, READS, Srv(keys::kv_grants)),
    row(&[Get], "/api/auth/keys/{key_id}/permissions/kv/{prefix}", AnyKey, READS, Srv(keys::kv_grant)),
    row(&[Put, Patch, Delete], "/api/auth/keys/{key_id}/permissions/kv/{prefix}", Admin, WRITES, Srv(keys::change_kv_grant)),
    row(&[Get], "/api/auth/permissions", AnyKey, READS, Srv(keys::legacy_permissions)),
    row(&[Put], "/api/auth/permissions", Admin, WRITES, Srv(keys::legacy_update)),
    row(&[Get], "/api/config", Admin, READS, Srv(system::config)),
    row(&[Put], "/api/config", Admin, WRITES, Srv(system::change_config)),
    // Collections and schemas (spec 5).
    row(&[Get], "/api/collections", AnyKey, READS, Data(collections::list)),
    row(&[Get], "/api/collections/{collection}", Read, READS, Data(|e, c| collections::get(e, c, c.arg("collection")))),
    row(&[Post], "/api/collections/{collection}", Write, WRITES, Data(|e, c| collections::create(e, c, c.arg("collection")))),
    row(&[Delete], "/api/collections/{collection}", Write, WRITES, Data(|e, c| collections::drop(e, c, c.arg("collection")))),
    row(&[Get], "/api/schemas/{collection}", Read, READS, Data(|e, c| collections::schema(e, c, c.arg("collection")))),
    row(&[Put], "/api/schemas/{collection}", Write, WRITES, Data(|e, c| collections::update_schema(e, c, c.arg("collection")))),
    // Records (spec 6, 7, 8, 10).
    row(&[Post], "/api/insert/{collection}", Write, WRITES, Data(|e, c| records::insert(e, c, c.arg("collection")))),
    row(&[Post], "/api/find/{collection}", Read, READS, Srv(|s, c| records::find_outside_lock(s, c, c.arg("collection")))),
    row(&[Get], "/api/find/{collection}/{id}", Read, READS, Data(|e, c| records::find_by_id(e, c, c.arg("collection"), c.arg("id")))),
    row(&[Put], "/api/update/sequence/{collection}/{id}", Write, WRITES, Data(|e, c| records::sequence(e, c, c.arg("collection"), c.arg("id")))),
    row(&[Put], "/api/update/{collection}/{id}/action/{action}", Write, WRITES, Data(|e, c| records::action(e, c, c.arg("collection"), c.arg("id"), c.arg("action")))),
    row(&[Put], "/api/update/{collection}/{id}", Write, WRITES, Data(|e, c| records::update(e, c, c.arg("collection"), c.arg("id")))),
    row(&[Delete], "/api/delete/{collection}/{id}", Write, WRITES, Data(|e, c| records::delete(e, c, c.arg("collection"), c.arg("id")))),
    row(&[Post], "/api/trash/{collection}", Write, WRITES, Data(|e, c| records::restore_all(e, c, c.arg("collection")))),
    row(&[Post], "/api/trash/{collection}/{id}", Write, WRITES, Data(|e, c| records::restore_one(e, c, c.arg("collection"), c.arg("id")))),
    row(&[Post], "/api/batch/insert/{collection}", Write, WRITES, Data(|e, c| records::batch_insert(e, c, c.arg("collection")))),
    // Online backups into a directory on the server's machine.
    row(&[Post], "/api/admin/backup", Admin, READS, Srv(super::backup::backup)),
    row(&[Post], "/api/admin/backup/verify", Admin, READS, Srv(super::backup::verify)),
    // A collection out and in as JSON Lines (admin: whole collections).
    row(&[Get], "/api/export/{collection}", Admin, READS, Srv(|s, c| transfer::export(s, c, c.arg("collection")))),
    row(&[Post], "/api/import/{collection}", Admin, WRITES, Srv(|s, c| transfer::import(s, c, c.arg("collection")))),
    row(&[Put], "/api/batch/update/{collection}", Write, WRITES, Data(|e, c| records::batch_update(e, c, c.arg("collection")))),
    row(&[Delete], "/api/batch/delete/{collection}", Write, WRITES, Data(|e, c| records::batch_delete(e, c, c.arg("collection")))),
    row(&[Post], "/api/distinct/{collection}/{field}", Read, READS, Srv(|s, c| records::distinct_outside_lock(s, c, c.arg("collection"), c.arg("field")))),
    // Search and embeddings (spec 11, D).
    row(&[Post], "/api/search/{collection}", Read, READS, Srv(|s, c| search::search_outside_lock(s, c, c.arg("collection")))),
    row(&[Post], "/api/embed", AnyKey, READS, Srv(system::embed)),
    // Key-value store (spec 12).
    row(&[Post], "/api/kv/set/{key}", Write, WRITES, Data(|e, c| kv::set(e, c, c.arg("key")))),
    row(&[Get], "/api/kv/get/{key}", Read, READS, Data(|e, c| kv::get(e, c, c.arg("key")))),
    row(&[Delete], "/api/kv/delete/{key}", Write, WRITES, Data(|e, c| kv::delete(e, c, c.arg("key")))),
    row(&[Delete], "/api/kv/clear", Admin, WRITES, Data(kv::clear)),
    row(&[Post], "/api/kv/batch/get", AnyKey, READS, Data(kv::batch_get)),
    row(&[Post], "/api/kv/batch/set", AnyKey, WRITES, Data(kv::batch_set)),
    row(&[Delete], "/api/kv/batch/delete", AnyKey, WRITES, Data(kv::batch_delete)),
    row(&[Post], "/api/kv/find", AnyKey, READS, Data(kv::find)),
    row(&[Post], "/api/kv/query", AnyKey, READS, Data(kv::find)),
    row(&[Get], "/api/kv/links/{key}", Read, READS, Data(|e, c| kv::legacy_links(e, c, c.arg("key")))),
    row(&[Post], "/api/kv/link", AnyKey, WRITES, Data(|e, c| kv::legacy_link(e, c, true))),
    row(&[Post], "/api/kv/unlink", AnyKey, WRITES, Data(|e, c| kv::legacy_link(e, c, false))),
    row(&[Get], "/api/kv/{key}/links", Read, READS, Data(|e, c| kv::links(e, c, c.arg("key")))),
    row(&[Post], "/api/kv/{key}/links/{collection}/{id}", Write, WRITES, Data(|e, c| kv::link(e, c, c.arg("key"), c.arg("collection"), c.arg("id")))),
    row(&[Delete], "/api/kv/{key}/links/{collection}/{id}", Write, WRITES, Data(|e, c| kv::unlink(e, c, c.arg("key"), c.arg("collection"), c.arg("id")))),
    // Transactions (spec 13).
    row(&[Post], "/api/transactions", AnyKey, READS, Srv(txn::begin)),
    row(&[Get], "/api/transactions/{tx}", AnyKey, READS, Data(|e, c| txn::status(e, c, c.arg("tx")))),
    row(&[Post], "/api/transactions/{tx}/commit", AnyKey, WRITES, Data(|e, c| txn::commit(e, c, c.arg("tx")))),
    row(&[Post], "/api/transactions/{tx}/rollback", AnyKey, READS, Data(|e, c| txn::rollback(e, c, c.arg("tx")))),
    row(&[Post], "/api/transactions/{tx}/savepoints", AnyKey, READS, Data(|e, c| txn::savepoint(e, c, c.arg("tx")))),
    row(&[Post], "/api/transactions/{tx}/savepoints/{name}/rollback", AnyKey, READS, Data(|e, c| txn::rollback_to(e, c, c.arg("tx"), c.arg("name")))),
    row(&[Delete], "/api/transactions/{tx}/savepoints/{name}", AnyKey, READS, Data(|e, c| txn::release(e, c, c.arg("tx"), c.arg("name")))),
    // Real time (spec B, C): protocol switches.
    row(&[Get], "/api/ws", AnyKey, READS, Srv(system::websocket)),
    row(&[Get], "/api/subscribe/{collection}", Read, READS, Srv(system::subscribe)),
    // Chat (spec E): sessions, messages, answers, tools, models.
    row(&[Post], "/api/chat", Admin, WRITES, Srv(chat::create)),
    row(&[Get], "/api/chat", Admin, READS, Srv(chat::list)),
    row(&[Post], "/api/chat/sessions", Admin, WRITES, Srv(chat::create)),
    row(&[Get], "/api/chat/sessions", Admin, READS, Srv(chat::list)),
    row(&[Post], "/api/chat/branch", Admin, WRITES, Srv(chat::branch)),
    row(&[Post], "/api/chat/merge", Admin, WRITES, Srv(chat::merge)),
    row(&[Get], "/api/chat/tools", Admin, READS, Srv(chat::tool_catalog)),
    row(&[Post], "/api/chat/tools/execute", Admin, WRITES, Srv(chat::tool_execute)),
    row(&[Post], "/api/chat/complete", Admin, READS, Srv(chat::complete)),
    row(&[Post], "/api/chat/complete/stream", Admin, READS, Srv(chat::complete_stream)),
    row(&[Get], "/api/chat/{chat_id}", Admin, READS, Srv(chat::get)),
    row(&[Put], "/api/chat/{chat_id}", Admin, WRITES, Srv(chat::update)),
    row(&[Delete], "/api/chat/{chat_id}", Admin, WRITES, Srv(chat::delete)),
    row(&[Post], "/api/chat/{chat_id}/messages", Admin, WRITES, Srv(chat::send)),
    row(&[Get], "/api/chat/{chat_id}/messages", Admin, READS, Srv(chat::messages)),
    row(&[Post], "/api/chat/{chat_id}/messages/stream", Admin, WRITES, Srv(chat::send_stream)),
    row(&[Get], "/api/chat/{chat_id}/messages/{message_id}", Admin, READS, Srv(chat::message)),
    row(&[Put], "/api/chat/{chat_id}/messages/{message_id}", Admin, WRITES, Srv(chat::update_message)),
    row(&[Delete], "/api/chat/{chat_id}/messages/{message_id}", Admin, WRITES, Srv(chat::delete_message)),
    row(&[Patch], "/api/chat/{chat_id}/messages/{message_id}/forgotten", Admin, WRITES, Srv(chat::forget_message)),
    row(&[Post], "/api/chat/{chat_id}/messages/{message_id}/regenerate", Admin, WRITES, Srv(chat::regenerate)),
    row(&[Get], "/api/chat/{chat_id}/messages/{message_id}/stream", Admin, READS, Srv(chat::resume)),
    row(&[Post], "/api/chat/{chat_id}/compact", Admin, WRITES, Srv(chat::compact)),
    row(&[Post], "/api/chat/{chat_id}/tool-result", Admin, WRITES, Srv(chat::tool_result)),
    row(&[Post], "/api/chat/{chat_id}/cancel", Admin, WRITES, Srv(chat::cancel)),
    row(&[Get], "/api/chat_models", Admin, READS, Srv(chat::models)),
    row(&[Get], "/api/chat_models/{provider}", Admin, READS, Srv(chat::provider_models)),
    // Stored functions (spec G): definitions, calls, the path router.
    row(&[Post], "/api/functions", Admin, WRITES, Srv(functions::create)),
    row(&[Get], "/api/functions", Admin, READS, Srv(functions::list)),
    row(&[Get], "/api/functions/{function}", Admin, READS, Srv(|s, c| functions::get(s, c, c.arg("function")))),
    row(&[Put], "/api/functions/{function}", Admin, WRITES, Srv(|s, c| functions::replace(s, c, c.arg("function")))),
    row(&[Delete], "/api/functions/{function}", Admin, WRITES, Srv(|s, c| functions::delete(s, c, c.arg("function")))),
    row(&[Post], "/api/functions/{function}", Admin, WRITES, Srv(|s, c| functions::call(s, c, c.arg("function")))),
    row(ALL, "/api/route/{*path}", Admin, WRITES, Srv(|s, c| functions::dispatch(s, c, c.arg("path")))),
    // Goals, goal templates, tasks and agents (spec F1-F4).
    row(&[Post], "/api/chat/goals", Admin, WRITES, Data(|e, c| assist::create(e, c, K::Goal))),
    row(&[Get], "/api/chat/goals", Admin, READS, Data(|e, c| assist::list(e, c, K::Goal))),
    row(&[Get], "/api/chat/goals/search", Admin, READS, Data(assist::goal_search)),
    row(&[Get], "/api/chat/goals/{id}", Admin, READS, Data(|e, c| assist::get(e, c, K::Goal))),
    row(&[Put], "/api/chat/goals/{id}", Admin, WRITES, Data(|e, c| assist::update(e, c, K::Goal))),
    row(&[Delete], "/api/chat/goals/{id}", Admin, WRITES, Data(|e, c| assist::delete(e, c, K::Goal))),
    row(&[Post], "/api/chat/goals/{id}/complete", Admin, WRITES, Data(|e, c| assist::goal_action(e, c, "complete"))),
    row(&[Post], "/api/chat/goals/{id}/approve", Admin, WRITES, Data(|e, c| assist::goal_action(e, c, "approve"))),
    row(&[Post], "/api/chat/goals/{id}/reject", Admin, WRITES, Data(|e, c| assist::goal_action(e, c, "reject"))),
    row(&[Post], "/api/chat/goals/{id}/steps/{index}/start", Admin, WRITES, Data(|e, c| assist::goal_step(e, c, Step::Start))),
    row(&[Post], "/api/chat/goals/{id}/steps/{index}/complete", Admin, WRITES, Data(|e, c| assist::goal_step(e, c, Step::Complete))),
    row(&[Post], "/api/chat/goals/{id}/steps/{index}/fail", Admin, WRITES, Data(|e, c| assist::goal_step(e, c, Step::Fail))),
    row(&[Post], "/api/chat/goal-templates", Admin, WRITES, Data(|e, c| assist::create(e, c, K::Template))),
    row(&[Get], "/api/chat/goal-templates", Admin, READS, Data(|e, c| assist::list(e, c, K::Template))),
    row(&[Get], "/api/chat/goal-templates/{id}", Admin, READS, Data(|e, c| assist::get(e, c, K::Template))),
    row(&[Put], "/api/chat/goal-templates/{id}", Admin, WRITES, Data(|e, c| assist::update(e, c, K::Template))),
    row(&[Delete], "/api/chat/goal-templates/{id}", Admin, WRITES, Data(|e, c| assist::delete(e, c, K::Template))),
    row(&[Post], "/api/chat/tasks", Admin, WRITES, Data(|e, c| assist::create(e, c, K::Task))),
    row(&[Get], "/api/chat/tasks", Admin, READS, Data(|e, c| assist::list(e, c, K::Task))),
    row(&[Get], "/api/chat/tasks/due", Admin, READS, Data(assist::task_due)),
    row(&[Get], "/api/chat/tasks/{id}", Admin, READS, Data(|e, c| assist::get(e, c, K::Task))),
    row(&[Put], "/api/chat/tasks/{id}", Admin, WRITES, Data(|e, c| assist::update(e, c, K::Task))),
    row(&[Delete], "/api/chat/tasks/{id}", Admin, WRITES, Data(|e, c| assist::delete(e, c, K::Task))),
    row(&[Post], "/api/chat/tasks/{id}/start", Admin, WRITES, Data(|e, c| assist::task_action(e, c, "start"))),
    row(&[Post], "/api/chat/tasks/{id}/succeed", Admin, WRITES, Data(|e, c| assist::task_action(e, c, "succeed"))),
    row(&[Post], "/api/chat/tasks/{id}/fail", Admin, WRITES, Data(|e, c| assist::task_action(e, c, "fail"))),
    row(&[Post], "/api/chat/tasks/{id}/pause", Admin, WRITES, Data(|e, c| assist::task_action(e, c, "pause"))),
    row(&[Post], "/api/chat/tasks/{id}/resume", Admin, WRITES, Data(|e, c| assist::task_action(e, c, "resume"))),
    row(&[Post], "/api/chat/agents", Admin, WRITES, Data(|e, c| assist::create(e, c, K::Agent))),
    row(&[Get], "/api/chat/agents", Admin, READS, Data(|e, c| assist::list(e, c, K::Agent))),
    row(&[Get], "/api/chat/agents/by-name/{name}", Admin, READS, Data(assist::agent_by_name)),
    row(&[Get], "/api/chat/agents/by-deployment/{deployment_id}", Admin, READS, Data(assist::agents_by_deployment)),
    row(&[Get], "/api/chat/agents/{id}", Admin, READS, Data(|e, c| assist::get(e, c, K::Agent))),
    row(&[Put], "/api/chat/agents/{id}", Admin, WRITES, Data(|e, c| assist::update(e, c, K::Agent))),
    row(&[Delete], "/api/chat/agents/{id}", Admin, WRITES, Data(|e, c| assist::delete(e, c, K::Agent))),
    // Schedules (spec F5).
    row(&[Post], "/api/schedules", Admin, WRITES, Srv(schedules::create)),
    row(&[Get], "/api/schedules", Admin, READS, Srv(schedules::list)),
    row(&[Get], "/api/schedules/{id}", Admin, READS, Srv(schedules::get)),
    row(&[Put], "/api/schedules/{id}", Admin, WRITES, Srv(schedules::update)),
    row(&[Delete], "/api/schedules/{id}", Admin, WRITES, Srv(schedules::delete)),
    row(&[Post], "/api/schedules/{id}/trigger", Admin, WRITES, Srv(schedules::trigger)),
    row(&[Post], "/api/schedules/{id}/pause", Admin, WRITES, Srv(|s, c| schedules::set_enabled(s, c, false))),
    row(&[Post], "/api/schedules/{id}/resume", Admin, WRITES, Srv(|s, c| schedules::set_enabled(s, c, true))),
    row(&[Get], "/api/schedules/{id}/runs", Admin, READS, Srv(schedules::runs)),
    // The seed products' chat sockets (`spec/dialects.md`): each checks its
    // credential its own documented way, so the table lets them through.
    row(&[Get], "/ws", Public, READS, Srv(general_bots::upgrade)),
    row(&[Get], "/ws/meet", Public, READS, Srv(meet::upgrade)),
    row(&[Get], "/ai/ws", Public, READS, Srv(fluxbase::upgrade)),
    row(&[Get], "/eva/ws", Public, READS, Srv(eva::upgrade)),
    row(&[Get], "/eva/health", Public, READS, Srv(eva::health)),
    // Fluxbase chatbots (named chat configurations).
    row(&[Get], "/api/v1/ai/chatbots", Admin, READS, Srv(fluxbase::list)),
    row(&[Post], "/api/v1/ai/chatbots", Admin, WRITES, Srv(fluxbase::put)),
    row(&[Get], "/api/v1/ai/chatbots/by-name/{name}", Admin, READS, Srv(fluxbase::get)),
    row(&[Delete], "/api/v1/ai/chatbots/{namespace}/{name}", Admin, WRITES, Srv(fluxbase::delete)),
    // Lanonasis: the stream and the memory API, which take the SDK's
    // `X-API-Key` as well as a bearer key, so they check it themselves.
    row(&[Get], "/api/v1/stream", Public, READS, Srv(lanonasis::stream::open)),
    row(&[Get], "/api/v1/memory", Public, READS, Srv(lanonasis::memory::list)),
    row(&[Post], "/api/v1/memory", Public, WRITES, Srv(lanonasis::memory::create)),
    row(&[Post], "/api/v1/memory/search", Public, READS, Srv(lanonasis::memory::search)),
    row(&[Get], "/api/v1/memory/{id}", Public, READS, Srv(lanonasis::memory::get)),
    row(&[Put], "/api/v1/memory/{id}", Public, WRITES, Srv(lanonasis::memory::update)),
    row(&[Delete], "/api/v1/memory/{id}", Public, WRITES, Srv(lanonasis::memory::delete)),
    row(&[Get], "/api/v1/memories", Public, READS, Srv(lanonasis::memory::list)),
    row(&[Post], "/api/v1/memories", Public, WRITES, Srv(lanonasis::memory::create)),
    row(&[Post], "/api/v1/memories/search", Public, READS, Srv(lanonasis::memory::search)),
    row(&[Get], "/api/v1/memories/{id}", Public, READS, Srv(lanonasis::memory::get)),
    row(&[Put], "/api/v1/memories/{id}", Public, WRITES, Srv(lanonasis::memory::update)),
    row(&[Delete], "/api/v1/memories/{id}", Public, WRITES, Srv(lanonasis::memory::delete)),
];

/// The routes a browser opens without headers (WebSocket, EventSource):
/// the only ones that take `?token=`.
const QUERY_TOKEN_ROUTES: [&str; 3] = [
    "/api/ws",
    "/api/subscribe/{collection}",
    "/api/chat/{chat_id}/messages/{message_id}/stream",
];

/// Whether a route takes its token from the query string.
pub fn takes_query_token(route: &Route) -> bool {
    QUERY_TOKEN_ROUTES.contains(&route.path)
}

/// How one pattern segment matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Seg<'p> {
    /// `{*name}`: the rest of the path (least specific).
    Rest(&'p str),
    /// `{name}`: any one segment.
    Var(&'p str),
    /// A literal segment (most specific).
    Lit(&'p str),
}

fn pattern(path: &str) -> impl Iterator<Item = Seg<'_>> {
    path.trim_start_matches('/').split('/').map(|s| {
        match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => match name.strip_prefix('*') {
                Some(rest) => Seg::Rest(rest),
                None => Seg::Var(name),
            },
            None => Seg::Lit(s),
        }
    })
}

/// A row with its pattern parsed once (the table is static; parsing it per
/// request cost more than the lookup).
struct Compiled {
    route: &'static Route,
    segs: Vec<Seg<'static>>,
    /// Specificity of each segment, left to right: literals before variables
    /// before a rest match; a pattern that ends where the path ends beats one
    /// whose rest match takes nothing.
    rank: Vec<u8>,
    rest: bool,
}

impl Compiled {
    fn new(route: &'static Route) -> Compiled {
        let segs: Vec<Seg<'static>> = pattern(route.path).collect();
        let rest = matches!(segs.last(), Some(Seg::Rest(_)));
        let mut rank: Vec<u8> = segs
            .iter()
            .map(|s| match s {
                Seg::Lit(_) => 3,
                Seg::Var(_) => 2,
                Seg::Rest(_) => 0,
            })
            .collect();
        if !rest {
            rank.push(1);
        }
        Compiled {
            route,
            segs,
            rank,
            rest,
        }
    }

    /// Whether the pattern matches the path (no allocation).
    fn matches(&self, segments: &[String]) -> bool {
        let fixed = self.segs.len() - usize::from(self.rest);
        let len_ok = if self.rest {
            segments.len() >= fixed
        } else {
            segments.len() == fixed
        };
        len_ok
            && self.segs[..fixed]
                .iter()
                .zip(segments)
                .all(|(p, s)| !matches!(p, Seg::Lit(lit) if *lit != s.as_str()))
    }

    /// The variables a matching path binds.
    fn bind(&self, segments: &[String]) -> Args {
        let mut args = Vec::new();
        for (i, seg) in self.segs.iter().enumerate() {
            match seg {
                Seg::Rest(name) => {
                    args.push((*name, segments.get(i..).unwrap_or_default().join("/")));
                }
                Seg::Var(name) => args.push((*name, segments[i].clone())),
                Seg::Lit(_) => {}
            }
        }
        args
    }
}

/// The compiled rows, with the rows whose first two segments are literals
/// found by those two (most of the table: `/api/insert/...`), so a request
/// is matched against a handful of rows rather than every one.
struct Table {
    rows: Vec<Compiled>,
    /// Rows by their two leading literals, in table order.
    by_head: HashMap<&'static str, HashMap<&'static str, Vec<usize>>>,
    /// Every other row (a variable or the end within two segments), in
    /// table order.
    other: Vec<usize>,
}

impl Table {
    fn new() -> Table {
        let rows: Vec<Compiled> = ROUTES.iter().map(Compiled::new).collect();
        let mut by_head: HashMap<&'static str, HashMap<&'static str, Vec<usize>>> = HashMap::new();
        let mut other = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            match row.segs.as_slice() {
                [Seg::Lit(a), Seg::Lit(b), ..] => {
                    by_head
                        .entry(*a)
                        .or_default()
                        .entry(*b)
                        .or_default()
                        .push(i);
                }
                _ => other.push(i),
            }
        }
        Table {
            rows,
            by_head,
            other,
        }
    }

    /// The rows that can match `segments`, in table order.
    fn candidates<'t>(&'t self, segments: &[String]) -> impl Iterator<Item = &'t Compiled> + 't {
        let headed: &[usize] = match segments {
            [a, b, ..] => self
                .by_head
                .get(a.as_str())
                .and_then(|next| next.get(b.as_str()))
                .map_or(&[], Vec::as_slice),
            _ => &[],
        };
        merge_sorted(headed, &self.other).map(|i| &self.rows[i])
    }
}

/// The union of two ascending index lists, ascending.
fn merge_sorted<'a>(a: &'a [usize], b: &'a [usize]) -> impl Iterator<Item = usize> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let next = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) if x < y => x,
            (Some(_), Some(&y)) | (None, Some(&y)) => y,
            (Some(&x), None) => x,
            (None, None) => return None,
        };
        if a.get(i) == Some(&next) {
            i += 1;
        }
        if b.get(j) == Some(&next) {
            j += 1;
        }
        Some(next)
    })
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Table::new)
}

/// The variables a matched path binds, by name.
pub type Args = Vec<(&'static str, String)>;

/// Resolves a request to its row and the variables its path binds. `segments`
/// are the decoded path segments.
pub fn resolve(method: &Method, segments: &[String]) -> Result<(&'static Route, Args)> {
    // The rows matching with the most specific rank.
    let mut best: Vec<&Compiled> = Vec::new();
    for row in table().candidates(segments) {
        if !row.matches(segments) {
            continue;
        }
        match best.first() {
            Some(b) if b.rank == row.rank => best.push(row),
            Some(b) if b.rank > row.rank => {}
            _ => {
                best.clear();
                best.push(row);
            }
        }
    }
    if best.is_empty() {
        return Err(Error::not_found(format!(
            "no route for {} /{}",
            method.as_str(),
            segments.join("/")
        )));
    }
    let wanted = if *method == Method::Head {
        &Method::Get
    } else {
        method
    };
    let mut allowed: Vec<&str> = Vec::new();
    for row in best {
        if row.route.methods.contains(wanted) {
            return Ok((row.route, row.bind(segments)));
        }
        allowed.extend(row.route.methods.iter().map(Method::as_str));
    }
    Err(Error::new(
        ErrorKind::MethodNotAllowed,
        format!(
            "method {} is not allowed here (allowed: {})",
            wanted.as_str(),
            allowed.join(", ")
        ),
    )
    .with_header("Allow", allowed.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::http::url::split_path;

    /// Where a request should go: the row's path and its bound variables, or
    /// the error status.
    type Expect<'a> = std::result::Result<(&'a str, &'a [(&'a str, &'a str)]), u16>;

    /// The rows the index offers for a path are the rows of the whole table
    /// that match it, in the same order: for every row's own path (variables
    /// filled in), a rest match's extra segments, and paths that lie near.
    #[test]
    fn the_index_offers_every_row_that_matches() {
        let mut paths = vec!["/".to_string(), "/api".to_string(), "/x/y/z".to_string()];
        for row in ROUTES {
            let filled: Vec<&str> = pattern(row.path)
                .map(|seg| match seg {
                    Seg::Lit(l) => l,
                    Seg::Var(_) => "v",
                    Seg::Rest(_) => "r/s",
                })
                .collect();
            let path = format!("/{}", filled.join("/"));
            paths.push(format!("{path}/more"));
            paths.push(path.trim_end_matches("/r/s").to_string());
            paths.push(path);
        }
        for path in paths {
            let segs = split_path(&path).unwrap();
            let all: Vec<&str> = table()
                .rows
                .iter()
                .filter(|r| r.matches(&segs))
                .map(|r| r.route.path)
                .collect();
            let offered: Vec<&str> = table()
                .candidates(&segs)
                .filter(|r| r.matches(&segs))
                .map(|r| r.route.path)
                .collect();
            assert_eq!(offered, all, "{path}");
        }
        let merged: Vec<usize> = merge_sorted(&[0, 3, 9], &[1, 2, 3, 10]).collect();
        assert_eq!(merged, [0, 1, 2, 3, 9, 10]);
        assert_eq!(merge_sorted(&[1, 4], &[]).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(merge_sorted(&[], &[2]).collect::<Vec<_>>(), [2]);
    }

    fn check(method: Method, path: &str, expect: Expect<'_>) {
        let segs = split_path(path).unwrap();
        let got = resolve(&method, &segs).map_err(|e| e.status());
        let got = got.map(|(r, args)| (r.path, args));
        match (got, expect) {
            (Ok((p, args)), Ok((want_p, want_args))) => {
                assert_eq!(p, want_p, "{path}");
                let args: Vec<(&str, &str)> = args.iter().map(|(n, v)| (*n, v.as_str())).collect();
                assert_eq!(args, want_args, "{path}");
            }
            (got, want) => assert_eq!(got.map(|_| ()), want.map(|_| ()), "{path}"),
        }
    }

    #[test]
    fn literals_win_over_variables() {
        check(
            Method::Put,
            "/api/update/sequence/c/1",
            Ok((
                "/api/update/sequence/{collection}/{id}",
                &[("collection", "c"), ("id", "1")],
            )),
        );
        check(
            Method::Put,
            "/api/update/c/1",
            Ok((
                "/api/update/{collection}/{id}",
                &[("collection", "c"), ("id", "1")],
            )),
        );
        check(
            Method::Put,
            "/api/update/c/1/action/increment",
            Ok((
                "/api/update/{collection}/{id}/action/{action}",
                &[("collection", "c"), ("id", "1"), ("action", "increment")],
            )),
        );
        check(
            Method::Get,
            "/api/kv/get/links",
            Ok(("/api/kv/get/{key}", &[("key", "links")])),
        );
        check(
            Method::Get,
            "/api/kv/session%2Fabc/links",
            Ok(("/api/kv/{key}/links", &[("key", "session/abc")])),
        );
        check(
            Method::Get,
            "/api/find/my%20c/a%2Fb",
            Ok((
                "/api/find/{collection}/{id}",
                &[("collection", "my c"), ("id", "a/b")],
            )),
        );
        check(Method::Head, "/api/health", Ok(("/api/health", &[])));
    }

    #[test]
    fn errors() {
        check(Method::Get, "/api/insert/c", Err(405));
        check(Method::Get, "/api/nothing", Err(404));
        // The console's page; nothing else at the top level.
        check(Method::Get, "/", Ok(("/", &[])));
        check(Method::Post, "/", Err(405));
        check(Method::Get, "/index.html", Err(404));
        check(
            Method::Get,
            "/api/find/c/",
            Ok((
                "/api/find/{collection}/{id}",
                &[("collection", "c"), ("id", "")],
            )),
        );
        check(Method::Post, "/api/chat", Ok(("/api/chat", &[])));
        check(Method::Get, "/api/chat/branch", Err(405));
        check(Method::Get, "/api/chat/tools", Ok(("/api/chat/tools", &[])));
        check(
            Method::Post,
            "/api/chat/c1/messages/stream",
            Ok(("/api/chat/{chat_id}/messages/stream", &[("chat_id", "c1")])),
        );
        check(Method::Get, "/api/chat/c1/messages/stream", Err(405));
        check(
            Method::Get,
            "/api/chat/goals/g1",
            Ok(("/api/chat/goals/{id}", &[("id", "g1")])),
        );
        check(
            Method::Get,
            "/api/chat/goals/search",
            Ok(("/api/chat/goals/search", &[])),
        );
        check(
            Method::Get,
            "/api/chat/agents/by-name/a%2Fb",
            Ok(("/api/chat/agents/by-name/{name}", &[("name", "a/b")])),
        );
    }

    #[test]
    fn a_405_names_every_method_of_the_path() {
        let segs = split_path("/api/collections/c").unwrap();
        let e = resolve(&Method::Patch, &segs).unwrap_err();
        assert_eq!(e.status(), 405);
        let allow = e
            .headers
            .iter()
            .find(|(n, _)| *n == "Allow")
            .map(|(_, v)| v.as_str());
        assert_eq!(allow, Some("GET, POST, DELETE"));
    }

    #[test]
    fn the_transaction_routes_exist() {
        for path in IN_TRANSACTION {
            assert!(ROUTES.iter().any(|r| r.path == *path), "{path}");
        }
    }

    /// Every `{variable}` a handler reads is bound by its row's path, and no two
    /// rows claim the same method on the same pattern.
    #[test]
    fn the_table_is_consistent() {
        for (i, a) in ROUTES.iter().enumerate() {
            let names: Vec<Seg<'_>> = pattern(a.path).collect();
            for (j, seg) in names.iter().enumerate() {
                if let Seg::Rest(_) = seg {
                    assert_eq!(
                        j + 1,
                        names.len(),
                        "{}: a rest match must come last",
                        a.path
                    );
                }
            }
            for b in &ROUTES[i + 1..] {
                if a.path == b.path {
                    assert!(
                        !a.methods.iter().any(|m| b.methods.contains(m)),
                        "{} is listed twice for one method",
                        a.path
                    );
                }
            }
            assert!(
                !(a.writes && a.scope == Read),
                "{}: a read route that writes",
                a.path
            );
            // A route limited by what its path names must name something,
            // or a non-admin key would pass it unchecked.
            if matches!(a.scope, Read | Write) {
                assert!(
                    names
                        .iter()
                        .any(|s| matches!(s, Seg::Var("collection" | "key"))),
                    "{}: a {:?} route must name a {{collection}} or {{key}} (or be AnyKey)",
                    a.path,
                    a.scope
                );
            }
        }
    }

    #[test]
    fn the_query_token_routes_exist() {
        for path in QUERY_TOKEN_ROUTES {
            assert!(
                ROUTES
                    .iter()
                    .any(|r| r.path == path && r.methods.contains(&Method::Get)),
                "{path} is not a GET route"
            );
        }
    }
}
