//! Weight quantisers: the 32-element types bit for bit against gguf-py's quantisers (which
//! reproduce ggml's reference ones; vectors from tests/data/gen_quant_vectors.py), and every
//! type's round-trip error on weight-like data.

use kiln_kernels::quant::{can_quantize, dequantize, quantize};
use kiln_kernels::DType;

fn read(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/data/quant/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn quantized(dtype: DType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; dtype.bytes_for(x.len()).unwrap()];
    quantize(dtype, x, &mut out);
    out
}

#[test]
fn legacy_quantisers_match_gguf_py_bit_for_bit() {
    for dtype in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::BF16,
        DType::F16,
    ] {
        let input = f32s(&read(&format!("{}.input", dtype.name())));
        let want = read(&format!("{}.blocks", dtype.name()));
        assert_eq!(quantized(dtype, &input), want, "{dtype}");
    }
}

/// IQ4_NL and IQ4_XS against ggml's own quantisers (its `quantize_iq4_nl` / `quantize_iq4_xs`
/// without an importance matrix, as llama-quantize runs them; vectors from
/// tests/data/gen_iq4_quantize_vectors.sh). Every block was identical when the vectors were
/// made; ggml built elsewhere may fuse its least-squares sums into multiply-adds, which can tip
/// a near-tie between two candidate scales, so a block may differ: at most 1 in 32, and it
/// must dequantise as close to the input as ggml's (within 2% of its squared error).
#[test]
fn iq4_quantisers_match_ggml() {
    let input = f32s(&read("iq4_quantize.input"));
    for dtype in [DType::IQ4_NL, DType::IQ4_XS] {
        let want = read(&format!("{}.quantized", dtype.name()));
        let got = quantized(dtype, &input);
        assert_eq!(got.len(), want.len(), "{dtype}");
        let (bs, bb) = (dtype.block_size(), dtype.block_bytes());
        let mut differ = 0;
        for (i, (g, w)) in got.chunks_exact(bb).zip(want.chunks_exact(bb)).enumerate() {
            if g == w {
                continue;
            }
            differ += 1;
            let x = &input[i * bs..(i + 1) * bs];
            let err = |b: &[u8]| {
                let mut y = vec![0.0; bs];
                dequantize(dtype, b, &mut y);
                x.iter()
                    .zip(&y)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
            };
            assert!(
                err(g) <= err(w) * 1.02 + 1e-12,
                "{dtype} block {i}: error {} vs ggml's {}",
                err(g),
                err(w)
            );
        }
        let n = got.len() / bb;
        println!("{dtype}: {differ} of {n} blocks differ from ggml's");
        assert!(differ * 32 <= n, "{dtype}: {differ} of {n} blocks differ");
    }
}

/// Weight-like data: a smooth normal body with a few large outliers, and a row offset so that
/// the asymmetric types' minimum matters.
fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            // Box-Muller
            let (u, v) = (next().max(1e-12), next());
            let g = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            let outlier = if i % 97 == 13 { 8.0 } else { 1.0 };
            (g * 0.02 * outlier + if i % 512 < 256 { 0.003 } else { -0.002 }) as f32
        })
        .collect()
}

fn relative_rmse(dtype: DType, x: &[f32]) -> f32 {
    let q = quantized(dtype, x);
    let mut y = vec![0.0; x.len()];
    dequantize(dtype, &q, &mut y);
    let err: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let norm: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / norm).sqrt() as f32
}

/// Each type's error stays within its bits' budget (bounds about 10% above what the
/// reference algorithm gives on this data), and the k-quants' fitted scales beat the legacy
/// types of as many bits, which is what the scale search is for.
#[test]
fn round_trip_error_per_type() {
    let x = weights(256 * 64, 7);
    let e = |t| relative_rmse(t, &x);
    let bounds = [
        (DType::Q8_0, 0.0090),
        (DType::Q6_K, 0.0265),
        (DType::Q5_K, 0.0475),
        (DType::Q5_0, 0.0720),
        (DType::Q5_1, 0.0490),
        (DType::Q4_K, 0.0940),
        (DType::Q4_0, 0.1420),
        (DType::Q4_1, 0.1000),
        (DType::IQ4_NL, 0.1100),
        (DType::IQ4_XS, 0.1120),
        (DType::F16, 0.0003),
        (DType::BF16, 0.0020),
    ];
    for (t, bound) in bounds {
        let err = e(t);
        println!("{t}: relative rmse {err:.5}");
        assert!(err < bound, "{t}: relative rmse {err} above {bound}");
        assert!(err > 0.0 || t == DType::F32);
    }
    assert!(e(DType::Q4_K) < e(DType::Q4_0) && e(DType::Q4_K) < e(DType::Q4_1));
    assert!(e(DType::Q5_K) < e(DType::Q5_0) && e(DType::Q5_K) < e(DType::Q5_1));
    assert!(e(DType::Q6_K) < e(DType::Q5_K));
    assert_eq!(relative_rmse(DType::F32, &x), 0.0);
}

/// Blocks of zeros, constants and single spikes quantise without NaN and round-trip exactly
/// where the format can represent the values.
#[test]
fn degenerate_blocks() {
    for dtype in DType::ALL.into_iter().filter(|t| can_quantize(*t)) {
        let n = 256;
        let zeros = vec![0.0f32; n];
        let mut y = vec![1.0; n];
        dequantize(dtype, &quantized(dtype, &zeros), &mut y);
        assert!(y.iter().all(|v| *v == 0.0), "{dtype}: zeros");
        let mut spike = vec![0.0f32; n];
        spike[77] = -0.5;
        dequantize(dtype, &quantized(dtype, &spike), &mut y);
        assert!(y.iter().all(|v| v.is_finite()), "{dtype}: spike");
        assert!((y[77] + 0.5).abs() < 0.01, "{dtype}: spike -> {}", y[77]);
        assert!(y.iter().enumerate().all(|(i, v)| i == 77 || v.abs() < 0.01));
    }
}

/// Re-quantising what a quantiser wrote gives back the same values (the levels are exact
/// multiples of the stored scales), for the types whose scale comes from the absolute maximum.
#[test]
fn requantising_is_stable() {
    let x = weights(256 * 8, 11);
    for dtype in [DType::Q8_0, DType::Q4_0, DType::Q5_0] {
        let q = quantized(dtype, &x);
        let mut y = vec![0.0; x.len()];
        dequantize(dtype, &q, &mut y);
        let mut z = vec![0.0; x.len()];
        dequantize(dtype, &quantized(dtype, &y), &mut z);
        for (a, b) in y.iter().zip(&z) {
            assert!(
                (a - b).abs() <= 1e-3 * a.abs().max(1e-3),
                "{dtype}: {a} -> {b}"
            );
        }
    }
}
