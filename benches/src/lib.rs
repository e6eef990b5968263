//! Shared helpers for the benchmark binaries.

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
            if let Some(rest) = line.split("listening on http://").nth(1) {
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
