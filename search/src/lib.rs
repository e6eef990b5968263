//! Search indexes for Tidepool: full text, vectors, hybrid blending and an
//! offline embedder.
//!
//! This crate is pure: it does no I/O, reads no clock, spawns no thread and draws
//! randomness only from the seed its caller gives. Indexes live in memory and are
//! rebuilt by the engine from its records at recovery; they are never persisted.
//!
//! # How the engine uses it
//!
//! The engine keeps, per collection, one [`TextIndex`] (over the collection's string
//! fields) and one [`VectorIndex`] per vector field, and identifies documents by a
//! dense [`DocId`] it assigns (its own record-id <-> `DocId` map). On every insert,
//! update, delete, TTL expiry and during recovery it calls `upsert` / `remove`;
//! both replace or drop the document's previous entry, so there are no ghost hits.
//! A search takes the query's pre-filter as an `accept` callback (evaluated by the
//! engine on its records) and returns `DocId`s with scores:
//!
//! ```text
//!  record written ──► engine ──► TextIndex::upsert(doc, [(field, text), ..])
//!                          └───► VectorIndex::upsert(doc, &vector)   (one per vector field)
//!  POST /api/search ─► engine ─► TextIndex::search(&TextQuery, accept)    ─┐
//!                          └───► VectorIndex::search(&q, k, ef, thr, accept)┴► hybrid() ─► records
//! ```
//!
//! ```
//! use tidepool_search::{embed, hybrid, Analyzer, DocId, Language, Metric, TextIndex, TextQuery, VectorIndex};
//!
//! // One text index per collection; English stemming.
//! let mut text = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
//! text.upsert(DocId(0), &[("title", "Rust Programming"), ("body", "Systems programming in Rust")]);
//! text.upsert(DocId(1), &[("title", "Cooking"), ("body", "Programs for the kitchen")]);
//! text.upsert(DocId(2), &[("title", "Gardening"), ("body", "Rust on garden tools")]);
//! text.remove(DocId(2)); // deleted record: never returned again
//!
//! let mut q = TextQuery::new("rust progrmming"); // a typo, fixed by fuzzy matching
//! q.fuzzy = true;
//! q.max_edit_distance = 2;
//! q.weights = vec![("title".into(), 2.5)];
//! let found = text.search(&q, &|_doc| true).unwrap();
//! assert_eq!(found.hits[0].doc, DocId(0));
//! assert_eq!(found.hits[0].matched_fields, ["body", "title"]);
//!
//! // One vector index per vector field; exact below 2,000 vectors, HNSW above.
//! let mut vectors = VectorIndex::new(Metric::Cosine, 16, 128, 42);
//! for (doc, body) in [(0, "systems programming in rust"), (1, "programs for the kitchen")] {
//!     vectors.upsert(DocId(doc), &embed(body, 64)).unwrap();
//! }
//! let near = vectors.search(&embed("rust programming", 64), 10, 0, None, &|_| true).unwrap();
//! assert_eq!(near[0].0, DocId(0));
//!
//! // Hybrid: both lists scaled to [0, 1], then blended by weight.
//! let text_hits: Vec<(DocId, f32)> = found.hits.iter().map(|h| (h.doc, h.score)).collect();
//! let blended = hybrid(&text_hits, &near, 0.7, 0.3, 10);
//! assert_eq!(blended[0].0, DocId(0));
//! ```
//!
//! # Code map
//!
//! * [`analyzer`]: words (UAX #29), case folding, Snowball stemming per language.
//! * [`text`]: the inverted index (a compressed posting list per stem group,
//!   dead versions compacted away), BM25 and ekoDB scoring per field, query
//!   planning (stemming, exact boost, case-sensitive matching, fuzzy and prefix
//!   expansion).
//! * `fuzzy`: the term dictionary for typo tolerance (Levenshtein DFA over fsts).
//! * [`vector`]: flat/HNSW switching, filtered search with exact fallback.
//! * `hnsw`: the graph.
//! * [`hybrid()`]: blending; [`embed()`]: the offline embedder.
//!
//! Architecture invariants: no `unsafe`; no panics on any input (bad input is an
//! error value or an empty result); the same calls in the same order give the same
//! index and the same results.

#![forbid(unsafe_code)]

pub mod analyzer;
mod distance;
mod embed;
mod fuzzy;
mod hnsw;
mod hybrid;
mod rng;
pub mod text;
pub mod vector;

pub use analyzer::{Analyzer, Language};
pub use embed::embed;
pub use hybrid::{hybrid, hybrid_unscaled};
pub use text::{Scoring, TextError, TextHit, TextIndex, TextQuery, TextResults};
pub use vector::{HalfRows, Metric, VectorError, VectorIndex};

/// A document's id inside the indexes: dense, assigned by the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DocId(pub u32);
