//! Chat against real provider wire formats: a fake OpenAI-compatible and a
//! fake Anthropic server on loopback stream their answers the way the real
//! APIs do (SSE in a chunked body), and fail the ways they do (401, 429 with
//! Retry-After, 500s, a stream cut mid-answer). Tidepool relays the answer
//! token by token, runs the tool loop (server tools at once, client tools
//! through `tool-result`), classifies failures (spec E10), retries only
//! before the first token, cancels, and lets a dropped client resume.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidepool_core::wire::sse::SseEvent;
use tidepool_tests::sse::SseStream as Stream;
use tidepool_tests::{both_runtimes, Runtime, TestServer};

// ----- the fake provider ---------------------------------------------------------

/// How the fake answers one request.
#[derive(Clone)]
enum Reply {
    /// 200 with these SSE `data:` payloads, `gap` apart, then the end.
    Stream(Vec<String>, Duration),
    /// These payloads, then the connection drops without ending the body.
    Cut(Vec<String>),
    /// An error status with extra head lines and a JSON body.
    Status(u16, &'static str, Value),
    /// Says nothing for this long, then hangs up.
    Silent(Duration),
}

struct Fake {
    url: String,
    /// Each request's head and JSON body.
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Fake {
    fn requests(&self) -> Vec<(String, Value)> {
        self.seen.lock().unwrap().clone()
    }
}

/// A provider answering requests with `script` in order (the last reply
/// repeats). `base` is the path prefix its URL carries.
fn provider(base: &str, script: Vec<Reply>) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{base}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(s) = stream else { continue };
            let (log, script) = (log.clone(), script.clone());
            std::thread::spawn(move || serve(s, &log, &script));
        }
    });
    Fake { url, seen }
}

fn read_request(s: &mut TcpStream) -> Option<(String, Value)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let len: usize = head
                .to_lowercase()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < i + 4 + len {
                let n = s.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = serde_json::from_slice(&buf[i + 4..i + 4 + len]).unwrap_or(Value::Null);
            return Some((head, body));
        }
    }
}

fn chunk(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    write!(s, "{:x}\r\n", bytes.len())?;
    s.write_all(bytes)?;
    s.write_all(b"\r\n")?;
    s.flush()
}

fn serve(mut s: TcpStream, log: &Mutex<Vec<(String, Value)>>, script: &Mutex<VecDeque<Reply>>) {
    let Some(req) = read_request(&mut s) else {
        return;
    };
    log.lock().unwrap().push(req);
    let reply = {
        let mut q = script.lock().unwrap();
        if q.len() > 1 {
            q.pop_front().unwrap()
        } else {
            q.front().cloned().unwrap()
        }
    };
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    match reply {
        Reply::Stream(events, gap) => {
            let _ = s.write_all(head.as_bytes());
            for e in events {
                std::thread::sleep(gap);
                if chunk(&mut s, format!("{e}\n\n").as_bytes()).is_err() {
                    return;
                }
            }
            let _ = s.write_all(b"0\r\n\r\n");
        }
        Reply::Cut(events) => {
            let _ = s.write_all(head.as_bytes());
            for e in events {
                let _ = chunk(&mut s, format!("{e}\n\n").as_bytes());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Reply::Silent(wait) => std::thread::sleep(wait),
        Reply::Status(code, extra, body) => {
            let text = body.to_string();
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{text}",
                text.len()
            );
        }
    }
}

/// OpenAI Chat Completions stream chunks for a text answer.
fn openai_text(pieces: &[&str], usage: (u64, u64)) -> Vec<String> {
    let mut out: Vec<String> = pieces
        .iter()
        .map(|p| format!("data: {}", json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": p}}]})))
        .collect();
    out.push(format!(
        "data: {}",
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    ));
    out.push(format!("data: {}", json!({"choices": [], "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}})));
    out.push("data: [DONE]".into());
    out
}

/// OpenAI stream chunks for one tool call, its arguments in two pieces.
fn openai_tool_call(id: &str, name: &str, args: &Value) -> Vec<String> {
    let text = args.to_string();
    let (a, b) = text.split_at(text.len() / 2);
    vec![
        format!(
            "data: {}",
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}}]})
        ),
        format!(
            "data: {}",
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": a}}]}}]})
        ),
        format!(
            "data: {}",
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": b}}]}}]})
        ),
        format!(
            "data: {}",
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        ),
        "data: [DONE]".into(),
    ]
}

/// An Anthropic Messages stream for a text answer.
fn anthropic_text(pieces: &[&str]) -> Vec<String> {
    let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}");
    let mut out = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "m", "role": "assistant", "content": [], "usage": {"input_tokens": 21, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    for p in pieces {
        out.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
    }
    out.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}})));
    out.push(ev("message_stop", json!({"type": "message_stop"})));
    out
}

// ----- the client side -----------------------------------------------------------

fn openai_server(rt: Runtime, fake: &Fake, extra: &[&str]) -> TestServer {
    let mut args = vec![
        "--openai-url",
        fake.url.as_str(),
        "--openai-api-key",
        "sk-test",
    ];
    args.extend_from_slice(extra);
    TestServer::start_with(rt, &args)
}

fn create_chat(srv: &TestServer, token: &str, body: Value) -> String {
    let r = srv.call(token, "POST", "/api/chat", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["chat_id"].as_str().unwrap().to_string()
}

fn insert(srv: &TestServer, token: &str, collection: &str, body: Value) {
    let r = srv.call(
        token,
        "POST",
        &format!("/api/insert/{collection}"),
        &body.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// An answer streamed over SSE.
fn chat_stream(srv: &TestServer, token: &str, chat: &str, body: &Value) -> Stream {
    Stream::open(
        srv,
        token,
        "POST",
        &format!("/api/chat/{chat}/messages/stream"),
        "",
        body,
    )
}

fn data(e: &SseEvent) -> Value {
    serde_json::from_str(&e.data).unwrap()
}

fn tokens(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| data(e)["token"].as_str().unwrap().to_string())
        .collect()
}

fn last(events: &[SseEvent]) -> (String, Value) {
    let e = events.last().expect("a terminal event");
    (e.event.clone(), data(e))
}

fn messages(srv: &TestServer, token: &str, chat: &str) -> Vec<Value> {
    let r = srv.call(token, "GET", &format!("/api/chat/{chat}/messages"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["messages"].as_array().unwrap().clone()
}

fn text_of(m: &Value, field: &str) -> Value {
    m[field]["value"].clone()
}

// ----- answers ---------------------------------------------------------------------

both_runtimes!(openai_answers_stream_token_by_token_and_are_stored, |rt| {
    let fake = provider(
        "/v1",
        vec![Reply::Stream(
            openai_text(&["The price ", "is ", "$99."], (42, 5)),
            Duration::ZERO,
        )],
    );
    let srv = openai_server(rt, &fake, &[]);
    let token = srv.token();
    insert(
        &srv,
        &token,
        "products",
        json!({"name": "ekoDB Pro", "price": 99}),
    );
    let chat = create_chat(
        &srv,
        &token,
        json!({"llm_provider": "openai", "llm_model": "gpt-4o-mini",
        "system_prompt": "Be brief.", "collections": [{"collection_name": "products"}]}),
    );
    let mut s = chat_stream(
        &srv,
        &token,
        &chat,
        &json!({"message": "What is the price of ekoDB Pro?"}),
    );
    let events = s.rest();
    let pieces: Vec<String> = events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| data(e)["token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        pieces,
        ["The price ", "is ", "$99."],
        "relayed as the provider sent them"
    );
    let (kind, done) = last(&events);
    assert_eq!(kind, "done");
    assert_eq!(done["content"], "The price is $99.");
    assert_eq!(
        done["token_usage"]["prompt_tokens"], 42,
        "the provider's count, not an estimate"
    );
    assert_eq!(done["token_usage"]["total_tokens"], 47);
    assert_eq!(done["context_window"], 128000);
    // Every event has a resumable id, in order, without gaps (position 0 is
    // the turn's start, which ekoDB streams do not show).
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.id.as_deref(),
            Some(format!("{}:{}", done["message_id"].as_str().unwrap(), i + 1).as_str())
        );
    }
    // What the provider was sent: the model, streaming, the key, the system
    // prompt with the retrieved record, the question.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let (head, body) = &reqs[0];
    assert!(head.starts_with("POST /v1/chat/completions "), "{head}");
    assert!(
        head.to_lowercase()
            .contains("authorization: bearer sk-test"),
        "{head}"
    );
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["stream"], true);
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["role"], "system");
    let system = msgs[0]["content"].as_str().unwrap();
    assert!(system.starts_with("Be brief."), "{system}");
    assert!(
        system.contains("ekoDB Pro") && system.contains("99"),
        "context is in the prompt: {system}"
    );
    assert_eq!(
        msgs.last().unwrap(),
        &json!({"role": "user", "content": "What is the price of ekoDB Pro?"})
    );
    // Stored: the question and the answer, with who answered.
    let stored = messages(&srv, &token, &chat);
    assert_eq!(stored.len(), 2);
    assert_eq!(text_of(&stored[1], "content"), "The price is $99.");
    assert_eq!(text_of(&stored[1], "model"), "gpt-4o-mini");
    assert_eq!(stored[1]["id"], done["message_id"]);

    // A second message carries the history; the non-streaming route answers
    // the same way.
    let r = srv.call(
        &token,
        "POST",
        &format!("/api/chat/{chat}/messages"),
        &json!({"message": "And in euros?"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["responses"][0], "The price is $99.");
    let reqs = fake.requests();
    let history: Vec<&str> = reqs[1].1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] != "system")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        [
            "What is the price of ekoDB Pro?",
            "The price is $99.",
            "And in euros?"
        ]
    );
});

both_runtimes!(anthropic_answers_stream_too, |rt| {
    let fake = provider(
        "",
        vec![Reply::Stream(
            anthropic_text(&["Bonjour", ", monde"]),
            Duration::ZERO,
        )],
    );
    let srv = TestServer::start_with(
        rt,
        &[
            "--anthropic-url",
            &fake.url,
            "--anthropic-api-key",
            "ak-test",
        ],
    );
    let token = srv.token();
    let chat = create_chat(
        &srv,
        &token,
        json!({"llm_provider": "anthropic", "system_prompt": "French only."}),
    );
    let r = srv.call(
        &token,
        "POST",
        &format!("/api/chat/{chat}/messages"),
        &json!({"message": "Say hello"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["responses"], json!(["Bonjour, monde"]));
    assert_eq!(answer["token_usage"]["prompt_tokens"], 21);
    assert_eq!(answer["token_usage"]["completion_tokens"], 7);
    let (head, body) = &fake.requests()[0];
    assert!(head.starts_with("POST /v1/messages "), "{head}");
    let lower = head.to_lowercase();
    assert!(
        lower.contains("x-api-key: ak-test") && lower.contains("anthropic-version:"),
        "{head}"
    );
    assert_eq!(body["system"], "French only.");
    assert_eq!(
        body["model"], "claude-sonnet-4-5",
        "the provider's default model"
    );
    assert_eq!(body["stream"], true);
});

// ----- failures --------------------------------------------------------------------

both_runtimes!(provider_failures_are_classified_for_clients, |rt| {
    let cases: Vec<(Reply, &str, u16)> = vec![
        (
            Reply::Status(
                401,
                "",
                json!({"error": {"message": "Incorrect API key provided"}}),
            ),
            "provider_auth_failed",
            401,
        ),
        (
            Reply::Status(403, "", json!({"error": {"message": "forbidden"}})),
            "provider_permission_denied",
            403,
        ),
        (
            Reply::Status(
                429,
                "Retry-After: 7\r\n",
                json!({"error": {"message": "Rate limit reached"}}),
            ),
            "provider_rate_limited",
            429,
        ),
        (
            Reply::Status(
                429,
                "",
                json!({"error": {"message": "You exceeded your current quota"}}),
            ),
            "provider_billing",
            429,
        ),
        (
            Reply::Status(400, "", json!({"error": {"message": "bad model"}})),
            "provider_request_error",
            400,
        ),
    ];
    for (reply, kind, status) in cases {
        let fake = provider("/v1", vec![reply]);
        let srv = openai_server(rt, &fake, &[]);
        let token = srv.token();
        let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
        let r = srv.call(
            &token,
            "POST",
            &format!("/api/chat/{chat}/messages"),
            &json!({"message": "hi"}).to_string(),
        );
        assert_eq!(r.status, 502, "{kind}: {}", r.text());
        let e = r.json();
        assert_eq!(e["error_kind"], kind, "{e}");
        assert_eq!(e["provider"], "openai");
        assert_eq!(e["provider_status"], status);
        assert_eq!(e["code"], 502);
        assert!(
            e["error"].as_str().unwrap().contains(&status.to_string()),
            "{e}"
        );
        if kind == "provider_rate_limited" {
            assert_eq!(e["retry_after_secs"], 7);
        }
        // Not worth retrying (or the wait is the client's): asked once.
        assert_eq!(fake.requests().len(), 1, "{kind}");
        // The question stays; no answer was stored.
        let stored = messages(&srv, &token, &chat);
        assert_eq!(stored.len(), 1, "{kind}");
        assert_eq!(text_of(&stored[0], "role"), "user");

        // The same failure on the stream: an `error` event carrying it.
        let mut s = chat_stream(&srv, &token, &chat, &json!({"message": "again"}));
        let events = s.rest();
        let (name, d) = last(&events);
        assert_eq!(name, "error");
        assert_eq!(d["error_kind"], kind);
        assert!(d.get("content").is_none());
    }
});

both_runtimes!(
    transient_failures_are_retried_before_the_first_token,
    |rt| {
        let busy = Reply::Status(503, "", json!({"error": {"message": "overloaded"}}));
        let ok = Reply::Stream(openai_text(&["fine"], (3, 1)), Duration::ZERO);
        let fake = provider(
            "/v1",
            vec![busy.clone(), Reply::Status(500, "", json!({})), ok],
        );
        let srv = openai_server(rt, &fake, &[]);
        let token = srv.token();
        let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
        let r = srv.call(
            &token,
            "POST",
            &format!("/api/chat/{chat}/messages"),
            &json!({"message": "hi"}).to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["responses"], json!(["fine"]));
        assert_eq!(fake.requests().len(), 3, "two failures, then the answer");

        // Always failing: three attempts, then the classified failure.
        let fake = provider("/v1", vec![busy]);
        let srv = openai_server(rt, &fake, &[]);
        let token = srv.token();
        let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
        let r = srv.call(
            &token,
            "POST",
            &format!("/api/chat/{chat}/messages"),
            &json!({"message": "hi"}).to_string(),
        );
        assert_eq!(r.status, 502);
        assert_eq!(r.json()["error_kind"], "provider_unavailable");
        assert_eq!(fake.requests().len(), 3);

        // Cut after the first token: no retry (the client saw text), an error.
        let fake = provider(
            "/v1",
            vec![Reply::Cut(openai_text(&["half "], (1, 1))[..1].to_vec())],
        );
        let srv = openai_server(rt, &fake, &[]);
        let token = srv.token();
        let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
        let mut s = chat_stream(&srv, &token, &chat, &json!({"message": "hi"}));
        let events = s.rest();
        assert_eq!(tokens(&events), "half ");
        let (name, d) = last(&events);
        assert_eq!(name, "error");
        assert_eq!(d["error_kind"], "provider_unavailable", "{d}");
        assert_eq!(fake.requests().len(), 1);
        let stored = messages(&srv, &token, &chat);
        assert_eq!(
            text_of(&stored[1], "status"),
            "failed",
            "kept, marked failed"
        );
        assert_eq!(text_of(&stored[1], "content"), "half ");

        // Nobody listening at all: unreachable.
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", dead.local_addr().unwrap());
        drop(dead);
        let srv = TestServer::start_with(rt, &["--openai-url", &url, "--openai-api-key", "k"]);
        let token = srv.token();
        let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
        let r = srv.call(
            &token,
            "POST",
            &format!("/api/chat/{chat}/messages"),
            &json!({"message": "hi"}).to_string(),
        );
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error_kind"], "provider_unreachable");
    }
);

both_runtimes!(an_unconfigured_provider_is_named_or_stood_in_for, |rt| {
    // No fallback: the client hears the provider is not configured.
    let srv = TestServer::start_with(rt, &["--chat-offline-fallback", "false"]);
    let token = srv.token();
    let chat = create_chat(&srv, &token, json!({"llm_provider": "anthropic"}));
    let r = srv.call(
        &token,
        "POST",
        &format!("/api/chat/{chat}/messages"),
        &json!({"message": "hi"}).to_string(),
    );
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error_kind"], "provider_not_configured");
    assert_eq!(
        messages(&srv, &token, &chat).len(),
        0,
        "refused before anything was stored"
    );
    // An unknown provider is bad input, at creation.
    let r = srv.call(
        &token,
        "POST",
        "/api/chat",
        &json!({"llm_provider": "skynet"}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
});

// ----- tools -----------------------------------------------------------------------

both_runtimes!(server_tools_run_in_the_loop, |rt| {
    let fake = provider(
        "/v1",
        vec![
            Reply::Stream(
                openai_tool_call(
                    "call_1",
                    "count_records",
                    &json!({"collection": "products"}),
                ),
                Duration::ZERO,
            ),
            Reply::Stream(
                openai_text(&["There are 3 products."], (9, 4)),
                Duration::ZERO,
            ),
        ],
    );
    let srv = openai_server(rt, &fake, &[]);
    let token = srv.token();
    for i in 0..3 {
        insert(&srv, &token, "products", json!({"name": format!("p{i}")}));
    }
    let chat = create_chat(
        &srv,
        &token,
        json!({"llm_provider": "openai",
        "collections": [{"collection_name": "products"}], "tool_config": {"enabled": true}}),
    );
    let mut s = chat_stream(
        &srv,
        &token,
        &chat,
        &json!({"message": "How many products?"}),
    );
    let events = s.rest();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        ["tool_call", "tool_result", "token", "done"],
        "{events:?}"
    );
    assert_eq!(data(&events[0])["tool"], "count_records");
    assert_eq!(data(&events[1])["success"], true);
    let (_, done) = last(&events);
    assert_eq!(done["content"], "There are 3 products.");
    assert_eq!(done["tool_call_history"][0]["tool"], "count_records");
    // The tools were offered, and the result went back as a tool message.
    let reqs = fake.requests();
    let offered: Vec<&str> = reqs[0].1["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(offered.contains(&"count_records"), "{offered:?}");
    assert!(
        !offered.contains(&"insert_record"),
        "writes are off by default: {offered:?}"
    );
    let msgs = reqs[1].1["messages"].as_array().unwrap();
    let tool = msgs
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("a tool message");
    assert_eq!(tool["tool_call_id"], "call_1");
    assert!(tool["content"].as_str().unwrap().contains('3'), "{tool}");
    let call = msgs
        .iter()
        .find(|m| m["tool_calls"].is_array())
        .expect("the assistant's call");
    assert_eq!(call["tool_calls"][0]["function"]["name"], "count_records");
});

both_runtimes!(client_tools_wait_for_the_client, |rt| {
    let fake = provider(
        "/v1",
        vec![
            Reply::Stream(
                openai_tool_call("call_w", "get_weather", &json!({"city": "Paris"})),
                Duration::ZERO,
            ),
            Reply::Stream(openai_text(&["Sunny in Paris."], (5, 3)), Duration::ZERO),
        ],
    );
    let srv = openai_server(rt, &fake, &[]);
    let token = srv.token();
    let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
    let tool = json!({"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}});
    let mut s = chat_stream(
        &srv,
        &token,
        &chat,
        &json!({"message": "Weather?", "client_tools": [tool]}),
    );
    let call = s.next(Duration::from_secs(10)).expect("a client tool call");
    assert_eq!(call.event, "__client_tool_call");
    let d = data(&call);
    assert_eq!(
        (d["event"].as_str(), d["client"].as_bool()),
        (Some("tool_call"), Some(true))
    );
    assert_eq!(d["tool"], "get_weather");
    assert_eq!(d["args"], json!({"city": "Paris"}));
    // While it waits, a keepalive is fine and an unknown call id is not.
    let path = format!("/api/chat/{chat}/tool-result");
    let r = srv.call(
        &token,
        "POST",
        &path,
        &json!({"call_id": "call_w", "keepalive": true}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = srv.call(
        &token,
        "POST",
        &path,
        &json!({"call_id": "nope", "success": true}).to_string(),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = srv.call(
        &token,
        "POST",
        &path,
        &json!({"call_id": "call_w", "success": true, "result": {"sky": "sunny"}}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"ok": true}));
    let events = s.rest();
    assert_eq!(tokens(&events), "Sunny in Paris.");
    assert_eq!(last(&events).0, "done");
    // The client's tool was offered; its result reached the model.
    let reqs = fake.requests();
    assert!(reqs[0].1["tools"].to_string().contains("get_weather"));
    let msgs = reqs[1].1["messages"].as_array().unwrap();
    let result = msgs.iter().find(|m| m["role"] == "tool").unwrap();
    assert_eq!(result["tool_call_id"], "call_w");
    assert!(result["content"].as_str().unwrap().contains("sunny"));
    // Answered already: a second result is unknown.
    let r = srv.call(
        &token,
        "POST",
        &path,
        &json!({"call_id": "call_w", "success": true}).to_string(),
    );
    assert_eq!(r.status, 404);
});

// ----- cancel, disconnect, resume ------------------------------------------------------

fn slow_answer(n: usize) -> Reply {
    let words: Vec<String> = (0..n).map(|i| format!("w{i} ")).collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    Reply::Stream(openai_text(&refs, (1, n as u64)), Duration::from_millis(60))
}

both_runtimes!(cancel_stops_an_answer_and_frees_the_chat, |rt| {
    let fake = provider(
        "/v1",
        vec![
            slow_answer(200),
            Reply::Stream(openai_text(&["ok"], (1, 1)), Duration::ZERO),
        ],
    );
    let srv = openai_server(rt, &fake, &[]);
    let token = srv.token();
    let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
    let mut s = chat_stream(
        &srv,
        &token,
        &chat,
        &json!({"message": "Tell me a long story"}),
    );
    let first = s.next(Duration::from_secs(10)).unwrap();
    assert_eq!(first.event, "token");
    // One answer at a time per chat.
    let r = srv.call(
        &token,
        "POST",
        &format!("/api/chat/{chat}/messages"),
        &json!({"message": "hi"}).to_string(),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let r = srv.call(&token, "POST", &format!("/api/chat/{chat}/cancel"), "");
    assert_eq!(r.json(), json!({"cancelled": true}));
    let events = s.rest();
    let (name, d) = last(&events);
    assert_eq!(name, "error");
    assert_eq!(d["error"], "chat cancelled");
    assert!(
        d.get("error_kind").is_none(),
        "a cancel is not a provider failure"
    );
    assert!(events.len() < 150, "stopped early");
    // The partial answer is kept, marked cancelled: exactly what was streamed.
    let stored = messages(&srv, &token, &chat);
    assert_eq!(stored.len(), 2);
    assert_eq!(text_of(&stored[1], "status"), "cancelled");
    let streamed = format!(
        "{}{}",
        data(&first)["token"].as_str().unwrap(),
        tokens(&events)
    );
    assert_eq!(text_of(&stored[1], "content"), streamed.as_str());
    // The chat takes a new message.
    let r = srv.call(
        &token,
        "POST",
        &format!("/api/chat/{chat}/messages"),
        &json!({"message": "short one"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Nothing runs any more: cancelling is a clear error.
    let r = srv.call(&token, "POST", &format!("/api/chat/{chat}/cancel"), "");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("nothing to cancel"));
    // The cancelled answer is not history for the next one.
    let last = fake.requests().last().unwrap().1.clone();
    let sent: Vec<&str> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(sent, ["Tell me a long story", "short one"]);
});

both_runtimes!(a_dropped_stream_resumes_where_it_left_off, |rt| {
    let fake = provider("/v1", vec![slow_answer(40)]);
    let srv = openai_server(rt, &fake, &[]);
    let token = srv.token();
    let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
    let mut s = chat_stream(&srv, &token, &chat, &json!({"message": "Count to forty"}));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(s.next(Duration::from_secs(10)).unwrap());
    }
    let last_id = seen.last().unwrap().id.clone().unwrap();
    let (message_id, last_seq) = last_id.rsplit_once(':').unwrap();
    let (message_id, next_seq) = (message_id.to_string(), last_seq.parse::<u32>().unwrap() + 1);
    drop(s);
    // The answer runs on without its client; it resumes after the last event seen.
    let mut r = Stream::open(
        &srv,
        &token,
        "GET",
        &format!("/api/chat/{chat}/messages/{message_id}/stream"),
        &format!("Last-Event-ID: {last_id}\r\n"),
        &Value::Null,
    );
    let rest = r.rest();
    assert_eq!(
        rest[0].id.as_deref(),
        Some(format!("{message_id}:{next_seq}").as_str()),
        "no gap, no repeat"
    );
    let (name, done) = last(&rest);
    assert_eq!(name, "done");
    let mut all = seen.clone();
    all.extend(rest);
    let expected: String = (0..40).map(|i| format!("w{i} ")).collect();
    assert_eq!(tokens(&all), expected);
    assert_eq!(done["content"], expected.as_str());
    // Stored, and once finished the whole answer can be followed again.
    let stored = messages(&srv, &token, &chat);
    assert_eq!(text_of(&stored[1], "content"), expected.as_str());
    let mut again = Stream::open(
        &srv,
        &token,
        "GET",
        &format!("/api/chat/{chat}/messages/{message_id}/stream"),
        "",
        &Value::Null,
    );
    assert_eq!(tokens(&again.rest()), expected);
    // A bad resume position is refused before the stream starts.
    let r = srv.request(
        "GET",
        &format!("/api/chat/{chat}/messages/{message_id}/stream"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Last-Event-ID", "other:1"),
        ],
        "",
    );
    assert_eq!(r.status, 400, "{}", r.text());
});

both_runtimes!(raw_completions_use_the_provider, |rt| {
    let fake = provider(
        "/v1",
        vec![Reply::Stream(openai_text(&["4"], (8, 1)), Duration::ZERO)],
    );
    let srv = openai_server(rt, &fake, &[]);
    let token = srv.token();
    let body =
        json!({"system_prompt": "Answer with a number.", "message": "2+2?", "max_tokens": 5});
    let r = srv.call(&token, "POST", "/api/chat/complete", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"content": "4"}));
    let mut s = Stream::open(&srv, &token, "POST", "/api/chat/complete/stream", "", &body);
    let events = s.rest();
    assert_eq!(tokens(&events), "4");
    assert_eq!(last(&events).1["content"], "4");
    let (_, sent) = &fake.requests()[0];
    assert_eq!(sent["max_tokens"], 5);
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Answer with a number."})
    );
    assert!(sent.get("tools").is_none(), "no tools for a raw completion");
});

both_runtimes!(
    two_watchers_see_the_same_answer_and_a_restart_leaves_it_incomplete,
    |rt| {
        let fake = provider("/v1", vec![slow_answer(30)]);
        let mut srv = openai_server(rt, &fake, &[]);
        let token = srv.token();
        let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
        let mut a = chat_stream(&srv, &token, &chat, &json!({"message": "Count"}));
        let first = a.next(Duration::from_secs(10)).unwrap();
        let message_id = first
            .id
            .clone()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .0
            .to_string();
        // A second client joins the answer live: from its first event.
        let path = format!("/api/chat/{chat}/messages/{message_id}/stream");
        let mut b = Stream::open(&srv, &token, "GET", &path, "", &Value::Null);
        let mut seen_a = vec![first];
        seen_a.extend(a.rest());
        let seen_b = b.rest();
        let ids = |v: &[SseEvent]| v.iter().map(|e| e.id.clone().unwrap()).collect::<Vec<_>>();
        assert_eq!(ids(&seen_a), ids(&seen_b));
        assert_eq!(tokens(&seen_a), tokens(&seen_b));
        assert_eq!(fake.requests().len(), 1, "the provider is asked once");

        // A restart in the middle of the next answer: it stays stored,
        // incomplete, once; following it says so.
        let mut c = chat_stream(&srv, &token, &chat, &json!({"message": "Again"}));
        let first = c.next(Duration::from_secs(10)).unwrap();
        let interrupted = first.id.unwrap().rsplit_once(':').unwrap().0.to_string();
        srv.kill9();
        srv.restart();
        let token = srv.token();
        let stored = messages(&srv, &token, &chat);
        assert_eq!(stored.len(), 4, "{stored:?}");
        assert_eq!(stored[3]["id"], interrupted.as_str());
        assert_eq!(text_of(&stored[3], "status"), "incomplete");
        let path = format!("/api/chat/{chat}/messages/{interrupted}/stream");
        let events = Stream::open(&srv, &token, "GET", &path, "", &Value::Null).rest();
        let (name, d) = last(&events);
        assert_eq!(name, "error");
        assert!(d["error"].as_str().unwrap().contains("incomplete"), "{d}");
        // The chat goes on; the interrupted answer is not history.
        let r = srv.call(
            &token,
            "POST",
            &format!("/api/chat/{chat}/messages"),
            &json!({"message": "Once more"}).to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
);

both_runtimes!(bad_chat_input_is_refused_clearly, |rt| {
    let srv = TestServer::start(rt);
    let token = srv.token();
    let chat = create_chat(&srv, &token, json!({}));
    let send = |body: Value| {
        srv.call(
            &token,
            "POST",
            &format!("/api/chat/{chat}/messages"),
            &body.to_string(),
        )
    };
    let long = "x".repeat(200 * 1024);
    for (body, status, words) in [
        (json!({"message": long}), 400, "too long"),
        (json!({"message": ""}), 400, "message"),
        (json!({"text": "hi"}), 400, "message"),
        (json!({"message": 5}), 400, "message"),
        (
            json!({"message": "hi", "max_iterations": -1}),
            400,
            "max_iterations",
        ),
        (
            json!({"message": "hi", "tool_config": "all"}),
            400,
            "tool_config",
        ),
    ] {
        let r = send(body);
        assert_eq!(r.status, status, "{}", r.text());
        let e = r.json();
        assert!(e["error"].as_str().unwrap().contains(words), "{e}");
        assert!(
            e.get("error_kind").is_none(),
            "bad input is not a provider failure"
        );
    }
    assert_eq!(messages(&srv, &token, &chat).len(), 0, "nothing was stored");
    for (method, path, body, status) in [
        (
            "POST",
            "/api/chat/nope/messages".to_string(),
            json!({"message": "hi"}),
            404,
        ),
        ("GET", "/api/chat/nope".to_string(), Value::Null, 404),
        (
            "POST",
            "/api/chat".to_string(),
            json!({"llm_provider": "offline", "llm_model": "gpt-9"}),
            400,
        ),
        (
            "POST",
            "/api/chat".to_string(),
            json!({"collections": "products"}),
            400,
        ),
        (
            "POST",
            "/api/chat/branch".to_string(),
            json!({"parent_id": "nope"}),
            404,
        ),
        (
            "POST",
            format!("/api/chat/{chat}/tool-result"),
            json!({"call_id": "c9", "success": true}),
            404,
        ),
        ("POST", format!("/api/chat/{chat}/cancel"), Value::Null, 409),
        (
            "GET",
            format!("/api/chat/{chat}/messages/{chat}_000009"),
            Value::Null,
            404,
        ),
        (
            "GET",
            format!("/api/chat/{chat}/messages?sort=sideways"),
            Value::Null,
            400,
        ),
        (
            "POST",
            "/api/chat/complete".to_string(),
            json!({"system_prompt": "x"}),
            400,
        ),
        ("GET", "/api/chat_models/nope".to_string(), Value::Null, 404),
    ] {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = srv.call(&token, method, &path, &body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert_eq!(r.json()["code"], status);
    }
    // Still serving.
    assert_eq!(send(json!({"message": "hi"})).status, 200);
});

// ----- WebSocket ---------------------------------------------------------------------

mod websocket {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn connect(srv: &TestServer, token: &str) -> Ws {
        let mut req = format!("ws://{}/api/ws", srv.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade")
            .0
    }

    async fn send(ws: &mut Ws, v: Value) {
        ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    async fn next(ws: &mut Ws) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("a frame");
            if let Message::Text(t) = msg {
                return serde_json::from_str(&t).unwrap();
            }
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    both_runtimes!(
        chat_send_streams_calls_client_tools_cancels_and_resumes,
        |rt| {
            let fake = provider(
                "/v1",
                vec![
                    Reply::Stream(
                        openai_tool_call("call_9", "get_time", &json!({"tz": "UTC"})),
                        Duration::ZERO,
                    ),
                    Reply::Stream(openai_text(&["It is ", "noon."], (4, 2)), Duration::ZERO),
                    slow_answer(200),
                    Reply::Stream(
                        openai_text(&["a ", "b ", "c"], (1, 3)),
                        Duration::from_millis(20),
                    ),
                ],
            );
            let srv = openai_server(rt, &fake, &[]);
            let token = srv.token();
            let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
            block_on(async {
                let mut ws = connect(&srv, &token).await;
                let tool = json!({"name": "get_time", "description": "The time", "parameters": {"type": "object"}});
                send(&mut ws, json!({"type": "RegisterClientTools", "payload": {"chat_id": chat, "tools": [tool]}})).await;
                let ack = next(&mut ws).await;
                assert_eq!(ack["type"], "Success", "{ack}");
                assert_eq!(
                    ack["payload"]["data"],
                    json!({"status": "tools_registered", "count": 1})
                );

                // The registered tool is called; the client answers; the answer streams.
                send(&mut ws, json!({"type": "ChatSend", "payload": {"chat_id": chat, "message": "What time is it?"}})).await;
                let call = next(&mut ws).await;
                assert_eq!(call["type"], "ClientToolCall", "{call}");
                assert_eq!(call["payload"]["tool_name"], "get_time");
                assert_eq!(call["payload"]["arguments"], json!({"tz": "UTC"}));
                let call_id = call["payload"]["call_id"].as_str().unwrap().to_string();
                send(&mut ws, json!({"type": "ClientToolResult", "payload": {"chat_id": chat, "call_id": call_id, "success": true, "result": {"time": "12:00"}}})).await;
                let mut text = String::new();
                let end = loop {
                    let f = next(&mut ws).await;
                    match f["type"].as_str().unwrap() {
                        "ChatStreamChunk" => {
                            text.push_str(f["payload"]["content"].as_str().unwrap())
                        }
                        _ => break f,
                    }
                };
                assert_eq!(end["type"], "ChatStreamEnd", "{end}");
                assert_eq!(text, "It is noon.");
                assert!(end["payload"]["execution_time_ms"].is_u64());
                assert_eq!(end["payload"]["token_usage"]["prompt_tokens"], 4);
                let tool_msg = fake.requests()[1].1["messages"].to_string();
                assert!(tool_msg.contains("12:00"), "{tool_msg}");

                // Cancel from the same socket: one terminal frame, then the ack.
                send(&mut ws, json!({"type": "ChatSend", "payload": {"chat_id": chat, "message": "Long one"}})).await;
                let first = next(&mut ws).await;
                assert_eq!(first["type"], "ChatStreamChunk");
                send(
                    &mut ws,
                    json!({"type": "CancelChat", "messageId": "x1", "payload": {"chat_id": chat}}),
                )
                .await;
                let mut frames = Vec::new();
                loop {
                    let f = next(&mut ws).await;
                    let done = f["type"] == "Success";
                    frames.push(f);
                    if done {
                        break;
                    }
                }
                let terminal: Vec<&Value> = frames
                    .iter()
                    .filter(|f| f["type"] == "ChatStreamError")
                    .collect();
                assert_eq!(terminal.len(), 1, "{frames:?}");
                assert_eq!(terminal[0]["payload"]["error"], "chat cancelled");
                assert!(terminal[0]["payload"].get("error_kind").is_none());
                let ack = frames.last().unwrap();
                assert_eq!(
                    (ack["messageId"].as_str(), &ack["payload"]["data"]),
                    (Some("x1"), &json!({"cancelled": true}))
                );

                // Resume: a second socket follows the next answer from a position.
                send(
                    &mut ws,
                    json!({"type": "ChatSend", "payload": {"chat_id": chat, "message": "abc"}}),
                )
                .await;
                let first = next(&mut ws).await;
                let event_id = first["payload"]["event_id"].as_str().unwrap().to_string();
                let mut ws2 = connect(&srv, &token).await;
                send(&mut ws2, json!({"type": "ChatResume", "payload": {"chat_id": chat, "last_event_id": event_id}})).await;
                let mut rest = String::new();
                loop {
                    let f = next(&mut ws2).await;
                    match f["type"].as_str().unwrap() {
                        "ChatStreamChunk" => {
                            rest.push_str(f["payload"]["content"].as_str().unwrap())
                        }
                        "ChatStreamEnd" => break,
                        other => panic!("unexpected {other}: {f}"),
                    }
                }
                assert_eq!(
                    format!("{}{rest}", first["payload"]["content"].as_str().unwrap()),
                    "a b c"
                );
                // A message to a chat that does not exist: one terminal frame.
                send(
                    &mut ws2,
                    json!({"type": "ChatSend", "payload": {"chat_id": "nope", "message": "hi"}}),
                )
                .await;
                let e = next(&mut ws2).await;
                assert_eq!(
                    (e["type"].as_str(), e["payload"]["chat_id"].as_str()),
                    (Some("ChatStreamError"), Some("nope"))
                );
            });
        }
    );
}

both_runtimes!(
    retrieval_finds_named_fields_and_shows_only_configured_ones,
    |rt| {
        let srv = TestServer::start(rt);
        let token = srv.token();
        insert(
            &srv,
            &token,
            "products",
            json!({"name": "ekoDB Pro", "price": 99,
        "secret": "internal margin 40%", "description": "A fast database"}),
        );
        insert(
            &srv,
            &token,
            "products",
            json!({"name": "ekoDB Lite", "description": "A small database"}),
        );
        insert(
            &srv,
            &token,
            "notes",
            json!({"title": "Pricing memo", "body": "nothing about products"}),
        );
        let chat = create_chat(
            &srv,
            &token,
            json!({"collections": [
                {"collection_name": "products", "fields": ["name", "price"]},
                {"collection_name": "missing_collection"},
            ]}),
        );
        let ask = |q: &str| {
            let r = srv.call(
                &token,
                "POST",
                &format!("/api/chat/{chat}/messages"),
                &json!({"message": q}).to_string(),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        };
        // A question naming a field finds the record that has it, though the
        // price is a number no text index holds.
        let a = ask("What is the price?");
        let snippets = a["context_snippets"].as_array().unwrap();
        assert_eq!(snippets.len(), 1, "{snippets:?}");
        let s = &snippets[0];
        assert_eq!(s["collection"], "products");
        assert_eq!(s["record"]["name"], "ekoDB Pro");
        assert_eq!(s["record"]["price"], 99);
        assert!(s["matched_fields"]
            .as_array()
            .unwrap()
            .contains(&json!("price")));
        assert!(s["score"].as_f64().unwrap() > 0.0 && s["score"].as_f64().unwrap() <= 1.0);
        assert_eq!(a["responses"][0], "The price of ekoDB Pro is 99.");
        // Only the configured fields are ever shown, whatever is asked.
        for q in [
            "What is the secret margin?",
            "Describe the fast database",
            "ekoDB",
        ] {
            let a = ask(q);
            for s in a["context_snippets"].as_array().unwrap() {
                let keys: Vec<&String> = s["record"].as_object().unwrap().keys().collect();
                assert!(
                    keys.iter()
                        .all(|k| ["id", "name", "price"].contains(&k.as_str())),
                    "{q}: {keys:?}"
                );
                assert_ne!(s["collection"], "notes", "not a session collection");
            }
            assert!(!a["responses"][0].as_str().unwrap().contains("40%"), "{a}");
        }
        // A follow-up leans on the previous question.
        ask("Which product is called ekoDB Lite?");
        let a = ask("What does it cost?");
        assert_eq!(
            a["context_snippets"][0]["record"]["name"], "ekoDB Lite",
            "it is the Lite: {a}"
        );
    }
);

both_runtimes!(
    a_slow_first_token_and_a_malformed_stream_are_provider_failures,
    |rt| {
        // Nothing within --outbound-timeout: tried three times, then a failure.
        let fake = provider("/v1", vec![Reply::Silent(Duration::from_secs(5))]);
        let srv = openai_server(rt, &fake, &["--outbound-timeout", "1"]);
        let token = srv.token();
        let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
        let started = Instant::now();
        let r = srv.call(
            &token,
            "POST",
            &format!("/api/chat/{chat}/messages"),
            &json!({"message": "hi"}).to_string(),
        );
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error_kind"], "provider_unavailable");
        assert!(
            r.json()["error"].as_str().unwrap().contains("timed out"),
            "{}",
            r.text()
        );
        assert_eq!(fake.requests().len(), 3);
        assert!(started.elapsed() < Duration::from_secs(8));

        // JSON that is not JSON inside the stream.
        let fake = provider(
            "/v1",
            vec![Reply::Stream(
                vec!["data: {\"choices\": [".into(), "data: [DONE]".into()],
                Duration::ZERO,
            )],
        );
        let srv = openai_server(rt, &fake, &[]);
        let token = srv.token();
        let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
        let events = chat_stream(&srv, &token, &chat, &json!({"message": "hi"})).rest();
        let (name, d) = last(&events);
        assert_eq!(name, "error");
        assert_eq!(d["error_kind"], "provider_unavailable");
        assert!(d["error"].as_str().unwrap().contains("malformed"), "{d}");
    }
);

both_runtimes!(a_tool_the_client_must_confirm_waits_for_its_answer, |rt| {
    let fake = provider(
        "/v1",
        vec![
            Reply::Stream(
                openai_tool_call(
                    "call_d",
                    "delete_record",
                    &json!({"collection": "products", "id": "p1"}),
                ),
                Duration::ZERO,
            ),
            Reply::Stream(openai_text(&["Not deleted."], (1, 1)), Duration::ZERO),
        ],
    );
    let srv = openai_server(rt, &fake, &[]);
    let token = srv.token();
    insert(
        &srv,
        &token,
        "products",
        json!({"id": "p1", "name": "keep me"}),
    );
    let chat = create_chat(
        &srv,
        &token,
        json!({"llm_provider": "openai",
        "collections": [{"collection_name": "products"}],
        "tool_config": {"enabled": true, "allow_write_operations": true}}),
    );
    let mut s = chat_stream(
        &srv,
        &token,
        &chat,
        &json!({"message": "Delete p1", "confirm_tools": ["delete_record"]}),
    );
    let ask = s.next(Duration::from_secs(10)).unwrap();
    assert_eq!(ask.event, "__client_tool_call");
    assert_eq!(data(&ask)["tool"], "delete_record");
    let r = srv.call(
        &token,
        "POST",
        &format!("/api/chat/{chat}/tool-result"),
        &json!({"call_id": "call_d", "success": false, "error": "no"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let events = s.rest();
    assert!(
        events.iter().all(|e| e.event != "tool_result"),
        "a denied tool does not run: {events:?}"
    );
    assert_eq!(tokens(&events), "Not deleted.");
    let r = srv.call(&token, "GET", "/api/find/products/p1", "");
    assert_eq!(r.status, 200, "the record is still there: {}", r.text());
    let told = fake.requests()[1].1["messages"].to_string();
    assert!(told.contains("did not allow"), "{told}");
});

/// The official client's WebSocket chat, against a real provider's stream:
/// client tools through `ChatStreamEvent::ToolCall` and `send_tool_result`,
/// a provider failure classified, and `cancel_chat`.
mod official_client {
    use super::*;
    use ekodb_client::websocket::{ChatStreamEvent, ClientToolDefinition};
    use ekodb_client::Client;
    use tidepool_tests::API_KEY;

    /// The next event of a chat stream, failing the test after ten seconds.
    async fn next(rx: &mut tokio::sync::mpsc::Receiver<ChatStreamEvent>) -> ChatStreamEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event in time")
            .expect("the stream is open")
    }

    both_runtimes!(websocket_chat_with_client_tools_failures_and_cancel, |rt| {
        let fake = provider(
            "/v1",
            vec![
                Reply::Stream(
                    openai_tool_call("call_t", "local_time", &json!({})),
                    Duration::ZERO,
                ),
                Reply::Stream(openai_text(&["It is ", "9:41."], (6, 3)), Duration::ZERO),
                Reply::Status(
                    429,
                    "Retry-After: 30\r\n",
                    json!({"error": {"message": "Rate limit reached"}}),
                ),
                slow_answer(200),
            ],
        );
        let srv = openai_server(rt, &fake, &[]);
        let token = srv.token();
        let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let client = Client::builder()
                    .base_url(srv.base_url())
                    .api_key(API_KEY)
                    .max_retries(0)
                    .build()
                    .unwrap();
                let ws = client.connect_ws().await.unwrap();
                let tool = ClientToolDefinition {
                    name: "local_time".into(),
                    description: "The user's local time".into(),
                    parameters: json!({"type": "object", "properties": {}}),
                };
                let mut rx = ws
                    .chat_send_with_tools(
                        &chat,
                        "What time is it?",
                        Some(vec![tool]),
                        Some(3),
                        None,
                        None,
                    )
                    .await
                    .unwrap();
                let ChatStreamEvent::ToolCall {
                    call_id, tool_name, ..
                } = next(&mut rx).await
                else {
                    panic!("expected a tool call");
                };
                assert_eq!(tool_name, "local_time");
                ws.send_tool_result(&chat, &call_id, true, Some(json!({"time": "9:41"})), None)
                    .await
                    .unwrap();
                let mut text = String::new();
                loop {
                    match next(&mut rx).await {
                        ChatStreamEvent::Chunk(c) => text.push_str(&c),
                        ChatStreamEvent::End {
                            message_id,
                            token_usage,
                            ..
                        } => {
                            assert!(!message_id.is_empty());
                            assert_eq!(token_usage.unwrap()["completion_tokens"], 3);
                            break;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                assert_eq!(text, "It is 9:41.");

                // A rate limit: the classification reaches the client.
                let mut rx = ws.chat_send(&chat, "Again?").await.unwrap();
                let ChatStreamEvent::Error(e) = next(&mut rx).await else {
                    panic!("expected an error");
                };
                assert_eq!(e.error_kind.as_deref(), Some("provider_rate_limited"));
                assert_eq!(
                    (e.provider_status, e.retry_after_secs),
                    (Some(429), Some(30))
                );

                // Cancel: the stream ends with an error that is not the provider's.
                let mut rx = ws.chat_send(&chat, "A long story").await.unwrap();
                assert!(matches!(next(&mut rx).await, ChatStreamEvent::Chunk(_)));
                ws.cancel_chat(&chat).await.unwrap();
                let end = loop {
                    match next(&mut rx).await {
                        ChatStreamEvent::Chunk(_) => continue,
                        other => break other,
                    }
                };
                let ChatStreamEvent::Error(e) = end else {
                    panic!("expected the cancel, got {end:?}");
                };
                assert_eq!(e.message, "chat cancelled");
                assert!(e.error_kind.is_none());
            });
    });
}

both_runtimes!(
    eva_emotions_come_from_the_model_when_it_tags_its_answer,
    |rt| {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Message;
        let fake = provider(
            "/v1",
            vec![Reply::Stream(
                openai_text(&[" [Cur", "ious] ", "Which", " plan do you mean?"], (5, 6)),
                Duration::from_millis(5),
            )],
        );
        let srv = openai_server(rt, &fake, &[]);
        let frames: Vec<Value> = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut req = format!("ws://{}/eva/ws", srv.addr)
                .into_client_request()
                .unwrap();
            req.headers_mut().insert(
                "Authorization",
                format!("Bearer {}", tidepool_tests::API_KEY)
                    .parse()
                    .unwrap(),
            );
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            for v in [
                json!({"type": "start_conversation", "conversation_id": null}),
                json!({"type": "user_message", "content": "Tell me about the plans"}),
            ] {
                ws.send(Message::Text(v.to_string().into())).await.unwrap();
            }
            let mut frames = Vec::new();
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .expect("frames")
                    .unwrap()
                    .unwrap();
                let Message::Text(t) = msg else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "message" {
                    let last = v["is_final"] == true;
                    frames.push(v);
                    if last {
                        return frames;
                    }
                }
            }
        });
        // The tag is the model's emotion, not part of the answer.
        let text: String = frames
            .iter()
            .map(|f| f["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Which plan do you mean?");
        assert!(
            frames.iter().all(|f| f["emotion"] == "curious"),
            "{frames:?}"
        );
        // The model was asked for it.
        let system = fake.requests()[0].1["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(system.contains("[empathetic]"), "{system}");
        // The stored answer has no tag either.
        let token = srv.token();
        let r = srv.call(&token, "GET", "/api/chat", "");
        let chat = r.json()["sessions"][0]["chat_id"]
            .as_str()
            .unwrap()
            .to_string();
        let msgs = messages(&srv, &token, &chat);
        let answer = msgs
            .iter()
            .find(|m| text_of(m, "role") == "assistant")
            .unwrap();
        assert_eq!(text_of(answer, "content"), "Which plan do you mean?");
    }
);
