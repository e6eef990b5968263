//! The document folder's scanner (`--rag-docs-folder`): every
//! `--rag-scan-interval` seconds it lists the folder's text and Markdown
//! files (recursively), reads those whose size or modification time changed
//! since they were ingested, chunks them outside the server lock, and hands
//! the chunks to the server; files that vanished are forgotten. A folder
//! that cannot be read forgets nothing (it may be a mount that is late).

use crate::clock::now;
use crate::shared::Host;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, UNIX_EPOCH};
use tidepool_core::chat::documents::{chunk, is_document};
use tidepool_core::server::documents::DocFile;

/// Larger files are skipped (and said so): a document, not a dump.
const MAX_FILE_BYTES: u64 = 8 << 20;
/// Files one scan looks at, and how deep it descends.
const MAX_FILES: usize = 10_000;
const MAX_DEPTH: usize = 8;

pub(crate) fn documents_loop(host: Arc<Host>, folder: PathBuf, every: Duration) {
    let mut reported_missing = false;
    loop {
        match list(&folder) {
            Ok(files) => {
                reported_missing = false;
                scan(&host, &folder, &files);
            }
            Err(e) if !reported_missing => {
                crate::log::warn(&format!("documents: cannot read {}: {e}", folder.display()));
                reported_missing = true;
            }
            Err(_) => {}
        }
        thread::sleep(every);
    }
}

fn scan(host: &Host, folder: &Path, files: &[(DocFile, u64)]) {
    let listing: Vec<DocFile> = files.iter().map(|(f, _)| f.clone()).collect();
    let wanted = host.with_server(|s| s.documents_wanted(&listing, now()));
    for (file, size) in files.iter().filter(|(f, _)| wanted.contains(&f.path)) {
        if *size > MAX_FILE_BYTES {
            crate::log::warn(&format!(
                "documents: {} skipped ({size} bytes; the limit is {MAX_FILE_BYTES})",
                file.path
            ));
            continue;
        }
        let bytes = match std::fs::read(folder.join(&file.path)) {
            Ok(b) => b,
            // Gone or unreadable since the listing: the next scan decides.
            Err(_) => continue,
        };
        let text = String::from_utf8_lossy(&bytes);
        let name = file.path.rsplit('/').next().unwrap_or(&file.path);
        let chunks = chunk(name, &text);
        if let Err(e) = host.with_server(|s| s.documents_ingest(file, &chunks, now())) {
            crate::log::warn(&format!(
                "documents: {} not ingested: {}",
                file.path, e.message
            ));
        }
    }
    host.with_server(|s| s.documents_prune(&listing, now()));
}

/// The folder's documents, with paths relative to it (`/`-separated),
/// fingerprints and sizes.
fn list(folder: &Path) -> std::io::Result<Vec<(DocFile, u64)>> {
    let mut out = Vec::new();
    let mut dirs = vec![(folder.to_path_buf(), 0usize)];
    // The root must be readable; below it, unreadable parts are skipped.
    let mut root = true;
    while let Some((dir, depth)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if root => return Err(e),
            Err(_) => continue,
        };
        root = false;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Ok(meta) = std::fs::metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                if depth < MAX_DEPTH {
                    dirs.push((entry.path(), depth + 1));
                }
                continue;
            }
            if !meta.is_file() || !is_document(&name) || out.len() >= MAX_FILES {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(folder).map(Path::to_path_buf) else {
                continue;
            };
            let path = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            out.push((
                DocFile {
                    path,
                    fingerprint: format!("{}:{modified}", meta.len()),
                },
                meta.len(),
            ));
        }
    }
    out.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    Ok(out)
}
