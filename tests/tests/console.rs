//! The web console at `/`: served from the binary with a strict content
//! policy, and driven end to end in a real headless browser (Debian's
//! `chromium` with `puppeteer-core`, both installed by
//! `scripts/setup-test-deps`; `tests/node/console.js`). Screenshots of
//! each page are kept in `target/console-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use tidepool_tests::{both_runtimes, Runtime, TestServer, API_KEY};

both_runtimes!(the_console_is_served_from_the_binary, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let page = srv.request("GET", "/", &[], "");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("/console/app.js"), "{}", page.text());
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    for (path, kind) in [
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let r = srv.request("GET", path, &[], "");
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        // Nothing is fetched from elsewhere: it works offline.
        assert!(
            !r.text().contains("https://"),
            "{path} loads something remote"
        );
    }
    // The API beside it is unchanged.
    assert_eq!(srv.request("GET", "/console/nope.js", &[], "").status, 404);
});

fn chromium() -> PathBuf {
    std::env::var_os("TIDEPOOL_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

both_runtimes!(the_console_works_in_a_real_browser, |rt: Runtime| {
    let browser = chromium();
    assert!(
        browser.exists(),
        "{} is missing: scripts/setup-test-deps installs Debian's chromium",
        browser.display()
    );
    // console.js serves a fake OpenAI-compatible provider (a hosted LLM
    // lives outside the machine) on this port, for the tool-call view.
    let fake_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let fake_url = format!("http://127.0.0.1:{fake_port}/v1");
    let srv = TestServer::start_with(
        rt,
        &["--openai-url", &fake_url, "--openai-api-key", "sk-test"],
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shots = root
        .join("../target/console-screenshots")
        .join(format!("{rt:?}").to_lowercase());
    let _ = std::fs::remove_dir_all(&shots);
    let out = Command::new("node")
        .arg("console.js")
        .current_dir(root.join("node"))
        .env("TIDEPOOL_HTTP", srv.base_url())
        .env("TIDEPOOL_API_KEY", API_KEY)
        .env("TIDEPOOL_SCREENSHOTS", &shots)
        .env("TIDEPOOL_CHROMIUM", &browser)
        .env("TIDEPOOL_FAKE_OPENAI_PORT", fake_port.to_string())
        .output()
        .expect("node is required (scripts/setup-test-deps installs it)");
    assert!(
        out.status.success(),
        "console.js failed\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let taken = std::fs::read_dir(&shots).unwrap().count();
    assert_eq!(
        taken, 9,
        "one screenshot per page (and the chat with tools)"
    );
});
