//! Small-batch k-quant kernels for the AVX-512 level (F/BW/VL + VNNI, 256-bit forms): the
//! kernels of `small_avx2.rs` with the tokens taken in tiles of up to 4 (each unpacked weight
//! vector and scale loaded once per tile, not once per token: AVX-512's 32 vector registers
//! hold 4 tokens × 4 rows of accumulators) and each scaled pair sum taken by `vpdpwssd`
//! (`madd` and the add in one). The integer sums are the same exact sums, the float steps per
//! token the same as the decode kernels': results are bit-identical to them.

use super::avx2::{
    bcast32, f16_pairs4, kscale_min_v, load, prefetch_ahead, sum4, sum4_128, unpack_q45, Strides,
};
use super::small_avx2::{MAX_N, Q6_SHUF};
use crate::quant::BlockQ8K;
use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn prefetch(ahead: *const u8, i: usize, step: usize) {
    let pf = ahead.wrapping_add(i * step);
    let mut line = 0;
    while line < step {
        _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(line) as *const i8);
        line += 64;
    }
}

/// The per-row parts of one super-block of 4 Q4_K / Q5_K rows that every token uses.
struct Q45Block {
    /// Row r's sub-block scale k as both i16 halves of dword k.
    tbl: [[u32; 8]; 4],
    /// Row r's 8 mins as i16.
    mins: [__m128i; 4],
    d: __m128,
    dmin: __m128,
    /// Row r's weights of sub-blocks 2j and 2j + 1 (`w[r][j]`), unpacked to bytes once for
    /// every tile.
    w: [[[__m256i; 2]; 4]; 4],
}

/// Tokens `t0..t0 + T` of block `i`: the decode kernel's integer sums over the weights `q`
/// unpacked once for all tiles (Q5_K's fifth bit makes unpacking per tile cost ~25%), and its
/// float steps per token.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q45_tile<const FIVE: bool, const T: usize>(
    q: &Q45Block,
    a: &[&[BlockQ8K]],
    t0: usize,
    i: usize,
    acc: &mut [__m128; MAX_N],
) {
    let mut ab: [&BlockQ8K; T] = [a.get_unchecked(t0).get_unchecked(i); T];
    for (k, b) in ab.iter_mut().enumerate() {
        *b = a.get_unchecked(t0 + k).get_unchecked(i);
    }
    let mut isum = [[_mm256_setzero_si256(); 4]; T];
    for j in 0..4 {
        // (loops, not closures: those would not inherit this function's target features)
        let mut y0 = [_mm256_setzero_si256(); T];
        let mut y1 = [_mm256_setzero_si256(); T];
        for k in 0..T {
            y0[k] = load(ab[k].qs.as_ptr().add(64 * j) as *const u8);
            y1[k] = load(ab[k].qs.as_ptr().add(64 * j + 32) as *const u8);
        }
        for r in 0..4 {
            let [lo, hi] = q.w[r][j];
            let s1 = bcast32(q.tbl[r].as_ptr().add(2 * j));
            let s2 = bcast32(q.tbl[r].as_ptr().add(2 * j + 1));
            for k in 0..T {
                isum[k][r] = _mm256_dpwssd_epi32(isum[k][r], _mm256_maddubs_epi16(lo, y0[k]), s1);
                isum[k][r] = _mm256_dpwssd_epi32(isum[k][r], _mm256_maddubs_epi16(hi, y1[k]), s2);
            }
        }
    }
    for k in 0..T {
        let bs = _mm256_madd_epi16(
            load(ab[k].bsums.as_ptr() as *const u8),
            _mm256_set1_epi16(1),
        );
        let bsp = _mm_packs_epi32(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        let msum = [
            _mm_madd_epi16(q.mins[0], bsp),
            _mm_madd_epi16(q.mins[1], bsp),
            _mm_madd_epi16(q.mins[2], bsp),
            _mm_madd_epi16(q.mins[3], bsp),
        ];
        let m = sum4_128(&msum);
        let da = _mm_set1_ps(ab[k].d);
        let o = &mut acc[t0 + k];
        *o = _mm_fmadd_ps(_mm_cvtepi32_ps(sum4(&isum[k])), _mm_mul_ps(q.d, da), *o);
        *o = _mm_fnmadd_ps(_mm_cvtepi32_ps(m), _mm_mul_ps(q.dmin, da), *o);
    }
}

/// 4 Q4_K / Q5_K rows placed as `strides` says × `a.len()` tokens: bit-identical to the decode
/// kernels (`avx512::dot_q45_k_rows`, `avx2::dot_q45_k_rows`) per token.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn q45_k_rows_n<const FIVE: bool>(
    w: &[u8],
    strides: Strides,
    a: &[&[BlockQ8K]],
    out: &mut [[f32; 4]],
) {
    let n = a.len();
    assert!(n <= MAX_N && out.len() == n, "q45_k_rows_n: {n} tokens");
    if n == 0 {
        return;
    }
    let bb = if FIVE { 176 } else { 144 };
    let nb = a[0].len();
    let Strides {
        row: rs,
        block: block_stride,
    } = strides;
    let mut acc = [_mm_setzero_ps(); MAX_N];
    let wp = w.as_ptr();
    let ahead = prefetch_ahead(wp, 4 * bb, nb, strides);
    let zero = _mm_setzero_si128();
    let mut q = Q45Block {
        tbl: [[0u32; 8]; 4],
        mins: [_mm_setzero_si128(); 4],
        d: _mm_setzero_ps(),
        dmin: _mm_setzero_ps(),
        w: [[[_mm256_setzero_si256(); 2]; 4]; 4],
    };
    for i in 0..nb {
        prefetch(ahead, i, 4 * bb);
        let b0 = wp.add(i * block_stride);
        for r in 0..4 {
            let scm = kscale_min_v(b0.add(r * rs + 4));
            q.mins[r] = _mm_unpackhi_epi8(scm, zero);
            let sc = _mm_unpacklo_epi8(scm, zero);
            _mm_storeu_si128(
                q.tbl[r].as_mut_ptr() as *mut __m128i,
                _mm_unpacklo_epi16(sc, sc),
            );
            _mm_storeu_si128(
                q.tbl[r].as_mut_ptr().add(4) as *mut __m128i,
                _mm_unpackhi_epi16(sc, sc),
            );
        }
        (q.d, q.dmin) = f16_pairs4([b0, b0.add(rs), b0.add(2 * rs), b0.add(3 * rs)]);
        for r in 0..4 {
            let b = b0.add(r * rs);
            let qh = if FIVE {
                load(b.add(16))
            } else {
                _mm256_setzero_si256()
            };
            for j in 0..4 {
                let x = load(b.add(if FIVE { 48 } else { 16 } + 32 * j));
                q.w[r][j] = unpack_q45::<FIVE>(x, qh, j);
            }
        }
        // tiles of 4 tokens (then 3, 2 or 1): the unpacking is shared within a tile
        let mut t = 0;
        while n - t >= 4 {
            q45_tile::<FIVE, 4>(&q, a, t, i, &mut acc);
            t += 4;
        }
        match n - t {
            3 => q45_tile::<FIVE, 3>(&q, a, t, i, &mut acc),
            2 => q45_tile::<FIVE, 2>(&q, a, t, i, &mut acc),
            1 => q45_tile::<FIVE, 1>(&q, a, t, i, &mut acc),
            _ => {}
        }
    }
    for (t, o) in out.iter_mut().enumerate() {
        _mm_storeu_ps(o.as_mut_ptr(), acc[t]);
    }
}

/// One super-block of 4 Q6_K rows, unpacked once for every token.
struct Q6Block {
    /// Row r's 8 chunks of 32 6-bit values (`q + 32`, unsigned).
    q: [[__m256i; 8]; 4],
    /// Row r's scale vector of each chunk (i16: the chunk's two scales, a lane each).
    scv: [[__m256i; 8]; 4],
    /// Row r's 16 scales as i16.
    sc16: [__m256i; 4],
    d: __m128,
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6_tile<const T: usize>(
    q: &Q6Block,
    a: &[&[BlockQ8K]],
    t0: usize,
    i: usize,
    acc: &mut [__m128; MAX_N],
) {
    let mut ab: [&BlockQ8K; T] = [a.get_unchecked(t0).get_unchecked(i); T];
    for (k, b) in ab.iter_mut().enumerate() {
        *b = a.get_unchecked(t0 + k).get_unchecked(i);
    }
    let mut isum = [[_mm256_setzero_si256(); 4]; T];
    for k in 0..T {
        let bsum = load(ab[k].bsums.as_ptr() as *const u8);
        for r in 0..4 {
            isum[k][r] = _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_slli_epi32(_mm256_madd_epi16(q.sc16[r], bsum), 5),
            );
        }
    }
    for c in 0..8 {
        let mut y = [_mm256_setzero_si256(); T];
        for k in 0..T {
            y[k] = load(ab[k].qs.as_ptr().add(32 * c) as *const u8);
        }
        for r in 0..4 {
            let (qc, sc) = (q.q[r][c], q.scv[r][c]);
            for k in 0..T {
                isum[k][r] = _mm256_dpwssd_epi32(isum[k][r], _mm256_maddubs_epi16(qc, y[k]), sc);
            }
        }
    }
    for k in 0..T {
        let scale = _mm_mul_ps(q.d, _mm_set1_ps(ab[k].d));
        let o = &mut acc[t0 + k];
        *o = _mm_fmadd_ps(_mm_cvtepi32_ps(sum4(&isum[k])), scale, *o);
    }
}

/// 4 Q6_K rows placed as `strides` says × `a.len()` tokens: bit-identical to the decode
/// kernels (`avx512::dot_q6_k_rows`, `avx2::dot_q6_k_rows`) per token.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn q6_k_rows_n(
    w: &[u8],
    strides: Strides,
    a: &[&[BlockQ8K]],
    out: &mut [[f32; 4]],
) {
    let n = a.len();
    assert!(n <= MAX_N && out.len() == n, "q6_k_rows_n: {n} tokens");
    if n == 0 {
        return;
    }
    let nb = a[0].len();
    let Strides { row: rs, block: bs } = strides;
    let mut acc = [_mm_setzero_ps(); MAX_N];
    let wp = w.as_ptr();
    let ahead = prefetch_ahead(wp, 4 * 210, nb, strides);
    let m4 = _mm256_set1_epi8(0xF);
    let m30 = _mm256_set1_epi8(0x30);
    let mut shuf = [_mm256_setzero_si256(); 4];
    for (k, s) in shuf.iter_mut().enumerate() {
        *s = load(Q6_SHUF[k].as_ptr());
    }
    let mut q = Q6Block {
        q: [[_mm256_setzero_si256(); 8]; 4],
        scv: [[_mm256_setzero_si256(); 8]; 4],
        sc16: [_mm256_setzero_si256(); 4],
        d: _mm_setzero_ps(),
    };
    for i in 0..nb {
        prefetch(ahead, i, 4 * 210);
        for r in 0..4 {
            let b = wp.add(r * rs + i * bs);
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
            q.sc16[r] = sc16;
            for h in 0..2 {
                let scl = if h == 0 {
                    _mm256_permute2x128_si256(sc16, sc16, 0x00)
                } else {
                    _mm256_permute2x128_si256(sc16, sc16, 0x11)
                };
                let ql0 = load(b.add(64 * h));
                let ql1 = load(b.add(64 * h + 32));
                let qh = load(b.add(128 + 32 * h));
                q.q[r][4 * h] = _mm256_or_si256(
                    _mm256_and_si256(ql0, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                );
                q.q[r][4 * h + 1] = _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                );
                q.q[r][4 * h + 2] = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                    _mm256_and_si256(qh, m30),
                );
                q.q[r][4 * h + 3] = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                );
                for k in 0..4 {
                    q.scv[r][4 * h + k] = _mm256_shuffle_epi8(scl, shuf[k]);
                }
            }
        }
        let p = wp.add(i * bs + 208) as *const i16;
        let mut hd = _mm_cvtsi32_si128(p.read_unaligned() as u16 as i32);
        hd = _mm_insert_epi16::<1>(hd, p.byte_add(rs).read_unaligned() as i32);
        hd = _mm_insert_epi16::<2>(hd, p.byte_add(2 * rs).read_unaligned() as i32);
        hd = _mm_insert_epi16::<3>(hd, p.byte_add(3 * rs).read_unaligned() as i32);
        q.d = _mm_cvtph_ps(hd);
        let mut t = 0;
        while n - t >= 4 {
            q6_tile::<4>(&q, a, t, i, &mut acc);
            t += 4;
        }
        match n - t {
            3 => q6_tile::<3>(&q, a, t, i, &mut acc),
            2 => q6_tile::<2>(&q, a, t, i, &mut acc),
            1 => q6_tile::<1>(&q, a, t, i, &mut acc),
            _ => {}
        }
    }
    for (t, o) in out.iter_mut().enumerate() {
        _mm_storeu_ps(o.as_mut_ptr(), acc[t]);
    }
}
