//! Tidepool on OS threads: a thread per connection, blocking sockets, and the
//! shared host (writer, timers, compactor) from `tidepool-host`. For embedding
//! where no async runtime is wanted; behaves exactly like the smol runtime
//! because every decision is made in `tidepool-core`.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use tidepool_core::config::Config;
use tidepool_core::conn::{Connection, Effect};
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
    let host = host::start(booted);
    println!("tidepool: listening on http://{addr} (threads runtime)");
    serve(host, listener);
    Ok(())
}

/// Accepts connections forever, one thread each.
pub fn serve(host: Arc<Host>, listener: TcpListener) {
    let open = Arc::new(AtomicUsize::new(0));
    let max = host.lock().config().max_connections;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if open.load(Ordering::Relaxed) >= max {
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (h, o) = (host.clone(), open.clone());
        let spawned = thread::Builder::new()
            .name("tidepool-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = serve_connection(&h, stream);
                o.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The connection loop: flush what is durable, wait for durability if replies
/// are held, otherwise read (until the connection's own deadline) and execute.
/// A connection that upgrades to WebSocket or SSE continues in `stream`.
fn serve_connection(host: &Arc<Host>, mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut conn = host.new_connection();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        if conn.wants_server() {
            host.with_server(|s| conn.execute(s, now()));
            perform_effects(host, &mut conn);
        }
        host.check_storage(&mut conn);
        let durable = host.durability.lsn();
        out.clear();
        while let Some(bytes) = conn.poll_transmit(durable) {
            out.extend_from_slice(&bytes);
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
        }
        if conn.is_closed() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        if conn.wants_server() {
            continue;
        }
        if conn.is_streaming() {
            return stream_connection(host, conn, stream);
        }
        if conn.awaiting_durability(durable) {
            host.durability
                .wait_past(durable.next(), Duration::from_millis(100));
            continue;
        }
        if !conn.wants_read() {
            // Closing with nothing left to send: the next poll_transmit closes.
            if conn.poll_transmit(durable).is_none() && !conn.is_closed() {
                conn.handle_eof();
            }
            continue;
        }
        let timeout = conn
            .poll_timeout()
            .map(|t| t.since(now()).max(Duration::from_millis(1)))
            .unwrap_or(Duration::from_secs(60));
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
        if conn.wants_server() {
            host.with_server(|s| conn.execute(s, now()));
        }
        perform_effects(host, &mut conn);
    }
}

/// Performs the connection's I/O requests (history reads, outbound calls).
fn perform_effects(host: &Host, conn: &mut Connection) {
    while let Some(effect) = conn.poll_effect() {
        match effect {
            Effect::ReadHistory { after, upto } => {
                let history = host.read_history(after, upto);
                host.with_server(|s| conn.handle_history(s, history));
            }
            Effect::Http(call) => {
                let result = host.http_call(&call);
                host.with_server(|s| conn.handle_call_result(s, result));
            }
        }
        if conn.wants_server() {
            host.with_server(|s| conn.execute(s, now()));
        }
    }
}

/// A WebSocket or SSE connection: this thread reads, a second thread writes
/// (events arrive from other connections at any time, so writing cannot wait
/// for the next read). They share the connection state machine.
fn stream_connection(host: &Arc<Host>, conn: Connection, stream: TcpStream) -> io::Result<()> {
    let id = conn.id();
    let conn = Arc::new(Mutex::new(conn));
    let notified = Arc::new(AtomicBool::new(true));
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let waker: host::Waker = {
        let notified = notified.clone();
        Arc::new(move || {
            notified.store(true, Ordering::Release);
            let _ = tx.try_send(());
        })
    };
    host.register(id, waker.clone());
    let writer = {
        let (host, conn, notified, waker) =
            (host.clone(), conn.clone(), notified.clone(), waker.clone());
        let out = stream.try_clone()?;
        thread::Builder::new()
            .name("tidepool-stream".into())
            .stack_size(256 * 1024)
            .spawn(move || stream_writer(&host, &conn, out, &rx, &notified, &waker))?
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
    host.unregister(id);
    Ok(())
}

fn stream_writer(
    host: &Host,
    conn: &Mutex<Connection>,
    mut out: TcpStream,
    wake: &crossbeam_channel::Receiver<()>,
    notified: &AtomicBool,
    waker: &host::Waker,
) {
    let mut bytes = Vec::new();
    loop {
        let (closed, awaiting, deadline) = {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            if notified.swap(false, Ordering::AcqRel) {
                c.handle_notify();
            }
            c.handle_timeout(now());
            if c.wants_server() {
                host.with_server(|s| c.execute(s, now()));
            }
            perform_effects(host, &mut c);
            host.check_storage(&mut c);
            let durable = host.durability.lsn();
            bytes.clear();
            while let Some(b) = c.poll_transmit(durable) {
                bytes.extend_from_slice(&b);
            }
            (
                c.is_closed(),
                c.awaiting_durability(durable),
                c.poll_timeout(),
            )
        };
        if !bytes.is_empty() && out.write_all(&bytes).is_err() {
            conn.lock().unwrap_or_else(|p| p.into_inner()).handle_eof();
            let _ = out.shutdown(std::net::Shutdown::Both);
            return;
        }
        if closed {
            let _ = out.shutdown(std::net::Shutdown::Both);
            return;
        }
        if awaiting {
            let before = host.durability.lsn();
            host.durability.notify_next(waker.clone());
            if host.durability.lsn() != before {
                continue;
            }
        }
        let wait = deadline
            .map(|t| t.since(now()))
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        let _ = wake.recv_timeout(wait);
    }
}
