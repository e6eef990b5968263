//! Request rate limits per API key and per client address
//! (`--rate-limit-per-key`, `--rate-limit-per-address`, requests a minute;
//! 0 = off): token buckets that hold a minute's worth and refill evenly, time
//! an argument. A request over a limit is refused with 429 and `Retry-After`
//! before it runs (so retrying it cannot apply it twice); the others carry
//! the `X-RateLimit-*` headers of spec 1.6 for the tighter of the two.

use super::Server;
use crate::error::{Error, ErrorKind, Result};
use crate::time::Timestamp;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

/// Keys or addresses tracked at once; full buckets go first when it is
/// reached (they hold nothing worth remembering).
const MAX_TRACKED: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Timestamp,
}

/// What a request left of its limit, for the response headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Unix seconds when the bucket is full again.
    pub reset: i64,
}

#[derive(Debug)]
struct Buckets<K> {
    by: HashMap<K, Bucket>,
}

impl<K> Default for Buckets<K> {
    fn default() -> Self {
        Buckets { by: HashMap::new() }
    }
}

impl<K: Hash + Eq> Buckets<K> {
    /// Takes one request from `who`'s bucket of `per_minute`.
    fn take<Q>(
        &mut self,
        who: &Q,
        per_minute: u64,
        now: Timestamp,
    ) -> std::result::Result<Quota, u64>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let capacity = per_minute as f64;
        let per_sec = capacity / 60.0;
        if self.by.len() >= MAX_TRACKED && !self.by.contains_key(who) {
            self.by
                .retain(|_, b| b.tokens + now.since(b.at).as_secs_f64() * per_sec < capacity);
            if self.by.len() >= MAX_TRACKED {
                self.by.clear();
            }
        }
        if !self.by.contains_key(who) {
            self.by.insert(
                who.to_owned(),
                Bucket {
                    tokens: capacity,
                    at: now,
                },
            );
        }
        let Some(b) = self.by.get_mut(who) else {
            return Err(1);
        };
        b.tokens = (b.tokens + now.since(b.at).as_secs_f64() * per_sec).min(capacity);
        b.at = now;
        if b.tokens < 1.0 {
            let wait = ((1.0 - b.tokens) / per_sec).ceil().max(1.0);
            return Err(wait as u64);
        }
        b.tokens -= 1.0;
        let to_full = (capacity - b.tokens) / per_sec;
        Ok(Quota {
            limit: per_minute,
            remaining: b.tokens.floor() as u64,
            reset: now.secs() + to_full.ceil() as i64,
        })
    }
}

#[derive(Debug, Default)]
pub struct RateLimits {
    keys: Buckets<String>,
    addresses: Buckets<IpAddr>,
    /// When the last "limit reached" line was logged (once a minute).
    noted: Option<Timestamp>,
}

fn tighter(a: Option<Quota>, b: Option<Quota>) -> Option<Quota> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.remaining <= b.remaining { a } else { b }),
        (a, b) => a.or(b),
    }
}

impl Server {
    /// Takes one request from the caller's key and address budgets: the
    /// quota left (`None` when no limit is set), or 429.
    pub fn take_rate(
        &mut self,
        key_id: Option<&str>,
        ip: Option<IpAddr>,
        now: Timestamp,
    ) -> Result<Option<Quota>> {
        let (per_key, per_address) = (
            self.config.rate_limit_per_key,
            self.config.rate_limit_per_address,
        );
        let by_address = match ip.filter(|_| per_address > 0) {
            Some(ip) => Some(self.rates.addresses.take(&ip, per_address, now)),
            None => None,
        };
        let by_key = match key_id.filter(|_| per_key > 0) {
            Some(k) => Some(self.rates.keys.take(k, per_key, now)),
            None => None,
        };
        let refused = [&by_address, &by_key]
            .into_iter()
            .filter_map(|r| r.as_ref().and_then(|r| r.err()))
            .max();
        if let Some(wait) = refused {
            let by_key = by_key.as_ref().is_some_and(|r| r.is_err());
            self.metrics.rate_limited(by_key);
            if self
                .rates
                .noted
                .is_none_or(|t| now.since(t) >= Duration::from_secs(60))
            {
                self.rates.noted = Some(now);
                let who = key_id.unwrap_or("-");
                let from = ip.map_or_else(|| "-".to_string(), |ip| ip.to_string());
                self.note_at(crate::config::LogLevel::Warn, format!(
                    "security: rate limit reached (key {who}, from {from}); refusing with 429 (said once a minute)"
                ));
            }
            return Err(Error::new(
                ErrorKind::TooManyRequests,
                format!("rate limit reached: try again in {wait} s"),
            )
            .with_header("Retry-After", wait.to_string()));
        }
        Ok(tighter(
            by_address.and_then(|r| r.ok()),
            by_key.and_then(|r| r.ok()),
        ))
    }
}

/// Adds the `X-RateLimit-*` headers (all three, as the clients need).
pub fn with_headers(
    response: crate::wire::http::Response,
    quota: Option<Quota>,
) -> crate::wire::http::Response {
    match quota {
        Some(q) => response
            .with_header("X-RateLimit-Limit", q.limit.to_string())
            .with_header("X-RateLimit-Remaining", q.remaining.to_string())
            .with_header("X-RateLimit-Reset", q.reset.to_string()),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_a_minute_and_refills_evenly() {
        let mut b: Buckets<u8> = Buckets::default();
        let t0 = Timestamp::from_secs(1_000);
        for i in 0..60 {
            let q = b.take(&1, 60, t0).unwrap();
            assert_eq!(q.remaining, 59 - i);
        }
        assert_eq!(b.take(&1, 60, t0), Err(1));
        // One more a second.
        let t1 = Timestamp::from_secs(1_001);
        assert!(b.take(&1, 60, t1).is_ok());
        assert!(b.take(&1, 60, t1).is_err());
        // Someone else is unaffected.
        assert!(b.take(&2, 60, t1).is_ok());
        // A slow limit waits longer.
        let mut slow: Buckets<u8> = Buckets::default();
        slow.take(&1, 1, t0).unwrap();
        assert_eq!(slow.take(&1, 1, t0), Err(60));
    }
}
