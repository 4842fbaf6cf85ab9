//! Per-call cost of the dot kernels with 1 and 4 activation rows (single thread).
#[path = "../tests/common/mod.rs"]
mod common;

use common::{random_weights, Rng};
use kiln_kernels::dot::{dot_q8k_n, Isa};
use kiln_kernels::quant::{quantize_q8_k, BlockQ8K};
use kiln_kernels::DType;
use std::time::Instant;

fn main() {
    let mut rng = Rng::new(1);
    let cols = 4864;
    for dtype in [DType::Q4_K, DType::Q6_K] {
        let w = random_weights(&mut rng, dtype, cols);
        let acts: Vec<Vec<BlockQ8K>> = (0..4)
            .map(|_| {
                let mut q = vec![BlockQ8K::default(); cols / 256];
                quantize_q8_k(&rng.vec(cols), &mut q);
                q
            })
            .collect();
        let isa = Isa::best();
        let iters = 20000;
        let t = Instant::now();
        let mut s = 0.0;
        for _ in 0..iters {
            for a in &acts {
                s += dot_q8k_n(isa, dtype, std::hint::black_box(&w), [a])[0];
            }
        }
        let t1 = t.elapsed().as_secs_f64() / iters as f64 / 4.0;
        let t = Instant::now();
        for _ in 0..iters {
            s += dot_q8k_n(
                isa,
                dtype,
                std::hint::black_box(&w),
                [&acts[0], &acts[1], &acts[2], &acts[3]],
            )[0];
        }
        let t4 = t.elapsed().as_secs_f64() / iters as f64 / 4.0;
        println!(
            "{dtype}: N=1 {:.0} ns/token-row, N=4 {:.0} ns/token-row ({s})",
            t1 * 1e9,
            t4 * 1e9
        );
    }
}
