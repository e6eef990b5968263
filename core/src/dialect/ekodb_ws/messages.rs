//! The ekoDB WebSocket messages, typed (spec B3-B8). A client message is JSON
//! text or, after `Hello` negotiated it, MessagePack binary: a map with a
//! `type`, a `payload`, and usually a `messageId` the reply echoes (also
//! accepted as `message_id`, at the top level or inside the payload).

use crate::error::{Error, Result};
use crate::realtime::events::{EventPos, Filter};
use crate::wire::format::{self, Format};
use crate::wire::ws::Incoming;
use bytes::Bytes;
use serde_json::{json, Map, Value as J};

/// A decoded client message and the id to answer it under.
#[derive(Debug)]
pub struct Envelope {
    pub id: Option<String>,
    pub message: ClientMessage,
}

#[derive(Debug)]
pub enum ClientMessage {
    /// Format negotiation; the client also wants schema events from now on.
    Hello {
        msgpack: bool,
    },
    Subscribe {
        collection: String,
        filter: Option<Filter>,
        resume: Option<EventPos>,
    },
    Unsubscribe {
        collection: String,
    },
    /// A data-plane call, answered by the REST handler of the same name.
    Data(DataCall),
    /// A message to answer in a chat; the answer streams back as chat frames.
    ChatSend {
        chat_id: String,
        payload: J,
    },
    ClientToolResult {
        chat_id: String,
        call_id: String,
        success: bool,
        value: J,
    },
    CancelChat {
        chat_id: String,
    },
    RegisterClientTools {
        chat_id: String,
        tools: J,
    },
    /// Follow an answer again (Tidepool's extension): its events after a
    /// position, then the rest live.
    ChatResume {
        chat_id: String,
        message_id: Option<String>,
        after: Option<u32>,
    },
    /// A stateless completion (Rust sends its fields at the top level).
    RawComplete {
        body: J,
    },
    /// A type this server does not know.
    Unknown(String),
}

/// Which data-plane call a message makes (spec B5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    FindAll,
    FindById,
    Query,
    Insert,
    Update,
    Delete,
    BatchInsert,
    BatchUpdate,
    BatchDelete,
    Distinct,
    UpdateWithAction,
    TextSearch,
    /// `CreateCollection` with a schema.
    CreateCollection,
    /// `CreateCollection` without one: make sure it exists.
    EnsureCollection,
    GetCollections,
    DeleteCollection,
    KvSet,
    KvGet,
    KvDelete,
}

impl DataKind {
    /// Whether the call can change data (refused while storage is read-only).
    pub fn writes(self) -> bool {
        use DataKind::*;
        matches!(
            self,
            Insert
                | Update
                | Delete
                | BatchInsert
                | BatchUpdate
                | BatchDelete
                | UpdateWithAction
                | CreateCollection
                | EnsureCollection
                | DeleteCollection
                | KvSet
                | KvDelete
        )
    }
}

/// A data-plane call: the handler, its path variables and its body.
#[derive(Debug)]
pub struct DataCall {
    pub kind: DataKind,
    pub args: Vec<(&'static str, String)>,
    pub body: J,
}

/// Why a message gets no normal answer.
#[derive(Debug)]
pub enum Refusal {
    /// Not a message at all (bad JSON or MessagePack, not a map): there is no id
    /// to answer to, and an id-less error would be routed to an unrelated
    /// pending request by the clients, so it is ignored (spec B3.6).
    Undecodable,
    /// A message with something wrong in it, answered with an `Error`.
    Invalid { id: Option<String>, error: Error },
}

/// Decodes one message.
pub fn decode(msg: &Incoming) -> std::result::Result<Envelope, Refusal> {
    let (bytes, format) = match msg {
        Incoming::Text(t) => (&t[..], Format::Json),
        Incoming::Binary(b) => (&b[..], Format::MsgPack),
    };
    let (value, wide) =
        format::decode_reporting_wide(bytes, format).map_err(|_| Refusal::Undecodable)?;
    let J::Object(mut value) = value else {
        return Err(Refusal::Undecodable);
    };
    let payload = match value.remove("payload") {
        Some(J::Object(p)) => p,
        _ => Map::new(),
    };
    let id = message_id(&value, &payload);
    // An integer beyond 64 bits is refused (it would be stored changed),
    // answered under the message's id.
    if let Some(error) = wide {
        return Err(match id {
            None => Refusal::Undecodable,
            Some(_) => Refusal::Invalid { id, error },
        });
    }
    // Rust's `RawComplete` puts its fields beside `type`, not in a payload.
    let payload =
        if payload.is_empty() && value.get("type").and_then(J::as_str) == Some("RawComplete") {
            let mut top = value.clone();
            for k in ["type", "messageId", "message_id"] {
                top.remove(k);
            }
            top
        } else {
            payload
        };
    let Some(kind) = value.get("type").and_then(J::as_str) else {
        // Without a type or an id there is nothing to answer to.
        return Err(match id {
            None => Refusal::Undecodable,
            Some(_) => Refusal::Invalid {
                id,
                error: Error::invalid("a message needs a string `type`"),
            },
        });
    };
    match message(kind, payload) {
        Ok(message) => Ok(Envelope { id, message }),
        Err(error) => Err(Refusal::Invalid { id, error }),
    }
}

fn message_id(top: &Map<String, J>, payload: &Map<String, J>) -> Option<String> {
    let pick = |m: &Map<String, J>, k: &str| m.get(k).and_then(J::as_str).map(str::to_string);
    pick(top, "messageId")
        .or_else(|| pick(top, "message_id"))
        .or_else(|| pick(payload, "messageId"))
        .or_else(|| pick(payload, "message_id"))
}

/// Moves a payload field out (`null` if absent).
fn take(p: &mut Map<String, J>, k: &str) -> J {
    p.remove(k).unwrap_or(J::Null)
}

/// The typed message for a `type` and its payload.
fn message(kind: &str, mut p: Map<String, J>) -> Result<ClientMessage> {
    let text = |p: &Map<String, J>, k: &str| p.get(k).and_then(J::as_str).map(str::to_string);
    let need = |p: &Map<String, J>, k: &str| {
        text(p, k).ok_or_else(|| Error::invalid(format!("{kind} needs a string `{k}`")))
    };
    use DataKind as D;
    let data = |kind: DataKind, args: Vec<(&'static str, String)>, body: J| {
        Ok(ClientMessage::Data(DataCall { kind, args, body }))
    };
    match kind {
        "Hello" => {
            let msgpack = p
                .get("formats")
                .and_then(J::as_array)
                .is_some_and(|a| a.iter().any(|f| f.as_str() == Some("msgpack")));
            Ok(ClientMessage::Hello { msgpack })
        }
        "Subscribe" => {
            let collection = text(&p, "collection")
                .ok_or_else(|| Error::invalid("Subscribe needs a `collection`"))?;
            crate::engine::validate_name("collection", &collection)?;
            let filter = match (text(&p, "filter_field"), p.get("filter_value")) {
                (Some(field), Some(v)) if !v.is_null() => Some(Filter::equals(
                    field,
                    match v {
                        J::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                )),
                _ => None,
            };
            let resume = ["resume_from", "last_event_id", "event_id"]
                .iter()
                .find_map(|k| match p.get(*k) {
                    Some(J::String(s)) => Some(s.clone()),
                    Some(J::Number(n)) => Some(n.to_string()),
                    _ => None,
                });
            let resume = match resume {
                None => None,
                Some(text) => Some(EventPos::parse(&text).ok_or_else(|| {
                    Error::invalid("`resume_from` must be an event id like 42 or 42:1")
                })?),
            };
            Ok(ClientMessage::Subscribe {
                collection,
                filter,
                resume,
            })
        }
        "Unsubscribe" => Ok(ClientMessage::Unsubscribe {
            collection: text(&p, "collection")
                .ok_or_else(|| Error::invalid("Unsubscribe needs a `collection`"))?,
        }),
        "ChatSend" => Ok(ClientMessage::ChatSend {
            chat_id: text(&p, "chat_id").unwrap_or_default(),
            payload: J::Object(p),
        }),
        "ClientToolResult" => {
            let success = p.get("success").and_then(J::as_bool).unwrap_or(false);
            let value = if success {
                take(&mut p, "result")
            } else {
                J::String(text(&p, "error").unwrap_or_else(|| "the client tool failed".into()))
            };
            Ok(ClientMessage::ClientToolResult {
                chat_id: text(&p, "chat_id").unwrap_or_default(),
                call_id: text(&p, "call_id").unwrap_or_default(),
                success,
                value,
            })
        }
        "CancelChat" => Ok(ClientMessage::CancelChat {
            chat_id: text(&p, "chat_id").unwrap_or_default(),
        }),
        "RegisterClientTools" => Ok(ClientMessage::RegisterClientTools {
            chat_id: need(&p, "chat_id")?,
            tools: take(&mut p, "tools"),
        }),
        "RawComplete" => Ok(ClientMessage::RawComplete { body: J::Object(p) }),
        "ChatResume" => {
            let chat_id = need(&p, "chat_id")?;
            let position = ["last_event_id", "resume_from"]
                .iter()
                .find_map(|k| text(&p, k));
            let (message_id, after) = match position {
                Some(pos) => {
                    let (m, seq) = crate::chat::event::parse_event_id(&pos).ok_or_else(|| {
                        Error::invalid("`last_event_id` must be an event id like MESSAGE_ID:SEQ")
                    })?;
                    (Some(m), Some(seq))
                }
                None => (
                    text(&p, "message_id"),
                    p.get("after")
                        .and_then(J::as_u64)
                        .map(|n| n.min(u64::from(u32::MAX)) as u32),
                ),
            };
            Ok(ClientMessage::ChatResume {
                chat_id,
                message_id,
                after,
            })
        }
        "FindAll" => data(
            D::FindAll,
            vec![("collection", need(&p, "collection")?)],
            json!({}),
        ),
        "FindById" => data(
            D::FindById,
            vec![
                ("collection", need(&p, "collection")?),
                ("id", need(&p, "id")?),
            ],
            json!({}),
        ),
        "Query" => {
            let collection = need(&p, "collection")?;
            let mut q = Map::new();
            for k in [
                "filter",
                "sort",
                "limit",
                "skip",
                "select_fields",
                "exclude_fields",
                "join",
            ] {
                if let Some(v) = p.remove(k) {
                    q.insert(k.into(), v);
                }
            }
            data(D::Query, vec![("collection", collection)], J::Object(q))
        }
        "Insert" => {
            let args = vec![("collection", need(&p, "collection")?)];
            data(D::Insert, args, take(&mut p, "record"))
        }
        "Update" => {
            let args = vec![
                ("collection", need(&p, "collection")?),
                ("id", need(&p, "id")?),
            ];
            data(D::Update, args, take(&mut p, "record"))
        }
        "Delete" => data(
            D::Delete,
            vec![
                ("collection", need(&p, "collection")?),
                ("id", need(&p, "id")?),
            ],
            json!({}),
        ),
        "BatchInsert" => {
            let args = vec![("collection", need(&p, "collection")?)];
            let J::Array(records) = take(&mut p, "records") else {
                return Err(Error::invalid("BatchInsert needs `records`: an array"));
            };
            // Wrapped, so a record with its own `data` field stays whole.
            let items: Vec<J> = records.into_iter().map(|r| json!({ "data": r })).collect();
            data(D::BatchInsert, args, json!({ "inserts": items }))
        }
        "BatchUpdate" => {
            let args = vec![("collection", need(&p, "collection")?)];
            data(
                D::BatchUpdate,
                args,
                json!({ "updates": take(&mut p, "updates") }),
            )
        }
        "BatchDelete" => {
            let args = vec![("collection", need(&p, "collection")?)];
            data(D::BatchDelete, args, json!({ "ids": take(&mut p, "ids") }))
        }
        "DistinctValues" => {
            let args = vec![
                ("collection", need(&p, "collection")?),
                ("field", need(&p, "field")?),
            ];
            data(
                D::Distinct,
                args,
                json!({ "filter": take(&mut p, "filter") }),
            )
        }
        "UpdateWithAction" => {
            let args = vec![
                ("collection", need(&p, "collection")?),
                ("id", need(&p, "id")?),
                ("action", need(&p, "action")?),
            ];
            let field = need(&p, "field")?;
            data(
                D::UpdateWithAction,
                args,
                json!({ "field": field, "value": take(&mut p, "value") }),
            )
        }
        "TextSearch" => {
            let args = vec![("collection", need(&p, "collection")?)];
            let mut q = Map::new();
            q.insert("query".into(), take(&mut p, "query"));
            if let J::Object(opts) = take(&mut p, "options") {
                q.extend(opts);
            }
            data(D::TextSearch, args, J::Object(q))
        }
        "CreateCollection" => {
            let args = vec![("collection", need(&p, "name")?)];
            let schema = take(&mut p, "schema");
            let empty = match &schema {
                J::Null => true,
                J::Object(o) => o
                    .get("fields")
                    .and_then(J::as_object)
                    .is_none_or(|f| f.is_empty()),
                _ => false,
            };
            if empty {
                data(D::EnsureCollection, args, json!({}))
            } else {
                data(D::CreateCollection, args, schema)
            }
        }
        "GetCollections" => data(D::GetCollections, Vec::new(), json!({})),
        "DeleteCollection" => data(
            D::DeleteCollection,
            vec![("collection", need(&p, "name")?)],
            json!({}),
        ),
        "KvSet" => {
            let args = vec![("key", need(&p, "key")?)];
            data(
                D::KvSet,
                args,
                json!({ "value": take(&mut p, "value"), "ttl": take(&mut p, "ttl") }),
            )
        }
        "KvGet" => data(D::KvGet, vec![("key", need(&p, "key")?)], json!({})),
        "KvDelete" => data(D::KvDelete, vec![("key", need(&p, "key")?)], json!({})),
        other => Ok(ClientMessage::Unknown(other.to_string())),
    }
}

/// A message from the server (events are encoded in `super::encode_event`).
#[derive(Debug)]
pub enum ServerMessage<'a> {
    /// The answer to `Hello`; always JSON text, whatever was negotiated (spec B4).
    Welcome { msgpack: bool },
    /// A call's result: `data` is already encoded in the session's format and
    /// is spliced in as is.
    Success { id: Option<&'a str>, data: &'a [u8] },
    Error {
        id: Option<&'a str>,
        code: u16,
        message: &'a str,
    },
    /// Chat answers end with a stream frame, never a Success or Error (B8);
    /// a provider failure's classification rides along (E10).
    ChatStreamError { chat_id: &'a str, error: &'a Error },
}

impl ServerMessage<'_> {
    /// The message's bytes and whether they go in a binary frame.
    pub fn encode(&self, format: Format) -> Result<(bool, Bytes)> {
        let binary = format == Format::MsgPack;
        match self {
            ServerMessage::Welcome { msgpack } => {
                let welcome = json!({"type": "Welcome", "payload": {"format": if *msgpack { "msgpack" } else { "json" }}});
                Ok((false, format::encode(Format::Json, &welcome)?))
            }
            ServerMessage::Success { id, data } => Ok((binary, success(format, *id, data))),
            ServerMessage::Error { id, code, message } => {
                let mut msg = json!({"type": "Error", "code": code, "message": message});
                if let Some(id) = id {
                    msg["messageId"] = J::String(id.to_string());
                }
                Ok((binary, format::encode(format, &msg)?))
            }
            ServerMessage::ChatStreamError { chat_id, error } => {
                let mut payload =
                    json!({"chat_id": chat_id, "error": error.message, "message": error.message});
                for (k, v) in &error.details {
                    payload[*k] = v.clone();
                }
                let frame = json!({"type": "ChatStreamError", "payload": payload});
                Ok((binary, format::encode(format, &frame)?))
            }
        }
    }
}

/// `{"type":"Success","messageId":id,"payload":{"data":DATA,"message_id":id}}`
/// with the handler's bytes spliced in, in either format: nothing is parsed
/// again.
pub(super) fn success(format: Format, id: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 96);
    match format {
        Format::Json => {
            let quoted = id.map(|id| J::String(id.to_string()).to_string());
            out.extend_from_slice(br#"{"type":"Success","#);
            if let Some(q) = &quoted {
                out.extend_from_slice(br#""messageId":"#);
                out.extend_from_slice(q.as_bytes());
                out.push(b',');
            }
            out.extend_from_slice(br#""payload":{"data":"#);
            out.extend_from_slice(data);
            if let Some(q) = &quoted {
                out.extend_from_slice(br#","message_id":"#);
                out.extend_from_slice(q.as_bytes());
            }
            out.extend_from_slice(b"}}");
        }
        Format::MsgPack => {
            // Writing into a Vec cannot fail.
            let n = if id.is_some() { 3 } else { 2 };
            let _ = rmp::encode::write_map_len(&mut out, n);
            let _ = rmp::encode::write_str(&mut out, "type");
            let _ = rmp::encode::write_str(&mut out, "Success");
            if let Some(id) = id {
                let _ = rmp::encode::write_str(&mut out, "messageId");
                let _ = rmp::encode::write_str(&mut out, id);
            }
            let _ = rmp::encode::write_str(&mut out, "payload");
            let _ = rmp::encode::write_map_len(&mut out, n - 1);
            let _ = rmp::encode::write_str(&mut out, "data");
            out.extend_from_slice(data);
            if let Some(id) = id {
                let _ = rmp::encode::write_str(&mut out, "message_id");
                let _ = rmp::encode::write_str(&mut out, id);
            }
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_splices_the_same_message_in_both_formats() {
        let value = json!({"a": [1, "x"]});
        for id in [None, Some("m\"1")] {
            let json_bytes = success(Format::Json, id, &serde_json::to_vec(&value).unwrap());
            let from_json: J = serde_json::from_slice(&json_bytes).unwrap();
            let packed = success(
                Format::MsgPack,
                id,
                &rmp_serde::to_vec_named(&value).unwrap(),
            );
            let from_msgpack = format::decode(&packed, Format::MsgPack).unwrap();
            assert_eq!(from_json, from_msgpack);
            assert_eq!(from_json["payload"]["data"], value);
            assert_eq!(from_json["type"], "Success");
            if let Some(id) = id {
                assert_eq!(from_json["messageId"], id);
                assert_eq!(from_json["payload"]["message_id"], id);
            }
        }
    }

    #[test]
    fn a_wide_integer_is_refused_under_the_message_id() {
        let text = br#"{"type":"Insert","messageId":"m7","payload":{"collection":"c","record":{"n":18446744073709551616}}}"#;
        match decode(&Incoming::Text(Bytes::from_static(text))) {
            Err(Refusal::Invalid { id, error }) => {
                assert_eq!(id.as_deref(), Some("m7"));
                assert!(error.message.contains("64 bits"), "{}", error.message);
            }
            other => panic!("expected a refusal naming m7, got {other:?}"),
        }
        let packed = rmp_serde::to_vec_named(&json!({"type": "Insert", "messageId": "m8",
            "payload": {"collection": "c", "record": {"n": u64::MAX}}}))
        .unwrap();
        assert!(matches!(
            decode(&Incoming::Binary(Bytes::from(packed))),
            Err(Refusal::Invalid { id: Some(id), .. }) if id == "m8"
        ));
    }
}
