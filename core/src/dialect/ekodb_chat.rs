//! ekoDB's chat stream payloads (spec E4, B8, E10), shared by the SSE stream
//! (`POST /api/chat/{id}/messages/stream`, `POST /api/chat/complete/stream`)
//! and the WebSocket frames (`ChatStreamChunk`, `ClientToolCall`,
//! `ChatStreamEnd`, `ChatStreamError`). Key discipline matters: readers tell
//! frames apart by their keys, so only `done` carries `content` and only
//! `error` carries `error`.

use super::ekodb_events::OVERFLOW_MESSAGE;
use crate::chat::event::{ChatEvent, ChatEventKind};
use crate::providers::Failure;
use crate::wire::format::{self, Format};
use crate::wire::sse;
use bytes::Bytes;
use serde_json::{json, Value as J};

/// Adds a provider failure's classification (only for provider failures:
/// clients read `error_kind` as "the provider answered this").
fn classify(out: &mut J, failure: Option<&Failure>) {
    if let Some(f) = failure {
        out["error_kind"] = J::String(f.kind.as_str().into());
        out["provider"] = J::String(f.provider.clone());
        if let Some(s) = f.status {
            out["provider_status"] = J::from(s);
        }
        if let Some(r) = f.retry_after_secs {
            out["retry_after_secs"] = J::from(r);
        }
    }
}

fn done_payload(e: &ChatEvent) -> Option<J> {
    let ChatEventKind::Done {
        content,
        execution_time_ms,
        token_usage,
        context_window,
        tool_call_history,
        ..
    } = &e.kind
    else {
        return None;
    };
    Some(json!({
        "content": content,
        "message_id": e.message_id,
        "execution_time_ms": execution_time_ms,
        "token_usage": token_usage,
        "context_window": context_window,
        "tool_call_history": tool_call_history,
    }))
}

/// An event as SSE (`id:` is its resume token).
pub fn encode_sse(e: &ChatEvent) -> Option<Bytes> {
    let (name, data) = match &e.kind {
        ChatEventKind::Started => return None,
        ChatEventKind::Token(t) => ("token", json!({ "token": t })),
        ChatEventKind::ToolCall {
            call_id,
            tool,
            args,
            client,
        } => {
            let mut d =
                json!({"event": "tool_call", "tool": tool, "call_id": call_id, "args": args});
            if *client {
                d["client"] = J::Bool(true);
                ("__client_tool_call", d)
            } else {
                ("tool_call", d)
            }
        }
        ChatEventKind::ToolResult {
            call_id,
            tool,
            success,
            result,
            ..
        } => (
            "tool_result",
            json!({"event": "tool_result", "tool": tool, "call_id": call_id, "success": success, "result": result}),
        ),
        ChatEventKind::Done { .. } => ("done", done_payload(e)?),
        ChatEventKind::Error { error, failure, .. } => {
            let mut d = json!({ "error": error });
            classify(&mut d, failure.as_ref());
            ("error", d)
        }
    };
    Some(sse::event(
        Some(&e.id()),
        name,
        &serde_json::to_vec(&data).unwrap_or_default(),
    ))
}

/// The SSE chat stream's notice when it falls too far behind.
pub fn sse_overflow() -> Bytes {
    sse::event(
        None,
        "error",
        &serde_json::to_vec(&json!({ "error": OVERFLOW_MESSAGE })).unwrap_or_default(),
    )
}

/// An event as an ekoDB WebSocket frame (server tools run silently there).
pub fn encode_ws(e: &ChatEvent, fmt: Format) -> Option<Bytes> {
    let (kind, payload) = match &e.kind {
        ChatEventKind::Started => return None,
        ChatEventKind::Token(t) => (
            "ChatStreamChunk",
            json!({"chat_id": e.chat_id, "content": t, "event_id": e.id()}),
        ),
        ChatEventKind::ToolCall {
            call_id,
            tool,
            args,
            client: true,
        } => (
            "ClientToolCall",
            json!({"chat_id": e.chat_id, "call_id": call_id, "tool_name": tool, "arguments": args, "event_id": e.id()}),
        ),
        ChatEventKind::ToolCall { .. } | ChatEventKind::ToolResult { .. } => return None,
        ChatEventKind::Done { .. } => {
            let mut p = done_payload(e)?;
            if let Some(o) = p.as_object_mut() {
                o.remove("content");
            }
            p["chat_id"] = J::String(e.chat_id.clone());
            p["event_id"] = J::String(e.id());
            ("ChatStreamEnd", p)
        }
        ChatEventKind::Error { error, failure, .. } => {
            let mut p =
                json!({"chat_id": e.chat_id, "error": error, "message": error, "event_id": e.id()});
            classify(&mut p, failure.as_ref());
            ("ChatStreamError", p)
        }
    };
    format::encode(fmt, &json!({"type": kind, "payload": payload})).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::FailureKind;

    fn ev(kind: ChatEventKind) -> ChatEvent {
        ChatEvent {
            emotion: None,
            chat_id: "c1".into(),
            message_id: "c1_000001".into(),
            seq: 3,
            at: crate::time::Timestamp::EPOCH,
            kind,
        }
    }

    #[test]
    fn sse_frames_keep_their_keys_apart() {
        let t = encode_sse(&ev(ChatEventKind::Token("Hi ".into()))).unwrap();
        assert_eq!(
            &t[..],
            b"id: c1_000001:3\nevent: token\ndata: {\"token\":\"Hi \"}\n\n"
        );
        let failure = Failure {
            kind: FailureKind::RateLimited,
            provider: "openai".into(),
            status: Some(429),
            retry_after_secs: Some(7),
            message: "slow down".into(),
        };
        let e = encode_sse(&ev(ChatEventKind::Error {
            error: "slow down".into(),
            failure: Some(failure),
            cancelled: false,
        }))
        .unwrap();
        let text = String::from_utf8(e.to_vec()).unwrap();
        assert!(text.contains("event: error\n"));
        let data: J =
            serde_json::from_str(text.lines().nth(2).unwrap().strip_prefix("data: ").unwrap())
                .unwrap();
        assert_eq!(data["error_kind"], "provider_rate_limited");
        assert_eq!(data["retry_after_secs"], 7);
        assert!(data.get("content").is_none());
    }

    #[test]
    fn websocket_end_carries_integers_and_no_content() {
        let done = ev(ChatEventKind::Done {
            content: "x".into(),
            execution_time_ms: 12,
            token_usage: json!({"prompt_tokens": 1}),
            context_window: 8192,
            tool_call_history: json!([]),
            sources: Vec::new(),
            summary_version: 0,
        });
        let b = encode_ws(&done, Format::Json).unwrap();
        let v: J = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "ChatStreamEnd");
        assert_eq!(v["payload"]["execution_time_ms"], 12);
        assert_eq!(v["payload"]["message_id"], "c1_000001");
        assert!(v["payload"].get("content").is_none());
        let progress = ev(ChatEventKind::ToolCall {
            call_id: "k".into(),
            tool: "count_records".into(),
            args: json!({}),
            client: false,
        });
        assert!(encode_ws(&progress, Format::Json).is_none());
    }
}
