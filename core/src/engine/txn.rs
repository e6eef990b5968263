//! Buffered, optimistic transactions (spec 13). Writes are staged per transaction
//! and invisible to others; reads through the transaction see its own writes and
//! remember the version they observed. Commit checks that nothing the transaction
//! read or wrote changed since (else 409), then applies every staged write as one
//! log batch, so a commit is atomic and durable as a whole.
//!
//! What each isolation level promises (every level: no dirty reads, and no
//! lost update or write skew on records it read, because commit checks them):
//!
//! | level | a read again sees | queries (phantoms) |
//! |---|---|---|
//! | `ReadUncommitted`, `ReadCommitted` | the latest committed data | not checked |
//! | `RepeatableRead` | the same, or the read fails with 409 | not checked |
//! | `Serializable` (default) | the same, or the read fails with 409 | re-checked at every read and at commit: 409 if another commit changed what a query matched |
//!
//! `RepeatableRead` and `Serializable` validate before every read that nothing
//! read so far has changed, so all their reads agree with one moment and the
//! application never acts on a skewed view: it gets a 409 and retries instead.
//!
//! A transaction belongs to the key that began it (others get 404), each key
//! and each client address may hold a bounded number open, and one that is
//! idle for `--transaction-idle-timeout` is rolled back.
//!
//! ```text
//! Active ──commit ok──▶ Committed
//!   │  └──conflict──▶ Aborted
//!   └──rollback──▶ RolledBack        (restart or timeout: forgotten = rolled back)
//! ```

use super::filter::Filter;
use super::query::{self, FindQuery};
use super::record::Record;
use super::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::Lsn;
use crate::time::Timestamp;
use serde_json::Value as J;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::Duration;

/// Active transactions beyond this are refused (each holds staged records).
const MAX_ACTIVE: usize = 10_000;
/// Open transactions one key may hold.
pub const MAX_PER_KEY: usize = 100;
/// Open transactions one client address may hold (several keys may share one).
pub const MAX_PER_ADDRESS: usize = 1_000;
/// Staged writes one transaction may hold.
const MAX_OPS: usize = 100_000;
/// Queries a `Serializable` transaction may run (each is re-checked).
const MAX_PREDICATES: usize = 1_000;
/// Finished transactions remembered for status queries.
const MAX_FINISHED: usize = 1_000;
/// A transaction with no call for this long is rolled back (the default of
/// `--transaction-idle-timeout`).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// Who began a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// The key id: only this key may use the transaction.
    pub key: String,
    /// The client's address, for the per-address bound.
    pub address: Option<String>,
}

/// A query a `Serializable` transaction ran: the committed records its filter
/// matched then, as a digest of their ids and versions.
#[derive(Debug)]
struct Predicate {
    collection: Box<str>,
    filter: Filter,
    digest: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxState {
    Active,
    Committed,
    RolledBack,
    Aborted,
}

impl TxState {
    pub fn name(self) -> &'static str {
        match self {
            TxState::Active => "Active",
            TxState::Committed => "Committed",
            TxState::RolledBack => "RolledBack",
            TxState::Aborted => "Aborted",
        }
    }
}

type Key = (Box<str>, Box<str>);

#[derive(Clone, Debug)]
enum Op {
    Put { record: Record },
    Delete,
}

#[derive(Debug)]
pub struct Txn {
    pub isolation: String,
    pub state: TxState,
    owner: Owner,
    /// The last call that used it (the idle deadline counts from here).
    last_used: Timestamp,
    /// The engine's LSN when the reads were last found unchanged.
    validated_at: Lsn,
    /// The queries it ran (`Serializable` only).
    predicates: Vec<Predicate>,
    /// Staged writes in order (one per operation, as counted by clients).
    ops: Vec<(Key, Op)>,
    /// Each key's latest staged write (an index into `ops`), so reads through the
    /// transaction do not scan every write before them.
    latest: HashMap<Key, usize>,
    /// The version of each key as first observed (None = absent).
    observed: HashMap<Key, Option<Lsn>>,
    savepoints: Vec<(String, usize)>,
}

impl Txn {
    pub fn operations(&self) -> usize {
        self.ops.len()
    }

    /// Reads must stay as first seen (`RepeatableRead`, `Serializable`).
    fn repeatable(&self) -> bool {
        matches!(self.isolation.as_str(), "RepeatableRead" | "Serializable")
    }

    /// Queries are re-checked (`Serializable`).
    fn checks_predicates(&self) -> bool {
        self.isolation == "Serializable"
    }

    fn stage(&mut self, key: Key, op: Op) {
        self.latest.insert(key.clone(), self.ops.len());
        self.ops.push((key, op));
    }

    /// Rebuilds `latest` after a rollback to a savepoint dropped writes.
    fn reindex(&mut self) {
        self.latest = self
            .ops
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
    }

    /// The transaction's own latest write to a key, if any.
    fn staged(&self, key: &Key) -> Option<&Op> {
        self.latest
            .get(key)
            .and_then(|&i| self.ops.get(i))
            .map(|(_, op)| op)
    }
}

#[derive(Debug)]
pub struct Transactions {
    active: HashMap<String, Txn>,
    /// Active transactions by last use, for the idle deadline.
    by_use: BTreeSet<(Timestamp, String)>,
    finished: VecDeque<(String, Txn)>,
    /// Open transactions per key and per address.
    per_key: HashMap<String, usize>,
    per_address: HashMap<String, usize>,
    idle: Duration,
}

impl Default for Transactions {
    fn default() -> Self {
        Transactions {
            active: HashMap::new(),
            by_use: BTreeSet::new(),
            finished: VecDeque::new(),
            per_key: HashMap::new(),
            per_address: HashMap::new(),
            idle: DEFAULT_IDLE,
        }
    }
}

/// One more (or, `up` false, one fewer) transaction held under `name`.
fn count(map: &mut HashMap<String, usize>, name: &str, up: bool) {
    if up {
        *map.entry(name.to_string()).or_default() += 1;
    } else if let Some(n) = map.get_mut(name) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(name);
        }
    }
}

pub const ISOLATION_LEVELS: [&str; 4] = [
    "ReadUncommitted",
    "ReadCommitted",
    "RepeatableRead",
    "Serializable",
];

fn normalise_isolation(level: Option<&str>) -> Result<String> {
    let Some(level) = level else {
        return Ok("Serializable".to_string());
    };
    let squashed: String = level
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    ISOLATION_LEVELS
        .iter()
        .find(|l| l.to_ascii_lowercase() == squashed)
        .map(|l| l.to_string())
        .ok_or_else(|| {
            Error::invalid(format!(
                "unknown isolation level `{level}` (ReadUncommitted, ReadCommitted, RepeatableRead, Serializable)"
            ))
        })
}

fn tx_missing(id: &str) -> Error {
    Error::not_found(format!("Transaction not found: {id}"))
}

impl Engine {
    fn txn(&self, id: &str) -> Result<&Txn> {
        self.txns.active.get(id).ok_or_else(|| self.tx_gone(id))
    }

    /// The transaction, for staging one more write (bounded, so one client
    /// cannot grow the server's memory without limit).
    fn staging(&mut self, id: &str) -> Result<&mut Txn> {
        let t = self.txn_mut(id)?;
        if t.ops.len() >= MAX_OPS {
            return Err(Error::invalid(format!(
                "a transaction holds at most {MAX_OPS} writes; commit and start another"
            )));
        }
        Ok(t)
    }

    fn txn_mut(&mut self, id: &str) -> Result<&mut Txn> {
        if !self.txns.active.contains_key(id) {
            return Err(self.tx_gone(id));
        }
        self.txns.active.get_mut(id).ok_or_else(|| tx_missing(id))
    }

    /// A data call naming a transaction that is not active is a 400 (spec 13.3).
    fn tx_gone(&self, id: &str) -> Error {
        match self.txns.finished.iter().find(|(t, _)| t == id) {
            Some((_, t)) => Error::invalid(format!(
                "transaction {id} is {} and accepts no more operations",
                t.state.name()
            )),
            None => Error::invalid(format!("unknown transaction {id}")),
        }
    }

    /// How long a transaction may go unused before it is rolled back.
    pub fn set_transaction_idle_timeout(&mut self, idle: Duration) {
        self.txns.idle = idle.max(Duration::from_secs(1));
    }

    pub fn tx_begin(
        &mut self,
        isolation: Option<&str>,
        owner: Owner,
        now: Timestamp,
    ) -> Result<(String, String)> {
        let isolation = normalise_isolation(isolation)?;
        self.expire_transactions(now);
        if self.txns.active.len() >= MAX_ACTIVE {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "too many open transactions; commit or roll back some",
            ));
        }
        let idle = self.txns.idle.as_secs();
        let held = |map: &HashMap<String, usize>, name: &str| map.get(name).copied().unwrap_or(0);
        let over = if held(&self.txns.per_key, &owner.key) >= MAX_PER_KEY {
            Some(format!("this key already holds {MAX_PER_KEY}"))
        } else if owner
            .address
            .as_deref()
            .is_some_and(|a| held(&self.txns.per_address, a) >= MAX_PER_ADDRESS)
        {
            Some(format!(
                "this client address already holds {MAX_PER_ADDRESS}"
            ))
        } else {
            None
        };
        if let Some(who) = over {
            return Err(Error::new(
                ErrorKind::TooManyRequests,
                format!(
                    "{who} open transactions; commit or roll back some (an idle one is rolled back after {idle} s)"
                ),
            ));
        }
        count(&mut self.txns.per_key, &owner.key, true);
        if let Some(a) = &owner.address {
            count(&mut self.txns.per_address, a, true);
        }
        let hex = self.token(16);
        let id = format!(
            "{}-{}-4{}-a{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..32]
        );
        self.txns.by_use.insert((now, id.clone()));
        self.txns.active.insert(
            id.clone(),
            Txn {
                isolation: isolation.clone(),
                state: TxState::Active,
                owner,
                last_used: now,
                validated_at: Lsn::ZERO,
                predicates: Vec::new(),
                ops: Vec::new(),
                latest: HashMap::new(),
                observed: HashMap::new(),
                savepoints: Vec::new(),
            },
        );
        Ok((id, isolation))
    }

    /// Rolls back transactions that were abandoned (unused for longer than
    /// the idle timeout).
    pub fn expire_transactions(&mut self, now: Timestamp) {
        let idle = self.txns.idle;
        let stale: Vec<String> = self
            .txns
            .by_use
            .iter()
            .take_while(|(used, _)| now.since(*used) > idle)
            .map(|(_, id)| id.clone())
            .collect();
        for id in stale {
            self.tx_finish(&id, TxState::RolledBack);
        }
    }

    /// When the least recently used open transaction is rolled back as idle.
    pub fn next_transaction_deadline(&self) -> Option<Timestamp> {
        let idle = self.txns.idle + Duration::from_micros(1);
        self.txns
            .by_use
            .first()
            .map(|(used, _)| used.saturating_add(idle))
    }

    /// A call names transaction `id`: it must be `key`'s (another key's is
    /// reported as not found), and it is used now (the idle deadline moves).
    /// A finished transaction passes: the call itself reports it.
    pub fn tx_touch(&mut self, id: &str, key: &str, now: Timestamp) -> Result<()> {
        let Some(t) = self.txns.active.get_mut(id) else {
            return Ok(());
        };
        if t.owner.key != key {
            return Err(tx_missing(id));
        }
        let before = std::mem::replace(&mut t.last_used, now);
        self.txns.by_use.remove(&(before, id.to_string()));
        self.txns.by_use.insert((now, id.to_string()));
        Ok(())
    }

    fn tx_finish(&mut self, id: &str, state: TxState) {
        if let Some(mut t) = self.txns.active.remove(id) {
            self.txns.by_use.remove(&(t.last_used, id.to_string()));
            count(&mut self.txns.per_key, &t.owner.key, false);
            if let Some(a) = &t.owner.address {
                count(&mut self.txns.per_address, a, false);
            }
            t.state = state;
            t.ops.clear();
            t.latest.clear();
            t.observed.clear();
            t.predicates.clear();
            self.txns.finished.push_back((id.to_string(), t));
            if self.txns.finished.len() > MAX_FINISHED {
                self.txns.finished.pop_front();
            }
        }
    }

    /// (state, isolation, operations) of a transaction, active or finished.
    pub fn tx_status(&self, id: &str) -> Result<(TxState, &str, usize)> {
        if let Some(t) = self.txns.active.get(id) {
            return Ok((t.state, &t.isolation, t.operations()));
        }
        self.txns
            .finished
            .iter()
            .find(|(t, _)| t == id)
            .map(|(_, t)| (t.state, t.isolation.as_str(), 0))
            .ok_or_else(|| tx_missing(id))
    }

    fn committed_version(&self, key: &Key, now: Timestamp) -> Option<Lsn> {
        self.collections
            .get(&key.0)
            .and_then(|c| c.raw(&key.1))
            .filter(|r| !r.is_expired(now))
            .map(|r| r.version)
    }

    /// A digest of the committed records of `collection` that `filter`
    /// matches now (ids and versions, in id order).
    fn predicate_digest(&self, collection: &str, filter: &Filter, now: Timestamp) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        if let Some(c) = self.collections.get(collection) {
            let pk = self.pk_name(collection);
            for (id, r) in c.iter_live(now) {
                if filter.matches(pk, id, r) {
                    id.hash(&mut h);
                    r.version.hash(&mut h);
                }
            }
        }
        h.finish()
    }

    /// What the transaction read that another commit has changed since, if
    /// anything (queries too, at `Serializable`).
    fn stale_read(&self, t: &Txn, now: Timestamp) -> Option<String> {
        if let Some(((c, id), _)) = t
            .observed
            .iter()
            .find(|(key, seen)| self.committed_version(key, now) != **seen)
        {
            return Some(format!("record `{id}` in `{c}`"));
        }
        t.predicates
            .iter()
            .find(|p| self.predicate_digest(&p.collection, &p.filter, now) != p.digest)
            .map(|p| format!("the records a query on `{}` matched", p.collection))
    }

    /// Before a read at `RepeatableRead` or `Serializable`: everything read
    /// so far must be unchanged, or the transaction is aborted with 409, so
    /// its reads never disagree with each other.
    fn tx_check_reads(&mut self, tx: &str, now: Timestamp) -> Result<()> {
        let last = self.last_lsn();
        let t = self.txn(tx)?;
        if !t.repeatable() || t.validated_at == last {
            return Ok(());
        }
        if let Some(what) = self.stale_read(t, now) {
            let level = t.isolation.clone();
            self.tx_finish(tx, TxState::Aborted);
            return Err(Error::conflict(format!(
                "transaction conflict: {what} changed after this transaction read it, and {level} keeps its reads as they were; retry the transaction"
            )));
        }
        self.txn_mut(tx)?.validated_at = last;
        Ok(())
    }

    fn observe(&mut self, tx: &str, key: &Key, now: Timestamp) -> Result<()> {
        let version = self.committed_version(key, now);
        self.txn_mut(tx)?
            .observed
            .entry(key.clone())
            .or_insert(version);
        Ok(())
    }

    /// The record as the transaction sees it.
    fn tx_view(&self, tx: &str, key: &Key, now: Timestamp) -> Result<Option<Record>> {
        match self.txn(tx)?.staged(key) {
            Some(Op::Put { record, .. }) => Ok(Some(record.clone())),
            Some(Op::Delete) => Ok(None),
            None => Ok(self
                .collections
                .get(&key.0)
                .and_then(|c| c.raw(&key.1))
                .filter(|r| !r.is_expired(now))
                .cloned()),
        }
    }

    pub fn tx_insert(
        &mut self,
        tx: &str,
        collection: &str,
        body: J,
        now: Timestamp,
    ) -> Result<String> {
        super::validate_name("collection", collection)?;
        self.tx_check_reads(tx, now)?;
        let (id, record) = self.build_record(collection, body, Record::new(), now, true)?;
        let id = match id {
            Some(id) => id,
            None => self.new_id(now),
        };
        let key: Key = (collection.into(), id.as_str().into());
        self.observe(tx, &key, now)?;
        if self.tx_view(tx, &key, now)?.is_some() {
            return Err(Error::conflict(format!(
                "a record with id `{id}` already exists"
            )));
        }
        self.staging(tx)?.stage(key, Op::Put { record });
        Ok(id)
    }

    pub fn tx_update(
        &mut self,
        tx: &str,
        collection: &str,
        id: &str,
        patch: J,
        now: Timestamp,
    ) -> Result<Record> {
        self.tx_check_reads(tx, now)?;
        let key: Key = (collection.into(), id.into());
        self.observe(tx, &key, now)?;
        let base = self
            .tx_view(tx, &key, now)?
            .ok_or_else(|| Error::not_found("Record not found"))?;
        let (_, record) = self.build_record(collection, patch, base, now, false)?;
        self.staging(tx)?.stage(
            key,
            Op::Put {
                record: record.clone(),
            },
        );
        Ok(record)
    }

    /// Atomic actions (increment, push, ...) on the transaction's view of
    /// a record, staged like an update.
    pub fn tx_apply_actions(
        &mut self,
        tx: &str,
        collection: &str,
        id: &str,
        steps: Vec<(super::actions::Action, String, Option<J>)>,
        now: Timestamp,
    ) -> Result<Record> {
        self.tx_check_reads(tx, now)?;
        let key: Key = (collection.into(), id.into());
        self.observe(tx, &key, now)?;
        let mut record = self
            .tx_view(tx, &key, now)?
            .ok_or_else(|| Error::not_found("Record not found"))?;
        self.apply_steps(collection, &mut record, steps)?;
        self.staging(tx)?.stage(
            key,
            Op::Put {
                record: record.clone(),
            },
        );
        Ok(record)
    }

    pub fn tx_delete(
        &mut self,
        tx: &str,
        collection: &str,
        id: &str,
        now: Timestamp,
    ) -> Result<Record> {
        self.tx_check_reads(tx, now)?;
        let key: Key = (collection.into(), id.into());
        self.observe(tx, &key, now)?;
        let record = self
            .tx_view(tx, &key, now)?
            .ok_or_else(|| Error::not_found("Record not found"))?;
        self.staging(tx)?.stage(key, Op::Delete);
        Ok(record)
    }

    pub fn tx_find_by_id(
        &mut self,
        tx: &str,
        collection: &str,
        id: &str,
        now: Timestamp,
    ) -> Result<Record> {
        self.tx_check_reads(tx, now)?;
        let key: Key = (collection.into(), id.into());
        self.observe(tx, &key, now)?;
        self.tx_view(tx, &key, now)?
            .ok_or_else(|| Error::not_found("Record not found"))
    }

    /// A query over committed data overlaid with the transaction's staged writes.
    pub fn tx_find(
        &mut self,
        tx: &str,
        collection: &str,
        q: &FindQuery,
        now: Timestamp,
    ) -> Result<Vec<(String, Record)>> {
        self.tx_check_reads(tx, now)?;
        let t = self.txn(tx)?;
        if t.checks_predicates() {
            if t.predicates.len() >= MAX_PREDICATES {
                return Err(Error::invalid(format!(
                    "a Serializable transaction runs at most {MAX_PREDICATES} queries; commit and start another"
                )));
            }
            let filter = q.filter().clone();
            let digest = self.predicate_digest(collection, &filter, now);
            self.txn_mut(tx)?.predicates.push(Predicate {
                collection: collection.into(),
                filter,
                digest,
            });
        }
        let t = self.txn(tx)?;
        let mut view: BTreeMap<String, Record> = self
            .collections
            .get(collection)
            .map(|c| {
                c.iter_live(now)
                    .map(|(id, r)| (id.to_string(), r.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for ((c, id), op) in &t.ops {
            if c.as_ref() == collection {
                match op {
                    Op::Put { record, .. } => {
                        view.insert(id.to_string(), record.clone());
                    }
                    Op::Delete => {
                        view.remove(id.as_ref());
                    }
                }
            }
        }
        let pk = self.pk_name(collection).to_string();
        let filter = q.filter();
        let mut hits: Vec<(String, Record)> = view
            .into_iter()
            .filter(|(id, r)| filter.matches(&pk, id, r))
            .collect();
        if !q.sort.is_empty() {
            hits.sort_by(|a, b| query::compare_records(&q.sort, &pk, (&a.0, &a.1), (&b.0, &b.1)));
        }
        let hits: Vec<(String, Record)> = hits
            .into_iter()
            .skip(q.skip)
            .take(q.limit.unwrap_or(usize::MAX))
            .collect();
        for (id, _) in &hits {
            self.observe(tx, &(collection.into(), id.as_str().into()), now)?;
        }
        Ok(hits)
    }

    /// Applies the staged writes atomically, or fails with 409 if anything the
    /// transaction touched changed since it looked.
    pub fn tx_commit(&mut self, tx: &str, now: Timestamp) -> Result<usize> {
        let t = self.txn(tx)?;
        if let Some(what) = self.stale_read(t, now) {
            self.tx_finish(tx, TxState::Aborted);
            return Err(Error::conflict(format!(
                "transaction conflict: {what} was changed by another writer; retry the transaction"
            )));
        }
        // Collapse to the final state per key, in first-touch order.
        let t = self.txns.active.get(tx).ok_or_else(|| tx_missing(tx))?;
        let mut order: Vec<Key> = Vec::new();
        let mut last: HashMap<Key, Op> = HashMap::new();
        for (key, op) in &t.ops {
            if !last.contains_key(key) {
                order.push(key.clone());
            }
            last.insert(key.clone(), op.clone());
        }
        let count = t.ops.len();
        // All or nothing: a commit whose batch would not fit in one frame is
        // refused before any of it is applied (the sizes are the encodings
        // the batch would hold).
        let logged: u64 = order
            .iter()
            .map(|key| {
                let record = match last.get(key) {
                    Some(Op::Put { record }) => Some(record),
                    _ => self.collections.get(&key.0).and_then(|c| c.raw(&key.1)),
                };
                let body = record.map_or(0, |r| bincode::serialized_size(r).unwrap_or(u64::MAX));
                body.saturating_add((key.0.len() + key.1.len() + 64) as u64)
            })
            .fold(self.journal.len() as u64, u64::saturating_add);
        if logged > self.max_batch as u64 {
            self.tx_finish(tx, TxState::Aborted);
            return Err(self.batch_too_large());
        }
        for key in &order {
            if let Some(Op::Put { record, .. }) = last.get(key) {
                if let Some(c) = self.collections.get(&key.0) {
                    if let Some(field) = c.find_unique_violation(&key.1, record, now) {
                        self.tx_finish(tx, TxState::Aborted);
                        return Err(Error::conflict(format!(
                            "duplicate value for unique field `{field}`"
                        )));
                    }
                }
            }
        }
        let version = self.op_lsn();
        for key in order {
            match last.remove(&key) {
                Some(Op::Put { mut record }) => {
                    record.version = version;
                    self.store(&key.0, &key.1, record, now)?;
                }
                Some(Op::Delete) if self.live(&key.0, &key.1, now).is_ok() => {
                    self.delete(&key.0, &key.1, now)?;
                }
                Some(Op::Delete) | None => {}
            }
        }
        self.tx_finish(tx, TxState::Committed);
        Ok(count)
    }

    pub fn tx_rollback(&mut self, tx: &str) -> Result<()> {
        self.txn(tx)?;
        self.tx_finish(tx, TxState::RolledBack);
        Ok(())
    }

    pub fn tx_savepoint(&mut self, tx: &str, name: &str) -> Result<()> {
        let t = self.txn_mut(tx)?;
        let at = t.ops.len();
        t.savepoints.retain(|(n, _)| n != name);
        t.savepoints.push((name.to_string(), at));
        Ok(())
    }

    pub fn tx_rollback_to(&mut self, tx: &str, name: &str) -> Result<()> {
        let t = self.txn_mut(tx)?;
        let pos = t
            .savepoints
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::not_found(format!("Savepoint not found: {name}")))?;
        let at = t.savepoints[pos].1;
        t.ops.truncate(at);
        t.reindex();
        t.savepoints.truncate(pos + 1);
        Ok(())
    }

    pub fn tx_release(&mut self, tx: &str, name: &str) -> Result<()> {
        let t = self.txn_mut(tx)?;
        let before = t.savepoints.len();
        t.savepoints.retain(|(n, _)| n != name);
        if t.savepoints.len() == before {
            return Err(Error::not_found(format!("Savepoint not found: {name}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_transaction_cannot_grow_without_bound() {
        let mut e = Engine::new(1);
        let now = Timestamp::from_secs(1_700_000_000);
        let (tx, _) = e.tx_begin(None, Owner::default(), now).unwrap();
        for i in 0..MAX_OPS {
            e.tx_insert(&tx, "c", json!({ "i": i }), now).unwrap();
        }
        let err = e.tx_insert(&tx, "c", json!({ "i": -1 }), now).unwrap_err();
        assert!(err.message.contains("at most"), "{}", err.message);
        // The transaction is still usable: roll it back, nothing was written.
        e.tx_rollback(&tx).unwrap();
        assert_eq!(e.count("c", now), 0);
    }
}
