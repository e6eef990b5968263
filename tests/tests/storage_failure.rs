//! A real disk that fills up: the server's data directory sits on a 3 MiB tmpfs.
//! When a write cannot be made durable the server answers 503 (and never a fake
//! success), refuses further writes with a clear message, keeps serving reads of
//! what it acknowledged, and reports itself degraded.

use std::path::{Path, PathBuf};
use std::process::Command;
use tidepool_tests::{both_runtimes, Runtime, TestServer};

/// A small tmpfs mounted for the test, unmounted on drop.
struct TinyDisk {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl TinyDisk {
    fn mount() -> TinyDisk {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("disk");
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "this test mounts a tmpfs (needs root, as on the CI machines)"
        );
        TinyDisk { dir, _tmp: tmp }
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

both_runtimes!(full_disk_means_503_not_lost_writes, |rt: Runtime| {
    let disk = TinyDisk::mount();
    let data = disk.path().join("data");
    let srv = TestServer::start_in(rt, &data, &["--segment-bytes", "1048576"]);
    let token = srv.token();
    let blob = "x".repeat(8_000);
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..2_000 {
        let id = format!("r{i}");
        let body = format!(r#"{{"id":"{id}","blob":"{blob}"}}"#);
        let r = srv.call(&token, "POST", "/api/insert/fill", &body);
        match r.status {
            200 => acked.push(id),
            _ => {
                refusal = Some(r);
                break;
            }
        }
    }
    let refusal = refusal.expect("a 3 MiB disk fills up before 16 MB of writes");
    assert_eq!(refusal.status, 503, "{}", refusal.text());
    assert!(refusal.header("retry-after").is_some());
    assert!(
        refusal.json()["message"]
            .as_str()
            .unwrap()
            .contains("durable")
            || refusal.json()["message"]
                .as_str()
                .unwrap()
                .contains("storage")
    );
    assert!(!acked.is_empty());

    // Further writes are refused with a message that says why.
    let r = srv.call(&token, "POST", "/api/insert/fill", r#"{"late":true}"#);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.json()["message"].as_str().unwrap().contains("storage"),
        "{}",
        r.text()
    );
    let r = srv.call(&token, "POST", "/api/kv/set/k", r#"{"value":1}"#);
    assert_eq!(r.status, 503);

    // Everything acknowledged is still readable; health says degraded.
    for id in &acked {
        let r = srv.call(&token, "GET", &format!("/api/find/fill/{id}"), "");
        assert_eq!(
            r.status,
            200,
            "acknowledged {id} must be readable: {}",
            r.text()
        );
    }
    let h = srv.request("GET", "/api/health", &[], "");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "degraded");
    drop(srv);
});
