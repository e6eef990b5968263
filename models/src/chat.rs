//! A chat model from one GGUF file (Gemma 3, e.g. gemma-3-270m Q4_K_M): the
//! conversation in Gemma's turn format, then one token at a time, each
//! handed to the caller as text the moment it is whole.

use crate::gemma3::Gemma3;
use crate::spm::{SentencePiece, Utf8Stream};
use crate::ModelError;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_transformers::generation::{LogitsProcessor, Sampling};
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
    /// Shared by every answer; each has a cache of its own.
    weights: Gemma3,
    vocab: SentencePiece,
    name: String,
    bos: u32,
    start_turn: u32,
    end_turn: u32,
    eos: u32,
    format: Format,
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
        let format = if content.metadata.contains_key("tokenizer.chat_template") {
            Format::Turns
        } else {
            Format::Completion
        };
        let weights = Gemma3::load(&content, &mut reader, CONTEXT_TOKENS)
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
            format,
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
        let mut cache = self.weights.new_cache();
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
        let mut logits = self.weights.forward(&prompt, 0, &mut cache).map_err(e)?;
        let mut said: Vec<u32> = Vec::new();
        let mut text = Utf8Stream::default();
        let mut stops = Stops::new(match self.format {
            Format::Turns => &[],
            Format::Completion => &["\n\nQuestion:", "\nQuestion:"],
        });
        let mut completion = 0;
        let finish = loop {
            let last = logits;
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
            let (piece, stopped) = stops.push(&text.push(&self.vocab.piece_bytes(next)));
            if !piece.is_empty() && !on_text(&piece) {
                break Finish::Cancelled;
            }
            if stopped {
                break Finish::Stop;
            }
            if completion >= max_tokens {
                break Finish::Length;
            }
            logits = self
                .weights
                .forward(&[next], prompt.len() + said.len() - 1, &mut cache)
                .map_err(e)?;
        };
        if finish != Finish::Cancelled {
            let (mut rest, _) = stops.push(&text.finish());
            rest.push_str(&stops.finish());
            if !rest.is_empty() {
                on_text(&rest);
            }
        }
        Ok(Generated {
            prompt_tokens: prompt.len(),
            completion_tokens: completion,
            finish,
        })
    }

    /// The tokens around each part of the conversation, in the file's
    /// format.
    fn frame(&self) -> Frame {
        let e = |t: &str| self.vocab.encode(t);
        let marked = |mark: u32, text: &str| {
            let mut v = vec![mark];
            v.extend(e(text));
            v
        };
        match self.format {
            Format::Turns => Frame {
                system: (
                    marked(self.start_turn, "user\n"),
                    marked(self.end_turn, "\n"),
                ),
                user: (
                    marked(self.start_turn, "user\n"),
                    marked(self.end_turn, "\n"),
                ),
                model: (
                    marked(self.start_turn, "model\n"),
                    marked(self.end_turn, "\n"),
                ),
                tail: marked(self.start_turn, "model\n"),
            },
            Format::Completion => Frame {
                system: (Vec::new(), e("\n\n")),
                user: (e("Question: "), e("\n")),
                model: (e("Answer: "), e("\n\n")),
                tail: e("Answer:"),
            },
        }
    }

    /// The conversation as the model reads it, ending where it speaks,
    /// within `budget` tokens. Over budget, the oldest turns go first, then
    /// the end of the system text, then the start of the question.
    fn prompt(&self, turns: &[Turn], budget: usize) -> Vec<u32> {
        let frame = self.frame();
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
        let around = |(a, b): &(Vec<u32>, Vec<u32>)| a.len() + b.len();
        let size = |system: &[u32], rest: &[(Role, Vec<u32>)]| {
            let sys = if system.is_empty() {
                0
            } else {
                system.len() + around(&frame.system)
            };
            let turns: usize = rest
                .iter()
                .map(|(r, t)| t.len() + around(frame.of(*r)))
                .sum();
            1 + sys + turns + frame.tail.len()
        };
        while rest.len() > 1 && size(&system, &rest) > budget {
            rest.remove(0);
        }
        if size(&system, &rest) > budget {
            let over = size(&system, &rest) - budget;
            system.truncate(system.len().saturating_sub(over));
        }
        if size(&system, &rest) > budget {
            let over = size(&system, &rest) - budget;
            if let Some((_, last)) = rest.last_mut() {
                last.drain(..over.min(last.len()));
            }
        }
        let mut out = vec![self.bos];
        if !system.is_empty() {
            out.extend(&frame.system.0);
            out.extend(&system);
            out.extend(&frame.system.1);
        }
        for (role, text) in &rest {
            let (before, after) = frame.of(*role);
            out.extend(before);
            out.extend(text);
            out.extend(after);
        }
        out.extend(&frame.tail);
        out
    }
}

/// How a file's model reads a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// An instruction-tuned model (its file carries a chat template):
    /// Gemma's `<start_of_turn>` turns.
    Turns,
    /// A pretrained base model: a document of questions and answers, which
    /// it continues; a turn format it was never taught, it only echoes.
    Completion,
}

/// Tokens before and after each kind of part, and where the model starts.
struct Frame {
    system: (Vec<u32>, Vec<u32>),
    user: (Vec<u32>, Vec<u32>),
    model: (Vec<u32>, Vec<u32>),
    tail: Vec<u32>,
}

impl Frame {
    fn of(&self, role: Role) -> &(Vec<u32>, Vec<u32>) {
        match role {
            Role::System => &self.system,
            Role::User => &self.user,
            Role::Assistant => &self.model,
        }
    }
}

/// Hands on an answer's text, minus its leading space and anything from a
/// stop text on: text that may be the start of one is held back until it
/// is clear.
#[derive(Debug)]
struct Stops {
    stops: &'static [&'static str],
    held: String,
    started: bool,
    /// A stop was met: nothing more is handed on.
    done: bool,
}

impl Stops {
    fn new(stops: &'static [&'static str]) -> Stops {
        Stops {
            stops,
            held: String::new(),
            started: false,
            done: false,
        }
    }

    /// The text that may be handed on now, and whether a stop was met.
    fn push(&mut self, piece: &str) -> (String, bool) {
        if self.done {
            return (String::new(), true);
        }
        let piece = if self.started {
            piece
        } else {
            piece.trim_start()
        };
        if piece.is_empty() {
            return (String::new(), false);
        }
        self.started = true;
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            self.done = true;
            return (out, true);
        }
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| self.held.ends_with(&s[..n])))
            .max()
            .unwrap_or(0);
        let out: String = self.held.drain(..self.held.len() - keep).collect();
        (out, false)
    }

    fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
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

#[cfg(test)]
mod tests {
    use super::Stops;

    fn run(pieces: &[&str]) -> (Vec<String>, String) {
        let mut stops = Stops::new(&["\n\nQuestion:", "\nQuestion:"]);
        let mut out = Vec::new();
        for p in pieces {
            let (text, stopped) = stops.push(p);
            if !text.is_empty() {
                out.push(text);
            }
            if stopped {
                return (out, String::new());
            }
        }
        let rest = stops.finish();
        (out, rest)
    }

    #[test]
    fn the_answer_ends_where_the_next_question_would_start() {
        let (out, rest) = run(&[" In", "ky", "\n", "\n", "Question", ":", " more"]);
        assert_eq!(out.concat(), "Inky");
        assert_eq!(rest, "");
        // A newline that turns out not to start a question is handed on.
        let (out, rest) = run(&["a", "\n", "b", "\n"]);
        assert_eq!(out.concat(), "a\nb");
        assert_eq!(rest, "\n");
        let (out, _) = run(&["x\nQuestion: y"]);
        assert_eq!(out.concat(), "x");
    }
}
