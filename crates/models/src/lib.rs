//! Forward passes of the Llama-family architectures.
//!
//! Invariant: an architecture's forward pass reads top to bottom in one file (`llama.rs` for
//! Llama, Mistral, Qwen2, Qwen3, OLMo 2, Phi-3, Mixtral and Qwen3-MoE; `gemma3.rs` for Gemma 2
//! and 3); what they share (attention, rope, the mixture of experts) lives in `layers.rs`.
//! The KV cache belongs to the caller's sequence; a forward pass only appends to it.

pub mod gemma3;
pub mod kv_cache;
pub mod layers;
pub mod llama;

use std::collections::BTreeMap;

use kiln_formats::{Arch, LoadedModel, ModelConfig, Tensor};
use kiln_kernels::DType;

pub use kv_cache::{DeviceCache, HeadView, KvCache, KvType};
pub use layers::{Head, Logits, SeqInput};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file: {0}")]
    Weights(String),
    #[error("{0}")]
    Input(String),
}

/// Which engine's arithmetic a forward pass reproduces where the two differ.
///
/// Float checkpoints are checked against transformers, which computes in f32 (or wider), so
/// they run [`Numerics::Exact`]. Quantised GGUF files come from llama.cpp's world and are
/// checked against llama.cpp, whose CPU backend rounds a few intermediates to f16; small
/// quantised models are sensitive enough to those roundings that they move logprobs by
/// hundredths, so quantised models run [`Numerics::Ggml`], which rounds at the same places:
/// the GELU of the gated MLP goes through an f16 table (`ops::gelu_tanh_mul_ggml`), and the
/// default KV cache is f16 with attention done as ggml's flash attention does it
/// (`layers::attention`). The 8-bit activation blocks of quantised matmuls follow ggml in
/// both cases (they only exist for quantised weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numerics {
    Exact,
    Ggml,
}

impl Numerics {
    /// `Ggml` when any weight is in a quantised block type, else `Exact`.
    pub fn for_tensors<'a>(mut dtypes: impl Iterator<Item = &'a DType>) -> Numerics {
        if dtypes.any(|d| d.is_quantized()) {
            Numerics::Ggml
        } else {
            Numerics::Exact
        }
    }

    /// The KV cache type this regime uses unless asked otherwise: f16 for `Ggml` (as
    /// llama.cpp), f32 for `Exact`.
    pub fn default_kv_type(self) -> KvType {
        match self {
            Numerics::Exact => KvType::F32,
            Numerics::Ggml => KvType::F16,
        }
    }
}

impl std::str::FromStr for Numerics {
    type Err = String;

    fn from_str(s: &str) -> Result<Numerics, String> {
        match s.to_ascii_lowercase().as_str() {
            "exact" => Ok(Numerics::Exact),
            "ggml" => Ok(Numerics::Ggml),
            _ => Err(format!("unknown numerics {s:?} (exact or ggml)")),
        }
    }
}

/// How [`build_with`] sets up a forward pass; `None` fields follow the weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Kernel threads (at least 1).
    pub threads: usize,
    /// The arithmetic to reproduce; `None`: [`Numerics::for_tensors`] (for experiments).
    pub numerics: Option<Numerics>,
    /// The KV cache element type; `None`: the numerics' [`Numerics::default_kv_type`].
    pub kv_type: Option<KvType>,
}

/// A causal language model: tokens in, logits out, keys and values kept in the caller's cache.
pub trait CausalLM: Send + Sync {
    fn config(&self) -> &ModelConfig;

    /// The element type of the caches [`CausalLM::new_cache`] makes.
    fn kv_type(&self) -> KvType {
        KvType::F32
    }

    /// An empty cache able to hold `capacity` positions (it grows if needed).
    fn new_cache(&self, capacity: usize) -> KvCache {
        let c = self.config();
        KvCache::with_type(
            c.n_layers,
            c.n_kv_heads,
            c.head_dim,
            capacity,
            self.kv_type(),
        )
    }

    /// Runs every sequence's new tokens through the model (one batched pass) and appends the
    /// logits each sequence asked for to `logits`, in batch order ([`CausalLM::logit_rows`] per row:
    /// `vocab_size` unless the output layer was restricted).
    fn forward(&self, batch: &mut [SeqInput<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError>;

    /// [`CausalLM::forward`], but appends the final hidden states of the rows asked for
    /// (`hidden_size` per row: after the final norm, before the output matrix) instead of
    /// logits. Embeddings are pooled from these. An architecture that does not provide them
    /// says so.
    fn forward_hidden(
        &self,
        batch: &mut [SeqInput<'_>],
        hidden: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let _ = (batch, hidden);
        Err(ModelError::Input(format!(
            "the {} architecture does not return hidden states (embeddings)",
            self.config().arch.name()
        )))
    }

    /// The front of a model split across devices ([`build_front`]): runs every sequence's new
    /// tokens through the embedding and this model's blocks (storing their keys and values as
    /// [`CausalLM::forward`] does) and appends the residual stream after the last block for
    /// every row of the batch (`hidden_size` per token, in batch order, before the final norm)
    /// to `out`, whatever `logits` each sequence asks for. An architecture that cannot be
    /// split says so.
    fn forward_residual(
        &self,
        batch: &mut [SeqInput<'_>],
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let _ = (batch, out);
        Err(ModelError::Input(format!(
            "the {} architecture cannot be split between devices",
            self.config().arch.name()
        )))
    }

    /// Threads the kernels use.
    fn n_threads(&self) -> usize;

    /// The width of the logits rows [`CausalLM::forward`] appends: the vocabulary, unless
    /// [`CausalLM::limit_logits`] restricted the output layer.
    fn logit_rows(&self) -> usize {
        self.config().vocab_size
    }

    /// Restricts the output layer to the first `rows` tokens of the vocabulary (a draft model
    /// proposing only frequent tokens: BPE vocabularies are ordered by merge rank), so that
    /// logits rows are that wide and cost that many output rows; `rows` at least the
    /// vocabulary restores the whole layer. The width may be rounded up to what the output
    /// matrix's layout can take as a prefix (whole 4-row groups); the width in use is
    /// returned (and [`CausalLM::logit_rows`] from then on). Logits of the tokens kept are
    /// the whole layer's, bit for bit. A model that cannot restrict its output says so.
    fn limit_logits(&mut self, rows: usize) -> Result<usize, ModelError> {
        let _ = rows;
        Err(ModelError::Input(format!(
            "this {} model cannot restrict its output layer to a prefix of the vocabulary \
             (only CPU models can)",
            self.config().arch.name()
        )))
    }
}

/// A CPU model's output matrix, and its first rows when [`CausalLM::limit_logits`] restricted
/// it (one piece of state and logic for every CPU model).
pub(crate) struct OutputLayer {
    whole: Tensor,
    prefix: Option<Tensor>,
}

impl OutputLayer {
    pub(crate) fn new(whole: Tensor) -> OutputLayer {
        OutputLayer {
            whole,
            prefix: None,
        }
    }

    /// The matrix the logits are computed with.
    pub(crate) fn matrix(&self) -> &Tensor {
        self.prefix.as_ref().unwrap_or(&self.whole)
    }

    /// [`CausalLM::logit_rows`] of a model whose vocabulary is `vocab_size`.
    pub(crate) fn logit_rows(&self, vocab_size: usize) -> usize {
        self.prefix.as_ref().map_or(vocab_size, Tensor::rows)
    }

    /// [`CausalLM::limit_logits`]: the first `rows` rows (whole 4-row groups in the
    /// interleaved layout), or the whole matrix when that is no fewer.
    pub(crate) fn limit(&mut self, rows: usize) -> Result<(), ModelError> {
        if rows == 0 {
            return Err(ModelError::Input(
                "the output layer cannot be restricted to 0 rows".into(),
            ));
        }
        let n = self.whole.prefix_rows(rows);
        self.prefix = if n >= self.whole.rows() {
            None
        } else {
            Some(
                self.whole
                    .row_prefix(n)
                    .map_err(|e| ModelError::Input(e.to_string()))?,
            )
        };
        Ok(())
    }
}

/// Builds the forward pass for a loaded model, with `n_threads` kernel threads, the
/// [`Numerics`] its weights call for and that regime's default KV cache type.
pub fn build(model: LoadedModel, n_threads: usize) -> Result<Box<dyn CausalLM>, ModelError> {
    build_with(
        model,
        &BuildOptions {
            threads: n_threads,
            ..BuildOptions::default()
        },
    )
}

/// [`build`] with explicit numerics and KV cache type where `opts` give them.
pub fn build_with(
    model: LoadedModel,
    opts: &BuildOptions,
) -> Result<Box<dyn CausalLM>, ModelError> {
    let cfg = model.config.clone();
    // A zero size would reach `chunks_exact(0)` in the layers; `kiln_formats::load` checks
    // this too, but a LoadedModel can be built by hand.
    cfg.validate()
        .map_err(|e| ModelError::Weights(e.to_string()))?;
    build_arch(cfg, model, opts)
}

/// The first `blocks` blocks of a model (with its embedding), for a model split between the CPU
/// and a device as llama.cpp's `-ngl` splits it: the CPU runs the embedding and blocks
/// `0..blocks`, and hands the residual stream ([`CausalLM::forward_residual`]) to the device,
/// which runs the rest. The model's configuration then says `blocks` layers (its caches hold
/// those); `blocks` may be 0 (only the embedding). Numerics and the KV cache type follow the
/// whole model's weights, as in [`build_with`].
pub fn build_front(
    model: LoadedModel,
    opts: &BuildOptions,
    blocks: usize,
) -> Result<Box<dyn CausalLM>, ModelError> {
    let mut cfg = model.config.clone();
    cfg.validate()
        .map_err(|e| ModelError::Weights(e.to_string()))?;
    if blocks > cfg.n_layers {
        return Err(ModelError::Input(format!(
            "the front of a split model has at most {} blocks, not {blocks}",
            cfg.n_layers
        )));
    }
    cfg.n_layers = blocks;
    build_arch(cfg, model, opts)
}

fn build_arch(
    cfg: ModelConfig,
    model: LoadedModel,
    opts: &BuildOptions,
) -> Result<Box<dyn CausalLM>, ModelError> {
    let numerics = opts
        .numerics
        .unwrap_or_else(|| Numerics::for_tensors(model.tensors.values().map(|t| &t.dtype)));
    let kv_type = opts.kv_type.unwrap_or_else(|| numerics.default_kv_type());
    let n_threads = opts.threads.max(1);
    let mut weights = Weights::new(model.tensors);
    let m: Box<dyn CausalLM> = match cfg.arch {
        Arch::Llama
        | Arch::Mistral
        | Arch::Qwen2
        | Arch::Qwen3
        | Arch::Qwen3Moe
        | Arch::Mixtral
        | Arch::Olmo2
        | Arch::Phi3 => Box::new(llama::Llama::new(
            cfg,
            &mut weights,
            n_threads,
            numerics,
            kv_type,
        )?),
        Arch::Gemma3 | Arch::Gemma2 => Box::new(gemma3::Gemma3::new(
            cfg,
            &mut weights,
            n_threads,
            numerics,
            kv_type,
        )?),
    };
    Ok(m)
}

/// The tensors of a model, taken out by name as the architecture needs them, with their
/// shapes checked against the configuration.
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    pub fn new(tensors: BTreeMap<String, Tensor>) -> Weights {
        Weights { tensors }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A 2-D weight whose rows have `cols` elements.
    pub fn matrix(&mut self, name: &str, cols: usize) -> Result<Tensor, ModelError> {
        let t = self.get(name)?;
        if t.shape.len() != 2 || t.cols() != cols {
            return Err(ModelError::Weights(format!(
                "tensor {name} has shape {:?}, expected [_, {cols}]",
                t.shape
            )));
        }
        Ok(t)
    }

    /// A 2-D weight of exactly `[rows, cols]`.
    pub fn matrix_exact(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor, ModelError> {
        let t = self.matrix(name, cols)?;
        if t.rows() != rows {
            return Err(ModelError::Weights(format!(
                "tensor {name} has shape {:?}, expected [{rows}, {cols}]",
                t.shape
            )));
        }
        Ok(t)
    }

    /// A 3-D tensor of exactly `[n, rows, cols]` (merged expert weights).
    pub fn tensor3(
        &mut self,
        name: &str,
        n: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor, ModelError> {
        let t = self.get(name)?;
        if t.shape != [n, rows, cols] {
            return Err(ModelError::Weights(format!(
                "tensor {name} has shape {:?}, expected [{n}, {rows}, {cols}]",
                t.shape
            )));
        }
        Ok(t)
    }

    /// A 1-D tensor of length `len`, expanded to f32.
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.get(name)?;
        if t.n_elements() != len {
            return Err(ModelError::Weights(format!(
                "tensor {name} has shape {:?}, expected [{len}]",
                t.shape
            )));
        }
        Ok(t.to_f32_vec())
    }

    pub fn optional_vector(
        &mut self,
        name: &str,
        len: usize,
    ) -> Result<Option<Vec<f32>>, ModelError> {
        if self.contains(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    fn get(&mut self, name: &str) -> Result<Tensor, ModelError> {
        let t = self
            .tensors
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::Weights(format!("missing tensor {name}")))?;
        if t.dtype == DType::Q8_K {
            return Err(ModelError::Weights(format!(
                "tensor {name}: Q8_K is not a weight type"
            )));
        }
        Ok(t)
    }
}
