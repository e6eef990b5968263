//! The expiry sweeper: runs the server's timers when core's deadline comes.

use crate::clock;
use crate::shared::Host;
use crossbeam_channel::Receiver;
use std::sync::Arc;
use std::time::Duration;

/// a deadline that moved earlier is never missed by more than that).
pub(crate) fn sweeper_loop(host: Arc<Host>, wake: Receiver<()>) {
    loop {
        let deadline = host.lock().poll_timeout();
        let now = clock::now();
        let wait = match deadline {
            Some(t) if t <= now => Duration::ZERO,
            Some(t) => t.since(now).min(Duration::from_secs(1)),
            None => Duration::from_secs(1),
        };
        if !wait.is_zero() {
            let _ = wake.recv_timeout(wait);
            continue;
        }
        host.with_server(|s| s.handle_timeout(clock::now()));
    }
}
