//! Every GPU kernel against the CPU reference (the kernels crate's scalar dequantisation and row
//! operations, the models crate's attention), for every weight type the device reads and odd
//! shapes. Runs on any Vulkan/Metal/DX12 adapter, Mesa's lavapipe (software Vulkan) included; a
//! machine without one prints a line and skips.

use std::sync::Arc;

use kiln_gpu::cache::GpuKv;
use kiln_gpu::ops::{MatKind, Recorder};
use kiln_gpu::upload::{upload_f32, GpuMatrix};
use kiln_gpu::{DeviceChoice, Features, Gpu};
use kiln_kernels::ops::{self, RopeStyle};
use kiln_kernels::{DType, Storage, Tensor, ThreadPool};
use kiln_models::layers::{attention, AttentionShape, BatchLayout, Logits, SeqInput};
use kiln_models::{KvCache, KvType, Numerics};

/// The adapter the tests use: any (`--device gpu`), lavapipe on CI.
fn gpu(test: &str) -> Option<Arc<Gpu>> {
    let placement = Gpu::open(DeviceChoice::Gpu(None)).expect("opening the GPU");
    if placement.gpu.is_none() {
        eprintln!("{test}: skipped, no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
    }
    placement.gpu
}

/// The adapter opened twice: with every optional feature it offers (f16 weight tiles, subgroup
/// reductions) and with the portable kernels only, so that both variants of every matrix
/// kernel run against the reference on one adapter. A feature the adapter lacks is one line.
fn gpu_variants(test: &str) -> Vec<Arc<Gpu>> {
    let open = |f| Gpu::open_with(DeviceChoice::Gpu(None), f).expect("opening the GPU");
    let Some(full) = open(Features::ALL).gpu else {
        eprintln!("{test}: skipped, no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return Vec::new();
    };
    if !full.features.f16 {
        eprintln!(
            "{test}: the f16 path is not tested, {} has no shader-f16",
            full.adapter
        );
    }
    if !full.features.subgroups {
        eprintln!(
            "{test}: the subgroup path is not tested, {} has no subgroups of 8 or more",
            full.adapter
        );
    }
    let portable = open(Features::PORTABLE)
        .gpu
        .expect("the same adapter again");
    assert_eq!(portable.features, Features::PORTABLE);
    if full.features == Features::PORTABLE {
        vec![portable]
    } else {
        vec![full, portable]
    }
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// A `[rows, cols]` tensor of type `t`: random quants with scales set to sane values.
fn random_tensor(t: DType, rows: usize, cols: usize, rng: &mut Rng) -> Tensor {
    let n = rows * cols;
    let bytes = match t {
        DType::F32 => rng.vec(n).iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => rng.vec(n).iter().flat_map(|&v| f16_bytes(v)).collect(),
        DType::BF16 => rng
            .vec(n)
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        _ => {
            let bb = t.block_bytes();
            let blocks = n / t.block_size();
            let mut b: Vec<u8> = (0..blocks * bb).map(|_| rng.next() as u8).collect();
            for blk in b.chunks_exact_mut(bb) {
                // (offset of an f16 scale, its magnitude)
                let scales: &[(usize, f32)] = match t {
                    DType::Q8_0 => &[(0, 0.01)],
                    DType::Q4_0 | DType::Q5_0 => &[(0, 0.05)],
                    DType::Q4_1 | DType::Q5_1 => &[(0, 0.05), (2, 0.3)],
                    DType::Q4_K | DType::Q5_K => &[(0, 0.004), (2, 0.002)],
                    DType::Q6_K => &[(208, 0.001)],
                    _ => unreachable!("{t}"),
                };
                for &(o, mag) in scales {
                    let v = mag * (0.5 + 0.5 * rng.f32().abs());
                    blk[o..o + 2].copy_from_slice(&f16_bytes(v));
                }
            }
            b
        }
    };
    Tensor::new(t, vec![rows, cols], Storage::from_vec(bytes)).unwrap()
}

fn reference_matmul(w: &Tensor, x: &[f32], n: usize, bias: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let (rows, cols) = (w.rows(), w.cols());
    let mut out = vec![0.0; n * rows];
    let mut mag = vec![0.0; n * rows];
    let mut row = vec![0.0; cols];
    for r in 0..rows {
        w.dequantize_row(r, &mut row);
        for t in 0..n {
            let xs = &x[t * cols..(t + 1) * cols];
            let s: f64 = row.iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum();
            let m: f64 = row
                .iter()
                .zip(xs)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            out[t * rows + r] = s as f32 + bias.map_or(0.0, |b| b[r]);
            mag[t * rows + r] = m as f32;
        }
    }
    (out, mag)
}

const TYPES: [DType; 11] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// Both matrix kernels, in both variants (the adapter's optional features, the portable
/// kernels), every type, odd row and token counts, odd column counts for the float types, one
/// and several blocks per decode thread for the block types; with and without a bias; written
/// at a row offset of the output.
#[test]
fn matrix_kernels_match_the_scalar_reference_for_every_type() {
    let variants = gpu_variants("matrix_kernels");
    for gpu in &variants {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for t in TYPES {
            let bs = t.block_size();
            let col_choices: Vec<usize> = if !t.is_quantized() {
                vec![5, 37, 70]
            } else if bs == 32 {
                vec![bs, 3 * bs, 9 * bs]
            } else {
                vec![bs, 3 * bs]
            };
            // f16 weight tiles round each dequantized weight once (2^-11 relative)
            let half_tiles = gpu.features.f16 && !matches!(t, DType::F32 | DType::BF16);
            for &cols in &col_choices {
                for rows in [1, 7, 45] {
                    let w = random_tensor(t, rows, cols, &mut rng);
                    let gw = GpuMatrix::upload(gpu, &w, "w").unwrap();
                    for n in [1, 3, 9, 33] {
                        let x = rng.vec(n * cols);
                        let bias = (n % 2 == 1).then(|| rng.vec(rows));
                        let (want, mag) = reference_matmul(&w, &x, n, bias.as_deref());
                        for kind in [MatKind::Vector, MatKind::Tiled] {
                            let rel = if half_tiles && kind == MatKind::Tiled && t != DType::F16 {
                                6e-4
                            } else {
                                1e-5
                            };
                            // output at row 2 of a larger buffer: rows 0-1 must stay untouched
                            let xb = upload_f32(gpu, &x, "x");
                            let ob = upload_f32(gpu, &vec![7.0; (n + 2) * rows], "out");
                            let bb = bias.as_ref().map(|b| upload_f32(gpu, b, "bias"));
                            let mut rec = Recorder::new(gpu);
                            rec.matmul_with(kind, &gw, &xb, 0, n, bb.as_ref(), &ob, 2);
                            rec.submit();
                            let got = gpu.read_f32(&ob, (n + 2) * rows).unwrap();
                            let f = gpu.features;
                            assert!(
                                got[..2 * rows].iter().all(|&v| v == 7.0),
                                "{t} {kind:?} ({f}): wrote outside its rows"
                            );
                            for i in 0..n * rows {
                                let err = (got[2 * rows + i] - want[i]).abs();
                                assert!(
                                    err <= rel * mag[i] + 1e-5,
                                    "{t} {kind:?} ({f}) rows {rows} cols {cols} n {n} [{i}]: {} vs {}",
                                    got[2 * rows + i],
                                    want[i]
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A matrix larger than one binding may cover is split by rows; the products and the
/// embedding lookups over the parts equal the unsplit ones.
#[test]
fn matrices_split_across_buffers_give_the_same_results() {
    let Some(gpu) = gpu("split_matrices") else {
        return;
    };
    let mut rng = Rng(77);
    let (rows, cols) = (50, 64);
    let w = random_tensor(DType::Q8_0, rows, cols, &mut rng);
    let whole = GpuMatrix::upload(&gpu, &w, "w").unwrap();
    // 36-byte blocks, 2 per row: 72 bytes a row; 16 spare bytes: 7 rows per buffer
    let split = GpuMatrix::upload_with_limit(&gpu, &w, "w", 7 * 72 + 16).unwrap();
    assert_eq!(split.parts.len(), 8);
    let n = 5;
    let x = upload_f32(&gpu, &rng.vec(n * cols), "x");
    let tokens: Vec<u32> = vec![0, 49, 7, 6, 13];
    let tb = gpu.buffer_with(
        &tokens
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect::<Vec<_>>(),
        "t",
    );
    let mut outs = Vec::new();
    for m in [&whole, &split] {
        let o = gpu.buffer((n * rows * 4) as u64, "o");
        let e = gpu.buffer((n * cols * 4) as u64, "e");
        let mut rec = Recorder::new(&gpu);
        rec.matmul(m, &x, 0, n, None, &o, 0);
        rec.embed(m, &tb, n, &e);
        rec.submit();
        outs.push((
            gpu.read_f32(&o, n * rows).unwrap(),
            gpu.read_f32(&e, n * cols).unwrap(),
        ));
    }
    assert_eq!(outs[0], outs[1]);
    let mut row = vec![0.0; cols];
    for (i, &t) in tokens.iter().enumerate() {
        w.dequantize_row(t as usize, &mut row);
        assert_eq!(&outs[1].1[i * cols..(i + 1) * cols], &row[..], "token {t}");
    }
}

/// Embedding lookup expands rows as the scalar dequantisation does, for every type.
#[test]
fn embedding_lookup_matches_the_scalar_dequantisation() {
    let Some(gpu) = gpu("embedding") else {
        return;
    };
    let mut rng = Rng(5);
    for t in TYPES {
        let cols = if t.is_quantized() {
            2 * t.block_size()
        } else {
            37
        };
        let w = random_tensor(t, 11, cols, &mut rng);
        let gw = GpuMatrix::upload(&gpu, &w, "w").unwrap();
        let tokens: Vec<u32> = vec![3, 10, 0, 3, 7];
        let tb = gpu.buffer_with(
            &tokens
                .iter()
                .flat_map(|t| t.to_le_bytes())
                .collect::<Vec<_>>(),
            "t",
        );
        let out = gpu.buffer((tokens.len() * cols * 4) as u64, "o");
        let mut rec = Recorder::new(&gpu);
        rec.embed(&gw, &tb, tokens.len(), &out);
        rec.submit();
        let got = gpu.read_f32(&out, tokens.len() * cols).unwrap();
        let mut row = vec![0.0; cols];
        for (i, &tok) in tokens.iter().enumerate() {
            w.dequantize_row(tok as usize, &mut row);
            for (j, (&a, &b)) in got[i * cols..(i + 1) * cols].iter().zip(&row).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs() + 1e-7,
                    "{t} token {tok} [{j}]: {a} vs {b}"
                );
            }
        }
    }
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what} [{i}]: {a} vs {b}"
        );
    }
}

/// RMSNorm, both rope styles, SiLU and GELU gating, residual add and row gathering against
/// the kernels crate's scalar row operations.
#[test]
fn row_operations_match_the_scalar_reference() {
    let Some(gpu) = gpu("row_operations") else {
        return;
    };
    let mut rng = Rng(11);
    let (n, d) = (5, 70);
    let x = rng.vec(n * d);
    let w = rng.vec(d);
    let xb = upload_f32(&gpu, &x, "x");
    let wb = upload_f32(&gpu, &w, "w");
    let ob = gpu.buffer((n * d * 4) as u64, "o");
    let mut rec = Recorder::new(&gpu);
    rec.rms_norm(&xb, &wb, 1e-6, n, d, &ob);
    rec.submit();
    let mut want = vec![0.0; n * d];
    for r in 0..n {
        ops::reference::rms_norm(
            &x[r * d..(r + 1) * d],
            &w,
            1e-6,
            &mut want[r * d..(r + 1) * d],
        );
    }
    close("rms_norm", &gpu.read_f32(&ob, n * d).unwrap(), &want, 1e-6);

    // rope: 3 heads of 10 per row, each row at its own position
    let (heads, hd) = (3, 10);
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
        .collect();
    let positions = [0usize, 1, 17, 300, 4095];
    let mut angles = vec![[0.0f32; 2]; n * hd / 2];
    for (r, &pos) in positions.iter().enumerate() {
        ops::rope_angles(pos, &inv_freq, &mut angles[r * hd / 2..(r + 1) * hd / 2]);
    }
    let table = upload_f32(&gpu, &angles.concat(), "angles");
    for style in [RopeStyle::Interleaved, RopeStyle::Half] {
        let q = rng.vec(n * heads * hd);
        let qb = upload_f32(&gpu, &q, "q");
        let mut rec = Recorder::new(&gpu);
        rec.rope(&qb, &table, n, heads, hd, style == RopeStyle::Half);
        rec.submit();
        let mut want = q.clone();
        for (r, row) in want.chunks_exact_mut(heads * hd).enumerate() {
            for head in row.chunks_exact_mut(hd) {
                ops::rope_rotate(head, &angles[r * hd / 2..(r + 1) * hd / 2], style);
            }
        }
        close(
            &format!("rope {style:?}"),
            &gpu.read_f32(&qb, q.len()).unwrap(),
            &want,
            1e-6,
        );
    }

    // gated activations and the residual add
    let len = 301;
    let (g, u) = (
        rng.vec(len).iter().map(|v| v * 6.0).collect::<Vec<_>>(),
        rng.vec(len),
    );
    for gelu in [false, true] {
        let gb = upload_f32(&gpu, &g, "g");
        let ub = upload_f32(&gpu, &u, "u");
        let mut rec = Recorder::new(&gpu);
        rec.gated(&gb, &ub, len, gelu);
        rec.submit();
        let mut want = g.clone();
        if gelu {
            ops::reference::gelu_tanh_mul(&mut want, &u);
        } else {
            ops::reference::silu_mul(&mut want, &u);
        }
        close(
            &format!("gated gelu={gelu}"),
            &gpu.read_f32(&gb, len).unwrap(),
            &want,
            2e-6,
        );
    }
    let (a, b) = (rng.vec(len), rng.vec(len));
    let (ab, bb) = (upload_f32(&gpu, &a, "a"), upload_f32(&gpu, &b, "b"));
    let mut rec = Recorder::new(&gpu);
    rec.add(&ab, &bb, len);
    let rows: Vec<u32> = vec![4, 0, 2];
    let rb = gpu.buffer_with(
        &rows
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect::<Vec<_>>(),
        "rows",
    );
    let gathered = gpu.buffer((3 * d * 4) as u64, "gathered");
    rec.gather(&xb, &rb, 3, d, &gathered);
    rec.submit();
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(gpu.read_f32(&ab, len).unwrap(), want);
    let want: Vec<f32> = rows
        .iter()
        .flat_map(|&r| x[r as usize * d..(r as usize + 1) * d].to_vec())
        .collect();
    assert_eq!(gpu.read_f32(&gathered, 3 * d).unwrap(), want);
}

/// The operations Gemma, Qwen3, OLMo 2 and the mixtures of experts add: in-place RMSNorm of
/// each head (and of whole rows), the embedding scale, GELU through ggml's f16 table (bit for
/// bit as the CPU's), and expert routing and accumulation against a CPU computation of
/// `kiln_models::layers::Moe`'s rules (softmax, the top-k with ties to the lower index, weights
/// renormalised or not, experts summed in order).
#[test]
fn gemma_and_expert_operations_match_the_cpu_reference() {
    let Some(gpu) = gpu("gemma_and_expert_operations") else {
        return;
    };
    let mut rng = Rng(23);
    // q/k norms: per head (rows of head_dim), and over whole rows (OLMo 2)
    for (rows, d) in [(5 * 3, 10), (4, 96)] {
        let x = rng.vec(rows * d);
        let w = rng.vec(d);
        let (xb, wb) = (upload_f32(&gpu, &x, "x"), upload_f32(&gpu, &w, "w"));
        let mut rec = Recorder::new(&gpu);
        rec.rms_norm_inplace(&xb, &wb, 1e-6, rows, d);
        rec.submit();
        let mut want = vec![0.0; rows * d];
        for r in 0..rows {
            let span = r * d..(r + 1) * d;
            ops::reference::rms_norm(&x[span.clone()], &w, 1e-6, &mut want[span]);
        }
        close(
            &format!("rms_norm_inplace d={d}"),
            &gpu.read_f32(&xb, rows * d).unwrap(),
            &want,
            1e-6,
        );
    }

    let len = 333;
    let x = rng.vec(len);
    let xb = upload_f32(&gpu, &x, "x");
    let mut rec = Recorder::new(&gpu);
    rec.scale(&xb, 25.298_222, len);
    rec.submit();
    let want: Vec<f32> = x.iter().map(|v| v * 25.298_222).collect();
    assert_eq!(gpu.read_f32(&xb, len).unwrap(), want, "scale");

    // GELU through the table: inputs across ±12 (both limits), f16 halfway points, zeros
    let mut g: Vec<f32> = rng.vec(4000).iter().map(|v| v * 12.0).collect();
    g.extend([
        10.0,
        -10.0,
        9.999,
        -9.999,
        0.0,
        -0.0,
        1.0 + 1.0 / 2048.0,
        3.0e-8,
    ]);
    let u = rng.vec(g.len());
    let (gb, ub) = (upload_f32(&gpu, &g, "g"), upload_f32(&gpu, &u, "u"));
    let table = kiln_gpu::ops::gelu_table(&gpu);
    let mut rec = Recorder::new(&gpu);
    rec.gelu_ggml(&gb, &ub, &table, g.len());
    rec.submit();
    let mut want = g.clone();
    ops::reference::gelu_tanh_mul_ggml(&mut want, &u);
    let got = gpu.read_f32(&gb, g.len()).unwrap();
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "gelu_ggml [{i}] of {}: {a} vs {b}",
            g[i]
        );
    }

    // experts: 7 tokens, 6 experts, 2 or 3 used; token 0's two best logits tie
    let (n, ne, d) = (7, 6, 20);
    let mut logits: Vec<f32> = rng.vec(n * ne).iter().map(|v| v * 3.0).collect();
    logits[..ne].copy_from_slice(&[0.5, 2.0, -1.0, 2.0, 0.1, 1.9]);
    let outs: Vec<Vec<f32>> = (0..ne).map(|_| rng.vec(n * d)).collect();
    for (n_used, norm_topk) in [(2, true), (3, false)] {
        // the CPU's rules
        let mut weights = vec![0.0f32; n * ne];
        for t in 0..n {
            let mut p = logits[t * ne..(t + 1) * ne].to_vec();
            ops::reference::softmax(&mut p);
            let mut order: Vec<usize> = (0..ne).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            order.truncate(n_used);
            if t == 0 {
                assert_eq!(&order[..2], &[1, 3], "the tie goes to the lower index");
            }
            let sum: f32 = order.iter().map(|&e| p[e]).sum();
            for &e in &order {
                weights[t * ne + e] = if norm_topk { p[e] / sum } else { p[e] };
            }
        }
        let mut want = vec![0.0f32; n * d];
        for (e, y) in outs.iter().enumerate() {
            for t in 0..n {
                let w = weights[t * ne + e];
                if w != 0.0 {
                    for i in 0..d {
                        want[t * d + i] += w * y[t * d + i];
                    }
                }
            }
        }
        let lb = upload_f32(&gpu, &logits, "router");
        let routes = gpu.buffer((n * ne * 4) as u64, "routes");
        let out = upload_f32(&gpu, &vec![f32::NAN; n * d], "out");
        let ybs: Vec<_> = outs.iter().map(|y| upload_f32(&gpu, y, "y")).collect();
        let mut rec = Recorder::new(&gpu);
        rec.moe_route(&lb, n, ne, n_used, norm_topk, &routes);
        for (e, yb) in ybs.iter().enumerate() {
            rec.moe_acc(&out, yb, &routes, n, d, ne, e, e == 0);
        }
        rec.submit();
        let what = format!("experts: {n_used} used, norm_topk {norm_topk}");
        close(
            &format!("{what}: routes"),
            &gpu.read_f32(&routes, n * ne).unwrap(),
            &weights,
            1e-6,
        );
        close(&what, &gpu.read_f32(&out, n * d).unwrap(), &want, 1e-6);
    }
}

/// Attention over a device cache against the models crate's CPU attention: two sequences in one
/// batch (one continuing from a cached prefix), grouped-query heads, with and without a sliding
/// window and a soft cap, over f32 and f16 caches (the f16 store rounds as the CPU cache does).
#[test]
fn attention_matches_the_cpu_reference() {
    let Some(gpu) = gpu("attention") else {
        return;
    };
    let mut rng = Rng(23);
    let (nh, nkv, hd, layers) = (6, 2, 40, 2);
    let pool = ThreadPool::new(1);
    for kv_type in [KvType::F32, KvType::F16] {
        for (window, softcap) in [(None, None), (Some(5), None), (None, Some(20.0))] {
            let shape = AttentionShape {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                scale: 0.3,
                window,
                softcap,
            };
            // sequence 0: 4 cached positions, 3 new; sequence 1: 9 new
            let (pre, new) = ([4usize, 0], [3usize, 9]);
            let mut cpu: Vec<KvCache> = (0..2)
                .map(|_| KvCache::with_type(layers, nkv, hd, 16, kv_type))
                .collect();
            let mut dev: Vec<GpuKv> = (0..2)
                .map(|_| GpuKv::new(gpu.clone(), layers, nkv, hd, 16, kv_type))
                .collect();
            let layer = 1;
            // the cached prefix: stored on both through each side's own store
            for s in 0..2 {
                if pre[s] == 0 {
                    continue;
                }
                let k = rng.vec(pre[s] * nkv * hd);
                let v = rng.vec(pre[s] * nkv * hd);
                for p in 0..pre[s] {
                    for h in 0..nkv {
                        let o = (p * nkv + h) * hd;
                        cpu[s].store(layer, h, p, &k[o..o + hd], &v[o..o + hd]);
                    }
                }
                cpu[s].advance(pre[s]);
                let (kb, vb) = (upload_f32(&gpu, &k, "k"), upload_f32(&gpu, &v, "v"));
                let mut rec = Recorder::new(&gpu);
                rec.store_kv(&dev[s].slot(layer), &kb, &vb, 0, 0, pre[s]);
                rec.submit();
            }
            let total = new[0] + new[1];
            let q = rng.vec(total * nh * hd);
            let k = rng.vec(total * nkv * hd);
            let v = rng.vec(total * nkv * hd);
            let tokens = [vec![0u32; new[0]], vec![0u32; new[1]]];
            let mut want = vec![0.0; total * nh * hd];
            {
                let (c0, c1) = cpu.split_at_mut(1);
                let mut batch = [
                    SeqInput {
                        tokens: &tokens[0],
                        cache: &mut c0[0],
                        logits: Logits::None,
                    },
                    SeqInput {
                        tokens: &tokens[1],
                        cache: &mut c1[0],
                        logits: Logits::None,
                    },
                ];
                let layout = BatchLayout::new(&batch);
                kiln_models::layers::store_kv(&mut batch, &layout, layer, &shape, &k, &v);
                attention(
                    &pool,
                    &batch,
                    &layout,
                    layer,
                    &shape,
                    Numerics::Exact,
                    &q,
                    &mut want,
                );
            }
            let (qb, kb, vb) = (
                upload_f32(&gpu, &q, "q"),
                upload_f32(&gpu, &k, "k"),
                upload_f32(&gpu, &v, "v"),
            );
            let ob = gpu.buffer((total * nh * hd * 4) as u64, "o");
            let mut rec = Recorder::new(&gpu);
            let mut first = 0;
            for s in 0..2 {
                let slot = dev[s].slot(layer);
                rec.store_kv(&slot, &kb, &vb, first, pre[s], new[s]);
                rec.attention(
                    &slot, &qb, nh, first, pre[s], new[s], 0.3, softcap, window, &ob,
                );
                first += new[s];
            }
            rec.submit();
            let got = gpu.read_f32(&ob, total * nh * hd).unwrap();
            close(
                &format!("attention {kv_type:?} window {window:?} cap {softcap:?}"),
                &got,
                &want,
                1e-5,
            );
            dev.clear();
        }
    }
}

/// A device cache keeps its contents when it grows (the engine reserves as sequences lengthen).
#[test]
fn device_cache_keeps_its_contents_when_growing() {
    let Some(gpu) = gpu("cache_growth") else {
        return;
    };
    use kiln_models::DeviceCache;
    let mut rng = Rng(3);
    let (nkv, hd) = (2, 8);
    for kv_type in [KvType::F32, KvType::F16] {
        let mut kv = GpuKv::new(gpu.clone(), 1, nkv, hd, 3, kv_type);
        let k = rng.vec(3 * nkv * hd);
        let v = rng.vec(3 * nkv * hd);
        let (kb, vb) = (upload_f32(&gpu, &k, "k"), upload_f32(&gpu, &v, "v"));
        // one query head per kv head, attending over 3 positions: the output is a weighted sum
        // of values, which must be the same before and after growing
        let q = rng.vec(nkv * hd);
        let qb = upload_f32(&gpu, &q, "q");
        let run = |kv: &GpuKv| {
            let ob = gpu.buffer((nkv * hd * 4) as u64, "o");
            let mut rec = Recorder::new(&gpu);
            rec.attention(&kv.slot(0), &qb, nkv, 0, 2, 1, 0.5, None, None, &ob);
            rec.submit();
            gpu.read_f32(&ob, nkv * hd).unwrap()
        };
        let mut rec = Recorder::new(&gpu);
        rec.store_kv(&kv.slot(0), &kb, &vb, 0, 0, 3);
        rec.submit();
        let before = run(&kv);
        kv.reserve(11, 3);
        assert_eq!(before, run(&kv), "{kv_type:?}");
        assert_eq!(kv.memory_bytes(), 2 * nkv * 11 * hd * kv_type.size());
    }
}
