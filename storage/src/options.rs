//! The store's vocabulary: log sequence numbers, the fsync policy and the open options.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A log sequence number. Assigned by the engine, strictly increasing across appends;
/// `Lsn(0)` means "before the first batch".
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// When the runtime's commit loop calls [`crate::Store::sync`]. The store only keeps
/// the setting; deciding when to sync is the runtime's job (it owns the clock).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Sync after every group of appends, before acknowledging it.
    #[default]
    Sync,
    /// Gather appends for up to `interval_ms`, then sync once for the whole group.
    Batch {
        /// Longest a commit waits for company before the group is synced.
        interval_ms: u64,
    },
    /// Never sync explicitly: acknowledgements do not survive a power cut.
    None,
}

impl SyncPolicy {
    /// The interval used by the bare word `batch`.
    pub const DEFAULT_BATCH_INTERVAL_MS: u64 = 10;
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncPolicy::Sync => f.write_str("sync"),
            SyncPolicy::Batch { interval_ms } => write!(f, "batch:{interval_ms}"),
            SyncPolicy::None => f.write_str("none"),
        }
    }
}

/// Why a fsync policy string was rejected; the message lists the accepted forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseSyncPolicyError {
    input: String,
}

impl fmt::Display for ParseSyncPolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid fsync policy {:?}: expected \"sync\", \"batch\", \"batch:<milliseconds>\" or \"none\"",
            self.input
        )
    }
}

impl std::error::Error for ParseSyncPolicyError {}

impl FromStr for SyncPolicy {
    type Err = ParseSyncPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseSyncPolicyError {
            input: s.to_owned(),
        };
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "sync" => Ok(SyncPolicy::Sync),
            "none" => Ok(SyncPolicy::None),
            "batch" => Ok(SyncPolicy::Batch {
                interval_ms: Self::DEFAULT_BATCH_INTERVAL_MS,
            }),
            _ => {
                let ms = t.strip_prefix("batch:").ok_or_else(err)?;
                let interval_ms = ms.trim().parse::<u64>().map_err(|_| err())?;
                Ok(SyncPolicy::Batch { interval_ms })
            }
        }
    }
}

/// How to open a [`crate::Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Data directory; created if missing. Holds segments, snapshots and the lock file.
    pub dir: PathBuf,
    /// A segment is sealed and a new one started once it would grow past this size
    /// (a single batch larger than this gets a segment of its own). Default 64 MiB.
    pub segment_bytes: u64,
    /// The newest this-many bytes of log are kept for [`crate::StoreReader::read_after`]
    /// even when a snapshot covers them. Default 256 MiB.
    pub history_retention_bytes: u64,
    /// On corruption, keep everything before it and move the rest aside (`*.corrupt`)
    /// instead of refusing to open.
    pub salvage: bool,
    /// The fsync policy the runtime's commit loop should follow.
    pub sync: SyncPolicy,
}

impl StoreOptions {
    /// Default segment size: 64 MiB.
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
    /// Default history retention: 256 MiB.
    pub const DEFAULT_HISTORY_RETENTION_BYTES: u64 = 256 << 20;

    /// Options with the defaults for everything but the directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreOptions {
            dir: dir.into(),
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            history_retention_bytes: Self::DEFAULT_HISTORY_RETENTION_BYTES,
            salvage: false,
            sync: SyncPolicy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policy_parses_and_round_trips() {
        let check = |s: &str, want: Option<SyncPolicy>| {
            assert_eq!(s.parse::<SyncPolicy>().ok(), want, "{s}");
            if let Some(p) = want {
                assert_eq!(p.to_string().parse::<SyncPolicy>().ok(), Some(p));
            }
        };
        check("sync", Some(SyncPolicy::Sync));
        check("SYNC", Some(SyncPolicy::Sync));
        check("none", Some(SyncPolicy::None));
        check("batch", Some(SyncPolicy::Batch { interval_ms: 10 }));
        check("batch:3", Some(SyncPolicy::Batch { interval_ms: 3 }));
        check("batch:", None);
        check("batch:x", None);
        check("always", None);
        assert!("fast"
            .parse::<SyncPolicy>()
            .unwrap_err()
            .to_string()
            .contains("batch:<milliseconds>"));
    }
}
