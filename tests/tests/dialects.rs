//! The seed products' chat sockets end to end with a raw WebSocket client,
//! against both runtimes: General Bots (`/ws`, `/ws/meet`), Fluxbase
//! (`/ai/ws`) and EVA (`/eva/ws`), every frame, error code and close code of
//! `spec/dialects.md`, and one conversation crossing dialects (started over
//! EVA, watched from General Bots, read back through the ekoDB API).
//!
//! No provider key is configured: the built-in offline provider answers from
//! the records retrieval finds, deterministically ("The price of ekoDB Pro is
//! 99.").

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tidepool_tests::{both_runtimes, Runtime, TestServer, API_KEY};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const QUESTION: &str = "What is the price of ekoDB Pro?";
const ANSWER: &str = "The price of ekoDB Pro is 99.";
const WAIT: Duration = Duration::from_secs(10);
/// General Bots' documented connections per IP (seed 001:223).
const GB_CONNECTIONS_PER_IP: usize = 100;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A server with one product record for retrieval to find.
fn server(rt: Runtime) -> TestServer {
    let srv = TestServer::start(rt);
    srv.insert(
        "products",
        &json!({"name": "ekoDB Pro", "price": 99, "description": "A fast database with search"}),
    );
    srv
}

fn request(srv: &TestServer, path: &str) -> Request<()> {
    format!("ws://{}{path}", srv.addr)
        .into_client_request()
        .unwrap()
}

async fn open(req: Request<()>) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

/// What the socket says next: a JSON frame, or how it closed.
#[derive(Debug, PartialEq)]
enum Said {
    Frame(Value),
    Closed(Option<u16>),
    Silent,
}

async fn next(ws: &mut Ws, wait: Duration) -> Said {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Ok(msg) = tokio::time::timeout_at(deadline, ws.next()).await else {
            return Said::Silent;
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                return Said::Frame(serde_json::from_str(&t).expect("a JSON frame"))
            }
            Some(Ok(Message::Close(c))) => return Said::Closed(c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Said::Closed(None),
        }
    }
}

#[track_caller]
fn frame(said: Said) -> Value {
    match said {
        Said::Frame(v) => v,
        other => panic!("expected a frame, got {other:?}"),
    }
}

async fn recv(ws: &mut Ws) -> Value {
    frame(next(ws, WAIT).await)
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// Frames until one of type `until` (inclusive).
async fn until(ws: &mut Ws, until: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = recv(ws).await;
        let done = v["type"] == until;
        out.push(v);
        if done {
            return out;
        }
    }
}

fn of_type<'a>(frames: &'a [Value], kind: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == kind).collect()
}

// ----- General Bots -------------------------------------------------------------

async fn gb_connect(srv: &TestServer) -> (Ws, String) {
    let mut ws = open(request(srv, &format!("/ws?token={}", srv.token()))).await;
    let created = recv(&mut ws).await;
    assert_eq!(created["type"], "session_created", "{created}");
    let session = created["session_id"].as_str().unwrap().to_string();
    (ws, session)
}

both_runtimes!(general_bots_streams_an_answer_token_by_token, |rt| {
    let srv = server(rt);
    block_on(async {
        let (mut ws, session) = gb_connect(&srv).await;
        send(
            &mut ws,
            json!({"type": "message", "session_id": session, "content": QUESTION}),
        )
        .await;
        let frames = until(&mut ws, "stream_end").await;
        let start = &frames[0];
        assert_eq!(start["type"], "stream_start");
        assert_eq!(start["session_id"], session.as_str());
        let mid = start["message_id"].as_str().unwrap();
        assert!(of_type(&frames, "bot_typing")
            .iter()
            .any(|f| f["is_typing"] == true));
        let chunks = of_type(&frames, "stream_chunk");
        assert!(chunks.len() >= 2, "{frames:?}");
        assert!(chunks.iter().all(|c| c["message_id"] == mid));
        let joined: String = chunks
            .iter()
            .map(|c| c["content"].as_str().unwrap())
            .collect();
        let end = frames.last().unwrap();
        assert_eq!(end["message_id"], mid);
        assert_eq!(end["content"].as_str().unwrap(), joined);
        assert_eq!(joined, ANSWER);

        send(&mut ws, json!({"type": "ping"})).await;
        let pong = recv(&mut ws).await;
        let pong = if pong["type"] == "bot_typing" {
            recv(&mut ws).await
        } else {
            pong
        };
        assert_eq!(pong["type"], "pong");
        assert!(chrono::DateTime::parse_from_rfc3339(pong["timestamp"].as_str().unwrap()).is_ok());
    });
});

both_runtimes!(general_bots_auth_frame_errors_and_limits, |rt| {
    let srv = server(rt);
    block_on(async {
        // No token in the URL: anything before `auth` is AUTH_FAILED; then auth.
        let mut ws = open(request(&srv, "/ws")).await;
        send(&mut ws, json!({"type": "ping"})).await;
        assert_eq!(recv(&mut ws).await["code"], "AUTH_FAILED");
        send(&mut ws, json!({"type": "auth", "token": srv.token()})).await;
        let created = recv(&mut ws).await;
        assert_eq!(created["type"], "session_created");
        let session = created["session_id"].as_str().unwrap().to_string();
        // Authenticating again is no new session.
        send(&mut ws, json!({"type": "auth", "token": srv.token()})).await;
        assert_eq!(recv(&mut ws).await["session_id"], session.as_str());

        // Malformed JSON: INVALID_FORMAT, and the socket lives on.
        ws.send(Message::Text("{not json".into())).await.unwrap();
        assert_eq!(recv(&mut ws).await["code"], "INVALID_FORMAT");
        // Unknown session.
        send(
            &mut ws,
            json!({"type": "message", "session_id": "nope", "content": "hi"}),
        )
        .await;
        let e = recv(&mut ws).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("SESSION_NOT_FOUND"))
        );
        assert!(e["message"].is_string());
        send(&mut ws, json!({"type": "subscribe", "session_id": "nope"})).await;
        assert_eq!(recv(&mut ws).await["code"], "SESSION_NOT_FOUND");
        // Over 64 KB: an error frame, not a close; ~60 KB is still answered.
        let big = "x".repeat(70 * 1024);
        send(
            &mut ws,
            json!({"type": "typing_start", "session_id": session, "pad": big}),
        )
        .await;
        assert_eq!(recv(&mut ws).await["code"], "MESSAGE_TOO_LARGE");
        let fits = "x".repeat(60 * 1024);
        send(&mut ws, json!({"type": "ping", "pad": fits})).await;
        assert_eq!(recv(&mut ws).await["type"], "pong");
        // 60 messages back to back draw RATE_LIMITED.
        for i in 0..60 {
            send(
                &mut ws,
                json!({"type": "message", "session_id": session, "content": format!("q{i}")}),
            )
            .await;
        }
        let mut limited = false;
        for _ in 0..2000 {
            match next(&mut ws, WAIT).await {
                Said::Frame(f) if f["code"] == "RATE_LIMITED" => {
                    limited = true;
                    break;
                }
                Said::Frame(_) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
        assert!(limited, "60 back-to-back messages were never rate limited");

        // A bad token in the query: AUTH_FAILED and no session.
        let mut bad = open(request(&srv, "/ws?token=wrong")).await;
        assert_eq!(recv(&mut bad).await["code"], "AUTH_FAILED");
        assert!(matches!(next(&mut bad, WAIT).await, Said::Closed(_)));
    });
});

both_runtimes!(
    general_bots_sessions_outlive_sockets_and_subscribers_see_answers,
    |rt| {
        let srv = server(rt);
        block_on(async {
            let (ws, session) = gb_connect(&srv).await;
            drop(ws);
            // Reconnect: a new session_created, and the old session still answers.
            let (mut ws, _) = gb_connect(&srv).await;
            let (mut watcher, _) = gb_connect(&srv).await;
            send(
                &mut watcher,
                json!({"type": "subscribe", "session_id": session}),
            )
            .await;
            send(&mut watcher, json!({"type": "ping"})).await;
            assert_eq!(recv(&mut watcher).await["type"], "pong");
            send(
                &mut ws,
                json!({"type": "message", "session_id": session, "content": QUESTION}),
            )
            .await;
            let mine = until(&mut ws, "stream_end").await;
            let seen = until(&mut watcher, "stream_end").await;
            assert_eq!(mine.last().unwrap()["content"], ANSWER);
            assert_eq!(seen.last().unwrap()["content"], ANSWER);
            assert_eq!(seen[0]["type"], "stream_start");
            // Unsubscribed: the next answer does not reach the watcher.
            send(
                &mut watcher,
                json!({"type": "unsubscribe", "session_id": session}),
            )
            .await;
            send(&mut watcher, json!({"type": "ping"})).await;
            let rest = until(&mut watcher, "pong").await;
            assert!(of_type(&rest, "stream_chunk").is_empty(), "{rest:?}");
            send(
                &mut ws,
                json!({"type": "message", "session_id": session, "content": QUESTION}),
            )
            .await;
            until(&mut ws, "stream_end").await;
            assert_eq!(
                next(&mut watcher, Duration::from_millis(500)).await,
                Said::Silent
            );
        });
    }
);

both_runtimes!(meet_relays_signals_between_room_participants, |rt| {
    let srv = server(rt);
    block_on(async {
        let url = format!("/ws/meet?token={}", srv.token());
        let mut a = open(request(&srv, &url)).await;
        let mut b = open(request(&srv, &url)).await;
        send(
            &mut a,
            json!({"type": "join", "room_id": "r1", "participant_name": "Ann"}),
        )
        .await;
        let ja = recv(&mut a).await;
        assert_eq!(ja["type"], "joined");
        assert_eq!(ja["participants"], json!([]));
        let ann = ja["participant_id"].as_str().unwrap().to_string();
        send(
            &mut b,
            json!({"type": "join", "room_id": "r1", "participant_name": "Bob"}),
        )
        .await;
        let jb = recv(&mut b).await;
        assert_eq!(jb["participants"][0]["participant_id"], ann.as_str());
        assert_eq!(jb["participants"][0]["participant_name"], "Ann");
        let bob = jb["participant_id"].as_str().unwrap().to_string();
        let joined = recv(&mut a).await;
        assert_eq!(
            (joined["type"].as_str(), joined["participant_id"].as_str()),
            (Some("participant_joined"), Some(bob.as_str()))
        );
        let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1"});
        send(
            &mut a,
            json!({"type": "signal", "room_id": "r1", "target_id": bob, "signal": offer}),
        )
        .await;
        let got = recv(&mut b).await;
        assert_eq!(got["type"], "signal");
        assert_eq!(got["from_id"], ann.as_str());
        assert_eq!(got["signal"], offer);
        // Never echoed to the sender, nor sent to oneself.
        assert_eq!(next(&mut a, Duration::from_millis(300)).await, Said::Silent);
        send(
            &mut a,
            json!({"type": "signal", "room_id": "r1", "target_id": ann, "signal": offer}),
        )
        .await;
        assert_eq!(recv(&mut a).await["code"], "INVALID_FORMAT");
        // Names are bounded (a `joined` frame lists them all).
        let long = "n".repeat(300);
        send(
            &mut a,
            json!({"type": "join", "room_id": "r2", "participant_name": long}),
        )
        .await;
        assert_eq!(recv(&mut a).await["code"], "INVALID_FORMAT");
        // Bob's socket goes: Ann is told.
        drop(b);
        let left = recv(&mut a).await;
        assert_eq!(left["type"], "participant_left");
        assert_eq!(left["participant_id"], bob.as_str());
        // A bad token is refused at the upgrade.
        let refused = tokio_tungstenite::connect_async(request(&srv, "/ws/meet?token=bad")).await;
        assert!(refused.is_err());
    });
});

// ----- Fluxbase ---------------------------------------------------------------------

both_runtimes!(
    fluxbase_sql_assistant_answers_with_progress_content_and_done,
    |rt| {
        let srv = server(rt);
        block_on(async {
            let mut ws = open(request(&srv, &format!("/ai/ws?token={}", srv.token()))).await;
            send(
                &mut ws,
                json!({"type": "start_chat", "chatbot": "sql-assistant", "namespace": "default"}),
            )
            .await;
            let started = recv(&mut ws).await;
            assert_eq!(started["type"], "chat_started", "{started}");
            assert_eq!(started["chatbot"], "sql-assistant");
            let conv = started["conversation_id"].as_str().unwrap().to_string();
            send(
                &mut ws,
                json!({"type": "message", "conversation_id": conv, "content": QUESTION}),
            )
            .await;
            let frames = until(&mut ws, "done").await;
            let steps: Vec<&str> = of_type(&frames, "progress")
                .iter()
                .map(|p| p["step"].as_str().unwrap())
                .collect();
            assert_eq!(&steps[..2], ["thinking", "generating"]);
            let first_content = frames.iter().position(|f| f["type"] == "content").unwrap();
            assert!(
                frames[..first_content]
                    .iter()
                    .filter(|f| f["type"] == "progress")
                    .count()
                    >= 2
            );
            let deltas = of_type(&frames, "content");
            assert!(deltas.len() >= 2);
            assert!(deltas
                .iter()
                .all(|d| !d["delta"].as_str().unwrap().is_empty()));
            let text: String = deltas
                .iter()
                .map(|d| d["delta"].as_str().unwrap())
                .collect();
            assert_eq!(text, ANSWER);
            let done = frames.last().unwrap();
            let usage = &done["usage"];
            assert_eq!(
                usage["total_tokens"].as_u64().unwrap(),
                usage["prompt_tokens"].as_u64().unwrap()
                    + usage["completion_tokens"].as_u64().unwrap()
            );

            // An anonymous socket is let in but may not chat (a chatbot
            // reads the database).
            let mut anonymous = open(request(&srv, "/ai/ws")).await;
            send(
                &mut anonymous,
                json!({"type": "start_chat", "chatbot": "sql-assistant", "namespace": "default"}),
            )
            .await;
            assert_eq!(recv(&mut anonymous).await["code"], "AUTH_REQUIRED");
            // Resume on a new connection: same id; without start_chat: NO_SESSION.
            let mut other = open(request(&srv, &format!("/ai/ws?token={}", srv.token()))).await;
            send(
                &mut other,
                json!({"type": "message", "conversation_id": conv, "content": "hi"}),
            )
            .await;
            let e = recv(&mut other).await;
            assert_eq!(
                (e["code"].as_str(), e["conversation_id"].as_str()),
                (Some("NO_SESSION"), Some(conv.as_str()))
            );
            send(&mut other, json!({"type": "start_chat", "chatbot": "sql-assistant", "namespace": "default", "conversation_id": conv})).await;
            assert_eq!(recv(&mut other).await["conversation_id"], conv.as_str());
            // An unknown conversation id silently starts a new one.
            send(&mut other, json!({"type": "start_chat", "chatbot": "sql-assistant", "namespace": "default", "conversation_id": "no-such"})).await;
            let fresh = recv(&mut other).await;
            assert_eq!(fresh["type"], "chat_started");
            assert_ne!(fresh["conversation_id"], "no-such");
            // Errors, and the socket stays open.
            send(
                &mut other,
                json!({"type": "start_chat", "chatbot": "nobody", "namespace": "default"}),
            )
            .await;
            let e = recv(&mut other).await;
            assert_eq!(e["code"], "CHATBOT_NOT_FOUND");
            assert!(e.get("conversation_id").is_none());
            other.send(Message::Text("nope".into())).await.unwrap();
            assert_eq!(recv(&mut other).await["code"], "INVALID_MESSAGE");
            send(&mut other, json!({"type": "dance"})).await;
            assert_eq!(recv(&mut other).await["code"], "UNKNOWN_TYPE");
            // Cancel with nothing running still says cancelled.
            send(
                &mut other,
                json!({"type": "cancel", "conversation_id": conv}),
            )
            .await;
            assert_eq!(recv(&mut other).await["type"], "cancelled");
        });
    }
);

both_runtimes!(
    fluxbase_refuses_a_bad_token_at_the_upgrade_and_manages_chatbots,
    |rt| {
        let srv = server(rt);
        let err = block_on(tokio_tungstenite::connect_async(request(
            &srv,
            "/ai/ws?token=bad",
        )))
        .expect_err("a bad token is refused");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
            other => panic!("expected HTTP 401, got {other:?}"),
        }
        let token = srv.token();
        let bot = json!({"name": "pricing", "namespace": "sales", "system_prompt": "Quote prices.", "collections": ["products"]});
        let r = srv.call(&token, "POST", "/api/v1/ai/chatbots", &bot.to_string());
        assert_eq!(r.status, 200, "{}", r.text());
        let r = srv.call(&token, "GET", "/api/v1/ai/chatbots?namespace=sales", "");
        assert_eq!(r.json()["chatbots"][0]["name"], "pricing");
        let r = srv.call(&token, "GET", "/api/v1/ai/chatbots", "");
        let names: Vec<&str> = r.json()["chatbots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap())
            .map(|s| Box::leak(s.to_string().into_boxed_str()) as &str)
            .collect();
        assert!(
            names.contains(&"sql-assistant") && names.contains(&"pricing"),
            "{names:?}"
        );
        let r = srv.call(
            &token,
            "POST",
            "/api/v1/ai/chatbots",
            &json!({"namespace": "x"}).to_string(),
        );
        assert_eq!(r.status, 400);
        block_on(async {
            let mut ws = open(request(&srv, &format!("/ai/ws?token={token}"))).await;
            send(
                &mut ws,
                json!({"type": "start_chat", "chatbot": "pricing", "namespace": "sales"}),
            )
            .await;
            let conv = recv(&mut ws).await["conversation_id"]
                .as_str()
                .unwrap()
                .to_string();
            let r = srv.call(&token, "GET", &format!("/api/chat/{conv}"), "");
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["session"]["system_prompt"], "Quote prices.");
        });
        let r = srv.call(&token, "DELETE", "/api/v1/ai/chatbots/sales/pricing", "");
        assert_eq!(r.status, 200);
        let r = srv.call(
            &token,
            "GET",
            "/api/v1/ai/chatbots/by-name/pricing?namespace=sales",
            "",
        );
        assert_eq!(r.status, 404);
    }
);

// ----- EVA ------------------------------------------------------------------------------

async fn eva(srv: &TestServer) -> Ws {
    let mut req = request(srv, "/eva/ws");
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {API_KEY}").parse().unwrap(),
    );
    open(req).await
}

both_runtimes!(
    eva_streams_chunks_with_emotion_sources_and_a_final_chunk,
    |rt| {
        let srv = server(rt);
        block_on(async {
            let mut ws = eva(&srv).await;
            send(&mut ws, json!({"type": "user_message", "content": "hi"})).await;
            let e = recv(&mut ws).await;
            assert_eq!(e["metadata"]["error_code"], "NO_ACTIVE_CONVERSATION");
            send(
                &mut ws,
                json!({"type": "start_conversation", "conversation_id": null}),
            )
            .await;
            let started = recv(&mut ws).await;
            assert_eq!(started["type"], "conversation_started");
            let conv = started["conversation_id"].as_str().unwrap().to_string();
            assert!(chrono::DateTime::parse_from_rfc3339(
                started["metadata"]["timestamp"].as_str().unwrap()
            )
            .is_ok());
            send(
                &mut ws,
                json!({"type": "user_message", "content": QUESTION}),
            )
            .await;
            let mut chunks = Vec::new();
            loop {
                let m = recv(&mut ws).await;
                assert_eq!(m["type"], "message", "{m}");
                let last = m["is_final"] == true;
                chunks.push(m);
                if last {
                    break;
                }
            }
            assert!(chunks.len() >= 2);
            let emotions = [
                "neutral",
                "happy",
                "excited",
                "thoughtful",
                "curious",
                "confident",
                "concerned",
                "empathetic",
            ];
            let mut ids = std::collections::HashSet::new();
            for c in &chunks {
                assert!(emotions.contains(&c["emotion"].as_str().unwrap()), "{c}");
                assert!(ids.insert(c["chunk_id"].as_str().unwrap().to_string()));
                assert_eq!(c["metadata"]["conversation_id"], conv.as_str());
                assert!(c["metadata"]["sources"].is_array());
            }
            assert_eq!(chunks.iter().filter(|c| c["is_final"] == true).count(), 1);
            let text: String = chunks
                .iter()
                .map(|c| c["content"].as_str().unwrap())
                .collect();
            assert_eq!(text, ANSWER);
            let last = chunks.last().unwrap();
            assert!(last["metadata"]["sources"][0]
                .as_str()
                .unwrap()
                .starts_with("products/"));
            assert_ne!(last["metadata"]["has_summary"], true);

            // Limits and errors: the connection lives on.
            let long = "é".repeat(4097);
            send(&mut ws, json!({"type": "user_message", "content": long})).await;
            assert_eq!(
                recv(&mut ws).await["metadata"]["error_code"],
                "MESSAGE_TOO_LONG"
            );
            send(
                &mut ws,
                json!({"type": "start_conversation", "conversation_id": "missing"}),
            )
            .await;
            assert_eq!(
                recv(&mut ws).await["metadata"]["error_code"],
                "CONVERSATION_NOT_FOUND"
            );
            send(&mut ws, json!({"type": "ping"})).await;
            ws.send(Message::Text("{bad".into())).await.unwrap();
            let e = recv(&mut ws).await;
            assert_eq!(e["type"], "error");
            assert!(e["content"].is_string());

            // Resume on another connection (key in the subprotocol).
            let mut req = request(&srv, "/eva/ws");
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                format!("chat, {API_KEY}").parse().unwrap(),
            );
            let (mut again, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
            assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
            send(
                &mut again,
                json!({"type": "start_conversation", "conversation_id": conv}),
            )
            .await;
            assert_eq!(recv(&mut again).await["conversation_id"], conv.as_str());
        });
    }
);

both_runtimes!(
    eva_refuses_bad_keys_in_socket_with_1008_first_source_deciding,
    |rt| {
        let srv = server(rt);
        block_on(async {
            let expect_refusal = |mut ws: Ws| async move {
                let e = recv(&mut ws).await;
                assert_eq!(e["type"], "error");
                assert_eq!(e["metadata"]["error_code"], "INVALID_API_KEY");
                assert_eq!(next(&mut ws, WAIT).await, Said::Closed(Some(1008)));
            };
            // No key at all.
            expect_refusal(open(request(&srv, "/eva/ws")).await).await;
            // A bad header decides even with a good query token.
            let mut req = request(&srv, &format!("/eva/ws?token={API_KEY}"));
            req.headers_mut()
                .insert("Authorization", "Bearer wrong".parse().unwrap());
            expect_refusal(open(req).await).await;
            // A good header decides over a bad query token.
            let mut req = request(&srv, "/eva/ws?token=wrong");
            req.headers_mut().insert(
                "Authorization",
                format!("Bearer {API_KEY}").parse().unwrap(),
            );
            let mut ok = open(req).await;
            send(&mut ok, json!({"type": "start_conversation"})).await;
            assert_eq!(recv(&mut ok).await["type"], "conversation_started");
            // The cookie works when nothing else is there.
            let mut req = request(&srv, "/eva/ws");
            req.headers_mut().insert(
                "Cookie",
                format!("theme=dark; token={API_KEY}").parse().unwrap(),
            );
            let mut ok = open(req).await;
            send(&mut ok, json!({"type": "start_conversation"})).await;
            assert_eq!(recv(&mut ok).await["type"], "conversation_started");
            // The 11th connection of one key is refused.
            let mut held = Vec::new();
            for _ in 0..8 {
                held.push(eva(&srv).await);
            }
            let mut eleventh = eva(&srv).await;
            let e = recv(&mut eleventh).await;
            assert_eq!(e["metadata"]["error_code"], "RATE_LIMIT_EXCEEDED");
            drop(held);
            let _ = CloseCode::Policy;
        });
        let r = srv.call("", "GET", "/eva/health", "");
        assert_eq!(r.status, 200);
        let h = r.json();
        assert_eq!(h["status"], "healthy");
        assert!(
            h["uptime"].is_number() && h["active_connections"].is_u64() && h["version"].is_string()
        );
    }
);

both_runtimes!(
    eva_conversation_watched_from_general_bots_and_read_through_ekodb,
    |rt| {
        let srv = server(rt);
        block_on(async {
            let mut ws = eva(&srv).await;
            send(&mut ws, json!({"type": "start_conversation"})).await;
            let conv = recv(&mut ws).await["conversation_id"]
                .as_str()
                .unwrap()
                .to_string();
            let (mut gb, _) = gb_connect(&srv).await;
            send(&mut gb, json!({"type": "subscribe", "session_id": conv})).await;
            send(&mut gb, json!({"type": "ping"})).await;
            assert_eq!(recv(&mut gb).await["type"], "pong");
            send(
                &mut ws,
                json!({"type": "user_message", "content": QUESTION}),
            )
            .await;
            let seen = until(&mut gb, "stream_end").await;
            assert_eq!(seen.last().unwrap()["content"], ANSWER);
            // Read back and continued through the official ekoDB client: an
            // EVA conversation is an ordinary chat session.
            let c = ekodb_client::Client::builder()
                .base_url(srv.base_url())
                .api_key(API_KEY)
                .serialization_format(ekodb_client::SerializationFormat::Json)
                .timeout(Duration::from_secs(20))
                .max_retries(0)
                .build()
                .expect("client");
            let session = c.get_chat_session(&conv).await.expect("the session");
            assert_eq!(session.message_count, 2);
            let reply = c
                .chat_message(&conv, ekodb_client::ChatMessageRequest::new(QUESTION))
                .await
                .expect("a continued turn");
            assert_eq!(reply.responses, vec![ANSWER.to_string()]);
            // The General Bots subscriber watches that turn too.
            let seen = until(&mut gb, "stream_end").await;
            assert_eq!(seen.last().unwrap()["content"], ANSWER);
            let history = c
                .get_chat_session_messages(&conv, ekodb_client::GetMessagesQuery::new())
                .await
                .expect("history");
            assert_eq!(history.messages.len(), 4);
            // And the EVA client resumes the conversation with its history.
            drop(ws);
            let mut ws = eva(&srv).await;
            send(
                &mut ws,
                json!({"type": "start_conversation", "conversation_id": conv}),
            )
            .await;
            assert_eq!(recv(&mut ws).await["conversation_id"], conv.as_str());
        });
    }
);

/// The address the server printed for its EVA listener.
fn eva_addr(srv: &TestServer) -> String {
    srv.startup
        .iter()
        .find_map(|l| l.split("EVA chat served on http://").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the EVA listener's address")
        .to_string()
}

async fn eva_at(url: &str) -> Ws {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {API_KEY}").parse().unwrap(),
    );
    open(req).await
}

async fn eva_converses(ws: &mut Ws) {
    send(
        ws,
        json!({"type": "start_conversation", "conversation_id": null}),
    )
    .await;
    assert_eq!(recv(ws).await["type"], "conversation_started");
    send(ws, json!({"type": "user_message", "content": QUESTION})).await;
    let mut answer = String::new();
    loop {
        let m = recv(ws).await;
        assert_eq!(m["type"], "message", "{m}");
        answer.push_str(m["content"].as_str().unwrap());
        if m["is_final"] == true {
            break;
        }
    }
    assert_eq!(answer, ANSWER);
}

both_runtimes!(
    eva_on_its_own_listener_and_endpoints_moved_by_mounts,
    |rt| {
        let srv = TestServer::start_with(
            rt,
            &[
                "--eva-listen",
                "127.0.0.1:0",
                "--mounts",
                "general-bots=/gb/ws,eva=/ws",
            ],
        );
        let token = srv.token();
        let r = srv.call(
        &token,
        "POST",
        "/api/insert/products",
        &json!({"name": "ekoDB Pro", "price": 99, "description": "A fast database with search"})
            .to_string(),
    );
        assert_eq!(r.status, 200, "{}", r.text());
        let eva_at_own = eva_addr(&srv);
        block_on(async {
            // The EVA document's own URLs, on the EVA listener.
            let mut ws = eva_at(&format!("ws://{eva_at_own}/ws")).await;
            eva_converses(&mut ws).await;
            // The main listener: EVA took /ws, General Bots moved to /gb/ws.
            let mut ws = eva_at(&format!("ws://{}/ws", srv.addr)).await;
            eva_converses(&mut ws).await;
            let mut gb = open(request(&srv, &format!("/gb/ws?token={token}"))).await;
            assert_eq!(recv(&mut gb).await["type"], "session_created");
            // A moved endpoint is gone from its old path, however it is spelled.
            for gone in ["/eva/ws", "/%65va/ws"] {
                let old = tokio_tungstenite::connect_async(request(&srv, gone)).await;
                assert!(old.is_err(), "the old EVA path {gone} still answers");
            }
        });
        let at_eva = |path: &str| {
            let mut s = std::net::TcpStream::connect(&eva_at_own).unwrap();
            use std::io::{Read, Write};
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            tidepool_tests::HttpReply::parse(&out).expect("a response")
        };
        let health = at_eva("/health");
        assert_eq!(health.status, 200, "{}", health.text());
        assert_eq!(health.json()["status"], "healthy");
        // Nothing but EVA on that listener.
        let r = at_eva("/api/health");
        assert_eq!(r.status, 404, "{}", r.text());
        assert!(r.text().contains("EVA only"), "{}", r.text());
        // Bad mounts stop the server at start with a clear message.
        let out = std::process::Command::new(rt.binary())
            .args(["--mounts", "eva=/ws/meet", "--data-dir"])
            .arg(srv.dir.join("unused"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--mounts"));
    }
);

both_runtimes!(general_bots_takes_a_hundred_connections_per_address, |rt| {
    let srv = server(rt);
    let token = srv.token();
    block_on(async {
        let mut open_now = Vec::new();
        for _ in 0..GB_CONNECTIONS_PER_IP {
            let mut ws = open(request(&srv, &format!("/ws?token={token}"))).await;
            assert_eq!(recv(&mut ws).await["type"], "session_created");
            open_now.push(ws);
        }
        let refused =
            tokio_tungstenite::connect_async(request(&srv, &format!("/ws?token={token}")))
                .await
                .expect_err("the 101st connection is refused");
        match refused {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status(), 503);
                let body =
                    String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
                assert!(body.contains("RATE_LIMITED"), "{body}");
            }
            other => panic!("refused how? {other:?}"),
        }
        // A connection that goes frees its place.
        let mut gone = open_now.pop().unwrap();
        gone.close(None).await.unwrap();
        drop(gone);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio_tungstenite::connect_async(request(&srv, &format!("/ws?token={token}")))
                .await
            {
                Ok((mut ws, _)) => {
                    assert_eq!(recv(&mut ws).await["type"], "session_created");
                    break;
                }
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("a closed connection still counts: {e}"),
            }
        }
    });
});

both_runtimes!(general_bots_idle_sockets_are_told_and_closed, |rt| {
    let srv = TestServer::start_with(
        rt,
        &[
            "--general-bots-idle-timeout",
            "2",
            "--general-bots-ping-interval",
            "1",
        ],
    );
    block_on(async {
        // A client that keeps talking stays.
        let (mut busy, _) = gb_connect(&srv).await;
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            send(&mut busy, json!({"type": "ping"})).await;
            assert_eq!(recv(&mut busy).await["type"], "pong");
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        // A silent one is told its session closed (the session lives on),
        // then the socket closes cleanly.
        let (mut quiet, session) = gb_connect(&srv).await;
        let said = next(&mut quiet, Duration::from_secs(6)).await;
        let closed = frame(said);
        assert_eq!(closed["type"], "session_closed");
        assert_eq!(closed["session_id"], session.as_str());
        assert_eq!(closed["reason"], "idle_timeout");
        assert_eq!(next(&mut quiet, WAIT).await, Said::Closed(Some(1000)));
        let (mut again, _) = gb_connect(&srv).await;
        send(
            &mut again,
            json!({"type": "message", "session_id": session, "content": "hello"}),
        )
        .await;
        assert_eq!(recv(&mut again).await["type"], "stream_start");
    });
});

both_runtimes!(fluxbase_chatbots_from_the_config_file, |rt| {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chatbots.json");
    std::fs::write(
        &file,
        json!([{"name": "catalog", "namespace": "acme", "description": "Answers about products",
                "system_prompt": "You answer questions about our catalog.",
                "collections": ["products"]}])
        .to_string(),
    )
    .unwrap();
    let path = file.to_str().unwrap().to_string();
    let srv = TestServer::start_with(rt, &["--fluxbase-chatbots", &path]);
    let token = srv.token();
    let r = srv.call(
        &token,
        "POST",
        "/api/insert/products",
        &json!({"name": "ekoDB Pro", "price": 99}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = srv.call(
        &token,
        "GET",
        "/api/v1/ai/chatbots/by-name/catalog?namespace=acme",
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["collections"], json!(["products"]));
    let r = srv.call(&token, "GET", "/api/v1/ai/chatbots", "");
    let names: Vec<String> = r.json()["chatbots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            format!(
                "{}/{}",
                b["namespace"].as_str().unwrap(),
                b["name"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        names.contains(&"acme/catalog".to_string())
            && names.contains(&"default/sql-assistant".to_string()),
        "{names:?}"
    );
    block_on(async {
        let mut ws = open(request(&srv, &format!("/ai/ws?token={token}"))).await;
        send(
            &mut ws,
            json!({"type": "start_chat", "chatbot": "catalog", "namespace": "acme"}),
        )
        .await;
        let started = recv(&mut ws).await;
        assert_eq!(
            (started["type"].as_str(), started["chatbot"].as_str()),
            (Some("chat_started"), Some("catalog"))
        );
    });
    // It lives in the file, not in the database.
    let r = srv.call(&token, "DELETE", "/api/v1/ai/chatbots/acme/catalog", "");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("fluxbase-chatbots"), "{}", r.text());
    // A file that does not parse stops the server at start, saying why.
    std::fs::write(&file, "[{\"namespace\": \"x\"}]").unwrap();
    let out = std::process::Command::new(rt.binary())
        .args(["--fluxbase-chatbots", &path, "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("chatbots.json") && err.contains("name"),
        "{err}"
    );
});
