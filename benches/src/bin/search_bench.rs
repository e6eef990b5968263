//! Search benchmark: tidepool-search's text index against SQLite FTS5 on the man
//! pages of this machine, and its vector index (HNSW) against exact search on
//! synthetic clustered vectors.
//!
//! ```text
//! cargo run --release -p tidepool-benches --bin search_bench [-- --small] [--no-text] [--no-vectors]
//!     [--docs N] [--vectors N] [--dim D] [--queries N] [--rounds N] [--dump-vectors DIR]
//!     [--half-rows auto|on|off]
//! ```
//!
//! Text: one document per English man page (`/usr/share/man/man*/*.gz`, symlinks
//! skipped), fields `title` (page name) and `body` (roff with markup stripped
//! crudely). Both engines index the same documents and run the same 1-3 word
//! queries with OR semantics, BM25 ranking and the top 10 (FTS5: `porter
//! unicode61` tokenizer, `"a" OR "b"`, `ORDER BY bm25(...) LIMIT 10`, in memory).
//! Fuzzy: the same queries with typos injected (one or two edits per word), our
//! index with `fuzzy` and `max_edit_distance = 2`; FTS5 has no typo tolerance, so
//! its numbers on those queries are for reference only.
//!
//! Vectors: points drawn around 1,000 cluster centres (N(0, 1)) in a 64-dimensional
//! latent space with within-cluster spread 1.0 (clusters overlap), projected to
//! `dim` dimensions by a fixed random matrix, plus isotropic noise of 0.1 per
//! component: clustered data of moderate intrinsic dimension, like real
//! embeddings (`--latent`, `--clusters`, `--spread`, `--noise` in hundredths change
//! it). Queries are held-out points of the same distribution.
//! Recall@10 is measured against exact search over the same index.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use tidepool_search::{
    Analyzer, DocId, HalfRows, Language, Metric, Scoring, TextIndex, TextQuery, VectorIndex,
};

struct Args {
    text: bool,
    vectors: bool,
    docs: usize,
    n_vectors: usize,
    dim: usize,
    queries: usize,
    /// Times each text query set is run (p50/p99 over all runs).
    rounds: usize,
    shape: Shape,
    /// Write the vectors and queries here (raw little-endian f32) for a peer
    /// to index the same ones (`benches/scripts/hnswlib.sh`).
    dump_vectors: Option<PathBuf>,
    /// Whether the graph walks a half-precision copy (`--vector-half-rows`).
    half_rows: HalfRows,
}

fn args() -> Args {
    let mut a = Args {
        text: true,
        vectors: true,
        docs: usize::MAX,
        n_vectors: 100_000,
        dim: 384,
        queries: 500,
        rounds: 20,
        shape: Shape {
            latent: 64,
            clusters: 1_000,
            spread: 1.0,
            noise: 0.1,
        },
        dump_vectors: None,
        half_rows: HalfRows::Auto,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = || it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match arg.as_str() {
            "--small" => {
                a.docs = 3_000;
                a.n_vectors = 20_000;
                a.queries = 200;
            }
            "--no-text" => a.text = false,
            "--no-vectors" => a.vectors = false,
            "--docs" => a.docs = num(),
            "--vectors" => a.n_vectors = num(),
            "--dim" => a.dim = num(),
            "--queries" => a.queries = num(),
            "--rounds" => a.rounds = num().max(1),
            "--dump-vectors" => a.dump_vectors = it.next().map(PathBuf::from),
            "--latent" => a.shape.latent = num().max(1),
            "--clusters" => a.shape.clusters = num().max(1),
            "--spread" => a.shape.spread = num() as f32 / 100.0,
            "--noise" => a.shape.noise = num() as f32 / 100.0,
            "--half-rows" => {
                let v = it.next().unwrap_or_default();
                a.half_rows = HalfRows::parse(&v).unwrap_or_else(|| {
                    eprintln!("--half-rows takes auto, on or off, not `{v}`");
                    std::process::exit(2);
                });
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    a
}

fn main() {
    let a = args();
    if a.text {
        text_bench(&a);
    }
    if a.vectors {
        vector_bench(&a);
    }
}

// ---------------------------------------------------------------------------------
// Text

struct Page {
    title: String,
    body: String,
}

fn man_pages(limit: usize) -> Vec<Page> {
    let mut files: Vec<PathBuf> = Vec::new();
    for section in 1..=9 {
        let dir = format!("/usr/share/man/man{section}");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let is_link = e.file_type().map(|t| t.is_symlink()).unwrap_or(true);
            if !is_link && path.extension().is_some_and(|x| x == "gz") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut pages = Vec::new();
    for path in files {
        if pages.len() >= limit {
            break;
        }
        let Some(page) = read_page(&path) else {
            continue;
        };
        pages.push(page);
    }
    pages
}

fn read_page(path: &Path) -> Option<Page> {
    let file = std::fs::File::open(path).ok()?;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut raw)
        .ok()?;
    let text = String::from_utf8_lossy(&raw);
    if text.trim_start().starts_with(".so ") {
        return None; // an alias page
    }
    let name = path.file_name()?.to_str()?.trim_end_matches(".gz");
    let title = match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    };
    Some(Page {
        title: title.to_string(),
        body: strip_roff(&text),
    })
}

/// Crude roff stripping: drop comments and macro names, keep macro arguments and
/// text, remove font/escape sequences.
fn strip_roff(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        let line =
            if line.starts_with(".\\\"") || line.starts_with("'\\\"") || line.starts_with("\\\"") {
                continue;
            } else if let Some(rest) = line.strip_prefix('.').or_else(|| line.strip_prefix('\'')) {
                match rest.split_once(char::is_whitespace) {
                    Some((_, args)) => args,
                    None => continue,
                }
            } else {
                line
            };
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(if c == '"' { ' ' } else { c });
                continue;
            }
            match chars.next() {
                Some('f') | Some('s') | Some('n') | Some('*') | Some('k') => {
                    // \fB, \f(XX, \f[XX], \s+2, \*(xx ...
                    match chars.next() {
                        Some('(') => {
                            chars.next();
                            chars.next();
                        }
                        Some('[') => {
                            for c in chars.by_ref() {
                                if c == ']' {
                                    break;
                                }
                            }
                        }
                        Some('+') | Some('-') => {
                            chars.next();
                        }
                        _ => {}
                    }
                }
                Some('(') => {
                    chars.next();
                    chars.next();
                    out.push(' ');
                }
                Some('-') => out.push('-'),
                Some('e') | Some('\\') => out.push('\\'),
                Some('&') | Some('c') | Some('%') | Some('"') => {
                    if line.contains("\\\"") {
                        // a trailing comment: drop the rest of the line
                        break;
                    }
                }
                _ => out.push(' '),
            }
        }
        out.push('\n');
    }
    out
}

const QUERIES: &[&str] = &[
    "file",
    "directory listing",
    "network interface configuration",
    "signal handler",
    "memory allocation",
    "regular expression",
    "compress archive",
    "socket",
    "permission denied",
    "print formatted output",
    "kernel module",
    "user password",
    "terminal",
    "environment variable",
    "process scheduling priority",
    "date time format",
    "copy files recursively",
    "unicode character",
    "symbolic link",
    "certificate",
    "shared library",
    "mount filesystem",
    "compiler optimization",
    "package manager",
    "display manual pages",
    "thread",
    "timeout",
    "checksum",
    "locale settings",
    "standard input",
];

/// Deterministic typos: words of 5+ letters get one edit (swap, deletion or
/// substitution), words of 8+ letters two.
fn with_typos(query: &str, salt: usize) -> String {
    query
        .split_whitespace()
        .enumerate()
        .map(|(i, w)| {
            let mut c: Vec<char> = w.chars().collect();
            let edits = match c.len() {
                0..=4 => 0,
                5..=7 => 1,
                _ => 2,
            };
            for e in 0..edits {
                let at = 1 + (salt + i * 3 + e * 2) % (c.len() - 2);
                match (salt + i + e) % 3 {
                    0 => c.swap(at, at + 1),
                    1 => {
                        c.remove(at);
                    }
                    _ => c[at] = if c[at] == 'x' { 'q' } else { 'x' },
                }
            }
            c.into_iter().collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn fts_query(q: &str) -> String {
    q.split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "")))
        .collect::<Vec<_>>()
        .join(" OR ")
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

struct Lat {
    p50: Duration,
    p99: Duration,
    hits: usize,
}

fn measure(queries: &[String], rounds: usize, mut run: impl FnMut(&str) -> usize) -> Lat {
    let mut samples = Vec::with_capacity(queries.len() * rounds);
    let mut hits = 0;
    for q in queries {
        hits += run(q); // warm-up, and the hit count
    }
    for _ in 0..rounds {
        for q in queries {
            let t = Instant::now();
            std::hint::black_box(run(q));
            samples.push(t.elapsed());
        }
    }
    Lat {
        p50: percentile(&mut samples, 0.50),
        p99: percentile(&mut samples, 0.99),
        hits,
    }
}

/// An in-memory FTS5 table over `pages` (`options` are extra table options),
/// the time its inserts took, and its size in database pages.
fn fts5_load(pages: &[Page], options: &str) -> (Connection, Duration, usize) {
    let db = Connection::open_in_memory().expect("sqlite");
    db.execute_batch(&format!(
        "CREATE VIRTUAL TABLE man USING fts5(title, body, tokenize = 'porter unicode61'{options});"
    ))
    .expect("fts5 is compiled into the bundled sqlite");
    let t = Instant::now();
    {
        let tx = db.unchecked_transaction().expect("tx");
        {
            let mut ins = tx
                .prepare("INSERT INTO man(rowid, title, body) VALUES (?1, ?2, ?3)")
                .expect("prepare");
            for (i, p) in pages.iter().enumerate() {
                ins.execute(params![i as i64, p.title, p.body])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    let elapsed = t.elapsed();
    let page_count: i64 = db
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap_or(0);
    let page_size: i64 = db
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap_or(0);
    (db, elapsed, (page_count * page_size) as usize)
}

/// Runs `q` on `ix`, top 10, and returns the number of hits. `served`: as
/// `POST /api/search` runs it by default (ekoDB scores, prefix matching);
/// otherwise the library's default (BM25, whole words).
fn run_query(ix: &TextIndex, q: &str, fuzzy: bool, served: bool) -> usize {
    let mut tq = TextQuery::new(q);
    tq.limit = 10;
    tq.fuzzy = fuzzy;
    if served {
        tq.scoring = Scoring::EkoDb;
        tq.prefix = true;
    }
    tq.max_edit_distance = 2;
    ix.search(&tq, &|_| true).map(|r| r.hits.len()).unwrap_or(0)
}

fn text_bench(a: &Args) {
    let t = Instant::now();
    let pages = man_pages(a.docs);
    let load = t.elapsed();
    let bytes: usize = pages.iter().map(|p| p.title.len() + p.body.len()).sum();
    println!(
        "## Text search: {} man pages ({}), loaded in {:.1} s\n",
        pages.len(),
        mib(bytes),
        load.as_secs_f64()
    );

    // Ours, one by one (as live writes arrive), then all at once (as a
    // collection's first index is built; the index searched below).
    let mut one_by_one = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
    let t = Instant::now();
    let mut longest_insert = Duration::ZERO;
    for (i, p) in pages.iter().enumerate() {
        let w = Instant::now();
        one_by_one.upsert(DocId(i as u32), &[("title", &p.title), ("body", &p.body)]);
        longest_insert = longest_insert.max(w.elapsed());
    }
    let ours_single = t.elapsed();
    let ours_single_mem = one_by_one.memory_bytes();
    // Then every document replaced twice: removed versions pile up until
    // they outnumber the live ones, and are then swept out of the lists as
    // writes come; the longest write shows what the sweep adds to one write.
    let t = Instant::now();
    let mut longest = Duration::ZERO;
    for round in 0..2 {
        for (i, p) in pages.iter().enumerate() {
            let (title, body) = if round == 0 {
                (&p.body, &p.title)
            } else {
                (&p.title, &p.body)
            };
            let w = Instant::now();
            one_by_one.upsert(DocId(i as u32), &[("title", title), ("body", body)]);
            longest = longest.max(w.elapsed());
        }
    }
    let ours_replace = t.elapsed();
    let ours_replace_mem = one_by_one.memory_bytes();
    // `one_by_one` is kept: queried below with removed versions pending.
    let mut ix = TextIndex::new(Analyzer::new(Some(Language::ENGLISH)));
    let t = Instant::now();
    ix.bulk(|ix| {
        for (i, p) in pages.iter().enumerate() {
            ix.upsert(DocId(i as u32), &[("title", &p.title), ("body", &p.body)]);
        }
    });
    let ours_index = t.elapsed();
    let ours_mem = ix.memory_bytes();

    // SQLite FTS5: as a table of its own (it keeps a copy of the text, which
    // the queries below read), and contentless (`content=''`: the index alone,
    // positions included), the size to hold our index against.
    let (db, fts_index, fts_mem) = fts5_load(&pages, "");
    let (contentless, fts_bare_index, fts_bare_mem) = fts5_load(&pages, ", content=''");
    drop(contentless);

    let n = pages.len() as f64;
    println!("| engine | index time | docs/s | index memory |");
    println!("|---|---|---|---|");
    println!(
        "| tidepool-search, first build (bulk) | {:.2} s | {:.0} | {} |",
        ours_index.as_secs_f64(),
        n / ours_index.as_secs_f64(),
        mib(ours_mem)
    );
    println!(
        "| tidepool-search, one by one | {:.2} s | {:.0} | {} |",
        ours_single.as_secs_f64(),
        n / ours_single.as_secs_f64(),
        mib(ours_single_mem)
    );
    println!(
        "| tidepool-search, every document replaced twice | {:.2} s | {:.0} | {} |",
        ours_replace.as_secs_f64(),
        2.0 * n / ours_replace.as_secs_f64(),
        mib(ours_replace_mem)
    );
    println!(
        "| SQLite FTS5 | {:.2} s | {:.0} | {} (db pages) |",
        fts_index.as_secs_f64(),
        n / fts_index.as_secs_f64(),
        mib(fts_mem)
    );
    println!(
        "| SQLite FTS5, contentless (index only) | {:.2} s | {:.0} | {} (db pages) |",
        fts_bare_index.as_secs_f64(),
        n / fts_bare_index.as_secs_f64(),
        mib(fts_bare_mem)
    );
    println!(
        "\nLongest single write: {:.1} ms building one by one, {:.1} ms replacing every document twice (with the sweep of removed versions)",
        longest_insert.as_secs_f64() * 1e3,
        longest.as_secs_f64() * 1e3
    );
    println!();

    let exact: Vec<String> = QUERIES.iter().map(|q| q.to_string()).collect();
    let typos: Vec<String> = QUERIES
        .iter()
        .enumerate()
        .map(|(i, q)| with_typos(q, i))
        .collect();
    let rounds = a.rounds;

    let ix_ref = &ix;
    let ours_as = |fuzzy: bool, served: bool| move |q: &str| run_query(ix_ref, q, fuzzy, served);
    let ours = |fuzzy: bool| ours_as(fuzzy, false);
    let mut stmt = db
        .prepare("SELECT rowid FROM man WHERE man MATCH ?1 ORDER BY bm25(man) LIMIT 10")
        .expect("prepare");
    let mut fts = |q: &str| {
        let rows = stmt.query_map([fts_query(q)], |r| r.get::<_, i64>(0));
        rows.map(|rows| rows.flatten().count()).unwrap_or(0)
    };

    let ours_exact = measure(&exact, rounds, ours(false));
    let served_exact = measure(&exact, rounds, ours_as(false, true));
    let served_fuzzy = measure(&typos, rounds, ours_as(true, true));
    let fts_exact = measure(&exact, rounds, &mut fts);
    let ours_fuzzy = measure(&typos, rounds, ours(true));
    let ours_typos_plain = measure(&typos, rounds, ours(false));
    let churned = &one_by_one;
    let churned_exact = measure(&exact, rounds, |q| run_query(churned, q, false, false));
    let churned_served = measure(&exact, rounds, |q| run_query(churned, q, false, true));
    // The server gives such a sweep its idle time, 128 KiB of lists a turn
    // (`TextIndex::sweep_removed`): the same index after it.
    let t = Instant::now();
    let mut turns = 0;
    while one_by_one.sweep_removed(128 * 1024) > 0 {
        turns += 1;
    }
    let (idle_sweep, swept_mem) = (t.elapsed(), one_by_one.memory_bytes());
    let swept = &one_by_one;
    let swept_exact = measure(&exact, rounds, |q| run_query(swept, q, false, false));
    let fts_typos = measure(&typos, rounds, &mut fts);

    println!(
        "Idle sweeps of the index replaced twice: {turns} turns of 128 KiB, {:.0} ms in all (longest turn bounded by its budget); memory {} -> {}\n",
        idle_sweep.as_secs_f64() * 1e3,
        mib(ours_replace_mem),
        mib(swept_mem)
    );
    println!(
        "{} queries x {rounds} rounds, top 10, single thread. Typo queries: {}\n",
        exact.len(),
        typos.iter().take(6).cloned().collect::<Vec<_>>().join(", ") + ", ..."
    );
    println!("| queries | engine | p50 | p99 | queries with hits |");
    println!("|---|---|---|---|---|");
    let row = |what: &str, engine: &str, l: &Lat, hit_queries: usize| {
        println!(
            "| {what} | {engine} | {} | {} | {hit_queries}/{} |",
            us(l.p50),
            us(l.p99),
            exact.len()
        );
    };
    let hit_queries = |run: &mut dyn FnMut(&str) -> usize, qs: &[String]| {
        qs.iter().filter(|q| run(q) > 0).count()
    };
    let (h1, h2, h3, h4, h5) = (
        hit_queries(&mut ours(false), &exact),
        hit_queries(&mut fts, &exact),
        hit_queries(&mut ours(true), &typos),
        hit_queries(&mut ours(false), &typos),
        hit_queries(&mut fts, &typos),
    );
    let (h6, h7) = (
        hit_queries(&mut ours_as(false, true), &exact),
        hit_queries(&mut ours_as(true, true), &typos),
    );
    row("exact", "tidepool-search", &ours_exact, h1);
    row(
        "exact",
        "tidepool-search, ekoDB scores + prefixes",
        &served_exact,
        h6,
    );
    row("exact", "SQLite FTS5", &fts_exact, h2);
    let pending = "tidepool-search, removed versions pending (replaced twice, one by one)";
    row("exact", pending, &churned_exact, h1);
    row(
        "exact",
        &format!("{pending}, ekoDB scores + prefixes"),
        &churned_served,
        h6,
    );
    row(
        "exact",
        "tidepool-search, replaced twice, after idle sweeps",
        &swept_exact,
        h1,
    );
    row("typos", "tidepool-search fuzzy (d <= 2)", &ours_fuzzy, h3);
    row(
        "typos",
        "tidepool-search fuzzy, ekoDB scores + prefixes",
        &served_fuzzy,
        h7,
    );
    row("typos", "tidepool-search, not fuzzy", &ours_typos_plain, h4);
    row("typos", "SQLite FTS5 (no typo tolerance)", &fts_typos, h5);
    let _ = (
        served_exact.hits,
        served_fuzzy.hits,
        ours_exact.hits,
        fts_exact.hits,
        ours_fuzzy.hits,
        ours_typos_plain.hits,
        fts_typos.hits,
    );
    println!();

    // Agreement between the two engines' top 10 on the exact queries.
    let mut overlap = 0usize;
    let mut total = 0usize;
    for q in &exact {
        let mut tq = TextQuery::new(q.as_str());
        tq.limit = 10;
        let mine: Vec<i64> = ix
            .search(&tq, &|_| true)
            .map(|r| r.hits.iter().map(|h| i64::from(h.doc.0)).collect())
            .unwrap_or_default();
        let theirs: Vec<i64> = stmt
            .query_map([fts_query(q)], |r| r.get::<_, i64>(0))
            .map(|rows| rows.flatten().collect())
            .unwrap_or_default();
        overlap += mine.iter().filter(|d| theirs.contains(d)).count();
        total += theirs.len();
    }
    println!(
        "Top-10 overlap with FTS5 on the exact queries: {overlap}/{total} ({:.0}%); first query `{}`: {}\n",
        100.0 * overlap as f64 / total.max(1) as f64,
        exact[1],
        {
            let mut tq = TextQuery::new(exact[1].as_str());
            tq.limit = 5;
            ix.search(&tq, &|_| true)
                .map(|r| {
                    r.hits
                        .iter()
                        .map(|h| pages[h.doc.0 as usize].title.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        }
    );
}

// ---------------------------------------------------------------------------------
// Vectors

struct Gen(u64);

impl Gen {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn gauss(&mut self) -> f32 {
        let u = ((self.u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let v = ((self.u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

#[derive(Clone, Copy)]
struct Shape {
    latent: usize,
    clusters: usize,
    spread: f32,
    noise: f32,
}

fn synthetic(n: usize, dim: usize, shape: Shape, seed: u64) -> Vec<Vec<f32>> {
    let Shape {
        latent,
        clusters,
        spread,
        noise,
    } = shape;
    let mut g = Gen(seed);
    let proj: Vec<f32> = (0..dim * latent)
        .map(|_| g.gauss() / (latent as f32).sqrt())
        .collect();
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..latent).map(|_| g.gauss()).collect())
        .collect();
    (0..n)
        .map(|_| {
            let c = &centres[(g.u64() % clusters as u64) as usize];
            let z: Vec<f32> = c.iter().map(|x| x + spread * g.gauss()).collect();
            (0..dim)
                .map(|r| {
                    let row = &proj[r * latent..(r + 1) * latent];
                    row.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() + noise * g.gauss()
                })
                .collect()
        })
        .collect()
}

fn vector_bench(a: &Args) {
    let nq = a.queries;
    let t = Instant::now();
    let mut data = synthetic(a.n_vectors + nq, a.dim, a.shape, 2024);
    let queries = data.split_off(a.n_vectors);
    if let Some(dir) = &a.dump_vectors {
        let raw = |vs: &[Vec<f32>]| -> Vec<u8> {
            vs.iter()
                .flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes()))
                .collect()
        };
        std::fs::create_dir_all(dir).expect("dump directory");
        std::fs::write(dir.join("base.f32"), raw(&data)).expect("write base.f32");
        std::fs::write(dir.join("queries.f32"), raw(&queries)).expect("write queries.f32");
        println!("Vectors written to {} (dim {})\n", dir.display(), a.dim);
    }
    println!(
        "## Vector search: {} x {}-dim synthetic clustered vectors (generated in {:.1} s), cosine, m = 16, ef_construction = 128, half-precision copy {:?} (kept: {})\n",
        a.n_vectors,
        a.dim,
        t.elapsed().as_secs_f64(),
        a.half_rows,
        a.half_rows.keeps_copy()
    );
    let mut ix = VectorIndex::new(Metric::Cosine, 16, 128, 7).with_half_rows(a.half_rows);
    let t = Instant::now();
    for (i, v) in data.iter().enumerate() {
        ix.upsert(DocId(i as u32), v).expect("valid vector");
    }
    let build = t.elapsed();
    drop(data);
    println!(
        "Build: {:.1} s ({:.0} vectors/s), memory {} (raw vectors {}), graph: {}\n",
        build.as_secs_f64(),
        a.n_vectors as f64 / build.as_secs_f64(),
        mib(ix.memory_bytes()),
        mib(a.n_vectors * a.dim * 4),
        ix.is_graph()
    );

    let k = 10;
    let t = Instant::now();
    let truth: Vec<Vec<DocId>> = queries
        .iter()
        .map(|q| {
            ix.search_exact(q, k, &|_| true)
                .expect("dims")
                .into_iter()
                .map(|h| h.0)
                .collect()
        })
        .collect();
    let exact_qps = nq as f64 / t.elapsed().as_secs_f64();

    println!("| search | ef_search | QPS (1 thread) | recall@10 |");
    println!("|---|---|---|---|");
    println!("| exact (brute force) | - | {exact_qps:.0} | 1.000 |");
    for ef in [16, 32, 64, 128, 256] {
        let t = Instant::now();
        let mut found = 0usize;
        for (q, want) in queries.iter().zip(&truth) {
            let got = ix.search(q, k, ef, None, &|_| true).expect("dims");
            found += got.iter().filter(|h| want.contains(&h.0)).count();
        }
        let qps = nq as f64 / t.elapsed().as_secs_f64();
        println!(
            "| HNSW | {ef} | {qps:.0} | {:.3} |",
            found as f64 / (nq * k) as f64
        );
    }

    // Filtered: accept 1 document in 10 and 1 in 1,000.
    for modulus in [10u32, 1_000] {
        let accept = move |d: DocId| d.0 % modulus == 1;
        let sample = nq.min(100);
        let wants: Vec<Vec<DocId>> = queries
            .iter()
            .take(sample)
            .map(|q| {
                ix.search_exact(q, k, &accept)
                    .expect("dims")
                    .into_iter()
                    .map(|h| h.0)
                    .collect()
            })
            .collect();
        let mut found = 0usize;
        let mut returned = 0usize;
        let t = Instant::now();
        for (q, want) in queries.iter().zip(&wants) {
            let got = ix.search(q, k, 64, None, &accept).expect("dims");
            returned += got.len();
            found += got.iter().filter(|h| want.contains(&h.0)).count();
        }
        let elapsed = t.elapsed().as_secs_f64();
        println!(
            "| filtered, keeps 1/{modulus} | 64 | {:.0} | {:.3} ({} of {} results returned) |",
            sample as f64 / elapsed,
            found as f64 / (sample * k) as f64,
            returned,
            sample * k
        );
    }
    println!();
}
