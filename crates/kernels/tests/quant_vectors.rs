//! Dequantisation checked against vectors made by gguf-py (tests/data/gen_quant_vectors.py).

use kiln_kernels::quant::{dequantize, quantize_q8_32, BlockQ8_32};
use kiln_kernels::DType;

fn read(name: &str) -> Option<Vec<u8>> {
    std::fs::read(format!(
        "{}/tests/data/quant/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .ok()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Distance in units in the last place (same-sign values; 0 for equal values).
fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    if a.signum() != b.signum() {
        return u32::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn dequantize_matches_gguf_py_for_every_type() {
    for dtype in DType::ALL {
        if dtype == DType::F32 {
            continue;
        }
        let blocks = read(&format!("{}.blocks", dtype.name()))
            .unwrap_or_else(|| panic!("no vectors for {dtype}"));
        let want = f32s(&read(&format!("{}.f32", dtype.name())).unwrap());
        let mut got = vec![f32::NAN; want.len()];
        dequantize(dtype, &blocks, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // gguf-py computes in the same order (scale products first), so this is exact;
            // one ulp is allowed for a differently associated product.
            assert!(
                ulps(*g, *w) <= 1,
                "{dtype} element {i}: got {g}, gguf-py {w}"
            );
        }
        assert!(!want.is_empty());
    }
}

#[test]
fn activation_q8_matches_gguf_py_q8_0() {
    let input = f32s(&read("Q8_0.input").unwrap());
    let blocks = read("Q8_0.blocks").unwrap();
    let mut q = vec![BlockQ8_32::default(); input.len() / 32];
    quantize_q8_32(&input, &mut q);
    for (i, (qb, gb)) in q.iter().zip(blocks.chunks_exact(34)).enumerate() {
        let d16 = half::f16::from_f32(qb.d).to_le_bytes();
        assert_eq!(d16, [gb[0], gb[1]], "block {i}: scale");
        let qs: Vec<u8> = qb.qs.iter().map(|&v| v as u8).collect();
        assert_eq!(&qs[..], &gb[2..34], "block {i}: quants");
        let sum: i32 = qb.qs.iter().map(|&v| v as i32).sum();
        assert_eq!(qb.s, qb.d * sum as f32);
    }
}

#[test]
fn dequantize_rejects_mismatched_lengths() {
    let r = std::panic::catch_unwind(|| {
        let mut out = vec![0.0; 32];
        dequantize(DType::Q4_0, &[0u8; 17], &mut out);
    });
    assert!(r.is_err());
}

mod common;

#[test]
fn simd_activation_quantisation_is_bit_identical_to_scalar() {
    use kiln_kernels::quant::act::{quantize_q8_32_scalar, quantize_q8_k_scalar};
    use kiln_kernels::quant::{quantize_q8_k, BlockQ8K};
    let mut rng = common::Rng::new(77);
    for n in [256usize, 4864, 8192] {
        let mut x = rng.vec(n);
        // ties, zeros, a zero block, equal magnitudes of opposite sign
        x[0] = 0.5;
        x[1] = -0.5;
        x[3] = 2.5;
        for v in &mut x[256 - 32..256] {
            *v = 0.0;
        }
        if n > 512 {
            x[300] = -7.0;
            x[301] = 7.0;
            for v in &mut x[512..768] {
                *v = 0.0;
            }
        }
        let mut a = vec![BlockQ8_32::default(); n / 32];
        let mut b = vec![BlockQ8_32::default(); n / 32];
        quantize_q8_32(&x, &mut a);
        quantize_q8_32_scalar(&x, &mut b);
        for (p, q) in a.iter().zip(&b) {
            assert_eq!(
                (p.d.to_bits(), p.s.to_bits(), p.qs, p.sum),
                (q.d.to_bits(), q.s.to_bits(), q.qs, q.sum)
            );
            assert_eq!(q.sum, q.qs.iter().map(|&v| v as i32).sum::<i32>());
        }
        let mut a = vec![BlockQ8K::default(); n / 256];
        let mut b = vec![BlockQ8K::default(); n / 256];
        quantize_q8_k(&x, &mut a);
        quantize_q8_k_scalar(&x, &mut b);
        for (p, q) in a.iter().zip(&b) {
            assert_eq!(
                (p.d.to_bits(), p.qs, p.bsums),
                (q.d.to_bits(), q.qs, q.bsums)
            );
        }
    }
    let zeros = vec![0.0f32; 256];
    let mut a = vec![BlockQ8K::default(); 1];
    quantize_q8_k(&zeros, &mut a);
    assert_eq!(a[0].d, 0.0);
}

/// The activation blocks are ggml's: the 32-element scale is stored as f16 and values are
/// scaled by `127 / max` and rounded half to even (ggml's x86 `quantize_row_q8_0`); Q8_K rounds
/// `-127 / max · x` half to even (`nearest_int`).
#[test]
fn activation_blocks_follow_ggml() {
    use kiln_kernels::quant::act::{quantize_q8_32_scalar, quantize_q8_k_scalar};
    use kiln_kernels::quant::{quantize_q8_k, BlockQ8K};
    // max 127: the multiplier is exactly 1, so these are ties
    let mut x = vec![0.0f32; 64];
    x[..6].copy_from_slice(&[127.0, 0.5, 1.5, 2.5, -2.5, -3.5]);
    // second block: max 1, scale 1/127 is not an f16
    x[32] = 1.0;
    x[33] = -0.25;
    for quantize in [quantize_q8_32, quantize_q8_32_scalar] {
        let mut b = vec![BlockQ8_32::default(); 2];
        quantize(&x, &mut b);
        assert_eq!(&b[0].qs[..6], &[127, 0, 2, 2, -2, -4]);
        assert_eq!(b[0].d, 1.0);
        assert_eq!(b[1].d, half::f16::from_f32(1.0 / 127.0).to_f32());
        assert_eq!(&b[1].qs[..2], &[127, -32]); // -31.75 -> -32
    }
    let mut x = vec![0.0f32; 256];
    x[..4].copy_from_slice(&[-127.0, 0.5, 2.5, -3.5]);
    for quantize in [quantize_q8_k, quantize_q8_k_scalar] {
        let mut b = vec![BlockQ8K::default(); 1];
        quantize(&x, &mut b);
        // the largest magnitude is negative, so -127 / max is +1 and signs are kept
        assert_eq!(&b[0].qs[..4], &[-127, 0, 2, -4]);
        assert_eq!(b[0].d, 1.0);
    }
}

/// Rows of real Qwen2.5 weights (Q4_K, Q6_K, Q5_0, Q8_0), dequantised by gguf-py: our
/// dequantisation must match exactly, and matmul (every SIMD level, 1 and 9 tokens) must match
/// the f64 product of gguf-py's values within the activation-quantisation bound.
#[test]
fn real_model_rows_match_gguf_py() {
    use kiln_kernels::dot::Isa;
    use kiln_kernels::matmul::matmul_with;
    use kiln_kernels::{Storage, Tensor, ThreadPool};
    for name in ["Q4_K", "Q6_K", "Q5_0", "Q8_0"] {
        let dtype = DType::ALL.into_iter().find(|d| d.name() == name).unwrap();
        let shape = String::from_utf8(read(&format!("real_{name}.shape")).unwrap()).unwrap();
        let dims: Vec<usize> = shape
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        let (rows, cols) = (dims[0], dims[1]);
        let blocks = read(&format!("real_{name}.blocks")).unwrap();
        let want = f32s(&read(&format!("real_{name}.f32")).unwrap());
        let w = Tensor::new(dtype, vec![rows, cols], Storage::from_vec(blocks)).unwrap();
        let got = w.to_f32_vec();
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!(ulps(*g, *e) <= 1, "{name} element {i}: {g} vs gguf-py {e}");
        }
        let mut rng = common::Rng::new(5);
        for n in [1usize, 9] {
            let x = rng.vec(n * cols);
            let bs = dtype.block_size().max(32);
            for isa in Isa::available() {
                let mut out = vec![0.0; n * rows];
                matmul_with(isa, &ThreadPool::new(2), &w, &x, n, &mut out);
                for t in 0..n {
                    for r in 0..rows {
                        let wr = &want[r * cols..(r + 1) * cols];
                        let xr = &x[t * cols..(t + 1) * cols];
                        let exact: f64 =
                            wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        // half a quantisation step of x per element, times |w|
                        let mut bound = 0.0f64;
                        for (wb, xb) in wr.chunks(bs).zip(xr.chunks(bs)) {
                            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
                            bound += wb.iter().map(|v| v.abs() as f64).sum::<f64>() * amax / 254.0;
                        }
                        let mag: f64 = wr
                            .iter()
                            .zip(xr)
                            .map(|(a, b)| (*a as f64 * *b as f64).abs())
                            .sum();
                        bound = bound * 1.0001 + 1e-5 * mag;
                        let g = out[t * rows + r] as f64;
                        assert!(
                            (g - exact).abs() <= bound,
                            "{name} {} n={n} [{t}][{r}]: {g} vs {exact} (bound {bound})",
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}
