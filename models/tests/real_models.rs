//! The real models, as `scripts/fetch-models` puts them in `models/weights/` (run
//! by `scripts/setup-test-deps`): all-MiniLM-L6-v2 and Gemma 3 270M.

use std::path::{Path, PathBuf};
use tidepool_models::{ChatModel, Embedder, Finish, Options, Role, Turn};

fn models_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/weights");
    assert!(
        dir.join("all-MiniLM-L6-v2/model.safetensors").exists()
            && dir.join("gemma-3-270m-q4_k_m.gguf").exists(),
        "run scripts/fetch-models (or scripts/setup-test-deps) first: {} has no models",
        dir.display()
    );
    dir
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum()
}

/// Cosine similarities from an independent computation
/// (`tests/reference/minilm_ref.py`: numpy over the same weights).
#[test]
fn embeddings_match_the_reference_computation() {
    let model = Embedder::load(&models_dir().join("all-MiniLM-L6-v2")).unwrap();
    assert_eq!(model.name(), "all-MiniLM-L6-v2");
    assert_eq!(model.dimensions(), 384);
    let reference = include_str!("reference/pairs.tsv");
    let expected = [0.755337, -0.040166, 0.864528, 0.389886, -0.024680, 0.509550];
    for (line, want) in reference.lines().zip(expected) {
        let (a, b) = line.split_once('\t').unwrap();
        let v = model
            .embed(&[a.to_string(), b.to_string()])
            .unwrap()
            .vectors;
        assert_eq!(v[0].len(), 384);
        let norm: f64 = cosine(&v[0], &v[0]);
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
        let got = cosine(&v[0], &v[1]);
        assert!((got - want).abs() < 1e-3, "{a:?} ~ {b:?}: {got} vs {want}");
    }
    // Meaning, not spelling: "automobile" is nearer "car" than "banana" is.
    let v = model
        .embed(&["car".into(), "automobile".into(), "banana".into()])
        .unwrap()
        .vectors;
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.3);
}

#[test]
fn a_long_text_is_truncated_not_refused() {
    let model = Embedder::load(&models_dir().join("all-MiniLM-L6-v2")).unwrap();
    let long = "the tide comes in ".repeat(2000);
    let done = model.embed(&[long]).unwrap();
    assert_eq!(done.tokens, model.max_tokens());
    assert_eq!(done.vectors[0].len(), 384);
}

#[test]
fn missing_or_corrupt_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = Embedder::load(dir.path()).unwrap_err();
    assert!(err.file.ends_with("config.json"), "{err}");

    let source = models_dir().join("all-MiniLM-L6-v2");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(source.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("model.safetensors"), b"not weights").unwrap();
    let err = Embedder::load(dir.path()).unwrap_err();
    assert!(err.file.ends_with("model.safetensors"), "{err}");

    let gguf = dir.path().join("broken.gguf");
    let err = ChatModel::load(&gguf).unwrap_err();
    assert!(err.to_string().contains("broken.gguf"), "{err}");
    // The first megabyte of the real file: a header whose tensors are cut off.
    let real = std::fs::read(models_dir().join("gemma-3-270m-q4_k_m.gguf")).unwrap();
    std::fs::write(&gguf, &real[..1 << 20]).unwrap();
    let err = ChatModel::load(&gguf).unwrap_err();
    assert!(err.file.ends_with("broken.gguf"), "{err}");
    std::fs::write(&gguf, b"GGUF but not really").unwrap();
    let err = ChatModel::load(&gguf).unwrap_err();
    assert!(err.message.contains("GGUF"), "{err}");
}

/// One load for every chat check: the model takes seconds to load.
#[test]
fn the_chat_model_streams_its_own_tokens() {
    let model = ChatModel::load(&models_dir().join("gemma-3-270m-q4_k_m.gguf")).unwrap();
    assert_eq!(model.name(), "gemma-3-270m-q4_k_m");
    let options = Options {
        max_tokens: 16,
        temperature: None,
        seed: 0,
    };
    // What the model knows: the forward pass is Gemma's.
    let mut answer = String::new();
    let done = model
        .generate(
            &[Turn {
                role: Role::User,
                text: "What is the capital of France?".into(),
            }],
            &options,
            |p| {
                answer.push_str(p);
                true
            },
        )
        .unwrap();
    assert_eq!(answer, "Paris", "{done:?}");
    assert_eq!(done.finish, Finish::Stop, "it ends its own answer");

    // What it reads: the system text's record, streamed piece by piece.
    let turns = [
        Turn {
            role: Role::System,
            text: "Records: The Tidepool mascot is a purple octopus named Inky.".into(),
        },
        Turn {
            role: Role::User,
            text: "Describe the Tidepool mascot.".into(),
        },
    ];
    let mut pieces = Vec::new();
    let done = model
        .generate(&turns, &options, |p| {
            pieces.push(p.to_string());
            true
        })
        .unwrap();
    assert!(pieces.len() >= 2, "{pieces:?}");
    assert!(done.completion_tokens >= pieces.len() - 1, "{done:?}");
    assert!(done.prompt_tokens > 10, "{done:?}");
    assert!(matches!(done.finish, Finish::Stop | Finish::Length));
    let text: String = pieces.concat();
    assert!(text.contains("Inky"), "{text:?}");

    // The likeliest token each time: the same answer again.
    let mut again = String::new();
    model
        .generate(&turns, &options, |p| {
            again.push_str(p);
            true
        })
        .unwrap();
    assert_eq!(again, text);

    // The caller stops listening: the model stops.
    let mut heard = 0;
    let stopped = model
        .generate(&turns, &options, |_| {
            heard += 1;
            heard < 2
        })
        .unwrap();
    assert_eq!(stopped.finish, Finish::Cancelled);
    assert_eq!(heard, 2);
}
