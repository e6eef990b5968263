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
    /// Runs the binary with `args` (a subcommand such as `restore`) and
    /// waits: whether it succeeded, its stdout and its stderr.
    pub fn subcommand(self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(self.binary())
            .args(args)
            .output()
            .expect("run the server binary");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

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
    /// `http`, or `https` when started with `--tls-cert`.
    pub scheme: String,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    extra: Vec<String>,
    /// The executable this server runs (and `restart` runs again).
    program: PathBuf,
    /// What the server printed on stdout before it listened (banner, recovery
    /// report), without the `tidepool: ` prefix.
    pub startup: Vec<String>,
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

    /// Starts a server on a data directory restored from a one-file online
    /// backup of another server, which held a record (`restored_from_backup`
    /// / `kept`) that the restored server is checked to have: for running a
    /// suite against a restored server.
    pub fn start_restored(runtime: Runtime) -> TestServer {
        let tmp = tempfile::Builder::new()
            .prefix("tidepool-restored-")
            .tempdir()
            .expect("temp dir");
        let (archive, dir) = (tmp.path().join("backup.tar"), tmp.path().join("data"));
        {
            let first = TestServer::start(runtime);
            first.insert(
                "restored_from_backup",
                &serde_json::json!({"id": "kept", "n": 1}),
            );
            let body = serde_json::json!({"file": archive}).to_string();
            let r = first.call(&first.token(), "POST", "/api/admin/backup", &body);
            assert_eq!(r.status, 200, "backup: {}", r.text());
        }
        let (archive, dir_arg) = (
            archive.to_str().expect("utf-8"),
            dir.to_str().expect("utf-8"),
        );
        let (ok, _, err) = runtime.subcommand(&["restore", archive, "--data-dir", dir_arg]);
        assert!(ok, "restore: {err}");
        let mut s = Self::spawn(runtime, &dir, "127.0.0.1:0", &[]);
        s._tmp = Some(tmp);
        let r = s.call(&s.token(), "GET", "/api/find/restored_from_backup/kept", "");
        assert_eq!(r.status, 200, "the backup's record: {}", r.text());
        s
    }

    /// Starts a server on an existing data directory (for restart tests).
    pub fn start_in(runtime: Runtime, dir: &Path, extra: &[&str]) -> TestServer {
        Self::spawn(runtime, dir, "127.0.0.1:0", extra)
    }

    /// Starts `program` (a `tidepool` or `tidepool-std` build, for example the
    /// release binaries) on an existing data directory. `runtime` only labels it.
    pub fn start_program(
        program: &Path,
        runtime: Runtime,
        dir: &Path,
        extra: &[&str],
    ) -> TestServer {
        Self::spawn_program(program, runtime, dir, "127.0.0.1:0", extra)
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(runtime: Runtime, dir: &Path, listen: &str, extra: &[&str]) -> TestServer {
        Self::spawn_program(&runtime.binary(), runtime, dir, listen, extra)
    }

    fn spawn_program(
        program: &Path,
        runtime: Runtime,
        dir: &Path,
        listen: &str,
        extra: &[&str],
    ) -> TestServer {
        let mut child = Command::new(program)
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
        let mut startup = Vec::new();
        let (scheme, addr) = loop {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                _ => {
                    let status = child.wait();
                    panic!("server exited before listening: {status:?}");
                }
            };
            if let Some((scheme, rest)) = line
                .split_once("listening on ")
                .and_then(|(_, url)| url.split_once("://"))
            {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                break (
                    scheme.to_string(),
                    addr.parse::<SocketAddr>().expect("listen address"),
                );
            }
            startup.push(line.strip_prefix("tidepool: ").unwrap_or(&line).to_string());
            assert!(Instant::now() < deadline, "server did not start");
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        TestServer {
            child: Some(child),
            runtime,
            scheme,
            addr,
            dir: dir.to_path_buf(),
            _tmp: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            program: program.to_path_buf(),
            startup,
        }
    }

    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
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
        let mut next = Self::spawn_program(
            &self.program,
            self.runtime,
            &self.dir,
            "127.0.0.1:0",
            &extra,
        );
        self.addr = next.addr;
        self.scheme = std::mem::take(&mut next.scheme);
        self.startup = std::mem::take(&mut next.startup);
        self.child = next.child_take();
    }

    fn child_take(mut self) -> Option<Child> {
        self.child.take()
    }

    /// A fresh bearer token for the test's admin key (raw HTTP).
    pub fn token(&self) -> String {
        self.token_for(API_KEY)
    }

    /// A fresh bearer token for `key` (raw HTTP).
    pub fn token_for(&self, key: &str) -> String {
        let body = serde_json::json!({ "api_key": key }).to_string();
        let r = self.request("POST", "/api/auth/token", &[], &body);
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

    /// Inserts one record with a fresh token; panics unless it is stored.
    pub fn insert(&self, collection: &str, record: &serde_json::Value) {
        let r = self.call(
            &self.token(),
            "POST",
            &format!("/api/insert/{collection}"),
            &record.to_string(),
        );
        assert_eq!(r.status, 200, "insert into {collection}: {}", r.text());
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

/// Crash testing with real processes: writer threads insert, batch-insert and
/// update over keep-alive connections and keep a ledger of what the server
/// acknowledged; the server is SIGKILLed at random moments and restarted on the
/// same data directory; after every restart the directory's contents are checked
/// against the ledger. `tests/tests/crash.rs` runs it briefly in CI and
/// `benches/src/bin/killtest.rs` runs it for a long time against release builds.
///
/// ## The model
///
/// Each writer has one connection and one request in flight at a time, so when
/// the server dies a writer has at most one request whose outcome is unknown
/// ("in doubt": sent, maybe only in part, and no reply read). Everything else it
/// did is known, so the check after a restart is exact:
///
/// * every record in the ledger is present with exactly its ledger value `v`,
///   except that the target of an in-doubt update may instead carry that update's
///   value. The server acknowledges after the fsync, so a kill between the fsync
///   and the reply (or before the writer read it) leaves a durable update that
///   nobody was told about. That is allowed: a client that saw no reply cannot
///   tell "not done" from "done", and `v` only grows, so the record still holds
///   at least its acknowledged value.
/// * an in-doubt single insert is present or absent; an in-doubt batch is all or
///   nothing (an acknowledged batch is all, like any acknowledged write).
/// * nothing else is present: no record that was never written, and no in-doubt
///   write that an earlier check saw absent coming back later.
///
/// After the check the in-doubt outcomes are known and go into the ledger:
/// recovery makes what it read durable (storage-format.md, Recovery step 10), so
/// what one restart showed must still be there after the next kill.
///
/// Ids say which operation wrote a record: `w3-s0000017` is writer 3's 17th
/// operation, a single insert; `w3-b0000018-2of5` is the second of five records
/// of its 18th operation, one batch request. A partial batch shows in the ids.
///
/// A discrepancy is reported once and the ledger then adopts what the server
/// has, so one lost write is not counted again at every later restart.
pub mod sse;

pub mod crash {
    use super::{HttpReply, Runtime, TestServer};
    use serde_json::{json, Value};
    use std::collections::{BTreeMap, HashMap};
    use std::fmt::Write as _;
    use std::io::{self, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    /// The collection every writer writes to.
    pub const COLLECTION: &str = "crash";

    /// How long a request may wait for its reply before the server counts as hung.
    const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

    /// splitmix64: seedable and small; picks delays, operations and targets.
    #[derive(Clone, Debug)]
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in `lo..=hi`.
        pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.next_u64() % (hi.saturating_sub(lo) + 1)
        }

        /// Uniform in `0..n` (`n > 0`).
        pub fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// The seed in environment variable `var` (decimal or `0x` hex), else one
    /// from the clock. Callers print it so a failing run can be repeated.
    pub fn seed_from_env(var: &str) -> u64 {
        if let Ok(s) = std::env::var(var) {
            return parse_seed(&s).unwrap_or_else(|| panic!("{var}={s} is not a seed"));
        }
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Rng::new(t.as_nanos() as u64 ^ u64::from(std::process::id())).next_u64()
    }

    /// `123` or `0x7b`.
    pub fn parse_seed(s: &str) -> Option<u64> {
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        }
    }

    /// What to run.
    #[derive(Clone, Debug)]
    pub struct Options {
        /// The server executable.
        pub program: PathBuf,
        pub runtime: Runtime,
        /// Extra server flags (`--fsync batch:5`, compaction settings).
        pub server_args: Vec<String>,
        pub writers: usize,
        pub kills: usize,
        pub seed: u64,
        /// The kill comes this many milliseconds (uniform, inclusive) after the
        /// writers start.
        pub delay_ms: (u64, u64),
        /// Bytes of filler in every record (bigger records reach segment and
        /// compaction thresholds sooner).
        pub pad_bytes: usize,
        /// Start over on an empty data directory after this many kills (0 =
        /// never), so a long run's verification does not grow without bound.
        pub fresh_dir_every: usize,
        /// Where the data directories are created (default: the temp dir).
        pub parent_dir: Option<PathBuf>,
        /// Stop at the first discrepancy (and keep its data directory).
        pub stop_on_failure: bool,
        /// Print a line per kill.
        pub verbose: bool,
    }

    impl Options {
        /// Eight writers against `program`, kills 50-400 ms in. `runtime` says
        /// which runtime `program` is (`runtime.binary()` for the test builds).
        pub fn new(program: PathBuf, runtime: Runtime, kills: usize, seed: u64) -> Options {
            Options {
                program,
                runtime,
                server_args: Vec::new(),
                writers: 8,
                kills,
                seed,
                delay_ms: (50, 400),
                pad_bytes: 0,
                fresh_dir_every: 0,
                parent_dir: None,
                stop_on_failure: true,
                verbose: false,
            }
        }

        pub fn describe(&self) -> String {
            let args = if self.server_args.is_empty() {
                String::new()
            } else {
                format!(" {}", self.server_args.join(" "))
            };
            format!(
                "{:?} ({}{args}), {} writers, kill after {}-{} ms, seed {:#x}",
                self.runtime,
                self.program.display(),
                self.writers,
                self.delay_ms.0,
                self.delay_ms.1,
                self.seed
            )
        }
    }

    /// A kind of discrepancy: how many, and the first few described.
    #[derive(Debug, Default)]
    pub struct Failures {
        pub count: u64,
        pub samples: Vec<String>,
    }

    impl Failures {
        fn push(&mut self, what: String) {
            self.count += 1;
            if self.samples.len() < 20 {
                self.samples.push(what);
            }
        }
    }

    /// What a run did and found.
    #[derive(Debug, Default)]
    pub struct Report {
        pub kills: usize,
        /// Acknowledged requests, by kind.
        pub acked_inserts: u64,
        pub acked_batches: u64,
        pub acked_batch_records: u64,
        pub acked_updates: u64,
        /// Requests in flight at a kill, and how many of them had been applied.
        pub in_doubt: u64,
        pub in_doubt_applied: u64,
        /// Acknowledged records missing, or with a value older than acknowledged.
        pub lost: Failures,
        /// Batches with some but not all of their records present.
        pub partial_batches: Failures,
        /// Records present that were never written or had been seen absent.
        pub phantoms: Failures,
        /// Anything else: a failed restart, an unexpected reply, a hang.
        pub errors: Failures,
        /// Wall time from spawning the server to its "listening" line, per start
        /// after a kill (recovery included).
        pub recovery: Vec<Duration>,
        /// Restarts whose recovery reported a torn tail or salvage.
        pub recovery_reports: usize,
        /// Restarts that found an installed snapshot in the store directory, and
        /// the most log segments seen at a restart (compaction at work).
        pub restarts_with_snapshot: usize,
        pub max_segments: usize,
        /// Records compared with the ledger, summed over all checks.
        pub records_checked: u64,
        /// Time the writers ran (from start to kill), summed.
        pub writing: Duration,
        pub elapsed: Duration,
        /// A data directory kept for inspection after a failure.
        pub kept_dir: Option<PathBuf>,
    }

    impl Report {
        /// Acknowledged writes: records inserted (singly or in batches) plus updates.
        pub fn acked_writes(&self) -> u64 {
            self.acked_inserts + self.acked_batch_records + self.acked_updates
        }

        pub fn failures(&self) -> u64 {
            self.lost.count + self.partial_batches.count + self.phantoms.count + self.errors.count
        }

        pub fn is_clean(&self) -> bool {
            self.failures() == 0
        }

        /// The `p`-th percentile (0-100) of recovery times.
        pub fn recovery_percentile(&self, p: f64) -> Duration {
            let mut v = self.recovery.clone();
            v.sort();
            if v.is_empty() {
                return Duration::ZERO;
            }
            let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
            v[i.min(v.len() - 1)]
        }

        pub fn summary(&self) -> String {
            let mut s = String::new();
            let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
            let writing = self.writing.as_secs_f64().max(1e-9);
            let _ = writeln!(
                s,
                "kills: {} in {:.1} s ({:.1} s of writing)",
                self.kills,
                self.elapsed.as_secs_f64(),
                writing
            );
            let _ = writeln!(
                s,
                "acknowledged writes: {} ({} inserts, {} batches holding {} records, {} updates; {:.0} writes/s while writing)",
                self.acked_writes(),
                self.acked_inserts,
                self.acked_batches,
                self.acked_batch_records,
                self.acked_updates,
                self.acked_writes() as f64 / writing
            );
            let _ = writeln!(
                s,
                "in doubt at a kill: {} requests, {} of them found applied after the restart",
                self.in_doubt, self.in_doubt_applied
            );
            let _ = writeln!(
                s,
                "lost writes: {}  partial batches: {}  phantom records: {}  other errors: {}",
                self.lost.count, self.partial_batches.count, self.phantoms.count, self.errors.count
            );
            let _ = writeln!(
                s,
                "recovery (spawn to listening, {} restarts): p50 {}  p99 {}  max {}; torn-tail reports: {}",
                self.recovery.len(),
                ms(self.recovery_percentile(50.0)),
                ms(self.recovery_percentile(99.0)),
                ms(self.recovery_percentile(100.0)),
                self.recovery_reports
            );
            let _ = writeln!(
                s,
                "records checked: {}; restarts with a snapshot: {}; most segments at a restart: {}",
                self.records_checked, self.restarts_with_snapshot, self.max_segments
            );
            for (name, f) in [
                ("lost", &self.lost),
                ("partial batch", &self.partial_batches),
                ("phantom", &self.phantoms),
                ("error", &self.errors),
            ] {
                for x in &f.samples {
                    let _ = writeln!(s, "  {name}: {x}");
                }
            }
            if let Some(d) = &self.kept_dir {
                let _ = writeln!(s, "data directory kept: {}", d.display());
            }
            s
        }
    }

    /// One keep-alive connection; each request goes out in one `write_all` (small
    /// separate writes would meet Nagle and delayed ACKs).
    struct Conn {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    impl Conn {
        fn open(addr: SocketAddr) -> io::Result<Conn> {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
            Ok(Conn {
                stream,
                buf: Vec::new(),
            })
        }

        fn call(
            &mut self,
            method: &str,
            path: &str,
            token: Option<&str>,
            body: &str,
        ) -> io::Result<HttpReply> {
            let auth = token
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            self.stream.write_all(req.as_bytes())?;
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                if let Some((reply, used)) = HttpReply::parse_one(&self.buf) {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                let n = self.stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        fn token(&mut self) -> Result<String, String> {
            let r = self
                .call(
                    "POST",
                    "/api/auth/token",
                    None,
                    &json!({"api_key": super::API_KEY}).to_string(),
                )
                .map_err(|e| format!("token request failed: {e}"))?;
            if r.status != 200 {
                return Err(format!("token: {} {}", r.status, r.text()));
            }
            let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("token: {e}"))?;
            v["token"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("token: no token in {}", r.text()))
        }
    }

    /// A request whose outcome the writer is waiting for.
    #[derive(Clone, Debug)]
    enum Op {
        Insert { id: String, v: u64 },
        Batch { ids: Vec<String>, v: u64 },
        Update { id: String, v: u64 },
    }

    /// A writer's ledger and its position in its own operation sequence. Moved
    /// into the writer thread for a round and back out after the kill.
    struct Writer {
        w: usize,
        rng: Rng,
        seq: u64,
        next_v: u64,
        pad: String,
        /// Records known durable: acknowledged, or seen after a restart.
        records: HashMap<String, u64>,
        /// The same ids, for picking update targets.
        ids: Vec<String>,
        in_doubt: Option<Op>,
        acked_inserts: u64,
        acked_batches: u64,
        acked_batch_records: u64,
        acked_updates: u64,
    }

    impl Writer {
        fn new(w: usize, seed: u64, pad_bytes: usize) -> Writer {
            Writer {
                w,
                rng: Rng::new(seed),
                seq: 0,
                next_v: 1,
                pad: "x".repeat(pad_bytes),
                records: HashMap::new(),
                ids: Vec::new(),
                in_doubt: None,
                acked_inserts: 0,
                acked_batches: 0,
                acked_batch_records: 0,
                acked_updates: 0,
            }
        }

        /// 25% updates of an own durable record, 20% batches of 2-8, else inserts.
        fn next_op(&mut self) -> Op {
            self.seq += 1;
            let v = self.next_v;
            self.next_v += 1;
            let (w, seq) = (self.w, self.seq);
            let roll = self.rng.below(100);
            if roll < 25 && !self.ids.is_empty() {
                let id = self.ids[self.rng.below(self.ids.len())].clone();
                Op::Update { id, v }
            } else if roll < 45 {
                let n = self.rng.between(2, 8);
                let ids = (1..=n)
                    .map(|k| format!("w{w}-b{seq:07}-{k}of{n}"))
                    .collect();
                Op::Batch { ids, v }
            } else {
                Op::Insert {
                    id: format!("w{w}-s{seq:07}"),
                    v,
                }
            }
        }

        fn record(&self, id: &str, v: u64) -> Value {
            json!({"id": id, "w": self.w, "v": v, "pad": self.pad})
        }

        fn request(&self, op: &Op) -> (&'static str, String, String) {
            match op {
                Op::Insert { id, v } => (
                    "POST",
                    format!("/api/insert/{COLLECTION}"),
                    self.record(id, *v).to_string(),
                ),
                Op::Batch { ids, v } => {
                    let inserts: Vec<Value> = ids
                        .iter()
                        .map(|id| json!({"data": self.record(id, *v)}))
                        .collect();
                    (
                        "POST",
                        format!("/api/batch/insert/{COLLECTION}"),
                        json!({ "inserts": inserts }).to_string(),
                    )
                }
                Op::Update { id, v } => (
                    "PUT",
                    format!("/api/update/{COLLECTION}/{id}"),
                    json!({ "v": v }).to_string(),
                ),
            }
        }

        fn know(&mut self, id: &str, v: u64) {
            if self.records.insert(id.to_string(), v).is_none() {
                self.ids.push(id.to_string());
            }
        }

        /// Writes until the connection dies. A dead connection after the kill is
        /// the normal end (the last request stays in doubt); before it, an error.
        fn run(
            &mut self,
            addr: SocketAddr,
            token: &str,
            killed: &AtomicBool,
        ) -> Result<(), String> {
            let w = self.w;
            let dropped = |e: io::Error| {
                if killed.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(format!(
                        "writer {w}: connection failed before the kill: {e}"
                    ))
                }
            };
            let mut conn = match Conn::open(addr) {
                Ok(c) => c,
                Err(e) => return dropped(e),
            };
            loop {
                let op = self.next_op();
                let (method, path, body) = self.request(&op);
                self.in_doubt = Some(op);
                match conn.call(method, &path, Some(token), &body) {
                    Ok(reply) => self.acknowledged(reply)?,
                    Err(e) => return dropped(e),
                }
            }
        }

        /// Checks the reply to the in-doubt request and moves it into the ledger.
        fn acknowledged(&mut self, reply: HttpReply) -> Result<(), String> {
            let Some(op) = self.in_doubt.clone() else {
                return Ok(());
            };
            let w = self.w;
            if reply.status != 200 {
                return Err(format!(
                    "writer {w}: {op:?} got {} {}",
                    reply.status,
                    short(reply.text())
                ));
            }
            let body: Value = serde_json::from_slice(&reply.body)
                .map_err(|e| format!("writer {w}: {op:?}: reply is not JSON ({e})"))?;
            match &op {
                Op::Insert { id, v } => {
                    if body["id"].as_str() != Some(id) {
                        return Err(format!("writer {w}: insert {id} replied {}", short(body)));
                    }
                    self.know(id, *v);
                    self.acked_inserts += 1;
                }
                Op::Batch { ids, v } => {
                    let mut got: Vec<&str> = body["successful"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    got.sort_unstable();
                    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
                    want.sort_unstable();
                    let failed = body["failed"].as_array().map_or(0, Vec::len);
                    if got != want || failed != 0 {
                        return Err(format!(
                            "writer {w}: batch {want:?} replied {}",
                            short(body)
                        ));
                    }
                    for id in ids {
                        self.know(id, *v);
                    }
                    self.acked_batches += 1;
                    self.acked_batch_records += ids.len() as u64;
                }
                Op::Update { id, v } => {
                    if int(&body["v"]) != Some(*v) {
                        return Err(format!(
                            "writer {w}: update {id} to v={v} replied {}",
                            short(body)
                        ));
                    }
                    self.know(id, *v);
                    self.acked_updates += 1;
                }
            }
            self.in_doubt = None;
            Ok(())
        }
    }

    /// An integer field as replies carry it: plain, or typed
    /// (`{"type": "Integer", "value": 6}`).
    fn int(v: &Value) -> Option<u64> {
        v.as_u64()
            .or_else(|| v.get("value").and_then(Value::as_u64))
    }

    /// The first 200 characters, for messages.
    fn short(s: impl std::fmt::Display) -> String {
        let s = s.to_string();
        match s.char_indices().nth(200) {
            Some((i, _)) => format!("{}...", &s[..i]),
            None => s,
        }
    }

    /// `w3-b0000018-2of5` -> (`w3-b0000018`, 5).
    fn batch_of(id: &str) -> Option<(&str, usize)> {
        let (key, part) = id.rsplit_once('-')?;
        if !key.contains("-b") {
            return None;
        }
        let (_, n) = part.split_once("of")?;
        Some((key, n.parse().ok()?))
    }

    /// Compares the server's records with the ledgers, reports every
    /// discrepancy, then makes the ledgers match the server (in-doubt outcomes
    /// included).
    fn verify(addr: SocketAddr, writers: &mut [Writer], rng: &mut Rng, report: &mut Report) {
        if let Err(e) = try_verify(addr, writers, rng, report) {
            report.errors.push(e);
        }
    }

    fn try_verify(
        addr: SocketAddr,
        writers: &mut [Writer],
        rng: &mut Rng,
        report: &mut Report,
    ) -> Result<(), String> {
        let mut conn = Conn::open(addr).map_err(|e| format!("connect after restart: {e}"))?;
        let token = conn.token()?;
        let r = conn
            .call(
                "POST",
                &format!("/api/find/{COLLECTION}"),
                Some(&token),
                r#"{"select_fields": ["v"]}"#,
            )
            .map_err(|e| format!("find after restart: {e}"))?;
        let rows = match r.status {
            200 => match serde_json::from_slice::<Value>(&r.body) {
                Ok(Value::Array(rows)) => rows,
                _ => return Err(format!("find: not an array: {}", short(r.text()))),
            },
            // The collection does not exist until something is written.
            404 => Vec::new(),
            s => return Err(format!("find: {s} {}", short(r.text()))),
        };
        let mut present: BTreeMap<String, u64> = BTreeMap::new();
        for row in &rows {
            let (Some(id), Some(v)) = (row["id"].as_str(), int(&row["v"])) else {
                return Err(format!("find: a record without id or v: {}", short(row)));
            };
            present.insert(id.to_string(), v);
        }
        report.records_checked += present.len() as u64;

        let mut batches: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for id in present.keys() {
            if let Some((key, n)) = batch_of(id) {
                batches.entry(key).or_insert((0, n)).0 += 1;
            }
        }
        for (key, (got, n)) in &batches {
            if got != n {
                report
                    .partial_batches
                    .push(format!("batch {key}: {got} of its {n} records present"));
            }
        }

        let mut unclaimed = present.clone();
        for wr in writers.iter_mut() {
            let doubt = wr.in_doubt.take();
            if doubt.is_some() {
                report.in_doubt += 1;
            }
            let doubtful_update = match &doubt {
                Some(Op::Update { id, v }) => Some((id.clone(), *v)),
                _ => None,
            };
            let mut applied = false;
            let mut gone = Vec::new();
            for (id, v) in wr.records.iter_mut() {
                match unclaimed.remove(id) {
                    None => {
                        report
                            .lost
                            .push(format!("{id} (v={v}) is missing after the restart"));
                        gone.push(id.clone());
                    }
                    Some(pv) if pv == *v => {}
                    Some(pv) if doubtful_update.as_ref() == Some(&(id.clone(), pv)) => {
                        applied = true;
                        *v = pv;
                    }
                    Some(pv) => {
                        let what = if pv < *v {
                            "lost update"
                        } else {
                            "unexpected value"
                        };
                        report
                            .lost
                            .push(format!("{what}: {id} has v={pv}, acknowledged v={v}"));
                        *v = pv;
                    }
                }
            }
            for id in gone {
                wr.records.remove(&id);
                wr.ids.retain(|x| *x != id);
            }
            match doubt {
                Some(Op::Insert { id, v }) => {
                    if let Some(pv) = unclaimed.remove(&id) {
                        applied = true;
                        if pv != v {
                            report
                                .errors
                                .push(format!("in-doubt insert {id} has v={pv}, sent v={v}"));
                        }
                        wr.know(&id, pv);
                    }
                }
                Some(Op::Batch { ids, .. }) => {
                    for id in &ids {
                        if let Some(pv) = unclaimed.remove(id) {
                            applied = true;
                            wr.know(id, pv);
                        }
                    }
                }
                Some(Op::Update { .. }) | None => {}
            }
            if applied {
                report.in_doubt_applied += 1;
            }
        }
        for (id, v) in unclaimed {
            report.phantoms.push(format!(
                "{id} (v={v}) is present but was never acknowledged nor in doubt"
            ));
            // Adopt it, so it is reported once.
            let owner = id
                .strip_prefix('w')
                .and_then(|s| s.split('-').next())
                .and_then(|w| w.parse::<usize>().ok());
            if let Some(wr) = owner.and_then(|w| writers.get_mut(w)) {
                wr.know(&id, v);
            }
        }

        // Point reads answer like the scan did.
        for wr in writers.iter() {
            if wr.ids.is_empty() {
                continue;
            }
            let id = &wr.ids[rng.below(wr.ids.len())];
            let want = wr.records[id];
            let r = conn
                .call(
                    "GET",
                    &format!("/api/find/{COLLECTION}/{id}"),
                    Some(&token),
                    "",
                )
                .map_err(|e| format!("get {id}: {e}"))?;
            let got = serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|b| int(&b["v"]));
            if r.status != 200 || got != Some(want) {
                report.errors.push(format!(
                    "get {id}: {} {} (the scan had v={want})",
                    r.status,
                    short(r.text())
                ));
            }
        }
        let r = conn
            .call(
                "GET",
                &format!("/api/find/{COLLECTION}/never-written"),
                Some(&token),
                "",
            )
            .map_err(|e| format!("get never-written: {e}"))?;
        if r.status != 404 {
            report.errors.push(format!(
                "get never-written: {} {}",
                r.status,
                short(r.text())
            ));
        }
        Ok(())
    }

    fn new_dir(opts: &Options) -> tempfile::TempDir {
        let mut b = tempfile::Builder::new();
        b.prefix("tidepool-crash-");
        match &opts.parent_dir {
            Some(p) => b.tempdir_in(p),
            None => b.tempdir(),
        }
        .expect("temp dir")
    }

    /// Starts the server on `dir`; a server that does not come up is an error
    /// in the report, not a panic (the panic message is in it).
    fn start(opts: &Options, dir: &std::path::Path, report: &mut Report) -> Option<TestServer> {
        let args: Vec<&str> = opts.server_args.iter().map(String::as_str).collect();
        let t = Instant::now();
        let started = std::panic::catch_unwind(|| {
            TestServer::start_program(&opts.program, opts.runtime, dir, &args)
        });
        match started {
            Ok(srv) => {
                report.recovery.push(t.elapsed());
                let names: Vec<String> = std::fs::read_dir(dir.join("store"))
                    .map(|d| {
                        d.filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                if names.iter().any(|n| n.ends_with(".snap")) {
                    report.restarts_with_snapshot += 1;
                }
                let segments = names.iter().filter(|n| n.ends_with(".log")).count();
                report.max_segments = report.max_segments.max(segments);
                if srv.startup.iter().any(|l| l.starts_with("recovery report")) {
                    report.recovery_reports += 1;
                }
                Some(srv)
            }
            Err(p) => {
                let why = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                report.errors.push(format!(
                    "the server did not start on {}: {why}",
                    dir.display()
                ));
                None
            }
        }
    }

    /// Runs the whole scenario: start, then `kills` times: writers, SIGKILL,
    /// restart, verify.
    pub fn run(opts: &Options) -> Report {
        let began = Instant::now();
        let mut report = Report::default();
        let mut rng = Rng::new(opts.seed);
        let mut writers: Vec<Writer> = (0..opts.writers)
            .map(|w| Writer::new(w, rng.next_u64(), opts.pad_bytes))
            .collect();
        let mut dir = new_dir(opts);
        let Some(mut srv) = start(opts, dir.path(), &mut report) else {
            report.elapsed = began.elapsed();
            return report;
        };
        report.recovery.clear(); // the first start recovers nothing
        for k in 0..opts.kills {
            let before = report.failures();
            let token = match Conn::open(srv.addr)
                .map_err(|e| format!("connect: {e}"))
                .and_then(|mut c| c.token())
            {
                Ok(t) => t,
                Err(e) => {
                    report.errors.push(format!("before kill {k}: {e}"));
                    srv.kill9();
                    report.kept_dir = Some(dir.keep());
                    break;
                }
            };
            let killed = Arc::new(AtomicBool::new(false));
            let addr = srv.addr;
            let t = Instant::now();
            let handles: Vec<_> = writers
                .drain(..)
                .map(|mut wr| {
                    let (killed, token) = (killed.clone(), token.clone());
                    std::thread::spawn(move || {
                        let r = wr.run(addr, &token, &killed);
                        (wr, r)
                    })
                })
                .collect();
            let delay = rng.between(opts.delay_ms.0, opts.delay_ms.1);
            std::thread::sleep(Duration::from_millis(delay));
            killed.store(true, Ordering::SeqCst);
            srv.kill9();
            report.writing += t.elapsed();
            report.kills += 1;
            for h in handles {
                let (wr, r) = h.join().expect("writer thread panicked");
                if let Err(e) = r {
                    report.errors.push(format!("kill {k}: {e}"));
                }
                writers.push(wr);
            }
            let Some(next) = start(opts, dir.path(), &mut report) else {
                report.kept_dir = Some(dir.keep());
                break;
            };
            srv = next;
            verify(srv.addr, &mut writers, &mut rng, &mut report);
            if opts.verbose {
                // The server's own line: "recovered N snapshot chunks and M log
                // batches up to LSN L in T", and any recovery report.
                let said: Vec<&str> = srv
                    .startup
                    .iter()
                    .filter(|l| l.starts_with("recover"))
                    .map(String::as_str)
                    .collect();
                println!(
                    "kill {k:>4} after {delay:>3} ms: listening after {:>6.1} ms, {} failures so far; {}",
                    report.recovery.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
                    report.failures(),
                    said.join("; ")
                );
            }
            if report.failures() > before && opts.stop_on_failure {
                srv.kill9();
                report.kept_dir = Some(dir.keep());
                break;
            }
            if opts.fresh_dir_every > 0 && (k + 1) % opts.fresh_dir_every == 0 && k + 1 < opts.kills
            {
                srv.kill9();
                dir = new_dir(opts);
                for wr in writers.iter_mut() {
                    wr.records.clear();
                    wr.ids.clear();
                }
                let Some(next) = start(opts, dir.path(), &mut report) else {
                    break;
                };
                report.recovery.pop(); // an empty directory: not a recovery
                srv = next;
            }
        }
        report.acked_inserts = writers.iter().map(|w| w.acked_inserts).sum();
        report.acked_batches = writers.iter().map(|w| w.acked_batches).sum();
        report.acked_batch_records = writers.iter().map(|w| w.acked_batch_records).sum();
        report.acked_updates = writers.iter().map(|w| w.acked_updates).sum();
        report.elapsed = began.elapsed();
        report
    }
}
