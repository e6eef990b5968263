//! General Bots meet signaling (`/ws/meet`; seed 001, `spec/dialects.md`
//! §2.6): a relay for WebRTC offers, answers and ICE candidates between the
//! participants of a room. Client frames `join`, `leave`, `signal`; server
//! frames `joined` (to the joiner, with who is there), `participant_joined`
//! and `participant_left` (to the others), `signal` (to its target only,
//! with the sender's id). Rooms live in memory and go with their last
//! participant; a closed socket leaves its rooms (`server::sockets`).

// Error frames as on the chat socket; signals are small (SDP is a few KB),
// so the chat socket's 64 KB frame limit and its refusals apply too.
use super::general_bots::{self, error, MAX_FRAME};
use super::socket;
use super::{Followup, Outgoing};
use crate::ids::ConnId;
use crate::server::Server;
use crate::time::Timestamp;
use crate::wire::ws::Incoming;
use bytes::Bytes;
use serde_json::{json, Value as J};

/// Rooms one connection may be in at once.
const MAX_ROOMS_PER_CONN: usize = 16;
/// Participants per room.
const MAX_PARTICIPANTS: usize = 64;
/// Longest `room_id` or `participant_name` (a `joined` frame lists every
/// participant's name).
const MAX_NAME_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Session {
    /// Rooms this connection joined, with its participant id in each.
    rooms: Vec<(String, String)>,
}

/// `participant_left`, as whole frames for the hub.
pub fn left(room: &str, participant: &str) -> Bytes {
    socket::frames(&[
        json!({"type": "participant_left", "room_id": room, "participant_id": participant}),
    ])
}

pub fn overflow() -> J {
    json!({"type": "error", "code": "RATE_LIMITED", "message": "too far behind; reconnect"})
}

pub fn handle(
    s: &mut Session,
    server: &mut Server,
    conn: ConnId,
    msg: &Incoming,
    _now: Timestamp,
) -> (Vec<Outgoing>, Followup) {
    let frame = match socket::read_frame(msg, MAX_FRAME, general_bots::refuse) {
        Ok(f) => f,
        Err(reply) => return reply,
    };
    let room = socket::str_field(&frame, "room_id");
    let name = socket::str_field(&frame, "participant_name").unwrap_or("guest");
    if room.is_some_and(|r| r.len() > MAX_NAME_BYTES) || name.len() > MAX_NAME_BYTES {
        return (
            vec![error(
                "INVALID_FORMAT",
                &format!("`room_id` and `participant_name` are at most {MAX_NAME_BYTES} bytes"),
            )],
            Followup::None,
        );
    }
    let reply = match (socket::str_field(&frame, "type"), room) {
        (Some("join"), Some(room)) => join(s, server, conn, room, name),
        (Some("leave"), Some(room)) => {
            s.rooms.retain(|(r, _)| r != room);
            if let Some((gone, rest)) = server.meet_leave(conn, room) {
                let frame = left(room, &gone.id);
                for p in rest {
                    server.deliver(p.conn, frame.clone());
                }
            }
            Vec::new()
        }
        (Some("signal"), Some(room)) => signal(s, server, room, &frame),
        (Some("join" | "leave" | "signal"), None) => {
            vec![error("INVALID_FORMAT", "`room_id` is required")]
        }
        (other, _) => vec![error(
            "INVALID_FORMAT",
            &format!("unknown frame type `{}`", other.unwrap_or_default()),
        )],
    };
    (reply, Followup::None)
}

fn join(
    s: &mut Session,
    server: &mut Server,
    conn: ConnId,
    room: &str,
    name: &str,
) -> Vec<Outgoing> {
    if s.rooms.iter().any(|(r, _)| r == room) {
        return vec![error("INVALID_FORMAT", "already in this room")];
    }
    if s.rooms.len() >= MAX_ROOMS_PER_CONN {
        return vec![error("RATE_LIMITED", "in too many rooms at once")];
    }
    if server.meet_members(room).len() >= MAX_PARTICIPANTS {
        return vec![error("RATE_LIMITED", "the room is full")];
    }
    let (id, others) = server.meet_join(conn, room, name);
    s.rooms.push((room.to_string(), id.clone()));
    let announce = socket::frames(&[json!({
        "type": "participant_joined", "room_id": room, "participant_id": id, "participant_name": name,
    })]);
    for p in &others {
        server.deliver(p.conn, announce.clone());
    }
    let present: Vec<J> = others
        .iter()
        .map(|p| json!({"participant_id": p.id, "participant_name": p.name}))
        .collect();
    vec![Outgoing::json(&json!({
        "type": "joined", "room_id": room, "participant_id": id, "participants": present,
    }))]
}

fn signal(
    s: &Session,
    server: &mut Server,
    room: &str,
    frame: &serde_json::Map<String, J>,
) -> Vec<Outgoing> {
    let Some((_, from)) = s.rooms.iter().find(|(r, _)| r == room) else {
        return vec![error(
            "INVALID_FORMAT",
            "join the room before signalling in it",
        )];
    };
    let (Some(target), Some(signal)) = (
        socket::str_field(frame, "target_id"),
        frame.get("signal").filter(|v| v.is_object()),
    ) else {
        return vec![error(
            "INVALID_FORMAT",
            "`target_id` (a participant id) and `signal` (an object) are required",
        )];
    };
    if target == from {
        return vec![error(
            "INVALID_FORMAT",
            "a signal goes to another participant, not to yourself",
        )];
    }
    let Some(to) = server
        .meet_members(room)
        .iter()
        .find(|p| p.id == target)
        .map(|p| p.conn)
    else {
        return vec![error(
            "SESSION_NOT_FOUND",
            "no such participant in this room",
        )];
    };
    let relayed = socket::frames(&[json!({
        "type": "signal", "room_id": room, "from_id": from, "signal": signal,
    })]);
    server.deliver(to, relayed);
    Vec::new()
}

/// `GET /ws/meet`: the signaling socket (token checked as on `/ws`).
pub fn upgrade(
    server: &mut Server,
    ctx: &super::rest::Ctx<'_>,
) -> crate::error::Result<super::rest::Outcome> {
    let token = ctx.param("token").unwrap_or_default();
    if socket::open_with_credential(server, ctx.conn, token, ctx.now).is_none() {
        return Err(crate::error::Error::new(
            crate::error::ErrorKind::Unauthorized,
            "a valid ?token= is required",
        ));
    }
    super::rest::system::upgrade_to(ctx, super::WsSession::Meet(Session::default()), None)
}
