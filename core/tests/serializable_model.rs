//! Model-based test of `Serializable` transactions: random interleavings of
//! several transactions (reads by id, a query, writes computed from what
//! they read, commits) run through `Server::handle_request`. Every committed
//! history must be equivalent to a serial one: replaying the committed
//! transactions one after another in commit order on a plain map, each must
//! read exactly what it read in the interleaving, and the final state must
//! be the server's.

mod support;

use proptest::prelude::*;
use serde_json::{json, Value as J};
use std::collections::{BTreeMap, BTreeSet};
use support::Sut;
use tidepool_core::wire::http::Method;

const KEYS: usize = 4;
const TXNS: usize = 4;

/// One step of one transaction.
#[derive(Clone, Debug)]
enum Op {
    Read(usize),
    /// Writes `v` = the sum of what the transaction read plus its number,
    /// and `g` = that value's parity.
    Write(usize),
    /// The ids whose `g` is 1.
    Query,
    Commit,
}

/// What a transaction saw or did, in order.
#[derive(Clone, Debug, PartialEq)]
enum Event {
    Read(String, i64),
    Query(BTreeSet<String>),
    Write(String, i64),
}

fn key(k: usize) -> String {
    format!("k{k}")
}

fn schedule() -> impl Strategy<Value = Vec<(usize, Op)>> {
    let op = prop_oneof![
        4 => (0..KEYS).prop_map(Op::Read),
        3 => (0..KEYS).prop_map(Op::Write),
        2 => Just(Op::Query),
        1 => Just(Op::Commit),
    ];
    prop::collection::vec((0..TXNS, op), 1..40)
}

fn field(record: &J, name: &str) -> i64 {
    let v = &record[name];
    v.as_i64()
        .or_else(|| v["value"].as_i64())
        .unwrap_or_else(|| panic!("`{name}` in {record}"))
}

fn run(steps: &[(usize, Op)]) -> Result<(), TestCaseError> {
    let mut sut = Sut::new();
    for k in 0..KEYS {
        let (status, _) = sut.call(
            Method::Post,
            "/api/insert/c",
            Some(&json!({"id": key(k), "v": 0, "g": 0})),
        );
        prop_assert_eq!(status, 200);
    }
    let mut ids = Vec::new();
    for _ in 0..TXNS {
        let (status, body) = sut.call(
            Method::Post,
            "/api/transactions",
            Some(&json!({"isolation_level": "Serializable"})),
        );
        prop_assert_eq!(status, 200);
        ids.push(body["transaction_id"].as_str().unwrap().to_string());
    }
    let mut alive = [true; TXNS];
    let mut events: Vec<Vec<Event>> = vec![Vec::new(); TXNS];
    let mut committed: Vec<usize> = Vec::new();
    // A steps list that never commits a transaction still commits it at the end.
    let tail = (0..TXNS).map(|t| (t, Op::Commit));
    for (t, op) in steps.iter().cloned().chain(tail) {
        if !alive[t] {
            continue;
        }
        let tx = &ids[t];
        let (status, body) = match &op {
            Op::Read(k) => sut.call(
                Method::Get,
                &format!("/api/find/c/{}?transaction_id={tx}", key(*k)),
                None,
            ),
            Op::Write(k) => {
                let read: i64 = events[t]
                    .iter()
                    .map(|e| match e {
                        Event::Read(_, v) => *v,
                        _ => 0,
                    })
                    .sum();
                let v = read + t as i64 + 1;
                let r = sut.call(
                    Method::Put,
                    &format!("/api/update/c/{}?transaction_id={tx}", key(*k)),
                    Some(&json!({"v": v, "g": v.rem_euclid(2)})),
                );
                if r.0 == 200 {
                    events[t].push(Event::Write(key(*k), v));
                }
                r
            }
            Op::Query => sut.call(
                Method::Post,
                &format!("/api/find/c?transaction_id={tx}"),
                Some(&json!({"filter": {"type": "Condition", "content": {"field": "g", "operator": "Eq", "value": 1}}})),
            ),
            Op::Commit => sut.call(Method::Post, &format!("/api/transactions/{tx}/commit"), None),
        };
        match status {
            200 => match op {
                Op::Read(k) => events[t].push(Event::Read(key(k), field(&body, "v"))),
                Op::Query => {
                    let seen = body
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["id"].as_str().unwrap().to_string())
                        .collect();
                    events[t].push(Event::Query(seen));
                }
                Op::Commit => {
                    alive[t] = false;
                    committed.push(t);
                }
                Op::Write(_) => {}
            },
            // A conflict aborts the transaction: it is simply not committed.
            409 => alive[t] = false,
            other => prop_assert!(false, "{op:?} in T{t}: {other} {body}"),
        }
    }
    // The serial replay, in commit order.
    let mut model: BTreeMap<String, i64> = (0..KEYS).map(|k| (key(k), 0)).collect();
    for &t in &committed {
        let mut mine: BTreeMap<String, i64> = BTreeMap::new();
        let value = |k: &str, mine: &BTreeMap<String, i64>| mine.get(k).or(model.get(k)).copied();
        for e in &events[t] {
            match e {
                Event::Read(k, v) => prop_assert_eq!(
                    value(k, &mine),
                    Some(*v),
                    "T{} read {} out of serial order ({:?})",
                    t,
                    k,
                    committed
                ),
                Event::Query(seen) => {
                    let want: BTreeSet<String> = model
                        .keys()
                        .filter(|k| value(k, &mine).is_some_and(|v| v.rem_euclid(2) == 1))
                        .cloned()
                        .collect();
                    prop_assert_eq!(&want, seen, "T{} query out of serial order", t);
                }
                Event::Write(k, v) => {
                    mine.insert(k.clone(), *v);
                }
            }
        }
        model.extend(mine);
    }
    for (k, v) in &model {
        let (status, body) = sut.call(Method::Get, &format!("/api/find/c/{k}"), None);
        prop_assert_eq!(status, 200);
        prop_assert_eq!(field(&body, "v"), *v, "final {}", k);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn committed_serializable_histories_are_serial(steps in schedule()) {
        run(&steps)?;
    }
}
