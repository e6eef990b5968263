//! Blending a text result list with a vector result list.

use rustc_hash::FxHashMap;

use crate::DocId;

/// Blends text and vector results into one ranking.
///
/// Each list is first scaled into `[0, 1]` so that the weights mean what they say:
/// a list whose scores are all `>= 0` (BM25, euclidean similarity, usually cosine)
/// is divided by its maximum (the best hit gets 1, proportions are kept); a list
/// with negative scores (dot products, opposite cosines) is min-max scaled (the
/// worst gets 0; if all are equal, all get 1). Non-finite scores count as 0.
/// A document missing from a list gets 0 from it, so the blend of a document is
/// `text_weight * text_norm + vector_weight * vector_norm`. Negative or non-finite
/// weights count as 0. Duplicates within a list keep their best score.
///
/// Returns the best `limit` documents by blended score (ties: ascending doc id).
pub fn hybrid(
    text: &[(DocId, f32)],
    vector: &[(DocId, f32)],
    text_weight: f32,
    vector_weight: f32,
    limit: usize,
) -> Vec<(DocId, f32)> {
    blend(text, vector, text_weight, vector_weight, limit, true)
}

/// [`hybrid`] without the scaling: `text_weight * text + vector_weight *
/// vector` of the scores as they are. This is ekoDB's blend (its recorded
/// hybrid scores are exactly that sum), used with its text scores, which
/// are not in `[0, 1]`: the text side dominates.
pub fn hybrid_unscaled(
    text: &[(DocId, f32)],
    vector: &[(DocId, f32)],
    text_weight: f32,
    vector_weight: f32,
    limit: usize,
) -> Vec<(DocId, f32)> {
    blend(text, vector, text_weight, vector_weight, limit, false)
}

fn blend(
    text: &[(DocId, f32)],
    vector: &[(DocId, f32)],
    text_weight: f32,
    vector_weight: f32,
    limit: usize,
    scale: bool,
) -> Vec<(DocId, f32)> {
    let weight = |w: f32| if w.is_finite() && w > 0.0 { w } else { 0.0 };
    let mut blended: FxHashMap<DocId, f32> = FxHashMap::default();
    for (list, w) in [(text, weight(text_weight)), (vector, weight(vector_weight))] {
        let mut best: FxHashMap<DocId, f32> = FxHashMap::default();
        for &(doc, s) in list {
            let s = if s.is_finite() { s } else { 0.0 };
            let e = best.entry(doc).or_insert(s);
            *e = e.max(s);
        }
        let lo = best.values().copied().fold(f32::INFINITY, f32::min);
        let hi = best.values().copied().fold(f32::NEG_INFINITY, f32::max);
        for (doc, s) in best {
            let norm = if !scale {
                s
            } else if lo >= 0.0 {
                if hi > 0.0 {
                    s / hi
                } else {
                    0.0
                }
            } else if hi > lo {
                (s - lo) / (hi - lo)
            } else {
                1.0
            };
            *blended.entry(doc).or_insert(0.0) += w * norm;
        }
    }
    let mut out: Vec<(DocId, f32)> = blended.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[(DocId, f32)]) -> Vec<u32> {
        v.iter().map(|(d, _)| d.0).collect()
    }

    #[test]
    fn weights_decide_between_the_lists() {
        let text = [(DocId(1), 20.0), (DocId(2), 10.0)];
        let vector = [(DocId(2), 0.9), (DocId(3), 0.45)];
        // Text-heavy: 1 = 0.9, 2 = 0.45 + 0.1, 3 = 0.05.
        let r = hybrid(&text, &vector, 0.9, 0.1, 10);
        assert_eq!(ids(&r), [1, 2, 3]);
        assert!((r[0].1 - 0.9).abs() < 1e-6);
        // Vector-heavy: 2 = 0.05 + 0.9, 3 = 0.45, 1 = 0.1.
        let r = hybrid(&text, &vector, 0.1, 0.9, 10);
        assert_eq!(ids(&r), [2, 3, 1]);
        assert_eq!(ids(&hybrid(&text, &vector, 0.5, 0.5, 1)), [2]);
    }

    #[test]
    fn edge_cases() {
        assert!(hybrid(&[], &[], 0.5, 0.5, 10).is_empty());
        // Unscaled: the plain weighted sum (ekoDB: 0.5 x 2.0 + 0.5 x 0.746).
        let r = hybrid_unscaled(&[(DocId(1), 2.0)], &[(DocId(1), 0.746)], 0.5, 0.5, 10);
        assert!((r[0].1 - 1.373).abs() < 1e-6, "{r:?}");
        assert!(hybrid(&[(DocId(1), 1.0)], &[], 0.5, 0.5, 0).is_empty());
        // Negative scores are min-max scaled; equal ones all get 1.
        let r = hybrid(&[], &[(DocId(1), -3.0), (DocId(2), -1.0)], 0.0, 1.0, 10);
        assert_eq!(r, [(DocId(2), 1.0), (DocId(1), 0.0)]);
        let r = hybrid(&[], &[(DocId(1), -2.0), (DocId(2), -2.0)], 0.0, 1.0, 10);
        assert_eq!(r, [(DocId(1), 1.0), (DocId(2), 1.0)]);
        // NaN scores and weights do not poison the result.
        let r = hybrid(
            &[(DocId(1), f32::NAN), (DocId(2), 2.0)],
            &[],
            f32::NAN,
            1.0,
            10,
        );
        assert!(r.iter().all(|(_, s)| s.is_finite()));
        let r = hybrid(&[(DocId(1), 0.0)], &[], 1.0, 1.0, 10);
        assert_eq!(r, [(DocId(1), 0.0)]);
    }
}
