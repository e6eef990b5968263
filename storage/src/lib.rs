//! Tidepool's storage engine: an append-only log of opaque, checksummed batches in
//! segment files, plus fuzzy snapshots that let old segments be deleted.
//!
//! The engine (`tidepool-core`) does no I/O. For every mutation it hands the runtime an
//! opaque payload tagged with a log sequence number ([`Lsn`]); the runtime appends it
//! here ([`Store::append`]), makes a group of appends durable with one
//! [`Store::sync`], and only then acknowledges the clients. This crate never looks
//! inside a payload.
//!
//! ```text
//!  append(lsn, bytes) ──► write-combining buffer ──► pwrite ──► active segment
//!  sync()             ──► fdatasync (sealed segments, active) ──► fsync(dir) ──► durable
//!  begin_snapshot(replay_from) ──► SnapshotWriter (any thread) ──► finish: fsync tmp
//!  install_snapshot   ──► rename tmp ──► fsync(dir) ──► delete covered segments
//!  open()             ──► newest valid snapshot + every batch with lsn > replay_from
//!  backup_plan()      ──► BackupPlan (any thread) ──► write_to(dir): a data directory
//! ```
//!
//! The byte layout, the commit protocol, the recovery algorithm and what the disk is
//! assumed to guarantee are written down in `docs/storage-format.md`.
//!
//! Architecture invariants:
//! * Every file operation goes through [`Backend`]; [`FileBackend`] is the real one and
//!   [`sim::SimBackend`] simulates power cuts for tests.
//! * `unsafe` appears in exactly one function: the `mmap` call in `backend.rs`, used
//!   only for sealed segments and installed snapshots, which are never written again.
//! * Decoders of file bytes are total: they return errors, never panic, and check every
//!   length against a limit before using it.
//!
//! ```no_run
//! use tidepool_storage::{Lsn, Store, StoreOptions};
//! # fn main() -> Result<(), tidepool_storage::StoreError> {
//! let (mut store, recovery) = Store::open(StoreOptions::new("./data"))?;
//! for chunk in recovery.snapshot_chunks() { /* load engine state */ let _ = chunk; }
//! for (lsn, payload) in recovery.batches() { /* redo */ let _ = (lsn, payload); }
//! let next = Lsn(recovery.last_lsn().0 + 1);
//! drop(recovery);
//! store.append(next, b"opaque engine record")?;
//! store.sync()?; // now it survives a power cut: acknowledge the client
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]

pub mod archive;
mod backend;
pub mod backup;
mod error;
pub mod frame;
mod options;
mod reader;
mod recovery;
mod segment;
pub mod sim;
mod snapshot;
mod store;

pub use backend::{Backend, BackendFile, FileBackend, Mapped};
pub use backup::{BackupPlan, Manifest};
pub use error::StoreError;
pub use options::{Lsn, ParseSyncPolicyError, StoreOptions, SyncPolicy};
pub use reader::{History, StoreReader};
pub use recovery::{Batches, Recovery, RecoveryReport, Salvage, SnapshotChunks, TornTail};
pub use snapshot::{FinishedSnapshot, SnapshotWriter};
pub use store::Store;
