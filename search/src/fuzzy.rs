//! Typo-tolerant term lookup: a Levenshtein automaton driven over an fst.
//!
//! The folded terms of a [`crate::TextIndex`] are kept in a small stack of immutable
//! `fst::Set`s plus a tiny sorted buffer of recent terms (the "logarithmic method"):
//! new terms go to the buffer; a full buffer becomes a new fst; an fst at least half
//! the size of the one below it is merged into it. So there are O(log n) sets whose
//! sizes at least double going down, and each term is rewritten O(log n) times in
//! total. Terms that have died (no live posting left) are dropped at merges.
//!
//! A merge runs a few keys at a time, as the next new terms arrive, so no insert
//! pays for rewriting the whole dictionary: the sets being merged stay
//! searchable until the merged one is complete, and it completes before the
//! buffer fills again.
//!
//! A lookup builds the Schulz–Mihov DFA of the query word for the wanted distance
//! (`levenshtein_automata`, transpositions cost 1) and intersects it with each fst:
//! the walk only enters prefixes from which the DFA can still accept, so its cost
//! depends on the number of near prefixes, not on the dictionary size. The buffer
//! (at most [`BUFFER_TERMS`] terms) is checked by running the same DFA on each term.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use fst::set::OpBuilder;
use fst::{IntoStreamer, Set, SetBuilder, Streamer};
use levenshtein_automata::{Distance, LevenshteinAutomatonBuilder, DFA, SINK_STATE};

/// Recent terms kept outside the fsts.
pub(crate) const BUFFER_TERMS: usize = 2048;

/// A merge reads at least this many keys per new term.
const MIN_MERGE_KEYS: usize = 64;

/// The DFA builder for `distance` (1 or 2). Building one takes a few milliseconds,
/// so each is built once per process and shared (it is immutable).
fn builder(distance: u8) -> &'static LevenshteinAutomatonBuilder {
    static ONE: OnceLock<LevenshteinAutomatonBuilder> = OnceLock::new();
    static TWO: OnceLock<LevenshteinAutomatonBuilder> = OnceLock::new();
    if distance <= 1 {
        ONE.get_or_init(|| LevenshteinAutomatonBuilder::new(1, true))
    } else {
        TWO.get_or_init(|| LevenshteinAutomatonBuilder::new(2, true))
    }
}

/// Adapts a Levenshtein DFA to fst's `Automaton` trait.
struct Lev<'a>(&'a DFA);

impl fst::Automaton for Lev<'_> {
    type State = u32;
    fn start(&self) -> u32 {
        self.0.initial_state()
    }
    fn is_match(&self, state: &u32) -> bool {
        matches!(self.0.distance(*state), Distance::Exact(_))
    }
    fn can_match(&self, state: &u32) -> bool {
        *state != SINK_STATE
    }
    fn accept(&self, state: &u32, byte: u8) -> u32 {
        self.0.transition(*state, byte)
    }
}

fn distance_of(dfa: &DFA, state: u32) -> Option<u8> {
    match dfa.distance(state) {
        Distance::Exact(d) => Some(d),
        Distance::AtLeast(_) => None,
    }
}

#[derive(Default)]
pub(crate) struct FuzzyDict {
    /// Sizes at least double from the last to the first.
    levels: Vec<Set<Vec<u8>>>,
    /// The merge under way, whose result goes below the last level.
    merging: Option<Merge>,
    buffer: BTreeSet<Box<str>>,
    /// A bulk load is under way: nothing is recorded until
    /// [`FuzzyDict::end_bulk`] is given every term.
    bulk: bool,
}

/// A merge of the last levels and a flushed buffer, a few keys at a time.
struct Merge {
    /// The sets being merged, searched as levels until the merge ends.
    inputs: Vec<Set<Vec<u8>>>,
    out: SetBuilder<Vec<u8>>,
    /// The last key read from `inputs`.
    after: Option<Vec<u8>>,
    /// Keys read per step: the merge ends within `BUFFER_TERMS / 2` steps.
    pace: usize,
}

impl FuzzyDict {
    /// Records a term that has just come to life. `is_live` tells, at merge time,
    /// which older terms still have postings.
    pub(crate) fn insert(&mut self, term: &str, is_live: &dyn Fn(&str) -> bool) {
        if self.bulk {
            return;
        }
        self.buffer.insert(term.into());
        self.merge_step(is_live);
        if self.buffer.len() >= BUFFER_TERMS {
            self.flush(is_live);
        }
    }

    /// Starts a bulk load: new terms are not recorded one by one;
    /// [`FuzzyDict::end_bulk`] writes them all at once.
    pub(crate) fn begin_bulk(&mut self) {
        self.bulk = true;
    }

    /// Ends a bulk load: `terms` (every term, sorted and unique) replace what
    /// was recorded, written as one fst.
    pub(crate) fn end_bulk(&mut self, terms: &[&str]) {
        self.bulk = false;
        let mut set = SetBuilder::memory();
        let written = terms.iter().all(|t| set.insert(t.as_bytes()).is_ok());
        let set = set.into_inner().ok().filter(|_| written);
        self.merging = None;
        match set.and_then(|bytes| Set::new(bytes).ok()) {
            Some(set) => {
                self.levels = vec![set];
                self.buffer.clear();
            }
            // Cannot happen (the terms are sorted and unique); keep every
            // term findable anyway.
            None => {
                self.levels.clear();
                self.buffer = terms.iter().map(|&t| t.into()).collect();
            }
        }
    }

    /// Writes the buffer as a new set and starts merging it with the last
    /// levels that are at most twice its size (their sum, as it grows).
    fn flush(&mut self, is_live: &dyn Fn(&str) -> bool) {
        // Cannot normally happen: a merge ends within half a buffer of inserts.
        while self.merging.is_some() {
            self.merge_step(is_live);
        }
        let mut fresh = SetBuilder::memory();
        for term in &self.buffer {
            if is_live(term) && fresh.insert(term.as_bytes()).is_err() {
                return; // cannot happen: the buffer is sorted and unique
            }
        }
        let Ok(bytes) = fresh.into_inner() else {
            return;
        };
        let Ok(top) = Set::new(bytes) else { return };
        self.buffer.clear();
        let mut size = top.len();
        let mut joining = 0;
        for below in self.levels.iter().rev() {
            if below.len() > 2 * size {
                break;
            }
            size += below.len();
            joining += 1;
        }
        if joining == 0 {
            self.levels.push(top);
            return;
        }
        let mut inputs = self.levels.split_off(self.levels.len() - joining);
        inputs.push(top);
        self.merging = Some(Merge {
            inputs,
            out: SetBuilder::memory(),
            after: None,
            pace: size.div_ceil(BUFFER_TERMS / 2).max(MIN_MERGE_KEYS),
        });
        self.merge_step(is_live);
    }

    /// Reads the next `pace` keys of the merge under way (keeping the live
    /// ones), and installs the merged set after the last.
    fn merge_step(&mut self, is_live: &dyn Fn(&str) -> bool) {
        let Some(Merge {
            inputs,
            out,
            after,
            pace,
        }) = &mut self.merging
        else {
            return;
        };
        let mut union = match after {
            None => inputs.iter().collect::<OpBuilder>().union(),
            Some(key) => inputs
                .iter()
                .map(|set| set.range().gt(&*key))
                .collect::<OpBuilder>()
                .union(),
        };
        let mut read = 0;
        let mut more = false;
        let mut failed = false;
        while let Some(key) = union.next() {
            let live = std::str::from_utf8(key).is_ok_and(is_live);
            if live && out.insert(key).is_err() {
                failed = true; // cannot happen: a union stream is sorted and unique
                break;
            }
            read += 1;
            if read >= *pace {
                *after = Some(key.to_vec());
                more = true;
                break;
            }
        }
        drop(union);
        if more && !failed {
            return;
        }
        let Some(merge) = self.merging.take() else {
            return;
        };
        let merged = if failed {
            None
        } else {
            merge.out.into_inner().ok().and_then(|b| Set::new(b).ok())
        };
        match merged {
            Some(set) => self.levels.push(set),
            // Keep every term findable.
            None => self.levels.extend(merge.inputs),
        }
    }

    /// The sets to search: the levels and those being merged.
    fn sets(&self) -> impl Iterator<Item = &Set<Vec<u8>>> {
        let merging = self.merging.as_ref().map(|m| m.inputs.as_slice());
        self.levels.iter().chain(merging.unwrap_or_default())
    }

    /// Calls `f(term, distance)` for every recorded term within `max_distance`
    /// (1 or 2) of `word`, the word itself included. A term may be reported more
    /// than once (it can sit in two sets after dying and coming back) and dead terms
    /// may be reported: the caller checks the term table.
    pub(crate) fn lookup(&self, word: &str, max_distance: u8, f: &mut dyn FnMut(&str, u8)) {
        if max_distance == 0 {
            return;
        }
        let dfa = builder(max_distance).build_dfa(word);
        for set in self.sets() {
            let mut stream = set.search_with_state(Lev(&dfa)).into_stream();
            while let Some((key, state)) = stream.next() {
                if let (Ok(term), Some(d)) = (std::str::from_utf8(key), distance_of(&dfa, state)) {
                    f(term, d);
                }
            }
        }
        for term in &self.buffer {
            let mut state = dfa.initial_state();
            for &b in term.as_bytes() {
                state = dfa.transition(state, b);
                if state == SINK_STATE {
                    break;
                }
            }
            if let Some(d) = distance_of(&dfa, state) {
                f(term, d);
            }
        }
    }

    /// Calls `f(term)` for every recorded term that starts with `prefix` and is
    /// longer than it, until `f` has returned true `max_terms` times (a prefix
    /// of one or two letters can name a large part of the dictionary), or
    /// `4 * max_terms` terms were read. Like [`FuzzyDict::lookup`], a term may
    /// repeat and dead terms may be reported: `f` returns whether the term
    /// counts (is live).
    pub(crate) fn prefixed(&self, prefix: &str, max_terms: usize, f: &mut dyn FnMut(&str) -> bool) {
        use fst::automaton::{Automaton, Str};
        let mut left = max_terms;
        let mut reads = max_terms.saturating_mul(4);
        for set in self.sets() {
            let mut stream = set.search(Str::new(prefix).starts_with()).into_stream();
            while let Some(key) = stream.next() {
                if left == 0 || reads == 0 {
                    return;
                }
                reads -= 1;
                if let Ok(term) = std::str::from_utf8(key) {
                    if term.len() > prefix.len() && f(term) {
                        left -= 1;
                    }
                }
            }
        }
        let after = self.buffer.range::<str, _>((
            std::ops::Bound::Excluded(prefix),
            std::ops::Bound::Unbounded,
        ));
        for term in after.take_while(|t| t.starts_with(prefix)) {
            if left == 0 || reads == 0 {
                return;
            }
            reads -= 1;
            if f(term) {
                left -= 1;
            }
        }
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        let sets: usize = self.sets().map(|s| s.as_fst().as_bytes().len()).sum();
        let merged = self
            .merging
            .as_ref()
            .map_or(0, |m| m.out.bytes_written() as usize);
        // A BTreeSet entry: the boxed str (16 bytes + heap) plus node overhead.
        let buffer: usize = self.buffer.iter().map(|t| t.len() + 32).sum();
        sets + merged + buffer + self.levels.capacity() * std::mem::size_of::<Set<Vec<u8>>>()
    }

    #[cfg(test)]
    pub(crate) fn level_sizes(&self) -> Vec<usize> {
        self.levels.iter().map(|s| s.len()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn lookup(dict: &FuzzyDict, word: &str, d: u8) -> BTreeMap<String, u8> {
        let mut out = BTreeMap::new();
        dict.lookup(word, d, &mut |t, dist| {
            out.insert(t.to_string(), dist);
        });
        out
    }

    #[test]
    fn finds_terms_within_distance_across_levels_and_buffer() {
        let mut dict = FuzzyDict::default();
        let live = |_: &str| true;
        for i in 0..BUFFER_TERMS * 4 {
            dict.insert(&format!("w{i:05}"), &live);
        }
        for t in ["engineer", "engine", "engines", "enginr", "banana"] {
            dict.insert(t, &live);
        }
        let sizes = dict.level_sizes();
        assert!(sizes.len() >= 2, "{sizes:?}");
        assert!(sizes.windows(2).all(|w| w[0] > w[1]), "{sizes:?}");
        let got = lookup(&dict, "enginer", 2);
        let want: BTreeMap<String, u8> = [
            ("engineer", 1),
            ("engine", 1),
            ("engines", 1),
            ("enginr", 1),
        ]
        .into_iter()
        .map(|(t, d)| (t.to_string(), d))
        .collect();
        assert_eq!(got, want);
        assert_eq!(lookup(&dict, "enginer", 1).len(), 4);
        assert_eq!(lookup(&dict, "enginee", 2).get("engines"), Some(&1));
        assert_eq!(lookup(&dict, "engnee", 2).get("engineer"), Some(&2));
        assert!(lookup(&dict, "enginer", 0).is_empty());
        // Transposition counts as one edit.
        assert_eq!(lookup(&dict, "enigne", 1).get("engine"), Some(&1));
        assert_eq!(lookup(&dict, "w00042", 1).get("w00042"), Some(&0));
    }

    #[test]
    fn prefixed_finds_longer_terms_across_levels_and_buffer_up_to_a_cap() {
        let mut dict = FuzzyDict::default();
        let live = |_: &str| true;
        for i in 0..BUFFER_TERMS * 2 {
            dict.insert(&format!("w{i:05}"), &live);
        }
        for t in ["john", "johnson", "johnny", "jo", "joan", "bob"] {
            dict.insert(t, &live);
        }
        let collect = |prefix: &str, cap: usize| {
            let mut out = Vec::new();
            dict.prefixed(prefix, cap, &mut |t| {
                out.push(t.to_string());
                true
            });
            out.sort();
            out
        };
        assert_eq!(collect("john", 100), ["johnny", "johnson"]);
        assert_eq!(collect("jo", 100), ["joan", "john", "johnny", "johnson"]);
        assert_eq!(collect("w0199", 100).len(), 10, "found in the fsts");
        assert_eq!(collect("w", 25).len(), 25, "capped");
        assert!(collect("x", 100).is_empty());
    }

    #[test]
    fn a_prefix_walk_over_dead_terms_is_bounded_too() {
        let mut dict = FuzzyDict::default();
        for i in 0..BUFFER_TERMS * 4 {
            dict.insert(&format!("ab{i:05}"), &|_| true);
        }
        let mut read = 0;
        dict.prefixed("ab", 10, &mut |_| {
            read += 1;
            false // all dead
        });
        assert_eq!(read, 40);
    }

    #[test]
    fn terms_stay_findable_while_a_merge_runs_and_it_ends_before_the_next_flush() {
        let mut dict = FuzzyDict::default();
        let live = |_: &str| true;
        let mut saw_merge = false;
        for i in 0..BUFFER_TERMS * 6 {
            dict.insert(&format!("m{i:05}"), &live);
            saw_merge |= dict.merging.is_some();
            if dict.buffer.len() == BUFFER_TERMS - 1 {
                assert!(dict.merging.is_none(), "still merging at insert {i}");
            }
            for probe in [0, i / 2, i] {
                let word = format!("m{probe:05}");
                assert_eq!(
                    lookup(&dict, &word, 1).get(&word),
                    Some(&0),
                    "{word} at {i}"
                );
            }
        }
        assert!(saw_merge);
        let total: usize = dict.level_sizes().iter().sum::<usize>() + dict.buffer.len();
        assert_eq!(total, BUFFER_TERMS * 6);
    }

    #[test]
    fn dead_terms_are_dropped_at_merges() {
        let mut dict = FuzzyDict::default();
        for i in 0..BUFFER_TERMS * 4 {
            dict.insert(&format!("t{i:05}"), &|t: &str| !t.ends_with('7'));
        }
        let total: usize = dict.level_sizes().iter().sum();
        assert!(total < BUFFER_TERMS * 4, "{total}");
    }
}
