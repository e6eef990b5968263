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
use tidepool_core::wire::sse::{SseDecoder, SseEvent};
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

/// An SSE answer read from a plain socket.
struct Stream {
    socket: TcpStream,
    decoder: SseDecoder,
    pending: VecDeque<SseEvent>,
    closed: bool,
}

impl Stream {
    fn open(
        srv: &TestServer,
        token: &str,
        method: &str,
        path: &str,
        headers: &str,
        body: &Value,
    ) -> Stream {
        let mut socket = TcpStream::connect(srv.addr).unwrap();
        let body = body.to_string();
        write!(
            socket,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/event-stream"), "{head}");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Stream {
            socket,
            decoder: SseDecoder::default(),
            pending: VecDeque::new(),
            closed: false,
        }
    }

    fn chat(srv: &TestServer, token: &str, chat: &str, body: &Value) -> Stream {
        Stream::open(
            srv,
            token,
            "POST",
            &format!("/api/chat/{chat}/messages/stream"),
            "",
            body,
        )
    }

    /// The next event (comments skipped), or None when the server closed.
    fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.closed || Instant::now() > deadline {
                return None;
            }
            let mut buf = [0u8; 16 * 1024];
            match self.socket.read(&mut buf) {
                Ok(0) => self.closed = true,
                Ok(n) => self.pending.extend(self.decoder.push(&buf[..n])),
                Err(_) => {}
            }
        }
    }

    /// Every event until the server closes the stream.
    fn rest(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next(Duration::from_secs(20)) {
            out.push(e);
        }
        assert!(self.closed, "the stream did not end: {out:?}");
        out
    }
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
    let mut s = Stream::chat(
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
    // Every event has a resumable id, in order.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.id.as_deref(),
            Some(format!("{}:{i}", done["message_id"].as_str().unwrap()).as_str())
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
        let mut s = Stream::chat(&srv, &token, &chat, &json!({"message": "again"}));
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
        let mut s = Stream::chat(&srv, &token, &chat, &json!({"message": "hi"}));
        let events = s.rest();
        assert_eq!(tokens(&events), "half ");
        let (name, d) = last(&events);
        assert_eq!(name, "error");
        assert_eq!(d["error_kind"], "provider_unavailable", "{d}");
        assert_eq!(fake.requests().len(), 1);
        assert_eq!(
            messages(&srv, &token, &chat).len(),
            1,
            "no partial answer is stored"
        );

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
    let mut s = Stream::chat(
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
    let mut s = Stream::chat(
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
    let mut s = Stream::chat(
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
    assert_eq!(
        messages(&srv, &token, &chat).len(),
        1,
        "the partial answer is not stored"
    );
    // The chat takes a new message.
    let r = srv.call(
        &token,
        "POST",
        &format!("/api/chat/{chat}/messages"),
        &json!({"message": "short one"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = srv.call(&token, "POST", &format!("/api/chat/{chat}/cancel"), "");
    assert_eq!(r.json(), json!({"cancelled": false}));
});

both_runtimes!(a_dropped_stream_resumes_where_it_left_off, |rt| {
    let fake = provider("/v1", vec![slow_answer(40)]);
    let srv = openai_server(rt, &fake, &[]);
    let token = srv.token();
    let chat = create_chat(&srv, &token, json!({"llm_provider": "openai"}));
    let mut s = Stream::chat(&srv, &token, &chat, &json!({"message": "Count to forty"}));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(s.next(Duration::from_secs(10)).unwrap());
    }
    let last_id = seen.last().unwrap().id.clone().unwrap();
    let message_id = last_id.rsplit_once(':').unwrap().0.to_string();
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
        Some(format!("{message_id}:3").as_str()),
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
