//! Tidepool on OS threads: a thread per HTTP connection with blocking sockets;
//! WebSocket and SSE streams served by a small pool (`streams`); outbound calls
//! on a thread each (`outbound`); the shared host (writer, timers, compactor)
//! from `tidepool-host`. For embedding where no async runtime is wanted;
//! behaves exactly like the smol runtime because every decision is made in
//! `tidepool-core`.

mod outbound;
mod streams;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;
use tidepool_core::config::Config;
use tidepool_core::conn::{Connection, Effect};
use tidepool_core::driver;
use tidepool_core::time::Timestamp;
use tidepool_host::{self as host, now, BootError, Host, Listener, Peer, Transport};

/// The command-line entry point (see `host::cli_main`).
pub fn cli_main(program: &str) {
    host::cli_main(program, run);
}

/// Boots, binds and serves until the process ends.
pub fn run(config: Config) -> Result<(), BootError> {
    let listen = config.listen.clone();
    let eva_listen = config.eva_listen.clone();
    let booted = host::boot(config)?;
    for line in &booted.banner {
        println!("tidepool: {line}");
    }
    let listener = TcpListener::bind(&listen).map_err(|source| BootError::Listen {
        addr: listen.clone(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| BootError::Listen {
        addr: listen.clone(),
        source,
    })?;
    let mut listeners = vec![(listener, Listener::Main)];
    if !eva_listen.is_empty() {
        let failed = |source| BootError::Listen {
            addr: eva_listen.clone(),
            source,
        };
        let eva = TcpListener::bind(&eva_listen).map_err(failed)?;
        listeners.push((eva, Listener::Eva));
    }
    let host = host::start(booted)?;
    if let Some((eva, _)) = listeners.get(1) {
        let at = eva.local_addr().map_err(|source| BootError::Listen {
            addr: eva_listen.clone(),
            source,
        })?;
        println!(
            "tidepool: EVA chat served on {}://{at} (/ws, /health)",
            host.scheme()
        );
    }
    host.set_performer(Box::new(outbound::StdCalls::default()));
    println!(
        "tidepool: listening on {}://{addr} (threads runtime)",
        host.scheme()
    );
    serve(host, listeners);
    Ok(())
}

/// Accepts connections forever, one thread each while they speak HTTP; a
/// connection that switches to WebSocket or SSE moves to the stream pool.
/// Every connection is served, even over the limit: core answers it with a
/// 503 rather than the socket being dropped without a word.
pub fn serve(host: Arc<Host>, listeners: Vec<(TcpListener, Listener)>) {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let streams = match streams::Streams::start(host.clone(), workers) {
        Ok(s) => s,
        Err(e) => {
            tidepool_host::log::warn(&format!("cannot start the stream workers: {e}"));
            return;
        }
    };
    let mut accepting = Vec::new();
    for (listener, kind) in listeners {
        let (h, s) = (host.clone(), streams.clone());
        let spawned = thread::Builder::new()
            .name("tidepool-accept".into())
            .spawn(move || accept_loop(&h, &s, &listener, kind));
        match spawned {
            Ok(t) => accepting.push(t),
            Err(e) => tidepool_host::log::warn(&format!("cannot start an accept thread: {e}")),
        }
    }
    for t in accepting {
        let _ = t.join();
    }
}

fn accept_loop(
    host: &Arc<Host>,
    streams: &Arc<streams::Streams>,
    listener: &TcpListener,
    kind: Listener,
) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let peer = Peer {
            ip: stream.peer_addr().ok().map(|a| a.ip()),
            listener: kind,
        };
        let (h, s) = (host.clone(), streams.clone());
        let _ = thread::Builder::new()
            .name("tidepool-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = serve_connection(&h, &s, stream, peer);
            });
    }
}

/// Wakes a connection's thread: a sticky flag (no wake-up is lost between a
/// check and a wait) and a channel to block on. Once the connection moves to
/// the stream pool, wake-ups go to the pool instead.
pub(crate) struct Wakeup {
    flag: Arc<AtomicBool>,
    rx: crossbeam_channel::Receiver<()>,
    redirect: Arc<OnceLock<host::Waker>>,
}

impl Wakeup {
    fn new() -> (Wakeup, host::Waker) {
        let flag = Arc::new(AtomicBool::new(false));
        let redirect: Arc<OnceLock<host::Waker>> = Arc::new(OnceLock::new());
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let waker: host::Waker = {
            let (flag, redirect) = (flag.clone(), redirect.clone());
            Arc::new(move || match redirect.get() {
                Some(to) => to(),
                None => {
                    flag.store(true, Ordering::Release);
                    let _ = tx.try_send(());
                }
            })
        };
        (Wakeup { flag, rx, redirect }, waker)
    }

    /// Whether a wake-up came since the last look.
    fn take(&self) -> bool {
        self.flag.swap(false, Ordering::AcqRel)
    }

    fn wait(&self, timeout: Duration) {
        let _ = self.rx.recv_timeout(timeout);
    }

    /// From now on, wake-ups call `to` (a wake-up already pending is passed on).
    pub(crate) fn redirect(&self, to: host::Waker) {
        let pending = self.take();
        let _ = self.redirect.set(to.clone());
        if pending {
            to();
        }
    }
}

fn serve_connection(
    host: &Arc<Host>,
    streams: &Arc<streams::Streams>,
    stream: TcpStream,
    peer: Peer,
) -> io::Result<()> {
    let (wakeup, waker) = Wakeup::new();
    let conn = host.accept(waker, peer);
    let id = conn.id();
    let transport = host.transport();
    let result = match stream.set_nodelay(true) {
        Ok(()) => http_connection(host, streams, conn, stream, transport, wakeup),
        Err(e) => Err(e),
    };
    match result {
        // The stream pool owns it now and ends it.
        Ok(Ended::Adopted) => Ok(()),
        Ok(Ended::Closed) => {
            host.connection_closed(id);
            Ok(())
        }
        Err(e) => {
            host.connection_closed(id);
            Err(e)
        }
    }
}

/// How an HTTP connection's thread ended.
enum Ended {
    Closed,
    /// It switched to WebSocket or SSE and went to the stream pool.
    Adopted,
}

/// Steps the connection and performs its effects (blocking) until none are left.
fn step(host: &Host, conn: &mut Connection, out: &mut Vec<u8>) -> driver::Step {
    let mut shared: &Host = host;
    loop {
        let step = driver::step(conn, &mut shared, now(), out);
        if step.effects.is_empty() {
            return step;
        }
        for effect in step.effects {
            match effect {
                Effect::ReadHistory { after, .. } => {
                    let history = host.read_history(after);
                    host.with_server(|s| conn.handle_history(s, history));
                }
            }
        }
    }
}

/// Writes what the connection released (`plain`, left empty), sealed by the
/// transport; `wire` is scratch.
fn send(
    stream: &mut TcpStream,
    transport: &mut Transport,
    plain: &mut Vec<u8>,
    wire: &mut Vec<u8>,
) -> io::Result<()> {
    wire.clear();
    transport.seal(plain, wire);
    if wire.is_empty() {
        return Ok(());
    }
    stream.write_all(wire)
}

/// The connection loop: step, write what is released, then wait for
/// durability if replies are held, otherwise read until the connection's
/// deadline.
fn http_connection(
    host: &Arc<Host>,
    streams: &Arc<streams::Streams>,
    mut conn: Connection,
    mut stream: TcpStream,
    mut transport: Transport,
    wakeup: Wakeup,
) -> io::Result<Ended> {
    // Start small and grow when a read fills the buffer: a connection that
    // upgrades leaves this thread, and what the thread allocated stays
    // resident in its allocator heap for as long as the stream lives.
    let mut buf = vec![0u8; 4096];
    let (mut out, mut wire) = (Vec::new(), Vec::new());
    loop {
        if wakeup.take() {
            conn.handle_notify();
        }
        out.clear();
        let step = step(host, &mut conn, &mut out);
        if step.closed {
            transport.close();
        }
        send(&mut stream, &mut transport, &mut out, &mut wire)?;
        if step.closed {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Ok(Ended::Closed);
        }
        if conn.wants_server() {
            continue;
        }
        if conn.is_streaming() {
            streams.adopt(conn, stream, transport, &wakeup)?;
            return Ok(Ended::Adopted);
        }
        let timeout = conn
            .poll_timeout()
            .map(|t| t.since(now()).max(Duration::from_millis(1)))
            .unwrap_or(Duration::from_secs(60));
        if let Some(lsn) = step.durable_after {
            host.durability.wait_past(lsn, Duration::from_millis(100));
            continue;
        }
        if !step.read {
            wakeup.wait(timeout);
            if now() >= conn.poll_timeout().unwrap_or(Timestamp::MAX) {
                conn.handle_timeout(now());
            }
            continue;
        }
        stream.set_read_timeout(Some(timeout))?;
        match stream.read(&mut buf) {
            Ok(0) => conn.handle_eof(),
            Ok(n) => {
                if let Err(e) = transport.receive(&buf[..n], &mut conn, now()) {
                    // The alert, then close.
                    let _ = send(&mut stream, &mut transport, &mut Vec::new(), &mut wire);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                if n == buf.len() && buf.len() < 64 * 1024 {
                    buf.resize(buf.len() * 2, 0);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                conn.handle_timeout(now())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
