//! What both runtimes share: booting (secrets, recovery), the group-commit writer
//! thread that owns the store, the expiry sweeper and background compaction. All
//! of it is blocking code on OS threads; the async runtime reuses it as is.
//!
//! Write path, numbered like sled's ARCHITECTURE.md:
//! 1. a connection executes a request under the `server` lock; the engine applies
//!    it in memory and seals its log records into a batch with the next LSN;
//! 2. the connection wakes the writer (a coalescing channel);
//! 3. the writer drains every pending batch under the lock, then appends them to
//!    the store and syncs once per the fsync policy, without holding the lock;
//! 4. it publishes the durable LSN (`Durability`) and wakes waiting connections;
//! 5. each connection releases the replies whose LSN is now durable.

use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tidepool_core::config::Config;
use tidepool_core::conn::Connection;
use tidepool_core::conn::{History, HISTORY_CHUNK_BYTES};
use tidepool_core::engine::SnapshotCursor;
use tidepool_core::http::client::Outbound;
use tidepool_core::ids::{ConnId, Lsn};
use tidepool_core::server::Server;
use tidepool_core::time::Timestamp;
use tidepool_storage::{FinishedSnapshot, Store, StoreOptions, StoreReader, SyncPolicy};

/// Wakes one connection's task or thread.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The wall clock as core wants it.
pub fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_micros(d.as_micros() as i64)
}

/// The durable LSN, readable without the server lock, and a way to wait for it.
#[derive(Default)]
pub struct Durability {
    lsn: AtomicU64,
    failed: AtomicBool,
    gate: Mutex<()>,
    changed: Condvar,
    /// Extra wake-up hook (the async runtime's event).
    hook: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Connections waiting for the next durability report.
    waiting: Mutex<Vec<Waker>>,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("lsn", &self.lsn())
            .field("failed", &self.failed())
            .finish()
    }
}

impl Durability {
    pub fn lsn(&self) -> Lsn {
        Lsn(self.lsn.load(Ordering::Acquire))
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn set_hook(&self, hook: Box<dyn Fn() + Send + Sync>) {
        let _ = self.hook.set(hook);
    }

    fn publish(&self, lsn: Lsn, failed: bool) {
        {
            let _g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
            self.lsn.fetch_max(lsn.0, Ordering::AcqRel);
            if failed {
                self.failed.store(true, Ordering::Release);
            }
        }
        self.changed.notify_all();
        if let Some(hook) = self.hook.get() {
            hook();
        }
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        for w in waiting {
            w();
        }
    }

    /// Calls `waker` at the next durability report (or failure).
    pub fn notify_next(&self, waker: Waker) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(waker);
    }

    /// Blocks until the durable LSN passes `lsn`, storage fails, or `timeout`.
    pub fn wait_past(&self, lsn: Lsn, timeout: Duration) {
        let g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.changed.wait_timeout_while(g, timeout, |_| {
            self.lsn.load(Ordering::Acquire) < lsn.0 && !self.failed.load(Ordering::Acquire)
        });
    }
}

/// The shared state of a running server.
pub struct Host {
    server: Mutex<Server>,
    pub durability: Durability,
    wake_writer: Sender<()>,
    wake_sweeper: Sender<()>,
    wakers: Mutex<HashMap<ConnId, Waker>>,
    reader: StoreReader,
    next_conn: std::sync::atomic::AtomicU64,
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

    /// Tells the sweeper that the next deadline may have moved earlier.
    pub fn wake_sweeper(&self) {
        let _ = self.wake_sweeper.try_send(());
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers how to wake a streaming connection when its events are ready.
    pub fn register(&self, conn: ConnId, waker: Waker) {
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conn, waker);
    }

    /// Forgets a connection: its waker and its server-side state.
    pub fn unregister(&self, conn: ConnId) {
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn);
        self.lock().connection_closed(conn);
    }

    fn wake(&self, conns: &[ConnId]) {
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

    /// Performs `Effect::ReadHistory`: waits (briefly) until `upto` is durable,
    /// then reads the next stretch of log after `after`.
    pub fn read_history(&self, after: Lsn, upto: Lsn) -> History {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.durability.lsn() < upto && !self.durability.failed() {
            if Instant::now() > deadline {
                return History::Failed("timed out waiting for the log to become durable".into());
            }
            self.durability.wait_past(upto, Duration::from_millis(50));
        }
        match self
            .reader
            .read_after(tidepool_storage::Lsn(after.0), HISTORY_CHUNK_BYTES)
        {
            Ok(tidepool_storage::History::Batches { batches, more }) => History::Batches {
                batches: batches.into_iter().map(|(l, p)| (Lsn(l.0), p)).collect(),
                more,
            },
            Ok(tidepool_storage::History::Truncated { .. }) => History::Truncated,
            Err(e) => History::Failed(e.to_string()),
        }
    }

    /// Performs `Effect::Http`: connect, send, read until the peer closes.
    pub fn http_call(&self, call: &Outbound) -> Result<Vec<u8>, String> {
        use std::io::Write;
        use std::net::{TcpStream, ToSocketAddrs};
        let deadline = Instant::now() + call.timeout;
        let addr = (call.host.as_str(), call.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", call.host))?
            .next()
            .ok_or_else(|| format!("no address for {}", call.host))?;
        let mut stream = TcpStream::connect_timeout(&addr, call.timeout)
            .map_err(|e| format!("cannot connect to {}:{}: {e}", call.host, call.port))?;
        stream.set_write_timeout(Some(call.timeout)).ok();
        stream
            .write_all(&call.request)
            .map_err(|e| format!("sending the request failed: {e}"))?;
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("timed out after {} s", call.timeout.as_secs()));
            }
            stream.set_read_timeout(Some(left)).ok();
            match stream.read(&mut buf) {
                Ok(0) => return Ok(out),
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > call.max_response_bytes {
                        return Err("the response is too large".into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!("timed out after {} s", call.timeout.as_secs()))
                }
                Err(e) => return Err(format!("reading the response failed: {e}")),
            }
        }
    }

    /// A new connection state machine with the configured limits and timers.
    pub fn new_connection(&self) -> Connection {
        let id = self.next_conn_id();
        let s = self.lock();
        let c = s.config();
        Connection::new(
            id,
            s.limits(),
            Duration::from_secs(c.idle_timeout_secs.max(1)),
            now(),
        )
        .with_streaming(
            Duration::from_secs(c.heartbeat_secs.max(1)),
            c.ws_max_message_bytes,
        )
    }

    /// Tells the connection if storage failed, so replies waiting for writes that
    /// will never be durable become errors.
    pub fn check_storage(&self, conn: &mut Connection) {
        if self.durability.failed() {
            let s = self.lock();
            if let Some(why) = s.storage_failure() {
                conn.handle_storage_failure(s.durable_lsn(), why);
            }
        }
    }

    /// Runs `f` on the server, then wakes the writer if it committed anything.
    pub fn with_server<R>(&self, f: impl FnOnce(&mut Server) -> R) -> R {
        let mut s = self.lock();
        let r = f(&mut s);
        let pending = s.engine.has_log();
        drop(s);
        if pending {
            self.wake_writer();
        }
        r
    }
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

/// Starts the background threads and returns the shared host.
pub fn start(booted: Booted) -> Arc<Host> {
    let Booted { server, store, .. } = booted;
    let (wake_writer, writer_rx) = bounded(1);
    let (wake_sweeper, sweeper_rx) = bounded(1);
    let durable = server.durable_lsn();
    let compact_after = server.config().compact_after_bytes;
    let reader = store.reader();
    let host = Arc::new(Host {
        server: Mutex::new(server),
        durability: Durability::default(),
        wake_writer,
        wake_sweeper,
        wakers: Mutex::new(HashMap::new()),
        reader,
        next_conn: std::sync::atomic::AtomicU64::new(1),
    });
    host.durability.publish(durable, false);
    let h = host.clone();
    thread::Builder::new()
        .name("tidepool-writer".into())
        .spawn(move || writer_loop(h, store, writer_rx, compact_after))
        .expect("spawn writer thread");
    let h = host.clone();
    thread::Builder::new()
        .name("tidepool-sweeper".into())
        .spawn(move || sweeper_loop(h, sweeper_rx))
        .expect("spawn sweeper thread");
    host
}

/// The group-commit loop: owns the store, appends whatever is pending, syncs once
/// per the fsync policy, publishes the durable LSN. Also installs snapshots that
/// the compactor finished.
fn writer_loop(host: Arc<Host>, mut store: Store, wake: Receiver<()>, compact_after: u64) {
    let policy = store.options().sync;
    let mut last_sync = Instant::now();
    let mut since_snapshot: u64 = 0;
    let (done_tx, done_rx) = bounded::<(FinishedSnapshot, Lsn)>(1);
    let mut compacting = false;
    let mut to_install: Option<(FinishedSnapshot, Lsn)> = None;
    loop {
        let batches: Vec<_> = {
            let mut s = host.lock();
            std::iter::from_fn(|| s.poll_log()).collect()
        };
        if batches.is_empty() {
            if let Ok(done) = done_rx.try_recv() {
                compacting = false;
                to_install = Some(done);
            }
            if let Some((snap, covers)) = to_install.take() {
                if store.synced_lsn().0 >= covers.0 {
                    if let Err(e) = store.install_snapshot(snap) {
                        fail(&host, &store, format!("installing a snapshot failed: {e}"));
                        return;
                    }
                } else {
                    to_install = Some((snap, covers));
                }
            }
            let _ = wake.recv_timeout(Duration::from_millis(200));
            continue;
        }
        let mut last = Lsn::ZERO;
        for b in &batches {
            since_snapshot += b.payload.len() as u64;
            if let Err(e) = store.append(tidepool_storage::Lsn(b.lsn.0), &b.payload) {
                fail(&host, &store, e.to_string());
                return;
            }
            last = b.lsn;
        }
        drop(batches);
        let synced = match policy {
            SyncPolicy::None => Ok(()),
            SyncPolicy::Sync => store.sync(),
            SyncPolicy::Batch { interval_ms } => {
                let due = last_sync + Duration::from_millis(interval_ms);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                // Whatever arrived while waiting rides along in this sync.
                let more: Vec<_> = {
                    let mut s = host.lock();
                    std::iter::from_fn(|| s.poll_log()).collect()
                };
                let mut r = Ok(());
                for b in &more {
                    since_snapshot += b.payload.len() as u64;
                    if let Err(e) = store.append(tidepool_storage::Lsn(b.lsn.0), &b.payload) {
                        r = Err(e);
                        break;
                    }
                    last = b.lsn;
                }
                r.and_then(|()| store.sync())
            }
        };
        if let Err(e) = synced {
            fail(&host, &store, e.to_string());
            return;
        }
        last_sync = Instant::now();
        let ready = host.lock().handle_durable(last);
        host.durability.publish(last, false);
        host.wake(&ready);
        if compact_after > 0 && since_snapshot >= compact_after && !compacting {
            // Replay starts after what was just appended (and synced): the engine may
            // already hold later batches the store has not seen.
            let from = last;
            match store.begin_snapshot(tidepool_storage::Lsn(from.0)) {
                Ok(writer) => {
                    compacting = true;
                    since_snapshot = 0;
                    let h = host.clone();
                    let tx = done_tx.clone();
                    let _ = thread::Builder::new()
                        .name("tidepool-compactor".into())
                        .spawn(move || {
                            if let Some(done) = write_snapshot(&h, writer) {
                                let _ = tx.send(done);
                                h.wake_writer();
                            }
                        });
                }
                Err(e) => eprintln!("tidepool: compaction could not start: {e}"),
            }
        }
    }
}

/// Writes the engine's live state into a snapshot, a chunk per lock hold, so
/// writers are never blocked for more than one chunk. Returns the snapshot and the
/// LSN that must be durable before it may be installed.
fn write_snapshot(
    host: &Host,
    mut writer: tidepool_storage::SnapshotWriter,
) -> Option<(FinishedSnapshot, Lsn)> {
    let mut cursor = SnapshotCursor::default();
    let covers = loop {
        let (chunk, at) = {
            let s = host.lock();
            (
                s.engine.snapshot_chunk(&mut cursor, 2_000),
                s.engine.last_lsn(),
            )
        };
        let Some(chunk) = chunk else { break at };
        if let Err(e) = writer.write_chunk(&chunk) {
            eprintln!("tidepool: compaction failed: {e}");
            return None;
        }
    };
    match writer.finish() {
        Ok(done) => Some((done, covers)),
        Err(e) => {
            eprintln!("tidepool: compaction failed: {e}");
            None
        }
    }
}

fn fail(host: &Host, store: &Store, message: String) {
    eprintln!("tidepool: storage failure, refusing writes until restart: {message}");
    let durable = Lsn(store.synced_lsn().0);
    host.lock().handle_storage_failure(message);
    host.durability.publish(durable, true);
    let all: Vec<ConnId> = host
        .wakers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .copied()
        .collect();
    host.wake(&all);
}

/// Sweeps expired records when core's deadline comes (at least once a second, so
/// a deadline that moved earlier is never missed by more than that).
fn sweeper_loop(host: Arc<Host>, wake: Receiver<()>) {
    loop {
        let deadline = host.lock().poll_timeout();
        let now = now();
        let wait = match deadline {
            Some(t) if t <= now => Duration::ZERO,
            Some(t) => t.since(now).min(Duration::from_secs(1)),
            None => Duration::from_secs(1),
        };
        if !wait.is_zero() {
            let _ = wake.recv_timeout(wait);
            continue;
        }
        host.with_server(|s| s.handle_timeout(self::now()));
    }
}

/// The command-line entry point both binaries share: parses flags and the
/// environment, then calls `run`. Exits with status 1 when running fails and 2
/// for bad arguments.
pub fn cli_main(program: &str, run: fn(Config) -> Result<(), String>) {
    use tidepool_core::config::{help_text, Command};
    let args: Vec<String> = std::env::args().skip(1).collect();
    match Config::parse(args, |k| std::env::var(k).ok()) {
        Ok(Command::Run(config)) => {
            if let Err(e) = run(*config) {
                eprintln!("{program}: {e}");
                std::process::exit(1);
            }
        }
        Ok(Command::Help(_)) => print!("{}", help_text(program)),
        Ok(Command::Version) => println!("{program} {}", tidepool_core::server::VERSION),
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::exit(2);
        }
    }
}
