//! Model-based test: random sequences of puts, deletes, syncs, snapshots, history
//! reads, crashes and reopens, checked against a `BTreeMap` model.
//!
//! The test defines a tiny payload format for its batches (put k v / delete k) and for
//! its snapshot chunks; the store itself never looks inside them.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use tidepool_storage::sim::{CrashMode, SimBackend, SimRng};
use tidepool_storage::{History, Lsn, Recovery, Store, StoreOptions};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug)]
enum Op {
    /// One batch of puts (`Some`) and deletes (`None`).
    Batch(Vec<(u8, Option<Vec<u8>>)>),
    Sync,
    /// Snapshot of the state at the last LSN; `fuzzy` appends more batches while the
    /// snapshot is being written.
    Snapshot {
        fuzzy: bool,
    },
    History {
        back: u8,
        max_bytes: u16,
    },
    Crash {
        seed: u64,
        mode: u8,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let item = (
        0u8..10,
        prop::option::weighted(0.8, prop::collection::vec(any::<u8>(), 0..60)),
    );
    prop_oneof![
        8 => prop::collection::vec(item, 1..4).prop_map(Op::Batch),
        3 => Just(Op::Sync),
        1 => any::<bool>().prop_map(|fuzzy| Op::Snapshot { fuzzy }),
        2 => (any::<u8>(), 1u16..600).prop_map(|(back, max_bytes)| Op::History { back, max_bytes }),
        2 => (any::<u64>(), 0u8..3).prop_map(|(seed, mode)| Op::Crash { seed, mode }),
        1 => Just(Op::Reopen),
    ]
}

fn encode_batch(items: &[(u8, Option<Vec<u8>>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in items {
        match v {
            Some(v) => {
                out.extend_from_slice(&[0, *k]);
                out.extend_from_slice(&(v.len() as u16).to_le_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&[1, *k]),
        }
    }
    out
}

fn apply_batch(map: &mut Map, mut b: &[u8]) {
    while let [tag, k, rest @ ..] = b {
        if *tag == 0 {
            let n = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            map.insert(vec![*k], rest[2..2 + n].to_vec());
            b = &rest[2 + n..];
        } else {
            map.remove(&vec![*k]);
            b = rest;
        }
    }
}

/// Snapshot chunks: up to three entries each, `klen u8, key, vlen u16, value`.
fn encode_chunks(map: &Map) -> Vec<Vec<u8>> {
    let entries: Vec<_> = map.iter().collect();
    entries
        .chunks(3)
        .map(|c| {
            let mut out = Vec::new();
            for (k, v) in c {
                out.push(k.len() as u8);
                out.extend_from_slice(k);
                out.extend_from_slice(&(v.len() as u16).to_le_bytes());
                out.extend_from_slice(v);
            }
            out
        })
        .collect()
}

fn load(rec: &Recovery) -> Map {
    let mut map = Map::new();
    for mut c in rec.snapshot_chunks() {
        while let [kl, rest @ ..] = c {
            let kl = *kl as usize;
            let key = rest[..kl].to_vec();
            let n = u16::from_le_bytes([rest[kl], rest[kl + 1]]) as usize;
            map.insert(key, rest[kl + 2..kl + 2 + n].to_vec());
            c = &rest[kl + 2 + n..];
        }
    }
    for (_, b) in rec.batches() {
        apply_batch(&mut map, b);
    }
    map
}

struct World {
    sim: SimBackend,
    opts: StoreOptions,
    store: Option<Store>,
    /// Every batch on the log (acknowledged or not), in order.
    log: Vec<(u64, Vec<u8>)>,
    /// State after each entry of `log` is applied; `states[0]` is before the first.
    states: Vec<Map>,
    synced: u64,
}

impl World {
    fn store(&mut self) -> &mut Store {
        self.store.as_mut().expect("store open")
    }

    fn append(&mut self, items: &[(u8, Option<Vec<u8>>)]) {
        let lsn = self.store().last_lsn().0 + 1;
        let payload = encode_batch(items);
        self.store().append(Lsn(lsn), &payload).unwrap();
        let mut next = self.states.last().cloned().unwrap_or_default();
        apply_batch(&mut next, &payload);
        self.log.push((lsn, payload));
        self.states.push(next);
    }

    /// Index in `log` of the batch with this LSN (+1), i.e. how many batches precede it.
    fn count_upto(&self, lsn: u64) -> usize {
        self.log.partition_point(|(l, _)| *l <= lsn)
    }

    fn reopen_on(&mut self, sim: SimBackend, what: &str) {
        self.store = None;
        self.sim = sim;
        let (store, rec) = open(&self.sim, &self.opts).unwrap_or_else(|e| panic!("{what}: {e}"));
        let last = rec.last_lsn().0;
        assert!(
            last >= self.synced,
            "{what}: lost acknowledged batches ({last} < {})",
            self.synced
        );
        let n = self.count_upto(last);
        assert!(
            n == 0 && last == 0 || self.log[n - 1].0 == last,
            "{what}: last lsn {last} is not a batch boundary"
        );
        assert_eq!(
            load(&rec),
            self.states[n],
            "{what}: recovered state differs ({})",
            rec.report()
        );
        self.log.truncate(n);
        self.states.truncate(n + 1);
        self.synced = last;
        self.store = Some(store);
    }

    fn check_history(&mut self, back: u8, max_bytes: u16) {
        let reader = self.store().reader();
        let synced = reader.synced_lsn().0;
        assert_eq!(synced, self.synced);
        let after = synced.saturating_sub(u64::from(back));
        let want: Vec<_> = self
            .log
            .iter()
            .filter(|(l, _)| *l > after && *l <= synced)
            .map(|(l, p)| (Lsn(*l), p.clone()))
            .collect();
        let mut got = Vec::new();
        let mut from = after;
        loop {
            match reader.read_after(Lsn(from), max_bytes as usize).unwrap() {
                History::Truncated { oldest_available } => {
                    assert!(
                        from < oldest_available.0,
                        "truncated but {from} >= {oldest_available}"
                    );
                    assert!(
                        oldest_available <= self.store().replay_from(),
                        "history lost before the snapshot"
                    );
                    return;
                }
                History::Batches { batches, more } => {
                    if let Some((l, _)) = batches.last() {
                        from = l.0;
                    }
                    got.extend(batches);
                    if !more {
                        break;
                    }
                }
            }
        }
        assert_eq!(got, want, "history after {after}");
    }
}

fn run(ops: Vec<Op>, segment_bytes: u64, retention: u64) {
    let sim = SimBackend::new();
    let mut opts = opts(segment_bytes);
    opts.history_retention_bytes = retention;
    let (store, _) = open(&sim, &opts).unwrap();
    let mut w = World {
        sim,
        opts,
        store: Some(store),
        log: Vec::new(),
        states: vec![Map::new()],
        synced: 0,
    };
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Batch(items) => w.append(&items),
            Op::Sync => {
                w.store().sync().unwrap();
                w.synced = w.store().last_lsn().0;
            }
            Op::Snapshot { fuzzy } => {
                // The caller's side of the contract: everything up to replay_from is
                // durable before the snapshot is installed.
                w.store().sync().unwrap();
                w.synced = w.store().last_lsn().0;
                let at = w.store().last_lsn();
                let state = w.states.last().cloned().unwrap_or_default();
                let mut writer = w.store().begin_snapshot(at).unwrap();
                if fuzzy {
                    w.append(&[(1, Some(b"during".to_vec())), (2, None)]);
                }
                let chunks = encode_chunks(&state);
                // Written on another thread, as the engine would.
                let done = std::thread::spawn(move || {
                    for c in chunks {
                        writer.write_chunk(&c).unwrap();
                    }
                    writer.finish().unwrap()
                })
                .join()
                .unwrap();
                w.store().install_snapshot(done).unwrap();
                w.synced = w.store().last_lsn().0;
            }
            Op::History { back, max_bytes } => w.check_history(back, max_bytes),
            Op::Crash { seed, mode } => {
                let mode = [
                    CrashMode::DropUnsynced,
                    CrashMode::TornPrefix,
                    CrashMode::Reorder,
                ][mode as usize];
                let img = w.sim.crash(&mut SimRng::new(seed), mode);
                w.reopen_on(img, &format!("op {i}: crash {mode:?}"));
            }
            Op::Reopen => {
                w.store = None; // a clean drop hands buffered frames to the OS
                let sim = w.sim.clone();
                w.synced = w.log.last().map_or(0, |b| b.0).max(w.synced);
                w.reopen_on(sim, &format!("op {i}: reopen"));
            }
        }
    }
    let img = w.sim.crash(&mut SimRng::new(0), CrashMode::DropUnsynced);
    w.reopen_on(img, "final crash");
    w.check_history(255, 10_000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..120), seg in prop_oneof![Just(256u64), Just(600), Just(1 << 20)], retention in prop_oneof![Just(0u64), Just(700)]) {
        run(ops, seg, retention);
    }
}
