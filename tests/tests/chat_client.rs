//! Chat end to end through the official client (`ekodb_client` 0.32): sessions,
//! messages and their history, branch / merge / compact, the SSE and WebSocket
//! streams, models, tools and raw completions, and chats surviving `kill -9`.
//!
//! No provider key is configured, so sessions that name `openai` are answered
//! by the built-in offline provider (`tidepool-offline-v1`), which answers
//! deterministically from the records retrieval found: with the product below,
//! "What is the price of ekoDB Pro?" is answered "The price of ekoDB Pro is 99.".

use ekodb_client::websocket::{ChatStreamEvent, ClientToolDefinition};
use ekodb_client::{
    ChatMessageRequest, ChatResponse, Client, CollectionConfig, CreateChatSessionRequest, Error,
    FieldSearchOptions, GetMessagesQuery, ListSessionsQuery, MergeSessionsRequest, MergeStrategy,
    RawCompletionRequest, Record, SerializationFormat, ToggleForgottenRequest,
    UpdateMessageRequest, UpdateSessionRequest,
};
use serde_json::{json, Value};
use std::fmt::Debug;
use std::time::Duration;
use tidepool_tests::{both_runtimes, Runtime, TestServer, API_KEY};
use tokio::sync::mpsc::Receiver;

const QUESTION: &str = "What is the price of ekoDB Pro?";
const ANSWER: &str = "The price of ekoDB Pro is 99.";
const FOLLOW_UP: &str = "What about its description?";
const DESCRIPTION: &str = "A fast database with search";
const OFFLINE_MODEL: &str = "tidepool-offline-v1";

/// How long any one stream may take before the test calls it hung.
const STREAM_TIMEOUT: Duration = Duration::from_secs(15);

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
        .timeout(Duration::from_secs(20))
        .max_retries(0)
        .build()
        .expect("client")
}

#[track_caller]
fn ok<T>(r: Result<T, Error>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("call failed: {e:?}"),
    }
}

/// The call failed the way a missing session or message does: `NotFound`
/// (the typed 404) or an API error with status 404.
#[track_caller]
fn assert_404<T: Debug>(r: Result<T, Error>) {
    match r {
        Err(Error::NotFound) | Err(Error::Api { code: 404, .. }) => {}
        other => panic!("expected a 404, got {other:?}"),
    }
}

/// The one product every chat here is asked about.
async fn seed(c: &Client) -> String {
    let r = ok(c
        .insert(
            "products",
            Record::new()
                .field("name", "ekoDB Pro")
                .field("price", 99)
                .field("description", DESCRIPTION),
            None,
        )
        .await);
    r.get_string("id").expect("id").to_string()
}

fn products() -> CollectionConfig {
    CollectionConfig {
        collection_name: "products".into(),
        fields: ["name", "price", "description"]
            .into_iter()
            .map(|f| FieldSearchOptions {
                field: f.into(),
                search_options: None,
            })
            .collect(),
        search_options: None,
    }
}

fn new_session() -> CreateChatSessionRequest {
    CreateChatSessionRequest::new("openai")
        .model("gpt-4o-mini")
        .collection(products())
}

async fn create(c: &Client) -> String {
    let r = ok(c.create_chat_session(new_session()).await);
    assert!(!r.chat_id.is_empty(), "{r:?}");
    assert_eq!(r.message_id, "", "create answers with no message: {r:?}");
    assert!(
        r.responses.is_empty() && r.context_snippets.is_empty(),
        "{r:?}"
    );
    r.chat_id
}

async fn ask(c: &Client, chat_id: &str, text: &str) -> ChatResponse {
    let r = ok(c.chat_message(chat_id, ChatMessageRequest::new(text)).await);
    assert_eq!(r.chat_id, chat_id);
    assert_eq!(r.responses.len(), 1, "{r:?}");
    assert!(!r.message_id.is_empty(), "{r:?}");
    r
}

/// A message field's plain text (the record carries it wrapped).
fn text(m: &Record, key: &str) -> String {
    m.get_string(key)
        .unwrap_or_else(|| panic!("message has no string {key:?}: {}", wire(m)))
        .to_string()
}

fn wire(m: &Record) -> Value {
    serde_json::to_value(m).expect("record to JSON")
}

fn id_of(m: &Record) -> String {
    text(m, "id")
}

/// All of a chat's messages, oldest first.
async fn history(c: &Client, chat_id: &str) -> Vec<Record> {
    let r = ok(c
        .get_chat_session_messages(chat_id, GetMessagesQuery::new().sort("asc"))
        .await);
    assert_eq!(r.total, r.messages.len(), "unpaged list returns everything");
    assert_eq!(r.returned, r.messages.len());
    assert_eq!(r.skip, 0);
    r.messages
}

fn roles(ms: &[Record]) -> Vec<String> {
    ms.iter().map(|m| text(m, "role")).collect()
}

fn contents(ms: &[Record]) -> Vec<String> {
    ms.iter().map(|m| text(m, "content")).collect()
}

/// What a chat stream delivered: its chunks, then how it ended.
#[derive(Debug)]
struct Streamed {
    chunks: Vec<String>,
    end: Option<(String, u64)>,
    token_usage: Option<Value>,
    error: Option<String>,
}

impl Streamed {
    fn text(&self) -> String {
        self.chunks.concat()
    }

    #[track_caller]
    fn message_id(&self) -> String {
        match &self.end {
            Some((id, _)) => id.clone(),
            None => panic!("stream did not end normally: {self:?}"),
        }
    }
}

/// Reads a chat stream to its end (End or Error), failing the test if it
/// hangs or closes without a terminal event.
async fn drain(rx: &mut Receiver<ChatStreamEvent>) -> Streamed {
    let mut out = Streamed {
        chunks: Vec::new(),
        end: None,
        token_usage: None,
        error: None,
    };
    loop {
        let ev = tokio::time::timeout(STREAM_TIMEOUT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("stream hung after {out:?}"));
        match ev {
            Some(ChatStreamEvent::Chunk(s)) => out.chunks.push(s),
            Some(ChatStreamEvent::End {
                message_id,
                execution_time_ms,
                token_usage,
                ..
            }) => {
                out.end = Some((message_id, execution_time_ms));
                out.token_usage = token_usage;
                break;
            }
            Some(ChatStreamEvent::Error(e)) => {
                out.error = Some(e.message.clone());
                break;
            }
            Some(ChatStreamEvent::ToolCall { .. }) => panic!("unexpected tool call: {out:?}"),
            None => panic!("stream closed without an end: {out:?}"),
        }
    }
    // Nothing follows the terminal event.
    let rest = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
    assert!(
        matches!(rest, Ok(None) | Err(_)),
        "event after the end: {rest:?}"
    );
    out
}

fn raw_request(message: &str) -> RawCompletionRequest {
    RawCompletionRequest {
        system_prompt: "You answer briefly.".into(),
        message: message.into(),
        provider: Some("openai".into()),
        model: Some("gpt-4o-mini".into()),
        max_tokens: Some(64),
    }
}

// Create, list (paging, both sort orders, normalized collections), get,
// update, delete.
both_runtimes!(sessions_lifecycle, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv);
        seed(&c).await;
        let first = create(&c).await;
        let second = create(&c).await;
        assert_ne!(first, second);

        let list = ok(c
            .list_chat_sessions(ListSessionsQuery::new().limit(10).sort("desc"))
            .await);
        assert_eq!(list.total, 2);
        assert_eq!(list.returned, 2);
        let ids: Vec<&str> = list.sessions.iter().map(|s| s.chat_id.as_str()).collect();
        assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");
        let s = &list.sessions[1];
        assert_eq!(s.llm_provider, "openai");
        // With no key the offline provider stands in, and the session's
        // model says so; the model asked for is kept beside it.
        assert_eq!(s.llm_model, OFFLINE_MODEL);
        assert_eq!(s.message_count, 0);
        assert_eq!(s.collections.len(), 1);
        assert_eq!(s.collections[0].collection_name, "products");
        let fields: Vec<&str> = s.collections[0]
            .fields
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        assert_eq!(fields, ["name", "price", "description"]);
        assert!(!s.created_at.is_empty() && !s.updated_at.is_empty());

        let asc = ok(c
            .list_chat_sessions(ListSessionsQuery::new().sort("asc"))
            .await);
        let ids: Vec<&str> = asc.sessions.iter().map(|s| s.chat_id.as_str()).collect();
        assert_eq!(ids, [first.as_str(), second.as_str()], "oldest first");
        let page = ok(c
            .list_chat_sessions(ListSessionsQuery::new().limit(1).skip(1).sort("asc"))
            .await);
        assert_eq!((page.total, page.returned), (2, 1));
        assert_eq!(page.sessions[0].chat_id, second);

        // A message shows in the count.
        ask(&c, &first, QUESTION).await;
        let got = ok(c.get_chat_session(&first).await);
        assert_eq!(got.message_count, 2);
        assert_eq!(got.session.get_string("chat_id"), Some(first.as_str()));
        assert_eq!(got.session.get_string("llm_provider"), Some("openai"));
        assert_eq!(got.session.get_string("llm_model"), Some(OFFLINE_MODEL));
        assert_eq!(
            got.session.get_string("requested_model"),
            Some("gpt-4o-mini")
        );
        assert!(
            got.session
                .get_string("model_note")
                .is_some_and(|n| !n.is_empty()),
            "{:?}",
            got.session
        );

        let updated = ok(c
            .update_chat_session(
                &first,
                UpdateSessionRequest::new()
                    .title("Pricing questions")
                    .system_prompt("Answer in one sentence."),
            )
            .await);
        assert_eq!(updated.message_count, 2);
        assert_eq!(
            updated.session.get_string("title"),
            Some("Pricing questions")
        );
        assert_eq!(
            updated.session.get_string("system_prompt"),
            Some("Answer in one sentence.")
        );
        let got = ok(c.get_chat_session(&first).await);
        assert_eq!(got.session.get_string("title"), Some("Pricing questions"));
        let list = ok(c.list_chat_sessions(ListSessionsQuery::new()).await);
        let s = list
            .sessions
            .iter()
            .find(|s| s.chat_id == first)
            .expect("listed");
        assert_eq!(s.title.as_deref(), Some("Pricing questions"));
        assert_eq!(s.system_prompt.as_deref(), Some("Answer in one sentence."));
        assert_eq!(s.message_count, 2);
        // The update left the rest of the session alone.
        assert_eq!(s.llm_model, OFFLINE_MODEL);
        assert_eq!(s.collections[0].collection_name, "products");

        // Changing the model keeps the offline stand-in visible.
        let updated = ok(c
            .update_chat_session(&second, UpdateSessionRequest::new().model("gpt-4o"))
            .await);
        assert_eq!(
            updated.session.get_string("requested_model"),
            Some("gpt-4o")
        );
        assert_eq!(updated.session.get_string("llm_model"), Some(OFFLINE_MODEL));

        let first_msgs = history(&c, &first).await;
        ok(c.delete_chat_session(&first).await);
        assert_404(c.get_chat_session(&first).await);
        // Its messages went with it.
        assert_404(c.get_chat_message(&first, &id_of(&first_msgs[1])).await);
        assert_404(
            c.get_chat_session_messages(&first, GetMessagesQuery::new())
                .await,
        );
        assert_404(c.delete_chat_session(&first).await);
        let list = ok(c.list_chat_sessions(ListSessionsQuery::new()).await);
        let ids: Vec<&str> = list.sessions.iter().map(|s| s.chat_id.as_str()).collect();
        assert_eq!(ids, [second.as_str()]);
        assert_eq!(list.total, 1);

        // An unknown provider is bad input; an id with a slash is just unknown.
        match c
            .create_chat_session(CreateChatSessionRequest::new("no-such-provider"))
            .await
        {
            Err(Error::Api { code: 400, message }) => {
                assert!(message.contains("no-such-provider"), "{message}")
            }
            other => panic!("expected Api 400, got {other:?}"),
        }
        assert_404(c.get_chat_session("a/b").await);
        assert_404(c.get_chat_session("a b?c").await);
        // Sessions list newest first by default.
        let third = create(&c).await;
        let list = ok(c.list_chat_sessions(ListSessionsQuery::new()).await);
        assert_eq!(list.sessions[0].chat_id, third);
    });
});

// A question answered from the session's collection, with the snippet it
// came from; a follow-up finds the same record; an unknown chat is a 404.
both_runtimes!(message_answers_from_records, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv);
        let product = seed(&c).await;
        let chat = create(&c).await;

        let r = ask(&c, &chat, QUESTION).await;
        assert!(r.responses[0].contains(ANSWER), "{:?}", r.responses);
        let snip = r.context_snippets.first().expect("a context snippet");
        assert_eq!(snip.collection, "products");
        assert!(
            snip.matched_fields.iter().any(|f| f == "price"),
            "{:?}",
            snip.matched_fields
        );
        assert!(snip.score > 0.0 && snip.score <= 1.0, "{}", snip.score);
        // The snippet's record is plain (no type envelopes), with its id.
        assert_eq!(snip.record["id"], json!(product));
        assert_eq!(snip.record["name"], json!("ekoDB Pro"));
        assert_eq!(snip.record["price"], json!(99));
        let usage = r.token_usage.as_ref().expect("token usage");
        let (p, cpl, t) = (
            usage.prompt_tokens.expect("prompt_tokens"),
            usage.completion_tokens.expect("completion_tokens"),
            usage.total_tokens.expect("total_tokens"),
        );
        assert!(cpl > 0 && t == p + cpl, "{usage:?}");

        let r2 = ask(&c, &chat, FOLLOW_UP).await;
        assert_ne!(r2.message_id, r.message_id);
        assert!(r2.responses[0].contains(DESCRIPTION), "{:?}", r2.responses);
        let snip = r2.context_snippets.first().expect("a follow-up snippet");
        assert_eq!(snip.record["id"], json!(product));
        assert!(
            snip.matched_fields.iter().any(|f| f == "description"),
            "{:?}",
            snip.matched_fields
        );

        // `chat_message` maps no statuses: a missing chat is Api{404, error}.
        match c
            .chat_message("no-such-chat", ChatMessageRequest::new(QUESTION))
            .await
        {
            Err(Error::Api { code: 404, message }) => {
                assert!(message.contains("not found"), "{message}")
            }
            other => panic!("expected Api 404, got {other:?}"),
        }
        // Nothing was stored for the failed send, and the real chat is intact.
        assert_eq!(ok(c.get_chat_session(&chat).await).message_count, 4);
    });
});

// Listing (order, paging, wrapped roles), get, update, forget, regenerate,
// delete of single messages.
both_runtimes!(message_history, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv);
        seed(&c).await;
        let chat = create(&c).await;
        let a1 = ask(&c, &chat, QUESTION).await;
        let a2 = ask(&c, &chat, FOLLOW_UP).await;

        let ms = history(&c, &chat).await;
        assert_eq!(roles(&ms), ["user", "assistant", "user", "assistant"]);
        let texts = contents(&ms);
        assert_eq!(texts[0], QUESTION);
        assert_eq!(texts[1], a1.responses[0]);
        assert_eq!(texts[2], FOLLOW_UP);
        assert_eq!(texts[3], a2.responses[0]);
        assert_eq!(id_of(&ms[1]), a1.message_id);
        assert_eq!(id_of(&ms[3]), a2.message_id);
        // The role goes over the wire wrapped, as a typed string.
        for (m, role) in ms.iter().zip(["user", "assistant", "user", "assistant"]) {
            assert_eq!(
                wire(m)["role"],
                json!({"type": "String", "value": role}),
                "{}",
                wire(m)
            );
            assert_eq!(m.get_bool("forgotten"), Some(false), "{}", wire(m));
        }

        // Oldest first by default.
        let default = ok(c
            .get_chat_session_messages(&chat, GetMessagesQuery::new())
            .await);
        assert_eq!(contents(&default.messages), texts);
        assert_eq!(default.limit, None);
        // Newest first, and a page of it.
        let desc = ok(c
            .get_chat_session_messages(&chat, GetMessagesQuery::new().sort("desc"))
            .await);
        let mut rev = contents(&desc.messages);
        rev.reverse();
        assert_eq!(rev, texts);
        let page = ok(c
            .get_chat_session_messages(&chat, GetMessagesQuery::new().sort("asc").skip(1).limit(2))
            .await);
        assert_eq!(
            (page.total, page.skip, page.limit, page.returned),
            (4, 1, Some(2), 2)
        );
        assert_eq!(contents(&page.messages), texts[1..3]);

        // One message.
        let m = ok(c.get_chat_message(&chat, &a1.message_id).await);
        assert_eq!(id_of(&m), a1.message_id);
        assert_eq!(text(&m, "role"), "assistant");
        assert_eq!(text(&m, "content"), a1.responses[0]);
        assert_404(c.get_chat_message(&chat, "no-such-message").await);
        assert_404(
            c.update_chat_message(
                &chat,
                "no-such-message",
                UpdateMessageRequest {
                    content: "x".into(),
                },
            )
            .await,
        );
        assert_404(
            c.toggle_forgotten_message(
                &chat,
                "no-such-message",
                ToggleForgottenRequest { forgotten: true },
            )
            .await,
        );
        assert_404(c.regenerate_chat_message(&chat, "no-such-message").await);

        // Edit.
        let edited = ok(c
            .update_chat_message(
                &chat,
                &a1.message_id,
                UpdateMessageRequest {
                    content: "Edited answer".into(),
                },
            )
            .await);
        assert_eq!(text(&edited, "content"), "Edited answer");
        let m = ok(c.get_chat_message(&chat, &a1.message_id).await);
        assert_eq!(text(&m, "content"), "Edited answer");
        assert_eq!(text(&m, "role"), "assistant");

        // Forget: still listed, marked.
        let f = ok(c
            .toggle_forgotten_message(
                &chat,
                &id_of(&ms[0]),
                ToggleForgottenRequest { forgotten: true },
            )
            .await);
        assert_eq!(f.get_bool("forgotten"), Some(true), "{}", wire(&f));
        let ms = history(&c, &chat).await;
        assert_eq!(ms.len(), 4);
        assert_eq!(ms[0].get_bool("forgotten"), Some(true));
        assert_eq!(ms[1].get_bool("forgotten"), Some(false));
        // And back.
        let f = ok(c
            .toggle_forgotten_message(
                &chat,
                &id_of(&ms[0]),
                ToggleForgottenRequest { forgotten: false },
            )
            .await);
        assert_eq!(f.get_bool("forgotten"), Some(false), "{}", wire(&f));
        ok(c.toggle_forgotten_message(
            &chat,
            &id_of(&ms[0]),
            ToggleForgottenRequest { forgotten: true },
        )
        .await);

        // Regenerate the last answer: one more assistant message.
        let r = ok(c.regenerate_chat_message(&chat, &a2.message_id).await);
        assert_eq!(r.chat_id, chat);
        assert!(!r.message_id.is_empty());
        assert_ne!(r.message_id, a2.message_id);
        assert_eq!(r.responses.len(), 1);
        assert!(r.responses[0].contains(DESCRIPTION), "{:?}", r.responses);
        let ms = history(&c, &chat).await;
        assert_eq!(ms.len(), 5, "two exchanges + one regenerate");
        assert_eq!(ok(c.get_chat_session(&chat).await).message_count, 5);
        let regenerated = ok(c.get_chat_message(&chat, &r.message_id).await);
        assert_eq!(text(&regenerated, "role"), "assistant");
        assert_eq!(text(&regenerated, "content"), r.responses[0]);
        // The answer it replaces stays.
        assert_eq!(
            text(
                &ok(c.get_chat_message(&chat, &a2.message_id).await),
                "content"
            ),
            a2.responses[0]
        );

        // Delete.
        ok(c.delete_chat_message(&chat, &a1.message_id).await);
        assert_404(c.get_chat_message(&chat, &a1.message_id).await);
        assert_404(c.delete_chat_message(&chat, &a1.message_id).await);
        let ms = history(&c, &chat).await;
        assert_eq!(ms.len(), 4);
        assert!(ms.iter().all(|m| id_of(m) != a1.message_id));
        assert_eq!(ok(c.get_chat_session(&chat).await).message_count, 4);
        // Messages of a missing chat.
        assert_404(c.get_chat_message("no-such-chat", &a2.message_id).await);
    });
});

// Branch copies the parent's first messages; merge copies sources into the
// target; compact folds older messages into a summary, once.
both_runtimes!(branch_merge_compact, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv);
        seed(&c).await;
        let parent = create(&c).await;
        ask(&c, &parent, QUESTION).await;
        ask(&c, &parent, FOLLOW_UP).await;
        let parent_msgs = history(&c, &parent).await;
        assert_eq!(parent_msgs.len(), 4);

        // Branch at index 1: messages 0 and 1.
        let b = ok(c
            .branch_chat_session(CreateChatSessionRequest::new("openai").branch_from(&parent, 1))
            .await);
        let branch = b.chat_id.clone();
        assert!(!branch.is_empty() && branch != parent, "{b:?}");
        let branch_msgs = history(&c, &branch).await;
        assert_eq!(roles(&branch_msgs), ["user", "assistant"]);
        assert_eq!(contents(&branch_msgs), contents(&parent_msgs[..2]));
        assert_eq!(ok(c.get_chat_session(&branch).await).message_count, 2);
        // The parent is untouched.
        assert_eq!(history(&c, &parent).await.len(), 4);
        // The branch keeps the parent's settings (the client always sends
        // `collections: []`), so it still answers from the products.
        let list = ok(c.list_chat_sessions(ListSessionsQuery::new()).await);
        let bs = list
            .sessions
            .iter()
            .find(|s| s.chat_id == branch)
            .expect("branch listed");
        assert_eq!(bs.collections.len(), 1, "{bs:?}");
        assert_eq!(bs.collections[0].collection_name, "products");
        // A branch of a missing chat.
        assert_404(
            c.branch_chat_session(CreateChatSessionRequest::new("openai").branch_from("nope", 0))
                .await,
        );

        // Merge the parent (4) and a fresh one-exchange chat (2) into the branch (2).
        let other = create(&c).await;
        ask(&c, &other, "What is the description of ekoDB Pro?").await;
        let merged = ok(c
            .merge_chat_sessions(MergeSessionsRequest {
                source_chat_ids: vec![parent.clone(), other.clone()],
                target_chat_id: branch.clone(),
                merge_strategy: MergeStrategy::Chronological,
                bypass_ripple: None,
            })
            .await);
        assert_eq!(merged.message_count, 2 + 4 + 2);
        assert_eq!(merged.session.get_string("chat_id"), Some(branch.as_str()));
        let target = history(&c, &branch).await;
        assert_eq!(target.len(), 8);
        let all = contents(&target);
        for t in contents(&parent_msgs)
            .into_iter()
            .chain(contents(&history(&c, &other).await))
        {
            assert!(all.contains(&t), "{t:?} missing from {all:?}");
        }
        // Sources keep their messages.
        assert_eq!(history(&c, &parent).await.len(), 4);
        assert_eq!(history(&c, &other).await.len(), 2);
        assert_404(
            c.merge_chat_sessions(MergeSessionsRequest {
                source_chat_ids: vec![parent.clone()],
                target_chat_id: "nope".into(),
                merge_strategy: MergeStrategy::Chronological,
                bypass_ripple: None,
            })
            .await,
        );

        // With the default (keep 50) four messages are already compact.
        let r = ok(c.compact_chat(&parent, None).await);
        assert!(r.already_compact && r.folded == 0, "{r:?}");
        // Compact the parent, keeping the last message.
        let r = ok(c.compact_chat(&parent, Some(1)).await);
        assert!(!r.already_compact, "{r:?}");
        assert_eq!(r.folded, 3, "{r:?}");
        assert_eq!(r.kept_recent, 1, "{r:?}");
        assert!(r.summary_chars > 0, "{r:?}");
        let summary_id = r.summary_message_id.clone().expect("summary message id");
        let summary = ok(c.get_chat_message(&parent, &summary_id).await);
        assert_eq!(
            text(&summary, "content").chars().count(),
            r.summary_chars,
            "{}",
            wire(&summary)
        );
        let ms = history(&c, &parent).await;
        assert_eq!(ms.len(), 5, "the originals stay, plus the summary");
        let forgotten = ms
            .iter()
            .filter(|m| m.get_bool("forgotten") == Some(true))
            .count();
        assert_eq!(forgotten, 3);
        assert!(ms.iter().any(|m| id_of(m) == summary_id));

        let again = ok(c.compact_chat(&parent, Some(1)).await);
        assert!(again.already_compact, "{again:?}");
        assert_eq!(again.folded, 0);
        assert_eq!(again.summary_chars, 0);
        assert_eq!(again.summary_message_id, None);
        assert_eq!(history(&c, &parent).await.len(), 5);

        // The compacted chat still answers.
        let r = ask(&c, &parent, QUESTION).await;
        assert!(r.responses[0].contains(ANSWER), "{:?}", r.responses);
        assert_404(c.compact_chat("nope", None).await);
    });
});

// SSE: chunks that add up to the stored answer, then the end.
both_runtimes!(sse_stream, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv);
        seed(&c).await;
        let chat = create(&c).await;

        let mut rx = ok(c
            .chat_message_stream(&chat, ChatMessageRequest::new(QUESTION))
            .await);
        let s = drain(&mut rx).await;
        assert_eq!(s.error, None, "{s:?}");
        assert!(s.chunks.len() > 1, "streamed in pieces: {s:?}");
        assert!(s.chunks.iter().all(|c| !c.is_empty()), "{s:?}");
        assert!(s.text().contains(ANSWER), "{s:?}");
        let mid = s.message_id();
        assert!(!mid.is_empty());
        let usage = s.token_usage.as_ref().expect("token usage on done");
        assert!(
            usage["total_tokens"].as_u64().is_some_and(|t| t > 0),
            "{usage}"
        );

        let stored = ok(c.get_chat_message(&chat, &mid).await);
        assert_eq!(text(&stored, "role"), "assistant");
        assert_eq!(text(&stored, "content"), s.text());
        let ms = history(&c, &chat).await;
        assert_eq!(roles(&ms), ["user", "assistant"]);
        assert_eq!(contents(&ms), [QUESTION.to_string(), s.text()]);

        // A second streamed turn follows up on the first.
        let mut rx = ok(c
            .chat_message_stream(&chat, ChatMessageRequest::new(FOLLOW_UP))
            .await);
        let s2 = drain(&mut rx).await;
        assert!(s2.text().contains(DESCRIPTION), "{s2:?}");
        assert_ne!(s2.message_id(), mid);
        assert_eq!(history(&c, &chat).await.len(), 4);

        // A missing chat is refused before the stream starts.
        match c
            .chat_message_stream("no-such-chat", ChatMessageRequest::new(QUESTION))
            .await
        {
            Err(Error::Api { code: 404, .. }) => {}
            other => panic!("expected Api 404, got {:?}", other.map(|_| "a stream")),
        }
    });
});

// WebSocket: a streamed turn, a turn for a missing chat, a raw completion,
// client tool registration.
both_runtimes!(websocket_chat, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv);
        seed(&c).await;
        let chat = create(&c).await;
        let ws = ok(c.connect_ws().await);

        let mut rx = ok(ws.chat_send(&chat, QUESTION).await);
        let s = drain(&mut rx).await;
        assert_eq!(s.error, None, "{s:?}");
        assert!(s.chunks.len() > 1, "streamed in pieces: {s:?}");
        assert!(s.text().contains(ANSWER), "{s:?}");
        let mid = s.message_id();
        assert!(!mid.is_empty());
        let stored = ok(c.get_chat_message(&chat, &mid).await);
        assert_eq!(text(&stored, "content"), s.text());
        assert_eq!(roles(&history(&c, &chat).await), ["user", "assistant"]);

        let mut rx = ok(ws.chat_send("no-such-chat", QUESTION).await);
        let e = drain(&mut rx).await;
        assert!(e.end.is_none() && e.chunks.is_empty(), "{e:?}");
        let msg = e.error.expect("an error");
        assert!(msg.contains("not found"), "{msg}");

        let tools = vec![ClientToolDefinition {
            name: "get_weather".into(),
            description: "The weather in a city".into(),
            parameters: json!({"type":"object","properties":{"city":{"type":"string"}}}),
        }];
        let reg = tokio::time::timeout(STREAM_TIMEOUT, ws.register_client_tools(&chat, tools))
            .await
            .expect("register_client_tools hung");
        ok(reg);
        // A client tool may not take a built-in tool's name.
        let clash = vec![ClientToolDefinition {
            name: "count_records".into(),
            description: "Shadows the server tool".into(),
            parameters: json!({"type": "object"}),
        }];
        match tokio::time::timeout(STREAM_TIMEOUT, ws.register_client_tools(&chat, clash))
            .await
            .expect("register_client_tools hung")
        {
            Err(Error::Api { code: 400, message }) => {
                assert!(message.contains("count_records"), "{message}")
            }
            other => panic!("expected Api 400, got {other:?}"),
        }
        // Fire-and-forget frames get no reply, so the next request's answer
        // is its own: a cancel with nothing streaming, a result nobody awaits.
        ok(ws.cancel_chat(&chat).await);
        ok(ws
            .send_tool_result(&chat, "no-such-call", true, Some(json!(1)), None)
            .await);

        let raw =
            tokio::time::timeout(STREAM_TIMEOUT, ws.raw_completion(&raw_request("Say hello")))
                .await
                .expect("raw completion hung");
        assert!(!ok(raw).content.is_empty());

        // The connection still carries turns afterwards.
        let mut rx = ok(ws.chat_send(&chat, FOLLOW_UP).await);
        let s2 = drain(&mut rx).await;
        assert!(s2.text().contains(DESCRIPTION), "{s2:?}");
        assert_eq!(history(&c, &chat).await.len(), 4);
        ok(ws.close().await);
    });
});

// Models, the tool catalogue and execution, raw completions.
both_runtimes!(models_tools_raw, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv);
        seed(&c).await;

        let models = ok(c.get_chat_models().await);
        assert!(!models.providers.is_empty(), "{models:?}");
        assert!(models.providers.contains_key("openai"), "{models:?}");
        let offline = ok(c.get_chat_model("offline").await);
        assert!(
            offline.iter().any(|m| m == "tidepool-offline-v1"),
            "{offline:?}"
        );
        // Listing a provider works even when it has no models.
        ok(c.get_chat_model("openai").await);
        assert_404(c.get_chat_model("nope").await);

        let tools = ok(c.get_chat_tools().await);
        assert!(!tools.is_empty());
        let names: Vec<&str> = tools
            .iter()
            .map(|t| t["name"].as_str().expect("tool name"))
            .collect();
        assert!(names.contains(&"count_records"), "{names:?}");
        for t in &tools {
            assert!(t["description"].is_string(), "{t}");
            assert!(t["parameters"].is_object(), "{t}");
        }

        let r = c
            .execute_tool("count_records", &json!({"collection": "products"}), None)
            .await
            .expect("the endpoint is supported");
        let v = ok(r);
        let count = v["count"]
            .as_u64()
            .or_else(|| v.as_u64())
            .unwrap_or_else(|| panic!("no count in {v}"));
        assert_eq!(count, 1, "{v}");
        // An unknown tool fails as a tool failure, not as "unsupported".
        match c.execute_tool("no_such_tool", &json!({}), None).await {
            Some(Err(Error::ToolExecution(msg))) => assert!(!msg.is_empty()),
            other => panic!("expected a tool failure, got {other:?}"),
        }

        let raw = ok(c.raw_completion(raw_request("Say hello")).await);
        assert!(!raw.content.is_empty());
        let streamed = ok(c.raw_completion_stream(raw_request("Say hello")).await);
        assert!(!streamed.content.is_empty());
        assert_eq!(
            streamed.content, raw.content,
            "deterministic offline answer"
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let progress = ok(c
            .raw_completion_stream_with_progress(raw_request("Say hello"), tx)
            .await);
        let mut tokens = Vec::new();
        while let Ok(Some(t)) = tokio::time::timeout(STREAM_TIMEOUT, rx.recv()).await {
            tokens.push(t);
        }
        assert!(!tokens.is_empty());
        assert_eq!(tokens.concat(), progress.content);
        assert_eq!(progress.content, raw.content);
        let ws = ok(c.connect_ws().await);
        let over_ws =
            tokio::time::timeout(STREAM_TIMEOUT, ws.raw_completion(&raw_request("Say hello")))
                .await
                .expect("raw completion hung");
        assert_eq!(ok(over_ws).content, raw.content);

        // Tool execution scoped to a chat.
        let chat = create(&c).await;
        let v = ok(c
            .execute_tool(
                "count_records",
                &json!({"collection": "products"}),
                Some(&chat),
            )
            .await
            .expect("the endpoint is supported"));
        assert_eq!(v["count"].as_u64().or_else(|| v.as_u64()), Some(1), "{v}");
    });
});

// Sessions, settings and messages survive kill -9.
both_runtimes!(survives_kill9, |rt: Runtime| {
    let mut srv = TestServer::start(rt);
    let (chat, before) = block_on(async {
        let c = client(&srv);
        seed(&c).await;
        let chat = create(&c).await;
        ask(&c, &chat, QUESTION).await;
        let mut rx = ok(c
            .chat_message_stream(&chat, ChatMessageRequest::new(FOLLOW_UP))
            .await);
        drain(&mut rx).await.message_id();
        ok(
            c.update_chat_session(&chat, UpdateSessionRequest::new().title("Kept"))
                .await,
        );
        let before = history(&c, &chat).await;
        (chat, before)
    });
    assert_eq!(before.len(), 4);

    srv.kill9();
    srv.restart();

    block_on(async {
        let c = client(&srv);
        let got = ok(c.get_chat_session(&chat).await);
        assert_eq!(got.message_count, 4);
        assert_eq!(got.session.get_string("title"), Some("Kept"));
        let list = ok(c.list_chat_sessions(ListSessionsQuery::new()).await);
        let s = list
            .sessions
            .iter()
            .find(|s| s.chat_id == chat)
            .expect("listed");
        assert_eq!(s.llm_provider, "openai");
        assert_eq!(s.llm_model, OFFLINE_MODEL);
        assert_eq!(s.collections[0].collection_name, "products");
        assert_eq!(
            got.session.get_string("requested_model"),
            Some("gpt-4o-mini")
        );
        let after = history(&c, &chat).await;
        let ids = |ms: &[Record]| ms.iter().map(id_of).collect::<Vec<_>>();
        assert_eq!(ids(&after), ids(&before));
        assert_eq!(contents(&after), contents(&before));
        assert_eq!(roles(&after), roles(&before));
        // And the chat carries on.
        let r = ask(&c, &chat, QUESTION).await;
        assert!(r.responses[0].contains(ANSWER), "{:?}", r.responses);
        assert_eq!(history(&c, &chat).await.len(), 6);
    });
});

async fn merge_into(c: &Client, sources: &[&str], strategy: MergeStrategy) -> Vec<Record> {
    let target = create(c).await;
    let r = ok(c
        .merge_chat_sessions(MergeSessionsRequest {
            source_chat_ids: sources.iter().map(|s| s.to_string()).collect(),
            target_chat_id: target.clone(),
            merge_strategy: strategy,
            bypass_ripple: None,
        })
        .await);
    let ms = history(c, &target).await;
    assert_eq!(r.message_count, ms.len());
    ms
}

// The four merge strategies, from two chats whose turns interleave in time:
// A asks, B asks, A asks again.
both_runtimes!(merge_strategies, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv);
        seed(&c).await;
        let a = create(&c).await;
        let b = create(&c).await;
        let b_question = "What is the description of ekoDB Pro?";
        ask(&c, &a, QUESTION).await;
        ask(&c, &b, b_question).await;
        ask(&c, &a, FOLLOW_UP).await;
        let am = contents(&history(&c, &a).await);
        let bm = contents(&history(&c, &b).await);
        assert_eq!((am.len(), bm.len()), (4, 2));

        let chrono = merge_into(&c, &[&a, &b], MergeStrategy::Chronological).await;
        assert_eq!(
            contents(&chrono),
            [&am[0], &am[1], &bm[0], &bm[1], &am[2], &am[3]].map(String::clone)
        );
        assert_eq!(
            roles(&chrono),
            [
                "user",
                "assistant",
                "user",
                "assistant",
                "user",
                "assistant"
            ]
        );

        let inter = merge_into(&c, &[&a, &b], MergeStrategy::Interleaved).await;
        assert_eq!(
            contents(&inter),
            [&am[0], &bm[0], &am[1], &bm[1], &am[2], &am[3]].map(String::clone)
        );

        let latest = merge_into(&c, &[&a, &b], MergeStrategy::LatestOnly).await;
        assert_eq!(
            contents(&latest),
            [&am[2], &am[3], &bm[0], &bm[1]].map(String::clone)
        );

        let summarized = merge_into(&c, &[&a, &b], MergeStrategy::Summarized).await;
        assert_eq!(summarized.len(), 2, "one summary per source");
        for (m, src) in summarized.iter().zip([&a, &b]) {
            assert_eq!(text(m, "role"), "system");
            let t = text(m, "content");
            assert!(t.contains(src.as_str()), "{t}");
        }
        assert!(text(&summarized[0], "content").contains(QUESTION));

        // The sources are unchanged; a chat cannot be merged into itself.
        assert_eq!(contents(&history(&c, &a).await), am);
        match c
            .merge_chat_sessions(MergeSessionsRequest {
                source_chat_ids: vec![a.clone()],
                target_chat_id: a.clone(),
                merge_strategy: MergeStrategy::Chronological,
                bypass_ripple: None,
            })
            .await
        {
            Err(Error::Api { code: 400, .. }) => {}
            other => panic!("expected Api 400, got {other:?}"),
        }
        assert_404(
            c.merge_chat_sessions(MergeSessionsRequest {
                source_chat_ids: vec!["nope".into()],
                target_chat_id: a.clone(),
                merge_strategy: MergeStrategy::Chronological,
                bypass_ripple: None,
            })
            .await,
        );
        assert_eq!(
            history(&c, &a).await.len(),
            4,
            "a failed merge copies nothing"
        );
    });
});

// Tool execution follows the chat's policy: its collections only, no
// internal collections, no writes unless allowed.
both_runtimes!(tool_policy, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv);
        seed(&c).await;
        ok(c.insert("other", Record::new().field("x", 1), None).await);
        let chat = create(&c).await;
        ask(&c, &chat, QUESTION).await;
        let run = |tool: &'static str, params: Value, chat: Option<String>| {
            let c = c.clone();
            async move {
                c.execute_tool(tool, &params, chat.as_deref())
                    .await
                    .expect("the endpoint is supported")
            }
        };
        let refused = |r: Result<Value, Error>| match r {
            Err(Error::ToolExecution(msg)) => msg,
            other => panic!("expected a refused tool call, got {other:?}"),
        };

        // Without a chat any user collection is open; with one, only its own.
        let v = ok(run("count_records", json!({"collection": "other"}), None).await);
        assert_eq!(v["count"], json!(1), "{v}");
        let msg = refused(
            run(
                "count_records",
                json!({"collection": "other"}),
                Some(chat.clone()),
            )
            .await,
        );
        assert!(msg.contains("other"), "{msg}");
        let v = ok(run("list_collections", json!({}), Some(chat.clone())).await);
        assert_eq!(v["collections"], json!(["products"]), "{v}");
        // The chat's own storage is never reachable through tools.
        let v = ok(run("list_collections", json!({}), None).await);
        let names = v["collections"].as_array().expect("collections");
        assert!(
            names
                .iter()
                .all(|n| !n.as_str().unwrap_or("").contains("chat")),
            "{v}"
        );
        for hidden in ["chat_messages__ek0_tidepool", "chat_sessions__ek0_tidepool"] {
            refused(run("count_records", json!({"collection": hidden}), None).await);
            refused(run("find_records", json!({"collection": hidden}), None).await);
        }
        // Writes need the tool config's permission.
        let msg = refused(
            run(
                "insert_record",
                json!({"collection": "products", "record": {"name": "x"}}),
                Some(chat.clone()),
            )
            .await,
        );
        assert!(msg.contains("write"), "{msg}");
        let all = ok(c.find("products", ekodb_client::Query::new(), None).await);
        assert_eq!(all.len(), 1, "nothing was written");
        // Bad arguments are a tool failure too.
        refused(run("count_records", json!({}), None).await);
    });
});

// `execute_tool` reads a 404 (or 405) as "this server has no tool endpoint"
// and returns None, so a missing chat must not be answered with 404.
both_runtimes!(execute_tool_unknown_chat, |rt: Runtime| {
    let srv = TestServer::start(rt);
    block_on(async {
        let c = client(&srv);
        seed(&c).await;
        match c
            .execute_tool(
                "count_records",
                &json!({"collection": "products"}),
                Some("no-such-chat"),
            )
            .await
        {
            Some(Err(Error::ToolExecution(msg))) => {
                assert!(msg.contains("not found"), "{msg}")
            }
            Some(Err(Error::Api { code: 400, .. })) => {}
            other => panic!("expected a tool failure for an unknown chat, got {other:?}"),
        }
    });
});
