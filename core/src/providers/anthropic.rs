//! Anthropic Messages streaming: SSE events `message_start` (input tokens),
//! `content_block_start` (a text block, or a `tool_use` block with its id and
//! name), `content_block_delta` (`text_delta`, or `input_json_delta` pieces of
//! the tool's arguments), `content_block_stop`, `message_delta` (stop reason,
//! output tokens), `message_stop`, `ping`, and `error`.

use super::{
    FailureKind, Prompt, PromptMessage, Provider, ProviderEvent, StreamError, ToolCall,
    MAX_STREAM_EVENT,
};
use crate::wire::http::client::{post, OutboundRequest, UrlError};
use crate::wire::sse::{SseEvent, SseParser};
use serde_json::{json, Value as J};

/// Anthropic requires `max_tokens`; this is used when the session sets none.
const DEFAULT_MAX_TOKENS: u32 = 1024;

pub fn request(provider: &Provider, prompt: &Prompt) -> Result<OutboundRequest, UrlError> {
    let mut messages: Vec<J> = Vec::new();
    // Consecutive tool results go back in one user turn.
    for m in &prompt.messages {
        match m {
            PromptMessage::User(text) => messages.push(json!({"role": "user", "content": text})),
            PromptMessage::Assistant { text, tool_calls } => {
                let mut blocks: Vec<J> = Vec::new();
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for c in tool_calls {
                    let input: J = serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
                    blocks.push(
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}),
                    );
                }
                messages.push(json!({"role": "assistant", "content": blocks}));
            }
            PromptMessage::Tool {
                call_id, content, ..
            } => {
                let block =
                    json!({"type": "tool_result", "tool_use_id": call_id, "content": content});
                match messages.last_mut() {
                    Some(last)
                        if last["role"] == "user"
                            && last["content"]
                                .as_array()
                                .is_some_and(|b| b.iter().all(|x| x["type"] == "tool_result")) =>
                    {
                        if let Some(blocks) = last["content"].as_array_mut() {
                            blocks.push(block);
                        }
                    }
                    _ => messages.push(json!({"role": "user", "content": [block]})),
                }
            }
        }
    }
    let mut body = json!({
        "model": prompt.model,
        "max_tokens": prompt.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
        "stream": true,
    });
    if let Some(system) = &prompt.system {
        body["system"] = J::String(system.clone());
    }
    if let Some(t) = prompt.temperature {
        body["temperature"] = json!(t);
    }
    if !prompt.tools.is_empty() {
        body["tools"] = J::Array(
            prompt
                .tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
                .collect(),
        );
    }
    post(
        &provider.base_url,
        "/v1/messages",
        &[
            ("Accept", "text/event-stream"),
            ("x-api-key", provider.key.as_str()),
            ("anthropic-version", "2023-06-01"),
        ],
        "application/json",
        body.to_string().as_bytes(),
    )
}

#[derive(Debug)]
enum Block {
    Text,
    Tool {
        id: String,
        name: String,
        json: String,
    },
}

#[derive(Debug)]
pub struct Stream {
    sse: SseParser,
    blocks: Vec<Option<Block>>,
    input_tokens: Option<u64>,
    finished: bool,
    stopped: bool,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            sse: SseParser::new(MAX_STREAM_EVENT),
            blocks: Vec::new(),
            input_tokens: None,
            finished: false,
            stopped: false,
        }
    }
}

impl Stream {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<ProviderEvent>, StreamError> {
        let mut events = Vec::new();
        self.sse
            .feed(bytes, &mut events)
            .map_err(|e| StreamError::Malformed(e.to_string()))?;
        let mut out = Vec::new();
        for e in events {
            self.event(e, &mut out)?;
        }
        Ok(out)
    }

    pub fn finish(&mut self) -> Result<Vec<ProviderEvent>, StreamError> {
        let out = self.feed(b"\n\n")?;
        if !self.stopped {
            return Err(StreamError::Malformed(
                "the stream ended before message_stop".into(),
            ));
        }
        Ok(out)
    }

    fn block(&mut self, index: usize) -> Result<&mut Option<Block>, StreamError> {
        if index > 256 {
            return Err(StreamError::Malformed("too many content blocks".into()));
        }
        while self.blocks.len() <= index {
            self.blocks.push(None);
        }
        Ok(&mut self.blocks[index])
    }

    fn event(&mut self, e: SseEvent, out: &mut Vec<ProviderEvent>) -> Result<(), StreamError> {
        if e.data.trim().is_empty() {
            return Ok(());
        }
        let v: J = serde_json::from_str(&e.data)
            .map_err(|err| StreamError::Malformed(format!("an event is not JSON: {err}")))?;
        let kind = v
            .get("type")
            .and_then(J::as_str)
            .unwrap_or(e.event.as_str());
        let index = v.get("index").and_then(J::as_u64).unwrap_or(0) as usize;
        match kind {
            "message_start" => {
                self.input_tokens = v.pointer("/message/usage/input_tokens").and_then(J::as_u64);
            }
            "content_block_start" => {
                let b = v.get("content_block");
                let block = match b.and_then(|b| b.get("type")).and_then(J::as_str) {
                    Some("tool_use") => Block::Tool {
                        id: b
                            .and_then(|b| b.get("id"))
                            .and_then(J::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        name: b
                            .and_then(|b| b.get("name"))
                            .and_then(J::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        json: String::new(),
                    },
                    _ => {
                        if let Some(t) = b.and_then(|b| b.get("text")).and_then(J::as_str) {
                            if !t.is_empty() {
                                out.push(ProviderEvent::Text(t.to_string()));
                            }
                        }
                        Block::Text
                    }
                };
                *self.block(index)? = Some(block);
            }
            "content_block_delta" => {
                let d = v.get("delta");
                match d.and_then(|d| d.get("type")).and_then(J::as_str) {
                    Some("text_delta") => {
                        if let Some(t) = d.and_then(|d| d.get("text")).and_then(J::as_str) {
                            out.push(ProviderEvent::Text(t.to_string()));
                        }
                    }
                    Some("input_json_delta") => {
                        let piece = d
                            .and_then(|d| d.get("partial_json"))
                            .and_then(J::as_str)
                            .unwrap_or_default();
                        if let Some(Block::Tool { json, .. }) = self.block(index)? {
                            if json.len() + piece.len() > MAX_STREAM_EVENT {
                                return Err(StreamError::Malformed("tool input too long".into()));
                            }
                            json.push_str(piece);
                        }
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let Some(Block::Tool { id, name, json }) = self.block(index)?.take() {
                    out.push(ProviderEvent::ToolCall(ToolCall {
                        id,
                        name,
                        arguments: if json.trim().is_empty() {
                            "{}".into()
                        } else {
                            json
                        },
                    }));
                }
            }
            "message_delta" => {
                if let Some(n) = v.pointer("/usage/output_tokens").and_then(J::as_u64) {
                    out.push(ProviderEvent::Usage {
                        prompt: self.input_tokens,
                        completion: Some(n),
                    });
                }
                // One answer, one finish (a repeated delta says nothing new).
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(J::as_str) {
                    if !self.finished {
                        self.finished = true;
                        out.push(ProviderEvent::Finish(r.to_string()));
                    }
                }
            }
            "message_stop" => self.stopped = true,
            "error" => {
                let t = v
                    .pointer("/error/type")
                    .and_then(J::as_str)
                    .unwrap_or_default();
                let message = v
                    .pointer("/error/message")
                    .and_then(J::as_str)
                    .unwrap_or("the provider reported an error")
                    .to_string();
                let kind = match t {
                    "rate_limit_error" => FailureKind::RateLimited,
                    "authentication_error" => FailureKind::AuthFailed,
                    "permission_error" => FailureKind::PermissionDenied,
                    "invalid_request_error" => FailureKind::RequestError,
                    _ => FailureKind::Unavailable,
                };
                return Err(StreamError::Provider { kind, message });
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, v: J) -> String {
        format!("event: {name}\ndata: {v}\n\n")
    }

    #[test]
    fn text_tool_use_and_usage_split_anywhere() {
        let stream = [
            ev("message_start", json!({"type":"message_start","message":{"id":"m","usage":{"input_tokens":25,"output_tokens":1}}})),
            ev("content_block_start", json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})),
            ev("ping", json!({"type":"ping"})),
            ev("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me "}})),
            ev("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"count."}})),
            ev("content_block_stop", json!({"type":"content_block_stop","index":0})),
            ev("content_block_start", json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"count_records","input":{}}})),
            ev("content_block_delta", json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"collection\": "}})),
            ev("content_block_delta", json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"x\"}"}})),
            ev("content_block_stop", json!({"type":"content_block_stop","index":1})),
            ev("message_delta", json!({"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":15}})),
            ev("message_stop", json!({"type":"message_stop"})),
        ]
        .concat();
        let bytes = stream.as_bytes();
        for cut in 0..=bytes.len() {
            let mut s = Stream::default();
            let mut events = s.feed(&bytes[..cut]).unwrap();
            events.extend(s.feed(&bytes[cut..]).unwrap());
            events.extend(s.finish().unwrap());
            assert_eq!(
                events,
                vec![
                    ProviderEvent::Text("Let me ".into()),
                    ProviderEvent::Text("count.".into()),
                    ProviderEvent::ToolCall(ToolCall {
                        id: "toolu_1".into(),
                        name: "count_records".into(),
                        arguments: "{\"collection\": \"x\"}".into()
                    }),
                    ProviderEvent::Usage {
                        prompt: Some(25),
                        completion: Some(15)
                    },
                    ProviderEvent::Finish("tool_use".into()),
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn errors_and_truncation() {
        let mut s = Stream::default();
        let e = s.feed(
            ev(
                "error",
                json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
            )
            .as_bytes(),
        );
        assert_eq!(
            e,
            Err(StreamError::Provider {
                kind: FailureKind::Unavailable,
                message: "Overloaded".into()
            })
        );
        let mut s = Stream::default();
        s.feed(
            ev(
                "message_start",
                json!({"type":"message_start","message":{}}),
            )
            .as_bytes(),
        )
        .unwrap();
        assert!(s.finish().is_err());
    }
}
