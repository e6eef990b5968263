//! Vector index: exact search for small sets, HNSW for large ones, chosen
//! automatically.
//!
//! # Layout
//!
//! Vectors live in one contiguous `Vec<f32>` by slot (`slot * dim ..`), with maps
//! slot -> doc and doc -> slot. Under [`Metric::Cosine`] vectors are stored
//! L2-normalised (a zero vector stays zero), so cosine is a dot product. A
//! cosine graph on a CPU with AVX-512 also keeps a half-precision copy that the
//! graph walks (see [`crate::distance`]); hits are then scored on the `f32` rows.
//! [`HalfRows`] turns the copy off (or on everywhere).
//!
//! * **Flat mode** (at most [`FLAT_MAX`] live vectors): no graph. Search scans every
//!   live vector, so it is exact. Removing a vector moves the last slot into its
//!   place.
//! * **Graph mode** (more than [`FLAT_MAX`]): an HNSW graph over the slots
//!   ([`crate::hnsw`]). Removing a vector leaves a tombstone that still routes
//!   searches but is never returned; replacing one tombstones the old slot. When
//!   tombstones outnumber live vectors the graph is rebuilt from the live ones
//!   (amortised: one re-insertion per removal); when the live count falls below
//!   [`FLAT_MAX`] / 2 the index goes back to flat mode.
//!
//! # Scores
//!
//! Higher is better, always:
//!
//! | metric | score | range |
//! |---|---|---|
//! | Cosine | cosine similarity; 0 when either vector is zero | [-1, 1] |
//! | Dot | dot product | any |
//! | Euclidean | `1 / (1 + distance)` | (0, 1] |
//!
//! # Filters
//!
//! `search` never returns fewer than `min(k, accepted live documents)` hits (before
//! the `threshold`). In graph mode it first calls `accept` on an evenly spaced
//! sample of 256 slots to estimate the accepted share `p` (tombstones count as
//! rejected) and widens the beam to `ef / p`. The graph search explores through
//! all nodes but keeps a separate list of the best accepted ones; if that list
//! ends shorter than `k` it retries with a 4x wider beam. When the beam would
//! exceed [`EXACT_FALLBACK_EF`] or a quarter of the slots, or when scanning the
//! accepted documents costs fewer distance computations than the beam (about
//! `16 * ef`), it scans the accepted documents exactly instead: `accept` on every
//! slot, distances only for the accepted ones.

use std::collections::BinaryHeap;
use std::fmt;

use crate::distance::{half_rows_pay, to_f16};
use crate::hnsw::{Hnsw, Scored, Vectors};
use crate::rng::SplitMix64;
use crate::DocId;

/// Up to this many live vectors, search is exact and no graph is kept.
pub const FLAT_MAX: usize = 2_000;
/// Beam width used when the caller passes `ef_search = 0`.
pub const DEFAULT_EF_SEARCH: usize = 64;
/// Default HNSW out-degree.
pub const DEFAULT_M: usize = 16;
/// Default HNSW construction beam.
pub const DEFAULT_EF_CONSTRUCTION: usize = 128;
/// Filtered searches switch to an exact scan instead of growing the beam past this.
pub const EXACT_FALLBACK_EF: usize = 4_096;
/// Slots sampled to estimate how selective a filter is.
const SELECTIVITY_SAMPLE: usize = 256;

/// Distance function. See the module documentation for the score of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    Cosine,
    Euclidean,
    Dot,
}

impl Metric {
    /// Parses a wire name: `cosine`; `euclidean` / `l2`; `dot` / `dotproduct` /
    /// `dot_product` / `inner_product` (ASCII case ignored).
    pub fn from_name(name: &str) -> Option<Metric> {
        let n = name.trim().to_ascii_lowercase();
        match n.as_str() {
            "cosine" => Some(Metric::Cosine),
            "euclidean" | "l2" => Some(Metric::Euclidean),
            "dot" | "dotproduct" | "dot_product" | "inner_product" => Some(Metric::Dot),
            _ => None,
        }
    }
}

/// Why a vector was refused. All are the caller's fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VectorError {
    /// The index holds vectors of another dimension.
    DimensionMismatch { expected: usize, got: usize },
    /// A component is NaN or infinite.
    NonFinite,
    /// A vector with no components.
    Empty,
}

impl fmt::Display for VectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VectorError::DimensionMismatch { expected, got } => {
                write!(f, "vector has {got} dimensions, the index holds {expected}")
            }
            VectorError::NonFinite => f.write_str("vector contains NaN or infinity"),
            VectorError::Empty => f.write_str("vector is empty"),
        }
    }
}

impl std::error::Error for VectorError {}

const NONE: u32 = u32::MAX;

/// Whether a cosine graph keeps a half-precision copy of its vectors to walk:
/// two bytes more per component, for a walk that reads half the bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HalfRows {
    /// Where the CPU widens half precision in hardware (AVX-512).
    #[default]
    Auto,
    /// On every CPU; without AVX-512 the widening (F16C, or software) costs
    /// more than the smaller reads save: builds took about twice as long.
    On,
    /// Never: the graph walks the `f32` rows, for less memory.
    Off,
}

impl HalfRows {
    /// `auto`, `on` or `off`.
    pub fn parse(s: &str) -> Option<HalfRows> {
        match s {
            "auto" => Some(HalfRows::Auto),
            "on" => Some(HalfRows::On),
            "off" => Some(HalfRows::Off),
            _ => None,
        }
    }

    /// Whether a cosine graph keeps the copy on this CPU.
    pub fn keeps_copy(self) -> bool {
        match self {
            HalfRows::Auto => half_rows_pay(),
            HalfRows::On => true,
            HalfRows::Off => false,
        }
    }
}

/// Nearest-neighbour index over one vector per document. See the module docs.
pub struct VectorIndex {
    metric: Metric,
    half_rows: HalfRows,
    m: usize,
    ef_construction: usize,
    rng: SplitMix64,
    /// Pinned by the first vector; forgotten when the index becomes empty.
    dim: Option<usize>,
    data: Vec<f32>,
    /// `data` in half precision while a cosine graph exists and `half_rows`
    /// keeps a copy (empty otherwise): the graph walks it, and the hits it
    /// finds are scored on `data`.
    coarse: Vec<u16>,
    slot_doc: Vec<u32>,
    /// Tombstoned slots have `NONE` in `slot_doc`.
    doc_slot: Vec<u32>,
    live: usize,
    graph: Option<Hnsw>,
    flat_max: usize,
}

impl fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VectorIndex")
            .field("metric", &self.metric)
            .field("dim", &self.dim)
            .field("live", &self.live)
            .field("slots", &self.slot_doc.len())
            .field("graph", &self.graph.is_some())
            .finish()
    }
}

impl VectorIndex {
    /// An empty index. `m` (HNSW out-degree, clamped to 2..=128) and
    /// `ef_construction` (clamped to at least `m`) only matter once the index
    /// outgrows [`FLAT_MAX`]; `seed` makes graph construction reproducible.
    pub fn new(metric: Metric, m: usize, ef_construction: usize, seed: u64) -> VectorIndex {
        let m = m.clamp(2, 128);
        VectorIndex {
            metric,
            half_rows: HalfRows::Auto,
            m,
            ef_construction: ef_construction.max(m),
            rng: SplitMix64::new(seed),
            dim: None,
            data: Vec::new(),
            coarse: Vec::new(),
            slot_doc: Vec::new(),
            doc_slot: Vec::new(),
            live: 0,
            graph: None,
            flat_max: FLAT_MAX,
        }
    }

    /// Changes the flat/graph switch point (default [`FLAT_MAX`]): above `n` live
    /// vectors a graph is built, below `n / 2` it is dropped. Takes effect at the
    /// next upsert or removal.
    pub fn with_flat_max(mut self, n: usize) -> VectorIndex {
        self.flat_max = n;
        self
    }

    /// Sets whether a cosine graph walks a half-precision copy (default
    /// [`HalfRows::Auto`]).
    pub fn with_half_rows(mut self, half_rows: HalfRows) -> VectorIndex {
        self.set_half_rows(half_rows);
        self
    }

    /// Changes whether a cosine graph walks a half-precision copy: an
    /// existing graph makes or drops its copy now and keeps its edges.
    pub fn set_half_rows(&mut self, half_rows: HalfRows) {
        self.half_rows = half_rows;
        if self.graph.is_none() || !self.keeps_half_copy() {
            self.coarse = Vec::new();
        } else if self.coarse.is_empty() {
            self.coarse = self.half_copy();
        }
    }

    /// `data` in half precision.
    fn half_copy(&self) -> Vec<u16> {
        self.data.iter().map(|&x| to_f16(x)).collect()
    }

    /// Whether a graph over this index's vectors walks a half-precision copy.
    fn keeps_half_copy(&self) -> bool {
        self.metric == Metric::Cosine && self.half_rows.keeps_copy()
    }

    /// The metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The pinned dimension, if any vector is indexed.
    pub fn dimension(&self) -> Option<usize> {
        self.dim
    }

    /// Number of live vectors.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no vector is indexed.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// True when search uses the HNSW graph.
    pub fn is_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// True when `doc` has a vector.
    pub fn contains(&self, doc: DocId) -> bool {
        self.doc_slot
            .get(doc.0 as usize)
            .is_some_and(|&s| s != NONE)
    }

    fn validate(&self, v: &[f32]) -> Result<(), VectorError> {
        if v.is_empty() {
            return Err(VectorError::Empty);
        }
        if let Some(expected) = self.dim {
            if v.len() != expected {
                return Err(VectorError::DimensionMismatch {
                    expected,
                    got: v.len(),
                });
            }
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(VectorError::NonFinite);
        }
        Ok(())
    }

    /// The stored form of `v` (normalised under cosine).
    fn prepare(&self, v: &[f32]) -> Vec<f32> {
        let mut out = v.to_vec();
        if self.metric == Metric::Cosine {
            normalize(&mut out);
        }
        out
    }

    /// Sets `doc`'s vector, replacing any previous one. The first vector pins the
    /// dimension; a vector of another dimension, an empty one or one with NaN or
    /// infinity is refused and the index is unchanged.
    pub fn upsert(&mut self, doc: DocId, v: &[f32]) -> Result<(), VectorError> {
        self.validate(v)?;
        let stored = self.prepare(v);
        let dim = v.len();
        self.dim = Some(dim);
        let d = doc.0 as usize;
        if self.doc_slot.len() <= d {
            self.doc_slot.resize(d + 1, NONE);
        }
        let old = self.doc_slot[d];
        if old != NONE && self.graph.is_none() {
            let at = old as usize * dim;
            self.data[at..at + dim].copy_from_slice(&stored);
            return Ok(());
        }
        if old != NONE {
            self.slot_doc[old as usize] = NONE;
            self.live -= 1;
        }
        let slot = self.slot_doc.len() as u32;
        self.data.extend_from_slice(&stored);
        self.slot_doc.push(doc.0);
        self.doc_slot[d] = slot;
        self.live += 1;
        let metric = self.metric;
        match &mut self.graph {
            Some(graph) => {
                if !self.coarse.is_empty() {
                    self.coarse.extend(stored.iter().map(|&x| to_f16(x)));
                }
                let vectors = Vectors::new(&self.data, &self.coarse, dim, metric);
                graph.insert(slot, &vectors, &mut self.rng);
                self.maybe_rebuild();
            }
            None if self.live > self.flat_max => self.rebuild(),
            None => {}
        }
        Ok(())
    }

    /// Removes `doc`'s vector; returns whether it had one.
    pub fn remove(&mut self, doc: DocId) -> bool {
        let d = doc.0 as usize;
        let Some(&slot) = self.doc_slot.get(d) else {
            return false;
        };
        if slot == NONE {
            return false;
        }
        self.doc_slot[d] = NONE;
        self.live -= 1;
        if self.live == 0 {
            self.clear();
            return true;
        }
        match self.graph {
            Some(_) => {
                self.slot_doc[slot as usize] = NONE;
                self.maybe_rebuild();
            }
            None => {
                // Move the last slot into the hole.
                let dim = self.dim.unwrap_or(0);
                let last = self.slot_doc.len() - 1;
                let s = slot as usize;
                if s != last {
                    self.data.copy_within(last * dim..(last + 1) * dim, s * dim);
                    let moved = self.slot_doc[last];
                    self.slot_doc[s] = moved;
                    self.doc_slot[moved as usize] = slot;
                }
                self.slot_doc.pop();
                self.data.truncate(last * dim);
            }
        }
        true
    }

    fn clear(&mut self) {
        self.dim = None;
        self.data = Vec::new();
        self.coarse = Vec::new();
        self.slot_doc = Vec::new();
        self.doc_slot = Vec::new();
        self.live = 0;
        self.graph = None;
    }

    fn maybe_rebuild(&mut self) {
        let dead = self.slot_doc.len() - self.live;
        if self.live < self.flat_max / 2 || (dead > self.live && dead > 64) {
            self.rebuild();
        }
    }

    /// Compacts the live vectors into fresh slots and, above [`FLAT_MAX`], builds
    /// a new graph over them.
    fn rebuild(&mut self) {
        let dim = self.dim.unwrap_or(0);
        let mut data = Vec::with_capacity(self.live * dim);
        let mut slot_doc = Vec::with_capacity(self.live);
        for (slot, &doc) in self.slot_doc.iter().enumerate() {
            if doc != NONE {
                self.doc_slot[doc as usize] = slot_doc.len() as u32;
                slot_doc.push(doc);
                data.extend_from_slice(&self.data[slot * dim..(slot + 1) * dim]);
            }
        }
        self.data = data;
        self.slot_doc = slot_doc;
        self.graph = None;
        self.coarse = Vec::new();
        if self.live > self.flat_max {
            if self.keeps_half_copy() {
                self.coarse = self.half_copy();
            }
            let vectors = Vectors::new(&self.data, &self.coarse, dim, self.metric);
            let mut graph = Hnsw::new(self.m, self.ef_construction);
            for slot in 0..self.slot_doc.len() as u32 {
                graph.insert(slot, &vectors, &mut self.rng);
            }
            self.graph = Some(graph);
        }
    }

    /// The `k` accepted documents nearest to `q`, best first (ties by doc id), with
    /// their scores (see the module docs), keeping only scores `>= threshold`.
    /// `ef_search` is the HNSW beam (0: [`DEFAULT_EF_SEARCH`]; raised to `k`).
    /// An empty index or `k = 0` gives no hits; a query of the wrong dimension or
    /// with NaN/infinity is an error.
    pub fn search(
        &self,
        q: &[f32],
        k: usize,
        ef_search: usize,
        threshold: Option<f32>,
        accept: &dyn Fn(DocId) -> bool,
    ) -> Result<Vec<(DocId, f32)>, VectorError> {
        let Some(dim) = self.dim else {
            if q.iter().any(|x| !x.is_finite()) {
                return Err(VectorError::NonFinite);
            }
            return Ok(Vec::new());
        };
        self.validate(q)?;
        let k = k.min(self.live);
        if k == 0 {
            return Ok(Vec::new());
        }
        let q = self.prepare(q);
        let vectors = Vectors::new(&self.data, &self.coarse, dim, self.metric);
        let ok = |slot: u32| {
            let doc = self.slot_doc[slot as usize];
            doc != NONE && accept(DocId(doc))
        };
        let mut found: Vec<Scored> = Vec::new();
        if let Some(graph) = &self.graph {
            let slots = self.slot_doc.len();
            let mut ef = if ef_search == 0 {
                DEFAULT_EF_SEARCH
            } else {
                ef_search
            }
            .max(k);
            let limit = EXACT_FALLBACK_EF.min(slots / 4).max(k);
            // Estimate the share of accepted slots (filter and tombstones) on an
            // evenly spaced sample, and widen the beam so that about `ef` of the
            // nodes it holds are accepted.
            let step = slots.div_ceil(SELECTIVITY_SAMPLE).max(1);
            let sampled = slots.div_ceil(step);
            let accepted = (0..slots).step_by(step).filter(|&s| ok(s as u32)).count();
            ef = ef
                .saturating_mul(sampled)
                .checked_div(accepted)
                .map_or(limit, |ef| ef.min(limit));
            // Cost in distance computations: a beam of `ef` costs about 24 per
            // entry (measured: neighbour visits plus heap work and cache misses);
            // a scan computes one per accepted slot, plus cheap `accept` calls.
            // Scan when that is cheaper.
            let scan_cost = accepted * slots / sampled.max(1) + slots / 32;
            if scan_cost <= ef.saturating_mul(16) {
                ef = limit;
            }
            // At `limit` and beyond, an exact scan of the accepted slots is cheaper.
            while ef < limit {
                found = graph.search(&q, k, ef, &vectors, &ok);
                if found.len() >= k {
                    break;
                }
                ef = (ef * 4).min(limit);
            }
            // The graph may have ranked by half-precision rows: scores are exact.
            for hit in &mut found {
                hit.dist = vectors.dist_to(&q, hit.slot);
            }
        }
        if found.len() < k {
            found = exact(&q, k, &vectors, self.slot_doc.len() as u32, &ok);
        }
        let mut hits: Vec<(DocId, f32)> = found
            .into_iter()
            .map(|s| {
                (
                    DocId(self.slot_doc[s.slot as usize]),
                    self.metric.score(s.dist),
                )
            })
            .filter(|&(_, score)| threshold.is_none_or(|t| score >= t))
            .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(hits)
    }

    /// Exact search regardless of mode (for recall measurements and tests).
    pub fn search_exact(
        &self,
        q: &[f32],
        k: usize,
        accept: &dyn Fn(DocId) -> bool,
    ) -> Result<Vec<(DocId, f32)>, VectorError> {
        let Some(dim) = self.dim else {
            return Ok(Vec::new());
        };
        self.validate(q)?;
        let q = self.prepare(q);
        let vectors = Vectors::new(&self.data, &[], dim, self.metric);
        let ok = |slot: u32| {
            let doc = self.slot_doc[slot as usize];
            doc != NONE && accept(DocId(doc))
        };
        let mut hits: Vec<(DocId, f32)> = exact(
            &q,
            k.min(self.live),
            &vectors,
            self.slot_doc.len() as u32,
            &ok,
        )
        .into_iter()
        .map(|s| {
            (
                DocId(self.slot_doc[s.slot as usize]),
                self.metric.score(s.dist),
            )
        })
        .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(hits)
    }

    /// Approximate heap memory in bytes (capacities).
    pub fn memory_bytes(&self) -> usize {
        self.data.capacity() * 4
            + self.coarse.capacity() * 2
            + self.slot_doc.capacity() * 4
            + self.doc_slot.capacity() * 4
            + self.graph.as_ref().map_or(0, Hnsw::memory_bytes)
    }
}

impl Metric {
    /// Maps the internal distance (lower is better) to the public score.
    fn score(self, dist: f32) -> f32 {
        match self {
            Metric::Cosine => 1.0 - dist,
            Metric::Dot => -dist,
            Metric::Euclidean => 1.0 / (1.0 + dist.max(0.0).sqrt()),
        }
    }
}

/// Scales `v` to unit length; a zero vector stays zero.
/// Scales by the largest magnitude first, so huge components cannot overflow.
pub(crate) fn normalize(v: &mut [f32]) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if !(max > 0.0 && max.is_finite()) {
        return;
    }
    let norm = v.iter().map(|x| (x / max) * (x / max)).sum::<f32>().sqrt();
    for x in v.iter_mut() {
        *x = (*x / max) / norm;
    }
}

/// The `k` accepted slots nearest to `q` by brute force.
fn exact(
    q: &[f32],
    k: usize,
    vectors: &Vectors<'_>,
    slots: u32,
    ok: &dyn Fn(u32) -> bool,
) -> Vec<Scored> {
    let mut heap: BinaryHeap<Scored> = BinaryHeap::with_capacity(k + 1);
    if k == 0 {
        return Vec::new();
    }
    for slot in 0..slots {
        if !ok(slot) {
            continue;
        }
        let dist = vectors.dist_to(q, slot);
        if heap.len() < k {
            heap.push(Scored { dist, slot });
        } else if heap.peek().is_some_and(|top| dist < top.dist) {
            heap.pop();
            heap.push(Scored { dist, slot });
        }
    }
    heap.into_sorted_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names() {
        assert_eq!(Metric::from_name("Cosine"), Some(Metric::Cosine));
        assert_eq!(Metric::from_name("dotproduct"), Some(Metric::Dot));
        assert_eq!(Metric::from_name("l2"), Some(Metric::Euclidean));
        assert_eq!(Metric::from_name("hamming"), None);
    }
}
