//! Cost of SiLU-gating and of the slice `e^x` (single thread, thread CPU time, cache-resident
//! data): nanoseconds per element of `reference::silu_mul` (libm's `expf` one element at a
//! time) against `exp::silu_mul_at` at each vector level this CPU runs, and the same for
//! `e^x` over a slice of softmax exponents (libm per element against `exp::exp_slice_at`).
//! Lengths: 8960 (qwen2.5-1.5b's FFN width) and 512 (a row of attention scores).
//!
//! cargo run --release -p kiln-kernels --example exp_bench
#[path = "../tests/common/mod.rs"]
mod common;

use kiln_kernels::exp::{exp_slice_at, silu_mul_at};
use kiln_kernels::ops::reference;
use kiln_kernels::Isa;
use std::hint::black_box;

/// Nanoseconds per element of calls on `n` elements ([`common::ns_per_call`]).
fn ns_per_elem(n: usize, f: impl FnMut()) -> f64 {
    common::ns_per_call(f) / n as f64
}

fn main() {
    println!("{}", kiln_kernels::cpu_features());
    let levels: Vec<Isa> = [Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    let mut rng = common::Rng::new(1);
    for n in [8960usize, 512] {
        let gate: Vec<f32> = rng.vec(n).iter().map(|v| v * 4.0).collect();
        let up = rng.vec(n);
        let mut g = gate.clone();
        let base = ns_per_elem(n, || {
            g.copy_from_slice(&gate);
            reference::silu_mul(black_box(&mut g), black_box(&up));
        });
        print!("silu_mul n={n}: libm {base:.2} ns/elem");
        for &isa in &levels {
            let t = ns_per_elem(n, || {
                g.copy_from_slice(&gate);
                silu_mul_at(isa, black_box(&mut g), black_box(&up));
            });
            print!(", {} {t:.2} ({:.1}x)", isa.name(), base / t);
        }
        println!();
        // softmax exponents: scores less their maximum, all <= 0
        let max = gate.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let x: Vec<f32> = gate.iter().map(|v| v - max).collect();
        let mut y = x.clone();
        let base = ns_per_elem(n, || {
            y.copy_from_slice(&x);
            exp_slice_at(Isa::Scalar, black_box(&mut y));
        });
        print!("exp      n={n}: libm {base:.2} ns/elem");
        for &isa in &levels {
            let t = ns_per_elem(n, || {
                y.copy_from_slice(&x);
                exp_slice_at(isa, black_box(&mut y));
            });
            print!(", {} {t:.2} ({:.1}x)", isa.name(), base / t);
        }
        println!();
    }
}
