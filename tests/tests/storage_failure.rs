//! A real disk that fills up: the server's data directory sits on a 3 MiB tmpfs.
//! The write that hits the full disk is answered 500 "applied, durability
//! unknown" (never a fake success, and not a 503, which promises nothing was
//! applied); later writes are refused with 503 and a clear message; reads of
//! what was acknowledged keep working and health says degraded. After a
//! restart (with room again) every acknowledged write is there and no 503
//! write is.

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
    let mut srv = TestServer::start_in(rt, &data, &["--segment-bytes", "1048576"]);
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
    // The write that met the full disk was applied; its durability is unknown.
    assert_eq!(refusal.status, 500, "{}", refusal.text());
    assert_eq!(refusal.header("x-tidepool-durability"), Some("unknown"));
    assert!(refusal.header("retry-after").is_none());
    assert!(
        refusal.json()["message"]
            .as_str()
            .unwrap()
            .contains("applied but could not be made durable"),
        "{}",
        refusal.text()
    );
    assert!(!acked.is_empty());

    // Further writes are refused, not applied, with a message that says why.
    let r = srv.call(&token, "POST", "/api/insert/fill", r#"{"id":"late"}"#);
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

    // Room again, and a restart: every 2xx write is there, the 503 one is not.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(disk.path())
        .status()
        .expect("remount");
    assert!(grown.success());
    srv.restart();
    let token = srv.token();
    for id in &acked {
        let r = srv.call(&token, "GET", &format!("/api/find/fill/{id}"), "");
        assert_eq!(r.status, 200, "acknowledged {id} lost: {}", r.text());
    }
    let r = srv.call(&token, "GET", "/api/find/fill/late", "");
    assert_eq!(r.status, 404, "a 503 write appeared: {}", r.text());
    drop(srv);
});
