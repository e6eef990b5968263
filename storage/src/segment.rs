//! Segment files: their names, and walking the frames of one segment's bytes.

use crate::frame::{self, ALIGN, FRAME_HEADER_LEN};

/// Name of the lock file in the data directory.
pub(crate) const LOCK_FILE: &str = "LOCK";
/// Suffix of files moved aside by salvage.
pub(crate) const CORRUPT_SUFFIX: &str = ".corrupt";
/// A sparse index entry (frame LSN, frame offset) is kept about every this many bytes,
/// so a history read starts near its LSN instead of at the top of a segment.
pub(crate) const INDEX_INTERVAL: u64 = 64 << 10;

pub(crate) fn segment_name(id: u64) -> String {
    format!("segment-{id:020}.log")
}

pub(crate) fn snapshot_name(id: u64) -> String {
    format!("snapshot-{id:020}.snap")
}

pub(crate) fn snapshot_tmp_name(id: u64) -> String {
    format!("snapshot-{id:020}.snap.tmp")
}

/// What a directory entry is, judged by its name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Segment(u64),
    Snapshot(u64),
    SnapshotTmp(u64),
    /// A file moved aside by salvage; its id still counts so names are never reused.
    Corrupt {
        segment: Option<u64>,
        snapshot: Option<u64>,
    },
    Other,
}

pub(crate) fn classify(name: &str) -> FileKind {
    fn id(s: &str, prefix: &str, suffix: &str) -> Option<u64> {
        let digits = s.strip_prefix(prefix)?.strip_suffix(suffix)?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
    if name.ends_with(CORRUPT_SUFFIX) {
        let base = name.split('.').next().unwrap_or("");
        return FileKind::Corrupt {
            segment: id(&format!("{base}.log"), "segment-", ".log"),
            snapshot: id(&format!("{base}.snap"), "snapshot-", ".snap"),
        };
    }
    if let Some(n) = id(name, "segment-", ".log") {
        FileKind::Segment(n)
    } else if let Some(n) = id(name, "snapshot-", ".snap") {
        FileKind::Snapshot(n)
    } else if let Some(n) = id(name, "snapshot-", ".snap.tmp") {
        FileKind::SnapshotTmp(n)
    } else {
        FileKind::Other
    }
}

/// The result of walking a segment's frames from some offset.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    /// Offset just past the last valid frame.
    pub end: usize,
    /// LSN of the last valid frame (or the LSN the walk started from).
    pub last_lsn: u64,
    /// Valid frames with an LSN greater than the `count_above` argument.
    pub frames_above: u64,
    /// Sparse (lsn, offset) index of the valid frames.
    pub index: Vec<(u64, u64)>,
    /// Where and why the walk stopped before the end of the bytes.
    pub failure: Option<(usize, String)>,
}

/// Walks frames in `data` from `start`, requiring LSNs above `prev_lsn` and strictly
/// increasing; stops at the end of `data` or at the first frame that does not decode.
pub(crate) fn walk_frames(data: &[u8], start: usize, prev_lsn: u64, count_above: u64) -> Walk {
    let mut w = Walk {
        end: start,
        last_lsn: prev_lsn,
        ..Walk::default()
    };
    let mut last_indexed: Option<usize> = None;
    loop {
        let Some(rest) = data.get(w.end..) else {
            w.failure = Some((w.end, "frame offset past end of file".into()));
            return w;
        };
        if rest.is_empty() {
            return w;
        }
        match frame::decode(rest) {
            Ok(Some((f, used))) => {
                if f.lsn <= w.last_lsn {
                    w.failure = Some((
                        w.end,
                        format!(
                            "batch lsn {} is not greater than the previous lsn {}",
                            f.lsn, w.last_lsn
                        ),
                    ));
                    return w;
                }
                if last_indexed.is_none_or(|at| w.end - at >= INDEX_INTERVAL as usize) {
                    w.index.push((f.lsn, w.end as u64));
                    last_indexed = Some(w.end);
                }
                if f.lsn > count_above {
                    w.frames_above += 1;
                }
                w.last_lsn = f.lsn;
                w.end += used;
            }
            Ok(None) => {
                w.failure = Some((w.end, "incomplete batch frame (torn write)".into()));
                return w;
            }
            Err(e) => {
                w.failure = Some((w.end, e.to_string()));
                return w;
            }
        }
    }
}

/// Looks for a frame at or after `from` (at frame alignment) that proves data beyond
/// `lsn` had been made durable: a fully valid frame whose synced-LSN watermark is
/// greater than `lsn`. Returns its offset.
pub(crate) fn find_witness(data: &[u8], from: usize, lsn: u64) -> Option<usize> {
    let mut p = frame::align_up(from);
    while p
        .checked_add(FRAME_HEADER_LEN)
        .is_some_and(|e| e <= data.len())
    {
        if let Some(rest) = data.get(p..) {
            if let Ok(Some((f, _))) = frame::decode(rest) {
                if f.synced_lsn > lsn {
                    return Some(p);
                }
            }
        }
        p += ALIGN;
    }
    None
}

/// Offset to start reading from to find the first frame with an LSN above `after`,
/// given a segment's sparse index.
pub(crate) fn index_start(index: &[(u64, u64)], after: u64, header_len: u64) -> u64 {
    let i = index.partition_point(|&(lsn, _)| lsn <= after);
    match i.checked_sub(1).and_then(|j| index.get(j)) {
        Some(&(_, off)) => off,
        None => header_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_classify() {
        let check = |name: &str, want: FileKind| assert_eq!(classify(name), want, "{name}");
        check(&segment_name(7), FileKind::Segment(7));
        check(&snapshot_name(3), FileKind::Snapshot(3));
        check(&snapshot_tmp_name(3), FileKind::SnapshotTmp(3));
        check(
            &format!("{}.40.corrupt", segment_name(9)),
            FileKind::Corrupt {
                segment: Some(9),
                snapshot: None,
            },
        );
        check("LOCK", FileKind::Other);
        check("segment-1.log", FileKind::Other);
        check("segment-0000000000000000000x.log", FileKind::Other);
    }

    #[test]
    fn index_start_picks_last_entry_not_past() {
        let idx = [(10, 40), (50, 1000), (90, 2000)];
        assert_eq!(index_start(&idx, 5, 40), 40);
        assert_eq!(index_start(&idx, 10, 40), 40);
        assert_eq!(index_start(&idx, 60, 40), 1000);
        assert_eq!(index_start(&idx, 95, 40), 2000);
        assert_eq!(index_start(&[], 95, 40), 40);
    }
}
