//! Tidepool on OS threads: a thread per connection, blocking sockets, and the
//! shared host (writer, timers, compactor) from `tidepool-host`. For embedding
//! where no async runtime is wanted; behaves exactly like the smol runtime
//! because every decision is made in `tidepool-core`.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use tidepool_core::config::Config;
use tidepool_core::conn::{Connection, Effect};
use tidepool_core::driver;
use tidepool_core::time::Timestamp;
mod outbound;

use tidepool_host::{self as host, now, BootError, Host};

/// The command-line entry point (see `host::cli_main`).
pub fn cli_main(program: &str) {
    host::cli_main(program, run);
}

/// Boots, binds and serves until the process ends.
pub fn run(config: Config) -> Result<(), BootError> {
    let listen = config.listen.clone();
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
    let host = host::start(booted)?;
    host.set_performer(Box::new(outbound::StdCalls::default()));
    println!("tidepool: listening on http://{addr} (threads runtime)");
    serve(host, listener);
    Ok(())
}

/// Accepts connections forever, one thread each. Every connection is served,
/// even over the limit: core answers it with a 503 rather than the socket
/// being dropped without a word.
pub fn serve(host: Arc<Host>, listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let h = host.clone();
        let _ = thread::Builder::new()
            .name("tidepool-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = serve_connection(&h, stream);
            });
    }
}

/// Wakes a connection's thread: a sticky flag (no wake-up is lost between a
/// check and a wait) and a channel to block on.
struct Wakeup {
    flag: Arc<AtomicBool>,
    rx: crossbeam_channel::Receiver<()>,
}

impl Wakeup {
    fn new() -> (Wakeup, host::Waker) {
        let flag = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let waker: host::Waker = {
            let flag = flag.clone();
            Arc::new(move || {
                flag.store(true, Ordering::Release);
                let _ = tx.try_send(());
            })
        };
        (Wakeup { flag, rx }, waker)
    }

    /// Whether a wake-up came since the last look.
    fn take(&self) -> bool {
        self.flag.swap(false, Ordering::AcqRel)
    }

    fn wait(&self, timeout: Duration) {
        let _ = self.rx.recv_timeout(timeout);
    }
}

fn serve_connection(host: &Arc<Host>, stream: TcpStream) -> io::Result<()> {
    let (wakeup, waker) = Wakeup::new();
    let conn = host.accept(waker.clone());
    let id = conn.id();
    let result = match stream.set_nodelay(true) {
        Ok(()) => http_connection(host, conn, stream, wakeup, &waker),
        Err(e) => Err(e),
    };
    host.connection_closed(id);
    result
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

/// The connection loop: step, write what is released, then wait for
/// durability if replies are held, otherwise read until the connection's
/// deadline. A connection that upgrades to WebSocket or SSE continues in
/// `stream_connection`.
fn http_connection(
    host: &Arc<Host>,
    mut conn: Connection,
    mut stream: TcpStream,
    wakeup: Wakeup,
    waker: &host::Waker,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        if wakeup.take() {
            conn.handle_notify();
        }
        out.clear();
        let step = step(host, &mut conn, &mut out);
        if !out.is_empty() {
            stream.write_all(&out)?;
        }
        if step.closed {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        if conn.wants_server() {
            continue;
        }
        if conn.is_streaming() {
            return stream_connection(host, conn, stream, wakeup, waker);
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
            Ok(n) => conn.handle_input(&buf[..n], now()),
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

/// A WebSocket or SSE connection: this thread reads, a second thread writes
/// (events arrive from other connections at any time, so writing cannot wait
/// for the next read). They share the connection state machine.
fn stream_connection(
    host: &Arc<Host>,
    conn: Connection,
    stream: TcpStream,
    wakeup: Wakeup,
    waker: &host::Waker,
) -> io::Result<()> {
    let conn = Arc::new(Mutex::new(conn));
    let writer = {
        let (host, conn, waker) = (host.clone(), conn.clone(), waker.clone());
        let out = stream.try_clone()?;
        thread::Builder::new()
            .name("tidepool-stream".into())
            .stack_size(256 * 1024)
            .spawn(move || stream_writer(&host, &conn, out, &wakeup, &waker))?
    };
    let mut input = stream;
    input.set_read_timeout(None)?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            if n == 0 {
                c.handle_eof();
            } else {
                c.handle_input(&buf[..n], now());
            }
        }
        waker();
        if n == 0 {
            break;
        }
    }
    let _ = writer.join();
    Ok(())
}

fn stream_writer(
    host: &Host,
    conn: &Mutex<Connection>,
    mut out: TcpStream,
    wakeup: &Wakeup,
    waker: &host::Waker,
) {
    let mut bytes = Vec::new();
    loop {
        let (step, deadline) = {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            if wakeup.take() {
                c.handle_notify();
            }
            c.handle_timeout(now());
            bytes.clear();
            let step = step(host, &mut c, &mut bytes);
            (step, c.poll_timeout())
        };
        if !bytes.is_empty() && out.write_all(&bytes).is_err() {
            conn.lock().unwrap_or_else(|p| p.into_inner()).handle_eof();
            let _ = out.shutdown(std::net::Shutdown::Both);
            return;
        }
        if step.closed {
            let _ = out.shutdown(std::net::Shutdown::Both);
            return;
        }
        if let Some(lsn) = step.durable_after {
            host.durability.notify_next(waker.clone());
            if host.durability.lsn() >= lsn {
                continue;
            }
        }
        let wait = deadline
            .map(|t| t.since(now()))
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        wakeup.wait(wait);
    }
}
