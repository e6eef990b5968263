//! Serving TLS (`--tls-cert`, `--tls-key`) on both runtimes: the official
//! client over `https://` and `wss://` (REST, WebSocket, SSE) with a test
//! certificate; a plain-HTTP or garbage client refused without harm; a
//! stalled handshake cut off; the certificate reloaded for new connections
//! when its files change (open ones keep theirs, a broken replacement is not
//! taken); and a certificate that cannot be served stops the start.

use ekodb_client::{Client, Record};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidepool_tests::{both_runtimes, HttpReply, Runtime, TestServer, API_KEY};

#[path = "common/certs.rs"]
mod certs;
use certs::{Leaf, TestCa};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A test CA and the certificate and key files a server is started with.
struct CertFiles {
    _dir: tempfile::TempDir,
    ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
    ca_file: PathBuf,
}

impl CertFiles {
    fn new() -> (CertFiles, Leaf) {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Tidepool TLS test CA");
        let files = CertFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            ca_file: dir.path().join("ca.pem"),
            _dir: dir,
            ca,
        };
        std::fs::write(&files.ca_file, &files.ca.pem).unwrap();
        let leaf = files.ca.leaf("first");
        files.install(&leaf);
        (files, leaf)
    }

    /// Replaces the files the way a certificate renewal does (each file
    /// written aside and renamed into place).
    fn install(&self, leaf: &Leaf) {
        replace(&self.key, &leaf.key_pem);
        replace(&self.cert, &leaf.chain_pem);
    }

    fn flags(&self) -> [&str; 4] {
        [
            "--tls-cert",
            self.cert.to_str().unwrap(),
            "--tls-key",
            self.key.to_str().unwrap(),
        ]
    }

    /// Makes the official client (reqwest and tokio-tungstenite with the
    /// system roots) trust the test CA. Each test runs in its own process.
    fn trust(&self) {
        std::env::set_var("SSL_CERT_FILE", &self.ca_file);
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca.pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

fn replace(path: &Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection with the handshake done.
fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Tls {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = StreamOwned::new(ClientConnection::new(config.clone(), name).unwrap(), tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("handshake");
    }
    tls
}

/// The leaf certificate the server presented.
fn presented(tls: &Tls) -> Vec<u8> {
    tls.conn.peer_certificates().expect("certificates")[0].to_vec()
}

/// `GET /api/health` on a kept-alive TLS connection.
fn health(tls: &mut Tls) -> HttpReply {
    tls.write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some((reply, _)) = HttpReply::parse_one(&got) {
            return reply;
        }
        let n = tls.read(&mut buf).expect("read a reply");
        assert!(n > 0, "closed before a reply");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Everything a raw TCP client gets back until the server closes.
fn raw_exchange(addr: SocketAddr, send: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(send).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

both_runtimes!(official_client_over_https_and_wss, |rt: Runtime| {
    let (files, _) = CertFiles::new();
    files.trust();
    let srv = TestServer::start_with(rt, &files.flags());
    assert_eq!(srv.scheme, "https", "the banner names https");
    assert!(srv.base_url().starts_with("https://"));
    block_on(async {
        let c = Client::builder()
            .base_url(srv.base_url())
            .api_key(API_KEY)
            .build()
            .expect("client");
        let rec = c
            .insert("secure", Record::new().field("name", "alice"), None)
            .await
            .expect("insert over https");
        let id = rec.get_string("id").expect("id").to_string();
        let found = c.find_by_id("secure", &id, None).await.unwrap();
        assert_eq!(found.get_string("name"), Some("alice"));
        c.kv_set("tls-key", json!({"n": 1}), None).await.unwrap();
        let kv = c.kv_get("tls-key").await.unwrap().expect("stored");
        assert_eq!(kv["value"]["n"], 1, "{kv}");

        // wss://: CRUD and a subscription fed by a write over https.
        let ws = c.connect_ws().await.expect("connect over wss");
        let over_ws = ws.find_by_id("secure", &id).await.unwrap();
        assert_eq!(over_ws["name"]["value"], "alice");
        let mut rx = ws.subscribe("secure", None, None).await.expect("subscribe");
        let mut sse = c.subscribe_sse("secure", None, None).await.expect("sse");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bob = c
            .insert("secure", Record::new().field("name", "bob"), None)
            .await
            .unwrap();
        let bob = bob.get_string("id").unwrap().to_string();
        let note = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a WebSocket event in time")
            .unwrap();
        assert_eq!(
            (note.event.as_str(), note.record_ids.clone()),
            ("insert", vec![bob.clone()])
        );
        let event = tokio::time::timeout(Duration::from_secs(5), sse.recv())
            .await
            .expect("an SSE event in time")
            .unwrap();
        assert_eq!(event.event, "insert");
        ws.close().await.ok();
    });
});

both_runtimes!(
    non_tls_clients_are_refused_and_the_certificate_reloads,
    |rt: Runtime| {
        let (files, first) = CertFiles::new();
        // A short head timeout so the stalled handshake below ends quickly.
        let mut flags = files.flags().to_vec();
        flags.extend(["--request-head-timeout", "2"]);
        let srv = TestServer::start_with(rt, &flags);
        let config = files.client_config();

        // Plain HTTP on the TLS port: a TLS alert (never an HTTP answer), then close.
        let got = raw_exchange(srv.addr, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            !got.starts_with(b"HTTP/"),
            "plain HTTP was answered: {got:?}"
        );
        assert!(
            got.first().is_none_or(|b| *b == 0x15),
            "an alert record: {got:?}"
        );
        // Garbage that looks like a handshake record.
        let got = raw_exchange(srv.addr, &[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(!got.starts_with(b"HTTP/"));

        // A handshake that stalls after its first bytes is cut off at the head
        // deadline, not kept for the idle timeout.
        let mut stalled = TcpStream::connect(srv.addr).unwrap();
        stalled
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stalled.write_all(&[0x16, 3, 1]).unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = stalled.read_to_end(&mut rest);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
            "closed after {took:?}"
        );

        // Proper TLS works, on a kept-alive connection, with the first certificate.
        let mut before = connect(srv.addr, &config);
        assert_eq!(presented(&before), first.chain[0].to_vec());
        assert_eq!(health(&mut before).status, 200);

        // Renewal: new connections get the new certificate within a few seconds.
        let second = files.ca.leaf("second");
        files.install(&second);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut fresh = connect(srv.addr, &config);
            if presented(&fresh) == second.chain[0].to_vec() {
                assert_eq!(health(&mut fresh).status, 200);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new certificate was not served"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The connection opened before keeps working.
        assert_eq!(health(&mut before).status, 200);

        // A replacement that does not load (a key of another certificate) is not
        // taken: the server keeps serving the second one.
        let other = files.ca.leaf("other");
        replace(&files.key, &other.key_pem);
        std::thread::sleep(Duration::from_millis(2500));
        let mut after = connect(srv.addr, &config);
        assert_eq!(presented(&after), second.chain[0].to_vec());
        assert_eq!(health(&mut after).status, 200);
    }
);

both_runtimes!(
    a_certificate_that_cannot_be_served_stops_the_start,
    |rt: Runtime| {
        let (files, _) = CertFiles::new();
        let dir = tempfile::tempdir().unwrap();
        let start = |extra: &[&str]| {
            let out = Command::new(rt.binary())
                .args(["--listen", "127.0.0.1:0", "--data-dir"])
                .arg(dir.path())
                .args(extra)
                .stdin(Stdio::null())
                .output()
                .expect("run the server");
            assert!(!out.status.success(), "started with {extra:?}");
            String::from_utf8_lossy(&out.stderr).to_string()
        };
        let missing = dir.path().join("missing.pem");
        let err = start(&[
            "--tls-cert",
            missing.to_str().unwrap(),
            "--tls-key",
            files.key.to_str().unwrap(),
        ]);
        assert!(
            err.contains("cannot serve TLS") && err.contains("missing.pem"),
            "{err}"
        );
        // The CA's file holds a certificate but the key is of another one.
        let err = start(&[
            "--tls-cert",
            files.ca_file.to_str().unwrap(),
            "--tls-key",
            files.key.to_str().unwrap(),
        ]);
        assert!(err.contains("cannot serve TLS"), "{err}");
        let err = start(&["--tls-cert", files.cert.to_str().unwrap()]);
        assert!(err.contains("--tls-key"), "{err}");
    }
);
