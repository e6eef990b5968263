//! Power-cut simulation: after every sync, and at random points between, build the
//! image a power cut would leave (unsynced writes dropped, kept in part, reordered,
//! torn) and reopen it. Every batch acknowledged by a successful `sync` must come back
//! byte for byte, no batch may be half there, and LSN order must hold.

mod common;

use common::*;
use tidepool_storage::sim::{CrashMode, SimBackend, SimRng};
use tidepool_storage::{Lsn, StoreError};

const MODES: [CrashMode; 3] = [
    CrashMode::DropUnsynced,
    CrashMode::TornPrefix,
    CrashMode::Reorder,
];

/// Opens a crash image and checks it against what was appended and acknowledged.
/// Returns the recovered batch count.
fn check_image(
    img: &SimBackend,
    seg: u64,
    appended: &[(u64, Vec<u8>)],
    acked: usize,
    what: &str,
) -> usize {
    let o = opts(seg);
    let (store, rec) = match open(img, &o) {
        Ok(x) => x,
        Err(e) => panic!("{what}: reopen failed: {e}"),
    };
    let got = batches(&rec);
    assert!(
        got.len() >= acked,
        "{what}: lost acknowledged batches: recovered {} of {acked} acked ({})",
        got.len(),
        rec.report()
    );
    assert!(got.len() <= appended.len(), "{what}: invented batches");
    for (i, (g, a)) in got.iter().zip(appended).enumerate() {
        assert_eq!(g, a, "{what}: batch {i} differs");
    }
    assert_eq!(rec.last_lsn().0, got.last().map_or(0, |b| b.0), "{what}");
    let first_report = rec.report().to_string();
    drop(rec);
    drop(store);
    // Recovery is idempotent: a second open finds a clean log with the same batches.
    let (_s, rec2) = open(img, &o).unwrap_or_else(|e| panic!("{what}: second reopen: {e}"));
    assert_eq!(batches(&rec2), got, "{what}: second open differs");
    assert!(
        rec2.report().torn_tail.is_none(),
        "{what}: torn tail twice: first {first_report}\nsecond {}",
        rec2.report()
    );
    got.len()
}

#[test]
fn acknowledged_batches_survive_every_power_cut() {
    for seed in 0..300u64 {
        let mut rng = SimRng::new(seed);
        let sim = SimBackend::new();
        let seg = [512u64, 2048, 1 << 20][seed as usize % 3];
        let (mut store, _) = open(&sim, &opts(seg)).unwrap();
        let mut appended: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut acked = 0;
        for step in 0..150 {
            match rng.below(10) {
                0..=5 => {
                    let lsn = store.last_lsn().0 + 1 + rng.below(3);
                    let max = if rng.chance(1, 20) { 3000 } else { 300 };
                    let p = payload(lsn, &mut rng, max);
                    store.append(Lsn(lsn), &p).unwrap();
                    appended.push((lsn, p));
                }
                6..=8 => {
                    store.sync().unwrap();
                    acked = appended.len();
                    let mode = MODES[rng.below(3) as usize];
                    let img = sim.crash(&mut rng, mode);
                    check_image(
                        &img,
                        seg,
                        &appended,
                        acked,
                        &format!("seed {seed} step {step} after sync {mode:?}"),
                    );
                }
                _ => {
                    for mode in MODES {
                        let img = sim.crash(&mut rng, mode);
                        check_image(
                            &img,
                            seg,
                            &appended,
                            acked,
                            &format!("seed {seed} step {step} between {mode:?}"),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn crash_generations_keep_every_acknowledged_batch() {
    // Crash, recover, keep writing on the recovered image, crash again, ...
    for seed in 0..100u64 {
        let mut rng = SimRng::new(1000 + seed);
        let mut sim = SimBackend::new();
        let seg = 700;
        let mut appended: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut acked = 0;
        for generation in 0..8 {
            let (mut store, rec) = open(&sim, &opts(seg)).unwrap();
            let got = batches(&rec);
            assert!(
                got.len() >= acked,
                "seed {seed} gen {generation}: lost acked"
            );
            assert_eq!(
                got[..],
                appended[..got.len()],
                "seed {seed} gen {generation}"
            );
            appended.truncate(got.len());
            acked = got.len();
            drop(rec);
            for _ in 0..rng.below(40) {
                let lsn = store.last_lsn().0 + 1;
                let p = payload(lsn, &mut rng, 200);
                store.append(Lsn(lsn), &p).unwrap();
                appended.push((lsn, p));
                if rng.chance(1, 4) {
                    store.sync().unwrap();
                    acked = appended.len();
                }
            }
            let mode = MODES[rng.below(3) as usize];
            sim = sim.crash(&mut rng, mode);
        }
    }
}

/// Stops the store at its k-th sync (the injected failure stands for the power going
/// out in the middle of that sync, snapshot install included), for every k, and checks
/// each crash image.
#[test]
fn power_cut_inside_every_sync_including_snapshot_install() {
    let run = |sim: &SimBackend, fail_after: Option<u64>| -> (Vec<(u64, Vec<u8>)>, usize, bool) {
        let (mut store, _) = open(sim, &opts(600)).unwrap();
        sim.fail_syncs_after(fail_after);
        let mut appended = Vec::new();
        let mut acked = 0;
        let mut rng = SimRng::new(7);
        let result = (|| -> Result<(), StoreError> {
            for round in 0..12u64 {
                for _ in 0..5 {
                    let lsn = store.last_lsn().0 + 1;
                    let p = payload(lsn, &mut rng, 150);
                    store.append(Lsn(lsn), &p)?;
                    appended.push((lsn, p));
                }
                store.sync()?;
                acked = appended.len();
                if round % 3 == 2 {
                    let mut w = store.begin_snapshot(store.last_lsn())?;
                    w.write_chunk(b"state")?;
                    let done = w.finish()?;
                    store.install_snapshot(done)?;
                }
            }
            Ok(())
        })();
        sim.fail_syncs_after(None);
        (appended, acked, result.is_err())
    };
    let mut k = 0;
    loop {
        let sim = SimBackend::new();
        let (appended, acked, failed) = run(&sim, Some(k));
        let mut rng = SimRng::new(k);
        for mode in MODES {
            let img = sim.crash(&mut rng, mode);
            let o = opts(600);
            let (_s, rec) =
                open(&img, &o).unwrap_or_else(|e| panic!("fail at sync {k} {mode:?}: {e}"));
            // With snapshots the early batches live in the snapshot: check the tail.
            let got = batches(&rec);
            let last = rec.last_lsn().0 as usize;
            assert!(
                last >= acked,
                "sync {k} {mode:?}: lost acked ({last} < {acked})"
            );
            assert!(last <= appended.len());
            let from = rec.replay_from().0 as usize;
            assert_eq!(got[..], appended[from..last], "sync {k} {mode:?}");
            assert!(rec.snapshot_chunks().all(|c| c == b"state"));
        }
        if !failed {
            break;
        }
        k += 1;
    }
    assert!(k > 20, "expected many sync points, got {k}");
}
