//! Reading records: lookups by id (sliding expiry pushes on), queries with
//! filters, sorting, paging and joins, and distinct values.

use super::filter::Filter;
use super::query::{self, FindQuery};
use super::record::Record;
use super::{not_found, Engine, Found, Row};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::value::{compare_json, json_eq, Json, View};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Duration;

/// A query's work budget (`--max-query-work`).
struct Work {
    spent: Cell<u64>,
    budget: u64,
}

impl Work {
    fn new(budget: u64) -> Work {
        Work {
            spent: Cell::new(0),
            budget,
        }
    }

    /// Spends `units`; false once the budget is exceeded.
    fn charge(&self, units: u64) -> bool {
        self.spent.set(self.spent.get().saturating_add(units));
        !self.over()
    }

    fn over(&self) -> bool {
        self.spent.get() > self.budget
    }

    fn exceeded(&self) -> Error {
        Error::invalid(format!(
            "this query was stopped after {} units of work (--max-query-work counts records examined times the filter's conditions, sort comparisons and records joined): narrow the filter, or page through fewer records at a time",
            self.budget
        ))
    }
}

impl Engine {
    pub(super) fn live(&self, collection: &str, id: &str, now: Timestamp) -> Result<&Record> {
        let raw = self.collections.get(collection).and_then(|c| c.raw(id));
        match raw {
            Some(r) if !r.is_expired(now) => Ok(r),
            other => Err(not_found(other, now)),
        }
    }

    pub(super) fn found(&self, collection: &str, id: &str) -> Result<Found<'_>> {
        let c = self.collection(collection)?;
        let (id, record) = c
            .raw_entry(id)
            .ok_or_else(|| Error::internal("record vanished during the operation"))?;
        Ok(Found {
            pk: &c.schema.primary_key_alias,
            id,
            record,
        })
    }

    /// Finds one record. Records with sliding expiry get their expiry pushed on.
    pub fn find_by_id(&mut self, collection: &str, id: &str, now: Timestamp) -> Result<Found<'_>> {
        let record = self.live(collection, id, now)?;
        if let Some(slide) = record.sliding_micros.filter(|s| *s > 0) {
            let mut bumped = record.clone();
            bumped.expires_at = Some(now.saturating_add(Duration::from_micros(slide)));
            bumped.version = self.op_lsn();
            self.store(collection, id, bumped, now)?;
        }
        self.found(collection, id)
    }

    /// Runs a query (spec 8). An unknown collection has no records.
    pub fn find<'a>(
        &'a self,
        collection: &str,
        q: &'a FindQuery,
        now: Timestamp,
    ) -> Result<Vec<Row<'a>>> {
        let Some(c) = self.collections.get(collection) else {
            return Ok(Vec::new());
        };
        let pk = c.schema.primary_key_alias.as_str();
        let filter = q.filter();
        // The query's work is budgeted: every record looked at spends the
        // filter's cost, a sort its comparisons, a join the records it
        // indexes. Past the budget the scan stops and the query is refused.
        let work = Work::new(self.query_work);
        let cost = filter.cost();
        let matching = c
            .iter_live(now)
            .take_while(|_| work.charge(cost))
            .filter(|(id, r)| filter.matches(pk, id, r));
        let limit = q.limit.unwrap_or(usize::MAX);
        let rows: Vec<(&str, &Record)> = if q.sort.is_empty() {
            // Unsorted results come in id order: stop scanning at skip + limit.
            matching.skip(q.skip).take(limit).collect()
        } else {
            let mut hits: Vec<(&str, &Record)> = matching.collect();
            let n = hits.len() as u64;
            let comparisons = n * u64::from(n.max(2).ilog2() + 1) * q.sort.len() as u64;
            if !work.charge(comparisons) {
                return Err(work.exceeded());
            }
            let keep = q.skip.saturating_add(limit).min(hits.len());
            // Ties break by id, so pages of a sorted query never overlap or skip.
            let by = |a: &(&str, &Record), b: &(&str, &Record)| {
                query::compare_records(&q.sort, pk, *a, *b).then_with(|| a.0.cmp(b.0))
            };
            if keep < hits.len() / 2 {
                // Only the first skip + limit matter: select them, then sort those.
                hits.select_nth_unstable_by(keep, by);
                hits.truncate(keep);
            }
            hits.sort_by(by);
            hits.into_iter().skip(q.skip).take(limit).collect()
        };
        if work.over() {
            return Err(work.exceeded());
        }
        let mut out: Vec<Row<'a>> = rows
            .into_iter()
            .map(|(id, record)| Row {
                found: Found { pk, id, record },
                joined: Vec::new(),
            })
            .collect();
        let joined: u64 = q
            .joins
            .iter()
            .flat_map(|j| &j.collections)
            .filter_map(|name| self.collections.get(name.as_str()))
            .map(|c| c.len() as u64 + out.len() as u64)
            .sum();
        if !work.charge(joined) {
            return Err(work.exceeded());
        }
        for join in &q.joins {
            self.attach_join(join, &mut out, now);
        }
        Ok(out)
    }

    fn attach_join<'a>(&'a self, join: &'a query::Join, rows: &mut [Row<'a>], now: Timestamp) {
        // Index each foreign collection once: rendered foreign value → records.
        let mut lookup: Vec<(String, Found<'a>)> = Vec::new();
        for name in &join.collections {
            if let Some(c) = self.collections.get(name.as_str()) {
                let pk = c.schema.primary_key_alias.as_str();
                for (id, record) in c.iter_live(now) {
                    if let Some(v) = query::field_view(pk, &join.foreign_field, id, record) {
                        lookup.push((join_key(&v), Found { pk, id, record }));
                    }
                }
            }
        }
        let mut index: BTreeMap<&str, Vec<Found<'a>>> = BTreeMap::new();
        for (key, found) in &lookup {
            index.entry(key.as_str()).or_default().push(*found);
        }
        for row in rows.iter_mut() {
            let local = query::field_view(
                row.found.pk,
                &join.local_field,
                row.found.id,
                row.found.record,
            );
            let matches = local
                .map(|v| {
                    index
                        .get(join_key(&v).as_str())
                        .cloned()
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            row.joined.push((join.as_field.as_str(), matches));
        }
    }

    /// Distinct values of a field among matching records, sorted (spec 10).
    pub fn distinct(
        &self,
        collection: &str,
        field: &str,
        filter: &Filter,
        now: Timestamp,
    ) -> Result<Vec<Json>> {
        let Some(c) = self.collections.get(collection) else {
            return Ok(Vec::new());
        };
        let pk = c.schema.primary_key_alias.as_str();
        // Budgeted like `find`: the scan, then the sort of what it found.
        let (work, cost) = (Work::new(self.query_work), filter.cost());
        let mut values: Vec<Json> = c
            .iter_live(now)
            .take_while(|_| work.charge(cost))
            .filter(|(id, r)| filter.matches(pk, id, r))
            .filter_map(|(id, r)| query::field_view(pk, field, id, r))
            .filter(|v| !v.is_null())
            .map(|v| v.to_json())
            .collect();
        let n = values.len() as u64;
        if work.over() || !work.charge(n * u64::from(n.max(2).ilog2() + 1)) {
            return Err(work.exceeded());
        }
        values.sort_by(compare_json);
        values.dedup_by(|a, b| json_eq(a, b));
        Ok(values)
    }

    pub fn count(&self, collection: &str, now: Timestamp) -> usize {
        self.collections
            .get(collection)
            .map_or(0, |c| c.iter_live(now).count())
    }
}

/// How a value is matched in a join: numbers by value, everything else by its text.
fn join_key(v: &View<'_>) -> String {
    match v.as_f64() {
        Some(f) => format!("n:{f}"),
        None => format!("s:{}", v.render()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_query_past_its_work_budget_is_stopped_with_a_clear_error() {
        let mut e = Engine::new(1);
        let now = Timestamp::from_secs(1_700_000_000);
        for i in 0..100 {
            e.insert("c", json!({ "n": i, "s": format!("v{i}") }), now)
                .unwrap();
        }
        // 100 records x 5 conditions = 500 checks.
        let q = FindQuery::parse(&json!({"filter": {"type": "Logical", "content": {
            "operator": "Or",
            "expressions": (0..5).map(|i| json!({"type": "Condition", "content": {
                "field": "s", "operator": "Contains", "value": format!("x{i}")}})).collect::<Vec<_>>()
        }}}))
        .unwrap();
        e.set_query_work(499);
        let Err(err) = e.find("c", &q, now) else {
            panic!("over budget, yet answered");
        };
        assert!(err.message.contains("--max-query-work"), "{}", err.message);
        e.set_query_work(500);
        assert!(e.find("c", &q, now).unwrap().is_empty());
        // A limit stops an unsorted scan early, within the budget.
        e.set_query_work(50);
        let first = FindQuery::parse(&json!({"limit": 10})).unwrap();
        assert_eq!(e.find("c", &first, now).unwrap().len(), 10);
        // Sorting 100 records costs 100 x 7 comparisons on top of the scan.
        let sorted =
            FindQuery::parse(&json!({"sort": [{"field": "n", "ascending": false}], "limit": 1}))
                .unwrap();
        e.set_query_work(500);
        assert!(e.find("c", &sorted, now).is_err());
        e.set_query_work(800);
        let top = e.find("c", &sorted, now).unwrap();
        assert_eq!(top.len(), 1);
        // Distinct values: a scan of 100 and a sort of 100 values (700).
        e.set_query_work(799);
        assert!(e.distinct("c", "s", &Filter::All, now).is_err());
        e.set_query_work(800);
        assert_eq!(e.distinct("c", "s", &Filter::All, now).unwrap().len(), 100);
    }
}
