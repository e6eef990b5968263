//! Log records: what the engine asks storage to make durable, and what recovery
//! replays. Every record is an idempotent, full-state write of one key (the whole
//! record, the whole KV entry, the whole schema), so a fuzzy snapshot followed by a
//! replay of the log from the snapshot's start yields exactly the committed state.
//!
//! There is **one definition per record type**: the `Mutation` enum below. The
//! engine writes it (strings and records borrowed, or records moved in), recovery
//! decodes it with field names borrowed from the payload, change events read it,
//! and `Engine::apply` (in `log.rs`) is the only code that turns one into state.
//! A new record type is one variant here and one arm there; add it at the end of
//! the enum, since bincode numbers variants by position.

use super::kv::{KvEntry, Link};
use super::record::{Interner, Record};
use super::schema::Schema;
use crate::ids::Lsn;
use crate::time::Timestamp;
use crate::value::Value;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// One log record.
#[derive(Debug, Serialize, Deserialize)]
pub enum Mutation<'a> {
    /// `live[id] = record` (insert, update, action; creates the collection).
    /// `insert` says whether the id was new, for change events.
    Put {
        #[serde(borrow)]
        collection: Cow<'a, str>,
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(borrow)]
        record: LoggedRecord<'a>,
        insert: bool,
    },
    /// Removes `live[id]`; with `trash`, keeps it in the trash (soft delete).
    Remove {
        #[serde(borrow)]
        collection: Cow<'a, str>,
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(borrow)]
        trash: Option<(LoggedRecord<'a>, Timestamp)>,
    },
    /// `trash[id]` goes away and `live[id] = record`.
    Restore {
        #[serde(borrow)]
        collection: Cow<'a, str>,
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(borrow)]
        record: LoggedRecord<'a>,
    },
    /// `trash[id]` goes away for good.
    TrashPurge {
        #[serde(borrow)]
        collection: Cow<'a, str>,
        #[serde(borrow)]
        id: Cow<'a, str>,
    },
    /// Creates the collection if needed and sets its schema.
    SetSchema {
        #[serde(borrow)]
        collection: Cow<'a, str>,
        schema: Cow<'a, Schema>,
    },
    DropCollection {
        #[serde(borrow)]
        collection: Cow<'a, str>,
    },
    KvPut {
        #[serde(borrow)]
        key: Cow<'a, str>,
        entry: Cow<'a, KvEntry>,
    },
    KvRemove {
        #[serde(borrow)]
        key: Cow<'a, str>,
    },
    KvClear,
    KvLinks {
        #[serde(borrow)]
        key: Cow<'a, str>,
        links: Cow<'a, [Link]>,
    },
}

/// A record inside a log record: borrowed from the engine (snapshots), moved in by
/// a write, or decoded with its field names borrowed from the payload (replay
/// interns them without allocating). All three encode identically to `Record`.
#[derive(Debug)]
pub enum LoggedRecord<'a> {
    Ref(&'a Record),
    Owned(Record),
    Wire(RecordWire<'a>),
}

impl LoggedRecord<'_> {
    /// The record to keep, field names interned.
    pub fn into_record(self, interner: &mut Interner) -> Record {
        match self {
            LoggedRecord::Ref(r) => r.clone(),
            LoggedRecord::Owned(r) => r,
            LoggedRecord::Wire(w) => w.into_record(interner),
        }
    }

    /// The record for a reader without an interner (change events).
    pub fn to_record(&self) -> Cow<'_, Record> {
        match self {
            LoggedRecord::Ref(r) => Cow::Borrowed(*r),
            LoggedRecord::Owned(r) => Cow::Borrowed(r),
            LoggedRecord::Wire(w) => Cow::Owned(w.to_record()),
        }
    }
}

impl Serialize for LoggedRecord<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LoggedRecord::Ref(r) => r.serialize(s),
            LoggedRecord::Owned(r) => r.serialize(s),
            LoggedRecord::Wire(w) => w.serialize(s),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LoggedRecord<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RecordWire::deserialize(d).map(LoggedRecord::Wire)
    }
}

/// A record as the log holds it, with field names borrowed from the payload
/// (same encoding as `Record`).
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordWire<'a> {
    #[serde(borrow)]
    pub fields: Vec<(&'a str, Value)>,
    pub expires_at: Option<Timestamp>,
    pub sliding_micros: Option<u64>,
    pub version: Lsn,
}

impl RecordWire<'_> {
    pub fn into_record(self, interner: &mut Interner) -> Record {
        let fields = self
            .fields
            .into_iter()
            .map(|(k, v)| (interner.intern(k), v))
            .collect();
        Record::from_parts(fields, self.expires_at, self.sliding_micros, self.version)
    }

    fn to_record(&self) -> Record {
        let fields = self
            .fields
            .iter()
            .map(|(k, v)| (std::sync::Arc::from(*k), v.clone()))
            .collect();
        Record::from_parts(fields, self.expires_at, self.sliding_micros, self.version)
    }
}

/// Collects the mutations of one operation into one batch payload: the commit
/// time (i64 microseconds, little-endian) followed by a bincode `Vec<Mutation>`
/// written element by element (the length is patched at the end).
#[derive(Debug, Default)]
pub struct Journal {
    buf: Vec<u8>,
    count: u64,
}

const HEADER: usize = 16;

impl Journal {
    pub fn record(&mut self, m: &Mutation<'_>) {
        if self.count == 0 {
            self.buf.clear();
            self.buf.extend_from_slice(&[0; HEADER]);
        }
        // Serialising into a Vec cannot fail for these types.
        let _ = bincode::serialize_into(&mut self.buf, m);
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the batch holds so far.
    pub fn len(&self) -> usize {
        if self.count == 0 {
            0
        } else {
            self.buf.len()
        }
    }

    /// Where the batch stands, to `rewind` to.
    pub fn mark(&self) -> (usize, u64) {
        (self.buf.len(), self.count)
    }

    /// Forgets what was recorded since `mark`.
    pub fn rewind(&mut self, (len, count): (usize, u64)) {
        if count == 0 {
            self.discard();
        } else {
            self.buf.truncate(len);
            self.count = count;
        }
    }

    /// The finished payload, or `None` if the operation changed nothing.
    pub fn take(&mut self, at: Timestamp) -> Option<Vec<u8>> {
        if self.count == 0 {
            return None;
        }
        self.buf[..8].copy_from_slice(&at.micros().to_le_bytes());
        self.buf[8..HEADER].copy_from_slice(&self.count.to_le_bytes());
        self.count = 0;
        Some(std::mem::take(&mut self.buf))
    }

    /// Drops what was recorded (the operation failed after all).
    pub fn discard(&mut self) {
        self.count = 0;
        self.buf.clear();
    }
}

/// A decoded batch: when it was committed and what it changed. Strings and field
/// names borrow from the payload; the batch is `Send`, so recovery decodes the
/// next one on another thread while the engine applies this one.
#[derive(Debug)]
pub struct Batch<'a> {
    pub at: Timestamp,
    pub mutations: Vec<Mutation<'a>>,
}

/// Why a batch payload could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the 16-byte header.
    Short,
    /// The header claims more mutations than there are bytes.
    Count { claimed: u64, bytes: usize },
    /// The mutations do not decode (bincode's description).
    Body(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short => write!(f, "batch shorter than its header"),
            DecodeError::Count { claimed, bytes } => {
                write!(f, "batch claims {claimed} mutations in {bytes} bytes")
            }
            DecodeError::Body(e) => write!(f, "undecodable batch: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a batch payload. Corrupt payloads are errors, never panics.
pub fn decode(payload: &[u8]) -> Result<Batch<'_>, DecodeError> {
    let word = |range: std::ops::Range<usize>| -> Result<[u8; 8], DecodeError> {
        payload
            .get(range)
            .and_then(|b| b.try_into().ok())
            .ok_or(DecodeError::Short)
    };
    let at = Timestamp::from_micros(i64::from_le_bytes(word(0..8)?));
    let count = u64::from_le_bytes(word(8..HEADER)?);
    // Each mutation takes at least a few bytes: refuse absurd counts before allocating.
    if count > payload.len() as u64 {
        return Err(DecodeError::Count {
            claimed: count,
            bytes: payload.len(),
        });
    }
    let mutations = bincode::deserialize::<Vec<Mutation<'_>>>(&payload[8..])
        .map_err(|e| DecodeError::Body(e.to_string()))?;
    Ok(Batch { at, mutations })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    /// What a mutation says, whatever form its record is held in.
    fn summary(m: &Mutation<'_>) -> String {
        match m {
            Mutation::Put {
                collection,
                id,
                record,
                insert,
            } => format!("put {collection}/{id} {:?} {insert}", record.to_record()),
            Mutation::Remove {
                collection,
                id,
                trash,
            } => format!(
                "remove {collection}/{id} {:?}",
                trash
                    .as_ref()
                    .map(|(r, at)| (r.to_record().into_owned(), *at))
            ),
            Mutation::KvClear => "kv clear".into(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn written_and_decoded_forms_agree() {
        let mut record = Record::new();
        record.set("name".into(), Value::String("Ada".into()));
        let written = [
            Mutation::Put {
                collection: "users".into(),
                id: "u1".into(),
                record: LoggedRecord::Ref(&record),
                insert: true,
            },
            Mutation::Remove {
                collection: "users".into(),
                id: "u1".into(),
                trash: Some((LoggedRecord::Owned(record.clone()), Timestamp::from_secs(5))),
            },
            Mutation::KvClear,
        ];
        let mut j = Journal::default();
        for m in &written {
            j.record(m);
        }
        let payload = j.take(Timestamp::from_secs(9)).unwrap();
        let decoded = decode(&payload).unwrap();
        assert_eq!(decoded.at, Timestamp::from_secs(9));
        let want: Vec<String> = written.iter().map(summary).collect();
        let got: Vec<String> = decoded.mutations.iter().map(summary).collect();
        assert_eq!(got, want);
        let mut interner = Interner::default();
        match decoded.mutations.into_iter().next().unwrap() {
            Mutation::Put { record: r, .. } => assert_eq!(r.into_record(&mut interner), record),
            other => panic!("{other:?}"),
        }
        assert!(decode(&payload[..payload.len() - 1]).is_err());
        assert_eq!(decode(&[255; 8]).unwrap_err(), DecodeError::Short);
    }
}
