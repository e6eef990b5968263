//! A small HTTP/1.1 keep-alive client for the load generators, plain or TLS
//! (`--tls`), on smol: one request at a time per connection, so a bench
//! drives many connections from one thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A keep-alive connection for the setup steps (token, prefill, bulk load),
/// driving the same client as the workloads.
pub struct Conn(pub AsyncConn);

impl Conn {
    pub fn open(addr: &str) -> Conn {
        Conn(smol::block_on(AsyncConn::open(addr)))
    }

    /// Sends a request and returns (status, body).
    pub fn call(&mut self, method: &str, path: &str, token: &str, body: &str) -> (u16, Vec<u8>) {
        let status = smol::block_on(self.0.call(method, path, token, body));
        (status, self.0.body().to_vec())
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Pulls `"key":"value"` out of a small JSON body without a JSON parser.
pub fn json_str(body: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = text[start..].find('"')? + start;
    Some(text[start..end].to_string())
}

/// The client side of `--tls`: set once, before any connection opens.
pub static TLS: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// A socket, or TLS over one.
pub enum Stream {
    Plain(smol::net::TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<smol::net::TcpStream>>),
}

impl Stream {
    pub async fn connect(addr: &str) -> Stream {
        let tcp = smol::net::TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).ok();
        match TLS.get() {
            None => Stream::Plain(tcp),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
                let tls = futures_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .expect("TLS handshake");
                Stream::Tls(Box::new(tls))
            }
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use smol::io::AsyncWriteExt;
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    pub async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use smol::io::AsyncReadExt;
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }
}

/// A self-signed certificate for 127.0.0.1 written into `dir` (for the
/// server) and a client configuration that trusts it.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf, Arc<rustls::ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    std::fs::create_dir_all(dir).expect("cert dir");
    let (cert_file, key_file) = (dir.join("loadgen-cert.pem"), dir.join("loadgen-key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("write key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("trust");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    (cert_file, key_file, Arc::new(config))
}

/// A keep-alive HTTP/1.1 connection doing one request at a time.
pub struct AsyncConn {
    stream: Stream,
    buf: Vec<u8>,
    /// Where the last response's body sits in `buf`.
    body: std::ops::Range<usize>,
    host: String,
}

impl AsyncConn {
    pub async fn open(addr: &str) -> AsyncConn {
        let stream = Stream::connect(addr).await;
        AsyncConn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            body: 0..0,
            host: addr.to_string(),
        }
    }

    /// The body of the last response.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }

    /// Sends a request and returns the status (the body stays in `body()`).
    pub async fn call(&mut self, method: &str, path: &str, token: &str, body: &str) -> u16 {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.write_all(req.as_bytes()).await.expect("write");
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).unwrap_or("");
                let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let n = self.stream.read(&mut chunk).await.expect("read");
                    assert!(n > 0, "server closed the connection");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                self.body = end + 4..end + 4 + len;
                return status;
            }
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
