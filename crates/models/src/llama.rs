//! Llama, Mistral and Qwen2: the pre-norm decoder block with SwiGLU MLP.
//!
//! ```text
//! x = embed(tokens)
//! for each block:
//!     h = x + Wo · attention(rope(Wq·n), rope(Wk·n), Wv·n)      where n = rmsnorm(x)
//!     x = h + Wdown · (silu(Wgate·m) ⊙ Wup·m)                    where m = rmsnorm(h)
//! logits = Wout · rmsnorm(x)
//! ```
//! Qwen2 adds biases to q/k/v; Mistral limits attention to a sliding window; Llama 3.1 rescales
//! rope frequencies. All of that comes from `ModelConfig` and the tensors present.

use std::sync::Mutex;

use kiln_formats::{ModelConfig, Tensor};
use kiln_kernels::{matmul, ops, ThreadPool};

use crate::layers::{
    advance_caches, attention, gated_rows, gather_rows, prepare_batch, rms_norm_rows, rope_batch,
    store_kv, AttentionShape, BatchLayout, Linear, Rope, RopeTable,
};
use crate::{CausalLM, Head, KvType, ModelError, Numerics, SeqInput, Weights};

struct Block {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    attn: AttentionShape,
}

pub struct Llama {
    cfg: ModelConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Vec<f32>,
    output: Tensor,
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
    last: Vec<f32>,
    rope: RopeTable,
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
        for l in 0..cfg.n_layers {
            let p = format!("blk.{l}");
            let block = Block {
                attn_norm: w.vector(&format!("{p}.attn_norm.weight"), d)?,
                wq: Linear::load(w, &format!("{p}.attn_q"), d)?,
                wk: Linear::load(w, &format!("{p}.attn_k"), d)?,
                wv: Linear::load(w, &format!("{p}.attn_v"), d)?,
                wo: Linear::load(w, &format!("{p}.attn_output"), qd)?,
                ffn_norm: w.vector(&format!("{p}.ffn_norm.weight"), d)?,
                gate: Linear::load(w, &format!("{p}.ffn_gate"), d)?,
                up: Linear::load(w, &format!("{p}.ffn_up"), d)?,
                down: Linear::load(w, &format!("{p}.ffn_down"), cfg.intermediate_size)?,
                attn: AttentionShape::from_config(&cfg, l, 1.0 / (cfg.head_dim as f32).sqrt()),
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
            output,
            rope,
            pool: ThreadPool::new(n_threads),
            numerics,
            kv_type,
            scratch: Mutex::new(Scratch::default()),
        })
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
        for (l, blk) in self.blocks.iter().enumerate() {
            // Attention.
            rms_norm_rows(pool, &s.x, &blk.attn_norm, cfg.rms_norm_eps, &mut s.n);
            blk.wq.forward(pool, &s.n, n, &mut s.q);
            blk.wk.forward(pool, &s.n, n, &mut s.k);
            blk.wv.forward(pool, &s.n, n, &mut s.v);
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
            s.x.iter_mut().zip(&s.o).for_each(|(x, o)| *x += o);

            // Gated MLP.
            rms_norm_rows(pool, &s.x, &blk.ffn_norm, cfg.rms_norm_eps, &mut s.n);
            blk.gate.forward(pool, &s.n, n, &mut s.gate);
            blk.up.forward(pool, &s.n, n, &mut s.up);
            // libm's expf per element: these quantised models amplify last-bit differences,
            // and the vectorised exp moves qwen2.5's greedy path off llama.cpp's.
            let silu = ops::reference::silu_mul;
            gated_rows(pool, &mut s.gate, &s.up, cfg.intermediate_size, silu);
            blk.down.forward(pool, &s.gate, n, &mut s.o);
            s.x.iter_mut().zip(&s.o).for_each(|(x, o)| *x += o);
        }
        advance_caches(batch);

        // Logits only for the rows asked for.
        gather_rows(&s.x, d, &layout.logit_rows, &mut s.last);
        rms_norm_rows(pool, &s.last, &self.final_norm, cfg.rms_norm_eps, &mut s.n);
        let m = layout.logit_rows.len();
        if head == Head::Hidden {
            logits.extend_from_slice(&s.n[..m * d]);
            return Ok(());
        }
        let start = logits.len();
        logits.resize(start + m * cfg.vocab_size, 0.0);
        matmul(pool, &self.output, &s.n, m, &mut logits[start..]);
        if let Some(cap) = cfg.final_logit_softcapping {
            logits[start..]
                .iter_mut()
                .for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        Ok(())
    }
}
