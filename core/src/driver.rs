//! THE drive step: what every runtime, the simulation and the fuzz targets do
//! after any input to a connection, written once (STYLE.md, convention 18).
//!
//! ```text
//!  storage failed? ─▶ tell the connection (replies in doubt become 503s)
//!  loop:
//!    execute (under the server lock)      ─▶ replies, events, effects
//!    effects whose position is durable    ─▶ handed to the runtime
//!    transmit what is durable             ─▶ `out`
//!  until nothing more to execute
//!  ─▶ closed? reading? waiting for durability?
//! ```
//!
//! The runtime then performs the effects (feeding results back through
//! `Connection::handle_*` and stepping again), writes `out`, and waits for
//! whichever comes first: bytes from the socket (if `read`), the durable LSN
//! passing `durable_after` (if set), a wake-up (`Server::poll_wakeup`), or the
//! connection's deadline (`poll_timeout`).

use crate::conn::{Connection, Effect};
use crate::ids::Lsn;
use crate::server::Server;
use crate::time::Timestamp;
use bytes::Bytes;

/// Where a step puts the bytes it releases: a runtime's write buffer, or a
/// list of the pieces as the connection produced them (each HTTP response is
/// one piece; the fuzz target checks them one by one).
pub trait Transmit {
    fn transmit(&mut self, bytes: Bytes);
}

impl Transmit for Vec<u8> {
    fn transmit(&mut self, bytes: Bytes) {
        self.extend_from_slice(&bytes);
    }
}

impl Transmit for Vec<Bytes> {
    fn transmit(&mut self, bytes: Bytes) {
        self.push(bytes);
    }
}

/// What the driver needs from the runtime's shared state.
pub trait Shared {
    /// Runs `f` with the server, under the runtime's lock. The runtime also
    /// does what follows every server call: wake the writer for new batches,
    /// wake the connections `Server::poll_wakeup` names, re-arm the server's
    /// timer.
    fn with_server<R>(&mut self, f: impl FnOnce(&mut Server) -> R) -> R;
    /// The durable LSN, readable without the lock.
    fn durable(&self) -> Lsn;
    /// Whether storage failed (readable without the lock).
    fn storage_failed(&self) -> bool;
}

/// The outcome of one step.
#[derive(Debug)]
pub struct Step {
    /// Close the socket (after writing `out`) and call
    /// `Server::connection_closed`.
    pub closed: bool,
    /// Keep reading the socket.
    pub read: bool,
    /// Output is held until the durable LSN reaches this.
    pub durable_after: Option<Lsn>,
    /// I/O to perform for the connection; feed each result back and step again.
    pub effects: Vec<Effect>,
}

/// Drives a connection after an input: executes what it parsed, collects its
/// effects, and hands the bytes it may send now to `out`.
pub fn step(
    conn: &mut Connection,
    shared: &mut impl Shared,
    now: Timestamp,
    out: &mut impl Transmit,
) -> Step {
    if shared.storage_failed() {
        shared.with_server(|s| {
            let why = s
                .storage_failure()
                .map_or_else(|| "storage failed".to_string(), ToString::to_string);
            conn.handle_storage_failure(s.durable_lsn(), &why);
        });
    }
    let mut effects = Vec::new();
    loop {
        if conn.wants_server() {
            shared.with_server(|s| conn.execute(s, now));
        }
        let durable = shared.durable();
        while let Some(e) = conn.poll_effect(durable) {
            effects.push(e);
        }
        while let Some(bytes) = conn.poll_transmit(durable) {
            out.transmit(bytes);
        }
        // Transmitting can make room for pipelined requests parsed just now.
        if conn.wants_server() {
            continue;
        }
        // What the runtime waits for must match what was just sent: if the
        // durable LSN moved on meanwhile (the writer runs concurrently), send
        // again rather than wait for a report that has already come.
        let awaiting = conn.awaiting_durability(durable);
        if awaiting.is_some_and(|lsn| lsn <= shared.durable()) {
            continue;
        }
        return Step {
            closed: conn.is_closed(),
            read: conn.wants_read(),
            durable_after: awaiting,
            effects,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::cell::Cell;
    use std::time::Duration;

    /// A host whose writer makes everything durable between two looks at the
    /// durable LSN, as a concurrent writer thread can.
    struct RacingWriter {
        server: Server,
        looks: Cell<u32>,
    }

    impl Shared for RacingWriter {
        fn with_server<R>(&mut self, f: impl FnOnce(&mut Server) -> R) -> R {
            f(&mut self.server)
        }
        fn durable(&self) -> Lsn {
            let n = self.looks.get();
            self.looks.set(n + 1);
            if n == 0 {
                Lsn::ZERO
            } else {
                self.server.last_lsn()
            }
        }
        fn storage_failed(&self) -> bool {
            false
        }
    }

    /// Regression: the reply of a write was held (not durable at the first
    /// look) but became durable before the step reported what to wait for, so
    /// the runtime waited for a durability report that had already come and
    /// the client never got its reply.
    #[test]
    fn a_reply_that_became_durable_during_the_step_is_sent_or_awaited() {
        let config = Config {
            api_keys: vec!["k".into()],
            ..Config::default()
        };
        let mut server = Server::new(config, b"secret", 1);
        let now = Timestamp::from_secs(1_700_000_000);
        let token = server.issue_token("k", now).expect("token");
        let mut conn = server.accept(now);
        let mut host = RacingWriter {
            server,
            looks: Cell::new(0),
        };
        let body = br#"{"a":1}"#;
        let req = format!(
            "POST /api/insert/c HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.handle_input(req.as_bytes(), now);
        conn.handle_input(body, now);
        let mut out: Vec<u8> = Vec::new();
        let step = step(&mut conn, &mut host, now, &mut out);
        let sent = out.starts_with(b"HTTP/1.1 200");
        assert!(
            sent || step
                .durable_after
                .is_some_and(|lsn| lsn > host.server.last_lsn()),
            "the reply is neither sent nor awaited: {step:?}"
        );
    }
    /// A TLS handshake gets the request head's deadline from its first byte
    /// and, past it, the connection closes without a word (there is no
    /// channel to answer on); a completed one leaves the idle timeout alone.
    #[test]
    fn a_stalled_tls_handshake_is_cut_off_at_the_head_deadline() {
        let mut server = Server::new(Config::default(), b"secret", 1);
        let now = Timestamp::from_secs(1_700_000_000);
        let head = Duration::from_secs(Config::default().request_head_timeout_secs);

        let mut stalled = server.accept(now);
        stalled.handle_handshake_input(now, false);
        assert_eq!(stalled.poll_timeout(), Some(now.saturating_add(head)));
        let later = now.saturating_add(head);
        stalled.handle_timeout(later);
        let mut host = RacingWriter {
            server,
            looks: Cell::new(0),
        };
        let mut out: Vec<u8> = Vec::new();
        let step1 = step(&mut stalled, &mut host, later, &mut out);
        assert!(step1.closed && out.is_empty(), "{step1:?} {out:?}");

        let mut done = host.server.accept(now);
        done.handle_handshake_input(now, false);
        done.handle_handshake_input(now, true);
        assert!(
            done.poll_timeout().is_none_or(|t| t > later),
            "idle timeout only"
        );
    }
}
