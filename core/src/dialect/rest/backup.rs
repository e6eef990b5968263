//! Online backups over the admin API: `POST /api/admin/backup` copies the
//! store, as of the moment it starts, into a directory (or one `.tar` file)
//! on the server's machine while writes go on; `POST /api/admin/backup/verify`
//! checks one.
//! The runtime does the copying (`HostJob`); the reply waits for it and
//! says the backup's LSN, its size and how fast it went. Restore is a
//! subcommand (`tidepool restore`): it needs a server that is not running.

use super::{Ctx, Outcome};
use crate::error::{Error, Result};
use crate::server::host_jobs::HostJob;
use crate::server::Server;
use serde_json::Value as J;

/// Where a body puts the backup: a directory (`{"dir": "/backups/monday"}`)
/// or one tar file (`{"file": "/backups/monday.tar"}`), absolute, so where
/// it lands never depends on the server's working directory. The runtime
/// tells them apart by the name: one ending in `.tar` is a file.
fn dir(ctx: &Ctx<'_>) -> Result<String> {
    let body = ctx.body()?;
    let file = body.get("file").and_then(J::as_str);
    if file.is_some_and(|f| !f.ends_with(".tar")) {
        return Err(Error::invalid(
            "`file` must end in `.tar`: a one-file backup is a tar archive",
        ));
    }
    let dir = file.or_else(|| body.get("dir").and_then(J::as_str)).ok_or_else(|| {
        Error::invalid(
            "`dir` or `file` is required: the directory (or the .tar file) to write the backup into, on the server's machine",
        )
    })?;
    if !dir.starts_with('/') || dir.split('/').any(|part| part == "..") {
        return Err(Error::invalid(
            "`dir` must be an absolute path without `..`",
        ));
    }
    Ok(dir.to_string())
}

fn conn(ctx: &Ctx<'_>) -> Result<crate::ids::ConnId> {
    ctx.conn
        .ok_or_else(|| Error::invalid("a backup is asked for over HTTP"))
}

/// `POST /api/admin/backup {"dir": ...}` or `{"file": ".../NAME.tar"}`.
pub fn backup(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let dir = dir(ctx)?;
    server.defer_host_job(conn(ctx)?, HostJob::Backup { dir })
}

/// `POST /api/admin/backup/verify {"dir": ...}` or `{"file": ...}`.
pub fn verify(server: &mut Server, ctx: &Ctx<'_>) -> Result<Outcome> {
    let dir = dir(ctx)?;
    server.defer_host_job(conn(ctx)?, HostJob::VerifyBackup { dir })
}
