//! The ekoDB WebSocket protocol on `/api/ws` (spec B): typed client messages
//! (`messages::ClientMessage`) decoded from JSON text or, after a `Hello`
//! negotiated it, MessagePack binary; data calls answered by the same handlers
//! as the REST routes (so `data` is exactly what REST returns), encoded once in
//! the session's format; change events as `MutationNotification` and
//! `SchemaChanged`.

pub mod messages;

use super::ekodb_events::{Payload, ResetPayload, OVERFLOW_MESSAGE};
use super::rest::{self, collections, kv, records, search, Ctx};
use super::{EventCodec, Notice};
pub use super::{Followup, Outgoing};
use crate::auth::grants::Access;
use crate::chat::turn::Listener;
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ConnId, Lsn};
use crate::realtime::events::{Change, Event};
use crate::server::Server;
use crate::time::Timestamp;
use crate::wire::format::{self, Format};
use crate::wire::http::Response;
use crate::wire::ws::Incoming;
use bytes::Bytes;
use messages::{ClientMessage, DataCall, DataKind, Refusal, ServerMessage};
use serde::Serialize;
use serde_json::json;

/// Per-connection protocol state.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// JSON until a `Hello` negotiates MessagePack.
    pub format: Format,
    /// What the key the socket was opened with may do: every message is
    /// checked against it as the REST route of the same call would be.
    pub access: Access,
    /// The key's id, whose request budget each message spends.
    pub key_id: Option<String>,
}

impl Session {
    pub fn new(access: Access, key_id: Option<String>) -> Session {
        Session {
            format: Format::Json,
            access,
            key_id,
        }
    }

    /// The codec the hub encodes this connection's events with.
    pub fn codec(&self) -> EventCodec {
        EventCodec::EkodbWs(self.format)
    }
}

/// Handles one message: the replies to send, in order, and a follow-up.
pub fn handle(
    server: &mut Server,
    conn: ConnId,
    session: &mut Session,
    msg: &Incoming,
    now: Timestamp,
) -> (Vec<Outgoing>, Followup) {
    let envelope = match messages::decode(msg) {
        Ok(e) => e,
        Err(Refusal::Undecodable) => return (Vec::new(), Followup::None),
        Err(Refusal::Invalid { id, error }) => {
            let reply = error_reply(session, id.as_deref(), &error);
            return (vec![reply], Followup::None);
        }
    };
    let id = envelope.id.as_deref();
    // The key as it is now: a grant changed since the socket opened applies
    // to the next message, and a revoked key's socket is closed.
    if let Some(key) = session.key_id.clone() {
        match server.key_access(&key, now) {
            Some(access) => session.access = access,
            None => {
                let e = Error::new(ErrorKind::Unauthorized, "this API key was revoked");
                let close = Followup::Close {
                    code: 1008,
                    reason: "key revoked",
                };
                return (vec![error_reply(session, id, &e)], close);
            }
        }
    }
    let ip = server.peer_of(conn).ip;
    let allowed = permit(session, &envelope.message)
        .and_then(|()| server.take_rate(session.key_id.as_deref(), ip, now));
    if let Err(e) = allowed {
        return (vec![error_reply(session, id, &e)], Followup::None);
    }
    let mut followup = Followup::None;
    let result: Result<Bytes> = match envelope.message {
        ClientMessage::Hello { msgpack } => {
            session.format = if msgpack {
                Format::MsgPack
            } else {
                Format::Json
            };
            server.want_schema_events(conn);
            server.set_stream_codec(conn, session.codec());
            let welcome = ServerMessage::Welcome { msgpack };
            return (
                vec![outgoing(Lsn::ZERO, welcome.encode(session.format))],
                Followup::None,
            );
        }
        ClientMessage::Subscribe {
            collection,
            filter,
            resume,
        } => {
            server.subscribe(conn, &collection, filter.clone());
            if let Some(from) = resume {
                followup = Followup::Resume {
                    collection: collection.clone(),
                    filter,
                    from,
                };
            }
            let sub = format!("sub_{}", server.new_token(16));
            format::encode(
                session.format,
                &json!({"subscription_id": sub, "collection": collection}),
            )
        }
        ClientMessage::Unsubscribe { collection } => {
            let found = server.unsubscribe(conn, &collection);
            format::encode(
                session.format,
                &json!({"collection": collection, "found": found, "unsubscribed": true}),
            )
        }
        ClientMessage::ChatSend { chat_id, payload } => {
            return (
                chat_send(server, conn, session, &chat_id, &payload, now),
                Followup::None,
            );
        }
        ClientMessage::ClientToolResult {
            chat_id,
            call_id,
            success,
            value,
        } => {
            // Never answered (B8): an unknown call is ignored.
            let _ = server.chat_tool_result(&chat_id, &call_id, Some((success, value)), now);
            let wait_for = server.finish_operation(now);
            let _ = wait_for;
            return (Vec::new(), Followup::None);
        }
        ClientMessage::CancelChat { chat_id } => {
            let cancelled = server.chat_cancel(&chat_id, now);
            if let Some(id) = id {
                // Behind the stream's terminal frame, which went to the
                // outbox: the ack goes the same way, so it comes after.
                let ack = reply(
                    session.format,
                    Some(id),
                    Ok(json!({ "cancelled": cancelled })),
                );
                let wait_for = server.finish_operation(now);
                server.queue_for_stream(conn, wait_for, ack);
            }
            return (Vec::new(), Followup::None);
        }
        ClientMessage::RegisterClientTools { chat_id, tools } => {
            rest::chat::parse_tools(Some(&tools))
                .and_then(|tools| server.register_client_tools(&chat_id, tools))
                .and_then(|count| {
                    format::encode(
                        session.format,
                        &json!({"status": "tools_registered", "count": count}),
                    )
                })
        }
        ClientMessage::ChatResume {
            chat_id,
            message_id,
            after,
        } => {
            let attached = server.chat_attach(conn, &chat_id, message_id.as_deref(), after);
            let replayed = match (attached, &message_id) {
                (true, _) => Ok(()),
                (false, Some(mid)) => server.chat_replay_stored(conn, &chat_id, mid, now),
                (false, None) => Err(Error::not_found(format!(
                    "no answer of chat {chat_id} to follow"
                ))),
            };
            return match replayed {
                Ok(()) => (Vec::new(), Followup::None),
                Err(error) => {
                    let frame = ServerMessage::ChatStreamError {
                        chat_id: &chat_id,
                        error: &error,
                    };
                    (
                        vec![outgoing(Lsn::ZERO, frame.encode(session.format))],
                        Followup::None,
                    )
                }
            };
        }
        ClientMessage::RawComplete { body } => {
            let listener = Listener::WsReply {
                conn,
                id: envelope.id.clone(),
                format: session.format,
            };
            match rest::chat::parse_raw(&body)
                .and_then(|req| server.raw_complete(req, Some(listener), now))
            {
                // The reply comes when the answer is complete.
                Ok(_) => return (Vec::new(), Followup::None),
                Err(e) => Err(e),
            }
        }
        ClientMessage::Data(call) => match data_call(server, conn, session, call, id, now) {
            // A long read runs outside the lock; its reply comes when done.
            Ok(None) => return (Vec::new(), Followup::None),
            Ok(Some(data)) => Ok(data),
            Err(e) => Err(e),
        },
        ClientMessage::Unknown(_) if id.is_none() => return (Vec::new(), Followup::None),
        ClientMessage::Unknown(other) => {
            Err(Error::invalid(format!("unknown message type `{other}`")))
        }
    };
    let reply = encode_result(session.format, id, &result);
    let wait_for = server.finish_operation(now);
    (vec![outgoing(wait_for, reply)], followup)
}

/// `ChatSend`: starts the answer and follows it on this connection. Every
/// outcome is chat frames ending in one terminal frame, never a reply.
fn chat_send(
    server: &mut Server,
    conn: ConnId,
    session: &Session,
    chat_id: &str,
    payload: &serde_json::Value,
    now: Timestamp,
) -> Vec<Outgoing> {
    let started = rest::chat::parse_send(payload, true)
        .and_then(|req| server.chat_send(chat_id, req, None, now));
    match started {
        Ok(s) => {
            server.chat_attach(conn, &s.chat_key, Some(&s.message_id), None);
            Vec::new()
        }
        Err(error) => {
            let wait_for = server.finish_operation(now);
            let frame = ServerMessage::ChatStreamError {
                chat_id,
                error: &error,
            };
            vec![outgoing(wait_for, frame.encode(session.format))]
        }
    }
}

/// A reply that comes later (a WebSocket `RawComplete`): `Success` with the
/// data, or `Error`.
pub fn reply(format: Format, id: Option<&str>, result: Result<serde_json::Value>) -> Bytes {
    let encoded = result.and_then(|data| {
        let bytes = format::encode(format, &data)?;
        Ok((
            format == Format::MsgPack,
            messages::success(format, id, &bytes),
        ))
    });
    let encoded = encoded.or_else(|e| {
        ServerMessage::Error {
            id,
            code: e.status(),
            message: &e.message,
        }
        .encode(format)
    });
    outgoing(Lsn::ZERO, encoded).payload
}

fn outgoing(wait_for: Lsn, encoded: Result<(bool, Bytes)>) -> Outgoing {
    match encoded {
        Ok((binary, payload)) => Outgoing {
            wait_for,
            binary,
            payload,
        },
        // Serialising our own messages does not fail; should it, the client
        // still gets an answer rather than silence.
        Err(e) => Outgoing {
            wait_for,
            binary: false,
            payload: Bytes::from(
                json!({"type": "Error", "code": 500, "message": e.message}).to_string(),
            ),
        },
    }
}

fn error_reply(session: &Session, id: Option<&str>, error: &Error) -> Outgoing {
    let msg = ServerMessage::Error {
        id,
        code: error.status(),
        message: &error.message,
    };
    outgoing(Lsn::ZERO, msg.encode(session.format))
}

/// The route table's check for a message: the same scope as the REST route
/// of the same call (`rest::permit`). Chat needs an admin key, as over REST;
/// a subscription delivers whole records, so it needs a grant without field
/// restrictions.
fn permit(session: &Session, msg: &ClientMessage) -> Result<()> {
    use crate::auth::grants::Action;
    use rest::routes::Scope;
    let access = &session.access;
    match msg {
        ClientMessage::Hello { .. } | ClientMessage::Unsubscribe { .. } => Ok(()),
        ClientMessage::Unknown(_) => Ok(()),
        ClientMessage::Subscribe { collection, .. } => {
            access.collection(collection, Action::Read)?;
            rest::access::check_whole_records(access, collection)
        }
        ClientMessage::Data(call) => {
            let scope = match call.kind {
                DataKind::GetCollections => Scope::AnyKey,
                kind if kind.writes() => Scope::Write,
                _ => Scope::Read,
            };
            let args: Vec<(&str, &str)> = call.args.iter().map(|(n, v)| (*n, v.as_str())).collect();
            rest::permit_args(scope, access, &args)
        }
        _ => access.require_admin("chat"),
    }
}

/// Runs a data call through the REST handler of the same name, answering in
/// the session's format. A find or distinct outside a transaction runs on a
/// snapshot outside the lock (as over REST): `None`, its reply is queued for
/// the socket when done.
fn data_call(
    server: &mut Server,
    conn: ConnId,
    session: &Session,
    call: DataCall,
    id: Option<&str>,
    now: Timestamp,
) -> Result<Option<Bytes>> {
    use DataKind as D;
    if call.kind.writes() {
        server.check_writable()?;
    }
    let kind = call.kind;
    let mut ctx = Ctx::message(call.body, session.format, now);
    ctx.access = session.access.clone();
    ctx = call
        .args
        .into_iter()
        .fold(ctx, |ctx, (name, value)| ctx.with_arg(name, value));
    ctx.clock = server.clock();
    if ctx.transaction().is_none() {
        let work = match kind {
            D::FindAll | D::Query => Some(records::find_work(server, &ctx, ctx.arg("collection"))),
            D::Distinct => Some(records::distinct_work(
                server,
                &ctx,
                ctx.arg("collection"),
                ctx.arg("field"),
            )),
            _ => None,
        };
        if let Some(work) = work {
            let (work, format, id) = (work?, session.format, id.map(str::to_string));
            server.defer_message(conn, move |expired| {
                let result = work(expired).map(|r| r.body);
                message_reply(format, id.as_deref(), result)
            })?;
            return Ok(None);
        }
    }
    let response = handler(kind)(server.engine_mut(), &ctx)?;
    Ok(Some(response.body))
}

/// A call's `Success` (its data already encoded) or `Error` message.
fn encode_result(
    format: Format,
    id: Option<&str>,
    result: &Result<Bytes>,
) -> Result<(bool, Bytes)> {
    match result {
        Ok(data) => ServerMessage::Success { id, data }.encode(format),
        Err(e) => ServerMessage::Error {
            id,
            code: e.status(),
            message: &e.message,
        }
        .encode(format),
    }
}

/// `encode_result` as the bytes of a message queued for later.
fn message_reply(format: Format, id: Option<&str>, result: Result<Bytes>) -> Bytes {
    outgoing(Lsn::ZERO, encode_result(format, id, &result)).payload
}

type DataHandler = fn(&mut Engine, &Ctx<'_>) -> Result<Response>;

/// The REST handler behind each data message.
fn handler(kind: DataKind) -> DataHandler {
    use DataKind as D;
    match kind {
        D::FindAll | D::Query => |e, c| records::find(e, c, c.arg("collection")),
        D::FindById => |e, c| records::find_by_id(e, c, c.arg("collection"), c.arg("id")),
        D::Insert => |e, c| records::insert(e, c, c.arg("collection")),
        D::Update => |e, c| records::update(e, c, c.arg("collection"), c.arg("id")),
        D::Delete => |e, c| records::delete(e, c, c.arg("collection"), c.arg("id")),
        D::BatchInsert => |e, c| records::batch_insert(e, c, c.arg("collection")),
        D::BatchUpdate => |e, c| records::batch_update(e, c, c.arg("collection")),
        D::BatchDelete => |e, c| records::batch_delete(e, c, c.arg("collection")),
        D::Distinct => |e, c| records::distinct(e, c, c.arg("collection"), c.arg("field")),
        D::UpdateWithAction => {
            |e, c| records::action(e, c, c.arg("collection"), c.arg("id"), c.arg("action"))
        }
        D::TextSearch => |e, c| search::results(e, c, c.arg("collection")),
        D::CreateCollection => |e, c| collections::create(e, c, c.arg("collection")),
        D::EnsureCollection => |e, c| collections::ensure(e, c, c.arg("collection")),
        D::GetCollections => collections::names,
        D::DeleteCollection => |e, c| collections::drop(e, c, c.arg("collection")),
        D::KvSet => |e, c| kv::set(e, c, c.arg("key")),
        D::KvGet => |e, c| kv::get(e, c, c.arg("key")),
        D::KvDelete => |e, c| kv::delete(e, c, c.arg("key")),
    }
}

/// `{"type": ..., "payload": ...}` in a format. Our payloads always serialise;
/// should one not, an `Error` message goes out instead of nothing.
fn typed<T: Serialize>(format: Format, kind: &str, payload: &T) -> Bytes {
    #[derive(Serialize)]
    struct Typed<'a, T> {
        r#type: &'a str,
        payload: &'a T,
    }
    format::encode(
        format,
        &Typed {
            r#type: kind,
            payload,
        },
    )
    .unwrap_or_else(|e| {
        Bytes::from(json!({"type": "Error", "code": 500, "message": e.message}).to_string())
    })
}

/// A change event as a `MutationNotification` or `SchemaChanged` message.
pub fn encode_event(event: &Event<'_>, format: Format) -> Option<Bytes> {
    let kind = match event.change {
        Change::Mutation { .. } => "MutationNotification",
        Change::SchemaChanged { .. } => "SchemaChanged",
    };
    Some(typed(format, kind, &Payload::of(event)))
}

pub fn encode_notice(notice: &Notice<'_>, format: Format) -> Bytes {
    match ResetPayload::of(notice) {
        Some(reset) => typed(format, "SubscriptionReset", &reset),
        None => format::encode(
            format,
            &json!({"type": "Error", "code": 1013, "message": OVERFLOW_MESSAGE}),
        )
        .unwrap_or_else(|_| Bytes::from_static(br#"{"type":"Error","code":1013}"#)),
    }
}
