//! Building blocks shared by the architectures: linear layers, rotary tables, attention over
//! the KV cache, and the batch bookkeeping of a forward pass.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_formats::{ModelConfig, RopeScaling, Tensor};
use kiln_kernels::ops::{self, RopeStyle};
use kiln_kernels::pool::split_range;
use kiln_kernels::{matmul, ThreadPool};

use crate::{HeadView, KvCache, ModelError, Numerics, Weights};

/// `y = x·Wᵀ (+ b)` with `W` kept in its stored block type.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    /// Loads `{name}.weight` (required, `[out, in_features]`) and `{name}.bias` (optional).
    pub fn load(w: &mut Weights, name: &str, in_features: usize) -> Result<Linear, ModelError> {
        let weight = w.matrix(&format!("{name}.weight"), in_features)?;
        let bias = w.optional_vector(&format!("{name}.bias"), weight.rows())?;
        Ok(Linear { weight, bias })
    }

    pub fn out_features(&self) -> usize {
        self.weight.rows()
    }

    /// `x` holds `n` rows; `out` receives `n × out_features`.
    pub fn forward(&self, pool: &ThreadPool, x: &[f32], n: usize, out: &mut Vec<f32>) {
        let rows = self.out_features();
        out.resize(n * rows, 0.0);
        matmul(pool, &self.weight, x, n, out);
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(rows) {
                for (o, bb) in row.iter_mut().zip(b) {
                    *o += bb;
                }
            }
        }
    }
}

/// A mixture-of-experts SwiGLU MLP (Mixtral, Qwen3-MoE): the router's softmax picks each
/// token's `n_used` most probable experts, whose outputs are summed with those
/// probabilities (renormalised over the chosen experts when `norm_topk`).
pub struct Moe {
    /// `[n_experts, hidden]`.
    router: Tensor,
    /// Per expert: gate and up `[expert_ffn, hidden]`, down `[hidden, expert_ffn]`, views
    /// into GGUF's merged `ffn_{gate,up,down}_exps` tensors.
    gate: Vec<Tensor>,
    up: Vec<Tensor>,
    down: Vec<Tensor>,
    n_used: usize,
    norm_topk: bool,
    ffn: usize,
}

/// Reusable buffers of [`Moe::forward`].
#[derive(Default)]
pub struct MoeScratch {
    probs: Vec<f32>,
    /// Per expert: (token row, weight) of the tokens routed to it.
    routes: Vec<Vec<(usize, f32)>>,
    xe: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    ye: Vec<f32>,
}

impl Moe {
    /// Loads layer `prefix`'s router and merged expert tensors.
    pub fn load(
        w: &mut Weights,
        prefix: &str,
        hidden: usize,
        moe: &kiln_formats::MoeConfig,
    ) -> Result<Moe, ModelError> {
        let (e, f) = (moe.n_experts, moe.expert_ffn);
        let router = w.matrix_exact(&format!("{prefix}.ffn_gate_inp.weight"), e, hidden)?;
        let split = |w: &mut Weights, name: &str, rows: usize, cols: usize| {
            let name = format!("{prefix}.{name}.weight");
            let t = w.tensor3(&name, e, rows, cols)?;
            let per = t.data.len() / e;
            (0..e)
                .map(|i| {
                    let bytes = t.data.slice(i * per, per).ok_or_else(|| {
                        ModelError::Weights(format!("{name}: expert {i} lies outside the tensor"))
                    })?;
                    Tensor::new(t.dtype, vec![rows, cols], bytes)
                        .map_err(|err| ModelError::Weights(format!("{name}: {err}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Moe {
            router,
            gate: split(w, "ffn_gate_exps", f, hidden)?,
            up: split(w, "ffn_up_exps", f, hidden)?,
            down: split(w, "ffn_down_exps", hidden, f)?,
            n_used: moe.n_used,
            norm_topk: moe.norm_topk,
            ffn: f,
        })
    }

    /// `x` holds `n` rows of `hidden` values; `out` receives the MLP's `n` output rows. Each
    /// token's experts are summed in expert order, whatever its batch-mates, so a token's
    /// result does not depend on the batch.
    pub fn forward(
        &self,
        pool: &ThreadPool,
        x: &[f32],
        n: usize,
        act: fn(&mut [f32], &[f32]),
        s: &mut MoeScratch,
        out: &mut Vec<f32>,
    ) {
        let ne = self.gate.len();
        let d = x.len() / n.max(1);
        s.probs.resize(n * ne, 0.0);
        matmul(pool, &self.router, x, n, &mut s.probs);
        s.routes.resize_with(ne, Vec::new);
        s.routes.iter_mut().for_each(Vec::clear);
        let mut chosen: Vec<usize> = Vec::with_capacity(ne);
        for (t, p) in s.probs.chunks_exact_mut(ne).enumerate() {
            ops::softmax(p);
            // The n_used most probable experts; ties go to the lower index (as torch.topk).
            chosen.clear();
            chosen.extend(0..ne);
            chosen.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            chosen.truncate(self.n_used);
            let sum: f32 = chosen.iter().map(|&e| p[e]).sum();
            for &e in &chosen {
                let w = if self.norm_topk { p[e] / sum } else { p[e] };
                s.routes[e].push((t, w));
            }
        }
        out.clear();
        out.resize(n * d, 0.0);
        for e in 0..ne {
            let routes = &s.routes[e];
            if routes.is_empty() {
                continue;
            }
            let m = routes.len();
            s.xe.clear();
            for &(t, _) in routes {
                s.xe.extend_from_slice(&x[t * d..(t + 1) * d]);
            }
            s.gate.resize(m * self.ffn, 0.0);
            s.up.resize(m * self.ffn, 0.0);
            matmul(pool, &self.gate[e], &s.xe, m, &mut s.gate);
            matmul(pool, &self.up[e], &s.xe, m, &mut s.up);
            gated_rows(pool, &mut s.gate, &s.up, self.ffn, act);
            s.ye.resize(m * d, 0.0);
            matmul(pool, &self.down[e], &s.gate, m, &mut s.ye);
            for (&(t, w), y) in routes.iter().zip(s.ye.chunks_exact(d)) {
                for (o, v) in out[t * d..(t + 1) * d].iter_mut().zip(y) {
                    *o += w * v;
                }
            }
        }
    }
}

/// Rotary embedding frequencies for one rope base.
pub struct Rope {
    inv_freq: Vec<f32>,
    style: RopeStyle,
    /// cos and sin are multiplied by this (YaRN's and LongRoPE's attention factor).
    mscale: f32,
    /// LongRoPE: positions from `.0` on use these frequencies (the long factors).
    long: Option<(usize, Vec<f32>)>,
}

impl Rope {
    pub fn new(
        head_dim: usize,
        theta: f32,
        scaling: Option<&RopeScaling>,
        style: RopeStyle,
    ) -> Rope {
        let half = head_dim / 2;
        let base: Vec<f32> = (0..half)
            .map(|i| theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut inv_freq: Vec<f32> = base.iter().map(|b| 1.0 / b).collect();
        let mut mscale = 1.0;
        let mut long = None;
        match scaling {
            None => {}
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            }) => {
                // transformers' `_compute_yarn_parameters`: dimensions that turn fewer than
                // `beta_slow` times over the original context are interpolated (÷ factor), more
                // than `beta_fast` times extrapolated (kept), a linear ramp in between.
                let dim = head_dim as f64;
                let orig = *original_max_position_embeddings as f64;
                let correction = |rotations: f64| {
                    dim * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * (theta as f64).ln())
                };
                let (mut low, mut high) =
                    (correction(*beta_fast as f64), correction(*beta_slow as f64));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0) as f32;
                let mut high = high.min(dim - 1.0) as f32;
                if low == high {
                    high += 0.001;
                }
                for (i, (f, b)) in inv_freq.iter_mut().zip(&base).enumerate() {
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolate = 1.0 - ramp;
                    let interpolated = 1.0 / (factor * b);
                    *f = interpolated * (1.0 - extrapolate) + (1.0 / b) * extrapolate;
                }
                mscale = *attention_factor;
            }
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            }) => {
                // transformers' `_compute_longrope_parameters`: the short factors inside the
                // original context; kiln switches to the long factors per position past it
                // (transformers recomputes the whole sequence with them; the two agree on
                // every sequence that fits the original context).
                let scaled = |ext: &[f32]| -> Vec<f32> {
                    base.iter().zip(ext).map(|(b, e)| 1.0 / (e * b)).collect()
                };
                inv_freq = scaled(short_factor);
                long = Some((*original_max_position_embeddings, scaled(long_factor)));
                mscale = *attention_factor;
            }
            Some(RopeScaling::Linear { factor }) => inv_freq.iter_mut().for_each(|f| *f /= factor),
            Some(RopeScaling::FreqFactors(factors)) => {
                inv_freq.iter_mut().zip(factors).for_each(|(f, d)| *f /= d)
            }
            Some(&RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band
                // between them interpolated smoothly.
                let old = original_max_position_embeddings as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        Rope {
            inv_freq,
            style,
            mscale,
            long,
        }
    }

    /// Fills `table` with the angles of every token position of the batch, in row order:
    /// computed once per forward pass and shared by every head and layer that uses this rope.
    pub fn fill_table(&self, layout: &BatchLayout, table: &mut RopeTable) {
        let half = self.inv_freq.len();
        table.half = half;
        table.style = self.style;
        table.angles.resize(layout.total * half, [0.0; 2]);
        let mut rows = table.angles.chunks_exact_mut(half.max(1));
        for (seq, &n) in layout.n_tokens.iter().enumerate() {
            for pos in layout.start_pos[seq]..layout.start_pos[seq] + n {
                if let Some(row) = rows.next() {
                    let freqs = match &self.long {
                        Some((from, long)) if pos >= *from => long,
                        _ => &self.inv_freq,
                    };
                    ops::rope_angles(pos, freqs, row);
                    if self.mscale != 1.0 {
                        for a in row.iter_mut() {
                            a[0] *= self.mscale;
                            a[1] *= self.mscale;
                        }
                    }
                }
            }
        }
    }
}

/// A batch's rotary angles for one [`Rope`] (see [`Rope::fill_table`]).
pub struct RopeTable {
    half: usize,
    style: RopeStyle,
    angles: Vec<[f32; 2]>,
}

impl Default for RopeTable {
    fn default() -> RopeTable {
        RopeTable {
            half: 0,
            style: RopeStyle::Half,
            angles: Vec::new(),
        }
    }
}

impl RopeTable {
    /// `(cos, sin)` per (row, frequency), rows in batch order (what a device backend uploads).
    pub fn angles(&self) -> &[[f32; 2]] {
        &self.angles
    }

    pub fn style(&self) -> RopeStyle {
        self.style
    }
    /// Rotates every head of row `row`'s `x` (`n_heads × head_dim` values).
    pub fn apply(&self, x: &mut [f32], head_dim: usize, row: usize) {
        let angles = &self.angles[row * self.half..(row + 1) * self.half];
        for head in x.chunks_exact_mut(head_dim) {
            ops::rope_rotate(head, angles, self.style);
        }
    }
}

/// Which logits a sequence wants back from a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

/// What a forward pass returns for the rows asked for: logits (`vocab_size` per row), or the
/// final hidden states (`hidden_size` per row: after the final norm, before the output matrix;
/// what embeddings are made of), or the residual stream after the last block for every row of
/// the batch (`hidden_size` per row, before the final norm: what the front of a split model
/// hands to the device that runs the rest, see [`crate::build_front`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    Logits,
    Hidden,
    Residual,
}

/// One sequence's part of a batched forward pass: its new tokens (placed at positions
/// `cache.len()..`) and its cache.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    pub logits: Logits,
}

/// Where each sequence's tokens sit in the flattened batch.
pub struct BatchLayout {
    /// Row of the first token of each sequence in the flattened batch.
    pub first_row: Vec<usize>,
    /// Position of the first new token of each sequence (the cache length before the pass).
    pub start_pos: Vec<usize>,
    pub n_tokens: Vec<usize>,
    /// The sequence each row of the flattened batch belongs to.
    pub row_seq: Vec<usize>,
    /// Rows whose logits are wanted, in output order.
    pub logit_rows: Vec<usize>,
    pub total: usize,
}

impl BatchLayout {
    pub fn new(batch: &[SeqInput<'_>]) -> BatchLayout {
        let mut l = BatchLayout {
            first_row: Vec::with_capacity(batch.len()),
            start_pos: Vec::with_capacity(batch.len()),
            n_tokens: Vec::with_capacity(batch.len()),
            row_seq: Vec::new(),
            logit_rows: Vec::new(),
            total: 0,
        };
        for s in batch {
            let n = s.tokens.len();
            l.first_row.push(l.total);
            l.start_pos.push(s.cache.len());
            l.n_tokens.push(n);
            l.row_seq
                .extend(std::iter::repeat_n(l.first_row.len() - 1, n));
            match s.logits {
                Logits::None => {}
                Logits::Last if n > 0 => l.logit_rows.push(l.total + n - 1),
                Logits::Last => {}
                Logits::All => l.logit_rows.extend(l.total..l.total + n),
            }
            l.total += n;
        }
        l
    }
}

/// Checks token ids and grows caches so the pass fits.
pub fn prepare_batch(
    batch: &mut [SeqInput<'_>],
    vocab: usize,
    max_pos: usize,
) -> Result<(), ModelError> {
    for s in batch.iter_mut() {
        if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let end = s.cache.len() + s.tokens.len();
        if end > max_pos {
            return Err(ModelError::Input(format!(
                "sequence would reach {end} positions; the model's context is {max_pos}"
            )));
        }
        if end > s.cache.capacity() {
            s.cache
                .reserve(end.max(s.cache.capacity() * 2).min(max_pos));
        }
    }
    Ok(())
}

/// Hyper-parameters of one attention layer.
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// A query at position p sees keys at positions > p - window.
    pub window: Option<usize>,
    pub softcap: Option<f32>,
}

impl AttentionShape {
    pub fn from_config(cfg: &ModelConfig, layer: usize, scale: f32) -> AttentionShape {
        AttentionShape {
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            scale,
            window: if cfg.is_sliding(layer) {
                cfg.sliding_window
            } else {
                None
            },
            softcap: cfg.attn_logit_softcapping,
        }
    }
}

/// Writes this layer's new keys/values (`k`, `v`: one row per batch token) into each
/// sequence's cache.
pub fn store_kv(
    batch: &mut [SeqInput<'_>],
    layout: &BatchLayout,
    layer: usize,
    shape: &AttentionShape,
    k: &[f32],
    v: &[f32],
) {
    let (hd, kvd) = (shape.head_dim, shape.n_kv_heads * shape.head_dim);
    for (s, seq) in batch.iter_mut().enumerate() {
        for i in 0..layout.n_tokens[s] {
            let row = layout.first_row[s] + i;
            let pos = layout.start_pos[s] + i;
            for h in 0..shape.n_kv_heads {
                let o = row * kvd + h * hd;
                seq.cache.store(layer, h, pos, &k[o..o + hd], &v[o..o + hd]);
            }
        }
    }
}

/// Per-thread buffers of [`attention`].
#[derive(Default)]
struct AttnScratch {
    scores: Vec<f32>,
    /// f16-rounded queries (widened), one per head of a work unit.
    q16: [Vec<f32>; 2],
    tmp16: Vec<u16>,
    /// Per key, the accumulator's rescale factor and the value's weight, per head.
    ms: [Vec<f32>; 2],
    vs: [Vec<f32>; 2],
    /// Per key, whether it moved the running maximum, per head.
    moved: [Vec<bool>; 2],
}

thread_local! {
    static ATTN: RefCell<AttnScratch> = RefCell::new(AttnScratch::default());
}

/// Causal (optionally sliding-window) attention of every batch token over its own
/// sequence's cache. `q` has one row of `n_heads × head_dim` per token; so has `out`.
///
/// An f32 cache is attended in f32 (scores, softmax, weighted sum), as transformers does. An
/// f16 cache under [`Numerics::Ggml`] is attended as llama.cpp's CPU flash attention attends
/// one query row: the query rounded to f16, scores as f16·f16 dot products accumulated in f32,
/// and an online softmax whose weighted sum of values is accumulated in f16 (rescaled on every
/// new maximum). ggml switches to an f32 tiled kernel for batches of 64 or more query rows;
/// kiln keeps the one-row arithmetic for every row, so that a token's result never depends on
/// how its prompt was split into passes or on its batch-mates. An f16 cache under
/// [`Numerics::Exact`] is widened to f32 as it is read and attended in f32.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    batch: &[SeqInput<'_>],
    layout: &BatchLayout,
    layer: usize,
    shape: &AttentionShape,
    numerics: Numerics,
    q: &[f32],
    out: &mut [f32],
) {
    let (nh, hd) = (shape.n_heads, shape.head_dim);
    let group = nh / shape.n_kv_heads;
    let qd = nh * hd;
    // Work items are (token row, head); the owning sequence is found from the layout.
    let out_ptr = SyncPtr(out.as_mut_ptr());
    // Work units: the query heads of each kv head, two at a time (they read the same keys, so
    // the ggml f16 path widens each key element once for both).
    let units_per_kv = group.div_ceil(2);
    let units = shape.n_kv_heads * units_per_kv;
    // Threads claim (row, unit) items one at a time, last row first: a causal row's cost grows
    // with its position, so handing each thread an equal share of the rows would leave one
    // with three times the work of the other at the end of a prompt.
    let items = layout.total * units;
    let next = AtomicUsize::new(0);
    pool.run(&|_, _| {
        ATTN.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            loop {
                let claimed = next.fetch_add(1, Ordering::Relaxed);
                if claimed >= items {
                    break;
                }
                let item = items - 1 - claimed;
                let (row, unit) = (item / units, item % units);
                let kvh = unit / units_per_kv;
                let h0 = kvh * group + 2 * (unit % units_per_kv);
                let heads = h0..(h0 + 2).min((kvh + 1) * group);
                let s = layout.row_seq[row];
                let pos = layout.start_pos[s] + (row - layout.first_row[s]);
                let lo = match shape.window {
                    Some(w) => (pos + 1).saturating_sub(w),
                    None => 0,
                };
                let qh = |h: usize| &q[row * qd + h * hd..row * qd + (h + 1) * hd];
                // SAFETY: each (row, head) slice of `out` is written by exactly one work item.
                let o = |h: usize| unsafe {
                    std::slice::from_raw_parts_mut(out_ptr.get().add(row * qd + h * hd), hd)
                };
                let view = batch[s].cache.view(layer, kvh, pos + 1);
                match view {
                    HeadView::F16 { k, v } if numerics == Numerics::Ggml && heads.len() == 2 => {
                        let (q2, o2) = ([qh(h0), qh(h0 + 1)], [o(h0), o(h0 + 1)]);
                        attend_f16_ggml(q2, k, v, lo, shape, &mut scratch, o2)
                    }
                    _ => {
                        for h in heads {
                            match view {
                                HeadView::F32 { k, v } => {
                                    attend_f32(qh(h), k, v, lo, shape, &mut scratch, o(h))
                                }
                                HeadView::F16 { k, v } if numerics == Numerics::Ggml => {
                                    attend_f16_ggml([qh(h)], k, v, lo, shape, &mut scratch, [o(h)])
                                }
                                HeadView::F16 { k, v } => {
                                    attend_f16_widened(qh(h), k, v, lo, shape, &mut scratch, o(h))
                                }
                            }
                        }
                    }
                }
            }
        });
    });
}

/// One query head over f32 keys/values at positions `lo..keys.len() / hd`.
fn attend_f32(
    qh: &[f32],
    keys: &[f32],
    values: &[f32],
    lo: usize,
    shape: &AttentionShape,
    scratch: &mut AttnScratch,
    o: &mut [f32],
) {
    let axpy = |o: &mut [f32], w: f32, v: &[f32]| {
        for (acc, &vv) in o.iter_mut().zip(v) {
            *acc += w * vv;
        }
    };
    let dot = kiln_kernels::matmul::dot_f32;
    attend_in_f32(qh, keys, values, lo, shape, scratch, o, dot, axpy);
}

/// [`attend_f32`] over f16 keys/values widened to f32 as they are read.
fn attend_f16_widened(
    qh: &[f32],
    keys: &[u16],
    values: &[u16],
    lo: usize,
    shape: &AttentionShape,
    scratch: &mut AttnScratch,
    o: &mut [f32],
) {
    let (dot, axpy) = (ops::dot_f32_f16, ops::axpy_f16);
    attend_in_f32(qh, keys, values, lo, shape, scratch, o, dot, axpy);
}

/// Scores, softmax and weighted sum in f32, reading keys and values of element type `T`
/// through `dot` (query · key) and `axpy` (`o += w · value`).
#[allow(clippy::too_many_arguments)]
fn attend_in_f32<T>(
    qh: &[f32],
    keys: &[T],
    values: &[T],
    lo: usize,
    shape: &AttentionShape,
    scratch: &mut AttnScratch,
    o: &mut [f32],
    dot: impl Fn(&[f32], &[T]) -> f32,
    axpy: impl Fn(&mut [f32], f32, &[T]),
) {
    let hd = qh.len();
    let end = keys.len() / hd;
    let scores = &mut scratch.scores;
    scores.clear();
    for j in lo..end {
        let mut sc = dot(qh, &keys[j * hd..(j + 1) * hd]) * shape.scale;
        if let Some(cap) = shape.softcap {
            sc = (sc / cap).tanh() * cap;
        }
        scores.push(sc);
    }
    ops::softmax(scores);
    o.fill(0.0);
    for (&w, j) in scores.iter().zip(lo..end) {
        axpy(o, w, &values[j * hd..(j + 1) * hd]);
    }
}

/// ggml's one-row flash-attention kernel (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`
/// with f16 K/V): the query rounded to f16; per key, in position order, the f16 dot product,
/// scaled (and soft-capped as `cap·tanh(s·scale/cap)`); a new maximum rescales the f16
/// accumulator by `exp(old − new)`, otherwise the value's weight is `exp(s − max)`; the
/// accumulator takes `f16(acc + v·w)`; finally it is widened and divided by the weight sum.
///
/// `N` (1 or 2) query heads of one kv head go together: each key element is widened once for
/// all of them, and every head's result is bit-identical to attending it alone.
fn attend_f16_ggml<const N: usize>(
    qh: [&[f32]; N],
    keys: &[u16],
    values: &[u16],
    lo: usize,
    shape: &AttentionShape,
    scratch: &mut AttnScratch,
    mut o: [&mut [f32]; N],
) {
    assert!(N == 1 || N == 2, "attend_f16_ggml: 1 or 2 heads");
    let hd = qh[0].len();
    let end = keys.len() / hd;
    let AttnScratch {
        q16,
        tmp16,
        ms,
        vs,
        moved,
        ..
    } = scratch;
    // The queries rounded to f16 and widened back: f32 × f16 products of these are exactly the
    // f16 × f16 products, so the dot reads one f16 vector instead of two.
    for h in 0..N {
        round_to_f16(qh[h], tmp16, &mut q16[h]);
        ms[h].clear();
        vs[h].clear();
    }
    // Scores first (they set each key's rescale and weight), then the f16 accumulator over
    // all keys: the same operations per element in the same order as ggml's key-by-key loop.
    let keys = &keys[lo * hd..end * hd];
    for v in vs.iter_mut().take(N) {
        v.resize(end - lo, 0.0);
    }
    let [v0, v1] = vs;
    if N == 2 {
        ops::dot_f32_f16_keys([&q16[0], &q16[1]], keys, [v0, v1]);
    } else {
        ops::dot_f32_f16_keys([&q16[0]], keys, [v0]);
    }
    let mut state = [(); N].map(|_| OnlineSoftmax::new());
    for h in 0..N {
        // `vs` holds the raw scores, then each key's exponent (of its rescale if it moved the
        // maximum, else of its weight), then its weight: every e^x in one slice call, each
        // key's operations and the sum's order as in ggml's key-by-key loop.
        moved[h].clear();
        for s in vs[h].iter_mut() {
            let (e, m) = state[h].exponent(shape, *s);
            moved[h].push(m);
            *s = e;
        }
        ops::exp(&mut vs[h]);
        for (v, &m) in vs[h].iter_mut().zip(&moved[h]) {
            let (m, w) = state[h].add(*v, m);
            ms[h].push(m);
            *v = w;
        }
    }
    let values = &values[lo * hd..end * hd];
    match o.as_mut_slice() {
        [o] => ops::f16_weighted_sum(values, &ms[0], &vs[0], o),
        [o0, o1] => ops::f16_weighted_sum_x2(values, [&ms[0], &ms[1]], [&vs[0], &vs[1]], [o0, o1]),
        _ => unreachable!("checked above: 1 or 2 heads"),
    }
    for (h, o) in o.into_iter().enumerate() {
        state[h].finish(o);
    }
}

/// `out = widen(f16(x))`, through `tmp`.
fn round_to_f16(x: &[f32], tmp: &mut Vec<u16>, out: &mut Vec<f32>) {
    tmp.resize(x.len(), 0);
    ops::f32_to_f16(x, tmp);
    out.resize(x.len(), 0.0);
    ops::f16_to_f32(tmp, out);
}

/// ggml's one-row online softmax: the running maximum and weight sum of a query's scores.
struct OnlineSoftmax {
    max: f32,
    sum: f32,
}

impl OnlineSoftmax {
    fn new() -> OnlineSoftmax {
        OnlineSoftmax {
            max: f32::NEG_INFINITY,
            sum: 0.0,
        }
    }

    /// Takes raw score `s` (before scaling) and moves the maximum if `s` is above it; returns
    /// the exponent of this key's factor and whether the maximum moved: then the factor is the
    /// accumulator's rescale `e^(old − new)`, else the value's weight `e^(s − max)`.
    fn exponent(&mut self, shape: &AttentionShape, s: f32) -> (f32, bool) {
        let mut s = match shape.softcap {
            Some(cap) => s * (shape.scale / cap),
            None => s * shape.scale,
        };
        if let Some(cap) = shape.softcap {
            s = cap * s.tanh();
        }
        if s > self.max {
            let old = self.max;
            self.max = s;
            (old - self.max, true)
        } else {
            (s - self.max, false)
        }
    }

    /// Takes the factor `e` of [`OnlineSoftmax::exponent`]'s exponent into the weight sum;
    /// returns `(ms, vs)`: the accumulator's rescale (1 unless the maximum moved) and the
    /// weight of this key's value (1 if it moved the maximum).
    fn add(&mut self, e: f32, moved: bool) -> (f32, f32) {
        let (ms, vs) = if moved { (e, 1.0) } else { (1.0, e) };
        self.sum = self.sum * ms + vs;
        (ms, vs)
    }

    /// `o = o / sum` (`o` holds the widened accumulator).
    fn finish(&self, o: &mut [f32]) {
        let inv = if self.sum == 0.0 { 0.0 } else { 1.0 / self.sum };
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `f(i, row_i)` for every row of `data` (rows of `len` values), split over the pool's
/// threads when there are enough rows to pay for waking it (prefill), inline otherwise.
pub fn for_each_row(
    pool: &ThreadPool,
    data: &mut [f32],
    len: usize,
    f: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let rows = data.len() / len.max(1);
    if rows < 16 || pool.n_threads() == 1 {
        data.chunks_exact_mut(len)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
        return;
    }
    let ptr = SyncPtr(data.as_mut_ptr());
    pool.run(&|t, nt| {
        for i in split_range(rows, t, nt) {
            // SAFETY: the row ranges of the threads are disjoint.
            let row = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(i * len), len) };
            f(i, row);
        }
    });
}

/// Applies RMSNorm with weight `w` to every row of `x` (row length `w.len()`), into `out`.
pub fn rms_norm_rows(pool: &ThreadPool, x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    let d = w.len();
    for_each_row(pool, out, d, &|i, o| {
        ops::rms_norm(&x[i * d..(i + 1) * d], w, eps, o)
    });
}

/// `gate[i] = act(gate[i]) · up[i]` over the rows of the gated MLP, in parallel for prefill.
pub fn gated_rows(
    pool: &ThreadPool,
    gate: &mut [f32],
    up: &[f32],
    ffn: usize,
    act: fn(&mut [f32], &[f32]),
) {
    for_each_row(pool, gate, ffn, &|i, g| act(g, &up[i * ffn..(i + 1) * ffn]));
}

/// Copies the wanted rows of `x` (row length `d`) into `out`.
pub fn gather_rows(x: &[f32], d: usize, rows: &[usize], out: &mut Vec<f32>) {
    out.clear();
    for &r in rows {
        out.extend_from_slice(&x[r * d..(r + 1) * d]);
    }
}

/// Commits the new positions of every sequence after all layers have stored them.
pub fn advance_caches(batch: &mut [SeqInput<'_>]) {
    for s in batch.iter_mut() {
        let n = s.tokens.len();
        s.cache.advance(n);
    }
}

/// Applies rope to every token's query and key rows at its own position (`table`, filled
/// for this batch by [`Rope::fill_table`]).
pub fn rope_batch(pool: &ThreadPool, table: &RopeTable, hd: usize, q: &mut [f32], k: &mut [f32]) {
    let rows = table.angles.len() / table.half.max(1);
    let (qd, kvd) = (q.len() / rows.max(1), k.len() / rows.max(1));
    for_each_row(pool, q, qd, &|row, r| table.apply(r, hd, row));
    for_each_row(pool, k, kvd, &|row, r| table.apply(r, hd, row));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch's rope table rotates each row by its own sequence's position, exactly as
    /// rotating the row alone does.
    #[test]
    fn rope_table_rows_follow_each_sequence_position() {
        let (hd, heads) = (16, 3);
        let rope = Rope::new(hd, 10000.0, None, RopeStyle::Half);
        let layout = BatchLayout {
            first_row: vec![0, 2],
            start_pos: vec![5, 0],
            n_tokens: vec![2, 3],
            row_seq: vec![0, 0, 1, 1, 1],
            logit_rows: vec![],
            total: 5,
        };
        let mut table = RopeTable::default();
        rope.fill_table(&layout, &mut table);
        for (row, pos) in [5, 6, 0, 1, 2].into_iter().enumerate() {
            let x: Vec<f32> = (0..heads * hd).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut got = x.clone();
            table.apply(&mut got, hd, row);
            let mut want = x.clone();
            for h in want.chunks_exact_mut(hd) {
                ops::rope(h, pos, &rope.inv_freq, RopeStyle::Half);
            }
            assert_eq!(got, want, "row {row}");
            if pos > 0 {
                assert_ne!(got, x, "row {row} rotated");
            }
        }
    }

    /// ggml's one-row f16 attention is ordinary attention up to f16 rounding: checked against
    /// the f32 path on the same (f16-representable) keys and values, with and without a
    /// window start and a soft cap.
    #[test]
    fn ggml_f16_attention_matches_f32_attention_within_f16_rounding() {
        let hd = 64;
        let n = 40;
        let val = |i: usize, s: usize| (((i * 37 + s * 11) % 101) as f32 / 25.0 - 2.0) * 0.7;
        let to16 = |x: &[f32]| {
            let mut h = vec![0u16; x.len()];
            ops::f32_to_f16(x, &mut h);
            h
        };
        let keys: Vec<f32> = (0..n * hd).map(|i| val(i, 1)).collect();
        let values: Vec<f32> = (0..n * hd).map(|i| val(i, 2)).collect();
        let (k16, v16) = (to16(&keys), to16(&values));
        let mut kf = vec![0.0; n * hd];
        let mut vf = vec![0.0; n * hd];
        ops::f16_to_f32(&k16, &mut kf);
        ops::f16_to_f32(&v16, &mut vf);
        let q: Vec<f32> = (0..hd).map(|i| val(i, 3)).collect();
        for (lo, softcap) in [(0, None), (7, None), (0, Some(5.0))] {
            let shape = AttentionShape {
                n_heads: 1,
                n_kv_heads: 1,
                head_dim: hd,
                scale: 0.125,
                window: None,
                softcap,
            };
            let mut scratch = AttnScratch::default();
            let mut want = vec![0.0; hd];
            attend_f32(&q, &kf, &vf, lo, &shape, &mut scratch, &mut want);
            let mut got = vec![0.0; hd];
            attend_f16_ggml([&q], &k16, &v16, lo, &shape, &mut scratch, [&mut got]);
            // two heads at once: bit-identical to one at a time
            let q2: Vec<f32> = q.iter().map(|x| 0.5 - x).collect();
            let mut got2 = vec![0.0; hd];
            attend_f16_ggml([&q2], &k16, &v16, lo, &shape, &mut scratch, [&mut got2]);
            let (mut pa, mut pb) = (vec![0.0; hd], vec![0.0; hd]);
            attend_f16_ggml(
                [&q, &q2],
                &k16,
                &v16,
                lo,
                &shape,
                &mut scratch,
                [&mut pa, &mut pb],
            );
            assert_eq!((&pa, &pb), (&got, &got2), "lo {lo} cap {softcap:?}");
            let mut wide = vec![0.0; hd];
            attend_f16_widened(&q, &k16, &v16, lo, &shape, &mut scratch, &mut wide);
            for i in 0..hd {
                assert!(
                    (got[i] - want[i]).abs() <= 4e-3 * want[i].abs() + 2e-3,
                    "lo {lo} cap {softcap:?} [{i}]: {} vs {}",
                    got[i],
                    want[i]
                );
                assert!((wide[i] - want[i]).abs() <= 1e-5 * want[i].abs() + 1e-6);
            }
        }
    }
}
