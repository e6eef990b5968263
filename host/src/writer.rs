//! The group-commit writer: the one thread that owns the store. It appends
//! whatever batches are pending, syncs once per the fsync policy, publishes the
//! durable LSN, and starts and installs compaction snapshots.

use crate::shared::Host;
use crossbeam_channel::{bounded, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tidepool_core::engine::SnapshotCursor;
use tidepool_core::ids::{ConnId, Lsn};
use tidepool_core::server::metrics::SyncSample;
use tidepool_core::server::{StorageFailure, StorageOp};
use tidepool_storage::{FinishedSnapshot, Store, SyncPolicy};

pub(crate) fn writer_loop(
    host: Arc<Host>,
    mut store: Store,
    wake: Receiver<()>,
    plans: Receiver<crate::backup::PlanRequest>,
    compact_after: u64,
) {
    let policy = store.options().sync;
    let mut last_sync = Instant::now();
    let mut since_snapshot: u64 = 0;
    let (done_tx, done_rx) = bounded::<(FinishedSnapshot, Lsn)>(1);
    let mut compacting = false;
    let mut to_install: Option<(FinishedSnapshot, Lsn)> = None;
    loop {
        // Between two syncs: everything appended so far is in the plan.
        crate::backup::answer_plans(&plans, &mut store);
        let batches: Vec<_> = {
            let mut s = host.lock();
            std::iter::from_fn(|| s.poll_log()).collect()
        };
        if batches.is_empty() {
            if let Ok(done) = done_rx.try_recv() {
                compacting = false;
                to_install = Some(done);
            }
            if let Some((snap, covers)) = to_install.take() {
                if store.synced_lsn().0 >= covers.0 {
                    if let Err(e) = store.install_snapshot(snap) {
                        fail(&host, &store, StorageOp::InstallSnapshot, e.to_string());
                        return;
                    }
                    host.with_server(|s| s.note_compaction());
                } else {
                    to_install = Some((snap, covers));
                }
            }
            let _ = wake.recv_timeout(Duration::from_millis(200));
            continue;
        }
        // The time spent appending and syncing (not waiting for a batch).
        let started = Instant::now();
        let mut waited = Duration::ZERO;
        let mut sample = SyncSample {
            batches: batches.len(),
            bytes: batches.iter().map(|b| b.payload.len() as u64).sum(),
            skipped: matches!(policy, SyncPolicy::None),
            ..SyncSample::default()
        };
        let mut last = Lsn::ZERO;
        for b in &batches {
            since_snapshot += b.payload.len() as u64;
            if let Err(e) = store.append(tidepool_storage::Lsn(b.lsn.0), &b.payload) {
                fail(&host, &store, StorageOp::Append, e.to_string());
                return;
            }
            last = b.lsn;
        }
        drop(batches);
        let synced = match policy {
            SyncPolicy::None => Ok(()),
            SyncPolicy::Sync => store.sync(),
            SyncPolicy::Batch { interval_ms } => {
                let due = last_sync + Duration::from_millis(interval_ms);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    let before = Instant::now();
                    thread::sleep(wait);
                    waited = before.elapsed();
                }
                // Whatever arrived while waiting rides along in this sync.
                let more: Vec<_> = {
                    let mut s = host.lock();
                    std::iter::from_fn(|| s.poll_log()).collect()
                };
                let mut r = Ok(());
                sample.batches += more.len();
                sample.bytes += more.iter().map(|b| b.payload.len() as u64).sum::<u64>();
                for b in &more {
                    since_snapshot += b.payload.len() as u64;
                    if let Err(e) = store.append(tidepool_storage::Lsn(b.lsn.0), &b.payload) {
                        r = Err(e);
                        break;
                    }
                    last = b.lsn;
                }
                r.and_then(|()| store.sync())
            }
        };
        if let Err(e) = synced {
            fail(&host, &store, StorageOp::Sync, e.to_string());
            return;
        }
        last_sync = Instant::now();
        sample.took = started.elapsed().saturating_sub(waited);
        // Counted before anyone can see the writes durable (and read /metrics).
        host.lock().note_sync(sample);
        // Publish first: a connection woken for its events must see them durable.
        host.durability.publish(last, false);
        host.with_server(|s| s.handle_durable(last));
        if compact_after > 0 && since_snapshot >= compact_after && !compacting {
            // Replay starts after what was just appended (and synced): the engine may
            // already hold later batches the store has not seen.
            let from = last;
            match store.begin_snapshot(tidepool_storage::Lsn(from.0)) {
                Ok(writer) => {
                    compacting = true;
                    since_snapshot = 0;
                    let h = host.clone();
                    let tx = done_tx.clone();
                    let _ = thread::Builder::new()
                        .name("tidepool-compactor".into())
                        .spawn(move || {
                            if let Some(done) = write_snapshot(&h, writer) {
                                let _ = tx.send(done);
                                h.wake_writer();
                            }
                        });
                }
                Err(e) => crate::log::warn(&format!("compaction could not start: {e}")),
            }
        }
    }
}

/// Writes the engine's live state into a snapshot, a chunk per lock hold, so
/// writers are never blocked for more than one chunk. Returns the snapshot and the
/// LSN that must be durable before it may be installed.
fn write_snapshot(
    host: &Host,
    mut writer: tidepool_storage::SnapshotWriter,
) -> Option<(FinishedSnapshot, Lsn)> {
    let mut cursor = SnapshotCursor::default();
    let covers = loop {
        let (chunk, at) = {
            let s = host.lock();
            (s.snapshot_chunk(&mut cursor, 2_000), s.last_lsn())
        };
        let Some(chunk) = chunk else { break at };
        if let Err(e) = writer.write_chunk(&chunk) {
            crate::log::warn(&format!("compaction failed: {e}"));
            return None;
        }
    };
    match writer.finish() {
        Ok(done) => Some((done, covers)),
        Err(e) => {
            crate::log::warn(&format!("compaction failed: {e}"));
            None
        }
    }
}

fn fail(host: &Host, store: &Store, op: StorageOp, detail: String) {
    let failure = StorageFailure { op, detail };
    crate::log::line(
        tidepool_core::config::LogLevel::Error,
        &format!("storage failure, refusing writes until restart: {failure}"),
    );
    let durable = Lsn(store.synced_lsn().0);
    host.lock().handle_storage_failure(failure);
    host.durability.publish(durable, true);
    let all: Vec<ConnId> = host
        .wakers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .copied()
        .collect();
    host.wake(&all);
}

#[cfg(test)]
mod tests {
    /// The engine refuses an operation before its batch outgrows one frame,
    /// so no write of a client can make the store refuse a batch (which
    /// would make the server read-only).
    #[test]
    fn an_admitted_batch_fits_in_one_frame() {
        const {
            assert!(
                tidepool_core::engine::MAX_BATCH_BYTES < tidepool_storage::frame::MAX_BATCH_BYTES
            )
        };
    }
}
