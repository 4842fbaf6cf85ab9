//! Throughput of the matmul kernels: matrix-vector (decode, reported as weight GB/s) and
//! matrix-matrix (prefill, reported as GFLOP/s) for the weight types real models use.
//!
//! cargo run --release -p kiln-kernels --example matmul_bench -- [threads] [prefill_tokens] [types]
//! e.g. `-- 2 128 Q4_K,Q6_K`. `KILN_ISA=scalar` measures the scalar reference.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{random_weights, Rng};
use kiln_kernels::{cpu_features, matmul, DType, Storage, Tensor, ThreadPool};
use std::time::{Duration, Instant};

/// CPU time this thread has run, in seconds (Linux; falls back to wall time elsewhere).
fn thread_cpu() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? * 1e-9)
}

/// Best per-call time over batches of calls lasting >= 30 ms each; with one thread, measured as
/// the calling thread's CPU time (robust when the machine is shared and the process gets
/// preempted), otherwise as wall time.
fn time_it(cpu_time: bool, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let mut best = f64::INFINITY;
    let start = Instant::now();
    let mut batches = 0;
    while batches < 3 || start.elapsed() < Duration::from_millis(800) {
        let (t, c) = (Instant::now(), thread_cpu());
        let mut calls = 0;
        while calls == 0 || t.elapsed() < Duration::from_millis(30) {
            f();
            calls += 1;
        }
        let wall = t.elapsed().as_secs_f64();
        let el = match (cpu_time, c, thread_cpu()) {
            (true, Some(a), Some(b)) if b > a => b - a,
            _ => wall,
        };
        best = best.min(el / calls as f64);
        batches += 1;
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = args.get(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let n_prefill: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let types: Vec<DType> = match args.get(3) {
        Some(list) => list
            .split(',')
            .filter_map(|t| DType::ALL.into_iter().find(|d| d.name() == t))
            .collect(),
        None => vec![DType::Q4_K, DType::Q6_K, DType::Q8_0, DType::Q5_0],
    };
    println!("{}", cpu_features());
    println!(
        "threads {threads}, prefill tokens {n_prefill} (best of repeated runs; {})",
        if threads == 1 {
            "thread CPU time"
        } else {
            "wall time"
        }
    );
    let pool = ThreadPool::new(threads);
    let mut rng = Rng::new(1);
    for dtype in types {
        for (rows, cols) in [(4864usize, 896usize), (896, 4864), (4096, 4096)] {
            if cols % dtype.block_size() != 0 {
                continue;
            }
            let bytes = random_weights(&mut rng, dtype, rows * cols);
            let nbytes = bytes.len();
            let w = Tensor::new(dtype, vec![rows, cols], Storage::from_vec(bytes)).unwrap();
            let x1 = rng.vec(cols);
            let mut o1 = vec![0.0; rows];
            let t1 = time_it(threads == 1, || matmul(&pool, &w, &x1, 1, &mut o1));
            let xn = rng.vec(n_prefill * cols);
            let mut on = vec![0.0; n_prefill * rows];
            let tn = time_it(threads == 1, || matmul(&pool, &w, &xn, n_prefill, &mut on));
            let flops = 2.0 * (rows * cols) as f64;
            println!(
                "{:5} {rows:6}x{cols:<5} matvec {:8.1} us {:6.1} GB/s {:6.1} GFLOP/s | matmul n={n_prefill} {:8.2} ms {:7.1} GFLOP/s",
                dtype.name(),
                t1 * 1e6,
                nbytes as f64 / t1 / 1e9,
                flops / t1 / 1e9,
                tn * 1e3,
                flops * n_prefill as f64 / tn / 1e9
            );
        }
    }
}
