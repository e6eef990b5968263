//! Identifier newtypes, so a connection id is never confused with a log position.

use crate::rng::Rng;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A connection, as numbered by the runtime.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConnId(pub u64);

/// Log sequence number: the position of a committed batch in the log. Also the
/// resume token of live subscriptions (`Last-Event-ID`).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Makes record ids that sort by creation time (so an unsorted query returns records
/// in insertion order) and are URL-safe: 26 characters of Crockford base32, a 48-bit
/// millisecond timestamp followed by 80 bits from a monotonic counter seeded at random
/// (the ULID layout).
#[derive(Debug)]
pub struct IdGenerator {
    rng: Rng,
    last_millis: i64,
    last_low: u128,
}

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

impl IdGenerator {
    pub fn new(seed: u64) -> Self {
        IdGenerator {
            rng: Rng::new(seed),
            last_millis: i64::MIN,
            last_low: 0,
        }
    }

    pub fn next_id(&mut self, now: Timestamp) -> String {
        let millis = now.millis().max(self.last_millis);
        let low = if millis == self.last_millis {
            self.last_low.wrapping_add(1) & ((1u128 << 80) - 1)
        } else {
            (u128::from(self.rng.next_u64()) << 16 | u128::from(self.rng.next_u64() as u16))
                & ((1u128 << 79) - 1)
        };
        self.last_millis = millis;
        self.last_low = low;
        let value = (u128::from(millis as u64 & 0xFFFF_FFFF_FFFF) << 80) | low;
        let mut out = [0u8; 26];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 5 * (25 - i);
            *slot = CROCKFORD[((value >> shift) & 31) as usize];
        }
        out.iter().map(|&b| b as char).collect()
    }

    /// A random token (hex) for transaction and subscription ids.
    pub fn token(&mut self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        self.rng.fill(&mut buf);
        buf.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_are_unique() {
        let mut g = IdGenerator::new(7);
        let a = g.next_id(Timestamp::from_millis(1_000));
        let b = g.next_id(Timestamp::from_millis(1_000));
        let c = g.next_id(Timestamp::from_millis(999)); // clock went back
        let d = g.next_id(Timestamp::from_millis(2_000));
        assert_eq!(a.len(), 26);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
    }
}
