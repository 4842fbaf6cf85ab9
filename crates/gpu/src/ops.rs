//! The kernels, recorded into one command buffer per forward pass.
//!
//! A [`Recorder`] collects dispatches (pipeline, buffers, parameters, workgroups); `submit`
//! writes every dispatch's parameters into one uniform buffer, makes the bind groups and
//! encodes one compute pass (wgpu orders the dispatches by their buffer uses).

use kiln_kernels::DType;

use crate::context::{Features, Pipeline};
use crate::upload::GpuMatrix;
use crate::{Gpu, GpuError};

/// The WGSL of a weight type's module: its readers (`dq4` for one quad, `mv_unit` for the
/// decode kernel's unit of a block) and the matrix and embedding kernels over them, in the
/// variant `features` select (f16 weight tiles, subgroup reductions; else the portable one).
pub fn weight_shader(t: DType, features: Features) -> String {
    let mut defines = vec![t.name().to_ascii_uppercase()];
    if matches!(t, DType::Q4_K | DType::Q5_K) {
        defines.push("KSCALES".into());
    }
    defines.push(if t.is_quantized() { "QUANT" } else { "FLOAT" }.into());
    // f16 holds every F16 weight and every dequantized block weight (an f16 scale times a
    // small integer, rounded once); F32 and BF16 values may lie outside its range.
    let half = features.f16 && !matches!(t, DType::F32 | DType::BF16);
    defines.push(if half { "HALF_TILES" } else { "FLOAT_TILES" }.into());
    defines.push(
        if features.subgroups {
            "SUBGROUPS"
        } else {
            "NO_SUBGROUPS"
        }
        .into(),
    );
    let mut out = String::new();
    if half {
        out.push_str("enable f16;\n");
    }
    out.push_str(&preprocess(include_str!("shaders/dequant.wgsl"), &defines));
    out.push_str(&preprocess(include_str!("shaders/matvec.wgsl"), &defines));
    out.push_str(&preprocess(include_str!("shaders/matmul.wgsl"), &defines));
    out
}

/// Keeps the `#ifdef NAME` … `#endif` sections whose name is defined (no nesting).
fn preprocess(src: &str, defines: &[String]) -> String {
    let mut out = String::with_capacity(src.len());
    let mut keep = true;
    for line in src.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("#ifdef ") {
            keep = defines.iter().any(|d| d == name.trim());
        } else if l == "#endif" {
            keep = true;
        } else if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// 16 words of kernel parameters (the WGSL `Params` structs; unused words are zero).
pub type Params = [u32; 16];

const UNIFORM_STRIDE: u64 = 256;

struct Dispatch {
    pipe: Pipeline,
    params: Params,
    bufs: Vec<(u32, wgpu::Buffer)>,
    groups: [u32; 3],
}

/// Dispatches waiting to be submitted together.
pub struct Recorder<'g> {
    gpu: &'g Gpu,
    items: Vec<Dispatch>,
}

/// Splits `groups` workgroups into an x × y grid within the 65535-per-dimension limit; the
/// shaders linearise it back as `x + y · num_workgroups.x`.
fn grid(groups: usize) -> [u32; 2] {
    let x = groups.clamp(1, 65535);
    [x as u32, groups.div_ceil(x).max(1) as u32]
}

impl<'g> Recorder<'g> {
    pub fn new(gpu: &'g Gpu) -> Recorder<'g> {
        Recorder {
            gpu,
            items: Vec::new(),
        }
    }

    fn push(
        &mut self,
        pipe: Pipeline,
        params: Params,
        bufs: Vec<(u32, &wgpu::Buffer)>,
        groups: [u32; 3],
    ) {
        if groups.contains(&0) {
            return;
        }
        self.items.push(Dispatch {
            pipe,
            params,
            bufs: bufs.into_iter().map(|(i, b)| (i, b.clone())).collect(),
            groups,
        });
    }

    /// Encodes and submits everything recorded (returns at once; a readback waits).
    pub fn submit(self) {
        if self.items.is_empty() {
            return;
        }
        let gpu = self.gpu;
        let uniforms = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: self.items.len() as u64 * UNIFORM_STRIDE,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut bytes = vec![0u8; self.items.len() * UNIFORM_STRIDE as usize];
        for (i, d) in self.items.iter().enumerate() {
            let o = i * UNIFORM_STRIDE as usize;
            for (j, w) in d.params.iter().enumerate() {
                bytes[o + 4 * j..o + 4 * j + 4].copy_from_slice(&w.to_le_bytes());
            }
        }
        gpu.queue.write_buffer(&uniforms, 0, &bytes);
        let groups: Vec<wgpu::BindGroup> = self
            .items
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &uniforms,
                        offset: i as u64 * UNIFORM_STRIDE,
                        size: wgpu::BufferSize::new(64),
                    }),
                }];
                for (b, buf) in &d.bufs {
                    entries.push(wgpu::BindGroupEntry {
                        binding: *b,
                        resource: buf.as_entire_binding(),
                    });
                }
                gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &d.pipe.layout,
                    entries: &entries,
                })
            })
            .collect();
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            for (d, bg) in self.items.iter().zip(&groups) {
                pass.set_pipeline(&d.pipe.pipeline);
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        gpu.queue.submit([enc.finish()]);
    }

    /// `out[t][r] = Σ_k w[r][k] · x[t][k] (+ bias[r])` for `n` rows of `x` starting at row
    /// `x_row` (row length `w.cols`), into `out` from row `out_row` (row length `w.rows`).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &mut self,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        x_row: usize,
        n: usize,
        bias: Option<&wgpu::Buffer>,
        out: &wgpu::Buffer,
        out_row: usize,
    ) {
        self.matmul_with(MatKind::for_rows(n), w, x, x_row, n, bias, out, out_row)
    }

    /// [`Recorder::matmul`] with the kernel chosen by the caller (tests run both on every
    /// shape).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_with(
        &mut self,
        kind: MatKind,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        x_row: usize,
        n: usize,
        bias: Option<&wgpu::Buffer>,
        out: &wgpu::Buffer,
        out_row: usize,
    ) {
        let entry = match kind {
            MatKind::Vector => "matvec",
            MatKind::Tiled => "matmul",
        };
        let pipe = self.gpu.pipeline(entry, Some(w.dtype));
        for part in &w.parts {
            let params = [
                n as u32,
                part.rows as u32,
                w.cols as u32,
                w.row_stride as u32,
                bias.is_some() as u32,
                (x_row * w.cols) as u32,
                (out_row * w.rows + part.row0) as u32,
                w.rows as u32,
                part.row0 as u32,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ];
            let groups = match kind {
                MatKind::Vector => {
                    let [gx, gy] = grid(part.rows.div_ceil(8));
                    [gx, gy, n.div_ceil(8) as u32]
                }
                MatKind::Tiled => [part.rows.div_ceil(32) as u32, n.div_ceil(32) as u32, 1],
            };
            let b = bias.unwrap_or(x);
            self.push(
                pipe.clone(),
                params,
                vec![(1, &part.buf), (2, x), (3, out), (4, b)],
                groups,
            );
        }
    }

    /// `out[t] = row tokens[t] of table`, expanded to f32 (`n` tokens).
    pub fn embed(
        &mut self,
        table: &GpuMatrix,
        tokens: &wgpu::Buffer,
        n: usize,
        out: &wgpu::Buffer,
    ) {
        let pipe = self.gpu.pipeline("embed", Some(table.dtype));
        let nq = table.cols.div_ceil(4);
        for part in &table.parts {
            let params = [
                n as u32,
                part.rows as u32,
                table.cols as u32,
                table.row_stride as u32,
                0,
                0,
                0,
                0,
                part.row0 as u32,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ];
            let [gx, gy] = grid((n * nq).div_ceil(64));
            self.push(
                pipe.clone(),
                params,
                vec![(1, &part.buf), (3, out), (5, tokens)],
                [gx, gy, 1],
            );
        }
    }

    fn op(
        &mut self,
        entry: &'static str,
        params: Params,
        bufs: Vec<(u32, &wgpu::Buffer)>,
        groups: usize,
        per_row: bool,
    ) {
        let pipe = self.gpu.pipeline(entry, None);
        let groups = if per_row { groups } else { groups.div_ceil(64) };
        let [gx, gy] = grid(groups);
        self.push(pipe, params, bufs, [gx, gy, 1]);
    }

    /// `out = rmsnorm(x) · w` over `n` rows of `d`.
    pub fn rms_norm(
        &mut self,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        eps: f32,
        n: usize,
        d: usize,
        out: &wgpu::Buffer,
    ) {
        let mut p = params(n, d);
        p[8] = eps.to_bits();
        self.op("rms_norm", p, vec![(1, x), (2, w), (3, out)], n, true);
    }

    /// `x = rmsnorm(x) · w` in place over `n` rows of `d` (q/k norms: per head, or over a
    /// whole projection).
    pub fn rms_norm_inplace(
        &mut self,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        eps: f32,
        n: usize,
        d: usize,
    ) {
        let mut p = params(n, d);
        p[8] = eps.to_bits();
        self.op("rms_norm_inplace", p, vec![(1, x), (2, w)], n, true);
    }

    /// `x *= factor` over `len` values.
    pub fn scale(&mut self, x: &wgpu::Buffer, factor: f32, len: usize) {
        let mut p = params(1, len);
        p[8] = factor.to_bits();
        self.op("scale", p, vec![(1, x)], len, false);
    }

    /// `x = gelu(x) ⊙ y` over `len` values as ggml's CPU backend computes it: through `table`,
    /// [`gelu_table`] on the device.
    pub fn gelu_ggml(
        &mut self,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        table: &wgpu::Buffer,
        len: usize,
    ) {
        self.op(
            "gelu_ggml",
            params(1, len),
            vec![(1, x), (2, y), (6, table)],
            len,
            false,
        );
    }

    /// Routing weights of a mixture of experts: `logits` holds `n` rows of `n_experts` router
    /// outputs; `weights` receives, per token and expert, the softmax probability of its
    /// `n_used` most probable experts (renormalised over them when `norm_topk`), 0 elsewhere.
    pub fn moe_route(
        &mut self,
        logits: &wgpu::Buffer,
        n: usize,
        n_experts: usize,
        n_used: usize,
        norm_topk: bool,
        weights: &wgpu::Buffer,
    ) {
        let mut p = params(n, n_experts);
        p[2] = n_used as u32;
        p[3] = norm_topk as u32;
        self.op("moe_route", p, vec![(2, logits), (3, weights)], n, false);
    }

    /// `out[t] += weights[t][expert] · y[t]` over `n` rows of `d` where that weight is not 0
    /// (`first`: set instead, zero for tokens the expert does not serve).
    #[allow(clippy::too_many_arguments)]
    pub fn moe_acc(
        &mut self,
        out: &wgpu::Buffer,
        y: &wgpu::Buffer,
        weights: &wgpu::Buffer,
        n: usize,
        d: usize,
        n_experts: usize,
        expert: usize,
        first: bool,
    ) {
        let mut p = params(n, d);
        p[2] = n_experts as u32;
        p[3] = expert as u32;
        p[4] = first as u32;
        self.op(
            "moe_acc",
            p,
            vec![(1, out), (2, y), (6, weights)],
            n * d,
            false,
        );
    }

    /// Rotates `n` rows of `heads` heads of `head_dim` in place by `table` (per row,
    /// `head_dim / 2` (cos, sin) pairs); `halves`: NeoX/Hugging Face pairing.
    pub fn rope(
        &mut self,
        x: &wgpu::Buffer,
        table: &wgpu::Buffer,
        n: usize,
        heads: usize,
        head_dim: usize,
        halves: bool,
    ) {
        let mut p = params(n, head_dim);
        p[2] = heads as u32;
        p[3] = halves as u32;
        self.op(
            "rope",
            p,
            vec![(1, x), (2, table)],
            n * heads * head_dim / 2,
            false,
        );
    }

    /// `x = act(x) ⊙ y` over `len` values (`gelu`: tanh-approximated GELU, else SiLU).
    pub fn gated(&mut self, x: &wgpu::Buffer, y: &wgpu::Buffer, len: usize, gelu: bool) {
        let mut p = params(1, len);
        p[2] = gelu as u32;
        self.op("gated", p, vec![(1, x), (2, y)], len, false);
    }

    /// `x += y` over `len` values.
    pub fn add(&mut self, x: &wgpu::Buffer, y: &wgpu::Buffer, len: usize) {
        self.op("add", params(1, len), vec![(1, x), (2, y)], len, false);
    }

    /// `out[j] = src[rows[j]]` for `n` rows of `d`.
    pub fn gather(
        &mut self,
        src: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        n: usize,
        d: usize,
        out: &wgpu::Buffer,
    ) {
        self.op(
            "gather",
            params(n, d),
            vec![(2, src), (3, out), (6, rows)],
            n * d,
            false,
        );
    }

    /// Stores the keys `k` and values `v` of one sequence's `n` new rows (batch rows
    /// `first_row..`, positions `start..`) into its cache buffers for one layer.
    #[allow(clippy::too_many_arguments)]
    pub fn store_kv(
        &mut self,
        kv: &KvSlot<'_>,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        first_row: usize,
        start: usize,
        n: usize,
    ) {
        let p = kv.params(first_row, start, n);
        let len = n * kv.n_kv_heads * kv.head_dim;
        let threads = if kv.f16 { len / 2 } else { len };
        self.op(
            "store_kv",
            p,
            vec![(1, k), (2, v), (4, kv.k), (5, kv.v)],
            threads,
            false,
        );
    }

    /// Causal attention of one sequence's `n` new rows over its cache (after `store_kv`):
    /// `q` and `out` hold rows of `heads · head_dim`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        kv: &KvSlot<'_>,
        q: &wgpu::Buffer,
        heads: usize,
        first_row: usize,
        start: usize,
        n: usize,
        scale: f32,
        softcap: Option<f32>,
        window: Option<usize>,
        out: &wgpu::Buffer,
    ) {
        let mut p = kv.params(first_row, start, n);
        p[8] = scale.to_bits();
        p[9] = softcap.unwrap_or(0.0).to_bits();
        p[10] = heads as u32;
        p[11] = window.unwrap_or(0) as u32;
        self.op(
            "attention",
            p,
            vec![(1, q), (3, out), (4, kv.k), (5, kv.v)],
            n * heads,
            true,
        );
    }
}

/// One layer of one sequence's device cache, as the kernels see it.
pub struct KvSlot<'a> {
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
    pub f16: bool,
}

impl KvSlot<'_> {
    fn params(&self, first_row: usize, start: usize, n: usize) -> Params {
        let mut p = params(n, self.head_dim);
        p[2] = self.n_kv_heads as u32;
        p[3] = self.capacity as u32;
        p[4] = 0; // layer: each layer has its own buffers
        p[5] = first_row as u32;
        p[6] = start as u32;
        p[7] = self.f16 as u32;
        p
    }
}

fn params(n: usize, d: usize) -> Params {
    let mut p = [0u32; 16];
    p[0] = n as u32;
    p[1] = d as u32;
    p
}

/// Which matrix kernel: 8 rows per workgroup, 8 threads per row (decode), or 32 × 32 tiles
/// (prefill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatKind {
    Vector,
    Tiled,
}

impl MatKind {
    /// The kernel for `rows` activation rows: matrix-vector below 16, tiled from 16. The two
    /// sum in different orders, so a row's result depends on the kernel: the forward pass
    /// picks it per sequence (by the sequence's own rows), never by the pass's total.
    pub fn for_rows(rows: usize) -> MatKind {
        if rows >= 16 {
            MatKind::Tiled
        } else {
            MatKind::Vector
        }
    }
}

/// ggml's GELU table (`kiln_kernels::ops::gelu_f16_table`) packed two entries per word, for
/// [`Recorder::gelu_ggml`].
pub fn gelu_table(gpu: &Gpu) -> wgpu::Buffer {
    let bytes: Vec<u8> = kiln_kernels::ops::gelu_f16_table()
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    gpu.buffer_with(&bytes, "gelu_table")
}

/// Checks that the device finished without a validation error (used after submits in
/// tests and at load).
pub fn check(gpu: &Gpu) -> Result<(), GpuError> {
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| GpuError::Device(format!("GPU: {e}")))
}
