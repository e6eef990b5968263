//! The document folder (EVA's `RAG_DOCS_FOLDER`, `--rag-docs-folder`) end
//! to end against both runtimes: Markdown and text files become chunk
//! records with their file names as sources, searchable by text and
//! vector, cited by an EVA answer; an edited file's chunks are replaced, a
//! deleted file's go, and a restart re-reads nothing that did not change.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tidepool_tests::{both_runtimes, TestServer, API_KEY};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const PRICING: &str = "# Pricing\n\nekoDB Pro costs 99 dollars a month.\n\n## Support\n\nWrite to support@example.com at any hour.\n";
const FAQ: &str = "Tidepool is one binary. It keeps its data in one folder.\n";

/// The chunk records, waiting until `done` holds for them (or 15 s pass).
fn chunks_when(srv: &TestServer, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let token = srv.token();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = srv.call(&token, "POST", "/api/find/documents", "{}");
        let rows: Vec<Value> = if r.status == 200 {
            r.json().as_array().cloned().unwrap_or_default()
        } else {
            Vec::new()
        };
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "documents never got there: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A field's plain value (records come typed: `{"type", "value"}`).
fn field<'a>(row: &'a Value, name: &str) -> &'a Value {
    let v = &row[name];
    if v.get("value").is_some() {
        &v["value"]
    } else {
        v
    }
}

fn sources(rows: &[Value]) -> Vec<String> {
    let mut s: Vec<String> = rows
        .iter()
        .map(|r| field(r, "source").as_str().unwrap_or_default().to_string())
        .collect();
    s.sort();
    s
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

async fn eva_sources(srv: &TestServer, question: &str) -> Vec<String> {
    let mut req = format!("ws://{}/eva/ws", srv.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {API_KEY}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(
        json!({"type": "start_conversation", "conversation_id": null}),
    ))
    .await
    .unwrap();
    ws.send(send(json!({"type": "user_message", "content": question})))
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer")
            .unwrap()
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "message" && v["is_final"] == true {
            return v["metadata"]["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
        }
    }
}

both_runtimes!(a_document_folder_is_ingested_kept_in_sync_and_cited, |rt| {
    let folder = tempfile::tempdir().unwrap();
    write(folder.path(), "pricing.md", PRICING);
    std::fs::create_dir(folder.path().join("guides")).unwrap();
    write(&folder.path().join("guides"), "faq.txt", FAQ);
    write(folder.path(), "image.png", "not a document");
    let dir = folder.path().to_str().unwrap().to_string();
    let mut srv =
        TestServer::start_with(rt, &["--rag-docs-folder", &dir, "--rag-scan-interval", "1"]);
    // A heading starts a chunk: two from the Markdown, one from the text.
    let rows = chunks_when(&srv, |rows| rows.len() == 3);
    assert_eq!(
        sources(&rows),
        ["guides/faq.txt", "pricing.md", "pricing.md"]
    );
    let support = rows
        .iter()
        .find(|r| field(r, "section") == "Support")
        .expect("the Support section");
    assert_eq!(field(support, "title"), "Pricing");
    assert!(field(support, "content")
        .as_str()
        .unwrap()
        .contains("support@example.com"));
    assert!(!rows[0]["embedding"].is_null(), "chunks carry an embedding");

    // Text search finds the chunk; the chat cites the file.
    let token = srv.token();
    let r = srv.call(
        &token,
        "POST",
        "/api/search/documents",
        &json!({"query": "support hour"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("support@example.com"), "{}", r.text());
    let cited = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(eva_sources(&srv, "How much does ekoDB Pro cost per month?"));
    assert!(cited.iter().any(|s| s == "pricing.md"), "{cited:?}");

    // An edit replaces the file's chunks; a deletion removes them.
    write(
        &folder.path().join("guides"),
        "faq.txt",
        "Tidepool also speaks four chat protocols, and more.\n",
    );
    std::fs::remove_file(folder.path().join("pricing.md")).unwrap();
    let rows = chunks_when(&srv, |rows| {
        rows.len() == 1
            && field(&rows[0], "content")
                .as_str()
                .is_some_and(|c| c.contains("chat protocols"))
    });
    assert_eq!(sources(&rows), ["guides/faq.txt"]);
    let stamp = field(&rows[0], "updated_at").clone();

    // After a crash nothing unchanged is read again, and nothing doubles.
    srv.kill9();
    srv.restart();
    std::thread::sleep(Duration::from_millis(2500));
    let rows = chunks_when(&srv, |rows| rows.len() == 1);
    assert_eq!(
        field(&rows[0], "updated_at"),
        &stamp,
        "re-ingested an unchanged file"
    );
});
