//! The server binary's subcommands for operators:
//!
//! ```text
//! tidepool backup DIR [--data-dir D]            a stopped server's data
//! tidepool backup DIR --url URL --api-key KEY   a running server's (online)
//!                      (DIR ending in .tar: one tar file instead)
//! tidepool restore BACKUP --data-dir D          into a new or empty D
//! tidepool verify BACKUP                        manifest and checksums
//! tidepool export COLLECTION FILE --url URL --api-key KEY     JSON Lines out
//! tidepool import COLLECTION FILE --url URL --api-key KEY [--partial]
//! ```
//!
//! Export and import talk to a running server (`GET /api/export/{c}`,
//! `POST /api/import/{c}`; a `.csv` file is imported as CSV).
//!
//! A running server holds its data directory's lock, so an offline backup
//! of it is refused with a pointer to the online one, which asks the server
//! (`POST /api/admin/backup`) to write the backup on its machine.

use crate::backup;
use serde_json::{json, Value as J};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;
use tidepool_storage::{archive, Store, StoreError, StoreOptions};

pub const USAGE: &str = "\
SUBCOMMANDS:
  backup DIR [--data-dir D]           back up a stopped server's data directory into DIR
  backup DIR --url URL --api-key KEY  ask a running server for an online backup into DIR
                                      (a directory on the server's machine)
                                      a DIR ending in .tar is one file (a tar archive)
                                      instead of a directory, for either form
  restore BACKUP --data-dir D         restore a backup (directory or .tar) into a new or
                                      empty data directory
  verify BACKUP                       check a backup's manifest and every file's checksum
  export COLLECTION FILE --url URL --api-key KEY
                                      write a collection as JSON Lines (types kept)
  import COLLECTION FILE --url URL --api-key KEY [--partial]
                                      import JSON Lines (or a .csv file) as one transaction;
                                      --partial keeps the lines before the first bad one
";

/// Runs `args` if they name a subcommand (`None`: they do not); the
/// result is the exit status (1: it failed, 2: bad arguments).
pub fn run(args: &[String]) -> Option<i32> {
    let (name, rest) = args.split_first()?;
    let command: fn(&Args) -> Result<String, String> = match name.as_str() {
        "backup" => backup_cmd,
        "restore" => restore_cmd,
        "verify" => verify_cmd,
        "export" => export_cmd,
        "import" => import_cmd,
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
    /// The second word (export's and import's file).
    second: Option<String>,
    data_dir: Option<PathBuf>,
    url: Option<String>,
    api_key: Option<String>,
    partial: bool,
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
            "--partial" => args.partial = true,
            flag if flag.starts_with("--") => {
                return Err(format!("unknown option `{flag}`\n\n{USAGE}"))
            }
            path if target.is_none() => target = Some(PathBuf::from(path)),
            path if args.second.is_none() => args.second = Some(path.to_string()),
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

/// Backups, restores and verifies name one directory.
fn only_one(a: &Args) -> Result<(), String> {
    match &a.second {
        Some(extra) => Err(format!("unexpected argument `{extra}`\n\n{USAGE}")),
        None => Ok(()),
    }
}

fn backup_cmd(a: &Args) -> Result<String, String> {
    only_one(a)?;
    if a.url.is_some() {
        let (addr, token) = session(a)?;
        let dir = std::path::absolute(&a.target).map_err(|e| e.to_string())?;
        let key = if archive::is_archive(&dir) {
            "file"
        } else {
            "dir"
        };
        let body = json!({ key: dir.display().to_string() });
        return post(&addr, "/api/admin/backup", Some(&token), &body).map(|v| v.to_string());
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
    only_one(a)?;
    let dir = a
        .data_dir
        .clone()
        .ok_or("--data-dir is required: the new (or empty) directory to restore into")?;
    let summary = backup::restore(&a.target, &dir, true).map_err(|e| e.to_string())?;
    Ok(summary.to_string())
}

fn verify_cmd(a: &Args) -> Result<String, String> {
    only_one(a)?;
    let summary = backup::verify(&a.target).map_err(|e| e.to_string())?;
    Ok(summary.to_string())
}

/// The collection and file export and import name.
fn collection_and_file(a: &Args) -> Result<(String, PathBuf), String> {
    let file = a
        .second
        .clone()
        .ok_or_else(|| format!("a file is required after the collection\n\n{USAGE}"))?;
    Ok((a.target.display().to_string(), PathBuf::from(file)))
}

fn export_cmd(a: &Args) -> Result<String, String> {
    let (collection, file) = collection_and_file(a)?;
    let (addr, token) = session(a)?;
    let path = format!("/api/export/{}", encode(&collection));
    let body = request(&addr, "GET", &path, Some(&token), "application/json", b"")?;
    let lines = body.iter().filter(|b| **b == b'\n').count();
    let mut out = std::fs::File::create_new(&file)
        .map_err(|e| format!("creating {}: {e}", file.display()))?;
    out.write_all(&body)
        .and_then(|()| out.sync_all())
        .map_err(|e| format!("writing {}: {e}", file.display()))?;
    Ok(
        json!({"collection": collection, "records": lines, "bytes": body.len(),
        "file": file.display().to_string()})
        .to_string(),
    )
}

fn import_cmd(a: &Args) -> Result<String, String> {
    let (collection, file) = collection_and_file(a)?;
    let (addr, token) = session(a)?;
    let body = std::fs::read(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let csv = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let kind = if csv {
        "text/csv"
    } else {
        "application/x-ndjson"
    };
    let mut path = format!("/api/import/{}", encode(&collection));
    if a.partial {
        path.push_str("?partial=true");
    }
    let reply = request(&addr, "POST", &path, Some(&token), kind, &body)?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// The server's address and a token for the key (`--url`, `--api-key`).
fn session(a: &Args) -> Result<(String, String), String> {
    let url = a
        .url
        .as_deref()
        .ok_or("--url http://HOST:PORT is required")?;
    let key = a
        .api_key
        .clone()
        .or_else(|| std::env::var("TIDEPOOL_API_KEY").ok())
        .ok_or("--api-key (or TIDEPOOL_API_KEY) is required with --url")?;
    let addr = url
        .strip_prefix("http://")
        .ok_or("--url must be http://HOST:PORT (for https, call the API yourself)")?
        .trim_end_matches('/')
        .to_string();
    let token = post(&addr, "/api/auth/token", None, &json!({"api_key": key}))?;
    let token = token["token"]
        .as_str()
        .ok_or("the server gave no token for that key")?
        .to_string();
    Ok((addr, token))
}

/// A collection name in a path, percent-encoded.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn post(addr: &str, path: &str, token: Option<&str>, body: &J) -> Result<J, String> {
    let reply = request(
        addr,
        "POST",
        path,
        token,
        "application/json",
        body.to_string().as_bytes(),
    )?;
    let text = String::from_utf8_lossy(&reply);
    Ok(serde_json::from_str(&text).unwrap_or(J::String(text.into_owned())))
}

/// One HTTP/1.1 request on a fresh connection; the body of a 200, or the
/// server's message as the error.
fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    // A big backup or import takes a while; the server answers when done.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(24 * 3600)));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).map_err(|e| e.to_string())?;
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the server's reply was cut short")?;
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let body = reply.split_off(split + 4);
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        let text = String::from_utf8_lossy(&body);
        let why = serde_json::from_str::<J>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.into_owned());
        return Err(format!("{path} answered {status}: {why}"));
    }
    Ok(body)
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
        assert!(args(&["/b", "/c", "/d"])
            .unwrap_err()
            .contains("unexpected"));
        assert!(only_one(&args(&["/b", "/c"]).unwrap()).is_err());
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
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
