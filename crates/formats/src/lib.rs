//! Model file formats read into one [`ModelConfig`] and a map of named tensors.
//!
//! Invariant: reading never executes anything and never trusts a size or offset before
//! checking it against the file.
//!
//! Tensor names are canonical (GGUF's): `token_embd.weight`, `output_norm.weight`,
//! `output.weight`, and per block `blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output,
//! attn_q_norm, attn_k_norm, post_attention_norm, ffn_norm, ffn_gate, ffn_up, ffn_down,
//! post_ffw_norm}.{weight,bias}`. Shapes are outermost-first (a linear layer is `[out, in]`).

pub mod config;
pub mod meta;
pub mod pytorch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use config::{Arch, ModelConfig, RopeScaling};
pub use kiln_kernels::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, FormatError>;

/// A GGUF metadata value (every type the format defines).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

/// Where the tokenizer of a model lives.
#[derive(Clone, Debug)]
pub enum TokenizerSource {
    /// The vocabulary embedded in a GGUF file's metadata (`tokenizer.ggml.*`).
    Gguf(BTreeMap<String, MetaValue>),
    /// A Hugging Face `tokenizer.json` (with `tokenizer_config.json` beside it when present).
    HfJson(PathBuf),
    /// A SentencePiece or tiktoken `tokenizer.model`.
    TokenizerModel(PathBuf),
}

/// A model as read from disk: its configuration, its tensors (still in their stored types,
/// memory-mapped where the format allows) and where its tokenizer is.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub tensors: BTreeMap<String, Tensor>,
    pub tokenizer: TokenizerSource,
    /// A Jinja chat template, when the model ships one.
    pub chat_template: Option<String>,
    /// Every metadata key (GGUF) or config field (flattened), for `kiln inspect`.
    pub metadata: BTreeMap<String, MetaValue>,
    /// A short description of the source ("GGUF v3", "Hugging Face safetensors", ...).
    pub format: String,
}

/// Reads a model from a GGUF file or a Hugging Face directory, detected from `path`.
pub fn load(path: &Path) -> Result<LoadedModel> {
    Err(FormatError::Unsupported(format!(
        "{}: no loader yet",
        path.display()
    )))
}
