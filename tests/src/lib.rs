//! Test harness: starts real `tidepool` / `tidepool-std` processes on loopback
//! with their own data directories, and speaks raw HTTP to them when a test needs
//! exact bytes. Client-library tests build an `ekodb_client::Client` on top.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const API_KEY: &str = "a-test-api-key-from-ekodb";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Smol,
    Std,
}

impl Runtime {
    /// Path of the server binary under test. Integration tests of this package get
    /// it from cargo; other callers (benchmarks) find it next to their own binary.
    pub fn binary(self) -> PathBuf {
        let name = match self {
            Runtime::Smol => "tp-smol",
            Runtime::Std => "tp-std",
        };
        let from_env = match self {
            Runtime::Smol => option_env!("CARGO_BIN_EXE_tp-smol"),
            Runtime::Std => option_env!("CARGO_BIN_EXE_tp-std"),
        };
        if let Some(p) = from_env {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe.parent().expect("exe dir");
        for d in [dir, dir.parent().unwrap_or(dir)] {
            let p = d.join(name);
            if p.exists() {
                return p;
            }
        }
        panic!("server binary {name} not found next to {}", exe.display());
    }
}

/// A running server process. Killed on drop; its data directory is removed
/// unless the test keeps it (`keep_dir`).
pub struct TestServer {
    child: Option<Child>,
    pub runtime: Runtime,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    extra: Vec<String>,
}

impl TestServer {
    pub fn start(runtime: Runtime) -> TestServer {
        Self::start_with(runtime, &[])
    }

    pub fn start_with(runtime: Runtime, extra: &[&str]) -> TestServer {
        let tmp = tempfile::Builder::new()
            .prefix("tidepool-test-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let mut s = Self::spawn(runtime, &dir, "127.0.0.1:0", extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on an existing data directory (for restart tests).
    pub fn start_in(runtime: Runtime, dir: &Path, extra: &[&str]) -> TestServer {
        Self::spawn(runtime, dir, "127.0.0.1:0", extra)
    }

    fn spawn(runtime: Runtime, dir: &Path, listen: &str, extra: &[&str]) -> TestServer {
        let mut child = Command::new(runtime.binary())
            .args(["--listen", listen, "--data-dir"])
            .arg(dir)
            .args(["--api-key", API_KEY, "--threads", "2"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                _ => {
                    let status = child.wait();
                    panic!("server exited before listening: {status:?}");
                }
            };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                break addr.parse::<SocketAddr>().expect("listen address");
            }
            assert!(Instant::now() < deadline, "server did not start");
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        TestServer {
            child: Some(child),
            runtime,
            addr,
            dir: dir.to_path_buf(),
            _tmp: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the process (SIGKILL) and starts it again on the same directory.
    pub fn restart(&mut self) {
        self.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let next = Self::spawn(self.runtime, &self.dir, "127.0.0.1:0", &extra);
        self.addr = next.addr;
        self.child = next.child_take();
    }

    fn child_take(mut self) -> Option<Child> {
        self.child.take()
    }

    /// A fresh bearer token (raw HTTP).
    pub fn token(&self) -> String {
        let r = self.request(
            "POST",
            "/api/auth/token",
            &[],
            &format!("{{\"api_key\":\"{API_KEY}\"}}"),
        );
        assert_eq!(r.status, 200, "token: {}", r.text());
        r.json()["token"].as_str().expect("token").to_string()
    }

    /// One HTTP/1.1 request on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpReply {
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        HttpReply::parse(&self.raw(&bytes)).expect("a complete HTTP response")
    }

    /// An authenticated JSON request.
    pub fn call(&self, token: &str, method: &str, path: &str, body: &str) -> HttpReply {
        let auth = format!("Bearer {token}");
        self.request(
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    }

    /// Sends raw bytes and reads until the server closes (or 10 s pass).
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(bytes).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    /// Parses the first response in `bytes` (Content-Length framing).
    pub fn parse(bytes: &[u8]) -> Option<HttpReply> {
        Self::parse_one(bytes).map(|(r, _)| r)
    }

    /// Parses one response and returns how many bytes it used.
    pub fn parse_one(bytes: &[u8]) -> Option<(HttpReply, usize)> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&bytes[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body = bytes.get(end + 4..end + 4 + len)?.to_vec();
        Some((
            HttpReply {
                status,
                headers,
                body,
            },
            end + 4 + len,
        ))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// Declares one test per runtime: `both_runtimes!(name, |rt| { ... })` makes
/// `name::smol` and `name::std`. Attributes before the name (for example
/// `#[ignore = "..."]`) go on both tests.
#[macro_export]
macro_rules! both_runtimes {
    ($(#[$attr:meta])* $name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(#[$attr])*
            #[test]
            fn smol() {
                ($body)($crate::Runtime::Smol)
            }
            $(#[$attr])*
            #[test]
            fn std() {
                ($body)($crate::Runtime::Std)
            }
        }
    };
}
