//! `matmul` with every weight type against dequantise-then-f64 matmul.

mod common;

use common::{random_weights, Rng, QUANT_TYPES};
use kiln_kernels::dot::{act_kind, ActKind, Isa};
use kiln_kernels::matmul::{matmul_reference, matmul_with};
use kiln_kernels::{matmul, DType, Storage, Tensor, ThreadPool};

/// Bound on |matmul - exact| for one output: the activation quantisation error is at most half
/// a step (max|x_block| / 254) per element, times Σ|w| over the block, plus float rounding.
fn bound(dtype: DType, wf: &[f32], x: &[f32]) -> f64 {
    let bs = match act_kind(dtype) {
        ActKind::F32 => {
            return 1e-5
                * wf.iter()
                    .zip(x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum::<f64>()
                + 1e-6
        }
        ActKind::Q8_32 => 32,
        ActKind::Q8K => 256,
    };
    let mut e = 0.0f64;
    for (wb, xb) in wf.chunks(bs).zip(x.chunks(bs)) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        let wsum: f64 = wb.iter().map(|v| v.abs() as f64).sum();
        e += wsum * amax / 254.0 * 1.0001;
    }
    e + 1e-5
        * wf.iter()
            .zip(x)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum::<f64>()
        + 1e-6
}

fn check(
    dtype: DType,
    rows: usize,
    cols: usize,
    n: usize,
    threads: usize,
    isa: Isa,
    rng: &mut Rng,
) {
    let w = Tensor::new(
        dtype,
        vec![rows, cols],
        Storage::from_vec(random_weights(rng, dtype, rows * cols)),
    )
    .unwrap();
    let x = rng.vec(n * cols);
    let pool = ThreadPool::new(threads);
    let mut out = vec![f32::NAN; n * rows];
    matmul_with(isa, &pool, &w, &x, n, &mut out);
    let want = matmul_reference(&w, &x, n);
    let wf = w.to_f32_vec();
    for t in 0..n {
        for r in 0..rows {
            let b = bound(
                dtype,
                &wf[r * cols..(r + 1) * cols],
                &x[t * cols..(t + 1) * cols],
            );
            let (g, e) = (out[t * rows + r] as f64, want[t * rows + r] as f64);
            assert!(
                (g - e).abs() <= b,
                "{dtype} {} {rows}x{cols} n={n} threads={threads}: out[{t}][{r}] = {g}, reference {e}, bound {b}",
                isa.name()
            );
        }
    }
}

#[test]
fn quantized_matmul_is_close_to_dequantized_matmul() {
    let mut rng = Rng::new(42);
    let mut types = vec![DType::F32, DType::F16, DType::BF16];
    types.extend(QUANT_TYPES);
    for dtype in types {
        let cols = if dtype.block_size() == 256 { 512 } else { 96 };
        for isa in Isa::available() {
            for &(n, threads) in &[
                (1usize, 1usize),
                (1, 2),
                (3, 2),
                (4, 1),
                (9, 3),
                (14, 1),
                (21, 2),
            ] {
                check(dtype, 37, cols, n, threads, isa, &mut rng);
            }
        }
    }
}

#[test]
fn large_matmul_uses_the_pool_and_stays_correct() {
    let mut rng = Rng::new(5);
    for dtype in [
        DType::Q4_K,
        DType::Q6_K,
        DType::Q8_0,
        DType::Q5_0,
        DType::Q4_1,
        DType::IQ4_NL,
        DType::IQ4_XS,
    ] {
        check(dtype, 300, 1024, 1, 2, Isa::best(), &mut rng);
        check(dtype, 130, 1024, 6, 2, Isa::best(), &mut rng);
        // prefill: several 8-token groups (the unpacked-chunk path), an odd row count, a tail
        check(dtype, 131, 1024, 27, 2, Isa::best(), &mut rng);
    }
}

#[test]
fn default_matmul_equals_best_isa() {
    let mut rng = Rng::new(9);
    let w = Tensor::new(
        DType::Q4_K,
        vec![64, 512],
        Storage::from_vec(random_weights(&mut rng, DType::Q4_K, 64 * 512)),
    )
    .unwrap();
    let x = rng.vec(2 * 512);
    let pool = ThreadPool::new(2);
    let mut a = vec![0.0; 128];
    let mut b = vec![0.0; 128];
    matmul(&pool, &w, &x, 2, &mut a);
    matmul_with(Isa::best(), &pool, &w, &x, 2, &mut b);
    assert_eq!(a, b);
}

#[test]
#[should_panic]
fn matmul_rejects_wrong_activation_length() {
    let w = Tensor::from_f32(vec![2, 4], &[0.0; 8]).unwrap();
    let mut out = vec![0.0; 2];
    matmul(&ThreadPool::new(1), &w, &[0.0; 3], 1, &mut out);
}

/// A token's outputs must not depend on what else is in the batch: the decode kernels (one
/// token, 4 rows at a time), the 4-token tile, the 8-token tiles and the unpacked prefill path
/// all give bit-identical results for the same (row, token).
#[test]
fn results_do_not_depend_on_batch_mates() {
    let mut rng = Rng::new(23);
    let mut types = vec![DType::F32, DType::F16, DType::BF16];
    types.extend(QUANT_TYPES);
    let pool = ThreadPool::new(2);
    for dtype in types {
        let cols = if dtype.block_size() == 256 { 512 } else { 320 };
        let rows = 37; // not a multiple of the 4-row and 2-row kernels
        let w = Tensor::new(
            dtype,
            vec![rows, cols],
            Storage::from_vec(random_weights(&mut rng, dtype, rows * cols)),
        )
        .unwrap();
        let n = 27; // three 8-token groups and a tail of 3
        let x = rng.vec(n * cols);
        for isa in Isa::available() {
            let mut all = vec![0.0; n * rows];
            matmul_with(isa, &pool, &w, &x, n, &mut all);
            // each token alone, and the batch cut at other offsets (17 tokens from token 5,
            // 4 tokens from token 11)
            let mut alone = vec![0.0; rows];
            for t in 0..n {
                matmul_with(isa, &pool, &w, &x[t * cols..(t + 1) * cols], 1, &mut alone);
                for r in 0..rows {
                    assert_eq!(
                        alone[r].to_bits(),
                        all[t * rows + r].to_bits(),
                        "{dtype} {}: token {t} row {r} alone {} vs in a batch of {n} {}",
                        isa.name(),
                        alone[r],
                        all[t * rows + r]
                    );
                }
            }
            for (start, len) in [(5usize, 17usize), (11, 4)] {
                let mut part = vec![0.0; len * rows];
                let xs = &x[start * cols..(start + len) * cols];
                matmul_with(isa, &pool, &w, xs, len, &mut part);
                for (i, (p, a)) in part.iter().zip(&all[start * rows..]).enumerate() {
                    assert_eq!(
                        p.to_bits(),
                        a.to_bits(),
                        "{dtype} {}: token {} row {} in a batch of {len} from {start}: {p} vs {a}",
                        isa.name(),
                        start + i / rows,
                        i % rows
                    );
                }
            }
        }
    }
}
