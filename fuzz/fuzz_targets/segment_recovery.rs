//! Arbitrary bytes as segment files: open + recover must not panic, salvage must
//! always succeed, and every batch handed back must be a checksummed frame that is
//! really in the input, in increasing LSN order. Recovery must be idempotent.
//!
//! Input: one mode byte, then the body.
//! * bit 0: prepend a valid header for segment 1 (so the fuzzer reaches the frames);
//! * bit 1: split the file in two segments at an aligned offset chosen by the high bits.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tidepool_storage::frame::{self, SegmentHeader, ALIGN};
use tidepool_storage::sim::SimBackend;
use tidepool_storage::{Store, StoreError, StoreOptions};

const DIR: &str = "/fuzz";

fn seg(id: u64) -> std::path::PathBuf {
    Path::new(DIR).join(format!("segment-{id:020}.log"))
}

/// Every (lsn, payload) of a fully checksummed frame at a frame-aligned offset.
fn valid_frames(file: &[u8], out: &mut Vec<(u64, Vec<u8>)>) {
    let mut p = 0;
    while p < file.len() {
        if let Ok(Some((f, _))) = frame::decode(&file[p..]) {
            out.push((f.lsn, f.payload.to_vec()));
        }
        p += ALIGN;
    }
}

fn plant(files: &[Vec<u8>]) -> SimBackend {
    let sim = SimBackend::new();
    for (i, f) in files.iter().enumerate() {
        sim.write_file(&seg(i as u64 + 1), f);
    }
    sim
}

fn recover(sim: &SimBackend, salvage: bool) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut opts = StoreOptions::new(DIR);
    opts.salvage = salvage;
    let (_store, rec) = Store::open_with_backend(opts, Arc::new(sim.clone()))?;
    let got: Vec<_> = rec.batches().map(|(l, p)| (l.0, p.to_vec())).collect();
    assert_eq!(rec.last_lsn().0, got.last().map_or(0, |b| b.0));
    assert_eq!(rec.snapshot_chunks().count(), 0);
    let _ = rec.report().to_string();
    Ok(got)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let mut file = Vec::new();
    if mode & 1 == 1 {
        let h = SegmentHeader {
            segment_id: 1,
            prev_lsn: 0,
        };
        file.extend_from_slice(&h.encode());
    }
    file.extend_from_slice(body);
    let files = if mode & 2 == 2 && !file.is_empty() {
        let at = (usize::from(mode >> 2) * ALIGN * 5).min(file.len());
        vec![file[..at].to_vec(), file[at..].to_vec()]
    } else {
        vec![file]
    };
    let mut valid = Vec::new();
    for f in &files {
        valid_frames(f, &mut valid);
    }

    for salvage in [false, true] {
        let sim = plant(&files);
        match recover(&sim, salvage) {
            Ok(got) => {
                let mut last = 0;
                for b in &got {
                    assert!(b.0 > last, "lsn order");
                    last = b.0;
                    assert!(
                        valid.contains(b),
                        "batch {} is not a checksummed frame of the input",
                        b.0
                    );
                }
                // A second open sees the same log and nothing more to repair.
                let again = recover(&sim, false).expect("reopen after recovery");
                assert_eq!(again, got);
            }
            Err(StoreError::Corrupt { .. }) if !salvage => {}
            Err(e) => panic!("salvage={salvage}: unexpected error {e}"),
        }
    }
});
