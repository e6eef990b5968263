//! Online backup and restore with real processes: a writer keeps inserting
//! while the server backs itself up (`POST /api/admin/backup`); the backup
//! verifies (`/api/admin/backup/verify` and `tidepool verify`), restores with
//! `tidepool restore` into a fresh directory, and a server started there has
//! every record acknowledged before the backup was asked for, none sent
//! after it answered, and no gap. Bad input: an occupied directory, a
//! relative path, a damaged file, a restore over data.

use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tidepool_tests::{both_runtimes, Runtime, TestServer};

fn numbers(srv: &TestServer, token: &str) -> Vec<u64> {
    let r = srv.call(token, "POST", "/api/find/events", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut n: Vec<u64> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|rec| {
            let v = &rec["n"];
            v.get("value").unwrap_or(v).as_u64().expect("n")
        })
        .collect();
    n.sort_unstable();
    n
}

both_runtimes!(a_backup_under_load_restores_to_its_point, |rt: Runtime| {
    backup_under_load_restores_to_its_point(rt, "monday", "dir");
});

both_runtimes!(
    a_one_file_backup_under_load_restores_to_its_point,
    |rt: Runtime| {
        backup_under_load_restores_to_its_point(rt, "monday.tar", "file");
    }
);

/// Backs up into `name` (given to the API as `key`) while a writer
/// inserts, then verifies, restores and checks the restored server.
fn backup_under_load_restores_to_its_point(rt: Runtime, name: &str, key: &str) {
    let srv = TestServer::start(rt);
    let token = srv.token();
    let tmp = tempfile::tempdir().unwrap();
    let backup_dir = tmp.path().join(name);
    let (acked, sent, stop) = (AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false));
    let (before, after, lsn) = std::thread::scope(|s| {
        s.spawn(|| {
            // One writer, in order: n is acknowledged before n + 1 is sent.
            let token = srv.token();
            let mut n = 1;
            while !stop.load(Ordering::SeqCst) {
                sent.store(n, Ordering::SeqCst);
                let r = srv.call(
                    &token,
                    "POST",
                    "/api/insert/events",
                    &json!({"n": n}).to_string(),
                );
                assert_eq!(r.status, 200, "{}", r.text());
                acked.store(n, Ordering::SeqCst);
                n += 1;
            }
        });
        while acked.load(Ordering::SeqCst) < 30 {
            std::thread::yield_now();
        }
        let before = acked.load(Ordering::SeqCst);
        let body = json!({ key: backup_dir.display().to_string() }).to_string();
        let r = srv.call(&token, "POST", "/api/admin/backup", &body);
        let after = sent.load(Ordering::SeqCst) + 1;
        // A few more after the backup answered, then stop.
        while acked.load(Ordering::SeqCst) < after + 10 {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::SeqCst);
        assert_eq!(r.status, 200, "{}", r.text());
        let reply = r.json();
        assert!(reply["bytes"].as_u64().unwrap() > 0, "{reply}");
        assert!(reply["mib_per_s"].is_number(), "{reply}");
        (before, after, reply["lsn"].as_u64().unwrap())
    });

    assert_eq!(backup_dir.is_file(), key == "file");
    // It verifies, over the API and with the subcommand.
    let body = json!({ key: backup_dir.display().to_string() }).to_string();
    let r = srv.call(&token, "POST", "/api/admin/backup/verify", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["lsn"].as_u64(), Some(lsn));
    let (ok, out, err) = rt.subcommand(&["verify", backup_dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("\"lsn\":{lsn}")), "{out}");

    // Restored into a fresh directory, a server there has exactly a prefix
    // of the writer's records reaching at least `before` and short of
    // `after`.
    let restored = tmp.path().join("restored");
    let (ok, out, err) = rt.subcommand(&[
        "restore",
        backup_dir.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("\"lsn\":{lsn}")), "{out}");
    let again = TestServer::start_in(rt, &restored, &[]);
    let token2 = again.token();
    let got = numbers(&again, &token2);
    let last = *got.last().unwrap();
    assert_eq!(
        got,
        (1..=last).collect::<Vec<_>>(),
        "a gap in the restored records"
    );
    assert!(
        last >= before,
        "acknowledged {before} before the backup, restored up to {last}"
    );
    assert!(
        last < after,
        "{after} was sent after the backup answered, restored up to {last}"
    );
    // The restored server takes writes and keeps types.
    again.insert(
        "events",
        &json!({"n": 1_000_000, "when": {"type": "DateTime", "value": "2026-12-06T12:00:00Z"}}),
    );
    let r = again.call(&token2, "POST", "/api/find/events", &json!({"filter": {"type": "Condition", "content": {"field": "n", "operator": "Eq", "value": 1_000_000}}}).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()[0]["when"]["type"], "DateTime", "{}", r.text());
}

both_runtimes!(bad_backups_and_restores_are_refused, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = srv.token();
    srv.insert("events", &json!({"n": 1}));
    let tmp = tempfile::tempdir().unwrap();
    let call = |path: &str, dir: &Path| {
        let body = json!({"dir": dir.display().to_string()}).to_string();
        srv.call(&token, "POST", path, &body)
    };
    // Relative or missing paths.
    for body in [
        json!({"dir": "relative/dir"}),
        json!({"dir": "/tmp/../etc"}),
        json!({}),
    ] {
        let r = srv.call(&token, "POST", "/api/admin/backup", &body.to_string());
        assert_eq!(r.status, 400, "{}", r.text());
    }
    // A directory that holds something is left alone.
    let occupied = tmp.path().join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("mine.txt"), b"keep me").unwrap();
    let r = call("/api/admin/backup", &occupied);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("not empty"), "{}", r.text());
    assert_eq!(
        std::fs::read(occupied.join("mine.txt")).unwrap(),
        b"keep me"
    );
    // Only an admin key backs up.
    let r = srv.call("not-a-token", "POST", "/api/admin/backup", "{}");
    assert_eq!(r.status, 401, "{}", r.text());

    let good = tmp.path().join("good");
    assert_eq!(call("/api/admin/backup", &good).status, 200);
    // The subcommand asks a running server for the same.
    let (ok, out, err) = rt.subcommand(&[
        "backup",
        tmp.path().join("by-cli").to_str().unwrap(),
        "--url",
        &srv.base_url(),
        "--api-key",
        tidepool_tests::API_KEY,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"lsn\""), "{out}");
    let (ok, _, err) = rt.subcommand(&["restore"]);
    assert!(!ok && err.contains("a directory is required"), "{err}");
    // Restore over a directory with data in it: refused.
    let (ok, _, err) = rt.subcommand(&[
        "restore",
        good.to_str().unwrap(),
        "--data-dir",
        srv.dir.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("not empty"), "{err}");
    // An offline backup of a running server's directory points to the online one.
    let (ok, _, err) = rt.subcommand(&[
        "backup",
        tmp.path().join("x").to_str().unwrap(),
        "--data-dir",
        srv.dir.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--url"), "{err}");
    // One flipped byte: verify and restore both say which file.
    let store = good.join("store");
    let damaged = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log") && p.metadata().unwrap().len() > 40)
        .expect("a segment with data");
    let mut bytes = std::fs::read(&damaged).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&damaged, bytes).unwrap();
    let r = call("/api/admin/backup/verify", &good);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("CRC"), "{}", r.text());
    let (ok, _, err) = rt.subcommand(&[
        "restore",
        good.to_str().unwrap(),
        "--data-dir",
        tmp.path().join("fresh").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("CRC"), "{err}");
    // The failed restore left nothing behind: it can be tried again.
    let fresh = tmp.path().join("fresh");
    assert!(
        std::fs::read_dir(&fresh).map_or(true, |mut d| d.next().is_none()),
        "a failed restore left files in {}",
        fresh.display()
    );

    // One-file backups: only `.tar` names, never over an existing file, and
    // a damaged archive is refused by verify and restore alike.
    let r = srv.call(
        &token,
        "POST",
        "/api/admin/backup",
        &json!({"file": "/tmp/x.zip"}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let tar = tmp.path().join("good.tar");
    let body = json!({"file": tar.display().to_string()}).to_string();
    let r = srv.call(&token, "POST", "/api/admin/backup", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = srv.call(&token, "POST", "/api/admin/backup", &body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("exists"), "{}", r.text());
    let mut bytes = std::fs::read(&tar).unwrap();
    // A byte inside the first store file: its 512-byte tar header starts
    // with its name.
    let header = bytes
        .windows(6)
        .position(|w| w == b"store/")
        .expect("a store file in the archive");
    bytes[header + 512 + 40] ^= 0x40;
    std::fs::write(&tar, bytes).unwrap();
    let r = srv.call(&token, "POST", "/api/admin/backup/verify", &body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("do not match its manifest"),
        "{}",
        r.text()
    );
    let fresh = tmp.path().join("fresh-from-tar");
    let (ok, _, err) = rt.subcommand(&[
        "restore",
        tar.to_str().unwrap(),
        "--data-dir",
        fresh.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("do not match its manifest"), "{err}");
    assert!(
        std::fs::read_dir(&fresh).map_or(true, |mut d| d.next().is_none()),
        "a failed restore left files in {}",
        fresh.display()
    );
});

/// A stopped server's directory backs up offline, with the same layout.
#[test]
fn an_offline_backup_of_a_stopped_server() {
    let mut srv = TestServer::start(Runtime::Std);
    for n in 1..=5 {
        srv.insert("events", &json!({"n": n}));
    }
    srv.kill9();
    let tmp = tempfile::tempdir().unwrap();
    let (b, r) = (tmp.path().join("b"), tmp.path().join("r"));
    let (ok, out, err) = Runtime::Std.subcommand(&[
        "backup",
        b.to_str().unwrap(),
        "--data-dir",
        srv.dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(summary["lsn"].as_u64().unwrap() >= 5, "{summary}");
    let (ok, _, err) = Runtime::Std.subcommand(&[
        "restore",
        b.to_str().unwrap(),
        "--data-dir",
        r.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let again = TestServer::start_in(Runtime::Std, &r, &[]);
    assert_eq!(numbers(&again, &again.token()), vec![1, 2, 3, 4, 5]);
}
