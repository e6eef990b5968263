//! Backups, for the admin API and the subcommands. Online, the writer (which
//! owns the store) takes the plan between two syncs (`answer_plans`); a
//! thread of the job's own copies it while writes go on, and the request's
//! reply says where the backup ends. Offline (`tidepool backup --data-dir`,
//! `restore`, `verify`) the same storage code runs on a directory no server
//! holds.
//!
//! A backup directory holds `store/` (the storage backup: files and
//! manifest) and the data directory's generated secrets (`api_key`,
//! `jwt_secret`), without which the restored server would not know its
//! keys and tokens. Guard it as you guard the data directory.
//!
//! A target whose name ends in `.tar` is a one-file backup instead: the
//! same files as one tar stream, secrets first and the manifest last
//! (`tidepool_storage::archive`). Restore and verify take either form.

use crate::progress::Progress;
use crate::shared::Host;
use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::{json, Value as J};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidepool_core::error::Error;
use tidepool_core::server::host_jobs::{HostJob, HostTask};
use tidepool_storage::archive::{self, is_archive};
use tidepool_storage::backup::{self, Manifest};
use tidepool_storage::{BackupPlan, Store, StoreError};

/// A request for a plan: the writer answers on the sender.
pub(crate) type PlanRequest = Sender<Result<BackupPlan, String>>;

/// The writer's side: answers every waiting request with a plan of the
/// store as of now (synced first, so a server with `--fsync none` backs up
/// what it has too).
pub(crate) fn answer_plans(requests: &Receiver<PlanRequest>, store: &mut Store) {
    while let Ok(reply) = requests.try_recv() {
        let plan = store
            .sync()
            .and_then(|()| store.backup_plan())
            .map_err(|e| e.to_string());
        let _ = reply.send(plan);
    }
}

/// Runs a job of the server's (`Server::poll_host_job`) and answers it.
pub(crate) fn run_job(host: Arc<Host>, task: HostTask) {
    let answer = match &task.job {
        HostJob::Backup { dir } => online(&host, Path::new(dir)),
        HostJob::VerifyBackup { dir } => verify(Path::new(dir)).map_err(store_error),
    };
    host.with_server(|s| s.finish_host_job(task, answer));
}

/// The generated secrets a backup carries along (`boot`).
const SECRETS: &[&str] = &["api_key", "jwt_secret"];

/// Where a data directory (or a backup) keeps its store.
pub fn store_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("store")
}

/// Checks a backup (a directory or one file): its manifest, every file's
/// length and CRC.
pub fn verify(dir: &Path) -> Result<J, StoreError> {
    let manifest = if is_archive(dir) {
        archive::verify_archive(dir, &mut |name, _| only_secrets(name))?
    } else {
        backup::verify(&store_dir(dir))?
    };
    Ok(summary(dir, &manifest, None))
}

/// The only files an archive carries besides the store are the secrets.
fn only_secrets(name: &str) -> Result<(), StoreError> {
    if SECRETS.contains(&name) {
        Ok(())
    } else {
        Err(StoreError::Misuse {
            reason: format!("`{name}` in the archive is not part of a Tidepool backup"),
        })
    }
}

/// Restores the backup in `from` into `data_dir`, which must be missing or
/// empty: every file checked as it is copied, then recovery run on the
/// result to check it reaches the backup's LSN. A restore that fails
/// removes what it wrote, so it can be tried again.
pub fn restore(from: &Path, data_dir: &Path, on_terminal: bool) -> Result<J, StoreError> {
    let one_file = is_archive(from);
    let total = if one_file {
        // The manifest is at the end: the archive's size is the estimate.
        std::fs::metadata(from)
            .map_err(|e| StoreError::Io {
                op: "reading",
                path: from.to_path_buf(),
                source: e,
            })?
            .len()
    } else {
        Manifest::read(&store_dir(from))?.bytes()
    };
    refuse_occupied(data_dir, "restore")?;
    let started = Instant::now();
    let mut progress = Progress::new("restore", total, on_terminal);
    let restored = if one_file {
        // Creates `data_dir/store` (and so `data_dir`) before the secrets,
        // which come first in the archive, are written beside it.
        archive_restore(from, data_dir, &mut |n| progress.update(n))
    } else {
        backup::restore(&store_dir(from), &store_dir(data_dir), &mut |n| {
            progress.update(n)
        })
        .and_then(|m| copy_secrets(from, data_dir).map(|()| m))
    };
    let manifest = match restored {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(store_dir(data_dir));
            for name in SECRETS {
                let _ = std::fs::remove_file(data_dir.join(name));
            }
            return Err(e);
        }
    };
    progress.finish(total);
    Ok(summary(data_dir, &manifest, Some(started.elapsed())))
}

/// Restores a one-file backup: the store into `data_dir/store`, the
/// secrets beside it.
fn archive_restore(
    from: &Path,
    data_dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Manifest, StoreError> {
    backup::restore_archive(from, &store_dir(data_dir), progress, &mut |name, bytes| {
        only_secrets(name)?;
        write_secret(&data_dir.join(name), &bytes)
    })
}

/// Backups and restores go only into new or empty directories.
fn refuse_occupied(dir: &Path, what: &str) -> Result<(), StoreError> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(StoreError::Misuse {
            reason: format!(
                "{} is not empty: {what} only into a new or empty directory",
                dir.display()
            ),
        });
    }
    Ok(())
}

/// The secrets `data_dir` holds, by name.
fn read_secrets(data_dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    SECRETS
        .iter()
        .filter_map(|name| Some((*name, std::fs::read(data_dir.join(name)).ok()?)))
        .collect()
}

/// Copies the secrets `from` holds into `to` (synced).
fn copy_secrets(from: &Path, to: &Path) -> Result<(), StoreError> {
    for (name, bytes) in read_secrets(from) {
        write_secret(&to.join(name), &bytes)?;
    }
    Ok(())
}

/// Writes a secret into a new file (synced).
fn write_secret(dst: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |e| StoreError::Io {
        op: "writing a secret",
        path: dst.to_path_buf(),
        source: e,
    };
    let mut f = std::fs::File::create_new(dst).map_err(io)?;
    std::io::Write::write_all(&mut f, bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

fn online(host: &Host, dir: &Path) -> Result<J, Error> {
    let (data_dir, rate) = {
        let s = host.lock();
        let c = s.config();
        (
            std::path::PathBuf::from(&c.data_dir),
            c.backup_max_mib_per_sec,
        )
    };
    let (tx, rx) = bounded(1);
    host.request_plan(tx);
    let plan = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| Error::internal("the writer did not answer the backup request"))?
        .map_err(Error::internal)?;
    let plan = plan.with_max_rate(rate.saturating_mul(1 << 20));
    write(&plan, &data_dir, dir, false).map_err(store_error)
}

/// Copies `plan` (of `data_dir`'s store) and the secrets into `dir`, which
/// must be missing or empty (or, for a name ending in `.tar`, into that new
/// file), with progress; the reply's summary.
pub fn write(
    plan: &BackupPlan,
    data_dir: &Path,
    dir: &Path,
    on_terminal: bool,
) -> Result<J, StoreError> {
    let started = Instant::now();
    let mut progress = Progress::new("backup", plan.bytes(), on_terminal);
    let manifest = if is_archive(dir) {
        let secrets = read_secrets(data_dir);
        let extras: Vec<(&str, &[u8])> = secrets.iter().map(|(n, b)| (*n, &b[..])).collect();
        plan.write_archive(dir, &extras, &mut |n| progress.update(n))?
    } else {
        refuse_occupied(dir, "back up")?;
        let manifest = plan.write_to(&store_dir(dir), &mut |n| progress.update(n))?;
        copy_secrets(data_dir, dir)?;
        manifest
    };
    progress.finish(plan.bytes());
    Ok(summary(dir, &manifest, Some(started.elapsed())))
}

/// What a backup holds (and how fast it was written).
pub fn summary(dir: &Path, m: &Manifest, took: Option<Duration>) -> J {
    let key = if is_archive(dir) { "file" } else { "dir" };
    let mut out = json!({
        key: dir.display().to_string(),
        "lsn": m.lsn.0,
        "files": m.files.len(),
        "bytes": m.bytes(),
    });
    if let Some(took) = took {
        let secs = took.as_secs_f64();
        out["seconds"] = json!((secs * 1000.0).round() / 1000.0);
        out["mib_per_s"] = json!(if secs > 0.0 {
            ((m.bytes() as f64 / 1048576.0 / secs) * 10.0).round() / 10.0
        } else {
            0.0
        });
    }
    out
}

/// A storage error as the API answers it: what the caller can fix (a
/// directory in use, a damaged backup) is a 400.
fn store_error(e: StoreError) -> Error {
    match e {
        StoreError::Misuse { .. } | StoreError::Corrupt { .. } => Error::invalid(e.to_string()),
        other => Error::internal(other.to_string()),
    }
}
