//! API-key guessing, throttled per client address: after `MAX_FAILURES`
//! wrong keys within `WINDOW`, `/api/auth/token` answers 429 with
//! `Retry-After` until the window ends. Time is an argument; the table is
//! bounded.

use super::Server;
use crate::error::{Error, ErrorKind, Result};
use crate::time::Timestamp;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

pub const MAX_FAILURES: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once (expired windows go first).
const MAX_ADDRESSES: usize = 10_000;

/// Failed key attempts per address: when its window began, and how many.
#[derive(Debug, Default)]
pub struct Guesses {
    by_address: HashMap<IpAddr, (Timestamp, u32)>,
}

impl Server {
    /// Refuses a key attempt from an address that failed too often lately.
    pub fn check_guesses(&self, ip: Option<IpAddr>, now: Timestamp) -> Result<()> {
        let Some((start, n)) = ip.and_then(|ip| self.guesses.by_address.get(&ip)) else {
            return Ok(());
        };
        let left = WINDOW.saturating_sub(now.since(*start));
        if *n < MAX_FAILURES || left.is_zero() {
            return Ok(());
        }
        let secs = left.as_secs().max(1);
        Err(Error::new(
            ErrorKind::TooManyRequests,
            format!("too many wrong API keys from this address; try again in {secs} s"),
        )
        .with_header("Retry-After", secs.to_string()))
    }

    /// Counts a wrong key from `ip`.
    pub fn failed_guess(&mut self, ip: Option<IpAddr>, now: Timestamp) {
        let Some(ip) = ip else { return };
        let table = &mut self.guesses.by_address;
        if table.len() >= MAX_ADDRESSES && !table.contains_key(&ip) {
            table.retain(|_, (start, _)| now.since(*start) < WINDOW);
            if table.len() >= MAX_ADDRESSES {
                table.clear();
            }
        }
        let entry = table.entry(ip).or_insert((now, 0));
        if now.since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 == MAX_FAILURES {
            self.note_at(crate::config::LogLevel::Warn, format!(
                "{MAX_FAILURES} wrong API keys from {ip} within {} s: refusing its attempts (429) for the rest of the window",
                WINDOW.as_secs()
            ));
        }
    }
}
