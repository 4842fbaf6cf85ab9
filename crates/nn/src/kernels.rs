//! The three products a mini-batch needs, written once over a tiny SIMD abstraction and
//! instantiated for AVX2+FMA (chosen at run time) and for a portable fallback, plus plain
//! scalar references that the parity tests compare both against.
//!
//! Shapes (all row-major): a weight matrix `w` is `n × k` (rows = output neurons), a batch of
//! `m` input rows is addressed by offsets `offs[i]` into a flat slice `x` (so the first layer
//! reads the training set in place, in shuffled order, without copying).

// Register-blocked micro-kernels index small fixed-size arrays by row and column on purpose.
#![allow(clippy::needless_range_loop)]

/// SIMD lane operations used by the kernels. Every method is `unsafe` because the vector
/// implementations need a CPU feature that the caller has verified at run time.
pub(crate) trait Simd {
    type E: Copy;
    type V: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(e: Self::E) -> Self::V;
    unsafe fn load(p: *const Self::E) -> Self::V;
    unsafe fn store(p: *mut Self::E, v: Self::V);
    /// `a * b + c`
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> Self::E;
    fn e_fma(a: Self::E, b: Self::E, c: Self::E) -> Self::E;
    fn e_mul(a: Self::E, b: Self::E) -> Self::E;
}

/// Portable fallback: eight lanes as a plain array, which the compiler vectorises for the
/// baseline target (SSE2 on x86-64, NEON on aarch64). Multiply and add stay separate.
macro_rules! portable {
    ($name:ident, $e:ty) => {
        pub(crate) struct $name;
        impl Simd for $name {
            type E = $e;
            type V = [$e; 8];
            const LANES: usize = 8;
            #[inline(always)]
            unsafe fn zero() -> [$e; 8] {
                [0.0; 8]
            }
            #[inline(always)]
            unsafe fn splat(e: $e) -> [$e; 8] {
                [e; 8]
            }
            #[inline(always)]
            unsafe fn load(p: *const $e) -> [$e; 8] {
                std::ptr::read_unaligned(p as *const [$e; 8])
            }
            #[inline(always)]
            unsafe fn store(p: *mut $e, v: [$e; 8]) {
                std::ptr::write_unaligned(p as *mut [$e; 8], v)
            }
            #[inline(always)]
            unsafe fn fma(a: [$e; 8], b: [$e; 8], c: [$e; 8]) -> [$e; 8] {
                let mut r = c;
                for l in 0..8 {
                    r[l] = a[l] * b[l] + c[l];
                }
                r
            }
            #[inline(always)]
            unsafe fn mul(a: [$e; 8], b: [$e; 8]) -> [$e; 8] {
                let mut r = a;
                for l in 0..8 {
                    r[l] = a[l] * b[l];
                }
                r
            }
            #[inline(always)]
            unsafe fn hsum(v: [$e; 8]) -> $e {
                ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
            }
            #[inline(always)]
            fn e_fma(a: $e, b: $e, c: $e) -> $e {
                a * b + c
            }
            #[inline(always)]
            fn e_mul(a: $e, b: $e) -> $e {
                a * b
            }
        }
    };
}
portable!(PortableF32, f32);
portable!(PortableF64, f64);

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Simd;
    use std::arch::x86_64::*;

    pub(crate) struct Avx2F32;
    impl Simd for Avx2F32 {
        type E = f32;
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(e: f32) -> __m256 {
            _mm256_set1_ps(e)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        fn e_fma(a: f32, b: f32, c: f32) -> f32 {
            a.mul_add(b, c)
        }
        #[inline(always)]
        fn e_mul(a: f32, b: f32) -> f32 {
            a * b
        }
    }

    pub(crate) struct Avx2F64;
    impl Simd for Avx2F64 {
        type E = f64;
        type V = __m256d;
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> __m256d {
            _mm256_setzero_pd()
        }
        #[inline(always)]
        unsafe fn splat(e: f64) -> __m256d {
            _mm256_set1_pd(e)
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> __m256d {
            _mm256_loadu_pd(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f64, v: __m256d) {
            _mm256_storeu_pd(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256d, b: __m256d, c: __m256d) -> __m256d {
            _mm256_fmadd_pd(a, b, c)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256d, b: __m256d) -> __m256d {
            _mm256_mul_pd(a, b)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m256d) -> f64 {
            let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
            let s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
            _mm_cvtsd_f64(s)
        }
        #[inline(always)]
        fn e_fma(a: f64, b: f64, c: f64) -> f64 {
            a.mul_add(b, c)
        }
        #[inline(always)]
        fn e_mul(a: f64, b: f64) -> f64 {
            a * b
        }
    }
}

/// Bytes of one input row processed per tile: a tile of all weight rows and of the batch rows
/// then stays in the L1 cache while it is reused.
const TILE_BYTES: usize = 512;

#[inline(always)]
fn tile_len<S: Simd>() -> usize {
    (TILE_BYTES / std::mem::size_of::<S::E>()).max(S::LANES)
}

thread_local! {
    /// Per-thread scratch for the forward product's vector partial sums (grows, never shrinks).
    static PARTIALS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Forward product micro-kernel over one k-tile `[t0, t1)`: `R` weight rows against `C` input
/// rows, `R*C` vector partial sums kept in registers and carried between tiles in `part`
/// (`part[(c*n + r) * LANES ..]`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn nt_block<S: Simd, const R: usize, const C: usize>(
    w: *const S::E,
    k: usize,
    x: *const S::E,
    offs: &[usize],
    t0: usize,
    t1: usize,
    part: *mut S::E,
    n: usize,
    first: bool,
) {
    let mut acc = [[S::zero(); C]; R];
    if !first {
        for r in 0..R {
            for c in 0..C {
                acc[r][c] = S::load(part.add((c * n + r) * S::LANES));
            }
        }
    }
    let mut xp = [x; C];
    for c in 0..C {
        xp[c] = x.add(offs[c]);
    }
    let mut kk = t0;
    while kk < t1 {
        let mut xv = [S::zero(); C];
        for c in 0..C {
            xv[c] = S::load(xp[c].add(kk));
        }
        for r in 0..R {
            let wv = S::load(w.add(r * k + kk));
            for c in 0..C {
                acc[r][c] = S::fma(wv, xv[c], acc[r][c]);
            }
        }
        kk += S::LANES;
    }
    for r in 0..R {
        for c in 0..C {
            S::store(part.add((c * n + r) * S::LANES), acc[r][c]);
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn nt_rows<S: Simd, const R: usize>(
    w: *const S::E,
    k: usize,
    x: *const S::E,
    offs: &[usize],
    t0: usize,
    t1: usize,
    part: *mut S::E,
    n: usize,
    first: bool,
) {
    let m = offs.len();
    // blocks of 3 rows; a remainder of 1 becomes 2 + 2 (a 1-row block reuses each weight load
    // only once)
    let threes = if m % 3 == 1 && m >= 4 {
        m / 3 - 1
    } else {
        m / 3
    };
    let mut i = 0;
    while i < threes * 3 {
        let p = part.add(i * n * S::LANES);
        nt_block::<S, R, 3>(w, k, x, &offs[i..], t0, t1, p, n, first);
        i += 3;
    }
    while i + 2 <= m {
        let p = part.add(i * n * S::LANES);
        nt_block::<S, R, 2>(w, k, x, &offs[i..], t0, t1, p, n, first);
        i += 2;
    }
    if i < m {
        let p = part.add(i * n * S::LANES);
        nt_block::<S, R, 1>(w, k, x, &offs[i..], t0, t1, p, n, first);
    }
}

/// `out[i*n + j] = bias[j] + Σ_t w[j*k + t] * x[offs[i] + t]` for `j < n`, `i < offs.len()`,
/// tiled over `t` so that the weights are read from L2 once per call.
#[inline(always)]
unsafe fn nt_generic<S: Simd>(
    w: &[S::E],
    n: usize,
    k: usize,
    bias: &[S::E],
    x: &[S::E],
    offs: &[usize],
    out: &mut [S::E],
) where
    S::E: std::ops::Add<Output = S::E>,
{
    let m = offs.len();
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let kv = k - k % S::LANES;
    let kt = tile_len::<S>();
    let need = (m * n * S::LANES * std::mem::size_of::<S::E>()).div_ceil(8);
    // The buffer is only touched by this function on this thread and is not resized while
    // `part` is in use (no re-entry), so the pointer stays valid for the whole call.
    let part = PARTIALS.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        buf.as_mut_ptr() as *mut S::E
    });
    {
        if kv == 0 {
            for v in 0..m * n {
                S::store(part.add(v * S::LANES), S::zero());
            }
        }
        let mut t0 = 0;
        while t0 < kv {
            let t1 = (t0 + kt).min(kv);
            let first = t0 == 0;
            let mut j = 0;
            while j + 3 <= n {
                nt_rows::<S, 3>(
                    wp.add(j * k),
                    k,
                    xp,
                    offs,
                    t0,
                    t1,
                    part.add(j * S::LANES),
                    n,
                    first,
                );
                j += 3;
            }
            while j < n {
                nt_rows::<S, 1>(
                    wp.add(j * k),
                    k,
                    xp,
                    offs,
                    t0,
                    t1,
                    part.add(j * S::LANES),
                    n,
                    first,
                );
                j += 1;
            }
            t0 = t1;
        }
        for (i, &o) in offs.iter().enumerate() {
            for j in 0..n {
                let mut s = S::hsum(S::load(part.add((i * n + j) * S::LANES)));
                for t in kv..k {
                    s = S::e_fma(*wp.add(j * k + t), *xp.add(o + t), s);
                }
                *out.get_unchecked_mut(i * n + j) = s + *bias.get_unchecked(j);
            }
        }
    }
}

/// Weight update micro-kernel: `R` rows × `CH` vector chunks of `w` held in registers while the
/// `m` input rows stream past.
#[inline(always)]
unsafe fn upd_block<S: Simd, const R: usize, const CH: usize>(
    w: *mut S::E,
    k: usize,
    decay: S::V,
    coef: *const S::E,
    m: usize,
    xp: &[*const S::E],
    kk: usize,
) {
    let mut acc = [[S::zero(); CH]; R];
    for r in 0..R {
        for c in 0..CH {
            acc[r][c] = S::mul(decay, S::load(w.add(r * k + kk + c * S::LANES)));
        }
    }
    for (i, x) in xp.iter().enumerate() {
        let mut cv = [S::zero(); R];
        for r in 0..R {
            cv[r] = S::splat(*coef.add(r * m + i));
        }
        for c in 0..CH {
            let xv = S::load(x.add(kk + c * S::LANES));
            for r in 0..R {
                acc[r][c] = S::fma(cv[r], xv, acc[r][c]);
            }
        }
    }
    for r in 0..R {
        for c in 0..CH {
            S::store(w.add(r * k + kk + c * S::LANES), acc[r][c]);
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn upd_rows<S: Simd, const R: usize>(
    w: *mut S::E,
    k: usize,
    dv: S::V,
    coef: *const S::E,
    m: usize,
    xp: &[*const S::E],
    t0: usize,
    t1: usize,
) {
    const CH: usize = 3;
    let step = CH * S::LANES;
    let mut kk = t0;
    while kk + step <= t1 {
        upd_block::<S, R, CH>(w, k, dv, coef, m, xp, kk);
        kk += step;
    }
    while kk < t1 {
        upd_block::<S, R, 1>(w, k, dv, coef, m, xp, kk);
        kk += S::LANES;
    }
}

/// Most input rows in one call of the update kernel (larger batches are done in slices).
const UPD_MAX_ROWS: usize = 64;

/// `w[j*k + t] = decay * w[j*k + t] + Σ_i coef[j*m + i] * x[offs[i] + t]`, `m = offs.len()`.
#[inline(always)]
unsafe fn update_generic<S: Simd>(
    w: &mut [S::E],
    n: usize,
    k: usize,
    decay: S::E,
    coef: &[S::E],
    x: &[S::E],
    offs: &[usize],
) {
    let m = offs.len();
    let xb = x.as_ptr();
    let mut ptrs = [xb; UPD_MAX_ROWS];
    for (p, &o) in ptrs.iter_mut().zip(offs) {
        *p = xb.add(o);
    }
    let xp = &ptrs[..m];
    let (wp, cp) = (w.as_mut_ptr(), coef.as_ptr());
    let kv = k - k % S::LANES;
    let kt = tile_len::<S>();
    let dv = S::splat(decay);
    let mut t0 = 0;
    while t0 < kv {
        let t1 = (t0 + kt).min(kv);
        let mut j = 0;
        while j + 3 <= n {
            upd_rows::<S, 3>(wp.add(j * k), k, dv, cp.add(j * m), m, xp, t0, t1);
            j += 3;
        }
        while j < n {
            upd_rows::<S, 1>(wp.add(j * k), k, dv, cp.add(j * m), m, xp, t0, t1);
            j += 1;
        }
        t0 = t1;
    }
    for j in 0..n {
        for t in kv..k {
            let p = wp.add(j * k + t);
            let mut s = S::e_mul(decay, *p);
            for (i, x) in xp.iter().enumerate() {
                s = S::e_fma(*cp.add(j * m + i), *x.add(t), s);
            }
            *p = s;
        }
    }
}

/// The fused step of a layer: the weight update of the current mini-batch
/// (`w = decay*w + Σ_i coef[j*mu + i] * xu[offs_u[i] + t]`) followed by the forward product of
/// the next mini-batch with the updated weights (`out[i*n + j] = bias[j] + Σ_t w[j*k + t] *
/// xf[offs_f[i] + t]`), tile by tile so that each tile of `w` is loaded from L2 once for both.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn fused_generic<S: Simd>(
    w: &mut [S::E],
    n: usize,
    k: usize,
    decay: S::E,
    coef: &[S::E],
    xu: &[S::E],
    offs_u: &[usize],
    bias: &[S::E],
    xf: &[S::E],
    offs_f: &[usize],
    out: &mut [S::E],
) where
    S::E: std::ops::Add<Output = S::E>,
{
    let mu = offs_u.len();
    let mf = offs_f.len();
    let xb = xu.as_ptr();
    let mut ptrs = [xb; UPD_MAX_ROWS];
    for (p, &o) in ptrs.iter_mut().zip(offs_u) {
        *p = xb.add(o);
    }
    let xp = &ptrs[..mu];
    let (wp, cp, fp) = (w.as_mut_ptr(), coef.as_ptr(), xf.as_ptr());
    let kv = k - k % S::LANES;
    let kt = tile_len::<S>();
    let dv = S::splat(decay);
    let need = (mf * n * S::LANES * std::mem::size_of::<S::E>()).div_ceil(8);
    // See nt_generic: the per-thread buffer is not resized while `part` is in use.
    let part = PARTIALS.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        buf.as_mut_ptr() as *mut S::E
    });
    if kv == 0 {
        for v in 0..mf * n {
            S::store(part.add(v * S::LANES), S::zero());
        }
    }
    let mut t0 = 0;
    while t0 < kv {
        let t1 = (t0 + kt).min(kv);
        let first = t0 == 0;
        let mut j = 0;
        while j + 3 <= n {
            let wj = wp.add(j * k);
            upd_rows::<S, 3>(wj, k, dv, cp.add(j * mu), mu, xp, t0, t1);
            nt_rows::<S, 3>(wj, k, fp, offs_f, t0, t1, part.add(j * S::LANES), n, first);
            j += 3;
        }
        while j < n {
            let wj = wp.add(j * k);
            upd_rows::<S, 1>(wj, k, dv, cp.add(j * mu), mu, xp, t0, t1);
            nt_rows::<S, 1>(wj, k, fp, offs_f, t0, t1, part.add(j * S::LANES), n, first);
            j += 1;
        }
        t0 = t1;
    }
    for j in 0..n {
        for t in kv..k {
            let p = wp.add(j * k + t);
            let mut s = S::e_mul(decay, *p);
            for (i, x) in xp.iter().enumerate() {
                s = S::e_fma(*cp.add(j * mu + i), *x.add(t), s);
            }
            *p = s;
        }
    }
    for (i, &o) in offs_f.iter().enumerate() {
        for j in 0..n {
            let mut s = S::hsum(S::load(part.add((i * n + j) * S::LANES)));
            for t in kv..k {
                s = S::e_fma(*wp.add(j * k + t), *fp.add(o + t), s);
            }
            *out.get_unchecked_mut(i * n + j) = s + *bias.get_unchecked(j);
        }
    }
}

/// `dst[i] = src[i] / 256` (MNIST pixels to network inputs), vectorised for the CPU.
pub fn widen_bytes<T: Float>(kind: KernelKind, src: &[u8], dst: &mut [T]) {
    #[inline(always)]
    fn body<T: Float>(src: &[u8], dst: &mut [T]) {
        for (d, &b) in dst.iter_mut().zip(src) {
            *d = T::from_byte(b);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if kind == KernelKind::Avx2 && avx2_available() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<T: Float>(src: &[u8], dst: &mut [T]) {
            body(src, dst)
        }
        // SAFETY: the CPU features were detected.
        unsafe { run(src, dst) };
        return;
    }
    let _ = kind;
    body(src, dst)
}

/// Hints the CPU to bring rows `x[offs[i] .. offs[i] + k]` into the cache (the next
/// mini-batch's inputs, which are scattered over the training set).
pub fn prefetch_rows<T>(x: &[T], offs: &[usize], k: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = k * std::mem::size_of::<T>();
        for &o in offs {
            if o + k > x.len() {
                continue;
            }
            let base = x[o..].as_ptr() as *const i8;
            let mut b = 0;
            while b < bytes {
                // SAFETY: prefetch never faults; the address is inside the slice.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(b)) };
                b += 64;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, offs, k);
}

/// A float type the network can be trained in (`f32` or `f64`), with its dispatched kernels.
pub trait Float:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + std::fmt::Debug
    + std::fmt::Display
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + 'static
{
    /// Name used in messages ("f32", "f64").
    const NAME: &'static str;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn zero() -> Self {
        Self::from_f64(0.0)
    }
    fn one() -> Self {
        Self::from_f64(1.0)
    }
    /// The logistic function `1 / (1 + e^-z)`.
    fn sigmoid(self) -> Self;
    /// `b / 256` (exact), the pixel scaling of Nielsen's MNIST.
    fn from_byte(b: u8) -> Self;

    /// Forward product, see the module docs:
    /// `out[i*n + j] = bias[j] + Σ_t w[j*k + t] * x[offs[i] + t]`.
    /// Panics if a slice is too short (callers in this crate size them).
    /// `kind` is a request: [`KernelKind::Avx2`] on a CPU without it runs the portable kernel.
    #[allow(clippy::too_many_arguments)]
    fn forward_product(
        kind: KernelKind,
        w: &[Self],
        n: usize,
        k: usize,
        bias: &[Self],
        x: &[Self],
        offs: &[usize],
        out: &mut [Self],
    );

    /// Fused gradient step on a weight matrix:
    /// `w[j*k + t] = decay * w[j*k + t] + Σ_i coef[j*m + i] * x[offs[i] + t]`.
    #[allow(clippy::too_many_arguments)]
    fn update_product(
        kind: KernelKind,
        w: &mut [Self],
        n: usize,
        k: usize,
        decay: Self,
        coef: &[Self],
        x: &[Self],
        offs: &[usize],
    );

    /// [`Float::update_product`] with `(xu, offs_u)`, then [`Float::forward_product`] with the
    /// updated weights on `(xf, offs_f)`, in one pass over the weights.
    #[allow(clippy::too_many_arguments)]
    fn update_forward(
        kind: KernelKind,
        w: &mut [Self],
        n: usize,
        k: usize,
        decay: Self,
        coef: &[Self],
        xu: &[Self],
        offs_u: &[usize],
        bias: &[Self],
        xf: &[Self],
        offs_f: &[usize],
        out: &mut [Self],
    );
}

/// The kernel families: a portable one and AVX2+FMA (x86-64, detected at run time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// Plain Rust that the compiler vectorises for the baseline target.
    Portable,
    /// Explicit AVX2 + FMA intrinsics.
    Avx2,
}

impl KernelKind {
    /// The best family this CPU supports (cached); `Network::set_kernel` picks another.
    pub fn detect() -> KernelKind {
        use std::sync::OnceLock;
        static KIND: OnceLock<KernelKind> = OnceLock::new();
        *KIND.get_or_init(|| {
            if avx2_available() {
                KernelKind::Avx2
            } else {
                KernelKind::Portable
            }
        })
    }

    /// Name for reports: "avx2+fma" or "portable".
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Portable => "portable",
            KernelKind::Avx2 => "avx2+fma",
        }
    }
}

/// Whether this CPU can run [`KernelKind::Avx2`].
pub fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn check_forward<T>(n: usize, k: usize, bias: &[T], w: &[T], x: &[T], offs: &[usize], out: &[T]) {
    assert!(w.len() >= n * k && bias.len() >= n && out.len() >= offs.len() * n);
    assert!(offs.iter().all(|&o| o + k <= x.len()));
}

fn check_update<T>(w: &[T], n: usize, k: usize, coef: &[T], x: &[T], offs: &[usize]) {
    assert!(w.len() >= n * k && coef.len() >= n * offs.len());
    assert!(offs.iter().all(|&o| o + k <= x.len()));
}

macro_rules! float_impl {
    ($t:ty, $portable:ident, $avx:ident, $name:expr) => {
        impl Float for $t {
            const NAME: &'static str = $name;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_byte(b: u8) -> Self {
                b as $t * (1.0 / 256.0)
            }
            #[inline(always)]
            fn sigmoid(self) -> Self {
                1.0 / (1.0 + (-self).exp())
            }

            fn forward_product(
                kind: KernelKind,
                w: &[Self],
                n: usize,
                k: usize,
                bias: &[Self],
                x: &[Self],
                offs: &[usize],
                out: &mut [Self],
            ) {
                check_forward(n, k, bias, w, x, offs, out);
                #[cfg(target_arch = "x86_64")]
                if kind == KernelKind::Avx2 && avx2_available() {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn run(
                        w: &[$t],
                        n: usize,
                        k: usize,
                        bias: &[$t],
                        x: &[$t],
                        offs: &[usize],
                        out: &mut [$t],
                    ) {
                        nt_generic::<avx2::$avx>(w, n, k, bias, x, offs, out)
                    }
                    // SAFETY: the CPU features were detected; slice bounds checked above.
                    unsafe { run(w, n, k, bias, x, offs, out) };
                    return;
                }
                // SAFETY: bounds checked above.
                unsafe { nt_generic::<$portable>(w, n, k, bias, x, offs, out) }
            }

            fn update_product(
                kind: KernelKind,
                w: &mut [Self],
                n: usize,
                k: usize,
                decay: Self,
                coef: &[Self],
                x: &[Self],
                offs: &[usize],
            ) {
                check_update(w, n, k, coef, x, offs);
                for (ci, chunk) in offs.chunks(UPD_MAX_ROWS).enumerate() {
                    // coefficients for this slice of rows: re-pack j-major
                    let m = offs.len();
                    let mc = chunk.len();
                    let start = ci * UPD_MAX_ROWS;
                    let packed: Vec<$t>;
                    let cslice: &[$t] = if mc == m {
                        coef
                    } else {
                        packed = (0..n)
                            .flat_map(|j| coef[j * m + start..j * m + start + mc].iter().copied())
                            .collect();
                        &packed
                    };
                    let d = if ci == 0 { decay } else { 1.0 };
                    #[cfg(target_arch = "x86_64")]
                    if kind == KernelKind::Avx2 && avx2_available() {
                        #[target_feature(enable = "avx2,fma")]
                        unsafe fn run(
                            w: &mut [$t],
                            n: usize,
                            k: usize,
                            decay: $t,
                            coef: &[$t],
                            x: &[$t],
                            offs: &[usize],
                        ) {
                            update_generic::<avx2::$avx>(w, n, k, decay, coef, x, offs)
                        }
                        // SAFETY: the CPU features were detected; slice bounds checked above.
                        unsafe { run(w, n, k, d, cslice, x, chunk) };
                        continue;
                    }
                    // SAFETY: bounds checked above.
                    unsafe { update_generic::<$portable>(w, n, k, d, cslice, x, chunk) }
                }
            }

            fn update_forward(
                kind: KernelKind,
                w: &mut [Self],
                n: usize,
                k: usize,
                decay: Self,
                coef: &[Self],
                xu: &[Self],
                offs_u: &[usize],
                bias: &[Self],
                xf: &[Self],
                offs_f: &[usize],
                out: &mut [Self],
            ) {
                if offs_u.len() > UPD_MAX_ROWS {
                    Self::update_product(kind, w, n, k, decay, coef, xu, offs_u);
                    Self::forward_product(kind, w, n, k, bias, xf, offs_f, out);
                    return;
                }
                check_update(w, n, k, coef, xu, offs_u);
                check_forward(n, k, bias, w, xf, offs_f, out);
                #[cfg(target_arch = "x86_64")]
                if kind == KernelKind::Avx2 && avx2_available() {
                    #[allow(clippy::too_many_arguments)]
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn run(
                        w: &mut [$t],
                        n: usize,
                        k: usize,
                        decay: $t,
                        coef: &[$t],
                        xu: &[$t],
                        offs_u: &[usize],
                        bias: &[$t],
                        xf: &[$t],
                        offs_f: &[usize],
                        out: &mut [$t],
                    ) {
                        fused_generic::<avx2::$avx>(
                            w, n, k, decay, coef, xu, offs_u, bias, xf, offs_f, out,
                        )
                    }
                    // SAFETY: the CPU features were detected; slice bounds checked above.
                    unsafe { run(w, n, k, decay, coef, xu, offs_u, bias, xf, offs_f, out) };
                    return;
                }
                // SAFETY: bounds checked above.
                unsafe {
                    fused_generic::<$portable>(
                        w, n, k, decay, coef, xu, offs_u, bias, xf, offs_f, out,
                    )
                }
            }
        }
    };
}

float_impl!(f32, PortableF32, Avx2F32, "f32");
float_impl!(f64, PortableF64, Avx2F64, "f64");

/// Plain triple-loop references of the two products (for the parity tests).
pub mod reference {
    use super::Float;

    /// Reference for [`Float::forward_product`], accumulated in f64.
    pub fn forward_product<T: Float>(
        w: &[T],
        n: usize,
        k: usize,
        bias: &[T],
        x: &[T],
        offs: &[usize],
        out: &mut [T],
    ) {
        for (i, &o) in offs.iter().enumerate() {
            for j in 0..n {
                let mut s = bias[j].to_f64();
                for t in 0..k {
                    s += w[j * k + t].to_f64() * x[o + t].to_f64();
                }
                out[i * n + j] = T::from_f64(s);
            }
        }
    }

    /// Reference for [`Float::update_product`], accumulated in f64.
    pub fn update_product<T: Float>(
        w: &mut [T],
        n: usize,
        k: usize,
        decay: T,
        coef: &[T],
        x: &[T],
        offs: &[usize],
    ) {
        let m = offs.len();
        for j in 0..n {
            for t in 0..k {
                let mut s = decay.to_f64() * w[j * k + t].to_f64();
                for (i, &o) in offs.iter().enumerate() {
                    s += coef[j * m + i].to_f64() * x[o + t].to_f64();
                }
                w[j * k + t] = T::from_f64(s);
            }
        }
    }
}
