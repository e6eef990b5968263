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
//! exact, and removals need no forward index (which would cost as much memory
//! as the postings).
//!
//! When dead versions outnumber live documents, a **sweep** begins: the live
//! versions are renumbered densely, and the lists are rewritten without the
//! dead ones a few at a time, by the writes that follow (each reads a few
//! documents' worth of lists), until every list is in the new numbering. A
//! list not yet swept is read through the old-to-new map, and one appended to
//! meanwhile restarts its delta chain where the new numbers begin. Words and
//! groups left with no posting are freed, and their slots reused. So no write
//! pays for the whole index, and the lists hold at most about 2.25 times their
//! live postings.
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
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::Mutex;

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
mod keys;
mod postings;

use dict::{Dict, Keyed};
use keys::{Key, Keys};
use postings::{Posting, PostingList, Postings};

type TermId = u32;
type FieldId = u16;
type GroupId = u32;

/// No group or term, or (in [`TextIndex::seqs`]) a removed document version.
const NONE: u32 = u32::MAX;

/// A sweep of removed versions reads this many times (list bytes / live
/// documents) per write (see [`TextIndex::sweep_step`])...
const SWEEP_PACE: usize = 4;
/// ... and at least this many bytes.
const MIN_SWEEP_BYTES: usize = 4096;
/// What visiting one group costs a sweep, in list bytes (so a run of free
/// or empty groups is not walked in one write).
const GROUP_SWEEP_BYTES: usize = 16;

/// A folded word, or a word as written (with uppercase).
struct Term {
    /// Empty for a free slot.
    key: Key,
    /// The group whose list holds this word's postings (`NONE`: a free slot).
    group: GroupId,
    /// The word's number in its group's postings.
    member: u32,
    /// Its postings, those of removed versions included (to rank completions
    /// and typo variants by frequency).
    count: u32,
    /// The group's word with the next lower member number, or `NONE`.
    next: TermId,
}

impl Keyed for Term {
    fn key(&self) -> Key {
        self.key
    }
}

/// One posting list, shared by the folded words with one stem (an index with
/// a language), or of one word (a folded word without a language, or a word as
/// written).
struct Group {
    /// The stem, for a stem group (else empty).
    stem: Key,
    postings: PostingList,
    /// The `seq` of the last posting appended.
    last_seq: u32,
    /// The word with the highest member number: the group's words form a
    /// chain through [`Term::next`], members descending. `NONE` for a free slot.
    head: TermId,
}

impl Group {
    /// An empty group, or a free slot.
    fn free() -> Group {
        Group {
            stem: Key::default(),
            postings: PostingList::default(),
            last_seq: 0,
            head: NONE,
        }
    }

    fn push(&mut self, p: Posting) {
        self.postings.push(self.last_seq, p);
        self.last_seq = p.seq;
    }
}

impl Keyed for Group {
    fn key(&self) -> Key {
        self.stem
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
    /// The text of the words and stems.
    keys: Keys,
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
    /// Slots of `terms` and `groups` freed by a sweep, reused first.
    free_terms: Vec<TermId>,
    free_groups: Vec<GroupId>,
    /// The renumbering under way, if any.
    migration: Option<Migration>,
    /// Sweep one group per write (tests of the states in between).
    slow_sweep: bool,
    /// Score buffers kept between queries.
    buffers: BufferPool,
}

/// A scored document, ordered best first: higher score, then lower id.
#[derive(Clone, Copy)]
struct Ranked {
    score: f32,
    doc: u32,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.doc.cmp(&other.doc))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ranked {}

/// A group's postings: those numbered before the migration under way (if
/// any), translated, then those numbered since.
struct GroupPostings<'a> {
    old: Postings<'a>,
    /// Old sequence number -> new (empty: no old postings).
    renumber: &'a [u32],
    new: Postings<'a>,
}

impl Iterator for GroupPostings<'_> {
    type Item = Posting;

    #[inline(always)]
    fn next(&mut self) -> Option<Posting> {
        if let Some(p) = self.old.next() {
            let seq = self.renumber.get(p.seq as usize).copied().unwrap_or(NONE);
            return Some(Posting { seq, ..p });
        }
        self.new.next()
    }
}

/// A renumbering of document versions under way: removed versions are
/// dropped from the lists a few at a time, as writes come (see
/// [`TextIndex::sweep_step`]).
///
/// It begins by giving each live version a new, dense sequence number, in
/// order, and every version written since takes the next new number. The
/// groups before `next` (swept) and from `end` (created since) are wholly in
/// the new numbering; a group between is in the old one, up to its `split`
/// offset if it has been appended to since (where the delta chain restarts).
struct Migration {
    /// Old sequence number -> new (`NONE`: a version already removed).
    renumber: Vec<u32>,
    next: GroupId,
    end: GroupId,
    split: FxHashMap<GroupId, u32>,
    /// List bytes to sweep per write.
    budget: usize,
}

impl Migration {
    /// True when `group` still holds old-numbered postings.
    fn unswept(&self, group: GroupId) -> bool {
        (self.next..self.end).contains(&group)
    }
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

/// A document's running totals in a BM25 query.
#[derive(Clone, Copy, Default)]
struct Bm25Slot {
    total: f32,
    /// The current query word's score.
    word: f32,
    /// Bit f: field f (< 32) matched.
    fields: u32,
    /// Query words matched.
    matched: u16,
}

/// A document's running totals in an ekoDB-rule query.
#[derive(Clone, Copy, Default)]
struct EkoSlot {
    /// Summed in f64, rounded once at the end.
    total: f64,
    /// The query word (1-based) that `seen` belongs to.
    word: u32,
    /// Bit f: that word already counted in field f (< 32).
    seen: u32,
    /// Bit f: field f (< 32) matched.
    fields: u32,
}

/// What a query scores into, kept between queries. The per-document slots
/// are all zero between queries: a query resets only the documents it
/// scored, so it costs what it matches, not the size of the index (zeroing
/// fresh per-document arrays was a tenth of a common query's time). Each
/// document's totals share one slot, so scoring a posting touches one
/// cache line rather than one per array.
#[derive(Default)]
struct Buffers {
    bm25: Vec<Bm25Slot>,
    eko: Vec<EkoSlot>,
    scratch: Scratch,
    /// The scored documents and their scores, each document once.
    scores: Vec<(u32, f32)>,
    /// The documents the current word scored (BM25).
    word_docs: Vec<u32>,
    /// (document, field) pairs matched, for fields numbered 32 and up.
    high_fields: FxHashSet<(u32, FieldId)>,
    /// (document, field) pairs the current word counted, fields 32 and up
    /// (ekoDB rule).
    high_seen: FxHashSet<(u32, FieldId)>,
}

impl Buffers {
    /// The fields matched in `doc`, in no order.
    fn fields_of(&self, doc: u32, scoring: Scoring) -> Vec<FieldId> {
        let i = doc as usize;
        let bits = match scoring {
            Scoring::Bm25 => self.bm25.get(i).map_or(0, |s| s.fields),
            Scoring::EkoDb => self.eko.get(i).map_or(0, |s| s.fields),
        };
        let mut out: Vec<FieldId> = (0..32).filter(|f| bits & (1 << f) != 0).collect();
        out.extend(
            self.high_fields
                .iter()
                .filter(|(d, _)| *d == doc)
                .map(|(_, f)| *f),
        );
        out
    }

    /// Zeroes what the last query wrote: the slots of the documents in
    /// `scores` (every document a query writes to is there).
    fn reset(&mut self) {
        for &(doc, _) in &self.scores {
            let i = doc as usize;
            if let Some(slot) = self.bm25.get_mut(i) {
                *slot = Bm25Slot::default();
            }
            if let Some(slot) = self.eko.get_mut(i) {
                *slot = EkoSlot::default();
            }
        }
        self.scores.clear();
        self.high_fields.clear();
    }

    fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        self.bm25.capacity() * size_of::<Bm25Slot>()
            + self.eko.capacity() * size_of::<EkoSlot>()
            + self.scratch.hits.capacity() * size_of::<Hit>()
            + self.scratch.df.capacity() * size_of::<u32>()
            + self.scores.capacity() * size_of::<(u32, f32)>()
            + self.word_docs.capacity() * size_of::<u32>()
    }
}

/// Idle [`Buffers`]: one for each query that ran at the same time as others,
/// up to [`MAX_IDLE_BUFFERS`].
#[derive(Default)]
struct BufferPool(Mutex<Vec<Buffers>>);

/// Idle buffer sets kept; more queries at once make their own.
const MAX_IDLE_BUFFERS: usize = 2;
/// Hits and scores an idle buffer set keeps room for (about 1 MiB); a query
/// of a longer list grows them for its own run.
const MAX_KEPT_HITS: usize = 1 << 16;

impl BufferPool {
    fn take(&self) -> Buffers {
        let idle = self.0.lock().ok().and_then(|mut pool| pool.pop());
        idle.unwrap_or_default()
    }

    /// Keeps `buffers` (reset) for a later query.
    fn give_back(&self, mut buffers: Buffers) {
        buffers.reset();
        buffers.scratch.hits.clear();
        buffers.scratch.hits.shrink_to(MAX_KEPT_HITS);
        buffers.scores.shrink_to(MAX_KEPT_HITS);
        if let Ok(mut pool) = self.0.lock() {
            if pool.len() < MAX_IDLE_BUFFERS {
                pool.push(buffers);
            }
        }
    }

    fn memory_bytes(&self) -> usize {
        self.0
            .lock()
            .map_or(0, |pool| pool.iter().map(Buffers::memory_bytes).sum())
    }
}

/// Grows `slots` to cover `docs` documents.
fn fit<T: Copy + Default>(slots: &mut Vec<T>, docs: usize) {
    if slots.len() < docs {
        slots.resize(docs, T::default());
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
            keys: Keys::default(),
            folded: Dict::default(),
            raw: Dict::default(),
            groups: Vec::new(),
            stems: Dict::default(),
            docs: Vec::new(),
            seqs: Vec::new(),
            dead_seqs: 0,
            live_docs: 0,
            fuzzy: FuzzyDict::default(),
            free_terms: Vec::new(),
            free_groups: Vec::new(),
            migration: None,
            slow_sweep: false,
            buffers: BufferPool::default(),
        }
    }

    /// Makes sweeps of removed versions read one group per write, so tests
    /// see (and query) an index in the middle of one. Not for production use.
    #[doc(hidden)]
    pub fn sweep_one_group_per_write(&mut self) {
        self.slow_sweep = true;
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
        self.remove_version(doc);
        if !fields.is_empty() {
            self.insert_version(doc, fields);
        }
        self.after_write();
    }

    /// Indexes a new version of `doc`, which has none indexed.
    fn insert_version(&mut self, doc: DocId, fields: &[(&str, &str)]) {
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
            self.analyzer.for_each_word_lowered(text, |raw, lowered| {
                counts.len = counts.len.saturating_add(1);
                let Some(lower) = lowered else {
                    counts.folded.entry(Cow::Borrowed(raw)).or_insert((0, 0)).0 += 1;
                    return;
                };
                *counts.raw.entry(raw).or_insert(0) += 1;
                // Looked up by the borrowed form: a copy only for a new word.
                if let Some(e) = counts.folded.get_mut(lower) {
                    e.0 += 1;
                    e.1 += 1;
                    return;
                }
                counts.folded.insert(Cow::Owned(lower.to_string()), (1, 1));
            });
        }

        // A version's postings go into each list field by field, in id order,
        // however the document ordered its fields.
        per_field.sort_by_key(|(field, _)| *field);
        let seq = self.seqs.len() as u32;
        self.seqs.push(doc.0);
        let mut doc_fields: Vec<(FieldId, u32)> = Vec::with_capacity(per_field.len());
        for (field, counts) in &per_field {
            let field = *field;
            doc_fields.push((field, counts.len));
            // A group's postings of one version and field lie together (a
            // stemmed lookup sums them as it reads) in whatever order the
            // words come: only this field of this version appends to any
            // list until the loop moves on to the next field.
            for (folded, &(tf, upper)) in &counts.folded {
                let tid = match self.folded.get(&self.terms, &self.keys, folded) {
                    Some(tid) => tid,
                    None => self.new_folded_term(folded),
                };
                let term = &self.terms[tid as usize];
                let (group, member) = (term.group, term.member);
                let p = Posting {
                    seq,
                    field,
                    tf,
                    upper,
                    member,
                };
                self.push(group, tid, p);
            }
            for (raw, &tf) in &counts.raw {
                let tid = match self.raw.get(&self.terms, &self.keys, raw) {
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
            .folded
            .ids()
            .map(|t| self.keys.get(self.terms[t as usize].key))
            .collect();
        folded.sort_unstable();
        folded.dedup();
        self.fuzzy.end_bulk(&folded);
        for group in &mut self.groups {
            group.postings.shrink_to_fit();
        }
        self.groups.shrink_to_fit();
        self.terms.shrink_to_fit();
        self.keys.shrink_to_fit();
        self.seqs.shrink_to_fit();
    }

    /// Removes `doc`; returns whether it was indexed.
    ///
    /// Its postings stay in their lists, skipped by search (their sequence
    /// number is dead), until a sweep drops them: see [`TextIndex::sweep_step`].
    pub fn remove(&mut self, doc: DocId) -> bool {
        let removed = self.remove_version(doc);
        self.after_write();
        removed
    }

    /// Marks `doc`'s indexed version dead; returns whether it had one.
    fn remove_version(&mut self, doc: DocId) -> bool {
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
        true
    }

    /// Starts a sweep when removed versions outnumber live documents, and
    /// advances the one under way.
    fn after_write(&mut self) {
        if self.migration.is_none() && self.dead_seqs > self.live_docs {
            self.begin_migration();
        }
        self.sweep_step();
        self.compact_keys();
    }

    /// Rewrites the words' text without the freed ones once they outnumber
    /// the live ones (once per doubling, like a vector's growth).
    fn compact_keys(&mut self) {
        if self.keys.wants_compaction() {
            let terms = self.terms.iter_mut().map(|t| &mut t.key);
            let stems = self.groups.iter_mut().map(|g| &mut g.stem);
            self.keys.compact(terms.chain(stems));
        }
    }

    /// Sweeps removed versions out of the lists between writes, reading
    /// about `bytes` of lists (at least one group); returns the bytes read,
    /// 0 when there is nothing to sweep. Writes alone start a sweep once
    /// removed versions outnumber live documents and then sweep a little
    /// each; a caller with idle time (the server, between requests) finishes
    /// that sweep sooner, and starts one already at a quarter, so queries
    /// and memory come back to a clean index's.
    pub fn sweep_removed(&mut self, bytes: usize) -> usize {
        if !self.wants_sweep() {
            return 0;
        }
        if self.migration.is_none() {
            self.begin_migration();
        }
        let read = self.sweep_for(bytes.max(1));
        self.compact_keys();
        read
    }

    /// Whether a sweep of removed versions is under way.
    pub fn sweeping(&self) -> bool {
        self.migration.is_some()
    }

    /// Whether [`TextIndex::sweep_removed`] has work: a sweep under way, or
    /// removed versions reaching a quarter of the live documents.
    pub fn wants_sweep(&self) -> bool {
        self.migration.is_some() || (self.dead_seqs > 0 && self.dead_seqs * 4 >= self.live_docs)
    }

    /// Renumbers the live versions densely (in order) and starts sweeping the
    /// removed ones out of every list. This costs a pass over the sequence
    /// numbers, documents and groups, but reads no posting.
    fn begin_migration(&mut self) {
        let mut renumber = vec![NONE; self.seqs.len()];
        let mut seqs = Vec::with_capacity(self.live_docs + self.live_docs / 2);
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
        let bytes: usize = self
            .groups
            .iter()
            .map(|g| g.postings.len_bytes() + GROUP_SWEEP_BYTES)
            .sum();
        self.migration = Some(Migration {
            renumber,
            next: 0,
            end: self.groups.len() as GroupId,
            split: FxHashMap::default(),
            budget: if self.slow_sweep {
                1
            } else {
                (SWEEP_PACE * bytes / self.live_docs.max(1)).max(MIN_SWEEP_BYTES)
            },
        });
    }

    /// Sweeps the next groups of the migration under way, until `budget`
    /// bytes of lists are read, and ends the migration after the last.
    ///
    /// A migration begins when removed versions reach the live documents
    /// `L`, when the lists hold `B` bytes; sweeping `SWEEP_PACE * B / L`
    /// bytes per write ends it within `L / SWEEP_PACE` writes, in which at
    /// most as many new versions die. So no write rewrites more than a few
    /// documents' worth of the index (and one list), and the lists hold at
    /// most about `2 + 1 / SWEEP_PACE` times their live postings.
    fn sweep_step(&mut self) {
        if let Some(budget) = self.migration.as_ref().map(|m| m.budget) {
            self.sweep_for(budget);
        }
    }

    /// Sweeps the next groups of the migration under way until `budget`
    /// bytes of lists are read; returns the bytes read.
    fn sweep_for(&mut self, budget: usize) -> usize {
        let Some(m) = &self.migration else {
            return 0;
        };
        let end = m.end;
        let mut next = m.next;
        let mut read = 0;
        while read < budget && next < end {
            read += self.sweep(next) + GROUP_SWEEP_BYTES;
            next += 1;
            if let Some(m) = &mut self.migration {
                m.next = next;
            }
        }
        if next >= end {
            self.migration = None;
        }
        read
    }

    /// Rewrites `group`'s list in the new numbering without removed
    /// versions, renumbers its surviving words densely (in order), and frees
    /// the words left with no posting (and the group, when none is left).
    /// Returns the bytes read.
    fn sweep(&mut self, group: GroupId) -> usize {
        let g = &self.groups[group as usize];
        let read = g.postings.len_bytes();
        if g.head == NONE {
            return read;
        }
        let members = self.terms[g.head as usize].member as usize + 1;
        let live = |seq: u32| self.seqs.get(seq as usize).is_some_and(|&d| d != NONE);
        // Old member -> (new member, live postings).
        let mut map = vec![(NONE, 0u32); members];
        for p in self.postings_of(group) {
            if live(p.seq) {
                if let Some(m) = map.get_mut(p.member as usize) {
                    m.1 += 1;
                }
            }
        }
        let mut next = 0;
        for m in &mut map {
            if m.1 > 0 {
                m.0 = next;
                next += 1;
            }
        }
        let mut list = PostingList::with_capacity(read);
        let mut last_seq = 0;
        for p in self.postings_of(group) {
            if live(p.seq) {
                let member = map.get(p.member as usize).map_or(0, |m| m.0);
                list.push(last_seq, Posting { member, ..p });
                last_seq = p.seq;
            }
        }
        list.shrink_to_fit();
        if let Some(m) = &mut self.migration {
            m.split.remove(&group);
        }
        let g = &mut self.groups[group as usize];
        g.postings = list;
        g.last_seq = last_seq;

        // The chain of words without the dead ones.
        let mut at = g.head;
        let mut kept_head = NONE;
        let mut kept_tail: TermId = NONE;
        while at != NONE {
            let term = &mut self.terms[at as usize];
            let following = term.next;
            let (member, count) = map.get(term.member as usize).copied().unwrap_or((NONE, 0));
            if count == 0 {
                if !self.folded.remove(&self.terms, &self.keys, at) {
                    self.raw.remove(&self.terms, &self.keys, at);
                }
                self.keys.release(self.terms[at as usize].key);
                self.terms[at as usize] = Term {
                    key: Key::default(),
                    group: NONE,
                    member: 0,
                    count: 0,
                    next: NONE,
                };
                self.free_terms.push(at);
            } else {
                term.member = member;
                term.count = count;
                term.next = NONE;
                if kept_tail == NONE {
                    kept_head = at;
                } else {
                    self.terms[kept_tail as usize].next = at;
                }
                kept_tail = at;
            }
            at = following;
        }
        self.groups[group as usize].head = kept_head;
        if kept_head == NONE {
            // (A group of one word as written has no stem, and is not there.)
            self.stems.remove(&self.groups, &self.keys, group);
            self.keys.release(self.groups[group as usize].stem);
            self.groups[group as usize] = Group::free();
            self.free_groups.push(group);
        }
        read
    }

    /// The postings of `group`, with sequence numbers in the current
    /// numbering (`NONE` for a version removed before the migration under
    /// way began).
    #[inline]
    fn postings_of(&self, group: GroupId) -> GroupPostings<'_> {
        let list = &self.groups[group as usize].postings;
        let (split, renumber) = match self.migration.as_ref().filter(|m| m.unswept(group)) {
            Some(m) => (
                m.split
                    .get(&group)
                    .map_or(list.len_bytes(), |&at| at as usize),
                m.renumber.as_slice(),
            ),
            None => (0, &[][..]),
        };
        GroupPostings {
            old: list.iter_range(0, split),
            renumber,
            new: list.iter_range(split, usize::MAX),
        }
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
        let g = &mut self.groups[group as usize];
        if let Some(m) = self.migration.as_mut().filter(|m| m.unswept(group)) {
            // The first new-numbered posting of an old-numbered list: the
            // delta chain restarts here.
            m.split.entry(group).or_insert_with(|| {
                g.last_seq = 0;
                g.postings.len_bytes() as u32
            });
        }
        g.push(p);
        let term = &mut self.terms[term as usize];
        term.count = term.count.saturating_add(1);
    }

    fn new_group(&mut self, stem: Option<&str>) -> GroupId {
        let is_stem = stem.is_some();
        let group = Group {
            stem: stem.map_or(Key::default(), |s| self.keys.add(s)),
            ..Group::free()
        };
        let gid = match self.free_groups.pop() {
            Some(gid) => {
                self.groups[gid as usize] = group;
                gid
            }
            None => {
                self.groups.push(group);
                (self.groups.len() - 1) as GroupId
            }
        };
        if is_stem {
            self.stems.insert(&self.groups, &self.keys, gid);
        }
        gid
    }

    /// Adds `key` to `group` as its next word.
    fn new_term(&mut self, key: &str, group: GroupId) -> TermId {
        let head = self.groups[group as usize].head;
        let term = Term {
            key: self.keys.add(key),
            group,
            member: self.terms.get(head as usize).map_or(0, |t| t.member + 1),
            count: 0,
            next: head,
        };
        let tid = match self.free_terms.pop() {
            Some(tid) => {
                self.terms[tid as usize] = term;
                tid
            }
            None => {
                self.terms.push(term);
                (self.terms.len() - 1) as TermId
            }
        };
        self.groups[group as usize].head = tid;
        tid
    }

    /// Adds a folded word to the dictionary, its stem group and the typo and
    /// prefix dictionary. Stemming is the costliest step of indexing: it runs
    /// once per distinct word, here.
    fn new_folded_term(&mut self, key: &str) -> TermId {
        let group = if self.analyzer.language().is_some() {
            let stem = self.analyzer.stem(key);
            match self.stems.get(&self.groups, &self.keys, &stem) {
                Some(gid) => gid,
                None => self.new_group(Some(&stem)),
            }
        } else {
            self.new_group(None)
        };
        let tid = self.new_term(key, group);
        self.folded.insert(&self.terms, &self.keys, tid);
        let (folded, terms, keys) = (&self.folded, &self.terms, &self.keys);
        self.fuzzy
            .insert(key, &|t| folded.get(terms, keys, t).is_some());
        tid
    }

    fn new_raw_term(&mut self, key: &str) -> TermId {
        let group = self.new_group(None);
        let tid = self.new_term(key, group);
        self.raw.insert(&self.terms, &self.keys, tid);
        tid
    }

    /// True when `entry` has a posting of a live document version.
    fn is_live(&self, entry: &Entry) -> bool {
        if self.dead_seqs == 0 && self.migration.is_none() {
            // Every posting is live, and every word has one.
            return !self.groups[entry.group as usize].postings.is_empty();
        }
        if entry.member.is_none() && self.last_posting_live(entry.group) {
            // The common answer, without reading the list.
            return true;
        }
        self.postings_of(entry.group).any(|p| {
            entry.member.is_none_or(|m| p.member == m)
                && self.seqs.get(p.seq as usize).is_some_and(|&d| d != NONE)
        })
    }

    /// True when the last posting appended to `group` is of a live version.
    fn last_posting_live(&self, group: GroupId) -> bool {
        let g = &self.groups[group as usize];
        if g.postings.is_empty() {
            return false;
        }
        let mut seq = g.last_seq;
        if let Some(m) = self.migration.as_ref().filter(|m| m.unswept(group)) {
            if !m.split.contains_key(&group) {
                seq = m.renumber.get(seq as usize).copied().unwrap_or(NONE);
            }
        }
        self.seqs.get(seq as usize).is_some_and(|&d| d != NONE)
    }

    /// The entry reading `term`'s postings.
    fn word(&self, term: TermId, kind: Match) -> Entry {
        let t = &self.terms[term as usize];
        let alone = t.next == NONE && self.groups[t.group as usize].head == term;
        Entry::new(t.group, (!alone).then_some(t.member), kind)
    }

    /// Approximate heap memory of the index in bytes (capacities, not lengths).
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let terms = self.keys.memory_bytes() + self.terms.capacity() * size_of::<Term>();
        let groups: usize = self
            .groups
            .iter()
            .map(|g| g.postings.capacity())
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
        let sweep = self.migration.as_ref().map_or(0, |m| {
            m.renumber.capacity() * size_of::<u32>() + m.split.capacity() * 9
        }) + (self.free_terms.capacity() + self.free_groups.capacity()) * 4;
        let map_entry = size_of::<(Box<str>, FieldId)>() + 1;
        let fields: usize = self
            .fields
            .iter()
            .map(|f| f.name.len() * 2 + f.lens.capacity() * 4 + size_of::<Field>() + map_entry)
            .sum();
        terms
            + groups
            + dicts
            + docs
            + fields
            + sweep
            + self.fuzzy.memory_bytes()
            + self.buffers.memory_bytes()
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
        let mut buffers = self.buffers.take();
        match query.scoring {
            Scoring::Bm25 => self.bm25_scores(&plan, &mut buffers),
            Scoring::EkoDb => self.ekodb_scores(&plan, &mut buffers),
        }
        // The best `limit` in a heap whose top is the worst kept: most
        // documents are turned away by one comparison.
        let scores = &buffers.scores;
        let mut best: BinaryHeap<Ranked> = BinaryHeap::with_capacity(query.limit.min(scores.len()));
        let mut total = 0;
        for &(doc, score) in scores {
            if score.is_nan() || score <= 0.0 || min_score.is_some_and(|m| score < m) {
                continue;
            }
            if !accept(DocId(doc)) {
                continue;
            }
            total += 1;
            let hit = Ranked { score, doc };
            if best.len() < query.limit {
                best.push(hit);
            } else if let Some(mut worst) = best.peek_mut() {
                if hit < *worst {
                    *worst = hit;
                }
            }
        }
        let scored = best.into_sorted_vec();
        let hits = scored
            .into_iter()
            .map(|Ranked { score, doc }| TextHit {
                doc: DocId(doc),
                score,
                matched_fields: self.field_names(buffers.fields_of(doc, query.scoring)),
            })
            .collect();
        self.buffers.give_back(buffers);
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

    /// Passes `sink` the live postings of `entry` in the fields the plan
    /// searches, one per (document, field) with the tfs of a stem group's
    /// words summed, in document order; and counts the entry's document
    /// frequency per field into `df`. The case-sensitive lowercase entry
    /// subtracts the non-lowercase spellings from each tf (a posting left with
    /// none is not passed on, but still counts in the document frequency).
    fn gather(
        &self,
        entry: &Entry,
        fields: &[FieldPlan],
        df: &mut Vec<u32>,
        sink: impl FnMut(Hit),
    ) {
        df.clear();
        df.resize(fields.len(), 0);
        // Outside a migration the list is read directly: the loop is
        // compiled once for each kind of iterator.
        if self.migration.is_none() {
            let list = &self.groups[entry.group as usize].postings;
            self.gather_from(list.iter_range(0, usize::MAX), entry, fields, df, sink);
        } else {
            self.gather_from(self.postings_of(entry.group), entry, fields, df, sink);
        }
    }

    #[inline(always)]
    fn gather_from(
        &self,
        postings: impl Iterator<Item = Posting>,
        entry: &Entry,
        fields: &[FieldPlan],
        df: &mut [u32],
        mut sink: impl FnMut(Hit),
    ) {
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
                sink(Hit {
                    doc,
                    field: p.field,
                    tf: tf as f32,
                });
            }
        };
        // A stem group's words' postings of one (version, field) lie
        // together: they are summed as they come.
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
        for p in postings {
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

    /// BM25 scores of every document matching a word of `plan`, into
    /// `buffers.scores`.
    fn bm25_scores(&self, plan: &Plan, buffers: &mut Buffers) {
        let Buffers {
            bm25: slots,
            scratch,
            scores,
            word_docs,
            high_fields,
            ..
        } = buffers;
        fit(slots, self.docs.len());
        // Documents in the order first matched.
        let touched = scores;
        for word in &plan.words {
            for entry in &word.entries {
                let Scratch { hits, df } = &mut *scratch;
                hits.clear();
                hits.reserve(self.groups[entry.group as usize].postings.max_len());
                self.gather(entry, &plan.fields, df, |h| hits.push(h));
                let (hits, df) = (&*hits, &*df);
                let additive = entry.additive;
                let mut add = |slots: &mut [Bm25Slot], doc: u32, s: f32| {
                    let slot = &mut slots[doc as usize].word;
                    if *slot == 0.0 {
                        word_docs.push(doc);
                    }
                    if additive {
                        *slot += s;
                    } else if s > *slot {
                        *slot = s;
                    }
                };
                // Per-field constants: idf * weight * mult * (k1 + 1), the
                // norm terms, and the field's lengths.
                let consts: Vec<(f32, f32, f32, &[u32])> = plan
                    .fields
                    .iter()
                    .zip(df)
                    .map(|(fp, &df)| {
                        if df == 0 {
                            return (0.0, 0.0, 0.0, fp.lens);
                        }
                        let (df, n) = (df as f32, fp.docs as f32);
                        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                        (
                            idf * fp.coef * entry.mult * (BM25_K1 + 1.0),
                            BM25_K1 * (1.0 - BM25_B),
                            BM25_K1 * BM25_B / fp.avg_len,
                            fp.lens,
                        )
                    })
                    .collect();
                let mut current: Option<(u32, f32)> = None;
                for h in hits {
                    let (c, a, b, lens) = consts[h.field as usize];
                    let len = lens.get(h.doc as usize).copied().unwrap_or(0) as f32;
                    let s = c * h.tf / (h.tf + a + b * len);
                    // Only a field that adds to the score counts as matched
                    // (so every document marked is in `add`'s list).
                    if s > 0.0 {
                        if h.field < 32 {
                            slots[h.doc as usize].fields |= 1 << h.field;
                        } else {
                            high_fields.insert((h.doc, h.field));
                        }
                    }
                    match &mut current {
                        Some((doc, sum)) if *doc == h.doc => *sum += s,
                        _ => {
                            if let Some((doc, sum)) = current {
                                add(slots, doc, sum);
                            }
                            current = Some((h.doc, s));
                        }
                    }
                }
                if let Some((doc, sum)) = current {
                    add(slots, doc, sum);
                }
            }
            for doc in word_docs.drain(..) {
                let slot = &mut slots[doc as usize];
                if slot.matched == 0 {
                    touched.push((doc, 0.0));
                }
                slot.total += slot.word;
                slot.matched = slot.matched.saturating_add(1);
                slot.word = 0.0;
            }
        }
        let words = plan.words.len() as f32;
        for (doc, score) in touched.iter_mut() {
            let slot = &slots[*doc as usize];
            *score = slot.total * f32::from(slot.matched) / words;
        }
    }

    /// ekoDB-rule scores (module documentation) of every document matching a
    /// word of `plan`, into `buffers.scores`.
    ///
    /// A word adds, for each field of a document, its strongest match there:
    /// its entries are read strongest first, and a (document, field) pair
    /// already counted for this word is skipped (a per-document bit set of the
    /// first 32 fields, a hash set beyond). Sums are f64, rounded once at the
    /// end, so 6.6 + 6.6 reads 13.2 (as ekoDB's scores do), not 13.200001.
    fn ekodb_scores(&self, plan: &Plan, buffers: &mut Buffers) {
        let n: u32 = plan.words.iter().map(|w| w.count).sum();
        let Buffers {
            eko: slots,
            scratch,
            scores,
            high_fields,
            high_seen,
            ..
        } = buffers;
        fit(slots, self.docs.len());
        // Documents in the order first matched.
        let touched = scores;
        let mut order: Vec<(f64, &Entry)> = Vec::new();
        for (w, word) in plan.words.iter().enumerate() {
            let stamp = w as u32 + 1;
            high_seen.clear();
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
                let weights = &plan.fields;
                // The ekoDB rule needs no document frequency: postings are
                // scored as they are read.
                self.gather(entry, weights, &mut scratch.df, |h| {
                    let slot = &mut slots[h.doc as usize];
                    let first = if h.field < 32 {
                        if slot.word != stamp {
                            slot.word = stamp;
                            slot.seen = 0;
                        }
                        let bit = 1u32 << h.field;
                        slot.fields |= bit;
                        let new = slot.seen & bit == 0;
                        slot.seen |= bit;
                        new
                    } else {
                        high_fields.insert((h.doc, h.field));
                        high_seen.insert((h.doc, h.field))
                    };
                    if first {
                        if slot.total == 0.0 {
                            touched.push((h.doc, 0.0));
                        }
                        let weight = f64::from(weights[h.field as usize].coef);
                        slot.total += weight * per_field;
                    }
                });
            }
        }
        for (doc, score) in touched.iter_mut() {
            *score = slots[*doc as usize].total as f32;
        }
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
            let t = self.folded.get(&self.terms, &self.keys, key)?;
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
                    if let Some(t) = self.raw.get(&self.terms, &self.keys, raw) {
                        entries.push(self.word(t, Match::Exact));
                    }
                } else if let Some(t) = self.folded.get(&self.terms, &self.keys, raw) {
                    let mut e = self.word(t, Match::Exact);
                    e.minus = true;
                    entries.push(e);
                }
            } else {
                // The word's stem group (stemming) or the word itself.
                let stem = stemming
                    .then(|| {
                        let stem = self.analyzer.stem(&folded);
                        self.stems.get(&self.groups, &self.keys, &stem)
                    })
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
                .get(&self.terms, &self.keys, term)
                .filter(|&t| self.is_live(&self.word(t, Match::Prefix)));
            found.extend(tid);
            tid.is_some()
        });
        found.sort_unstable();
        found.dedup();
        found.retain(|&tid| stem.is_none_or(|s| self.terms[tid as usize].group != s));
        found.sort_unstable_by(|&a, &b| {
            let (ta, tb) = (&self.terms[a as usize], &self.terms[b as usize]);
            tb.count
                .cmp(&ta.count)
                .then(self.keys.get(ta.key).cmp(self.keys.get(tb.key)))
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
            if let Some(tid) = self.folded.get(&self.terms, &self.keys, term) {
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
                .then(self.keys.get(ta.key).cmp(self.keys.get(tb.key)))
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
