//! Context for a message, from the session's collections (spec E3, seed 000).
//!
//! For each configured collection: a text search of the question over the
//! configured fields (with the collection's search options), blended with a
//! vector search when the collection's records carry embeddings the offline
//! embedder can match; then **field-name matching**: a question that names a
//! field ("What is the price?") finds the records that *have* that field, even
//! when its values are numbers no text index holds. Each snippet carries its
//! collection, the record (only the configured fields, plain values), a score
//! in (0, 1], and the fields that matched.

use super::session::CollectionConfig;
use crate::engine::filter::Filter;
use crate::engine::search::vector_of;
use crate::engine::search::SearchRequest;
use crate::engine::Engine;
use crate::time::Timestamp;
use crate::value::{PlainValue, Value};
use serde_json::{json, Map, Value as J};
use tidepool_search::{Metric, TextQuery};

/// Snippets per message, across collections.
const MAX_SNIPPETS: usize = 8;
/// Hits asked of each collection's search.
const PER_COLLECTION: usize = 5;
/// Records sampled for field names when a collection has no declared schema.
const FIELD_SAMPLE: usize = 200;

/// Words that carry no meaning for retrieval.
const STOPWORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "by", "can", "could", "do", "does", "for",
    "from", "give", "has", "have", "how", "i", "in", "is", "it", "its", "me", "much", "many", "my",
    "of", "on", "or", "please", "should", "show", "tell", "that", "the", "their", "them", "there",
    "these", "they", "this", "those", "to", "was", "we", "what", "when", "where", "which", "who",
    "why", "with", "would", "you", "your", "any", "all", "list",
];

/// Words that point back at something said before.
const REFERRING: &[&str] = &[
    "it", "its", "they", "them", "their", "that", "this", "those", "these", "he", "she", "him",
    "her", "one",
];

/// One piece of context.
#[derive(Clone, Debug, PartialEq)]
pub struct Snippet {
    pub collection: String,
    pub id: String,
    pub record: J,
    pub score: f64,
    pub matched_fields: Vec<String>,
}

impl Snippet {
    /// The source a user recognizes: a document's file name when the record
    /// came from one (the RAG folder), else `collection/id`.
    pub fn label(&self) -> String {
        match self.record.get("source").and_then(J::as_str) {
            Some(file) if !file.is_empty() => file.to_string(),
            _ => format!("{}/{}", self.collection, self.id),
        }
    }

    pub fn to_wire(&self) -> J {
        json!({
            "collection": self.collection,
            "record": self.record,
            "score": self.score,
            "matched_fields": self.matched_fields,
        })
    }
}

/// The question's meaningful words, lowercased.
pub fn terms(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in text
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
    {
        let w = w.to_lowercase();
        if !STOPWORDS.contains(&w.as_str()) && !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

/// Whether a message leans on what was said before ("What does it cost?").
pub fn is_follow_up(text: &str) -> bool {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.iter().any(|w| REFERRING.contains(&w.as_str())) || terms(text).len() <= 1
}

/// A term names a field: equal, singular/plural, or one part of a snake_case
/// name ("price" names `unit_price`).
fn names_field(term: &str, field: &str) -> bool {
    let f = field.to_lowercase();
    let singular = |w: &str| w.strip_suffix('s').unwrap_or(w).to_string();
    let t = singular(term);
    singular(&f) == t || f.split('_').any(|part| singular(part) == t)
}

/// Where the question's vector comes from, for a collection whose records
/// carry an `embedding`.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryVector {
    /// The offline embedder, at the records' dimensions (no embedding
    /// provider is configured, so the records' vectors came from it too).
    Offline,
    /// The embedding provider's vector for the question; used where the
    /// records' vectors have its dimensions.
    Given(Vec<f32>),
    /// Text only (the provider could not embed the question).
    None,
}

/// Whether any of `collections` holds records with an `embedding` vector
/// (the first live record of each is looked at, as retrieval does).
pub fn wants_vector(engine: &mut Engine, collections: &[CollectionConfig], now: Timestamp) -> bool {
    collections.iter().any(|config| {
        !config.name.contains("__ek0_")
            && engine.collection(&config.name).is_ok_and(|c| {
                c.iter_live(now)
                    .take(1)
                    .any(|(_, r)| vector_of(r, "embedding").is_some())
            })
    })
}

/// The context for `question` from `collections`.
pub fn retrieve(
    engine: &mut Engine,
    collections: &[CollectionConfig],
    question: &str,
    vector: &QueryVector,
    now: Timestamp,
) -> Vec<Snippet> {
    let words = terms(question);
    if words.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<Snippet> = Vec::new();
    for config in collections {
        // Internal collections (chat history itself) are never context.
        if config.name.contains("__ek0_") {
            continue;
        }
        out.extend(from_collection(engine, config, &words, vector, now));
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    out.truncate(MAX_SNIPPETS);
    out
}

fn from_collection(
    engine: &mut Engine,
    config: &CollectionConfig,
    words: &[String],
    vector: &QueryVector,
    now: Timestamp,
) -> Vec<Snippet> {
    let Ok(c) = engine.collection(&config.name) else {
        return Vec::new();
    };
    let allowed: Vec<&str> = config.fields.iter().map(|f| f.name.as_str()).collect();
    // The field names this collection has (declared, or seen in its records).
    let mut fields: Vec<String> = c.schema.fields.keys().cloned().collect();
    for (_, r) in c.iter_live(now).take(FIELD_SAMPLE) {
        for (name, _) in r.fields() {
            if !fields.iter().any(|f| f == name) {
                fields.push(name.to_string());
            }
        }
    }
    if !allowed.is_empty() {
        fields.retain(|f| allowed.contains(&f.as_str()));
    }
    let named: Vec<String> = fields
        .iter()
        .filter(|f| words.iter().any(|w| names_field(w, f)))
        .cloned()
        .collect();
    // An embedding field the question's vector can match, if any: the
    // offline embedder's only where records hold typed vectors (as the
    // document folder writes them), a provider's wherever the dimensions
    // agree.
    let first = c.iter_live(now).next().map(|(_, r)| r);
    let stored_dim = first
        .and_then(|r| vector_of(r, "embedding"))
        .map(|v| v.len());
    let offline_dim = first.and_then(|r| match r.get("embedding") {
        Some(Value::Vector(v)) if !v.is_empty() => Some(v.len()),
        _ => None,
    });

    let vector = match (vector, offline_dim, stored_dim) {
        (QueryVector::Offline, Some(d), _) => Some(tidepool_search::embed(&words.join(" "), d)),
        (QueryVector::Given(v), _, Some(d)) if v.len() == d => Some(v.clone()),
        _ => None,
    };
    let req = search_request(config, words, vector);
    let mut hits: Vec<(String, f64, Vec<String>)> =
        match engine.search(&config.name, &req, &Filter::All, now) {
            Ok((hits, _)) => hits
                .into_iter()
                .map(|h| {
                    let s = f64::from(h.score);
                    // BM25 scores are unbounded; vector similarities are already 0..1.
                    let score = if req.vector.is_some() {
                        s.clamp(0.0, 1.0)
                    } else {
                        s / (s + 1.0)
                    };
                    (h.found.id.to_string(), score, h.matched_fields)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
    // Field-name matching: hits having a named field rank higher and list it;
    // with no text hit at all, the records that have the field are the answer.
    let Ok(c) = engine.collection(&config.name) else {
        return Vec::new();
    };
    if !named.is_empty() {
        for (id, score, matched) in hits.iter_mut() {
            if let Some(r) = c.raw(id) {
                for f in &named {
                    if r.get(f).is_some() && !matched.contains(f) {
                        matched.push(f.clone());
                        *score = (*score + 0.3).min(1.0);
                    }
                }
            }
        }
        if hits.is_empty() {
            hits = c
                .iter_live(now)
                .filter(|(_, r)| named.iter().any(|f| r.get(f).is_some()))
                .take(PER_COLLECTION)
                .map(|(id, r)| {
                    let matched: Vec<String> = named
                        .iter()
                        .filter(|f| r.get(f).is_some())
                        .cloned()
                        .collect();
                    (id.to_string(), 0.5, matched)
                })
                .collect();
        }
    }
    let pk = c.schema.primary_key_alias.clone();
    hits.into_iter()
        .filter_map(|(id, score, matched)| {
            let (id, record) = c.raw_entry(&id)?;
            let mut o = Map::new();
            o.insert(pk.clone(), J::String(id.to_string()));
            for (name, value) in record.fields() {
                let shown = if allowed.is_empty() {
                    // Embeddings are for matching, not for reading.
                    !matches!(value, Value::Vector(_))
                } else {
                    allowed.contains(&name)
                };
                if shown {
                    o.insert(
                        name.to_string(),
                        serde_json::to_value(PlainValue(value)).unwrap_or(J::Null),
                    );
                }
            }
            Some(Snippet {
                collection: config.name.clone(),
                id: id.to_string(),
                record: J::Object(o),
                score: (score * 10_000.0).round() / 10_000.0,
                matched_fields: matched,
            })
        })
        .collect()
}

/// The search a collection config asks for.
fn search_request(
    config: &CollectionConfig,
    words: &[String],
    vector: Option<Vec<f32>>,
) -> SearchRequest {
    let query = words.join(" ");
    let mut text = TextQuery::new(query.clone());
    if !config.fields.is_empty() {
        text.fields = Some(config.fields.iter().map(|f| f.name.clone()).collect());
    }
    // Options: the collection's, overridden by the first field's that sets any.
    let mut options = config.search_options.clone().unwrap_or(J::Null);
    if let Some(fo) = config.fields.iter().find_map(|f| f.search_options.clone()) {
        if let (Some(base), Some(over)) = (options.as_object_mut(), fo.as_object()) {
            base.extend(over.clone());
        } else {
            options = fo;
        }
    }
    let flag = |k: &str| options.get(k).and_then(J::as_bool);
    text.fuzzy = flag("fuzzy_match").or(flag("fuzzy")).unwrap_or(true);
    text.max_edit_distance = if text.fuzzy {
        options
            .get("max_edit_distance")
            .and_then(J::as_u64)
            .unwrap_or(1)
            .min(2) as u8
    } else {
        0
    };
    text.case_sensitive = flag("case_sensitive").unwrap_or(false);
    text.stemming = flag("enable_stemming").unwrap_or(true);
    text.boost_exact = flag("boost_exact_matches")
        .or(flag("boost_exact"))
        .unwrap_or(false);
    text.min_score = options
        .get("min_score")
        .and_then(J::as_f64)
        .map(|f| f as f32);
    text.language = options
        .get("language")
        .and_then(J::as_str)
        .map(str::to_string);
    text.limit = PER_COLLECTION;
    SearchRequest {
        text,
        vector,
        vector_field: "embedding".into(),
        metric: Metric::Cosine,
        vector_k: Some(PER_COLLECTION),
        ef_search: 0,
        threshold: None,
        text_weight: 0.5,
        vector_weight: 0.5,
        limit: PER_COLLECTION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_and_field_names() {
        assert_eq!(terms("What is the price?"), vec!["price"]);
        assert_eq!(terms("Tell me about ekoDB Pro"), vec!["ekodb", "pro"]);
        assert!(names_field("price", "price"));
        assert!(names_field("prices", "price"));
        assert!(names_field("price", "unit_price"));
        assert!(!names_field("price", "priority"));
        assert!(is_follow_up("What features does it include?"));
        assert!(!is_follow_up("What is the price of ekoDB Pro?"));
    }
}
