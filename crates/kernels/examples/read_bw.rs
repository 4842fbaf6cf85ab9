//! The machine's read bandwidth: the wall a decode step hits, since it streams every weight
//! byte once. A plain read loop over a buffer far larger than the caches, split evenly over
//! 1..=threads threads, with 4 KiB pages and with 2 MiB transparent huge pages (kiln reads a
//! model that fits in memory into huge-page-advised memory: see kiln-formats' `resident`).
//!
//! cargo run --release -p kiln-kernels --example read_bw -- [threads] [MiB] [reps]
//!
//! Compare `kiln bench -n 128` × the weight bytes read per token (every matrix but the token
//! embedding, which decode only indexes) with the number printed here, on an idle machine.

use std::time::Instant;

const HUGE_PAGE: usize = 2 << 20;

/// Best GB/s over `reps` passes of `threads` threads each summing its share of `buf`.
fn read_rate(buf: &[u64], threads: usize, reps: usize) -> f64 {
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..reps {
        let t = Instant::now();
        let per = buf.len().div_ceil(threads);
        let sums: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(per)
                .map(|part| {
                    s.spawn(move || {
                        // eight independent sums, so the loads are not serialised on one add
                        let mut acc = [0u64; 8];
                        for c in part.chunks_exact(8) {
                            for (a, &v) in acc.iter_mut().zip(c) {
                                *a = a.wrapping_add(v);
                            }
                        }
                        acc.iter().fold(0u64, |x, &y| x.wrapping_add(y))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        best = best.min(t.elapsed().as_secs_f64());
        sink = sums.iter().fold(sink, |x, &y| x.wrapping_add(y));
    }
    std::hint::black_box(sink);
    std::mem::size_of_val(buf) as f64 / best / 1e9
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("read_bw: arguments are [threads] [MiB] [reps]")
        })
        .collect();
    let threads = args.first().copied().unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let mib = args.get(1).copied().unwrap_or(2048);
    let reps = args.get(2).copied().unwrap_or(8);
    let len = mib << 20;
    println!("{}", kiln_kernels::cpu_features());
    for huge in [false, true] {
        let mut map = memmap2::MmapMut::map_anon(len + HUGE_PAGE).expect("read_bw: no memory");
        #[cfg(target_os = "linux")]
        {
            let advice = if huge {
                memmap2::Advice::HugePage
            } else {
                memmap2::Advice::NoHugePage
            };
            let _ = map.advise(advice);
        }
        let start = map.as_ptr().align_offset(HUGE_PAGE).min(HUGE_PAGE);
        let bytes = &mut map[start..start + len];
        // written once, so that every page is really backed (untouched anonymous pages all
        // map the one zero page and read from the cache)
        bytes.fill(1);
        // SAFETY: the window is 2 MiB-aligned (so 8-aligned) and `len` is a multiple of 8.
        let words = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const u64, len / 8) };
        let pages = if huge { "2 MiB pages" } else { "4 KiB pages" };
        for t in 1..=threads {
            println!(
                "{mib} MiB, {pages}, {t} thread(s): {:.1} GB/s (best of {reps})",
                read_rate(words, t, reps)
            );
        }
    }
}
