//! Model-based tests: an index after any sequence of upserts and removals answers
//! like an index rebuilt from the surviving documents.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tidepool_search::{
    Analyzer, DocId, Language, Metric, Scoring, TextIndex, TextQuery, VectorIndex,
};

const WORDS: &[&str] = &[
    "rust",
    "Rust",
    "RUST",
    "runs",
    "running",
    "runner",
    "database",
    "databases",
    "engine",
    "engineer",
    "search",
    "searching",
    "index",
    "indexes",
    "vector",
    "victor",
    "café",
    "Café",
];

#[derive(Clone, Debug)]
enum Op {
    Upsert(u32, Vec<(usize, Vec<usize>)>),
    Remove(u32),
}

fn op() -> impl Strategy<Value = Op> {
    let field = (0usize..3, prop::collection::vec(0..WORDS.len(), 0..6));
    prop_oneof![
        3 => (0u32..12, prop::collection::vec(field, 0..3)).prop_map(|(d, f)| Op::Upsert(d, f)),
        1 => (0u32..12).prop_map(Op::Remove),
    ]
}

const FIELDS: [&str; 3] = ["title", "body", "tags"];

fn texts(fields: &[(usize, Vec<usize>)]) -> Vec<(&'static str, String)> {
    fields
        .iter()
        .map(|(f, words)| {
            let text: Vec<&str> = words.iter().map(|&w| WORDS[w]).collect();
            (FIELDS[*f], text.join(" "))
        })
        .collect()
}

fn queries() -> Vec<TextQuery> {
    let mut out = Vec::new();
    for text in [
        "rust",
        "Rust database",
        "enginer",
        "searching indexes",
        "cafe",
        "victor runs",
        "ru data",
        "",
    ] {
        let base = TextQuery::new(text);
        let mut fuzzy = base.clone();
        fuzzy.fuzzy = true;
        let mut exact = base.clone();
        exact.case_sensitive = true;
        let mut boosted = base.clone();
        boosted.boost_exact = true;
        boosted.weights = vec![("title".into(), 2.0)];
        boosted.fields = Some(vec!["title".into(), "body".into()]);
        let mut unstemmed = fuzzy.clone();
        unstemmed.stemming = false;
        unstemmed.limit = 3;
        let mut ekodb = boosted.clone();
        ekodb.scoring = Scoring::EkoDb;
        ekodb.prefix = true;
        ekodb.fuzzy = true;
        let mut prefixed = base.clone();
        prefixed.prefix = true;
        out.extend([base, fuzzy, exact, boosted, unstemmed, ekodb, prefixed]);
    }
    out
}

fn answers(ix: &TextIndex) -> Vec<Vec<(u32, f32, Vec<String>)>> {
    queries()
        .iter()
        .map(|q| {
            let r = ix.search(q, &|d| d.0 != 5).unwrap();
            r.hits
                .into_iter()
                .map(|h| (h.doc.0, h.score, h.matched_fields))
                .collect()
        })
        .collect()
}

fn same(a: &[Vec<(u32, f32, Vec<String>)>], b: &[Vec<(u32, f32, Vec<String>)>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len()
                && x.iter().zip(y).all(|(p, q)| {
                    p.0 == q.0 && (p.1 - q.1).abs() <= 1e-4 * p.1.abs().max(1.0) && p.2 == q.2
                })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn text_index_equals_rebuilt_index(ops in prop::collection::vec(op(), 0..60)) {
        // `slow` sweeps removed versions one group per write, so it is often
        // queried in the middle of a sweep.
        let mut ix = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
        let mut slow = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
        slow.sweep_one_group_per_write();
        let mut model: BTreeMap<u32, Vec<(&'static str, String)>> = BTreeMap::new();
        for op in &ops {
            match op {
                Op::Upsert(d, fields) => {
                    let t = texts(fields);
                    let pairs: Vec<(&str, &str)> = t.iter().map(|(f, s)| (*f, s.as_str())).collect();
                    ix.upsert(DocId(*d), &pairs);
                    slow.upsert(DocId(*d), &pairs);
                    if t.is_empty() { model.remove(d); } else { model.insert(*d, t); }
                }
                Op::Remove(d) => {
                    let present = model.remove(d).is_some();
                    prop_assert_eq!(ix.remove(DocId(*d)), present);
                    prop_assert_eq!(slow.remove(DocId(*d)), present);
                }
            }
        }
        // Rebuilt in one bulk load (as a first index is built), registering the
        // field names in the same order, so score sums add in the same order.
        let mut fresh = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
        fresh.bulk(|fresh| {
            for (d, t) in &model {
                let pairs: Vec<(&str, &str)> = t.iter().map(|(f, s)| (*f, s.as_str())).collect();
                fresh.upsert(DocId(*d), &pairs);
            }
        });
        prop_assert_eq!(ix.len(), model.len());
        prop_assert_eq!(slow.len(), model.len());
        let (a, b, c) = (answers(&ix), answers(&fresh), answers(&slow));
        prop_assert!(same(&a, &b), "incremental {:?}\nrebuilt {:?}", a, b);
        prop_assert!(same(&c, &b), "mid-sweep {:?}\nrebuilt {:?}", c, b);
    }

    #[test]
    fn vector_index_answers_only_live_docs(
        ops in prop::collection::vec((0u32..40, prop::option::of(prop::collection::vec(-4i8..4, 3))), 0..150),
        flat_max in 4usize..30,
    ) {
        let mut ix = VectorIndex::new(Metric::Euclidean, 4, 8, 3).with_flat_max(flat_max);
        let mut model: BTreeMap<u32, Vec<f32>> = BTreeMap::new();
        for (d, v) in &ops {
            match v {
                Some(v) => {
                    let v: Vec<f32> = v.iter().map(|&x| f32::from(x)).collect();
                    ix.upsert(DocId(*d), &v).unwrap();
                    model.insert(*d, v);
                }
                None => {
                    prop_assert_eq!(ix.remove(DocId(*d)), model.remove(d).is_some());
                }
            }
        }
        prop_assert_eq!(ix.len(), model.len());
        let q = [0.5f32, -0.5, 1.0];
        // Asking for everything returns every live doc exactly once, with exact scores.
        let all = ix.search(&q, usize::MAX, 4, None, &|_| true).unwrap();
        let got: BTreeMap<u32, f32> = all.iter().map(|(d, s)| (d.0, *s)).collect();
        prop_assert_eq!(got.len(), all.len());
        prop_assert_eq!(got.keys().copied().collect::<Vec<_>>(), model.keys().copied().collect::<Vec<_>>());
        for (d, s) in &got {
            let v = &model[d];
            let dist = v.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
            prop_assert!((s - 1.0 / (1.0 + dist)).abs() < 1e-5);
        }
        // Small k with a filter: results are live, accepted, and as many as possible.
        let accept = |d: DocId| d.0 % 3 != 2;
        let r = ix.search(&q, 5, 4, None, &accept).unwrap();
        let accepted = model.keys().filter(|d| accept(DocId(**d))).count();
        prop_assert_eq!(r.len(), accepted.min(5));
        prop_assert!(r.iter().all(|(d, _)| model.contains_key(&d.0) && accept(*d)));
        prop_assert!(r.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}
