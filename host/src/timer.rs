//! The server's one timer: a thread that sleeps until `Server::poll_timeout`
//! and runs `handle_timeout` then. `Host::with_server` wakes it early when an
//! operation moved the deadline earlier, so nothing polls.

use crate::clock;
use crate::shared::Host;
use crossbeam_channel::Receiver;
use std::sync::Arc;
use std::time::Duration;

/// Longest sleep with no deadline at all (a safety net, not a poll).
const IDLE_SLEEP: Duration = Duration::from_secs(3600);

pub(crate) fn timer_loop(host: Arc<Host>, wake: Receiver<()>) {
    loop {
        let deadline = host.lock().poll_timeout();
        host.arm_timer(deadline);
        let now = clock::now();
        let wait = match deadline {
            Some(t) if t <= now => Duration::ZERO,
            Some(t) => t.since(now),
            None => IDLE_SLEEP,
        };
        if !wait.is_zero() {
            // Woken early: the deadline moved; look again.
            if wake.recv_timeout(wait).is_ok() {
                continue;
            }
        }
        host.with_server(|s| s.handle_timeout(clock::now()));
    }
}
