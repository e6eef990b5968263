//! A chat model from one GGUF file (Gemma 3, e.g. gemma-3-270m Q4_K_M): the
//! conversation in Gemma's turn format, then one token at a time, each
//! handed to the caller as text the moment it is whole.

use crate::spm::{SentencePiece, Utf8Stream};
use crate::ModelError;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_gemma3::ModelWeights;
use std::path::Path;

/// Tokens of prompt and answer the model attends to at most; older turns
/// are dropped first (the cost of reading a prompt grows with its length).
const CONTEXT_TOKENS: usize = 2048;
/// The answer's recent tokens, whose logits are damped so a small model
/// does not loop. The prompt's are not: copying from the records it holds
/// is what a grounded answer does.
const REPEAT_WINDOW: usize = 64;
const REPEAT_PENALTY: f32 = 1.3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub max_tokens: usize,
    /// `None` or 0: always the likeliest token (deterministic).
    pub temperature: Option<f64>,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its turn.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller stopped listening.
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish: Finish,
}

#[derive(Debug)]
pub struct ChatModel {
    /// Cloned per answer: the tensors are shared, the cache is the answer's.
    weights: ModelWeights,
    vocab: SentencePiece,
    name: String,
    bos: u32,
    start_turn: u32,
    end_turn: u32,
    eos: u32,
}

impl ChatModel {
    /// Loads a Gemma 3 GGUF file; its name is the file's stem.
    pub fn load(file: &Path) -> Result<ChatModel, ModelError> {
        let err = |m: String| ModelError::new(file, m);
        let mut reader = std::fs::File::open(file).map_err(|e| err(e.to_string()))?;
        let content =
            Content::read(&mut reader).map_err(|e| err(format!("not a GGUF file: {e}")))?;
        let meta = |key: &str| {
            content
                .metadata
                .get(key)
                .ok_or_else(|| err(format!("no `{key}` in the file's metadata")))
        };
        let arch = meta("general.architecture")?
            .to_string()
            .map_err(|e| err(e.to_string()))?
            .clone();
        if arch != "gemma3" {
            return Err(err(format!(
                "architecture `{arch}` is not supported (gemma3 is)"
            )));
        }
        let vocab = vocabulary(&meta, &err)?;
        let id = |piece: &str| {
            vocab
                .id(piece)
                .ok_or_else(|| err(format!("the vocabulary has no `{piece}`")))
        };
        let number = |key: &str| -> Result<u32, ModelError> {
            meta(key)?.to_u32().map_err(|e| err(format!("{key}: {e}")))
        };
        let (bos, eos) = (
            number("tokenizer.ggml.bos_token_id")?,
            number("tokenizer.ggml.eos_token_id")?,
        );
        let (start_turn, end_turn) = (id("<start_of_turn>")?, id("<end_of_turn>")?);
        // candle's k-quant kernels use AVX only when the whole build targets
        // it; matrix products on weights expanded to f32 take its runtime-
        // detected SIMD path instead: 14x faster to read a prompt here, for
        // about 1 GB more memory. Read by candle on this thread, at load.
        std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
        let weights = ModelWeights::from_gguf(content, &mut reader, &Device::Cpu)
            .map_err(|e| err(format!("cannot load the weights: {e}")))?;
        let name = file
            .file_stem()
            .map_or_else(|| "gguf".into(), |n| n.to_string_lossy().into_owned());
        Ok(ChatModel {
            weights,
            vocab,
            name,
            bos,
            start_turn,
            end_turn,
            eos,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Answers the conversation, handing each piece of text to `on_text`
    /// (which returns `false` to stop).
    pub fn generate(
        &self,
        turns: &[Turn],
        options: &Options,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generated, String> {
        let max_tokens = options.max_tokens.clamp(1, CONTEXT_TOKENS / 2);
        let prompt = self.prompt(turns, CONTEXT_TOKENS - max_tokens);
        let mut model = self.weights.clone();
        let mut sampler = match options.temperature {
            Some(t) if t > 0.0 => LogitsProcessor::from_sampling(
                options.seed,
                Sampling::All {
                    temperature: t.min(2.0),
                },
            ),
            _ => LogitsProcessor::from_sampling(options.seed, Sampling::ArgMax),
        };
        let e = |e: candle_core::Error| e.to_string();
        let input = Tensor::new(prompt.as_slice(), &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .map_err(e)?;
        let mut logits = model.forward(&input, 0).map_err(e)?;
        let mut said: Vec<u32> = Vec::new();
        let mut text = Utf8Stream::default();
        let mut completion = 0;
        let finish = loop {
            let last = logits.squeeze(0).map_err(e)?;
            let recent = &said[said.len().saturating_sub(REPEAT_WINDOW)..];
            let last =
                candle_transformers::utils::apply_repeat_penalty(&last, REPEAT_PENALTY, recent)
                    .map_err(e)?;
            let next = sampler.sample(&last).map_err(e)?;
            if next == self.eos || next == self.end_turn {
                break Finish::Stop;
            }
            completion += 1;
            said.push(next);
            let piece = text.push(&self.vocab.piece_bytes(next));
            if !piece.is_empty() && !on_text(&piece) {
                break Finish::Cancelled;
            }
            if completion >= max_tokens {
                break Finish::Length;
            }
            let input = Tensor::new(&[next], &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .map_err(e)?;
            logits = model
                .forward(&input, prompt.len() + said.len() - 1)
                .map_err(e)?;
        };
        let rest = text.finish();
        if !rest.is_empty() && finish != Finish::Cancelled {
            on_text(&rest);
        }
        Ok(Generated {
            prompt_tokens: prompt.len(),
            completion_tokens: completion,
            finish,
        })
    }

    /// The conversation in Gemma's turn format, ending where the model
    /// speaks, within `budget` tokens. Gemma has no system role: the system
    /// text opens the first user turn. Over budget, the oldest turns go
    /// first, then the end of the system text, then the start of the
    /// question.
    fn prompt(&self, turns: &[Turn], budget: usize) -> Vec<u32> {
        let system: Vec<String> = turns
            .iter()
            .filter(|t| t.role == Role::System)
            .map(|t| t.text.clone())
            .collect();
        let mut system = self.vocab.encode(&system.join("\n\n"));
        let mut rest: Vec<(Role, Vec<u32>)> = turns
            .iter()
            .filter(|t| t.role != Role::System)
            .map(|t| (t.role, self.vocab.encode(&t.text)))
            .collect();
        let newline = self.vocab.encode("\n");
        let user = self.vocab.encode("user\n");
        let model = self.vocab.encode("model\n");
        // Per turn: <start_of_turn>, role line, text, <end_of_turn>, newline.
        let framing = 2 + user.len().max(model.len()) + newline.len();
        let separator = 2 * newline.len();
        let size = |system: &[u32], rest: &[(Role, Vec<u32>)]| {
            1 + system.len()
                + separator
                + rest.iter().map(|(_, t)| t.len() + framing).sum::<usize>()
                + 1
                + model.len()
        };
        while rest.len() > 1 && size(&system, &rest) > budget {
            rest.remove(0);
        }
        if size(&system, &rest) > budget {
            let over = size(&system, &rest) - budget;
            system.truncate(system.len().saturating_sub(over));
        }
        if size(&system, &rest) > budget {
            if let Some((_, last)) = rest.last_mut() {
                let over = size(&system, &[(Role::User, last.clone())]) - budget;
                last.drain(..over.min(last.len()));
            }
        }
        if rest.first().is_none_or(|(r, _)| *r != Role::User) {
            rest.insert(0, (Role::User, Vec::new()));
        }
        let mut out = vec![self.bos];
        for (i, (role, text)) in rest.iter().enumerate() {
            out.push(self.start_turn);
            out.extend(if *role == Role::User { &user } else { &model });
            if i == 0 && !system.is_empty() {
                out.extend(&system);
                out.extend(&newline);
                out.extend(&newline);
            }
            out.extend(text);
            out.push(self.end_turn);
            out.extend(&newline);
        }
        out.push(self.start_turn);
        out.extend(&model);
        out
    }
}

/// The tokenizer the file carries.
fn vocabulary<'a>(
    meta: &dyn Fn(&str) -> Result<&'a Value, ModelError>,
    err: &dyn Fn(String) -> ModelError,
) -> Result<SentencePiece, ModelError> {
    let model = meta("tokenizer.ggml.model")?
        .to_string()
        .map_err(|e| err(e.to_string()))?;
    if model != "llama" {
        return Err(err(format!(
            "tokenizer `{model}` is not supported (SentencePiece, `llama`, is)"
        )));
    }
    let array = |key: &str| -> Result<&'a Vec<Value>, ModelError> {
        meta(key)?.to_vec().map_err(|e| err(format!("{key}: {e}")))
    };
    let pieces = array("tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| err(format!("tokenizer.ggml.tokens: {e}")))?;
    let scores = array("tokenizer.ggml.scores")?
        .iter()
        .map(Value::to_f32)
        .collect::<Result<Vec<f32>, _>>()
        .map_err(|e| err(format!("tokenizer.ggml.scores: {e}")))?;
    let kinds = match meta("tokenizer.ggml.token_type") {
        Ok(v) => v
            .to_vec()
            .map_err(|e| err(e.to_string()))?
            .iter()
            .map(Value::to_i32)
            .collect::<Result<Vec<i32>, _>>()
            .map_err(|e| err(format!("tokenizer.ggml.token_type: {e}")))?,
        Err(_) => Vec::new(),
    };
    if scores.len() != pieces.len() {
        return Err(err(
            "the tokenizer's pieces and scores differ in number".into()
        ));
    }
    let unknown = meta("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().map_err(|e| err(e.to_string())))
        .unwrap_or(0);
    Ok(SentencePiece::new(pieces, scores, kinds, unknown))
}
