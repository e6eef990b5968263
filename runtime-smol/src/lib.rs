//! Tidepool on smol: async sockets and timers on a small multi-threaded executor.
//! Storage, the sweeper and compaction run on the OS threads of the shared host
//! (`tidepool-host`); every protocol decision is made in `tidepool-core`, so
//! this runtime and the threads runtime behave identically.

use event_listener::Event;
use smol::future::FutureExt as _;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};
use smol::{Executor, Timer};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
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
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let listen = config.listen.clone();
    let booted = host::boot(config)?;
    for line in &booted.banner {
        println!("tidepool: {line}");
    }
    let ex = Arc::new(Executor::new());
    for i in 1..threads {
        let ex = ex.clone();
        std::thread::Builder::new()
            .name(format!("tidepool-worker-{i}"))
            .spawn(move || smol::block_on(ex.run(smol::future::pending::<()>())))
            .map_err(|source| BootError::Spawn {
                what: "executor worker",
                source,
            })?;
    }
    smol::block_on(ex.run(async {
        let listener = TcpListener::bind(&listen)
            .await
            .map_err(|source| BootError::Listen {
                addr: listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| BootError::Listen {
            addr: listen.clone(),
            source,
        })?;
        let host = host::start(booted);
        println!("tidepool: listening on http://{addr} ({threads} threads, smol runtime)");
        serve(&ex, host, listener).await;
        Ok(())
    }))
}

async fn serve(ex: &Arc<Executor<'static>>, host: Arc<Host>, listener: TcpListener) {
    let open = Arc::new(AtomicUsize::new(0));
    let max = host.lock().config().max_connections;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            Timer::after(Duration::from_millis(10)).await;
            continue;
        };
        if open.load(Ordering::Relaxed) >= max {
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (h, o, e) = (host.clone(), open.clone(), ex.clone());
        ex.spawn(async move {
            let _ = serve_connection(&e, &h, stream).await;
            o.fetch_sub(1, Ordering::Relaxed);
        })
        .detach();
    }
}

/// Wakes one connection's task: a sticky flag (so no wake-up is lost between a
/// check and a wait) plus an event to await.
#[derive(Default)]
struct Notifier {
    flag: AtomicBool,
    event: Event,
}

type PendingRead = smol::Task<(io::Result<usize>, Vec<u8>)>;

enum Wake {
    Read(io::Result<usize>, Vec<u8>),
    Notified,
    Timeout,
}

/// The same loop as the threads runtime, as one task: execute, perform effects,
/// flush what is durable, then wait for whichever comes first: bytes from the
/// socket, a wake-up (durability or hub events), or the connection's deadline.
async fn serve_connection(
    ex: &Executor<'static>,
    host: &Arc<Host>,
    mut stream: TcpStream,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut conn = host.new_connection();
    let notifier = Arc::new(Notifier::default());
    let waker: host::Waker = {
        let n = notifier.clone();
        Arc::new(move || {
            n.flag.store(true, Ordering::Release);
            n.event.notify(usize::MAX);
        })
    };
    let result = drive(ex, host, &mut conn, &mut stream, &notifier, &waker).await;
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if conn.is_streaming() {
        host.unregister(conn.id());
    }
    result
}

async fn drive(
    ex: &Executor<'static>,
    host: &Arc<Host>,
    conn: &mut Connection,
    stream: &mut TcpStream,
    notifier: &Notifier,
    waker: &host::Waker,
) -> io::Result<()> {
    // Start small (an idle subscriber should cost a few KiB) and grow when reads
    // fill the buffer.
    let mut buf = vec![0u8; 2048];
    let mut pending_read: Option<PendingRead> = None;
    let mut out = Vec::new();
    let mut registered = false;
    // One timer per connection, re-armed only when the deadline moved by more than
    // a second: arming a timer per read costs more than the read itself.
    let mut armed = std::time::Instant::now() + Duration::from_secs(3600);
    let mut timer = Timer::at(armed);
    loop {
        if notifier.flag.swap(false, Ordering::AcqRel) {
            conn.handle_notify();
        }
        if conn.wants_server() {
            host.with_server(|s| conn.execute(s, now()));
        }
        if conn.is_streaming() && !registered {
            host.register(conn.id(), waker.clone());
            registered = true;
        }
        while let Some(effect) = conn.poll_effect() {
            let h = host.clone();
            match effect {
                Effect::ReadHistory { after, upto } => {
                    let history = smol::unblock(move || h.read_history(after, upto)).await;
                    host.with_server(|s| conn.handle_history(s, history));
                }
                Effect::Http(call) => {
                    let result = smol::unblock(move || h.http_call(&call)).await;
                    host.with_server(|s| conn.handle_call_result(s, result));
                }
            }
            if conn.wants_server() {
                host.with_server(|s| conn.execute(s, now()));
            }
        }
        host.check_storage(conn);
        let durable = host.durability.lsn();
        out.clear();
        while let Some(bytes) = conn.poll_transmit(durable) {
            out.extend_from_slice(&bytes);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        if conn.is_closed() {
            return Ok(());
        }
        let listener = notifier.event.listen();
        if notifier.flag.load(Ordering::Acquire) || conn.wants_server() {
            continue;
        }
        if conn.awaiting_durability(durable) {
            host.durability.notify_next(waker.clone());
            if host.durability.lsn() != durable {
                continue;
            }
        }
        if !conn.wants_read() && !conn.awaiting_durability(durable) && !conn.is_streaming() {
            // Closing with nothing left to send: the next poll_transmit closes.
            if conn.poll_transmit(durable).is_none() && !conn.is_closed() {
                conn.handle_eof();
            }
            continue;
        }
        let deadline = std::time::Instant::now()
            + conn
                .poll_timeout()
                .map(|t| t.since(now()).max(Duration::from_millis(1)))
                .unwrap_or(Duration::from_secs(60));
        if deadline < armed || deadline > armed + Duration::from_secs(1) {
            armed = deadline;
            timer.set_at(armed);
        }
        // The read runs as its own task on a clone of the stream and stays armed
        // across wake-ups: polling a task handle is an atomic load, while polling
        // a socket read again would cost a recv and an epoll re-registration per
        // event per subscriber.
        if conn.wants_read() && pending_read.is_none() {
            let mut reader = stream.clone();
            let mut b = std::mem::take(&mut buf);
            pending_read = Some(ex.spawn(async move {
                let res = reader.read(&mut b).await;
                (res, b)
            }));
        }
        let woke = async {
            match pending_read.as_mut() {
                Some(read) => {
                    let (res, b) = read.await;
                    Wake::Read(res, b)
                }
                None => smol::future::pending().await,
            }
        }
        .or(async {
            listener.await;
            Wake::Notified
        })
        .or(async {
            (&mut timer).await;
            armed = std::time::Instant::now() + Duration::from_secs(3600);
            Wake::Timeout
        })
        .await;
        match woke {
            Wake::Read(res, b) => {
                pending_read = None;
                buf = b;
                match res {
                    Ok(0) => conn.handle_eof(),
                    Ok(n) => {
                        conn.handle_input(&buf[..n], now());
                        if n == buf.len() && buf.len() < 64 * 1024 {
                            buf.resize(buf.len() * 2, 0);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Wake::Notified => {}
            Wake::Timeout => conn.handle_timeout(now()),
        }
    }
}
