//! The shared state of a running server: the `Server` behind its lock, the
//! durable LSN, the wakers of streaming connections, and the store's reader.

use crate::boot::{BootError, Booted};
use crate::clock::now;
use crate::documents::documents_loop;
use crate::durability::Durability;
use crate::reads;
use crate::timer::timer_loop;
use crate::tls;
use crate::tls_server::{Certificates, Transport};
use crate::writer::writer_loop;
use bytes::Bytes;
use crossbeam_channel::{bounded, Sender};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread;
use std::time::Duration;
use tidepool_core::conn::{Connection, History, HistoryError, HISTORY_CHUNK_BYTES};
use tidepool_core::driver;
use tidepool_core::ids::{ConnId, Lsn};
use tidepool_core::providers::IN_PROCESS_HOST;
use tidepool_core::server::calls::{CallCommand, CallId, TransportError};
use tidepool_core::server::reads::ReadJob;
use tidepool_core::server::{Note, Peer, Server};
use tidepool_core::time::Timestamp;
use tidepool_core::wire::http::client::Target;
use tidepool_storage::StoreReader;

/// Wakes one connection's task or thread.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// How a runtime performs outbound calls with its own I/O. It reports back
/// through `Host::with_server` and `Server::handle_call_*`.
pub trait CallPerformer: Send + Sync {
    /// Connect to `target` (TLS for https, with `Host::tls`), write `request`,
    /// report `connected`, then the response's bytes, EOF or the error.
    fn start(
        &self,
        host: Arc<Host>,
        id: CallId,
        target: Target,
        request: Bytes,
        connect_timeout: Duration,
    );
    /// Stop the call and close its connection (it may already be over).
    fn cancel(&self, id: CallId);
}

/// The shared state of a running server.
pub struct Host {
    server: Mutex<Server>,
    pub durability: Durability,
    wake_writer: Sender<()>,
    wake_timer: Sender<()>,
    /// The deadline the timer thread sleeps until (microseconds; `i64::MAX`:
    /// none), so `with_server` knows when an operation moved it earlier.
    armed: AtomicI64,
    pub(crate) wakers: Mutex<HashMap<ConnId, Waker>>,
    reader: StoreReader,
    /// The TLS client configuration for https:// calls.
    pub tls: Arc<rustls::ClientConfig>,
    /// What the listeners serve TLS with (`--tls-cert`), if anything.
    certificates: Option<Certificates>,
    performer: OnceLock<Box<dyn CallPerformer>>,
    /// Answers calls to `providers::IN_PROCESS_HOST` (`models`).
    models: Option<Arc<crate::models::Models>>,
    /// Deferred reads, for the reader threads (`reads`).
    readers: Sender<ReadJob>,
    /// Functions' CPU work (bcrypt), for the compute thread: apart from the
    /// readers, so password hashing never queues a query.
    computers: Sender<ReadJob>,
    /// Requests for a backup plan, for the writer (`backup`).
    plan_requests: Sender<crate::backup::PlanRequest>,
    me: Weak<Host>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("durability", &self.durability)
            .finish()
    }
}

impl Host {
    pub fn lock(&self) -> MutexGuard<'_, Server> {
        self.server.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the writer that batches are waiting (cheap; coalesces).
    pub fn wake_writer(&self) {
        let _ = self.wake_writer.try_send(());
    }

    /// Asks the writer for a backup plan; it answers on `reply`.
    pub(crate) fn request_plan(&self, reply: crate::backup::PlanRequest) {
        let _ = self.plan_requests.send(reply);
        self.wake_writer();
    }

    /// Installs the runtime's outbound I/O (once, before serving).
    pub fn set_performer(&self, performer: Box<dyn CallPerformer>) {
        let _ = self.performer.set(performer);
    }

    /// Records the deadline the timer thread now sleeps until.
    pub(crate) fn arm_timer(&self, deadline: Option<Timestamp>) {
        self.armed
            .store(deadline.map_or(i64::MAX, |t| t.micros()), Ordering::Release);
    }

    /// A new connection, accepted by the server (which refuses it politely
    /// over the connection limit). `waker` wakes its task or thread when it
    /// has something new to send; end it with `connection_closed`.
    pub fn accept(&self, waker: Waker, peer: Peer) -> Connection {
        let conn = self.with_server(|s| s.accept_from(now(), peer));
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conn.id(), waker);
        conn
    }

    /// The transport for a connection just accepted: TLS under the current
    /// certificate when the server has one, plain otherwise.
    pub fn transport(&self) -> Transport {
        Transport::new(self.certificates.as_ref().map(Certificates::config))
    }

    /// `https` when the listeners serve TLS, `http` otherwise (for banners).
    pub fn scheme(&self) -> &'static str {
        if self.certificates.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Forgets a connection: its waker and its server-side state.
    pub fn connection_closed(&self, conn: ConnId) {
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn);
        self.with_server(|s| s.connection_closed(conn, now()));
    }

    pub(crate) fn wake(&self, conns: &[ConnId]) {
        if conns.is_empty() {
            return;
        }
        let wakers: Vec<Waker> = {
            let map = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
            conns.iter().filter_map(|c| map.get(c).cloned()).collect()
        };
        for w in wakers {
            w();
        }
    }

    /// Performs `Effect::ReadHistory`: reads the next stretch of log after
    /// `after` (the connection asks only once it is durable).
    pub fn read_history(&self, after: Lsn) -> History {
        match self
            .reader
            .read_after(tidepool_storage::Lsn(after.0), HISTORY_CHUNK_BYTES)
        {
            Ok(tidepool_storage::History::Batches { batches, more }) => History::Batches {
                batches: batches.into_iter().map(|(l, p)| (Lsn(l.0), p)).collect(),
                more,
            },
            Ok(tidepool_storage::History::Truncated { .. }) => History::Truncated,
            Err(e) => History::Failed(HistoryError::Unreadable(e.to_string())),
        }
    }

    /// Runs `f` on the server under its lock, then does what follows every
    /// server call: wakes the writer if batches wait, the connections whose
    /// outboxes have news, and the timer thread if the deadline moved earlier,
    /// and hands outbound calls to the runtime.
    pub fn with_server<R>(&self, f: impl FnOnce(&mut Server) -> R) -> R {
        let mut s = self.lock();
        let r = f(&mut s);
        let pending = s.has_log();
        let deadline = s.poll_timeout();
        let woken: Vec<ConnId> = std::iter::from_fn(|| s.poll_wakeup()).collect();
        let calls: Vec<CallCommand> = std::iter::from_fn(|| s.poll_call()).collect();
        let notes: Vec<Note> = std::iter::from_fn(|| s.poll_note()).collect();
        let reads: Vec<ReadJob> = std::iter::from_fn(|| s.poll_read()).collect();
        let jobs: Vec<_> = std::iter::from_fn(|| s.poll_host_job()).collect();
        drop(s);
        for task in jobs {
            // A backup copies for as long as it takes: a thread of its own.
            if let Some(host) = self.me.upgrade() {
                let spawned = thread::Builder::new()
                    .name("tidepool-backup".into())
                    .spawn(move || crate::backup::run_job(host, task));
                if let Err(e) = spawned {
                    crate::log::warn(&format!("a backup could not start: {e}"));
                }
            }
        }
        for job in reads {
            // The reader threads live as long as the host (they hold it weakly).
            let queue = if job.is_compute() {
                &self.computers
            } else {
                &self.readers
            };
            let _ = queue.send(job);
        }
        for note in notes {
            crate::log::line(note.level, &note.text);
        }
        if pending {
            self.wake_writer();
        }
        if deadline.is_some_and(|t| t.micros() < self.armed.load(Ordering::Acquire)) {
            let _ = self.wake_timer.try_send(());
        }
        self.wake(&woken);
        if !calls.is_empty() {
            self.perform(calls);
        }
        r
    }

    fn perform(&self, calls: Vec<CallCommand>) {
        let (Some(performer), Some(me)) = (self.performer.get(), self.me.upgrade()) else {
            // No runtime I/O installed (cannot happen once serving): fail the
            // calls rather than leave their clients waiting.
            let now = now();
            for cmd in calls {
                if let CallCommand::Start { id, .. } = cmd {
                    let e = TransportError::Connect("no outbound I/O in this runtime".into());
                    self.with_server(|s| s.handle_call_error(id, e, now));
                }
            }
            return;
        };
        for cmd in calls {
            match cmd {
                CallCommand::Start {
                    id,
                    target,
                    request,
                    connect_timeout,
                } => {
                    if target.host != IN_PROCESS_HOST {
                        performer.start(me.clone(), id, target, request, connect_timeout);
                    } else if let Some(models) = &self.models {
                        models.start(me.clone(), id, request);
                    } else {
                        let e = TransportError::Connect("no in-process model is loaded".into());
                        self.with_server(|s| s.handle_call_error(id, e, now()));
                    }
                }
                CallCommand::Cancel(id) => {
                    if let Some(models) = &self.models {
                        models.cancel(id);
                    }
                    performer.cancel(id);
                }
            }
        }
    }
}

/// The driver's view of the host: the server behind its lock, the durable LSN
/// and the storage state without it.
impl driver::Shared for &Host {
    fn with_server<R>(&mut self, f: impl FnOnce(&mut Server) -> R) -> R {
        Host::with_server(self, f)
    }

    fn durable(&self) -> Lsn {
        self.durability.lsn()
    }

    fn storage_failed(&self) -> bool {
        self.durability.failed()
    }
}

/// Starts the background threads and returns the shared host.
pub fn start(booted: Booted) -> Result<Arc<Host>, BootError> {
    let Booted {
        server,
        store,
        models,
        ..
    } = booted;
    let (wake_writer, writer_rx) = bounded(1);
    let (wake_timer, timer_rx) = bounded(1);
    let durable = server.durable_lsn();
    let compact_after = server.config().compact_after_bytes;
    let tls = tls::client_config(&server.config().tls_ca_file)?;
    let certificates = match (&server.config().tls_cert, &server.config().tls_key) {
        (cert, key) if !cert.is_empty() => Some(Certificates::load(cert.as_ref(), key.as_ref())?),
        _ => None,
    };
    let reader = store.reader();
    let read_threads = reads::threads(server.config().read_threads);
    let (readers, read_jobs) = reads::queue();
    let (computers, compute_jobs) = reads::queue();
    let (plan_requests, plans) = crossbeam_channel::unbounded();
    let host = Arc::new_cyclic(|me| Host {
        server: Mutex::new(server),
        durability: Durability::default(),
        wake_writer,
        wake_timer,
        armed: AtomicI64::new(i64::MAX),
        wakers: Mutex::new(HashMap::new()),
        reader,
        tls,
        certificates,
        performer: OnceLock::new(),
        models,
        readers,
        computers,
        plan_requests,
        me: me.clone(),
    });
    reads::start(&host, &read_jobs, read_threads, "reader").map_err(|source| BootError::Spawn {
        what: "reader",
        source,
    })?;
    // One thread for bcrypt: it queues behind itself, never behind queries
    // or queries behind it (the server bounds the queue).
    reads::start(&host, &compute_jobs, 1, "compute").map_err(|source| BootError::Spawn {
        what: "compute",
        source,
    })?;
    host.durability.publish(durable, false);
    let spawn = |what: &'static str, f: Box<dyn FnOnce() + Send>| {
        thread::Builder::new()
            .name(format!("tidepool-{what}"))
            .spawn(f)
            .map(|_| ())
            .map_err(|source| BootError::Spawn { what, source })
    };
    let h = host.clone();
    spawn(
        "writer",
        Box::new(move || writer_loop(h, store, writer_rx, plans, compact_after)),
    )?;
    let h = host.clone();
    spawn("timer", Box::new(move || timer_loop(h, timer_rx)))?;
    let (folder, every) = {
        let s = host.lock();
        let c = s.config();
        (
            s.documents_collection().map(|_| c.rag_docs_folder.clone()),
            Duration::from_secs(c.rag_scan_interval_secs.max(1)),
        )
    };
    if let Some(folder) = folder {
        let h = host.clone();
        spawn(
            "documents",
            Box::new(move || documents_loop(h, folder.into(), every)),
        )?;
    }
    Ok(host)
}
