//! Fuzzer-built JSON (non-JSON inputs are skipped) through `Filter::parse`, the
//! filter language every query, subscription and KV find accepts. Parsing never
//! panics; a parsed filter evaluates without panicking against a fixed record that
//! holds one field of every stored type; `Not` is the complement of its operand and
//! so are the operator pairs Eq/Ne and In/NotIn, for every condition in the tree.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value as J};
use tidepool_core::engine::filter::{Filter, Op};
use tidepool_core::engine::record::{Interner, Record};
use tidepool_core::value::value_from_input;

fn record() -> &'static Record {
    static RECORD: OnceLock<Record> = OnceLock::new();
    RECORD.get_or_init(|| {
        let doc = json!({
            "name": "Alice",
            "age": 30,
            "big": u64::MAX,
            "neg": -7,
            "price": 9.5,
            "active": true,
            "nothing": null,
            "when": "2026-01-02T00:00:00Z",
            "tags": ["x", "y", 3, null, {"k": 1}],
            "meta": {"owner": {"n": 1, "s": "a.b"}, "list": [1, 2, 3]},
            "embedding": {"type": "Vector", "value": [0.5, -1.0, 2.0]},
            "set": {"type": "Set", "value": ["a", "b", "a"]},
            "ttl_like": {"type": "Duration", "value": "1h30m"},
            "blob": {"type": "Binary", "value": "AQID"},
            "bytes": {"type": "Bytes", "value": [1, 2, 3]},
            "uuid": {"type": "UUID", "value": "0195f2a0-0000-7000-8000-000000000000"},
            "dec": {"type": "Decimal", "value": "12.50"},
            "num": {"type": "Number", "value": 4.25},
            "a.b": "dotted",
        });
        let mut interner = Interner::default();
        let mut r = Record::new();
        for (k, v) in doc.as_object().expect("an object") {
            r.set(interner.intern(k), value_from_input(v.clone()).expect("typed"));
        }
        r
    })
}

fn eval(f: &Filter, pk: &str) -> bool {
    f.matches(pk, "r1", record())
}

/// Checks the complement laws at every node of the tree.
fn check(f: &Filter, pk: &str) {
    let got = eval(f, pk);
    assert_eq!(
        eval(&Filter::Not(Box::new(f.clone())), pk),
        !got,
        "Not is not the complement of {f:?}"
    );
    match f {
        Filter::All => assert!(got),
        Filter::Cond(c) => {
            let flipped = match c.op {
                Op::Eq => Some(Op::Ne),
                Op::Ne => Some(Op::Eq),
                Op::In => Some(Op::NotIn),
                Op::NotIn => Some(Op::In),
                _ => None,
            };
            if let Some(op) = flipped {
                let mut g = c.clone();
                g.op = op;
                assert_eq!(
                    eval(&Filter::Cond(g), pk),
                    !got,
                    "{:?} and {op:?} agree on {c:?}",
                    c.op
                );
            }
        }
        Filter::And(fs) => {
            assert_eq!(got, fs.iter().all(|g| eval(g, pk)));
            fs.iter().for_each(|g| check(g, pk));
        }
        Filter::Or(fs) => {
            assert_eq!(got, fs.iter().any(|g| eval(g, pk)));
            fs.iter().for_each(|g| check(g, pk));
        }
        Filter::Not(g) => check(g, pk),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<J>(data) else {
        return;
    };
    let Ok(f) = Filter::parse(Some(&v)) else {
        return;
    };
    // The record's key is `id` for most collections; `name` shadows a field.
    for pk in ["id", "name"] {
        check(&f, pk);
    }
});
