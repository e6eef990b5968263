//! ekoDB-rule scores and prefix matching, checked against the outputs ekoDB
//! recorded for its own published examples (`ekoDB/ekodb-client`,
//! `examples/*/test-examples-*.md`): the same documents, the same requests,
//! the same scores and result counts.

use tidepool_search::{Analyzer, DocId, Language, Scoring, TextIndex, TextQuery};

/// The articles of ekoDB's `client_search` example (Rust and Kotlin):
/// title, description, tags (one comma-joined string), category.
const ARTICLES: [[&str; 4]; 5] = [
    [
        "Rust Programming",
        "Learn Rust programming language with hands-on examples and best practices.",
        "programming,rust,tutorial",
        "programming",
    ],
    [
        "Python for Data Science",
        "Master Python for data analysis, machine learning, and visualization.",
        "programming,python,data-science",
        "programming",
    ],
    [
        "JavaScript Web Development",
        "Build modern web applications using JavaScript, React, and Node.js.",
        "programming,javascript,web",
        "programming",
    ],
    [
        "Database Design",
        "Learn database design principles, normalization, and query optimization.",
        "database,design,sql",
        "database",
    ],
    [
        "Machine Learning Basics",
        "Introduction to machine learning algorithms and neural networks.",
        "ai,machine-learning,python",
        "ai",
    ],
];

/// The people of ekoDB's `client_search` example (Python, Go, TypeScript):
/// name, email, bio, title, skills.
const PEOPLE: [[&str; 5]; 5] = [
    [
        "John Doe",
        "john@example.com",
        "Software engineer specializing in JavaScript and TypeScript",
        "Senior Developer Engineer",
        "JavaScript TypeScript React Node.js",
    ],
    [
        "Jane Smith",
        "jane@example.com",
        "Product manager with experience in running agile teams",
        "Product Manager",
        "Product Management Agile Scrum",
    ],
    [
        "Bob Johnson",
        "bob@example.com",
        "DevOps engineer running cloud infrastructure",
        "DevOps Engineer",
        "AWS Docker Kubernetes Terraform",
    ],
    [
        "Alice Williams",
        "alice@example.com",
        "Senior software engineer with expertise in distributed systems",
        "Staff Engineer",
        "Go Rust Distributed Systems Microservices",
    ],
    [
        "Charlie Davis",
        "charlie@example.com",
        "Machine learning engineer working on AI models",
        "ML Engineer",
        "Python TensorFlow PyTorch Machine Learning",
    ],
];

fn articles() -> TextIndex {
    let mut ix = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
    for (i, [title, description, tags, category]) in ARTICLES.iter().enumerate() {
        ix.upsert(
            DocId(i as u32),
            &[
                ("title", title),
                ("description", description),
                ("tags", tags),
                ("category", category),
            ],
        );
    }
    ix
}

fn people() -> TextIndex {
    let mut ix = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
    for (i, [name, email, bio, title, skills]) in PEOPLE.iter().enumerate() {
        ix.upsert(
            DocId(i as u32),
            &[
                ("name", name),
                ("email", email),
                ("bio", bio),
                ("title", title),
                ("skills", skills),
            ],
        );
    }
    ix
}

/// A query as the REST API builds it by default: ekoDB scores, prefixes on.
fn ekodb(query: &str) -> TextQuery {
    let mut q = TextQuery::new(query);
    q.scoring = Scoring::EkoDb;
    q.prefix = true;
    q
}

fn fields(mut q: TextQuery, names: &str) -> TextQuery {
    q.fields = Some(names.split(',').map(str::to_string).collect());
    q
}

/// `(doc, score rounded to 3 decimals, matched fields)` of each hit, best first.
fn run(ix: &TextIndex, q: &TextQuery) -> Vec<(u32, f64, Vec<String>)> {
    run_with(ix, q, &|_| true)
}

fn run_with(
    ix: &TextIndex,
    q: &TextQuery,
    accept: &dyn Fn(DocId) -> bool,
) -> Vec<(u32, f64, Vec<String>)> {
    ix.search(q, accept)
        .unwrap()
        .hits
        .into_iter()
        .map(|h| {
            let score = (f64::from(h.score) * 1000.0).round() / 1000.0;
            (h.doc.0, score, h.matched_fields)
        })
        .collect()
}

fn scores(ix: &TextIndex, q: &TextQuery) -> Vec<(u32, f64)> {
    run(ix, q).into_iter().map(|(d, s, _)| (d, s)).collect()
}

fn names(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn two_words_score_by_the_share_matched_per_field() {
    // ekoDB: 4 records with min_score 0.2 (2.0, 1.0, 0.5, 0.5).
    let mut q = fields(ekodb("machine learning"), "title,description");
    q.min_score = Some(0.2);
    q.limit = 5;
    let got = run(&articles(), &q);
    assert_eq!(
        got,
        vec![
            (4, 2.0, names(&["description", "title"])),
            (1, 1.0, names(&["description"])),
            // "Learn" shares the stem of "learning": half the query, one field.
            (0, 0.5, names(&["description"])),
            (3, 0.5, names(&["description"])),
        ]
    );
}

#[test]
fn one_word_scores_six_point_six_per_field() {
    let ix = articles();
    let mut q = ekodb("programming");
    q.min_score = Some(0.1);
    q.limit = 3;
    // ekoDB: 26.4 [title, tags, description, category], 13.2, 13.2 [tags, category].
    let got = run(&ix, &q);
    assert_eq!(
        got[0],
        (
            0,
            26.4,
            names(&["category", "description", "tags", "title"])
        )
    );
    assert_eq!(
        &got[1..],
        &[
            (1, 13.2, names(&["category", "tags"])),
            (2, 13.2, names(&["category", "tags"])),
        ]
    );
    assert_eq!(ix.search(&q, &|_| true).unwrap().total, 3);

    // A stemmed form matches as the word itself (ekoDB: 26.4).
    let mut q = ekodb("databases");
    q.boost_exact = true;
    assert_eq!(scores(&ix, &q), vec![(3, 26.4)]);

    // ...within a pre-filter (ekoDB: 6.6 and 6.6).
    let q = ekodb("learn");
    let programming = |d: DocId| ARTICLES[d.0 as usize][3] == "programming";
    let got: Vec<(u32, f64)> = run_with(&ix, &q, &programming)
        .into_iter()
        .map(|(d, s, _)| (d, s))
        .collect();
    assert_eq!(got, vec![(0, 6.6), (1, 6.6)]);
}

#[test]
fn a_typo_scores_a_tenth_of_a_match() {
    let mut q = ekodb("progamming");
    q.fuzzy = true;
    q.max_edit_distance = 2;
    q.min_score = Some(0.1);
    q.limit = 3;
    // ekoDB: 2.2, 1.1, 1.1.
    assert_eq!(scores(&articles(), &q), vec![(0, 2.2), (1, 1.1), (2, 1.1)]);
}

#[test]
fn weights_multiply_each_field() {
    let mut q = ekodb("python");
    q.weights = vec![
        ("title".into(), 2.0),
        ("description".into(), 1.0),
        ("tags".into(), 0.5),
    ];
    // ekoDB: 23.1 (2 x 6.6 + 6.6 + 0.5 x 6.6), 3.3.
    assert_eq!(scores(&articles(), &q), vec![(1, 23.1), (4, 3.3)]);

    let mut q = fields(ekodb("engineer"), "title,bio");
    q.weights = vec![("title".into(), 3.0), ("bio".into(), 1.0)];
    // ekoDB: four records at 26.4.
    assert_eq!(
        scores(&people(), &q),
        vec![(0, 26.4), (2, 26.4), (3, 26.4), (4, 26.4)]
    );
}

#[test]
fn a_prefix_finds_the_longer_name_below_the_exact_one() {
    let q = fields(ekodb("john"), "name,email,bio");
    let got = run(&people(), &q);
    // ekoDB: John Doe 12.87 [name, email], Bob Johnson 6.27 [name]. Here the
    // email address splits into words, so `john` in it is a whole word (6.6).
    assert_eq!(
        got,
        vec![
            (0, 13.2, names(&["email", "name"])),
            (2, 6.27, names(&["name"])),
        ]
    );

    // Turned off, only the whole word matches.
    let mut q = q;
    q.prefix = false;
    assert_eq!(scores(&people(), &q), vec![(0, 13.2)]);
}

#[test]
fn the_last_word_completes_from_two_letters_the_others_when_no_word_from_three() {
    let ix = people();
    // "jo" as the last word: John and Johnson.
    let q = fields(ekodb("jo"), "name");
    assert_eq!(scores(&ix, &q), vec![(0, 6.27), (2, 6.27)]);
    // "jo" before another word is too short to complete; "sm" is last.
    let q = fields(ekodb("jo sm"), "name");
    assert_eq!(scores(&ix, &q), vec![(1, 0.35)]);
    // "joh" is long enough anywhere, and is no word by itself.
    let q = fields(ekodb("joh sm"), "name");
    assert_eq!(scores(&ix, &q), vec![(0, 0.35), (1, 0.35), (2, 0.35)]);
    // "john" before another word is a whole word: it is not completed.
    let q = fields(ekodb("john smith"), "name");
    assert_eq!(scores(&ix, &q), vec![(0, 0.5), (1, 0.5)]);
    let q = fields(ekodb("smith john"), "name");
    assert_eq!(scores(&ix, &q), vec![(0, 0.5), (1, 0.5), (2, 0.35)]);
}

#[test]
fn stemming_typos_and_case_match_like_ekodb() {
    let ix = people();
    // Stems: "enginer" and "engineer" share one (ekoDB: 4 x 13.2).
    let mut q = fields(ekodb("enginer"), "title,bio");
    q.fuzzy = true;
    q.max_edit_distance = 2;
    assert_eq!(
        scores(&ix, &q),
        vec![(0, 13.2), (2, 13.2), (3, 13.2), (4, 13.2)]
    );
    let mut q = fields(ekodb("software"), "title,bio");
    q.min_score = Some(0.3);
    assert_eq!(scores(&ix, &q), vec![(0, 6.6), (3, 6.6)]);
    assert_eq!(
        scores(&ix, &fields(ekodb("running"), "bio")),
        vec![(1, 6.6), (2, 6.6)]
    );
    assert_eq!(scores(&ix, &fields(ekodb("work"), "bio")), vec![(4, 6.6)]);
    // Case-sensitive (ekoDB: 6.6, and 13.2 over skills and bio).
    let mut q = fields(ekodb("Senior"), "title");
    q.case_sensitive = true;
    assert_eq!(scores(&ix, &q), vec![(0, 6.6)]);
    let mut q = fields(ekodb("JavaScript"), "skills,bio");
    q.case_sensitive = true;
    assert_eq!(scores(&ix, &q), vec![(0, 13.2)]);
}

#[test]
fn repeated_words_count_as_ekodb_counts_them() {
    // Two query words (one repeated): the field scores the share matched.
    let q = fields(ekodb("rust rust"), "title");
    assert_eq!(scores(&articles(), &q), vec![(0, 1.0)]);
    let q = fields(ekodb("rust design"), "title");
    assert_eq!(scores(&articles(), &q), vec![(0, 0.5), (3, 0.5)]);
}

#[test]
fn bm25_stays_available_and_ranks_the_prefix_below_the_word() {
    let mut q = fields(TextQuery::new("john"), "name");
    q.prefix = true;
    let got = scores(&people(), &q);
    assert_eq!(got.iter().map(|h| h.0).collect::<Vec<_>>(), vec![0, 2]);
    assert!(got[0].1 > got[1].1, "{got:?}");
    // Off by default in the library.
    let q = fields(TextQuery::new("john"), "name");
    assert_eq!(scores(&people(), &q).len(), 1);
    // BM25 values are small: the threshold ekoDB users wrote keeps only two.
    let mut q = fields(TextQuery::new("machine learning"), "title,description");
    q.min_score = Some(0.2);
    let got = scores(&articles(), &q);
    assert_eq!(
        got.iter().map(|h| h.0).collect::<Vec<_>>(),
        vec![4, 1],
        "{got:?}"
    );
}

#[test]
fn a_short_prefix_reads_a_bounded_part_of_a_large_dictionary() {
    let mut ix = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
    for i in 0..20_000u32 {
        ix.upsert(DocId(i), &[("body", &format!("ab{i:05}x"))]);
    }
    let mut q = ekodb("ab");
    q.limit = 1_000;
    let found = ix.search(&q, &|_| true).unwrap();
    // At most MAX_PREFIX_EXPANSIONS completions, each in one document here.
    assert_eq!(found.total, tidepool_search::text::MAX_PREFIX_EXPANSIONS);
}
