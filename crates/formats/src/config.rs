//! One normalised description of a model, whatever file it came from.

use kiln_kernels::ops::RopeStyle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 1/2/3, Code Llama, and anything with the same block.
    Llama,
    /// Llama block with sliding-window attention.
    Mistral,
    /// Llama block with q/k/v biases.
    Qwen2,
    /// Gemma 3: q/k norms, pre+post norms, GELU-tanh gated MLP, scaled embeddings,
    /// interleaved sliding-window layers with their own rope base.
    Gemma3,
}

/// Llama 3 style frequency scaling (`rope_type: "llama3"`), or linear position scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    Linear {
        factor: f32,
    },
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    /// Rope base of global (full-attention) layers.
    pub rope_theta: f32,
    /// Rope base of sliding-window layers, where it differs (Gemma 3: 10 000).
    pub rope_local_theta: Option<f32>,
    pub rope_scaling: Option<RopeScaling>,
    /// Which dimension pairs rope rotates; depends on the file's layout as well as the arch.
    pub rope_style: RopeStyle,
    pub max_position_embeddings: usize,
    /// Window of sliding-window attention (a query sees at most this many keys, itself included).
    pub sliding_window: Option<usize>,
    /// Per layer: does it use the sliding window? Empty means "every layer" when
    /// `sliding_window` is set (Mistral) and "none" otherwise.
    pub sliding_layers: Vec<bool>,
    pub tie_word_embeddings: bool,
    /// Gemma 3: scores are scaled by `query_pre_attn_scalar^-0.5` instead of `head_dim^-0.5`.
    pub query_pre_attn_scalar: Option<f32>,
    pub final_logit_softcapping: Option<f32>,
    pub attn_logit_softcapping: Option<f32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    pub fn is_sliding(&self, layer: usize) -> bool {
        match self.sliding_window {
            None => false,
            Some(_) if self.sliding_layers.is_empty() => true,
            Some(_) => self.sliding_layers.get(layer).copied().unwrap_or(false),
        }
    }
}
