//! REST routing (spec 1.1, 17): decoded path segments + method → `Route`. Literal
//! segments win over variables; a known path with another method is a 405.

use crate::error::{Error, ErrorKind, Result};
use crate::wire::http::Method;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    AuthToken,
    ListCollections,
    CreateCollection(String),
    GetCollection(String),
    DropCollection(String),
    GetSchema(String),
    UpdateSchema(String),
    Insert(String),
    Find(String),
    FindById(String, String),
    UpdateSequence(String, String),
    UpdateAction(String, String, String),
    Update(String, String),
    Delete(String, String),
    RestoreOne(String, String),
    RestoreAll(String),
    BatchInsert(String),
    BatchUpdate(String),
    BatchDelete(String),
    Distinct(String, String),
    Search(String),
    Embed,
    KvSet(String),
    KvGet(String),
    KvDelete(String),
    KvClear,
    KvBatchGet,
    KvBatchSet,
    KvBatchDelete,
    KvFind,
    KvLinks(String),
    KvLink(String, String, String),
    KvUnlink(String, String, String),
    KvLegacyLinks(String),
    KvLegacyLink,
    KvLegacyUnlink,
    TxBegin,
    TxStatus(String),
    TxCommit(String),
    TxRollback(String),
    TxSavepoint(String),
    TxSavepointRollback(String, String),
    TxSavepointRelease(String, String),
    WebSocket,
    Subscribe(String),
    /// Internal (WebSocket `CreateCollection` without a schema).
    EnsureCollection(String),
    /// Internal (WebSocket `GetCollections`: a bare array of names).
    CollectionNames,
    /// A surface of the ekoDB API that Tidepool does not serve yet (501).
    Unimplemented(&'static str),
}

impl Route {
    /// Whether the route can change data (refused while storage is read-only).
    pub fn is_write(&self) -> bool {
        use Route::*;
        matches!(
            self,
            CreateCollection(_)
                | EnsureCollection(_)
                | DropCollection(_)
                | UpdateSchema(_)
                | Insert(_)
                | UpdateSequence(..)
                | UpdateAction(..)
                | Update(..)
                | Delete(..)
                | RestoreOne(..)
                | RestoreAll(_)
                | BatchInsert(_)
                | BatchUpdate(_)
                | BatchDelete(_)
                | KvSet(_)
                | KvDelete(_)
                | KvClear
                | KvBatchSet
                | KvBatchDelete
                | KvLink(..)
                | KvUnlink(..)
                | KvLegacyLink
                | KvLegacyUnlink
                | TxCommit(_)
        )
    }

    /// Whether the route is open without a token.
    pub fn is_public(&self) -> bool {
        matches!(self, Route::Health | Route::AuthToken)
    }
}

/// Resolves a request. `segments` are the decoded path segments.
pub fn route(method: &Method, segments: &[String]) -> Result<Route> {
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let candidates = candidates(&segs);
    if candidates.is_empty() {
        return Err(Error::not_found(format!(
            "no route for {} /{}",
            method.as_str(),
            segments.join("/")
        )));
    }
    let method = if *method == Method::Head {
        &Method::Get
    } else {
        method
    };
    for (m, r) in &candidates {
        if m == method {
            return Ok(r.clone());
        }
    }
    let allowed: Vec<&str> = candidates.iter().map(|(m, _)| m.as_str()).collect();
    Err(Error::new(
        ErrorKind::MethodNotAllowed,
        format!(
            "method {} is not allowed here (allowed: {})",
            method.as_str(),
            allowed.join(", ")
        ),
    )
    .with_header("Allow", allowed.join(", ")))
}

fn candidates(segs: &[&str]) -> Vec<(Method, Route)> {
    use Method::*;
    use Route as R;
    let s = |x: &str| x.to_string();
    let Some((&"api", rest)) = segs.split_first() else {
        return Vec::new();
    };
    match rest {
        ["health"] => vec![(Get, R::Health)],
        ["auth", "token"] => vec![(Post, R::AuthToken)],
        ["auth", ..] => vec![
            (Get, R::Unimplemented("API key administration")),
            (Post, R::Unimplemented("API key administration")),
            (Put, R::Unimplemented("API key administration")),
            (Patch, R::Unimplemented("API key administration")),
            (Delete, R::Unimplemented("API key administration")),
        ],
        ["config"] => vec![
            (Get, R::Unimplemented("server configuration")),
            (Put, R::Unimplemented("server configuration")),
        ],
        ["collections"] => vec![(Get, R::ListCollections)],
        ["collections", c] => vec![
            (Get, R::GetCollection(s(c))),
            (Post, R::CreateCollection(s(c))),
            (Delete, R::DropCollection(s(c))),
        ],
        ["schemas", c] => vec![(Get, R::GetSchema(s(c))), (Put, R::UpdateSchema(s(c)))],
        ["insert", c] => vec![(Post, R::Insert(s(c)))],
        ["find", c] => vec![(Post, R::Find(s(c)))],
        ["find", c, id] => vec![(Get, R::FindById(s(c), s(id)))],
        ["update", "sequence", c, id] => vec![(Put, R::UpdateSequence(s(c), s(id)))],
        ["update", c, id, "action", a] => vec![(Put, R::UpdateAction(s(c), s(id), s(a)))],
        ["update", c, id] => vec![(Put, R::Update(s(c), s(id)))],
        ["delete", c, id] => vec![(Delete, R::Delete(s(c), s(id)))],
        ["trash", c] => vec![(Post, R::RestoreAll(s(c)))],
        ["trash", c, id] => vec![(Post, R::RestoreOne(s(c), s(id)))],
        ["batch", "insert", c] => vec![(Post, R::BatchInsert(s(c)))],
        ["batch", "update", c] => vec![(Put, R::BatchUpdate(s(c)))],
        ["batch", "delete", c] => vec![(Delete, R::BatchDelete(s(c)))],
        ["distinct", c, f] => vec![(Post, R::Distinct(s(c), s(f)))],
        ["search", c] => vec![(Post, R::Search(s(c)))],
        ["embed"] => vec![(Post, R::Embed)],
        ["kv", "set", k] => vec![(Post, R::KvSet(s(k)))],
        ["kv", "get", k] => vec![(Get, R::KvGet(s(k)))],
        ["kv", "delete", k] => vec![(Delete, R::KvDelete(s(k)))],
        ["kv", "clear"] => vec![(Delete, R::KvClear)],
        ["kv", "batch", "get"] => vec![(Post, R::KvBatchGet)],
        ["kv", "batch", "set"] => vec![(Post, R::KvBatchSet)],
        ["kv", "batch", "delete"] => vec![(Delete, R::KvBatchDelete)],
        ["kv", "find"] | ["kv", "query"] => vec![(Post, R::KvFind)],
        ["kv", "links", k] => vec![(Get, R::KvLegacyLinks(s(k)))],
        ["kv", "link"] => vec![(Post, R::KvLegacyLink)],
        ["kv", "unlink"] => vec![(Post, R::KvLegacyUnlink)],
        ["kv", k, "links"] => vec![(Get, R::KvLinks(s(k)))],
        ["kv", k, "links", c, d] => vec![
            (Post, R::KvLink(s(k), s(c), s(d))),
            (Delete, R::KvUnlink(s(k), s(c), s(d))),
        ],
        ["transactions"] => vec![(Post, R::TxBegin)],
        ["transactions", tx] => vec![(Get, R::TxStatus(s(tx)))],
        ["transactions", tx, "commit"] => vec![(Post, R::TxCommit(s(tx)))],
        ["transactions", tx, "rollback"] => vec![(Post, R::TxRollback(s(tx)))],
        ["transactions", tx, "savepoints"] => vec![(Post, R::TxSavepoint(s(tx)))],
        ["transactions", tx, "savepoints", name, "rollback"] => {
            vec![(Post, R::TxSavepointRollback(s(tx), s(name)))]
        }
        ["transactions", tx, "savepoints", name] => {
            vec![(Delete, R::TxSavepointRelease(s(tx), s(name)))]
        }
        ["ws"] => vec![(Get, R::WebSocket)],
        ["subscribe", c] => vec![(Get, R::Subscribe(s(c)))],
        ["chat" | "chat_models", ..] => all_methods(R::Unimplemented("chat")),
        ["functions" | "route", ..] => all_methods(R::Unimplemented("stored functions")),
        ["schedules", ..] => all_methods(R::Unimplemented("schedules")),
        _ => Vec::new(),
    }
}

fn all_methods(r: Route) -> Vec<(Method, Route)> {
    [
        Method::Get,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
    ]
    .into_iter()
    .map(|m| (m, r.clone()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::http::url::split_path;

    fn check(method: Method, path: &str, expect: Result<Route, u16>) {
        let segs = split_path(path).unwrap();
        assert_eq!(
            route(&method, &segs).map_err(|e| e.status()),
            expect,
            "{path}"
        );
    }

    #[test]
    fn literals_win_over_variables() {
        check(
            Method::Put,
            "/api/update/sequence/c/1",
            Ok(Route::UpdateSequence("c".into(), "1".into())),
        );
        check(
            Method::Put,
            "/api/update/c/1",
            Ok(Route::Update("c".into(), "1".into())),
        );
        check(
            Method::Put,
            "/api/update/c/1/action/increment",
            Ok(Route::UpdateAction(
                "c".into(),
                "1".into(),
                "increment".into(),
            )),
        );
        check(
            Method::Get,
            "/api/kv/get/links",
            Ok(Route::KvGet("links".into())),
        );
        check(
            Method::Get,
            "/api/kv/session%2Fabc/links",
            Ok(Route::KvLinks("session/abc".into())),
        );
        check(
            Method::Get,
            "/api/find/my%20c/a%2Fb",
            Ok(Route::FindById("my c".into(), "a/b".into())),
        );
    }

    #[test]
    fn errors() {
        check(Method::Get, "/api/insert/c", Err(405));
        check(Method::Get, "/api/nothing", Err(404));
        check(Method::Get, "/", Err(404));
        check(
            Method::Get,
            "/api/find/c/",
            Ok(Route::FindById("c".into(), "".into())),
        );
        check(Method::Post, "/api/chat", Ok(Route::Unimplemented("chat")));
    }
}
