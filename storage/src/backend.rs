//! Every file operation the store performs, behind one small trait, so tests can swap
//! the disk for [`crate::sim::SimBackend`], which simulates power cuts and I/O errors.
//!
//! [`FileBackend`] is the production implementation: each method is one system call on
//! a `std::fs::File` (positioned I/O through `FileExt`), behind one dynamic call.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A directory of files: create, open, rename, remove, list, lock, and make directory
/// changes durable.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive lock of `dir`. Fails with `ErrorKind::WouldBlock` when
    /// someone else holds it; the lock is released when the guard is dropped.
    fn lock(&self, dir: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>>;
    /// Names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates (or truncates) a file for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn BackendFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn BackendFile>>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file. Positioned reads and writes only: there is no cursor to share.
#[allow(clippy::len_without_is_empty)] // a fallible length; emptiness is never asked
pub trait BackendFile: Send + Sync + fmt::Debug {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; an error if the file is shorter.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncates or extends the file to `len`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data (and the length needed to read it) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// The whole file as one read-only byte slice. The caller promises the file is
    /// sealed: nobody writes or truncates it while the returned [`Mapped`] lives.
    fn map(&self) -> io::Result<Mapped>;
}

/// A whole file's bytes: a read-only memory map, or an owned copy (in-memory backend,
/// empty files).
pub struct Mapped(MappedInner);

enum MappedInner {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Mapped {
    /// Wraps bytes that are already in memory.
    pub fn owned(bytes: Vec<u8>) -> Mapped {
        Mapped(MappedInner::Owned(bytes))
    }
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            MappedInner::Map(m) => m,
            MappedInner::Owned(v) => v,
        }
    }
}

impl fmt::Debug for Mapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.0 {
            MappedInner::Map(_) => "mmap",
            MappedInner::Owned(_) => "owned",
        };
        write!(f, "Mapped({kind}, {} bytes)", self.len())
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileBackend;

/// A real file.
#[derive(Debug)]
struct RealFile(File);

impl Backend for FileBackend {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn lock(&self, dir: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(crate::segment::LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn BackendFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(RealFile(f)))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn BackendFile>> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(RealFile(f)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl BackendFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn map(&self) -> io::Result<Mapped> {
        if self.len()? == 0 {
            // Mapping zero bytes is an error on some systems; there is nothing to map.
            return Ok(Mapped::owned(Vec::new()));
        }
        map_sealed(&self.0).map(|m| Mapped(MappedInner::Map(m)))
    }
}

/// Maps a sealed file read-only. The crate's only `unsafe`.
#[allow(unsafe_code)]
fn map_sealed(file: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: a memory map is sound only while nobody changes or truncates the file.
    // The store maps two kinds of file, and neither is ever written again:
    // * sealed segments: once a segment is rotated out, no handle writes to it; the
    //   only later operation is deleting it (an unlink leaves the mapping intact);
    // * installed snapshots: written and fsynced under a temporary name, renamed into
    //   place, then only read and eventually unlinked.
    // Recovery truncates a torn tail or salvages only after dropping its maps of the
    // affected files. Other processes are kept out by the data directory's lock file;
    // a person editing files under a running server is outside the contract
    // (docs/storage-format.md, "What we assume").
    unsafe { memmap2::Mmap::map(file) }
}
