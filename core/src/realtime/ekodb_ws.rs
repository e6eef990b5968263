//! The ekoDB WebSocket protocol on `/api/ws` (spec B): JSON text or, after a
//! `Hello`/`Welcome` negotiation, MessagePack binary messages; requests carry a
//! `type`, a `payload` and usually a `messageId` that the reply echoes. CRUD
//! messages run through the same handlers as the REST routes, so `data` is
//! exactly what REST would return.

use super::hub::{Filter, Proto};
use crate::api::router::Route;
use crate::api::{codec, Ctx};
use crate::error::{Error, ErrorKind};
use crate::ids::ConnId;
use crate::server::Server;
use crate::time::Timestamp;
use crate::wire::http::{Method, Request};
use crate::wire::ws::Incoming;
use bytes::Bytes;
use serde_json::{json, Value as J};

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub struct Session {
    /// MessagePack was negotiated: replies go out as binary frames.
    pub binary: bool,
    pub hello_seen: bool,
}

/// What a message asks the connection to do besides replying.
#[derive(Debug, Clone, PartialEq)]
pub enum Followup {
    None,
    /// Replay the log for this subscription from a position, then go live.
    Resume {
        collection: String,
        filter: Option<Filter>,
        from: super::events::EventPos,
    },
}

/// A reply message (already encoded) and the LSN it waits for.
#[derive(Debug)]
pub struct Reply {
    pub wait_for: crate::ids::Lsn,
    pub binary: bool,
    pub payload: Bytes,
}

fn decode(msg: &Incoming) -> Result<J, String> {
    match msg {
        Incoming::Text(t) => {
            serde_json::from_slice(t).map_err(|e| format!("invalid JSON message: {e}"))
        }
        Incoming::Binary(b) => codec::decode(b, codec::Format::MsgPack)
            .map_err(|e| e.message)
            .and_then(|v| {
                if v.is_object() {
                    Ok(v)
                } else {
                    Err("a MessagePack message must be a map".to_string())
                }
            }),
    }
}

fn message_id(v: &J) -> Option<String> {
    let pick = |x: Option<&J>| x.and_then(J::as_str).map(str::to_string);
    pick(v.get("messageId"))
        .or_else(|| pick(v.get("message_id")))
        .or_else(|| pick(v.get("payload").and_then(|p| p.get("messageId"))))
        .or_else(|| pick(v.get("payload").and_then(|p| p.get("message_id"))))
}

fn encode(session: &Session, value: &J) -> Bytes {
    if session.binary {
        Bytes::from(rmp_serde::to_vec_named(value).unwrap_or_default())
    } else {
        Bytes::from(serde_json::to_vec(value).unwrap_or_default())
    }
}

fn success(session: &Session, id: Option<&str>, data_json: Bytes) -> Bytes {
    if session.binary {
        let data: J = serde_json::from_slice(&data_json).unwrap_or(J::Null);
        let mut payload = json!({ "data": data });
        let mut msg = json!({"type": "Success"});
        if let Some(id) = id {
            payload["message_id"] = J::String(id.to_string());
            msg["messageId"] = J::String(id.to_string());
        }
        msg["payload"] = payload;
        return encode(session, &msg);
    }
    // JSON: splice the handler's bytes in without parsing them again.
    let mut out = Vec::with_capacity(data_json.len() + 96);
    out.extend_from_slice(br#"{"type":"Success","#);
    if let Some(id) = id {
        out.extend_from_slice(br#""messageId":"#);
        out.extend(serde_json::to_vec(id).unwrap_or_default());
        out.push(b',');
    }
    out.extend_from_slice(br#""payload":{"data":"#);
    out.extend_from_slice(&data_json);
    if let Some(id) = id {
        out.extend_from_slice(br#","message_id":"#);
        out.extend(serde_json::to_vec(id).unwrap_or_default());
    }
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

fn error(session: &Session, id: Option<&str>, code: u16, message: &str) -> Bytes {
    let mut msg = json!({"type": "Error", "code": code, "message": message});
    if let Some(id) = id {
        msg["messageId"] = J::String(id.to_string());
    }
    encode(session, &msg)
}

/// Handles one message. Returns the replies to send (in order) and a follow-up.
pub fn handle(
    server: &mut Server,
    conn: ConnId,
    session: &mut Session,
    msg: &Incoming,
    now: Timestamp,
) -> (Vec<Reply>, Followup) {
    let value = match decode(msg) {
        Ok(v) => v,
        // Unparseable and no id to answer to: an id-less Error would be routed to
        // an unrelated pending request by the clients, so stay silent (spec B3.6).
        Err(_) => return (Vec::new(), Followup::None),
    };
    let id = message_id(&value);
    let id = id.as_deref();
    let Some(kind) = value.get("type").and_then(J::as_str) else {
        let replies = id
            .map(|id| {
                reply_now(
                    session,
                    error(session, Some(id), 400, "a message needs a string `type`"),
                )
            })
            .into_iter()
            .collect();
        return (replies, Followup::None);
    };
    let payload = value
        .get("payload")
        .cloned()
        .unwrap_or(J::Object(Default::default()));
    let text = |k: &str| payload.get(k).and_then(J::as_str).map(str::to_string);
    let mut followup = Followup::None;
    let result: Result<Bytes, Error> = match kind {
        "Hello" => {
            let formats: Vec<&str> = payload
                .get("formats")
                .and_then(J::as_array)
                .map(|a| a.iter().filter_map(J::as_str).collect())
                .unwrap_or_default();
            let binary = formats.contains(&"msgpack");
            session.hello_seen = true;
            server.hub.want_schema_events(conn);
            // The Welcome itself is text, whatever was negotiated (spec B4).
            let welcome = json!({"type": "Welcome", "payload": {"format": if binary { "msgpack" } else { "json" }}});
            session.binary = binary;
            server.hub.set_proto(
                conn,
                if binary {
                    Proto::WsMsgPack
                } else {
                    Proto::WsJson
                },
            );
            let bytes = Bytes::from(serde_json::to_vec(&welcome).unwrap_or_default());
            return (
                vec![Reply {
                    wait_for: crate::ids::Lsn::ZERO,
                    binary: false,
                    payload: bytes,
                }],
                Followup::None,
            );
        }
        "Subscribe" => match text("collection") {
            None => Err(Error::invalid("Subscribe needs a `collection`")),
            Some(c) => match crate::engine::validate_name("collection", &c) {
                Err(e) => Err(e),
                Ok(()) => {
                    let filter = match (text("filter_field"), payload.get("filter_value")) {
                        (Some(field), Some(v)) if !v.is_null() => Some(Filter {
                            field,
                            value: match v {
                                J::String(s) => s.clone(),
                                other => other.to_string(),
                            },
                        }),
                        _ => None,
                    };
                    let resume = ["resume_from", "last_event_id", "event_id"]
                        .iter()
                        .find_map(|k| match payload.get(*k) {
                            Some(J::String(s)) => Some(s.clone()),
                            Some(J::Number(n)) => Some(n.to_string()),
                            _ => None,
                        });
                    match resume.as_deref().map(super::events::EventPos::parse) {
                        Some(None) => Err(Error::invalid(
                            "`resume_from` must be an event id like 42 or 42:1",
                        )),
                        parsed => {
                            server.hub.subscribe(conn, &c, filter.clone());
                            if let Some(Some(from)) = parsed {
                                followup = Followup::Resume {
                                    collection: c.clone(),
                                    filter,
                                    from,
                                };
                            }
                            let sub = format!("sub_{}", server.engine.token(16));
                            Ok(Bytes::from(
                                serde_json::to_vec(
                                    &json!({"subscription_id": sub, "collection": c}),
                                )
                                .unwrap_or_default(),
                            ))
                        }
                    }
                }
            },
        },
        "Unsubscribe" => match text("collection") {
            None => Err(Error::invalid("Unsubscribe needs a `collection`")),
            Some(c) => {
                let found = server.hub.unsubscribe(conn, &c);
                Ok(Bytes::from(
                    serde_json::to_vec(
                        &json!({"collection": c, "found": found, "unsubscribed": true}),
                    )
                    .unwrap_or_default(),
                ))
            }
        },
        "ChatSend" => {
            // Clients wait for a terminal stream frame, never a Success/Error.
            let chat_id = text("chat_id").unwrap_or_default();
            let frame = json!({"type": "ChatStreamError", "payload": {"chat_id": chat_id,
                "error": "chat is not implemented in this version of Tidepool"}});
            return (
                vec![reply_now(session, encode(session, &frame))],
                Followup::None,
            );
        }
        "ClientToolResult" => return (Vec::new(), Followup::None),
        "CancelChat" if id.is_none() => return (Vec::new(), Followup::None),
        "RegisterClientTools" | "CancelChat" | "RawComplete" => Err(Error::not_implemented("chat")),
        other => match crud(other, &payload) {
            Some(Ok((Route::Search(c), req))) => {
                run(server, Route::Search(c), &req, now).map(|body| search_results(&body))
            }
            Some(Ok((route, req))) => run(server, route, &req, now),
            Some(Err(e)) => Err(e),
            None if id.is_none() => return (Vec::new(), Followup::None),
            None => Err(Error::invalid(format!("unknown message type `{other}`"))),
        },
    };
    let bytes = match result {
        Ok(data) => success(session, id, data),
        Err(e) => error(session, id, e.status(), &e.message),
    };
    let wait_for = server.finish_operation(now);
    (
        vec![Reply {
            wait_for,
            binary: session.binary,
            payload: bytes,
        }],
        followup,
    )
}

fn reply_now(session: &Session, payload: Bytes) -> Reply {
    Reply {
        wait_for: crate::ids::Lsn::ZERO,
        binary: session.binary,
        payload,
    }
}

fn run(server: &mut Server, route: Route, req: &Request, now: Timestamp) -> Result<Bytes, Error> {
    let ctx = Ctx::new(req, now)?;
    let response = server.dispatch(&ctx, route)?;
    Ok(response.body)
}

/// `TextSearch` replies with the bare `results` array (spec B5).
fn search_results(rest_body: &[u8]) -> Bytes {
    let v: J = serde_json::from_slice(rest_body).unwrap_or(J::Null);
    let results = v.get("results").cloned().unwrap_or(J::Array(Vec::new()));
    Bytes::from(serde_json::to_vec(&results).unwrap_or_default())
}

fn body(v: J) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Maps a CRUD message to the equivalent REST route and request (JSON in and out).
fn crud(kind: &str, p: &J) -> Option<Result<(Route, Request), Error>> {
    let need = |k: &str| -> Result<String, Error> {
        p.get(k)
            .and_then(J::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::invalid(format!("{kind} needs a string `{k}`")))
    };
    let get = |k: &str| p.get(k).cloned().unwrap_or(J::Null);
    let req = |method: Method, body: Vec<u8>| {
        Request::new(method, "/api/ws", &[("accept", "application/json")], &body)
    };
    let build = || -> Result<(Route, Request), Error> {
        Ok(match kind {
            "FindAll" => (
                Route::Find(need("collection")?),
                req(Method::Post, b"{}".to_vec()),
            ),
            "FindById" => (
                Route::FindById(need("collection")?, need("id")?),
                req(Method::Get, Vec::new()),
            ),
            "Query" => {
                let mut q = serde_json::Map::new();
                for k in [
                    "filter",
                    "sort",
                    "limit",
                    "skip",
                    "select_fields",
                    "exclude_fields",
                    "join",
                ] {
                    if let Some(v) = p.get(k) {
                        q.insert(k.into(), v.clone());
                    }
                }
                (
                    Route::Find(need("collection")?),
                    req(Method::Post, body(J::Object(q))),
                )
            }
            "Insert" => (
                Route::Insert(need("collection")?),
                req(Method::Post, body(get("record"))),
            ),
            "Update" => (
                Route::Update(need("collection")?, need("id")?),
                req(Method::Put, body(get("record"))),
            ),
            "Delete" => (
                Route::Delete(need("collection")?, need("id")?),
                req(Method::Delete, Vec::new()),
            ),
            "BatchInsert" => {
                let records = get("records");
                let items: Vec<J> = records
                    .as_array()
                    .ok_or_else(|| Error::invalid("BatchInsert needs `records`: an array"))?
                    .iter()
                    .map(|r| json!({ "data": r }))
                    .collect();
                (
                    Route::BatchInsert(need("collection")?),
                    req(Method::Post, body(json!({ "inserts": items }))),
                )
            }
            "BatchUpdate" => (
                Route::BatchUpdate(need("collection")?),
                req(Method::Put, body(json!({ "updates": get("updates") }))),
            ),
            "BatchDelete" => (
                Route::BatchDelete(need("collection")?),
                req(Method::Delete, body(json!({ "ids": get("ids") }))),
            ),
            "DistinctValues" => (
                Route::Distinct(need("collection")?, need("field")?),
                req(Method::Post, body(json!({ "filter": get("filter") }))),
            ),
            "UpdateWithAction" => (
                Route::UpdateAction(need("collection")?, need("id")?, need("action")?),
                req(
                    Method::Put,
                    body(json!({ "field": need("field")?, "value": get("value") })),
                ),
            ),
            "TextSearch" => {
                let mut q = json!({ "query": get("query") });
                if let Some(opts) = p.get("options").and_then(J::as_object) {
                    for (k, v) in opts {
                        q[k] = v.clone();
                    }
                }
                (
                    Route::Search(need("collection")?),
                    req(Method::Post, body(q)),
                )
            }
            "CreateCollection" => {
                let schema = get("schema");
                let empty = match &schema {
                    J::Null => true,
                    J::Object(o) => o
                        .get("fields")
                        .and_then(J::as_object)
                        .is_none_or(|f| f.is_empty()),
                    _ => false,
                };
                if empty {
                    (
                        Route::EnsureCollection(need("name")?),
                        req(Method::Post, Vec::new()),
                    )
                } else {
                    (
                        Route::CreateCollection(need("name")?),
                        req(Method::Post, body(schema)),
                    )
                }
            }
            "GetCollections" => (Route::CollectionNames, req(Method::Get, Vec::new())),
            "DeleteCollection" => (
                Route::DropCollection(need("name")?),
                req(Method::Delete, Vec::new()),
            ),
            "KvSet" => (
                Route::KvSet(need("key")?),
                req(
                    Method::Post,
                    body(json!({ "value": get("value"), "ttl": get("ttl") })),
                ),
            ),
            "KvGet" => (Route::KvGet(need("key")?), req(Method::Get, Vec::new())),
            "KvDelete" => (
                Route::KvDelete(need("key")?),
                req(Method::Delete, Vec::new()),
            ),
            _ => return Err(Error::new(ErrorKind::NotFound, "")),
        })
    };
    match build() {
        Err(e) if e.kind == ErrorKind::NotFound && e.message.is_empty() => None,
        other => Some(other),
    }
}
