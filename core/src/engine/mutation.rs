//! Log records: what the engine asks storage to make durable, and what recovery
//! replays. Every record is an idempotent, full-state write of one key (the whole
//! record, the whole KV entry, the whole schema), so a fuzzy snapshot followed by a
//! replay of the log from the snapshot's start yields exactly the committed state.

use super::kv::{KvEntry, Link};
use super::record::{Interner, Record};
use super::schema::Schema;
use crate::ids::Lsn;
use crate::time::Timestamp;
use crate::value::Value;
use serde::{Deserialize, Serialize};

/// Owned form, produced by decoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Mutation {
    /// `live[id] = record` (insert, update, action; creates the collection).
    /// `insert` says whether the id was new, for change events.
    Put {
        collection: Box<str>,
        id: Box<str>,
        record: Record,
        insert: bool,
    },
    /// Removes `live[id]`; with `trash`, keeps it in the trash (soft delete).
    Remove {
        collection: Box<str>,
        id: Box<str>,
        trash: Option<(Record, Timestamp)>,
    },
    /// `trash[id]` goes away and `live[id] = record`.
    Restore {
        collection: Box<str>,
        id: Box<str>,
        record: Record,
    },
    /// `trash[id]` goes away for good.
    TrashPurge {
        collection: Box<str>,
        id: Box<str>,
    },
    /// Creates the collection if needed and sets its schema.
    SetSchema {
        collection: Box<str>,
        schema: Schema,
    },
    DropCollection {
        collection: Box<str>,
    },
    KvPut {
        key: Box<str>,
        entry: KvEntry,
    },
    KvRemove {
        key: Box<str>,
    },
    KvClear,
    KvLinks {
        key: Box<str>,
        links: Vec<Link>,
    },
}

/// Borrowed form with the identical encoding, so writing never clones a record.
#[derive(Serialize)]
pub enum MutationRef<'a> {
    Put {
        collection: &'a str,
        id: &'a str,
        record: &'a Record,
        insert: bool,
    },
    Remove {
        collection: &'a str,
        id: &'a str,
        trash: Option<(&'a Record, Timestamp)>,
    },
    Restore {
        collection: &'a str,
        id: &'a str,
        record: &'a Record,
    },
    TrashPurge {
        collection: &'a str,
        id: &'a str,
    },
    SetSchema {
        collection: &'a str,
        schema: &'a Schema,
    },
    DropCollection {
        collection: &'a str,
    },
    KvPut {
        key: &'a str,
        entry: &'a KvEntry,
    },
    KvRemove {
        key: &'a str,
    },
    KvClear,
    KvLinks {
        key: &'a str,
        links: &'a [Link],
    },
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
    pub fn record(&mut self, m: &MutationRef<'_>) {
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

/// A record as the log holds it, with field names borrowed from the payload so
/// replay interns them without allocating (same encoding as `Record`).
#[derive(Deserialize)]
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
}

/// The borrowed decoding of `Mutation` (identical encoding), for replay.
#[derive(Deserialize)]
pub enum MutationWire<'a> {
    Put {
        collection: &'a str,
        id: &'a str,
        #[serde(borrow)]
        record: RecordWire<'a>,
        insert: bool,
    },
    Remove {
        collection: &'a str,
        id: &'a str,
        #[serde(borrow)]
        trash: Option<(RecordWire<'a>, Timestamp)>,
    },
    Restore {
        collection: &'a str,
        id: &'a str,
        #[serde(borrow)]
        record: RecordWire<'a>,
    },
    TrashPurge {
        collection: &'a str,
        id: &'a str,
    },
    SetSchema {
        collection: &'a str,
        schema: Schema,
    },
    DropCollection {
        collection: &'a str,
    },
    KvPut {
        key: &'a str,
        entry: KvEntry,
    },
    KvRemove {
        key: &'a str,
    },
    KvClear,
    KvLinks {
        key: &'a str,
        links: Vec<Link>,
    },
}

/// A batch decoded for replay: pure data, `Send`, applied by
/// `Engine::replay_decoded`.
pub struct Decoded<'a>(pub(crate) Vec<MutationWire<'a>>);

/// Decodes a batch for replay, field names borrowed from `payload`.
pub fn decode_for_replay(payload: &[u8]) -> Result<Decoded<'_>, String> {
    decode_wire(payload).map(Decoded)
}

/// Decodes a batch's mutations without copying field names (replay's fast path).
fn decode_wire(payload: &[u8]) -> Result<Vec<MutationWire<'_>>, String> {
    let body = payload
        .get(HEADER - 8..)
        .ok_or("batch shorter than its header")?;
    let count = body
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or("batch shorter than its header")?;
    if count > payload.len() as u64 {
        return Err(format!(
            "batch claims {count} mutations in {} bytes",
            payload.len()
        ));
    }
    bincode::deserialize::<Vec<MutationWire<'_>>>(body)
        .map_err(|e| format!("undecodable batch: {e}"))
}

/// A decoded batch: when it was committed and what it changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub at: Timestamp,
    pub mutations: Vec<Mutation>,
}

/// Decodes a batch payload. Corrupt payloads are errors, never panics.
pub fn decode_batch(payload: &[u8]) -> Result<Batch, String> {
    let word = |range: std::ops::Range<usize>| -> Result<[u8; 8], String> {
        payload
            .get(range)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "batch shorter than its header".to_string())
    };
    let at = Timestamp::from_micros(i64::from_le_bytes(word(0..8)?));
    let count = u64::from_le_bytes(word(8..HEADER)?);
    // Each mutation takes at least a few bytes: refuse absurd counts before allocating.
    if count > payload.len() as u64 {
        return Err(format!(
            "batch claims {count} mutations in {} bytes",
            payload.len()
        ));
    }
    let mutations = bincode::deserialize::<Vec<Mutation>>(&payload[8..])
        .map_err(|e| format!("undecodable batch: {e}"))?;
    Ok(Batch { at, mutations })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    #[test]
    fn borrowed_and_owned_encodings_agree() {
        let mut record = Record::new();
        record.set("name".into(), Value::String("Ada".into()));
        let mut j = Journal::default();
        j.record(&MutationRef::Put {
            collection: "users",
            id: "u1",
            record: &record,
            insert: true,
        });
        j.record(&MutationRef::Remove {
            collection: "users",
            id: "u1",
            trash: Some((&record, Timestamp::from_secs(5))),
        });
        j.record(&MutationRef::KvClear);
        let payload = j.take(Timestamp::from_secs(9)).unwrap();
        let decoded = decode_batch(&payload).unwrap();
        assert_eq!(decoded.at, Timestamp::from_secs(9));
        assert_eq!(
            decoded.mutations,
            vec![
                Mutation::Put {
                    collection: "users".into(),
                    id: "u1".into(),
                    record: record.clone(),
                    insert: true,
                },
                Mutation::Remove {
                    collection: "users".into(),
                    id: "u1".into(),
                    trash: Some((record, Timestamp::from_secs(5)))
                },
                Mutation::KvClear,
            ]
        );
        assert!(decode_batch(&payload[..payload.len() - 1]).is_err());
        assert!(decode_batch(&[255; 8]).is_err());
    }
}
