//! Full-text index: an in-memory inverted index with BM25 ranking per field.
//!
//! # What is indexed
//!
//! Every word of every field (see [`crate::analyzer`]) is recorded as its
//! folded form (`lowercase(word)`), and, when it has uppercase, also as
//! written (for case-sensitive queries). The folded posting also counts how
//! many of the occurrences were not written in lowercase, so a case-sensitive
//! query for `rust` counts only the lowercase ones.
//!
//! Postings live in **groups**: with a language, all folded words with one stem
//! share a group (`running`, `runs` and `run`); without one, and for words as
//! written, each word is its own group. A posting is `(seq, field, tf, upper,
//! member)`, `member` saying which word of the group it counts, and a group's
//! postings of one document version and field lie together. So a stemmed
//! lookup reads one list and sums per (version, field) as it goes, and an
//! unstemmed, typo or prefix lookup reads the same list keeping one member.
//! There is no separate list per stem: that would store every word twice.
//!
//! A list is varint-encoded and append-only (`text/postings.rs`): every write of a
//! document takes a fresh sequence number, higher than all before, so new
//! postings go at the end. Removing or replacing a document marks its old
//! sequence number dead; search skips dead postings, and document frequencies
//! are counted from the live postings as a query reads them, so they stay
//! exact. When dead versions outnumber live documents, every list is rewritten
//! without them and the words left with no posting are dropped, so the index
//! never holds much more than twice its live postings, and removals need no
//! forward index (which would cost as much memory as the postings).
//!
//! # Scoring
//!
//! Two rules, chosen per query ([`Scoring`]):
//!
//! **BM25** (`k1 = 1.2`, `b = 0.75`), computed per field with that field's document
//! count and average length, Lucene's non-negative idf
//! `ln(1 + (N - df + 0.5) / (df + 0.5))`, and multiplied by the field's weight.
//! For each query word the index gathers "entries" (posting lists with a
//! multiplier) and scores a document as:
//!
//! ```text
//! word(d)  = max over match entries e of  mult(e) * sum over fields f of weight(f) * bm25(e, f, d)
//!          + EXACT_BONUS * (same sum for the unstemmed word)      -- only with boost_exact
//! score(d) = (sum over query words of word(d)) * matched_words(d) / query_words
//! ```
//!
//! Match entries are the word itself (stemmed when stemming is on) with multiplier
//! 1; with `fuzzy`, up to [`MAX_FUZZY_EXPANSIONS`] dictionary terms within the
//! edit distance with multiplier [`FUZZY_MULT`]`[distance]`; with `prefix`, up to
//! [`MAX_PREFIX_EXPANSIONS`] longer terms that begin with the word, with
//! [`PREFIX_MULT`]. Both are < 1, so a typo or a completion never scores above
//! the same exact match. The last factor is Lucene's classic coordination
//! factor: OR semantics, but documents matching more of the query words rank
//! higher.
//!
//! **ekoDB** ([`Scoring::EkoDb`]): the rule ekoDB's recorded outputs follow,
//! where a score counts the query words matched in each field. A word matches a
//! field with strength `m` = 1 (the word, or another form with its stem), 0.7 (a
//! longer word beginning with it) or 0.5 (a typo within the edit distance), the
//! best of them. With `n` query words (repeats counted):
//!
//! ```text
//! field(f, d) = sum over words w of m(w, f, d) / n            -- n >= 2
//! field(f, d) = 1.1 * (m + 5)  (exact or prefix), 1.1 * m  (typo)   -- n = 1
//! score(d)    = sum over matched fields f of weight(f) * field(f, d)
//! ```
//!
//! So one word found in two fields scores 13.2, "machine learning" found whole
//! in the title and the description 2.0, and half of it in one field 0.5: the
//! same numbers, and so the same `min_score` cut-offs, as ekoDB. `boost_exact`
//! changes nothing under this rule (an exact match already scores highest).

use std::borrow::Cow;
use std::fmt;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::analyzer::{Analyzer, Language};
use crate::fuzzy::FuzzyDict;
use crate::DocId;

/// BM25 term-frequency saturation.
pub const BM25_K1: f32 = 1.2;
/// BM25 length normalisation.
pub const BM25_B: f32 = 0.75;
/// Extra weight of an exact (unstemmed, unfuzzed) match when `boost_exact` is set.
pub const EXACT_BONUS: f32 = 0.5;
/// Score multiplier of a fuzzy match by edit distance (index 0 is the exact word).
pub const FUZZY_MULT: [f32; 3] = [1.0, 0.6, 0.4];
/// At most this many dictionary terms per query word are tried as typo variants
/// (closest first, then most frequent), like Lucene's `maxExpansions`.
pub const MAX_FUZZY_EXPANSIONS: usize = 50;
/// The largest `max_edit_distance` the index accepts.
pub const MAX_EDIT_DISTANCE: u8 = 2;
/// BM25 multiplier of a prefix match (`john` finding `johnson`).
pub const PREFIX_MULT: f32 = 0.7;
/// At most this many longer terms per query word are tried as its completions
/// (the most frequent first), of at most [`PREFIX_SCAN`] read.
pub const MAX_PREFIX_EXPANSIONS: usize = 50;
/// At most this many live dictionary terms are read to find a word's
/// completions (and at most four times as many in all, dead ones included),
/// so a short prefix costs a bounded walk.
pub const PREFIX_SCAN: usize = 5_000;
/// Which query words are also matched as prefixes: the last word (the one
/// someone typing is most likely to have cut short) from
/// [`MIN_LAST_PREFIX_CHARS`] characters; an earlier word only when it is not a
/// word of the index by itself, from this many characters.
pub const MIN_PREFIX_CHARS: usize = 3;
/// See [`MIN_PREFIX_CHARS`].
pub const MIN_LAST_PREFIX_CHARS: usize = 2;

/// How hits are scored (see the module documentation for both formulas).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scoring {
    /// BM25 per field, weighted, with a coordination factor: the better ranking
    /// for long documents and large collections.
    #[default]
    Bm25,
    /// ekoDB's rule: counts the query words matched per field (1 exact, 0.7
    /// prefix, 0.5 typo), so thresholds written for ekoDB keep their meaning.
    EkoDb,
}

/// ekoDB-rule strength of an exact (or same-stem) match.
const EKODB_EXACT: f64 = 1.0;
/// ekoDB-rule strength of a prefix match.
const EKODB_PREFIX: f64 = 0.7;
/// ekoDB-rule strength of a typo match.
const EKODB_TYPO: f64 = 0.5;

/// Why a text search was refused. All are the caller's fault (a bad request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextError {
    /// The language name is not one of [`Language::names`].
    UnknownLanguage(String),
    /// `max_edit_distance` above [`MAX_EDIT_DISTANCE`].
    EditDistanceTooLarge(u8),
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::UnknownLanguage(name) => write!(
                f,
                "unknown language {name:?} (expected one of: {})",
                Language::names().collect::<Vec<_>>().join(", ")
            ),
            TextError::EditDistanceTooLarge(d) => {
                write!(
                    f,
                    "max_edit_distance {d} is above the maximum of {MAX_EDIT_DISTANCE}"
                )
            }
        }
    }
}

impl std::error::Error for TextError {}

/// A full-text query. Build with [`TextQuery::new`] and set the public fields.
#[derive(Clone, Debug, PartialEq)]
pub struct TextQuery {
    /// The query text; analysed like documents. Its words are OR-ed.
    pub query: String,
    /// Only match in these fields (`None`: all fields). Unknown names match nothing.
    pub fields: Option<Vec<String>>,
    /// Score multipliers per field (default 1.0). A weight that is not a positive
    /// finite number excludes the field.
    pub weights: Vec<(String, f32)>,
    /// Stemming language of the request. `None` or the index's own language: stem
    /// as the index does. Another known language: match unstemmed (the index only
    /// holds stems of its own language). Unknown: [`TextError::UnknownLanguage`].
    pub language: Option<String>,
    /// Typo tolerance.
    pub fuzzy: bool,
    /// Edit distance for `fuzzy` (0..=2; transpositions count 1). Capped by word
    /// length: words of 1-2 characters match exactly, words of 3-5 characters
    /// allow one edit.
    pub max_edit_distance: u8,
    /// Match the words exactly as written (case included). A case-sensitive query
    /// does no stemming and no fuzzy expansion.
    pub case_sensitive: bool,
    /// Match other forms of a word with the same stem (when the index has a
    /// language).
    pub stemming: bool,
    /// Score exact (unstemmed, unfuzzed) occurrences of the query words higher.
    pub boost_exact: bool,
    /// Also match longer words that begin with a query word (`john` finds
    /// `johnson`), ranked below the word itself: the last word, and earlier
    /// ones that are not words of the index (see [`MIN_PREFIX_CHARS`]). Not
    /// for case-sensitive queries.
    pub prefix: bool,
    /// The scoring rule.
    pub scoring: Scoring,
    /// Drop hits scoring below this.
    pub min_score: Option<f32>,
    /// Maximum number of hits returned (`total` still counts all).
    pub limit: usize,
}

impl TextQuery {
    /// A query with defaults: all fields, weight 1, stemming on, not fuzzy
    /// (distance 2 once `fuzzy` is set), not case-sensitive, no exact boost, no
    /// prefix matching, BM25, limit 10.
    pub fn new(query: impl Into<String>) -> TextQuery {
        TextQuery {
            query: query.into(),
            fields: None,
            weights: Vec::new(),
            language: None,
            fuzzy: false,
            max_edit_distance: MAX_EDIT_DISTANCE,
            case_sensitive: false,
            stemming: true,
            boost_exact: false,
            prefix: false,
            scoring: Scoring::Bm25,
            min_score: None,
            limit: 10,
        }
    }
}

/// One search result.
#[derive(Clone, Debug, PartialEq)]
pub struct TextHit {
    pub doc: DocId,
    /// The score under the query's [`Scoring`], > 0; higher is better.
    pub score: f32,
    /// Names of the fields in which a query word matched, sorted.
    pub matched_fields: Vec<String>,
}

/// The result of [`TextIndex::search`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TextResults {
    /// The best `limit` hits by descending score (ties: ascending doc).
    pub hits: Vec<TextHit>,
    /// Number of accepted documents scoring at least `min_score`, before `limit`.
    pub total: usize,
}

mod dict;
mod postings;

use dict::{Dict, Keyed};
use postings::{Posting, PostingList};

type TermId = u32;
type FieldId = u16;
type GroupId = u32;

/// No group, or (in [`TextIndex::seqs`]) a removed document version.
const NONE: u32 = u32::MAX;

/// A folded word, or a word as written (with uppercase).
struct Term {
    key: Box<str>,
    /// The group whose list holds this word's postings.
    group: GroupId,
    /// The word's number in its group's postings.
    member: u32,
    /// Its postings, those of removed versions included (to rank completions
    /// and typo variants by frequency).
    count: u32,
    /// A word as written, not a folded word.
    raw: bool,
}

impl Keyed for Term {
    fn key(&self) -> &str {
        &self.key
    }
}

/// One posting list, shared by the folded words with one stem (an index with
/// a language), or of one word (a folded word without a language, or a word as
/// written).
struct Group {
    /// The stem, for a stem group.
    stem: Option<Box<str>>,
    postings: PostingList,
    /// The `seq` of the last posting appended.
    last_seq: u32,
    /// Member numbers given out so far.
    members: u32,
}

impl Group {
    fn push(&mut self, p: Posting) {
        self.postings.push(self.last_seq, p);
        self.last_seq = p.seq;
    }
}

impl Keyed for Group {
    fn key(&self) -> &str {
        self.stem.as_deref().unwrap_or("")
    }
}

struct DocEntry {
    /// The sequence number of the indexed version.
    seq: u32,
    /// Indexed fields and their lengths in words.
    fields: Box<[(FieldId, u32)]>,
}

#[derive(Default)]
struct Field {
    name: Box<str>,
    docs: u32,
    total_len: u64,
    /// Length in words, by doc id (0 when absent).
    lens: Vec<u32>,
}

/// An inverted index over several named text fields of each document, with BM25
/// ranking, stemming, case-sensitive matching and typo tolerance. See the module
/// documentation for the data layout and the exact scoring formula.
pub struct TextIndex {
    analyzer: Analyzer,
    fields: Vec<Field>,
    field_ids: FxHashMap<Box<str>, FieldId>,
    terms: Vec<Term>,
    /// Folded words and words as written, by key.
    folded: Dict,
    raw: Dict,
    groups: Vec<Group>,
    /// Stem groups by stem.
    stems: Dict,
    docs: Vec<Option<DocEntry>>,
    /// Sequence number -> doc id, `NONE` once that version is removed or replaced.
    seqs: Vec<u32>,
    dead_seqs: usize,
    live_docs: usize,
    fuzzy: FuzzyDict,
}

impl fmt::Debug for TextIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TextIndex")
            .field("analyzer", &self.analyzer)
            .field("docs", &self.live_docs)
            .field("fields", &self.fields.len())
            .field("terms", &self.terms.len())
            .finish()
    }
}

impl Default for TextIndex {
    fn default() -> Self {
        TextIndex::new(Analyzer::default())
    }
}

/// Per-field word counts of one document, gathered before touching the index.
#[derive(Default)]
struct FieldCounts<'t> {
    len: u32,
    /// folded word -> (occurrences, occurrences not written in lowercase)
    folded: FxHashMap<Cow<'t, str>, (u32, u32)>,
    /// word as written (only those with uppercase) -> occurrences
    raw: FxHashMap<&'t str, u32>,
}

/// Buffers reused by every entry of a query.
#[derive(Default)]
struct Scratch {
    /// The entry's hits, grouped by document.
    hits: Vec<Hit>,
    /// The entry's document frequency, by field.
    df: Vec<u32>,
}

/// A live posting of a plan entry, as scoring reads it.
#[derive(Clone, Copy)]
struct Hit {
    doc: u32,
    field: FieldId,
    tf: f32,
}

/// Which fields matched, per document, gathered while scoring.
struct FieldMarks {
    /// Bit f for field f < 64, by doc id.
    low: Vec<u64>,
    high: FxHashSet<(u32, FieldId)>,
}

impl FieldMarks {
    fn new(docs: usize) -> FieldMarks {
        FieldMarks {
            low: vec![0; docs],
            high: FxHashSet::default(),
        }
    }

    fn mark(&mut self, doc: u32, field: FieldId) {
        if field < 64 {
            if let Some(bits) = self.low.get_mut(doc as usize) {
                *bits |= 1 << field;
            }
        } else {
            self.high.insert((doc, field));
        }
    }

    fn of(&self, doc: u32) -> Vec<FieldId> {
        let bits = self.low.get(doc as usize).copied().unwrap_or(0);
        let mut out: Vec<FieldId> = (0..64).filter(|f| bits & (1 << f) != 0).collect();
        if !self.high.is_empty() {
            out.extend(self.high.iter().filter(|(d, _)| *d == doc).map(|(_, f)| *f));
        }
        out
    }
}

impl TextIndex {
    /// An empty index analysing with `analyzer`.
    pub fn new(analyzer: Analyzer) -> TextIndex {
        TextIndex {
            analyzer,
            fields: Vec::new(),
            field_ids: FxHashMap::default(),
            terms: Vec::new(),
            folded: Dict::default(),
            raw: Dict::default(),
            groups: Vec::new(),
            stems: Dict::default(),
            docs: Vec::new(),
            seqs: Vec::new(),
            dead_seqs: 0,
            live_docs: 0,
            fuzzy: FuzzyDict::default(),
        }
    }

    /// The analyzer (and so the stemming language) of this index.
    pub fn analyzer(&self) -> &Analyzer {
        &self.analyzer
    }

    /// Number of indexed documents.
    pub fn len(&self) -> usize {
        self.live_docs
    }

    /// True when no document is indexed.
    pub fn is_empty(&self) -> bool {
        self.live_docs == 0
    }

    /// True when `doc` is indexed.
    pub fn contains(&self, doc: DocId) -> bool {
        matches!(self.docs.get(doc.0 as usize), Some(Some(_)))
    }

    /// Indexes `doc` with the given `(field name, text)` pairs, replacing whatever
    /// was indexed for it before. A field name may repeat (an array of strings):
    /// its texts are indexed as one field. A document with no fields is removed.
    pub fn upsert(&mut self, doc: DocId, fields: &[(&str, &str)]) {
        self.remove(doc);
        if fields.is_empty() {
            return;
        }
        let mut per_field: Vec<(FieldId, FieldCounts<'_>)> = Vec::new();
        for &(name, text) in fields {
            let fid = self.field_id(name);
            let slot = match per_field.iter().position(|(f, _)| *f == fid) {
                Some(i) => i,
                None => {
                    // About one distinct word per 16 bytes of text: sized
                    // once, not grown step by step.
                    let distinct = (text.len() / 16).min(1 << 16);
                    let counts = FieldCounts {
                        folded: FxHashMap::with_capacity_and_hasher(distinct, Default::default()),
                        ..FieldCounts::default()
                    };
                    per_field.push((fid, counts));
                    per_field.len() - 1
                }
            };
            let counts = &mut per_field[slot].1;
            self.analyzer.for_each_word(text, |raw, folded| {
                counts.len = counts.len.saturating_add(1);
                let upper = matches!(folded, Cow::Owned(_));
                if upper {
                    *counts.raw.entry(raw).or_insert(0) += 1;
                }
                let e = counts.folded.entry(folded).or_insert((0, 0));
                e.0 += 1;
                e.1 += u32::from(upper);
            });
        }

        // A version's postings go into each list field by field, in id order,
        // however the document ordered its fields.
        per_field.sort_by_key(|(field, _)| *field);
        let seq = self.seqs.len() as u32;
        self.seqs.push(doc.0);
        let mut doc_fields: Vec<(FieldId, u32)> = Vec::with_capacity(per_field.len());
        // (group, member, term, tf, upper) of one field's folded words.
        let mut row: Vec<(GroupId, u32, TermId, u32, u32)> = Vec::new();
        for (field, counts) in &per_field {
            let field = *field;
            doc_fields.push((field, counts.len));
            row.clear();
            for (folded, &(tf, upper)) in &counts.folded {
                let tid = match self.folded.get(&self.terms, folded) {
                    Some(tid) => tid,
                    None => self.new_folded_term(folded),
                };
                let term = &self.terms[tid as usize];
                row.push((term.group, term.member, tid, tf, upper));
            }
            // A group's postings of one version and field lie together, so
            // a stemmed lookup sums them as it reads.
            row.sort_unstable_by_key(|r| (u64::from(r.0) << 32) | u64::from(r.1));
            for &(group, member, tid, tf, upper) in &row {
                self.push(
                    group,
                    tid,
                    Posting {
                        seq,
                        field,
                        tf,
                        upper,
                        member,
                    },
                );
            }
            for (raw, &tf) in &counts.raw {
                let tid = match self.raw.get(&self.terms, raw) {
                    Some(tid) => tid,
                    None => self.new_raw_term(raw),
                };
                let group = self.terms[tid as usize].group;
                let p = Posting {
                    seq,
                    field,
                    tf,
                    upper: 0,
                    member: 0,
                };
                self.push(group, tid, p);
            }
        }

        let slot = doc.0 as usize;
        if self.docs.len() <= slot {
            self.docs.resize_with(slot + 1, || None);
        }
        for &(fid, len) in &doc_fields {
            let field = &mut self.fields[fid as usize];
            field.docs += 1;
            field.total_len += u64::from(len);
            if field.lens.len() <= slot {
                field.lens.resize(slot + 1, 0);
            }
            field.lens[slot] = len;
        }
        self.docs[slot] = Some(DocEntry {
            seq,
            fields: doc_fields.into_boxed_slice(),
        });
        self.live_docs += 1;
    }

    /// Indexes many documents at once (a first build over a collection):
    /// `load` calls [`TextIndex::upsert`] for each. The result is the same
    /// index, built faster and smaller: the typo and prefix dictionary is
    /// written once at the end, from the word table (not once per 2,048 new
    /// words), and posting lists are trimmed to their length.
    pub fn bulk(&mut self, load: impl FnOnce(&mut TextIndex)) {
        self.fuzzy.begin_bulk();
        load(self);
        let mut folded: Vec<&str> = self
            .terms
            .iter()
            .filter(|t| !t.raw)
            .map(|t| &*t.key)
            .collect();
        folded.sort_unstable();
        folded.dedup();
        self.fuzzy.end_bulk(&folded);
        for group in &mut self.groups {
            group.postings.shrink_to_fit();
        }
        self.groups.shrink_to_fit();
        self.terms.shrink_to_fit();
        self.seqs.shrink_to_fit();
    }

    /// Removes `doc`; returns whether it was indexed.
    ///
    /// Its postings stay in their lists, skipped by search (their sequence
    /// number is dead), until removed versions outnumber live documents; then
    /// every list is rewritten without them. So the index holds at most about
    /// twice its live postings, and a removal costs amortised time
    /// proportional to the postings it leaves behind; but the one removal
    /// that starts the rewrite pays for all of it at once (148-200 ms for
    /// 20,000 man pages: `search_bench`).
    pub fn remove(&mut self, doc: DocId) -> bool {
        let slot = doc.0 as usize;
        let Some(entry) = self.docs.get_mut(slot).and_then(Option::take) else {
            return false;
        };
        self.live_docs -= 1;
        for &(fid, len) in entry.fields.iter() {
            let field = &mut self.fields[fid as usize];
            field.docs -= 1;
            field.total_len -= u64::from(len);
            field.lens[slot] = 0;
        }
        if let Some(s) = self.seqs.get_mut(entry.seq as usize) {
            *s = NONE;
        }
        self.dead_seqs += 1;
        if self.dead_seqs > self.live_docs {
            self.compact();
        }
        true
    }

    /// Rewrites every posting list without removed versions, renumbering the
    /// live ones densely (in the same order), and drops the terms left with
    /// no posting.
    fn compact(&mut self) {
        let mut renumber = vec![NONE; self.seqs.len()];
        let mut seqs = Vec::with_capacity(self.live_docs);
        for (old, &doc) in self.seqs.iter().enumerate() {
            if doc != NONE {
                renumber[old] = seqs.len() as u32;
                seqs.push(doc);
            }
        }
        for entry in self.docs.iter_mut().flatten() {
            entry.seq = renumber[entry.seq as usize];
        }
        self.seqs = seqs;
        self.dead_seqs = 0;

        // Each group's list without the dead versions, its surviving members
        // renumbered in order; then the terms of surviving members. Lists are
        // encoded into a scratch list and copied out at their exact size.
        let old_groups = std::mem::take(&mut self.groups);
        self.groups = Vec::with_capacity(old_groups.len());
        let mut new_group = vec![NONE; old_groups.len()];
        // Per old group: old member -> (new member, live postings).
        let mut members: Vec<Vec<(u32, u32)>> = Vec::with_capacity(old_groups.len());
        self.stems = Dict::with_capacity(old_groups.iter().filter(|g| g.stem.is_some()).count());
        let blank = || Group {
            stem: None,
            postings: PostingList::default(),
            last_seq: 0,
            members: 0,
        };
        let (mut scratch, mut renumbered) = (blank(), blank());
        for (old, group) in old_groups.into_iter().enumerate() {
            let mut map = vec![(NONE, 0u32); group.members as usize];
            scratch.postings.clear();
            scratch.last_seq = 0;
            for p in group.postings.iter() {
                let seq = renumber.get(p.seq as usize).copied().unwrap_or(NONE);
                if seq != NONE {
                    if let Some(m) = map.get_mut(p.member as usize) {
                        m.1 += 1;
                    }
                    scratch.push(Posting { seq, ..p });
                }
            }
            let mut next = 0;
            for m in &mut map {
                if m.1 > 0 {
                    m.0 = next;
                    next += 1;
                }
            }
            if next > 0 {
                let mut list = &scratch;
                if next as usize != map.len() {
                    // A word lost its last posting: the others are renumbered.
                    renumbered.postings.clear();
                    renumbered.last_seq = 0;
                    for p in scratch.postings.iter() {
                        let member = map[p.member as usize].0;
                        renumbered.push(Posting { member, ..p });
                    }
                    list = &renumbered;
                }
                new_group[old] = self.groups.len() as GroupId;
                let is_stem = group.stem.is_some();
                self.groups.push(Group {
                    stem: group.stem,
                    postings: list.postings.to_exact(),
                    last_seq: list.last_seq,
                    members: next,
                });
                if is_stem {
                    self.stems.insert(&self.groups, new_group[old]);
                }
            }
            members.push(map);
        }
        let old_terms = std::mem::take(&mut self.terms);
        self.terms = Vec::with_capacity(old_terms.len());
        self.folded = Dict::with_capacity(old_terms.iter().filter(|t| !t.raw).count());
        self.raw = Dict::default();
        for term in old_terms {
            let g = term.group as usize;
            let Some(&(member, count)) = members[g].get(term.member as usize) else {
                continue;
            };
            if count == 0 {
                continue;
            }
            let tid = self.terms.len() as TermId;
            let raw = term.raw;
            self.terms.push(Term {
                group: new_group[g],
                member,
                count,
                ..term
            });
            if raw {
                self.raw.insert(&self.terms, tid);
            } else {
                self.folded.insert(&self.terms, tid);
            }
        }
        self.terms.shrink_to_fit();
        self.groups.shrink_to_fit();
    }

    fn field_id(&mut self, name: &str) -> FieldId {
        if let Some(&id) = self.field_ids.get(name) {
            return id;
        }
        // More than 65,535 distinct field names: the last id is shared.
        let id = self.fields.len().min(usize::from(FieldId::MAX)) as FieldId;
        if usize::from(id) == self.fields.len() {
            self.fields.push(Field {
                name: name.into(),
                ..Field::default()
            });
        }
        self.field_ids.insert(name.into(), id);
        id
    }

    /// Appends `p` to `group`'s list, as a posting of `term`.
    fn push(&mut self, group: GroupId, term: TermId, p: Posting) {
        self.groups[group as usize].push(p);
        let term = &mut self.terms[term as usize];
        term.count = term.count.saturating_add(1);
    }

    fn new_group(&mut self, stem: Option<Box<str>>) -> GroupId {
        let gid = self.groups.len() as GroupId;
        let is_stem = stem.is_some();
        self.groups.push(Group {
            stem,
            postings: PostingList::default(),
            last_seq: 0,
            members: 0,
        });
        if is_stem {
            self.stems.insert(&self.groups, gid);
        }
        gid
    }

    fn new_term(&mut self, key: &str, group: GroupId, raw: bool) -> TermId {
        let g = &mut self.groups[group as usize];
        let member = g.members;
        g.members += 1;
        self.terms.push(Term {
            key: key.into(),
            group,
            member,
            count: 0,
            raw,
        });
        (self.terms.len() - 1) as TermId
    }

    /// Adds a folded word to the dictionary, its stem group and the typo and
    /// prefix dictionary. Stemming is the costliest step of indexing: it runs
    /// once per distinct word, here.
    fn new_folded_term(&mut self, key: &str) -> TermId {
        let group = if self.analyzer.language().is_some() {
            let stem = self.analyzer.stem(key);
            match self.stems.get(&self.groups, &stem) {
                Some(gid) => gid,
                None => self.new_group(Some(stem.into())),
            }
        } else {
            self.new_group(None)
        };
        let tid = self.new_term(key, group, false);
        self.folded.insert(&self.terms, tid);
        let (folded, terms) = (&self.folded, &self.terms);
        self.fuzzy.insert(key, &|t| folded.get(terms, t).is_some());
        tid
    }

    fn new_raw_term(&mut self, key: &str) -> TermId {
        let group = self.new_group(None);
        let tid = self.new_term(key, group, true);
        self.raw.insert(&self.terms, tid);
        tid
    }

    /// True when `entry` has a posting of a live document version.
    fn is_live(&self, entry: &Entry) -> bool {
        let group = &self.groups[entry.group as usize];
        if self.dead_seqs == 0 {
            // Every posting is live, and every word has one.
            return !group.postings.is_empty();
        }
        group.postings.iter().any(|p| {
            entry.member.is_none_or(|m| p.member == m)
                && self.seqs.get(p.seq as usize).is_some_and(|&d| d != NONE)
        })
    }

    /// The entry reading `term`'s postings.
    fn word(&self, term: TermId, kind: Match) -> Entry {
        let t = &self.terms[term as usize];
        let alone = self.groups[t.group as usize].members == 1;
        Entry::new(t.group, (!alone).then_some(t.member), kind)
    }

    /// Approximate heap memory of the index in bytes (capacities, not lengths).
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let terms: usize = self.terms.iter().map(|t| t.key.len()).sum::<usize>()
            + self.terms.capacity() * size_of::<Term>();
        let groups: usize = self
            .groups
            .iter()
            .map(|g| g.key().len() + g.postings.capacity())
            .sum::<usize>()
            + self.groups.capacity() * size_of::<Group>();
        let dicts =
            self.folded.memory_bytes() + self.raw.memory_bytes() + self.stems.memory_bytes();
        let docs: usize = self
            .docs
            .iter()
            .flatten()
            .map(|d| d.fields.len() * size_of::<(FieldId, u32)>())
            .sum::<usize>()
            + self.docs.capacity() * size_of::<Option<DocEntry>>()
            + self.seqs.capacity() * size_of::<u32>();
        let map_entry = size_of::<(Box<str>, FieldId)>() + 1;
        let fields: usize = self
            .fields
            .iter()
            .map(|f| f.name.len() * 2 + f.lens.capacity() * 4 + size_of::<Field>() + map_entry)
            .sum();
        terms + groups + dicts + docs + fields + self.fuzzy.memory_bytes()
    }

    /// Runs `query`; `accept` is the caller's pre-filter (called once for each
    /// matching document that reaches `min_score`). Never panics; an empty query
    /// or index gives no hits.
    pub fn search(
        &self,
        query: &TextQuery,
        accept: &dyn Fn(DocId) -> bool,
    ) -> Result<TextResults, TextError> {
        if query.max_edit_distance > MAX_EDIT_DISTANCE {
            return Err(TextError::EditDistanceTooLarge(query.max_edit_distance));
        }
        let stem_ok = match &query.language {
            None => true,
            Some(name) => Some(Language::from_name(name)?) == self.analyzer.language(),
        };
        let plan = self.plan(query, stem_ok);
        if plan.words.is_empty() || self.live_docs == 0 {
            return Ok(TextResults::default());
        }

        let min_score = query.min_score.filter(|m| !m.is_nan());
        let mut marks = FieldMarks::new(self.docs.len());
        let scores = match query.scoring {
            Scoring::Bm25 => self.bm25_scores(&plan, &mut marks),
            Scoring::EkoDb => self.ekodb_scores(&plan, &mut marks),
        };
        let mut scored: Vec<(f32, u32)> = Vec::with_capacity(scores.len());
        for (doc, score) in scores {
            if score.is_nan() || score <= 0.0 || min_score.is_some_and(|m| score < m) {
                continue;
            }
            if accept(DocId(doc)) {
                scored.push((score, doc));
            }
        }
        let total = scored.len();
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let limit = query.limit.min(total);
        if limit < total {
            if limit == 0 {
                scored.clear();
            } else {
                scored.select_nth_unstable_by(limit - 1, order);
                scored.truncate(limit);
            }
        }
        scored.sort_unstable_by(order);
        let hits = scored
            .into_iter()
            .map(|(score, doc)| TextHit {
                doc: DocId(doc),
                score,
                matched_fields: self.field_names(marks.of(doc)),
            })
            .collect();
        Ok(TextResults { hits, total })
    }

    fn field_names(&self, fields: Vec<FieldId>) -> Vec<String> {
        let mut names: Vec<String> = fields
            .into_iter()
            .filter_map(|f| self.fields.get(f as usize))
            .map(|f| f.name.to_string())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The live postings of `entry` in the fields the plan searches, one per
    /// (document, field) with the tfs of a stem group's words summed, grouped by
    /// document; and the entry's document frequency per field. The
    /// case-sensitive lowercase entry subtracts the non-lowercase spellings from
    /// each tf (a posting left with none is dropped, but still counts in the
    /// document frequency).
    fn gather(&self, entry: &Entry, fields: &[FieldPlan], scratch: &mut Scratch) {
        let Scratch { hits, df } = scratch;
        hits.clear();
        hits.reserve(self.groups[entry.group as usize].postings.max_len());
        df.clear();
        df.resize(fields.len(), 0);
        let mut emit = |p: Posting| {
            let doc = self.seqs.get(p.seq as usize).copied().unwrap_or(NONE);
            if doc == NONE {
                return;
            }
            df[p.field as usize] += 1;
            let tf = if entry.minus {
                p.tf.saturating_sub(p.upper)
            } else {
                p.tf
            };
            if tf > 0 {
                hits.push(Hit {
                    doc,
                    field: p.field,
                    tf: tf as f32,
                });
            }
        };
        // A stem group's words' postings of one (version, field) lie
        // together: they are summed as they come.
        let postings = &self.groups[entry.group as usize].postings;
        let mut pending: Option<Posting> = None;
        let searched = |f: FieldId| {
            fields
                .get(f as usize)
                .is_some_and(|fp| fp.coef > 0.0 && fp.docs > 0)
        };
        // Bit f: field f (< 64) is searched.
        let mask = (0..fields.len().min(64) as FieldId)
            .filter(|&f| searched(f))
            .fold(0u64, |m, f| m | 1 << f);
        for p in postings.iter() {
            let searched = if p.field < 64 {
                mask & (1 << p.field) != 0
            } else {
                searched(p.field)
            };
            if !searched || entry.member.is_some_and(|m| p.member != m) {
                continue;
            }
            match &mut pending {
                Some(q) if q.seq == p.seq && q.field == p.field => {
                    q.tf = q.tf.saturating_add(p.tf);
                    q.upper = q.upper.saturating_add(p.upper);
                }
                _ => {
                    if let Some(q) = pending.replace(p) {
                        emit(q);
                    }
                }
            }
        }
        if let Some(q) = pending {
            emit(q);
        }
    }

    /// BM25 scores of every document matching a word of `plan`.
    fn bm25_scores(&self, plan: &Plan, marks: &mut FieldMarks) -> Vec<(u32, f32)> {
        let n = self.docs.len();
        let mut acc = vec![0f32; n];
        let mut word_acc = vec![0f32; n];
        let mut matched = vec![0u16; n];
        let mut touched: Vec<u32> = Vec::new();
        let mut word_touched: Vec<u32> = Vec::new();
        let mut scratch = Scratch::default();
        for word in &plan.words {
            for entry in &word.entries {
                self.gather(entry, &plan.fields, &mut scratch);
                let Scratch { hits, df, .. } = &scratch;
                let mut add = |doc: u32, s: f32| {
                    let slot = &mut word_acc[doc as usize];
                    if *slot == 0.0 {
                        word_touched.push(doc);
                    }
                    if entry.additive {
                        *slot += s;
                    } else if s > *slot {
                        *slot = s;
                    }
                };
                // Per-field constants: idf * weight * mult * (k1 + 1), and the norm terms.
                let consts: Vec<(f32, f32, f32)> = plan
                    .fields
                    .iter()
                    .zip(df)
                    .map(|(fp, &df)| {
                        if df == 0 {
                            return (0.0, 0.0, 0.0);
                        }
                        let (df, n) = (df as f32, fp.docs as f32);
                        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                        (
                            idf * fp.coef * entry.mult * (BM25_K1 + 1.0),
                            BM25_K1 * (1.0 - BM25_B),
                            BM25_K1 * BM25_B / fp.avg_len,
                        )
                    })
                    .collect();
                let mut current: Option<(u32, f32)> = None;
                for h in hits {
                    marks.mark(h.doc, h.field);
                    let (c, a, b) = consts[h.field as usize];
                    let fp = &plan.fields[h.field as usize];
                    let len = fp.lens.get(h.doc as usize).copied().unwrap_or(0) as f32;
                    let s = c * h.tf / (h.tf + a + b * len);
                    match &mut current {
                        Some((doc, sum)) if *doc == h.doc => *sum += s,
                        _ => {
                            if let Some((doc, sum)) = current {
                                add(doc, sum);
                            }
                            current = Some((h.doc, s));
                        }
                    }
                }
                if let Some((doc, sum)) = current {
                    add(doc, sum);
                }
            }
            for doc in word_touched.drain(..) {
                let i = doc as usize;
                if matched[i] == 0 {
                    touched.push(doc);
                }
                acc[i] += word_acc[i];
                matched[i] = matched[i].saturating_add(1);
                word_acc[i] = 0.0;
            }
        }
        let words = plan.words.len() as f32;
        touched
            .into_iter()
            .map(|doc| {
                let i = doc as usize;
                (doc, acc[i] * f32::from(matched[i]) / words)
            })
            .collect()
    }

    /// ekoDB-rule scores (module documentation) of every document matching a
    /// word of `plan`.
    ///
    /// A word adds, for each field of a document, its strongest match there:
    /// its entries are read strongest first, and a (document, field) pair
    /// already counted for this word is skipped (a per-document bit set of the
    /// first 64 fields, a hash set beyond). Sums are f64, rounded once at the
    /// end, so 6.6 + 6.6 reads 13.2 (as ekoDB's scores do), not 13.200001.
    fn ekodb_scores(&self, plan: &Plan, marks: &mut FieldMarks) -> Vec<(u32, f32)> {
        let n: u32 = plan.words.iter().map(|w| w.count).sum();
        let docs = self.docs.len();
        let mut acc = vec![0f64; docs];
        // Per doc: the word (1-based) its field bits belong to, and the bits.
        let mut seen: Vec<(u32, u64)> = vec![(0, 0); docs];
        let mut seen_high: FxHashSet<(u32, FieldId)> = Default::default();
        let mut touched: Vec<u32> = Vec::new();
        let mut order: Vec<(f64, &Entry)> = Vec::new();
        let mut scratch = Scratch::default();
        for (w, word) in plan.words.iter().enumerate() {
            let stamp = w as u32 + 1;
            seen_high.clear();
            order.clear();
            order.extend(
                word.entries
                    .iter()
                    .filter_map(|e| Some((e.kind.ekodb_strength()?, e))),
            );
            order.sort_by(|a, b| b.0.total_cmp(&a.0));
            for &(m, entry) in &order {
                let per_field = if n == 1 {
                    if m > EKODB_TYPO {
                        1.1 * (m + 5.0)
                    } else {
                        1.1 * m
                    }
                } else {
                    f64::from(word.count) * m / f64::from(n)
                };
                self.gather(entry, &plan.fields, &mut scratch);
                for h in &scratch.hits {
                    marks.mark(h.doc, h.field);
                    let d = h.doc as usize;
                    let first = if h.field < 64 {
                        let slot = &mut seen[d];
                        if slot.0 != stamp {
                            *slot = (stamp, 0);
                        }
                        let bit = 1u64 << h.field;
                        let new = slot.1 & bit == 0;
                        slot.1 |= bit;
                        new
                    } else {
                        seen_high.insert((h.doc, h.field))
                    };
                    if first {
                        if acc[d] == 0.0 {
                            touched.push(h.doc);
                        }
                        let weight = f64::from(plan.fields[h.field as usize].coef);
                        acc[d] += weight * per_field;
                    }
                }
            }
        }
        touched
            .into_iter()
            .map(|doc| (doc, acc[doc as usize] as f32))
            .collect()
    }

    /// Resolves the query into per-word posting entries and per-field constants.
    fn plan<'s>(&'s self, query: &TextQuery, stem_ok: bool) -> Plan<'s> {
        let fields = self
            .fields
            .iter()
            .map(|f| {
                let allowed = query
                    .fields
                    .as_ref()
                    .is_none_or(|names| names.iter().any(|n| **n == *f.name));
                let weight = query
                    .weights
                    .iter()
                    .rev()
                    .find(|(n, _)| **n == *f.name)
                    .map_or(1.0, |(_, w)| *w);
                let coef = if allowed && weight.is_finite() && weight > 0.0 {
                    weight
                } else {
                    0.0
                };
                FieldPlan {
                    coef,
                    docs: f.docs,
                    avg_len: if f.docs == 0 {
                        1.0
                    } else {
                        (f.total_len as f32 / f.docs as f32).max(1.0)
                    },
                    lens: &f.lens,
                }
            })
            .collect();

        let stemming = query.stemming
            && stem_ok
            && self.analyzer.language().is_some()
            && !query.case_sensitive;
        let fuzzy = query.fuzzy && !query.case_sensitive && query.max_edit_distance > 0;
        let prefix = query.prefix && !query.case_sensitive;
        let query_words = self.analyzer.words(&query.query);
        let last = query_words.len().saturating_sub(1);
        let mut seen: FxHashMap<String, usize> = FxHashMap::default();
        let mut words: Vec<WordPlan> = Vec::new();
        // The live folded word `key`, read with `kind`.
        let folded_word = |key: &str, kind: Match| {
            let t = self.folded.get(&self.terms, key)?;
            Some(self.word(t, kind)).filter(|e| self.is_live(e))
        };
        for (i, (raw, folded)) in query_words.into_iter().enumerate() {
            let key = if query.case_sensitive { raw } else { &*folded };
            if let Some(&at) = seen.get(key) {
                words[at].count += 1;
                continue;
            }
            seen.insert(key.to_string(), words.len());
            let mut entries = Vec::new();
            if query.case_sensitive {
                if raw != &*folded {
                    if let Some(t) = self.raw.get(&self.terms, raw) {
                        entries.push(self.word(t, Match::Exact));
                    }
                } else if let Some(t) = self.folded.get(&self.terms, raw) {
                    let mut e = self.word(t, Match::Exact);
                    e.minus = true;
                    entries.push(e);
                }
            } else {
                // The word's stem group (stemming) or the word itself.
                let stem = stemming
                    .then(|| self.stems.get(&self.groups, &self.analyzer.stem(&folded)))
                    .flatten();
                let primary = match stem {
                    Some(group) => {
                        Some(Entry::new(group, None, Match::Exact)).filter(|e| self.is_live(e))
                    }
                    None if stemming => None,
                    None => folded_word(&folded, Match::Exact),
                };
                let found = primary.is_some();
                entries.extend(primary);
                // The last word may be cut short by someone typing; an earlier
                // word is completed only when it is not a word of the index.
                let completes = if i == last {
                    folded.chars().count() >= MIN_LAST_PREFIX_CHARS
                } else {
                    !found && folded.chars().count() >= MIN_PREFIX_CHARS
                };
                if prefix && completes {
                    self.prefix_entries(&folded, stem, &mut entries);
                }
                if fuzzy {
                    self.fuzzy_entries(&folded, query.max_edit_distance, stem, &mut entries);
                }
                if query.boost_exact && (stemming || fuzzy || prefix) {
                    entries.extend(folded_word(&folded, Match::ExactBonus));
                }
            }
            // A word with no entry still counts in the coordination factor.
            words.push(WordPlan { entries, count: 1 });
        }
        Plan { words, fields }
    }

    /// The most frequent longer terms that begin with `folded` (a bounded walk
    /// of the dictionary), except forms with the query's own stem (already
    /// matched exactly).
    fn prefix_entries(&self, folded: &str, stem: Option<GroupId>, entries: &mut Vec<Entry>) {
        let mut found: Vec<TermId> = Vec::new();
        self.fuzzy.prefixed(folded, PREFIX_SCAN, &mut |term| {
            let tid = self
                .folded
                .get(&self.terms, term)
                .filter(|&t| self.is_live(&self.word(t, Match::Prefix)));
            found.extend(tid);
            tid.is_some()
        });
        found.sort_unstable();
        found.dedup();
        found.retain(|&tid| stem.is_none_or(|s| self.terms[tid as usize].group != s));
        found.sort_unstable_by(|&a, &b| {
            let (ta, tb) = (&self.terms[a as usize], &self.terms[b as usize]);
            tb.count.cmp(&ta.count).then(ta.key.cmp(&tb.key))
        });
        found.truncate(MAX_PREFIX_EXPANSIONS);
        entries.extend(found.into_iter().map(|tid| self.word(tid, Match::Prefix)));
    }

    fn fuzzy_entries(
        &self,
        folded: &str,
        max_distance: u8,
        stem: Option<GroupId>,
        entries: &mut Vec<Entry>,
    ) {
        let chars = folded.chars().count();
        let cap = match chars {
            0..=2 => 0,
            3..=5 => 1,
            _ => 2,
        };
        let distance = max_distance.min(cap);
        let mut found: FxHashMap<TermId, u8> = FxHashMap::default();
        self.fuzzy.lookup(folded, distance, &mut |term, d| {
            if d == 0 {
                return;
            }
            if let Some(tid) = self.folded.get(&self.terms, term) {
                let best = found.entry(tid).or_insert(d);
                *best = (*best).min(d);
            }
        });
        let mut found: Vec<(TermId, u8)> = found
            .into_iter()
            .filter(|&(tid, _)| {
                // Forms with the query's stem are already matched by the stem entry.
                stem.is_none_or(|s| self.terms[tid as usize].group != s)
                    && self.is_live(&self.word(tid, Match::Typo(1)))
            })
            .collect();
        found.sort_unstable_by(|a, b| {
            let (ta, tb) = (&self.terms[a.0 as usize], &self.terms[b.0 as usize]);
            a.1.cmp(&b.1)
                .then(tb.count.cmp(&ta.count))
                .then(ta.key.cmp(&tb.key))
        });
        found.truncate(MAX_FUZZY_EXPANSIONS);
        entries.extend(
            found
                .into_iter()
                .map(|(tid, d)| self.word(tid, Match::Typo(d.min(2)))),
        );
    }
}

struct FieldPlan<'s> {
    /// Weight, or 0 when the field is excluded.
    coef: f32,
    docs: u32,
    avg_len: f32,
    lens: &'s [u32],
}

/// How a plan entry matches its query word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    /// The word, or (stemming) a form with its stem.
    Exact,
    /// A longer word beginning with it.
    Prefix,
    /// A word within this edit distance (1 or 2).
    Typo(u8),
    /// The unstemmed word again, added on top (`boost_exact`, BM25 only).
    ExactBonus,
}

impl Match {
    /// The BM25 multiplier.
    fn mult(self) -> f32 {
        match self {
            Match::Exact => 1.0,
            Match::Prefix => PREFIX_MULT,
            Match::Typo(d) => FUZZY_MULT[usize::from(d.min(2))],
            Match::ExactBonus => EXACT_BONUS,
        }
    }

    /// The ekoDB-rule strength (`None`: the entry does not count there).
    fn ekodb_strength(self) -> Option<f64> {
        match self {
            Match::Exact => Some(EKODB_EXACT),
            Match::Prefix => Some(EKODB_PREFIX),
            Match::Typo(_) => Some(EKODB_TYPO),
            Match::ExactBonus => None,
        }
    }
}

/// A posting list that matches a query word one way.
struct Entry {
    group: GroupId,
    /// Only this word of the group (`None`: all of them, their tfs summed
    /// per field).
    member: Option<u32>,
    kind: Match,
    mult: f32,
    /// Added to the word's score instead of competing for its maximum.
    additive: bool,
    /// Subtract the non-lowercase spellings from each tf (a case-sensitive
    /// match of a lowercase word).
    minus: bool,
}

impl Entry {
    fn new(group: GroupId, member: Option<u32>, kind: Match) -> Entry {
        Entry {
            group,
            member,
            kind,
            mult: kind.mult(),
            additive: kind == Match::ExactBonus,
            minus: false,
        }
    }
}

struct WordPlan {
    entries: Vec<Entry>,
    /// Times the word appears in the query (the ekoDB rule counts repeats).
    count: u32,
}

struct Plan<'s> {
    words: Vec<WordPlan>,
    fields: Vec<FieldPlan<'s>>,
}
