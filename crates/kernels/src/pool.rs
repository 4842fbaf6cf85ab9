//! The thread pool kernels split their work over.

/// Runs a closure on `n_threads` workers, each told its index. Work is split by the caller
/// (usually by rows) so that every thread finishes together.
pub struct ThreadPool {
    n_threads: usize,
}

impl ThreadPool {
    pub fn new(n_threads: usize) -> ThreadPool {
        ThreadPool {
            n_threads: n_threads.max(1),
        }
    }

    /// One thread per available core.
    pub fn with_available_parallelism() -> ThreadPool {
        ThreadPool::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        )
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Calls `f(thread_index, n_threads)` once on every thread and returns when all are done.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.n_threads;
        if n == 1 {
            f(0, 1);
            return;
        }
        std::thread::scope(|s| {
            for i in 1..n {
                s.spawn(move || f(i, n));
            }
            f(0, n);
        });
    }
}

/// The half-open range of `0..len` that thread `i` of `n` owns.
pub fn split_range(len: usize, i: usize, n: usize) -> std::ops::Range<usize> {
    let per = len / n;
    let extra = len % n;
    let start = i * per + i.min(extra);
    start..start + per + usize::from(i < extra)
}
