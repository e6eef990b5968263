//! An in-memory [`Backend`] that remembers what has been made durable, so a test can
//! ask "what would a power cut leave right now?" and open a store on that image.
//!
//! The model, per file (inode): the current bytes, the bytes as of its last
//! `sync_data`, and the writes and truncations since then. Per directory: the current
//! names, the names as of its last `sync_dir`, and the creations, renames and removals
//! since then. [`SimBackend::crash`] builds a fresh backend from the durable state plus
//! some of the unsynced operations, as [`CrashMode`] says; the original backend and
//! any store using it are not disturbed, so a test can take crash images at any point.
//!
//! It also injects I/O errors ([`SimBackend::fail_writes_after`],
//! [`SimBackend::fail_syncs_after`]) to test that the store poisons itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, BackendFile, Mapped};

/// What survives a simulated power cut besides the synced state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Only what was synced: every unsynced write and directory change is lost.
    DropUnsynced,
    /// Per file, a random prefix of the unsynced writes, the last of them possibly torn
    /// (only a prefix of its bytes reaches the disk); a random prefix of the directory
    /// changes.
    TornPrefix,
    /// Per file, a random subset of the unsynced writes, in any combination (the disk
    /// reorders writeback), each possibly torn; a random subset of directory changes.
    Reorder,
}

/// The in-memory, crash-simulating backend. Cloning shares the same state.
#[derive(Clone, Default)]
pub struct SimBackend {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimBackend")
    }
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    dirs: BTreeMap<PathBuf, Dir>,
    locks: HashSet<PathBuf>,
    /// Remaining successful writes before every write fails.
    writes_left: Option<u64>,
    /// Remaining successful syncs (file or directory) before every sync fails.
    syncs_left: Option<u64>,
}

#[derive(Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<DataOp>,
}

#[derive(Clone)]
enum DataOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Default, Clone)]
struct Dir {
    entries: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
    pending: Vec<DirOp>,
}

#[derive(Clone)]
enum DirOp {
    Link(String, u64),
    Unlink(String),
    Rename(String, String, u64),
}

impl DirOp {
    fn apply(&self, entries: &mut BTreeMap<String, u64>) {
        match self {
            DirOp::Link(name, ino) => {
                entries.insert(name.clone(), *ino);
            }
            DirOp::Unlink(name) => {
                entries.remove(name);
            }
            DirOp::Rename(from, to, ino) => {
                if entries.get(from) == Some(ino) {
                    entries.remove(from);
                }
                entries.insert(to.clone(), *ino);
            }
        }
    }
}

impl DataOp {
    fn apply(&self, data: &mut Vec<u8>, torn_len: Option<usize>) {
        match self {
            DataOp::Write { offset, bytes } => {
                let n = torn_len.unwrap_or(bytes.len()).min(bytes.len());
                write_into(data, *offset, &bytes[..n]);
            }
            DataOp::SetLen(len) => data.resize(*len as usize, 0),
        }
    }
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let off = offset as usize;
    if data.len() < off + bytes.len() {
        data.resize(off + bytes.len(), 0);
    }
    data[off..off + bytes.len()].copy_from_slice(bytes);
}

/// A tiny deterministic generator (xorshift64*), so crash images are reproducible
/// from a seed without another dependency.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed (any value, zero included).
    pub fn new(seed: u64) -> Self {
        SimRng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A value in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad file name"))?;
    Ok((parent, name.to_owned()))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn injected() -> io::Error {
    io::Error::other("injected I/O error")
}

impl SimBackend {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After `n` more successful writes, every write fails (the failing write leaves
    /// half of its bytes behind, like a real short write). `None` clears the fault.
    pub fn fail_writes_after(&self, n: Option<u64>) {
        self.lock_state().writes_left = n;
    }

    /// After `n` more successful syncs (file or directory), every sync fails.
    pub fn fail_syncs_after(&self, n: Option<u64>) {
        self.lock_state().syncs_left = n;
    }

    /// The current bytes of a file, if it exists.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock_state();
        let (dir, name) = split(path).ok()?;
        let ino = s.dirs.get(&dir)?.entries.get(&name)?;
        s.inodes.get(ino).map(|i| i.data.clone())
    }

    /// Replaces (or creates) a file with `bytes`, durably, as if written and synced
    /// long ago. Used to plant damaged files in tests and fuzzing.
    pub fn write_file(&self, path: &Path, bytes: &[u8]) {
        let mut s = self.lock_state();
        let Ok((dir, name)) = split(path) else { return };
        s.next_inode += 1;
        let ino = s.next_inode;
        s.inodes.insert(
            ino,
            Inode {
                data: bytes.to_vec(),
                durable: bytes.to_vec(),
                pending: Vec::new(),
            },
        );
        let d = s.dirs.entry(dir).or_default();
        d.entries.insert(name.clone(), ino);
        d.durable.insert(name, ino);
    }

    /// Names in a directory, sorted.
    pub fn list_names(&self, dir: &Path) -> Vec<String> {
        let s = self.lock_state();
        s.dirs
            .get(dir)
            .map(|d| d.entries.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The disk image a power cut would leave now, as a new backend (no locks held).
    pub fn crash(&self, rng: &mut SimRng, mode: CrashMode) -> SimBackend {
        let s = self.lock_state();
        let mut dirs = BTreeMap::new();
        let mut live = HashSet::new();
        for (path, dir) in &s.dirs {
            let mut entries = dir.durable.clone();
            match mode {
                CrashMode::DropUnsynced => {}
                CrashMode::TornPrefix => {
                    let k = rng.below(dir.pending.len() as u64 + 1) as usize;
                    dir.pending[..k]
                        .iter()
                        .for_each(|op| op.apply(&mut entries));
                }
                CrashMode::Reorder => {
                    for op in &dir.pending {
                        if rng.chance(1, 2) {
                            op.apply(&mut entries);
                        }
                    }
                }
            }
            live.extend(entries.values().copied());
            dirs.insert(
                path.clone(),
                Dir {
                    durable: entries.clone(),
                    entries,
                    pending: Vec::new(),
                },
            );
        }
        let mut inodes = HashMap::new();
        for ino in live {
            let Some(inode) = s.inodes.get(&ino) else {
                continue;
            };
            let mut data = inode.durable.clone();
            let n = inode.pending.len();
            match mode {
                CrashMode::DropUnsynced => {}
                CrashMode::TornPrefix => {
                    let k = rng.below(n as u64 + 1) as usize;
                    inode.pending[..k]
                        .iter()
                        .for_each(|op| op.apply(&mut data, None));
                    if let Some(op) = inode.pending.get(k) {
                        if let DataOp::Write { bytes, .. } = op {
                            let torn = rng.below(bytes.len() as u64 + 1) as usize;
                            op.apply(&mut data, Some(torn));
                        }
                    }
                }
                CrashMode::Reorder => {
                    for op in &inode.pending {
                        match rng.below(4) {
                            0 => {}
                            1 => {
                                if let DataOp::Write { bytes, .. } = op {
                                    let torn = rng.below(bytes.len() as u64 + 1) as usize;
                                    op.apply(&mut data, Some(torn));
                                }
                            }
                            _ => op.apply(&mut data, None),
                        }
                    }
                }
            }
            inodes.insert(
                ino,
                Inode {
                    durable: data.clone(),
                    data,
                    pending: Vec::new(),
                },
            );
        }
        SimBackend {
            state: Arc::new(Mutex::new(State {
                inodes,
                next_inode: s.next_inode,
                dirs,
                locks: HashSet::new(),
                writes_left: None,
                syncs_left: None,
            })),
        }
    }

    fn check_sync(s: &mut State) -> io::Result<()> {
        match &mut s.syncs_left {
            Some(0) => Err(injected()),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn lookup(s: &State, path: &Path) -> io::Result<u64> {
        let (dir, name) = split(path)?;
        s.dirs
            .get(&dir)
            .and_then(|d| d.entries.get(&name))
            .copied()
            .ok_or_else(|| not_found(path))
    }
}

/// Releases a simulated directory lock on drop.
struct SimLock {
    state: Arc<Mutex<State>>,
    dir: PathBuf,
}

impl fmt::Debug for SimLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimLock({})", self.dir.display())
    }
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.locks.remove(&self.dir);
    }
}

impl Backend for SimBackend {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories themselves are assumed durable once created.
        self.lock_state().dirs.entry(dir.to_path_buf()).or_default();
        Ok(())
    }

    fn lock(&self, dir: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        let mut s = self.lock_state();
        if !s.locks.insert(dir.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(SimLock {
            state: self.state.clone(),
            dir: dir.to_path_buf(),
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock_state();
        let d = s.dirs.get(dir).ok_or_else(|| not_found(dir))?;
        Ok(d.entries.keys().cloned().collect())
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn BackendFile>> {
        let (dir, name) = split(path)?;
        let mut s = self.lock_state();
        if !s.dirs.contains_key(&dir) {
            return Err(not_found(&dir));
        }
        s.next_inode += 1;
        let ino = s.next_inode;
        s.inodes.insert(ino, Inode::default());
        let d = s.dirs.entry(dir).or_default();
        d.entries.insert(name.clone(), ino);
        d.pending.push(DirOp::Link(name, ino));
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            ino,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn BackendFile>> {
        let s = self.lock_state();
        let ino = Self::lookup(&s, path)?;
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            ino,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        if dir != to_dir {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "cross-directory rename",
            ));
        }
        let mut s = self.lock_state();
        let ino = Self::lookup(&s, from)?;
        let d = s.dirs.entry(dir).or_default();
        let op = DirOp::Rename(from_name, to_name, ino);
        op.apply(&mut d.entries);
        d.pending.push(op);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = split(path)?;
        let mut s = self.lock_state();
        Self::lookup(&s, path)?;
        let d = s.dirs.entry(dir).or_default();
        d.entries.remove(&name);
        d.pending.push(DirOp::Unlink(name));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock_state();
        Self::check_sync(&mut s)?;
        let d = s.dirs.get_mut(dir).ok_or_else(|| not_found(dir))?;
        d.durable = d.entries.clone();
        d.pending.clear();
        Ok(())
    }
}

/// A handle on a simulated inode.
struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimFile({})", self.ino)
    }
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.inodes.contains_key(&self.ino) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "inode gone"));
        }
        f(&mut s, self.ino)
    }
}

impl BackendFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.with(|s, ino| Ok(s.inodes[&ino].data.len() as u64))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|s, ino| {
            let data = &s.inodes[&ino].data;
            let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
            let src = data
                .get(start..start.saturating_add(buf.len()))
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|s, ino| {
            let fail = match &mut s.writes_left {
                Some(0) => true,
                Some(n) => {
                    *n -= 1;
                    false
                }
                None => false,
            };
            let bytes = if fail { &buf[..buf.len() / 2] } else { buf };
            let inode = s.inodes.get_mut(&ino).ok_or(io::ErrorKind::NotFound)?;
            write_into(&mut inode.data, offset, bytes);
            inode.pending.push(DataOp::Write {
                offset,
                bytes: bytes.to_vec(),
            });
            if fail {
                Err(injected())
            } else {
                Ok(())
            }
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|s, ino| {
            let inode = s.inodes.get_mut(&ino).ok_or(io::ErrorKind::NotFound)?;
            inode.data.resize(len as usize, 0);
            inode.pending.push(DataOp::SetLen(len));
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|s, ino| {
            SimBackend::check_sync(s)?;
            let inode = s.inodes.get_mut(&ino).ok_or(io::ErrorKind::NotFound)?;
            inode.durable = inode.data.clone();
            inode.pending.clear();
            Ok(())
        })
    }

    fn map(&self) -> io::Result<Mapped> {
        self.with(|s, ino| Ok(Mapped::owned(s.inodes[&ino].data.clone())))
    }
}
