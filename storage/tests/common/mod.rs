//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tidepool_storage::sim::{SimBackend, SimRng};
use tidepool_storage::{Lsn, Recovery, Store, StoreError, StoreOptions};

pub const DIR: &str = "/db";

pub fn opts(segment_bytes: u64) -> StoreOptions {
    let mut o = StoreOptions::new(DIR);
    o.segment_bytes = segment_bytes;
    o.history_retention_bytes = 0;
    o
}

pub fn open(sim: &SimBackend, o: &StoreOptions) -> Result<(Store, Recovery), StoreError> {
    Store::open_with_backend(o.clone(), Arc::new(sim.clone()))
}

pub fn batches(r: &Recovery) -> Vec<(u64, Vec<u8>)> {
    r.batches().map(|(l, p)| (l.0, p.to_vec())).collect()
}

/// A payload whose bytes are a function of `lsn` and a random length.
pub fn payload(lsn: u64, rng: &mut SimRng, max: u64) -> Vec<u8> {
    let len = rng.below(max + 1) as usize;
    (0..len)
        .map(|i| (lsn as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

pub fn seg_path(id: u64) -> PathBuf {
    Path::new(DIR).join(format!("segment-{id:020}.log"))
}

pub fn names(sim: &SimBackend) -> Vec<String> {
    sim.list_names(Path::new(DIR))
}

pub fn segment_names(sim: &SimBackend) -> Vec<String> {
    names(sim)
        .into_iter()
        .filter(|n| n.starts_with("segment-") && n.ends_with(".log"))
        .collect()
}

/// Appends `n` batches of `len` bytes after `store.last_lsn()`, syncing after each.
pub fn fill(store: &mut Store, n: u64, len: usize, sync_each: bool) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let lsn = store.last_lsn().0 + 1;
        let p: Vec<u8> = (0..len).map(|i| (lsn as u8) ^ (i as u8)).collect();
        store.append(Lsn(lsn), &p).unwrap();
        if sync_each {
            store.sync().unwrap();
        }
        out.push((lsn, p));
    }
    out
}
