//! The operator's log on stderr, as `--log-format` says: `tidepool: ...`
//! lines, or one JSON object a line (`time`, `level`, `message`) for log
//! shippers. The server's own lines (`Server::poll_note`) and the host's and
//! runtimes' come through here, so one format holds for all of them.

use std::io::Write;
use std::sync::OnceLock;
use tidepool_core::config::{LogFormat, LogLevel};

static FORMAT: OnceLock<(LogFormat, LogLevel)> = OnceLock::new();

/// Sets the format and the least severe level written, for the life of the
/// process (the first call wins).
pub fn set_format(format: LogFormat, level: LogLevel) {
    let _ = FORMAT.set((format, level));
}

/// Writes one line of the operator's log (unless `--log-level` drops it).
pub fn line(level: LogLevel, text: &str) {
    let (format, least) = *FORMAT.get().unwrap_or(&(LogFormat::Text, LogLevel::Info));
    if level > least {
        return;
    }
    let out = render(format, level, text, crate::clock::now);
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

/// A warning (the host's own troubles: TLS, compaction, documents).
pub fn warn(text: &str) {
    line(LogLevel::Warn, text);
}

fn render(
    format: LogFormat,
    level: LogLevel,
    text: &str,
    now: fn() -> tidepool_core::time::Timestamp,
) -> String {
    match format {
        LogFormat::Text if level == LogLevel::Info => format!("tidepool: {text}\n"),
        LogFormat::Text => format!("tidepool: {}: {text}\n", level.as_str()),
        LogFormat::Json => {
            let line = serde_json::json!({
                "time": now().to_rfc3339_z(),
                "level": level.as_str(),
                "message": text,
            });
            format!("{line}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidepool_core::time::Timestamp;

    fn at() -> Timestamp {
        Timestamp::from_secs(1_700_000_000)
    }

    #[test]
    fn text_and_json_lines() {
        assert_eq!(
            render(LogFormat::Text, LogLevel::Info, "ready", at),
            "tidepool: ready\n"
        );
        assert_eq!(
            render(LogFormat::Text, LogLevel::Warn, "refused", at),
            "tidepool: warn: refused\n"
        );
        let json = render(LogFormat::Json, LogLevel::Debug, "a \"b\"\n\u{1}", at);
        assert!(
            json.ends_with('\n') && json.lines().count() == 1,
            "{json:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2023-11-14T22:13:20.000000Z",
                "level": "debug",
                "message": "a \"b\"\n\u{1}",
            })
        );
    }
}
