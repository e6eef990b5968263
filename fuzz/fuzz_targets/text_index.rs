//! Fuzzer-chosen upserts, removals and searches against a `TextIndex`, one
//! that sweeps removed versions at its normal pace or one group per write (so
//! searches land in the middle of sweeps).
//!
//! Input: a flags byte (bit 0: sweep one group per write; bit 1: English
//! stemming), then operations until the input ends, each an opcode byte:
//! - `op % 4 == 0 | 1`: upsert `doc = next % 16` with `next % 4` fields, each
//!   a name byte (`% 5`, one of them non-ASCII) and a text (a length byte
//!   `% 48`, then that many bytes, read as lossy UTF-8);
//! - `op % 4 == 2`: remove `doc = next % 16`;
//! - `op % 4 == 3`: search: a text as above, an options byte (fuzzy, prefix,
//!   case-sensitive, stemming off, ekoDB scores, boost_exact, a field
//!   restriction, a min_score), an edit distance byte (`% 4`: 3 must be
//!   refused) and a limit byte.
//!
//! Nothing panics; the index holds exactly the documents upserted with fields
//! and not removed since; a search returns only those, at most `limit`,
//! each once, with finite positive scores in descending order, and `total`
//! is at least the hits returned.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use tidepool_search::{Analyzer, DocId, Language, Scoring, TextIndex, TextQuery};

const FIELDS: [&str; 5] = ["title", "body", "tags", "nóte", "x"];

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn text(&mut self) -> Option<String> {
        let len = usize::from(self.byte()? % 48).min(self.0.len());
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(String::from_utf8_lossy(text).into_owned())
    }
}

fn run(data: &[u8]) -> Option<()> {
    let mut input = Input(data);
    let flags = input.byte()?;
    let language = (flags & 2 != 0).then_some(Language::ENGLISH);
    let mut ix = TextIndex::new(Analyzer::new(language));
    if flags & 1 != 0 {
        ix.sweep_one_group_per_write();
    }
    let mut live: BTreeSet<u32> = BTreeSet::new();
    while let Some(op) = input.byte() {
        match op % 4 {
            0 | 1 => {
                let doc = u32::from(input.byte()? % 16);
                let mut fields = Vec::new();
                for _ in 0..input.byte()? % 4 {
                    let name = FIELDS[usize::from(input.byte()? % 5)];
                    fields.push((name, input.text()?));
                }
                let pairs: Vec<(&str, &str)> = fields.iter().map(|(f, t)| (*f, t.as_str())).collect();
                ix.upsert(DocId(doc), &pairs);
                if pairs.is_empty() {
                    live.remove(&doc);
                } else {
                    live.insert(doc);
                }
            }
            2 => {
                let doc = u32::from(input.byte()? % 16);
                assert_eq!(ix.remove(DocId(doc)), live.remove(&doc));
            }
            _ => {
                let mut q = TextQuery::new(input.text()?);
                let options = input.byte()?;
                q.fuzzy = options & 1 != 0;
                q.prefix = options & 2 != 0;
                q.case_sensitive = options & 4 != 0;
                q.stemming = options & 8 == 0;
                if options & 16 != 0 {
                    q.scoring = Scoring::EkoDb;
                }
                q.boost_exact = options & 32 != 0;
                if options & 64 != 0 {
                    q.fields = Some(vec!["title".into(), "nóte".into()]);
                }
                if options & 128 != 0 {
                    q.min_score = Some(0.3);
                }
                q.max_edit_distance = input.byte()? % 4;
                q.limit = usize::from(input.byte()? % 20);
                match ix.search(&q, &|_| true) {
                    Err(_) => assert_eq!(q.max_edit_distance, 3),
                    Ok(r) => {
                        assert!(q.max_edit_distance < 3);
                        assert!(r.hits.len() <= q.limit && r.hits.len() <= r.total);
                        let mut seen = BTreeSet::new();
                        for h in &r.hits {
                            assert!(live.contains(&h.doc.0), "removed doc {} found", h.doc.0);
                            assert!(seen.insert(h.doc.0), "doc {} twice", h.doc.0);
                            assert!(h.score.is_finite() && h.score > 0.0, "score {}", h.score);
                        }
                        assert!(r.hits.windows(2).all(|w| w[0].score >= w[1].score));
                    }
                }
            }
        }
        assert_eq!(ix.len(), live.len());
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    run(data);
});
