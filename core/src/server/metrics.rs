//! What `GET /metrics` reports, in the Prometheus text exposition format
//! (version 0.0.4): counters and histograms the server keeps as it works
//! (requests by route and status, rate-limit refusals, syncs and what they
//! carried), and gauges read from its state when scraped (connections,
//! subscribers, outbox bytes, reads and chat answers in progress).
//!
//! Core has no clock: durations come from the runtime's clock
//! (`Server::clock`) or from the host (`SyncSample`).

use super::pending::Ticket;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::Duration;

use crate::dialect::EventCodec;
use crate::time::Timestamp;
use crate::wire::http::Method;

/// Upper bounds (seconds) of the latency histograms' buckets.
const SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the batches-per-sync histogram's buckets.
const BATCHES: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// The route label of a request that matched no route.
pub(crate) const UNMATCHED: &str = "(unmatched)";

/// The method label: the standard methods by name, anything else `OTHER`
/// (a client may not grow the label set).
pub(crate) fn method_label(m: &Method) -> &'static str {
    m.standard_name().unwrap_or("OTHER")
}

/// The protocol label of a streaming connection.
pub(crate) fn codec_label(codec: EventCodec) -> &'static str {
    match codec {
        EventCodec::EkodbWs(_) => "ekodb_websocket",
        EventCodec::EkodbSse => "ekodb_sse",
        EventCodec::EkodbChatSse => "ekodb_chat_sse",
        EventCodec::GeneralBots => "general_bots",
        EventCodec::Meet => "general_bots_meet",
        EventCodec::Fluxbase => "fluxbase",
        EventCodec::Eva => "eva",
        EventCodec::Lanonasis(_) => "lanonasis",
    }
}

/// Who may read `/metrics` (`--metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetricsAccess {
    /// A bearer token of an admin key.
    #[default]
    Admin,
    /// Anyone who can reach the port (a scraper on a private network).
    Public,
    /// Nobody: the route answers 404.
    Off,
}

impl MetricsAccess {
    pub fn parse(s: &str) -> Option<MetricsAccess> {
        match s {
            "admin" => Some(MetricsAccess::Admin),
            "public" => Some(MetricsAccess::Public),
            "off" => Some(MetricsAccess::Off),
            _ => None,
        }
    }
}

/// A cumulative histogram with fixed buckets.
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// A request being answered (now, or later: a deferred read, an outbound
/// call, a chat answer), counted once its status is known.
#[derive(Clone, Debug)]
pub(crate) struct Started {
    pub route: &'static str,
    pub method: &'static str,
    pub at: Timestamp,
    /// The start of its debug log line, when `--log-level debug`.
    pub log: Option<Box<str>>,
}

/// What the host measured around one sync of the log.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SyncSample {
    /// How long the append and the fsync took.
    pub took: Duration,
    /// Batches (commits) the sync made durable: the group-commit size.
    pub batches: usize,
    /// Log bytes appended for them.
    pub bytes: u64,
    /// The fsync policy wrote nothing to disk (`--fsync none`).
    pub skipped: bool,
}

/// The counters and histograms; gauges are read at render time.
#[derive(Debug)]
pub(crate) struct Metrics {
    requests: BTreeMap<(&'static str, &'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    /// Requests refused by rate limits: per key, per address.
    rate_limited: [u64; 2],
    syncs: u64,
    sync_seconds: Histogram,
    batches_per_sync: Histogram,
    log_bytes: u64,
    compactions: u64,
    in_flight: HashMap<Ticket, Started>,
    /// Chat answers by provider: (complete, failed), duration, tokens
    /// (prompt, completion). Providers are the configured ones (bounded).
    chat: BTreeMap<String, ChatStats>,
}

#[derive(Clone, Debug)]
struct ChatStats {
    answers: [u64; 2],
    seconds: Histogram,
    tokens: [u64; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: BTreeMap::new(),
            latency: BTreeMap::new(),
            rate_limited: [0; 2],
            syncs: 0,
            sync_seconds: Histogram::new(&SECONDS),
            batches_per_sync: Histogram::new(&BATCHES),
            log_bytes: 0,
            compactions: 0,
            in_flight: HashMap::new(),
            chat: BTreeMap::new(),
        }
    }
}

/// Gauges the server reads from its state for one scrape.
#[derive(Debug, Default)]
pub(crate) struct Gauges<'a> {
    pub connections: usize,
    pub streams: BTreeMap<&'static str, usize>,
    pub subscribers: usize,
    pub outbox_bytes: usize,
    pub outbox_overflows: u64,
    pub reads_queued: usize,
    pub replies_waiting: usize,
    pub chat_answers: usize,
    /// Function runs waiting on an effect (an outbound call, a sleep).
    pub function_runs: usize,
    /// Function runs ended: `[succeeded, failed]` (kept by the function state).
    pub function_runs_ended: [u64; 2],
    pub uptime_secs: Option<u64>,
    /// Heap bytes of each collection's search indexes: (collection, text,
    /// vectors).
    pub search_index_bytes: Vec<(&'a str, usize, usize)>,
}

impl Metrics {
    /// Counts one answered request.
    pub(crate) fn request(
        &mut self,
        route: &'static str,
        method: &'static str,
        status: u16,
        took: Option<Duration>,
    ) {
        *self.requests.entry((route, method, status)).or_insert(0) += 1;
        if let Some(took) = took {
            self.latency
                .entry(route)
                .or_insert_with(|| Histogram::new(&SECONDS))
                .observe(took.as_secs_f64());
        }
    }

    /// A request whose reply is deferred behind `ticket`.
    pub(crate) fn defer(&mut self, ticket: Ticket, started: Started) {
        self.in_flight.insert(ticket, started);
    }

    /// The request behind `ticket` (if it was deferred), now answered.
    pub(crate) fn take_deferred(&mut self, ticket: Ticket) -> Option<Started> {
        self.in_flight.remove(&ticket)
    }

    pub(crate) fn rate_limited(&mut self, by_key: bool) {
        self.rate_limited[usize::from(!by_key)] += 1;
    }

    pub(crate) fn sync(&mut self, s: SyncSample) {
        self.syncs += u64::from(!s.skipped);
        if !s.skipped {
            self.sync_seconds.observe(s.took.as_secs_f64());
        }
        self.batches_per_sync.observe(s.batches as f64);
        self.log_bytes += s.bytes;
    }

    pub(crate) fn compaction(&mut self) {
        self.compactions += 1;
    }

    /// A chat answer ended (`ok`: complete; otherwise failed or cancelled).
    pub(crate) fn chat_answer(
        &mut self,
        provider: &str,
        ok: bool,
        took: Option<Duration>,
        tokens: (Option<u64>, Option<u64>),
    ) {
        if !self.chat.contains_key(provider) {
            self.chat.insert(
                provider.to_string(),
                ChatStats {
                    answers: [0; 2],
                    seconds: Histogram::new(&SECONDS),
                    tokens: [0; 2],
                },
            );
        }
        let Some(s) = self.chat.get_mut(provider) else {
            return;
        };
        s.answers[usize::from(!ok)] += 1;
        if let Some(took) = took {
            s.seconds.observe(took.as_secs_f64());
        }
        s.tokens[0] += tokens.0.unwrap_or(0);
        s.tokens[1] += tokens.1.unwrap_or(0);
    }

    /// The whole exposition.
    pub(crate) fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "tidepool_http_requests_total",
            "counter",
            "HTTP requests answered, by route pattern, method and status.",
        );
        for ((route, method, status), n) in &self.requests {
            let _ = writeln!(
                out,
                "tidepool_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        head(
            &mut out,
            "tidepool_http_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to its reply being ready, by route pattern.",
        );
        for (route, h) in &self.latency {
            let labels = format!("route=\"{}\"", escape(route));
            h.render(&mut out, "tidepool_http_request_duration_seconds", &labels);
        }
        head(
            &mut out,
            "tidepool_rate_limited_total",
            "counter",
            "Requests refused by a rate limit (429), by the limit that refused them.",
        );
        let _ = writeln!(
            out,
            "tidepool_rate_limited_total{{limit=\"key\"}} {}",
            self.rate_limited[0]
        );
        let _ = writeln!(
            out,
            "tidepool_rate_limited_total{{limit=\"address\"}} {}",
            self.rate_limited[1]
        );
        head(
            &mut out,
            "tidepool_fsyncs_total",
            "counter",
            "Syncs of the log to disk (group commits).",
        );
        let _ = writeln!(out, "tidepool_fsyncs_total {}", self.syncs);
        head(
            &mut out,
            "tidepool_fsync_duration_seconds",
            "histogram",
            "Time to append a group commit's batches and sync them.",
        );
        self.sync_seconds
            .render(&mut out, "tidepool_fsync_duration_seconds", "");
        head(
            &mut out,
            "tidepool_group_commit_batches",
            "histogram",
            "Commits made durable by one sync.",
        );
        self.batches_per_sync
            .render(&mut out, "tidepool_group_commit_batches", "");
        let counters = [
            (
                "tidepool_log_appended_bytes_total",
                "Bytes appended to the log.",
                self.log_bytes,
            ),
            (
                "tidepool_compactions_total",
                "Log compactions (snapshots) installed.",
                self.compactions,
            ),
            (
                "tidepool_outbox_overflows_total",
                "Subscribers cut off for falling behind their outbox budget.",
                g.outbox_overflows,
            ),
        ];
        for (name, help, v) in counters {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
        let gauges = [
            (
                "tidepool_connections",
                "Client connections open.",
                g.connections,
            ),
            (
                "tidepool_subscribers",
                "Live collection subscriptions.",
                g.subscribers,
            ),
            (
                "tidepool_outbox_bytes",
                "Event bytes queued for streaming connections, not yet sent.",
                g.outbox_bytes,
            ),
            (
                "tidepool_reads_queued",
                "Reads waiting for a reader thread.",
                g.reads_queued,
            ),
            (
                "tidepool_replies_waiting",
                "Requests whose reply is not ready yet (deferred reads, outbound calls, chat answers).",
                g.replies_waiting,
            ),
            (
                "tidepool_chat_answers",
                "Chat answers being streamed.",
                g.chat_answers,
            ),
            (
                "tidepool_function_runs",
                "Stored-function runs waiting on an outbound call or a sleep.",
                g.function_runs,
            ),
        ];
        for (name, help, v) in gauges {
            head(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {v}");
        }
        head(
            &mut out,
            "tidepool_streams",
            "gauge",
            "Streaming connections (WebSocket, SSE), by protocol.",
        );
        for (codec, n) in &g.streams {
            let _ = writeln!(out, "tidepool_streams{{protocol=\"{codec}\"}} {n}");
        }
        head(
            &mut out,
            "tidepool_search_index_bytes",
            "gauge",
            "Heap bytes of a collection's search indexes, by collection and index (text, vector).",
        );
        for (collection, text, vectors) in &g.search_index_bytes {
            let c = escape(collection);
            for (index, n) in [("text", text), ("vector", vectors)] {
                let _ = writeln!(
                    out,
                    "tidepool_search_index_bytes{{collection=\"{c}\",index=\"{index}\"}} {n}"
                );
            }
        }
        head(
            &mut out,
            "tidepool_chat_answers_total",
            "counter",
            "Chat answers ended, by provider and outcome (complete, or failed/cancelled).",
        );
        for (provider, s) in &self.chat {
            let p = escape(provider);
            for (outcome, n) in [("complete", s.answers[0]), ("failed", s.answers[1])] {
                let _ = writeln!(
                    out,
                    "tidepool_chat_answers_total{{provider=\"{p}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        head(
            &mut out,
            "tidepool_chat_answer_duration_seconds",
            "histogram",
            "Time from a chat message to the end of its answer (provider calls and tool rounds), by provider.",
        );
        for (provider, s) in &self.chat {
            let labels = format!("provider=\"{}\"", escape(provider));
            s.seconds
                .render(&mut out, "tidepool_chat_answer_duration_seconds", &labels);
        }
        head(
            &mut out,
            "tidepool_chat_tokens_total",
            "counter",
            "Tokens of chat answers as the provider reported them (or estimated), by provider and kind.",
        );
        for (provider, s) in &self.chat {
            let p = escape(provider);
            for (kind, n) in [("prompt", s.tokens[0]), ("completion", s.tokens[1])] {
                let _ = writeln!(
                    out,
                    "tidepool_chat_tokens_total{{provider=\"{p}\",kind=\"{kind}\"}} {n}"
                );
            }
        }
        head(
            &mut out,
            "tidepool_function_runs_total",
            "counter",
            "Stored-function runs ended, by outcome.",
        );
        for (outcome, n) in [
            ("ok", g.function_runs_ended[0]),
            ("error", g.function_runs_ended[1]),
        ] {
            let _ = writeln!(
                out,
                "tidepool_function_runs_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        if let Some(up) = g.uptime_secs {
            head(
                &mut out,
                "tidepool_uptime_seconds",
                "gauge",
                "Seconds since recovery finished.",
            );
            let _ = writeln!(out, "tidepool_uptime_seconds {up}");
        }
        out
    }
}

/// A label value: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let mut m = Metrics::default();
        m.request("/api/x/{c}", "GET", 200, Some(Duration::from_micros(300)));
        m.request("/api/x/{c}", "GET", 200, Some(Duration::from_millis(20)));
        m.request("/api/x/{c}", "GET", 404, None);
        m.sync(SyncSample {
            took: Duration::from_millis(2),
            batches: 3,
            bytes: 100,
            skipped: false,
        });
        let text = m.render(&Gauges::default());
        assert!(text.contains(
            "tidepool_http_requests_total{route=\"/api/x/{c}\",method=\"GET\",status=\"200\"} 2\n"
        ));
        assert!(text.contains(
            "tidepool_http_request_duration_seconds_bucket{route=\"/api/x/{c}\",le=\"0.0005\"} 1\n"
        ));
        assert!(text.contains(
            "tidepool_http_request_duration_seconds_bucket{route=\"/api/x/{c}\",le=\"0.025\"} 2\n"
        ));
        assert!(text.contains(
            "tidepool_http_request_duration_seconds_bucket{route=\"/api/x/{c}\",le=\"+Inf\"} 2\n"
        ));
        assert!(text.contains("tidepool_fsyncs_total 1\n"));
        assert!(text.contains("tidepool_group_commit_batches_bucket{le=\"4\"} 1\n"));
        assert!(text.contains("tidepool_log_appended_bytes_total 100\n"));
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
