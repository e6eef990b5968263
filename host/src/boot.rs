//! Booting: the data directory, generated secrets, opening the store and
//! replaying the snapshot and the log into a fresh `Server`.

use crate::clock::now;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant;
use tidepool_core::config::Config;
use tidepool_core::engine::mutation::{self, Batch, DecodeError};
use tidepool_core::ids::Lsn;
use tidepool_core::server::Server;
use tidepool_storage::{ParseSyncPolicyError, Store, StoreError, StoreOptions, SyncPolicy};

/// Why the server could not start, with the file or setting to look at.
#[derive(Debug)]
pub enum BootError {
    /// The data directory cannot be created.
    DataDir { path: PathBuf, source: io::Error },
    /// A secret file (API key, JWT secret) cannot be read or created.
    Secret { path: PathBuf, source: io::Error },
    /// `--fsync` names no policy.
    Fsync(ParseSyncPolicyError),
    /// The store refused to open (locked, corrupt, I/O).
    Store(StoreError),
    /// A snapshot chunk or log batch passed its checksum but does not decode.
    Unreadable {
        lsn: Option<Lsn>,
        source: DecodeError,
    },
    /// The listening socket cannot be bound (reported by the runtimes).
    Listen { addr: String, source: io::Error },
    /// `--tls-ca-file` cannot be used.
    TlsCa { path: PathBuf, reason: String },
    /// `--tls-cert` / `--tls-key` cannot be served.
    TlsCert { path: PathBuf, reason: String },
    /// `--fluxbase-chatbots` cannot be read or does not parse.
    Chatbots { path: PathBuf, reason: String },
    /// `--embed-model-dir` or `--chat-model-file` cannot be loaded (the
    /// message names the file).
    Model(String),
    /// A thread the server needs cannot be started.
    Spawn {
        what: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::DataDir { path, source } => {
                write!(
                    f,
                    "cannot create data directory {}: {source}",
                    path.display()
                )
            }
            BootError::Secret { path, source } => {
                write!(f, "cannot read or create {}: {source}", path.display())
            }
            BootError::Fsync(e) => write!(f, "{e}"),
            BootError::Store(e) => write!(f, "{e}"),
            BootError::Unreadable { lsn: None, source } => {
                write!(f, "snapshot is unreadable: {source}")
            }
            BootError::Unreadable {
                lsn: Some(lsn),
                source,
            } => write!(f, "log batch {lsn} is unreadable: {source}"),
            BootError::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            BootError::TlsCa { path, reason } => {
                write!(
                    f,
                    "cannot use {} as TLS authorities: {reason}",
                    path.display()
                )
            }
            BootError::TlsCert { path, reason } => {
                write!(
                    f,
                    "cannot serve TLS with the certificate {}: {reason}",
                    path.display()
                )
            }
            BootError::Chatbots { path, reason } => write!(
                f,
                "cannot use {} as --fluxbase-chatbots: {reason}",
                path.display()
            ),
            BootError::Model(why) => write!(f, "cannot load a model: {why}"),
            BootError::Spawn { what, source } => {
                write!(f, "cannot start the {what} thread: {source}")
            }
        }
    }
}

impl std::error::Error for BootError {}

/// Descriptors kept back from connections: log segments, snapshots,
/// outbound calls, the documents folder.
const FILES_KEPT_FOR_THE_SERVER: u64 = 128;

/// The soft limit on open files (`/proc/self/limits`; `None` elsewhere or
/// when unlimited).
fn open_file_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Reads a secret file, or creates it with fresh random bytes (hex) on first start.
fn secret_file(path: &Path, bytes: usize) -> io::Result<(String, bool)> {
    match fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut raw = vec![0u8; bytes];
    random_bytes(&mut raw)?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension("tmp");
    write_private(&tmp, hex.as_bytes())?;
    fs::rename(&tmp, path)?;
    Ok((hex, true))
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

pub fn random_bytes(out: &mut [u8]) -> io::Result<()> {
    fs::File::open("/dev/urandom")?.read_exact(out)
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if random_bytes(&mut b).is_err() {
        // No urandom: fall back to time and address entropy (ids stay unique
        // because they also carry a timestamp and a counter).
        let t = now().micros() as u64;
        b = (t ^ (&b as *const _ as u64).rotate_left(32)).to_le_bytes();
    }
    u64::from_le_bytes(b)
}

/// A booted server: recovered state plus the store, ready for `start`.
pub struct Booted {
    pub server: Server,
    pub store: Store,
    pub banner: Vec<String>,
    /// The in-process models, when configured.
    pub models: Option<std::sync::Arc<crate::models::Models>>,
}

/// Prepares the data directory, secrets and storage, and replays the log.
pub fn boot(mut config: Config) -> Result<Booted, BootError> {
    crate::log::set_format(config.log_format, config.log_level);
    let dir = PathBuf::from(&config.data_dir);
    fs::create_dir_all(&dir).map_err(|source| BootError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let mut banner = Vec::new();
    // Past the process's file limit a connection cannot even be accepted to
    // be told no: keep the cap under it, with room for the store's files.
    if let Some(files) = open_file_limit() {
        let fits = files.saturating_sub(FILES_KEPT_FOR_THE_SERVER).max(1) as usize;
        if config.max_connections > fits {
            banner.push(format!(
                "--max-connections lowered from {} to {fits}: the process may open {files} files \
                 (raise it with `ulimit -n`)",
                config.max_connections
            ));
            config.max_connections = fits;
        }
    }
    if config.api_keys.is_empty() {
        let path = dir.join("api_key");
        let (key, created) = secret_file(&path, 24).map_err(|source| BootError::Secret {
            path: path.clone(),
            source,
        })?;
        banner.push(format!(
            "API key{}: {key}  (kept in {}; set --api-key or TIDEPOOL_API_KEY to choose your own)",
            if created { " (generated)" } else { "" },
            path.display()
        ));
        config.api_keys.push(key);
    }
    let secret = if config.jwt_secret.is_empty() {
        let path = dir.join("jwt_secret");
        secret_file(&path, 32)
            .map_err(|source| BootError::Secret {
                path: path.clone(),
                source,
            })?
            .0
    } else {
        config.jwt_secret.clone()
    };
    let sync: SyncPolicy = config.fsync.parse().map_err(BootError::Fsync)?;
    // Before the store: a missing model file fails at once, not after a
    // long recovery.
    let loaded = if config.embed_model_dir.is_empty() && config.chat_model_file.is_empty() {
        crate::models::Loaded::default()
    } else {
        crate::models::load(&config).map_err(BootError::Model)?
    };
    banner.extend(loaded.banner);
    let opts = StoreOptions {
        segment_bytes: config.segment_bytes.max(1 << 20),
        history_retention_bytes: config.history_bytes,
        salvage: config.salvage,
        sync,
        ..StoreOptions::new(dir.join("store"))
    };
    let started = Instant::now();
    let (store, recovery) = Store::open(opts).map_err(BootError::Store)?;
    let chatbots = match config.fluxbase_chatbots.as_str() {
        "" => Vec::new(),
        file => {
            let path = PathBuf::from(file);
            let failed = |reason: String| BootError::Chatbots {
                path: path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| failed(e.to_string()))?;
            tidepool_core::dialect::fluxbase::parse_chatbots(&text).map_err(failed)?
        }
    };
    let mut server = Server::new(config, secret.as_bytes(), random_seed());
    server.set_configured_chatbots(chatbots);
    server.set_clock(now);
    server.set_process_probe(crate::process::sample);
    let mut progress = crate::progress::Progress::new("recovery", recovery.report().bytes, false);
    let (chunks, batches) = replay(&mut server, &recovery, &mut progress)?;
    server.handle_recovered(Lsn(recovery.last_lsn().0), now());
    banner.push(format!(
        "recovered {chunks} snapshot chunks and {batches} log batches up to LSN {} in {} ms",
        recovery.last_lsn(),
        started.elapsed().as_millis()
    ));
    let report = recovery.report();
    if report.torn_tail.is_some() || report.salvage.is_some() {
        banner.push(format!("recovery report: {report:?}"));
    }
    drop(recovery);
    Ok(Booted {
        server,
        store,
        banner,
        models: loaded.models,
    })
}

/// Replays the snapshot and the log into the engine: one thread decodes the next
/// batch while this one applies the previous (decoding is about half the work).
fn replay(
    server: &mut Server,
    recovery: &tidepool_storage::Recovery,
    progress: &mut crate::progress::Progress,
) -> Result<(usize, usize), BootError> {
    // `lsn` is `None` for snapshot chunks.
    type Item<'a> = Result<(Option<Lsn>, Batch<'a>, u64), BootError>;
    let (tx, rx) = crossbeam_channel::bounded::<Item<'_>>(8);
    thread::scope(|scope| {
        scope.spawn(move || {
            let chunks = recovery.snapshot_chunks().map(|c| (None, c));
            let batches = recovery.batches().map(|(lsn, p)| (Some(Lsn(lsn.0)), p));
            for (lsn, payload) in chunks.chain(batches) {
                let item = mutation::decode(payload)
                    .map(|d| (lsn, d, payload.len() as u64))
                    .map_err(|source| BootError::Unreadable { lsn, source });
                if tx.send(item).is_err() {
                    return;
                }
            }
        });
        let (mut chunks, mut batches, mut bytes) = (0, 0, 0);
        for item in rx {
            let (lsn, decoded, len) = item?;
            server.replay(lsn.unwrap_or(Lsn::ZERO), decoded);
            bytes += len;
            if (chunks + batches) % 1024 == 0 {
                progress.update(bytes);
            }
            if lsn.is_none() {
                chunks += 1;
            } else {
                batches += 1;
            }
        }
        progress.finish(bytes);
        Ok((chunks, batches))
    })
}
