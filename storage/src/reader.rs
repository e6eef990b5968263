//! History reads from other threads: [`StoreReader::read_after`] returns the committed
//! batches after an LSN, from the segments still on disk.
//!
//! The writer publishes a [`Shared`] view of its segments at every `sync`, so readers
//! only ever see durable data. A reader holds the lock just long enough to clone the
//! handles it needs; it then reads sealed segments through their memory map and the
//! active segment with positioned reads, never past the last synced offset.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{BackendFile, Mapped};
use crate::error::StoreError;
use crate::frame::{self, FrameHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::segment::index_start;
use crate::Lsn;

/// The answer to a history read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum History {
    /// Committed batches with LSNs greater than the one asked for, in order.
    Batches {
        /// The batches (empty when there is nothing newer).
        batches: Vec<(Lsn, Vec<u8>)>,
        /// True when the byte budget stopped the read before the last synced batch:
        /// ask again after the last LSN returned.
        more: bool,
    },
    /// The LSN asked for is older than the retained log. `oldest_available` is the
    /// smallest LSN that `read_after` accepts now.
    Truncated {
        /// The oldest LSN that can be passed to `read_after`.
        oldest_available: Lsn,
    },
}

/// What the writer shares with readers, updated at each sync.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Segments, oldest first; the last one is the active segment.
    pub segments: Vec<SegView>,
    /// Every batch up to this LSN is durable and readable.
    pub synced_lsn: u64,
}

/// One segment as readers see it.
#[derive(Clone, Debug)]
pub(crate) struct SegView {
    pub id: u64,
    pub path: PathBuf,
    pub prev_lsn: u64,
    /// LSN of the last synced frame (`prev_lsn` if none).
    pub last_lsn: u64,
    /// Bytes readers may look at: everything up to here is synced whole frames.
    pub synced_len: u64,
    /// True once rotated out and synced: the file never changes again.
    pub sealed: bool,
    pub file: Arc<dyn BackendFile>,
    /// Memory map of a sealed segment.
    pub map: Option<Arc<Mapped>>,
    /// Sparse (lsn, offset) index of synced frames.
    pub index: Vec<(u64, u64)>,
}

pub(crate) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // The writer never panics while holding the lock with the view half-updated, so a
    // poisoned mutex still holds a consistent view.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cheap, cloneable handle for history reads from any thread.
#[derive(Clone, Debug)]
pub struct StoreReader {
    pub(crate) shared: Arc<Mutex<Shared>>,
}

/// A segment range to read, cloned out of [`Shared`].
struct Source {
    path: PathBuf,
    file: Arc<dyn BackendFile>,
    map: Option<Arc<Mapped>>,
    start: u64,
    end: u64,
}

impl StoreReader {
    /// The highest LSN readers can see (the last synced batch).
    pub fn synced_lsn(&self) -> Lsn {
        Lsn(lock(&self.shared).synced_lsn)
    }

    /// Committed (synced) batches with LSNs greater than `after`, in order, up to about
    /// `max_bytes` of payload (always at least one batch if any is newer).
    pub fn read_after(&self, after: Lsn, max_bytes: usize) -> Result<History, StoreError> {
        let sources = {
            let s = lock(&self.shared);
            let Some(first) = s.segments.first() else {
                return Ok(History::Batches {
                    batches: Vec::new(),
                    more: false,
                });
            };
            if after.0 < first.prev_lsn {
                return Ok(History::Truncated {
                    oldest_available: Lsn(first.prev_lsn),
                });
            }
            if after.0 >= s.synced_lsn {
                return Ok(History::Batches {
                    batches: Vec::new(),
                    more: false,
                });
            }
            let k = s
                .segments
                .partition_point(|v| v.prev_lsn <= after.0)
                .saturating_sub(1);
            let mut sources = Vec::new();
            for (i, v) in s.segments.iter().enumerate().skip(k) {
                let start = if i == k {
                    index_start(&v.index, after.0, SEGMENT_HEADER_LEN as u64)
                } else {
                    SEGMENT_HEADER_LEN as u64
                };
                sources.push(Source {
                    path: v.path.clone(),
                    file: v.file.clone(),
                    map: v.map.clone(),
                    start,
                    end: v.synced_len,
                });
            }
            sources
        };
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for src in &sources {
            let stop = read_frames(src, &mut |lsn, payload| {
                if lsn <= after.0 {
                    return true;
                }
                if !batches.is_empty() && bytes.saturating_add(payload.len()) > max_bytes {
                    more = true;
                    return false;
                }
                bytes += payload.len();
                batches.push((Lsn(lsn), payload.to_vec()));
                true
            })?;
            if stop {
                break;
            }
        }
        Ok(History::Batches { batches, more })
    }
}

/// Calls `f` for each frame of `src` until it returns false; returns true if stopped.
fn read_frames(src: &Source, f: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<bool, StoreError> {
    let mut window = Window::new(src);
    let mut pos = src.start;
    while pos < src.end {
        let corrupt = |why: String| StoreError::corrupt(&src.path, pos, why);
        let head = window.get(pos, FRAME_HEADER_LEN)?;
        let header = match FrameHeader::decode(head) {
            Ok(Some(h)) => h,
            Ok(None) => return Err(corrupt("incomplete frame in synced data".into())),
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let whole = window.get(pos, header.frame_len())?;
        let (frame, used) = match frame::decode(whole) {
            Ok(Some(x)) => x,
            Ok(None) => return Err(corrupt("incomplete frame in synced data".into())),
            Err(e) => return Err(corrupt(e.to_string())),
        };
        if !f(frame.lsn, frame.payload) {
            return Ok(true);
        }
        pos += used as u64;
    }
    Ok(false)
}

/// Byte access to a segment range: the memory map if there is one, else positioned
/// reads through a read-ahead buffer.
struct Window<'a> {
    src: &'a Source,
    buf: Vec<u8>,
    buf_start: u64,
}

/// How much a positioned read fetches at once.
const READ_AHEAD: usize = 256 << 10;

impl<'a> Window<'a> {
    fn new(src: &'a Source) -> Self {
        Window {
            src,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    /// At least `n` bytes at `pos` (fewer only if the range ends first).
    fn get(&mut self, pos: u64, n: usize) -> Result<&[u8], StoreError> {
        let end = self.src.end;
        let want_end = pos.saturating_add(n as u64).min(end);
        if let Some(map) = &self.src.map {
            let (a, b) = (pos as usize, want_end as usize);
            return map.get(a..b).ok_or_else(|| {
                StoreError::corrupt(
                    &self.src.path,
                    pos,
                    "segment shorter than its synced length",
                )
            });
        }
        let have_end = self.buf_start + self.buf.len() as u64;
        if pos < self.buf_start || want_end > have_end {
            let read_end = pos.saturating_add(n.max(READ_AHEAD) as u64).min(end);
            let len = usize::try_from(read_end.saturating_sub(pos)).unwrap_or(0);
            self.buf.resize(len, 0);
            self.buf_start = pos;
            self.src
                .file
                .read_at(&mut self.buf, pos)
                .map_err(|e| StoreError::io("reading", &self.src.path, e))?;
        }
        let a = (pos - self.buf_start) as usize;
        let b = (want_end - self.buf_start) as usize;
        Ok(self.buf.get(a..b).unwrap_or(&[]))
    }
}
