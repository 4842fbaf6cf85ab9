//! The small-batch path (2–15 tokens, a speculative verification): its kernels give every
//! token exactly what the decode kernel gives it alone, agree with the scalar reference, and
//! `matmul` on 2..15 tokens equals each token alone, bit for bit, in both weight layouts.

mod common;

use common::{random_weights, Rng, QUANT_TYPES};
use kiln_kernels::dot::{
    dot_q8_32_group4, dot_q8_32_rows, dot_q8_32_rows4_n, dot_q8k_group4, dot_q8k_rows,
    dot_q8k_rows4_n, Isa, SMALL_BATCH_MAX,
};
use kiln_kernels::interleave::{self, rows_to_group, Layout};
use kiln_kernels::matmul::matmul_with;
use kiln_kernels::quant::{dequantize, quantize_q8_32, quantize_q8_k, BlockQ8K, BlockQ8_32};
use kiln_kernels::{DType, Storage, Tensor, ThreadPool};

/// The types with a 4-row group layout.
const GROUPED: [DType; 8] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// Every token of `xs` quantised for `dtype`'s kernels.
enum Acts {
    Q32(Vec<Vec<BlockQ8_32>>),
    QK(Vec<Vec<BlockQ8K>>),
}

fn quantise(dtype: DType, xs: &[Vec<f32>]) -> Acts {
    if dtype.block_size() == 256 {
        Acts::QK(
            xs.iter()
                .map(|x| {
                    let mut a = vec![BlockQ8K::default(); x.len() / 256];
                    quantize_q8_k(x, &mut a);
                    a
                })
                .collect(),
        )
    } else {
        Acts::Q32(
            xs.iter()
                .map(|x| {
                    let mut a = vec![BlockQ8_32::default(); x.len() / 32];
                    quantize_q8_32(x, &mut a);
                    a
                })
                .collect(),
        )
    }
}

/// The small-batch kernel on tokens `0..n`.
fn small(isa: Isa, dtype: DType, w: &[u8], grouped: bool, acts: &Acts, n: usize) -> Vec<[f32; 4]> {
    let mut out = vec![[0.0f32; 4]; n];
    match acts {
        Acts::Q32(a) => {
            let a: Vec<&[BlockQ8_32]> = a[..n].iter().map(|v| v.as_slice()).collect();
            dot_q8_32_rows4_n(isa, dtype, w, grouped, &a, &mut out);
        }
        Acts::QK(a) => {
            let a: Vec<&[BlockQ8K]> = a[..n].iter().map(|v| v.as_slice()).collect();
            dot_q8k_rows4_n(isa, dtype, w, grouped, &a, &mut out);
        }
    }
    out
}

/// The decode kernel on token `t` alone.
fn decode(isa: Isa, dtype: DType, w: &[u8], grouped: bool, acts: &Acts, t: usize) -> [f32; 4] {
    match (acts, grouped) {
        (Acts::Q32(a), true) => dot_q8_32_group4(isa, dtype, w, &a[t]),
        (Acts::Q32(a), false) => dot_q8_32_rows::<4>(isa, dtype, w, &a[t]),
        (Acts::QK(a), true) => dot_q8k_group4(isa, dtype, w, &a[t]),
        (Acts::QK(a), false) => dot_q8k_rows::<4>(isa, dtype, w, &a[t]),
    }
}

#[test]
fn small_batch_kernels_equal_the_decode_kernel_token_by_token() {
    let mut rng = Rng::new(31);
    let mut types: Vec<DType> = QUANT_TYPES.to_vec();
    types.retain(|d| *d != DType::Q8_K);
    for dtype in types {
        // an odd number of blocks per row
        let cols = if dtype.block_size() == 256 {
            3 * 256
        } else {
            7 * 32
        };
        let rows = random_weights(&mut rng, dtype, 4 * cols);
        let xs: Vec<Vec<f32>> = (0..SMALL_BATCH_MAX).map(|_| rng.vec(cols)).collect();
        let acts = quantise(dtype, &xs);
        let mut layouts = vec![(false, rows.clone())];
        if GROUPED.contains(&dtype) {
            let mut group = vec![0u8; rows.len()];
            rows_to_group(dtype, &rows, &mut group);
            layouts.push((true, group));
        }
        // the scalar reference, and the magnitude each token's result may differ from it by
        let mut wf = vec![0.0f32; 4 * cols];
        dequantize(dtype, &rows, &mut wf);
        let reference: Vec<[f32; 4]> = (0..SMALL_BATCH_MAX)
            .map(|t| decode(Isa::Scalar, dtype, &rows, false, &acts, t))
            .collect();
        for (grouped, w) in &layouts {
            for isa in Isa::available() {
                for n in 1..=SMALL_BATCH_MAX {
                    let got = small(isa, dtype, w, *grouped, &acts, n);
                    for (t, g) in got.iter().enumerate() {
                        let want = decode(isa, dtype, w, *grouped, &acts, t);
                        assert_eq!(
                            g.map(f32::to_bits),
                            want.map(f32::to_bits),
                            "{dtype} {} grouped={grouped} n={n} token {t}: {g:?} vs decode {want:?}",
                            isa.name()
                        );
                        for r in 0..4 {
                            let mag: f64 = wf[r * cols..(r + 1) * cols]
                                .iter()
                                .zip(&xs[t])
                                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                                .sum();
                            let diff = (g[r] as f64 - reference[t][r] as f64).abs();
                            assert!(
                                diff <= 1e-5 * mag + 1e-30,
                                "{dtype} {} n={n} token {t} row {r}: {} vs scalar {}",
                                isa.name(),
                                g[r],
                                reference[t][r]
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
#[should_panic]
fn small_batch_kernel_refuses_more_than_its_maximum() {
    let w = vec![0u8; 4 * 34];
    let a = vec![BlockQ8_32::default(); 1];
    let acts: Vec<&[BlockQ8_32]> = vec![&a; SMALL_BATCH_MAX + 1];
    let mut out = vec![[0.0f32; 4]; SMALL_BATCH_MAX + 1];
    dot_q8_32_rows4_n(Isa::Scalar, DType::Q8_0, &w, false, &acts, &mut out);
}

/// `matmul` on every batch size of the small path: each token's outputs equal that token
/// alone (the decode path), in the file's layout and in 4-row groups, at every level.
#[test]
fn small_batches_equal_each_token_alone() {
    let mut rng = Rng::new(32);
    let pool = ThreadPool::new(2);
    let mut types = vec![DType::F32, DType::F16, DType::BF16];
    types.extend(QUANT_TYPES);
    for dtype in types {
        let cols = if dtype.block_size() == 256 { 512 } else { 320 };
        for rows in [37, 130] {
            let bytes = random_weights(&mut rng, dtype, rows * cols);
            let shape = vec![rows, cols];
            let mut tensors =
                vec![Tensor::new(dtype, shape.clone(), Storage::from_vec(bytes.clone())).unwrap()];
            if GROUPED.contains(&dtype) {
                let mut grouped = bytes;
                interleave::rearrange(Layout::Rows4, dtype, cols, &mut grouped);
                tensors.push(
                    Tensor::with_layout(dtype, shape, Storage::from_vec(grouped), Layout::Rows4)
                        .unwrap(),
                );
            }
            let x = rng.vec(16 * cols);
            for w in &tensors {
                for isa in Isa::available() {
                    let mut alone = vec![0.0f32; 16 * rows];
                    for t in 0..16 {
                        let o = &mut alone[t * rows..(t + 1) * rows];
                        matmul_with(isa, &pool, w, &x[t * cols..(t + 1) * cols], 1, o);
                    }
                    for n in 2..16 {
                        let mut got = vec![0.0f32; n * rows];
                        matmul_with(isa, &pool, w, &x[..n * cols], n, &mut got);
                        for (i, (g, a)) in got.iter().zip(&alone).enumerate() {
                            assert_eq!(
                                g.to_bits(),
                                a.to_bits(),
                                "{dtype} {:?} {} {rows} rows, n={n}: token {} row {}: {g} vs alone {a}",
                                w.layout,
                                isa.name(),
                                i / rows,
                                i % rows
                            );
                        }
                    }
                }
            }
        }
    }
}
