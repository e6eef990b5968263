//! Chat retrieval benchmark: the context for one message (`chat::retrieval`:
//! text search over the session's collection, field-name matching, snippets
//! of the configured fields) on a 100,000-document collection, text only and
//! hybrid (the records carry embeddings), against SQLite FTS5 answering the
//! same questions' words (top 5 by bm25) over the same documents in the same
//! run.
//!
//! ```sh
//! cargo run --release -p tidepool-benches --bin chat_retrieval [-- --docs 100000 --queries 1000]
//! ```
//!
//! Documents are product-like records (`name`, `description`, `category`,
//! `price`) written from a 2,000-word vocabulary with a Zipf-like skew;
//! questions are 2-4 of those words in a sentence, a quarter of them naming a
//! field ("what is the price of ..."). The engine is the server's own (in
//! process, no network), so the figures are the cost a message adds before
//! the provider is asked.

use rusqlite::{params, Connection};
use serde_json::json;
use std::time::{Duration, Instant};
use tidepool_core::chat::retrieval;
use tidepool_core::chat::session::CollectionConfig;
use tidepool_core::engine::Engine;
use tidepool_core::time::Timestamp;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A word index, skewed towards the common ones.
    fn word(&mut self, n: usize) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((u * u * u) * n as f64) as usize
    }
}

fn vocabulary(n: usize) -> Vec<String> {
    const SYL: &[&str] = &[
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "da", "fe", "gu", "hi", "ja",
        "ko", "lu", "ma", "no", "pi",
    ];
    (0..n)
        .map(|i| {
            let (a, b, c) = (i % 20, (i / 20) % 20, (i / 400) % 20);
            format!("{}{}{}", SYL[a], SYL[b], SYL[c])
        })
        .collect()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mut docs = 100_000usize;
    let mut queries = 1_000usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .expect("a value")
                .parse::<usize>()
                .expect("a number")
        };
        match flag.as_str() {
            "--docs" => docs = val(),
            "--queries" => queries = val(),
            other => panic!("unknown flag {other}"),
        }
    }
    let words = vocabulary(2_000);
    let mut rng = Rng(42);
    let now = Timestamp::from_secs(1_800_000_000);
    let mut engine = Engine::new(7);
    let sqlite = Connection::open_in_memory().expect("sqlite");
    sqlite
        .execute_batch(
            "CREATE VIRTUAL TABLE docs USING fts5(name, description, tokenize = 'porter unicode61');",
        )
        .expect("fts5");
    let built = Instant::now();
    let tx = sqlite.unchecked_transaction().expect("tx");
    for i in 0..docs {
        let name: Vec<&str> = (0..2)
            .map(|_| words[rng.word(words.len())].as_str())
            .collect();
        let desc: Vec<&str> = (0..12)
            .map(|_| words[rng.word(words.len())].as_str())
            .collect();
        let (name, desc) = (name.join(" "), desc.join(" "));
        let embedding = tidepool_search::embed(&format!("{name} {desc}"), 64);
        let price = (i % 500) as f64 + 0.99;
        let category = words[i % 50].clone();
        engine
            .insert(
                "products",
                json!({"name": name, "description": desc, "category": category, "price": price}),
                now,
            )
            .expect("insert");
        engine
            .insert(
                "products_vec",
                json!({"name": name, "description": desc, "category": category, "price": price,
                    "embedding": {"type": "Vector", "value": embedding}}),
                now,
            )
            .expect("insert");
        tx.execute(
            "INSERT INTO docs(name, description) VALUES (?1, ?2)",
            params![name, desc],
        )
        .expect("sqlite insert");
        // Commits go to the log in the server; here nobody persists them.
        if i % 1000 == 999 {
            engine.commit(now);
            while engine.poll_log().is_some() {}
        }
    }
    tx.commit().expect("commit");
    engine.commit(now);
    while engine.poll_log().is_some() {}
    println!(
        "chat_retrieval: {docs} documents per collection (loaded in {:.1} s), {queries} questions",
        built.elapsed().as_secs_f64()
    );
    let questions: Vec<String> = (0..queries)
        .map(|i| {
            let n = 2 + (rng.next() % 3) as usize;
            let terms: Vec<&str> = (0..n)
                .map(|_| words[rng.word(words.len())].as_str())
                .collect();
            if i % 4 == 0 {
                format!("What is the price of the {}?", terms.join(" "))
            } else {
                format!("Tell me about {}", terms.join(" "))
            }
        })
        .collect();
    let config = |name: &str| {
        vec![CollectionConfig::parse(&json!({"collection_name": name,
            "fields": ["name", "description", "price"]}))
        .expect("config")]
    };
    let mut rows = Vec::new();
    for (label, coll) in [("text", "products"), ("hybrid", "products_vec")] {
        let cfg = config(coll);
        // Warm up: the indexes are built on first use.
        retrieval::retrieve(
            &mut engine,
            &cfg,
            &questions[0],
            &retrieval::QueryVector::Offline,
            now,
        );
        let mut times = Vec::with_capacity(queries);
        let mut found = 0usize;
        for q in &questions {
            let t = Instant::now();
            let snippets =
                retrieval::retrieve(&mut engine, &cfg, q, &retrieval::QueryVector::Offline, now);
            times.push(t.elapsed());
            found += usize::from(!snippets.is_empty());
        }
        rows.push((
            label,
            percentile(&mut times, 0.5),
            percentile(&mut times, 0.99),
            found,
        ));
    }
    let mut stmt = sqlite
        .prepare("SELECT rowid, name, description FROM docs WHERE docs MATCH ?1 ORDER BY bm25(docs) LIMIT 5")
        .expect("prepare");
    let mut times = Vec::with_capacity(queries);
    let mut found = 0usize;
    for q in &questions {
        let terms: Vec<String> = retrieval::terms(q)
            .into_iter()
            .filter(|t| t != "price" && t != "tell")
            .map(|t| format!("\"{t}\""))
            .collect();
        let expr = terms.join(" OR ");
        let t = Instant::now();
        let hits: Vec<(i64, String, String)> = stmt
            .query_map(params![expr], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect();
        times.push(t.elapsed());
        found += usize::from(!hits.is_empty());
    }
    let (s50, s99) = (percentile(&mut times, 0.5), percentile(&mut times, 0.99));
    println!("| retrieval per message | p50 | p99 | questions with context | p99 vs SQLite FTS5 |");
    println!("|---|---|---|---|---|");
    for (label, p50, p99, found) in rows {
        println!(
            "| Tidepool, {label} | {:.2} ms | {:.2} ms | {found} | {:.2}x |",
            ms(p50),
            ms(p99),
            p99.as_secs_f64() / s99.as_secs_f64()
        );
    }
    println!(
        "| SQLite FTS5 top 5 (words only, no snippets) | {:.2} ms | {:.2} ms | {found} | 1.00x |",
        ms(s50),
        ms(s99)
    );
}
