//! GFLOP/s of the forward kernel and of the fused update+forward kernel on [30 x 784] x batch-10
//! products (min of many short repeats, so it is meaningful on a busy machine).
//! usage: kernel_bench [K]
use kiln_nn::{Float, KernelKind, Rng};
use std::time::Instant;

fn main() {
    let k: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(784);
    let (n, m) = (30usize, 10usize);
    let mut rng = Rng::new(1);
    let mut w: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    let rows = 20_000usize;
    let x: Vec<f32> = (0..rows * k).map(|_| rng.next_f64() as f32).collect();
    let cscale: f32 = std::env::var("CSCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1e-6);
    let coef: Vec<f32> = (0..n * m).map(|_| cscale * rng.normal() as f32).collect();
    let mut out = vec![0f32; m * n];
    let kind = KernelKind::detect();
    for (name, stride_rows) in [("in-cache", 0usize), ("streaming", 1usize)] {
        let mut best_f = f64::MAX;
        let mut best_u = f64::MAX;
        for _ in 0..300 {
            let iters = 50;
            let mut offs = vec![0usize; m];
            // the fused kernel's forward reads other rows than its update, as in training
            let offs2: Vec<usize> = (0..m).map(|i| (rows - 1 - i) * k).collect();
            let t = Instant::now();
            for it in 0..iters {
                for (i, o) in offs.iter_mut().enumerate() {
                    *o = ((it * m + i) * stride_rows % rows) * k
                        + if stride_rows == 0 { i * k } else { 0 };
                }
                f32::forward_product(kind, &w, n, k, &b, &x, &offs, &mut out);
            }
            best_f = best_f.min(t.elapsed().as_secs_f64() / iters as f64);
            let t = Instant::now();
            for it in 0..iters {
                for (i, o) in offs.iter_mut().enumerate() {
                    *o = ((it * m + i) * stride_rows % rows) * k
                        + if stride_rows == 0 { i * k } else { 0 };
                }
                f32::update_forward(
                    kind, &mut w, n, k, 1.0, &coef, &x, &offs, &b, &x, &offs2, &mut out,
                );
            }
            best_u = best_u.min(t.elapsed().as_secs_f64() / iters as f64);
        }
        let fl = 2.0 * (n * k * m) as f64;
        println!(
            "{name}: forward {:.2} us ({:.1} GFLOP/s), fused update+forward {:.2} us ({:.1} GFLOP/s); fused x5000 = {:.3} s/epoch",
            best_f * 1e6,
            fl / best_f * 1e-9,
            best_u * 1e6,
            2.0 * fl / best_u * 1e-9,
            best_u * 5000.0
        );
    }
    println!("{}", out[0]);
}
