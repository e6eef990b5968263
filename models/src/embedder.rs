//! A sentence embedder in the sentence-transformers layout (a BERT model in
//! `model.safetensors`, its `config.json` and `tokenizer.json`): mean of the
//! token vectors under the attention mask, then unit length, as
//! all-MiniLM-L6-v2's own pooling and normalisation modules do.

use crate::ModelError;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams};

/// Word pieces read from a text when the model says nothing
/// (`sentence_bert_config.json`'s `max_seq_length`); the rest is dropped,
/// as sentence-transformers does.
const DEFAULT_MAX_TOKENS: usize = 256;

pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    name: String,
    dimensions: usize,
    max_tokens: usize,
}

/// Vectors for a batch of texts, and the word pieces they took.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("name", &self.name)
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the model in `dir`; its name is the directory's name.
    pub fn load(dir: &Path) -> Result<Embedder, ModelError> {
        let config_file = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_file).map_err(|e| ModelError::new(&config_file, e))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::new(&config_file, e))?;
        let config: Config = serde_json::from_value(raw.clone())
            .map_err(|e| ModelError::new(&config_file, format!("not a BERT config: {e}")))?;
        let dimensions = raw
            .get("hidden_size")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| ModelError::new(&config_file, "no `hidden_size`"))?
            as usize;
        let max_tokens = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("max_seq_length")?.as_u64())
            .map_or(DEFAULT_MAX_TOKENS, |n| n as usize);
        let weights_file = dir.join("model.safetensors");
        let weights =
            std::fs::read(&weights_file).map_err(|e| ModelError::new(&weights_file, e))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| ModelError::new(&weights_file, format!("not a safetensors file: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| {
            ModelError::new(&weights_file, format!("does not hold this BERT model: {e}"))
        })?;
        let tokenizer_file = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_file)
            .map_err(|e| ModelError::new(&tokenizer_file, e))?;
        // One text at a time: padding would only add work.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| ModelError::new(&tokenizer_file, e))?;
        let name = dir
            .file_name()
            .map_or_else(|| "embedder".into(), |n| n.to_string_lossy().into_owned());
        Ok(Embedder {
            model,
            tokenizer,
            name,
            dimensions,
            max_tokens,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Word pieces read from each text; the rest of a longer text is ignored.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// One unit vector per text.
    pub fn embed(&self, texts: &[String]) -> Result<Embedded, String> {
        let mut vectors = Vec::with_capacity(texts.len());
        let mut tokens = 0;
        for text in texts {
            let (v, n) = self.embed_one(text).map_err(|e| e.to_string())?;
            vectors.push(v);
            tokens += n;
        }
        Ok(Embedded { vectors, tokens })
    }

    fn embed_one(
        &self,
        text: &str,
    ) -> Result<(Vec<f32>, usize), Box<dyn std::error::Error + Send + Sync>> {
        let encoding = self.tokenizer.encode(text, true)?;
        let ids = Tensor::new(encoding.get_ids(), &Device::Cpu)?.unsqueeze(0)?;
        let types = ids.zeros_like()?;
        let mask = Tensor::new(encoding.get_attention_mask(), &Device::Cpu)?.unsqueeze(0)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let mean = hidden
            .broadcast_mul(&mask)?
            .sum(1)?
            .broadcast_div(&mask.sum(1)?)?;
        let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let unit = mean.broadcast_div(&norm)?.squeeze(0)?.to_vec1::<f32>()?;
        Ok((unit, encoding.get_ids().len()))
    }
}
