//! A collection kept in step with a folder of documents (EVA's
//! `RAG_DOCS_FOLDER`, `--rag-docs-folder`). The host scans the folder and
//! reads files; here a changed file's chunks replace its old ones (one log
//! batch per file) and a vanished file's chunks go. What was ingested, by
//! file and fingerprint (size and modification time), is itself stored, so
//! a restart re-reads only what changed meanwhile.

use super::Server;
use crate::chat::documents::Chunk;
use crate::error::Result;
use crate::time::Timestamp;
use crate::value::Value;
use sha2::{Digest, Sha256};

/// What was ingested from which file.
pub const FILES: &str = "rag_files__ek0_tidepool";

/// A file the scan found: its path relative to the folder, and a
/// fingerprint that changes when its contents do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocFile {
    pub path: String,
    pub fingerprint: String,
}

/// The records of one file share this id prefix.
fn prefix(path: &str) -> String {
    let digest = Sha256::digest(path.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-")
}

impl Server {
    /// The collection the documents go to, when a folder is configured.
    pub fn documents_collection(&self) -> Option<&str> {
        (!self.config.rag_docs_folder.is_empty()).then_some(self.config.rag_collection.as_str())
    }

    /// The listed files whose current contents are not ingested yet.
    pub fn documents_wanted(&self, listing: &[DocFile], now: Timestamp) -> Vec<String> {
        listing
            .iter()
            .filter(|f| {
                let stored = self
                    .engine
                    .get_internal(FILES, &prefix(&f.path), now)
                    .and_then(|r| match r.record.get("fingerprint") {
                        Some(Value::String(s)) => Some(s.to_string()),
                        _ => None,
                    });
                stored.as_deref() != Some(f.fingerprint.as_str())
            })
            .map(|f| f.path.clone())
            .collect()
    }

    /// Replaces a file's chunks with `chunks` (one batch). Returns how many
    /// records it now has.
    pub fn documents_ingest(
        &mut self,
        file: &DocFile,
        chunks: &[Chunk],
        now: Timestamp,
    ) -> Result<usize> {
        let Some(collection) = self.documents_collection().map(str::to_string) else {
            return Ok(0);
        };
        self.check_writable()?;
        let written = self.write_document(&collection, file, chunks, now);
        // What was journaled is logged either way (the engine's rule).
        self.finish_operation(now);
        written?;
        self.note(format!(
            "documents: {} ingested into `{collection}` ({} chunks)",
            file.path,
            chunks.len()
        ));
        Ok(chunks.len())
    }

    fn write_document(
        &mut self,
        collection: &str,
        file: &DocFile,
        chunks: &[Chunk],
        now: Timestamp,
    ) -> Result<()> {
        let prefix = prefix(&file.path);
        self.remove_chunks(collection, &prefix, now);
        let dims = self.config.embed_dimensions;
        let stamp = Value::String(now.to_rfc3339_z().into());
        for (n, c) in chunks.iter().enumerate() {
            let embedding: Box<[f64]> = tidepool_search::embed(&c.text, dims)
                .into_iter()
                .map(f64::from)
                .collect();
            let text = |s: &str| Value::String(s.into());
            let mut fields = vec![
                ("source", text(&file.path)),
                ("title", text(&c.title)),
                ("chunk", Value::Integer(n as i64)),
                ("content", text(&c.text)),
                ("embedding", Value::Vector(embedding)),
                ("updated_at", stamp.clone()),
            ];
            if let Some(s) = &c.section {
                fields.push(("section", text(s)));
            }
            let id = format!("{prefix}{n:05}");
            self.engine.put_internal(collection, &id, fields, now)?;
        }
        self.engine.put_internal(
            FILES,
            &prefix,
            vec![
                ("path", Value::String(file.path.as_str().into())),
                (
                    "fingerprint",
                    Value::String(file.fingerprint.as_str().into()),
                ),
                ("chunks", Value::Integer(chunks.len() as i64)),
            ],
            now,
        )
    }

    /// Forgets the files no longer in `listing`; returns how many.
    pub fn documents_prune(&mut self, listing: &[DocFile], now: Timestamp) -> usize {
        let Some(collection) = self.documents_collection().map(str::to_string) else {
            return 0;
        };
        let kept: std::collections::HashSet<String> =
            listing.iter().map(|f| prefix(&f.path)).collect();
        let gone: Vec<(String, String)> = self
            .engine
            .with_id_prefix(FILES, "", now)
            .filter(|f| !kept.contains(f.id))
            .map(|f| {
                let path = match f.record.get("path") {
                    Some(Value::String(p)) => p.to_string(),
                    _ => String::new(),
                };
                (f.id.to_string(), path)
            })
            .collect();
        for (id, path) in &gone {
            if self.check_writable().is_err() {
                break;
            }
            self.remove_chunks(&collection, id, now);
            self.engine.purge(FILES, id);
            self.finish_operation(now);
            self.note(format!("documents: {path} removed from `{collection}`"));
        }
        gone.len()
    }

    fn remove_chunks(&mut self, collection: &str, prefix: &str, now: Timestamp) {
        let old: Vec<String> = self
            .engine
            .with_id_prefix(collection, prefix, now)
            .map(|f| f.id.to_string())
            .collect();
        for id in old {
            self.engine.purge(collection, &id);
        }
    }
}
