//! The products' own client code, run unchanged in Node against a real
//! server of each runtime: General Bots' `BotClient`, EVA's snippets and
//! Lanonasis' `LanOnasisStream` (copied from the seed documents into
//! `tests/node/`), on the `ws` and `eventsource` packages, and the official
//! `@lanonasis/memory-client` SDK from npm. `scripts/setup-test-deps` installs Node and the
//! packages; a machine without Node fails here with a message saying so.

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tidepool_tests::{both_runtimes, TestServer, API_KEY};

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// Installs the pinned packages once (tests run in parallel processes: the
/// first to create the lock directory installs, the others wait).
fn ensure_packages() {
    let dir = node_dir();
    let ready = dir.join("node_modules/.tidepool-installed");
    if ready.exists() {
        return;
    }
    let lock = dir.join(".installing");
    let deadline = Instant::now() + Duration::from_secs(300);
    if std::fs::create_dir(&lock).is_ok() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output();
        let _ = std::fs::remove_dir(&lock);
        let out = out.unwrap_or_else(|e| {
            panic!("npm is required to run the seed clients (scripts/setup-test-deps installs Node.js): {e}")
        });
        assert!(
            out.status.success(),
            "npm ci failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&ready, b"").expect("marker");
        return;
    }
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "npm ci in another test did not finish"
        );
        if !lock.exists() && !ready.exists() {
            return ensure_packages();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs one script against a fresh server with the product record.
fn run(srv: &TestServer, script: &str) {
    ensure_packages();
    srv.insert(
        "products",
        &json!({"name": "ekoDB Pro", "price": 99, "description": "A fast database with search"}),
    );
    let out = Command::new("node")
        .arg(script)
        .current_dir(node_dir())
        .env("TIDEPOOL_HTTP", srv.base_url())
        .env("TIDEPOOL_WS", format!("ws://{}", srv.addr))
        .env("TIDEPOOL_API_KEY", API_KEY)
        .output()
        .unwrap_or_else(|e| {
            panic!("node is required (scripts/setup-test-deps installs Node.js): {e}")
        });
    assert!(
        out.status.success(),
        "{script} failed\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

both_runtimes!(general_bots_bot_client_from_the_seed, |rt| {
    run(&TestServer::start(rt), "general_bots.js");
});

both_runtimes!(eva_snippets_from_the_seed, |rt| {
    run(&TestServer::start(rt), "eva.js");
});

both_runtimes!(lanonasis_stream_class_and_official_sdk, |rt| {
    run(&TestServer::start(rt), "lanonasis.js");
});
