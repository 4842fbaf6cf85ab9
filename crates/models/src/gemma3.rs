//! Gemma 3: a decoder block with RMS-normed queries and keys, norms before *and* after both
//! the attention and the MLP, a GELU-tanh gated MLP, embeddings scaled by √hidden, and
//! sliding-window ("local") layers interleaved with global ones, each kind with its own rope base.
//!
//! ```text
//! x = embed(tokens) · √d
//! for each block (local or global):
//!     a = post_attn_norm(Wo · attention(rope(q_norm(Wq·n)), rope(k_norm(Wk·n)), Wv·n))   n = attn_norm(x)
//!     x = x + a
//!     f = post_ffw_norm(Wdown · (gelu_tanh(Wgate·m) ⊙ Wup·m))                          m = ffn_norm(x)
//!     x = x + f
//! logits = Wembedᵀ · rmsnorm(x)        (output tied to the embedding)
//! ```
//! Norm weights arrive already as "multiply by this" (formats folds Gemma's `1 + w`).
//!
//! Gemma 2 is the same block without the q/k norms, with attention logits soft-capped
//! (`cap · tanh(s / cap)`, in `layers::attention`), final logits soft-capped, and one rope base
//! for local and global layers.

use std::sync::Mutex;

use kiln_formats::{Arch, ModelConfig, Tensor};
use kiln_kernels::{matmul, ops, ThreadPool};

use crate::layers::{
    advance_caches, attention, for_each_row, gated_rows, gather_rows, prepare_batch, rms_norm_rows,
    rope_batch, store_kv, AttentionShape, BatchLayout, Linear, Rope, RopeTable,
};
use crate::llama::check_rows;
use crate::{CausalLM, Head, KvType, ModelError, Numerics, SeqInput, Weights};

/// Gemma 3's local layers use this rope base when the file does not say (as llama.cpp does).
const DEFAULT_LOCAL_ROPE_THETA: f32 = 10_000.0;

struct Block {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    /// Gemma 3 only.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Linear,
    post_attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffw_norm: Vec<f32>,
    attn: AttentionShape,
    local: bool,
}

pub struct Gemma3 {
    cfg: ModelConfig,
    embed: Tensor,
    embed_scale: f32,
    blocks: Vec<Block>,
    final_norm: Vec<f32>,
    output: crate::OutputLayer,
    rope_global: Rope,
    rope_local: Rope,
    pool: ThreadPool,
    numerics: Numerics,
    kv_type: KvType,
    scratch: Mutex<Scratch>,
}

#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    n: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    o2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    last: Vec<f32>,
    rope_global: RopeTable,
    rope_local: RopeTable,
}

impl Gemma3 {
    pub fn new(
        cfg: ModelConfig,
        w: &mut Weights,
        n_threads: usize,
        numerics: Numerics,
        kv_type: KvType,
    ) -> Result<Gemma3, ModelError> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (qd, kvd) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
        let scale = 1.0 / cfg.query_pre_attn_scalar.unwrap_or(hd as f32).sqrt();
        let embed = w.matrix_exact("token_embd.weight", cfg.vocab_size, d)?;
        let gemma3 = cfg.arch == Arch::Gemma3;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = format!("blk.{l}");
            let block = Block {
                attn_norm: w.vector(&format!("{p}.attn_norm.weight"), d)?,
                wq: Linear::load(w, &format!("{p}.attn_q"), d)?,
                wk: Linear::load(w, &format!("{p}.attn_k"), d)?,
                wv: Linear::load(w, &format!("{p}.attn_v"), d)?,
                q_norm: if gemma3 {
                    Some(w.vector(&format!("{p}.attn_q_norm.weight"), hd)?)
                } else {
                    None
                },
                k_norm: if gemma3 {
                    Some(w.vector(&format!("{p}.attn_k_norm.weight"), hd)?)
                } else {
                    None
                },
                wo: Linear::load(w, &format!("{p}.attn_output"), qd)?,
                post_attn_norm: w.vector(&format!("{p}.post_attention_norm.weight"), d)?,
                ffn_norm: w.vector(&format!("{p}.ffn_norm.weight"), d)?,
                gate: Linear::load(w, &format!("{p}.ffn_gate"), d)?,
                up: Linear::load(w, &format!("{p}.ffn_up"), d)?,
                down: Linear::load(w, &format!("{p}.ffn_down"), cfg.intermediate_size)?,
                post_ffw_norm: w.vector(&format!("{p}.post_ffw_norm.weight"), d)?,
                attn: AttentionShape::from_config(&cfg, l, scale),
                local: cfg.is_sliding(l),
            };
            check_rows(&block.wq, qd, &p)?;
            check_rows(&block.wk, kvd, &p)?;
            check_rows(&block.wv, kvd, &p)?;
            check_rows(&block.gate, cfg.intermediate_size, &p)?;
            blocks.push(block);
        }
        let final_norm = w.vector("output_norm.weight", d)?;
        let output = if w.contains("output.weight") {
            w.matrix_exact("output.weight", cfg.vocab_size, d)?
        } else {
            embed.clone()
        };
        let local_theta = match cfg.rope_local_theta {
            Some(t) => t,
            None if gemma3 => DEFAULT_LOCAL_ROPE_THETA,
            None => cfg.rope_theta,
        };
        Ok(Gemma3 {
            embed_scale: (d as f32).sqrt(),
            rope_global: Rope::new(
                hd,
                cfg.rope_theta,
                cfg.rope_scaling.as_ref(),
                cfg.rope_style,
            ),
            rope_local: Rope::new(hd, local_theta, None, cfg.rope_style),
            cfg,
            embed,
            blocks,
            final_norm,
            output: crate::OutputLayer::new(output),
            pool: ThreadPool::new(n_threads),
            numerics,
            kv_type,
            scratch: Mutex::new(Scratch::default()),
        })
    }
}

impl CausalLM for Gemma3 {
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

impl Gemma3 {
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
        let (d, hd, n, eps) = (
            cfg.hidden_size,
            cfg.head_dim,
            layout.total,
            cfg.rms_norm_eps,
        );
        let qd = cfg.n_heads * hd;
        let pool = &self.pool;
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;

        s.x.resize(n * d, 0.0);
        let tokens = batch.iter().flat_map(|b| b.tokens.iter());
        for (row, &tok) in s.x.chunks_exact_mut(d).zip(tokens) {
            self.embed.dequantize_row(tok as usize, row);
            row.iter_mut().for_each(|v| *v *= self.embed_scale);
        }

        self.rope_global.fill_table(&layout, &mut s.rope_global);
        self.rope_local.fill_table(&layout, &mut s.rope_local);
        for (l, blk) in self.blocks.iter().enumerate() {
            // Attention, with per-head q/k norms and a norm on its output.
            rms_norm_rows(pool, &s.x, &blk.attn_norm, eps, &mut s.n);
            blk.wq.forward(pool, &s.n, n, &mut s.q);
            blk.wk.forward(pool, &s.n, n, &mut s.k);
            blk.wv.forward(pool, &s.n, n, &mut s.v);
            if let (Some(qn), Some(kn)) = (&blk.q_norm, &blk.k_norm) {
                for_each_row(pool, &mut s.q, hd, &|_, h| {
                    ops::rms_norm_inplace(h, qn, eps)
                });
                for_each_row(pool, &mut s.k, hd, &|_, h| {
                    ops::rms_norm_inplace(h, kn, eps)
                });
            }
            let rope = if blk.local {
                &s.rope_local
            } else {
                &s.rope_global
            };
            rope_batch(pool, rope, hd, &mut s.q, &mut s.k);
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
            rms_norm_rows(pool, &s.o, &blk.post_attn_norm, eps, &mut s.o2);
            s.x.iter_mut().zip(&s.o2).for_each(|(x, o)| *x += o);

            // GELU-tanh gated MLP, also normed on both sides.
            rms_norm_rows(pool, &s.x, &blk.ffn_norm, eps, &mut s.n);
            blk.gate.forward(pool, &s.n, n, &mut s.gate);
            blk.up.forward(pool, &s.n, n, &mut s.up);
            let act = match self.numerics {
                Numerics::Exact => ops::reference::gelu_tanh_mul,
                Numerics::Ggml => ops::gelu_tanh_mul_ggml,
            };
            gated_rows(pool, &mut s.gate, &s.up, cfg.intermediate_size, act);
            blk.down.forward(pool, &s.gate, n, &mut s.o);
            rms_norm_rows(pool, &s.o, &blk.post_ffw_norm, eps, &mut s.o2);
            s.x.iter_mut().zip(&s.o2).for_each(|(x, o)| *x += o);
        }
        advance_caches(batch);
        if head == Head::Residual {
            logits.extend_from_slice(&s.x[..n * d]);
            return Ok(());
        }

        gather_rows(&s.x, d, &layout.logit_rows, &mut s.last);
        rms_norm_rows(pool, &s.last, &self.final_norm, eps, &mut s.n);
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
