//! Cost of the dot kernels on cache-resident data (single thread, thread CPU time), in
//! GFLOP/s (2 flops per weight × activation), for 1 activation row and for the prefill tile.
//! `DOT_BENCH_COLS` sets the row length (default 2048): the unpacked tiles' 16 tokens of
//! activations take 2 × cols / 32 blocks of 384 bytes, L1-resident only for short rows.
#[path = "../tests/common/mod.rs"]
mod common;

use common::{random_weights, Rng};
use kiln_kernels::dot::{
    dot_q8_32_g8, dot_q8_32_n, dot_q8_32_rows, dot_q8k_n, dot_q8k_x8, dot_u8_g16_rows,
    dot_u8_g8_rows, has_u8_form, repack_u8, BlockU8, Isa,
};
use kiln_kernels::quant::{
    interleave8, quantize_q8_32, quantize_q8_k, BlockQ8K, BlockQ8_32, BlockQ8x8,
};
use kiln_kernels::DType;
use std::hint::black_box;

/// This thread's CPU time in seconds (0 where the clock is missing).
fn cpu() -> f64 {
    common::thread_cpu().unwrap_or(0.0)
}

/// GFLOP/s over >= 0.4 s of calls (the CPU-time clock ticks coarsely).
fn rate(cols: usize, tokens: usize, mut f: impl FnMut()) -> f64 {
    let start = std::time::Instant::now();
    let t = cpu();
    let mut iters = 0u64;
    while start.elapsed().as_secs_f64() < 0.4 {
        for _ in 0..100 {
            f();
        }
        iters += 100;
    }
    (2.0 * cols as f64 * tokens as f64 * iters as f64) / (cpu() - t) / 1e9
}

fn main() {
    let mut rng = Rng::new(1);
    let cols: usize = std::env::var("DOT_BENCH_COLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let isa = Isa::best();
    let only: Option<Vec<String>> = std::env::args()
        .nth(1)
        .map(|l| l.split(',').map(str::to_string).collect());
    for dtype in [
        DType::Q4_K,
        DType::Q6_K,
        DType::Q8_0,
        DType::Q5_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_1,
    ] {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == dtype.name()))
        {
            continue;
        }
        let w = random_weights(&mut rng, dtype, cols);
        if dtype.block_size() == 256 {
            let acts: Vec<Vec<BlockQ8K>> = (0..8)
                .map(|_| {
                    let mut q = vec![BlockQ8K::default(); cols / 256];
                    quantize_q8_k(&rng.vec(cols), &mut q);
                    q
                })
                .collect();
            let r1 = rate(cols, 1, || {
                black_box(dot_q8k_n(isa, dtype, black_box(&w), [&acts[0]]));
            });
            let r4 = rate(cols, 4, || {
                black_box(dot_q8k_n(
                    isa,
                    dtype,
                    black_box(&w),
                    [&acts[0], &acts[1], &acts[2], &acts[3]],
                ));
            });
            let a8: [&[BlockQ8K]; 8] = std::array::from_fn(|t| &acts[t][..]);
            let r8 = rate(cols, 8, || {
                black_box(dot_q8k_x8(isa, dtype, black_box(&w), a8));
            });
            println!("{dtype}: N=1 {r1:.1} GFLOP/s, N=4 {r4:.1} GFLOP/s, x8 {r8:.1} GFLOP/s");
            if has_u8_form(dtype) {
                u8_tile(&mut rng, isa, dtype, cols);
            }
        } else {
            let acts: Vec<Vec<BlockQ8_32>> = (0..8)
                .map(|_| {
                    let mut q = vec![BlockQ8_32::default(); cols / 32];
                    quantize_q8_32(&rng.vec(cols), &mut q);
                    q
                })
                .collect();
            let a: [&[BlockQ8_32]; 8] = std::array::from_fn(|t| &acts[t][..]);
            let r1 = rate(cols, 1, || {
                black_box(dot_q8_32_n(isa, dtype, black_box(&w), [&acts[0]]));
            });
            let r4 = rate(cols, 4, || {
                black_box(dot_q8_32_n(
                    isa,
                    dtype,
                    black_box(&w),
                    [a[0], a[1], a[2], a[3]],
                ));
            });
            let g: Vec<BlockQ8x8> = (0..cols / 32)
                .map(|i| interleave8(std::array::from_fn(|t| &a[t][i])))
                .collect();
            let r8 = rate(cols, 8, || {
                black_box(dot_q8_32_g8(isa, dtype, black_box(&w), &g, a));
            });
            // the decode kernel: 4 weight rows (back to back) x 1 activation row
            let w4: Vec<u8> = (0..4)
                .flat_map(|_| random_weights(&mut rng, dtype, cols))
                .collect();
            let rows4 = rate(cols, 4, || {
                black_box(dot_q8_32_rows::<4>(isa, dtype, black_box(&w4), a[0]));
            });
            let gbs = rows4 / 2.0 * dtype.bytes_for(1 << 20).unwrap() as f64 / (1 << 20) as f64;
            if dtype == DType::Q5_0 {
                let mut g4 = vec![0u8; w4.len()];
                kiln_kernels::interleave::q5_0_rows_to_group(&w4, &mut g4);
                let r4 = rate(cols, 4, || {
                    black_box(kiln_kernels::dot::dot_q8_32_group4(
                        isa,
                        dtype,
                        black_box(&g4),
                        a[0],
                    ));
                });
                println!(
                    "Q5_0 4-row group x 1: {r4:.1} GFLOP/s ({:.1} GB/s of weights)",
                    r4 / 2.0 * 22.0 / 32.0
                );
            }
            println!(
                "{dtype}: N=1 {r1:.1} GFLOP/s, N=4 {r4:.1} GFLOP/s, x8 {r8:.1} GFLOP/s, 4 rows x 1 {rows4:.1} GFLOP/s ({gbs:.1} GB/s of weights)"
            );
            if has_u8_form(dtype) {
                u8_tile(&mut rng, isa, dtype, cols);
            }
        }
    }
}

/// The unpacked prefill tile (2 rows x 8 interleaved tokens) on cache-resident data. The
/// groups here carry arbitrary scales: only the speed is of interest.
fn u8_tile(rng: &mut Rng, isa: Isa, dtype: DType, cols: usize) {
    let nb = cols / 32;
    let w = random_weights(rng, dtype, 4 * cols);
    let mut u = vec![BlockU8::default(); 4 * nb];
    for (r, ur) in u.chunks_exact_mut(nb).enumerate() {
        repack_u8(isa, dtype, &w[r * w.len() / 4..(r + 1) * w.len() / 4], ur);
    }
    let acts: Vec<Vec<BlockQ8_32>> = (0..8)
        .map(|_| {
            let mut q = vec![BlockQ8_32::default(); nb];
            quantize_q8_32(&rng.vec(cols), &mut q);
            q
        })
        .collect();
    let g: Vec<BlockQ8x8> = (0..nb)
        .map(|i| interleave8(std::array::from_fn(|t| &acts[t][i])))
        .collect();
    let r = rate(cols, 16, || {
        black_box(dot_u8_g8_rows::<2>(isa, dtype, black_box(&u[..2 * nb]), &g));
    });
    let r16 = rate(cols, 32, || {
        black_box(dot_u8_g16_rows::<2>(
            isa,
            dtype,
            black_box(&u[..2 * nb]),
            [&g, &g],
        ));
    });
    let r4x16 = rate(cols, 64, || {
        black_box(dot_u8_g16_rows::<4>(isa, dtype, black_box(&u), [&g, &g]));
    });
    println!(
        "{dtype}: unpacked 2 rows x 8 tokens {r:.1} GFLOP/s, 2 rows x 16 tokens {r16:.1} GFLOP/s, 4 rows x 16 tokens {r4x16:.1} GFLOP/s"
    );
}
