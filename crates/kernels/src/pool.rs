//! The thread pool kernels split their work over.
//!
//! Workers are spawned once and parked between operations: `run` publishes the closure, bumps
//! a generation counter and wakes them; the caller and the workers then claim the indices
//! `0..n_threads` from an atomic counter and count them done. Workers spin briefly before
//! parking (a decode step issues hundreds of small operations back to back), and callers do
//! the same while waiting for the last worker. Waking and signalling completion touch the
//! condvars only when a thread is actually parked on them: a futex wake is a system call, and
//! most operations find every thread still spinning.

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a worker or a waiting caller spins before parking on a condvar.
const SPIN: Duration = Duration::from_micros(50);

type Job = *const (dyn Fn(usize, usize) + Sync);

struct Shared {
    n_threads: usize,
    /// The current operation; written only by the thread holding `run_lock`, while no worker
    /// is reading it (all have counted down the previous operation).
    job: UnsafeCell<Option<Job>>,
    /// Generation of the current operation (high 32 bits) and the next unclaimed index.
    state: AtomicU64,
    /// Indices of the current operation that have finished.
    finished: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    wake: (Mutex<()>, Condvar),
    done: (Mutex<()>, Condvar),
    /// Workers parked (or about to park) on `wake`; counted under its mutex.
    sleeping_workers: AtomicUsize,
    /// Whether the caller is parked (or about to park) on `done`; set under its mutex.
    caller_sleeping: AtomicBool,
}

// SAFETY: `job` is only written between operations under `run_lock` (see `run`), and the
// closure it points to is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Shared {
    fn new(n_threads: usize) -> Shared {
        Shared {
            n_threads,
            job: UnsafeCell::new(None),
            state: AtomicU64::new(0),
            finished: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            done: (Mutex::new(()), Condvar::new()),
            sleeping_workers: AtomicUsize::new(0),
            caller_sleeping: AtomicBool::new(false),
        }
    }
}

thread_local! {
    /// Set while this thread runs a pool closure: a nested `run` then executes inline.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// Runs a closure on `n_threads` workers, each told its index. Work is split by the caller
/// (usually by rows) so that every thread finishes together.
pub struct ThreadPool {
    shared: Arc<Shared>,
    run_lock: Mutex<()>,
    workers: Vec<JoinHandle<()>>,
}

impl ThreadPool {
    /// A pool of `n_threads` (at least 1): the calling thread plus `n_threads - 1` workers.
    /// If the OS refuses to start a worker, the pool runs on the calling thread alone.
    pub fn new(n_threads: usize) -> ThreadPool {
        ThreadPool::spawn(n_threads.max(1))
            .unwrap_or_else(|| ThreadPool::from_workers(Arc::new(Shared::new(1)), Vec::new()))
    }

    fn from_workers(shared: Arc<Shared>, workers: Vec<JoinHandle<()>>) -> ThreadPool {
        ThreadPool {
            shared,
            run_lock: Mutex::new(()),
            workers,
        }
    }

    fn spawn(n_threads: usize) -> Option<ThreadPool> {
        let shared = Arc::new(Shared::new(n_threads));
        let mut workers = Vec::new();
        for i in 1..n_threads {
            let s = shared.clone();
            match std::thread::Builder::new()
                .name(format!("kiln-pool-{i}"))
                .spawn(move || worker(&s))
            {
                Ok(h) => workers.push(h),
                Err(_) => {
                    drop(ThreadPool::from_workers(shared, workers)); // stops the ones started
                    return None;
                }
            }
        }
        Some(ThreadPool::from_workers(shared, workers))
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
        self.shared.n_threads
    }

    /// Calls `f(index, n_threads)` once for every index in `0..n_threads` and returns when all
    /// are done. Indices are claimed by whichever thread gets there first (the caller takes
    /// part), so an operation never waits for a worker the OS has not scheduled yet: that
    /// worker finds nothing left to claim. A panic in any call is re-raised here once every
    /// call has finished. Concurrent callers take turns; a call made from inside a pool
    /// closure runs every index inline on the current thread (no deadlock).
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.shared.n_threads;
        if n == 1 || IN_POOL.with(|c| c.get()) {
            for i in 0..n {
                f(i, n);
            }
            return;
        }
        let _turn = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for the duration of this call: we do not return
        // (or unwind) before every claimed index has finished, and an index can only be
        // claimed for this operation's generation.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), Job>(f) };
        unsafe { *s.job.get() = Some(job) };
        s.panicked.store(false, Ordering::Relaxed);
        s.finished.store(0, Ordering::Relaxed);
        let gen = (s.state.load(Ordering::Relaxed) >> 32) + 1;
        // SeqCst store, then SeqCst load: a worker that parks counts itself under the mutex
        // and then re-reads `state`, so either it sees this generation or we see it parked.
        s.state.store(gen << 32, Ordering::SeqCst);
        if s.sleeping_workers.load(Ordering::SeqCst) > 0 {
            let _g = s.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.1.notify_all();
        }
        IN_POOL.with(|c| c.set(true));
        let mine = catch_unwind(AssertUnwindSafe(|| claim_and_run(s, gen)));
        IN_POOL.with(|c| c.set(false));
        // Wait for indices claimed by workers: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.finished.load(Ordering::Acquire) != n {
            spins += 1;
            if spins % 64 == 0 && start.elapsed() > SPIN {
                let mut g = s.done.0.lock().unwrap_or_else(|e| e.into_inner());
                s.caller_sleeping.store(true, Ordering::SeqCst);
                while s.finished.load(Ordering::SeqCst) != n {
                    g = s.done.1.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.caller_sleeping.store(false, Ordering::Relaxed);
                break;
            }
            std::hint::spin_loop();
        }
        unsafe { *s.job.get() = None };
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if s.panicked.load(Ordering::Relaxed) {
            panic!("a thread-pool closure panicked");
        }
    }
}

/// Claims and runs indices of operation `gen` until none are left (or a newer operation began).
fn claim_and_run(s: &Shared, gen: u64) {
    let n = s.n_threads as u64;
    loop {
        let cur = s.state.load(Ordering::Acquire);
        if cur >> 32 != gen || cur & 0xFFFF_FFFF >= n {
            return;
        }
        if s.state
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        let index = (cur & 0xFFFF_FFFF) as usize;
        // SAFETY: we hold an unfinished index of `gen`, so its caller is still waiting and the
        // job it published is alive.
        if let Some(job) = unsafe { *s.job.get() } {
            let f = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| f(index, s.n_threads))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        // (SeqCst pairs with the caller's: it sets its flag, then re-reads `finished`)
        if s.finished.fetch_add(1, Ordering::SeqCst) + 1 == s.n_threads
            && s.caller_sleeping.load(Ordering::SeqCst)
        {
            let _g = s.done.0.lock().unwrap_or_else(|e| e.into_inner());
            s.done.1.notify_all();
        }
    }
}

fn worker(s: &Shared) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        // Wait for a new operation: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.state.load(Ordering::Acquire) >> 32 != seen || s.shutdown.load(Ordering::Acquire) {
                break;
            }
            spins += 1;
            if spins % 64 == 0 && start.elapsed() > SPIN {
                let mut g = s.wake.0.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping_workers.fetch_add(1, Ordering::SeqCst);
                while s.state.load(Ordering::SeqCst) >> 32 == seen
                    && !s.shutdown.load(Ordering::SeqCst)
                {
                    g = s.wake.1.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping_workers.fetch_sub(1, Ordering::SeqCst);
                break;
            }
            std::hint::spin_loop();
        }
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen = s.state.load(Ordering::Acquire) >> 32;
        claim_and_run(s, seen);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _g = self.shared.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.1.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThreadPool({} threads)", self.shared.n_threads)
    }
}

/// The half-open range of `0..len` that thread `i` of `n` owns.
pub fn split_range(len: usize, i: usize, n: usize) -> std::ops::Range<usize> {
    let per = len / n;
    let extra = len % n;
    let start = i * per + i.min(extra);
    start..start + per + usize::from(i < extra)
}
