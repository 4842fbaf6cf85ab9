//! Every architecture kiln runs, on the device: the forward passes of `kiln_models::llama`
//! (Llama, Mistral, Qwen2, Qwen3, OLMo 2, Phi-3, Mixtral, Qwen3-MoE) and
//! `kiln_models::gemma3` (Gemma 2 and 3), kernel for kernel, with weights, activations and each
//! sequence's KV cache in device memory.
//!
//! ```text
//! x = embed(tokens) (· √d: Gemma)
//! for each block:
//!     n = attn_norm(x)                          (OLMo 2: n = x)
//!     q, k, v = Wq·n + bq, Wk·n + bk, Wv·n + bv (Phi-3: one fused matrix, split at upload)
//!     q, k = q_norm(q), k_norm(k)               (Qwen3, Gemma 3: per head; OLMo 2: whole rows)
//!     a = Wo · attention(rope(q), rope(k), v)   (Gemma: local layers have their own rope base)
//!     x = x + post_attn_norm(a)                 (post-norm: Gemma, OLMo 2)
//!     m = ffn_norm(x)                           (OLMo 2: m = x)
//!     f = Wdown · (act(Wgate·m) ⊙ Wup·m)        (act: SiLU, Gemma's GELU; Phi-3: fused
//!                                                gate/up split at upload; Mixtral, Qwen3-MoE:
//!                                                the routed experts' weighted sum)
//!     x = x + post_ffw_norm(f)
//! logits = Wout · rmsnorm(x)      (only the rows asked for; the one readback of a pass;
//!                                  Gemma 2's final soft cap on the host)
//! ```
//! Rope angles are the CPU's table (`layers::Rope`: Llama 3, YaRN and LongRoPE scaling, the
//! attention factor and LongRoPE's per-position switch included), uploaded per pass.
//!
//! Arithmetic: f32 activations, weights dequantized to f32 inside the matrix kernels (the CPU
//! path's quantised products round activations to 8 bits instead), f32 attention over an f32
//! or f16 cache; quantised Gemma models take GELU through ggml's f16 table as the CPU path does.
//! Results therefore agree with the CPU reference to f32 rounding for float models and to the
//! activation rounding for quantised ones (see the tests).
//!
//! A mixture of experts is routed on the device (softmax, top-k, weights per token and
//! expert); every expert then runs over the whole pass and adds its output to the tokens routed
//! to it, in expert order as on the CPU. That computes `n_experts / n_used` times the MLP work of
//! a routed pass (correct, not yet fast).

use std::sync::{Arc, Mutex};

use kiln_formats::{Arch, LoadedModel, ModelConfig};
use kiln_kernels::ops::RopeStyle;
use kiln_kernels::{Storage, Tensor};
use kiln_models::layers::{
    advance_caches, prepare_batch, AttentionShape, BatchLayout, Rope, RopeTable,
};
use kiln_models::{CausalLM, KvCache, KvType, ModelError, Numerics, SeqInput, Weights};

use crate::cache::GpuKv;
use crate::ops::{MatKind, Recorder};
use crate::upload::{upload_f32, GpuMatrix};
use crate::{Gpu, GpuError};

/// Gemma 3's local layers use this rope base when the file does not say (as the CPU path and
/// llama.cpp do).
const DEFAULT_LOCAL_ROPE_THETA: f32 = 10_000.0;

/// The most experts the device router takes (its per-token chosen set is 256 bits).
const MAX_EXPERTS: usize = 256;

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

    /// A fused matrix (Phi-3's `attn_qkv`, `ffn_up`) as one `Linear` per part of its rows
    /// (`rows[i]` rows each, in order): every output row is the same dot product either way.
    fn load_split(
        gpu: &Gpu,
        w: &mut Weights,
        name: &str,
        cols: usize,
        rows: &[usize],
    ) -> Result<Vec<Linear>, GpuError> {
        let total: usize = rows.iter().sum();
        let wname = format!("{name}.weight");
        let t = w.matrix_exact(&wname, total, cols)?;
        let bias = w.optional_vector(&format!("{name}.bias"), total)?;
        let plain = t.plain_bytes();
        let rb = t.row_bytes();
        let mut out = Vec::with_capacity(rows.len());
        let mut r0 = 0;
        for (i, &n) in rows.iter().enumerate() {
            let part = Tensor::new(
                t.dtype,
                vec![n, cols],
                Storage::from_vec(plain[r0 * rb..(r0 + n) * rb].to_vec()),
            )
            .map_err(|e| ModelError::Weights(format!("{wname}: {e}")))?;
            let label = format!("{wname}[{i}]");
            out.push(Linear {
                w: GpuMatrix::upload(gpu, &part, &label)?,
                bias: bias
                    .as_ref()
                    .map(|b| upload_f32(gpu, &b[r0..r0 + n], &label)),
            });
            r0 += n;
        }
        Ok(out)
    }
}

/// A mixture of SwiGLU experts (Mixtral, Qwen3-MoE) on the device.
struct Experts {
    router: GpuMatrix,
    gate: Vec<GpuMatrix>,
    up: Vec<GpuMatrix>,
    down: Vec<GpuMatrix>,
    n_used: usize,
    norm_topk: bool,
    ffn: usize,
}

impl Experts {
    fn load(
        gpu: &Gpu,
        w: &mut Weights,
        prefix: &str,
        hidden: usize,
        moe: &kiln_formats::MoeConfig,
    ) -> Result<Experts, GpuError> {
        let (e, f) = (moe.n_experts, moe.expert_ffn);
        if e > MAX_EXPERTS || moe.n_used == 0 || moe.n_used > e {
            return Err(GpuError::Unsupported(format!(
                "{e} experts, {} used per token (the GPU router takes up to {MAX_EXPERTS})",
                moe.n_used
            )));
        }
        let rname = format!("{prefix}.ffn_gate_inp.weight");
        let router = GpuMatrix::upload(gpu, &w.matrix_exact(&rname, e, hidden)?, &rname)?;
        let mut split =
            |name: &str, rows: usize, cols: usize| -> Result<Vec<GpuMatrix>, GpuError> {
                let name = format!("{prefix}.{name}.weight");
                let t = w.tensor3(&name, e, rows, cols)?;
                let plain = t.plain_bytes();
                let per = plain.len() / e;
                (0..e)
                    .map(|i| {
                        let part = Tensor::new(
                            t.dtype,
                            vec![rows, cols],
                            Storage::from_vec(plain[i * per..(i + 1) * per].to_vec()),
                        )
                        .map_err(|err| ModelError::Weights(format!("{name}: {err}")))?;
                        GpuMatrix::upload(gpu, &part, &format!("{name}[{i}]"))
                    })
                    .collect()
            };
        Ok(Experts {
            router,
            gate: split("ffn_gate_exps", f, hidden)?,
            up: split("ffn_up_exps", f, hidden)?,
            down: split("ffn_down_exps", hidden, f)?,
            n_used: moe.n_used,
            norm_topk: moe.norm_topk,
            ffn: f,
        })
    }
}

enum Ffn {
    Dense {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    Experts(Experts),
}

/// Query/key RMSNorm weights and the length of the rows they norm (`head_dim`: per head;
/// the whole projection for OLMo 2).
struct QkNorm {
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    q_len: usize,
    k_len: usize,
}

struct Block {
    /// Absent for OLMo 2 (no pre-norms).
    attn_norm: Option<wgpu::Buffer>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    qk_norm: Option<QkNorm>,
    wo: Linear,
    post_attn_norm: Option<wgpu::Buffer>,
    ffn_norm: Option<wgpu::Buffer>,
    ffn: Ffn,
    post_ffw_norm: Option<wgpu::Buffer>,
    attn: AttentionShape,
    /// Gemma's sliding layers: rotated by the local rope table.
    local: bool,
}

/// The MLP's activation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    Silu,
    /// GELU-tanh in f32 (float Gemma models, as transformers).
    Gelu,
    /// GELU through ggml's f16 table (quantised Gemma models, as llama.cpp's CPU backend).
    GeluGgml,
}

/// Device activation buffers, grown to the largest pass seen.
#[derive(Default)]
struct Scratch {
    rows: usize,
    logit_rows: usize,
    bufs: Option<Bufs>,
    rope: RopeTable,
    rope_local: RopeTable,
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
    /// Mixtures of experts: router logits, routing weights, one expert's output.
    router: wgpu::Buffer,
    routes: wgpu::Buffer,
    expert_out: wgpu::Buffer,
    tokens: wgpu::Buffer,
    angles: wgpu::Buffer,
    angles_local: wgpu::Buffer,
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
    /// Gemma: embeddings are multiplied by √hidden.
    embed_scale: Option<f32>,
    /// `None`: tied to the embedding.
    output: Option<GpuMatrix>,
    final_norm: wgpu::Buffer,
    blocks: Vec<Block>,
    rope: Rope,
    /// Gemma's sliding layers' rope (its own base, never scaled); `None` elsewhere.
    rope_local: Option<Rope>,
    act: Act,
    /// ggml's GELU table, for `Act::GeluGgml`.
    gelu_table: Option<wgpu::Buffer>,
    kv_type: KvType,
    scratch: Mutex<Scratch>,
    weight_bytes: usize,
}

/// Logits rows computed per readback, so one pass never needs a logits buffer larger than a
/// binding allows.
fn logit_chunk(gpu: &Gpu, vocab: usize) -> usize {
    ((gpu.max_binding as usize / 4) / vocab.max(1)).clamp(1, 256)
}

/// Runs of consecutive rows that take one matrix kernel: `(kind, first row, rows)`. Each
/// sequence's rows take the kernel its own row count picks ([`MatKind::for_rows`]), so a
/// sequence's results never depend on its batch-mates (a decoding sequence keeps the
/// matrix-vector kernel beside another's prefill); neighbours of one kind share a dispatch,
/// since neither kernel's per-row sums depend on the other rows of a dispatch.
fn runs(kinds: impl Iterator<Item = MatKind>) -> Vec<(MatKind, usize, usize)> {
    let mut out: Vec<(MatKind, usize, usize)> = Vec::new();
    for (row, kind) in kinds.enumerate() {
        match out.last_mut() {
            Some((k, _, n)) if *k == kind => *n += 1,
            _ => out.push((kind, row, 1)),
        }
    }
    out
}

/// `out = w · x (+ bias)` over every run of rows, each with its kernel.
#[allow(clippy::too_many_arguments)]
fn matmul_runs(
    rec: &mut Recorder<'_>,
    runs: &[(MatKind, usize, usize)],
    w: &GpuMatrix,
    x: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    out: &wgpu::Buffer,
) {
    for &(kind, row, n) in runs {
        rec.matmul_with(kind, w, x, row, n, bias, out, row);
    }
}

impl GpuLlama {
    /// Uploads a loaded model's weights (any architecture kiln runs); weight types outside
    /// the kernels' list, head sizes over 256 and routers of more than 256 experts are errors
    /// naming what the GPU does not take.
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
        if cfg.head_dim > 256 || !cfg.head_dim.is_multiple_of(2) {
            return Err(GpuError::Unsupported(format!(
                "{}: head_dim {} (the GPU attention kernel takes even sizes up to 256)",
                cfg.arch.name(),
                cfg.head_dim
            )));
        }
        let numerics = Numerics::for_tensors(model.tensors.values().map(|t| &t.dtype));
        let kv_type = kv_type.unwrap_or_else(|| numerics.default_kv_type());
        let gemma = matches!(cfg.arch, Arch::Gemma2 | Arch::Gemma3);
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (qd, kvd, ffn) = (cfg.n_heads * hd, cfg.n_kv_heads * hd, cfg.intermediate_size);
        let scale = if gemma {
            1.0 / cfg.query_pre_attn_scalar.unwrap_or(hd as f32).sqrt()
        } else {
            1.0 / (hd as f32).sqrt()
        };
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
            let vector =
                |w: &mut Weights, name: &str, len: usize| -> Result<wgpu::Buffer, GpuError> {
                    Ok(upload_f32(
                        g,
                        &w.vector(&format!("{p}.{name}.weight"), len)?,
                        name,
                    ))
                };
            // Which norms a block has: Gemma both sides of each sublayer, OLMo 2 only after.
            let (pre, post) = match cfg.arch {
                Arch::Olmo2 => (false, true),
                Arch::Gemma2 | Arch::Gemma3 => (true, true),
                _ => (true, false),
            };
            let attn_norm = if pre {
                Some(vector(&mut w, "attn_norm", d)?)
            } else {
                None
            };
            let (wq, wk, wv) = if cfg.arch == Arch::Phi3 {
                let mut parts =
                    Linear::load_split(g, &mut w, &format!("{p}.attn_qkv"), d, &[qd, kvd, kvd])?
                        .into_iter();
                let mut next = || parts.next().expect("three parts");
                (next(), next(), next())
            } else {
                (
                    Linear::load(g, &mut w, &format!("{p}.attn_q"), d, qd)?,
                    Linear::load(g, &mut w, &format!("{p}.attn_k"), d, kvd)?,
                    Linear::load(g, &mut w, &format!("{p}.attn_v"), d, kvd)?,
                )
            };
            let qk_norm = match cfg.arch {
                Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3 => Some((hd, hd)),
                Arch::Olmo2 => Some((qd, kvd)),
                _ => None,
            };
            let qk_norm = match qk_norm {
                Some((q_len, k_len)) => Some(QkNorm {
                    q: vector(&mut w, "attn_q_norm", q_len)?,
                    k: vector(&mut w, "attn_k_norm", k_len)?,
                    q_len,
                    k_len,
                }),
                None => None,
            };
            let wo = Linear::load(g, &mut w, &format!("{p}.attn_output"), qd, d)?;
            let post_attn_norm = if post {
                Some(vector(&mut w, "post_attention_norm", d)?)
            } else {
                None
            };
            let ffn_norm = if pre {
                Some(vector(&mut w, "ffn_norm", d)?)
            } else {
                None
            };
            let mlp = match (&cfg.moe, cfg.arch) {
                (Some(moe), _) => Ffn::Experts(Experts::load(g, &mut w, &p, d, moe)?),
                (None, Arch::Phi3) => {
                    let mut parts =
                        Linear::load_split(g, &mut w, &format!("{p}.ffn_up"), d, &[ffn, ffn])?
                            .into_iter();
                    let gate = parts.next().expect("two parts");
                    let up = parts.next().expect("two parts");
                    Ffn::Dense {
                        gate,
                        up,
                        down: Linear::load(g, &mut w, &format!("{p}.ffn_down"), ffn, d)?,
                    }
                }
                (None, _) => Ffn::Dense {
                    gate: Linear::load(g, &mut w, &format!("{p}.ffn_gate"), d, ffn)?,
                    up: Linear::load(g, &mut w, &format!("{p}.ffn_up"), d, ffn)?,
                    down: Linear::load(g, &mut w, &format!("{p}.ffn_down"), ffn, d)?,
                },
            };
            let post_ffw_norm = if post {
                Some(vector(&mut w, "post_ffw_norm", d)?)
            } else {
                None
            };
            blocks.push(Block {
                attn_norm,
                wq,
                wk,
                wv,
                qk_norm,
                wo,
                post_attn_norm,
                ffn_norm,
                ffn: mlp,
                post_ffw_norm,
                attn: AttentionShape::from_config(&cfg, l, scale),
                local: gemma && cfg.is_sliding(l),
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
        let rope_local = gemma.then(|| {
            let theta = match cfg.rope_local_theta {
                Some(t) => t,
                None if cfg.arch == Arch::Gemma3 => DEFAULT_LOCAL_ROPE_THETA,
                None => cfg.rope_theta,
            };
            Rope::new(hd, theta, None, cfg.rope_style)
        });
        let act = match (gemma, numerics) {
            (false, _) => Act::Silu,
            (true, Numerics::Exact) => Act::Gelu,
            (true, Numerics::Ggml) => Act::GeluGgml,
        };
        let gelu_table = (act == Act::GeluGgml).then(|| crate::ops::gelu_table(g));
        let mut weight_bytes = embed.as_ref().map_or(0, |e| e.memory_bytes())
            + output.as_ref().map_or(0, |o| o.memory_bytes());
        for b in &blocks {
            for m in [&b.wq, &b.wk, &b.wv, &b.wo] {
                weight_bytes += m.w.memory_bytes();
            }
            match &b.ffn {
                Ffn::Dense { gate, up, down } => {
                    for m in [gate, up, down] {
                        weight_bytes += m.w.memory_bytes();
                    }
                }
                Ffn::Experts(e) => {
                    weight_bytes += e.router.memory_bytes();
                    for m in e.gate.iter().chain(&e.up).chain(&e.down) {
                        weight_bytes += m.memory_bytes();
                    }
                }
            }
        }
        // Surface upload errors (out of device memory) here rather than at the first pass.
        crate::ops::check(g)?;
        Ok(GpuLlama {
            gpu,
            embed_scale: gemma.then(|| (d as f32).sqrt()),
            cfg,
            first,
            embed,
            output,
            final_norm,
            blocks,
            rope,
            rope_local,
            act,
            gelu_table,
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
        let (ne, ffn) = match &c.moe {
            Some(m) => (m.n_experts, c.intermediate_size.max(m.expert_ffn)),
            None => (0, c.intermediate_size),
        };
        let moe_rows = if ne > 0 { rows } else { 0 };
        s.bufs = Some(Bufs {
            x: f(rows * d, "x"),
            n: f(rows * d, "norm"),
            q: f(rows * qd, "q"),
            k: f(rows * kvd, "k"),
            v: f(rows * kvd, "v"),
            att: f(rows * qd, "att"),
            o: f(rows * d, "o"),
            gate: f(rows * ffn, "gate"),
            up: f(rows * ffn, "up"),
            router: f(moe_rows * ne, "router"),
            routes: f(moe_rows * ne, "routes"),
            expert_out: f(moe_rows * d, "expert_out"),
            tokens: f(rows, "tokens"),
            angles: f(rows * c.head_dim, "rope"),
            angles_local: f(rows * c.head_dim, "rope_local"),
            picked: f(logit_rows, "rows"),
            last: f(logit_rows * d, "last"),
            last_n: f(logit_rows * d, "last_norm"),
            logits: f(logit_rows * c.vocab_size, "logits"),
        });
        s.rows = rows;
        s.logit_rows = logit_rows;
    }

    /// `x = act(x) ⊙ y` over `len` values.
    fn activate(&self, rec: &mut Recorder<'_>, x: &wgpu::Buffer, y: &wgpu::Buffer, len: usize) {
        match self.act {
            Act::Silu => rec.gated(x, y, len, false),
            Act::Gelu => rec.gated(x, y, len, true),
            Act::GeluGgml => rec.gelu_ggml(
                x,
                y,
                self.gelu_table.as_ref().expect("made with the model"),
                len,
            ),
        }
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
        let seq_kind: Vec<MatKind> = layout
            .n_tokens
            .iter()
            .map(|&t| MatKind::for_rows(t))
            .collect();
        let rows = runs(layout.row_seq.iter().map(|&s| seq_kind[s]));
        let eps = cfg.rms_norm_eps;
        let m = layout.logit_rows.len();
        let chunk = logit_chunk(g, cfg.vocab_size);
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;
        self.bufs(s, n, chunk.min(m));
        let angle_bytes = |t: &RopeTable| -> Vec<u8> {
            t.angles()
                .iter()
                .flat_map(|[c, s]| [c.to_le_bytes(), s.to_le_bytes()])
                .flatten()
                .collect()
        };
        self.rope.fill_table(&layout, &mut s.rope);
        if let Some(r) = &self.rope_local {
            r.fill_table(&layout, &mut s.rope_local);
        }
        let b = s.bufs.as_ref().expect("allocated above");

        let tokens: Vec<u8> = batch
            .iter()
            .flat_map(|q| q.tokens.iter())
            .flat_map(|t| t.to_le_bytes())
            .collect();
        g.write(&b.tokens, 0, &tokens);
        g.write(&b.angles, 0, &angle_bytes(&s.rope));
        if self.rope_local.is_some() {
            g.write(&b.angles_local, 0, &angle_bytes(&s.rope_local));
        }
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
            (None, Some(embed)) if self.first == 0 => {
                rec.embed(embed, &b.tokens, n, &b.x);
                if let Some(f) = self.embed_scale {
                    rec.scale(&b.x, f, n * d);
                }
            }
            (None, _) => {
                return Err(GpuError::Model(ModelError::Input(
                    "the GPU part of a split model takes the residual stream, not tokens".into(),
                )))
            }
        }
        for (l, blk) in self.blocks.iter().enumerate() {
            // Attention.
            let input = match &blk.attn_norm {
                Some(w) => {
                    rec.rms_norm(&b.x, w, eps, n, d, &b.n);
                    &b.n
                }
                None => &b.x,
            };
            matmul_runs(
                &mut rec,
                &rows,
                &blk.wq.w,
                input,
                blk.wq.bias.as_ref(),
                &b.q,
            );
            matmul_runs(
                &mut rec,
                &rows,
                &blk.wk.w,
                input,
                blk.wk.bias.as_ref(),
                &b.k,
            );
            matmul_runs(
                &mut rec,
                &rows,
                &blk.wv.w,
                input,
                blk.wv.bias.as_ref(),
                &b.v,
            );
            if let Some(qk) = &blk.qk_norm {
                rec.rms_norm_inplace(&b.q, &qk.q, eps, n * nh * hd / qk.q_len, qk.q_len);
                rec.rms_norm_inplace(&b.k, &qk.k, eps, n * nkv * hd / qk.k_len, qk.k_len);
            }
            let angles = if blk.local {
                &b.angles_local
            } else {
                &b.angles
            };
            rec.rope(&b.q, angles, n, nh, hd, halves);
            rec.rope(&b.k, angles, n, nkv, hd, halves);
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
            matmul_runs(
                &mut rec,
                &rows,
                &blk.wo.w,
                &b.att,
                blk.wo.bias.as_ref(),
                &b.o,
            );
            match &blk.post_attn_norm {
                Some(w) => {
                    rec.rms_norm(&b.o, w, eps, n, d, &b.n);
                    rec.add(&b.x, &b.n, n * d);
                }
                None => rec.add(&b.x, &b.o, n * d),
            }

            // MLP.
            let input = match &blk.ffn_norm {
                Some(w) => {
                    rec.rms_norm(&b.x, w, eps, n, d, &b.n);
                    &b.n
                }
                None => &b.x,
            };
            match &blk.ffn {
                Ffn::Dense { gate, up, down } => {
                    matmul_runs(&mut rec, &rows, &gate.w, input, gate.bias.as_ref(), &b.gate);
                    matmul_runs(&mut rec, &rows, &up.w, input, up.bias.as_ref(), &b.up);
                    self.activate(&mut rec, &b.gate, &b.up, n * ffn);
                    matmul_runs(&mut rec, &rows, &down.w, &b.gate, down.bias.as_ref(), &b.o);
                }
                Ffn::Experts(e) => {
                    let ne = e.gate.len();
                    matmul_runs(&mut rec, &rows, &e.router, input, None, &b.router);
                    rec.moe_route(&b.router, n, ne, e.n_used, e.norm_topk, &b.routes);
                    for i in 0..ne {
                        matmul_runs(&mut rec, &rows, &e.gate[i], input, None, &b.gate);
                        matmul_runs(&mut rec, &rows, &e.up[i], input, None, &b.up);
                        self.activate(&mut rec, &b.gate, &b.up, n * e.ffn);
                        matmul_runs(&mut rec, &rows, &e.down[i], &b.gate, None, &b.expert_out);
                        rec.moe_acc(&b.o, &b.expert_out, &b.routes, n, d, ne, i, i == 0);
                    }
                }
            }
            match &blk.post_ffw_norm {
                Some(w) => {
                    rec.rms_norm(&b.o, w, eps, n, d, &b.n);
                    rec.add(&b.x, &b.n, n * d);
                }
                None => rec.add(&b.x, &b.o, n * d),
            }
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
        for picked_rows in layout.logit_rows.chunks(chunk) {
            let picked: Vec<u8> = picked_rows
                .iter()
                .flat_map(|&r| (r as u32).to_le_bytes())
                .collect();
            g.write(&b.picked, 0, &picked);
            let k = picked_rows.len();
            let out_runs = runs(picked_rows.iter().map(|&r| seq_kind[layout.row_seq[r]]));
            let mut rec = Recorder::new(g);
            rec.gather(&b.x, &b.picked, k, d, &b.last);
            rec.rms_norm(&b.last, &self.final_norm, eps, k, d, &b.last_n);
            matmul_runs(&mut rec, &out_runs, output, &b.last_n, None, &b.logits);
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
