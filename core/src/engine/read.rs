//! Reading records: lookups by id (sliding expiry pushes on), queries with
//! filters, sorting, paging and joins, and distinct values; under the server
//! lock on the engine, or outside it on a `Snapshot` (`Source`).

use super::collection::Records;
use super::filter::Filter;
use super::query::{self, FindQuery};
use super::record::Record;
use super::{not_found, Engine, Found, Row};
use crate::error::{Error, Result};
use crate::time::Timestamp;
use crate::value::{compare_json, json_eq, Json, View};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Where a query reads records from: the engine itself (under the server
/// lock), or a `Snapshot` of some of its collections (outside it). The query
/// code is written once, for both.
pub trait Source {
    /// A collection's records and its primary-key name.
    fn records(&self, collection: &str) -> Option<(&Records, &str)>;
    /// Units of work one query may spend (`--max-query-work`).
    fn query_work(&self) -> u64;
}

impl Source for Engine {
    fn records(&self, collection: &str) -> Option<(&Records, &str)> {
        self.collections
            .get(collection)
            .map(|c| (c.records(), c.schema.primary_key_alias.as_str()))
    }

    fn query_work(&self) -> u64 {
        self.query_work
    }
}

/// The records of some collections as they were at one commit: taken in
/// O(1) under the lock, read outside it while writers go on.
#[derive(Clone, Debug)]
pub struct Snapshot {
    collections: Vec<(String, Records, String)>,
    query_work: u64,
}

impl Source for Snapshot {
    fn records(&self, collection: &str) -> Option<(&Records, &str)> {
        self.collections
            .iter()
            .find(|(name, _, _)| name == collection)
            .map(|(_, r, pk)| (r, pk.as_str()))
    }

    fn query_work(&self) -> u64 {
        self.query_work
    }
}

/// A query's work budget (`--max-query-work`), and its time budget when it
/// runs outside the lock (`expired`, asked every `TIME_CHECK_EVERY` units).
struct Work<'t> {
    spent: Cell<u64>,
    budget: u64,
    expired: &'t dyn Fn() -> bool,
    next_time_check: Cell<u64>,
    out_of_time: Cell<bool>,
}

/// Units of work between two looks at the clock.
const TIME_CHECK_EVERY: u64 = 4096;

impl<'t> Work<'t> {
    fn new(budget: u64, expired: &'t dyn Fn() -> bool) -> Work<'t> {
        Work {
            spent: Cell::new(0),
            budget,
            expired,
            next_time_check: Cell::new(TIME_CHECK_EVERY),
            out_of_time: Cell::new(false),
        }
    }

    /// Spends `units`; false once a budget is exceeded.
    fn charge(&self, units: u64) -> bool {
        let spent = self.spent.get().saturating_add(units);
        self.spent.set(spent);
        if spent >= self.next_time_check.get() {
            self.next_time_check
                .set(spent.saturating_add(TIME_CHECK_EVERY));
            if (self.expired)() {
                self.out_of_time.set(true);
            }
        }
        !self.over()
    }

    fn over(&self) -> bool {
        self.spent.get() > self.budget || self.out_of_time.get()
    }

    fn exceeded(&self) -> Error {
        if self.out_of_time.get() {
            return Error::invalid(
                "this query was stopped when it ran out of time (--max-query-time): narrow the filter, or page through fewer records at a time",
            );
        }
        Error::invalid(format!(
            "this query was stopped after {} units of work (--max-query-work counts records examined times the filter's conditions, sort comparisons and records joined): narrow the filter, or page through fewer records at a time",
            self.budget
        ))
    }
}

/// The clock of a query run under the lock: bounded by its work only.
fn never() -> bool {
    false
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
        self.touch(collection, id, now)?;
        self.found(collection, id)
    }

    /// `find_by_id`, with the primary key's name and the record shared
    /// rather than borrowed: for a reply serialised after the lock is let go.
    pub fn find_shared(
        &mut self,
        collection: &str,
        id: &str,
        now: Timestamp,
    ) -> Result<(String, Arc<Record>)> {
        // One lookup for a live record without sliding expiry; the rest
        // (missing, expired, sliding) take `find_by_id`'s path.
        let plain = self.collections.get(collection).and_then(|c| {
            let r = c.shared(id)?;
            let still = !r.is_expired(now) && r.sliding_micros.is_none_or(|s| s == 0);
            still.then(|| (c.schema.primary_key_alias.clone(), r))
        });
        if let Some(found) = plain {
            return Ok(found);
        }
        self.touch(collection, id, now)?;
        let c = self.collection(collection)?;
        let record = c
            .shared(id)
            .ok_or_else(|| Error::internal("record vanished during the operation"))?;
        Ok((c.schema.primary_key_alias.clone(), record))
    }

    /// A live record, read: sliding expiry pushes its expiry on.
    fn touch(&mut self, collection: &str, id: &str, now: Timestamp) -> Result<()> {
        let record = self.live(collection, id, now)?;
        if let Some(slide) = record.sliding_micros.filter(|s| *s > 0) {
            let mut bumped = record.clone();
            bumped.expires_at = Some(now.saturating_add(Duration::from_micros(slide)));
            bumped.version = self.op_lsn();
            self.store(collection, id, bumped, now)?;
        }
        Ok(())
    }

    /// A snapshot of `collections` (unknown ones are left out: they have no
    /// records) as of the last commit.
    pub fn snapshot<'n>(&self, collections: impl IntoIterator<Item = &'n str>) -> Snapshot {
        let mut taken: Vec<(String, Records, String)> = Vec::new();
        for name in collections {
            if taken.iter().any(|(n, _, _)| n == name) {
                continue;
            }
            if let Some((records, pk)) = self.records(name) {
                taken.push((name.to_string(), records.clone(), pk.to_string()));
            }
        }
        Snapshot {
            collections: taken,
            query_work: self.query_work,
        }
    }

    /// Runs a query (spec 8). An unknown collection has no records.
    pub fn find<'a>(
        &'a self,
        collection: &str,
        q: &'a FindQuery,
        now: Timestamp,
    ) -> Result<Vec<Row<'a>>> {
        find(self, collection, q, now, &never)
    }

    /// Distinct values of a field among matching records, sorted (spec 10).
    pub fn distinct(
        &self,
        collection: &str,
        field: &str,
        filter: &Filter,
        now: Timestamp,
    ) -> Result<Vec<Json>> {
        distinct(self, collection, field, filter, now, &never)
    }

    pub fn count(&self, collection: &str, now: Timestamp) -> usize {
        self.collections
            .get(collection)
            .map_or(0, |c| c.iter_live(now).count())
    }
}

impl Snapshot {
    /// `Engine::find` on the snapshot; `expired` says when its time is up.
    pub fn find<'a>(
        &'a self,
        collection: &str,
        q: &'a FindQuery,
        now: Timestamp,
        expired: &dyn Fn() -> bool,
    ) -> Result<Vec<Row<'a>>> {
        find(self, collection, q, now, expired)
    }

    /// `Engine::distinct` on the snapshot.
    pub fn distinct(
        &self,
        collection: &str,
        field: &str,
        filter: &Filter,
        now: Timestamp,
        expired: &dyn Fn() -> bool,
    ) -> Result<Vec<Json>> {
        distinct(self, collection, field, filter, now, expired)
    }
}

/// Runs a query (spec 8) against `src`. An unknown collection has no records.
fn find<'a, S: Source>(
    src: &'a S,
    collection: &str,
    q: &'a FindQuery,
    now: Timestamp,
    expired: &dyn Fn() -> bool,
) -> Result<Vec<Row<'a>>> {
    let Some((records, pk)) = src.records(collection) else {
        return Ok(Vec::new());
    };
    let filter = q.filter();
    // The query's work is budgeted: every record looked at spends the
    // filter's cost, a sort its comparisons, a join the records it
    // indexes. Past the budget the scan stops and the query is refused.
    let work = Work::new(src.query_work(), expired);
    let cost = filter.cost();
    let matching = records
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
        .filter_map(|name| src.records(name))
        .map(|(r, _)| r.len() as u64 + out.len() as u64)
        .sum();
    if !work.charge(joined) {
        return Err(work.exceeded());
    }
    for join in &q.joins {
        attach_join(src, join, &mut out, now);
    }
    Ok(out)
}

fn attach_join<'a, S: Source>(
    src: &'a S,
    join: &'a query::Join,
    rows: &mut [Row<'a>],
    now: Timestamp,
) {
    // Index each foreign collection once: rendered foreign value → records.
    let mut lookup: Vec<(String, Found<'a>)> = Vec::new();
    for name in &join.collections {
        if let Some((records, pk)) = src.records(name) {
            for (id, record) in records.iter_live(now) {
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

/// Distinct values of a field among matching records of `src`, sorted.
fn distinct<S: Source>(
    src: &S,
    collection: &str,
    field: &str,
    filter: &Filter,
    now: Timestamp,
    expired: &dyn Fn() -> bool,
) -> Result<Vec<Json>> {
    let Some((records, pk)) = src.records(collection) else {
        return Ok(Vec::new());
    };
    // Budgeted like `find`: the scan, then the sort of what it found.
    let (work, cost) = (Work::new(src.query_work(), expired), filter.cost());
    let mut values: Vec<Json> = records
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

    #[test]
    fn a_snapshot_keeps_the_records_of_its_moment() {
        let mut e = Engine::new(1);
        let now = Timestamp::from_secs(1_700_000_000);
        let ids: Vec<String> = (0..10)
            .map(|i| e.insert("c", json!({ "n": i }), now).unwrap())
            .collect();
        let snap = e.snapshot(["c", "c", "missing"]);
        // Writes after the snapshot: an insert, a delete, an update.
        e.insert("c", json!({"n": 10}), now).unwrap();
        e.delete("c", &ids[0], now).unwrap();
        e.update("c", &ids[1], json!({"n": 100}), now).unwrap();
        let all = FindQuery::parse(&json!({})).unwrap();
        let then: Vec<i64> = snap
            .find("c", &all, now, &never)
            .unwrap()
            .iter()
            .map(|r| r.found.record.get("n").unwrap().view().as_f64().unwrap() as i64)
            .collect();
        let mut sorted = then.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(e.find("c", &all, now).unwrap().len(), 10);
        let updated = e.find_by_id("c", &ids[1], now).unwrap();
        assert_eq!(
            updated.record.get("n").unwrap().view().as_f64(),
            Some(100.0)
        );
        assert!(snap.find("missing", &all, now, &never).unwrap().is_empty());
        let distinct = snap.distinct("c", "n", &Filter::All, now, &never).unwrap();
        assert_eq!(distinct.len(), 10);
    }

    #[test]
    fn a_query_out_of_time_stops_with_a_clear_error() {
        let mut e = Engine::new(1);
        let now = Timestamp::from_secs(1_700_000_000);
        for i in 0..5000 {
            e.insert("c", json!({ "n": i }), now).unwrap();
        }
        let snap = e.snapshot(["c"]);
        let all = FindQuery::parse(&json!({})).unwrap();
        let err = snap.find("c", &all, now, &|| true).unwrap_err();
        assert!(err.message.contains("--max-query-time"), "{}", err.message);
        // The clock is asked now and then, not for every record.
        let asked = Cell::new(0);
        let counting = || {
            asked.set(asked.get() + 1);
            false
        };
        assert_eq!(snap.find("c", &all, now, &counting).unwrap().len(), 5000);
        assert!((1..=2).contains(&asked.get()), "{}", asked.get());
    }
}
