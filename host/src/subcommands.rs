//! The server binary's subcommands for operators:
//!
//! ```text
//! tidepool backup DIR [--data-dir D]            a stopped server's data
//! tidepool backup DIR --url URL --api-key KEY   a running server's (online)
//! tidepool restore BACKUP --data-dir D          into a new or empty D
//! tidepool verify BACKUP                        manifest and checksums
//! ```
//!
//! A running server holds its data directory's lock, so an offline backup
//! of it is refused with a pointer to the online one, which asks the server
//! (`POST /api/admin/backup`) to write the backup on its machine.

use crate::backup;
use serde_json::{json, Value as J};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tidepool_storage::{Store, StoreError, StoreOptions};

pub const USAGE: &str = "\
SUBCOMMANDS:
  backup DIR [--data-dir D]           back up a stopped server's data directory into DIR
  backup DIR --url URL --api-key KEY  ask a running server for an online backup into DIR
                                      (a directory on the server's machine)
  restore BACKUP --data-dir D         restore a backup into a new or empty data directory
  verify BACKUP                       check a backup's manifest and every file's checksum
";

/// Runs `args` if they name a subcommand (`None`: they do not); the
/// result is the exit status (1: it failed, 2: bad arguments).
pub fn run(args: &[String]) -> Option<i32> {
    let (name, rest) = args.split_first()?;
    let command: fn(&Args) -> Result<String, String> = match name.as_str() {
        "backup" => backup_cmd,
        "restore" => restore_cmd,
        "verify" => verify_cmd,
        _ => return None,
    };
    let args = match parse(rest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tidepool {name}: {e}");
            return Some(2);
        }
    };
    let result = command(&args);
    Some(match result {
        Ok(summary) => {
            println!("{summary}");
            0
        }
        Err(e) => {
            eprintln!("tidepool {name}: {e}");
            1
        }
    })
}

#[derive(Debug, Default, PartialEq)]
struct Args {
    target: PathBuf,
    data_dir: Option<PathBuf>,
    url: Option<String>,
    api_key: Option<String>,
}

fn parse(rest: &[String]) -> Result<Args, String> {
    let mut args = Args::default();
    let mut target = None;
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match arg.as_str() {
            "--data-dir" => args.data_dir = Some(value("--data-dir")?.into()),
            "--url" => args.url = Some(value("--url")?),
            "--api-key" => args.api_key = Some(value("--api-key")?),
            flag if flag.starts_with("--") => {
                return Err(format!("unknown option `{flag}`\n\n{USAGE}"))
            }
            path if target.is_none() => target = Some(PathBuf::from(path)),
            extra => return Err(format!("unexpected argument `{extra}`\n\n{USAGE}")),
        }
    }
    args.target = target.ok_or_else(|| format!("a directory is required\n\n{USAGE}"))?;
    Ok(args)
}

fn data_dir(a: &Args) -> PathBuf {
    a.data_dir
        .clone()
        .or_else(|| std::env::var("TIDEPOOL_DATA_DIR").ok().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("./data"))
}

fn backup_cmd(a: &Args) -> Result<String, String> {
    if let Some(url) = &a.url {
        let key = a
            .api_key
            .clone()
            .or_else(|| std::env::var("TIDEPOOL_API_KEY").ok())
            .ok_or("--api-key (or TIDEPOOL_API_KEY) is required with --url")?;
        let dir = std::path::absolute(&a.target).map_err(|e| e.to_string())?;
        return online(url, &key, &dir);
    }
    let dir = data_dir(a);
    let (store, recovery) = match Store::open(StoreOptions::new(backup::store_dir(&dir))) {
        Err(StoreError::Locked { .. }) => {
            return Err(format!(
                "a running server holds {}: back it up online with --url http://HOST:PORT --api-key KEY",
                dir.display()
            ))
        }
        other => other.map_err(|e| e.to_string())?,
    };
    drop(recovery);
    let plan = store.backup_plan().map_err(|e| e.to_string())?;
    let summary = backup::write(&plan, &dir, &a.target, true).map_err(|e| e.to_string())?;
    store.close().map_err(|e| e.to_string())?;
    Ok(summary.to_string())
}

fn restore_cmd(a: &Args) -> Result<String, String> {
    let dir = a
        .data_dir
        .clone()
        .ok_or("--data-dir is required: the new (or empty) directory to restore into")?;
    let summary = backup::restore(&a.target, &dir, true).map_err(|e| e.to_string())?;
    Ok(summary.to_string())
}

fn verify_cmd(a: &Args) -> Result<String, String> {
    let summary = backup::verify(&a.target).map_err(|e| e.to_string())?;
    Ok(summary.to_string())
}

/// `POST /api/admin/backup` on a running server (plain HTTP).
fn online(url: &str, key: &str, dir: &Path) -> Result<String, String> {
    let addr = url
        .strip_prefix("http://")
        .ok_or("--url must be http://HOST:PORT (for https, call POST /api/admin/backup yourself)")?
        .trim_end_matches('/');
    let token = post(addr, "/api/auth/token", None, &json!({"api_key": key}))?;
    let token = token["token"]
        .as_str()
        .ok_or("the server gave no token for that key")?
        .to_string();
    let body = json!({"dir": dir.display().to_string()});
    post(addr, "/api/admin/backup", Some(&token), &body).map(|v| v.to_string())
}

fn post(addr: &str, path: &str, token: Option<&str>, body: &J) -> Result<J, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    // A big backup takes a while; the server answers when it is written.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(24 * 3600)));
    let body = body.to_string();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the server's reply was cut short")?;
    let status = head.split(' ').nth(1).unwrap_or("");
    let parsed: J = serde_json::from_str(body).unwrap_or(J::String(body.to_string()));
    if status != "200" {
        let why = parsed["message"]
            .as_str()
            .map_or(body.to_string(), str::to_string);
        return Err(format!("{path} answered {status}: {why}"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_and_the_directory_in_any_order() {
        let a = args(&["--data-dir", "/d", "/b"]).unwrap();
        assert_eq!((a.target, a.data_dir), ("/b".into(), Some("/d".into())));
        assert!(args(&[]).unwrap_err().contains("directory is required"));
        assert!(args(&["/b", "--nope"])
            .unwrap_err()
            .contains("unknown option"));
        assert!(args(&["/b", "/c"]).unwrap_err().contains("unexpected"));
        assert!(args(&["/b", "--url"])
            .unwrap_err()
            .contains("needs a value"));
    }

    #[test]
    fn other_words_are_not_subcommands() {
        assert_eq!(run(&["--port".into(), "1".into()]), None);
        assert_eq!(run(&[]), None);
    }
}
