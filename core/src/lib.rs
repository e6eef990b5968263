//! Tidepool's sans-io core: every protocol state machine (HTTP/1.1, WebSocket,
//! SSE, the ekoDB message protocol) and the database engine, with no sockets,
//! files, threads, clocks or OS randomness. Bytes and the current time come in;
//! bytes to write, log batches to persist and effects to perform (history reads,
//! outbound HTTP) come out. The runtimes (`tidepool-smol`, `tidepool-std`) only
//! move bytes, so both behave identically and tests can simulate everything.
//!
//! ```text
//!  bytes ─▶ Connection::handle_input ─▶ execute(&mut Server) ─▶ engine + hub
//!                                             │                    │
//!  socket ◀─ Connection::poll_transmit(durable LSN) ◀─ Server::handle_durable
//!                                                         ▲
//!                       Server::poll_log ─▶ storage: append + fsync
//! ```
//!
//! The driver loop, as a runtime runs it (here with storage simulated):
//!
//! ```
//! use std::time::Duration;
//! use tidepool_core::{config::Config, conn::Connection, ids::ConnId, server::Server, time::Timestamp};
//!
//! let config = Config { api_keys: vec!["key".into()], ..Config::default() };
//! let mut server = Server::new(config, b"token-signing-secret", 7);
//! let now = Timestamp::from_secs(1_700_000_000);
//! let mut conn = Connection::new(ConnId(1), server.limits(), Duration::from_secs(60), now);
//!
//! // 1. bytes from the socket
//! conn.handle_input(b"GET /api/health HTTP/1.1\r\nHost: db\r\n\r\n", now);
//! // 2. run what was parsed, under the runtime's lock
//! if conn.wants_server() {
//!     conn.execute(&mut server, now);
//! }
//! // 3. persist committed batches, then report them durable
//! while let Some(batch) = server.poll_log() {
//!     let _ = (batch.lsn, batch.payload); // storage.append(..); storage.sync()
//! }
//! let _wake = server.handle_durable(server.engine.last_lsn());
//! // 4. write what is now releasable
//! let mut out = Vec::new();
//! while let Some(bytes) = conn.poll_transmit(server.durable_lsn()) {
//!     out.extend_from_slice(&bytes);
//! }
//! assert!(out.starts_with(b"HTTP/1.1 200 OK"));
//! // 5. re-arm the timer from conn.poll_timeout() and server.poll_timeout()
//! ```
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod conn;
pub mod engine;
pub mod error;
pub mod ids;
pub mod realtime;
pub mod rng;
pub mod server;
pub mod time;
pub mod value;
pub mod wire;
