//! Tidepool on smol: async sockets and timers on a small multi-threaded executor.
//! Storage, the sweeper and compaction run on the OS threads of the shared host
//! (`tidepool_std::host`); every protocol decision is made in `tidepool-core`, so
//! this runtime and the threads runtime behave identically.

use event_listener::Event;
use smol::future::FutureExt as _;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};
use smol::{Executor, Timer};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidepool_core::config::Config;
use tidepool_core::conn::Connection;
use tidepool_std::host::{self, now, Host};

/// The command-line entry point: parses flags and environment, then runs. Exits
/// the process with status 1 (runtime failure) or 2 (bad arguments).
pub fn cli_main(program: &str) {
    use tidepool_core::config::{help_text, Command};
    let args: Vec<String> = std::env::args().skip(1).collect();
    match Config::parse(args, |k| std::env::var(k).ok()) {
        Ok(Command::Run(config)) => {
            if let Err(e) = run(config) {
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

/// Boots, binds and serves until the process ends.
pub fn run(config: Config) -> Result<(), String> {
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
            .map_err(|e| e.to_string())?;
    }
    smol::block_on(ex.run(async {
        let listener = TcpListener::bind(&listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let host = host::start(booted);
        let durable = Arc::new(Event::new());
        let hook = durable.clone();
        host.durability.set_hook(Box::new(move || {
            hook.notify(usize::MAX);
        }));
        println!("tidepool: listening on http://{addr} ({threads} threads, smol runtime)");
        serve(&ex, host, durable, listener).await;
        Ok(())
    }))
}

async fn serve(
    ex: &Arc<Executor<'static>>,
    host: Arc<Host>,
    durable: Arc<Event>,
    listener: TcpListener,
) {
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
        let (h, d, o) = (host.clone(), durable.clone(), open.clone());
        ex.spawn(async move {
            let _ = serve_connection(&h, &d, stream).await;
            o.fetch_sub(1, Ordering::Relaxed);
        })
        .detach();
    }
}

enum Wake {
    Read(io::Result<usize>),
    Timeout,
}

/// The same loop as the threads runtime: flush what is durable, wait for
/// durability if replies are held, otherwise read until the connection's deadline.
async fn serve_connection(
    host: &Host,
    durable_event: &Event,
    mut stream: TcpStream,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (limits, idle) = {
        let s = host.lock();
        (
            s.limits(),
            Duration::from_secs(s.config().idle_timeout_secs.max(1)),
        )
    };
    let mut conn = Connection::new(limits, idle, now());
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    // One timer per connection, re-armed only when the deadline moved by more than
    // a second: arming a timer per read costs more than the read itself.
    let mut armed = std::time::Instant::now() + Duration::from_secs(3600);
    let mut timer = Timer::at(armed);
    loop {
        if host.durability.failed() {
            let s = host.lock();
            if let Some(why) = s.storage_failure() {
                conn.handle_storage_failure(s.durable_lsn(), why);
            }
        }
        let durable = host.durability.lsn();
        out.clear();
        while let Some(bytes) = conn.poll_transmit(durable) {
            out.extend_from_slice(&bytes);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        if conn.is_closed() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        if conn.awaiting_durability(durable) {
            let listener = durable_event.listen();
            if conn.awaiting_durability(host.durability.lsn()) && !host.durability.failed() {
                listener
                    .or(async {
                        Timer::after(Duration::from_millis(100)).await;
                    })
                    .await;
            }
            continue;
        }
        if !conn.wants_read() {
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
        let woke = async { Wake::Read(stream.read(&mut buf).await) }
            .or(async {
                (&mut timer).await;
                armed = std::time::Instant::now() + Duration::from_secs(3600);
                Wake::Timeout
            })
            .await;
        match woke {
            Wake::Read(Ok(0)) => conn.handle_eof(),
            Wake::Read(Ok(n)) => conn.handle_input(&buf[..n], now()),
            Wake::Read(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Wake::Read(Err(e)) => return Err(e),
            Wake::Timeout => conn.handle_timeout(now()),
        }
        if conn.wants_server() {
            host.with_server(|s| conn.execute(s, now()));
        }
    }
}
