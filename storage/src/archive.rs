//! One-file backups: the backup [`crate::backup`] writes as a directory,
//! written instead as one tar stream, so it can be moved, uploaded or kept
//! as a single file (and read with any `tar`).
//!
//! ```text
//! api_key                      extras the caller adds (the host's secrets), first
//! store/snapshot-....snap      the plan's files, each as it is read
//! store/segment-....log
//! store/BACKUP                 the manifest, last
//! ```
//!
//! The archive is written under `NAME.partial`, synced, then renamed to its
//! name, so a file with the final name is a finished backup. Reading one
//! checks what the directory form checks: the manifest comes last, it names
//! exactly the store files the archive held, and each file's length and
//! CRC-32 match it. Nothing else is accepted: no links, no paths outside
//! `store/`, no file twice, nothing after the manifest.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::backup::{copy_hashed, BackupPlan, Manifest, Pacer, MANIFEST, SYNC_EVERY};
use crate::error::StoreError;
use crate::segment::{classify, FileKind};

/// Hears each extra file of an archive (name, bytes) and may refuse it.
pub type OnExtra<'a> = dyn FnMut(&str, Vec<u8>) -> Result<(), StoreError> + 'a;

/// Where the store's files sit inside an archive.
const STORE_PREFIX: &str = "store/";
/// The largest extra file an archive may carry (the secrets are a few
/// dozen bytes): a hostile archive cannot make a reader hold more.
pub const MAX_EXTRA_BYTES: u64 = 64 * 1024;
/// The largest manifest an archive may carry: a line of under 100 bytes per
/// store file, so room for far more segments than a store keeps.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

impl BackupPlan {
    /// Writes the plan as one archive at `path` (which must not exist; its
    /// directory is created if missing): `extras` (name, bytes) first, then every store file, then the
    /// manifest; synced and renamed into place. `progress` hears the store
    /// bytes written so far.
    pub fn write_archive(
        &self,
        path: &Path,
        extras: &[(&str, &[u8])],
        progress: &mut dyn FnMut(u64),
    ) -> Result<Manifest, StoreError> {
        if path.exists() {
            return Err(StoreError::misuse(format!(
                "{} exists: a backup is written only to a new file",
                path.display()
            )));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::io("creating directory", dir, e))?;
        }
        let partial = partial_path(path);
        let file =
            File::create(&partial).map_err(|e| StoreError::io("creating", partial.clone(), e))?;
        let out = BufWriter::with_capacity(1 << 20, SyncingWriter { file, unsynced: 0 });
        let written = self.write_tar(out, extras, progress);
        let (manifest, file) = match written {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        file.sync_all()
            .map_err(|e| StoreError::io("syncing", partial.clone(), e))?;
        drop(file);
        std::fs::rename(&partial, path)
            .map_err(|e| StoreError::io("renaming the finished backup", path, e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io("syncing directory", dir, e))?;
        }
        Ok(manifest)
    }

    fn write_tar(
        &self,
        out: BufWriter<SyncingWriter>,
        extras: &[(&str, &[u8])],
        progress: &mut dyn FnMut(u64),
    ) -> Result<(Manifest, File), StoreError> {
        let io = |e: io::Error| StoreError::io("writing backup archive", "(archive)", e);
        let mut tar = tar::Builder::new(out);
        for (name, bytes) in extras {
            append(&mut tar, name, bytes.len() as u64, *bytes).map_err(io)?;
        }
        let pacer = Pacer::new(self.max_rate);
        let mut done = 0u64;
        let mut files = Vec::new();
        for f in &self.files {
            let mut reader = PlannedReader {
                file: &*f.file,
                len: f.len,
                at: 0,
                crc: crc32fast::Hasher::new(),
            };
            let name = format!("{STORE_PREFIX}{}", f.name);
            let mut counted = CountingReader {
                inner: &mut reader,
                on_read: &mut |n| {
                    done += n as u64;
                    pacer.pace(done);
                    progress(done);
                },
            };
            // tar copies through `dyn Read` in 8 KiB pieces: read the
            // store file a megabyte at a time instead.
            let buffered = BufReader::with_capacity(1 << 20, &mut counted);
            append(&mut tar, &name, f.len, buffered)
                .map_err(|e| StoreError::io("copying into the backup archive", &f.name, e))?;
            files.push((f.name.clone(), f.len, reader.crc.finalize()));
        }
        let manifest = Manifest {
            lsn: self.lsn,
            files,
        };
        let text = manifest.render();
        let name = format!("{STORE_PREFIX}{MANIFEST}");
        append(&mut tar, &name, text.len() as u64, text.as_bytes()).map_err(io)?;
        let out = tar.into_inner().map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?.file;
        Ok((manifest, file))
    }
}

/// Appends one regular file (owner-only, no timestamps: the manifest is
/// what identifies a backup).
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    len: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(len);
    header.set_mode(0o600);
    header.set_mtime(0);
    tar.append_data(&mut header, name, data)
}

/// Syncs the archive every [`SYNC_EVERY`] bytes, as the directory form
/// does: left to pile up, its dirty pages would be flushed by the log's own
/// fsync, stalling every durable write behind the copy.
struct SyncingWriter {
    file: File,
    unsynced: u64,
}

impl Write for SyncingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Reads a planned file up to its planned length, hashing what it reads.
struct PlannedReader<'a> {
    file: &'a dyn crate::BackendFile,
    len: u64,
    at: u64,
    crc: crc32fast::Hasher,
}

impl Read for PlannedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = ((self.len - self.at) as usize).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.file.read_at(&mut buf[..n], self.at)?;
        self.crc.update(&buf[..n]);
        self.at += n as u64;
        Ok(n)
    }
}

/// Tells `on_read` how many bytes each read gave.
struct CountingReader<'a, R> {
    inner: R,
    on_read: &'a mut dyn FnMut(usize),
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_read)(n);
        Ok(n)
    }
}

/// True when `path` names a one-file backup rather than a directory: a
/// file that exists, or a name ending in `.tar`.
pub fn is_archive(path: &Path) -> bool {
    path.is_file() || path.extension().is_some_and(|e| e == "tar")
}

/// Checks an archive: every entry, the manifest, each file's length and
/// CRC. `extra` hears each extra file (name, bytes) and may refuse it.
pub fn verify_archive(path: &Path, extra: &mut OnExtra<'_>) -> Result<Manifest, StoreError> {
    read_archive(path, None, &mut |_| {}, extra)
}

/// Unpacks an archive's store into `store_dir` (new or empty), checking
/// it as [`verify_archive`] does; `extra` hears the extra files. The
/// caller then checks recovery ([`crate::backup::restore_archive`]).
pub(crate) fn read_archive(
    path: &Path,
    store_dir: Option<&Path>,
    progress: &mut dyn FnMut(u64),
    extra: &mut OnExtra<'_>,
) -> Result<Manifest, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io("opening", path, e))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let bad = |why: String| StoreError::corrupt(path, 0, why);
    let io = |e: io::Error| StoreError::io("reading backup archive", path, e);
    let mut seen: Vec<(String, u64, u32)> = Vec::new();
    let mut manifest: Option<Manifest> = None;
    let mut done = 0u64;
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let name = entry
            .path()
            .map_err(io)?
            .to_str()
            .map(str::to_string)
            .ok_or_else(|| bad("an entry's name is not UTF-8".into()))?;
        if manifest.is_some() {
            return Err(bad(format!(
                "`{name}` comes after the manifest (the manifest is the last entry)"
            )));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad(format!("`{name}` is not a regular file")));
        }
        let len = entry.header().size().map_err(io)?;
        let Some(store_name) = name.strip_prefix(STORE_PREFIX) else {
            if name.contains('/') || name.starts_with('.') || len > MAX_EXTRA_BYTES {
                return Err(bad(format!("`{name}` is not part of a Tidepool backup")));
            }
            let mut bytes = Vec::with_capacity(len as usize);
            entry.read_to_end(&mut bytes).map_err(io)?;
            extra(&name, bytes)?;
            continue;
        };
        if store_name == MANIFEST {
            if len > MAX_MANIFEST_BYTES {
                return Err(bad(format!(
                    "its manifest is {len} bytes, more than a backup's ever is"
                )));
            }
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(io)?;
            manifest = Some(Manifest::parse(&text, path)?);
            continue;
        }
        if matches!(
            classify(store_name),
            FileKind::Other | FileKind::Corrupt { .. }
        ) || store_name.contains('/')
        {
            return Err(bad(format!(
                "`{name}` is not a segment or snapshot of a store"
            )));
        }
        if seen.iter().any(|(n, ..)| n == store_name) {
            return Err(bad(format!("`{name}` appears twice")));
        }
        let to = store_dir.map(|d| d.join(store_name));
        let base = done;
        let (copied, crc) =
            copy_hashed(&mut entry, path, to.as_deref(), &mut |n| progress(base + n))?;
        done += copied;
        seen.push((store_name.to_string(), copied, crc));
    }
    let manifest = manifest.ok_or_else(|| {
        bad("the archive has no manifest (store/BACKUP): an unfinished backup".into())
    })?;
    let mut want = manifest.files.clone();
    want.sort();
    seen.sort();
    if want != seen {
        return Err(bad(
            "the files in the archive do not match its manifest (names, lengths or CRC-32s)".into(),
        ));
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::restore_archive;
    use crate::{Lsn, Store, StoreOptions};

    fn no_extras() -> impl FnMut(&str, Vec<u8>) -> Result<(), StoreError> {
        |name, _| Err(StoreError::misuse(format!("unexpected {name}")))
    }

    /// A store with batches 1..=30 (a snapshot at 10) and one at 31 written
    /// after the plan: the archive holds 1..=30 and its extras.
    #[test]
    fn an_archive_restores_to_its_point_with_its_extras() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, file, restored) = (
            tmp.path().join("data"),
            tmp.path().join("backups/monday.tar"), // its directory is created
            tmp.path().join("restored"),
        );
        let (mut store, _) = Store::open(StoreOptions::new(&data)).unwrap();
        for lsn in 1..=30u64 {
            store.append(Lsn(lsn), &[lsn as u8; 200]).unwrap();
        }
        store.sync().unwrap();
        let mut snap = store.begin_snapshot(Lsn(10)).unwrap();
        snap.write_chunk(b"state up to 10").unwrap();
        store.install_snapshot(snap.finish().unwrap()).unwrap();
        let plan = store.backup_plan().unwrap();
        store.append(Lsn(31), b"after the plan").unwrap();
        store.sync().unwrap();

        let mut seen = 0;
        let written = plan
            .write_archive(&file, &[("api_key", b"secret")], &mut |n| seen = n)
            .unwrap();
        assert_eq!(seen, plan.bytes());
        assert!(!partial_path(&file).exists());
        assert!(is_archive(&file));
        // Writing over it is refused.
        let e = plan.write_archive(&file, &[], &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");

        let mut extras = Vec::new();
        let checked = verify_archive(&file, &mut |n, b| {
            extras.push((n.to_string(), b));
            Ok(())
        })
        .unwrap();
        assert_eq!(checked, written);
        assert_eq!(extras, vec![("api_key".to_string(), b"secret".to_vec())]);

        let restored_manifest =
            restore_archive(&file, &restored, &mut |_| {}, &mut |_, _| Ok(())).unwrap();
        assert_eq!(restored_manifest.lsn, Lsn(30));
        let (again, recovery) = Store::open(StoreOptions::new(&restored)).unwrap();
        let chunks: Vec<Vec<u8>> = recovery.snapshot_chunks().map(<[u8]>::to_vec).collect();
        assert_eq!(chunks, vec![b"state up to 10".to_vec()]);
        let lsns: Vec<u64> = recovery.batches().map(|(l, _)| l.0).collect();
        assert_eq!(lsns, (11..=30).collect::<Vec<_>>());
        drop(recovery);
        again.close().unwrap();
        // Restoring again into the same (now occupied) directory is refused.
        let e = restore_archive(&file, &restored, &mut |_| {}, &mut no_extras()).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        store.close().unwrap();
    }

    /// Writes a tar of `entries` (name, bytes) with the names put in the
    /// headers as given (`..` included, which the builder would refuse).
    fn tar_of(path: &Path, entries: &[(&str, &[u8])]) {
        let mut tar = tar::Builder::new(BufWriter::new(File::create(path).unwrap()));
        for (name, bytes) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            header.set_mode(0o600);
            header.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            tar.append(&header, *bytes).unwrap();
        }
        tar.into_inner().unwrap();
    }

    #[test]
    fn damaged_and_foreign_archives_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let good = tmp.path().join("good.tar");
        let (mut store, _) = Store::open(StoreOptions::new(&data)).unwrap();
        store.append(Lsn(1), b"one").unwrap();
        store.sync().unwrap();
        let plan = store.backup_plan().unwrap();
        let manifest = plan.write_archive(&good, &[], &mut |_| {}).unwrap();
        store.close().unwrap();
        let bytes = std::fs::read(&good).unwrap();

        let refused = |name: &str, bytes: &[u8], why: &str| {
            let path = tmp.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let e = verify_archive(&path, &mut no_extras()).unwrap_err();
            assert!(e.to_string().contains(why), "{name}: {e}");
            let into = tmp.path().join(format!("{name}.restored"));
            let e = restore_archive(&path, &into, &mut |_| {}, &mut no_extras()).unwrap_err();
            assert!(e.to_string().contains(why), "{name}: {e}");
        };
        // One flipped byte inside the segment's data.
        let mut flipped = bytes.clone();
        flipped[512 + 40] ^= 1;
        refused("flipped.tar", &flipped, "do not match its manifest");
        // Cut short: no manifest at the end.
        refused("cut.tar", &bytes[..1024], "archive");

        let (seg, ..) = &manifest.files[0];
        let seg_bytes = {
            let mut a = tar::Archive::new(&bytes[..]);
            let mut e = a.entries().unwrap().next().unwrap().unwrap();
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            v
        };
        let seg_entry = format!("store/{seg}");
        let manifest_text = manifest.render();
        type Entries<'e> = Vec<(&'e str, &'e [u8])>;
        let cases: [(&str, Entries<'_>, &str); 4] = [
            (
                "no-manifest.tar",
                vec![(seg_entry.as_str(), &seg_bytes[..])],
                "no manifest",
            ),
            (
                "outside.tar",
                vec![
                    ("store/../../escape", b"x"),
                    ("store/BACKUP", manifest_text.as_bytes()),
                ],
                "not a segment",
            ),
            (
                "after.tar",
                vec![
                    (seg_entry.as_str(), &seg_bytes[..]),
                    ("store/BACKUP", manifest_text.as_bytes()),
                    ("api_key", b"late"),
                ],
                "after the manifest",
            ),
            (
                "unexpected.tar",
                vec![("notes.txt", b"mine"), (seg_entry.as_str(), &seg_bytes[..])],
                "unexpected notes.txt",
            ),
        ];
        for (name, entries, why) in cases {
            let path = tmp.path().join(name);
            tar_of(&path, &entries);
            let e = verify_archive(&path, &mut no_extras()).unwrap_err();
            assert!(e.to_string().contains(why), "{name}: {e}");
        }
    }
}
