//! Small-batch kernels (AVX2 + FMA + F16C): one 4-row decode group times `n` activation rows
//! (`n` ≤ [`MAX_N`], the 2–15 tokens of a speculative verification). Each weight block is
//! loaded and unpacked once and then multiplied with every token's block, so the weights
//! stream from memory once for all tokens and most of the unpacking is shared.
//!
//! Every (row, token) result is bit-identical to the decode kernels (`dot_*_rows` of
//! `avx2.rs` / `avx512.rs`) on that token alone: the integer sums are the same exact sums
//! (the same byte pairs through `maddubs`, so the same saturation-free i16 pairs; then exact
//! i32 adds, whose order does not matter), and each token's float accumulator takes the same
//! steps in the same order (per block: `fmadd(isum, d·da)`, then the min term). The AVX-512
//! level runs these too: its decode kernels are bit-identical to AVX2's.

use super::avx2::{
    bcast32, bytes_from_bits, f16_pairs4, five_bits, gather4_u16, kscale_min_v, load, nibbles32,
    prefetch_ahead, sum4, sum4_128, unpack_q45, Strides, LEGACY,
};
use super::scalar::LegacyKind;
use crate::quant::{BlockQ8K, BlockQ8_32};
use std::arch::x86_64::*;

/// The most activation rows one call takes.
pub(crate) const MAX_N: usize = 16;

/// Prefetches the bytes of block `i` of the 4 rows a distance ahead (as the decode kernels).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prefetch(ahead: *const u8, i: usize, step: usize) {
    let pf = ahead.wrapping_add(i * step);
    let mut line = 0;
    while line < step {
        _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(line) as *const i8);
        line += 64;
    }
}

/// Stores the per-token accumulators (lane r: row r).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store(acc: &[__m128; MAX_N], out: &mut [[f32; 4]]) {
    for (t, o) in out.iter_mut().enumerate() {
        _mm_storeu_ps(o.as_mut_ptr(), acc[t]);
    }
}

/// Legacy types (`Q4_0 … Q8_1`): 4 rows placed as `strides` says × `a.len()` tokens;
/// `out[t][r]` = row r · token t. Bit-identical to `avx2::dot_legacy_rows` per token.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn legacy_rows_n(
    kind: LegacyKind,
    w: &[u8],
    strides: Strides,
    a: &[&[BlockQ8_32]],
    out: &mut [[f32; 4]],
) {
    match kind {
        LegacyKind::Q4_0 => legacy_rows_n_k::<0>(w, strides, a, out),
        LegacyKind::Q4_1 => legacy_rows_n_k::<1>(w, strides, a, out),
        LegacyKind::Q5_0 => legacy_rows_n_k::<2>(w, strides, a, out),
        LegacyKind::Q5_1 => legacy_rows_n_k::<3>(w, strides, a, out),
        LegacyKind::Q8_0 => legacy_rows_n_k::<4>(w, strides, a, out),
        LegacyKind::Q8_1 => legacy_rows_n_k::<5>(w, strides, a, out),
        LegacyKind::IQ4_NL => unreachable!("IQ4_NL takes the per-token loop (dot_q8_32_rows4_n)"),
    }
}

/// One legacy block's weights as `maddubs` takes them: unsigned `q + offset` for the ≤5-bit
/// types (the offset comes off through the activations' sum), `|q|` with the signs moved to
/// the activations for Q8 (`sign` = q).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy_weights(kind: LegacyKind, b: *const u8) -> __m256i {
    match kind {
        LegacyKind::Q4_0 => nibbles32(b.add(2)),
        LegacyKind::Q4_1 => nibbles32(b.add(4)),
        LegacyKind::Q5_0 | LegacyKind::Q5_1 => {
            let at = if kind == LegacyKind::Q5_0 { 2 } else { 4 };
            let qh = (b.add(at) as *const u32).read_unaligned();
            let hi = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
            _mm256_or_si256(nibbles32(b.add(at + 4)), hi)
        }
        _ => load(b.add(if kind == LegacyKind::Q8_0 { 2 } else { 4 })),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy_rows_n_k<const K: usize>(
    w: &[u8],
    strides: Strides,
    a: &[&[BlockQ8_32]],
    out: &mut [[f32; 4]],
) {
    let kind = LEGACY[K];
    let n = a.len();
    assert!(n <= MAX_N && out.len() == n, "legacy_rows_n: {n} tokens");
    if n == 0 {
        return;
    }
    let bb = kind.block_bytes();
    let nb = a[0].len();
    let Strides { row: rs, block: bs } = strides;
    let ones = _mm256_set1_epi16(1);
    let off = match kind {
        LegacyKind::Q4_0 => 8,
        LegacyKind::Q5_0 => 16,
        _ => 0,
    };
    let signed = matches!(kind, LegacyKind::Q8_0 | LegacyKind::Q8_1);
    let mut acc = [_mm_setzero_ps(); MAX_N];
    let wp = w.as_ptr();
    let step = 4 * bb;
    let ahead = prefetch_ahead(wp, step, nb, strides);
    for i in 0..nb {
        prefetch(ahead, i, step);
        let b0 = wp.add(i * bs);
        let (b1, b2, b3) = (b0.add(rs), b0.add(2 * rs), b0.add(3 * rs));
        let q = [
            legacy_weights(kind, b0),
            legacy_weights(kind, b1),
            legacy_weights(kind, b2),
            legacy_weights(kind, b3),
        ];
        let uq = if signed {
            [
                _mm256_sign_epi8(q[0], q[0]),
                _mm256_sign_epi8(q[1], q[1]),
                _mm256_sign_epi8(q[2], q[2]),
                _mm256_sign_epi8(q[3], q[3]),
            ]
        } else {
            q
        };
        let dw = _mm_cvtph_ps(gather4_u16(b0, b1, b2, b3));
        let mw = if kind.has_min() {
            _mm_cvtph_ps(gather4_u16(b0.add(2), b1.add(2), b2.add(2), b3.add(2)))
        } else {
            _mm_setzero_ps()
        };
        for t in 0..n {
            let ab = a.get_unchecked(t).get_unchecked(i);
            let y = load(ab.qs.as_ptr() as *const u8);
            let mut p = [_mm256_setzero_si256(); 4];
            for r in 0..4 {
                let yr = if signed { _mm256_sign_epi8(y, q[r]) } else { y };
                p[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(uq[r], yr), ones);
            }
            let mut isum = sum4(&p);
            if off != 0 {
                isum = _mm_sub_epi32(isum, _mm_set1_epi32(off * ab.sum));
            }
            let scale = _mm_mul_ps(dw, _mm_set1_ps(ab.d));
            acc[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), scale, acc[t]);
            if kind.has_min() {
                acc[t] = _mm_fmadd_ps(mw, _mm_set1_ps(ab.s), acc[t]);
            }
        }
    }
    store(&acc, out);
}

/// Q5_0 in 4-row groups ([`crate::interleave::q5_0_rows_to_group`]) × `a.len()` tokens:
/// bit-identical to `avx2::dot_q5_0_r4` per token.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q5_0_r4_n(w: &[u8], a: &[&[BlockQ8_32]], out: &mut [[f32; 4]]) {
    const GB: usize = crate::interleave::Q5_0_GROUP_BLOCK;
    let n = a.len();
    assert!(n <= MAX_N && out.len() == n, "q5_0_r4_n: {n} tokens");
    if n == 0 {
        return;
    }
    let nb = a[0].len();
    let s_lo01 = _mm256_setr_epi64x(0, 0, 1, 1);
    let s_hi01 = _mm256_setr_epi64x(2, 2, 3, 3);
    let s_lo23 = _mm256_setr_epi64x(1, 1, 2, 2);
    let s_hi23 = _mm256_setr_epi64x(3, 3, 4, 4);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm_setzero_ps(); MAX_N];
    let wp = w.as_ptr();
    const AHEAD: usize = 1536;
    for i in 0..nb {
        let b = wp.add(i * GB);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(AHEAD) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(AHEAD + 64) as *const i8);
        let qh = _mm256_broadcastsi128_si256(_mm_loadu_si128(b.add(8) as *const __m128i));
        let x01 = load(b.add(24));
        let x23 = load(b.add(56));
        let lo01 = five_bits(x01, _mm256_srlv_epi64(qh, s_lo01));
        let hi01 = five_bits(_mm256_srli_epi16(x01, 4), _mm256_srlv_epi64(qh, s_hi01));
        let lo23 = five_bits(x23, _mm256_sllv_epi64(qh, s_lo23));
        let hi23 = five_bits(_mm256_srli_epi16(x23, 4), _mm256_sllv_epi64(qh, s_hi23));
        let dw = _mm_cvtph_ps(_mm_loadl_epi64(b as *const __m128i));
        for t in 0..n {
            let ab = a.get_unchecked(t).get_unchecked(i);
            let y = load(ab.qs.as_ptr() as *const u8);
            let ylo = _mm256_permute4x64_epi64(y, 0b01_00_01_00);
            let yhi = _mm256_permute4x64_epi64(y, 0b11_10_11_10);
            // (two `maddubs` per 16-bit add stay exact: at most 15872)
            let p01 = _mm256_madd_epi16(
                _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo01, ylo),
                    _mm256_maddubs_epi16(hi01, yhi),
                ),
                ones,
            );
            let p23 = _mm256_madd_epi16(
                _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo23, ylo),
                    _mm256_maddubs_epi16(hi23, yhi),
                ),
                ones,
            );
            let s = _mm256_add_epi32(
                _mm256_unpacklo_epi32(p01, p23),
                _mm256_unpackhi_epi32(p01, p23),
            );
            let s = _mm256_add_epi32(s, _mm256_shuffle_epi32(s, 0b01_00_11_10));
            let isum =
                _mm_unpacklo_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let isum = _mm_sub_epi32(isum, _mm_slli_epi32(_mm_set1_epi32(ab.sum), 4));
            let scale = _mm_mul_ps(dw, _mm_set1_ps(ab.d));
            acc[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), scale, acc[t]);
        }
    }
    store(&acc, out);
}

/// 4 Q4_K / Q5_K rows placed as `strides` says × `a.len()` tokens: bit-identical to
/// `avx2::dot_q45_k_rows` per token. Each super-block's 4 rows are unpacked once into 32
/// vectors (1 KiB, stays in L1) and their scale tables built once.
#[target_feature(enable = "avx2,fma,f16c")]
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
    // u[r][2J], u[r][2J + 1]: row r's sub-blocks 2J and 2J + 1
    let mut u = [[_mm256_setzero_si256(); 8]; 4];
    for i in 0..nb {
        prefetch(ahead, i, 4 * bb);
        let b0 = wp.add(i * block_stride);
        let mut tbl = [[0u32; 8]; 4];
        let mut mins = [_mm_setzero_si128(); 4];
        for r in 0..4 {
            let b = b0.add(r * rs);
            let scm = kscale_min_v(b.add(4));
            mins[r] = _mm_unpackhi_epi8(scm, zero);
            let sc = _mm_unpacklo_epi8(scm, zero);
            _mm_storeu_si128(
                tbl[r].as_mut_ptr() as *mut __m128i,
                _mm_unpacklo_epi16(sc, sc),
            );
            _mm_storeu_si128(
                tbl[r].as_mut_ptr().add(4) as *mut __m128i,
                _mm_unpackhi_epi16(sc, sc),
            );
            let qh = if FIVE {
                load(b.add(16))
            } else {
                _mm256_setzero_si256()
            };
            for j in 0..4 {
                let x = load(b.add(if FIVE { 48 } else { 16 } + 32 * j));
                let [lo, hi] = unpack_q45::<FIVE>(x, qh, j);
                u[r][2 * j] = lo;
                u[r][2 * j + 1] = hi;
            }
        }
        let (d, dmin) = f16_pairs4([b0, b0.add(rs), b0.add(2 * rs), b0.add(3 * rs)]);
        for t in 0..n {
            let ab = a.get_unchecked(t).get_unchecked(i);
            let bs = _mm256_madd_epi16(load(ab.bsums.as_ptr() as *const u8), _mm256_set1_epi16(1));
            let bsp = _mm_packs_epi32(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            let msum = [
                _mm_madd_epi16(mins[0], bsp),
                _mm_madd_epi16(mins[1], bsp),
                _mm_madd_epi16(mins[2], bsp),
                _mm_madd_epi16(mins[3], bsp),
            ];
            let y = ab.qs.as_ptr() as *const u8;
            let mut isum = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                let y0 = load(y.add(64 * j));
                let y1 = load(y.add(64 * j + 32));
                for r in 0..4 {
                    let s1 = bcast32(tbl[r].as_ptr().add(2 * j));
                    let s2 = bcast32(tbl[r].as_ptr().add(2 * j + 1));
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(u[r][2 * j], y0), s1);
                    let p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(u[r][2 * j + 1], y1), s2);
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(p1, p2));
                }
            }
            let m = sum4_128(&msum);
            let da = _mm_set1_ps(ab.d);
            acc[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(sum4(&isum)), _mm_mul_ps(d, da), acc[t]);
            acc[t] = _mm_fnmadd_ps(_mm_cvtepi32_ps(m), _mm_mul_ps(dmin, da), acc[t]);
        }
    }
    store(&acc, out);
}

/// `vpshufb` masks: for chunk `k`, i16 scale `2k` over the low lane and `2k + 1` over the
/// high lane (of a half's 8 scales repeated in both lanes).
pub(super) const Q6_SHUF: [[u8; 32]; 4] = {
    let mut m = [[0u8; 32]; 4];
    let mut k = 0;
    while k < 4 {
        let mut b = 0;
        while b < 16 {
            m[k][b] = (4 * k + b % 2) as u8;
            m[k][16 + b] = (4 * k + 2 + b % 2) as u8;
            b += 1;
        }
        k += 1;
    }
    m
};

/// 4 Q6_K rows placed as `strides` says × `a.len()` tokens: bit-identical to
/// `avx2::dot_q6_k_rows` per token. Each super-block's 4 rows are unpacked once (the 6-bit
/// values and the scale vectors of their 8 chunks of 32).
#[target_feature(enable = "avx2,fma,f16c")]
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
    let mut q = [[_mm256_setzero_si256(); 8]; 4];
    let mut scv = [[_mm256_setzero_si256(); 8]; 4];
    let mut sc16 = [_mm256_setzero_si256(); 4];
    for i in 0..nb {
        prefetch(ahead, i, 4 * 210);
        for r in 0..4 {
            let b = wp.add(r * rs + i * bs);
            sc16[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
            for h in 0..2 {
                let scl = if h == 0 {
                    _mm256_permute2x128_si256(sc16[r], sc16[r], 0x00)
                } else {
                    _mm256_permute2x128_si256(sc16[r], sc16[r], 0x11)
                };
                let ql0 = load(b.add(64 * h));
                let ql1 = load(b.add(64 * h + 32));
                let qh = load(b.add(128 + 32 * h));
                q[r][4 * h] = _mm256_or_si256(
                    _mm256_and_si256(ql0, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                );
                q[r][4 * h + 1] = _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                );
                q[r][4 * h + 2] = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                    _mm256_and_si256(qh, m30),
                );
                q[r][4 * h + 3] = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                );
                for k in 0..4 {
                    scv[r][4 * h + k] = _mm256_shuffle_epi8(scl, shuf[k]);
                }
            }
        }
        // the 4 rows' d (f16 at byte 208)
        let p = wp.add(i * bs + 208) as *const i16;
        let mut hd = _mm_cvtsi32_si128(p.read_unaligned() as u16 as i32);
        hd = _mm_insert_epi16::<1>(hd, p.byte_add(rs).read_unaligned() as i32);
        hd = _mm_insert_epi16::<2>(hd, p.byte_add(2 * rs).read_unaligned() as i32);
        hd = _mm_insert_epi16::<3>(hd, p.byte_add(3 * rs).read_unaligned() as i32);
        let d = _mm_cvtph_ps(hd);
        for t in 0..n {
            let ab = a.get_unchecked(t).get_unchecked(i);
            let bsum = load(ab.bsums.as_ptr() as *const u8);
            let y = ab.qs.as_ptr() as *const u8;
            let mut isum = [_mm256_setzero_si256(); 4];
            for r in 0..4 {
                isum[r] = _mm256_sub_epi32(
                    _mm256_setzero_si256(),
                    _mm256_slli_epi32(_mm256_madd_epi16(sc16[r], bsum), 5),
                );
            }
            for c in 0..8 {
                let yc = load(y.add(32 * c));
                for r in 0..4 {
                    let pr = _mm256_maddubs_epi16(q[r][c], yc);
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(pr, scv[r][c]));
                }
            }
            let scale = _mm_mul_ps(d, _mm_set1_ps(ab.d));
            acc[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(sum4(&isum)), scale, acc[t]);
        }
    }
    store(&acc, out);
}
