//! One collection: its live records, trash, expiry index and unique-value indexes.
//! Every change to `records` goes through `put` / `take` so the indexes follow.
//!
//! The live records are a persistent map (`Records`): a reader takes a copy
//! in O(1) and works on it outside the server lock while writers go on; a
//! write copies only the nodes a reader still shares.

use super::record::Record;
use super::schema::Schema;
use super::search::{self, SearchState};
use crate::error::Result;
use crate::time::Timestamp;
use crate::value::View;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use tidepool_search::{HalfRows, Metric};

/// A collection's live records by id. Cloning is O(1) and the clone does not
/// change when the collection does (structural sharing), so it is what a
/// snapshot holds.
#[derive(Clone, Debug, Default)]
pub struct Records(imbl::OrdMap<Box<str>, Arc<Record>>);

impl Records {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A record, expired or not.
    pub fn get(&self, id: &str) -> Option<&Record> {
        self.0.get(id).map(|r| &**r)
    }

    pub fn get_key_value(&self, id: &str) -> Option<(&str, &Record)> {
        self.0.get_key_value(id).map(|(k, r)| (k.as_ref(), &**r))
    }

    /// Every record, expired or not, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Record)> {
        self.0.iter().map(|(k, r)| (k.as_ref(), &**r))
    }

    /// Visible records in id order.
    pub fn iter_live(&self, now: Timestamp) -> impl Iterator<Item = (&str, &Record)> {
        self.iter().filter(move |(_, r)| !r.is_expired(now))
    }

    /// Records within `bounds` of id, in id order.
    pub fn range<'a>(
        &'a self,
        bounds: (Bound<&str>, Bound<&str>),
    ) -> impl Iterator<Item = (&'a str, &'a Record)> {
        self.0
            .range::<_, str>(bounds)
            .map(|(k, r)| (k.as_ref(), &**r))
    }

    /// What changed from `self` (an earlier copy) to `later`: ids removed,
    /// then ids added or updated (a reader's copy shares the nodes nothing
    /// touched, which are skipped).
    pub fn changes<'a>(&'a self, later: &'a Records) -> (Vec<&'a str>, Vec<&'a str>) {
        use imbl::ordmap::DiffItem;
        let (mut removed, mut put) = (Vec::new(), Vec::new());
        for change in self.0.diff(&later.0) {
            match change {
                DiffItem::Remove(id, _) => removed.push(id.as_ref()),
                DiffItem::Add(id, _) => put.push(id.as_ref()),
                DiffItem::Update { new: (id, _), .. } => {
                    removed.push(id.as_ref());
                    put.push(id.as_ref());
                }
            }
        }
        (removed, put)
    }

    fn insert(&mut self, id: &str, record: Record) {
        self.0.insert(id.into(), Arc::new(record));
    }

    /// Removes a record, handing it back (copied only if a reader shares it).
    fn remove(&mut self, id: &str) -> Option<Record> {
        self.0.remove(id).map(Arc::unwrap_or_clone)
    }
}

#[derive(Debug)]
pub struct Collection {
    pub schema: Schema,
    records: Records,
    trash: BTreeMap<Box<str>, (Record, Timestamp)>,
    /// (deleted at, id) of trashed records, oldest first, for the retention sweep.
    trash_by_age: BTreeSet<(Timestamp, Box<str>)>,
    /// (expiry, id) of live records with a TTL, earliest first.
    expiry: BTreeSet<(Timestamp, Box<str>)>,
    /// unique field → rendered value → id.
    unique: HashMap<String, HashMap<String, Box<str>>>,
    /// Text and vector indexes (built on demand or as the schema declares).
    search: SearchState,
}

/// How a value is keyed in a unique index: its type class and text.
fn unique_key(v: View<'_>) -> Option<String> {
    match v {
        View::Null => None,
        View::Int(_) | View::Float(_) => Some(format!("n:{}", v.as_f64().unwrap_or(0.0))),
        View::Str(s) => Some(format!("s:{s}")),
        View::Time(t) => Some(format!("t:{}", t.micros())),
        other => Some(format!("j:{}", other.render())),
    }
}

impl Collection {
    /// An empty collection; its vector indexes follow `half_rows`.
    pub fn new(schema: Schema, half_rows: HalfRows) -> Self {
        let mut c = Collection {
            schema,
            records: Records::default(),
            trash: BTreeMap::new(),
            trash_by_age: BTreeSet::new(),
            expiry: BTreeSet::new(),
            unique: HashMap::new(),
            search: SearchState::new(half_rows),
        };
        c.rebuild_unique();
        c.build_declared_indexes();
        c
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The live records (a copy of this is a reader's snapshot).
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// A live record, expired or not (callers decide what expiry means for them).
    pub fn raw(&self, id: &str) -> Option<&Record> {
        self.records.get(id)
    }

    pub fn raw_entry(&self, id: &str) -> Option<(&str, &Record)> {
        self.records.get_key_value(id)
    }

    /// A record, expired or not, shared.
    pub fn shared(&self, id: &str) -> Option<Arc<Record>> {
        self.records.0.get(id).cloned()
    }

    /// Visible records in id order.
    pub fn iter_live(&self, now: Timestamp) -> impl Iterator<Item = (&str, &Record)> {
        self.records.iter_live(now)
    }

    /// Records after `after` (exclusive), for chunked snapshots.
    pub fn range_after(&self, after: Option<&str>) -> impl Iterator<Item = (&str, &Record)> {
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        self.records.range((lower, Bound::Unbounded))
    }

    /// Records from `start` (inclusive) on, in id order.
    pub fn range_from<'a>(&'a self, start: &str) -> impl Iterator<Item = (&'a str, &'a Record)> {
        self.records
            .range((Bound::Included(start), Bound::Unbounded))
    }

    pub fn trash_range_after(
        &self,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&str, &(Record, Timestamp))> {
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        self.trash
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(k, r)| (k.as_ref(), r))
    }

    /// Stores a record, replacing any previous version and updating the indexes.
    pub fn put(&mut self, id: &str, record: Record) {
        self.take(id);
        if let Some(t) = record.expires_at {
            self.expiry.insert((t, id.into()));
        }
        for (field, index) in &mut self.unique {
            if let Some(key) = record.get(field).and_then(|v| unique_key(v.view())) {
                index.insert(key, id.into());
            }
        }
        self.search.on_put(id, &record);
        self.records.insert(id, record);
    }

    /// Removes a live record and its index entries.
    pub fn take(&mut self, id: &str) -> Option<Record> {
        let old = self.records.remove(id)?;
        self.search.on_remove(id);
        if let Some(t) = old.expires_at {
            self.expiry.remove(&(t, id.into()));
        }
        for (field, index) in &mut self.unique {
            if let Some(key) = old.get(field).and_then(|v| unique_key(v.view())) {
                if index.get(&key).is_some_and(|owner| owner.as_ref() == id) {
                    index.remove(&key);
                }
            }
        }
        Some(old)
    }

    pub fn trash_get(&self, id: &str) -> Option<&(Record, Timestamp)> {
        self.trash.get(id)
    }

    pub fn trash_entry(&self, id: &str) -> Option<(&str, &(Record, Timestamp))> {
        self.trash.get_key_value(id).map(|(k, v)| (k.as_ref(), v))
    }

    pub fn trash_put(&mut self, id: &str, record: Record, deleted_at: Timestamp) {
        self.trash_take(id);
        self.trash_by_age.insert((deleted_at, id.into()));
        self.trash.insert(id.into(), (record, deleted_at));
    }

    pub fn trash_take(&mut self, id: &str) -> Option<(Record, Timestamp)> {
        let (record, at) = self.trash.remove(id)?;
        self.trash_by_age.remove(&(at, id.into()));
        Some((record, at))
    }

    pub fn trash_ids(&self) -> Vec<Box<str>> {
        self.trash.keys().cloned().collect()
    }

    /// Trash entries deleted before `cutoff`.
    pub fn trash_older_than(&self, cutoff: Timestamp, max: usize) -> Vec<Box<str>> {
        self.trash_by_age
            .iter()
            .take_while(|(at, _)| *at < cutoff)
            .take(max)
            .map(|(_, id)| id.clone())
            .collect()
    }

    pub fn oldest_trash(&self) -> Option<Timestamp> {
        self.trash_by_age.first().map(|(at, _)| *at)
    }

    /// Earliest expiry among live records.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.expiry.first().map(|(t, _)| *t)
    }

    /// Ids whose expiry has passed, earliest first.
    pub fn expired_ids(&self, now: Timestamp, max: usize) -> Vec<Box<str>> {
        self.expiry
            .iter()
            .take_while(|(t, _)| *t <= now)
            .take(max)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// The id holding `value` in unique field `field`, if any.
    pub fn unique_owner(&self, field: &str, value: View<'_>) -> Option<&str> {
        let key = unique_key(value)?;
        self.unique.get(field)?.get(&key).map(|b| b.as_ref())
    }

    /// Rebuilds the unique indexes after the schema changed.
    pub fn rebuild_unique(&mut self) {
        self.unique = self
            .schema
            .unique_fields()
            .map(|f| (f.to_string(), HashMap::new()))
            .collect();
        for (id, record) in self.records.iter() {
            for (field, index) in &mut self.unique {
                if let Some(key) = record.get(field).and_then(|v| unique_key(v.view())) {
                    index.insert(key, id.into());
                }
            }
        }
    }

    /// A value that is already taken by another record in a unique field.
    pub fn find_unique_violation(
        &self,
        id: &str,
        record: &Record,
        now: Timestamp,
    ) -> Option<String> {
        for field in self.unique.keys() {
            if let Some(v) = record.get(field) {
                if let Some(owner) = self.unique_owner(field, v.view()) {
                    let owner_live = self.records.get(owner).is_some_and(|r| !r.is_expired(now));
                    if owner != id && owner_live {
                        return Some(field.clone());
                    }
                }
            }
        }
        None
    }

    /// Builds the indexes the schema declares (after a schema change or recovery).
    pub fn build_declared_indexes(&mut self) {
        let (text, vectors) = search::declared(&self.schema);
        if let Some(language) = text {
            // An unknown language was refused when the schema was set.
            let _ = self
                .search
                .ensure_text(language.as_deref(), self.records.iter());
        }
        for (field, metric, m, ef) in vectors {
            self.search
                .ensure_vector(&field, metric, m, ef, self.records.iter());
        }
    }

    /// The text index, built now if this is its first use.
    pub fn text_index(&mut self, language: Option<&str>) -> Result<()> {
        self.search.ensure_text(language, self.records.iter())
    }

    /// The HNSW parameters of a vector index on `field` (declared, or the defaults).
    pub fn vector_params(&self, field: &str) -> (usize, usize) {
        match self.schema.fields.get(field).and_then(|f| f.index.as_ref()) {
            Some(super::schema::IndexConfig::Vector {
                m, ef_construction, ..
            }) => (*m as usize, *ef_construction as usize),
            _ => (16, 128),
        }
    }

    /// Takes the indexes built outside the lock over `built` (a snapshot of
    /// this collection's records) that it still lacks, caught up with what
    /// changed since the snapshot (`SearchState::adopt`; `fresh`: built for
    /// a collection that had no index).
    pub fn install_search(&mut self, built: &Records, fresh: bool, state: SearchState) {
        self.search.adopt(state, fresh, built, &self.records);
    }

    /// The vector index for (field, metric), built now if this is its first use.
    pub fn vector_index(&mut self, field: &str, metric: Metric) {
        let (m, ef) = self.vector_params(field);
        self.search
            .ensure_vector(field, metric, m, ef, self.records.iter());
    }

    pub fn search_state(&self) -> &SearchState {
        &self.search
    }

    /// See `SearchState::sweep_removed`.
    pub fn sweep_removed(&mut self, bytes: usize) -> usize {
        self.search.sweep_removed(bytes)
    }

    /// See `SearchState::set_half_rows`.
    pub fn set_half_rows(&mut self, half_rows: HalfRows) {
        self.search.set_half_rows(half_rows);
    }
}
