//! Shared helpers for the benchmark binaries.

pub mod http;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A release server started for a benchmark, on a fresh data directory next to
/// the build (so it sits on the same disk as the fsync measurements). Killed and
/// its directory removed on drop.
pub struct SpawnedServer {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
}

impl SpawnedServer {
    /// Starts `bin` (a binary next to the running one, e.g. `tidepool`) with
    /// `args` added to `--listen 127.0.0.1:0 --data-dir <fresh>`, and waits for
    /// its listening line.
    pub fn start(bin: &str, tag: &str, args: &[&str]) -> SpawnedServer {
        let exe = std::env::current_exe().expect("current exe");
        let target = exe.parent().expect("target dir");
        let path = target.join(bin);
        assert!(
            path.exists(),
            "{} not found: build it with cargo build --release -p tidepool-smol -p tidepool-std",
            path.display()
        );
        let dir = target.join(format!("{tag}-data-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut child = Command::new(&path)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .arg("--data-dir")
            .arg(&dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            let line = lines.next().expect("server output").expect("line");
            if let Some((_, rest)) = line
                .split_once("listening on ")
                .and_then(|(_, url)| url.split_once("://"))
            {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        SpawnedServer { child, addr, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time (user + system) a process used so far, from `/proc` (zero if
/// it is gone). Linux reports clock ticks; USER_HZ is 100.
pub fn process_cpu(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    std::time::Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// A process's resident memory in KiB, from `/proc` (zero if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The write stamps of the tokens in `text` (`"<nanos>| "` anywhere in it),
/// as the benches' fake providers write them.
pub fn token_stamps(text: &str, out: &mut Vec<u64>) {
    for (i, _) in text.match_indices("| ") {
        let digits = text[..i]
            .bytes()
            .rev()
            .take_while(u8::is_ascii_digit)
            .count();
        if let Ok(t) = text[i - digits..i].parse() {
            out.push(t);
        }
    }
}

/// A masked client WebSocket frame (RFC 6455 5.2), FIN set.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Sends one HTTP request (as written, with `Connection: close` added) and
/// returns the response's body.
pub fn http_body(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(
        request
            .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}
