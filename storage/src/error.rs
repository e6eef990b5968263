//! The store's error type. Messages are shown to operators, so each names the file and
//! byte offset involved and says what to do.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::Lsn;

/// Everything that can go wrong in the store, typed by whose fault it is: the disk
/// ([`StoreError::Io`]), the data on it ([`StoreError::Corrupt`]), another process
/// ([`StoreError::Locked`]), an earlier failure ([`StoreError::Poisoned`]) or the caller
/// ([`StoreError::OutOfOrder`], [`StoreError::TooLarge`], [`StoreError::Misuse`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// An operating-system call failed.
    Io {
        /// What the store was doing ("writing", "syncing", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Bytes on disk are damaged in a way that is not a torn tail.
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the first damaged record in that file.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// Another process (or another `Store` in this one) has the directory open.
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// An earlier I/O error made the store read-only until it is reopened.
    Poisoned,
    /// `append` was given an LSN not greater than the last one.
    OutOfOrder {
        /// The last appended LSN.
        last: Lsn,
        /// The LSN that was offered.
        got: Lsn,
    },
    /// A batch or snapshot chunk exceeds the format's size limit.
    TooLarge {
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The API was used in a way its contract forbids (explained in the message).
    Misuse {
        /// What was wrong.
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        StoreError::Corrupt {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn misuse(reason: impl Into<String>) -> Self {
        StoreError::Misuse {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { op, path, source } => {
                write!(f, "I/O error while {op} {}: {source}", path.display())
            }
            StoreError::Corrupt {
                file,
                offset,
                reason,
            } => write!(
                f,
                "corrupt data in {} at byte offset {offset}: {reason}; refusing to open \
                 (open with salvage enabled to keep everything before this point and move \
                 the rest aside as *.corrupt)",
                file.display()
            ),
            StoreError::Locked { dir } => write!(
                f,
                "data directory {} is locked by another process (lock file {}); stop the \
                 other server or use a different data directory",
                dir.display(),
                dir.join(crate::segment::LOCK_FILE).display()
            ),
            StoreError::Poisoned => {
                f.write_str("storage is read-only after an I/O error; restart the server")
            }
            StoreError::OutOfOrder { last, got } => write!(
                f,
                "log sequence number {got} is not greater than the last appended {last}"
            ),
            StoreError::TooLarge { len, max } => {
                write!(f, "record of {len} bytes exceeds the limit of {max} bytes")
            }
            StoreError::Misuse { reason } => write!(f, "storage API misuse: {reason}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
