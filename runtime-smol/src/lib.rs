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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidepool_core::config::Config;
use tidepool_core::conn::{Connection, Effect};
use tidepool_core::driver;
mod outbound;

use tidepool_host::{self as host, now, BootError, Host, Listener, Peer};

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
    let eva_listen = config.eva_listen.clone();
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
        let eva = match eva_listen.as_str() {
            "" => None,
            at => Some(bind(at).await?),
        };
        let host = host::start(booted)?;
        host.set_performer(Box::new(outbound::SmolCalls::new(ex.clone())));
        if let Some((listener, addr)) = eva {
            println!(
                "tidepool: EVA chat served on {}://{addr} (/ws, /health)",
                host.scheme()
            );
            let (h, e) = (host.clone(), ex.clone());
            ex.spawn(async move { serve(&e, h, listener, Listener::Eva).await })
                .detach();
        }
        println!(
            "tidepool: listening on {}://{addr} ({threads} threads, smol runtime)",
            host.scheme()
        );
        serve(&ex, host, listener, Listener::Main).await;
        Ok(())
    }))
}

/// Binds an extra listener.
async fn bind(at: &str) -> Result<(TcpListener, std::net::SocketAddr), BootError> {
    let failed = |source| BootError::Listen {
        addr: at.to_string(),
        source,
    };
    let listener = TcpListener::bind(at).await.map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    Ok((listener, addr))
}

async fn serve(
    ex: &Arc<Executor<'static>>,
    host: Arc<Host>,
    listener: TcpListener,
    kind: Listener,
) {
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            Timer::after(Duration::from_millis(10)).await;
            continue;
        };
        // Every connection is served, even over the limit: core answers it
        // with a 503 rather than the socket being dropped without a word.
        let (h, e) = (host.clone(), ex.clone());
        let peer = Peer {
            ip: Some(from.ip()),
            listener: kind,
        };
        ex.spawn(async move {
            let _ = serve_connection(&e, &h, stream, peer).await;
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

/// One connection as one task: step the connection (`driver::step`), perform
/// its effects, write what it releases, then wait for whichever comes first:
/// bytes from the socket, a wake-up (durability, hub events), or its deadline.
async fn serve_connection(
    ex: &Executor<'static>,
    host: &Arc<Host>,
    stream: TcpStream,
    peer: Peer,
) -> io::Result<()> {
    let notifier = Arc::new(Notifier::default());
    let waker: host::Waker = {
        let n = notifier.clone();
        Arc::new(move || {
            n.flag.store(true, Ordering::Release);
            n.event.notify(usize::MAX);
        })
    };
    let mut conn = host.accept(waker.clone(), peer);
    let mut link = Link {
        stream: stream.clone(),
        transport: host.transport(),
    };
    let result = match stream.set_nodelay(true) {
        Ok(()) => drive(ex, host, &mut conn, &mut link, &notifier, &waker).await,
        Err(e) => Err(e),
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
    host.connection_closed(conn.id());
    result
}

/// The socket and what lies between it and the connection (TLS or nothing).
struct Link {
    stream: TcpStream,
    transport: host::Transport,
}

impl Link {
    /// Writes what the connection released (`plain`, left empty), sealed by
    /// the transport; `wire` is scratch.
    async fn send(&mut self, plain: &mut Vec<u8>, wire: &mut Vec<u8>) -> io::Result<()> {
        wire.clear();
        self.transport.seal(plain, wire);
        if !wire.is_empty() {
            self.stream.write_all(wire).await?;
        }
        Ok(())
    }
}

/// Steps the connection and performs its effects until it has none left.
async fn step(host: &Arc<Host>, conn: &mut Connection, out: &mut Vec<u8>) -> driver::Step {
    let mut shared: &Host = host;
    loop {
        let step = driver::step(conn, &mut shared, now(), out);
        if step.effects.is_empty() {
            return step;
        }
        for effect in step.effects {
            let h = host.clone();
            match effect {
                Effect::ReadHistory { after, .. } => {
                    let history = smol::unblock(move || h.read_history(after)).await;
                    host.with_server(|s| conn.handle_history(s, history));
                }
            }
        }
    }
}

async fn drive(
    ex: &Executor<'static>,
    host: &Arc<Host>,
    conn: &mut Connection,
    link: &mut Link,
    notifier: &Notifier,
    waker: &host::Waker,
) -> io::Result<()> {
    // Start small (an idle subscriber should cost a few KiB) and grow when reads
    // fill the buffer.
    let mut buf = vec![0u8; 2048];
    let mut pending_read: Option<PendingRead> = None;
    let mut out = Vec::new();
    let mut wire = Vec::new();
    // One timer per connection, re-armed only when the deadline moved by more than
    // a second: arming a timer per read costs more than the read itself.
    let mut armed = std::time::Instant::now() + Duration::from_secs(3600);
    let mut timer = Timer::at(armed);
    loop {
        if notifier.flag.swap(false, Ordering::AcqRel) {
            conn.handle_notify();
        }
        out.clear();
        let step = step(host, conn, &mut out).await;
        if step.closed {
            link.transport.close();
        }
        link.send(&mut out, &mut wire).await?;
        if step.closed {
            return Ok(());
        }
        let listener = notifier.event.listen();
        if notifier.flag.load(Ordering::Acquire) || conn.wants_server() {
            continue;
        }
        if let Some(lsn) = step.durable_after {
            host.durability.notify_next(waker.clone());
            if host.durability.lsn() >= lsn {
                continue;
            }
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
        if step.read && pending_read.is_none() {
            let mut reader = link.stream.clone();
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
                        if let Err(e) = link.transport.receive(&buf[..n], conn, now()) {
                            // The alert, then close.
                            let _ = link.send(&mut Vec::new(), &mut wire).await;
                            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                        }
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
