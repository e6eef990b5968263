//! One scenario per test: torn tails, corruption, salvage, the lock file, poisoning,
//! history reads, rotation, big batches, leftovers, and the real-file backend.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use tidepool_storage::frame::{framed_len, SEGMENT_HEADER_LEN};
use tidepool_storage::sim::SimBackend;
use tidepool_storage::{History, Lsn, Store, StoreError, StoreOptions};

/// Offset of the n-th (0-based) frame in a segment whose frames all carry `len` bytes.
fn frame_offset(n: usize, len: usize) -> usize {
    SEGMENT_HEADER_LEN + n * framed_len(len)
}

fn corrupt_byte(sim: &SimBackend, path: &Path, at: usize) {
    let mut bytes = sim.read_file(path).unwrap();
    bytes[at] ^= 0x5a;
    sim.write_file(path, &bytes);
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let sim = SimBackend::new();
    let (mut store, _) = open(&sim, &opts(1 << 20)).unwrap();
    let written = fill(&mut store, 5, 100, true);
    drop(store);
    let seg = seg_path(1);
    let bytes = sim.read_file(&seg).unwrap();
    // Cut the last frame in half, as a power cut during its write would.
    let cut = frame_offset(4, 100) + 50;
    sim.write_file(&seg, &bytes[..cut]);

    let (_store, rec) = open(&sim, &opts(1 << 20)).unwrap();
    assert_eq!(batches(&rec), written[..4]);
    let torn = rec.report().torn_tail.clone().expect("torn tail reported");
    assert_eq!(torn.file, seg);
    assert_eq!(torn.offset, frame_offset(4, 100) as u64);
    assert_eq!(torn.dropped_bytes, 50);
    assert!(rec
        .report()
        .to_string()
        .contains("cut torn tail at /db/segment-00000000000000000001.log:"));
    assert_eq!(sim.read_file(&seg).unwrap().len(), frame_offset(4, 100));
}

#[test]
fn bad_checksum_in_last_frame_with_nothing_after_is_a_torn_tail() {
    let sim = SimBackend::new();
    let (mut store, _) = open(&sim, &opts(1 << 20)).unwrap();
    let written = fill(&mut store, 3, 64, true);
    drop(store);
    corrupt_byte(&sim, &seg_path(1), frame_offset(2, 64) + 40);
    let (_s, rec) = open(&sim, &opts(1 << 20)).unwrap();
    assert_eq!(batches(&rec), written[..2]);
    assert!(rec.report().torn_tail.is_some());
}

#[test]
fn zeroed_tail_of_the_newest_segment_is_preallocated_space() {
    let sim = SimBackend::new();
    let (mut store, _) = open(&sim, &opts(1 << 20)).unwrap();
    let written = fill(&mut store, 3, 64, true);
    drop(store);
    let mut bytes = sim.read_file(&seg_path(1)).unwrap();
    let end = bytes.len();
    bytes.extend_from_slice(&[0u8; 4096]);
    sim.write_file(&seg_path(1), &bytes);
    let (_s, rec) = open(&sim, &opts(1 << 20)).unwrap();
    assert_eq!(batches(&rec), written);
    assert!(rec.report().torn_tail.is_none());
    assert_eq!(sim.read_file(&seg_path(1)).unwrap().len(), end);
}

#[test]
fn preallocation_is_cut_when_a_segment_is_sealed_and_on_drop() {
    let sim = SimBackend::new();
    let o = opts(64 << 10);
    let (mut store, _) = open(&sim, &o).unwrap();
    let per = framed_len(100) as u64;
    fill(&mut store, 10, 100, true);
    let logical = SEGMENT_HEADER_LEN as u64 + 10 * per;
    // Zeros are kept ahead of the data so syncs overwrite allocated blocks.
    assert!(sim.read_file(&seg_path(1)).unwrap().len() as u64 > logical);
    // Sealed segments end exactly at their last frame.
    fill(&mut store, 1200, 100, true);
    let segs = segment_names(&sim).len() as u64;
    assert!(segs >= 3);
    for id in 1..segs {
        let len = sim.read_file(&seg_path(id)).unwrap().len() as u64;
        assert_eq!(
            (len - SEGMENT_HEADER_LEN as u64) % per,
            0,
            "segment {id} has {len} bytes"
        );
    }
    drop(store);
    let len = sim.read_file(&seg_path(segs)).unwrap().len() as u64;
    assert_eq!(
        (len - SEGMENT_HEADER_LEN as u64) % per,
        0,
        "active segment cut on drop"
    );
}

#[test]
fn zeros_in_a_sealed_segment_before_acknowledged_data_are_corruption() {
    let sim = SimBackend::new();
    let o = opts(1000);
    let (mut store, _) = open(&sim, &o).unwrap();
    fill(&mut store, 30, 100, true);
    drop(store);
    let mut bytes = sim.read_file(&seg_path(2)).unwrap();
    let at = frame_offset(5, 100);
    bytes[at..].iter_mut().for_each(|b| *b = 0);
    sim.write_file(&seg_path(2), &bytes);
    match open(&sim, &o).unwrap_err() {
        StoreError::Corrupt { file, offset, .. } => {
            assert_eq!((file, offset), (seg_path(2), at as u64))
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn mid_file_corruption_is_refused_naming_file_and_offset() {
    let sim = SimBackend::new();
    let (mut store, _) = open(&sim, &opts(1 << 20)).unwrap();
    fill(&mut store, 10, 100, true);
    drop(store);
    let at = frame_offset(3, 100);
    corrupt_byte(&sim, &seg_path(1), at + 60);
    let err = open(&sim, &opts(1 << 20)).unwrap_err();
    match &err {
        StoreError::Corrupt {
            file,
            offset,
            reason,
        } => {
            assert_eq!(file, &seg_path(1));
            assert_eq!(*offset, at as u64);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("/db/segment-00000000000000000001.log"),
        "{msg}"
    );
    assert!(msg.contains(&format!("byte offset {at}")), "{msg}");
    assert!(msg.contains("salvage"), "{msg}");
}

#[test]
fn corruption_in_an_older_segment_is_refused() {
    let sim = SimBackend::new();
    let o = opts(1000);
    let (mut store, _) = open(&sim, &o).unwrap();
    fill(&mut store, 40, 100, true);
    drop(store);
    assert!(segment_names(&sim).len() > 4);
    corrupt_byte(&sim, &seg_path(2), frame_offset(1, 100) + 3);
    match open(&sim, &o).unwrap_err() {
        StoreError::Corrupt { file, offset, .. } => {
            assert_eq!(file, seg_path(2));
            assert_eq!(offset, frame_offset(1, 100) as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A damaged header of an older segment is corruption too.
    let sim2 = SimBackend::new();
    let (mut store, _) = open(&sim2, &o).unwrap();
    fill(&mut store, 40, 100, true);
    drop(store);
    corrupt_byte(&sim2, &seg_path(3), 20);
    assert!(matches!(
        open(&sim2, &o),
        Err(StoreError::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn salvage_keeps_the_prefix_and_moves_the_rest_aside() {
    let sim = SimBackend::new();
    let o = opts(1000);
    let (mut store, _) = open(&sim, &o).unwrap();
    let written = fill(&mut store, 40, 100, true);
    drop(store);
    let before = segment_names(&sim).len();
    let at = frame_offset(2, 100);
    corrupt_byte(&sim, &seg_path(2), at + 33);
    let mut salvage = o.clone();
    salvage.salvage = true;
    let (mut store, rec) = open(&sim, &salvage).unwrap();
    // Segment 1 holds 8 frames of 100 bytes in 1000 bytes: frames 0..=7, then 8, 9 in 2.
    let per_seg = (1000 - SEGMENT_HEADER_LEN) / framed_len(100);
    assert_eq!(batches(&rec), written[..per_seg + 2]);
    let s = rec.report().salvage.clone().expect("salvage reported");
    assert_eq!((s.file.clone(), s.offset), (seg_path(2), at as u64));
    assert_eq!(s.moved_aside.len(), before - 2 + 1, "{s:?}");
    let aside = sim.read_file(&s.moved_aside[0]).unwrap();
    assert_eq!(
        aside.len(),
        1000 - at - (1000 - SEGMENT_HEADER_LEN) % framed_len(100)
    );
    assert!(
        names(&sim)
            .iter()
            .filter(|n| n.ends_with(".corrupt"))
            .count()
            == s.moved_aside.len()
    );
    // Appends continue after the salvaged prefix, and a plain open now succeeds.
    let next = rec.last_lsn().0 + 1;
    drop(rec);
    store.append(Lsn(next), b"after salvage").unwrap();
    store.sync().unwrap();
    drop(store);
    let (_s, rec) = open(&sim, &o).unwrap();
    assert_eq!(
        batches(&rec).last().unwrap(),
        &(next, b"after salvage".to_vec())
    );
    assert!(rec.report().salvage.is_none());
}

#[test]
fn lock_file_keeps_a_second_store_out() {
    let sim = SimBackend::new();
    let (store, _) = open(&sim, &opts(4096)).unwrap();
    let err = open(&sim, &opts(4096)).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }));
    drop(store);
    open(&sim, &opts(4096)).unwrap();

    // The real thing: File::try_lock on DATA/LOCK.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreOptions::new(dir.path())).unwrap();
    let err = Store::open(StoreOptions::new(dir.path())).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Locked { .. }));
    assert!(
        msg.contains("locked by another process") && msg.contains("LOCK"),
        "{msg}"
    );
    drop(store);
    Store::open(StoreOptions::new(dir.path())).unwrap();
}

#[test]
fn io_error_poisons_until_reopen_and_reads_keep_working() {
    let sim = SimBackend::new();
    let o = opts(1 << 20);
    let (mut store, _) = open(&sim, &o).unwrap();
    let written = fill(&mut store, 3, 50, true);
    let reader = store.reader();

    sim.fail_syncs_after(Some(0));
    store.append(Lsn(4), b"doomed").unwrap();
    assert!(matches!(store.sync(), Err(StoreError::Io { .. })));
    assert!(store.is_poisoned());
    sim.fail_syncs_after(None);
    let err = store.append(Lsn(5), b"x").unwrap_err();
    assert!(matches!(err, StoreError::Poisoned));
    assert_eq!(
        err.to_string(),
        "storage is read-only after an I/O error; restart the server"
    );
    assert!(matches!(store.sync(), Err(StoreError::Poisoned)));
    assert!(matches!(
        store.begin_snapshot(Lsn(1)),
        Err(StoreError::Poisoned)
    ));
    match reader.read_after(Lsn(0), 1 << 20).unwrap() {
        History::Batches { batches, .. } => assert_eq!(batches.len(), 3),
        h => panic!("{h:?}"),
    }
    drop(store);

    // A failed write poisons too (the write buffer is flushed by sync).
    let (mut store, rec) = open(&sim, &o).unwrap();
    assert_eq!(batches(&rec)[..3], written[..]);
    let next = rec.last_lsn().0 + 1;
    sim.fail_writes_after(Some(0));
    store.append(Lsn(next), &[7u8; 300]).unwrap();
    assert!(matches!(store.sync(), Err(StoreError::Io { .. })));
    sim.fail_writes_after(None);
    assert!(matches!(
        store.append(Lsn(next + 1), b"y"),
        Err(StoreError::Poisoned)
    ));
    drop(store);
    let (_s, rec) = open(&sim, &o).unwrap();
    assert_eq!(batches(&rec)[..3], written[..]);
}

#[test]
fn out_of_order_and_oversized_appends_are_refused_without_poisoning() {
    let sim = SimBackend::new();
    let (mut store, _) = open(&sim, &opts(4096)).unwrap();
    store.append(Lsn(5), b"a").unwrap();
    let err = store.append(Lsn(5), b"b").unwrap_err();
    assert!(matches!(
        err,
        StoreError::OutOfOrder {
            last: Lsn(5),
            got: Lsn(5)
        }
    ));
    assert!(err
        .to_string()
        .contains("not greater than the last appended 5"));
    assert!(matches!(
        store.append(Lsn(3), b"c"),
        Err(StoreError::OutOfOrder { .. })
    ));
    assert!(!store.is_poisoned());
    store.append(Lsn(9), b"d").unwrap();
    store.sync().unwrap();
}

#[test]
fn readers_see_only_synced_batches() {
    let sim = SimBackend::new();
    let (mut store, _) = open(&sim, &opts(4096)).unwrap();
    let reader = store.reader();
    store.append(Lsn(1), b"one").unwrap();
    assert_eq!(
        reader.read_after(Lsn(0), 100).unwrap(),
        History::Batches {
            batches: vec![],
            more: false
        }
    );
    store.sync().unwrap();
    store.append(Lsn(2), b"two").unwrap();
    assert_eq!(
        reader.read_after(Lsn(0), 100).unwrap(),
        History::Batches {
            batches: vec![(Lsn(1), b"one".to_vec())],
            more: false
        }
    );
    store.sync().unwrap();
    assert_eq!(reader.synced_lsn(), Lsn(2));
}

#[test]
fn history_pages_and_truncation() {
    let sim = SimBackend::new();
    let mut o = opts(1000);
    o.history_retention_bytes = 2000;
    let (mut store, _) = open(&sim, &o).unwrap();
    let written = fill(&mut store, 100, 100, false);
    store.sync().unwrap();
    let reader = store.reader();

    // Paging with a byte budget returns everything, in order, with `more` set.
    let mut got = Vec::new();
    let mut from = 0;
    loop {
        match reader.read_after(Lsn(from), 350).unwrap() {
            History::Batches { batches, more } => {
                assert!(batches.len() <= 3 && !batches.is_empty());
                from = batches.last().unwrap().0 .0;
                got.extend(batches.into_iter().map(|(l, p)| (l.0, p)));
                if !more {
                    break;
                }
            }
            h => panic!("{h:?}"),
        }
    }
    assert_eq!(got, written);
    // A budget smaller than one batch still makes progress.
    assert!(
        matches!(reader.read_after(Lsn(10), 1).unwrap(), History::Batches { batches, more: true } if batches.len() == 1 && batches[0].0 == Lsn(11))
    );

    // A snapshot at lsn 100 lets old segments go; retention keeps ~2000 bytes of them.
    let segs_before = segment_names(&sim).len();
    let mut w = store.begin_snapshot(Lsn(100)).unwrap();
    w.write_chunk(b"everything").unwrap();
    store.install_snapshot(w.finish().unwrap()).unwrap();
    let segs_after = segment_names(&sim).len();
    assert!(
        segs_after < segs_before && segs_after >= 3,
        "{segs_before} -> {segs_after}"
    );
    let oldest = match reader.read_after(Lsn(0), 1 << 20).unwrap() {
        History::Truncated { oldest_available } => oldest_available,
        h => panic!("expected Truncated, got {h:?}"),
    };
    assert!(oldest.0 > 50 && oldest.0 < 100, "{oldest}");
    match reader.read_after(oldest, 1 << 20).unwrap() {
        History::Batches { batches, more } => {
            assert!(!more);
            assert_eq!(batches.first().unwrap().0, Lsn(oldest.0 + 1));
            assert_eq!(batches.last().unwrap().0, Lsn(100));
        }
        h => panic!("{h:?}"),
    }
    // History survives a reopen.
    drop(store);
    let (store, rec) = open(&sim, &o).unwrap();
    assert_eq!(rec.replay_from(), Lsn(100));
    assert_eq!(
        rec.snapshot_chunks().collect::<Vec<_>>(),
        vec![&b"everything"[..]]
    );
    assert_eq!(rec.batches().count(), 0);
    assert!(
        matches!(store.reader().read_after(oldest, 1 << 20).unwrap(), History::Batches { batches, .. } if batches.len() as u64 == 100 - oldest.0)
    );
}

#[test]
fn rotation_across_many_segments_round_trips() {
    let sim = SimBackend::new();
    let o = opts(512);
    let (mut store, _) = open(&sim, &o).unwrap();
    let mut written = Vec::new();
    for i in 0..2000u64 {
        let p = vec![(i % 251) as u8; (i % 97) as usize];
        store.append(Lsn(i + 1), &p).unwrap();
        written.push((i + 1, p));
        if i % 7 == 0 {
            store.sync().unwrap();
        }
    }
    store.sync().unwrap();
    let segs = segment_names(&sim).len();
    assert!(segs > 200, "{segs} segments");
    let reader = store.reader();
    assert!(
        matches!(reader.read_after(Lsn(1000), usize::MAX).unwrap(), History::Batches { batches, more: false } if batches.len() == 1000)
    );
    drop(store);
    let (_s, rec) = open(&sim, &o).unwrap();
    assert_eq!(batches(&rec), written);
    assert_eq!(rec.report().batches, 2000);
}

#[test]
fn batches_larger_than_a_segment_get_one_of_their_own() {
    let sim = SimBackend::new();
    let o = opts(64 << 10);
    let (mut store, _) = open(&sim, &o).unwrap();
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    store.append(Lsn(1), b"small").unwrap();
    store.append(Lsn(2), &big).unwrap();
    store.append(Lsn(3), b"after").unwrap();
    store.sync().unwrap();
    assert!(
        matches!(store.reader().read_after(Lsn(1), 10).unwrap(), History::Batches { batches, more: true } if batches[0].1 == big)
    );
    drop(store);
    let (_s, rec) = open(&sim, &o).unwrap();
    let got = batches(&rec);
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].1, big);
}

#[test]
fn unfinished_and_superseded_snapshots_are_cleaned_up() {
    let sim = SimBackend::new();
    let o = opts(4096);
    let (mut store, _) = open(&sim, &o).unwrap();
    fill(&mut store, 10, 10, true);
    let mut w = store.begin_snapshot(Lsn(5)).unwrap();
    w.write_chunk(b"five").unwrap();
    store.install_snapshot(w.finish().unwrap()).unwrap();
    // An abandoned writer removes its temp file; a torn temp file left by a crash is
    // deleted at open.
    let w = store.begin_snapshot(Lsn(10)).unwrap();
    drop(w);
    assert!(!names(&sim).iter().any(|n| n.ends_with(".tmp")));
    drop(store);
    sim.write_file(
        &Path::new(DIR).join("snapshot-00000000000000000007.snap.tmp"),
        b"TPSNAPSH torn",
    );
    // A leftover older snapshot (crash between rename and removal) goes too.
    let old = sim
        .read_file(&Path::new(DIR).join("snapshot-00000000000000000001.snap"))
        .unwrap();
    sim.write_file(
        &Path::new(DIR).join("snapshot-00000000000000000000.snap"),
        &old,
    );
    let (_s, rec) = open(&sim, &o).unwrap();
    assert_eq!(rec.replay_from(), Lsn(5));
    assert_eq!(
        rec.batches().map(|b| b.0 .0).collect::<Vec<_>>(),
        vec![6, 7, 8, 9, 10]
    );
    assert_eq!(rec.report().removed.len(), 2, "{:?}", rec.report());
    assert_eq!(
        names(&sim)
            .iter()
            .filter(|n| n.starts_with("snapshot-"))
            .count(),
        1
    );
}

#[test]
fn corrupt_installed_snapshot_is_refused_or_salvaged() {
    let sim = SimBackend::new();
    let o = opts(4096);
    let (mut store, _) = open(&sim, &o).unwrap();
    fill(&mut store, 10, 10, true);
    let mut w = store.begin_snapshot(Lsn(10)).unwrap();
    w.write_chunk(b"state").unwrap();
    store.install_snapshot(w.finish().unwrap()).unwrap();
    drop(store);
    let snap = Path::new(DIR).join("snapshot-00000000000000000001.snap");
    corrupt_byte(&sim, &snap, 42);
    match open(&sim, &o).unwrap_err() {
        StoreError::Corrupt { file, offset, .. } => assert_eq!((file, offset), (snap.clone(), 32)),
        e => panic!("{e:?}"),
    }
    let mut s = o.clone();
    s.salvage = true;
    let (_s, rec) = open(&sim, &s).unwrap();
    assert!(rec.report().salvage.is_some());
    assert!(names(&sim)
        .iter()
        .any(|n| n.starts_with("snapshot-00000000000000000001.snap.32")));
}

#[test]
fn snapshot_written_on_another_thread_while_appending() {
    let sim = SimBackend::new();
    let o = opts(2048);
    let (mut store, _) = open(&sim, &o).unwrap();
    fill(&mut store, 50, 40, false);
    store.sync().unwrap();
    let mut w = store.begin_snapshot(Lsn(50)).unwrap();
    let t = std::thread::spawn(move || {
        for i in 0..100u32 {
            w.write_chunk(&i.to_le_bytes()).unwrap();
        }
        w.finish().unwrap()
    });
    let more = fill(&mut store, 50, 40, false);
    let done = t.join().unwrap();
    assert_eq!(done.replay_from(), Lsn(50));
    store.install_snapshot(done).unwrap();
    drop(store);
    let (_s, rec) = open(&sim, &o).unwrap();
    assert_eq!(rec.snapshot_chunks().count(), 100);
    assert_eq!(batches(&rec), more);
}

#[test]
fn snapshot_misuse_is_refused() {
    let sim = SimBackend::new();
    let (mut store, _) = open(&sim, &opts(4096)).unwrap();
    fill(&mut store, 3, 10, true);
    assert!(matches!(
        store.begin_snapshot(Lsn(4)),
        Err(StoreError::Misuse { .. })
    ));
    let sim2 = SimBackend::new();
    let (mut other, _) = open(&sim2, &opts(4096)).unwrap();
    fill(&mut other, 3, 10, true);
    let w = other.begin_snapshot(Lsn(3)).unwrap();
    assert!(matches!(
        store.install_snapshot(w.finish().unwrap()),
        Err(StoreError::Misuse { .. })
    ));
    let a = store.begin_snapshot(Lsn(2)).unwrap().finish().unwrap();
    let b = store.begin_snapshot(Lsn(3)).unwrap().finish().unwrap();
    store.install_snapshot(b).unwrap();
    assert!(matches!(
        store.install_snapshot(a),
        Err(StoreError::Misuse { .. })
    ));
    assert!(!store.is_poisoned());
}

#[test]
fn real_files_round_trip_with_mmap_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = StoreOptions::new(dir.path());
    o.segment_bytes = 64 << 10;
    let (mut store, rec) = Store::open(o.clone()).unwrap();
    assert_eq!(rec.last_lsn(), Lsn(0));
    drop(rec);
    let written = fill(&mut store, 3000, 100, false);
    store.sync().unwrap();
    let reader = store.reader();
    let h = std::thread::spawn(move || reader.read_after(Lsn(0), usize::MAX).unwrap())
        .join()
        .unwrap();
    match h {
        History::Batches { batches, more } => {
            assert!(!more);
            assert_eq!(batches.len(), 3000);
            assert_eq!(batches[1234].1, written[1234].1);
        }
        h => panic!("{h:?}"),
    }
    let mut w = store.begin_snapshot(Lsn(2000)).unwrap();
    w.write_chunk(b"snap").unwrap();
    store.install_snapshot(w.finish().unwrap()).unwrap();
    store.close().unwrap();
    let (_s, rec) = Store::open(o).unwrap();
    assert_eq!(rec.replay_from(), Lsn(2000));
    assert_eq!(batches(&rec), written[2000..]);
    assert!(rec.report().torn_tail.is_none());
}

#[test]
fn open_on_arc_backend_of_dyn_type() {
    let backend: Arc<dyn tidepool_storage::Backend> = Arc::new(SimBackend::new());
    let (mut s, _) = Store::open_with_backend(opts(4096), backend).unwrap();
    s.append(Lsn(1), b"x").unwrap();
    s.sync().unwrap();
}
