//! Throughput of the matmul kernels: matrix-vector (decode, reported as weight GB/s) and
//! matrix-matrix (prefill, reported as GFLOP/s) for the weight types real models use.
//!
//! cargo run --release -p kiln-kernels --example matmul_bench -- [threads] [prefill_tokens] [types]
//! e.g. `-- 2 128 Q4_K,Q6_K`. `KILN_ISA=scalar` measures the scalar reference.
//!
//! `-- [threads] [prefill_tokens] qwen|qwen15|gemma` instead times every linear layer of one
//! qwen2.5-coder-0.5b / 1.5b / gemma-3-270m Q4_K_M forward pass (same shapes and types, random weights): the
//! matmul-only bound on decode and prefill tokens/s. `qwen15-ffn` times one of each of the
//! 1.5b's large prefill shapes (Q4_K 1536x1536, 8960x1536, 1536x8960; Q6_K 1536x8960).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{random_weights, Rng};
use kiln_kernels::{cpu_features, interleave, matmul, DType, Storage, Tensor, ThreadPool};
use std::time::{Duration, Instant};

/// Best per-call time over batches of calls lasting >= 250 ms each (the CPU-time clock ticks
/// coarsely); with one thread, measured as
/// the calling thread's CPU time (robust when the machine is shared and the process gets
/// preempted), otherwise as wall time.
fn time_it(cpu_time: bool, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let mut best = f64::INFINITY;
    let mut batches = 0;
    while batches < 3 {
        let (t, c) = (Instant::now(), common::thread_cpu());
        let mut calls = 0;
        while calls == 0 || t.elapsed() < Duration::from_millis(250) {
            f();
            calls += 1;
        }
        let wall = t.elapsed().as_secs_f64();
        let el = match (cpu_time, c, common::thread_cpu()) {
            (true, Some(a), Some(b)) if b > a => b - a,
            _ => wall,
        };
        best = best.min(el / calls as f64);
        batches += 1;
    }
    best
}

/// A weight matrix in the layout the model loader would give it (`KILN_INTERLEAVE=0`: plain).
fn weights(dtype: DType, rows: usize, cols: usize, mut bytes: Vec<u8>) -> Tensor {
    let layout = if std::env::var("KILN_INTERLEAVE").is_ok_and(|v| v == "0") {
        interleave::Layout::Plain
    } else {
        interleave::preferred(dtype, &[rows, cols])
    };
    interleave::rearrange(layout, dtype, cols, &mut bytes);
    Tensor::with_layout(dtype, vec![rows, cols], Storage::from_vec(bytes), layout).unwrap()
}

fn main() {
    // A program, like the CLI, may read the environment; the library does not.
    if let Ok(v) = std::env::var("KILN_ISA") {
        let isa = v.parse().unwrap_or_else(|e| panic!("KILN_ISA: {e}"));
        kiln_kernels::Isa::use_in_process(isa).unwrap_or_else(|e| panic!("KILN_ISA: {e}"));
    }
    let args: Vec<String> = std::env::args().collect();
    let threads = args.get(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let n_prefill: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    match args.get(3).map(String::as_str) {
        Some("qwen") => return model(threads, n_prefill, &QWEN),
        Some("gemma") => return model(threads, n_prefill, &GEMMA),
        Some("qwen15") => return model(threads, n_prefill, &QWEN15),
        Some("qwen15-ffn") => return model(threads, n_prefill, &QWEN15_FFN),
        _ => {}
    }
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
            let w = weights(dtype, rows, cols, bytes);
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

/// The linear layers of one model: (type, rows, cols, count per forward pass), then lm_head.
struct ModelShapes {
    layers: &'static [(DType, usize, usize, usize)],
    lm_head: (DType, usize, usize),
}

/// qwen2.5-coder-0.5b-instruct-q4_k_m (24 blocks).
const QWEN: ModelShapes = ModelShapes {
    layers: &[
        (DType::Q5_0, 896, 896, 48),  // attn_q, attn_output
        (DType::Q5_0, 128, 896, 36),  // attn_k, half of attn_v
        (DType::Q8_0, 128, 896, 12),  // the other half of attn_v
        (DType::Q5_0, 4864, 896, 48), // ffn_gate, ffn_up
        (DType::Q4_K, 896, 4864, 12), // ffn_down (half the blocks)
        (DType::Q6_K, 896, 4864, 12), // ffn_down (the other half)
    ],
    lm_head: (DType::Q8_0, 151936, 896),
};

/// qwen2.5-coder-1.5b-instruct-q4_k_m (28 blocks).
const QWEN15: ModelShapes = ModelShapes {
    layers: &[
        (DType::Q4_K, 1536, 1536, 56), // attn_q, attn_output
        (DType::Q4_K, 256, 1536, 42),  // attn_k, half of attn_v
        (DType::Q6_K, 256, 1536, 14),  // the other half of attn_v
        (DType::Q4_K, 8960, 1536, 56), // ffn_gate, ffn_up
        (DType::Q4_K, 1536, 8960, 14), // ffn_down (half the blocks)
        (DType::Q6_K, 1536, 8960, 14), // ffn_down (the other half)
    ],
    lm_head: (DType::Q6_K, 151936, 1536),
};

/// The prefill-heavy shapes of qwen2.5-coder-1.5b (one of each, a quick A/B of the prefill
/// kernels; the totals are not a forward pass).
const QWEN15_FFN: ModelShapes = ModelShapes {
    layers: &[
        (DType::Q4_K, 1536, 1536, 1),
        (DType::Q4_K, 8960, 1536, 1),
        (DType::Q4_K, 1536, 8960, 1),
        (DType::Q6_K, 1536, 8960, 1),
    ],
    lm_head: (DType::Q6_K, 256, 1536),
};

/// gemma-3-270m-q4_k_m (18 blocks; the tied embedding is the lm_head).
const GEMMA: ModelShapes = ModelShapes {
    layers: &[
        (DType::Q5_0, 1024, 640, 18), // attn_q
        (DType::Q5_0, 256, 640, 27),  // attn_k, half of attn_v
        (DType::Q8_0, 256, 640, 9),   // the other half of attn_v
        (DType::Q4_K, 640, 1024, 18), // attn_output
        (DType::Q5_0, 2048, 640, 36), // ffn_gate, ffn_up
        (DType::Q4_K, 640, 2048, 9),  // ffn_down (half the blocks)
        (DType::Q6_K, 640, 2048, 9),  // ffn_down (the other half)
    ],
    lm_head: (DType::Q8_0, 262144, 640),
};

/// Every linear layer of a model, timed per token: the matmul-only bound on decode and
/// prefill tokens/s.
fn model(threads: usize, n_prefill: usize, shapes: &ModelShapes) {
    println!("{}", cpu_features());
    let pool = ThreadPool::new(threads);
    let mut rng = Rng::new(2);
    let (mut decode, mut prefill, mut bytes) = (0.0, 0.0, 0usize);
    for &(dtype, rows, cols, count) in shapes.layers {
        let b = random_weights(&mut rng, dtype, rows * cols);
        bytes += b.len() * count;
        let w = weights(dtype, rows, cols, b);
        let x1 = rng.vec(cols);
        let mut o1 = vec![0.0; rows];
        let t1 = time_it(threads == 1, || matmul(&pool, &w, &x1, 1, &mut o1));
        let xn = rng.vec(n_prefill * cols);
        let mut on = vec![0.0; n_prefill * rows];
        let tn = time_it(threads == 1, || matmul(&pool, &w, &xn, n_prefill, &mut on));
        println!(
            "{:5} {rows:5}x{cols:<5} x{count:2}: decode {:7.1} us, prefill {:7.2} ms ({:5.1} GFLOP/s)",
            dtype.name(),
            t1 * 1e6,
            tn * 1e3,
            2.0 * (rows * cols * n_prefill) as f64 / tn / 1e9
        );
        decode += t1 * count as f64;
        prefill += tn * count as f64;
    }
    let (dtype, rows, cols) = shapes.lm_head;
    let b = random_weights(&mut rng, dtype, rows * cols);
    bytes += b.len();
    let w = weights(dtype, rows, cols, b);
    let x1 = rng.vec(cols);
    let mut o1 = vec![0.0; rows];
    let t_head = time_it(threads == 1, || matmul(&pool, &w, &x1, 1, &mut o1));
    println!(
        "lm_head {} {rows}x{cols}: {:.2} ms ({:.1} GB/s)",
        dtype.name(),
        t_head * 1e3,
        w.data.bytes().len() as f64 / t_head / 1e9
    );
    decode += t_head;
    prefill += t_head; // logits of the last prompt token only
    println!(
        "decode: {:.2} ms/token ({:.1} tokens/s, {:.1} GB/s of weights); prefill {n_prefill}: {:.1} tokens/s",
        decode * 1e3,
        1.0 / decode,
        bytes as f64 / decode / 1e9,
        n_prefill as f64 / prefill
    );
    stream(&pool, shapes);
}

/// Anonymous memory advised for 2 MiB pages, as the model loader holds weights.
struct HugeBuf {
    map: memmap2::MmapMut,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for HugeBuf {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

impl AsMut<[u8]> for HugeBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.map[self.start..self.start + self.len]
    }
}

/// Decode through a whole model's worth of distinct weights in forward-pass order, held in
/// huge-page memory like a loaded model, so every byte comes from memory as in real decoding
/// (the per-shape timings above reuse one cached matrix): the matmul-only bound on decode.
fn stream(pool: &ThreadPool, shapes: &ModelShapes) {
    const HUGE: usize = 2 << 20;
    let mut rng = Rng::new(3);
    // one matrix per shape, copied: random bytes are slow to make, the values do not matter
    let mut mats: Vec<(Tensor, usize)> = shapes
        .layers
        .iter()
        .map(|&(dtype, rows, cols, count)| {
            let b = random_weights(&mut rng, dtype, rows * cols);
            (weights(dtype, rows, cols, b), count)
        })
        .collect();
    let (dtype, rows, cols) = shapes.lm_head;
    let b = random_weights(&mut rng, dtype, rows * cols);
    mats.push((weights(dtype, rows, cols, b), 1));
    let total: usize = mats.iter().map(|(w, c)| w.data.len() * c).sum();
    let mut map = memmap2::MmapMut::map_anon(total + HUGE).expect("anonymous memory");
    let _ = map.advise(memmap2::Advice::HugePage);
    let start = map.as_ptr().align_offset(HUGE).min(HUGE);
    let mut at = start;
    let mut placed = Vec::new();
    for (w, count) in &mats {
        for _ in 0..*count {
            map[at..at + w.data.len()].copy_from_slice(w.data.bytes());
            placed.push((w, at - start));
            at += w.data.len();
        }
    }
    let store = Storage::writable(std::sync::Arc::new(HugeBuf {
        map,
        start,
        len: total,
    }));
    let all: Vec<Tensor> = placed
        .iter()
        .map(|(w, off)| {
            let data = store.slice(*off, w.data.len()).expect("inside the buffer");
            Tensor::with_layout(w.dtype, w.shape.clone(), data, w.layout).unwrap()
        })
        .collect();
    let xs: Vec<Vec<f32>> = all.iter().map(|w| rng.vec(w.cols())).collect();
    let mut out = vec![0.0; all.iter().map(|w| w.rows()).max().unwrap_or(0)];
    let t = time_it(pool.n_threads() == 1, || {
        for (w, x) in all.iter().zip(&xs) {
            matmul(pool, w, x, 1, &mut out[..w.rows()]);
        }
    });
    println!(
        "decode from memory: {:.2} ms/token ({:.1} tokens/s, {:.1} GB/s of weights)",
        t * 1e3,
        1.0 / t,
        total as f64 / t / 1e9
    );
}
