//! Outbound calls on OS threads: a thread per call (core bounds how many run
//! at once) with blocking sockets, rustls for https. Cancelling shuts the
//! socket down, which ends the thread's read. Every decision (deadlines,
//! parsing, bounds) is core's; this only moves bytes.

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use tidepool_core::server::calls::{CallId, TransportError};
use tidepool_core::wire::http::client::Target;
use tidepool_host::{now, Bytes, CallPerformer, Host};

/// Read buffer per call in flight.
const READ_BYTES: usize = 16 * 1024;

/// One call's handle: its socket once connected, and whether it was cancelled.
#[derive(Default)]
struct Handle {
    socket: Mutex<Option<TcpStream>>,
    cancelled: AtomicBool,
}

impl Handle {
    fn stop(&self) {
        self.cancelled.store(true, Ordering::Release);
        if let Some(s) = self
            .socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[derive(Default)]
pub struct StdCalls {
    running: Arc<Mutex<HashMap<CallId, Arc<Handle>>>>,
}

impl CallPerformer for StdCalls {
    fn start(
        &self,
        host: Arc<Host>,
        id: CallId,
        target: Target,
        request: Bytes,
        connect_timeout: Duration,
    ) {
        let handle = Arc::new(Handle::default());
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, handle.clone());
        let running = self.running.clone();
        let reporter = host.clone();
        let spawned = thread::Builder::new()
            .name("tidepool-call".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                if let Err(e) = run(&host, id, &target, &request, connect_timeout, &handle) {
                    if !handle.cancelled.load(Ordering::Acquire) {
                        host.with_server(|s| s.handle_call_error(id, e, now()));
                    }
                }
                running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            });
        if let Err(e) = spawned {
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            let e = TransportError::Connect(format!("cannot start a thread for the call: {e}"));
            // The server lock is not held while calls are performed.
            reporter.with_server(|s| s.handle_call_error(id, e, now()));
        }
    }

    fn cancel(&self, id: CallId) {
        let handle = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(h) = handle {
            h.stop();
        }
    }
}

fn run(
    host: &Host,
    id: CallId,
    target: &Target,
    request: &[u8],
    connect_timeout: Duration,
    handle: &Handle,
) -> Result<(), TransportError> {
    let addr = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| TransportError::Resolve(e.to_string()))?
        .next()
        .ok_or_else(|| TransportError::Resolve(format!("no address for {}", target.host)))?;
    let tcp = TcpStream::connect_timeout(&addr, connect_timeout)
        .map_err(|e| TransportError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(connect_timeout));
    let control = tcp
        .try_clone()
        .map_err(|e| TransportError::Connect(e.to_string()))?;
    *handle.socket.lock().unwrap_or_else(|p| p.into_inner()) = Some(control);
    if handle.cancelled.load(Ordering::Acquire) {
        handle.stop();
        return Ok(());
    }
    if target.tls {
        let name = ServerName::try_from(target.host.clone()).map_err(|e| {
            TransportError::Tls(format!("`{}` is not a valid server name: {e}", target.host))
        })?;
        let conn = ClientConnection::new(host.tls.clone(), name)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        exchange(host, id, StreamOwned::new(conn, tcp), request)
    } else {
        exchange(host, id, tcp, request)
    }
}

/// Writes the request, then feeds what comes back until the peer closes.
fn exchange<S: Read + Write>(
    host: &Host,
    id: CallId,
    mut stream: S,
    request: &[u8],
) -> Result<(), TransportError> {
    let io = |e: io::Error| match e.kind() {
        io::ErrorKind::InvalidData => TransportError::Tls(e.to_string()),
        _ => TransportError::Io(e.to_string()),
    };
    stream.write_all(request).map_err(io)?;
    stream.flush().map_err(io)?;
    host.with_server(|s| s.handle_call_connected(id, now()));
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                host.with_server(|s| s.handle_call_eof(id, now()));
                return Ok(());
            }
            Ok(n) => host.with_server(|s| s.handle_call_data(id, &buf[..n], now())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A TLS peer that closes without close_notify: the response framing
            // (length or chunks) says whether it was complete.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                host.with_server(|s| s.handle_call_eof(id, now()));
                return Ok(());
            }
            Err(e) => return Err(io(e)),
        }
    }
}
