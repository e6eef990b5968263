//! Search over one collection: text (BM25), vector (exact or HNSW) and hybrid
//! ranking, pre-filtered by the query's filter, with matched fields per hit.

use super::collection::Collection;
use super::filter::Filter;
use super::search;
use super::{Engine, Found, SearchHit};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use std::cell::Cell;
use std::collections::HashMap;

impl Engine {
    /// The indexes a search of `collection` would build first, as a plan to
    /// carry out outside the lock; `None` when it has them all.
    pub fn index_plan(
        &self,
        collection: &str,
        req: &search::SearchRequest,
    ) -> Option<search::IndexPlan> {
        let c = self.collections.get(collection)?;
        let state = c.search_state();
        if c.is_empty() {
            return None;
        }
        let text = (!req.text.query.trim().is_empty() && state.text().is_none())
            .then(|| search::declared(&c.schema).0.flatten());
        let vector = (req.vector.is_some()
            && state.vector(&req.vector_field, req.metric).is_none())
        .then(|| {
            let (m, ef) = c.vector_params(&req.vector_field);
            (req.vector_field.clone(), req.metric, m, ef)
        });
        (text.is_some() || vector.is_some()).then(|| search::IndexPlan {
            collection: collection.to_string(),
            records: c.records().clone(),
            text,
            vector,
            docs: state.docs_for_plan(),
            half_rows: state.half_rows(),
        })
    }

    /// Installs indexes built from a plan (see `Collection::install_search`).
    pub fn install_index(&mut self, build: search::IndexBuild) {
        if let Some(c) = self.collections.get_mut(build.collection.as_str()) {
            c.install_search(&build.records, build.fresh, build.state);
        }
    }

    /// Text, vector or hybrid search (spec 11, D1). `filter` pre-filters; an
    /// unknown collection has no results. Returns the hits (best first) and the
    /// number of matches before the limit.
    pub fn search<'a>(
        &'a mut self,
        collection: &str,
        req: &search::SearchRequest,
        filter: &Filter,
        now: Timestamp,
    ) -> Result<(Vec<SearchHit<'a>>, usize)> {
        let text_mode = !req.text.query.trim().is_empty();
        let vector_mode = req.vector.is_some();
        let Some(c) = self.collections.get_mut(collection) else {
            return Ok((Vec::new(), 0));
        };
        if text_mode {
            let declared = search::declared(&c.schema).0.flatten();
            c.text_index(declared.as_deref())?;
        }
        if vector_mode {
            c.vector_index(&req.vector_field, req.metric);
        }
        let c: &'a Collection = c;
        let pk = c.schema.primary_key_alias.as_str();
        let state = c.search_state();
        // With no filter and no record past its expiry, every indexed doc is
        // acceptable: skip the per-candidate record lookup (a text query with
        // common words visits tens of thousands of candidates).
        let unfiltered = matches!(filter, Filter::All) && c.next_expiry().is_none_or(|t| t > now);
        // Each candidate the filter looks at spends its cost from the query
        // budget (`--max-query-work`), as a find's scan does; past it, no
        // more candidates are taken and the search is refused.
        let (spent, budget, cost) = (Cell::new(0u64), self.query_work, filter.cost());
        let accept = |doc: tidepool_search::DocId| {
            if unfiltered {
                return state.id(doc).is_some();
            }
            spent.set(spent.get().saturating_add(cost));
            if spent.get() > budget {
                return false;
            }
            state
                .id(doc)
                .and_then(|id| c.raw_entry(id))
                .is_some_and(|(id, r)| !r.is_expired(now) && filter.matches(pk, id, r))
        };
        let hybrid = text_mode && vector_mode;
        // A hybrid blend needs candidates from both lists beyond the final limit.
        let candidates = if hybrid {
            req.limit
                .max(req.vector_k.unwrap_or(0))
                .saturating_mul(3)
                .max(50)
        } else {
            req.limit
        };
        let mut matched: HashMap<u32, Vec<String>> = HashMap::new();
        let mut text_hits: Vec<(tidepool_search::DocId, f32)> = Vec::new();
        let mut total = 0;
        if text_mode {
            if let Some(index) = state.text() {
                let mut q = req.text.clone();
                q.limit = candidates;
                let found = index
                    .search(&q, &accept)
                    .map_err(|e| Error::invalid(e.to_string()))?;
                total = found.total;
                for h in found.hits {
                    text_hits.push((h.doc, h.score));
                    matched.insert(h.doc.0, h.matched_fields);
                }
            }
        }
        let mut vector_hits = Vec::new();
        if let (Some(v), Some(index)) = (&req.vector, state.vector(&req.vector_field, req.metric)) {
            let k = if hybrid {
                candidates
            } else {
                req.vector_k.unwrap_or(req.limit)
            };
            vector_hits = index
                .search(v, k, req.ef_search, req.threshold, &accept)
                .map_err(|e| {
                    Error::invalid(format!("vector search on `{}`: {e}", req.vector_field))
                })?;
        }
        if spent.get() > budget {
            return Err(Error::invalid(format!(
                "this search was stopped after {budget} units of work (--max-query-work counts the candidates its filter examined times the filter's conditions): narrow the filter or the query"
            )));
        }
        let ranked: Vec<(tidepool_search::DocId, f32)> = match (text_mode, vector_mode) {
            (true, true) => {
                let mut union: Vec<u32> = text_hits
                    .iter()
                    .chain(&vector_hits)
                    .map(|(d, _)| d.0)
                    .collect();
                union.sort_unstable();
                union.dedup();
                total = union.len();
                let blend = match req.text.scoring {
                    tidepool_search::Scoring::EkoDb => tidepool_search::hybrid_unscaled,
                    tidepool_search::Scoring::Bm25 => tidepool_search::hybrid,
                };
                blend(
                    &text_hits,
                    &vector_hits,
                    req.text_weight,
                    req.vector_weight,
                    req.limit,
                )
            }
            (true, false) => text_hits,
            (false, true) => {
                total = vector_hits.len();
                vector_hits.truncate(req.limit);
                vector_hits
            }
            (false, false) => Vec::new(),
        };
        let hits = ranked
            .into_iter()
            .filter_map(|(doc, score)| {
                let (id, record) = c.raw_entry(state.id(doc)?)?;
                Some(SearchHit {
                    found: Found { pk, id, record },
                    score,
                    matched_fields: matched.remove(&doc.0).unwrap_or_default(),
                })
            })
            .collect();
        Ok((hits, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::rest::search::parse;
    use serde_json::json;

    fn ids_found(e: &mut Engine, req: &search::SearchRequest, now: Timestamp) -> Vec<String> {
        let (hits, _) = e.search("c", req, &Filter::All, now).unwrap();
        let mut ids: Vec<String> = hits.iter().map(|h| h.found.id.to_string()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn an_index_built_outside_the_lock_catches_up_with_the_writes_made_meanwhile() {
        let mut e = Engine::new(1);
        let now = Timestamp::from_secs(1_700_000_000);
        let keep = e.insert("c", json!({"t": "otter river"}), now).unwrap();
        let gone = e.insert("c", json!({"t": "otter lake"}), now).unwrap();
        let changed = e.insert("c", json!({"t": "otter pond"}), now).unwrap();
        let (req, _, _) = parse(&json!({"query": "otter", "limit": 10})).unwrap();
        let plan = e.index_plan("c", &req).expect("a first index to build");
        // While it is built: a delete, an update that drops the word, an insert.
        e.delete("c", &gone, now).unwrap();
        e.update("c", &changed, json!({"t": "heron pond"}), now)
            .unwrap();
        let new = e.insert("c", json!({"t": "otter sea"}), now).unwrap();
        let build = plan.build().unwrap();
        e.install_index(build);
        assert!(e.index_plan("c", &req).is_none(), "installed");
        let mut want = vec![keep, new];
        want.sort();
        assert_eq!(ids_found(&mut e, &req, now), want);
        let (heron, _, _) = parse(&json!({"query": "heron"})).unwrap();
        assert_eq!(ids_found(&mut e, &heron, now), vec![changed]);
        // Kept up to date from then on, as an index built in place is.
        let later = e.insert("c", json!({"t": "otter bay"}), now).unwrap();
        assert!(ids_found(&mut e, &req, now).contains(&later));
    }

    #[test]
    fn a_second_build_does_not_replace_an_installed_index() {
        let mut e = Engine::new(1);
        let now = Timestamp::from_secs(1_700_000_000);
        e.insert("c", json!({"t": "otter"}), now).unwrap();
        let (req, _, _) = parse(&json!({"query": "otter"})).unwrap();
        let first = e.index_plan("c", &req).unwrap().build().unwrap();
        let second = e.index_plan("c", &req).unwrap();
        e.install_index(first);
        let extra = e.insert("c", json!({"t": "otter two"}), now).unwrap();
        // The late build covers a snapshot without `extra`: it must not win.
        e.install_index(second.build().unwrap());
        assert!(ids_found(&mut e, &req, now).contains(&extra));
    }

    #[test]
    fn a_filtered_search_spends_the_query_budget() {
        let mut e = Engine::new(1);
        let now = Timestamp::from_secs(1_700_000_000);
        for i in 0..100 {
            e.insert("c", json!({"t": "otter", "n": i}), now).unwrap();
        }
        let (req, filter, _) = parse(
            &json!({"query": "otter", "limit": 5, "filter": {"type": "Logical", "content": {
                "operator": "Or",
                "expressions": (0..5).map(|i| json!({"type": "Condition", "content": {
                    "field": "n", "operator": "Eq", "value": 1000 + i}})).collect::<Vec<_>>()
            }}}),
        )
        .unwrap();
        // 100 candidates x 5 conditions.
        e.set_query_work(499);
        let err = e.search("c", &req, &filter, now).map(|_| ()).unwrap_err();
        assert!(err.message.contains("--max-query-work"), "{}", err.message);
        e.set_query_work(500);
        assert_eq!(e.search("c", &req, &filter, now).unwrap().1, 0);
    }

    #[test]
    fn a_further_index_is_built_outside_the_lock_with_the_same_document_numbers() {
        let mut e = Engine::new(1);
        let now = Timestamp::from_secs(1_700_000_000);
        let put = |e: &mut Engine, x: f64| {
            e.insert("c", json!({"t": "otter", "v": [x, 1.0]}), now)
                .unwrap()
        };
        let a = put(&mut e, 1.0);
        let gone = put(&mut e, 5.0);
        let moved = put(&mut e, 9.0);
        // A text index first: document numbers exist from here on.
        let (text, _, _) = parse(&json!({"query": "otter"})).unwrap();
        let first = e.index_plan("c", &text).unwrap().build().unwrap();
        e.install_index(first);
        let near = |x: f64| {
            parse(&json!({"vector": [x, 1.0], "vector_field": "v", "vector_metric": "euclidean", "limit": 1}))
                .unwrap()
                .0
        };
        let plan = e
            .index_plan("c", &near(1.0))
            .expect("a vector index to build");
        assert!(e.index_plan("c", &text).is_none());
        // Meanwhile: a delete (its number is freed and taken by the next
        // insert), a changed vector.
        e.delete("c", &gone, now).unwrap();
        let reused = put(&mut e, 50.0);
        e.update("c", &moved, json!({"v": [100.0, 1.0]}), now)
            .unwrap();
        e.install_index(plan.build().unwrap());
        assert!(e.index_plan("c", &near(1.0)).is_none(), "installed");
        let nearest = |e: &mut Engine, x: f64| ids_found(e, &near(x), now);
        assert_eq!(nearest(&mut e, 1.0), vec![a.clone()]);
        assert_eq!(
            nearest(&mut e, 5.1),
            vec![a.clone()],
            "the deleted record is gone"
        );
        assert_eq!(nearest(&mut e, 49.0), vec![reused]);
        assert_eq!(nearest(&mut e, 99.0), vec![moved]);
        // The text index was left as it was, and both follow writes.
        assert_eq!(ids_found(&mut e, &text, now).len(), 3);
    }
}
