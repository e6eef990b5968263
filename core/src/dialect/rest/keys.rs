//! API-key administration (spec 14): register, list and revoke keys, and read
//! or change their grants through the modern per-key routes and the legacy
//! `/api/auth/permissions`. Keys live in `auth::keys`; every change is a
//! logged write, acknowledged once durable, and noted in the operator's log
//! (key id and address, never the secret).

use super::{Ctx, Outcome};
use crate::auth::grants::{forbidden, CollectionGrant, Grants, KvGrant};
use crate::auth::keys::{self, StoredKey, HIDDEN};
use crate::auth::Principal;
use crate::error::{Error, ErrorKind, Result};
use crate::server::Server;
use serde_json::{json, Map, Value as J};

/// The caller of a route the table let through for any key.
fn caller<'c>(ctx: &'c Ctx<'_>) -> Result<&'c Principal> {
    ctx.principal
        .as_ref()
        .ok_or_else(|| Error::new(ErrorKind::Unauthorized, "an API key is required"))
}

/// The key a `{key_id}` segment names (`me`: the caller's). A non-admin
/// key may read only its own.
fn target_id(ctx: &Ctx<'_>) -> Result<String> {
    let who = caller(ctx)?;
    let id = match ctx.arg("key_id") {
        "me" => who.key_id.clone(),
        id if keys::is_key_id(id) => id.to_string(),
        other => {
            return Err(Error::invalid(format!(
                "`{other}` is not a key id (32 lowercase hex characters) or `me`"
            )))
        }
    };
    if id != who.key_id && !who.is_admin() {
        return Err(forbidden(
            "a non-admin key may read only its own permissions",
        ));
    }
    Ok(id)
}

/// A key as the permission routes see it: a configured key is an admin
/// with no grants; a registered one is loaded.
fn load(server: &Server, ctx: &Ctx<'_>, id: &str) -> Result<StoredKey> {
    if server.auth().is_bootstrap(id) {
        return Ok(StoredKey {
            id: id.to_string(),
            hash: String::new(),
            is_admin: true,
            grants: Grants::default(),
            label: Some("configured".into()),
            description: Some("from the server's configuration".into()),
            created_at: 0,
            extra: Map::new(),
        });
    }
    keys::load(server.engine(), id, ctx.now)
        .ok_or_else(|| Error::not_found(format!("no API key `{id}`")))
}

/// A registered key to change (configured keys are changed in the
/// configuration).
fn load_registered(server: &Server, ctx: &Ctx<'_>, id: &str) -> Result<StoredKey> {
    if server.auth().is_bootstrap(id) {
        return Err(Error::invalid(format!(
            "`{id}` is a configured admin key: change it in the server's configuration"
        )));
    }
    load(server, ctx, id)
}

fn reply(ctx: &Ctx<'_>, body: &J) -> Result<Outcome> {
    ctx.ok_json(body).map(Outcome::Reply)
}

/// `POST /api/auth/register`: the caller proves it is an admin with a
/// bearer token or, as older clients do, its key in the body.
pub fn register(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let body = ctx.body()?;
    let Some(o) = body.as_object() else {
        return Err(Error::invalid("a registration is a JSON object"));
    };
    let who = match (
        ctx.header("authorization"),
        o.get("api_key").and_then(J::as_str),
    ) {
        (None, Some(key)) => {
            // A key in a body is a key attempt like the token exchange's.
            let ip = ctx.conn.and_then(|c| server.peer_of(c).ip);
            server.check_guesses(ip, ctx.now)?;
            server
                .authenticate_credential(key, ctx.now)
                .inspect_err(|_| {
                    server.failed_guess(ip, ctx.now);
                    server.security_event(ctx, "", "failed login: wrong API key (register)");
                })?
        }
        (header, _) => server.authenticate(header, None, ctx.now)?,
    };
    if !who.is_admin() {
        server.security_event(ctx, &who.key_id, "denied: register a key (not an admin)");
        return Err(forbidden("registering a key needs an admin key"));
    }
    let is_admin = match o.get("is_admin") {
        None | Some(J::Null) => false,
        Some(J::Bool(b)) => *b,
        Some(_) => return Err(Error::invalid("`is_admin` is a boolean")),
    };
    let grants = Grants::parse(o.get("collection_permissions"), o.get("kv_permissions"))?;
    let secret = match o.get("key") {
        None | Some(J::Null) => {
            let nonce = server.new_token(32);
            server.auth().generate_key(nonce.as_bytes())
        }
        Some(J::String(k)) => {
            keys::validate_custom(k)?;
            k.clone()
        }
        Some(_) => return Err(Error::invalid("a custom `key` is a string")),
    };
    let mut key = StoredKey::new(&secret, is_admin, grants, ctx.now);
    if server.auth().is_bootstrap(&key.id)
        || keys::load(server.engine(), &key.id, ctx.now).is_some()
    {
        return Err(Error::new(
            ErrorKind::Conflict,
            "this API key already exists",
        ));
    }
    let text = |k: &str| o.get(k).and_then(J::as_str).map(str::to_string);
    key.label = text("label");
    key.description = text("description");
    for (k, v) in o {
        if !matches!(
            k.as_str(),
            "api_key"
                | "key"
                | "id"
                | "is_admin"
                | "collection_permissions"
                | "kv_permissions"
                | "label"
                | "description"
                | "created_at"
                | "ripple_warning"
                | "hash"
        ) {
            key.extra.insert(k.clone(), v.clone());
        }
    }
    keys::save(server.engine_mut(), &key, ctx.now)?;
    let admin = if is_admin { "admin" } else { "non-admin" };
    server.security_event(
        ctx,
        &who.key_id,
        &format!("registered {admin} key {}", key.id),
    );
    reply(ctx, &key.to_wire(&secret))
}

/// `GET /api/auth/keys`: every key (configured ones too), secrets hidden.
pub fn list(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let mut out: Vec<J> = server
        .auth()
        .bootstrap_ids()
        .map(|id| load(server, ctx, id).map(|k| k.to_wire(HIDDEN)))
        .collect::<Result<_>>()?;
    out.extend(
        keys::list(server.engine(), ctx.now)
            .iter()
            .map(|k| k.to_wire(HIDDEN)),
    );
    reply(ctx, &J::Array(out))
}

/// `DELETE /api/auth/keys/{key_or_id}`: by id, or by the secret itself.
pub fn revoke(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let given = ctx.arg("key_id");
    let id = if keys::is_key_id(given)
        && (server.auth().is_bootstrap(given)
            || keys::load(server.engine(), given, ctx.now).is_some())
    {
        given.to_string()
    } else {
        keys::id_of(given)
    };
    load_registered(server, ctx, &id)?;
    keys::remove(server.engine_mut(), &id);
    server.end_streams_of_key(&id, true);
    let by = ctx.key_id();
    server.security_event(ctx, by, &format!("revoked key {id}"));
    reply(ctx, &json!({"id": id, "revoked": true}))
}

/// `GET /api/auth/keys/{id|me}/permissions`
pub fn permissions(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let key = load(server, ctx, &target_id(ctx)?)?;
    reply(ctx, &key.permissions_wire())
}

/// `GET …/permissions/collections`
pub fn collection_grants(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let key = load(server, ctx, &target_id(ctx)?)?;
    reply(ctx, &key.grants.collections_wire())
}

/// `GET …/permissions/collections/{name}`
pub fn collection_grant(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let key = load(server, ctx, &target_id(ctx)?)?;
    let name = ctx.arg("name");
    let grant = key
        .grants
        .collections
        .get(name)
        .ok_or_else(|| Error::not_found(format!("no grant on collection `{name}`")))?;
    reply(ctx, &grant.to_wire())
}

/// `GET …/permissions/kv[?prefix=]`: the grants whose prefix starts with
/// the one given.
pub fn kv_grants(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let key = load(server, ctx, &target_id(ctx)?)?;
    let wanted = ctx.param("prefix").unwrap_or_default();
    let list: Vec<J> = key
        .grants
        .kv
        .iter()
        .filter(|g| g.prefix.starts_with(wanted))
        .map(KvGrant::to_wire)
        .collect();
    reply(ctx, &J::Array(list))
}

/// `GET …/permissions/kv/{prefix}`
pub fn kv_grant(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let key = load(server, ctx, &target_id(ctx)?)?;
    let prefix = ctx.arg("prefix");
    let grant = key
        .grants
        .kv
        .iter()
        .find(|g| g.prefix == prefix)
        .ok_or_else(|| Error::not_found(format!("no grant on KV prefix `{prefix}`")))?;
    reply(ctx, &grant.to_wire())
}

/// The body of a PUT or PATCH as an object (a DELETE has none).
fn edit_body(ctx: &Ctx<'_>) -> Result<Map<String, J>> {
    match ctx.body()? {
        J::Object(o) => Ok(o),
        J::Null => Ok(Map::new()),
        _ => Err(Error::invalid("a permission edit is a JSON object")),
    }
}

/// Stores a changed key and answers `{before, after}`.
fn changed(
    server: &mut Server,
    ctx: &Ctx<'_>,
    key: &StoredKey,
    what: &str,
    before: Option<J>,
    after: Option<J>,
) -> Result<Outcome> {
    keys::save(server.engine_mut(), key, ctx.now)?;
    server.end_streams_of_key(&key.id, false);
    let by = ctx.key_id();
    server.security_event(ctx, by, &format!("changed {what} of key {}", key.id));
    reply(ctx, &json!({"before": before, "after": after}))
}

/// `PUT` / `PATCH` / `DELETE …/permissions/collections/{name}`
pub fn change_collection_grant(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let mut key = load_registered(server, ctx, &target_id(ctx)?)?;
    let name = ctx.arg("name").to_string();
    crate::engine::validate_name("collection", &name)?;
    let before = key.grants.collections.get(&name).cloned();
    let after = match ctx.method() {
        Some(crate::wire::http::Method::Delete) => None,
        method => {
            let full = method == Some(crate::wire::http::Method::Put);
            let mut grant = if full {
                CollectionGrant::default()
            } else {
                before.clone().unwrap_or_default()
            };
            grant.apply(&edit_body(ctx)?, full)?;
            Some(grant)
        }
    };
    match &after {
        Some(g) => key.grants.collections.insert(name.clone(), g.clone()),
        None => key.grants.collections.remove(&name),
    };
    let wire = |g: Option<CollectionGrant>| g.map(|g| g.to_wire());
    changed(
        server,
        ctx,
        &key,
        &format!("the grant on collection `{name}`"),
        wire(before),
        wire(after),
    )
}

/// `PUT` / `PATCH` / `DELETE …/permissions/kv/{prefix}`
pub fn change_kv_grant(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let mut key = load_registered(server, ctx, &target_id(ctx)?)?;
    let prefix = ctx.arg("prefix").to_string();
    if prefix.is_empty() {
        return Err(Error::invalid("a KV grant needs a non-empty prefix"));
    }
    let before = key.grants.kv.iter().find(|g| g.prefix == prefix).cloned();
    let after = match ctx.method() {
        Some(crate::wire::http::Method::Delete) => None,
        method => {
            let body = edit_body(ctx)?;
            let flag = |k: &str, current: bool| match body.get(k) {
                Some(J::Bool(b)) => Ok(*b),
                None if method != Some(crate::wire::http::Method::Put) => Ok(current),
                _ => Err(Error::invalid(format!("a KV grant needs a boolean `{k}`"))),
            };
            let (read, write) = before
                .as_ref()
                .map_or((false, false), |g| (g.read, g.write));
            let grant = KvGrant {
                prefix: prefix.clone(),
                read: flag("read", read)?,
                write: flag("write", write)?,
            };
            if method == Some(crate::wire::http::Method::Put) && !grant.read && !grant.write {
                return Err(Error::invalid("a KV grant needs read or write"));
            }
            Some(grant)
        }
    };
    key.grants.kv.retain(|g| g.prefix != prefix);
    if let Some(g) = &after {
        key.grants.set_kv(g.clone());
    }
    let wire = |g: Option<KvGrant>| g.map(|g| g.to_wire());
    changed(
        server,
        ctx,
        &key,
        &format!("the grant on KV prefix `{prefix}`"),
        wire(before),
        wire(after),
    )
}

/// `GET /api/auth/permissions` (legacy): the caller's own permissions.
pub fn legacy_permissions(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let key = load(server, ctx, &caller(ctx)?.key_id.clone())?;
    reply(
        ctx,
        &json!({
            "is_admin": key.is_admin,
            "collection_permissions": key.grants.collections_wire(),
            "kv_permissions": key.grants.kv_wire(),
        }),
    )
}

/// `PUT /api/auth/permissions` (legacy): one collection's grant of the key
/// whose secret the body names; answers the key's record.
pub fn legacy_update(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let body = edit_body(ctx)?;
    let text = |k: &str| {
        body.get(k)
            .and_then(J::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| Error::invalid(format!("the body needs a string `{k}`")))
    };
    let (secret, name) = (text("api_key")?, text("collection")?);
    crate::engine::validate_name("collection", &name)?;
    let mut key = match keys::load(server.engine(), &keys::id_of(&secret), ctx.now) {
        Some(k) if k.matches(&secret) => k,
        _ => return Err(Error::not_found("no registered API key with that secret")),
    };
    let mut grant = key
        .grants
        .collections
        .get(&name)
        .cloned()
        .unwrap_or_default();
    let mut edit = body.clone();
    edit.remove("api_key");
    edit.remove("collection");
    grant.apply(&edit, true)?;
    key.grants.collections.insert(name.clone(), grant);
    keys::save(server.engine_mut(), &key, ctx.now)?;
    server.end_streams_of_key(&key.id, false);
    let by = ctx.key_id();
    server.security_event(
        ctx,
        by,
        &format!("changed the grant on collection `{name}` of key {}", key.id),
    );
    reply(ctx, &key.to_wire(&secret))
}
