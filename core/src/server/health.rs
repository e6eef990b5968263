//! What the server can say about its own health: requests answered, their
//! latency and 5xx share since the last report, and the process's CPU and
//! memory as the runtime measures them (`ProcessSample`, read by the host:
//! core has no clock or files of its own). Lanonasis streams that ask for
//! `system.health` get it every `HEALTH_EVERY`.

use super::{Server, ServerTimer};
use crate::dialect::EventCodec;
use crate::time::Timestamp;
use std::time::Duration;

/// How often streams that asked for it get `system.health`.
pub const HEALTH_EVERY: Duration = Duration::from_secs(30);

/// The process as the runtime sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSample {
    /// CPU time the process used so far (user and system).
    pub cpu: Duration,
    pub rss_bytes: u64,
    pub total_memory_bytes: u64,
    pub cores: u32,
}

/// Requests since the last report.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    requests: u64,
    errors: u64,
    latency_micros: u64,
    /// The previous sample and when it was taken (for CPU use between two).
    last: Option<(Timestamp, ProcessSample)>,
}

/// One report: the numbers `system.health` carries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Health {
    pub degraded: bool,
    /// Percent of all cores since the last report; `None` before two samples.
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    pub mean_response_ms: f64,
    pub error_percent: f64,
}

impl Server {
    /// Lets the server sample its process (the runtime's probe).
    pub fn set_process_probe(&mut self, probe: fn() -> ProcessSample) {
        self.probe = Some(probe);
    }

    /// Counts one answered request.
    pub(super) fn count_request(&mut self, status: u16, took: Option<Duration>) {
        let w = &mut self.health;
        w.requests += 1;
        w.errors += u64::from(status >= 500);
        w.latency_micros = w
            .latency_micros
            .saturating_add(took.map_or(0, |d| d.as_micros() as u64));
    }

    /// The numbers since the last report, and a new window.
    pub fn health_report(&mut self, now: Timestamp) -> Health {
        let sample = self.probe.map(|p| p());
        let w = std::mem::take(&mut self.health);
        let cpu_percent = match (w.last, sample) {
            (Some((then, before)), Some(s)) if now > then => {
                let wall = now.since(then).as_secs_f64() * f64::from(s.cores.max(1));
                Some((s.cpu.saturating_sub(before.cpu).as_secs_f64() / wall * 100.0).min(100.0))
            }
            _ => None,
        };
        self.health.last = sample.map(|s| (now, s));
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Health {
            degraded: self.storage_failure.is_some(),
            cpu_percent,
            memory_percent: sample
                .filter(|s| s.total_memory_bytes > 0)
                .map(|s| s.rss_bytes as f64 * 100.0 / s.total_memory_bytes as f64),
            mean_response_ms: ratio(w.latency_micros, w.requests) / 1000.0,
            error_percent: ratio(w.errors, w.requests) * 100.0,
        }
    }

    /// A stream that wants `system.health` opened: make sure reports run.
    pub fn want_health(&mut self, now: Timestamp) {
        if self.timers.get(ServerTimer::Health).is_none() {
            self.health_report(now);
            self.timers
                .set(ServerTimer::Health, Some(now.saturating_add(HEALTH_EVERY)));
        }
    }

    /// The report is due: sent to whoever still wants it, then again later.
    pub(super) fn health_due(&mut self, now: Timestamp) {
        let wanted =
            |c: EventCodec| matches!(c, EventCodec::Lanonasis(t) if t.contains("system.health"));
        if !self.hub.any_codec(wanted) {
            return;
        }
        let report = self.health_report(now);
        crate::dialect::lanonasis::stream::publish_health(self, &report, now);
        self.timers
            .set(ServerTimer::Health, Some(now.saturating_add(HEALTH_EVERY)));
    }
}
