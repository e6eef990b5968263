//! Tidepool on OS threads: a thread per connection, blocking sockets, and the
//! shared host (writer, sweeper, compactor) from `host`. For embedding where no
//! async runtime is wanted; behaves exactly like the smol runtime because every
//! decision is made in `tidepool-core`.

pub mod host;

use host::{now, Host};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use tidepool_core::config::Config;
use tidepool_core::conn::Connection;

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
    let listen = config.listen.clone();
    let booted = host::boot(config)?;
    for line in &booted.banner {
        println!("tidepool: {line}");
    }
    let listener =
        TcpListener::bind(&listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
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
fn serve_connection(host: &Host, mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (limits, idle) = {
        let s = host.lock();
        (
            s.limits(),
            Duration::from_secs(s.config().idle_timeout_secs.max(1)),
        )
    };
    let mut conn = Connection::new(limits, idle, now());
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
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
            stream.write_all(&out)?;
        }
        if conn.is_closed() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Ok(());
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
    }
}
