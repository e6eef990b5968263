//! The engine's side of the log: operations record mutations in the journal and
//! apply them (`log`), `commit` seals them into a batch with the next LSN, the
//! runtime takes batches (`poll_log`) to make them durable, and recovery replays
//! batches through the same `apply`. Live writes and replay share that one
//! function, so what a restart rebuilds is what the clients saw.

use super::collection::Collection;
use super::mutation::{self, Batch, DecodeError, Mutation};
use super::schema::Schema;
use super::{Committed, Engine};
use crate::error::{Error, ErrorKind};
use crate::ids::Lsn;
use crate::time::Timestamp;

/// The largest batch one operation may log: what the store writes as one
/// frame (`tidepool_storage`'s `MAX_BATCH_BYTES`, 256 MiB; a host test keeps
/// the two equal), less room for the batch's frame and header.
pub const MAX_BATCH_BYTES: usize = (256 << 20) - 4096;

impl Engine {
    /// The largest batch one operation may log (`--max-batch-bytes`, at most
    /// `MAX_BATCH_BYTES`).
    pub fn set_max_batch_bytes(&mut self, bytes: usize) {
        self.max_batch = bytes.clamp(1 << 20, MAX_BATCH_BYTES);
    }

    /// The refusal of an operation whose batch would outgrow the limit.
    pub(super) fn batch_too_large(&self) -> Error {
        Error::new(
            ErrorKind::TooLarge,
            format!(
                "this operation would log more than {} MiB at once, more than the store writes in one piece; nothing was applied: send it in smaller requests (fewer or smaller records per batch or transaction)",
                self.max_batch >> 20
            ),
        )
    }

    /// The LSN of the newest committed batch.
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// The LSN the current operation's batch will get.
    pub(super) fn op_lsn(&self) -> Lsn {
        self.last_lsn.next()
    }

    /// Records a mutation in the current operation's batch and applies it.
    pub(super) fn log(&mut self, m: Mutation<'_>) {
        self.journal.record(&m);
        self.apply(m);
    }

    /// `log` for a mutation that carries a whole record or value: refused
    /// (nothing applied, the mutation handed back; `batch_too_large` says
    /// why) if it would take the operation's batch past what the store
    /// writes as one frame. Costs nothing more than `log`: the size is known
    /// once it is encoded.
    pub(super) fn log_checked<'m>(
        &mut self,
        m: Mutation<'m>,
    ) -> std::result::Result<(), Box<Mutation<'m>>> {
        let mark = self.journal.mark();
        self.journal.record(&m);
        if self.journal.len() > self.max_batch {
            self.journal.rewind(mark);
            return Err(Box::new(m));
        }
        self.apply(m);
        Ok(())
    }

    /// Seals the current operation's mutations into a batch. Returns its LSN, or
    /// `None` if the operation changed nothing.
    pub fn commit(&mut self, now: Timestamp) -> Option<Lsn> {
        let payload = self.journal.take(now)?;
        self.last_lsn = self.last_lsn.next();
        self.committed.push_back(Committed {
            lsn: self.last_lsn,
            payload,
        });
        Some(self.last_lsn)
    }

    /// The payload of a committed batch still waiting to be persisted.
    pub fn peek_committed(&self, lsn: Lsn) -> Option<&[u8]> {
        self.committed
            .iter()
            .rev()
            .find(|c| c.lsn == lsn)
            .map(|c| c.payload.as_slice())
    }

    /// The next batch for the runtime to persist, oldest first.
    pub fn poll_log(&mut self) -> Option<Committed> {
        self.committed.pop_front()
    }

    pub fn has_log(&self) -> bool {
        !self.committed.is_empty()
    }

    /// Applies a batch read back from the log during recovery.
    pub fn replay(&mut self, lsn: Lsn, payload: &[u8]) -> Result<(), DecodeError> {
        self.replay_decoded(lsn, mutation::decode(payload)?);
        Ok(())
    }

    /// Applies a batch decoded with `mutation::decode` (which may run on another
    /// thread, so recovery decodes the next batch while this one is applied).
    pub fn replay_decoded(&mut self, lsn: Lsn, batch: Batch<'_>) {
        for m in batch.mutations {
            self.apply(m);
        }
        self.last_lsn = self.last_lsn.max(lsn);
    }

    /// Recovery is over: the next commit follows `lsn` even if the log was empty
    /// after a snapshot.
    pub fn set_last_lsn(&mut self, lsn: Lsn) {
        self.last_lsn = self.last_lsn.max(lsn);
    }

    /// Turns one log record into state: the only place that does, for live
    /// writes and for replay alike.
    fn apply(&mut self, m: Mutation<'_>) {
        match m {
            Mutation::Put {
                collection,
                id,
                record,
                ..
            } => {
                let record = record.into_record(&mut self.interner);
                let c = self.collection_or_create(&collection);
                c.put(&id, record);
                self.sweep_wanted |= c.search_state().wants_sweep();
            }
            Mutation::Remove {
                collection,
                id,
                trash,
            } => {
                let trash = trash.map(|(r, at)| (r.into_record(&mut self.interner), at));
                if let Some(c) = self.collections.get_mut(collection.as_ref()) {
                    c.take(&id);
                    if let Some((record, at)) = trash {
                        c.trash_put(&id, record, at);
                    }
                    self.sweep_wanted |= c.search_state().wants_sweep();
                }
            }
            Mutation::Restore {
                collection,
                id,
                record,
            } => {
                let record = record.into_record(&mut self.interner);
                let c = self.collection_or_create(&collection);
                c.trash_take(&id);
                c.put(&id, record);
                self.sweep_wanted |= c.search_state().wants_sweep();
            }
            Mutation::TrashPurge { collection, id } => {
                if let Some(c) = self.collections.get_mut(collection.as_ref()) {
                    c.trash_take(&id);
                }
            }
            Mutation::SetSchema { collection, schema } => {
                let schema = schema.into_owned();
                match self.collections.get_mut(collection.as_ref()) {
                    Some(c) => {
                        c.schema = schema;
                        c.rebuild_unique();
                        c.build_declared_indexes();
                    }
                    None => {
                        let c = Collection::new(schema, self.half_rows);
                        self.collections.insert(collection.into(), c);
                    }
                }
            }
            Mutation::DropCollection { collection } => {
                self.collections.remove(collection.as_ref());
            }
            Mutation::KvPut { key, entry } => self.kv_store(&key, entry.into_owned()),
            Mutation::KvRemove { key } => {
                self.kv_take(&key);
            }
            Mutation::KvClear => {
                self.kv.clear();
                self.kv_expiry.clear();
            }
            Mutation::KvLinks { key, links } => {
                if links.is_empty() {
                    self.links.remove(key.as_ref());
                } else {
                    self.links.insert(key.into(), links.into_owned());
                }
            }
        }
    }

    /// During replay a Put may precede its collection's schema record (fuzzy
    /// snapshots); an implicit schema stands in until the real one arrives.
    pub(super) fn collection_or_create(&mut self, name: &str) -> &mut Collection {
        if !self.collections.contains_key(name) {
            self.collections.insert(
                name.into(),
                Collection::new(Schema::empty(Timestamp::EPOCH), self.half_rows),
            );
        }
        // Present: inserted just above if it was missing.
        self.collections
            .get_mut(name)
            .expect("collection was just ensured")
    }
}
