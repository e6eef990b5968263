//! The wall clock, read by the runtimes and handed to `core` as `now`.

use std::time::{SystemTime, UNIX_EPOCH};
use tidepool_core::time::Timestamp;

/// The wall clock as core wants it.
pub fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_micros(d.as_micros() as i64)
}
