//! Reads that run outside the server lock. A handler takes a `Snapshot` of
//! the collections it reads (O(1) per collection) and defers the rest of its
//! work as a `ReadJob`: the request gets a `Ticket` like any reply that comes
//! later, the runtime runs the job on a reader thread (`poll_read`), and
//! `finish_read` hands the reply to the waiting connection (a WebSocket's
//! reply is queued for its socket instead). A job may end with work under the
//! lock (`Finish::UnderLock`): a search that needed an index builds it
//! outside, then installs it and answers. A long scan, sort, join or index
//! build then holds up nobody: writers and other readers go on meanwhile.
//! A stored function's slow CPU work (bcrypt) runs the same way, and its
//! answer resumes the run (`Deliver::Function`).

use super::functions::RunId;
use super::pending::Ticket;
use super::Server;
use crate::dialect::rest::{self, Outcome};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ConnId, Lsn};
use crate::wire::http::Response;
use bytes::Bytes;
use std::time::Duration;

/// Reads one WebSocket may have running at once.
pub const MAX_READS_PER_SOCKET: usize = 16;

/// Work that finishes a read under the lock.
pub type UnderLock = Box<dyn FnOnce(&mut Server) -> Result<Response> + Send>;

/// A read's work once its request is checked and its snapshot taken: given
/// "is my time up?", the response.
pub type ReadWork = Box<dyn FnOnce(&dyn Fn() -> bool) -> Result<Response> + Send>;

/// What the work done outside the lock comes to.
pub enum Finish {
    /// The reply.
    Reply(Response),
    /// A message for a streaming connection (a WebSocket reply), queued
    /// behind its events.
    Message(Bytes),
    /// Work to finish under the lock (installing an index built outside
    /// it, then answering from it).
    UnderLock(UnderLock),
    /// A function's computed value, to resume its run with.
    Computed(serde_json::Value),
}

/// The work of one read: given "is my time up?", what it comes to.
type Run = Box<dyn FnOnce(&dyn Fn() -> bool) -> Result<Finish> + Send>;

/// Where a read's answer goes.
#[derive(Debug, Clone, Copy)]
enum Deliver {
    /// The reply an HTTP request waits for.
    Ticket(Ticket),
    /// A message on a WebSocket (replies carry their message id, so they
    /// may overtake each other).
    Stream(ConnId),
    /// A stored function's run, waiting on CPU work (`Effect::Compute`).
    Function(RunId),
}

/// A read to run outside the lock (`Server::poll_read`).
pub struct ReadJob {
    deliver: Deliver,
    /// Everything the snapshot saw must be durable before the reply goes out.
    wait_for: Lsn,
    /// How long it may run (`--max-query-time`).
    max_time: Duration,
    run: Run,
}

impl std::fmt::Debug for ReadJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadJob")
            .field("deliver", &self.deliver)
            .field("wait_for", &self.wait_for)
            .finish_non_exhaustive()
    }
}

/// A finished read, for `Server::finish_read`.
pub struct ReadDone {
    deliver: Deliver,
    wait_for: Lsn,
    finish: Result<Finish>,
}

impl ReadJob {
    /// Whether this is a function's CPU work (bcrypt), which the runtime
    /// runs on threads of its own so a burst of logins delays no query.
    pub fn is_compute(&self) -> bool {
        matches!(self.deliver, Deliver::Function(_))
    }

    /// How long the read may run before it is stopped.
    pub fn max_time(&self) -> Duration {
        self.max_time
    }

    /// Runs the read (no lock held). `expired` says whether its time budget
    /// (`--max-query-time`) is spent; the read stops with an error then.
    pub fn run(self, expired: &dyn Fn() -> bool) -> ReadDone {
        ReadDone {
            deliver: self.deliver,
            wait_for: self.wait_for,
            finish: (self.run)(expired),
        }
    }
}

impl Server {
    /// Defers the rest of a read for `conn` to a reader thread. The job must
    /// own what it reads (a `Snapshot`, the parsed query).
    pub fn defer_read(
        &mut self,
        conn: ConnId,
        run: impl FnOnce(&dyn Fn() -> bool) -> Result<Response> + Send + 'static,
    ) -> Outcome {
        self.defer_work(conn, move |expired| run(expired).map(Finish::Reply))
    }

    /// `defer_read` for work that may end under the lock (`Finish`).
    pub fn defer_work(
        &mut self,
        conn: ConnId,
        run: impl FnOnce(&dyn Fn() -> bool) -> Result<Finish> + Send + 'static,
    ) -> Outcome {
        let ticket = self.pending.ticket(conn);
        self.queue_read(Deliver::Ticket(ticket), Box::new(run));
        Outcome::Pending(ticket)
    }

    /// Defers a read for a WebSocket on `conn`: `run` gives the whole reply
    /// message, which is queued for the socket when it is done. A socket may
    /// have `MAX_READS_PER_SOCKET` running (it does not wait for their
    /// answers to send more, as an HTTP connection does): past that, 429.
    pub fn defer_message(
        &mut self,
        conn: ConnId,
        run: impl FnOnce(&dyn Fn() -> bool) -> Bytes + Send + 'static,
    ) -> Result<()> {
        let running = self.socket_reads.entry(conn).or_default();
        if *running >= MAX_READS_PER_SOCKET {
            return Err(Error::new(
                ErrorKind::TooManyRequests,
                format!(
                    "this socket has {MAX_READS_PER_SOCKET} queries running: send more as their answers come"
                ),
            ));
        }
        *running += 1;
        let run = move |expired: &dyn Fn() -> bool| Ok(Finish::Message(run(expired)));
        self.queue_read(Deliver::Stream(conn), Box::new(run));
        Ok(())
    }

    /// Runs `work` for function run `id` outside the lock (the runtime's
    /// compute thread: `ReadJob::is_compute`); its value
    /// resumes the run (`finish_read`).
    pub(super) fn defer_compute(
        &mut self,
        id: RunId,
        max_time: Duration,
        work: impl FnOnce() -> serde_json::Value + Send + 'static,
    ) {
        let run = move |_: &dyn Fn() -> bool| Ok(Finish::Computed(work()));
        let wait_for = self.read_position();
        self.reads.push_back(ReadJob {
            deliver: Deliver::Function(id),
            wait_for,
            max_time,
            run: Box::new(run),
        });
    }

    fn queue_read(&mut self, deliver: Deliver, run: Run) {
        let wait_for = self.read_position();
        self.reads.push_back(ReadJob {
            deliver,
            wait_for,
            max_time: Duration::from_secs(self.config.max_query_time_secs.max(1)),
            run,
        });
    }

    /// The next read for the runtime to run outside the lock. Drain after
    /// every call that holds the lock.
    pub fn poll_read(&mut self) -> Option<ReadJob> {
        self.reads.pop_front()
    }

    /// A read finished: its connection gets the reply (once what it saw is
    /// durable). A connection that went meanwhile is forgotten. `now` is
    /// for a function run the answer resumes.
    pub fn finish_read(&mut self, done: ReadDone, now: crate::time::Timestamp) {
        let ticket = match done.deliver {
            Deliver::Ticket(ticket) => ticket,
            Deliver::Function(id) => {
                let value = match done.finish {
                    Ok(Finish::Computed(value)) => value,
                    _ => serde_json::Value::Null,
                };
                self.computed(id, value, now);
                return;
            }
            Deliver::Stream(conn) => {
                if let Some(running) = self.socket_reads.get_mut(&conn) {
                    *running -= 1;
                    if *running == 0 {
                        self.socket_reads.remove(&conn);
                    }
                }
                if let Ok(Finish::Message(bytes)) = done.finish {
                    self.queue_for_stream(conn, done.wait_for, bytes);
                }
                return;
            }
        };
        let (result, wait_for) = match done.finish {
            Ok(Finish::Reply(r)) => (Ok(r), done.wait_for),
            Ok(Finish::Message(_) | Finish::Computed(_)) => (
                Err(crate::error::Error::internal(
                    "a WebSocket message or function value was made for an HTTP request",
                )),
                done.wait_for,
            ),
            // Answered from the state as it is now.
            Ok(Finish::UnderLock(f)) => (f(self), self.read_position()),
            Err(e) => (Err(e), done.wait_for),
        };
        let response = result.unwrap_or_else(|e| rest::error_response(&e));
        self.count_request(response.status, None);
        self.complete(ticket, response, wait_for);
    }

    /// What a read taken now depends on: the last commit (or, once storage
    /// failed or with `durable_operations` off, what is known durable), as
    /// for a read answered under the lock (`finish_operation`).
    fn read_position(&self) -> Lsn {
        if self.storage_failure.is_some() || !self.durable_acks {
            self.durable
        } else {
            self.engine.last_lsn()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_socket_has_a_bounded_number_of_reads_running() {
        let mut server = Server::new(Config::default(), b"secret", 1);
        let (busy, other) = (ConnId(7), ConnId(8));
        let reply = || Bytes::from_static(b"done");
        for _ in 0..MAX_READS_PER_SOCKET {
            server.defer_message(busy, move |_| reply()).unwrap();
        }
        let refused = server.defer_message(busy, move |_| reply()).unwrap_err();
        assert_eq!(refused.status(), 429, "{}", refused.message);
        // Another socket is not affected.
        server.defer_message(other, move |_| reply()).unwrap();
        // One answer makes room for one more.
        let job = server.poll_read().unwrap();
        server.finish_read(job.run(&|| false), crate::time::Timestamp::from_micros(0));
        server.defer_message(busy, move |_| reply()).unwrap();
        assert!(server.defer_message(busy, move |_| reply()).is_err());
        // Every job finishing leaves no count behind.
        while let Some(job) = server.poll_read() {
            server.finish_read(job.run(&|| false), crate::time::Timestamp::from_micros(0));
        }
        assert!(server.socket_reads.is_empty());
    }
}
