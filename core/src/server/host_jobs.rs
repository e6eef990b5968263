//! Work only the runtime can do, asked for by a request: an online backup
//! needs the store, which the runtime's writer owns. The handler queues a
//! `HostJob` with the request's ticket; the runtime takes it
//! (`poll_host_job`), does it on a thread of its own, and hands the answer
//! back (`finish_host_job`), which replies. One backup runs at a time.

use super::pending::Ticket;
use super::Server;
use crate::dialect::rest::{error_response, Outcome};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ConnId, Lsn};
use crate::wire::http::Response;

/// What the runtime is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostJob {
    /// Copy the store, as of now, into `dir` (missing or empty).
    Backup { dir: String },
    /// Check a backup's manifest and every file's checksum.
    VerifyBackup { dir: String },
}

/// A job and the request waiting for it.
#[derive(Debug)]
pub struct HostTask {
    ticket: Ticket,
    pub job: HostJob,
}

impl Server {
    /// Queues `job` for the runtime; the request's reply waits for it.
    pub(crate) fn defer_host_job(&mut self, conn: ConnId, job: HostJob) -> Result<Outcome> {
        if matches!(job, HostJob::Backup { .. }) {
            if self.backup_running {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "a backup is already running: wait for it to finish",
                ));
            }
            self.backup_running = true;
        }
        let ticket = self.pending.ticket(conn);
        self.host_jobs.push_back(HostTask { ticket, job });
        Ok(Outcome::Pending(ticket))
    }

    /// The next job for the runtime. Drain after every call that holds the
    /// lock, as `poll_read`.
    pub fn poll_host_job(&mut self) -> Option<HostTask> {
        self.host_jobs.pop_front()
    }

    /// A job is done: its request gets `answer` (a JSON body) or the error.
    pub fn finish_host_job(&mut self, task: HostTask, answer: Result<serde_json::Value>) {
        if matches!(task.job, HostJob::Backup { .. }) {
            self.backup_running = false;
        }
        let response = match answer {
            Ok(body) => Response::json(200, body.to_string()),
            Err(e) => error_response(&e),
        };
        self.count_request(response.status, None);
        self.complete(task.ticket, response, Lsn::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn one_backup_at_a_time() {
        let mut server = Server::new(Config::default(), b"secret", 1);
        let job = |dir: &str| HostJob::Backup { dir: dir.into() };
        server.defer_host_job(ConnId(1), job("/a")).unwrap();
        let busy = server.defer_host_job(ConnId(2), job("/b")).unwrap_err();
        assert_eq!(busy.status(), 409, "{}", busy.message);
        // Verifying is not a backup: it may run meanwhile.
        let verify = HostJob::VerifyBackup { dir: "/a".into() };
        server.defer_host_job(ConnId(2), verify).unwrap();
        let task = server.poll_host_job().unwrap();
        assert_eq!(task.job, job("/a"));
        server.finish_host_job(task, Ok(serde_json::json!({"lsn": 1})));
        server.defer_host_job(ConnId(3), job("/c")).unwrap();
    }
}
