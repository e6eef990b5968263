//! Vector index: exactness, HNSW recall, filtered search, errors and edge cases.

use std::collections::BTreeSet;

use tidepool_search::{DocId, HalfRows, Metric, VectorError, VectorIndex};

/// SplitMix64 + Box-Muller: a seeded Gaussian source for synthetic data.
struct Gen(u64);

impl Gen {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        ((self.u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// `n` vectors around `clusters` Gaussian centres (unit spread between centres,
/// `spread` within a cluster).
fn clustered(n: usize, dim: usize, clusters: usize, spread: f32, seed: u64) -> Vec<Vec<f32>> {
    let mut g = Gen(seed);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| g.gauss()).collect())
        .collect();
    (0..n)
        .map(|i| {
            centres[i % clusters]
                .iter()
                .map(|c| c + spread * g.gauss())
                .collect()
        })
        .collect()
}

fn build(metric: Metric, data: &[Vec<f32>]) -> VectorIndex {
    let mut ix = VectorIndex::new(metric, 16, 128, 7);
    for (i, v) in data.iter().enumerate() {
        ix.upsert(DocId(i as u32), v).unwrap();
    }
    ix
}

fn docs(hits: &[(DocId, f32)]) -> Vec<u32> {
    hits.iter().map(|(d, _)| d.0).collect()
}

#[test]
fn exact_scores_per_metric() {
    let data = vec![
        vec![1.0, 0.0],
        vec![0.0, 2.0],
        vec![3.0, 3.0],
        vec![-1.0, 0.0],
    ];
    let cos = build(Metric::Cosine, &data);
    let r = cos.search(&[2.0, 0.0], 4, 0, None, &|_| true).unwrap();
    assert_eq!(docs(&r), [0, 2, 1, 3]);
    assert!((r[0].1 - 1.0).abs() < 1e-6);
    assert!((r[1].1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    assert!((r[3].1 + 1.0).abs() < 1e-6);

    let dot = build(Metric::Dot, &data);
    let r = dot.search(&[1.0, 1.0], 2, 0, None, &|_| true).unwrap();
    assert_eq!(r, [(DocId(2), 6.0), (DocId(1), 2.0)]);

    let l2 = build(Metric::Euclidean, &data);
    let r = l2.search(&[0.0, 0.0], 4, 0, None, &|_| true).unwrap();
    assert_eq!(docs(&r), [0, 3, 1, 2]);
    assert!((r[0].1 - 0.5).abs() < 1e-6); // 1 / (1 + 1)
    let r = l2.search(&[3.0, 3.0], 1, 0, None, &|_| true).unwrap();
    assert_eq!(r, [(DocId(2), 1.0)]);
    // Threshold keeps scores >= it.
    let r = l2.search(&[0.0, 0.0], 4, 0, Some(0.3), &|_| true).unwrap();
    assert_eq!(docs(&r), [0, 3, 1]);
}

#[test]
fn errors_and_edge_cases() {
    let mut ix = VectorIndex::new(Metric::Cosine, 16, 100, 1);
    // Empty index.
    assert!(ix
        .search(&[1.0, 2.0], 10, 0, None, &|_| true)
        .unwrap()
        .is_empty());
    assert_eq!(ix.upsert(DocId(0), &[]), Err(VectorError::Empty));
    assert_eq!(
        ix.upsert(DocId(0), &[f32::NAN, 1.0]),
        Err(VectorError::NonFinite)
    );
    assert_eq!(
        ix.upsert(DocId(0), &[f32::INFINITY]),
        Err(VectorError::NonFinite)
    );
    assert!(ix.is_empty());
    ix.upsert(DocId(0), &[1.0, 0.0, 0.0]).unwrap();
    assert_eq!(
        ix.upsert(DocId(1), &[1.0, 0.0]),
        Err(VectorError::DimensionMismatch {
            expected: 3,
            got: 2
        })
    );
    assert_eq!(
        ix.search(&[1.0], 1, 0, None, &|_| true),
        Err(VectorError::DimensionMismatch {
            expected: 3,
            got: 1
        })
    );
    assert_eq!(
        ix.search(&[f32::NAN, 0.0, 0.0], 1, 0, None, &|_| true),
        Err(VectorError::NonFinite)
    );
    // Zero vectors under cosine: similarity 0, never NaN.
    ix.upsert(DocId(1), &[0.0, 0.0, 0.0]).unwrap();
    let r = ix.search(&[0.0, 0.0, 0.0], 10, 0, None, &|_| true).unwrap();
    assert_eq!(r, [(DocId(0), 0.0), (DocId(1), 0.0)]);
    let r = ix.search(&[0.0, 5.0, 0.0], 10, 0, None, &|_| true).unwrap();
    assert!(r.iter().all(|(_, s)| *s == 0.0));
    // k = 0, huge k, huge ef.
    assert!(ix
        .search(&[1.0, 0.0, 0.0], 0, 0, None, &|_| true)
        .unwrap()
        .is_empty());
    assert_eq!(
        ix.search(&[1.0, 0.0, 0.0], usize::MAX, usize::MAX, None, &|_| true)
            .unwrap()
            .len(),
        2
    );
    // Replacing and removing.
    ix.upsert(DocId(1), &[0.0, 1.0, 0.0]).unwrap();
    assert_eq!(
        docs(&ix.search(&[0.0, 1.0, 0.0], 1, 0, None, &|_| true).unwrap()),
        [1]
    );
    assert!(ix.remove(DocId(0)));
    assert!(!ix.remove(DocId(0)));
    assert!(!ix.remove(DocId(1000)));
    assert!(ix.remove(DocId(1)));
    // Empty again: the dimension is forgotten.
    assert_eq!(ix.dimension(), None);
    ix.upsert(DocId(5), &[1.0, 2.0]).unwrap();
    assert_eq!(ix.dimension(), Some(2));
    // Huge values do not overflow into NaN scores under euclidean/dot.
    let mut big = VectorIndex::new(Metric::Euclidean, 16, 100, 1);
    big.upsert(DocId(0), &[f32::MAX, f32::MAX]).unwrap();
    let r = big
        .search(&[-f32::MAX, -f32::MAX], 1, 0, None, &|_| true)
        .unwrap();
    assert!(!r[0].1.is_nan());
}

fn recall(ix: &VectorIndex, queries: &[Vec<f32>], k: usize, ef: usize) -> f64 {
    let mut found = 0usize;
    for q in queries {
        let truth: BTreeSet<u32> = docs(&ix.search_exact(q, k, &|_| true).unwrap())
            .into_iter()
            .collect();
        let got = ix.search(q, k, ef, None, &|_| true).unwrap();
        found += got.iter().filter(|(d, _)| truth.contains(&d.0)).count();
    }
    found as f64 / (queries.len() * k) as f64
}

#[test]
fn hnsw_recall_on_10k_clustered_vectors() {
    // Queries are held-out points of the same distribution.
    let mut data = clustered(10_200, 64, 50, 0.35, 11);
    let queries = data.split_off(10_000);
    let ix = build(Metric::Cosine, &data);
    assert!(ix.is_graph());
    let r = recall(&ix, &queries, 10, 0);
    assert!(r >= 0.95, "recall@10 at the default ef_search: {r}");
    let l2 = build(Metric::Euclidean, &data[..5_000]);
    let r = recall(&l2, &queries, 10, 0);
    assert!(r >= 0.95, "euclidean recall@10: {r}");
}

#[test]
fn the_half_precision_copy_follows_its_setting() {
    let mut data = clustered(3_100, 64, 30, 0.35, 5);
    let queries = data.split_off(3_000);
    let (n, dim) = (data.len(), 64);
    let mut on = VectorIndex::new(Metric::Cosine, 16, 128, 7).with_half_rows(HalfRows::On);
    for (i, v) in data.iter().enumerate() {
        on.upsert(DocId(i as u32), v).unwrap();
    }
    assert!(on.is_graph());
    let walked_half = on.memory_bytes();
    // The copy walked by the graph is as good a guide as the rows.
    assert!(recall(&on, &queries, 10, 0) >= 0.95);

    // Switched off, the copy goes and the graph stays: two bytes a component
    // less (or up to twice that: the copy grew with the graph, doubling its
    // capacity as vectors do), and the same answers up to the walk's rounding.
    let copy = n * dim * 2;
    on.set_half_rows(HalfRows::Off);
    let without = on.memory_bytes();
    assert!((copy..=2 * copy).contains(&(walked_half - without)));
    assert!(recall(&on, &queries, 10, 0) >= 0.95);
    // Made afresh, the copy holds exactly the vectors there are.
    on.set_half_rows(HalfRows::On);
    assert_eq!(on.memory_bytes() - without, copy);
    // A vector added to the graph is added to the copy.
    on.upsert(DocId(n as u32), &queries[0]).unwrap();
    let grown = on.memory_bytes();
    on.set_half_rows(HalfRows::Off);
    assert!(grown - on.memory_bytes() >= copy + dim * 2);

    // Built with the copy off, the graph never had one: it differs from
    // the one walked in half precision only in its edges.
    let mut off = VectorIndex::new(Metric::Cosine, 16, 128, 7).with_half_rows(HalfRows::Off);
    for (i, v) in data.iter().enumerate() {
        off.upsert(DocId(i as u32), v).unwrap();
    }
    let saved = walked_half - off.memory_bytes();
    assert!((copy * 9 / 10..=copy * 21 / 10).contains(&saved), "{saved}");
    assert!(recall(&off, &queries, 10, 0) >= 0.95);

    // Auto keeps the copy only where the CPU widens it in hardware; other
    // metrics never walk one.
    let mut auto = build(Metric::Cosine, &data);
    let with_auto = auto.memory_bytes();
    auto.set_half_rows(HalfRows::Off);
    let dropped = with_auto - auto.memory_bytes();
    match HalfRows::Auto.keeps_copy() {
        true => assert!((copy..=2 * copy).contains(&dropped), "{dropped}"),
        false => assert_eq!(dropped, 0),
    }
    let mut l2 = VectorIndex::new(Metric::Euclidean, 16, 128, 7).with_half_rows(HalfRows::On);
    for (i, v) in data.iter().enumerate() {
        l2.upsert(DocId(i as u32), v).unwrap();
    }
    let l2_bytes = l2.memory_bytes();
    l2.set_half_rows(HalfRows::Off);
    assert_eq!(l2.memory_bytes(), l2_bytes);
    assert_eq!(HalfRows::parse("off"), Some(HalfRows::Off));
    assert_eq!(HalfRows::parse("sometimes"), None);
}

#[test]
fn filtered_search_returns_k_when_k_accepted_exist() {
    let data = clustered(6_000, 16, 20, 0.3, 5);
    let mut ix = build(Metric::Euclidean, &data);
    assert!(ix.is_graph());
    let q = &data[0];
    for modulus in [2u32, 7, 100, 600, 1_000, 3_000] {
        let accept = |d: DocId| d.0 % modulus == 1;
        let accepted = (0..6_000u32).filter(|d| accept(DocId(*d))).count();
        let r = ix.search(q, 10, 16, None, &accept).unwrap();
        assert_eq!(r.len(), 10.min(accepted), "1 in {modulus}");
        assert!(r.iter().all(|(d, _)| accept(*d)));
        let exact = ix.search_exact(q, 10, &accept).unwrap();
        // Selective filters fall back to exact search, so the answer is exact.
        if accepted <= 60 {
            assert_eq!(r, exact, "1 in {modulus}");
        }
    }
    assert!(ix.search(q, 10, 16, None, &|_| false).unwrap().is_empty());
    // A moderately selective filter keeps recall (the beam is widened by 1/p).
    let accept = |d: DocId| d.0 % 7 == 3;
    let mut hit = 0;
    for q in data.iter().step_by(60) {
        let truth: BTreeSet<DocId> = ix
            .search_exact(q, 10, &accept)
            .unwrap()
            .into_iter()
            .map(|h| h.0)
            .collect();
        let got = ix.search(q, 10, 0, None, &accept).unwrap();
        hit += got.iter().filter(|h| truth.contains(&h.0)).count();
    }
    assert!(hit as f64 / 1_000.0 >= 0.95, "filtered recall {hit}/1000");
    // Tombstones behave like filtered-out documents.
    for d in 0..5_990u32 {
        assert!(ix.remove(DocId(d)));
    }
    let r = ix.search(q, 20, 16, None, &|_| true).unwrap();
    assert_eq!(
        docs(&r).into_iter().collect::<BTreeSet<_>>(),
        (5_990..6_000).collect()
    );
    assert!(!ix.is_graph());
}

#[test]
fn graph_mode_updates_and_deletes() {
    let data = clustered(3_000, 8, 10, 0.2, 3);
    let mut ix = build(Metric::Cosine, &data);
    assert!(ix.is_graph());
    // Move doc 0 next to doc 1234's vector and drop doc 1234.
    ix.upsert(DocId(0), &data[1234]).unwrap();
    ix.remove(DocId(1234));
    let r = ix.search(&data[1234], 1, 0, None, &|_| true).unwrap();
    assert_eq!(docs(&r), [0]);
    assert!((r[0].1 - 1.0).abs() < 1e-5);
    // Churn enough to trigger rebuilds; results only ever name live docs.
    for round in 0..3u32 {
        for d in (0..3_000u32).filter(|d| d % 3 == round) {
            ix.remove(DocId(d));
            ix.upsert(DocId(d + 10_000 * (round + 1)), &data[d as usize])
                .unwrap();
        }
    }
    assert_eq!(ix.len(), 3_000);
    let r = ix.search(&data[5], 50, 0, None, &|_| true).unwrap();
    assert_eq!(r.len(), 50);
    assert!(r.iter().all(|(d, _)| ix.contains(*d) && d.0 >= 10_000));
    assert!(ix.memory_bytes() > 3_000 * 8 * 4);
}

#[test]
fn construction_is_deterministic() {
    let data = clustered(2_500, 8, 10, 0.3, 8);
    let a = build(Metric::Cosine, &data);
    let b = build(Metric::Cosine, &data);
    for q in data.iter().step_by(97) {
        assert_eq!(
            a.search(q, 5, 10, None, &|_| true).unwrap(),
            b.search(q, 5, 10, None, &|_| true).unwrap()
        );
    }
}

#[test]
fn huge_components_never_give_nan() {
    for metric in [Metric::Cosine, Metric::Dot, Metric::Euclidean] {
        let mut ix = VectorIndex::new(metric, 16, 100, 1);
        ix.upsert(DocId(0), &[f32::MAX, -f32::MAX]).unwrap();
        ix.upsert(DocId(1), &[1.0, 1.0]).unwrap();
        let r = ix
            .search(&[f32::MAX, f32::MAX], 2, 0, None, &|_| true)
            .unwrap();
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|(_, s)| !s.is_nan()), "{metric:?}: {r:?}");
    }
}
