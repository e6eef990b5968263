//! The reader threads: they run the reads the server deferred
//! (`Server::poll_read`) on snapshots, outside its lock, then hand the
//! replies back (`Server::finish_read`), which wakes the waiting connections.
//! A long query occupies a reader thread, never the lock: writes, lookups and
//! health checks go on meanwhile. Stored functions' CPU work (bcrypt) runs the
//! same way on a compute thread of its own, so it never queues a query.

use crate::shared::Host;
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::io;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Instant;
use tidepool_core::server::reads::ReadJob;

/// The queue of deferred reads: the host sends, the reader threads receive.
pub(crate) fn queue() -> (Sender<ReadJob>, Receiver<ReadJob>) {
    unbounded()
}

/// Starts `threads` threads (at least one) named `tidepool-{what}-N` on the
/// queue's jobs.
pub(crate) fn start(
    host: &Arc<Host>,
    jobs: &Receiver<ReadJob>,
    threads: usize,
    what: &str,
) -> io::Result<()> {
    for i in 0..threads.max(1) {
        let (host, rx) = (Arc::downgrade(host), jobs.clone());
        thread::Builder::new()
            .name(format!("tidepool-{what}-{i}"))
            .spawn(move || reader_loop(&host, &rx))?;
    }
    Ok(())
}

/// How many reader threads a setting of `configured` means (0: one per CPU,
/// at least 2, so one long query never queues every other behind it).
pub(crate) fn threads(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

fn reader_loop(host: &Weak<Host>, rx: &Receiver<ReadJob>) {
    for job in rx {
        let deadline = Instant::now() + job.max_time();
        let done = job.run(&|| Instant::now() >= deadline);
        let Some(host) = host.upgrade() else {
            return;
        };
        host.with_server(|s| s.finish_read(done, crate::clock::now()));
    }
}
