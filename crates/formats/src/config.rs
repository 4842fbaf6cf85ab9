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
    /// Llama block with per-head RMSNorm of queries and keys (no biases).
    Qwen3,
    /// Qwen3 attention with a mixture-of-experts MLP in every layer.
    Qwen3Moe,
    /// Llama block with a mixture-of-experts MLP.
    Mixtral,
    /// Gemma 3's block without q/k norms, with attention-logit soft-capping; alternating
    /// sliding-window and global layers share one rope base.
    Gemma2,
    /// No pre-norms: RMSNorm after attention and after the MLP; q/k RMSNorm over the whole
    /// projection.
    Olmo2,
    /// Llama block with fused qkv (`attn_qkv`) and gate/up (`ffn_up`, gate rows first)
    /// projections; LongRoPE scaling.
    Phi3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
            Arch::Qwen3 => "qwen3",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Mixtral => "mixtral",
            Arch::Gemma2 => "gemma2",
            Arch::Olmo2 => "olmo2",
            Arch::Phi3 => "phi3",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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
    /// Per-frequency divisors: `inv_freq[i] /= factors[i]` (`head_dim / 2` values). This is how
    /// GGUF stores Llama 3.1 style scaling (llama.cpp's `rope_freqs.weight` tensor).
    FreqFactors(Vec<f32>),
    /// YaRN (`rope_type: "yarn"`): frequencies between the `beta_fast` and `beta_slow`
    /// rotation counts blended from interpolated (÷ `factor`) to extrapolated, and cos/sin
    /// multiplied by `attention_factor`.
    Yarn {
        factor: f32,
        original_max_position_embeddings: usize,
        beta_fast: f32,
        beta_slow: f32,
        attention_factor: f32,
        /// Round the blend's band edges to whole dimensions (transformers' `truncate`, default).
        truncate: bool,
    },
    /// LongRoPE (Phi-3 `su`/`longrope`): per-frequency divisors, `short_factor` for positions
    /// inside `original_max_position_embeddings` and `long_factor` past it, and cos/sin
    /// multiplied by `attention_factor`.
    LongRope {
        short_factor: Vec<f32>,
        long_factor: Vec<f32>,
        original_max_position_embeddings: usize,
        attention_factor: f32,
    },
}

/// Mixture-of-experts MLP: a router (`ffn_gate_inp`, `[n_experts, hidden]`) picks `n_used`
/// experts per token by softmax probability; their SwiGLU outputs (`ffn_{gate,up,down}_exps`,
/// one `[n_experts, ..]` tensor each) are summed with those probabilities, renormalised over
/// the chosen experts when `norm_topk`.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub n_experts: usize,
    pub n_used: usize,
    /// Rows of one expert's gate/up matrices.
    pub expert_ffn: usize,
    pub norm_topk: bool,
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
    /// Frequency scaling of global layers (Gemma 3's sliding layers are never scaled).
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
    /// The mixture of experts that replaces the dense MLP (Mixtral, Qwen3-MoE).
    pub moe: Option<MoeConfig>,
}

/// Bounds on sizes read from files, so that a hostile file cannot make later arithmetic
/// overflow or a per-layer table huge. Real models are far below them.
pub const MAX_LAYERS: usize = 4096;
pub const MAX_DIM: usize = 1 << 20;
pub const MAX_VOCAB: usize = 1 << 31;

/// Checks one size against its bound; `what` names it in the error.
pub(crate) fn bounded(what: &str, v: usize, max: usize) -> crate::Result<usize> {
    if v > max {
        return Err(crate::FormatError::Invalid(format!(
            "{what} = {v} is absurdly large (at most {max})"
        )));
    }
    Ok(v)
}

/// The head dimension a file gives (`explicit`: GGUF `attention.key_length`, config.json
/// `head_dim`) or implies (`hidden_size / n_heads`), after checking that the query heads share
/// the kv heads evenly; it must be even and nonzero. `prefix` starts every message (GGUF: the
/// architecture), `hidden` names the hidden size as the file does, and `bound` checks the
/// dimension against [`MAX_DIM`] under the file's own key.
pub(crate) fn checked_head_dim(
    prefix: &str,
    hidden: &str,
    hidden_size: usize,
    n_heads: usize,
    n_kv_heads: usize,
    explicit: Option<usize>,
    bound: impl Fn(usize) -> crate::Result<usize>,
) -> crate::Result<usize> {
    let invalid = |msg: String| Err(crate::FormatError::Invalid(format!("{prefix}{msg}")));
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return invalid(format!(
            "{n_heads} attention heads cannot share {n_kv_heads} kv heads"
        ));
    }
    let head_dim = match explicit {
        Some(d) => d,
        None if hidden_size.is_multiple_of(n_heads) => hidden_size / n_heads,
        None => {
            return invalid(format!(
                "{hidden} {hidden_size} is not a multiple of {n_heads} heads"
            ))
        }
    };
    let head_dim = bound(head_dim)?;
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return invalid(format!(
            "head dimension {head_dim} must be even and nonzero"
        ));
    }
    Ok(head_dim)
}

impl ModelConfig {
    /// Checks what every forward pass relies on, whatever file the configuration came from
    /// (GGUF, config.json, params.json): no zero sizes, heads that divide, finite positive
    /// epsilons, rope bases and scales, a usable context, token ids inside the vocabulary.
    /// Each error names the field.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |msg: String| Err(crate::FormatError::Invalid(format!("model config: {msg}")));
        for (what, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            (
                "intermediate_size (feed_forward_length)",
                self.intermediate_size,
            ),
            ("n_layers (block_count)", self.n_layers),
            ("n_heads (attention.head_count)", self.n_heads),
            ("n_kv_heads (attention.head_count_kv)", self.n_kv_heads),
            ("head_dim", self.head_dim),
            (
                "max_position_embeddings (context_length)",
                self.max_position_embeddings,
            ),
        ] {
            if v == 0 {
                return bad(format!("{what} is 0"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} attention heads cannot share {} kv heads (n_heads must be a multiple of n_kv_heads)",
                self.n_heads, self.n_kv_heads
            ));
        }
        let positive = |what: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                bad(format!("{what} = {v} (must be a finite number above 0)"))
            }
        };
        positive("rms_norm_eps", self.rms_norm_eps)?;
        positive("rope_theta", self.rope_theta)?;
        if let Some(t) = self.rope_local_theta {
            positive("rope_local_base_freq", t)?;
        }
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => positive("rope_scaling.factor", *factor)?,
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                positive("rope_scaling.factor", *factor)?;
                positive("rope_scaling.low_freq_factor", *low_freq_factor)?;
                positive("rope_scaling.high_freq_factor", *high_freq_factor)?;
                if *original_max_position_embeddings == 0 {
                    return bad("rope_scaling.original_max_position_embeddings is 0".into());
                }
            }
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            }) => {
                positive("rope_scaling.factor", *factor)?;
                positive("rope_scaling.beta_fast", *beta_fast)?;
                positive("rope_scaling.beta_slow", *beta_slow)?;
                positive("rope_scaling.attention_factor", *attention_factor)?;
                if *original_max_position_embeddings == 0 {
                    return bad("rope_scaling.original_max_position_embeddings is 0".into());
                }
            }
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            }) => {
                positive("rope_scaling.attention_factor", *attention_factor)?;
                if *original_max_position_embeddings == 0 {
                    return bad("rope_scaling.original_max_position_embeddings is 0".into());
                }
                for (what, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if f.len() != self.head_dim / 2 {
                        return bad(format!(
                            "rope_scaling.{what} has {} values; head_dim {} needs {}",
                            f.len(),
                            self.head_dim,
                            self.head_dim / 2
                        ));
                    }
                    if let Some(v) = f.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                        return bad(format!(
                            "rope_scaling.{what} holds {v} (must be finite and above 0)"
                        ));
                    }
                }
            }
            Some(RopeScaling::FreqFactors(f)) => {
                if f.len() != self.head_dim / 2 {
                    return bad(format!(
                        "rope_freqs has {} values; head_dim {} needs {}",
                        f.len(),
                        self.head_dim,
                        self.head_dim / 2
                    ));
                }
                if let Some(v) = f.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                    return bad(format!("rope_freqs holds {v} (must be finite and above 0)"));
                }
            }
        }
        if let Some(m) = &self.moe {
            if m.n_experts == 0 || m.n_used == 0 || m.n_used > m.n_experts || m.expert_ffn == 0 {
                return bad(format!(
                    "mixture of experts with {} experts, {} used per token, {} rows each",
                    m.n_experts, m.n_used, m.expert_ffn
                ));
            }
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window is 0".into());
        }
        for (what, v) in [
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
        ] {
            if let Some(v) = v {
                positive(what, v)?;
            }
        }
        let in_vocab = |what: &str, id: u32| {
            if (id as usize) < self.vocab_size {
                Ok(())
            } else {
                bad(format!(
                    "{what} {id} is outside the vocabulary of {} tokens",
                    self.vocab_size
                ))
            }
        };
        if let Some(b) = self.bos_token_id {
            in_vocab("bos_token_id", b)?;
        }
        for &e in &self.eos_token_ids {
            in_vocab("eos_token_id", e)?;
        }
        Ok(())
    }

    /// The number of weights the tensors of this configuration hold (embedding, blocks, norms,
    /// biases, and the output matrix unless tied), computed from the shapes alone.
    pub fn n_params(&self) -> usize {
        let (d, hd) = (self.hidden_size, self.head_dim);
        let q = self.n_heads * hd;
        let kv = self.n_kv_heads * hd;
        let attn = d * q + 2 * d * kv + q * d;
        let ffn = match &self.moe {
            Some(m) => m.n_experts * (3 * d * m.expert_ffn + d),
            None => 3 * d * self.intermediate_size,
        };
        let norms = match self.arch {
            Arch::Gemma3 => 4 * d + 2 * hd,
            Arch::Gemma2 => 4 * d,
            Arch::Qwen3 | Arch::Qwen3Moe => 2 * d + 2 * hd,
            Arch::Olmo2 => 2 * d + q + kv,
            _ => 2 * d,
        };
        let bias = match self.arch {
            Arch::Qwen2 => q + 2 * kv,
            _ => 0,
        };
        let per_layer = attn + ffn + norms + bias;
        let embd = self.vocab_size * d;
        let output = if self.tie_word_embeddings { 0 } else { embd };
        embd + self.n_layers * per_layer + d + output
    }

    pub fn is_sliding(&self, layer: usize) -> bool {
        match self.sliding_window {
            None => false,
            Some(_) if self.sliding_layers.is_empty() => true,
            Some(_) => self.sliding_layers.get(layer).copied().unwrap_or(false),
        }
    }
}
