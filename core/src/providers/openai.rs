//! OpenAI-compatible Chat Completions with `stream: true` (OpenAI, and local
//! servers: Ollama, llama.cpp, vLLM, LM Studio). The stream is SSE: `data:`
//! lines of `chat.completion.chunk` JSON, tool calls arriving in pieces keyed
//! by index, a usage chunk when `stream_options.include_usage` is set, then
//! `data: [DONE]`.

use super::{
    FailureKind, Prompt, PromptMessage, Provider, ProviderEvent, StreamError, ToolCall,
    MAX_STREAM_EVENT,
};
use crate::wire::http::client::{post, OutboundRequest, UrlError};
use crate::wire::sse::{SseEvent, SseParser};
use serde_json::{json, Value as J};

pub fn request(provider: &Provider, prompt: &Prompt) -> Result<OutboundRequest, UrlError> {
    let mut messages: Vec<J> = Vec::new();
    if let Some(system) = &prompt.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &prompt.messages {
        messages.push(match m {
            PromptMessage::User(text) => json!({"role": "user", "content": text}),
            PromptMessage::Assistant { text, tool_calls } if tool_calls.is_empty() => {
                json!({"role": "assistant", "content": text})
            }
            PromptMessage::Assistant { text, tool_calls } => json!({
                "role": "assistant",
                "content": if text.is_empty() { J::Null } else { J::String(text.clone()) },
                "tool_calls": tool_calls.iter().map(|c| json!({
                    "id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })).collect::<Vec<J>>(),
            }),
            PromptMessage::Tool {
                call_id, content, ..
            } => json!({"role": "tool", "tool_call_id": call_id, "content": content}),
        });
    }
    let mut body = json!({
        "model": prompt.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(n) = prompt.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if let Some(t) = prompt.temperature {
        body["temperature"] = json!(t);
    }
    if !prompt.tools.is_empty() {
        body["tools"] = J::Array(
            prompt
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters,
                    }})
                })
                .collect(),
        );
    }
    let auth = format!("Bearer {}", provider.key);
    let mut headers = vec![("Accept", "text/event-stream")];
    if !provider.key.is_empty() {
        headers.push(("Authorization", auth.as_str()));
    }
    post(
        &provider.base_url,
        "/chat/completions",
        &headers,
        "application/json",
        body.to_string().as_bytes(),
    )
}

/// A tool call being assembled from its streamed pieces.
#[derive(Debug, Default)]
struct Partial {
    id: String,
    name: String,
    arguments: String,
}

#[derive(Debug)]
pub struct Stream {
    sse: SseParser,
    calls: Vec<Partial>,
    done: bool,
    finished: bool,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            sse: SseParser::new(MAX_STREAM_EVENT),
            calls: Vec::new(),
            done: false,
            finished: false,
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
        // A final event without its blank line still counts.
        let mut out = self.feed(b"\n\n")?;
        if !self.done && !self.finished {
            return Err(StreamError::Malformed(
                "the stream ended before [DONE] or a finish_reason".into(),
            ));
        }
        out.extend(self.flush_calls());
        if !self.finished {
            out.push(ProviderEvent::Finish("stop".into()));
            self.finished = true;
        }
        Ok(out)
    }

    fn flush_calls(&mut self) -> Vec<ProviderEvent> {
        std::mem::take(&mut self.calls)
            .into_iter()
            .filter(|c| !c.name.is_empty())
            .enumerate()
            .map(|(i, c)| {
                ProviderEvent::ToolCall(ToolCall {
                    id: if c.id.is_empty() {
                        format!("call_{i}")
                    } else {
                        c.id
                    },
                    name: c.name,
                    arguments: if c.arguments.trim().is_empty() {
                        "{}".into()
                    } else {
                        c.arguments
                    },
                })
            })
            .collect()
    }

    fn event(&mut self, e: SseEvent, out: &mut Vec<ProviderEvent>) -> Result<(), StreamError> {
        let data = e.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let v: J = serde_json::from_str(data)
            .map_err(|err| StreamError::Malformed(format!("a chunk is not JSON: {err}")))?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let message = err
                .get("message")
                .and_then(J::as_str)
                .or_else(|| err.as_str())
                .unwrap_or("the provider reported an error")
                .to_string();
            let kind = match err
                .get("code")
                .or_else(|| err.get("type"))
                .and_then(J::as_str)
            {
                Some(c) if c.contains("rate") => FailureKind::RateLimited,
                Some(c) if c.contains("quota") || c.contains("billing") => FailureKind::Billing,
                Some(c) if c.contains("auth") || c.contains("key") => FailureKind::AuthFailed,
                _ => FailureKind::Unavailable,
            };
            return Err(StreamError::Provider { kind, message });
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            out.push(ProviderEvent::Usage {
                prompt: u.get("prompt_tokens").and_then(J::as_u64),
                completion: u.get("completion_tokens").and_then(J::as_u64),
            });
        }
        let Some(choice) = v
            .get("choices")
            .and_then(J::as_array)
            .and_then(|c| c.first())
        else {
            return Ok(());
        };
        let delta = choice.get("delta").or_else(|| choice.get("message"));
        if let Some(text) = delta.and_then(|d| d.get("content")).and_then(J::as_str) {
            if !text.is_empty() {
                out.push(ProviderEvent::Text(text.to_string()));
            }
        }
        if let Some(calls) = delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(J::as_array)
        {
            for (n, c) in calls.iter().enumerate() {
                let index = c.get("index").and_then(J::as_u64).unwrap_or(n as u64) as usize;
                if index > 64 {
                    return Err(StreamError::Malformed("too many tool calls".into()));
                }
                while self.calls.len() <= index {
                    self.calls.push(Partial::default());
                }
                let p = &mut self.calls[index];
                if let Some(id) = c.get("id").and_then(J::as_str) {
                    p.id = id.to_string();
                }
                let f = c.get("function");
                if let Some(name) = f.and_then(|f| f.get("name")).and_then(J::as_str) {
                    p.name.push_str(name);
                }
                if let Some(args) = f.and_then(|f| f.get("arguments")).and_then(J::as_str) {
                    if p.arguments.len() + args.len() > MAX_STREAM_EVENT {
                        return Err(StreamError::Malformed("tool arguments too long".into()));
                    }
                    p.arguments.push_str(args);
                }
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(J::as_str) {
            out.extend(self.flush_calls());
            // One answer, one finish (a repeated reason says nothing new).
            if !self.finished {
                out.push(ProviderEvent::Finish(reason.to_string()));
                self.finished = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(v: J) -> String {
        format!("data: {v}\n\n")
    }

    /// A whole stream, cut at every byte: the same events every time.
    fn parse_every_way(stream: &str) -> Vec<ProviderEvent> {
        let bytes = stream.as_bytes();
        let mut first: Option<Vec<ProviderEvent>> = None;
        for cut in 0..=bytes.len() {
            let mut s = Stream::default();
            let mut events = s.feed(&bytes[..cut]).unwrap();
            events.extend(s.feed(&bytes[cut..]).unwrap());
            events.extend(s.finish().unwrap());
            match &first {
                None => first = Some(events),
                Some(f) => assert_eq!(&events, f, "cut at {cut}"),
            }
        }
        first.unwrap_or_default()
    }

    #[test]
    fn text_tool_calls_and_usage() {
        let stream = [
            chunk(json!({"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]})),
            chunk(json!({"choices":[{"index":0,"delta":{"content":"Hel"}}]})),
            chunk(json!({"choices":[{"index":0,"delta":{"content":"lo"}}]})),
            chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"count_records","arguments":"{\"coll"}}]}}]})),
            chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ection\":\"x\"}"}}]}}]})),
            chunk(json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]})),
            chunk(json!({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}})),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let events = parse_every_way(&stream);
        assert_eq!(
            events,
            vec![
                ProviderEvent::Text("Hel".into()),
                ProviderEvent::Text("lo".into()),
                ProviderEvent::ToolCall(ToolCall {
                    id: "call_1".into(),
                    name: "count_records".into(),
                    arguments: "{\"collection\":\"x\"}".into()
                }),
                ProviderEvent::Finish("tool_calls".into()),
                ProviderEvent::Usage {
                    prompt: Some(12),
                    completion: Some(3)
                },
            ]
        );
    }

    #[test]
    fn errors_and_truncation() {
        let mut s = Stream::default();
        assert!(matches!(
            s.feed(b"data: {not json}\n\n"),
            Err(StreamError::Malformed(_))
        ));
        let mut s = Stream::default();
        assert!(matches!(
            s.feed(b"data: {\"error\":{\"message\":\"Rate limit\",\"type\":\"rate_limit_exceeded\"}}\n\n"),
            Err(StreamError::Provider {
                kind: FailureKind::RateLimited,
                ..
            })
        ));
        let mut s = Stream::default();
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"cut\"}}]}\n\n")
            .unwrap();
        assert!(matches!(s.finish(), Err(StreamError::Malformed(_))));
    }
}
