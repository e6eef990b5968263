//! Outbound calls on smol: one task per call (connect, TLS for https, write the
//! request, feed every read back to the server). Cancelling drops the task,
//! which closes its connection. Every decision (deadlines, parsing, bounds)
//! is core's; this only moves bytes.

use futures_rustls::TlsConnector;
use smol::future::FutureExt as _;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::net::TcpStream;
use smol::{Executor, Task, Timer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidepool_core::server::calls::{CallId, TransportError};
use tidepool_core::wire::http::client::Target;
use tidepool_host::{now, Bytes, CallPerformer, Host};

/// Read buffer per call in flight.
const READ_BYTES: usize = 16 * 1024;

pub struct SmolCalls {
    ex: Arc<Executor<'static>>,
    tasks: Arc<Mutex<HashMap<CallId, Task<()>>>>,
}

impl SmolCalls {
    pub fn new(ex: Arc<Executor<'static>>) -> Self {
        SmolCalls {
            ex,
            tasks: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl CallPerformer for SmolCalls {
    fn start(
        &self,
        host: Arc<Host>,
        id: CallId,
        target: Target,
        request: Bytes,
        connect_timeout: Duration,
    ) {
        let tasks = self.tasks.clone();
        let mut map = tasks.lock().unwrap_or_else(|p| p.into_inner());
        let task = self.ex.spawn({
            let tasks = self.tasks.clone();
            async move {
                run(&host, id, &target, &request, connect_timeout).await;
                // Done: forget the handle without cancelling ourselves.
                let mine = tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                if let Some(task) = mine {
                    task.detach();
                }
            }
        });
        map.insert(id, task);
    }

    fn cancel(&self, id: CallId) {
        let task = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        // Dropping the handle cancels the task and closes its socket.
        drop(task);
    }
}

/// Performs one call, reporting everything to the server.
async fn run(host: &Host, id: CallId, target: &Target, request: &[u8], connect_timeout: Duration) {
    let report = |e: TransportError| host.with_server(|s| s.handle_call_error(id, e, now()));
    let connect = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| TransportError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        Ok::<_, TransportError>(tcp)
    }
    .or(async {
        Timer::after(connect_timeout).await;
        Err(TransportError::Connect("timed out".into()))
    });
    let tcp = match connect.await {
        Ok(tcp) => tcp,
        Err(e) => return report(e),
    };
    let result = if target.tls {
        let name = match rustls_name(&target.host) {
            Ok(n) => n,
            Err(e) => return report(e),
        };
        let connector = TlsConnector::from(host.tls.clone());
        let handshake = async {
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| TransportError::Tls(e.to_string()))
        }
        .or(async {
            Timer::after(connect_timeout).await;
            Err(TransportError::Tls("handshake timed out".into()))
        });
        match handshake.await {
            Ok(tls) => exchange(host, id, tls, request).await,
            Err(e) => Err(e),
        }
    } else {
        exchange(host, id, tcp, request).await
    };
    if let Err(e) = result {
        report(e);
    }
}

fn rustls_name(
    host: &str,
) -> Result<futures_rustls::rustls::pki_types::ServerName<'static>, TransportError> {
    futures_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| TransportError::Tls(format!("`{host}` is not a valid server name: {e}")))
}

/// Writes the request, then feeds what comes back until the peer closes.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    host: &Host,
    id: CallId,
    mut stream: S,
    request: &[u8],
) -> Result<(), TransportError> {
    let io = |e: std::io::Error| TransportError::Io(e.to_string());
    stream.write_all(request).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    host.with_server(|s| s.handle_call_connected(id, now()));
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => {
                host.with_server(|s| s.handle_call_eof(id, now()));
                return Ok(());
            }
            Ok(n) => host.with_server(|s| s.handle_call_data(id, &buf[..n], now())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A TLS peer that closes without close_notify: the response framing
            // (length or chunks) says whether it was complete.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                host.with_server(|s| s.handle_call_eof(id, now()));
                return Ok(());
            }
            Err(e) => return Err(io(e)),
        }
    }
}
