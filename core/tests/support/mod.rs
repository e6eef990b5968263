//! A server driven in process, request by request, for the model-based
//! tests: one admin token, the log drained after every call.

use serde_json::Value as J;
use tidepool_core::config::Config;
use tidepool_core::ids::ConnId;
use tidepool_core::server::Server;
use tidepool_core::time::Timestamp;
use tidepool_core::wire::http::{Method, Request};

pub const T0: Timestamp = Timestamp::from_secs(1_767_225_600);

pub struct Sut {
    pub server: Server,
    bearer: String,
}

impl Sut {
    pub fn new() -> Sut {
        let config = Config {
            api_keys: vec!["model-key".into()],
            ..Config::default()
        };
        let mut server = Server::new(config, b"model-secret", 3);
        let req = Request::new(
            Method::Post,
            "/api/auth/token",
            &[("content-type", "application/json")],
            br#"{"api_key":"model-key"}"#,
        );
        let reply = server.handle_request(ConnId(0), &req, None, T0);
        let token: J = serde_json::from_slice(&reply.response.body).expect("token");
        Sut {
            server,
            bearer: format!("Bearer {}", token["token"].as_str().expect("token")),
        }
    }

    pub fn call(&mut self, method: Method, target: &str, body: Option<&J>) -> (u16, J) {
        let body = body.map(J::to_string).unwrap_or_default();
        let req = Request::new(
            method,
            target,
            &[
                ("authorization", &self.bearer),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        );
        let reply = self.server.handle_request(ConnId(0), &req, None, T0);
        while self.server.poll_log().is_some() {}
        // Queries run outside the lock: here, at once, as a reader thread would.
        while let Some(job) = self.server.poll_read() {
            let done = job.run(&|| false);
            self.server.finish_read(done, T0);
        }
        let r = match reply.pending {
            Some(ticket) => {
                self.server
                    .take_reply(ticket)
                    .expect("a deferred read answers")
                    .0
            }
            None => reply.response.into_rendered(),
        };
        let v = serde_json::from_slice(&r.body).unwrap_or(J::Null);
        (r.status, v)
    }
}
