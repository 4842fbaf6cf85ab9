//! Integer dot products: the scalar reference against dequantise-then-f32 (exact maths, so a
//! tight tolerance), and every SIMD level this CPU has against the scalar reference.

mod common;

use common::{random_weights, Rng, QUANT_TYPES};
use kiln_kernels::dot::{
    act_kind, dot_f32, dot_float_n, dot_q8_32_g8_rows, dot_q8_32_n, dot_q8_32_rows, dot_q8_32_x8,
    dot_q8k_n, dot_q8k_rows, dot_q8k_x8, ActKind, Isa,
};
use kiln_kernels::quant::{
    dequantize, interleave8, quantize_q8_32, quantize_q8_k, BlockQ8K, BlockQ8_32, BlockQ8x8,
};
use kiln_kernels::DType;

/// Relative tolerance (to Σ|w·x|) for two computations of the same integer dot product that
/// only differ in float summation order.
const REL_ORDER: f64 = 1e-5;

enum Acts {
    F(Vec<Vec<f32>>),
    Q32(Vec<Vec<BlockQ8_32>>),
    QK(Vec<Vec<BlockQ8K>>),
}

/// Σ |a·b| in f64: the scale that a rounding-order tolerance is relative to.
fn abs_dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 * *y as f64).abs())
        .sum()
}

fn make_acts(dtype: DType, xs: &[Vec<f32>]) -> Acts {
    match act_kind(dtype) {
        ActKind::F32 => Acts::F(xs.to_vec()),
        ActKind::Q8_32 => Acts::Q32(
            xs.iter()
                .map(|x| {
                    let mut q = vec![BlockQ8_32::default(); x.len() / 32];
                    quantize_q8_32(x, &mut q);
                    q
                })
                .collect(),
        ),
        ActKind::Q8K => Acts::QK(
            xs.iter()
                .map(|x| {
                    let mut q = vec![BlockQ8K::default(); x.len() / 256];
                    quantize_q8_k(x, &mut q);
                    q
                })
                .collect(),
        ),
    }
}

/// The activations as the kernels see them (after their own quantisation), in f32.
fn dequant_acts(acts: &Acts, t: usize) -> Vec<f32> {
    match acts {
        Acts::F(x) => x[t].clone(),
        Acts::Q32(q) => q[t]
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&v| b.d * v as f32))
            .collect(),
        Acts::QK(q) => q[t]
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&v| b.d * v as f32))
            .collect(),
    }
}

fn dot4(isa: Isa, dtype: DType, w: &[u8], acts: &Acts) -> [f32; 4] {
    match acts {
        Acts::F(x) => dot_float_n(isa, dtype, w, [&x[0], &x[1], &x[2], &x[3]]),
        Acts::Q32(q) => dot_q8_32_n(isa, dtype, w, [&q[0], &q[1], &q[2], &q[3]]),
        Acts::QK(q) => dot_q8k_n(isa, dtype, w, [&q[0], &q[1], &q[2], &q[3]]),
    }
}

fn dot1(isa: Isa, dtype: DType, w: &[u8], acts: &Acts, t: usize) -> f32 {
    match acts {
        Acts::F(x) => dot_float_n(isa, dtype, w, [&x[t]])[0],
        Acts::Q32(q) => dot_q8_32_n(isa, dtype, w, [&q[t]])[0],
        Acts::QK(q) => dot_q8k_n(isa, dtype, w, [&q[t]])[0],
    }
}

fn all_types() -> Vec<DType> {
    let mut v = vec![DType::F32, DType::F16, DType::BF16];
    v.extend(QUANT_TYPES);
    v
}

#[test]
fn every_isa_matches_exact_dequantised_dot() {
    let mut rng = Rng::new(7);
    println!("{}", kiln_kernels::cpu_features());
    for dtype in all_types() {
        for &cols in &[256usize, 768, 4864] {
            let w = random_weights(&mut rng, dtype, cols);
            let xs: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(cols)).collect();
            let acts = make_acts(dtype, &xs);
            let mut wf = vec![0.0; cols];
            dequantize(dtype, &w, &mut wf);
            for t in 0..4 {
                let xf = dequant_acts(&acts, t);
                let exact: f64 = wf.iter().zip(&xf).map(|(a, b)| *a as f64 * *b as f64).sum();
                let mag = abs_dot(&wf, &xf);
                let tol = REL_ORDER * mag + 1e-30;
                for isa in Isa::available() {
                    let got1 = dot1(isa, dtype, &w, &acts, t) as f64;
                    let got4 = dot4(isa, dtype, &w, &acts)[t] as f64;
                    assert!(
                        (got1 - exact).abs() <= tol,
                        "{dtype} {} cols {cols}: N=1 gives {got1}, exact {exact} (tol {tol})",
                        isa.name()
                    );
                    assert!(
                        (got4 - exact).abs() <= tol,
                        "{dtype} {} cols {cols}: N=4 gives {got4}, exact {exact} (tol {tol})",
                        isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn simd_levels_agree_with_scalar_reference() {
    let mut rng = Rng::new(11);
    for dtype in all_types() {
        let cols = 2048;
        let w = random_weights(&mut rng, dtype, cols);
        let xs: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(cols)).collect();
        let acts = make_acts(dtype, &xs);
        let reference = dot4(Isa::Scalar, dtype, &w, &acts);
        let mut wf = vec![0.0; cols];
        dequantize(dtype, &w, &mut wf);
        for isa in Isa::available() {
            let got = dot4(isa, dtype, &w, &acts);
            for t in 0..4 {
                let xf = dequant_acts(&acts, t);
                let mag = abs_dot(&wf, &xf);
                let diff = (got[t] as f64 - reference[t] as f64).abs();
                assert!(
                    diff <= REL_ORDER * mag,
                    "{dtype} {}: {} vs scalar {}",
                    isa.name(),
                    got[t],
                    reference[t]
                );
            }
        }
    }
}

/// The decode kernel (4 weight rows, one activation row) against the scalar one-row reference.
#[test]
fn four_row_decode_kernel_matches_scalar_rows() {
    let mut rng = Rng::new(17);
    for dtype in QUANT_TYPES {
        if act_kind(dtype) != ActKind::Q8_32 {
            continue;
        }
        let cols = 640;
        let w = random_weights(&mut rng, dtype, 4 * cols);
        let row_bytes = w.len() / 4;
        let Acts::Q32(q) = make_acts(dtype, &[rng.vec(cols)]) else {
            unreachable!()
        };
        for isa in Isa::available() {
            let got = dot_q8_32_rows::<4>(isa, dtype, &w, &q[0]);
            for (r, &g) in got.iter().enumerate() {
                let wr = &w[r * row_bytes..(r + 1) * row_bytes];
                let want = dot_q8_32_n(Isa::Scalar, dtype, wr, [&q[0]])[0];
                let mut wf = vec![0.0; cols];
                dequantize(dtype, wr, &mut wf);
                let xf = dequant_acts(&Acts::Q32(q.clone()), 0);
                let mag = abs_dot(&wf, &xf);
                assert!(
                    (g as f64 - want as f64).abs() <= REL_ORDER * mag,
                    "{dtype} {} row {r}: {g} vs scalar {want}",
                    isa.name()
                );
            }
        }
    }
}

/// The k-quant decode kernel (4 weight rows, one activation row): bit-identical to the
/// one-row kernel of the same level (the canonical float steps), and close to the scalar
/// reference.
#[test]
fn four_row_kquant_decode_kernel_matches_one_row() {
    let mut rng = Rng::new(19);
    for dtype in QUANT_TYPES {
        if act_kind(dtype) != ActKind::Q8K {
            continue;
        }
        let cols = 768;
        let w = random_weights(&mut rng, dtype, 4 * cols);
        let row_bytes = w.len() / 4;
        let Acts::QK(q) = make_acts(dtype, &[rng.vec(cols)]) else {
            unreachable!()
        };
        let xf = dequant_acts(&Acts::QK(q.clone()), 0);
        for isa in Isa::available() {
            let got = dot_q8k_rows::<4>(isa, dtype, &w, &q[0]);
            for (r, &g) in got.iter().enumerate() {
                let wr = &w[r * row_bytes..(r + 1) * row_bytes];
                let one = dot_q8k_n(isa, dtype, wr, [&q[0]])[0];
                assert_eq!(
                    g.to_bits(),
                    one.to_bits(),
                    "{dtype} {} row {r}: 4-row {g} vs one-row {one}",
                    isa.name()
                );
                let want = dot_q8k_n(Isa::Scalar, dtype, wr, [&q[0]])[0];
                let mut wf = vec![0.0; cols];
                dequantize(dtype, wr, &mut wf);
                let mag = abs_dot(&wf, &xf);
                assert!(
                    (g as f64 - want as f64).abs() <= REL_ORDER * mag,
                    "{dtype} {} row {r}: {g} vs scalar {want}",
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn eight_row_tile_matches_exact_dot() {
    let mut rng = Rng::new(13);
    for dtype in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q8_1,
        DType::IQ4_NL,
    ] {
        for cols in [32usize, 896, 4864] {
            let w = random_weights(&mut rng, dtype, cols);
            let xs: Vec<Vec<f32>> = (0..8).map(|_| rng.vec(cols)).collect();
            let Acts::Q32(q) = make_acts(dtype, &xs) else {
                unreachable!()
            };
            let a: [&[BlockQ8_32]; 8] = std::array::from_fn(|t| &q[t][..]);
            let g: Vec<_> = (0..cols / 32)
                .map(|i| interleave8(std::array::from_fn(|t| &q[t][i])))
                .collect();
            // a second row for the two-row tile
            let w2 = [w.clone(), random_weights(&mut rng, dtype, cols)].concat();
            for isa in Isa::available() {
                let one = dot_q8_32_x8(isa, dtype, &w, a);
                let two = dot_q8_32_g8_rows::<2>(isa, dtype, &w2, &g, a);
                for (got, wr) in [(one, &w[..]), (two[0], &w[..]), (two[1], &w2[w.len()..])] {
                    let mut wf = vec![0.0; cols];
                    dequantize(dtype, wr, &mut wf);
                    for t in 0..8 {
                        let xf: Vec<f32> = q[t]
                            .iter()
                            .flat_map(|b| b.qs.iter().map(move |&v| b.d * v as f32))
                            .collect();
                        let exact: f64 =
                            wf.iter().zip(&xf).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let mag = abs_dot(&wf, &xf);
                        assert!(
                            (got[t] as f64 - exact).abs() <= REL_ORDER * mag + 1e-30,
                            "{dtype} {} cols {cols} token {t}: {} vs exact {exact}",
                            isa.name(),
                            got[t]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn eight_row_kquant_tile_matches_exact_dot() {
    let mut rng = Rng::new(17);
    for dtype in [
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q8_K,
        DType::IQ4_XS,
    ] {
        for cols in [256usize, 4864] {
            let w = random_weights(&mut rng, dtype, cols);
            let xs: Vec<Vec<f32>> = (0..8).map(|_| rng.vec(cols)).collect();
            let Acts::QK(q) = make_acts(dtype, &xs) else {
                unreachable!()
            };
            let a: [&[BlockQ8K]; 8] = std::array::from_fn(|t| &q[t][..]);
            let mut wf = vec![0.0; cols];
            dequantize(dtype, &w, &mut wf);
            for isa in Isa::available() {
                let got = dot_q8k_x8(isa, dtype, &w, a);
                for t in 0..8 {
                    let xf: Vec<f32> = q[t]
                        .iter()
                        .flat_map(|b| b.qs.iter().map(move |&v| b.d * v as f32))
                        .collect();
                    let exact: f64 = wf.iter().zip(&xf).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let mag = abs_dot(&wf, &xf);
                    assert!(
                        (got[t] as f64 - exact).abs() <= REL_ORDER * mag + 1e-30,
                        "{dtype} {} cols {cols} token {t}: {} vs exact {exact}",
                        isa.name(),
                        got[t]
                    );
                }
            }
        }
    }
}

#[test]
fn dot_f32_matches_f64_sum() {
    let mut rng = Rng::new(3);
    for n in [0usize, 1, 7, 8, 31, 32, 33, 100, 1000] {
        let a = rng.vec(n);
        let b = rng.vec(n);
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let mag = abs_dot(&a, &b);
        let got = dot_f32(&a, &b) as f64;
        assert!(
            (got - exact).abs() <= 1e-6 * mag + 1e-30,
            "n={n}: {got} vs {exact}"
        );
    }
}

#[test]
#[should_panic]
fn dot_rejects_short_activation_rows() {
    let mut rng = Rng::new(1);
    let w = random_weights(&mut rng, DType::Q4_K, 512);
    let q = vec![BlockQ8K::default(); 1];
    dot_q8k_n(Isa::Scalar, DType::Q4_K, &w, [&q]);
}

/// 8 token rows quantised to 32-element blocks and interleaved, block by block, as prefill
/// groups them.
fn interleaved_group(xs: [Vec<f32>; 8]) -> Vec<BlockQ8x8> {
    let nb = xs[0].len() / 32;
    let q = xs.map(|x| {
        let mut q = vec![BlockQ8_32::default(); nb];
        quantize_q8_32(&x, &mut q);
        q
    });
    (0..nb)
        .map(|i| interleave8(std::array::from_fn(|t| &q[t][i])))
        .collect()
}

/// The unpacked prefill form: every level unpacks to the same bytes and scales as the scalar
/// reference, and its 8-token tile matches the exact dot product.
#[test]
fn unpacked_prefill_rows_match_exact_dot() {
    use kiln_kernels::dot::{dot_u8_g8_rows, has_u8_form, repack_u8, BlockU8};
    let mut rng = Rng::new(19);
    let types: Vec<DType> = QUANT_TYPES
        .into_iter()
        .filter(|&d| has_u8_form(d))
        .collect();
    assert_eq!(types.len(), 10);
    for dtype in types {
        let cols = 1024;
        let nb = cols / 32;
        let w = random_weights(&mut rng, dtype, 2 * cols);
        let row_bytes = w.len() / 2;
        let xs: Vec<Vec<f32>> = (0..8).map(|_| rng.vec(cols)).collect();
        let mut reference = vec![BlockU8::default(); 2 * nb];
        for r in 0..2 {
            let wr = &w[r * row_bytes..(r + 1) * row_bytes];
            repack_u8(Isa::Scalar, dtype, wr, &mut reference[r * nb..(r + 1) * nb]);
            // the unpacked form is the same weights
            let mut wf = vec![0.0; cols];
            dequantize(dtype, wr, &mut wf);
            for (i, b) in reference[r * nb..(r + 1) * nb].iter().enumerate() {
                for (l, v) in b.weights(dtype).into_iter().enumerate() {
                    let want = wf[32 * i + l];
                    assert!(
                        (v - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{dtype}: {v} vs {want}"
                    );
                }
            }
        }
        let Acts::Q32(q) = make_acts(dtype, &xs) else {
            // k-quants: the tile itself is covered through matmul (tests/matmul.rs)
            for isa in Isa::available() {
                let mut u = vec![BlockU8::default(); 2 * nb];
                for r in 0..2 {
                    let wr = &w[r * row_bytes..(r + 1) * row_bytes];
                    repack_u8(isa, dtype, wr, &mut u[r * nb..(r + 1) * nb]);
                }
                for (a, b) in u.iter().zip(&reference) {
                    assert_eq!(
                        (a.u, a.d, a.m, a.sc, a.mn, a.corr),
                        (b.u, b.d, b.m, b.sc, b.mn, b.corr),
                        "{dtype} {}",
                        isa.name()
                    );
                }
            }
            continue;
        };
        let g: Vec<_> = (0..nb)
            .map(|i| interleave8(std::array::from_fn(|t| &q[t][i])))
            .collect();
        for isa in Isa::available() {
            let mut u = vec![BlockU8::default(); 2 * nb];
            for r in 0..2 {
                let wr = &w[r * row_bytes..(r + 1) * row_bytes];
                repack_u8(isa, dtype, wr, &mut u[r * nb..(r + 1) * nb]);
            }
            for (a, b) in u.iter().zip(&reference) {
                assert_eq!(
                    (a.u, a.d, a.m, a.sc, a.mn, a.corr),
                    (b.u, b.d, b.m, b.sc, b.mn, b.corr),
                    "{dtype} {}",
                    isa.name()
                );
            }
            let got = dot_u8_g8_rows::<2>(isa, dtype, &u, &g);
            let reference_dot = dot_u8_g8_rows::<2>(Isa::Scalar, dtype, &u, &g);
            for (a, b) in got.iter().flatten().zip(reference_dot.iter().flatten()) {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{dtype} {}: unpacked tile vs scalar",
                    isa.name()
                );
            }
            for (r, row) in got.iter().enumerate() {
                let mut wf = vec![0.0; cols];
                dequantize(dtype, &w[r * row_bytes..(r + 1) * row_bytes], &mut wf);
                for (t, &v) in row.iter().enumerate() {
                    let xf = dequant_acts(&Acts::Q32(q.clone()), t);
                    let exact: f64 = wf.iter().zip(&xf).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let mag = abs_dot(&wf, &xf);
                    assert!(
                        (v as f64 - exact).abs() <= REL_ORDER * mag,
                        "{dtype} {} row {r} token {t}: {v} vs exact {exact}",
                        isa.name()
                    );
                }
            }
        }
    }
}

/// The two-group unpacked tile equals the one-group tile on each group, bit for bit, and
/// matches the scalar reference of the unpacked form, for every type with that form (odd row
/// counts included).
#[test]
fn unpacked_two_group_tile_matches_one_group() {
    use kiln_kernels::dot::{
        dot_u8_g16_rows, dot_u8_g16_rows_to, dot_u8_g8_rows, has_u8_form, repack_u8,
        u8_offset_acts, BlockU8,
    };
    let mut rng = Rng::new(29);
    for dtype in QUANT_TYPES.into_iter().filter(|&d| has_u8_form(d)) {
        let cols = 768;
        let nb = cols / 32;
        let w = random_weights(&mut rng, dtype, 2 * cols);
        let row_bytes = w.len() / 2;
        // groups from 32-element activation blocks: the tiles read only the interleaved
        // values, per-block sums and scales, whatever the weight type
        // (some tiles take the activations offset by 128, see `BlockU8`)
        let offset = u8_offset_acts(dtype);
        let groups: Vec<Vec<_>> = (0..2)
            .map(|_| {
                let g = interleaved_group(std::array::from_fn(|_| rng.vec(cols)));
                if offset {
                    g.iter().map(|b| b.offset_by_128()).collect()
                } else {
                    g
                }
            })
            .collect();
        let g = [&groups[0][..], &groups[1][..]];
        for isa in Isa::available() {
            let mut u = vec![BlockU8::default(); 2 * nb];
            for r in 0..2 {
                let wr = &w[r * row_bytes..(r + 1) * row_bytes];
                repack_u8(isa, dtype, wr, &mut u[r * nb..(r + 1) * nb]);
            }
            let two = dot_u8_g16_rows::<2>(isa, dtype, &u, g);
            let one = dot_u8_g16_rows::<1>(isa, dtype, &u[..nb], g);
            // the in-place form, into a token-major buffer with an odd stride
            let stride = 5;
            let mut buf = vec![f32::NAN; 16 * stride];
            unsafe {
                let o = buf.as_mut_ptr();
                dot_u8_g16_rows_to::<2>(isa, dtype, &u, g, o.add(1), stride);
                dot_u8_g16_rows_to::<1>(isa, dtype, &u[..nb], g, o.add(4), stride);
            }
            for k in 0..2 {
                for t in 0..8 {
                    let at = |r: usize| buf[(8 * k + t) * stride + r].to_bits();
                    let want = [two[k][0][t], two[k][1][t], one[k][0][t]].map(f32::to_bits);
                    assert_eq!(
                        [at(1), at(2), at(4)],
                        want,
                        "{dtype} {}: in place",
                        isa.name()
                    );
                }
            }
            for k in 0..2 {
                let single = dot_u8_g8_rows::<2>(isa, dtype, &u, g[k]);
                let reference = dot_u8_g8_rows::<2>(Isa::Scalar, dtype, &u, g[k]);
                for r in 0..2 {
                    for t in 0..8 {
                        let bits = [two[k][r][t], single[r][t], reference[r][t]].map(f32::to_bits);
                        assert!(
                            bits[0] == bits[1] && bits[1] == bits[2],
                            "{dtype} {}: group {k} row {r} token {t}: {:?}",
                            isa.name(),
                            bits.map(f32::from_bits)
                        );
                    }
                }
                assert_eq!(
                    one[k][0].map(f32::to_bits),
                    two[k][0].map(f32::to_bits),
                    "{dtype} {}: one row vs two",
                    isa.name()
                );
            }
        }
    }
}

/// The unpacked legacy tiles at the limits of their i16 sums (every weight 0 or at its
/// maximum, every activation ±127): bit for bit the scalar reference, for one and two groups.
#[test]
fn unpacked_legacy_tiles_exact_at_extremes() {
    use kiln_kernels::dot::{dot_u8_g16_rows, dot_u8_g8_rows, BlockU8};
    let nb = 4;
    let cols = 32 * nb;
    // each token's activations: all +1, all -1, or a sign pattern (quantised to ±127)
    let patterns: [fn(usize) -> f32; 4] = [
        |_| 1.0,
        |_| -1.0,
        |c| if c % 2 == 0 { 1.0 } else { -1.0 },
        |c| if (c / 2) % 2 == 0 { -1.0 } else { 1.0 },
    ];
    let groups: Vec<Vec<_>> = (0..2)
        .map(|k| {
            interleaved_group(std::array::from_fn(|t| {
                (0..cols).map(patterns[(t + k) % 4]).collect()
            }))
        })
        .collect();
    let g = [&groups[0][..], &groups[1][..]];
    for dtype in [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1] {
        let max = if matches!(dtype, DType::Q4_0 | DType::Q4_1) {
            15
        } else {
            31
        };
        // row 0 at the maximum, row 1 at 0, in alternate blocks
        let u: Vec<BlockU8> = (0..2 * nb)
            .map(|b| BlockU8 {
                u: [if (b / nb + b) % 2 == 0 { max } else { 0 }; 32],
                d: 0.5,
                m: -0.25,
                ..BlockU8::default()
            })
            .collect();
        for isa in Isa::available() {
            let two = dot_u8_g16_rows::<2>(isa, dtype, &u, g);
            let one = dot_u8_g16_rows::<1>(isa, dtype, &u[nb..], g);
            for k in 0..2 {
                let reference = dot_u8_g8_rows::<2>(Isa::Scalar, dtype, &u, g[k]);
                let single = dot_u8_g8_rows::<2>(isa, dtype, &u, g[k]);
                let single1 = dot_u8_g8_rows::<1>(isa, dtype, &u[nb..], g[k]);
                for r in 0..2 {
                    let want = reference[r].map(f32::to_bits);
                    assert_eq!(two[k][r].map(f32::to_bits), want, "{dtype} {}", isa.name());
                    assert_eq!(single[r].map(f32::to_bits), want, "{dtype} {}", isa.name());
                }
                let want = reference[1].map(f32::to_bits);
                assert_eq!(one[k][0].map(f32::to_bits), want, "{dtype} {}", isa.name());
                assert_eq!(single1[0].map(f32::to_bits), want, "{dtype} {}", isa.name());
            }
        }
    }
}

/// `interleave8` (whatever level this CPU runs) equals its scalar reference, extremes included.
#[test]
fn interleave8_matches_scalar() {
    use kiln_kernels::quant::act::interleave8_scalar;
    let mut rng = Rng::new(31);
    let nb = 16;
    let q: Vec<Vec<BlockQ8_32>> = (0..8)
        .map(|t| {
            let x: Vec<f32> = match t {
                0 => vec![1.0; 32 * nb],
                1 => vec![-1.0; 32 * nb],
                _ => rng.vec(32 * nb),
            };
            let mut q = vec![BlockQ8_32::default(); nb];
            quantize_q8_32(&x, &mut q);
            q
        })
        .collect();
    for a in (0..nb).map(|i| std::array::from_fn(|t| &q[t][i])) {
        let (got, want) = (interleave8(a), interleave8_scalar(a));
        assert_eq!(got.qs, want.qs);
        assert_eq!(got.off16, want.off16);
        assert_eq!(got.sum, want.sum);
        assert_eq!(got.d.map(f32::to_bits), want.d.map(f32::to_bits));
        assert_eq!(got.s.map(f32::to_bits), want.s.map(f32::to_bits));
    }
}

/// Unpacking Q5_0 straight from a 4-row group gives the rows' own unpacked blocks.
#[test]
fn q5_0_group_unpacks_like_its_rows() {
    use kiln_kernels::dot::{repack_u8, repack_u8_q5_0_group, BlockU8};
    let mut rng = Rng::new(37);
    let (cols, nb) = (640, 20);
    let rows = random_weights(&mut rng, DType::Q5_0, 4 * cols);
    let mut group = vec![0u8; rows.len()];
    kiln_kernels::interleave::q5_0_rows_to_group(&rows, &mut group);
    let rb = rows.len() / 4;
    let mut want = vec![BlockU8::default(); 4 * nb];
    for (r, o) in want.chunks_exact_mut(nb).enumerate() {
        repack_u8(Isa::Scalar, DType::Q5_0, &rows[r * rb..(r + 1) * rb], o);
    }
    for isa in Isa::available() {
        let mut got = vec![BlockU8::default(); 4 * nb];
        repack_u8_q5_0_group(isa, &group, &mut got);
        for (a, b) in got.iter().zip(&want) {
            assert_eq!((a.u, a.d, a.m), (b.u, b.d, b.m), "{}", isa.name());
        }
    }
}
