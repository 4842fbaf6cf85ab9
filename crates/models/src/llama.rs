//! Llama, Mistral, Qwen2, Qwen3, OLMo 2, Phi-3, Mixtral and Qwen3-MoE: the decoder block with
//! a SwiGLU MLP (or a mixture of SwiGLU experts).
//!
//! ```text
//! x = embed(tokens)
//! for each block:
//!     h = x + Wo · attention(rope(qn(Wq·n)), rope(kn(Wk·n)), Wv·n)   where n = rmsnorm(x)
//!     x = h + Wdown · (silu(Wgate·m) ⊙ Wup·m)                         where m = rmsnorm(h)
//! logits = Wout · rmsnorm(x)
//! ```
//! The variants, all from `ModelConfig` and the tensors present:
//! * Qwen2 adds biases to q/k/v; Mistral limits attention to a sliding window; Llama 3.1,
//!   YaRN and LongRoPE rescale rope frequencies (`layers::Rope`).
//! * Qwen3 / Qwen3-MoE: `qn`, `kn` are RMSNorms of each head (`attn_q_norm`, `head_dim` long).
//! * OLMo 2: no norm before attention or the MLP (`n = x`, `m = h`); their outputs are
//!   normed instead (`post_attention_norm`, `post_ffw_norm`) before the residual add; `qn`,
//!   `kn` norm the whole projection (all heads together).
//! * Phi-3: q, k, v come from one fused matrix (`attn_qkv`), gate and up likewise (`ffn_up`,
//!   gate rows first).
//! * Mixtral / Qwen3-MoE: the MLP is a mixture of experts (`layers::Moe`).

use std::sync::Mutex;

use kiln_formats::{Arch, ModelConfig, Tensor};
use kiln_kernels::{matmul, ops, ThreadPool};

use crate::layers::{
    advance_caches, attention, for_each_row, gated_rows, gather_rows, prepare_batch, rms_norm_rows,
    rope_batch, store_kv, AttentionShape, BatchLayout, Linear, Moe, MoeScratch, Rope, RopeTable,
};
use crate::{CausalLM, Head, KvType, ModelError, Numerics, SeqInput, Weights};

/// The query/key/value projections: three matrices, or Phi-3's one.
enum Qkv {
    Separate { wq: Linear, wk: Linear, wv: Linear },
    Fused(Linear),
}

/// The MLP: gate and up apart, Phi-3's fused gate/up (gate rows first), or experts.
enum Ffn {
    Dense {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    FusedGateUp {
        gate_up: Linear,
        down: Linear,
    },
    Experts(Moe),
}

struct Block {
    /// Absent for OLMo 2 (no pre-norms).
    attn_norm: Option<Vec<f32>>,
    qkv: Qkv,
    /// RMSNorm of each head (`head_dim` long) or of the whole projection (OLMo 2).
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Linear,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Option<Vec<f32>>,
    ffn: Ffn,
    post_ffw_norm: Option<Vec<f32>>,
    attn: AttentionShape,
}

pub struct Llama {
    cfg: ModelConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Vec<f32>,
    output: crate::OutputLayer,
    rope: Rope,
    pool: ThreadPool,
    numerics: Numerics,
    kv_type: KvType,
    scratch: Mutex<Scratch>,
}

/// Activation buffers reused across passes so decoding allocates nothing.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    n: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    fused: Vec<f32>,
    last: Vec<f32>,
    rope: RopeTable,
    moe: MoeScratch,
}

impl Llama {
    pub fn new(
        cfg: ModelConfig,
        w: &mut Weights,
        n_threads: usize,
        numerics: Numerics,
        kv_type: KvType,
    ) -> Result<Llama, ModelError> {
        let d = cfg.hidden_size;
        let (qd, kvd) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
        let embed = w.matrix_exact("token_embd.weight", cfg.vocab_size, d)?;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        let ff = cfg.intermediate_size;
        for l in 0..cfg.n_layers {
            let p = format!("blk.{l}");
            let name = |n: &str| format!("{p}.{n}.weight");
            let norm = |w: &mut Weights, n: &str, len: usize| w.vector(&name(n), len);
            let pre_norms = cfg.arch != Arch::Olmo2;
            let qkv = if cfg.arch == Arch::Phi3 {
                let f = Linear::load(w, &format!("{p}.attn_qkv"), d)?;
                check_rows(&f, qd + 2 * kvd, &p)?;
                Qkv::Fused(f)
            } else {
                let (wq, wk, wv) = (
                    Linear::load(w, &format!("{p}.attn_q"), d)?,
                    Linear::load(w, &format!("{p}.attn_k"), d)?,
                    Linear::load(w, &format!("{p}.attn_v"), d)?,
                );
                check_rows(&wq, qd, &p)?;
                check_rows(&wk, kvd, &p)?;
                check_rows(&wv, kvd, &p)?;
                Qkv::Separate { wq, wk, wv }
            };
            let (q_norm, k_norm) = match cfg.arch {
                Arch::Qwen3 | Arch::Qwen3Moe => (
                    Some(norm(w, "attn_q_norm", cfg.head_dim)?),
                    Some(norm(w, "attn_k_norm", cfg.head_dim)?),
                ),
                Arch::Olmo2 => (
                    Some(norm(w, "attn_q_norm", qd)?),
                    Some(norm(w, "attn_k_norm", kvd)?),
                ),
                _ => (None, None),
            };
            let ffn = match (&cfg.moe, cfg.arch) {
                (Some(moe), _) => Ffn::Experts(Moe::load(w, &p, d, moe)?),
                (None, Arch::Phi3) => {
                    let gate_up = Linear::load(w, &format!("{p}.ffn_up"), d)?;
                    check_rows(&gate_up, 2 * ff, &p)?;
                    let down = Linear::load(w, &format!("{p}.ffn_down"), ff)?;
                    Ffn::FusedGateUp { gate_up, down }
                }
                (None, _) => {
                    let gate = Linear::load(w, &format!("{p}.ffn_gate"), d)?;
                    check_rows(&gate, ff, &p)?;
                    let up = Linear::load(w, &format!("{p}.ffn_up"), d)?;
                    check_rows(&up, ff, &p)?;
                    let down = Linear::load(w, &format!("{p}.ffn_down"), ff)?;
                    Ffn::Dense { gate, up, down }
                }
            };
            let block = Block {
                attn_norm: if pre_norms {
                    Some(norm(w, "attn_norm", d)?)
                } else {
                    None
                },
                qkv,
                q_norm,
                k_norm,
                wo: Linear::load(w, &format!("{p}.attn_output"), qd)?,
                post_attn_norm: if pre_norms {
                    None
                } else {
                    Some(norm(w, "post_attention_norm", d)?)
                },
                ffn_norm: if pre_norms {
                    Some(norm(w, "ffn_norm", d)?)
                } else {
                    None
                },
                ffn,
                post_ffw_norm: if pre_norms {
                    None
                } else {
                    Some(norm(w, "post_ffw_norm", d)?)
                },
                attn: AttentionShape::from_config(&cfg, l, 1.0 / (cfg.head_dim as f32).sqrt()),
            };
            check_rows(&block.wo, d, &p)?;
            blocks.push(block);
        }
        let final_norm = w.vector("output_norm.weight", d)?;
        let output = if w.contains("output.weight") {
            w.matrix_exact("output.weight", cfg.vocab_size, d)?
        } else {
            embed.clone()
        };
        let rope = Rope::new(
            cfg.head_dim,
            cfg.rope_theta,
            cfg.rope_scaling.as_ref(),
            cfg.rope_style,
        );
        Ok(Llama {
            cfg,
            embed,
            blocks,
            final_norm,
            output: crate::OutputLayer::new(output),
            rope,
            pool: ThreadPool::new(n_threads),
            numerics,
            kv_type,
            scratch: Mutex::new(Scratch::default()),
        })
    }
}

/// Splits rows of concatenated parts (`parts[i].1` values each) into one buffer per part.
fn split_rows(fused: &[f32], parts: &mut [(&mut Vec<f32>, usize)]) {
    let width: usize = parts.iter().map(|p| p.1).sum();
    let n = fused.len() / width.max(1);
    for (buf, w) in parts.iter_mut() {
        buf.clear();
        buf.reserve(n * *w);
    }
    for row in fused.chunks_exact(width) {
        let mut at = 0;
        for (buf, w) in parts.iter_mut() {
            buf.extend_from_slice(&row[at..at + *w]);
            at += *w;
        }
    }
}

pub(crate) fn check_rows(l: &Linear, rows: usize, block: &str) -> Result<(), ModelError> {
    if l.out_features() != rows {
        return Err(ModelError::Weights(format!(
            "{block}: weight of shape {:?} should have {rows} rows",
            l.weight.shape
        )));
    }
    Ok(())
}

impl CausalLM for Llama {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn logit_rows(&self) -> usize {
        self.output.logit_rows(self.cfg.vocab_size)
    }

    fn limit_logits(&mut self, rows: usize) -> Result<usize, ModelError> {
        self.output.limit(rows)?;
        Ok(self.logit_rows())
    }

    fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    fn kv_type(&self) -> KvType {
        self.kv_type
    }

    fn forward(&self, batch: &mut [SeqInput<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        self.pass(batch, logits, Head::Logits)
    }

    fn forward_hidden(
        &self,
        batch: &mut [SeqInput<'_>],
        hidden: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        self.pass(batch, hidden, Head::Hidden)
    }

    fn forward_residual(
        &self,
        batch: &mut [SeqInput<'_>],
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        self.pass(batch, out, Head::Residual)
    }
}

impl Llama {
    /// The forward pass; `head` picks what the wanted rows return.
    fn pass(
        &self,
        batch: &mut [SeqInput<'_>],
        logits: &mut Vec<f32>,
        head: Head,
    ) -> Result<(), ModelError> {
        let cfg = &self.cfg;
        prepare_batch(batch, cfg.vocab_size, cfg.max_position_embeddings)?;
        let layout = BatchLayout::new(batch);
        let (d, hd, n) = (cfg.hidden_size, cfg.head_dim, layout.total);
        let qd = cfg.n_heads * hd;
        let pool = &self.pool;
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;

        // Token embeddings, one row per token of the flattened batch.
        s.x.resize(n * d, 0.0);
        let tokens = batch.iter().flat_map(|b| b.tokens.iter());
        for (row, &tok) in s.x.chunks_exact_mut(d).zip(tokens) {
            self.embed.dequantize_row(tok as usize, row);
        }

        self.rope.fill_table(&layout, &mut s.rope);
        let kvd = cfg.n_kv_heads * hd;
        let eps = cfg.rms_norm_eps;
        // glibc's expf bit for bit (vectorised; libm itself at the scalar level): these
        // quantised models amplify last-bit differences, and an approximate vector exp
        // moves qwen2.5's greedy path off llama.cpp's.
        let silu = ops::silu_mul;
        for (l, blk) in self.blocks.iter().enumerate() {
            // Attention.
            let input = match &blk.attn_norm {
                Some(w) => {
                    rms_norm_rows(pool, &s.x, w, eps, &mut s.n);
                    &s.n
                }
                None => &s.x,
            };
            match &blk.qkv {
                Qkv::Separate { wq, wk, wv } => {
                    wq.forward(pool, input, n, &mut s.q);
                    wk.forward(pool, input, n, &mut s.k);
                    wv.forward(pool, input, n, &mut s.v);
                }
                Qkv::Fused(f) => {
                    f.forward(pool, input, n, &mut s.fused);
                    split_rows(
                        &s.fused,
                        &mut [(&mut s.q, qd), (&mut s.k, kvd), (&mut s.v, kvd)],
                    );
                }
            }
            if let Some(w) = &blk.q_norm {
                for_each_row(pool, &mut s.q, w.len(), &|_, h| {
                    ops::rms_norm_inplace(h, w, eps)
                });
            }
            if let Some(w) = &blk.k_norm {
                for_each_row(pool, &mut s.k, w.len(), &|_, h| {
                    ops::rms_norm_inplace(h, w, eps)
                });
            }
            rope_batch(pool, &s.rope, hd, &mut s.q, &mut s.k);
            store_kv(batch, &layout, l, &blk.attn, &s.k, &s.v);
            s.att.resize(n * qd, 0.0);
            attention(
                pool,
                batch,
                &layout,
                l,
                &blk.attn,
                self.numerics,
                &s.q,
                &mut s.att,
            );
            blk.wo.forward(pool, &s.att, n, &mut s.o);
            if let Some(w) = &blk.post_attn_norm {
                for_each_row(pool, &mut s.o, d, &|_, r| ops::rms_norm_inplace(r, w, eps));
            }
            s.x.iter_mut().zip(&s.o).for_each(|(x, o)| *x += o);

            // MLP.
            let input = match &blk.ffn_norm {
                Some(w) => {
                    rms_norm_rows(pool, &s.x, w, eps, &mut s.n);
                    &s.n
                }
                None => &s.x,
            };
            match &blk.ffn {
                Ffn::Dense { gate, up, down } => {
                    gate.forward(pool, input, n, &mut s.gate);
                    up.forward(pool, input, n, &mut s.up);
                    gated_rows(pool, &mut s.gate, &s.up, cfg.intermediate_size, silu);
                    down.forward(pool, &s.gate, n, &mut s.o);
                }
                Ffn::FusedGateUp { gate_up, down } => {
                    let ff = cfg.intermediate_size;
                    gate_up.forward(pool, input, n, &mut s.fused);
                    split_rows(&s.fused, &mut [(&mut s.gate, ff), (&mut s.up, ff)]);
                    gated_rows(pool, &mut s.gate, &s.up, ff, silu);
                    down.forward(pool, &s.gate, n, &mut s.o);
                }
                Ffn::Experts(moe) => moe.forward(pool, input, n, silu, &mut s.moe, &mut s.o),
            }
            if let Some(w) = &blk.post_ffw_norm {
                for_each_row(pool, &mut s.o, d, &|_, r| ops::rms_norm_inplace(r, w, eps));
            }
            s.x.iter_mut().zip(&s.o).for_each(|(x, o)| *x += o);
        }
        advance_caches(batch);
        if head == Head::Residual {
            logits.extend_from_slice(&s.x[..n * d]);
            return Ok(());
        }

        // Logits only for the rows asked for.
        gather_rows(&s.x, d, &layout.logit_rows, &mut s.last);
        rms_norm_rows(pool, &s.last, &self.final_norm, cfg.rms_norm_eps, &mut s.n);
        let m = layout.logit_rows.len();
        if head == Head::Hidden {
            logits.extend_from_slice(&s.n[..m * d]);
            return Ok(());
        }
        let out_w = self.output.matrix();
        let start = logits.len();
        logits.resize(start + m * out_w.rows(), 0.0);
        matmul(pool, out_w, &s.n, m, &mut logits[start..]);
        if let Some(cap) = cfg.final_logit_softcapping {
            logits[start..]
                .iter_mut()
                .for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        Ok(())
    }
}
