//! Llama, Mistral and Qwen2 on the device: the forward pass of `kiln_models::llama`, kernel
//! for kernel, with weights, activations and each sequence's KV cache in device memory.
//!
//! ```text
//! x = embed(tokens)
//! for each block:
//!     h = x + Wo · attention(rope(Wq·n + bq), rope(Wk·n + bk), Wv·n + bv)   n = rmsnorm(x)
//!     x = h + Wdown · (silu(Wgate·m) ⊙ Wup·m)                                m = rmsnorm(h)
//! logits = Wout · rmsnorm(x)      (only the rows asked for; the one readback of a pass)
//! ```
//! Arithmetic: f32 activations, weights dequantized to f32 inside the matrix kernels (the CPU
//! path's quantised products round activations to 8 bits instead), f32 attention over an f32
//! or f16 cache. Results therefore agree with the CPU reference to f32 rounding for float
//! models and to the activation rounding for quantised ones (see the tests).

use std::sync::{Arc, Mutex};

use kiln_formats::{Arch, LoadedModel, ModelConfig, RopeScaling};
use kiln_kernels::ops::RopeStyle;
use kiln_models::layers::{
    advance_caches, prepare_batch, AttentionShape, BatchLayout, Rope, RopeTable,
};
use kiln_models::{CausalLM, KvCache, KvType, ModelError, Numerics, SeqInput, Weights};

use crate::cache::GpuKv;
use crate::ops::Recorder;
use crate::upload::{upload_f32, GpuMatrix};
use crate::{Gpu, GpuError};

struct Linear {
    w: GpuMatrix,
    bias: Option<wgpu::Buffer>,
}

impl Linear {
    fn load(
        gpu: &Gpu,
        w: &mut Weights,
        name: &str,
        cols: usize,
        rows: usize,
    ) -> Result<Linear, GpuError> {
        let wname = format!("{name}.weight");
        let t = w.matrix_exact(&wname, rows, cols)?;
        let bias = w
            .optional_vector(&format!("{name}.bias"), rows)?
            .map(|b| upload_f32(gpu, &b, name));
        Ok(Linear {
            w: GpuMatrix::upload(gpu, &t, &wname)?,
            bias,
        })
    }
}

struct Block {
    attn_norm: wgpu::Buffer,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: wgpu::Buffer,
    gate: Linear,
    up: Linear,
    down: Linear,
    attn: AttentionShape,
}

/// Device activation buffers, grown to the largest pass seen.
#[derive(Default)]
struct Scratch {
    rows: usize,
    logit_rows: usize,
    bufs: Option<Bufs>,
    rope: RopeTable,
}

struct Bufs {
    x: wgpu::Buffer,
    n: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    att: wgpu::Buffer,
    o: wgpu::Buffer,
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    tokens: wgpu::Buffer,
    angles: wgpu::Buffer,
    picked: wgpu::Buffer,
    last: wgpu::Buffer,
    last_n: wgpu::Buffer,
    logits: wgpu::Buffer,
}

pub struct GpuLlama {
    gpu: Arc<Gpu>,
    cfg: ModelConfig,
    /// The first block this model runs: 0, or where the CPU's part of a split model ends
    /// (`crate::split`); such a back part takes the residual stream instead of tokens.
    first: usize,
    /// `None` only in a back part whose output matrix is its own.
    embed: Option<GpuMatrix>,
    /// `None`: tied to the embedding.
    output: Option<GpuMatrix>,
    final_norm: wgpu::Buffer,
    blocks: Vec<Block>,
    rope: Rope,
    kv_type: KvType,
    scratch: Mutex<Scratch>,
    weight_bytes: usize,
}

/// Logits rows computed per readback, so one pass never needs a logits buffer larger than a
/// binding allows.
fn logit_chunk(gpu: &Gpu, vocab: usize) -> usize {
    ((gpu.max_binding as usize / 4) / vocab.max(1)).clamp(1, 256)
}

impl GpuLlama {
    /// Uploads a loaded model's weights. Llama, Mistral and Qwen2 only (Gemma 3 runs on the CPU
    /// for now); weight types outside the kernels' list are an error naming the tensor.
    pub fn new(
        gpu: Arc<Gpu>,
        model: LoadedModel,
        kv_type: Option<KvType>,
    ) -> Result<GpuLlama, GpuError> {
        GpuLlama::back(gpu, model, kv_type, 0)
    }

    /// The blocks from `first` on, the final norm and the output matrix: the device's part of
    /// a split model (`first` = 0: the whole model, as [`GpuLlama::new`]). With `first` > 0 the
    /// token embedding stays on the CPU (uploaded only when the output matrix is tied to it)
    /// and passes start from the residual stream ([`GpuLlama::forward_from_residual`]).
    pub fn back(
        gpu: Arc<Gpu>,
        model: LoadedModel,
        kv_type: Option<KvType>,
        first: usize,
    ) -> Result<GpuLlama, GpuError> {
        let cfg = model.config.clone();
        cfg.validate()
            .map_err(|e| ModelError::Weights(e.to_string()))?;
        if !matches!(cfg.arch, Arch::Llama | Arch::Mistral | Arch::Qwen2) {
            return Err(GpuError::Unsupported(format!(
                "the GPU backend runs Llama, Mistral and Qwen2 models; {} runs on the CPU (--device cpu)",
                cfg.arch.name()
            )));
        }
        // YaRN and LongRoPE also scale cos/sin (and LongRoPE switches factors by position),
        // which the GPU rope kernel does not: refuse rather than compute something else.
        if matches!(
            cfg.rope_scaling,
            Some(RopeScaling::Yarn { .. } | RopeScaling::LongRope { .. })
        ) {
            return Err(GpuError::Unsupported(
                "YaRN and LongRoPE rope scaling run on the CPU (--device cpu)".into(),
            ));
        }
        if cfg.head_dim > 256 || !cfg.head_dim.is_multiple_of(2) {
            return Err(GpuError::Unsupported(format!(
                "head_dim {} (the GPU attention kernel takes even sizes up to 256)",
                cfg.head_dim
            )));
        }
        let numerics = Numerics::for_tensors(model.tensors.values().map(|t| &t.dtype));
        let kv_type = kv_type.unwrap_or_else(|| numerics.default_kv_type());
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (qd, kvd, ffn) = (cfg.n_heads * hd, cfg.n_kv_heads * hd, cfg.intermediate_size);
        let mut w = Weights::new(model.tensors);
        let g = &*gpu;
        if first > cfg.n_layers {
            return Err(GpuError::Model(ModelError::Input(format!(
                "the model has {} blocks; the GPU part cannot start at block {first}",
                cfg.n_layers
            ))));
        }
        let embed_t = w.matrix_exact("token_embd.weight", cfg.vocab_size, d)?;
        let embed = if first == 0 || !w.contains("output.weight") {
            Some(GpuMatrix::upload(g, &embed_t, "token_embd.weight")?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(cfg.n_layers - first);
        for l in first..cfg.n_layers {
            let p = format!("blk.{l}");
            let norm = |w: &mut Weights, name: &str| -> Result<wgpu::Buffer, GpuError> {
                Ok(upload_f32(
                    g,
                    &w.vector(&format!("{p}.{name}.weight"), d)?,
                    name,
                ))
            };
            blocks.push(Block {
                attn_norm: norm(&mut w, "attn_norm")?,
                wq: Linear::load(g, &mut w, &format!("{p}.attn_q"), d, qd)?,
                wk: Linear::load(g, &mut w, &format!("{p}.attn_k"), d, kvd)?,
                wv: Linear::load(g, &mut w, &format!("{p}.attn_v"), d, kvd)?,
                wo: Linear::load(g, &mut w, &format!("{p}.attn_output"), qd, d)?,
                ffn_norm: norm(&mut w, "ffn_norm")?,
                gate: Linear::load(g, &mut w, &format!("{p}.ffn_gate"), d, ffn)?,
                up: Linear::load(g, &mut w, &format!("{p}.ffn_up"), d, ffn)?,
                down: Linear::load(g, &mut w, &format!("{p}.ffn_down"), ffn, d)?,
                attn: AttentionShape::from_config(&cfg, l, 1.0 / (hd as f32).sqrt()),
            });
        }
        let final_norm = upload_f32(g, &w.vector("output_norm.weight", d)?, "output_norm");
        let output = if w.contains("output.weight") {
            let t = w.matrix_exact("output.weight", cfg.vocab_size, d)?;
            Some(GpuMatrix::upload(g, &t, "output.weight")?)
        } else {
            None
        };
        let rope = Rope::new(
            hd,
            cfg.rope_theta,
            cfg.rope_scaling.as_ref(),
            cfg.rope_style,
        );
        let mut weight_bytes = embed.as_ref().map_or(0, |e| e.memory_bytes())
            + output.as_ref().map_or(0, |o| o.memory_bytes());
        for b in &blocks {
            for m in [&b.wq, &b.wk, &b.wv, &b.wo, &b.gate, &b.up, &b.down] {
                weight_bytes += m.w.memory_bytes();
            }
        }
        // Surface upload errors (out of device memory) here rather than at the first pass.
        crate::ops::check(g)?;
        Ok(GpuLlama {
            gpu,
            cfg,
            first,
            embed,
            output,
            final_norm,
            blocks,
            rope,
            kv_type,
            scratch: Mutex::new(Scratch::default()),
            weight_bytes,
        })
    }

    /// The adapter this model runs on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Bytes of weights in device memory.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn bufs(&self, s: &mut Scratch, rows: usize, logit_rows: usize) {
        if s.bufs.is_some() && rows <= s.rows && logit_rows <= s.logit_rows {
            return;
        }
        let rows = rows.max(s.rows).max(1);
        let logit_rows = logit_rows.max(s.logit_rows).max(1);
        let c = &self.cfg;
        let g = &*self.gpu;
        let f = |n: usize, name: &str| g.buffer((n * 4) as u64, name);
        let (d, qd, kvd) = (
            c.hidden_size,
            c.n_heads * c.head_dim,
            c.n_kv_heads * c.head_dim,
        );
        s.bufs = Some(Bufs {
            x: f(rows * d, "x"),
            n: f(rows * d, "norm"),
            q: f(rows * qd, "q"),
            k: f(rows * kvd, "k"),
            v: f(rows * kvd, "v"),
            att: f(rows * qd, "att"),
            o: f(rows * d, "o"),
            gate: f(rows * c.intermediate_size, "gate"),
            up: f(rows * c.intermediate_size, "up"),
            tokens: f(rows, "tokens"),
            angles: f(rows * c.head_dim, "rope"),
            picked: f(logit_rows, "rows"),
            last: f(logit_rows * d, "last"),
            last_n: f(logit_rows * d, "last_norm"),
            logits: f(logit_rows * c.vocab_size, "logits"),
        });
        s.rows = rows;
        s.logit_rows = logit_rows;
    }

    /// The first block this model runs (0 unless it is the device's part of a split model).
    pub fn first_block(&self) -> usize {
        self.first
    }

    /// A pass of a split model's device part: `residual` holds the CPU part's residual stream
    /// for every token of the batch (`hidden_size` per token, in batch order); the blocks from
    /// [`GpuLlama::first_block`] on store into this model's caches, and the logits asked for
    /// are appended to `logits`.
    pub fn forward_from_residual(
        &self,
        batch: &mut [SeqInput<'_>],
        residual: &[f32],
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        self.run(batch, Some(residual), logits).map_err(model_error)
    }

    fn run(
        &self,
        batch: &mut [SeqInput<'_>],
        residual: Option<&[f32]>,
        logits: &mut Vec<f32>,
    ) -> Result<(), GpuError> {
        let cfg = &self.cfg;
        prepare_batch(batch, cfg.vocab_size, cfg.max_position_embeddings)?;
        for s in batch.iter() {
            let ok = s
                .cache
                .device()
                .and_then(|d| d.as_any().downcast_ref::<GpuKv>())
                .is_some_and(|kv| kv.on(&self.gpu));
            if !ok {
                return Err(GpuError::Model(ModelError::Input(
                    "a KV cache made by another backend was passed to the GPU model".into(),
                )));
            }
        }
        let layout = BatchLayout::new(batch);
        let n = layout.total;
        if n == 0 {
            return Ok(());
        }
        let g = &*self.gpu;
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv, ffn) = (cfg.n_heads, cfg.n_kv_heads, cfg.intermediate_size);
        let m = layout.logit_rows.len();
        let chunk = logit_chunk(g, cfg.vocab_size);
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;
        self.bufs(s, n, chunk.min(m));
        self.rope.fill_table(&layout, &mut s.rope);
        let b = s.bufs.as_ref().expect("allocated above");

        let tokens: Vec<u8> = batch
            .iter()
            .flat_map(|q| q.tokens.iter())
            .flat_map(|t| t.to_le_bytes())
            .collect();
        g.write(&b.tokens, 0, &tokens);
        let angles: Vec<u8> = s
            .rope
            .angles()
            .iter()
            .flat_map(|[c, s]| [c.to_le_bytes(), s.to_le_bytes()])
            .flatten()
            .collect();
        g.write(&b.angles, 0, &angles);
        let halves = s.rope.style() == RopeStyle::Half;

        let caches: Vec<&GpuKv> = batch
            .iter()
            .map(|q| {
                q.cache
                    .device()
                    .and_then(|d| d.as_any().downcast_ref::<GpuKv>())
                    .expect("checked above")
            })
            .collect();
        let mut rec = Recorder::new(g);
        match (residual, &self.embed) {
            (Some(x), _) => {
                if x.len() != n * d {
                    return Err(GpuError::Model(ModelError::Input(format!(
                        "{} residual values for {n} tokens of width {d}",
                        x.len()
                    ))));
                }
                let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
                g.write(&b.x, 0, &bytes);
            }
            (None, Some(embed)) if self.first == 0 => rec.embed(embed, &b.tokens, n, &b.x),
            (None, _) => {
                return Err(GpuError::Model(ModelError::Input(
                    "the GPU part of a split model takes the residual stream, not tokens".into(),
                )))
            }
        }
        for (l, blk) in self.blocks.iter().enumerate() {
            rec.rms_norm(&b.x, &blk.attn_norm, cfg.rms_norm_eps, n, d, &b.n);
            rec.matmul(&blk.wq.w, &b.n, 0, n, blk.wq.bias.as_ref(), &b.q, 0);
            rec.matmul(&blk.wk.w, &b.n, 0, n, blk.wk.bias.as_ref(), &b.k, 0);
            rec.matmul(&blk.wv.w, &b.n, 0, n, blk.wv.bias.as_ref(), &b.v, 0);
            rec.rope(&b.q, &b.angles, n, nh, hd, halves);
            rec.rope(&b.k, &b.angles, n, nkv, hd, halves);
            for (si, kv) in caches.iter().enumerate() {
                let (first, start, cnt) = (
                    layout.first_row[si],
                    layout.start_pos[si],
                    layout.n_tokens[si],
                );
                if cnt == 0 {
                    continue;
                }
                let slot = kv.slot(l);
                rec.store_kv(&slot, &b.k, &b.v, first, start, cnt);
                let a = &blk.attn;
                rec.attention(
                    &slot, &b.q, nh, first, start, cnt, a.scale, a.softcap, a.window, &b.att,
                );
            }
            rec.matmul(&blk.wo.w, &b.att, 0, n, blk.wo.bias.as_ref(), &b.o, 0);
            rec.add(&b.x, &b.o, n * d);
            rec.rms_norm(&b.x, &blk.ffn_norm, cfg.rms_norm_eps, n, d, &b.n);
            rec.matmul(&blk.gate.w, &b.n, 0, n, blk.gate.bias.as_ref(), &b.gate, 0);
            rec.matmul(&blk.up.w, &b.n, 0, n, blk.up.bias.as_ref(), &b.up, 0);
            rec.gated(&b.gate, &b.up, n * ffn, false);
            rec.matmul(&blk.down.w, &b.gate, 0, n, blk.down.bias.as_ref(), &b.o, 0);
            rec.add(&b.x, &b.o, n * d);
        }
        rec.submit();
        drop(caches);
        advance_caches(batch);

        // Logits for the rows asked for, `chunk` rows per readback.
        let output = match (&self.output, &self.embed) {
            (Some(o), _) | (None, Some(o)) => o,
            (None, None) => unreachable!("the embedding is uploaded when the output is tied to it"),
        };
        let v = cfg.vocab_size;
        for rows in layout.logit_rows.chunks(chunk) {
            let picked: Vec<u8> = rows
                .iter()
                .flat_map(|&r| (r as u32).to_le_bytes())
                .collect();
            g.write(&b.picked, 0, &picked);
            let k = rows.len();
            let mut rec = Recorder::new(g);
            rec.gather(&b.x, &b.picked, k, d, &b.last);
            rec.rms_norm(&b.last, &self.final_norm, cfg.rms_norm_eps, k, d, &b.last_n);
            rec.matmul(output, &b.last_n, 0, k, None, &b.logits, 0);
            rec.submit();
            let start = logits.len();
            logits.extend(g.read_f32(&b.logits, k * v)?);
            if let Some(cap) = cfg.final_logit_softcapping {
                logits[start..]
                    .iter_mut()
                    .for_each(|x| *x = (*x / cap).tanh() * cap);
            }
        }
        if m == 0 {
            // Nothing to read back: still wait, so a pass's device errors surface here.
            crate::ops::check(g)?;
        }
        Ok(())
    }
}

impl CausalLM for GpuLlama {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn kv_type(&self) -> KvType {
        self.kv_type
    }

    fn new_cache(&self, capacity: usize) -> KvCache {
        let c = &self.cfg;
        let store = GpuKv::new(
            self.gpu.clone(),
            self.blocks.len(),
            c.n_kv_heads,
            c.head_dim,
            capacity,
            self.kv_type,
        );
        KvCache::on_device(
            self.blocks.len(),
            c.n_kv_heads,
            c.head_dim,
            capacity,
            self.kv_type,
            Box::new(store),
        )
    }

    fn forward(&self, batch: &mut [SeqInput<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        self.run(batch, None, logits).map_err(model_error)
    }

    fn n_threads(&self) -> usize {
        1
    }
}

pub(crate) fn model_error(e: GpuError) -> ModelError {
    match e {
        GpuError::Model(m) => m,
        other => ModelError::Input(other.to_string()),
    }
}

/// Builds the GPU forward pass for a loaded model (see [`GpuLlama::new`]).
pub fn build(
    gpu: Arc<Gpu>,
    model: LoadedModel,
    kv_type: Option<KvType>,
) -> Result<Box<dyn CausalLM>, GpuError> {
    Ok(Box::new(GpuLlama::new(gpu, model, kv_type)?))
}
