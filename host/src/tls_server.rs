//! Serving over TLS (`--tls-cert`, `--tls-key`): the certificate, reloaded
//! when its files change, and `Transport`, which sits between a runtime's
//! socket and a `Connection` and encrypts what goes out and decrypts what comes
//! in. rustls is itself sans-io, so both runtimes keep their own socket loops
//! and only pass bytes through a `Transport`: plain connections cost a branch.

use crate::boot::BootError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tidepool_core::conn::Connection;
use tidepool_core::time::Timestamp;

/// How often, at most, the certificate files are looked at for a change (on
/// an accept, so an idle server does nothing).
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The certificate and key a TLS listener serves, reloaded when either file
/// changes: new connections get the new certificate, open ones keep theirs.
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<Loaded>,
}

struct Loaded {
    config: Arc<ServerConfig>,
    /// The files' modification times and sizes when last looked at.
    stamp: Stamp,
    checked: Instant,
}

type Stamp = Option<[(SystemTime, u64); 2]>;

impl Certificates {
    /// Loads the certificate chain and key (PEM) or says why they cannot be used.
    pub fn load(cert: &Path, key: &Path) -> Result<Certificates, BootError> {
        let stamp = stamp(cert, key);
        let config = server_config(cert, key).map_err(|reason| BootError::TlsCert {
            path: cert.to_path_buf(),
            reason,
        })?;
        Ok(Certificates {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new(Loaded {
                config,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The configuration for a new connection, reloading the files first if
    /// they changed. A change that does not load (a key that does not match,
    /// a half-written file) is reported and the previous certificate kept
    /// until the files change again.
    pub fn config(&self) -> Arc<ServerConfig> {
        let mut loaded = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() >= RELOAD_CHECK {
            loaded.checked = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now != loaded.stamp {
                loaded.stamp = now;
                match server_config(&self.cert, &self.key) {
                    Ok(config) => {
                        loaded.config = config;
                        println!(
                            "tidepool: TLS certificate reloaded from {}",
                            self.cert.display()
                        );
                    }
                    Err(reason) => crate::log::warn(&format!(
                        "the changed TLS certificate {} was not loaded ({reason}); still serving the previous one",
                        self.cert.display()
                    )),
                }
            }
        }
        loaded.config.clone()
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(cert)?, one(key)?])
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if chain.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("the key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    // The server speaks HTTP/1.1 only; say so, so clients that offer h2 fall back.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What lies between a socket and its `Connection`.
pub enum Transport {
    Plain,
    Tls(Box<TlsSession>),
}

/// One TLS session, driven by the bytes its runtime reads and writes.
pub struct TlsSession {
    tls: ServerConnection,
    /// Decrypted bytes on their way to the connection.
    plain: Vec<u8>,
    closed: bool,
}

impl Transport {
    /// A session for a new connection under `config`, or plain without one.
    pub fn new(config: Option<Arc<ServerConfig>>) -> Transport {
        let Some(config) = config else {
            return Transport::Plain;
        };
        match ServerConnection::new(config) {
            Ok(mut tls) => {
                // What the connection releases is bounded by its own outbox;
                // TLS must not refuse part of it.
                tls.set_buffer_limit(None);
                Transport::Tls(Box::new(TlsSession {
                    tls,
                    plain: Vec::new(),
                    closed: false,
                }))
            }
            // Only fails for a configuration rustls cannot use, which
            // `server_config` already ruled out.
            Err(e) => {
                crate::log::warn(&format!("cannot start a TLS session: {e}"));
                Transport::Plain
            }
        }
    }

    /// Hands bytes read from the socket to `conn`, decrypted first under TLS.
    /// An error means the peer does not speak TLS properly: send what `seal`
    /// still yields (the alert) and close the socket.
    pub fn receive(
        &mut self,
        mut bytes: &[u8],
        conn: &mut Connection,
        now: Timestamp,
    ) -> Result<(), rustls::Error> {
        let s = match self {
            Transport::Plain => {
                conn.handle_input(bytes, now);
                return Ok(());
            }
            Transport::Tls(s) => s,
        };
        let was_handshaking = s.tls.is_handshaking();
        while !bytes.is_empty() {
            match s.tls.read_tls(&mut bytes) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            }
            let state = s.tls.process_new_packets()?;
            let ready = state.plaintext_bytes_to_read();
            let peer_closed = state.peer_has_closed();
            if ready > 0 {
                s.plain.resize(ready, 0);
                s.tls
                    .reader()
                    .read_exact(&mut s.plain)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                conn.handle_input(&s.plain, now);
                s.plain.clear();
            }
            if peer_closed {
                conn.handle_eof();
            }
        }
        if was_handshaking {
            conn.handle_handshake_input(now, !s.tls.is_handshaking());
        }
        Ok(())
    }

    /// Moves what the connection released (`plain`, left empty) onto `wire`
    /// as it goes on the socket: as is, or encrypted together with any
    /// records TLS itself has to send (handshake, alerts).
    pub fn seal(&mut self, plain: &mut Vec<u8>, wire: &mut Vec<u8>) {
        match self {
            Transport::Plain if wire.is_empty() => std::mem::swap(plain, wire),
            Transport::Plain => wire.append(plain),
            Transport::Tls(s) => {
                if !plain.is_empty() && !s.closed {
                    // Infallible: the buffer limit is off.
                    let _ = s.tls.writer().write_all(plain);
                }
                plain.clear();
                while s.tls.wants_write() {
                    if s.tls.write_tls(wire).is_err() {
                        break;
                    }
                }
            }
        }
    }

    /// Ends the session politely: the `close_notify` goes out with the next
    /// `seal`.
    pub fn close(&mut self) {
        if let Transport::Tls(s) = self {
            if !s.closed {
                s.closed = true;
                s.tls.send_close_notify();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_seal_moves_bytes_without_copying_into_an_empty_wire() {
        let mut t = Transport::Plain;
        let (mut plain, mut wire) = (b"abc".to_vec(), Vec::new());
        t.seal(&mut plain, &mut wire);
        assert_eq!(wire, b"abc");
        assert!(plain.is_empty());
        let mut more = b"de".to_vec();
        t.seal(&mut more, &mut wire);
        assert_eq!(wire, b"abcde");
    }

    #[test]
    fn a_missing_certificate_is_a_boot_error_naming_it() {
        let err = Certificates::load(Path::new("/nonexistent/c.pem"), Path::new("/x"))
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
    }
}
