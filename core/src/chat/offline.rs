//! The built-in offline provider: no network, no key, deterministic. It answers
//! from the retrieved records (quoting the field a question names, or the
//! records that matched), streams its answer word by word like a model would,
//! and calls itself `tidepool-offline-v1`: it never pretends to be another
//! model. It also writes the extractive summaries that fold old messages.

use super::retrieval::{terms, Snippet};
use super::store::Role;
use serde_json::Value as J;

/// Snippets an offline answer quotes.
const QUOTED: usize = 3;

/// A record's display name: its `name`, `title` or `label`, else its id.
fn display_name(s: &Snippet) -> String {
    for k in ["name", "title", "label", "subject", "product"] {
        if let Some(J::String(v)) = s.record.get(k) {
            return v.clone();
        }
    }
    s.id.clone()
}

fn render(v: &J) -> String {
    match v {
        J::String(s) => s.clone(),
        J::Null => "null".into(),
        other => other.to_string(),
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{}…", cut.trim_end())
}

/// The answer to `question` from `snippets`. `has_collections` says whether
/// the session searched anything at all.
pub fn answer(question: &str, snippets: &[Snippet], has_collections: bool) -> String {
    if snippets.is_empty() {
        if !has_collections {
            return "I am Tidepool's offline assistant (tidepool-offline-v1): no language model \
                    is configured, so I answer from your data only, and this chat has no \
                    collections to search. Add collections to the session, or configure a \
                    provider for open-ended answers."
                .to_string();
        }
        return format!(
            "I found nothing about \"{}\" in the connected collections.",
            clip(question.trim(), 120)
        );
    }
    let words = terms(question);
    let mut sentences: Vec<String> = Vec::new();
    for s in snippets.iter().take(QUOTED) {
        let name = display_name(s);
        // Fields the question names (not the ones text search matched in).
        let named: Vec<&String> = s
            .matched_fields
            .iter()
            .filter(|f| {
                words.iter().any(|w| {
                    let w = w.strip_suffix('s').unwrap_or(w);
                    f.to_lowercase()
                        .split('_')
                        .any(|p| p.strip_suffix('s').unwrap_or(p) == w)
                })
            })
            .collect();
        if !named.is_empty() {
            for f in named {
                if let Some(v) = s.record.get(f.as_str()) {
                    sentences.push(format!(
                        "The {} of {name} is {}.",
                        f.replace('_', " "),
                        render(v)
                    ));
                }
            }
            continue;
        }
        let details: Vec<String> = s
            .record
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| {
                !matches!(k.as_str(), "id" | "name" | "title" | "label") && !v.is_null()
            })
            .take(4)
            .map(|(k, v)| format!("{k}: {}", clip(&render(v), 160)))
            .collect();
        if details.is_empty() {
            sentences.push(format!("{name} ({}) matches.", s.collection));
        } else {
            sentences.push(format!(
                "{name} ({}): {}.",
                s.collection,
                details.join("; ")
            ));
        }
    }
    let more = snippets.len().saturating_sub(QUOTED);
    if more > 0 {
        sentences.push(format!("{more} more related record(s) are in the sources."));
    }
    sentences.join(" ")
}

/// The answer in pieces, as a model streams it: each word with the space
/// after it.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        cur.push(c);
        if c == ' ' {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// An extractive summary of messages, to stand in for them in the context.
pub fn summarize(messages: &[(Role, String)]) -> String {
    let mut out = format!("Summary of {} earlier messages:", messages.len());
    for (role, content) in messages {
        let line = format!(" {}: {}", role.as_str(), clip(content.trim(), 160));
        if out.len() + line.len() > 4000 {
            out.push_str(" …");
            break;
        }
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snippet(record: J, matched: &[&str]) -> Snippet {
        Snippet {
            collection: "products".into(),
            id: record["id"].as_str().unwrap_or("x").into(),
            record,
            score: 0.8,
            matched_fields: matched.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn quotes_the_field_a_question_names() {
        let s = snippet(
            json!({"id": "p1", "name": "ekoDB Pro", "price": 99}),
            &["name", "price"],
        );
        assert_eq!(
            answer("What is the price of ekoDB Pro?", &[s], true),
            "The price of ekoDB Pro is 99."
        );
        let s = snippet(
            json!({"id": "d1", "title": "Guide", "content": "How to start"}),
            &["title"],
        );
        assert_eq!(
            answer("guide", &[s], true),
            "Guide (products): content: How to start."
        );
        assert!(answer("x", &[], true).starts_with("I found nothing"));
        assert_eq!(tokens("a bc d"), vec!["a ", "bc ", "d"]);
        assert_eq!(tokens("a bc d").concat(), "a bc d");
    }
}
