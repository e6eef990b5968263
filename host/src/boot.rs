//! Booting: the data directory, generated secrets, opening the store and
//! replaying the snapshot and the log into a fresh `Server`.

use crate::clock::now;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant;
use tidepool_core::config::Config;
use tidepool_core::ids::Lsn;
use tidepool_core::server::Server;
use tidepool_storage::{Store, StoreOptions, SyncPolicy};

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
}

/// Prepares the data directory, secrets and storage, and replays the log.
pub fn boot(mut config: Config) -> Result<Booted, String> {
    let dir = PathBuf::from(&config.data_dir);
    fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    let mut banner = Vec::new();
    if config.api_keys.is_empty() {
        let path = dir.join("api_key");
        let (key, created) = secret_file(&path, 24)
            .map_err(|e| format!("cannot read or create {}: {e}", path.display()))?;
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
            .map_err(|e| format!("cannot read or create {}: {e}", path.display()))?
            .0
    } else {
        config.jwt_secret.clone()
    };
    let sync: SyncPolicy = config.fsync.parse().map_err(|e| format!("{e}"))?;
    let opts = StoreOptions {
        segment_bytes: config.segment_bytes.max(1 << 20),
        history_retention_bytes: config.history_bytes,
        salvage: config.salvage,
        sync,
        ..StoreOptions::new(dir.join("store"))
    };
    let started = Instant::now();
    let (store, recovery) = Store::open(opts).map_err(|e| e.to_string())?;
    let mut server = Server::new(config, secret.as_bytes(), random_seed());
    server.set_clock(now);
    let (chunks, batches) = replay(&mut server, &recovery)?;
    server.handle_recovered(Lsn(recovery.last_lsn().0));
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
    })
}

/// Replays the snapshot and the log into the engine: one thread decodes the next
/// batch while this one applies the previous (decoding is about half the work).
fn replay(
    server: &mut Server,
    recovery: &tidepool_storage::Recovery,
) -> Result<(usize, usize), String> {
    use tidepool_core::engine::{decode_for_replay, Decoded};
    let (tx, rx) = crossbeam_channel::bounded::<Result<(Lsn, bool, Decoded<'_>), String>>(8);
    thread::scope(|scope| {
        scope.spawn(move || {
            for chunk in recovery.snapshot_chunks() {
                let item = decode_for_replay(chunk)
                    .map(|d| (Lsn::ZERO, true, d))
                    .map_err(|e| format!("snapshot is unreadable: {e}"));
                if tx.send(item).is_err() {
                    return;
                }
            }
            for (lsn, payload) in recovery.batches() {
                let item = decode_for_replay(payload)
                    .map(|d| (Lsn(lsn.0), false, d))
                    .map_err(|e| format!("log batch {lsn} is unreadable: {e}"));
                if tx.send(item).is_err() {
                    return;
                }
            }
        });
        let (mut chunks, mut batches) = (0, 0);
        for item in rx {
            let (lsn, from_snapshot, decoded) = item?;
            server.engine.replay_decoded(lsn, decoded);
            if from_snapshot {
                chunks += 1;
            } else {
                batches += 1;
            }
        }
        Ok((chunks, batches))
    })
}
