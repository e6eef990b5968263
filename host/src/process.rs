//! The process's CPU time and memory, for `system.health` (Linux `/proc`;
//! elsewhere the sample is empty and the numbers are reported as unknown).

use std::sync::OnceLock;
use std::time::Duration;
use tidepool_core::server::health::ProcessSample;

/// Clock ticks per second of `/proc/self/stat` times (USER_HZ): 100 on
/// every Linux architecture Tidepool builds for.
const TICKS_PER_SEC: u64 = 100;

pub fn sample() -> ProcessSample {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SEC))
        })
        .unwrap_or_default();
    let kib = |file: &str, key: &str| -> u64 {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    };
    static TOTAL: OnceLock<u64> = OnceLock::new();
    ProcessSample {
        cpu,
        rss_bytes: kib("/proc/self/status", "VmRSS:"),
        total_memory_bytes: *TOTAL.get_or_init(|| kib("/proc/meminfo", "MemTotal:")),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    }
}
