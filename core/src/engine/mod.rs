//! The database engine: collections, records, queries, TTL, trash and the key-value
//! store, all in memory. Each operation validates first and then mutates, so it is
//! applied whole or not at all; its log records collect in a `Journal` that
//! `commit` seals into one batch with the next LSN. The runtime persists batches
//! (`poll_log`) and reports them durable; the engine never waits for that itself.
//!
//! One file per job, each adding methods to `Engine`:
//!
//! | file | job |
//! |---|---|
//! | `log.rs` | the journal, commits, replay, and `apply`: the one place a log record becomes state |
//! | `mutation.rs` | the log record format: one `Mutation` definition per record type |
//! | `catalog.rs` | collections and their schemas |
//! | `write.rs` | inserts, updates, actions, deletes, restores, batches |
//! | `read.rs` | lookups, queries, joins, distinct values; snapshots read outside the lock |
//! | `rank.rs` | text, vector and hybrid search over a collection |
//! | `kv.rs` | the key-value store and its links |
//! | `expiry.rs` | TTL, trash retention and the sweep |
//! | `txn.rs` | buffered optimistic transactions |
//! | `snapshot.rs` | fuzzy snapshots for compaction |
//! | `internal.rs` | the server's own records (chat): prefix scans, removal without trash |

pub mod actions;
mod catalog;
pub mod collection;
mod expiry;
pub mod filter;
mod internal;
pub mod kv;
mod log;
pub mod mutation;
pub mod query;
mod rank;
mod read;
pub mod record;
pub mod schema;
pub mod search;
mod snapshot;
pub mod txn;

pub use log::MAX_BATCH_BYTES;
mod write;

pub use expiry::TRASH_RETENTION;
pub use read::{Snapshot, Source};
pub use snapshot::SnapshotCursor;

use crate::error::{Error, Result};
use crate::ids::{IdGenerator, Lsn};
use crate::time::{parse_duration, Timestamp};
use collection::Collection;
use kv::{KvEntry, Link};
use mutation::Journal;
use record::{Interner, Record};
use serde_json::Value as J;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use tidepool_search::HalfRows;

const MAX_NAME_BYTES: usize = 512;
const MAX_ID_BYTES: usize = 1024;

/// A committed batch waiting to be made durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub lsn: Lsn,
    pub payload: Vec<u8>,
}

/// A record as found: its collection's primary-key name, its id and contents.
#[derive(Clone, Copy, Debug)]
pub struct Found<'a> {
    pub pk: &'a str,
    pub id: &'a str,
    pub record: &'a Record,
}

/// One result row of a query, with its joined records.
#[derive(Debug)]
pub struct Row<'a> {
    pub found: Found<'a>,
    pub joined: Vec<(&'a str, Vec<Found<'a>>)>,
}

/// One search result.
#[derive(Debug)]
pub struct SearchHit<'a> {
    pub found: Found<'a>,
    pub score: f32,
    pub matched_fields: Vec<String>,
}

/// Outcome of a batch call: ids that succeeded and per-item errors.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchOutcome {
    pub successful: Vec<String>,
    pub failed: Vec<(Option<String>, String)>,
}

#[derive(Debug)]
pub struct Engine {
    collections: BTreeMap<Box<str>, Collection>,
    kv: BTreeMap<Box<str>, KvEntry>,
    kv_expiry: BTreeSet<(Timestamp, Box<str>)>,
    links: BTreeMap<Box<str>, Vec<Link>>,
    interner: Interner,
    ids: IdGenerator,
    journal: Journal,
    last_lsn: Lsn,
    committed: VecDeque<Committed>,
    txns: txn::Transactions,
    /// Conditions one query may evaluate (`--max-query-work`).
    query_work: u64,
    /// The largest batch one operation may log (`--max-batch-bytes`).
    max_batch: usize,
    /// Whether cosine graphs walk a half-precision copy (`--vector-half-rows`).
    half_rows: HalfRows,
    /// A write left a text index with removed versions to sweep, and
    /// `search_upkeep` has not yet swept them all.
    sweep_wanted: bool,
}

pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{kind} name must not be empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(format!(
            "{kind} name is longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{kind} name must not contain control characters"
        )));
    }
    // One spelling per name: `café` as e + U+0301 (NFD, as macOS file names
    // come) would otherwise be a different collection from U+00E9 (NFC).
    if !name.is_ascii() && !unicode_normalization::is_nfc(name) {
        let nfc: String = unicode_normalization::UnicodeNormalization::nfc(name).collect();
        return Err(Error::invalid(format!(
            "{kind} name must be in Unicode normalization form C (NFC): send `{nfc}` \
             with composed characters"
        )));
    }
    Ok(())
}

fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(Error::invalid(format!(
            "a record id must be 1 to {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

fn not_found(record: Option<&Record>, now: Timestamp) -> Error {
    match record {
        Some(r) if r.is_expired(now) => Error::not_found("Record not found (expired)"),
        _ => Error::not_found("Record not found"),
    }
}

fn missing_collection(name: &str) -> Error {
    Error::not_found(format!("Collection not found: {name}"))
}

/// Reads a TTL as clients send it: duration text, integer seconds, an envelope, or
/// an absolute RFC 3339 time. `null` means "no expiry".
pub fn parse_ttl(v: &J, now: Timestamp) -> Result<Option<Timestamp>> {
    let bad = || {
        Error::invalid(
            "invalid ttl: use seconds (3600), a duration (\"30s\", \"5m\", \"1h30m\", \"2d\") or an RFC 3339 time",
        )
    };
    match v {
        J::Null => Ok(None),
        J::Number(n) => {
            let secs = n
                .as_f64()
                .filter(|s| *s > 0.0 && s.is_finite())
                .ok_or_else(bad)?;
            Ok(Some(
                now.saturating_add(Duration::from_secs_f64(secs.min(1e12))),
            ))
        }
        J::String(s) => {
            if let Some(d) = parse_duration(s) {
                if d.is_zero() {
                    return Err(bad());
                }
                return Ok(Some(now.saturating_add(d)));
            }
            Timestamp::parse_rfc3339(s).map(Some).ok_or_else(bad)
        }
        J::Object(o) => match (o.get("value"), o.get("secs")) {
            (Some(inner), _) => parse_ttl(inner, now),
            (None, Some(secs)) => parse_ttl(secs, now),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

impl Engine {
    pub fn new(seed: u64) -> Self {
        Engine {
            collections: BTreeMap::new(),
            kv: BTreeMap::new(),
            kv_expiry: BTreeSet::new(),
            links: BTreeMap::new(),
            interner: Interner::default(),
            ids: IdGenerator::new(seed),
            journal: Journal::default(),
            last_lsn: Lsn::ZERO,
            committed: VecDeque::new(),
            txns: txn::Transactions::default(),
            query_work: u64::MAX,
            max_batch: MAX_BATCH_BYTES,
            half_rows: HalfRows::Auto,
            sweep_wanted: false,
        }
    }

    /// Whether cosine graphs walk a half-precision copy of their vectors:
    /// the indexes there are make or drop it now, later ones follow.
    pub fn set_vector_half_rows(&mut self, half_rows: HalfRows) {
        self.half_rows = half_rows;
        for c in self.collections.values_mut() {
            c.set_half_rows(half_rows);
        }
    }

    /// Gives idle time to the text indexes' sweeps of removed versions:
    /// reads up to about `bytes` of their lists, collection by collection.
    /// Returns whether a sweep is still under way (call again soon).
    pub fn search_upkeep(&mut self, bytes: usize) -> bool {
        let mut left = bytes;
        for c in self.collections.values_mut() {
            left = left.saturating_sub(c.sweep_removed(left));
            if c.search_state().sweeping() {
                return true;
            }
        }
        // Every index that wanted a sweep had it to the end.
        self.sweep_wanted = false;
        false
    }

    /// Whether a write left a text index with removed versions for
    /// `search_upkeep` to sweep (kept as writes are applied, so a write
    /// does not look at every collection).
    pub fn search_upkeep_wanted(&self) -> bool {
        self.sweep_wanted
    }

    /// Heap bytes of each collection's search indexes, as (collection,
    /// text, vectors), for the collections that have any.
    pub fn search_index_bytes(&self) -> Vec<(&str, usize, usize)> {
        self.collections
            .iter()
            .map(|(name, c)| {
                let s = c.search_state();
                (&**name, s.text_bytes(), s.vector_bytes())
            })
            .filter(|&(_, text, vectors)| text + vectors > 0)
            .collect()
    }

    /// Conditions one query may evaluate before it is refused (`find`).
    pub fn set_query_work(&mut self, budget: u64) {
        self.query_work = budget.max(1);
    }

    /// Encodes up to `max_records` more of the live state as a batch of
    /// full-state mutations; `None` when the cursor has covered everything.
    pub fn snapshot_chunk(
        &self,
        cursor: &mut SnapshotCursor,
        max_records: usize,
    ) -> Option<Vec<u8>> {
        snapshot::chunk(self, cursor, max_records)
    }

    pub fn new_id(&mut self, now: Timestamp) -> String {
        self.ids.next_id(now)
    }

    pub fn token(&mut self, bytes: usize) -> String {
        self.ids.token(bytes)
    }
}
