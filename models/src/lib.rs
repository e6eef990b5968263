//! Offline models, run in-process on the CPU with candle: a sentence
//! embedder (`--embed-model-dir`, e.g. all-MiniLM-L6-v2) and a chat model
//! (`--chat-model-file`, e.g. Gemma 3 270M in GGUF, with a forward pass
//! of our own: `gemma3`). Blocking compute only:
//! the host runs these on threads of their own, never under the server lock.

#![forbid(unsafe_code)]

mod chat;
mod embedder;
mod gemma3;
mod spm;

pub use chat::{ChatModel, Finish, Generated, Options, Role, Turn};
pub use embedder::{Embedded, Embedder};
pub use spm::SentencePiece;

use std::fmt;
use std::path::{Path, PathBuf};

/// A model that cannot be loaded: which file, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError {
    pub file: PathBuf,
    pub message: String,
}

impl ModelError {
    fn new(file: &Path, message: impl fmt::Display) -> ModelError {
        ModelError {
            file: file.to_path_buf(),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for ModelError {}
