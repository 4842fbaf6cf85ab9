//! Model file formats read into one [`ModelConfig`] and a map of named tensors.
//!
//! Invariant: reading never executes anything and never trusts a size or offset before
//! checking it against the file.
//!
//! Tensor names are canonical (GGUF's): `token_embd.weight`, `output_norm.weight`,
//! `output.weight`, and per block `blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output,
//! attn_q_norm, attn_k_norm, post_attention_norm, ffn_norm, ffn_gate, ffn_up, ffn_down,
//! post_ffw_norm}.{weight,bias}`; Phi-3's fused `attn_qkv` and `ffn_up` (gate rows, then up
//! rows); experts as `ffn_gate_inp` (the router) and GGUF's merged `ffn_{gate,up,down}_exps`
//! (`[n_experts, rows, cols]`). Shapes are outermost-first (a linear layer is `[out, in]`).
//! A GGUF file may also hold `rope_freqs.weight`; its values are copied into
//! [`RopeScaling::FreqFactors`].
//!
//! Tensors keep their stored type (F32/F16/BF16 or a ggml block type) and are zero-copy views
//! into the file's bytes, with one exception below. A GGUF model's bytes are read once into
//! huge-page-advised memory when they fit, else memory-mapped ([`resident`]); other formats are
//! memory-mapped.
//!
//! Invariant on norm weights: a canonical norm tensor (`*_norm.weight`) always means
//! "multiply the normalised vector by this", i.e. `y = w * x / rms(x)`. Gemma 3 in Hugging Face
//! form stores `w'` with forward `x * (1 + w')`; the HF loader adds 1.0 at load time (into an
//! owned F32 copy), which is what GGUF Gemma 3 files already hold.
//!
//! Names of the Hugging Face layout map as: `model.embed_tokens` → `token_embd`, `model.norm` →
//! `output_norm`, `lm_head` → `output`, and in `model.layers.N.`: `self_attn.{q,k,v}_proj` →
//! `attn_{q,k,v}`, `self_attn.o_proj` → `attn_output`, `self_attn.{q,k}_norm` →
//! `attn_{q,k}_norm`, `mlp.{gate,up,down}_proj` → `ffn_{gate,up,down}`, `input_layernorm` →
//! `attn_norm`, and `post_attention_layernorm` → `ffn_norm` (Llama, Mistral, Qwen2, Qwen3,
//! Phi-3, MoE) or, for Gemma 2/3 and OLMo 2, `post_attention_layernorm` → `post_attention_norm`,
//! `post_feedforward_layernorm` → `post_ffw_norm` (and Gemma's `pre_feedforward_layernorm` →
//! `ffn_norm`). Phi-3: `self_attn.qkv_proj` → `attn_qkv`, `mlp.gate_up_proj` → `ffn_up`.
//! Experts: `block_sparse_moe.gate` / `mlp.gate` → `ffn_gate_inp`; Mixtral's
//! `block_sparse_moe.experts.E.{w1,w3,w2}` and Qwen3-MoE's `mlp.experts.E.{gate,up,down}_proj`
//! (or transformers 5's fused `mlp.experts.{gate_up_proj,down_proj}`) are merged into
//! `ffn_{gate,up,down}_exps`.
//!
//! Tied output: `output.weight` is absent exactly when `config.tie_word_embeddings` is true;
//! the output projection then uses `token_embd.weight`.
//!
//! Rope layout: `config.rope_style` says how the rows of `attn_q` / `attn_k` are laid out.
//! GGUF `llama` files use Meta's interleaved pairs ([`RopeStyle::Interleaved`]); GGUF qwen2 /
//! gemma3 and every Hugging Face checkpoint use rotate-half ([`RopeStyle::Half`]).
//! [`layout::with_rope_style`] converts between them.
//!
//! Configuration details that are not in the files:
//! * GGUF Gemma 3 (as llama.cpp reads it): layer `il` is global iff `il % 6 == 5`, the others
//!   use `gemma3.attention.sliding_window`; the local rope base is 10 000; the attention scale is
//!   `head_dim^-0.5` (`(hidden / heads)^-0.5` for the 62-layer 27B), exposed as
//!   `query_pre_attn_scalar`.
//! * GGUF end-of-generation ids: `tokenizer.ggml.eos_token_id`, then `eot_token_id` /
//!   `eom_token_id`, then any token whose text is a common end-of-turn marker (`<end_of_turn>`,
//!   `<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, ...), as llama.cpp does. Hugging Face ids come
//!   from generation_config.json, else config.json, else the transformers class default.
//! * Hugging Face keys a config omits take the transformers class defaults (multimodal Gemma 3
//!   configs list only the text-config values that differ from them).
//!
//! [`RopeStyle::Interleaved`]: kiln_kernels::ops::RopeStyle::Interleaved
//! [`RopeStyle::Half`]: kiln_kernels::ops::RopeStyle::Half

pub mod config;
pub mod gguf;
pub mod hf;
pub mod layout;
pub mod meta;
pub mod pytorch;
pub mod resident;
mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use config::{Arch, ModelConfig, MoeConfig, RopeScaling};
pub use gguf::GgufFile;
pub use kiln_kernels::Tensor;
pub use summary::{describe_gguf, short_value};

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

impl MetaValue {
    /// An integer value that fits in u64 (any integer type, negative ones excluded).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any numeric value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v as f64),
            MetaValue::I16(v) => Some(v as f64),
            MetaValue::I32(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
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

/// How [`load_with`] holds a model's weights in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Mapped or read in; `None` chooses by size ([`resident::Residency::for_len`]). Only GGUF
    /// files are read in; the other formats are always mapped.
    pub residency: Option<resident::Residency>,
    /// Rearrange the quantised matrices of a read-in GGUF file into the layout the kernels
    /// want ([`kiln_kernels::interleave::preferred`]); off keeps the file's order (for
    /// comparisons). Results are bit-identical either way.
    pub interleave: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            residency: None,
            interleave: true,
        }
    }
}

/// [`load_with`] with the default options.
pub fn load(path: &Path) -> Result<LoadedModel> {
    load_with(path, &LoadOptions::default())
}

/// Reads a model, detected from `path`: a file starting with the GGUF magic, a directory with
/// `config.json` (Hugging Face) or with `params.json` (Meta). Every error names the path.
/// The tensors are checked against the configuration (names and shapes) before returning.
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    let model = if meta.is_dir() {
        if path.join("config.json").is_file() {
            hf::load_dir(path)?
        } else if path.join("params.json").is_file() {
            meta::load_meta_dir(path)?
        } else {
            return Err(FormatError::Invalid(format!(
                "{}: directory has neither config.json (Hugging Face) nor params.json (Meta)",
                path.display()
            )));
        }
    } else {
        let mut magic = [0u8; 4];
        let n = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
            let mut got = 0;
            while got < 4 {
                match f.read(&mut magic[got..]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err(path, e)),
                }
            }
            got
        };
        if n == 4 && gguf::has_magic(&magic) {
            gguf::load_path_with(path, opts)?
        } else if path.file_name().is_some_and(|n| n == "config.json") {
            return load_with(path.parent().unwrap_or(Path::new(".")), opts);
        } else {
            return Err(FormatError::Invalid(format!(
                "{}: not a GGUF file (no GGUF magic) and not a model directory",
                path.display()
            )));
        }
    };
    validate_tensors(&model.config, &model.tensors).map_err(|e| with_path(e, path))?;
    Ok(model)
}

/// Checks that every tensor the architecture needs is present with the shape the configuration
/// implies (extra tensors, such as optional biases, are allowed).
/// The configuration is validated first ([`ModelConfig::validate`]), so this is the one check
/// every format passes through.
pub fn validate_tensors(cfg: &ModelConfig, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    cfg.validate()?;
    let (d, hd) = (cfg.hidden_size, cfg.head_dim);
    let (q, kv, ff) = (cfg.n_heads * hd, cfg.n_kv_heads * hd, cfg.intermediate_size);
    let mut want: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![cfg.vocab_size, d]),
        ("output_norm.weight".into(), vec![d]),
    ];
    if !cfg.tie_word_embeddings {
        want.push(("output.weight".into(), vec![cfg.vocab_size, d]));
    }
    for l in 0..cfg.n_layers {
        let b = |n: &str| format!("blk.{l}.{n}");
        if cfg.arch == Arch::Phi3 {
            want.push((b("attn_qkv.weight"), vec![q + 2 * kv, d]));
        } else {
            want.extend([
                (b("attn_q.weight"), vec![q, d]),
                (b("attn_k.weight"), vec![kv, d]),
                (b("attn_v.weight"), vec![kv, d]),
            ]);
        }
        want.push((b("attn_output.weight"), vec![d, q]));
        if cfg.arch != Arch::Olmo2 {
            want.extend([
                (b("attn_norm.weight"), vec![d]),
                (b("ffn_norm.weight"), vec![d]),
            ]);
        }
        match (&cfg.moe, cfg.arch) {
            (Some(m), _) => {
                let (e, f) = (m.n_experts, m.expert_ffn);
                want.extend([
                    (b("ffn_gate_inp.weight"), vec![e, d]),
                    (b("ffn_gate_exps.weight"), vec![e, f, d]),
                    (b("ffn_up_exps.weight"), vec![e, f, d]),
                    (b("ffn_down_exps.weight"), vec![e, d, f]),
                ]);
            }
            (None, Arch::Phi3) => want.extend([
                (b("ffn_up.weight"), vec![2 * ff, d]),
                (b("ffn_down.weight"), vec![d, ff]),
            ]),
            (None, _) => want.extend([
                (b("ffn_gate.weight"), vec![ff, d]),
                (b("ffn_up.weight"), vec![ff, d]),
                (b("ffn_down.weight"), vec![d, ff]),
            ]),
        }
        match cfg.arch {
            Arch::Qwen2 => want.extend([
                (b("attn_q.bias"), vec![q]),
                (b("attn_k.bias"), vec![kv]),
                (b("attn_v.bias"), vec![kv]),
            ]),
            Arch::Gemma3 => want.extend([
                (b("attn_q_norm.weight"), vec![hd]),
                (b("attn_k_norm.weight"), vec![hd]),
                (b("post_attention_norm.weight"), vec![d]),
                (b("post_ffw_norm.weight"), vec![d]),
            ]),
            Arch::Gemma2 => want.extend([
                (b("post_attention_norm.weight"), vec![d]),
                (b("post_ffw_norm.weight"), vec![d]),
            ]),
            Arch::Qwen3 | Arch::Qwen3Moe => want.extend([
                (b("attn_q_norm.weight"), vec![hd]),
                (b("attn_k_norm.weight"), vec![hd]),
            ]),
            Arch::Olmo2 => want.extend([
                (b("attn_q_norm.weight"), vec![q]),
                (b("attn_k_norm.weight"), vec![kv]),
                (b("post_attention_norm.weight"), vec![d]),
                (b("post_ffw_norm.weight"), vec![d]),
            ]),
            Arch::Llama | Arch::Mistral | Arch::Mixtral | Arch::Phi3 => {}
        }
    }
    for (name, shape) in &want {
        match tensors.get(name) {
            None => return Err(FormatError::Invalid(format!("missing tensor {name}"))),
            Some(t) if &t.shape != shape => {
                return Err(FormatError::Invalid(format!(
                    "tensor {name} has shape {:?}, the configuration implies {shape:?}",
                    t.shape
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Ids of tokens whose text marks the end of a turn in common chat formats (as llama.cpp
/// recognises them), for GGUF files that name only one end-of-sequence token.
pub(crate) fn eog_token_ids<'a>(tokens: impl Iterator<Item = &'a str>) -> Vec<u32> {
    const EOG: [&str; 9] = [
        "<|eot_id|>",
        "<|eom_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<EOT>",
        "_<EOT>",
    ];
    tokens
        .enumerate()
        .filter(|(_, t)| EOG.contains(t))
        .map(|(i, _)| i as u32)
        .collect()
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> FormatError {
    FormatError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Prefixes an error's message with `path` (unless it already names it).
pub(crate) fn with_path(e: FormatError, path: &Path) -> FormatError {
    let p = path.display().to_string();
    match e {
        FormatError::Invalid(m) if !m.starts_with(&p) => FormatError::Invalid(format!("{p}: {m}")),
        FormatError::Unsupported(m) if !m.starts_with(&p) => {
            FormatError::Unsupported(format!("{p}: {m}"))
        }
        other => other,
    }
}
