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
            let why = s.storage_failure().unwrap_or("storage failed").to_string();
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
        if !conn.wants_server() {
            break;
        }
    }
    Step {
        closed: conn.is_closed(),
        read: conn.wants_read(),
        durable_after: conn.awaiting_durability(shared.durable()),
        effects,
    }
}
