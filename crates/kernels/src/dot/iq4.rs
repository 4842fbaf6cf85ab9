//! x86-64 AVX2 kernels for IQ4_XS (IQ4_NL is a legacy kind: see `avx2::unpack_legacy`).
//! Every function is `unsafe`: the caller must have checked `Isa::Avx2.is_available()` and that
//! each activation row has as many super-blocks as `w`.
//!
//! The 4-bit indices become the signed grid values with one `vpshufb` ([`avx2::iq4_table`]);
//! |v| <= 127, so each sub-block's products use the sign trick, `maddubs` pairs fit in i16, and
//! `madd` with the sub-block's scale `ls - 32` widens them to i32. A super-block's integer sum
//! is exact; the float step is the canonical one (`acc = fma(I, d_w·d_a, acc)`, as Q6_K), so
//! every shape is bit-identical to `scalar::dot_iq4_xs`.

use super::avx2::{self, hsum_i32, iq4_table, nibbles16, nibbles32, prefetch_ahead, sum4, Strides};
use super::BlockU8;
use crate::quant::{iq4_xs_scales, BlockQ8K};
use std::arch::x86_64::*;

const BB: usize = 136;

/// One IQ4_XS super-block at `b` times the activations `y` (256 i8): 8 i32 lanes whose sum is
/// Σ_j (ls_j - 32) Σ v·a.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_isum(b: *const u8, y: *const i8, table: __m256i) -> __m256i {
    let sc = iq4_xs_scales(std::slice::from_raw_parts(b, 8));
    let mut isum = _mm256_setzero_si256();
    for j in 0..8 {
        let q = _mm256_shuffle_epi8(table, nibbles32(b.add(8 + 16 * j)));
        let yj = avx2::load(y.add(32 * j) as *const u8);
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(yj, q));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, _mm256_set1_epi16(sc[j] as i16)));
    }
    isum
}

/// `out[t] = w · a[t]` for one IQ4_XS row: each sub-block is unpacked once for the `N` tokens.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq4_xs_n<const N: usize>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let nb = w.len() / BB;
    let table = iq4_table();
    let mut acc = [0.0f32; N];
    let wp = w.as_ptr();
    for i in 0..nb {
        let b = wp.add(i * BB);
        let sc = iq4_xs_scales(std::slice::from_raw_parts(b, 8));
        let mut isum = [_mm256_setzero_si256(); N];
        for j in 0..8 {
            let q = _mm256_shuffle_epi8(table, nibbles16(b.add(8 + 16 * j)));
            let ax = _mm256_sign_epi8(q, q);
            let s16 = _mm256_set1_epi16(sc[j] as i16);
            for t in 0..N {
                let y = avx2::load(a[t].get_unchecked(i).qs.as_ptr().add(32 * j) as *const u8);
                let p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, q));
                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, s16));
            }
        }
        let d = avx2::f16(b);
        for t in 0..N {
            let ab = a[t].get_unchecked(i);
            acc[t] = (hsum_i32(isum[t]) as f32).mul_add(d * ab.d, acc[t]);
        }
    }
    acc
}

/// 4 IQ4_XS rows (placed as `strides` says) · one activation row: the decode kernel. Each
/// activation super-block is read once for the 4 rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq4_xs_rows<const R: usize>(
    w: &[u8],
    strides: Strides,
    a: &[BlockQ8K],
) -> [f32; R] {
    assert!(R == 4, "dot_iq4_xs_rows: 4 rows at a time");
    let nb = a.len();
    let Strides { row: rs, block: bs } = strides;
    let table = iq4_table();
    let mut acc = _mm_setzero_ps(); // lane r: row r
    let wp = w.as_ptr();
    let step = R * BB;
    let ahead = prefetch_ahead(wp, step, nb, strides);
    for i in 0..nb {
        let pf = ahead.wrapping_add(i * step);
        for l in 0..step.div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(64 * l) as *const i8);
        }
        let ab = a.get_unchecked(i);
        let y = ab.qs.as_ptr();
        let b0 = wp.add(i * bs);
        let (b1, b2, b3) = (b0.add(rs), b0.add(2 * rs), b0.add(3 * rs));
        let p = [
            block_isum(b0, y, table),
            block_isum(b1, y, table),
            block_isum(b2, y, table),
            block_isum(b3, y, table),
        ];
        let dw = _mm_cvtph_ps(avx2::gather4_u16(b0, b1, b2, b3));
        // the canonical float step, all 4 rows at once
        let scale = _mm_mul_ps(dw, _mm_set1_ps(ab.d));
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sum4(&p)), scale, acc);
    }
    let mut out = [0.0f32; R];
    _mm_storeu_ps(out.as_mut_ptr(), acc);
    out
}

/// The vector form of `scalar::repack_u8_iq4_xs` (IQ4_XS rows unpacked once per prefill
/// chunk): the same bytes, scales and corrections.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn repack_u8_iq4_xs(w: &[u8], out: &mut [BlockU8]) {
    let table = iq4_table();
    let zero = _mm256_setzero_si256();
    for (b, o) in w.chunks_exact(BB).zip(out.chunks_exact_mut(8)) {
        let sc = iq4_xs_scales(b);
        let d = avx2::f16(b.as_ptr());
        for (j, o) in o.iter_mut().enumerate() {
            let v = _mm256_shuffle_epi8(table, nibbles16(b.as_ptr().add(8 + 16 * j)));
            _mm256_storeu_si256(o.u.as_mut_ptr() as *mut __m256i, v);
            // Σ (v + 128) per 8 bytes, exact; Σv takes 32 · 128 off
            let s = _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8(0x80u8 as i8)), zero);
            let s = _mm256_extract_epi64::<0>(s)
                + _mm256_extract_epi64::<1>(s)
                + _mm256_extract_epi64::<2>(s)
                + _mm256_extract_epi64::<3>(s)
                - 4096;
            (o.d, o.m, o.sc, o.mn) = (d, 0.0, sc[j] as u8, sc[j] as u8);
            o.corr = 128 * sc[j] as i32 * s as i32;
        }
    }
}
