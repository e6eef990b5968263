//! The write side: [`Store`] appends batches to the active segment, syncs them,
//! rotates segments, and installs snapshots.
//!
//! The write path, in order (details in `docs/storage-format.md`, "Commit protocol"):
//! 1. `append` encodes the frame (with the current synced-LSN watermark) into a
//!    write-combining buffer; the buffer goes to the active segment with one positioned
//!    write when it passes [`FLUSH_BYTES`], at rotation, and at `sync`.
//! 2. When the active segment is full, `append` seals it and creates the next segment
//!    (header written, nothing synced).
//! 3. `sync` writes out the buffer, `fdatasync`s every sealed-but-unsynced segment and
//!    then the active one, `fsync`s the directory if files were created or removed,
//!    then publishes the new synced length and LSN to readers.
//!
//! Any I/O error on this path poisons the store: later `append`/`sync` calls return
//! [`StoreError::Poisoned`] until it is reopened, because after a failed write or
//! fsync nobody can say what is on disk. Readers keep working.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::{Backend, BackendFile, FileBackend};
use crate::error::StoreError;
use crate::frame::{self, SegmentHeader, MAX_BATCH_BYTES, SEGMENT_HEADER_LEN};
use crate::options::{Lsn, StoreOptions};
use crate::reader::{lock, SegView, Shared, StoreReader};
use crate::recovery::{recover, Recovery};
use crate::segment::{segment_name, snapshot_name, snapshot_tmp_name, INDEX_INTERVAL};
use crate::snapshot::{FinishedSnapshot, SnapshotWriter};

/// The write-combining buffer is written out once it holds this many bytes.
pub const FLUSH_BYTES: usize = 256 << 10;
/// Zeros are written this far ahead of the data (at most an eighth of a segment), so
/// most syncs overwrite allocated blocks: `fdatasync` then has no file size change to
/// commit to the file system journal, which makes it several times cheaper on ext4.
pub const PREALLOC_BYTES: u64 = 1 << 20;

/// Distinguishes stores in one process, so a snapshot cannot be installed into the
/// wrong one.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// The segment being appended to, or one sealed but not yet synced.
struct Segment {
    id: u64,
    path: PathBuf,
    file: Arc<dyn BackendFile>,
    /// LSN of the last frame (or the segment's `prev_lsn`).
    last_lsn: u64,
    /// Logical length, including bytes still in the write buffer.
    len: u64,
    /// Bytes handed to the file.
    flushed_len: u64,
    /// Bytes known durable.
    synced_len: u64,
    /// The file holds zeros written by us from the data's end up to here.
    prealloc_end: u64,
    /// Index entries not yet published to readers.
    index: Vec<(u64, u64)>,
    last_indexed: Option<u64>,
}

/// The store: a single owner appends, syncs and installs snapshots; readers use
/// [`StoreReader`] handles from [`Store::reader`].
pub struct Store {
    pub(crate) backend: Arc<dyn Backend>,
    opts: StoreOptions,
    _lock: Box<dyn fmt::Debug + Send + Sync>,
    token: u64,
    active: Segment,
    /// Rotated out since the last sync; synced (in order) before the active segment.
    sealing: Vec<Segment>,
    /// Encoded frames not yet written; they belong at `active.flushed_len`.
    buf: Vec<u8>,
    last_lsn: u64,
    synced_lsn: u64,
    /// Files were created or removed since the directory was last fsynced.
    dir_dirty: bool,
    poisoned: bool,
    next_segment_id: u64,
    next_snapshot_id: u64,
    pub(crate) replay_from: u64,
    pub(crate) snapshot: Option<(u64, PathBuf)>,
    pub(crate) shared: Arc<Mutex<Shared>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.opts.dir)
            .field("active", &self.active.path)
            .field("last_lsn", &self.last_lsn)
            .field("synced_lsn", &self.synced_lsn)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `opts.dir` on the real file system, recovering
    /// what is there. Returns the store and what to replay.
    pub fn open(opts: StoreOptions) -> Result<(Store, Recovery), StoreError> {
        Self::open_with_backend(opts, Arc::new(FileBackend))
    }

    /// Like [`Store::open`], on any [`Backend`] (tests use [`crate::sim::SimBackend`]).
    pub fn open_with_backend(
        opts: StoreOptions,
        backend: Arc<dyn Backend>,
    ) -> Result<(Store, Recovery), StoreError> {
        let dir = opts.dir.clone();
        backend
            .create_dir_all(&dir)
            .map_err(|e| StoreError::io("creating directory", &dir, e))?;
        let guard = match backend.lock(&dir) {
            Ok(g) => g,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(StoreError::Locked { dir })
            }
            Err(e) => return Err(StoreError::io("locking", &dir, e)),
        };
        let r = recover(&*backend, &opts)?;
        let Some(av) = r.segments.last() else {
            return Err(StoreError::misuse("recovery produced no active segment"));
        };
        let active = Segment {
            id: av.id,
            path: av.path.clone(),
            file: av.file.clone(),
            last_lsn: r.last_lsn,
            len: r.active_len,
            flushed_len: r.active_len,
            synced_len: r.active_len,
            prealloc_end: r.active_len,
            index: Vec::new(),
            last_indexed: None,
        };
        let shared = Shared {
            segments: r.segments,
            synced_lsn: r.last_lsn,
        };
        let store = Store {
            backend,
            opts,
            _lock: guard,
            token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
            active,
            sealing: Vec::new(),
            buf: Vec::with_capacity(FLUSH_BYTES + (64 << 10)),
            last_lsn: r.last_lsn,
            synced_lsn: r.last_lsn,
            dir_dirty: false,
            poisoned: false,
            next_segment_id: r.next_segment_id,
            next_snapshot_id: r.next_snapshot_id,
            replay_from: r.replay_from,
            snapshot: r.snapshot,
            shared: Arc::new(Mutex::new(shared)),
        };
        Ok((store, r.recovery))
    }

    /// The options the store was opened with (the runtime reads `sync` from here).
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// LSN of the last appended batch (synced or not).
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.last_lsn)
    }

    /// LSN of the last batch made durable by [`Store::sync`].
    pub fn synced_lsn(&self) -> Lsn {
        Lsn(self.synced_lsn)
    }

    /// LSN after which replay starts, per the installed snapshot (0 without one).
    pub fn replay_from(&self) -> Lsn {
        Lsn(self.replay_from)
    }

    /// True after an I/O error: appends and syncs are refused until reopen.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// A handle for history reads from other threads.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            shared: self.shared.clone(),
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.poisoned {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Runs `f`; an error poisons the store.
    fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let r = f(self);
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    /// Appends one batch atomically (recovery sees all of it or none). `lsn` must be
    /// greater than [`Store::last_lsn`]. Not durable until [`Store::sync`] returns.
    pub fn append(&mut self, lsn: Lsn, payload: &[u8]) -> Result<(), StoreError> {
        self.check()?;
        if lsn.0 <= self.last_lsn {
            return Err(StoreError::OutOfOrder {
                last: Lsn(self.last_lsn),
                got: lsn,
            });
        }
        if payload.len() > MAX_BATCH_BYTES {
            return Err(StoreError::TooLarge {
                len: payload.len() as u64,
                max: MAX_BATCH_BYTES as u64,
            });
        }
        let framed = frame::framed_len(payload.len()) as u64;
        if self.active.len > SEGMENT_HEADER_LEN as u64
            && self.active.len + framed > self.opts.segment_bytes
        {
            self.guard(Self::rotate)?;
        }
        let off = self.active.len;
        frame::encode(&mut self.buf, lsn.0, self.synced_lsn, payload);
        let a = &mut self.active;
        if a.last_indexed.is_none_or(|at| off - at >= INDEX_INTERVAL) {
            a.index.push((lsn.0, off));
            a.last_indexed = Some(off);
        }
        a.len += framed;
        a.last_lsn = lsn.0;
        self.last_lsn = lsn.0;
        if self.buf.len() >= FLUSH_BYTES {
            self.guard(Self::flush)?;
        }
        Ok(())
    }

    /// Hands the write-combining buffer to the active segment (no sync), and keeps
    /// zeros allocated ahead of it.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let a = &mut self.active;
        a.file
            .write_at(&self.buf, a.flushed_len)
            .map_err(|e| StoreError::io("writing", &a.path, e))?;
        a.flushed_len += self.buf.len() as u64;
        self.buf.clear();
        if self.buf.capacity() > 4 * FLUSH_BYTES {
            self.buf = Vec::with_capacity(FLUSH_BYTES + (64 << 10));
        }
        let step = PREALLOC_BYTES.min(self.opts.segment_bytes / 8).max(4096);
        if a.flushed_len + step / 2 > a.prealloc_end {
            let from = a.prealloc_end.max(a.flushed_len);
            let to = (a.flushed_len + step).min(self.opts.segment_bytes.max(a.flushed_len));
            if to > from {
                let zeros = vec![0u8; (to - from) as usize];
                a.file
                    .write_at(&zeros, from)
                    .map_err(|e| StoreError::io("preallocating", &a.path, e))?;
                a.prealloc_end = to;
            }
        }
        Ok(())
    }

    /// Seals the active segment and starts the next one. Nothing is synced here: the
    /// next `sync` fsyncs the sealed segment, the new one and the directory, in order.
    fn rotate(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        let id = self.next_segment_id;
        let path = self.opts.dir.join(segment_name(id));
        let file = self
            .backend
            .create(&path)
            .map_err(|e| StoreError::io("creating", &path, e))?;
        self.dir_dirty = true;
        self.next_segment_id += 1;
        let header = SegmentHeader {
            segment_id: id,
            prev_lsn: self.last_lsn,
        };
        file.write_at(&header.encode(), 0)
            .map_err(|e| StoreError::io("writing", &path, e))?;
        let len = SEGMENT_HEADER_LEN as u64;
        let next = Segment {
            id,
            path: path.clone(),
            file: file.clone(),
            last_lsn: self.last_lsn,
            len,
            flushed_len: len,
            synced_len: 0,
            prealloc_end: len,
            index: Vec::new(),
            last_indexed: None,
        };
        let old = std::mem::replace(&mut self.active, next);
        // A sealed segment ends at its last frame: cut the preallocated zeros. The
        // next sync makes the new length durable along with the data.
        if old.prealloc_end > old.len {
            old.file
                .set_len(old.len)
                .map_err(|e| StoreError::io("truncating", &old.path, e))?;
        }
        self.sealing.push(old);
        let mut s = lock(&self.shared);
        s.segments.push(SegView {
            id,
            path,
            prev_lsn: self.last_lsn,
            last_lsn: self.last_lsn,
            synced_len: 0,
            sealed: false,
            file,
            map: None,
            index: Vec::new(),
        });
        Ok(())
    }

    /// Makes every appended batch durable. When it returns `Ok`, all of them survive a
    /// power cut and readers can see them.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.check()?;
        let idle = self.synced_lsn == self.last_lsn
            && self.sealing.is_empty()
            && !self.dir_dirty
            && self.active.synced_len == self.active.len;
        if idle {
            return Ok(());
        }
        self.guard(Self::sync_inner)
    }

    fn sync_inner(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        for seg in &self.sealing {
            seg.file
                .sync_data()
                .map_err(|e| StoreError::io("syncing", &seg.path, e))?;
        }
        let a = &self.active;
        if a.synced_len < a.len {
            a.file
                .sync_data()
                .map_err(|e| StoreError::io("syncing", &a.path, e))?;
        }
        if self.dir_dirty {
            self.backend
                .sync_dir(&self.opts.dir)
                .map_err(|e| StoreError::io("syncing directory", &self.opts.dir, e))?;
            self.dir_dirty = false;
        }
        self.synced_lsn = self.last_lsn;
        self.active.synced_len = self.active.len;
        let mut s = lock(&self.shared);
        for seg in self.sealing.drain(..) {
            publish(&mut s, seg, true);
        }
        let a = &mut self.active;
        if let Some(v) = s.segments.iter_mut().rev().find(|v| v.id == a.id) {
            v.synced_len = a.len;
            v.last_lsn = a.last_lsn;
            v.index.append(&mut a.index);
        }
        s.synced_lsn = self.synced_lsn;
        Ok(())
    }

    /// Syncs, then drops the store (releasing the directory lock).
    pub fn close(mut self) -> Result<(), StoreError> {
        self.sync()
    }

    /// Starts a snapshot whose replay begins after `replay_from`: the engine writes its
    /// live state as chunks, on any thread, while appends go on. `replay_from` must not
    /// be past [`Store::last_lsn`], and everything up to it must be synced before the
    /// snapshot is installed. Seals the active segment so that the segments the
    /// snapshot covers can later be deleted whole.
    pub fn begin_snapshot(&mut self, replay_from: Lsn) -> Result<SnapshotWriter, StoreError> {
        self.check()?;
        if replay_from.0 > self.last_lsn {
            return Err(StoreError::misuse(format!(
                "snapshot replay_from {replay_from} is past the last appended lsn {}",
                self.last_lsn
            )));
        }
        if replay_from.0 < self.replay_from {
            return Err(StoreError::misuse(format!(
                "snapshot replay_from {replay_from} is older than the installed snapshot's {}",
                self.replay_from
            )));
        }
        if self.active.len > SEGMENT_HEADER_LEN as u64 {
            self.guard(Self::rotate)?;
        }
        let id = self.next_snapshot_id;
        self.next_snapshot_id += 1;
        let tmp = self.opts.dir.join(snapshot_tmp_name(id));
        let path = self.opts.dir.join(snapshot_name(id));
        let file = self
            .backend
            .create(&tmp)
            .map_err(|e| StoreError::io("creating snapshot", &tmp, e))?;
        Ok(SnapshotWriter::new(
            self.backend.clone(),
            file,
            tmp,
            path,
            id,
            replay_from.0,
            self.token,
        ))
    }

    /// Makes a finished snapshot the recovery base: syncs the log, renames the snapshot
    /// into place and fsyncs the directory; then deletes the previous snapshot and the
    /// segments it covers that are outside the history retention window.
    pub fn install_snapshot(&mut self, mut finished: FinishedSnapshot) -> Result<(), StoreError> {
        self.check()?;
        if finished.token != self.token {
            return Err(StoreError::misuse(
                "snapshot was begun on a different store",
            ));
        }
        if self
            .snapshot
            .as_ref()
            .is_some_and(|(id, _)| finished.id <= *id)
            || finished.replay_from < self.replay_from
        {
            return Err(StoreError::misuse(
                "snapshot is older than the installed one",
            ));
        }
        self.sync()?;
        self.guard(|s| {
            s.backend
                .rename(&finished.tmp, &finished.path)
                .map_err(|e| StoreError::io("renaming", &finished.tmp, e))?;
            finished.installed = true;
            s.backend
                .sync_dir(&s.opts.dir)
                .map_err(|e| StoreError::io("syncing directory", &s.opts.dir, e))?;
            let old = s.snapshot.replace((finished.id, finished.path.clone()));
            s.replay_from = finished.replay_from;
            if let Some((_, old)) = old {
                s.backend
                    .remove(&old)
                    .map_err(|e| StoreError::io("removing", &old, e))?;
                s.dir_dirty = true;
            }
            s.collect_garbage()
        })
    }

    /// Deletes the oldest segments whose every batch is in the installed snapshot and
    /// which lie outside the history retention window.
    fn collect_garbage(&mut self) -> Result<(), StoreError> {
        let doomed: Vec<PathBuf> = {
            let mut s = lock(&self.shared);
            let total: u64 = s.segments.iter().map(|v| v.synced_len).sum();
            let mut newer = total;
            let mut n = 0;
            let last = s.segments.len().saturating_sub(1);
            for v in &s.segments[..last] {
                newer -= v.synced_len;
                let covered = v.sealed && v.last_lsn <= self.replay_from;
                if covered && newer >= self.opts.history_retention_bytes {
                    n += 1;
                } else {
                    break;
                }
            }
            s.segments.drain(..n).map(|v| v.path).collect()
        };
        for path in &doomed {
            self.backend
                .remove(path)
                .map_err(|e| StoreError::io("removing", path, e))?;
            self.dir_dirty = true;
        }
        Ok(())
    }
}

/// Publishes a segment's synced state (and, once sealed, its memory map) to readers.
fn publish(s: &mut Shared, mut seg: Segment, sealed: bool) {
    let Some(v) = s.segments.iter_mut().find(|v| v.id == seg.id) else {
        return;
    };
    v.synced_len = seg.len;
    v.last_lsn = seg.last_lsn;
    v.index.append(&mut seg.index);
    if sealed && !v.sealed {
        v.sealed = true;
        // A failed map only costs speed: readers fall back to positioned reads.
        v.map = seg.file.map().ok().map(Arc::new);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Hand buffered frames to the OS so a clean exit without `sync` still leaves
        // them in the page cache; durability needs `sync`.
        if !self.poisoned && self.flush().is_ok() && self.active.prealloc_end > self.active.len {
            let _ = self.active.file.set_len(self.active.len);
        }
    }
}
