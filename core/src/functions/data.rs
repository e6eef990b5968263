//! Stages that read or write storage (records, the KV store, search) and
//! the self-contained ones that write one `output_field` (crypto,
//! encodings, locks, rate limits). Each takes its fields resolved against
//! the scope and returns what becomes of the working set.

use super::crypto;
use super::definition::{Stage, StageFilter};
use super::scope::{plain, text, Doc, Scope};
use crate::engine::actions::Action;
use crate::engine::query::FindQuery;
use crate::engine::record::{Record, RecordOut};
use crate::engine::{parse_ttl, Engine, Found};
use crate::error::{Error, ErrorKind, Result};
use crate::time::Timestamp;
use crate::value::Json;
use serde_json::{json, Map, Value as J};

/// The engine as the stages see it.
pub struct Store<'a> {
    pub engine: &'a mut Engine,
    pub now: Timestamp,
    /// The run's transaction (`transaction_config.enabled`): record reads
    /// and writes go through it and become visible only at its commit.
    pub tx: Option<&'a str>,
}

/// What a stage produced.
pub enum Out {
    /// A new working set.
    Ws(Vec<Doc>),
    /// One value for `output_field` (on every record and in scope).
    Output(String, J),
    /// The working set is unchanged.
    Same,
    /// Not one of this module's stages.
    NotMine,
}

fn doc(found: Found<'_>) -> Doc {
    match serde_json::to_value(RecordOut::new(found.pk, found.id, found.record)) {
        Ok(J::Object(o)) => o,
        _ => Map::new(),
    }
}

/// `[]` for a collection or record that does not exist.
fn absent_is_empty(r: Result<Vec<Doc>>) -> Result<Vec<Doc>> {
    match r {
        Err(e) if e.kind == ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    }
}

impl Store<'_> {
    fn find(&mut self, collection: &str, body: &J) -> Result<Vec<Doc>> {
        let q = FindQuery::parse(body)?;
        let now = self.now;
        if let Some(tx) = self.tx {
            let rows = absent_is_empty(self.engine.tx_find(tx, collection, &q, now).map(|rows| {
                rows.into_iter()
                    .map(|(id, r)| self.staged(collection, &id, &r))
                    .collect()
            }));
            return rows;
        }
        absent_is_empty(
            self.engine
                .find(collection, &q, now)
                .map(|rows| rows.into_iter().map(|r| doc(r.found)).collect()),
        )
    }

    /// A record as the transaction sees it, in the output shape.
    fn staged(&self, collection: &str, id: &str, r: &Record) -> Doc {
        let pk = self.engine.pk_name(collection);
        match serde_json::to_value(RecordOut::new(pk, id, r)) {
            Ok(J::Object(o)) => o,
            _ => Map::new(),
        }
    }

    fn get(&mut self, collection: &str, id: &str) -> Result<Vec<Doc>> {
        let now = self.now;
        if let Some(tx) = self.tx {
            let r = self.engine.tx_find_by_id(tx, collection, id, now);
            return absent_is_empty(r.map(|r| vec![self.staged(collection, id, &r)]));
        }
        absent_is_empty(
            self.engine
                .find_by_id(collection, id, now)
                .map(|f| vec![doc(f)]),
        )
    }

    fn insert(&mut self, collection: &str, record: J, ttl: Option<J>) -> Result<Doc> {
        let record = with_ttl(record, ttl)?;
        if let Some(tx) = self.tx {
            let id = self.engine.tx_insert(tx, collection, record, self.now)?;
            let r = self.engine.tx_find_by_id(tx, collection, &id, self.now)?;
            return Ok(self.staged(collection, &id, &r));
        }
        let id = self.engine.insert(collection, record, self.now)?;
        self.engine.find_by_id(collection, &id, self.now).map(doc)
    }

    fn update(&mut self, collection: &str, id: &str, patch: J, ttl: Option<J>) -> Result<Doc> {
        let patch = with_ttl(patch, ttl)?;
        if let Some(tx) = self.tx {
            let r = self.engine.tx_update(tx, collection, id, patch, self.now)?;
            return Ok(self.staged(collection, id, &r));
        }
        self.engine.update(collection, id, patch, self.now).map(doc)
    }

    fn delete(&mut self, collection: &str, id: &str) -> Result<()> {
        match self.tx {
            Some(tx) => self
                .engine
                .tx_delete(tx, collection, id, self.now)
                .map(drop),
            None => self.engine.delete(collection, id, self.now).map(drop),
        }
    }

    fn actions(
        &mut self,
        collection: &str,
        id: &str,
        steps: Vec<(Action, String, Option<J>)>,
    ) -> Result<Doc> {
        if let Some(tx) = self.tx {
            let r = self
                .engine
                .tx_apply_actions(tx, collection, id, steps, self.now)?;
            return Ok(self.staged(collection, id, &r));
        }
        self.engine
            .apply_actions(collection, id, steps, self.now)
            .map(doc)
    }
}

/// A record body with the stage's `ttl` folded in (as the REST body's
/// `ttl` key: seconds or a duration string).
fn with_ttl(record: J, ttl: Option<J>) -> Result<J> {
    let J::Object(mut o) = record else {
        return Err(Error::invalid("a record must be a JSON object"));
    };
    if let Some(t) = ttl.filter(|t| !t.is_null()) {
        o.insert("ttl".into(), t);
    }
    Ok(J::Object(o))
}

fn filter_body(scope: &Scope, ws: &[Doc], filter: &StageFilter) -> Result<J> {
    scope.resolve(&filter.0, ws)
}

/// A count that may be a placeholder resolving to an integer.
fn count(v: &Option<J>, name: &str, scope: &Scope, ws: &[Doc]) -> Result<Option<J>> {
    match v {
        None => Ok(None),
        Some(v) => {
            let r = scope.resolve(v, ws)?;
            match &r {
                J::Null => Ok(None),
                J::Number(n) if n.as_u64().is_some() => Ok(Some(r)),
                J::String(s) if s.trim().parse::<u64>().is_ok() => {
                    Ok(Some(json!(s.trim().parse::<u64>().unwrap_or(0))))
                }
                _ => Err(Error::invalid(format!(
                    "`{name}` must be a non-negative integer, not {r}"
                ))),
            }
        }
    }
}

/// Runs `stage` if it is one of this module's; `None` otherwise.
pub fn run(
    stage: &Stage,
    ws: &[Doc],
    scope: &Scope,
    store: &mut Store<'_>,
    random: &mut dyn FnMut(&mut [u8]),
) -> Option<Result<Out>> {
    let s = |v: &str| scope.string(v, ws).map(|c| c.into_owned());
    let r = |v: &J| scope.resolve(v, ws);
    let out = |field: &str, value: J| -> Result<Out> { Ok(Out::Output(s(field)?, value)) };
    let now = store.now;
    match (|| -> Result<Out> {
        match stage {
            Stage::FindAll { collection } => Ok(Out::Ws(store.find(&s(collection)?, &J::Null)?)),
            Stage::Query {
                collection,
                filter,
                sort,
                limit,
                skip,
            } => {
                let mut body = Map::new();
                if let Some(f) = filter {
                    body.insert("filter".into(), filter_body(scope, ws, f)?);
                }
                if let Some(sort) = sort {
                    body.insert("sort".into(), serde_json::to_value(sort).unwrap_or(J::Null));
                }
                if let Some(l) = count(limit, "limit", scope, ws)? {
                    body.insert("limit".into(), l);
                }
                if let Some(k) = count(skip, "skip", scope, ws)? {
                    body.insert("skip".into(), k);
                }
                Ok(Out::Ws(store.find(&s(collection)?, &J::Object(body))?))
            }
            Stage::FindById {
                collection,
                record_id,
            } => Ok(Out::Ws(store.get(&s(collection)?, &s(record_id)?)?)),
            Stage::FindOne {
                collection,
                key,
                value,
            } => {
                let body = json!({"filter": {"type": "Condition", "content":
                    {"field": s(key)?, "operator": "Eq", "value": r(value)?}}, "limit": 1});
                Ok(Out::Ws(store.find(&s(collection)?, &body)?))
            }
            Stage::Insert {
                collection,
                record,
                ttl,
                ..
            } => {
                let ttl = ttl.as_ref().map(&r).transpose()?;
                Ok(Out::Ws(vec![store.insert(
                    &s(collection)?,
                    r(record)?,
                    ttl,
                )?]))
            }
            Stage::BatchInsert {
                collection,
                records,
                ..
            } => {
                let c = s(collection)?;
                let J::Array(items) = r(records)? else {
                    return Err(Error::invalid("`records` must be an array of records"));
                };
                let mut outs = Vec::with_capacity(items.len());
                for item in items {
                    outs.push(store.insert(&c, item, None)?);
                }
                Ok(Out::Ws(outs))
            }
            Stage::Update {
                collection,
                filter,
                updates,
                ttl,
                ..
            } => {
                let c = s(collection)?;
                let body = json!({"filter": filter_body(scope, ws, filter)?});
                let matches = store.find(&c, &body)?;
                let patch = r(updates)?;
                let ttl = ttl.as_ref().map(&r).transpose()?;
                let mut outs = Vec::with_capacity(matches.len());
                for m in matches {
                    let id = record_id(&m)?;
                    outs.push(store.update(&c, &id, patch.clone(), ttl.clone())?);
                }
                Ok(Out::Ws(outs))
            }
            Stage::UpdateById {
                collection,
                record_id,
                updates,
                ttl,
                ..
            }
            | Stage::FindOneAndUpdate {
                collection,
                record_id,
                updates,
                ttl,
                ..
            } => {
                let ttl = ttl.as_ref().map(&r).transpose()?;
                Ok(Out::Ws(vec![store.update(
                    &s(collection)?,
                    &s(record_id)?,
                    r(updates)?,
                    ttl,
                )?]))
            }
            Stage::UpdateWithAction {
                collection,
                record_id,
                action,
                field,
                value,
                ..
            } => {
                let a = Action::parse(&s(action)?)?;
                let value = r(value)?;
                let value = (!value.is_null()).then_some(value);
                let f =
                    store.actions(&s(collection)?, &s(record_id)?, vec![(a, s(field)?, value)])?;
                Ok(Out::Ws(vec![f]))
            }
            Stage::Increment {
                collection,
                record_id,
                field,
                by,
                ..
            } => {
                let by = match by {
                    Some(b) => r(b)?,
                    None => json!(1),
                };
                let a = Action::parse("increment")?;
                let f = store.actions(
                    &s(collection)?,
                    &s(record_id)?,
                    vec![(a, s(field)?, Some(by))],
                )?;
                Ok(Out::Ws(vec![f]))
            }
            Stage::Push {
                collection,
                record_id,
                field,
                value,
                ..
            } => {
                let a = Action::parse("push")?;
                let f = store.actions(
                    &s(collection)?,
                    &s(record_id)?,
                    vec![(a, s(field)?, Some(r(value)?))],
                )?;
                Ok(Out::Ws(vec![f]))
            }
            Stage::Upsert {
                collection,
                key,
                value,
                record,
                ttl,
                ..
            } => {
                let c = s(collection)?;
                let body = json!({"filter": {"type": "Condition", "content":
                    {"field": s(key)?, "operator": "Eq", "value": r(value)?}}, "limit": 1});
                let existing = store.find(&c, &body)?;
                let ttl = ttl.as_ref().map(&r).transpose()?;
                let rec = r(record)?;
                Ok(Out::Ws(vec![match existing.first() {
                    Some(m) => store.update(&c, &record_id(m)?, rec, ttl)?,
                    None => store.insert(&c, rec, ttl)?,
                }]))
            }
            Stage::Delete {
                collection, filter, ..
            } => {
                let c = s(collection)?;
                let body = json!({"filter": filter_body(scope, ws, filter)?});
                for m in store.find(&c, &body)? {
                    store.delete(&c, &record_id(&m)?)?;
                }
                Ok(Out::Ws(Vec::new()))
            }
            Stage::DeleteById {
                collection,
                record_id,
                ..
            } => {
                store.delete(&s(collection)?, &s(record_id)?)?;
                Ok(Out::Ws(Vec::new()))
            }
            Stage::BatchDelete {
                collection,
                record_ids,
                ..
            } => {
                let c = s(collection)?;
                for id in record_ids {
                    store.delete(&c, &s(id)?)?;
                }
                Ok(Out::Ws(Vec::new()))
            }
            Stage::TextSearch {
                collection,
                query_text,
                fields,
                limit,
                fuzzy,
            } => {
                let mut body = json!({"query": text(&r(query_text)?)});
                if let Some(f) = fields {
                    body["fields"] = json!(f);
                }
                if let Some(l) = count(limit, "limit", scope, ws)? {
                    body["limit"] = l;
                }
                if let Some(f) = fuzzy {
                    body["fuzzy"] = json!(f);
                }
                search(store, &s(collection)?, &body)
            }
            Stage::VectorSearch {
                collection,
                query_vector,
                limit,
                threshold,
            } => {
                let mut body = json!({"vector": query_vector});
                if let Some(l) = limit {
                    body["limit"] = json!(l);
                }
                if let Some(t) = threshold {
                    body["min_score"] = json!(t);
                }
                search(store, &s(collection)?, &body)
            }
            Stage::HybridSearch {
                collection,
                query_text,
                query_vector,
                limit,
            } => {
                let mut body = json!({"query": s(query_text)?});
                if let Some(v) = query_vector {
                    body["vector"] = json!(v);
                }
                if let Some(l) = limit {
                    body["limit"] = json!(l);
                }
                search(store, &s(collection)?, &body)
            }
            Stage::KvGet { key } => {
                let k = text(&r(key)?).into_owned();
                let value = store
                    .engine
                    .kv_get(&k, now)
                    .map_or(J::Null, |e| e.value.to_serde());
                Ok(Out::Ws(vec![one("value", value)]))
            }
            Stage::KvSet { key, value, ttl } => {
                let k = text(&r(key)?).into_owned();
                let expires = match ttl {
                    Some(t) => parse_ttl(&r(t)?, now)?,
                    None => None,
                };
                let v = r(value)?;
                store
                    .engine
                    .kv_set(&k, Json::from(plain(&v).clone()), expires)?;
                Ok(Out::Same)
            }
            Stage::KvDelete { key } => {
                let k = text(&r(key)?).into_owned();
                store.engine.kv_delete(&k, now);
                Ok(Out::Same)
            }
            Stage::KvExists { key, output_field } => {
                let k = text(&r(key)?).into_owned();
                let exists = store.engine.kv_get(&k, now).is_some();
                out(output_field.as_deref().unwrap_or("exists"), J::Bool(exists))
            }
            Stage::KvQuery {
                pattern,
                include_expired,
            } => {
                let pattern = match pattern {
                    Some(p) => {
                        let p = text(&r(p)?).into_owned();
                        Some(
                            regex::RegexBuilder::new(&p)
                                .size_limit(1 << 20)
                                .build()
                                .map_err(|e| Error::invalid(format!("bad `pattern`: {e}")))?,
                        )
                    }
                    None => None,
                };
                let entries = store
                    .engine
                    .kv_find(pattern.as_ref(), *include_expired, None, now);
                Ok(Out::Ws(
                    entries
                        .map(|(k, e)| {
                            let mut d = one("key", J::String(k.to_string()));
                            d.insert("value".into(), e.value.to_serde());
                            d
                        })
                        .collect(),
                ))
            }
            Stage::UuidGenerate { output_field } => {
                let mut b = [0u8; 16];
                random(&mut b);
                out(output_field, J::String(crypto::uuid_v4(b)))
            }
            Stage::RandomToken {
                bytes,
                encoding,
                output_field,
            } => {
                if !(1..=1024).contains(bytes) {
                    return Err(Error::invalid("`bytes` must be between 1 and 1024"));
                }
                let mut b = vec![0u8; *bytes];
                random(&mut b);
                out(
                    output_field,
                    J::String(crypto::encode_token(&b, encoding.as_deref())?),
                )
            }
            Stage::Base64Encode {
                input,
                url_safe,
                output_field,
            } => out(
                output_field,
                J::String(crypto::base64_encode(&s(input)?, url_safe.unwrap_or(false))),
            ),
            Stage::Base64Decode {
                input,
                url_safe,
                output_field,
            } => out(
                output_field,
                crypto::base64_decode(&s(input)?, url_safe.unwrap_or(false)),
            ),
            Stage::HexEncode {
                input,
                output_field,
            } => out(output_field, J::String(crypto::hex(s(input)?.as_bytes()))),
            Stage::HexDecode {
                input,
                output_field,
            } => out(output_field, crypto::hex_decode(&s(input)?)),
            Stage::Slugify {
                input,
                output_field,
            } => out(output_field, J::String(crypto::slugify(&s(input)?))),
            Stage::HmacSign {
                input,
                secret,
                algorithm,
                output_field,
                encoding,
            } => out(
                output_field,
                J::String(crypto::hmac_sign(
                    &s(input)?,
                    &s(secret)?,
                    algorithm.as_deref(),
                    encoding.as_deref(),
                )?),
            ),
            Stage::HmacVerify {
                input,
                provided_mac,
                secret,
                algorithm,
                encoding,
                output_field,
            } => out(
                output_field,
                J::Bool(crypto::hmac_verify(
                    &s(input)?,
                    &s(provided_mac)?,
                    &s(secret)?,
                    algorithm.as_deref(),
                    encoding.as_deref(),
                )?),
            ),
            Stage::JwtSign {
                claims,
                secret,
                algorithm,
                expires_in_secs,
                output_field,
            } => {
                let mut c = Map::new();
                for (k, v) in claims {
                    c.insert(k.clone(), r(v)?);
                }
                out(
                    output_field,
                    J::String(crypto::jwt_sign(
                        &c,
                        &s(secret)?,
                        algorithm.as_deref(),
                        *expires_in_secs,
                        now.secs(),
                    )?),
                )
            }
            Stage::JwtVerify {
                token_field,
                secret,
                algorithm,
                output_field,
            } => {
                let token = field_text(scope, ws, token_field)?;
                out(
                    output_field,
                    crypto::jwt_verify(&token, &s(secret)?, algorithm.as_deref(), now.secs()),
                )
            }
            Stage::AesEncrypt {
                plaintext,
                key,
                key_encoding,
                output_field,
            } => {
                let mut nonce = [0u8; 12];
                random(&mut nonce);
                let sealed =
                    crypto::aes_encrypt(&s(plaintext)?, &s(key)?, key_encoding.as_deref(), nonce)?;
                out(output_field, sealed)
            }
            Stage::AesDecrypt {
                ciphertext_field,
                key,
                key_encoding,
                output_field,
            } => {
                let sealed = if ciphertext_field.contains("{{") {
                    r(&J::String(ciphertext_field.clone()))?
                } else {
                    scope.lookup(ciphertext_field, ws)?.unwrap_or(J::Null)
                };
                let plain = crypto::aes_decrypt(plain(&sealed), &s(key)?, key_encoding.as_deref())?;
                out(output_field, plain)
            }
            Stage::TotpGenerate {
                secret,
                digits,
                period,
                algorithm,
                output_field,
            } => {
                let secret = s(secret)?;
                let totp = crypto::Totp {
                    secret: &secret,
                    digits: *digits,
                    period: *period,
                    algorithm: algorithm.as_deref(),
                };
                out(output_field, J::String(totp.generate(now.secs())?))
            }
            Stage::TotpVerify {
                code,
                secret,
                digits,
                period,
                algorithm,
                skew,
                output_field,
            } => {
                let secret = s(secret)?;
                let totp = crypto::Totp {
                    secret: &secret,
                    digits: *digits,
                    period: *period,
                    algorithm: algorithm.as_deref(),
                };
                let ok = totp.verify(&s(code)?, skew.unwrap_or(1), now.secs())?;
                out(output_field, J::Bool(ok))
            }
            Stage::IdempotencyClaim {
                key,
                ttl_secs,
                output_field,
            } => {
                let k = s(key)?;
                let value = match store.engine.kv_get(&k, now) {
                    Some(e) => json!({"claimed": false, "key": k,
                        "response": e.value.to_serde().get("response").cloned().unwrap_or(J::Null)}),
                    None => {
                        let until = now.saturating_add(std::time::Duration::from_secs(*ttl_secs));
                        store.engine.kv_set(
                            &k,
                            Json::from(json!({"claimed_at": now.to_rfc3339_z()})),
                            Some(until),
                        )?;
                        json!({"claimed": true, "key": k})
                    }
                };
                out(output_field, value)
            }
            Stage::RateLimit {
                key,
                limit,
                window_secs,
                on_exceed,
                output_field,
            } => {
                if *window_secs == 0 {
                    return Err(Error::invalid("`window_secs` must be at least 1"));
                }
                let window = now.secs().div_euclid(*window_secs as i64);
                let k = format!("{}:{window}", s(key)?);
                let used = store
                    .engine
                    .kv_get(&k, now)
                    .and_then(|e| e.value.as_f64())
                    .unwrap_or(0.0) as u64;
                if used >= *limit {
                    if on_exceed.as_deref().unwrap_or("fail") == "skip" {
                        return out(
                            output_field,
                            json!({"allowed": false, "count": used, "limit": limit}),
                        );
                    }
                    return Err(Error::new(
                        ErrorKind::TooManyRequests,
                        format!(
                            "RateLimit: more than {limit} calls in {window_secs} s for this key"
                        ),
                    ));
                }
                let until = Timestamp::from_secs((window + 1) * *window_secs as i64);
                store
                    .engine
                    .kv_set(&k, Json::from(json!(used + 1)), Some(until))?;
                out(
                    output_field,
                    json!({"allowed": true, "count": used + 1, "limit": limit,
                           "remaining": limit - used - 1}),
                )
            }
            Stage::LockAcquire {
                key,
                ttl_secs,
                output_field,
            } => {
                let k = format!("lock:{}", s(key)?);
                if store.engine.kv_get(&k, now).is_some() {
                    return out(output_field, json!({"acquired": false}));
                }
                let mut b = [0u8; 16];
                random(&mut b);
                let token = crypto::hex(&b);
                let until = now.saturating_add(std::time::Duration::from_secs(*ttl_secs));
                store
                    .engine
                    .kv_set(&k, Json::from(json!(token)), Some(until))?;
                out(output_field, json!({"acquired": true, "token": token}))
            }
            Stage::LockRelease {
                key,
                token,
                output_field,
            } => {
                let k = format!("lock:{}", s(key)?);
                let token = s(token)?;
                let held = store
                    .engine
                    .kv_get(&k, now)
                    .is_some_and(|e| e.value.as_str() == Some(token.as_str()));
                if held {
                    store.engine.kv_delete(&k, now);
                }
                out(output_field, json!({"released": held}))
            }
            _ => Ok(Out::NotMine),
        }
    })() {
        Ok(Out::NotMine) => None,
        other => Some(other),
    }
}

/// The text of a field named by `name`: a placeholder, or a field of the
/// first record / a scope value.
fn field_text(scope: &Scope, ws: &[Doc], name: &str) -> Result<String> {
    if name.contains("{{") {
        return scope.string(name, ws).map(|c| c.into_owned());
    }
    Ok(scope
        .lookup(name, ws)?
        .map(|v| text(&v).into_owned())
        .unwrap_or_default())
}

fn one(key: &str, value: J) -> Doc {
    let mut d = Map::new();
    d.insert(key.to_string(), value);
    d
}

fn record_id(d: &Doc) -> Result<String> {
    d.get("id")
        .map(|v| text(v).into_owned())
        .ok_or_else(|| Error::internal("a stored record has no id"))
}

fn search(store: &mut Store<'_>, collection: &str, body: &J) -> Result<Out> {
    let (req, filter, _) = crate::dialect::rest::search::parse(body)?;
    let (hits, _) = store.engine.search(collection, &req, &filter, store.now)?;
    Ok(Out::Ws(
        hits.into_iter()
            .map(|h| {
                let mut d = doc(h.found);
                d.insert("score".into(), json!(h.score));
                d
            })
            .collect(),
    ))
}

/// `SWR`'s audit record: what was asked, and whether the cache answered.
pub fn audit_swr(
    engine: &mut Engine,
    collection: &str,
    key: &str,
    url: &str,
    hit: bool,
    now: Timestamp,
) -> Result<()> {
    engine.insert(
        collection,
        json!({"cache_key": key, "url": url, "cache_hit": hit, "at": now.to_rfc3339_z()}),
        now,
    )?;
    Ok(())
}
