//! The persistent thread pool: every index runs exactly once per call, across many calls,
//! concurrent callers, nested calls and panics.

use kiln_kernels::pool::split_range;
use kiln_kernels::ThreadPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn every_index_runs_once_per_call_many_times() {
    for n in [1usize, 2, 3, 5] {
        let pool = ThreadPool::new(n);
        assert_eq!(pool.n_threads(), n);
        let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..3000 {
            pool.run(&|i, nt| {
                assert_eq!(nt, n);
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        for c in &counts {
            assert_eq!(c.load(Ordering::Relaxed), 3000);
        }
    }
}

#[test]
fn workers_run_concurrently_on_their_own_threads() {
    let pool = ThreadPool::new(3);
    let started = AtomicUsize::new(0);
    let ids = std::sync::Mutex::new(Vec::new());
    let mut out = vec![0usize; 1000];
    let ptr = out.as_mut_ptr() as usize;
    pool.run(&|i, n| {
        ids.lock().unwrap().push(std::thread::current().id());
        // Every index blocks until all have started: only possible if they run at once.
        started.fetch_add(1, Ordering::SeqCst);
        let t = std::time::Instant::now();
        while started.load(Ordering::SeqCst) < n {
            assert!(t.elapsed().as_secs() < 20, "workers never joined");
            std::thread::yield_now();
        }
        for k in split_range(1000, i, n) {
            unsafe { *(ptr as *mut usize).add(k) = k * 2 };
        }
    });
    let mut ids = ids.into_inner().unwrap();
    ids.sort_by_key(|t| format!("{t:?}"));
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert!(out.iter().enumerate().all(|(k, &v)| v == 2 * k));
}

#[test]
fn pool_wakes_after_parking() {
    let pool = ThreadPool::new(2);
    let hits = AtomicUsize::new(0);
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(20)); // workers park
        pool.run(&|_, _| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
    }
    assert_eq!(hits.load(Ordering::Relaxed), 6);
}

#[test]
fn concurrent_callers_take_turns() {
    let pool = Arc::new(ThreadPool::new(2));
    let total = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let (pool, total) = (pool.clone(), total.clone());
            std::thread::spawn(move || {
                for _ in 0..500 {
                    pool.run(&|_, _| {
                        total.fetch_add(1, Ordering::Relaxed);
                    });
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(total.load(Ordering::Relaxed), 3 * 500 * 2);
}

#[test]
fn nested_run_executes_inline() {
    let pool = ThreadPool::new(2);
    let inner = AtomicUsize::new(0);
    pool.run(&|_, _| {
        pool.run(&|_, _| {
            inner.fetch_add(1, Ordering::Relaxed);
        });
    });
    assert_eq!(inner.load(Ordering::Relaxed), 4);
}

#[test]
fn panics_propagate_and_pool_survives() {
    let pool = ThreadPool::new(2);
    for bad in [0usize, 1] {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&|i, _| {
                if i == bad {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err(), "panic on index {bad} was swallowed");
    }
    let hits = AtomicUsize::new(0);
    pool.run(&|_, _| {
        hits.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(hits.load(Ordering::Relaxed), 2);
}

#[test]
fn split_range_covers_everything_once() {
    for len in [0usize, 1, 7, 100] {
        for n in 1..5 {
            let mut next = 0;
            for i in 0..n {
                let r = split_range(len, i, n);
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, len);
        }
    }
}

#[test]
fn caller_parked_on_a_slow_worker_is_woken() {
    let pool = ThreadPool::new(2);
    let caller = std::thread::current().id();
    for _ in 0..20 {
        let started = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        pool.run(&|_, _| {
            // Both indices start before either finishes, so the worker holds one of them ...
            started.fetch_add(1, Ordering::SeqCst);
            let t = std::time::Instant::now();
            while started.load(Ordering::SeqCst) < 2 {
                assert!(t.elapsed().as_secs() < 20, "the worker never joined");
                std::thread::yield_now();
            }
            // ... and outlasts the caller's spin: the caller parks and must be woken.
            if std::thread::current().id() != caller {
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
            done.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(done.load(Ordering::SeqCst), 2);
    }
}
