//! The in-process models' speed on this machine (`scripts/fetch-models`
//! first): the embedder's latency for one sentence and its throughput over
//! a batch, beside the offline feature-hashing embedder it replaces (the
//! "before", measured in the same run); and the chat model's time to first
//! token and tokens per second.
//!
//!     cargo build --release -p tidepool-benches --bin model_bench
//!     RAYON_NUM_THREADS=1 target/release/model_bench   # one core
//!     target/release/model_bench                       # every core

use std::path::PathBuf;
use std::time::{Duration, Instant};
use tidepool_models::{ChatModel, Embedder, Options, Role, Turn};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn sentences(n: usize) -> Vec<String> {
    let subjects = [
        "The tide",
        "A database",
        "My neighbour",
        "The octopus",
        "Our server",
    ];
    let verbs = ["remembers", "indexes", "streams", "answers", "replicates"];
    let objects = [
        "every record",
        "the morning news",
        "a purple shell",
        "each query",
        "the log",
    ];
    (0..n)
        .map(|i| {
            format!(
                "{} {} {} at {} o'clock.",
                subjects[i % 5],
                verbs[(i / 5) % 5],
                objects[(i / 25) % 5],
                i % 12 + 1
            )
        })
        .collect()
}

fn main() {
    let dir = PathBuf::from(arg("--models", "models/weights"));
    let texts = sentences(arg("--texts", "200").parse().unwrap());
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!("threads: {threads}");

    let t = Instant::now();
    let embedder = Embedder::load(&dir.join("all-MiniLM-L6-v2")).expect("embedder");
    println!("embedder load: {:.2} s", t.elapsed().as_secs_f64());
    let mut one = Vec::new();
    for s in texts.iter().take(50) {
        let t = Instant::now();
        embedder.embed(std::slice::from_ref(s)).unwrap();
        one.push(t.elapsed());
    }
    let p50 = percentile(&mut one, 0.5);
    let t = Instant::now();
    let done = embedder.embed(&texts).unwrap();
    let model_rate = texts.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for s in &texts {
        std::hint::black_box(tidepool_search::embed(s, 384));
    }
    let hash_rate = texts.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "embed one sentence: p50 {:.1} ms; {} texts ({} word pieces): {:.0} texts/s; \
         offline hashing embedder: {:.0} texts/s (the model is {:.4}x its rate)",
        p50.as_secs_f64() * 1e3,
        texts.len(),
        done.tokens,
        model_rate,
        hash_rate,
        model_rate / hash_rate
    );

    let t = Instant::now();
    let chat = ChatModel::load(&dir.join("gemma-3-270m-q4_k_m.gguf")).expect("chat model");
    println!("chat model load: {:.2} s", t.elapsed().as_secs_f64());
    let context = texts[..20].join(" ");
    let turns = [
        Turn {
            role: Role::System,
            text: format!("Answer from these records: {context}"),
        },
        Turn {
            role: Role::User,
            text: "What does the octopus remember?".into(),
        },
    ];
    let max_tokens: usize = arg("--tokens", "64").parse().unwrap();
    let options = Options {
        max_tokens,
        temperature: Some(0.8),
        seed: 7,
    };
    for round in 0..2 {
        let start = Instant::now();
        let mut first = None;
        let done = chat
            .generate(&turns, &options, |_| {
                first.get_or_insert_with(|| start.elapsed());
                true
            })
            .unwrap();
        let total = start.elapsed();
        let first = first.unwrap_or(total);
        let after_first = (total - first).as_secs_f64();
        println!(
            "chat round {round}: prompt {} tokens, time to first token {:.0} ms, \
             {} tokens in {:.2} s ({:.1} tokens/s after the first)",
            done.prompt_tokens,
            first.as_secs_f64() * 1e3,
            done.completion_tokens,
            total.as_secs_f64(),
            (done.completion_tokens.saturating_sub(1)) as f64 / after_first.max(1e-9)
        );
    }
}
