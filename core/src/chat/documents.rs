//! A folder of documents as retrieval records (EVA's `RAG_DOCS_FOLDER`):
//! text and Markdown split into chunks of about `CHUNK_CHARS` characters at
//! paragraph boundaries, a Markdown heading starting a new chunk, each chunk
//! with its file name as `source`, its heading as `section`, and an
//! embedding from the offline embedder for vector search. Pure: the host
//! reads the files; `server::documents` writes the records.

/// Target chunk size in characters (a paragraph longer than this is split
/// at whitespace).
pub const CHUNK_CHARS: usize = 1200;

/// The files a folder scan takes (by extension, lower case).
pub const EXTENSIONS: [&str; 4] = ["md", "markdown", "txt", "text"];

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub title: String,
    /// The nearest Markdown heading above the chunk, if any.
    pub section: Option<String>,
    pub text: String,
}

/// Whether a file name is one the folder ingests.
pub fn is_document(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty() && EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
    })
}

fn heading(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let hashes = t.chars().take_while(|c| *c == '#').count();
    (1..=6)
        .contains(&hashes)
        .then(|| t[hashes..].strip_prefix(' '))
        .flatten()
        .map(str::trim)
        .filter(|h| !h.is_empty())
}

/// Splits a document into chunks. `name` is its file name (the title when
/// the text has no heading).
pub fn chunk(name: &str, text: &str) -> Vec<Chunk> {
    let title = text.lines().find_map(heading).unwrap_or(name).to_string();
    let mut out: Vec<Chunk> = Vec::new();
    let mut section: Option<String> = None;
    let mut current = String::new();
    let flush = |current: &mut String, section: &Option<String>, out: &mut Vec<Chunk>| {
        let text = current.trim();
        if !text.is_empty() {
            out.push(Chunk {
                title: title.clone(),
                section: section.clone(),
                text: text.to_string(),
            });
        }
        current.clear();
    };
    for paragraph in paragraphs(text) {
        if let Some(h) = paragraph.lines().next().and_then(heading) {
            flush(&mut current, &section, &mut out);
            section = Some(h.to_string());
        }
        for piece in split_long(&paragraph, CHUNK_CHARS) {
            let len = current.chars().count();
            if len > 0 && len + piece.chars().count() + 2 > CHUNK_CHARS {
                flush(&mut current, &section, &mut out);
            }
            if !current.is_empty() {
                current.push_str("\n\n");
            }
            current.push_str(piece);
        }
    }
    flush(&mut current, &section, &mut out);
    out
}

/// Blank-line separated paragraphs.
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.trim().is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur.clear();
        } else {
            // A heading is a paragraph of its own start.
            if heading(line).is_some() && !cur.trim().is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if !cur.is_empty() {
                cur.push('\n');
            }
            cur.push_str(line);
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// Pieces of at most `max` characters, cut at whitespace where there is any.
fn split_long(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max {
        let limit = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let cut = rest[..limit]
            .rfind(char::is_whitespace)
            .filter(|&i| i > 0)
            .unwrap_or(limit);
        out.push(rest[..cut].trim_end());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_headings_start_chunks_and_name_sections() {
        let doc = "# Pricing\n\nekoDB Pro costs 99.\n\n## Support\n\nEmail us.\nAny time.\n";
        let chunks = chunk("pricing.md", doc);
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert_eq!(chunks[0].title, "Pricing");
        assert_eq!(chunks[0].section.as_deref(), Some("Pricing"));
        assert!(chunks[0].text.contains("costs 99"));
        assert_eq!(chunks[1].section.as_deref(), Some("Support"));
        assert_eq!(chunks[1].text, "## Support\n\nEmail us.\nAny time.");
    }

    #[test]
    fn long_text_is_cut_at_whitespace_within_the_size() {
        let word = "ünïcode ";
        let doc = word.repeat(1000);
        let chunks = chunk("notes.txt", &doc);
        assert!(chunks.len() >= 6);
        assert_eq!(chunks[0].title, "notes.txt");
        for c in &chunks {
            assert!(c.text.chars().count() <= CHUNK_CHARS);
            assert!(!c.text.starts_with(' ') && !c.text.ends_with(' '));
        }
        let joined: Vec<&str> = chunks
            .iter()
            .flat_map(|c| c.text.split_whitespace())
            .collect();
        assert_eq!(joined.len(), 1000, "no word lost");
    }

    #[test]
    fn only_text_and_markdown_files() {
        assert!(is_document("a.md") && is_document("b.TXT") && is_document("c.markdown"));
        assert!(!is_document("d.pdf") && !is_document(".md") && !is_document("md"));
        assert!(chunk("empty.md", "\n\n  \n").is_empty());
    }
}
