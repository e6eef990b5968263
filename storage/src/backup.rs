//! Online backups: a copy of the store as of one synced LSN, taken while
//! appends go on, that is itself a data directory.
//!
//! The owner takes a [`BackupPlan`] ([`Store::backup_plan`], cheap: file
//! handles and lengths), and any thread copies it ([`BackupPlan::write_to`]).
//! The plan holds open handles, so a compaction that deletes a segment
//! meanwhile changes nothing (the file lives until the handle is dropped);
//! sealed segments and snapshots never change, and the active segment is
//! read only up to the length that was synced when the plan was taken. So
//! the copy recovers to exactly the plan's LSN: every batch synced before it,
//! none after.
//!
//! The manifest (`BACKUP`) is written last, after every file is synced: a
//! directory without one is an interrupted backup. It lists each file's
//! length and CRC-32, which [`verify`] checks; recovery then checks every
//! frame on [`restore`].
//!
//! ```text
//! tidepool-backup 1
//! lsn 1234
//! file snapshot-00000000000000000003.snap 40960 1c291ca3
//! file segment-00000000000000000007.log 123456 0a1b2c3d
//! ```
//!
//! [`Store::backup_plan`]: crate::Store::backup_plan

use std::path::Path;
use std::sync::Arc;

use crate::backend::{Backend, BackendFile};
use crate::error::StoreError;
use crate::segment::{classify, FileKind};
use crate::{Lsn, Store, StoreOptions};

/// The manifest's file name.
pub const MANIFEST: &str = "BACKUP";
const MAGIC: &str = "tidepool-backup 1";
/// Bytes copied per read.
const CHUNK: usize = 1 << 20;
/// A backup file is synced every this many bytes. Left to pile up, its
/// dirty pages would be flushed by the log's own fsync (the file system
/// commits them together), stalling every durable write behind the copy.
pub(crate) const SYNC_EVERY: u64 = 4 << 20;

/// What a backup copies.
#[derive(Debug)]
pub struct BackupPlan {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) lsn: Lsn,
    pub(crate) files: Vec<PlannedFile>,
    /// Bytes per second the copy may go at (`None`: as fast as it can).
    pub(crate) max_rate: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct PlannedFile {
    pub name: String,
    pub file: Arc<dyn BackendFile>,
    pub len: u64,
}

/// A finished (or verified) backup: its LSN and files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The store's state in the backup is the state after this batch.
    pub lsn: Lsn,
    /// (name, length, CRC-32) of each file.
    pub files: Vec<(String, u64, u32)>,
}

impl Manifest {
    /// The manifest of the backup in `dir` (not yet checked against its
    /// files: `verify`).
    pub fn read(dir: &Path) -> Result<Manifest, StoreError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            StoreError::io(
                "reading the backup manifest (a directory without one is an unfinished backup)",
                &path,
                e,
            )
        })?;
        Manifest::parse(&text, &path)
    }

    /// Bytes in the backup's files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.1).sum()
    }

    pub(crate) fn render(&self) -> String {
        let mut text = format!("{MAGIC}\nlsn {}\n", self.lsn.0);
        for (name, len, crc) in &self.files {
            text.push_str(&format!("file {name} {len} {crc:08x}\n"));
        }
        text
    }

    pub(crate) fn parse(text: &str, path: &Path) -> Result<Manifest, StoreError> {
        let bad = |line: usize, why: &str| StoreError::corrupt(path, line as u64, why.to_string());
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad(0, "not a Tidepool backup manifest"));
        }
        let lsn = lines
            .next()
            .and_then(|l| l.strip_prefix("lsn "))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad(1, "the second line must be `lsn N`"))?;
        let mut files = Vec::new();
        for (i, line) in lines.enumerate() {
            let parts: Vec<&str> = line.split(' ').collect();
            let entry = match parts.as_slice() {
                ["file", name, len, crc] => len
                    .parse()
                    .ok()
                    .zip(u32::from_str_radix(crc, 16).ok())
                    .map(|(len, crc)| (name.to_string(), len, crc)),
                _ => None,
            };
            let entry = entry.ok_or_else(|| bad(i + 2, "expected `file NAME LENGTH CRC`"))?;
            // Only store files, never a path: a manifest cannot name a file
            // outside its directory.
            if matches!(
                classify(&entry.0),
                FileKind::Other | FileKind::Corrupt { .. }
            ) {
                return Err(bad(i + 2, "names a file that is not a segment or snapshot"));
            }
            files.push(entry);
        }
        Ok(Manifest {
            lsn: Lsn(lsn),
            files,
        })
    }
}

impl BackupPlan {
    /// The LSN the backup recovers to.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Bytes to copy.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len).sum()
    }

    /// Copies at most `bytes_per_sec` (0: no limit), so a backup leaves the
    /// machine's CPU and disk to the server's own writes.
    pub fn with_max_rate(mut self, bytes_per_sec: u64) -> BackupPlan {
        self.max_rate = (bytes_per_sec > 0).then_some(bytes_per_sec);
        self
    }

    /// Copies the plan into `dest`, which must be missing or empty: every
    /// file synced, then the directory, then the manifest. `progress` hears
    /// the bytes copied so far after each chunk.
    pub fn write_to(
        &self,
        dest: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Manifest, StoreError> {
        let backend = &*self.backend;
        let pacer = Pacer::new(self.max_rate);
        ensure_empty(backend, dest)?;
        let mut done = 0u64;
        let mut buf = vec![0u8; CHUNK];
        let mut files = Vec::new();
        for f in &self.files {
            let path = dest.join(&f.name);
            let out = backend
                .create(&path)
                .map_err(|e| StoreError::io("creating backup file", &path, e))?;
            let mut crc = crc32fast::Hasher::new();
            let mut at = 0u64;
            while at < f.len {
                let n = ((f.len - at) as usize).min(CHUNK);
                f.file
                    .read_at(&mut buf[..n], at)
                    .map_err(|e| StoreError::io("reading for backup", &f.name, e))?;
                out.write_at(&buf[..n], at)
                    .map_err(|e| StoreError::io("writing backup file", &path, e))?;
                crc.update(&buf[..n]);
                at += n as u64;
                done += n as u64;
                if at.is_multiple_of(SYNC_EVERY) {
                    out.sync_data()
                        .map_err(|e| StoreError::io("syncing backup file", &path, e))?;
                }
                pacer.pace(done);
                progress(done);
            }
            out.sync_data()
                .map_err(|e| StoreError::io("syncing backup file", &path, e))?;
            files.push((f.name.clone(), f.len, crc.finalize()));
        }
        let manifest = Manifest {
            lsn: self.lsn,
            files,
        };
        backend
            .sync_dir(dest)
            .map_err(|e| StoreError::io("syncing backup directory", dest, e))?;
        write_file(backend, &dest.join(MANIFEST), manifest.render().as_bytes())?;
        backend
            .sync_dir(dest)
            .map_err(|e| StoreError::io("syncing backup directory", dest, e))?;
        Ok(manifest)
    }
}

/// Holds a copy to a rate: `pace(done)` sleeps until `done` bytes are due.
pub(crate) struct Pacer {
    started: std::time::Instant,
    max_rate: Option<u64>,
}

impl Pacer {
    pub(crate) fn new(max_rate: Option<u64>) -> Pacer {
        Pacer {
            started: std::time::Instant::now(),
            max_rate,
        }
    }

    pub(crate) fn pace(&self, done: u64) {
        if let Some(rate) = self.max_rate {
            let due = std::time::Duration::from_secs_f64(done as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

impl Store {
    /// What an online backup of this store copies now: the installed
    /// snapshot and the segments it does not cover, each up to its synced
    /// length. Copy it on any thread ([`BackupPlan::write_to`]).
    pub fn backup_plan(&self) -> Result<BackupPlan, StoreError> {
        let mut files = Vec::new();
        if let Some((_, path)) = &self.snapshot {
            let file = self
                .backend
                .open(path)
                .map_err(|e| StoreError::io("opening snapshot for backup", path, e))?;
            let len = file
                .len()
                .map_err(|e| StoreError::io("reading snapshot length", path, e))?;
            files.push(PlannedFile {
                name: file_name(path),
                file,
                len,
            });
        }
        let shared = crate::reader::lock(&self.shared);
        for seg in &shared.segments {
            // Segments the snapshot covers are kept only for history reads;
            // one just created has no synced header yet.
            let covered = self.snapshot.is_some() && seg.last_lsn <= self.replay_from;
            if covered || seg.synced_len < crate::frame::SEGMENT_HEADER_LEN as u64 {
                continue;
            }
            files.push(PlannedFile {
                name: file_name(&seg.path),
                file: seg.file.clone(),
                len: seg.synced_len,
            });
        }
        Ok(BackupPlan {
            backend: self.backend.clone(),
            lsn: Lsn(shared.synced_lsn),
            files,
            max_rate: None,
        })
    }
}

/// Reads a backup's manifest and checks every file's length and CRC.
pub fn verify(dir: &Path) -> Result<Manifest, StoreError> {
    let manifest = Manifest::read(dir)?;
    for (name, len, crc) in &manifest.files {
        copy_checked(&dir.join(name), None, *len, *crc, &mut |_| {})?;
    }
    Ok(manifest)
}

/// Restores a backup into `data_dir` (missing or empty, or this refuses):
/// checks the manifest, copies each file checking its length and CRC, then
/// opens the result as a store to check that recovery reaches the backup's
/// LSN. `progress` hears the bytes copied so far.
pub fn restore(
    backup: &Path,
    data_dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Manifest, StoreError> {
    let manifest = Manifest::read(backup)?;
    let backend: Arc<dyn Backend> = Arc::new(crate::FileBackend);
    ensure_empty(&*backend, data_dir)?;
    let mut done = 0u64;
    for (name, len, crc) in &manifest.files {
        let out = data_dir.join(name);
        let base = done;
        copy_checked(&backup.join(name), Some(&out), *len, *crc, &mut |n| {
            progress(base + n)
        })?;
        done += len;
    }
    backend
        .sync_dir(data_dir)
        .map_err(|e| StoreError::io("syncing directory", data_dir, e))?;
    check_recovery(data_dir, &manifest)?;
    Ok(manifest)
}

/// Restores the one-file backup `archive` into `data_dir` (missing or
/// empty, or this refuses), checking it as [`restore`] does; `extra` hears
/// the archive's extra files (name, bytes) and may refuse them.
pub fn restore_archive(
    archive: &Path,
    data_dir: &Path,
    progress: &mut dyn FnMut(u64),
    extra: &mut crate::archive::OnExtra<'_>,
) -> Result<Manifest, StoreError> {
    let backend: Arc<dyn Backend> = Arc::new(crate::FileBackend);
    ensure_empty(&*backend, data_dir)?;
    let manifest = crate::archive::read_archive(archive, Some(data_dir), progress, extra)?;
    backend
        .sync_dir(data_dir)
        .map_err(|e| StoreError::io("syncing directory", data_dir, e))?;
    check_recovery(data_dir, &manifest)?;
    Ok(manifest)
}

/// Opens the restored store in `data_dir` and checks that recovery ends at
/// the backup's LSN.
fn check_recovery(data_dir: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    let (store, recovery) = Store::open(StoreOptions::new(data_dir))?;
    let reached = recovery.last_lsn();
    drop(recovery);
    store.close()?;
    if reached != manifest.lsn {
        return Err(StoreError::corrupt(
            data_dir,
            0,
            format!(
                "the restored log ends at lsn {reached}, the backup was taken at lsn {}",
                manifest.lsn
            ),
        ));
    }
    Ok(())
}

/// Reads `from` in chunks, checking its length and CRC against the
/// manifest's, and writes it to `to` (synced) when given.
fn copy_checked(
    from: &Path,
    to: Option<&Path>,
    len: u64,
    crc: u32,
    progress: &mut dyn FnMut(u64),
) -> Result<(), StoreError> {
    let mut input = std::fs::File::open(from).map_err(|e| StoreError::io("opening", from, e))?;
    let (seen, got) = copy_hashed(&mut input, from, to, progress)?;
    if seen != len {
        return Err(StoreError::corrupt(
            from,
            seen.min(len),
            format!("the manifest says {len} bytes, the file has {seen}"),
        ));
    }
    if got != crc {
        return Err(StoreError::corrupt(
            from,
            0,
            "its CRC-32 does not match the backup manifest",
        ));
    }
    Ok(())
}

/// Reads `input` (from `from`, for errors) to its end, writing it to a new
/// file `to` (synced) when given; the bytes read and their CRC-32.
pub(crate) fn copy_hashed(
    input: &mut dyn std::io::Read,
    from: &Path,
    to: Option<&Path>,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, u32), StoreError> {
    use std::io::Write;
    let mut output = match to {
        Some(p) => Some((
            std::fs::File::create_new(p).map_err(|e| StoreError::io("creating", p, e))?,
            p,
        )),
        None => None,
    };
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut seen = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| StoreError::io("reading", from, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        seen += n as u64;
        if let Some((f, p)) = &mut output {
            f.write_all(&buf[..n])
                .map_err(|e| StoreError::io("writing", *p, e))?;
        }
        progress(seen);
    }
    if let Some((f, p)) = output {
        f.sync_all().map_err(|e| StoreError::io("syncing", p, e))?;
    }
    Ok((seen, hasher.finalize()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Creates `dir` if missing; refuses one that holds anything.
fn ensure_empty(backend: &dyn Backend, dir: &Path) -> Result<(), StoreError> {
    backend
        .create_dir_all(dir)
        .map_err(|e| StoreError::io("creating directory", dir, e))?;
    let names = backend
        .list(dir)
        .map_err(|e| StoreError::io("listing", dir, e))?;
    if let Some(first) = names.first() {
        return Err(StoreError::misuse(format!(
            "{} is not empty (it holds {first}{}): back up and restore only into a new or empty directory",
            dir.display(),
            if names.len() > 1 { " and more" } else { "" }
        )));
    }
    Ok(())
}

fn write_file(backend: &dyn Backend, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let out = backend
        .create(path)
        .map_err(|e| StoreError::io("creating", path, e))?;
    out.write_at(bytes, 0)
        .map_err(|e| StoreError::io("writing", path, e))?;
    out.sync_data()
        .map_err(|e| StoreError::io("syncing", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (Store, crate::Recovery) {
        Store::open(StoreOptions::new(dir)).unwrap()
    }

    /// (lsn, payload) of a batch.
    type Batch = (u64, Vec<u8>);

    /// (snapshot chunks, batches) a directory recovers.
    fn contents(dir: &Path) -> (Vec<Vec<u8>>, Vec<Batch>) {
        let (store, r) = open(dir);
        let chunks = r.snapshot_chunks().map(<[u8]>::to_vec).collect();
        let batches = r.batches().map(|(l, b)| (l.0, b.to_vec())).collect();
        drop(r);
        store.close().unwrap();
        (chunks, batches)
    }

    #[test]
    fn a_backup_holds_what_was_synced_when_planned_and_nothing_after() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, copy, restored) = (
            tmp.path().join("data"),
            tmp.path().join("copy"),
            tmp.path().join("restored"),
        );
        let (mut store, _) = open(&data);
        for lsn in 1..=50u64 {
            store.append(Lsn(lsn), &[lsn as u8; 300]).unwrap();
        }
        store.sync().unwrap();
        // A snapshot covering the first 20, then more batches.
        let mut snap = store.begin_snapshot(Lsn(20)).unwrap();
        snap.write_chunk(b"state up to 20").unwrap();
        let snap = snap.finish().unwrap();
        store.install_snapshot(snap).unwrap();
        let plan = store.backup_plan().unwrap();
        assert_eq!(plan.lsn(), Lsn(50));
        // Writes and a compaction after the plan: not in the backup, and the
        // segments the plan holds may be deleted meanwhile.
        for lsn in 51..=60u64 {
            store.append(Lsn(lsn), &[1; 300]).unwrap();
        }
        store.sync().unwrap();
        let mut snap = store.begin_snapshot(Lsn(60)).unwrap();
        snap.write_chunk(b"state up to 60").unwrap();
        store.install_snapshot(snap.finish().unwrap()).unwrap();

        let mut seen = 0;
        let manifest = plan.write_to(&copy, &mut |n| seen = n).unwrap();
        assert_eq!(seen, plan.bytes());
        assert_eq!(manifest.bytes(), plan.bytes());
        assert_eq!(verify(&copy).unwrap(), manifest);
        let restored_manifest = restore(&copy, &restored, &mut |_| {}).unwrap();
        assert_eq!(restored_manifest.lsn, Lsn(50));
        let (chunks, batches) = contents(&restored);
        assert_eq!(chunks, vec![b"state up to 20".to_vec()]);
        let lsns: Vec<u64> = batches.iter().map(|b| b.0).collect();
        assert_eq!(lsns, (21..=50).collect::<Vec<_>>());
        assert!(batches.iter().all(|(l, b)| b == &vec![*l as u8; 300]));
        store.close().unwrap();
    }

    #[test]
    fn damage_and_occupied_directories_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, copy) = (tmp.path().join("data"), tmp.path().join("copy"));
        let (mut store, _) = open(&data);
        store.append(Lsn(1), b"one").unwrap();
        store.sync().unwrap();
        let plan = store.backup_plan().unwrap();
        // Into a directory that holds something: refused, nothing written.
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::write(copy.join("notes.txt"), b"mine").unwrap();
        let e = plan.write_to(&copy, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        std::fs::remove_file(copy.join("notes.txt")).unwrap();
        let manifest = plan.write_to(&copy, &mut |_| {}).unwrap();
        // Restoring into the live data directory is refused.
        let e = restore(&copy, &data, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        // One flipped byte in a copied file fails verification.
        let (name, ..) = &manifest.files[0];
        let path = copy.join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let e = verify(&copy).unwrap_err();
        assert!(e.to_string().contains("CRC"), "{e}");
        let e = restore(&copy, &tmp.path().join("fresh"), &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("CRC"), "{e}");
        // A manifest naming a path outside the backup is refused.
        std::fs::write(
            copy.join(MANIFEST),
            format!("{MAGIC}\nlsn 1\nfile ../../etc/passwd 3 00000000\n"),
        )
        .unwrap();
        assert!(verify(&copy).is_err());
        store.close().unwrap();
    }
}
