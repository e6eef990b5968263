//! The long-running crash test: the workload of `tests/tests/crash.rs` (writers
//! inserting, batch-inserting and updating; SIGKILL at a random moment; restart on
//! the same data directory; an exact check against the acknowledged ledger)
//! against a release server, for as many kills as asked.
//!
//! ```sh
//! cargo build --release -p tidepool-smol -p tidepool-std -p tidepool-benches
//! target/release/killtest --kills 1000 --server tidepool
//! ```
//!
//! Options (defaults in brackets):
//!
//! * `--kills N` [100]: kill points.
//! * `--server tidepool|tidepool-std` [tidepool]: the binary next to this one.
//! * `--writers N` [8]: concurrent writers, each on its own keep-alive connection.
//! * `--delay-ms LO-HI` [50-400]: when the kill comes after the writers start.
//! * `--fsync POLICY` [sync]: passed to the server (`sync`, `batch:MS`).
//! * `--compaction`: 1 KiB records, 1 MiB segments, a snapshot per 64 KiB of log,
//!   no extra history: kills land around rotations and snapshot installs.
//! * `--fresh-dir-every N` [20]: start over on an empty directory every N kills
//!   (0 = never), so the per-restart scan of every record stays bounded.
//! * `--dir PATH` [temp dir]: where data directories are created.
//! * `--seed S` [clock; or `CRASH_SEED`]: decimal or 0x hex; printed.
//! * `--keep-going`: do not stop at the first violation.
//! * `--quiet`: no line per kill.
//!
//! Exits with status 1 if any acknowledged write was lost, a batch was partly
//! present, a record appeared that was never written, or the server misbehaved.

use std::path::PathBuf;
use tidepool_tests::crash::{self, Options};
use tidepool_tests::Runtime;

fn usage(why: &str) -> ! {
    eprintln!("killtest: {why}\nsee the comment at the top of benches/src/bin/killtest.rs");
    std::process::exit(2)
}

fn main() {
    let mut kills = 100usize;
    let mut server = "tidepool".to_string();
    let mut writers = 8usize;
    let mut delay_ms = (50u64, 400u64);
    let mut fsync = "sync".to_string();
    let mut compaction = false;
    let mut fresh_dir_every = 20usize;
    let mut parent_dir: Option<PathBuf> = None;
    let mut seed: Option<u64> = None;
    let mut keep_going = false;
    let mut quiet = false;

    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let number = |s: String| -> usize {
            s.parse()
                .unwrap_or_else(|_| usage(&format!("not a number: {s}")))
        };
        match flag.as_str() {
            "--kills" => kills = number(value()),
            "--server" => server = value(),
            "--writers" => writers = number(value()).max(1),
            "--delay-ms" => {
                let v = value();
                let (lo, hi) = v
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .filter(|(lo, hi)| lo <= hi)
                    .unwrap_or_else(|| usage(&format!("--delay-ms wants LO-HI, got {v}")));
                delay_ms = (lo, hi);
            }
            "--fsync" => fsync = value(),
            "--compaction" => compaction = true,
            "--fresh-dir-every" => fresh_dir_every = number(value()),
            "--dir" => parent_dir = Some(PathBuf::from(value())),
            "--seed" => {
                let v = value();
                seed =
                    Some(crash::parse_seed(&v).unwrap_or_else(|| usage(&format!("bad seed {v}"))));
            }
            "--keep-going" => keep_going = true,
            "--quiet" => quiet = true,
            other => usage(&format!("unknown option {other}")),
        }
    }

    let runtime = match server.as_str() {
        "tidepool" => Runtime::Smol,
        "tidepool-std" => Runtime::Std,
        other => usage(&format!(
            "--server is tidepool or tidepool-std, not {other}"
        )),
    };
    let exe = std::env::current_exe().expect("current exe");
    let program = exe.with_file_name(&server);
    if !program.exists() {
        usage(&format!(
            "{} not found; build it first: cargo build --release -p tidepool-smol -p tidepool-std",
            program.display()
        ));
    }

    let seed = seed.unwrap_or_else(|| crash::seed_from_env("CRASH_SEED"));
    let mut opts = Options::new(program, runtime, kills, seed);
    opts.writers = writers;
    opts.delay_ms = delay_ms;
    opts.server_args = vec!["--fsync".into(), fsync];
    if compaction {
        opts.pad_bytes = 1024;
        opts.server_args.extend(
            [
                "--segment-bytes",
                "1048576",
                "--compact-after-bytes",
                "65536",
                "--history-bytes",
                "0",
            ]
            .map(String::from),
        );
    }
    opts.fresh_dir_every = fresh_dir_every;
    opts.parent_dir = parent_dir;
    opts.stop_on_failure = !keep_going;
    opts.verbose = !quiet;

    println!("killtest: {}", opts.describe());
    println!("killtest: repeat with --seed {seed:#x}");
    let report = crash::run(&opts);
    print!("{}", report.summary());
    if !report.is_clean() || report.kills < kills {
        std::process::exit(1);
    }
}
