//! Round-trip latency of `ThreadPool::run` (an empty operation), per thread count.
use kiln_kernels::ThreadPool;
use std::time::Instant;

fn main() {
    for n in [1usize, 2, 3, 4] {
        let pool = ThreadPool::new(n);
        let iters = 2000;
        let t = Instant::now();
        for _ in 0..iters {
            pool.run(&|_, _| {});
        }
        println!(
            "threads {n}: {:.2} us per run",
            t.elapsed().as_secs_f64() * 1e6 / iters as f64
        );
    }
}
