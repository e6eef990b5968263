//! Snapshot files: the engine's live state as a sequence of opaque chunks, tagged with
//! the LSN replay must start after. Written under a temporary name by a
//! [`SnapshotWriter`] (on any thread), fsynced by [`SnapshotWriter::finish`], and made
//! the recovery base by [`crate::Store::install_snapshot`] (rename + directory fsync).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{Backend, BackendFile, Mapped};
use crate::error::StoreError;
use crate::frame::align_up;
use crate::Lsn;

/// First eight bytes of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"TPSNAPSH";
/// Magic of the footer that ends a complete snapshot.
pub const SNAPSHOT_END_MAGIC: [u8; 8] = *b"TPSNPEND";
/// Version of the snapshot layout written by this code.
pub const SNAPSHOT_VERSION: u16 = 1;
/// Size of the snapshot header; the first chunk starts here.
pub const SNAPSHOT_HEADER_LEN: usize = 32;
/// Size of a chunk header (length, checksum).
pub const CHUNK_HEADER_LEN: usize = 8;
/// Size of the footer.
pub const SNAPSHOT_FOOTER_LEN: usize = 32;
/// Largest chunk (256 MiB).
pub const MAX_CHUNK_BYTES: usize = 256 << 20;
/// A chunk length of this value marks the footer.
const END_MARK: u32 = u32::MAX;
/// The writer buffers this much before a positioned write.
const WRITE_BUFFER: usize = 1 << 20;

fn header_bytes(replay_from: u64) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut b = [0u8; SNAPSHOT_HEADER_LEN];
    b[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    b[8..10].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    b[10..12].copy_from_slice(&(SNAPSHOT_HEADER_LEN as u16).to_le_bytes());
    b[16..24].copy_from_slice(&replay_from.to_le_bytes());
    let crc = crc32fast::hash(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

fn footer_bytes(chunks: u64) -> [u8; SNAPSHOT_FOOTER_LEN] {
    let mut b = [0u8; SNAPSHOT_FOOTER_LEN];
    b[0..4].copy_from_slice(&END_MARK.to_le_bytes());
    b[8..16].copy_from_slice(&SNAPSHOT_END_MAGIC);
    b[16..24].copy_from_slice(&chunks.to_le_bytes());
    let crc = crc32fast::hash(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

fn chunk_crc(len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// One item of a snapshot body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item<'a> {
    Chunk(&'a [u8]),
    End { chunks: u64 },
}

/// Decodes the chunk or footer at the start of `buf`. `Ok(None)`: incomplete.
pub(crate) fn decode_item(buf: &[u8]) -> Result<Option<(Item<'_>, usize)>, String> {
    let Some(len) = u32_at(buf, 0) else {
        return Ok(None);
    };
    if len == END_MARK {
        let Some(f) = buf.get(..SNAPSHOT_FOOTER_LEN) else {
            return Ok(None);
        };
        if Some(crc32fast::hash(&f[0..28])) != u32_at(f, 28) {
            return Err("snapshot footer checksum mismatch".into());
        }
        if f[8..16] != SNAPSHOT_END_MAGIC {
            return Err("snapshot footer magic mismatch".into());
        }
        let chunks = u64_at(f, 16).unwrap_or(0);
        return Ok(Some((Item::End { chunks }, SNAPSHOT_FOOTER_LEN)));
    }
    if len as usize > MAX_CHUNK_BYTES {
        return Err(format!(
            "snapshot chunk length {len} exceeds the limit of {MAX_CHUNK_BYTES}"
        ));
    }
    let total = CHUNK_HEADER_LEN + align_up(len as usize);
    let Some(payload) = buf.get(CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + len as usize) else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    if Some(chunk_crc(len, payload)) != u32_at(buf, 4) {
        return Err("snapshot chunk checksum mismatch".into());
    }
    Ok(Some((Item::Chunk(payload), total)))
}

/// Checks a whole snapshot file; returns `(replay_from, chunk count)`.
pub(crate) fn validate(data: &[u8], path: &Path) -> Result<(u64, u64), StoreError> {
    let corrupt = |off: usize, why: String| StoreError::corrupt(path, off as u64, why);
    let h = data
        .get(..SNAPSHOT_HEADER_LEN)
        .ok_or_else(|| corrupt(0, "snapshot shorter than its header".into()))?;
    if h[0..8] != SNAPSHOT_MAGIC {
        return Err(corrupt(0, "not a snapshot file (bad magic)".into()));
    }
    if Some(crc32fast::hash(&h[0..28])) != u32_at(h, 28) {
        return Err(corrupt(0, "snapshot header checksum mismatch".into()));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != SNAPSHOT_VERSION {
        return Err(corrupt(
            0,
            format!("unsupported snapshot version {version}"),
        ));
    }
    let replay_from = u64_at(h, 16).unwrap_or(0);
    let mut pos = SNAPSHOT_HEADER_LEN;
    let mut chunks = 0u64;
    loop {
        let rest = data.get(pos..).unwrap_or(&[]);
        match decode_item(rest) {
            Ok(Some((Item::Chunk(_), used))) => {
                chunks += 1;
                pos += used;
            }
            Ok(Some((Item::End { chunks: n }, used))) => {
                if n != chunks {
                    return Err(corrupt(
                        pos,
                        format!("snapshot footer counts {n} chunks, file has {chunks}"),
                    ));
                }
                if pos + used != data.len() {
                    return Err(corrupt(
                        pos + used,
                        "bytes after the snapshot footer".into(),
                    ));
                }
                return Ok((replay_from, chunks));
            }
            Ok(None) => return Err(corrupt(pos, "snapshot ends without its footer".into())),
            Err(why) => return Err(corrupt(pos, why)),
        }
    }
}

/// A validated, installed snapshot file, held in memory (mapped) during recovery.
#[derive(Debug)]
pub(crate) struct SnapshotImage {
    pub map: Arc<Mapped>,
    pub replay_from: u64,
    pub chunks: u64,
    pub id: u64,
    pub path: PathBuf,
}

/// Opens, maps and validates a snapshot file.
pub(crate) fn load(
    backend: &dyn Backend,
    path: &Path,
    id: u64,
) -> Result<SnapshotImage, StoreError> {
    let file = backend
        .open(path)
        .map_err(|e| StoreError::io("opening snapshot", path, e))?;
    let map = file
        .map()
        .map_err(|e| StoreError::io("mapping snapshot", path, e))?;
    let (replay_from, chunks) = validate(&map, path)?;
    Ok(SnapshotImage {
        map: Arc::new(map),
        replay_from,
        chunks,
        id,
        path: path.to_path_buf(),
    })
}

/// Writes one snapshot: [`SnapshotWriter::write_chunk`] as often as needed, then
/// [`SnapshotWriter::finish`]. It owns its temporary file and shares nothing with the
/// [`crate::Store`], so it can run on another thread while appends go on. Dropped
/// unfinished, it removes its temporary file.
pub struct SnapshotWriter {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) file: Arc<dyn BackendFile>,
    pub(crate) tmp: PathBuf,
    pub(crate) path: PathBuf,
    pub(crate) id: u64,
    pub(crate) replay_from: u64,
    pub(crate) token: u64,
    pub(crate) buf: Vec<u8>,
    pub(crate) offset: u64,
    pub(crate) chunks: u64,
    pub(crate) done: bool,
}

impl fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("tmp", &self.tmp)
            .field("replay_from", &self.replay_from)
            .field("chunks", &self.chunks)
            .finish()
    }
}

impl SnapshotWriter {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        file: Arc<dyn BackendFile>,
        tmp: PathBuf,
        path: PathBuf,
        id: u64,
        replay_from: u64,
        token: u64,
    ) -> Self {
        let mut buf = Vec::with_capacity(WRITE_BUFFER);
        buf.extend_from_slice(&header_bytes(replay_from));
        SnapshotWriter {
            backend,
            file,
            tmp,
            path,
            id,
            replay_from,
            token,
            buf,
            offset: 0,
            chunks: 0,
            done: false,
        }
    }

    /// Replay after loading this snapshot starts after this LSN.
    pub fn replay_from(&self) -> Lsn {
        Lsn(self.replay_from)
    }

    /// Appends one opaque chunk of engine state.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if chunk.len() > MAX_CHUNK_BYTES {
            return Err(StoreError::TooLarge {
                len: chunk.len() as u64,
                max: MAX_CHUNK_BYTES as u64,
            });
        }
        let len = chunk.len() as u32;
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf
            .extend_from_slice(&chunk_crc(len, chunk).to_le_bytes());
        self.buf.extend_from_slice(chunk);
        let pad = align_up(chunk.len()) - chunk.len();
        self.buf.extend_from_slice(&[0u8; 8][..pad]);
        self.chunks += 1;
        if self.buf.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_at(&self.buf, self.offset)
            .map_err(|e| StoreError::io("writing snapshot", &self.tmp, e))?;
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        if self.buf.capacity() > 4 * WRITE_BUFFER {
            self.buf = Vec::with_capacity(WRITE_BUFFER);
        }
        Ok(())
    }

    /// Writes the footer and fsyncs the temporary file. The result is installed with
    /// [`crate::Store::install_snapshot`].
    pub fn finish(mut self) -> Result<FinishedSnapshot, StoreError> {
        self.buf.extend_from_slice(&footer_bytes(self.chunks));
        self.flush()?;
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("syncing snapshot", &self.tmp, e))?;
        self.done = true;
        Ok(FinishedSnapshot {
            backend: self.backend.clone(),
            tmp: self.tmp.clone(),
            path: self.path.clone(),
            id: self.id,
            replay_from: self.replay_from,
            token: self.token,
            bytes: self.offset,
            installed: false,
        })
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.backend.remove(&self.tmp);
        }
    }
}

/// A complete, durable snapshot under its temporary name, waiting for
/// [`crate::Store::install_snapshot`]. Dropped uninstalled, it removes its file.
pub struct FinishedSnapshot {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) tmp: PathBuf,
    pub(crate) path: PathBuf,
    pub(crate) id: u64,
    pub(crate) replay_from: u64,
    pub(crate) token: u64,
    pub(crate) bytes: u64,
    pub(crate) installed: bool,
}

impl fmt::Debug for FinishedSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinishedSnapshot")
            .field("path", &self.path)
            .field("replay_from", &self.replay_from)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl FinishedSnapshot {
    /// Replay after loading this snapshot starts after this LSN.
    pub fn replay_from(&self) -> Lsn {
        Lsn(self.replay_from)
    }

    /// Size of the snapshot file in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for FinishedSnapshot {
    fn drop(&mut self) {
        if !self.installed {
            let _ = self.backend.remove(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(chunks: &[&[u8]]) -> Vec<u8> {
        let mut v = header_bytes(17).to_vec();
        for c in chunks {
            let len = c.len() as u32;
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(&chunk_crc(len, c).to_le_bytes());
            v.extend_from_slice(c);
            v.resize(align_up(v.len()), 0);
        }
        v.extend_from_slice(&footer_bytes(chunks.len() as u64));
        v
    }

    #[test]
    fn valid_snapshot_validates() {
        let img = image(&[b"a", b"", b"hello snapshot"]);
        assert_eq!(validate(&img, Path::new("s")).unwrap(), (17, 3));
    }

    #[test]
    fn every_truncation_and_flip_is_rejected() {
        let img = image(&[b"abc", b"defgh"]);
        for cut in 0..img.len() {
            assert!(validate(&img[..cut], Path::new("s")).is_err(), "cut {cut}");
        }
        for i in 0..img.len() {
            let mut b = img.clone();
            b[i] ^= 0x40;
            // Layout: header 0..32, chunk "abc" 32..48 (padding 43..48), chunk "defgh"
            // 48..64 (padding 61..64), footer 64..96. Only padding is unchecked.
            let pad = (43..48).contains(&i) || (61..64).contains(&i);
            assert_eq!(validate(&b, Path::new("s")).is_ok(), pad, "flip at {i}");
        }
    }
}
