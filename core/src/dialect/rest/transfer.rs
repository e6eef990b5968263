//! Moving a collection out and in as JSON Lines: `GET
//! /api/export/{collection}` writes every live record, one a line, in the
//! typed form the clients read (`{"id": .., "n": {"type": "Integer",
//! "value": 3}}`), so an import gives back the same types;
//! `POST /api/import/{collection}` reads that form (or plain JSON values)
//! back. Both do their heavy part outside the server lock: the export on a
//! snapshot, the import's parsing; the import then applies its records as
//! one transaction, so it lands whole or not at all (`?partial=true`: up to
//! its first bad line).

use super::{access, Ctx, Outcome};
use crate::engine::record::{Projection, RecordOut};
use crate::engine::txn::Owner;
use crate::engine::Source;
use crate::error::{Error, Result};
use crate::server::reads::Finish;
use crate::server::Server;
use crate::wire::http::Response;
use serde_json::{json, Value as J};

/// The most records one import may hold (the engine's transaction bound).
pub const MAX_IMPORT_RECORDS: usize = 100_000;

/// `GET /api/export/{collection}`: JSON Lines of the live records, built on
/// a snapshot by a reader thread. A key that may read only some fields gets
/// only those.
pub fn export(server: &mut Server, ctx: &Ctx<'_>, c: &str) -> Result<Outcome> {
    let conn = ctx
        .conn
        .ok_or_else(|| Error::invalid("an export is an HTTP request"))?;
    let snapshot = server.engine().snapshot([c]);
    if snapshot.records(c).is_none() {
        return Err(Error::not_found(format!("collection `{c}` does not exist")));
    }
    let projection = access::view(ctx, c, Projection::default());
    let (c, now) = (c.to_string(), ctx.now);
    Ok(server.defer_read(conn, move |expired| {
        let Some((records, pk)) = snapshot.records(&c) else {
            return Err(Error::not_found(format!("collection `{c}` does not exist")));
        };
        let proj = Some(&projection).filter(|p| !p.is_empty());
        let mut out = Vec::with_capacity(records.len() * 64);
        for (n, (id, record)) in records.iter().enumerate() {
            if record.is_expired(now) {
                continue;
            }
            if n % 4096 == 0 && expired() {
                return Err(Error::invalid(format!(
                    "the export of `{c}` ran past --max-query-time; raise it for collections this large"
                )));
            }
            let line = RecordOut {
                projection: proj,
                ..RecordOut::new(pk, id, record)
            };
            serde_json::to_writer(&mut out, &line).map_err(|e| Error::internal(e.to_string()))?;
            out.push(b'\n');
        }
        Ok(Response::new(200, "application/x-ndjson", out))
    }))
}

/// `POST /api/import/{collection}[?partial=true]`: JSON Lines in (one record
/// a line, blank lines skipped, at most [`MAX_IMPORT_RECORDS`]). A bad line
/// (not JSON, not an object, refused by the schema, an id that exists) stops
/// the import with its line number: nothing is imported, or with
/// `partial=true` everything before it. Unique fields are checked when the
/// import commits, for all its records at once: a clash there imports
/// nothing (409, without a line number).
pub fn import(server: &mut Server, ctx: &Ctx<'_>, c: &str) -> Result<Outcome> {
    crate::engine::validate_name("collection", c)?;
    let conn = ctx
        .conn
        .ok_or_else(|| Error::invalid("an import is an HTTP request"))?;
    let partial = match ctx.param("partial") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::invalid(format!(
                "`partial` must be true or false, got `{other}`"
            )))
        }
    };
    let body = ctx.raw_body().cloned().unwrap_or_default();
    let csv = ctx.param("format") == Some("csv")
        || ctx
            .header("content-type")
            .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/csv"));
    let owner = Owner {
        key: ctx.key_id().to_string(),
        address: server.peer_of(conn).ip.map(|ip| ip.to_string()),
    };
    let (c, now) = (c.to_string(), ctx.now);
    Ok(server.defer_work(conn, move |_| {
        let lines = if csv {
            parse_csv(&body)?
        } else {
            parse_lines(&body)?
        };
        Ok(Finish::UnderLock(Box::new(move |server: &mut Server| {
            let reply = apply(server, &c, lines, partial, owner, now);
            // Committed like a request's writes: the reply waits for them.
            server.finish_operation(now);
            reply
        })))
    }))
}

/// One line of an import: its number and what it holds (or why not).
type Line = (usize, std::result::Result<J, String>);

/// An import past [`MAX_IMPORT_RECORDS`] (413).
fn too_many() -> Error {
    Error::new(
        crate::error::ErrorKind::TooLarge,
        format!("an import holds at most {MAX_IMPORT_RECORDS} records; split the file"),
    )
}

/// Splits and parses the body; only the count is checked here (the rest is
/// per line, so a bad line can be reported by number).
fn parse_lines(body: &[u8]) -> Result<Vec<Line>> {
    let mut lines = Vec::new();
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if lines.len() == MAX_IMPORT_RECORDS {
            return Err(too_many());
        }
        let parsed = match serde_json::from_slice::<J>(raw) {
            Ok(J::Object(o)) => Ok(J::Object(o)),
            Ok(_) => Err("a record must be a JSON object".to_string()),
            Err(e) => Err(format!("not JSON: {e}")),
        };
        lines.push((i + 1, parsed));
    }
    Ok(lines)
}

/// Reads a CSV body (`Content-Type: text/csv` or `?format=csv`): the first
/// row names the fields (an `id` column gives the ids); a value is a
/// boolean (`true`, `false`), an integer, a finite number, or else a
/// string; an empty cell leaves its field out. A row with another number
/// of cells than the header is a bad line.
fn parse_csv(body: &[u8]) -> Result<Vec<Line>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(body);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| Error::invalid(format!("line 1: not a CSV header: {e}")))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if header.iter().any(String::is_empty) {
        return Err(Error::invalid("line 1: every CSV column needs a name"));
    }
    let mut lines = Vec::new();
    let mut row = csv::ByteRecord::new();
    loop {
        let line = reader.position().line() as usize;
        let parsed = match reader.read_byte_record(&mut row) {
            Ok(false) => break,
            Ok(true) => csv_object(&header, &row),
            Err(e) => Err(format!("bad CSV: {e}")),
        };
        if lines.len() == MAX_IMPORT_RECORDS {
            return Err(too_many());
        }
        let bad = parsed.is_err();
        lines.push((line, parsed));
        if bad {
            // The reader cannot be trusted to find row boundaries after this.
            break;
        }
    }
    Ok(lines)
}

/// One CSV row as a record.
fn csv_object(header: &[String], row: &csv::ByteRecord) -> std::result::Result<J, String> {
    let mut o = serde_json::Map::new();
    for (name, cell) in header.iter().zip(row.iter()) {
        let cell = std::str::from_utf8(cell).map_err(|_| "a cell is not UTF-8".to_string())?;
        if cell.is_empty() {
            continue;
        }
        let value = if name == "id" {
            J::String(cell.to_string())
        } else if cell == "true" || cell == "false" {
            J::Bool(cell == "true")
        } else if let Ok(i) = cell.parse::<i64>() {
            J::from(i)
        } else if let Some(f) = cell.parse::<f64>().ok().filter(|f| f.is_finite()) {
            J::from(f)
        } else {
            J::String(cell.to_string())
        };
        o.insert(name.clone(), value);
    }
    Ok(J::Object(o))
}

/// Inserts the lines as one transaction; stops at the first bad one.
fn apply(
    server: &mut Server,
    c: &str,
    lines: Vec<Line>,
    partial: bool,
    owner: Owner,
    now: crate::time::Timestamp,
) -> Result<Response> {
    let engine = server.engine_mut();
    let (tx, _) = engine.tx_begin(None, owner, now)?;
    let mut imported = 0usize;
    let mut stopped: Option<(usize, String)> = None;
    for (line, parsed) in lines {
        let outcome =
            parsed.and_then(|record| engine.tx_insert(&tx, c, record, now).map_err(|e| e.message));
        match outcome {
            Ok(_) => imported += 1,
            Err(why) => {
                stopped = Some((line, why));
                break;
            }
        }
    }
    match stopped {
        Some((line, why)) if !partial => {
            engine.tx_rollback(&tx)?;
            Err(Error::invalid(format!(
                "line {line}: {why}; nothing was imported (add ?partial=true to keep the lines before it)"
            )))
        }
        stopped => {
            if imported > 0 {
                // Unique fields are checked here, for the whole import at once.
                if let Err(e) = engine.tx_commit(&tx, now) {
                    let _ = engine.tx_rollback(&tx);
                    return Err(Error::new(
                        e.kind,
                        format!(
                            "the import was not committed, nothing was imported: {}",
                            e.message
                        ),
                    ));
                }
            } else {
                engine.tx_rollback(&tx)?;
            }
            let mut reply = json!({"collection": c, "imported": imported});
            if let Some((line, why)) = stopped {
                reply["stopped_at_line"] = json!(line);
                reply["error"] = json!(why);
            }
            Ok(Response::json(200, reply.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_typed_records() {
        let body = b"id,name,age,score,ok,note\nu1,Ada,36,1.5,true,\nu2,\"Lovelace, A.\",x,2,false,\"said \"\"hi\"\"\"\n";
        let lines = parse_csv(body).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].0, 2);
        assert_eq!(
            lines[0].1,
            Ok(json!({"id": "u1", "name": "Ada", "age": 36, "score": 1.5, "ok": true}))
        );
        assert_eq!(
            lines[1].1,
            Ok(
                json!({"id": "u2", "name": "Lovelace, A.", "age": "x", "score": 2, "ok": false, "note": "said \"hi\""})
            )
        );
        // A short row is a bad line, with its number.
        let lines = parse_csv(b"a,b\n1,2\n3\n4,5\n").unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].0, 3);
        assert!(lines[1].1.is_err());
        assert!(parse_csv(b",b\n1,2\n").is_err());
    }

    #[test]
    fn lines_are_numbered_and_blank_ones_skipped() {
        let lines = parse_lines(b"{\"a\":1}\n\n  \r\n[1]\n{oops\n{\"b\":2}\r\n").unwrap();
        let numbers: Vec<usize> = lines.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 4, 5, 6]);
        assert!(lines[0].1.is_ok() && lines[3].1.is_ok());
        assert!(lines[1].1.as_ref().unwrap_err().contains("object"));
        assert!(lines[2].1.as_ref().unwrap_err().contains("not JSON"));
    }
}
