//! Opening a data directory: pick the newest valid snapshot, check every retained
//! segment frame by frame, cut a torn tail, refuse (or salvage) corruption, and hand
//! the caller the snapshot chunks plus every batch after the snapshot's `replay_from`.
//!
//! The algorithm, step by step, is in `docs/storage-format.md` ("Recovery"). The one
//! judgement it makes is torn tail versus corruption at the first bad frame: every
//! frame carries the synced-LSN watermark of the moment it was written, so a valid
//! frame anywhere after the bad spot whose watermark is above the last good LSN proves
//! that durable data was lost there (corruption); without such a witness, the bad spot
//! and everything after it were never acknowledged (a torn tail from a power cut).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{Backend, BackendFile, Mapped};
use crate::error::StoreError;
use crate::frame::{self, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::options::StoreOptions;
use crate::reader::SegView;
use crate::segment::{
    classify, find_witness, index_start, segment_name, snapshot_name, snapshot_tmp_name,
    walk_frames, FileKind, Walk, CORRUPT_SUFFIX,
};
use crate::snapshot::{self, decode_item, Item, SnapshotImage, SNAPSHOT_HEADER_LEN};
use crate::Lsn;

/// What `open` found and did, for the server's startup log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The snapshot loaded, if any.
    pub snapshot: Option<PathBuf>,
    /// Batches with LSNs up to this one are in the snapshot.
    pub replay_from: Lsn,
    /// Segment files read, oldest first.
    pub segments: Vec<PathBuf>,
    /// Bytes of snapshot and segments read.
    pub bytes: u64,
    /// Batches handed back for replay (LSN above `replay_from`).
    pub batches: u64,
    /// LSN of the last batch on disk (or `replay_from`).
    pub last_lsn: Lsn,
    /// The torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// What salvage moved aside, if it ran.
    pub salvage: Option<Salvage>,
    /// Leftover files deleted: unfinished snapshots, superseded snapshots, segments
    /// already covered by the snapshot.
    pub removed: Vec<PathBuf>,
}

/// An incomplete write at the end of the log, dropped at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The file cut.
    pub file: PathBuf,
    /// It now ends at this offset (0: the file was removed).
    pub offset: u64,
    /// What was wrong at that offset.
    pub reason: String,
    /// Bytes dropped, counting removed later segments.
    pub dropped_bytes: u64,
    /// Later segment files removed with it (never acknowledged).
    pub removed_files: Vec<PathBuf>,
}

/// Corruption that salvage stepped over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Salvage {
    /// The first damaged file.
    pub file: PathBuf,
    /// Offset of the damage; everything before it was kept.
    pub offset: u64,
    /// What was wrong there.
    pub reason: String,
    /// Files created or renamed with the `.corrupt` suffix.
    pub moved_aside: Vec<PathBuf>,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.snapshot {
            Some(p) => write!(
                f,
                "loaded snapshot {} (replay from lsn {}); ",
                p.display(),
                self.replay_from
            )?,
            None => f.write_str("no snapshot; ")?,
        }
        write!(
            f,
            "replayed {} batches from {} segments ({} bytes read), last lsn {}",
            self.batches,
            self.segments.len(),
            self.bytes,
            self.last_lsn
        )?;
        if let Some(t) = &self.torn_tail {
            write!(
                f,
                "; cut torn tail at {}:{} ({}; {} bytes dropped)",
                t.file.display(),
                t.offset,
                t.reason,
                t.dropped_bytes
            )?;
        }
        if let Some(s) = &self.salvage {
            write!(
                f,
                "; SALVAGED past corruption at {}:{} ({}); moved aside: {}",
                s.file.display(),
                s.offset,
                s.reason,
                s.moved_aside
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
        if !self.removed.is_empty() {
            write!(f, "; removed {} leftover files", self.removed.len())?;
        }
        Ok(())
    }
}

/// The recovered state: snapshot chunks, then batches to redo, all validated at open.
/// Holds the files' memory maps; drop it once the engine has loaded everything.
#[derive(Debug)]
pub struct Recovery {
    replay_from: u64,
    last_lsn: u64,
    snapshot: Option<Arc<Mapped>>,
    /// (segment bytes, offset to start reading at)
    segments: Vec<(Arc<Mapped>, usize)>,
    report: RecoveryReport,
}

impl Recovery {
    /// Batches up to this LSN are in the snapshot; replay starts after it.
    pub fn replay_from(&self) -> Lsn {
        Lsn(self.replay_from)
    }

    /// LSN of the last batch on disk; the next append needs a greater one.
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.last_lsn)
    }

    /// What open found and did.
    pub fn report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The snapshot's chunks, in the order written (none without a snapshot).
    pub fn snapshot_chunks(&self) -> SnapshotChunks<'_> {
        SnapshotChunks {
            data: self.snapshot.as_deref().map(|m| &m[..]).unwrap_or(&[]),
            pos: SNAPSHOT_HEADER_LEN,
        }
    }

    /// Every batch with an LSN above [`Recovery::replay_from`], in LSN order.
    pub fn batches(&self) -> Batches<'_> {
        Batches {
            segments: &self.segments,
            seg: 0,
            pos: None,
            replay_from: self.replay_from,
        }
    }
}

/// Iterator over snapshot chunks; see [`Recovery::snapshot_chunks`].
#[derive(Debug)]
pub struct SnapshotChunks<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for SnapshotChunks<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.data.get(self.pos..)?;
        match decode_item(rest) {
            Ok(Some((Item::Chunk(c), used))) => {
                self.pos += used;
                Some(c)
            }
            // Validated at open: the footer (or nothing, without a snapshot) ends it.
            _ => {
                self.pos = self.data.len();
                None
            }
        }
    }
}

/// Iterator over batches to replay; see [`Recovery::batches`].
#[derive(Debug)]
pub struct Batches<'a> {
    segments: &'a [(Arc<Mapped>, usize)],
    seg: usize,
    pos: Option<usize>,
    replay_from: u64,
}

impl<'a> Iterator for Batches<'a> {
    type Item = (Lsn, &'a [u8]);
    fn next(&mut self) -> Option<(Lsn, &'a [u8])> {
        loop {
            let (map, start) = self.segments.get(self.seg)?;
            let data: &'a [u8] = map;
            let pos = *self.pos.get_or_insert(*start);
            match data.get(pos..).map(frame::decode) {
                Some(Ok(Some((f, used)))) => {
                    self.pos = Some(pos + used);
                    if f.lsn > self.replay_from {
                        return Some((Lsn(f.lsn), f.payload));
                    }
                }
                // End of this segment (validated at open, so nothing else can happen).
                _ => {
                    self.seg += 1;
                    self.pos = None;
                }
            }
        }
    }
}

/// Everything `Store::open` needs to start writing.
pub(crate) struct Recovered {
    pub recovery: Recovery,
    /// Retained segments, oldest first; the last one is the active segment.
    pub segments: Vec<SegView>,
    /// The active segment's length (where the next frame goes).
    pub active_len: u64,
    pub last_lsn: u64,
    pub next_segment_id: u64,
    pub next_snapshot_id: u64,
    pub replay_from: u64,
    pub snapshot: Option<(u64, PathBuf)>,
}

/// One segment file during recovery.
struct SegFile {
    id: u64,
    path: PathBuf,
    file: Arc<dyn BackendFile>,
    map: Arc<Mapped>,
    header: Result<SegmentHeader, String>,
    walk: Option<Walk>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |e| StoreError::io(op, path, e)
}

fn corrupt_path(path: &Path, offset: u64) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{offset}{CORRUPT_SUFFIX}"));
    PathBuf::from(s)
}

/// Runs recovery on `opts.dir` (already locked).
pub(crate) fn recover(backend: &dyn Backend, opts: &StoreOptions) -> Result<Recovered, StoreError> {
    let dir = opts.dir.as_path();
    let mut report = RecoveryReport::default();
    let names = backend.list(dir).map_err(io_err("listing", dir))?;

    let (mut seg_ids, mut snap_ids, mut tmp_ids) = (Vec::new(), Vec::new(), Vec::new());
    let (mut max_seg, mut max_snap) = (0u64, 0u64);
    for name in &names {
        match classify(name) {
            FileKind::Segment(id) => seg_ids.push(id),
            FileKind::Snapshot(id) => snap_ids.push(id),
            FileKind::SnapshotTmp(id) => tmp_ids.push(id),
            FileKind::Corrupt { segment, snapshot } => {
                max_seg = max_seg.max(segment.unwrap_or(0));
                max_snap = max_snap.max(snapshot.unwrap_or(0));
            }
            FileKind::Other => {}
        }
    }
    max_seg = seg_ids.iter().copied().fold(max_seg, u64::max);
    max_snap = snap_ids
        .iter()
        .chain(&tmp_ids)
        .copied()
        .fold(max_snap, u64::max);
    let mut dir_changed = false;

    // 1. Unfinished snapshots: never installed, so never needed.
    for id in tmp_ids {
        let path = dir.join(snapshot_tmp_name(id));
        backend.remove(&path).map_err(io_err("removing", &path))?;
        report.removed.push(path);
        dir_changed = true;
    }

    // 2. The newest valid snapshot is the base; older ones are leftovers.
    snap_ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut base: Option<SnapshotImage> = None;
    let mut salvaged_snapshots = Vec::new();
    for id in snap_ids {
        let path = dir.join(snapshot_name(id));
        if base.is_some() {
            backend.remove(&path).map_err(io_err("removing", &path))?;
            report.removed.push(path);
            dir_changed = true;
            continue;
        }
        match snapshot::load(backend, &path, id) {
            Ok(img) => base = Some(img),
            Err(StoreError::Corrupt { offset, reason, .. }) if opts.salvage => {
                let aside = corrupt_path(&path, offset);
                backend
                    .rename(&path, &aside)
                    .map_err(io_err("renaming", &path))?;
                salvaged_snapshots.push((path, offset, reason, aside));
                dir_changed = true;
            }
            Err(e) => return Err(e),
        }
    }
    let replay_from = base.as_ref().map_or(0, |b| b.replay_from);

    // 3. Open and map every segment, decode headers.
    seg_ids.sort_unstable();
    let mut files = Vec::new();
    for id in seg_ids {
        let path = dir.join(segment_name(id));
        let file = backend.open(&path).map_err(io_err("opening", &path))?;
        let map = Arc::new(file.map().map_err(io_err("mapping", &path))?);
        let header = match SegmentHeader::decode(&map) {
            Ok(Some((h, _))) if h.segment_id == id => Ok(h),
            Ok(Some((h, _))) => Err(format!(
                "segment header names segment {}, file name says {id}",
                h.segment_id
            )),
            Ok(None) => Err("incomplete segment header (torn write)".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        files.push(SegFile {
            id,
            path,
            file,
            map,
            header,
            walk: None,
        });
    }

    // 4. Segments before the base segment (the last one starting at or before
    //    replay_from) are history only; a gap among them is an interrupted deletion, so
    //    everything before the gap is dropped.
    let starts_by = |f: &SegFile, lsn: u64| matches!(f.header, Ok(h) if h.prev_lsn <= lsn);
    if let Some(b) = files.iter().rposition(|f| starts_by(f, replay_from)) {
        let mut h = b;
        while h > 0 {
            let (prev, cur) = (&files[h - 1], &files[h]);
            let cur_prev = cur.header.as_ref().map_or(0, |x| x.prev_lsn);
            if prev.id + 1 == cur.id && starts_by(prev, cur_prev) {
                h -= 1;
            } else {
                break;
            }
        }
        for f in files.drain(..h) {
            drop(f.map);
            backend
                .remove(&f.path)
                .map_err(io_err("removing", &f.path))?;
            report.removed.push(f.path);
            dir_changed = true;
        }
    }

    // 5. Walk the chain of segments and their frames up to the first failure.
    let mut lsn = match files.first().map(|f| &f.header) {
        Some(Ok(h)) if h.prev_lsn <= replay_from => h.prev_lsn,
        _ => replay_from,
    };
    let mut failure: Option<(usize, usize, String)> = None;
    for (i, f) in files.iter_mut().enumerate() {
        let check = match &f.header {
            Err(why) => Err(why.clone()),
            Ok(h) if h.prev_lsn != lsn => Err(format!(
                "segment starts after lsn {} but the log before it ends at lsn {lsn}",
                h.prev_lsn
            )),
            Ok(_) => Ok(()),
        };
        if let Err(why) = check {
            failure = Some((i, 0, why));
            break;
        }
        let walk = walk_frames(&f.map, SEGMENT_HEADER_LEN, lsn, replay_from);
        lsn = walk.last_lsn;
        let fail = walk.failure.clone();
        f.walk = Some(walk);
        if let Some((off, why)) = fail {
            failure = Some((i, off, why));
            break;
        }
    }

    // 6. Zeros from the failure point to the end of the newest segment are space the
    //    writer preallocated: the log simply ends there.
    if let Some((i, off, _)) = &failure {
        let (i, off) = (*i, *off);
        let newest = i + 1 == files.len();
        let f = &mut files[i];
        let zeros = f.map.get(off..).is_some_and(|r| r.iter().all(|&b| b == 0));
        if newest && f.walk.is_some() && zeros {
            f.map = Arc::new(Mapped::owned(Vec::new()));
            truncate(&*f.file, &f.path, off as u64)?;
            f.map = Arc::new(f.file.map().map_err(io_err("mapping", &f.path))?);
            failure = None;
        }
    }

    // 7. Torn tail, corruption, or salvage.
    if let Some((i, off, why)) = failure {
        let witness = (i..files.len()).find_map(|j| {
            let from = if j == i { off } else { 0 };
            find_witness(&files[j].map, from, lsn).map(|p| (j, p))
        });
        let later: Vec<PathBuf> = files[i + 1..].iter().map(|f| f.path.clone()).collect();
        let dropped: u64 = files[i..].iter().map(|f| f.map.len() as u64).sum::<u64>() - off as u64;
        let path = files[i].path.clone();
        let header_failed = files[i].walk.is_none();
        // Drop every map of a file about to change.
        let tail_bytes = files[i].map.get(off..).unwrap_or(&[]).to_vec();
        for f in &mut files[i..] {
            f.map = Arc::new(Mapped::owned(Vec::new()));
        }
        match witness {
            Some((j, p)) if !opts.salvage => {
                return Err(StoreError::corrupt(
                    &path,
                    off as u64,
                    format!(
                        "{why}, and valid acknowledged data follows at {}:{p}",
                        files[j].path.display()
                    ),
                ));
            }
            Some(_) => {
                let mut moved = Vec::new();
                if header_failed {
                    let aside = corrupt_path(&path, 0);
                    backend
                        .rename(&path, &aside)
                        .map_err(io_err("renaming", &path))?;
                    moved.push(aside);
                } else {
                    let aside = corrupt_path(&path, off as u64);
                    let f = backend.create(&aside).map_err(io_err("creating", &aside))?;
                    f.write_at(&tail_bytes, 0)
                        .map_err(io_err("writing", &aside))?;
                    f.sync_data().map_err(io_err("syncing", &aside))?;
                    truncate(&*files[i].file, &path, off as u64)?;
                    moved.push(aside);
                }
                for p in &later {
                    let aside = corrupt_path(p, 0);
                    backend.rename(p, &aside).map_err(io_err("renaming", p))?;
                    moved.push(aside);
                }
                report.salvage = Some(Salvage {
                    file: path,
                    offset: off as u64,
                    reason: why,
                    moved_aside: moved,
                });
            }
            None => {
                if header_failed {
                    backend.remove(&path).map_err(io_err("removing", &path))?;
                } else {
                    truncate(&*files[i].file, &path, off as u64)?;
                }
                for p in &later {
                    backend.remove(p).map_err(io_err("removing", p))?;
                }
                report.torn_tail = Some(TornTail {
                    file: path,
                    offset: off as u64,
                    reason: why,
                    dropped_bytes: dropped,
                    removed_files: later,
                });
            }
        }
        dir_changed = true;
        files.truncate(if header_failed { i } else { i + 1 });
        if let Some(f) = files.get_mut(i) {
            f.map = Arc::new(f.file.map().map_err(io_err("mapping", &f.path))?);
        }
    }
    if report.salvage.is_none() && !salvaged_snapshots.is_empty() {
        let (file, offset, reason, _) = salvaged_snapshots[0].clone();
        report.salvage = Some(Salvage {
            file,
            offset,
            reason,
            moved_aside: Vec::new(),
        });
    }
    if let Some(s) = &mut report.salvage {
        s.moved_aside
            .extend(salvaged_snapshots.into_iter().map(|(_, _, _, aside)| aside));
    }

    // 8. A log that ends before the snapshot's replay_from (possible only after salvage)
    //    is wholly covered by the snapshot and would break the chain: drop it.
    if lsn < replay_from {
        for f in files.drain(..) {
            backend
                .remove(&f.path)
                .map_err(io_err("removing", &f.path))?;
            report.removed.push(f.path);
        }
        lsn = replay_from;
        dir_changed = true;
    }

    // 9. What we read may sit only in the page cache (after a process crash): make it
    //    durable before new frames claim it as their synced watermark.
    for f in &files {
        f.file.sync_data().map_err(io_err("syncing", &f.path))?;
    }
    if dir_changed {
        backend
            .sync_dir(dir)
            .map_err(io_err("syncing directory", dir))?;
    }

    // 10. The active segment: reuse the newest if it holds no frame, else start one.
    let reuse = files
        .last()
        .is_some_and(|f| f.walk.is_some() && f.map.len() == SEGMENT_HEADER_LEN);
    let mut active = if reuse { files.pop() } else { None };
    if active.is_none() {
        let id = max_seg + 1;
        max_seg = id;
        let path = dir.join(segment_name(id));
        let file = backend.create(&path).map_err(io_err("creating", &path))?;
        let header = SegmentHeader {
            segment_id: id,
            prev_lsn: lsn,
        };
        file.write_at(&header.encode(), 0)
            .map_err(io_err("writing", &path))?;
        file.sync_data().map_err(io_err("syncing", &path))?;
        backend
            .sync_dir(dir)
            .map_err(io_err("syncing directory", dir))?;
        active = Some(SegFile {
            id,
            path,
            file,
            map: Arc::new(Mapped::owned(Vec::new())),
            header: Ok(header),
            walk: None,
        });
    }
    let Some(active) = active else {
        return Err(StoreError::misuse("no active segment after recovery"));
    };

    // 11. Views for readers and the replay list.
    let mut views = Vec::new();
    let mut replay = Vec::new();
    for f in files {
        let prev_lsn = f.header.as_ref().map_or(0, |h| h.prev_lsn);
        let walk = f.walk.unwrap_or_default();
        report.segments.push(f.path.clone());
        report.bytes += f.map.len() as u64;
        report.batches += walk.frames_above;
        if walk.last_lsn > replay_from {
            let start = index_start(&walk.index, replay_from, SEGMENT_HEADER_LEN as u64);
            replay.push((f.map.clone(), start as usize));
        }
        views.push(SegView {
            id: f.id,
            path: f.path,
            prev_lsn,
            last_lsn: walk.last_lsn,
            synced_len: f.map.len() as u64,
            sealed: true,
            file: f.file,
            // Recovery reads through the map (kept alive by `replay` until the
            // caller drops the Recovery); afterwards history reads use positioned
            // reads, so a large log does not stay resident in the server's memory.
            map: None,
            index: walk.index,
        });
    }
    report.segments.push(active.path.clone());
    report.bytes += SEGMENT_HEADER_LEN as u64;
    views.push(SegView {
        id: active.id,
        path: active.path,
        prev_lsn: lsn,
        last_lsn: lsn,
        synced_len: SEGMENT_HEADER_LEN as u64,
        sealed: false,
        file: active.file,
        map: None,
        index: Vec::new(),
    });

    report.replay_from = Lsn(replay_from);
    report.last_lsn = Lsn(lsn);
    let snapshot = base.map(|b| {
        report.snapshot = Some(b.path.clone());
        report.bytes += b.map.len() as u64;
        (b.id, b.path, b.map, b.chunks)
    });
    let recovery = Recovery {
        replay_from,
        last_lsn: lsn,
        snapshot: snapshot.as_ref().map(|s| s.2.clone()),
        segments: replay,
        report,
    };
    Ok(Recovered {
        recovery,
        segments: views,
        active_len: SEGMENT_HEADER_LEN as u64,
        last_lsn: lsn,
        next_segment_id: max_seg + 1,
        next_snapshot_id: max_snap + 1,
        replay_from,
        snapshot: snapshot.map(|s| (s.0, s.1)),
    })
}

fn truncate(file: &dyn BackendFile, path: &Path, len: u64) -> Result<(), StoreError> {
    file.set_len(len).map_err(io_err("truncating", path))?;
    file.sync_data().map_err(io_err("syncing", path))
}
