//! Search over a collection (spec 11, D1): a full-text index over its string
//! fields and one vector index per (field, metric), from `tidepool-search`.
//!
//! Indexes follow every write: `Collection::put` / `take` call `on_put` /
//! `on_remove`. An index declared in the schema is built as soon as the schema
//! is set (and again after recovery); an undeclared one is built on the first
//! search that needs it and kept up to date from then on, so collections nobody
//! searches cost nothing.

use super::collection::Records;
use super::record::Record;
use super::schema::{IndexConfig, Schema};
use crate::error::{Error, Result};
use crate::value::{Json, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use tidepool_search::{Analyzer, DocId, HalfRows, Metric, TextIndex, TextQuery, VectorIndex};

/// Dense ids for the indexes, mapped to record ids.
#[derive(Clone, Debug, Default)]
pub(super) struct DocMap {
    of: HashMap<Box<str>, DocId>,
    ids: Vec<Option<Box<str>>>,
    free: Vec<u32>,
}

impl DocMap {
    fn get_or_assign(&mut self, id: &str) -> DocId {
        if let Some(d) = self.of.get(id) {
            return *d;
        }
        let n = match self.free.pop() {
            Some(n) => {
                self.ids[n as usize] = Some(id.into());
                n
            }
            None => {
                self.ids.push(Some(id.into()));
                (self.ids.len() - 1) as u32
            }
        };
        self.of.insert(id.into(), DocId(n));
        DocId(n)
    }

    fn release(&mut self, id: &str) -> Option<DocId> {
        let d = self.of.remove(id)?;
        if let Some(slot) = self.ids.get_mut(d.0 as usize) {
            *slot = None;
        }
        self.free.push(d.0);
        Some(d)
    }

    pub fn id(&self, doc: DocId) -> Option<&str> {
        self.ids.get(doc.0 as usize)?.as_deref()
    }
}

/// The indexes of one collection.
#[derive(Debug, Default)]
pub struct SearchState {
    docs: DocMap,
    text: Option<TextIndex>,
    vectors: Vec<VectorSlot>,
    /// Whether cosine graphs walk a half-precision copy (`--vector-half-rows`).
    half_rows: HalfRows,
}

#[derive(Debug)]
struct VectorSlot {
    field: String,
    metric: Metric,
    index: VectorIndex,
}

/// The string content of a record's fields, as the text index sees it.
fn text_fields(record: &Record) -> Vec<(&str, Cow<'_, str>)> {
    record
        .fields()
        .filter_map(|(name, v)| match v {
            Value::String(s) => Some((name, Cow::Borrowed(&**s))),
            Value::Array(items) | Value::Set(items) => {
                let words: Vec<&str> = items.iter().filter_map(Json::as_str).collect();
                (!words.is_empty()).then(|| (name, Cow::Owned(words.join(" "))))
            }
            _ => None,
        })
        .collect()
}

/// Indexes `record`'s text as `doc`.
fn put_text(text: &mut TextIndex, doc: DocId, record: &Record) {
    let fields = text_fields(record);
    let refs: Vec<(&str, &str)> = fields.iter().map(|(n, t)| (*n, &**t)).collect();
    text.upsert(doc, &refs);
}

/// Indexes `record` as `doc` in `text` and `vectors`.
fn put_into(text: Option<&mut TextIndex>, vectors: &mut [VectorSlot], doc: DocId, record: &Record) {
    if let Some(text) = text {
        put_text(text, doc, record);
    }
    for slot in vectors {
        match vector_of(record, &slot.field) {
            // A vector of another dimension than the index is left out of it;
            // schemas with a declared dimension reject it at write time.
            Some(v) => {
                if slot.index.upsert(doc, &v).is_err() {
                    slot.index.remove(doc);
                }
            }
            None => {
                slot.index.remove(doc);
            }
        }
    }
}

/// A record's vector in `field`, from a Vector or a plain numeric array.
pub(crate) fn vector_of(record: &Record, field: &str) -> Option<Vec<f32>> {
    match record.get(field)? {
        Value::Vector(v) => Some(v.iter().map(|&x| x as f32).collect()),
        Value::Array(items) => items
            .iter()
            .map(|j| j.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .filter(|v| !v.is_empty()),
        _ => None,
    }
}

pub fn metric_from(name: &str) -> Result<Metric> {
    Metric::from_name(name).ok_or_else(|| {
        Error::invalid(format!(
            "unknown vector metric `{name}` (cosine, euclidean, dotproduct)"
        ))
    })
}

fn seed_for(field: &str) -> u64 {
    field.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl SearchState {
    /// No index yet; vector indexes will follow `half_rows`.
    pub fn new(half_rows: HalfRows) -> SearchState {
        SearchState {
            half_rows,
            ..SearchState::default()
        }
    }

    /// Changes whether cosine graphs walk a half-precision copy, for the
    /// indexes there are (at once) and those to come.
    pub fn set_half_rows(&mut self, half_rows: HalfRows) {
        self.half_rows = half_rows;
        for slot in &mut self.vectors {
            slot.index.set_half_rows(half_rows);
        }
    }

    pub fn half_rows(&self) -> HalfRows {
        self.half_rows
    }

    pub fn is_active(&self) -> bool {
        self.text.is_some() || !self.vectors.is_empty()
    }

    pub fn id(&self, doc: DocId) -> Option<&str> {
        self.docs.id(doc)
    }

    pub fn on_put(&mut self, id: &str, record: &Record) {
        if !self.is_active() {
            return;
        }
        let doc = self.docs.get_or_assign(id);
        put_into(self.text.as_mut(), &mut self.vectors, doc, record);
    }

    pub fn on_remove(&mut self, id: &str) {
        let Some(doc) = self.docs.release(id) else {
            return;
        };
        if let Some(text) = &mut self.text {
            text.remove(doc);
        }
        for slot in &mut self.vectors {
            slot.index.remove(doc);
        }
    }

    /// Builds the text index if needed, over `records`.
    pub fn ensure_text<'a>(
        &mut self,
        language: Option<&str>,
        records: impl Iterator<Item = (&'a str, &'a Record)>,
    ) -> Result<()> {
        if self.text.is_some() {
            return Ok(());
        }
        let analyzer = match language {
            Some(l) => Analyzer::for_language(l).map_err(|e| Error::invalid(e.to_string()))?,
            None => Analyzer::default(),
        };
        let mut text = TextIndex::new(analyzer);
        let docs = &mut self.docs;
        text.bulk(|text| {
            for (id, record) in records {
                put_text(text, docs.get_or_assign(id), record);
            }
        });
        self.text = Some(text);
        Ok(())
    }

    /// Builds the vector index for (field, metric) if needed, over `records`.
    pub fn ensure_vector<'a>(
        &mut self,
        field: &str,
        metric: Metric,
        m: usize,
        ef_construction: usize,
        records: impl Iterator<Item = (&'a str, &'a Record)>,
    ) {
        if self
            .vectors
            .iter()
            .any(|s| s.field == field && s.metric == metric)
        {
            return;
        }
        let mut index = VectorIndex::new(metric, m, ef_construction, seed_for(field))
            .with_half_rows(self.half_rows);
        for (id, r) in records {
            if let Some(v) = vector_of(r, field) {
                let doc = self.docs.get_or_assign(id);
                let _ = index.upsert(doc, &v);
            }
        }
        self.vectors.push(VectorSlot {
            field: field.to_string(),
            metric,
            index,
        });
    }

    /// A copy of the document numbers, for a plan that adds an index to an
    /// active state (`None` when no index exists: a plan numbers afresh).
    pub(super) fn docs_for_plan(&self) -> Option<DocMap> {
        self.is_active().then(|| self.docs.clone())
    }

    /// Takes the indexes of `built` this state lacks. `built` was made
    /// outside the lock over `snapshot`, numbering documents afresh
    /// (`fresh`: this state had no index) or as this state did then (a copy
    /// of its numbers). Numbers that may disagree with this state's drop the
    /// build. The writes since (`snapshot` to `live`) are applied to the new
    /// indexes: removals first, by the old numbers (a freed number may have
    /// been reused since), then what was added or changed, by the current
    /// ones.
    pub(super) fn adopt(
        &mut self,
        built: SearchState,
        fresh: bool,
        snapshot: &Records,
        live: &Records,
    ) {
        let SearchState {
            docs: then,
            text,
            vectors,
            half_rows: _,
        } = built;
        // The numbers the build used, when they are not (now) this state's.
        let then = match (fresh, self.is_active()) {
            (true, false) => {
                self.docs = then;
                None
            }
            (false, true) => Some(then),
            // Another build numbered the documents first, or the indexes
            // this one extends are gone.
            _ => return,
        };
        let mut text = text.filter(|_| self.text.is_none());
        let mut vectors: Vec<VectorSlot> = vectors
            .into_iter()
            .filter(|v| self.vector(&v.field, v.metric).is_none())
            .collect();
        if text.is_none() && vectors.is_empty() {
            return;
        }
        let (removed, put) = snapshot.changes(live);
        for id in removed {
            let numbered = then.as_ref().unwrap_or(&self.docs).of.get(id).copied();
            if let Some(doc) = numbered {
                if let Some(t) = &mut text {
                    t.remove(doc);
                }
                for slot in &mut vectors {
                    slot.index.remove(doc);
                }
            }
            if live.get(id).is_none() {
                self.docs.release(id);
            }
        }
        for id in put {
            if let Some(record) = live.get(id) {
                let doc = self.docs.get_or_assign(id);
                put_into(text.as_mut(), &mut vectors, doc, record);
            }
        }
        if text.is_some() {
            self.text = text;
        }
        self.vectors.extend(vectors);
    }

    pub fn text(&self) -> Option<&TextIndex> {
        self.text.as_ref()
    }

    pub fn vector(&self, field: &str, metric: Metric) -> Option<&VectorIndex> {
        self.vectors
            .iter()
            .find(|s| s.field == field && s.metric == metric)
            .map(|s| &s.index)
    }

    /// Sweeps removed versions out of the text index with idle time, up to
    /// about `bytes` of its lists; returns the bytes read (see
    /// `TextIndex::sweep_removed`).
    pub fn sweep_removed(&mut self, bytes: usize) -> usize {
        self.text.as_mut().map_or(0, |t| t.sweep_removed(bytes))
    }

    /// Whether the text index has a sweep of removed versions under way.
    pub fn sweeping(&self) -> bool {
        self.text.as_ref().is_some_and(TextIndex::sweeping)
    }

    /// Whether `sweep_removed` has work to do.
    pub fn wants_sweep(&self) -> bool {
        self.text.as_ref().is_some_and(TextIndex::wants_sweep)
    }

    /// Heap bytes of the text index (0 without one), for `/metrics`.
    pub fn text_bytes(&self) -> usize {
        self.text.as_ref().map_or(0, TextIndex::memory_bytes)
    }

    /// Heap bytes of the vector indexes, for `/metrics`.
    pub fn vector_bytes(&self) -> usize {
        self.vectors.iter().map(|s| s.index.memory_bytes()).sum()
    }
}

/// The first indexes of a collection, to be built outside the server lock
/// from a snapshot of its records (`Engine::index_plan`), then installed
/// under it (`Engine::install_index`), which catches up with the writes made
/// meanwhile.
#[derive(Debug)]
pub struct IndexPlan {
    pub(super) collection: String,
    pub(super) records: Records,
    /// The text index, with its language (`None`: the default analyzer).
    pub(super) text: Option<Option<String>>,
    /// A vector index: field, metric, m, ef_construction.
    pub(super) vector: Option<DeclaredVector>,
    /// The collection's document numbers, when it has indexes already (the
    /// new ones must number documents the same way).
    pub(super) docs: Option<DocMap>,
    /// The collection's `--vector-half-rows`, for a vector index built here.
    pub(super) half_rows: HalfRows,
}

/// An `IndexPlan` carried out: indexes over the snapshot's records.
#[derive(Debug)]
pub struct IndexBuild {
    pub(super) collection: String,
    /// Documents were numbered afresh (the collection had no index).
    pub(super) fresh: bool,
    /// The records the indexes cover.
    pub(super) records: Records,
    pub(super) state: SearchState,
}

impl IndexPlan {
    /// Builds the indexes (no lock held; seconds for a large collection).
    pub fn build(self) -> Result<IndexBuild> {
        let fresh = self.docs.is_none();
        let mut state = SearchState {
            docs: self.docs.unwrap_or_default(),
            ..SearchState::new(self.half_rows)
        };
        if let Some(language) = &self.text {
            state.ensure_text(language.as_deref(), self.records.iter())?;
        }
        if let Some((field, metric, m, ef)) = &self.vector {
            state.ensure_vector(field, *metric, *m, *ef, self.records.iter());
        }
        Ok(IndexBuild {
            collection: self.collection,
            fresh,
            records: self.records,
            state,
        })
    }
}

/// A declared vector index: field, metric, m, ef_construction.
pub type DeclaredVector = (String, Metric, usize, usize);

/// The declared indexes of a schema: the text index (with its language, if
/// named) and the vector indexes.
pub fn declared(schema: &Schema) -> (Option<Option<String>>, Vec<DeclaredVector>) {
    let mut text = None;
    let mut vectors = Vec::new();
    for (name, f) in &schema.fields {
        match &f.index {
            Some(IndexConfig::Text { language, .. }) => text = Some(language.clone()),
            Some(IndexConfig::Vector {
                metric,
                m,
                ef_construction,
                ..
            }) => {
                if let Ok(metric) = metric_from(metric) {
                    vectors.push((name.clone(), metric, *m as usize, *ef_construction as usize));
                }
            }
            _ => {}
        }
    }
    (text, vectors)
}

/// A parsed search request (spec D1).
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub text: TextQuery,
    pub vector: Option<Vec<f32>>,
    pub vector_field: String,
    pub metric: Metric,
    pub vector_k: Option<usize>,
    pub ef_search: usize,
    pub threshold: Option<f32>,
    pub text_weight: f32,
    pub vector_weight: f32,
    pub limit: usize,
}
