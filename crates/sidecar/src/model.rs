//! Models of a repository directory, and the sentence-embedding model: tokenise, BERT forward
//! pass, mean pooling over the real tokens, L2 normalisation (sentence-transformers'
//! all-MiniLM-L6-v2 recipe), on CPU with candle.
//!
//! A repository holds one directory per model, named as the model is served, with a
//! `shoal-model.json`:
//!
//! ```json
//! {"kind": "sentence-embedding", "max_tokens": 256, "pooling": "mean", "normalize": true,
//!  "input": "TEXT", "output": "EMBEDDING"}
//! ```
//!
//! and the model's files: `config.json` (Hugging Face BERT config), `tokenizer.json`,
//! `model.safetensors`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// A model's `shoal-model.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Only "sentence-embedding" so far.
    pub kind: String,
    /// Longer texts are truncated to this many tokens (special tokens included).
    pub max_tokens: usize,
    /// Only "mean" so far.
    pub pooling: String,
    pub normalize: bool,
    /// The name of the BYTES input tensor (one text per element).
    pub input: String,
    /// The name of the FP32 output tensor, [texts, dimension].
    pub output: String,
}

/// A loaded sentence-embedding model.
pub struct Embedder {
    pub name: String,
    pub config: ModelConfig,
    pub dimension: usize,
    tokenizer: Tokenizer,
    model: BertModel,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("name", &self.name)
            .field("dimension", &self.dimension)
            .finish_non_exhaustive()
    }
}

/// The embeddings of a batch, and how many texts had to be truncated.
#[derive(Debug)]
pub struct Embeddings {
    /// Row-major, `texts × dimension`.
    pub values: Vec<f32>,
    pub truncated: usize,
}

/// Loads every model directory of `repository` (a directory with a `shoal-model.json`).
pub fn load_repository(repository: &Path) -> Result<Vec<Embedder>> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(repository)
        .with_context(|| format!("cannot read the model repository {}", repository.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    dirs.retain(|d| d.join("shoal-model.json").is_file());
    dirs.sort();
    ensure!(
        !dirs.is_empty(),
        "the model repository {} has no model (a directory with a shoal-model.json); \
         `make model` fills models/ with all-MiniLM-L6-v2",
        repository.display()
    );
    dirs.iter().map(|dir| Embedder::load(dir)).collect()
}

impl Embedder {
    /// Loads the model in `dir`, served under the directory's name.
    pub fn load(dir: &Path) -> Result<Self> {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: not a usable model name", dir.display()))?
            .to_owned();
        let read = |file: &str| {
            fs::read(dir.join(file)).with_context(|| format!("model {name:?}: cannot read {file}"))
        };
        let config: ModelConfig = serde_json::from_slice(&read("shoal-model.json")?)
            .with_context(|| format!("model {name:?}: shoal-model.json"))?;
        ensure!(
            config.kind == "sentence-embedding",
            "model {name:?}: kind {:?} is not supported (only \"sentence-embedding\")",
            config.kind
        );
        ensure!(
            config.pooling == "mean",
            "model {name:?}: pooling {:?} is not supported (only \"mean\")",
            config.pooling
        );
        let bert: BertConfig = serde_json::from_slice(&read("config.json")?)
            .with_context(|| format!("model {name:?}: config.json"))?;
        ensure!(
            (1..=bert.max_position_embeddings).contains(&config.max_tokens),
            "model {name:?}: max_tokens must be 1..={}",
            bert.max_position_embeddings
        );
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("model {name:?}: tokenizer.json: {e}"))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("model {name:?}: truncation: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        // Read whole rather than mapped: mapping is `unsafe` (the file could change under
        // the server), and the weights are small (90 MB for MiniLM).
        let vb = VarBuilder::from_buffered_safetensors(
            read("model.safetensors")?,
            DType::F32,
            &Device::Cpu,
        )
        .with_context(|| format!("model {name:?}: model.safetensors"))?;
        let model = BertModel::load(vb, &bert)
            .with_context(|| format!("model {name:?}: the weights do not match config.json"))?;
        tracing::info!(model = %name, dimension = bert.hidden_size, layers = bert.num_hidden_layers, "model loaded");
        Ok(Self {
            name,
            dimension: bert.hidden_size,
            config,
            tokenizer,
            model,
        })
    }

    /// Embeds `texts`, one row each. CPU-heavy: run it on a thread of its own.
    pub fn embed(&self, texts: &[String]) -> Result<Embeddings> {
        if texts.is_empty() {
            return Ok(Embeddings {
                values: Vec::new(),
                truncated: 0,
            });
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenising: {e}"))?;
        let truncated = encodings
            .iter()
            .filter(|e| !e.get_overflowing().is_empty())
            .count();
        let rows = encodings.len();
        let width = encodings[0].get_ids().len();
        let mut ids = Vec::with_capacity(rows * width);
        let mut types = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for e in &encodings {
            ensure!(e.get_ids().len() == width, "tokeniser padding is off");
            ids.extend_from_slice(e.get_ids());
            types.extend_from_slice(e.get_type_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let device = &self.model.device;
        let ids = Tensor::from_vec(ids, (rows, width), device)?;
        let types = Tensor::from_vec(types, (rows, width), device)?;
        let mask = Tensor::from_vec(mask, (rows, width), device)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over the real tokens: padding has mask 0.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?;
        let mut pooled = summed.broadcast_div(&counts)?;
        if self.config.normalize {
            let norms = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
            pooled = pooled.broadcast_div(&norms)?;
        }
        let values = pooled.flatten_all()?.to_vec1::<f32>()?;
        if values.iter().any(|v| !v.is_finite()) {
            bail!("the model produced a non-finite value");
        }
        Ok(Embeddings { values, truncated })
    }
}
