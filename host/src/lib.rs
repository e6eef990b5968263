//! What both runtimes share, all of it blocking code on OS threads: booting
//! (secrets, recovery), the group-commit writer that owns the store, history
//! reads for resuming subscribers, background compaction, the server's timer
//! thread, the reader threads that run queries outside the server lock, and
//! the command line. `Host` is what the drive step
//! (`tidepool_core::driver`) sees of a running server. A runtime adds its sockets, its executor and
//! its own outbound I/O on top; neither runtime depends on the other.
//!
//! Write path, numbered like sled's ARCHITECTURE.md:
//! 1. a connection executes a request under the `server` lock; the engine applies
//!    it in memory and seals its log records into a batch with the next LSN;
//! 2. `Host::with_server` sees the pending batch and wakes the writer (a
//!    coalescing channel);
//! 3. the writer drains every pending batch under the lock, then appends them to
//!    the store and syncs once per the fsync policy, without holding the lock;
//! 4. it publishes the durable LSN (`Durability`) and wakes waiting connections;
//! 5. each connection releases the replies whose LSN is now durable.

pub mod backup;
pub mod boot;
pub mod cli;
mod clock;
mod documents;
pub mod durability;
pub mod log;
/// The in-process models; without the `models` feature, a stand-in that
/// refuses to start when one is configured.
#[cfg_attr(not(feature = "models"), path = "models_off.rs")]
mod models;
mod process;
pub mod progress;
mod reads;
mod shared;
pub mod subcommands;
mod timer;
mod tls;
pub mod tls_server;
mod writer;

pub use boot::{boot, BootError, Booted};
pub use bytes::Bytes;
pub use cli::cli_main;
pub use clock::now;
pub use durability::Durability;
pub use shared::{start, CallPerformer, Host, Waker};
pub use tidepool_core::dialect::mounts::Listener;
pub use tidepool_core::server::Peer;
pub use tls_server::Transport;
