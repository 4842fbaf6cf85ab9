//! x86-64 AVX2 + FMA + F16C kernels. Every function here is `unsafe`: the caller must have
//! checked `Isa::Avx2.is_available()` and that each activation row has as many blocks as `w`.
//!
//! Integer scheme (as in ggml): weights unpack to bytes, `maddubs` multiplies unsigned weight
//! bytes with signed activation bytes into i16 pairs (never saturating for these ranges),
//! `madd` with the sub-block scales widens to i32. Signed × signed uses the `sign` trick:
//! |w| · (a · sign(w)).
//!
//! Canonical float steps (what makes a token's result independent of its batch-mates): every
//! kernel shape — one token, 4 tokens, 4 rows, the 8-token tiles, the unpacked prefill — first
//! computes each block's (k-quants: super-block's) exact integer dot `I` (and min sum `M`), then
//! per (row, token) in block order: `acc = fma(I, d_w·d_a, acc)`, then for Q4_1/Q5_1
//! `acc = fma(m_w, s_a, acc)` and for the k-quants with mins `acc = fma(-M, dmin·d_a, acc)`.
//! Integer sums are exact in any order, and the float operations are the same, so every shape
//! gives bit-identical results.

use super::scalar::LegacyKind;
use super::BlockU8;
use crate::quant::{kscale_min, q3k_scales, BlockQ8K, BlockQ8_32, BlockQ8x8};
use crate::DType;
use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16(p: *const u8) -> f32 {
    // A zero-extending 16-bit load into a general register. Left to itself LLVM folds the load
    // into `vpinsrw`, which merges into whatever vector register it likes and so chains every
    // block on an unrelated accumulator (3x slower loops).
    let h: u32;
    std::arch::asm!(
        "movzx {h:e}, word ptr [{p}]",
        h = out(reg) h,
        p = in(reg) p,
        options(pure, readonly, nostack, preserves_flags)
    );
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 16 bytes of nibbles -> 32 bytes: low nibbles in the first 16, high nibbles in the last 16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles16(p: *const u8) -> __m256i {
    let x = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0xF);
    let lo = _mm_and_si128(x, m);
    let hi = _mm_and_si128(_mm_srli_epi16(x, 4), m);
    _mm256_set_m128i(hi, lo)
}

/// 0xFF in byte i where bit i of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    let x = _mm256_set1_epi32(bits as i32);
    #[rustfmt::skip]
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let b = _mm256_shuffle_epi8(x, shuf);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(b, mask), mask)
}

/// The 32 weights of a legacy block as bytes: signed for Q4_0 / Q5_0 / Q8_0 / Q8_1,
/// unsigned for Q4_1 / Q5_1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_legacy(kind: LegacyKind, b: *const u8) -> __m256i {
    match kind {
        LegacyKind::Q4_0 => _mm256_sub_epi8(nibbles16(b.add(2)), _mm256_set1_epi8(8)),
        LegacyKind::Q4_1 => nibbles16(b.add(4)),
        LegacyKind::Q5_0 => {
            let qh = (b.add(2) as *const u32).read_unaligned();
            let hi = _mm256_andnot_si256(bytes_from_bits(qh), _mm256_set1_epi8(0xF0u8 as i8));
            _mm256_or_si256(nibbles16(b.add(6)), hi)
        }
        LegacyKind::Q5_1 => {
            let qh = (b.add(4) as *const u32).read_unaligned();
            let hi = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
            _mm256_or_si256(nibbles16(b.add(8)), hi)
        }
        LegacyKind::Q8_0 => load(b.add(2)),
        LegacyKind::Q8_1 => load(b.add(4)),
        LegacyKind::IQ4_NL => _mm256_shuffle_epi8(iq4_table(), nibbles16(b.add(2))),
    }
}

/// [`crate::quant::IQ4_KVALUES`] in both 128-bit lanes: `vpshufb` with it turns 4-bit indices
/// (one per byte) into the signed IQ4 grid values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn iq4_table() -> __m256i {
    let t = _mm_loadu_si128(crate::quant::IQ4_KVALUES.as_ptr() as *const __m128i);
    _mm256_broadcastsi128_si256(t)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_legacy_n<const N: usize>(
    kind: LegacyKind,
    w: &[u8],
    a: [&[BlockQ8_32]; N],
) -> [f32; N] {
    match kind {
        LegacyKind::Q4_0 => legacy_impl::<0, N>(w, a),
        LegacyKind::Q4_1 => legacy_impl::<1, N>(w, a),
        LegacyKind::Q5_0 => legacy_impl::<2, N>(w, a),
        LegacyKind::Q5_1 => legacy_impl::<3, N>(w, a),
        LegacyKind::Q8_0 => legacy_impl::<4, N>(w, a),
        LegacyKind::Q8_1 => legacy_impl::<5, N>(w, a),
        LegacyKind::IQ4_NL => legacy_impl::<6, N>(w, a),
    }
}

pub(super) const LEGACY: [LegacyKind; 7] = [
    LegacyKind::Q4_0,
    LegacyKind::Q4_1,
    LegacyKind::Q5_0,
    LegacyKind::Q5_1,
    LegacyKind::Q8_0,
    LegacyKind::Q8_1,
    LegacyKind::IQ4_NL,
];

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy_impl<const K: usize, const N: usize>(w: &[u8], a: [&[BlockQ8_32]; N]) -> [f32; N] {
    let kind = LEGACY[K];
    let bb = kind.block_bytes();
    let nb = w.len() / bb;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [0.0f32; N];
    let wp = w.as_ptr();
    for i in 0..nb {
        let b = wp.add(i * bb);
        let d = f16(b);
        let q = unpack_legacy(kind, b);
        let ax = _mm256_sign_epi8(q, q);
        for t in 0..N {
            let ab = a[t].get_unchecked(i);
            let y = load(ab.qs.as_ptr() as *const u8);
            // the block's exact integer dot, then the canonical float steps (module docs)
            let p = if kind.has_min() {
                _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones)
            } else {
                _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, q)), ones)
            };
            acc[t] = (hsum_i32(p) as f32).mul_add(d * ab.d, acc[t]);
            if kind.has_min() {
                acc[t] = f16(b.add(2)).mul_add(ab.s, acc[t]);
            }
        }
    }
    acc
}

/// `R` weight rows (placed as `strides` says) · one activation row: the decode
/// kernel. Every activation block is loaded once for all `R` rows, and the rows' independent
/// accumulators hide the float latency that a single row's chain of blocks would expose.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_legacy_rows<const R: usize>(
    kind: LegacyKind,
    w: &[u8],
    strides: Strides,
    a: &[BlockQ8_32],
) -> [f32; R] {
    match kind {
        LegacyKind::Q4_0 => legacy_rows::<0, R>(w, strides, a),
        LegacyKind::Q4_1 => legacy_rows::<1, R>(w, strides, a),
        LegacyKind::Q5_0 => legacy_rows::<2, R>(w, strides, a),
        LegacyKind::Q5_1 => legacy_rows::<3, R>(w, strides, a),
        LegacyKind::Q8_0 => legacy_rows::<4, R>(w, strides, a),
        LegacyKind::Q8_1 => legacy_rows::<5, R>(w, strides, a),
        LegacyKind::IQ4_NL => legacy_rows::<6, R>(w, strides, a),
    }
}

/// Where the 4 rows' blocks of a decode kernel lie: block `i` of row `r` at
/// `i · block + r · row` bytes. Rows back to back: `row` = a row's bytes, `block` = a block's;
/// a 4-row group ([`crate::interleave::Layout::Rows4`]): `row` = a block's bytes, `block` = 4
/// blocks'. Either way the 4 rows span `4 · nb · block bytes` contiguous bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Strides {
    pub row: usize,
    pub block: usize,
}

impl Strides {
    /// A 4-row group of blocks of `block_bytes` each.
    pub fn group4(block_bytes: usize) -> Strides {
        Strides {
            row: block_bytes,
            block: 4 * block_bytes,
        }
    }

    /// The 4 rows of `len` bytes: a 4-row group when `grouped`, else rows back to back.
    pub fn four_rows(grouped: bool, block_bytes: usize, len: usize) -> Strides {
        if grouped {
            Strides::group4(block_bytes)
        } else {
            Strides {
                row: len / 4,
                block: block_bytes,
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy_rows<const K: usize, const R: usize>(
    w: &[u8],
    strides: Strides,
    a: &[BlockQ8_32],
) -> [f32; R] {
    assert!(R == 4, "legacy_rows: 4 rows at a time");
    let kind = LEGACY[K];
    let bb = kind.block_bytes();
    let nb = a.len();
    let Strides { row: rs, block: bs } = strides;
    let ones = _mm256_set1_epi16(1);
    // Q4_0 / Q5_0 weights are taken unsigned (q + 8, q + 16) so each row needs one `maddubs`
    // and no sign fix-ups; the offset times the block's activation sum (`BlockQ8_32::sum`) is
    // taken off the exact integer sums. Q8 weights keep the sign trick.
    let off = match kind {
        LegacyKind::Q4_0 => 8,
        LegacyKind::Q5_0 => 16,
        _ => 0,
    };
    let mut acc = _mm_setzero_ps(); // lane r: row r
    let wp = w.as_ptr();
    // R blocks' worth of bytes fetched ahead per block (see `prefetch_ahead`).
    let step = R * bb;
    let ahead = prefetch_ahead(wp, step, nb, strides);
    for i in 0..nb {
        let pf = ahead.wrapping_add(i * step);
        let mut line = 0;
        while line < step {
            _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(line) as *const i8);
            line += 64;
        }
        let ab = a.get_unchecked(i);
        let y = load(ab.qs.as_ptr() as *const u8);
        let b0 = wp.add(i * bs);
        let (b1, b2, b3) = (b0.add(rs), b0.add(2 * rs), b0.add(3 * rs));
        // (no closures here: they would not inherit this function's target features)
        let p = [
            legacy_row_isum(kind, b0, y, ones),
            legacy_row_isum(kind, b1, y, ones),
            legacy_row_isum(kind, b2, y, ones),
            legacy_row_isum(kind, b3, y, ones),
        ];
        let mut isum = sum4(&p);
        if off != 0 {
            // the offset times the activations' integer sum, exactly, once for the 4 rows
            isum = _mm_sub_epi32(isum, _mm_set1_epi32(off * ab.sum));
        }
        // The 4 rows' f16 scales gathered in a register (not stored and reloaded: that stalls
        // on store forwarding).
        let dw = _mm_cvtph_ps(gather4_u16(b0, b1, b2, b3));
        let scale = _mm_mul_ps(dw, _mm_set1_ps(ab.d));
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), scale, acc);
        if kind.has_min() {
            let mw = _mm_cvtph_ps(gather4_u16(b0.add(2), b1.add(2), b2.add(2), b3.add(2)));
            acc = _mm_fmadd_ps(mw, _mm_set1_ps(ab.s), acc);
        }
    }
    let mut out = [0.0f32; R];
    _mm_storeu_ps(out.as_mut_ptr(), acc);
    out
}

/// Where a 4-row decode kernel prefetches block `i`'s bytes from: `ahead + i · step`, where
/// `step` is the bytes of one block of the 4 rows. Rows interleaved in groups are read as one
/// sequential stream, so a short distance is enough, and farther measured slower (the
/// hardware prefetcher already follows the stream; far software prefetches only compete with
/// it). Rows back to back are read as 4 streams, which hides the pattern from the hardware,
/// so there the next 4 rows are fetched while these are used.
pub(super) fn prefetch_ahead(wp: *const u8, step: usize, nb: usize, strides: Strides) -> *const u8 {
    const GROUPED_AHEAD: usize = 768;
    if strides.block == step {
        wp.wrapping_add(GROUPED_AHEAD)
    } else {
        wp.wrapping_add(step * nb)
    }
}

/// Four u16 at `p0..p3` in the low 4 lanes of a vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gather4_u16(
    p0: *const u8,
    p1: *const u8,
    p2: *const u8,
    p3: *const u8,
) -> __m128i {
    let lo = (p0 as *const u16).read_unaligned() as u32
        | ((p1 as *const u16).read_unaligned() as u32) << 16;
    let hi = (p2 as *const u16).read_unaligned() as u32
        | ((p3 as *const u16).read_unaligned() as u32) << 16;
    _mm_cvtsi64_si128((lo as u64 | (hi as u64) << 32) as i64)
}

/// One legacy block's pairwise integer products with `y` as 8 i32 lanes: unsigned weights
/// (Q4_0 + 8, Q5_0 + 16, Q4_1, Q5_1) times `y`, or for Q8 the sign trick.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy_row_isum(kind: LegacyKind, b: *const u8, y: __m256i, ones: __m256i) -> __m256i {
    let q = match kind {
        LegacyKind::Q4_0 => nibbles32(b.add(2)),
        LegacyKind::Q4_1 => nibbles32(b.add(4)),
        LegacyKind::Q5_0 | LegacyKind::Q5_1 => {
            let at = if kind == LegacyKind::Q5_0 { 2 } else { 4 };
            let qh = (b.add(at) as *const u32).read_unaligned();
            let hi = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
            _mm256_or_si256(nibbles32(b.add(at + 4)), hi)
        }
        _ => {
            let q = match kind {
                LegacyKind::IQ4_NL => _mm256_shuffle_epi8(iq4_table(), nibbles32(b.add(2))),
                LegacyKind::Q8_0 => load(b.add(2)),
                _ => load(b.add(4)),
            };
            return _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q)),
                ones,
            );
        }
    };
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones)
}

/// [`nibbles16`] in three operations: one 16-byte broadcast load, a per-lane shift, a mask.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles32(p: *const u8) -> __m256i {
    let x = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
    let x = _mm256_srlv_epi64(x, _mm256_setr_epi64x(0, 0, 4, 4));
    _mm256_and_si256(x, _mm256_set1_epi8(0xF))
}

/// The sum of the 8 i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Eight vectors of 8 i32 -> one vector of their 8 horizontal sums (lane t = Σ p[t]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn reduce8(p: &[__m256i; 8]) -> __m256i {
    let s01 = _mm256_hadd_epi32(p[0], p[1]);
    let s23 = _mm256_hadd_epi32(p[2], p[3]);
    let s45 = _mm256_hadd_epi32(p[4], p[5]);
    let s67 = _mm256_hadd_epi32(p[6], p[7]);
    let s0123 = _mm256_hadd_epi32(s01, s23);
    let s4567 = _mm256_hadd_epi32(s45, s67);
    let lo = _mm256_permute2x128_si256(s0123, s4567, 0x20);
    let hi = _mm256_permute2x128_si256(s0123, s4567, 0x31);
    _mm256_add_epi32(lo, hi)
}

/// Legacy types × 8 interleaved activation rows (the prefill tile). Each weight dword is
/// broadcast and multiplied with 4 elements of all 8 tokens at once, so the integer sums land
/// with one token per lane and need no horizontal reduction. Weights are made unsigned
/// (Q4_0 + 8, Q5_0 + 16) and the offset removed with the token sums; Q8 weights use the sign
/// trick instead.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_legacy_g8(kind: LegacyKind, w: &[u8], g: &[BlockQ8x8]) -> [f32; 8] {
    match kind {
        LegacyKind::Q4_0 => legacy_g8::<0>(w, g),
        LegacyKind::Q4_1 => legacy_g8::<1>(w, g),
        LegacyKind::Q5_0 => legacy_g8::<2>(w, g),
        LegacyKind::Q5_1 => legacy_g8::<3>(w, g),
        LegacyKind::Q8_0 => legacy_g8::<4>(w, g),
        LegacyKind::Q8_1 => legacy_g8::<5>(w, g),
        LegacyKind::IQ4_NL => legacy_g8::<6>(w, g),
    }
}

/// `vpbroadcastd` straight from memory (a load-port operation). Given the dword as a value,
/// LLVM keeps the weights in a register and broadcasts with two lane-crossing shuffles each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bcast32(p: *const u32) -> __m256i {
    let v: __m256i;
    std::arch::asm!(
        "vpbroadcastd {v}, dword ptr [{p}]",
        v = out(ymm_reg) v,
        p = in(reg) p,
        options(pure, readonly, nostack, preserves_flags)
    );
    v
}

/// [`bcast32`] of dword `$j` (a literal) of `$p`, the offset inside the instruction: with a
/// computed address LLVM spends an `lea` on each broadcast.
macro_rules! bcast32_at {
    ($p:expr, $j:literal) => {{
        let v: __m256i;
        std::arch::asm!(
            concat!("vpbroadcastd {v}, dword ptr [{p} + 4*", $j, "]"),
            v = out(ymm_reg) v,
            p = in(reg) $p,
            options(pure, readonly, nostack, preserves_flags)
        );
        v
    }};
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy_g8<const K: usize>(w: &[u8], g: &[BlockQ8x8]) -> [f32; 8] {
    legacy_g8_rows::<K, 1>(w.as_ptr(), 0, g)[0]
}

/// `R` weight rows (`row_bytes` apart) × 8 interleaved tokens → `out[r][t]`: every activation
/// load serves all `R` rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_legacy_g8_rows<const R: usize>(
    kind: LegacyKind,
    w: &[u8],
    row_bytes: usize,
    g: &[BlockQ8x8],
) -> [[f32; 8]; R] {
    let wp = w.as_ptr();
    match kind {
        LegacyKind::Q4_0 => legacy_g8_rows::<0, R>(wp, row_bytes, g),
        LegacyKind::Q4_1 => legacy_g8_rows::<1, R>(wp, row_bytes, g),
        LegacyKind::Q5_0 => legacy_g8_rows::<2, R>(wp, row_bytes, g),
        LegacyKind::Q5_1 => legacy_g8_rows::<3, R>(wp, row_bytes, g),
        LegacyKind::Q8_0 => legacy_g8_rows::<4, R>(wp, row_bytes, g),
        LegacyKind::Q8_1 => legacy_g8_rows::<5, R>(wp, row_bytes, g),
        LegacyKind::IQ4_NL => legacy_g8_rows::<6, R>(wp, row_bytes, g),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy_g8_rows<const K: usize, const R: usize>(
    wp: *const u8,
    row_bytes: usize,
    g: &[BlockQ8x8],
) -> [[f32; 8]; R] {
    let kind = LEGACY[K];
    let bb = kind.block_bytes();
    let nb = g.len();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut tmp = [[0u32; 8]; R];
    // signed weights (the sign trick): Q8 and the IQ4_NL grid (|v| <= 127)
    let is_q8 = matches!(
        kind,
        LegacyKind::Q8_0 | LegacyKind::Q8_1 | LegacyKind::IQ4_NL
    );
    // unsigned weights (offset `off` for the symmetric 4/5-bit types), or signed Q8
    let off = match kind {
        LegacyKind::Q4_0 => 8,
        LegacyKind::Q5_0 => 16,
        _ => 0,
    };
    for i in 0..nb {
        let ab = g.get_unchecked(i);
        let y = ab.qs.as_ptr() as *const u8;
        for r in 0..R {
            let b = wp.add(r * row_bytes + i * bb);
            let q = match kind {
                LegacyKind::Q4_0 => nibbles16(b.add(2)),
                LegacyKind::Q5_0 => {
                    let qh = (b.add(2) as *const u32).read_unaligned();
                    let hi = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
                    _mm256_or_si256(nibbles16(b.add(6)), hi)
                }
                _ => unpack_legacy(kind, b),
            };
            _mm256_storeu_si256(tmp[r].as_mut_ptr() as *mut __m256i, q);
        }
        let mut isum = [_mm256_setzero_si256(); R];
        if is_q8 {
            for j in 0..8 {
                let yj = load(y.add(32 * j));
                for r in 0..R {
                    let wv = bcast32(tmp[r].as_ptr().add(j));
                    let p =
                        _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(yj, wv));
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(p, ones));
                }
            }
        } else {
            // |q| <= 31, |a| <= 127: four maddubs results fit in i16 (4 · 2 · 31 · 127 < 2^15)
            let mut h = [[_mm256_setzero_si256(); 2]; R];
            for j in 0..8 {
                let yj = load(y.add(32 * j));
                for r in 0..R {
                    let wv = bcast32(tmp[r].as_ptr().add(j));
                    h[r][j / 4] = _mm256_add_epi16(h[r][j / 4], _mm256_maddubs_epi16(wv, yj));
                }
            }
            let corr = if off != 0 {
                let sums = _mm256_load_si256(ab.sum.as_ptr() as *const __m256i);
                _mm256_madd_epi16(sums, _mm256_set1_epi32(off)) // exact: see dot_u8k_g8_rows
            } else {
                _mm256_setzero_si256()
            };
            for r in 0..R {
                let s = _mm256_add_epi32(
                    _mm256_madd_epi16(h[r][0], ones),
                    _mm256_madd_epi16(h[r][1], ones),
                );
                isum[r] = _mm256_sub_epi32(s, corr);
            }
        }
        let da = _mm256_load_ps(ab.d.as_ptr());
        for r in 0..R {
            let b = wp.add(r * row_bytes + i * bb);
            acc[r] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(isum[r]),
                _mm256_mul_ps(_mm256_set1_ps(f16(b)), da),
                acc[r],
            );
            if kind.has_min() {
                let sa = _mm256_load_ps(ab.s.as_ptr());
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(f16(b.add(2))), sa, acc[r]);
            }
        }
    }
    let mut out = [[0.0f32; 8]; R];
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
    out
}

/// AVX2 form of `scalar::repack_u8`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn repack_u8(kind: LegacyKind, w: &[u8], out: &mut [BlockU8]) {
    let bb = kind.block_bytes();
    for (i, o) in out.iter_mut().enumerate() {
        let b = w.as_ptr().add(i * bb);
        let u = match kind {
            LegacyKind::Q4_0 => nibbles16(b.add(2)),
            LegacyKind::Q5_0 => {
                let qh = (b.add(2) as *const u32).read_unaligned();
                let hi = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
                _mm256_or_si256(nibbles16(b.add(6)), hi)
            }
            // the value (Q8_0) or grid value + 128, unsigned
            LegacyKind::Q8_0 | LegacyKind::IQ4_NL => {
                _mm256_xor_si256(unpack_legacy(kind, b), _mm256_set1_epi8(0x80u8 as i8))
            }
            _ => unpack_legacy(kind, b),
        };
        _mm256_storeu_si256(o.u.as_mut_ptr() as *mut __m256i, u);
        o.d = f16(b);
        o.m = if kind.has_min() { f16(b.add(2)) } else { 0.0 };
    }
}

/// [`repack_u8`] for Q5_0 straight from a 4-row group (see `dot_q5_0_r4` for the layout):
/// `out` holds the 4 rows' blocks back to back.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn repack_u8_q5_0_group(w: &[u8], out: &mut [BlockU8]) {
    const GB: usize = crate::interleave::Q5_0_GROUP_BLOCK;
    let nb = w.len() / GB;
    let s_lo01 = _mm256_setr_epi64x(0, 0, 1, 1);
    let s_hi01 = _mm256_setr_epi64x(2, 2, 3, 3);
    let s_lo23 = _mm256_setr_epi64x(1, 1, 2, 2);
    let s_hi23 = _mm256_setr_epi64x(3, 3, 4, 4);
    for i in 0..nb {
        let b = w.as_ptr().add(i * GB);
        let qh = _mm256_broadcastsi128_si256(_mm_loadu_si128(b.add(8) as *const __m128i));
        let x01 = load(b.add(24));
        let x23 = load(b.add(56));
        // [row 0 | row 1] and [row 2 | row 3], first and last 16 weights
        let lo01 = five_bits(x01, _mm256_srlv_epi64(qh, s_lo01));
        let hi01 = five_bits(_mm256_srli_epi16(x01, 4), _mm256_srlv_epi64(qh, s_hi01));
        let lo23 = five_bits(x23, _mm256_sllv_epi64(qh, s_lo23));
        let hi23 = five_bits(_mm256_srli_epi16(x23, 4), _mm256_sllv_epi64(qh, s_hi23));
        let u = [
            _mm256_permute2x128_si256(lo01, hi01, 0x20),
            _mm256_permute2x128_si256(lo01, hi01, 0x31),
            _mm256_permute2x128_si256(lo23, hi23, 0x20),
            _mm256_permute2x128_si256(lo23, hi23, 0x31),
        ];
        for (r, u) in u.into_iter().enumerate() {
            let o = out.get_unchecked_mut(r * nb + i);
            _mm256_storeu_si256(o.u.as_mut_ptr() as *mut __m256i, u);
            o.d = f16(b.add(2 * r));
            o.m = 0.0;
        }
    }
}

/// AVX2 form of `scalar::repack_u8_k`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn repack_u8_k(five: bool, w: &[u8], out: &mut [BlockU8]) {
    let bb = if five { 176 } else { 144 };
    let m4 = _mm256_set1_epi8(0xF);
    let bit = _mm256_set1_epi8(1);
    for (i, o) in out.chunks_exact_mut(8).enumerate() {
        let b = w.as_ptr().add(i * bb);
        let (d, dmin) = (f16(b), f16(b.add(2)));
        let (sc, mn) = kscale_min(std::slice::from_raw_parts(b.add(4), 12));
        let qs = b.add(if five { 48 } else { 16 });
        for k in 0..4 {
            let q = load(qs.add(32 * k));
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if five {
                let h = _mm256_srl_epi16(load(b.add(16)), _mm_cvtsi32_si128(2 * k as i32));
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(h, bit), 4));
                hi = _mm256_or_si256(
                    hi,
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 1), bit), 4),
                );
            }
            _mm256_storeu_si256(o[2 * k].u.as_mut_ptr() as *mut __m256i, lo);
            _mm256_storeu_si256(o[2 * k + 1].u.as_mut_ptr() as *mut __m256i, hi);
        }
        for (j, o) in o.iter_mut().enumerate() {
            (o.d, o.m, o.sc, o.mn) = (d, dmin, sc[j], mn[j]);
        }
    }
}

/// `R` unpacked rows of a legacy type × 8 interleaved tokens (`K` indexes `LEGACY`, Q4_0 …
/// Q5_1): per 4-byte weight group, one broadcast and one `maddubs` per row cover all 8 tokens;
/// the activation loads are shared by the rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_u8_g8_rows<const K: usize, const R: usize>(
    w: &[BlockU8],
    g: &[BlockQ8x8],
) -> [[f32; 8]; R] {
    u8_tile::<K, R, 1, _>(w.as_ptr(), g.len(), [g.as_ptr()], |acc| tile_out(acc)[0])
}

/// [`dot_u8_g8_rows`] for two groups of 8 tokens at once, each broadcast weight dword serving
/// 16 tokens, storing `out[k][r][t]` at `o + (8k + t) · stride + r` (see `tile_scatter`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_u8_g16_rows_to<const K: usize, const R: usize>(
    w: &[BlockU8],
    g: [&[BlockQ8x8]; 2],
    o: *mut f32,
    stride: usize,
) {
    let nb = g[0].len();
    let g = [g[0].as_ptr(), g[1].as_ptr()];
    u8_tile::<K, R, 2, _>(w.as_ptr(), nb, g, |acc| tile_scatter(acc, o, stride))
}

/// A tile's accumulators as `out[k][r][t]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_out<const R: usize, const G: usize>(
    acc: [[__m256; R]; G],
) -> [[[f32; 8]; R]; G] {
    let mut out = [[[0.0f32; 8]; R]; G];
    for k in 0..G {
        for r in 0..R {
            _mm256_storeu_ps(out[k][r].as_mut_ptr(), acc[k][r]);
        }
    }
    out
}

/// A tile's accumulators stored straight into a token-major output: (group `k`, row `r`,
/// token `t`) at `o + (8k + t) · stride + r`. Two rows go as one 8-byte store per token; a
/// caller picking 32 floats out of a returned array instead stalls on store forwarding.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_scatter<const R: usize, const G: usize>(
    acc: [[__m256; R]; G],
    o: *mut f32,
    stride: usize,
) {
    for k in 0..G {
        let base = o.add(8 * k * stride);
        if R == 2 {
            // (t0 r0, t0 r1, t1 r0, t1 r1 | t4 …) and (t2 …, t3 … | t6 …, t7 …)
            let lo = _mm256_unpacklo_ps(acc[k][0], acc[k][1]);
            let hi = _mm256_unpackhi_ps(acc[k][0], acc[k][1]);
            for (v, t) in [(lo, 0), (hi, 2)] {
                let v = _mm256_castps_si256(v);
                let (a, b) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
                let put = |t: usize, x: i64| (base.add(t * stride) as *mut i64).write_unaligned(x);
                put(t, _mm_cvtsi128_si64(a));
                put(t + 1, _mm_extract_epi64(a, 1));
                put(t + 4, _mm_cvtsi128_si64(b));
                put(t + 5, _mm_extract_epi64(b, 1));
            }
        } else {
            for r in 0..R {
                let mut v = [0.0f32; 8];
                _mm256_storeu_ps(v.as_mut_ptr(), acc[k][r]);
                for (t, &x) in v.iter().enumerate() {
                    *base.add(t * stride + r) = x;
                }
            }
        }
    }
}

/// `R` unpacked legacy rows × `G` interleaved token groups → `out[k][r]`, with one i16
/// `maddubs` chain per (row, group) (two per pair would not fit the 16 registers at 2 × 2).
/// One chain holds the whole block when u <= 15 (8 · 2 · 15 · 127 < 2^15). Q5_0 (u = q + 16)
/// also sums all 8 in wrapping i16, then subtracts the offset's share `off16`: what is left,
/// Σ q·a with -16 <= q <= 15, fits (8 · 2 · 16 · 127 < 2^15), so it is exact. Q5_1 widens
/// after each 4 (adding back 16·Σa would cost more than it saves). `finish` stores the
/// accumulators: as a closure, each entry point gets its own inlined copy of the tile.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn u8_tile<const K: usize, const R: usize, const G: usize, T>(
    wp: *const BlockU8,
    nb: usize,
    g: [*const BlockQ8x8; G],
    finish: impl FnOnce([[__m256; R]; G]) -> T,
) -> T {
    let kind = LEGACY[K];
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); R]; G];
    for i in 0..nb {
        let u: [*const u8; R] = std::array::from_fn(|r| (*wp.add(r * nb + i)).u.as_ptr());
        let y = |k: usize, q: usize| load((*g[k].add(i)).qs.as_ptr().add(32 * q) as _);
        // `$h` = maddubs of dword $q0 (the start of a chain), plus those of dwords $q..
        macro_rules! chain {
            ($h:ident = $q0:literal $(+ $q:literal)*) => {
                let yv: [__m256i; G] = std::array::from_fn(|k| y(k, $q0));
                for r in 0..R {
                    let wv = bcast32_at!(u[r], $q0);
                    for k in 0..G {
                        $h[k][r] = _mm256_maddubs_epi16(wv, yv[k]);
                    }
                }
                $(
                    let yv: [__m256i; G] = std::array::from_fn(|k| y(k, $q));
                    for r in 0..R {
                        let wv = bcast32_at!(u[r], $q);
                        for k in 0..G {
                            $h[k][r] = maddubs_add($h[k][r], wv, yv[k]);
                        }
                    }
                )*
            };
        }
        let mut h = [[_mm256_setzero_si256(); R]; G];
        // the exact Σ u·a (Q5_0: Σ q·a) per (group, row)
        let mut s = [[_mm256_setzero_si256(); R]; G];
        if kind == LegacyKind::Q5_1 {
            chain!(h = 0 + 1 + 2 + 3);
            for k in 0..G {
                for r in 0..R {
                    s[k][r] = _mm256_madd_epi16(h[k][r], ones);
                }
            }
            chain!(h = 4 + 5 + 6 + 7);
        } else {
            chain!(h = 0 + 1 + 2 + 3 + 4 + 5 + 6 + 7);
        }
        for k in 0..G {
            for r in 0..R {
                if kind == LegacyKind::Q5_0 {
                    let off16 = (*g[k].add(i)).off16.as_ptr() as *const __m256i;
                    h[k][r] = _mm256_sub_epi16(h[k][r], _mm256_load_si256(off16));
                }
                s[k][r] = _mm256_add_epi32(s[k][r], _mm256_madd_epi16(h[k][r], ones));
            }
        }
        for k in 0..G {
            let ab = &*g[k].add(i);
            let da = _mm256_load_ps(ab.d.as_ptr());
            for r in 0..R {
                let b = &*wp.add(r * nb + i);
                let mut isum = s[k][r];
                if kind == LegacyKind::Q4_0 {
                    // Σ q·a = Σ u·a - 8·Σa, exact (|Σa| <= 32 · 127)
                    let sums = _mm256_load_si256(ab.sum.as_ptr() as *const __m256i);
                    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(sums, 3));
                }
                // the canonical float steps (module docs)
                let scale = _mm256_mul_ps(_mm256_set1_ps(b.d), da);
                acc[k][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[k][r]);
                if kind.has_min() {
                    let sa = _mm256_load_ps(ab.s.as_ptr());
                    acc[k][r] = _mm256_fmadd_ps(_mm256_set1_ps(b.m), sa, acc[k][r]);
                }
            }
        }
    }
    finish(acc)
}

/// `R` unpacked rows of Q4_K / Q5_K (8 [`BlockU8`] per super-block, each with its sub-block's
/// integer scale and min) × 8 interleaved tokens, finished per super-block exactly as the
/// one-token kernel finishes it.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_u8k_g8_rows<const FIVE: bool, const R: usize>(
    w: &[BlockU8],
    g: &[BlockQ8x8],
) -> [[f32; 8]; R] {
    u8k_tile::<FIVE, R, 1, _>(w.as_ptr(), g.len(), [g.as_ptr()], |acc| tile_out(acc)[0])
}

/// [`dot_u8k_g8_rows`] for two groups of 8 tokens at once, stored like [`dot_u8_g16_rows_to`]:
/// each broadcast weight dword serves both groups, so the tile needs one load per `maddubs`
/// instead of one and a half, and the per-sub-block scale work is shared.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_u8k_g16_rows_to<const FIVE: bool, const R: usize>(
    w: &[BlockU8],
    g: [&[BlockQ8x8]; 2],
    o: *mut f32,
    stride: usize,
) {
    let nb = g[0].len();
    let g = [g[0].as_ptr(), g[1].as_ptr()];
    u8k_tile::<FIVE, R, 2, _>(w.as_ptr(), nb, g, |acc| tile_scatter(acc, o, stride))
}

/// `acc + maddubs(w, y)` (i16 lanes, wrapping) as one opaque step: written with intrinsics,
/// LLVM re-associates a tile's chains of these adds into trees whose partial sums spill.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn maddubs_add(acc: __m256i, w: __m256i, y: __m256i) -> __m256i {
    let mut acc = acc;
    std::arch::asm!(
        "vpmaddubsw {t}, {w}, {y}",
        "vpaddw {a}, {a}, {t}",
        a = inout(ymm_reg) acc,
        t = out(ymm_reg) _,
        w = in(ymm_reg) w,
        y = in(ymm_reg) y,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `R` unpacked Q4_K / Q5_K rows (`nb` blocks each, back to back at `wp`) × `G` interleaved
/// token groups → `out[k][r]`.
///
/// Per sub-block, each (row, group) sums its 8 `maddubs` in i16 and then takes one `madd`
/// with the sub-block scale. Q4_K sums all 8 in one i16 (u <= 15, |a| <= 127:
/// 8 · 2 · 15 · 127 < 2^15); Q5_K (u <= 31) needs one per 16 weights. The mins' sum
/// `Σ mn·sum(a)` is taken once per super-block, after the dot products, when registers are
/// free. `finish` stores the accumulators (see `u8_tile`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn u8k_tile<const FIVE: bool, const R: usize, const G: usize, T>(
    wp: *const BlockU8,
    nb: usize,
    g: [*const BlockQ8x8; G],
    finish: impl FnOnce([[__m256; R]; G]) -> T,
) -> T {
    let lo = _mm256_set1_epi16(0xFF);
    let mut acc = [[_mm256_setzero_ps(); R]; G];
    // `sc` and `mn` are adjacent bytes: one i16 broadcast of the pair serves both
    let sc_mn = |r: usize, i: usize| {
        let b = wp.add(r * nb + i);
        _mm256_set1_epi16((std::ptr::addr_of!((*b).sc) as *const i16).read_unaligned())
    };
    for sb in 0..nb / 8 {
        let mut isum = [[_mm256_setzero_si256(); R]; G];
        for j in 0..8 {
            let i = 8 * sb + j;
            let mut h = [[[_mm256_setzero_si256(); 2]; R]; G];
            let u: [*const u8; R] = std::array::from_fn(|r| (*wp.add(r * nb + i)).u.as_ptr());
            // adds the maddubs of dword $q (a literal, for `bcast32_at`) to the chains; the
            // first of a chain starts it
            macro_rules! step {
                ($($q:literal),*) => {$(
                    let y: [__m256i; G] =
                        std::array::from_fn(|k| load((*g[k].add(i)).qs.as_ptr().add(32 * $q) as _));
                    // Two chains per (row, group) where they are few (one group), so that the
                    // adds' latency stays hidden.
                    let half = if FIVE || G == 1 { $q / 4 } else { 0 };
                    for r in 0..R {
                        let wv = bcast32_at!(u[r], $q);
                        for k in 0..G {
                            h[k][r][half] = if $q == 0 || ($q == 4 && half == 1) {
                                _mm256_maddubs_epi16(wv, y[k])
                            } else {
                                maddubs_add(h[k][r][half], wv, y[k])
                            };
                        }
                    }
                )*};
            }
            step!(0, 1, 2, 3, 4, 5, 6, 7);
            for r in 0..R {
                let sc = _mm256_and_si256(sc_mn(r, i), lo);
                for k in 0..G {
                    let p = if FIVE {
                        _mm256_add_epi32(
                            _mm256_madd_epi16(h[k][r][0], sc),
                            _mm256_madd_epi16(h[k][r][1], sc),
                        )
                    } else {
                        // exact in i16 (see above); `h[k][r][1]` is zero for two groups
                        _mm256_madd_epi16(_mm256_add_epi16(h[k][r][0], h[k][r][1]), sc)
                    };
                    isum[k][r] = _mm256_add_epi32(isum[k][r], p);
                }
            }
        }
        for r in 0..R {
            let mut msum = [_mm256_setzero_si256(); G];
            for j in 0..8 {
                let i = 8 * sb + j;
                // mn alone in each i32 lane (the top byte of the broadcast pairs)
                let mn = _mm256_srli_epi32(sc_mn(r, i), 24);
                for k in 0..G {
                    // sum·mn as one `madd`: |sum| <= 32·127 fits the low i16 of each i32 lane
                    // and the high i16 of the multiplier is 0, so this is the exact product at
                    // a fraction of `mullo_epi32`'s cost.
                    let sums = _mm256_load_si256((*g[k].add(i)).sum.as_ptr() as *const __m256i);
                    msum[k] = _mm256_add_epi32(msum[k], _mm256_madd_epi16(sums, mn));
                }
            }
            // the super-block's exact integer sums, then the canonical float steps (module
            // docs); every sub-block of a super-block carries its activation scale
            let b = &*wp.add(r * nb + 8 * sb);
            for k in 0..G {
                let da = _mm256_load_ps((*g[k].add(8 * sb)).d.as_ptr());
                let (scale, mscale) = (
                    _mm256_mul_ps(_mm256_set1_ps(b.d), da),
                    _mm256_mul_ps(_mm256_set1_ps(b.m), da),
                );
                acc[k][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[k][r]), scale, acc[k][r]);
                acc[k][r] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum[k]), mscale, acc[k][r]);
            }
        }
    }
    finish(acc)
}

/// `R` unpacked Q6_K rows × 8 tokens whose activations are offset by 128 (`BlockU8` docs).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_u8q6_g8_rows<const R: usize>(
    w: &[BlockU8],
    g: &[BlockQ8x8],
) -> [[f32; 8]; R] {
    u8q6_tile::<R, 1, _>(w.as_ptr(), g.len(), [g.as_ptr()], |acc| tile_out(acc)[0])
}

/// [`dot_u8q6_g8_rows`] for two groups of 8 tokens at once, stored like
/// [`dot_u8_g16_rows_to`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_u8q6_g16_rows_to<const R: usize>(
    w: &[BlockU8],
    g: [&[BlockQ8x8]; 2],
    o: *mut f32,
    stride: usize,
) {
    let nb = g[0].len();
    let g = [g[0].as_ptr(), g[1].as_ptr()];
    u8q6_tile::<R, 2, _>(w.as_ptr(), nb, g, |acc| tile_scatter(acc, o, stride))
}

/// `R` unpacked Q6_K rows × `G` token groups → `out[k][r]`. The offset activations are the
/// unsigned `maddubs` operand and the 6-bit weights the signed one; two `maddubs` (|sum| <=
/// 2·2·255·32 < 2^15) go into an i16 chain, which one `madd` with the 16 weights' scale
/// widens. Per super-block, `corr` takes the offset back out of the exact integer sum, and
/// the float step is the one-token kernel's. `finish` stores the accumulators (see `u8_tile`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn u8q6_tile<const R: usize, const G: usize, T>(
    wp: *const BlockU8,
    nb: usize,
    g: [*const BlockQ8x8; G],
    finish: impl FnOnce([[__m256; R]; G]) -> T,
) -> T {
    let mut acc = [[_mm256_setzero_ps(); R]; G];
    for sb in 0..nb / 8 {
        let mut isum = [[_mm256_setzero_si256(); R]; G];
        let mut corr = [0i32; R];
        for j in 0..8 {
            let i = 8 * sb + j;
            // both i8 scales of each row, sign-extended into every i16 lane
            let pair: [__m256i; R] = std::array::from_fn(|r| {
                let b = wp.add(r * nb + i);
                _mm256_set1_epi16((std::ptr::addr_of!((*b).sc) as *const i16).read_unaligned())
            });
            for half in 0..2 {
                let sc: [__m256i; R] = std::array::from_fn(|r| {
                    if half == 0 {
                        _mm256_srai_epi16(_mm256_slli_epi16(pair[r], 8), 8)
                    } else {
                        _mm256_srai_epi16(pair[r], 8)
                    }
                });
                for step in 0..2 {
                    let q0 = 4 * half + 2 * step;
                    let mut h = [[_mm256_setzero_si256(); R]; G];
                    for q in q0..q0 + 2 {
                        let y: [__m256i; G] = std::array::from_fn(|k| {
                            load((*g[k].add(i)).qs.as_ptr().add(32 * q) as _)
                        });
                        for r in 0..R {
                            let wv =
                                bcast32(((*wp.add(r * nb + i)).u.as_ptr() as *const u32).add(q));
                            for k in 0..G {
                                h[k][r] = maddubs_add(h[k][r], y[k], wv);
                            }
                        }
                    }
                    for r in 0..R {
                        for k in 0..G {
                            isum[k][r] =
                                _mm256_add_epi32(isum[k][r], _mm256_madd_epi16(h[k][r], sc[r]));
                        }
                    }
                }
            }
            for (r, c) in corr.iter_mut().enumerate() {
                *c += (*wp.add(r * nb + i)).corr;
            }
        }
        for r in 0..R {
            let d = _mm256_set1_ps((*wp.add(r * nb + 8 * sb)).d);
            let c = _mm256_set1_epi32(corr[r]);
            for k in 0..G {
                let da = _mm256_load_ps((*g[k].add(8 * sb)).d.as_ptr());
                let exact = _mm256_sub_epi32(isum[k][r], c);
                acc[k][r] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(exact), _mm256_mul_ps(d, da), acc[k][r]);
            }
        }
    }
    finish(acc)
}

/// The 8 mins of a Q4_K/Q5_K block as 16 i16, each repeated for the two Q8_K bsums (16
/// elements each) of its 32-element sub-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mins_x2(mn: &[u8; 8]) -> __m256i {
    let m = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr() as *const __m128i));
    _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_k_n<const N: usize>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    q45_k::<false, N>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_k_n<const N: usize>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    q45_k::<true, N>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45_k<const FIVE: bool, const N: usize>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let bb = if FIVE { 176 } else { 144 };
    let nb = w.len() / bb;
    let m4 = _mm256_set1_epi8(0xF);
    let mut acc = [0.0f32; N];
    let wp = w.as_ptr();
    for i in 0..nb {
        let b = wp.add(i * bb);
        let d = f16(b);
        let dmin = f16(b.add(2));
        let (sc, mn) = kscale_min(std::slice::from_raw_parts(b.add(4), 12));
        let mins = mins_x2(&mn);
        // the 8 scales as i16 in both lanes, spread per sub-block by the shuffles below
        let sc8 = _mm_cvtepu8_epi16(_mm_loadl_epi64(sc.as_ptr() as *const __m128i));
        let sc8 = _mm256_set_m128i(sc8, sc8);
        let qs = b.add(if FIVE { 48 } else { 16 });
        let qh = if FIVE {
            load(b.add(16))
        } else {
            _mm256_setzero_si256()
        };
        let mut isum = [_mm256_setzero_si256(); N];
        for j in 0..4 {
            let q = load(qs.add(32 * j));
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if FIVE {
                let bit = _mm256_set1_epi8(1);
                let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j as i32));
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(h, bit), 4));
                hi = _mm256_or_si256(
                    hi,
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 1), bit), 4),
                );
            }
            let s1 = _mm256_shuffle_epi8(sc8, _mm256_set1_epi16((0x0100 + 0x0404 * j) as i16));
            let s2 = _mm256_shuffle_epi8(sc8, _mm256_set1_epi16((0x0302 + 0x0404 * j) as i16));
            for t in 0..N {
                let y = a[t].get_unchecked(i).qs.as_ptr().add(64 * j) as *const u8;
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load(y)), s1);
                let p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load(y.add(32))), s2);
                isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(p1, p2));
            }
        }
        // the super-block's exact integer sums, then the canonical float steps (module docs)
        for t in 0..N {
            let ab = a[t].get_unchecked(i);
            let bs = load(ab.bsums.as_ptr() as *const u8);
            let msum = hsum_i32(_mm256_madd_epi16(mins, bs));
            acc[t] = (hsum_i32(isum[t]) as f32).mul_add(d * ab.d, acc[t]);
            acc[t] = (-(msum as f32)).mul_add(dmin * ab.d, acc[t]);
        }
    }
    acc
}

/// Bits `s, s+1` of every byte of `qh`, moved to bits 4 and 5.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_high(qh: __m256i, s: i32, m3: __m256i) -> __m256i {
    _mm256_slli_epi16(
        _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(s)), m3),
        4,
    )
}

/// `vpshufb` masks: for chunk `k`, i16 scale `2k` repeated over the low lane and `2k + 1` over
/// the high lane (of a vector holding 8 i16 scales in each lane).
const Q6_SCALE_SHUF: [__m256i; 4] = {
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
    unsafe { std::mem::transmute::<[[u8; 32]; 4], [__m256i; 4]>(m) }
};

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k_n<const N: usize>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let nb = w.len() / 210;
    let m4 = _mm256_set1_epi8(0xF);
    let m3 = _mm256_set1_epi8(3);
    let mut acc = [0.0f32; N];
    let wp = w.as_ptr();
    for i in 0..nb {
        let b = wp.add(i * 210);
        let d = f16(b.add(208));
        let sc = b.add(192) as *const i8;
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
        // The 16 scales as i16 in both 128-bit lanes, for the per-chunk shuffles below.
        let sc_lo = _mm256_permute2x128_si256(sc16, sc16, 0x00);
        let sc_hi = _mm256_permute2x128_si256(sc16, sc16, 0x11);
        // Σ_g sc_g · Σ (q - 32) a = Σ_g sc_g · Σ q a - 32 Σ_g sc_g · bsum_g
        let mut isum = [_mm256_setzero_si256(); N];
        for t in 0..N {
            let bs = load(a[t].get_unchecked(i).bsums.as_ptr() as *const u8);
            isum[t] = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5));
        }
        for h in 0..2 {
            let ql0 = load(b.add(64 * h));
            let ql1 = load(b.add(64 * h + 32));
            let qh = load(b.add(128 + 32 * h));
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), q6_high(qh, 0, m3)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), q6_high(qh, 2, m3)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                    q6_high(qh, 4, m3),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    q6_high(qh, 6, m3),
                ),
            ];
            let scl = if h == 0 { sc_lo } else { sc_hi };
            for (k, &qk) in q.iter().enumerate() {
                // scale 2k in the low lane, 2k + 1 in the high lane (of this half's 8)
                let scv = _mm256_shuffle_epi8(scl, Q6_SCALE_SHUF[k]);
                for t in 0..N {
                    let y = a[t].get_unchecked(i).qs.as_ptr().add(128 * h + 32 * k) as *const u8;
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qk, load(y)), scv);
                    isum[t] = _mm256_add_epi32(isum[t], p);
                }
            }
        }
        // the super-block's exact integer sum, then the canonical float step (module docs)
        for t in 0..N {
            let da = a[t].get_unchecked(i).d;
            acc[t] = (hsum_i32(isum[t]) as f32).mul_add(d * da, acc[t]);
        }
    }
    acc
}

/// The 8 scales and 8 mins of a Q4_K/Q5_K block from its 12 packed bytes at `p` (16 bytes are
/// read; the block continues past them): bytes 0..8 the scales, 8..16 the mins. The vector
/// form of `kscale_min`, which as scalar code costs the decode kernel more than the dots.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn kscale_min_v(p: *const u8) -> __m128i {
    // dwords s0..4, s4..8, s8..12; the low bits of the result are
    // [s0..4 & 63, s8..12 & 15, s4..8 & 63, s8..12 >> 4 & 15]
    let x = _mm_loadu_si128(p as *const __m128i);
    let t = _mm_shuffle_epi32(x, 0b10_01_10_00);
    let low = _mm_and_si128(
        _mm_srlv_epi32(t, _mm_setr_epi32(0, 0, 0, 4)),
        _mm_setr_epi32(0x3F3F3F3F, 0x0F0F0F0F, 0x3F3F3F3F, 0x0F0F0F0F),
    );
    // high bits of scales/mins 4..8: the top 2 bits of s0..4 / s4..8, moved to bits 4 and 5
    let u = _mm_shuffle_epi32(x, 0b01_01_00_00);
    let high = _mm_and_si128(
        _mm_srli_epi32(u, 2),
        _mm_setr_epi32(0, 0x30303030, 0, 0x30303030),
    );
    _mm_or_si128(low, high)
}

/// Four vectors of 8 i32 -> their 4 horizontal sums (lane r = Σ p[r], exact), without
/// `vphaddd` (3 uops, 2 cycles each on Zen 3): in-lane transposes and adds.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn sum4(p: &[__m256i; 4]) -> __m128i {
    // lanes (per 128-bit half): [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d
    let ab = _mm256_add_epi32(
        _mm256_unpacklo_epi32(p[0], p[1]),
        _mm256_unpackhi_epi32(p[0], p[1]),
    );
    let cd = _mm256_add_epi32(
        _mm256_unpacklo_epi32(p[2], p[3]),
        _mm256_unpackhi_epi32(p[2], p[3]),
    );
    let s = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
    _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1))
}

/// [`sum4`] for vectors of 4 i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn sum4_128(p: &[__m128i; 4]) -> __m128i {
    let ab = _mm_add_epi32(
        _mm_unpacklo_epi32(p[0], p[1]),
        _mm_unpackhi_epi32(p[0], p[1]),
    );
    let cd = _mm_add_epi32(
        _mm_unpacklo_epi32(p[2], p[3]),
        _mm_unpackhi_epi32(p[2], p[3]),
    );
    _mm_add_epi32(_mm_unpacklo_epi64(ab, cd), _mm_unpackhi_epi64(ab, cd))
}

/// The f16 pairs at `p[0..4]` (4 bytes each: Q4_K/Q5_K's `d` and `dmin`) as two f32 vectors,
/// lane r from `p[r]`. Built in registers: writing 4 scalars to memory and reloading them as
/// one vector would stall on store forwarding.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_pairs4(p: [*const u8; 4]) -> (__m128, __m128) {
    // (no closures in these functions: they would not inherit the target features)
    let mut v = _mm_cvtsi32_si128((p[0] as *const i32).read_unaligned());
    v = _mm_insert_epi32::<1>(v, (p[1] as *const i32).read_unaligned());
    v = _mm_insert_epi32::<2>(v, (p[2] as *const i32).read_unaligned());
    v = _mm_insert_epi32::<3>(v, (p[3] as *const i32).read_unaligned());
    // [d0 d1 d2 d3 m0 m1 m2 m3]
    #[rustfmt::skip]
    let v = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
    let f = _mm256_cvtph_ps(v);
    (_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1))
}

/// 4 Q4_K/Q5_K rows (placed as `strides` says) · one activation row: the
/// decode kernel. Each row's super-block gives its exact integer sums as in `q45_k`; the 4
/// rows' horizontal sums, scales and float steps then take one vector operation each (lane
/// r = row r, the same float operations as `q45_k`), which is much of a one-row kernel's cost.
/// Each 64 activations are loaded once for the 4 rows, and each sub-block scale is one
/// broadcast load from a small per-row table: the loop is bound by vector and load
/// instructions, so it avoids both reloads and shuffles.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q45_k_rows<const FIVE: bool, const R: usize>(
    w: &[u8],
    strides: Strides,
    a: &[BlockQ8K],
) -> [f32; R] {
    assert!(R == 4, "dot_q45_k_rows: 4 rows at a time");
    let bb = if FIVE { 176 } else { 144 };
    let nb = a.len();
    let Strides {
        row: rs,
        block: block_stride,
    } = strides;
    let mut acc = _mm_setzero_ps(); // lane r: row r
    let wp = w.as_ptr();
    // 4 · bb bytes fetched ahead per super-block (see `prefetch_ahead`).
    let ahead = prefetch_ahead(wp, R * bb, nb, strides);
    for i in 0..nb {
        let pf = ahead.wrapping_add(i * R * bb);
        for l in 0..(R * bb).div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(64 * l) as *const i8);
        }
        let ab = a.get_unchecked(i);
        let bs = _mm256_madd_epi16(load(ab.bsums.as_ptr() as *const u8), _mm256_set1_epi16(1));
        let bsp = _mm_packs_epi32(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
        let b0 = wp.add(i * block_stride);
        let zero = _mm_setzero_si128();
        // Per row: scale k as both i16 halves of dword k (one `vpbroadcastd` load per
        // sub-block, no shuffle), and the mins' dot with the activation's sub-block sums.
        let mut tbl = [[0u32; 8]; 4];
        let mut msum = [_mm_setzero_si128(); 4];
        for r in 0..4 {
            let scm = kscale_min_v(b0.add(r * rs + 4));
            msum[r] = _mm_madd_epi16(_mm_unpackhi_epi8(scm, zero), bsp);
            let sc = _mm_unpacklo_epi8(scm, zero);
            _mm_storeu_si128(
                tbl[r].as_mut_ptr() as *mut __m128i,
                _mm_unpacklo_epi16(sc, sc),
            );
            _mm_storeu_si128(
                tbl[r].as_mut_ptr().add(4) as *mut __m128i,
                _mm_unpackhi_epi16(sc, sc),
            );
        }
        let y = ab.qs.as_ptr() as *const u8;
        let mut isum = [_mm256_setzero_si256(); 4];
        q45_rows_step::<FIVE, 0>(b0, rs, &tbl, y, &mut isum);
        q45_rows_step::<FIVE, 1>(b0, rs, &tbl, y, &mut isum);
        q45_rows_step::<FIVE, 2>(b0, rs, &tbl, y, &mut isum);
        q45_rows_step::<FIVE, 3>(b0, rs, &tbl, y, &mut isum);
        let (d, dmin) = f16_pairs4([b0, b0.add(rs), b0.add(2 * rs), b0.add(3 * rs)]);
        let m = sum4_128(&msum);
        let da = _mm_set1_ps(ab.d);
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sum4(&isum)), _mm_mul_ps(d, da), acc);
        acc = _mm_fnmadd_ps(_mm_cvtepi32_ps(m), _mm_mul_ps(dmin, da), acc);
    }
    let mut out = [0.0f32; R];
    _mm_storeu_ps(out.as_mut_ptr(), acc);
    out
}

/// Sub-blocks `2j` and `2j + 1` of a Q4_K / Q5_K super-block as bytes (0..=15, or 0..=31
/// for Q5_K): `x` is the 32 nibble bytes at `qs + 32j`, `qh` Q5_K's 32 high-bit bytes (unused
/// for Q4_K). Bits `2j` and `2j + 1` of every `qh` byte move to bit 4 (16-bit shifts: what
/// crosses a byte boundary is masked off).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_q45<const FIVE: bool>(
    x: __m256i,
    qh: __m256i,
    j: usize,
) -> [__m256i; 2] {
    let m4 = _mm256_set1_epi8(0xF);
    let mut lo = _mm256_and_si256(x, m4);
    let mut hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
    if FIVE {
        let bit4 = _mm256_set1_epi8(0x10);
        let (h0, h1) = match j {
            0 => (_mm256_slli_epi16(qh, 4), _mm256_slli_epi16(qh, 3)),
            1 => (_mm256_slli_epi16(qh, 2), _mm256_slli_epi16(qh, 1)),
            2 => (qh, _mm256_srli_epi16(qh, 1)),
            _ => (_mm256_srli_epi16(qh, 2), _mm256_srli_epi16(qh, 3)),
        };
        lo = _mm256_or_si256(lo, _mm256_and_si256(h0, bit4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(h1, bit4));
    }
    [lo, hi]
}

/// Sub-blocks `2J` and `2J + 1` (64 weights) of the 4 rows' super-blocks at `b0 + r · rs`,
/// added to `isum[r]`. A function per `J` so that the bit positions below are
/// constants and every step is unrolled.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45_rows_step<const FIVE: bool, const J: usize>(
    b0: *const u8,
    rs: usize,
    tbl: &[[u32; 8]; 4],
    y: *const u8,
    isum: &mut [__m256i; 4],
) {
    let y0 = load(y.add(64 * J));
    let y1 = load(y.add(64 * J + 32));
    for r in 0..4 {
        let b = b0.add(r * rs);
        let x = load(b.add(if FIVE { 48 } else { 16 } + 32 * J));
        let qh = if FIVE { load(b.add(16)) } else { x };
        let [lo, hi] = unpack_q45::<FIVE>(x, qh, J);
        let s1 = bcast32(tbl[r].as_ptr().add(2 * J));
        let s2 = bcast32(tbl[r].as_ptr().add(2 * J + 1));
        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0), s1);
        let p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1), s2);
        isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(p1, p2));
    }
}

/// One row's Q6_K super-block at `b` × the activation block `ab`: the exact integer dot spread
/// over 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_block(b: *const u8, ab: &BlockQ8K) -> __m256i {
    let m4 = _mm256_set1_epi8(0xF);
    let m30 = _mm256_set1_epi8(0x30);
    let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
    let sc_lo = _mm256_permute2x128_si256(sc16, sc16, 0x00);
    let sc_hi = _mm256_permute2x128_si256(sc16, sc16, 0x11);
    // Σ_g sc_g · Σ (q - 32) a = Σ_g sc_g · Σ q a - 32 Σ_g sc_g · bsum_g
    let bs = load(ab.bsums.as_ptr() as *const u8);
    let mut isum = _mm256_sub_epi32(
        _mm256_setzero_si256(),
        _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5),
    );
    let y = ab.qs.as_ptr() as *const u8;
    for h in 0..2 {
        let ql0 = load(b.add(64 * h));
        let ql1 = load(b.add(64 * h + 32));
        let qh = load(b.add(128 + 32 * h));
        // bits 2k, 2k + 1 of every qh byte moved to bits 4, 5 (16-bit shifts: the bits that
        // cross a byte boundary are masked off)
        let q = [
            _mm256_or_si256(
                _mm256_and_si256(ql0, m4),
                _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(ql1, m4),
                _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                _mm256_and_si256(qh, m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
            ),
        ];
        let scl = if h == 0 { sc_lo } else { sc_hi };
        for (k, &qk) in q.iter().enumerate() {
            // scale 2k in the low lane, 2k + 1 in the high lane (of this half's 8)
            let scv = _mm256_shuffle_epi8(scl, Q6_SCALE_SHUF[k]);
            let p = _mm256_maddubs_epi16(qk, load(y.add(128 * h + 32 * k)));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, scv));
        }
    }
    isum
}

/// 4 Q6_K rows (placed as `strides` says) · one activation row: the decode kernel, shaped
/// like [`dot_q45_k_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k_rows<const R: usize>(
    w: &[u8],
    strides: Strides,
    a: &[BlockQ8K],
) -> [f32; R] {
    assert!(R == 4, "dot_q6_k_rows: 4 rows at a time");
    let nb = a.len();
    let Strides { row: rs, block: bs } = strides;
    let mut acc = _mm_setzero_ps(); // lane r: row r
    let wp = w.as_ptr();
    // (see `prefetch_ahead`)
    let ahead = prefetch_ahead(wp, R * 210, nb, strides);
    for i in 0..nb {
        let pf = ahead.wrapping_add(i * R * 210);
        for l in 0..(R * 210).div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(64 * l) as *const i8);
        }
        let ab = a.get_unchecked(i);
        let mut isum = [_mm256_setzero_si256(); 4];
        for r in 0..4 {
            isum[r] = q6_k_block(wp.add(r * rs + i * bs), ab);
        }
        // the 4 rows' d (f16 at byte 208), gathered in a register
        let p = wp.add(i * bs + 208) as *const i16;
        let mut h = _mm_cvtsi32_si128(p.read_unaligned() as u16 as i32);
        h = _mm_insert_epi16::<1>(h, p.byte_add(rs).read_unaligned() as i32);
        h = _mm_insert_epi16::<2>(h, p.byte_add(2 * rs).read_unaligned() as i32);
        h = _mm_insert_epi16::<3>(h, p.byte_add(3 * rs).read_unaligned() as i32);
        let d = _mm_cvtph_ps(h);
        // the canonical float step (module docs), all 4 rows at once
        let scale = _mm_mul_ps(d, _mm_set1_ps(ab.d));
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sum4(&isum)), scale, acc);
    }
    let mut out = [0.0f32; R];
    _mm_storeu_ps(out.as_mut_ptr(), acc);
    out
}

/// Scale vector for one 32-element chunk whose halves (16 elements each) use `s0` and `s1`:
/// the i16 lanes 0..8 of a `maddubs` result cover elements 0..16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_scale(s0: i16, s1: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0))
}

/// Q3_K: q = low2 + 4·hbit - 4, so Σ sc·q·a = Σ sc·(low2 + 4·hbit)·a - 4 Σ sc·bsum.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q3_k_n<const N: usize>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let nb = w.len() / 110;
    let m3 = _mm256_set1_epi8(3);
    let m1 = _mm256_set1_epi8(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let wp = w.as_ptr();
    for i in 0..nb {
        let b = wp.add(i * 110);
        let d = f16(b.add(108));
        let sc = q3k_scales(std::slice::from_raw_parts(b.add(96), 12));
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.as_ptr() as *const __m128i));
        let mut isum = [_mm256_setzero_si256(); N];
        for t in 0..N {
            let bs = load(a[t].get_unchecked(i).bsums.as_ptr() as *const u8);
            isum[t] = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 2));
        }
        let hm = load(b);
        for h in 0..2 {
            let qv = load(b.add(32 + 32 * h));
            for s in 0..4 {
                let low =
                    _mm256_and_si256(_mm256_srl_epi16(qv, _mm_cvtsi32_si128(2 * s as i32)), m3);
                let hb = _mm256_and_si256(
                    _mm256_srl_epi16(hm, _mm_cvtsi32_si128((4 * h + s) as i32)),
                    m1,
                );
                let q = _mm256_or_si256(low, _mm256_slli_epi16(hb, 2));
                let g = 8 * h + 2 * s;
                let scv = pair_scale(sc[g] as i16, sc[g + 1] as i16);
                for t in 0..N {
                    let y = a[t].get_unchecked(i).qs.as_ptr().add(128 * h + 32 * s) as *const u8;
                    isum[t] = _mm256_add_epi32(
                        isum[t],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(q, load(y)), scv),
                    );
                }
            }
        }
        for t in 0..N {
            let da = a[t].get_unchecked(i).d;
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * da), acc[t]);
        }
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = hsum(acc[t]);
    }
    out
}

/// Q2_K: Σ = d·Σ sc·q·a - dmin·Σ m·bsum, scales and mins 4 bits per 16 elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q2_k_n<const N: usize>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let nb = w.len() / 84;
    let m3 = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut accm = [_mm256_setzero_ps(); N];
    let wp = w.as_ptr();
    for i in 0..nb {
        let b = wp.add(i * 84);
        let d = f16(b.add(80));
        let dmin = f16(b.add(82));
        let raw = _mm_loadu_si128(b as *const __m128i);
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0xF)));
        let mut isum = [_mm256_setzero_si256(); N];
        for h in 0..2 {
            let qv = load(b.add(16 + 32 * h));
            for s in 0..4 {
                let q = _mm256_and_si256(_mm256_srl_epi16(qv, _mm_cvtsi32_si128(2 * s as i32)), m3);
                let g = 8 * h + 2 * s;
                let scv = pair_scale((*b.add(g) & 0xF) as i16, (*b.add(g + 1) & 0xF) as i16);
                for t in 0..N {
                    let y = a[t].get_unchecked(i).qs.as_ptr().add(128 * h + 32 * s) as *const u8;
                    isum[t] = _mm256_add_epi32(
                        isum[t],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(q, load(y)), scv),
                    );
                }
            }
        }
        for t in 0..N {
            let ab = a[t].get_unchecked(i);
            acc[t] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(isum[t]),
                _mm256_set1_ps(d * ab.d),
                acc[t],
            );
            let mp = _mm256_madd_epi16(mins, load(ab.bsums.as_ptr() as *const u8));
            accm[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mp), _mm256_set1_ps(dmin * ab.d), accm[t]);
        }
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = hsum(acc[t]) - hsum(accm[t]);
    }
    out
}

/// Q8_K weights (rarely used as weights): signed × signed with the sign trick.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_k_n<const N: usize>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let nb = w.len() / 292;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let wp = w.as_ptr();
    for i in 0..nb {
        let b = wp.add(i * 292);
        let d = (b as *const f32).read_unaligned();
        let mut isum = [_mm256_setzero_si256(); N];
        for k in 0..8 {
            let q = load(b.add(4 + 32 * k));
            let ax = _mm256_sign_epi8(q, q);
            for t in 0..N {
                let y = load(a[t].get_unchecked(i).qs.as_ptr().add(32 * k) as *const u8);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, q)), ones);
                isum[t] = _mm256_add_epi32(isum[t], p);
            }
        }
        for t in 0..N {
            let da = a[t].get_unchecked(i).d;
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * da), acc[t]);
        }
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = hsum(acc[t]);
    }
    out
}

/// The activation scales of block `i` of 8 rows, one lane each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales8(ap: &[*const BlockQ8K; 8], i: usize) -> __m256 {
    let d = |t: usize| (*ap[t].add(i)).d;
    _mm256_setr_ps(d(0), d(1), d(2), d(3), d(4), d(5), d(6), d(7))
}

/// k-quants × 8 activation rows (the prefill tile): integer sums per row are reduced to one
/// vector (lane = token) per super-block, so the float work is shared by all 8 tokens.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q45_k_x8<const FIVE: bool>(w: &[u8], a: [&[BlockQ8K]; 8]) -> [f32; 8] {
    let bb = if FIVE { 176 } else { 144 };
    let nb = w.len() / bb;
    let m4 = _mm256_set1_epi8(0xF);
    let ap: [*const BlockQ8K; 8] = std::array::from_fn(|t| a[t].as_ptr());
    let mut acc = _mm256_setzero_ps();
    let wp = w.as_ptr();
    for i in 0..nb {
        let b = wp.add(i * bb);
        let d = f16(b);
        let dmin = f16(b.add(2));
        let (sc, mn) = kscale_min(std::slice::from_raw_parts(b.add(4), 12));
        let mins = mins_x2(&mn);
        let qs = b.add(if FIVE { 48 } else { 16 });
        let qh = if FIVE {
            load(b.add(16))
        } else {
            _mm256_setzero_si256()
        };
        let mut isum = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            let q = load(qs.add(32 * j));
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if FIVE {
                let bit = _mm256_set1_epi8(1);
                let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j as i32));
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(h, bit), 4));
                hi = _mm256_or_si256(
                    hi,
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 1), bit), 4),
                );
            }
            let s1 = _mm256_set1_epi16(sc[2 * j] as i16);
            let s2 = _mm256_set1_epi16(sc[2 * j + 1] as i16);
            for t in 0..8 {
                let y = (*ap[t].add(i)).qs.as_ptr().add(64 * j) as *const u8;
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load(y)), s1);
                let p2 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load(y.add(32))), s2);
                isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(p1, p2));
            }
        }
        let mut msum = [_mm256_setzero_si256(); 8];
        for t in 0..8 {
            msum[t] = _mm256_madd_epi16(mins, load((*ap[t].add(i)).bsums.as_ptr() as *const u8));
        }
        let da = scales8(&ap, i);
        acc = _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(reduce8(&isum)),
            _mm256_mul_ps(_mm256_set1_ps(d), da),
            acc,
        );
        acc = _mm256_fnmadd_ps(
            _mm256_cvtepi32_ps(reduce8(&msum)),
            _mm256_mul_ps(_mm256_set1_ps(dmin), da),
            acc,
        );
    }
    let mut out = [0.0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), acc);
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k_x8(w: &[u8], a: [&[BlockQ8K]; 8]) -> [f32; 8] {
    let nb = w.len() / 210;
    let m4 = _mm256_set1_epi8(0xF);
    let m3 = _mm256_set1_epi8(3);
    let ap: [*const BlockQ8K; 8] = std::array::from_fn(|t| a[t].as_ptr());
    let mut acc = _mm256_setzero_ps();
    let wp = w.as_ptr();
    for i in 0..nb {
        let b = wp.add(i * 210);
        let d = f16(b.add(208));
        let sc = b.add(192) as *const i8;
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
        let mut isum = [_mm256_setzero_si256(); 8];
        for t in 0..8 {
            let bs = load((*ap[t].add(i)).bsums.as_ptr() as *const u8);
            isum[t] = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5));
        }
        for h in 0..2 {
            let ql0 = load(b.add(64 * h));
            let ql1 = load(b.add(64 * h + 32));
            let qh = load(b.add(128 + 32 * h));
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), q6_high(qh, 0, m3)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), q6_high(qh, 2, m3)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                    q6_high(qh, 4, m3),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    q6_high(qh, 6, m3),
                ),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let scv = pair_scale(
                    *sc.add(8 * h + 2 * k) as i16,
                    *sc.add(8 * h + 2 * k + 1) as i16,
                );
                for t in 0..8 {
                    let y = (*ap[t].add(i)).qs.as_ptr().add(128 * h + 32 * k) as *const u8;
                    isum[t] = _mm256_add_epi32(
                        isum[t],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(qk, load(y)), scv),
                    );
                }
            }
        }
        let da = scales8(&ap, i);
        acc = _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(reduce8(&isum)),
            _mm256_mul_ps(_mm256_set1_ps(d), da),
            acc,
        );
    }
    let mut out = [0.0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), acc);
    out
}

/// 8 weights starting at element `c` of a float row, widened to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_w8(dtype: DType, w: *const u8, c: usize) -> __m256 {
    match dtype {
        DType::F32 => _mm256_loadu_ps(w.add(4 * c) as *const f32),
        DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * c) as *const __m128i)),
        _ => {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(w.add(2 * c) as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_float_n<const N: usize>(
    dtype: DType,
    w: &[u8],
    x: [&[f32]; N],
) -> [f32; N] {
    match dtype {
        DType::F32 => float_impl::<0, N>(w, x),
        DType::F16 => float_impl::<1, N>(w, x),
        _ => float_impl::<2, N>(w, x),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_impl<const K: usize, const N: usize>(w: &[u8], x: [&[f32]; N]) -> [f32; N] {
    let dtype = [DType::F32, DType::F16, DType::BF16][K];
    let n = x.first().map_or(0, |r| r.len());
    let wp = w.as_ptr();
    let mut acc0 = [_mm256_setzero_ps(); N];
    let mut acc1 = [_mm256_setzero_ps(); N];
    let mut c = 0;
    while c + 16 <= n {
        let w0 = load_w8(dtype, wp, c);
        let w1 = load_w8(dtype, wp, c + 8);
        for t in 0..N {
            let xp = x[t].as_ptr().add(c);
            acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(8)), acc1[t]);
        }
        c += 16;
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = hsum(_mm256_add_ps(acc0[t], acc1[t]));
        out[t] += super::scalar::dot_float(dtype, &w[c * dtype.block_bytes()..], &x[t][c..]);
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut c = 0;
    while c + 32 <= n {
        for (k, s) in acc.iter_mut().enumerate() {
            *s = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(c + 8 * k)),
                _mm256_loadu_ps(pb.add(c + 8 * k)),
                *s,
            );
        }
        c += 32;
    }
    while c + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(c)),
            _mm256_loadu_ps(pb.add(c)),
            acc[0],
        );
        c += 8;
    }
    let mut s = hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while c < n {
        s += a[c] * b[c];
        c += 1;
    }
    s
}

/// 5-bit weights as bytes: the low nibbles of `nibbles` with bit 4 of every byte of `high`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn five_bits(nibbles: __m256i, high: __m256i) -> __m256i {
    _mm256_or_si256(
        _mm256_and_si256(nibbles, _mm256_set1_epi8(0xF)),
        _mm256_and_si256(high, _mm256_set1_epi8(0x10)),
    )
}

/// Two rows' partial dot products, one row per 128-bit lane (4 i32 each): `lo` holds the rows'
/// first 16 weights and `hi` their last 16, matched by the activation halves `ylo` / `yhi`
/// (each repeated in both lanes). i16 lanes: two products of at most 31·128 per `maddubs`,
/// two `maddubs` per add: at most 15872, so the 16-bit add is exact.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_dot(lo: __m256i, hi: __m256i, ylo: __m256i, yhi: __m256i) -> __m256i {
    _mm256_madd_epi16(
        _mm256_add_epi16(_mm256_maddubs_epi16(lo, ylo), _mm256_maddubs_epi16(hi, yhi)),
        _mm256_set1_epi16(1),
    )
}

/// Q5_0 in 4-row groups ([`crate::interleave::q5_0_rows_to_group`]) times one activation row: the decode
/// kernel. Rows pair up in one 32-byte load of nibbles (low nibbles of both rows in one
/// vector, high in another), matched by the activation's two halves each repeated in both
/// lanes; the 4 rows' high bits share one 16-byte load and are one shift and a mask away.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_0_r4(w: &[u8], a: &[BlockQ8_32]) -> [f32; 4] {
    const GB: usize = crate::interleave::Q5_0_GROUP_BLOCK;
    let nb = a.len();
    // (see `interleave::Q5_0_HIGH_BIT` for the bit each row and half reads)
    let s_lo01 = _mm256_setr_epi64x(0, 0, 1, 1);
    let s_hi01 = _mm256_setr_epi64x(2, 2, 3, 3);
    let s_lo23 = _mm256_setr_epi64x(1, 1, 2, 2);
    let s_hi23 = _mm256_setr_epi64x(3, 3, 4, 4);
    let mut acc = _mm_setzero_ps();
    let wp = w.as_ptr();
    // Prefetch distance in bytes, measured with alternating decode runs of
    // qwen2.5-coder-0.5b: 1536 beat 704 in 10 of 10 pairs (~+10%); 384 was slower than 704,
    // 2048 and 3072 no better than 1536 within the noise.
    const AHEAD: usize = 1536;
    for i in 0..nb {
        let b = wp.add(i * GB);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(AHEAD) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(AHEAD + 64) as *const i8);
        let ab = a.get_unchecked(i);
        let y = load(ab.qs.as_ptr() as *const u8);
        let ylo = _mm256_permute4x64_epi64(y, 0b01_00_01_00);
        let yhi = _mm256_permute4x64_epi64(y, 0b11_10_11_10);
        let qh = _mm256_broadcastsi128_si256(_mm_loadu_si128(b.add(8) as *const __m128i));
        let x01 = load(b.add(24));
        let x23 = load(b.add(56));
        let lo01 = five_bits(x01, _mm256_srlv_epi64(qh, s_lo01));
        let hi01 = five_bits(_mm256_srli_epi16(x01, 4), _mm256_srlv_epi64(qh, s_hi01));
        let lo23 = five_bits(x23, _mm256_sllv_epi64(qh, s_lo23));
        let hi23 = five_bits(_mm256_srli_epi16(x23, 4), _mm256_sllv_epi64(qh, s_hi23));
        let p01 = pair_dot(lo01, hi01, ylo, yhi);
        let p23 = pair_dot(lo23, hi23, ylo, yhi);
        // lanes: p01 = [row 0 ×4 | row 1 ×4], p23 = [row 2 ×4 | row 3 ×4]
        let t = _mm256_add_epi32(
            _mm256_unpacklo_epi32(p01, p23),
            _mm256_unpackhi_epi32(p01, p23),
        ); // [r0 r2 r0 r2 | r1 r3 r1 r3]
        let t = _mm256_add_epi32(t, _mm256_shuffle_epi32(t, 0b01_00_11_10));
        let isum = _mm_unpacklo_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        // the weights were taken as q + 16: take 16 · Σa off, exactly
        let isum = _mm_sub_epi32(isum, _mm_slli_epi32(_mm_set1_epi32(ab.sum), 4));
        let dw = _mm_cvtph_ps(_mm_loadl_epi64(b as *const __m128i));
        let scale = _mm_mul_ps(dw, _mm_set1_ps(ab.d));
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), scale, acc);
    }
    let mut out = [0.0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), acc);
    out
}
