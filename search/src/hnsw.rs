//! Hierarchical Navigable Small World graph (Malkov & Yashunin, 2016).
//!
//! Nodes are the slots of [`crate::VectorIndex`]'s vector array, inserted in slot
//! order. Each node gets a random level `floor(-ln(U) / ln(m))` from the caller's
//! seeded generator; it is linked on every layer up to its level to neighbours
//! picked by the paper's heuristic (a candidate is kept only if it is closer to the
//! new node than to every neighbour kept so far), at most `m` per upper layer and
//! `2m` on layer 0. Reverse links are added and an overfull list is re-pruned with
//! the same heuristic. The graph never deletes nodes: the owner tombstones them and
//! rebuilds the graph when tombstones pile up.
//!
//! Search descends greedily through the upper layers, then runs a beam search of
//! width `ef` on layer 0. The beam is driven by all nodes (tombstoned and filtered
//! ones still route), while a separate list keeps the best `k` nodes the caller
//! accepts.
//!
//! Every distance the graph takes is [`Vectors::approx_to`]: to a half-precision
//! copy of the row when there is one (cosine, see [`crate::distance`]).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::distance::{dot, dot_half, l2sq, prefetch};
use crate::rng::SplitMix64;
use crate::vector::Metric;

const NONE: u32 = u32::MAX;
const MAX_LEVEL: usize = 16;

/// A slot and its distance to the query (lower is closer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scored {
    pub dist: f32,
    pub slot: u32,
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.dist
            .total_cmp(&other.dist)
            .then(self.slot.cmp(&other.slot))
    }
}

/// The vector array seen as rows, with the metric's internal distance:
/// cosine `1 - a.b` (rows are normalised), dot `-a.b`, euclidean `|a-b|^2`.
/// Under cosine on a CPU with AVX-512 the graph walks a half-precision copy
/// (`coarse`): a walk waits on memory, and the copy is half the bytes.
pub(crate) struct Vectors<'a> {
    data: &'a [f32],
    coarse: &'a [u16],
    dim: usize,
    metric: Metric,
}

impl<'a> Vectors<'a> {
    /// `coarse` is `data` in half precision (cosine only), or empty.
    pub(crate) fn new(data: &'a [f32], coarse: &'a [u16], dim: usize, metric: Metric) -> Self {
        Vectors {
            data,
            coarse,
            dim,
            metric,
        }
    }

    #[inline]
    pub(crate) fn row(&self, slot: u32) -> &'a [f32] {
        let at = slot as usize * self.dim;
        &self.data[at..at + self.dim]
    }

    #[inline]
    fn coarse(&self, slot: u32) -> Option<&'a [u16]> {
        let at = slot as usize * self.dim;
        self.coarse.get(at..at + self.dim)
    }

    /// Exact distance from `q` to `slot`.
    #[inline]
    pub(crate) fn dist_to(&self, q: &[f32], slot: u32) -> f32 {
        let row = self.row(slot);
        let d = match self.metric {
            Metric::Cosine => 1.0 - dot(q, row),
            Metric::Dot => -dot(q, row),
            Metric::Euclidean => l2sq(q, row),
        };
        // inf - inf in a huge dot product: rank it last rather than return NaN.
        if d.is_nan() {
            f32::INFINITY
        } else {
            d
        }
    }

    /// The distance the graph walks by: to the half-precision copy when there
    /// is one (cosine only), else exact.
    #[inline]
    fn approx_to(&self, q: &[f32], slot: u32) -> f32 {
        match self.coarse(slot) {
            Some(half) => 1.0 - dot_half(q, half),
            None => self.dist_to(q, slot),
        }
    }

    #[inline]
    fn approx(&self, a: u32, b: u32) -> f32 {
        self.approx_to(self.row(a), b)
    }

    /// Starts loading the row the graph reads for `slot` into the cache.
    #[inline]
    fn prefetch(&self, slot: u32) {
        match self.coarse(slot) {
            Some(half) => prefetch(half),
            None => prefetch(self.row(slot)),
        }
    }
}

/// A visited set over slots, zeroed per search.
struct Visited(Vec<u64>);

impl Visited {
    fn new(n: usize) -> Self {
        Visited(vec![0; n.div_ceil(64)])
    }
    /// Marks `slot`; returns true if it was not marked before.
    #[inline]
    fn insert(&mut self, slot: u32) -> bool {
        let (w, b) = ((slot / 64) as usize, slot % 64);
        match self.0.get_mut(w) {
            Some(word) if *word & (1 << b) == 0 => {
                *word |= 1 << b;
                true
            }
            _ => false,
        }
    }
}

pub(crate) struct Hnsw {
    m: usize,
    m0: usize,
    ef_construction: usize,
    ml: f64,
    entry: u32,
    top: usize,
    /// Layer 0 adjacency: per node `m0 + 1` words, the first being the count.
    layer0: Vec<u32>,
    /// Upper layers: `upper[node][level - 1]`.
    upper: Vec<Vec<Vec<u32>>>,
}

impl Hnsw {
    pub(crate) fn new(m: usize, ef_construction: usize) -> Hnsw {
        Hnsw {
            m,
            m0: 2 * m,
            ef_construction,
            ml: 1.0 / (m as f64).ln(),
            entry: NONE,
            top: 0,
            layer0: Vec::new(),
            upper: Vec::new(),
        }
    }

    fn nodes(&self) -> usize {
        self.upper.len()
    }

    fn neighbors(&self, node: u32, level: usize) -> &[u32] {
        if level == 0 {
            let at = node as usize * (self.m0 + 1);
            let count = self.layer0[at] as usize;
            &self.layer0[at + 1..at + 1 + count]
        } else {
            self.upper[node as usize]
                .get(level - 1)
                .map_or(&[][..], |v| v.as_slice())
        }
    }

    fn set_neighbors(&mut self, node: u32, level: usize, list: &[u32]) {
        if level == 0 {
            let at = node as usize * (self.m0 + 1);
            let count = list.len().min(self.m0);
            self.layer0[at] = count as u32;
            self.layer0[at + 1..at + 1 + count].copy_from_slice(&list[..count]);
        } else if let Some(v) = self.upper[node as usize].get_mut(level - 1) {
            v.clear();
            v.extend_from_slice(list);
        }
    }

    fn random_level(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64_open();
        ((-u.ln() * self.ml) as usize).min(MAX_LEVEL)
    }

    /// Adds `slot` (which must be the next slot) to the graph.
    pub(crate) fn insert(&mut self, slot: u32, vectors: &Vectors<'_>, rng: &mut SplitMix64) {
        let level = self.random_level(rng);
        let node = slot as usize;
        if node >= self.nodes() {
            self.upper.resize_with(node + 1, Vec::new);
            self.layer0.resize((node + 1) * (self.m0 + 1), 0);
        }
        self.upper[node] = vec![Vec::new(); level];
        if self.entry == NONE {
            self.entry = slot;
            self.top = level;
            return;
        }
        let q = vectors.row(slot);
        let mut ep = Scored {
            dist: vectors.approx_to(q, self.entry),
            slot: self.entry,
        };
        for l in (level + 1..=self.top).rev() {
            ep = self.greedy(q, ep, l, vectors);
        }
        let mut eps = vec![ep];
        for l in (0..=level.min(self.top)).rev() {
            let w = self.search_layer(q, &eps, self.ef_construction, l, vectors);
            let chosen = select(&w, self.m, vectors);
            let ids: Vec<u32> = chosen.iter().map(|s| s.slot).collect();
            self.set_neighbors(slot, l, &ids);
            for &n in &ids {
                self.link(n, slot, l, vectors);
            }
            eps = w;
        }
        if level > self.top {
            self.top = level;
            self.entry = slot;
        }
    }

    /// Adds the edge `from -> to` on `level`, re-pruning an overfull list.
    fn link(&mut self, from: u32, to: u32, level: usize, vectors: &Vectors<'_>) {
        let cap = if level == 0 { self.m0 } else { self.m };
        let current = self.neighbors(from, level);
        if current.contains(&to) {
            return;
        }
        if current.len() < cap {
            let mut list = current.to_vec();
            list.push(to);
            self.set_neighbors(from, level, &list);
            return;
        }
        for &slot in current {
            vectors.prefetch(slot);
        }
        let mut candidates: Vec<Scored> = current
            .iter()
            .chain(std::iter::once(&to))
            .map(|&slot| Scored {
                dist: vectors.approx(from, slot),
                slot,
            })
            .collect();
        candidates.sort_unstable();
        let kept: Vec<u32> = select(&candidates, cap, vectors)
            .iter()
            .map(|s| s.slot)
            .collect();
        self.set_neighbors(from, level, &kept);
    }

    /// The neighbours of `node` on `level` not visited yet, now marked, their rows
    /// already on their way into the cache.
    fn unvisited<'s>(
        &'s self,
        node: u32,
        level: usize,
        visited: &'s mut Visited,
        vectors: &'s Vectors<'_>,
    ) -> impl Iterator<Item = u32> + 's {
        self.neighbors(node, level)
            .iter()
            .copied()
            .filter(|&n| visited.insert(n))
            .inspect(|&n| vectors.prefetch(n))
    }

    fn greedy(&self, q: &[f32], mut ep: Scored, level: usize, vectors: &Vectors<'_>) -> Scored {
        loop {
            let mut moved = false;
            for &n in self.neighbors(ep.slot, level) {
                let dist = vectors.approx_to(q, n);
                if dist < ep.dist {
                    ep = Scored { dist, slot: n };
                    moved = true;
                }
            }
            if !moved {
                return ep;
            }
        }
    }

    /// Beam search on one layer (construction); returns up to `ef` nodes, closest first.
    fn search_layer(
        &self,
        q: &[f32],
        eps: &[Scored],
        ef: usize,
        level: usize,
        vectors: &Vectors<'_>,
    ) -> Vec<Scored> {
        let mut visited = Visited::new(self.nodes());
        let mut candidates: BinaryHeap<Reverse<Scored>> = BinaryHeap::new();
        let mut w: BinaryHeap<Scored> = BinaryHeap::new();
        let mut fresh = Vec::with_capacity(self.m0);
        for &ep in eps {
            if visited.insert(ep.slot) {
                candidates.push(Reverse(ep));
                w.push(ep);
            }
        }
        while w.len() > ef {
            w.pop();
        }
        while let Some(Reverse(c)) = candidates.pop() {
            if w.len() >= ef && w.peek().is_some_and(|far| c.dist > far.dist) {
                break;
            }
            if let Some(Reverse(next)) = candidates.peek() {
                prefetch(self.neighbors(next.slot, 0));
            }
            if let Some(Reverse(next)) = candidates.peek() {
                prefetch(self.neighbors(next.slot, level));
            }
            fresh.clear();
            fresh.extend(self.unvisited(c.slot, level, &mut visited, vectors));
            for &n in &fresh {
                let dist = vectors.approx_to(q, n);
                if w.len() < ef || w.peek().is_some_and(|far| dist < far.dist) {
                    let s = Scored { dist, slot: n };
                    candidates.push(Reverse(s));
                    w.push(s);
                    if w.len() > ef {
                        w.pop();
                    }
                }
            }
        }
        w.into_sorted_vec()
    }

    /// The best `k` nodes with `ok(node)` found by a beam of width `ef`, closest
    /// first by the walk's distances (half precision when `vectors` has a copy:
    /// the caller rescores them).
    pub(crate) fn search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        vectors: &Vectors<'_>,
        ok: &dyn Fn(u32) -> bool,
    ) -> Vec<Scored> {
        if self.entry == NONE || k == 0 {
            return Vec::new();
        }
        let mut ep = Scored {
            dist: vectors.approx_to(q, self.entry),
            slot: self.entry,
        };
        for l in (1..=self.top).rev() {
            ep = self.greedy(q, ep, l, vectors);
        }
        let ef = ef.max(k);
        let mut visited = Visited::new(self.nodes());
        visited.insert(ep.slot);
        let mut candidates: BinaryHeap<Reverse<Scored>> = BinaryHeap::new();
        let mut w: BinaryHeap<Scored> = BinaryHeap::new();
        let mut results: BinaryHeap<Scored> = BinaryHeap::new();
        let mut fresh = Vec::with_capacity(self.m0);
        let offer = |s: Scored, results: &mut BinaryHeap<Scored>| {
            if results.len() < k {
                if ok(s.slot) {
                    results.push(s);
                }
            } else if results.peek().is_some_and(|far| s < *far) && ok(s.slot) {
                results.pop();
                results.push(s);
            }
        };
        candidates.push(Reverse(ep));
        w.push(ep);
        offer(ep, &mut results);
        while let Some(Reverse(c)) = candidates.pop() {
            if w.len() >= ef && w.peek().is_some_and(|far| c.dist > far.dist) {
                break;
            }
            fresh.clear();
            fresh.extend(self.unvisited(c.slot, 0, &mut visited, vectors));
            for &n in &fresh {
                let s = Scored {
                    dist: vectors.approx_to(q, n),
                    slot: n,
                };
                if w.len() < ef || w.peek().is_some_and(|far| s.dist < far.dist) {
                    candidates.push(Reverse(s));
                    w.push(s);
                    if w.len() > ef {
                        w.pop();
                    }
                }
                offer(s, &mut results);
            }
        }
        results.into_sorted_vec()
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        let upper: usize = self
            .upper
            .iter()
            .map(|levels| {
                levels.capacity() * std::mem::size_of::<Vec<u32>>()
                    + levels.iter().map(|v| v.capacity() * 4).sum::<usize>()
            })
            .sum();
        self.layer0.capacity() * 4
            + self.upper.capacity() * std::mem::size_of::<Vec<Vec<u32>>>()
            + upper
    }
}

/// The neighbour-selection heuristic: walk `candidates` (closest first) and keep
/// one if it is closer to the base than to every node kept so far, up to `m`.
fn select(candidates: &[Scored], m: usize, vectors: &Vectors<'_>) -> Vec<Scored> {
    let mut kept: Vec<Scored> = Vec::with_capacity(m);
    for &c in candidates {
        if kept.len() >= m {
            break;
        }
        if kept.iter().all(|k| vectors.approx(c.slot, k.slot) > c.dist) {
            kept.push(c);
        }
    }
    kept
}
