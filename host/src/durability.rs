//! The durable LSN, readable without the server lock, and the ways to wait for
//! it to move.

use crate::shared::Waker;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;
use tidepool_core::ids::Lsn;

/// The durable LSN, readable without the server lock, and a way to wait for it.
#[derive(Default)]
pub struct Durability {
    lsn: AtomicU64,
    failed: AtomicBool,
    gate: Mutex<()>,
    changed: Condvar,
    /// Extra wake-up hook (the async runtime's event).
    hook: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Connections waiting for the next durability report.
    waiting: Mutex<Vec<Waker>>,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("lsn", &self.lsn())
            .field("failed", &self.failed())
            .finish()
    }
}

impl Durability {
    pub fn lsn(&self) -> Lsn {
        Lsn(self.lsn.load(Ordering::Acquire))
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn set_hook(&self, hook: Box<dyn Fn() + Send + Sync>) {
        let _ = self.hook.set(hook);
    }

    pub(crate) fn publish(&self, lsn: Lsn, failed: bool) {
        {
            let _g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
            self.lsn.fetch_max(lsn.0, Ordering::AcqRel);
            if failed {
                self.failed.store(true, Ordering::Release);
            }
        }
        self.changed.notify_all();
        if let Some(hook) = self.hook.get() {
            hook();
        }
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        for w in waiting {
            w();
        }
    }

    /// Calls `waker` at the next durability report (or failure).
    pub fn notify_next(&self, waker: Waker) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(waker);
    }

    /// Blocks until the durable LSN passes `lsn`, storage fails, or `timeout`.
    pub fn wait_past(&self, lsn: Lsn, timeout: Duration) {
        let g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.changed.wait_timeout_while(g, timeout, |_| {
            self.lsn.load(Ordering::Acquire) < lsn.0 && !self.failed.load(Ordering::Acquire)
        });
    }
}
