//! Full-text index: ranking with known answers, query options, updates, edge cases.

use tidepool_search::{Analyzer, DocId, Language, Scoring, TextError, TextIndex, TextQuery};

fn index(docs: &[&[(&str, &str)]]) -> TextIndex {
    let mut ix = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
    for (i, fields) in docs.iter().enumerate() {
        ix.upsert(DocId(i as u32), fields);
    }
    ix
}

fn ids(ix: &TextIndex, q: &TextQuery) -> Vec<u32> {
    ix.search(q, &|_| true)
        .unwrap()
        .hits
        .iter()
        .map(|h| h.doc.0)
        .collect()
}

/// Runs `query` (plain options) and checks the ranked doc ids.
fn check(ix: &TextIndex, query: &str, expect: &[u32]) {
    assert_eq!(ids(ix, &TextQuery::new(query)), expect, "query {query:?}");
}

fn fuzzy(query: &str, distance: u8) -> TextQuery {
    let mut q = TextQuery::new(query);
    q.fuzzy = true;
    q.max_edit_distance = distance;
    q
}

const FILLER: &str = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu";

#[test]
fn more_mentions_rank_first() {
    let ix = index(&[
        &[("body", "the kernel scheduler and more words here to pad")],
        &[("body", "kernel kernel kernel scheduler and more words here")],
        &[("body", "nothing relevant at all in this one")],
    ]);
    check(&ix, "kernel", &[1, 0]);
}

#[test]
fn shorter_field_ranks_first() {
    let long = format!("kernel {FILLER} {FILLER}");
    let ix = index(&[&[("body", long.as_str())], &[("body", "kernel module")]]);
    check(&ix, "kernel", &[1, 0]);
}

#[test]
fn weighted_field_ranks_first() {
    let ix = index(&[
        &[("title", "networking"), ("body", "kernel")],
        &[("title", "kernel"), ("body", "networking")],
    ]);
    // Same statistics in both fields: unweighted, the tie is broken by doc id.
    check(&ix, "kernel", &[0, 1]);
    let mut q = TextQuery::new("kernel");
    q.weights = vec![("title".into(), 2.5), ("body".into(), 1.0)];
    assert_eq!(ids(&ix, &q), [1, 0]);
    q.weights = vec![("body".into(), 3.0)];
    assert_eq!(ids(&ix, &q), [0, 1]);
}

#[test]
fn fields_restriction_and_matched_fields() {
    let ix = index(&[
        &[("title", "kernel"), ("body", "kernel networking")],
        &[("title", "networking"), ("body", "user space")],
    ]);
    let r = ix
        .search(&TextQuery::new("kernel networking"), &|_| true)
        .unwrap();
    assert_eq!(r.hits[0].matched_fields, ["body", "title"]);
    assert_eq!(r.hits[1].matched_fields, ["title"]);
    let mut q = TextQuery::new("kernel networking");
    q.fields = Some(vec!["body".into()]);
    let r = ix.search(&q, &|_| true).unwrap();
    assert_eq!(r.hits.len(), 1);
    assert_eq!(r.hits[0].matched_fields, ["body"]);
    q.fields = Some(vec!["nope".into()]);
    assert!(ids(&ix, &q).is_empty());
    // A zero or negative weight excludes the field.
    let mut q = TextQuery::new("networking");
    q.weights = vec![("title".into(), 0.0)];
    assert_eq!(ids(&ix, &q), [0]);
}

#[test]
fn more_query_terms_matched_rank_higher() {
    let ix = index(&[
        &[("body", "rust rust rust rust rust")],
        &[("body", "rust database")],
        &[("body", "database database database")],
        &[("body", "unrelated words")],
    ]);
    let r = ix
        .search(&TextQuery::new("rust database"), &|_| true)
        .unwrap();
    assert_eq!(r.hits[0].doc, DocId(1));
    assert_eq!(r.total, 3);
}

#[test]
fn stemming_matches_other_forms() {
    let ix = index(&[
        &[("body", "the runner was running")],
        &[("body", "runs daily")],
        &[("body", "ran")],
    ]);
    // Doc 1 is shorter.
    check(&ix, "run", &[1, 0]);
    let mut q = TextQuery::new("runs");
    q.stemming = false;
    assert_eq!(ids(&ix, &q), [1]);
    // Another known language: unstemmed. Unknown: an error.
    let mut q = TextQuery::new("run");
    q.language = Some("french".into());
    assert!(ids(&ix, &q).is_empty());
    q.language = Some("English".into());
    assert_eq!(ids(&ix, &q), [1, 0]);
    q.language = Some("klingon".into());
    assert_eq!(
        ix.search(&q, &|_| true),
        Err(TextError::UnknownLanguage("klingon".into()))
    );
}

#[test]
fn the_forms_of_one_stem_in_a_field_count_as_one_word() {
    // However the index orders a document's words, "running runs run" in a
    // field counts as the stem three times, as "run run run" does (BM25
    // saturates: three separate occurrences of tf 1 would score higher).
    let ix = index(&[
        &[
            ("body", "running alpha runs beta run gamma"),
            ("title", "runs the run"),
        ],
        &[
            ("body", "run alpha run beta run gamma"),
            ("title", "run the run"),
        ],
        &[("body", "unrelated words only here")],
    ]);
    let results = ix.search(&TextQuery::new("run"), &|_| true).unwrap();
    assert_eq!(results.total, 2);
    let [a, b] = &results.hits[..] else {
        panic!("two hits expected: {results:?}");
    };
    assert!((a.score - b.score).abs() < 1e-6, "{a:?} {b:?}");
    assert_eq!(a.matched_fields, ["body", "title"]);
    assert_eq!(b.matched_fields, ["body", "title"]);
}

#[test]
fn boost_exact_prefers_unstemmed_matches() {
    let ix = index(&[&[("body", "connections")], &[("body", "connection")]]);
    let mut q = TextQuery::new("connection");
    // Same stem, same statistics: a tie broken by doc id...
    assert_eq!(ids(&ix, &q), [0, 1]);
    // ...until exact matches are boosted.
    q.boost_exact = true;
    assert_eq!(ids(&ix, &q), [1, 0]);
    let r = ix.search(&q, &|_| true).unwrap();
    assert!(r.hits[0].score > r.hits[1].score * 1.2);
}

#[test]
fn typos_within_distance_two_are_found() {
    // No stemming: "enginer" and "engineer" share the English stem "engin".
    let mut ix = TextIndex::new(Analyzer::new(None));
    ix.upsert(
        DocId(0),
        &[("title", "engineer"), ("body", "builds bridges")],
    );
    ix.upsert(
        DocId(1),
        &[("title", "gardener"), ("body", "grows flowers")],
    );
    check(&ix, "enginer", &[]);
    assert_eq!(ids(&ix, &fuzzy("enginer", 2)), [0]); // one deletion
    assert_eq!(ids(&ix, &fuzzy("enigneer", 1)), [0]); // one transposition
    assert_eq!(ids(&ix, &fuzzy("enxinexr", 2)), [0]); // two substitutions
    assert_eq!(ids(&ix, &fuzzy("enxinexr", 1)), Vec::<u32>::new());
    // Three edits are not found.
    assert_eq!(ids(&ix, &fuzzy("xnxinexr", 2)), Vec::<u32>::new());
    assert_eq!(ids(&ix, &fuzzy("engi", 2)), Vec::<u32>::new());
    // max_edit_distance above 2 is refused.
    assert_eq!(
        ix.search(&fuzzy("enginer", 3), &|_| true),
        Err(TextError::EditDistanceTooLarge(3))
    );
}

#[test]
fn fuzzy_matches_score_below_exact_ones() {
    let ix = index(&[
        &[("body", "kernels")],
        &[("body", "kernel")],
        &[("body", "colonel")],
    ]);
    let mut q = fuzzy("kernel", 2);
    q.stemming = false;
    let r = ix.search(&q, &|_| true).unwrap();
    let order: Vec<u32> = r.hits.iter().map(|h| h.doc.0).collect();
    assert_eq!(order, [1, 0]);
    assert!(r.hits[0].score > r.hits[1].score);
    // Short words get fewer edits: "kernl" (5 chars) allows one.
    assert_eq!(ids(&ix, &fuzzy("kernl", 2)), [1]);
}

#[test]
fn case_sensitive_matching_is_exact() {
    let ix = index(&[
        &[("body", "Rust is a language")],
        &[("body", "rust on iron")],
        &[("body", "RUST and Rust and rust")],
    ]);
    check(&ix, "RUST", &[2, 1, 0]);
    let cs = |query: &str| {
        let mut q = TextQuery::new(query);
        q.case_sensitive = true;
        ids(&ix, &q)
    };
    assert_eq!(cs("Rust"), [0, 2]);
    assert_eq!(cs("rust"), [1, 2]);
    assert_eq!(cs("RUST"), [2]);
    assert_eq!(cs("rUst"), Vec::<u32>::new());
    let mut q = TextQuery::new("rust");
    q.case_sensitive = true;
    let r = ix.search(&q, &|_| true).unwrap();
    assert_eq!(r.hits[0].matched_fields, ["body"]);
}

#[test]
fn min_score_limit_and_filter() {
    let ix = index(&[
        &[("body", "disk disk disk")],
        &[("body", "disk and other words")],
        &[("body", "disk")],
        &[("body", "nothing")],
    ]);
    let all = ix.search(&TextQuery::new("disk"), &|_| true).unwrap();
    assert_eq!(all.total, 3);
    let mut q = TextQuery::new("disk");
    q.min_score = Some(all.hits[1].score);
    let r = ix.search(&q, &|_| true).unwrap();
    assert_eq!(r.total, 2);
    q.min_score = None;
    q.limit = 1;
    let r = ix.search(&q, &|_| true).unwrap();
    assert_eq!((r.hits.len(), r.total), (1, 3));
    q.limit = 0;
    assert!(ix.search(&q, &|_| true).unwrap().hits.is_empty());
    q.limit = usize::MAX;
    let r = ix.search(&q, &|d| d.0 != 0).unwrap();
    assert_eq!(r.hits.iter().map(|h| h.doc.0).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(r.total, 2);
}

#[test]
fn updates_and_deletes_leave_no_ghosts() {
    let mut ix = index(&[&[("body", "apple banana")], &[("body", "banana cherry")]]);
    ix.upsert(DocId(0), &[("body", "cherry date")]);
    check(&ix, "apple", &[]);
    check(&ix, "banana", &[1]);
    check(&ix, "cherry", &[0, 1]);
    assert!(ix.remove(DocId(1)));
    assert!(!ix.remove(DocId(1)));
    assert!(!ix.remove(DocId(99)));
    check(&ix, "banana", &[]);
    check(&ix, "cherry", &[0]);
    // Dead terms are gone from the fuzzy dictionary's answers too.
    assert!(ids(&ix, &fuzzy("bananna", 2)).is_empty());
    ix.upsert(DocId(0), &[]);
    assert!(ix.is_empty());
    check(&ix, "cherry", &[]);
    ix.upsert(DocId(1), &[("body", "banana")]);
    check(&ix, "banana", &[1]);
}

#[test]
fn many_updates_compact_postings() {
    let mut ix = TextIndex::default();
    for round in 0..20u32 {
        for d in 0..200u32 {
            let text = if (d + round) % 2 == 0 {
                "common even"
            } else {
                "common odd"
            };
            ix.upsert(DocId(d), &[("body", text)]);
        }
    }
    let r = ix.search(&TextQuery::new("even"), &|_| true).unwrap();
    assert_eq!(r.total, 100);
    let before = ix.memory_bytes();
    for d in 0..200u32 {
        ix.remove(DocId(d));
    }
    assert!(ix.memory_bytes() < before);
    assert_eq!(
        ix.search(&TextQuery::new("common"), &|_| true)
            .unwrap()
            .total,
        0
    );
}

#[test]
fn idle_sweeps_bring_a_replaced_index_back_to_a_fresh_ones_answers_and_size() {
    let text = |d: u32, round: u32| format!("shared words {} topic{} round{round}", d % 7, d % 13);
    let mut ix = TextIndex::default();
    for d in 0..400u32 {
        ix.upsert(DocId(d), &[("body", &text(d, 0))]);
    }
    // A third of the documents replaced: too few removed versions for the
    // writes to start a sweep, enough for idle time to.
    for d in 0..130u32 {
        ix.upsert(DocId(d), &[("body", &text(d, 1))]);
    }
    assert!(!ix.sweeping());
    let mut fresh = TextIndex::default();
    for d in 0..400u32 {
        fresh.upsert(DocId(d), &[("body", &text(d, u32::from(d < 130)))]);
    }
    let queries = ["shared topic3", "round0", "round1 topic5", "words"];
    let answers = |ix: &TextIndex| -> Vec<Vec<(u32, u32)>> {
        queries
            .iter()
            .map(|q| {
                let r = ix.search(&TextQuery::new(*q), &|_| true).unwrap();
                r.hits
                    .iter()
                    .map(|h| (h.doc.0, (h.score * 1e4).round() as u32))
                    .collect()
            })
            .collect()
    };
    // Removed versions are skipped by queries before any sweep (and the
    // queries' buffers, kept between queries, are grown before measuring).
    assert_eq!(answers(&ix), answers(&fresh), "before the sweep");
    let before = ix.memory_bytes();
    let mut steps = 0;
    while ix.sweep_removed(256) > 0 {
        steps += 1;
        if steps == 1 {
            assert!(ix.sweeping(), "a small budget leaves the sweep under way");
            assert_eq!(answers(&ix), answers(&fresh), "mid-sweep");
        }
    }
    assert!(steps > 1, "{steps}");
    assert!(!ix.sweeping());
    assert!(
        ix.memory_bytes() < before,
        "{} >= {before}",
        ix.memory_bytes()
    );
    assert_eq!(answers(&ix), answers(&fresh));
    assert_eq!(ix.sweep_removed(usize::MAX), 0, "nothing left to sweep");
}

#[test]
fn memory_stays_bounded_when_every_write_brings_new_words() {
    // Each round replaces every document with words never seen before: the
    // old words must be freed (and their slots reused), not kept forever.
    let mut ix = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
    let mut at_round_50 = 0;
    let mut largest_later = 0;
    for round in 0..200u32 {
        for d in 0..100u32 {
            let text = format!("common w{round}x{d} v{round}y{d} running");
            ix.upsert(DocId(d), &[("body", &text)]);
        }
        if round == 50 {
            at_round_50 = ix.memory_bytes();
        }
        if round > 150 {
            largest_later = largest_later.max(ix.memory_bytes());
        }
    }
    assert!(
        largest_later < 2 * at_round_50,
        "{largest_later} bytes after 150 rounds, {at_round_50} after 50"
    );
    assert_eq!(ids(&ix, &TextQuery::new("w199x7")), [7]);
    let mut old = TextQuery::new("w100x7");
    old.fuzzy = false;
    assert_eq!(ix.search(&old, &|_| true).unwrap().total, 0);
    assert_eq!(
        ix.search(&TextQuery::new("runs"), &|_| true).unwrap().total,
        100
    );
}

#[test]
fn repeated_field_names_are_one_field() {
    let ix = index(&[
        &[("tags", "red"), ("tags", "blue")],
        &[("tags", "red green blue yellow")],
    ]);
    check(&ix, "blue", &[0, 1]);
}

#[test]
fn total_on_edge_cases() {
    let empty = TextIndex::default();
    check(&empty, "anything", &[]);
    let ix = index(&[&[("body", "something")], &[]]);
    check(&ix, "", &[]);
    check(&ix, "   ...!? ", &[]);
    check(&ix, "nothing", &[]);
    let long = "x".repeat(10_000);
    check(&ix, &long, &[]);
    let many = "something ".repeat(5_000);
    check(&ix, &many, &[0]);
    let mut q = fuzzy("ab", 2);
    q.min_score = Some(f32::NAN);
    q.weights = vec![("body".into(), f32::NAN)];
    assert!(ix.search(&q, &|_| true).unwrap().hits.is_empty());
    // Ids are meant to be dense, but gaps are fine.
    let mut sparse = TextIndex::default();
    sparse.upsert(DocId(100_000), &[("body", "far away")]);
    assert_eq!(ids(&sparse, &TextQuery::new("far")), [100_000]);
}

#[test]
fn unicode_text() {
    let ix = index(&[
        &[("body", "Café crème brûlée")],
        &[("body", "東京 タワー")],
        &[("body", "ÉCOLE école")],
    ]);
    check(&ix, "café", &[0]);
    check(&ix, "CAFÉ", &[0]);
    check(&ix, "タワー", &[1]);
    check(&ix, "école", &[2]);
    assert_eq!(ids(&ix, &fuzzy("brulee", 2)), [0]);
}

#[test]
fn a_bulk_load_answers_like_one_by_one_upserts() {
    // Enough distinct words that the typo dictionary is written as an fst.
    let texts: Vec<String> = (0..6_000)
        .map(|i| format!("word{i:05} shared{} tail", i % 7))
        .collect();
    let mut bulk = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
    bulk.bulk(|ix| {
        for (i, t) in texts.iter().enumerate() {
            ix.upsert(DocId(i as u32), &[("body", t)]);
        }
    });
    let mut single = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
    for (i, t) in texts.iter().enumerate() {
        single.upsert(DocId(i as u32), &[("body", t)]);
    }
    assert!(bulk.memory_bytes() <= single.memory_bytes());
    let mut typo = fuzzy("wrd04321", 1);
    typo.limit = 5;
    let mut prefix = TextQuery::new("word0432");
    prefix.prefix = true;
    prefix.limit = 20;
    for q in [TextQuery::new("shared3"), typo, prefix] {
        let a = bulk.search(&q, &|_| true).unwrap();
        let b = single.search(&q, &|_| true).unwrap();
        assert_eq!(a, b, "{q:?}");
        assert!(a.total > 0, "{q:?}");
    }
    // It goes on taking writes as usual.
    bulk.upsert(DocId(9_999), &[("body", "zebra")]);
    assert_eq!(ids(&bulk, &fuzzy("zebr", 1)), [9_999]);
}

#[test]
fn fields_beyond_the_sixty_fourth_match_and_are_reported() {
    let names: Vec<String> = (0..70).map(|f| format!("f{f:02}")).collect();
    let mut fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "filler")).collect();
    fields[66].1 = "needle Needle";
    fields[2].1 = "needle";
    let ix = index(&[&fields, &[("f66", "needle")]]);
    let r = ix.search(&TextQuery::new("needle"), &|_| true).unwrap();
    assert_eq!(r.total, 2);
    let first = r.hits.iter().find(|h| h.doc.0 == 0).unwrap();
    assert_eq!(first.matched_fields, ["f02", "f66"]);
    // Restricted to the high field, and case-sensitive there.
    let mut q = TextQuery::new("Needle");
    q.fields = Some(vec!["f66".into()]);
    q.case_sensitive = true;
    assert_eq!(ids(&ix, &q), [0]);
    q.query = "needle".into();
    assert_eq!(ids(&ix, &q), [1, 0]);
}

#[test]
fn replaced_and_removed_documents_leave_no_trace_after_compaction() {
    let mut ix = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
    for round in 0..5u32 {
        for d in 0..50u32 {
            let text = format!("round{round} running doc{d}");
            ix.upsert(DocId(d), &[("body", &text)]);
        }
    }
    // Only the last round's words remain, with exact document frequencies.
    let mut q = TextQuery::new("round3");
    q.fuzzy = false;
    assert_eq!(ix.search(&q, &|_| true).unwrap().total, 0);
    assert_eq!(
        ix.search(&TextQuery::new("round4"), &|_| true)
            .unwrap()
            .total,
        50
    );
    assert_eq!(
        ix.search(&TextQuery::new("runs"), &|_| true).unwrap().total,
        50
    );
    let mut typo = fuzzy("round", 1);
    typo.limit = 100;
    assert_eq!(ix.search(&typo, &|_| true).unwrap().total, 50);
    for d in 0..49u32 {
        assert!(ix.remove(DocId(d)));
    }
    assert_eq!(ids(&ix, &TextQuery::new("running")), [49]);
    assert!(!ix.remove(DocId(0)));
    assert_eq!(ix.len(), 1);
}

#[test]
fn a_query_answers_the_same_whatever_ran_before_it() {
    // Scoring buffers are kept between queries: each query must find them
    // as a fresh one would. Documents with fields past the 32nd exercise
    // the overflow sets too.
    let names: Vec<String> = (0..40).map(|f| format!("f{f:02}")).collect();
    let texts = [
        "kernel scheduler runs the queue",
        "Kernel modules and the scheduler",
        "a network interface for the kernel",
        "queue of network packets, queued twice",
        "nothing relevant at all",
    ];
    let docs: Vec<Vec<(&str, &str)>> = (0..30)
        .map(|d| {
            (0..names.len())
                .filter(|f| (d + f) % 7 == 0 || f % 13 == d % 13)
                .map(|f| (names[f].as_str(), texts[(d * 3 + f) % texts.len()]))
                .collect()
        })
        .collect();
    let refs: Vec<&[(&str, &str)]> = docs.iter().map(|d| d.as_slice()).collect();
    let mut queries = Vec::new();
    for text in [
        "kernel",
        "network queue",
        "schedul",
        "kernal netwrk",
        "Kernel",
    ] {
        for scoring in [Scoring::Bm25, Scoring::EkoDb] {
            let mut q = TextQuery::new(text);
            q.scoring = scoring;
            q.prefix = text == "schedul";
            q.fuzzy = text == "kernal netwrk";
            q.case_sensitive = text == "Kernel";
            queries.push(q.clone());
            q.fields = Some(vec!["f35".into(), "f03".into()]);
            queries.push(q);
        }
    }
    let shared = index(&refs);
    for q in &queries {
        let fresh = index(&refs).search(q, &|_| true).unwrap();
        assert!(fresh.total > 0, "query {:?} finds nothing", q.query);
        assert_eq!(shared.search(q, &|_| true).unwrap(), fresh, "query {q:?}");
    }
    // And again in reverse order.
    for q in queries.iter().rev() {
        let fresh = index(&refs).search(q, &|_| true).unwrap();
        assert_eq!(shared.search(q, &|_| true).unwrap(), fresh, "query {q:?}");
    }
}
