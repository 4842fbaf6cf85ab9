//! Matrix products of a weight tensor with a batch of activation rows.
//!
//! The activations are quantised once per call (8-bit blocks matching the weight type, see
//! [`crate::dot`]); weight rows are then handed out to the pool's threads in chunks taken from
//! an atomic counter, so threads that run slower (a busy core) simply take fewer chunks and all
//! finish together. Decode (`n == 1`) streams every weight byte exactly once, in long runs of
//! rows per thread that shrink towards the end (guided scheduling). Prefill (`n > 1`)
//! walks a cache-sized chunk of rows across all tokens, so weights are read from memory once and
//! the loop is compute-bound; the types with an unpacked form (at most 5 bits, Q6_K, and on
//! AVX-512 Q8_0 and the IQ4 types) unpack the chunk once and multiply it 2 or 4 rows × 16
//! tokens at a time (see `drive_u8`), the others use 8-token tiles.

use crate::dot::{self, act_kind, ActKind, BlockU8, Isa};
use crate::interleave::{plain_rows, Layout};
use crate::pool::ThreadPool;
use crate::quant::{interleave8, quantize_q8_32, quantize_q8_k, BlockQ8K, BlockQ8_32, BlockQ8x8};
use crate::{DType, Tensor};
use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use crate::dot::dot_f32;

/// `out[t][r] = Σ_c w[r][c] · x[t][c]` for `n` activation rows `x` (row-major `n × cols`);
/// `out` is row-major `n × rows`. This is `x · wᵀ`, the shape of every linear layer.
pub fn matmul(pool: &ThreadPool, w: &Tensor, x: &[f32], n: usize, out: &mut [f32]) {
    matmul_with(Isa::best(), pool, w, x, n, out)
}

thread_local! {
    /// Quantised activations of the calling thread's last matmul, reused to avoid allocating.
    static SCRATCH: RefCell<Scratch> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// [`matmul`] with an explicit kernel level (for tests and benchmarks).
pub fn matmul_with(isa: Isa, pool: &ThreadPool, w: &Tensor, x: &[f32], n: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    assert_eq!(
        x.len(),
        n * cols,
        "matmul: activations are not {n} × {cols}"
    );
    assert_eq!(out.len(), n * rows, "matmul: output is not {n} × {rows}");
    if n == 0 || rows == 0 {
        return;
    }
    let dtype = w.dtype;
    let out = SendPtr(out.as_mut_ptr());
    match act_kind(dtype) {
        ActKind::F32 => {
            drive(
                pool,
                w,
                x,
                cols,
                out,
                &|wr, a, _| dot::dot_float_n(isa, dtype, wr, a),
                &|wr, a, _| dot::dot_float_n(isa, dtype, wr, a),
                None,
                None,
                None,
            );
        }
        ActKind::Q8_32 => with_scratch(|s| {
            let nb = cols / 32;
            let q = quantize_acts(pool, x, n, nb, &mut s.0, quantize_q8_32);
            if is_small_batch(n) {
                let grouped = w.layout == Layout::Rows4;
                return drive_small(
                    pool,
                    w,
                    q,
                    nb,
                    out,
                    &|w4, a, o| dot::dot_q8_32_rows4_n(isa, dtype, w4, grouped, a, o),
                    &|wr, a, _| dot::dot_q8_32_n(isa, dtype, wr, a),
                );
            }
            // Each group of 8 tokens, interleaved for the prefill tile: groups[g * nb + i].
            let n_groups = n / 8;
            s.2.resize(n_groups * nb, BlockQ8x8::default());
            let gptr = SendPtr(s.2.as_mut_ptr());
            let interleave = |i: usize, nt: usize| {
                for g in crate::pool::split_range(n_groups, i, nt) {
                    for b in 0..nb {
                        let v = interleave8(std::array::from_fn(|t| &q[(8 * g + t) * nb + b]));
                        // SAFETY: each group's blocks are written by exactly one thread.
                        unsafe { *gptr.get().add(g * nb + b) = v };
                    }
                }
            };
            if n_groups > 1 {
                pool.run(&interleave);
            } else {
                interleave(0, 1);
            }
            let groups = &s.2[..n_groups * nb];
            if n_groups >= 2 && dot::has_u8_tile(isa, dtype) {
                let tail = |wr: &[u8], t: usize| {
                    dot::dot_q8_32_n(isa, dtype, wr, [&q[t * nb..(t + 1) * nb]])[0]
                };
                return drive_u8(pool, isa, w, groups, n, out, &tail);
            }
            let rows4 = |w4: &[u8], a: &[BlockQ8_32]| dot::dot_q8_32_rows::<4>(isa, dtype, w4, a);
            // (drive hands this kernel the raw groups only when decoding)
            let groups4 = |w4: &[u8], a: &[BlockQ8_32]| dot::dot_q8_32_group4(isa, dtype, w4, a);
            drive(
                pool,
                w,
                q,
                cols / 32,
                out,
                &|wr, a, _| dot::dot_q8_32_n(isa, dtype, wr, a),
                &|wr, a, _| dot::dot_q8_32_n(isa, dtype, wr, a),
                Some(&|wr, a, t| {
                    dot::dot_q8_32_g8(isa, dtype, wr, &groups[t / 8 * nb..(t / 8 + 1) * nb], a)
                }),
                Some(if w.layout == Layout::Rows4 && n == 1 {
                    &groups4
                } else {
                    &rows4
                }),
                Some(&|w2, a, t| {
                    let g = &groups[t / 8 * nb..(t / 8 + 1) * nb];
                    dot::dot_q8_32_g8_rows::<2>(isa, dtype, w2, g, a)
                }),
            );
        }),
        ActKind::Q8K => with_scratch(|s| {
            let q = quantize_acts(pool, x, n, cols / 256, &mut s.1, quantize_q8_k);
            if is_small_batch(n) {
                let grouped = w.layout == Layout::Rows4;
                return drive_small(
                    pool,
                    w,
                    q,
                    cols / 256,
                    out,
                    &|w4, a, o| dot::dot_q8k_rows4_n(isa, dtype, w4, grouped, a, o),
                    &|wr, a, _| dot::dot_q8k_n(isa, dtype, wr, a),
                );
            }
            let n_groups = n / 8;
            if n_groups >= 2 && dot::has_u8_tile(isa, dtype) {
                // The 32-element sub-blocks of 8 tokens, interleaved: groups[g * nb + i].
                let nb = cols / 32;
                s.2.resize(n_groups * nb, BlockQ8x8::default());
                let gptr = SendPtr(s.2.as_mut_ptr());
                pool.run(&|i, nt| {
                    for g in crate::pool::split_range(n_groups, i, nt) {
                        for b in 0..nb {
                            let v = interleave8_k(
                                std::array::from_fn(|t| &q[(8 * g + t) * (nb / 8) + b / 8]),
                                b % 8,
                            );
                            // (some tiles take the activations offset: see dot::BlockU8)
                            let v = if dot::u8_offset_acts(dtype) {
                                v.offset_by_128()
                            } else {
                                v
                            };
                            // SAFETY: each group's blocks are written by exactly one thread.
                            unsafe { *gptr.get().add(g * nb + b) = v };
                        }
                    }
                });
                let per_row = cols / 256;
                let tail = |wr: &[u8], t: usize| {
                    dot::dot_q8k_n(isa, dtype, wr, [&q[t * per_row..(t + 1) * per_row]])[0]
                };
                return drive_u8(pool, isa, w, &s.2[..n_groups * nb], n, out, &tail);
            }
            // decode: 4 rows per pass where the type has such a kernel (Q4_K, Q5_K, Q6_K)
            let rows4 = |w4: &[u8], a: &[BlockQ8K]| dot::dot_q8k_rows::<4>(isa, dtype, w4, a);
            // (drive hands this kernel the raw groups only when decoding)
            let groups4 = |w4: &[u8], a: &[BlockQ8K]| dot::dot_q8k_group4(isa, dtype, w4, a);
            let grouped = w.layout == Layout::Rows4 && n == 1;
            drive(
                pool,
                w,
                q,
                cols / 256,
                out,
                &|wr, a, _| dot::dot_q8k_n(isa, dtype, wr, a),
                &|wr, a, _| dot::dot_q8k_n(isa, dtype, wr, a),
                Some(&|wr, a, _| dot::dot_q8k_x8(isa, dtype, wr, a)),
                if grouped {
                    Some(&groups4)
                } else {
                    dot::has_q8k_rows(isa, dtype).then_some(&rows4 as RowsKernel<BlockQ8K>)
                },
                None,
            );
        }),
    }
}

/// Quantised activations (32-element and k-quant blocks) and the interleaved 8-token groups.
type Scratch = (Vec<BlockQ8_32>, Vec<BlockQ8K>, Vec<BlockQ8x8>);

fn with_scratch(f: impl FnOnce(&mut Scratch)) {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        // Re-entered (a matmul inside a matmul's closure): use a fresh buffer.
        Err(_) => f(&mut (Vec::new(), Vec::new(), Vec::new())),
    })
}

/// Quantises the `n` rows of `x` into `buf` (grown as needed), in parallel over tokens.
fn quantize_acts<'a, B: Copy + Default + Send + Sync>(
    pool: &ThreadPool,
    x: &[f32],
    n: usize,
    blocks_per_row: usize,
    buf: &'a mut Vec<B>,
    quantize: fn(&[f32], &mut [B]),
) -> &'a [B] {
    let total = n * blocks_per_row;
    if buf.len() < total {
        buf.resize(total, B::default());
    }
    let cols = x.len() / n;
    if n == 1 || pool.n_threads() == 1 {
        quantize(x, &mut buf[..total]);
    } else {
        let ptr = SendPtr(buf.as_mut_ptr());
        pool.run(&|i, nt| {
            for t in crate::pool::split_range(n, i, nt) {
                // SAFETY: each token's blocks are written by exactly one thread.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        ptr.get().add(t * blocks_per_row),
                        blocks_per_row,
                    )
                };
                quantize(&x[t * cols..(t + 1) * cols], dst);
            }
        });
    }
    &buf[..total]
}

/// A dot kernel: (weight row, `N` activation rows, index of the first of those tokens).
type Kernel<'k, T, const N: usize> = &'k (dyn Fn(&[u8], [&[T]; N], usize) -> [f32; N] + Sync);

/// A decode kernel: (4 weight rows back to back, one activation row).
type RowsKernel<'k, T> = &'k (dyn Fn(&[u8], &[T]) -> [f32; 4] + Sync);

/// A prefill kernel over 2 weight rows: (2 rows back to back, 8 activation rows, first token).
type Tile2Kernel<'k, T> = &'k (dyn Fn(&[u8], [&[T]; 8], usize) -> [[f32; 8]; 2] + Sync);

thread_local! {
    /// The calling thread's chunk of weight rows taken out of an interleaved layout.
    static PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Hands out chunks of rows to the pool; within a chunk, tokens go 8 at a time (when there is
/// an 8-token kernel), then 4, then one by one (4 rows at a time when there is a rows kernel).
/// `acts` holds the activation rows back to back, `per_row` items each. Weights in an
/// interleaved layout go to `k1r4` as they are when decoding (it must be that layout's
/// kernel); otherwise each chunk is first taken apart into plain rows, once for all tokens.
#[allow(clippy::too_many_arguments)]
fn drive<T: Sync>(
    pool: &ThreadPool,
    w: &Tensor,
    acts: &[T],
    per_row: usize,
    out: SendPtr<f32>,
    k1: Kernel<T, 1>,
    k4: Kernel<T, 4>,
    k8: Option<Kernel<T, 8>>,
    k1r4: Option<RowsKernel<T>>,
    k8r2: Option<Tile2Kernel<T>>,
) {
    let rows = w.rows();
    let n = acts.len() / per_row;
    let act = |t: usize| &acts[t * per_row..(t + 1) * per_row];
    let row_bytes = w.row_bytes().max(1);
    // Decode claims guided runs of rows (`claim_guided`). Prefill: a chunk of rows whose
    // weights stay in L2 (~128 KiB) while every token passes over it.
    let chunk = (128 * 1024 / row_bytes).clamp(4, 64) & !3;
    let n_chunks = rows.div_ceil(chunk);
    let next = AtomicUsize::new(0);
    let nt = pool.n_threads();
    let bytes = w.data.bytes();
    assert!(
        w.layout == Layout::Plain || n > 1 || k1r4.is_some(),
        "matmul: no decode kernel for the {:?} layout",
        w.layout
    );
    let work = |_: usize, _: usize| {
        PLAIN.with(|buf| loop {
            let r_range = if n == 1 {
                match claim_guided(&next, rows, nt) {
                    Some(r) => r,
                    None => break,
                }
            } else {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= n_chunks {
                    break;
                }
                c * chunk..((c + 1) * chunk).min(rows)
            };
            let mut buf = buf.borrow_mut();
            let (chunk_bytes, base) = if w.layout == Layout::Plain || n == 1 {
                (bytes, 0)
            } else {
                let (r0, r1) = (r_range.start, r_range.end);
                (
                    plain_rows(w.layout, w.dtype, w.cols(), bytes, r0, r1, &mut buf),
                    r0,
                )
            };
            // `k` rows from row `r`, from the chunk's bytes
            let rows_at = |r: usize, k: usize| {
                &chunk_bytes[(r - base) * row_bytes..(r - base + k) * row_bytes]
            };
            // Runs kernel `$k` on tokens `t..t + $n` for every row of the chunk.
            macro_rules! tile {
                ($k:expr, $n:literal, $t:expr) => {{
                    let t0 = $t;
                    let a: [&[T]; $n] = std::array::from_fn(|k| act(t0 + k));
                    for r in r_range.clone() {
                        let v = $k(rows_at(r, 1), a, t0);
                        for (k, &v) in v.iter().enumerate() {
                            // SAFETY: every (token, row) pair is computed by exactly one chunk.
                            unsafe { *out.get().add((t0 + k) * rows + r) = v };
                        }
                    }
                }};
            }
            let mut t = 0;
            if let Some(k8) = k8 {
                while t + 8 <= n {
                    match k8r2 {
                        Some(k8r2) => {
                            let a: [&[T]; 8] = std::array::from_fn(|k| act(t + k));
                            let mut r = r_range.start;
                            while r + 2 <= r_range.end {
                                let v = k8r2(rows_at(r, 2), a, t);
                                for (dr, vr) in v.iter().enumerate() {
                                    for (k, &v) in vr.iter().enumerate() {
                                        // SAFETY: every (token, row) pair is computed by exactly
                                        // one chunk.
                                        unsafe { *out.get().add((t + k) * rows + r + dr) = v };
                                    }
                                }
                                r += 2;
                            }
                            for r in r..r_range.end {
                                let v = k8(rows_at(r, 1), a, t);
                                for (k, &v) in v.iter().enumerate() {
                                    // SAFETY: as above.
                                    unsafe { *out.get().add((t + k) * rows + r) = v };
                                }
                            }
                        }
                        None => tile!(k8, 8, t),
                    }
                    t += 8;
                }
            }
            while t + 4 <= n {
                tile!(k4, 4, t);
                t += 4;
            }
            while t < n {
                let mut r = r_range.start;
                if let Some(k1r4) = k1r4 {
                    let a = act(t);
                    while r + 4 <= r_range.end {
                        let v = k1r4(rows_at(r, 4), a);
                        for (k, &v) in v.iter().enumerate() {
                            // SAFETY: every (token, row) pair is computed by exactly one chunk.
                            unsafe { *out.get().add(t * rows + r + k) = v };
                        }
                        r += 4;
                    }
                }
                let a = [act(t)];
                for r in r..r_range.end {
                    let v = k1(rows_at(r, 1), a, t);
                    // SAFETY: as above.
                    unsafe { *out.get().add(t * rows + r) = v[0] };
                }
                t += 1;
            }
        })
    };
    if rows * n * w.cols() < 32 * 1024 {
        work(0, 1); // too small to be worth waking the pool
    } else {
        pool.run(&work);
    }
}

/// Whether `n` tokens go through [`drive_small`]: the 2–15 tokens of a speculative
/// verification (from 16 on, the prefill tiles take over).
fn is_small_batch(n: usize) -> bool {
    (2..16).contains(&n)
}

/// A small-batch kernel: (one 4-row decode group, the tokens' activation rows, one output per
/// token).
type SmallKernel<'k, T> = &'k (dyn Fn(&[u8], &[&[T]], &mut [[f32; 4]]) + Sync);

/// Small batches (2–15 tokens, [`is_small_batch`]) of the quant types: scheduled like decode
/// (guided runs of 4-row groups, read straight from the tensor's layout), each group
/// multiplied with all the tokens by `k4` while its bytes are in L1, so the weights stream
/// from memory once, as for one token. `k4` must be bit-identical, token by token, to the
/// decode kernel (batch invariance); the last `rows % 4` rows take `k1`, as decode does.
fn drive_small<T: Sync>(
    pool: &ThreadPool,
    w: &Tensor,
    acts: &[T],
    per_row: usize,
    out: SendPtr<f32>,
    k4: SmallKernel<T>,
    k1: Kernel<T, 1>,
) {
    let rows = w.rows();
    let n = acts.len() / per_row;
    assert!(n <= dot::SMALL_BATCH_MAX, "drive_small: {n} tokens");
    let empty: &[T] = &[];
    let a: [&[T]; dot::SMALL_BATCH_MAX] = std::array::from_fn(|t| {
        if t < n {
            &acts[t * per_row..(t + 1) * per_row]
        } else {
            empty
        }
    });
    let a = &a[..n];
    let row_bytes = w.row_bytes();
    let bytes = w.data.bytes();
    let next = AtomicUsize::new(0);
    let nt = pool.n_threads();
    let work = |_: usize, _: usize| {
        let mut res = [[0.0f32; 4]; dot::SMALL_BATCH_MAX];
        while let Some(run) = claim_guided(&next, rows, nt) {
            let mut r = run.start;
            while r + 4 <= run.end {
                k4(&bytes[r * row_bytes..(r + 4) * row_bytes], a, &mut res[..n]);
                for (t, v) in res[..n].iter().enumerate() {
                    for (k, &v) in v.iter().enumerate() {
                        // SAFETY: every (token, row) pair is computed by exactly one run.
                        unsafe { *out.get().add(t * rows + r + k) = v };
                    }
                }
                r += 4;
            }
            for r in r..run.end {
                let wr = &bytes[r * row_bytes..(r + 1) * row_bytes];
                for (t, &at) in a.iter().enumerate() {
                    let v = k1(wr, [at], t)[0];
                    // SAFETY: as above.
                    unsafe { *out.get().add(t * rows + r) = v };
                }
            }
        }
    };
    if rows * n * w.cols() < 32 * 1024 {
        work(0, 1); // too small to be worth waking the pool
    } else {
        pool.run(&work);
    }
}

/// Claims the next rows of a decode matmul from `next` (the first unclaimed row): a share
/// of what is left that shrinks as the work runs out (guided scheduling). Decode is a stream
/// from memory, and long contiguous runs per thread keep the hardware prefetcher going (a
/// new stream has to be picked up at every jump); the small last runs let a thread that
/// was slowed down finish with the other. Runs are whole 4-row groups.
fn claim_guided(next: &AtomicUsize, rows: usize, n_threads: usize) -> Option<Range<usize>> {
    let mut cur = next.load(Ordering::Relaxed);
    loop {
        if cur >= rows {
            return None;
        }
        let size = ((rows - cur) / (2 * n_threads)).max(16).next_multiple_of(4);
        let end = (cur + size).min(rows);
        match next.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(cur..end),
            Err(now) => cur = now,
        }
    }
}

/// Sub-block `j` (32 elements) of 8 tokens' k-quant activation blocks, interleaved like
/// [`interleave8`]; every sub-block of a super-block shares its scale `d`.
fn interleave8_k(a: [&BlockQ8K; 8], j: usize) -> BlockQ8x8 {
    let mut o = BlockQ8x8::default();
    for (t, b) in a.iter().enumerate() {
        let qs = &b.qs[32 * j..32 * j + 32];
        for k in 0..8 {
            o.qs[32 * k + 4 * t..32 * k + 4 * t + 4].copy_from_slice(&[
                qs[4 * k],
                qs[4 * k + 1],
                qs[4 * k + 2],
                qs[4 * k + 3],
            ]);
        }
        let sum: i32 = qs.iter().map(|&v| v as i32).sum();
        o.d[t] = b.d;
        o.s[t] = b.d * sum as f32;
        o.sum[t] = sum;
    }
    o
}

thread_local! {
    /// The calling thread's unpacked chunk of weight rows (see `drive_u8`).
    static UNPACKED: RefCell<Vec<BlockU8>> = const { RefCell::new(Vec::new()) };
}

/// Prefill for the types with an unpacked form (`dot::has_u8_tile`): each thread unpacks a chunk
/// of rows once ([`BlockU8`]) and multiplies it with every 8-token group, two groups per pass
/// where it can (`dot::dot_u8_g16_rows_to`); leftover tokens use `tail`, the plain one-token
/// kernel on the packed rows.
fn drive_u8(
    pool: &ThreadPool,
    isa: Isa,
    w: &Tensor,
    groups: &[BlockQ8x8],
    n: usize,
    out: SendPtr<f32>,
    tail: &(dyn Fn(&[u8], usize) -> f32 + Sync),
) {
    let (rows, dtype) = (w.rows(), w.dtype);
    let nb = groups.len() / (n / 8);
    let row_bytes = w.row_bytes();
    let bytes = w.data.bytes();
    let n_groups = n / 8;
    // Unpacked rows that stay in L2 while every group passes over them.
    let chunk = (96 * 1024 / (nb * std::mem::size_of::<BlockU8>())).clamp(4, 64) & !3;
    let n_chunks = rows.div_ceil(chunk);
    let next = AtomicUsize::new(0);
    let work = |_: usize, _: usize| {
        UNPACKED.with(|u| {
            let mut u = u.borrow_mut();
            u.resize(chunk * nb, BlockU8::default());
            let mut plain = PLAIN.with(|p| std::mem::take(&mut *p.borrow_mut()));
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= n_chunks {
                    break;
                }
                let (r0, r1) = (c * chunk, ((c + 1) * chunk).min(rows));
                // Q5_0 groups unpack straight from their layout (its high bits take some
                // undoing); only the leftover tokens need the plain rows.
                let direct = w.layout == Layout::Rows4 && dtype == DType::Q5_0 && n % 8 == 0;
                let chunk_bytes = if direct {
                    &bytes[r0 * row_bytes..r1 * row_bytes]
                } else {
                    plain_rows(w.layout, dtype, w.cols(), bytes, r0, r1, &mut plain)
                };
                let row = |r: usize| &chunk_bytes[(r - r0) * row_bytes..(r - r0 + 1) * row_bytes];
                let mut r = r0;
                if direct {
                    // whole groups (`r0` starts one); the matrix's last rows % 4 are plain
                    while r + 4 <= r1.min(rows / 4 * 4) {
                        let k = r - r0;
                        let group = &chunk_bytes[k * row_bytes..(k + 4) * row_bytes];
                        dot::repack_u8_q5_0_group(isa, group, &mut u[k * nb..(k + 4) * nb]);
                        r += 4;
                    }
                }
                for r in r..r1 {
                    let k = r - r0;
                    dot::repack_u8(isa, dtype, row(r), &mut u[k * nb..(k + 1) * nb]);
                }
                // Copied out of the captures: a store through `out` could alias them, so they
                // would be reloaded for each of the tiles' 32 stores.
                let (o, stride) = (out.get(), rows);
                // SAFETY (all writes below): every (token, row) pair is computed by exactly
                // one chunk.
                let put = move |t: usize, r: usize, v: f32| unsafe { *o.add(t * stride + r) = v };
                let group = |gi: usize| &groups[gi * nb..(gi + 1) * nb];
                // Two groups at a time (one weight broadcast serves 16 tokens), then the last
                // odd group alone; two rows per pass, then the last odd row.
                let mut gi = 0;
                // AVX-512 has the registers for 4 rows × 16 tokens, which halves the
                // activation loads per multiply (results are the same whatever the row count)
                let wide = isa == Isa::Avx512;
                while gi + 2 <= n_groups {
                    let g = [group(gi), group(gi + 1)];
                    let mut r = r0;
                    while r < r1 {
                        let k = r - r0;
                        // SAFETY (all): tokens 8gi.. 8gi + 16 × rows r (to r + 3) of `out`,
                        // which only this chunk writes.
                        let o = unsafe { o.add(8 * gi * stride + r) };
                        if wide && r + 4 <= r1 {
                            let w4 = &u[k * nb..(k + 4) * nb];
                            unsafe { dot::dot_u8_g16_rows_to::<4>(isa, dtype, w4, g, o, stride) };
                            r += 4;
                        } else if r + 2 <= r1 {
                            let w2 = &u[k * nb..(k + 2) * nb];
                            unsafe { dot::dot_u8_g16_rows_to::<2>(isa, dtype, w2, g, o, stride) };
                            r += 2;
                        } else {
                            let w1 = &u[k * nb..(k + 1) * nb];
                            unsafe { dot::dot_u8_g16_rows_to::<1>(isa, dtype, w1, g, o, stride) };
                            r += 1;
                        }
                    }
                    gi += 2;
                }
                for gi in gi..n_groups {
                    let g = group(gi);
                    // Runs the `$r`-row kernel on rows `r..r + $r` while they fit the chunk.
                    macro_rules! rows {
                        ($r:literal, $row:ident) => {
                            while r1 - $row >= $r {
                                let k = $row - r0;
                                let v = dot::dot_u8_g8_rows::<$r>(
                                    isa,
                                    dtype,
                                    &u[k * nb..(k + $r) * nb],
                                    g,
                                );
                                for (dr, vr) in v.iter().enumerate() {
                                    for (t, &x) in vr.iter().enumerate() {
                                        put(8 * gi + t, $row + dr, x);
                                    }
                                }
                                $row += $r;
                            }
                        };
                    }
                    let mut r = r0;
                    rows!(2, r);
                    rows!(1, r);
                }
                for t in 8 * n_groups..n {
                    for r in r0..r1 {
                        put(t, r, tail(row(r), t));
                    }
                }
            }
            PLAIN.with(|p| *p.borrow_mut() = plain);
        })
    };
    pool.run(&work);
}

/// Dequantises the whole of `w` and multiplies in f32: the slow reference `matmul` is tested
/// against.
pub fn matmul_reference(w: &Tensor, x: &[f32], n: usize) -> Vec<f32> {
    let (rows, cols) = (w.rows(), w.cols());
    let wf = w.to_f32_vec();
    let mut out = vec![0.0; n * rows];
    for t in 0..n {
        for r in 0..rows {
            let wr = &wf[r * cols..(r + 1) * cols];
            let xr = &x[t * cols..(t + 1) * cols];
            out[t * rows + r] = wr
                .iter()
                .zip(xr)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum::<f64>() as f32;
        }
    }
    out
}

/// A raw pointer that may cross threads: used only for disjoint writes.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    pub fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guided runs cover every row once, start on 4-row groups, shrink as the work runs out,
    /// and end small enough for the threads to finish together.
    #[test]
    fn guided_runs_cover_every_row_once_in_shrinking_4_row_groups() {
        for (rows, threads) in [(151936, 2), (896, 2), (37, 2), (4, 1), (300, 3), (0, 2)] {
            let next = AtomicUsize::new(0);
            let mut runs = Vec::new();
            while let Some(r) = claim_guided(&next, rows, threads) {
                runs.push(r);
            }
            let mut at = 0;
            for r in &runs {
                assert_eq!(r.start, at, "{rows} rows: runs must be contiguous");
                assert_eq!(r.start % 4, 0, "{rows} rows: run starts mid-group");
                assert!(!r.is_empty());
                at = r.end;
            }
            assert_eq!(at, rows, "{rows} rows: not all covered");
            for w in runs.windows(2) {
                assert!(w[1].len() <= w[0].len(), "{rows} rows: a run grew");
            }
            if let Some(last) = runs.last() {
                assert!(last.len() <= 16, "{rows} rows: last run {}", last.len());
            }
        }
    }
}
