//! Progress of a long operation (a backup, a restore, recovery of a large
//! log) with its rate and an estimate of the time left: redrawn in place on
//! a terminal, or a log line every few seconds otherwise. An operation that
//! ends before the first interval says nothing.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use tidepool_core::config::LogLevel;

/// How often a line is written to the log (a terminal is redrawn faster).
const LOG_EVERY: Duration = Duration::from_secs(5);
const DRAW_EVERY: Duration = Duration::from_millis(250);

pub struct Progress {
    what: &'static str,
    total: u64,
    started: Instant,
    last: Option<Instant>,
    terminal: bool,
}

impl Progress {
    /// Progress for `total` bytes of `what`; `terminal` when stderr is one
    /// and the caller draws there (the subcommands), else log lines.
    pub fn new(what: &'static str, total: u64, on_terminal: bool) -> Progress {
        Progress {
            what,
            total,
            started: Instant::now(),
            last: None,
            terminal: on_terminal && std::io::stderr().is_terminal(),
        }
    }

    /// `done` bytes of the total are done.
    pub fn update(&mut self, done: u64) {
        let every = if self.terminal { DRAW_EVERY } else { LOG_EVERY };
        let now = Instant::now();
        if now - self.last.unwrap_or(self.started) < every {
            return;
        }
        self.last = Some(now);
        self.say(done, "");
    }

    /// The operation is over: its last line, if it said anything before.
    pub fn finish(&mut self, done: u64) {
        if self.last.is_some() {
            self.say(done, "\n");
        }
    }

    fn say(&self, done: u64, end: &str) {
        let text = describe(self.what, done, self.total, self.started.elapsed());
        if self.terminal {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K{text}{end}");
        } else {
            crate::log::line(LogLevel::Info, &text);
        }
    }
}

/// `backup: 120.0 of 500.0 MiB (24%), 80.0 MiB/s, about 5 s left`.
pub fn describe(what: &str, done: u64, total: u64, took: Duration) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let secs = took.as_secs_f64().max(1e-3);
    let rate = mib(done) / secs;
    let percent = if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    let left = if done >= total {
        format!("done in {secs:.1} s")
    } else if done == 0 {
        "starting".to_string()
    } else {
        let eta = (total - done) as f64 / (done as f64 / secs);
        format!("about {eta:.0} s left")
    };
    format!(
        "{what}: {:.1} of {:.1} MiB ({percent:.0}%), {rate:.1} MiB/s, {left}",
        mib(done),
        mib(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_the_rate_and_the_time_left() {
        let mib = 1024 * 1024;
        let text = describe("backup", 100 * mib, 400 * mib, Duration::from_secs(2));
        assert_eq!(
            text,
            "backup: 100.0 of 400.0 MiB (25%), 50.0 MiB/s, about 6 s left"
        );
        let done = describe("restore", 4 * mib, 4 * mib, Duration::from_secs(2));
        assert!(done.ends_with("(100%), 2.0 MiB/s, done in 2.0 s"), "{done}");
    }
}
