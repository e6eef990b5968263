//! Tidepool's sans-io core: every protocol state machine (HTTP/1.1, WebSocket,
//! SSE, the wire dialects) and the database engine, with no sockets, files,
//! threads, clocks or OS randomness. Bytes and the current time come in;
//! bytes to write, log batches to persist and effects to perform (history reads,
//! outbound HTTP) come out. The runtimes (`tidepool-smol`, `tidepool-std`) only
//! move bytes, so both behave identically and tests can simulate everything.
//!
//! ```text
//!  bytes ─▶ Connection::handle_input ─▶ driver::step ─▶ Server (dialects → engine, hub)
//!                                            │                      │
//!  socket ◀──────────── out (what is durable) ◀── Server::handle_durable
//!                                                         ▲
//!                       Server::poll_log ─▶ storage: append + fsync
//! ```
//!
//! The driver loop, as a runtime runs it (here with storage simulated):
//!
//! ```
//! use tidepool_core::{config::Config, driver, ids::Lsn, server::Server, time::Timestamp};
//!
//! /// The runtime's shared state: the server (behind a lock in a real runtime).
//! struct Host(Server);
//! impl driver::Shared for Host {
//!     fn with_server<R>(&mut self, f: impl FnOnce(&mut Server) -> R) -> R {
//!         let r = f(&mut self.0);
//!         // persist committed batches, then report them durable
//!         let mut last = None;
//!         while let Some(batch) = self.0.poll_log() {
//!             last = Some(batch.lsn); // storage.append(batch.lsn, &batch.payload)
//!         }
//!         if let Some(lsn) = last {
//!             self.0.handle_durable(lsn); // after storage.sync()
//!         }
//!         r
//!     }
//!     fn durable(&self) -> Lsn {
//!         self.0.durable_lsn()
//!     }
//!     fn storage_failed(&self) -> bool {
//!         self.0.storage_failure().is_some()
//!     }
//! }
//!
//! let config = Config { api_keys: vec!["key".into()], ..Config::default() };
//! let mut host = Host(Server::new(config, b"token-signing-secret", 7));
//! let now = Timestamp::from_secs(1_700_000_000);
//! let mut conn = host.0.accept(now);
//!
//! // 1. bytes from the socket
//! conn.handle_input(b"GET /api/health HTTP/1.1\r\nHost: db\r\n\r\n", now);
//! // 2. one drive step: execute, effects, what may be written now
//! let mut out = Vec::new();
//! let step = driver::step(&mut conn, &mut host, now, &mut out);
//! assert!(out.starts_with(b"HTTP/1.1 200 OK"));
//! assert!(step.effects.is_empty() && step.read && !step.closed);
//! // 3. write `out`; wait for the socket, a wake-up or conn.poll_timeout()
//! ```
#![forbid(unsafe_code)]

pub mod assist;
pub mod auth;
pub mod chat;
pub mod config;
pub mod conn;
pub mod dialect;
pub mod driver;
pub mod engine;
pub mod error;
pub mod functions;
pub mod ids;
pub mod providers;
pub mod realtime;
pub mod rng;
pub mod schedule;
pub mod server;
pub mod time;
pub mod timers;
pub mod value;
pub mod wire;
