//! The shared state of a running server: the `Server` behind its lock, the
//! durable LSN, the wakers of streaming connections, and the store's reader.

use crate::boot::Booted;
use crate::clock::now;
use crate::durability::Durability;
use crate::sweeper::sweeper_loop;
use crate::writer::writer_loop;
use crossbeam_channel::{bounded, Sender};
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};
use tidepool_core::conn::Connection;
use tidepool_core::conn::{History, HISTORY_CHUNK_BYTES};
use tidepool_core::ids::{ConnId, Lsn};
use tidepool_core::server::Server;
use tidepool_core::wire::http::client::Outbound;
use tidepool_storage::StoreReader;

/// Wakes one connection's task or thread.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The shared state of a running server.
pub struct Host {
    server: Mutex<Server>,
    pub durability: Durability,
    wake_writer: Sender<()>,
    wake_sweeper: Sender<()>,
    pub(crate) wakers: Mutex<HashMap<ConnId, Waker>>,
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
