//! x86-64 AVX-512 kernels (F, BW, VL and VNNI, on top of AVX2 + FMA + F16C). Every function
//! here is `unsafe`: the caller must have checked `Isa::Avx512.is_available()` and the shapes,
//! as for the AVX2 kernels.
//!
//! The integer work uses the VNNI instructions: `vpdpbusd` (unsigned × signed bytes, four
//! products summed into each i32 lane and added to it) replaces AVX2's `maddubs` + `madd` +
//! add, and `vpdpwssd` (i16 pairs into i32) replaces `madd` + add. Both are exact (no
//! saturation: the sums here stay far inside i32), so every kernel computes the same integer
//! sums as its AVX2 counterpart, and then takes the same float steps in the same order (the
//! canonical steps of `avx2.rs`): results are bit-identical to the AVX2 level, kernel by kernel.
//!
//! Width: Zen 4 (the AVX-512 CPU these were measured on) runs 512-bit operations as two
//! 256-bit halves, so the tiles use the 256-bit (AVX512VL) forms, which keep AVX2's data
//! layouts and use the 32 vector registers of AVX-512 for larger tiles.
//!
//! Weights that AVX2 multiplies signed (Q8_0 / Q8_1, with the sign trick) are taken unsigned
//! as `q + 128` (one `xor`), and `128 · Σa` is taken off the exact sum, as Q4_0 (`q + 8`) and
//! Q5_0 (`q + 16`) already are.

use super::avx2::{
    bcast32, bytes_from_bits, f16, f16_pairs4, five_bits, gather4_u16, iq4_table, kscale_min_v,
    load, nibbles16, nibbles32, prefetch_ahead, sum4, sum4_128, tile_out, tile_scatter,
    unpack_legacy, unpack_q45, Strides, LEGACY,
};
use super::scalar::LegacyKind;
use super::BlockU8;
use crate::quant::{BlockQ8K, BlockQ8_32, BlockQ8x8};
use std::arch::x86_64::*;

/// `acc + Σ (4 u8 of w) · (4 i8 of y)` per i32 lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dpbusd(acc: __m256i, w: __m256i, y: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, w, y)
}

/// How far a legacy type's weights were shifted to make them unsigned
/// ([`LegacyKind::unsigned_offset`], a power of two), as a left shift of the activations' sum
/// (`Σ q·a = Σ u·a - (Σa << shift)`); 0: no offset (Q4_1 / Q5_1).
fn offset_shift(kind: LegacyKind) -> i32 {
    match kind.unsigned_offset() {
        0 => 0,
        off => off.trailing_zeros() as i32,
    }
}

/// The IQ4 grid offset by 128 (`KVALUES[q] + 128`, 1..=241: unsigned bytes) in both 128-bit
/// lanes, for `vpshufb`; the offset comes back out as Q8_0's does (`offset_shift`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn iq4_table_u8() -> __m256i {
    _mm256_xor_si256(iq4_table(), _mm256_set1_epi8(0x80u8 as i8))
}

/// A legacy block's 32 weights as unsigned bytes `u = q + offset` (see `offset_shift`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn unsigned_legacy(kind: LegacyKind, b: *const u8) -> __m256i {
    match kind {
        LegacyKind::Q4_0 => nibbles16(b.add(2)),
        LegacyKind::Q5_0 => {
            let qh = (b.add(2) as *const u32).read_unaligned();
            let hi = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
            _mm256_or_si256(nibbles16(b.add(6)), hi)
        }
        LegacyKind::Q8_0 | LegacyKind::Q8_1 => {
            _mm256_xor_si256(unpack_legacy(kind, b), _mm256_set1_epi8(0x80u8 as i8))
        }
        LegacyKind::IQ4_NL => _mm256_shuffle_epi8(iq4_table_u8(), nibbles16(b.add(2))),
        _ => unpack_legacy(kind, b),
    }
}

// ---------------------------------------------------------------------------------------
// Prefill: 8-token tiles on packed legacy rows (the Q8 types' prefill)
// ---------------------------------------------------------------------------------------

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_legacy_g8(kind: LegacyKind, w: &[u8], g: &[BlockQ8x8]) -> [f32; 8] {
    dot_legacy_g8_rows::<1>(kind, w, 0, g)[0]
}

/// `R` weight rows (`row_bytes` apart) × 8 interleaved tokens → `out[r][t]`, like AVX2's
/// `dot_legacy_g8_rows`: each weight dword is broadcast and `vpdpbusd` multiplies it with 4
/// elements of all 8 tokens.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
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

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn legacy_g8_rows<const K: usize, const R: usize>(
    wp: *const u8,
    row_bytes: usize,
    g: &[BlockQ8x8],
) -> [[f32; 8]; R] {
    let kind = LEGACY[K];
    let bb = kind.block_bytes();
    let shift = offset_shift(kind);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut tmp = [[0u32; 8]; R];
    for i in 0..g.len() {
        let ab = g.get_unchecked(i);
        let y = ab.qs.as_ptr() as *const u8;
        for r in 0..R {
            let q = unsigned_legacy(kind, wp.add(r * row_bytes + i * bb));
            _mm256_storeu_si256(tmp[r].as_mut_ptr() as *mut __m256i, q);
        }
        // four chains per row (dword j to chain j % 4: see `u8_dots`)
        let mut c = [[_mm256_setzero_si256(); R]; 4];
        for j in 0..8 {
            let yj = load(y.add(32 * j));
            for r in 0..R {
                c[j % 4][r] = dpbusd(c[j % 4][r], bcast32(tmp[r].as_ptr().add(j)), yj);
            }
        }
        let mut s = [_mm256_setzero_si256(); R];
        for r in 0..R {
            s[r] = _mm256_add_epi32(
                _mm256_add_epi32(c[0][r], c[1][r]),
                _mm256_add_epi32(c[2][r], c[3][r]),
            );
        }
        // the offset times each token's sum, exactly (|Σa| <= 32 · 127)
        let corr = if shift != 0 {
            let sums = _mm256_load_si256(ab.sum.as_ptr() as *const __m256i);
            _mm256_sll_epi32(sums, _mm_cvtsi32_si128(shift))
        } else {
            _mm256_setzero_si256()
        };
        let da = _mm256_load_ps(ab.d.as_ptr());
        for r in 0..R {
            let b = wp.add(r * row_bytes + i * bb);
            let isum = _mm256_sub_epi32(s[r], corr);
            // the canonical float steps (avx2.rs)
            acc[r] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(isum),
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

// ---------------------------------------------------------------------------------------
// Prefill: tiles on unpacked rows (`BlockU8`)
// ---------------------------------------------------------------------------------------

/// `R` unpacked rows of a legacy type (`K` indexes `LEGACY`, Q4_0 … Q5_1) × 8 tokens.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_u8_g8_rows<const K: usize, const R: usize>(
    w: &[BlockU8],
    g: &[BlockQ8x8],
) -> [[f32; 8]; R] {
    u8_tile::<K, R, 1, _>(w.as_ptr(), g.len(), [g.as_ptr()], |acc| tile_out(acc)[0])
}

/// [`dot_u8_g8_rows`] for two groups of 8 tokens, stored as AVX2's `dot_u8_g16_rows_to`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_u8_g16_rows_to<const K: usize, const R: usize>(
    w: &[BlockU8],
    g: [&[BlockQ8x8]; 2],
    o: *mut f32,
    stride: usize,
) {
    let nb = g[0].len();
    let g = [g[0].as_ptr(), g[1].as_ptr()];
    u8_tile::<K, R, 2, _>(w.as_ptr(), nb, g, |acc| scatter(acc, o, stride))
}

/// `vpbroadcastd` of dword `$j` (a literal) of `$p`, the offset inside the instruction (as
/// AVX2's `bcast32_at`: with a computed address LLVM spends an `lea` on each broadcast).
macro_rules! bcast_at {
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

/// The exact `Σ u·a` of block `i` of `R` unpacked rows (`nb` blocks apart from `wp`) with `G`
/// token groups, over the weight dwords of `PART` (0: dwords 0..4, 1: 4..8, 2: all 8): per
/// dword one broadcast per row and one `vpdpbusd` per (row, group). Even and odd dwords go
/// to separate chains, added at the end, so that fewer multiplies wait on the one before.
/// `SIGNED_W` (Q6_K): the offset activations are the unsigned operand, the weights signed.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn u8_dots<const SIGNED_W: bool, const PART: usize, const R: usize, const G: usize>(
    wp: *const BlockU8,
    nb: usize,
    g: &[*const BlockQ8x8; G],
    i: usize,
) -> [[__m256i; R]; G] {
    let mut s = [[[_mm256_setzero_si256(); R]; G]; 2];
    let mut u = [std::ptr::null::<u8>(); R];
    for r in 0..R {
        u[r] = (*wp.add(r * nb + i)).u.as_ptr();
    }
    macro_rules! step {
        ($($q:literal),*) => {$(
            // (with 8 or more (row, group) pairs their chains are already enough)
            let c = if R * G >= 8 { 0 } else { $q % 2 };
            let mut y = [_mm256_setzero_si256(); G];
            for k in 0..G {
                y[k] = load((*g[k].add(i)).qs.as_ptr().add(32 * $q) as *const u8);
            }
            for r in 0..R {
                let wv = bcast_at!(u[r], $q);
                for k in 0..G {
                    s[c][k][r] = if SIGNED_W {
                        dpbusd(s[c][k][r], y[k], wv)
                    } else {
                        dpbusd(s[c][k][r], wv, y[k])
                    };
                }
            }
        )*};
    }
    if PART != 1 {
        step!(0, 1, 2, 3);
    }
    if PART != 0 {
        step!(4, 5, 6, 7);
    }
    let mut out = s[0];
    if R * G < 8 {
        for k in 0..G {
            for r in 0..R {
                out[k][r] = _mm256_add_epi32(s[0][k][r], s[1][k][r]);
            }
        }
    }
    out
}

/// A tile's accumulators stored into a token-major output like AVX2's `tile_scatter`, with
/// 4 rows as one 16-byte store per token (a 4 × 8 transpose in registers).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn scatter<const R: usize, const G: usize>(
    acc: [[__m256; R]; G],
    o: *mut f32,
    stride: usize,
) {
    if R != 4 {
        return tile_scatter(acc, o, stride);
    }
    for k in 0..G {
        let base = o.add(8 * k * stride);
        let a = &acc[k];
        // (t0 r0, t0 r1, t1 r0, t1 r1 | t4 …, t5 …) and the same for rows 2, 3
        let lo01 = _mm256_unpacklo_ps(a[0], a[1]);
        let hi01 = _mm256_unpackhi_ps(a[0], a[1]);
        let lo23 = _mm256_unpacklo_ps(a[2], a[3]);
        let hi23 = _mm256_unpackhi_ps(a[2], a[3]);
        // token t's 4 rows: t0 | t4, t1 | t5, t2 | t6, t3 | t7
        let t04 = _mm256_shuffle_ps(lo01, lo23, 0b01_00_01_00);
        let t15 = _mm256_shuffle_ps(lo01, lo23, 0b11_10_11_10);
        let t26 = _mm256_shuffle_ps(hi01, hi23, 0b01_00_01_00);
        let t37 = _mm256_shuffle_ps(hi01, hi23, 0b11_10_11_10);
        for (v, t) in [(t04, 0), (t15, 1), (t26, 2), (t37, 3)] {
            _mm_storeu_ps(base.add(t * stride), _mm256_castps256_ps128(v));
            _mm_storeu_ps(base.add((t + 4) * stride), _mm256_extractf128_ps(v, 1));
        }
    }
}

/// `R` unpacked legacy rows × `G` interleaved token groups → `out[k][r]`: the block's exact
/// `Σ u·a` in one `vpdpbusd` chain per (row, group), the offset's share taken off with the
/// token sums, then AVX2's float steps.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn u8_tile<const K: usize, const R: usize, const G: usize, T>(
    wp: *const BlockU8,
    nb: usize,
    g: [*const BlockQ8x8; G],
    finish: impl FnOnce([[__m256; R]; G]) -> T,
) -> T {
    let kind = LEGACY[K];
    let shift = offset_shift(kind);
    let mut acc = [[_mm256_setzero_ps(); R]; G];
    for i in 0..nb {
        let s = u8_dots::<false, 2, R, G>(wp, nb, &g, i);
        for k in 0..G {
            let ab = &*g[k].add(i);
            let da = _mm256_load_ps(ab.d.as_ptr());
            let corr = if shift != 0 {
                let sums = _mm256_load_si256(ab.sum.as_ptr() as *const __m256i);
                _mm256_sll_epi32(sums, _mm_cvtsi32_si128(shift))
            } else {
                _mm256_setzero_si256()
            };
            for r in 0..R {
                let b = &*wp.add(r * nb + i);
                let isum = _mm256_sub_epi32(s[k][r], corr);
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

/// `R` unpacked Q4_K / Q5_K rows × 8 tokens.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_u8k_g8_rows<const R: usize>(
    w: &[BlockU8],
    g: &[BlockQ8x8],
) -> [[f32; 8]; R] {
    u8k_tile::<R, 1, _>(w.as_ptr(), g.len(), [g.as_ptr()], |acc| tile_out(acc)[0])
}

/// [`dot_u8k_g8_rows`] for two groups of 8 tokens, stored as AVX2's `dot_u8_g16_rows_to`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_u8k_g16_rows_to<const R: usize>(
    w: &[BlockU8],
    g: [&[BlockQ8x8]; 2],
    o: *mut f32,
    stride: usize,
) {
    let nb = g[0].len();
    let g = [g[0].as_ptr(), g[1].as_ptr()];
    u8k_tile::<R, 2, _>(w.as_ptr(), nb, g, |acc| scatter(acc, o, stride))
}

/// `R` unpacked Q4_K / Q5_K rows × `G` token groups → `out[k][r]`. Per sub-block, each
/// (row, group) sums `u·a` in one `vpdpbusd` chain (i32, so 4- and 5-bit weights alike) and
/// multiplies it by the sub-block's scale; the mins' sum and the float steps per super-block
/// are AVX2's (`u8k_tile` there).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn u8k_tile<const R: usize, const G: usize, T>(
    wp: *const BlockU8,
    nb: usize,
    g: [*const BlockQ8x8; G],
    finish: impl FnOnce([[__m256; R]; G]) -> T,
) -> T {
    let mut acc = [[_mm256_setzero_ps(); R]; G];
    // `sc` and `mn` are adjacent bytes: one i16 broadcast of the pair
    let sc_mn = |r: usize, i: usize| {
        let b = wp.add(r * nb + i);
        _mm256_set1_epi16((std::ptr::addr_of!((*b).sc) as *const i16).read_unaligned())
    };
    for sb in 0..nb / 8 {
        let mut isum = [[_mm256_setzero_si256(); R]; G];
        for j in 0..8 {
            let i = 8 * sb + j;
            let s = u8_dots::<false, 2, R, G>(wp, nb, &g, i);
            for r in 0..R {
                let sc = _mm256_set1_epi32((*wp.add(r * nb + i)).sc as i32);
                for k in 0..G {
                    isum[k][r] = _mm256_add_epi32(isum[k][r], _mm256_mullo_epi32(s[k][r], sc));
                }
            }
        }
        for r in 0..R {
            let mut msum = [_mm256_setzero_si256(); G];
            for j in 0..8 {
                let i = 8 * sb + j;
                // mn alone in each i32 lane; sum·mn as one exact `madd` (see avx2.rs)
                let mn = _mm256_srli_epi32(sc_mn(r, i), 24);
                for k in 0..G {
                    let sums = _mm256_load_si256((*g[k].add(i)).sum.as_ptr() as *const __m256i);
                    msum[k] = _mm256_add_epi32(msum[k], _mm256_madd_epi16(sums, mn));
                }
            }
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

/// `R` unpacked Q6_K (`SPLIT`) or IQ4_XS rows × 8 tokens whose activations are offset by 128.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_u8q6_g8_rows<const SPLIT: bool, const R: usize>(
    w: &[BlockU8],
    g: &[BlockQ8x8],
) -> [[f32; 8]; R] {
    u8q6_tile::<SPLIT, R, 1, _>(w.as_ptr(), g.len(), [g.as_ptr()], |acc| tile_out(acc)[0])
}

/// [`dot_u8q6_g8_rows`] for two groups of 8 tokens, stored as AVX2's `dot_u8_g16_rows_to`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_u8q6_g16_rows_to<const SPLIT: bool, const R: usize>(
    w: &[BlockU8],
    g: [&[BlockQ8x8]; 2],
    o: *mut f32,
    stride: usize,
) {
    let nb = g[0].len();
    let g = [g[0].as_ptr(), g[1].as_ptr()];
    u8q6_tile::<SPLIT, R, 2, _>(w.as_ptr(), nb, g, |acc| scatter(acc, o, stride))
}

/// `R` unpacked Q6_K / IQ4_XS rows × `G` token groups → `out[k][r]`: per 16 weights (Q6_K,
/// `SPLIT`: a scale each) or 32 (IQ4_XS: one scale) a `vpdpbusd` chain of the offset
/// activations (unsigned) with the weights (signed) times that scale; `corr` takes the offset
/// back out per super-block and the float step is AVX2's (Q6_K) or the IQ4_XS kernels' (the
/// same canonical step).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn u8q6_tile<const SPLIT: bool, const R: usize, const G: usize, T>(
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
            for half in 0..if SPLIT { 2 } else { 1 } {
                let s = match (SPLIT, half) {
                    (false, _) => u8_dots::<true, 2, R, G>(wp, nb, &g, i),
                    (true, 0) => u8_dots::<true, 0, R, G>(wp, nb, &g, i),
                    _ => u8_dots::<true, 1, R, G>(wp, nb, &g, i),
                };
                for r in 0..R {
                    let b = &*wp.add(r * nb + i);
                    let scale = if half == 0 { b.sc } else { b.mn } as i8 as i32;
                    let sc = _mm256_set1_epi32(scale);
                    for k in 0..G {
                        isum[k][r] = _mm256_add_epi32(isum[k][r], _mm256_mullo_epi32(s[k][r], sc));
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

// ---------------------------------------------------------------------------------------
// Decode: 4 rows × one activation row
// ---------------------------------------------------------------------------------------

/// 4 legacy rows (placed as `strides` says) · one activation row, like AVX2's
/// `dot_legacy_rows`: unsigned weights, one `vpdpbusd` per row and block, the offset taken
/// off once for the 4 rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
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

/// One legacy block's unsigned weights (`q + offset`, see `offset_shift`) for the decode
/// kernel: the 4-bit types unpack with [`nibbles32`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn decode_unsigned(kind: LegacyKind, b: *const u8) -> __m256i {
    match kind {
        LegacyKind::Q4_0 => nibbles32(b.add(2)),
        LegacyKind::Q4_1 => nibbles32(b.add(4)),
        LegacyKind::Q5_0 | LegacyKind::Q5_1 => {
            let at = if kind == LegacyKind::Q5_0 { 2 } else { 4 };
            let qh = (b.add(at) as *const u32).read_unaligned();
            let hi = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
            _mm256_or_si256(nibbles32(b.add(at + 4)), hi)
        }
        LegacyKind::IQ4_NL => _mm256_shuffle_epi8(iq4_table_u8(), nibbles32(b.add(2))),
        _ => {
            let at = if kind == LegacyKind::Q8_0 { 2 } else { 4 };
            _mm256_xor_si256(load(b.add(at)), _mm256_set1_epi8(0x80u8 as i8))
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
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
    let shift = offset_shift(kind);
    let mut acc = _mm_setzero_ps(); // lane r: row r
    let wp = w.as_ptr();
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
        let z = _mm256_setzero_si256();
        let p = [
            dpbusd(z, decode_unsigned(kind, b0), y),
            dpbusd(z, decode_unsigned(kind, b1), y),
            dpbusd(z, decode_unsigned(kind, b2), y),
            dpbusd(z, decode_unsigned(kind, b3), y),
        ];
        let mut isum = sum4(&p);
        if shift != 0 {
            // the offset times the activations' integer sum, exactly, once for the 4 rows
            isum = _mm_sub_epi32(isum, _mm_set1_epi32(ab.sum << shift));
        }
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

/// Q5_0 in 4-row groups times one activation row: AVX2's `dot_q5_0_r4` with each pair of
/// rows' products summed by two `vpdpbusd`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_q5_0_r4(w: &[u8], a: &[BlockQ8_32]) -> [f32; 4] {
    const GB: usize = crate::interleave::Q5_0_GROUP_BLOCK;
    let nb = a.len();
    let s_lo01 = _mm256_setr_epi64x(0, 0, 1, 1);
    let s_hi01 = _mm256_setr_epi64x(2, 2, 3, 3);
    let s_lo23 = _mm256_setr_epi64x(1, 1, 2, 2);
    let s_hi23 = _mm256_setr_epi64x(3, 3, 4, 4);
    let mut acc = _mm_setzero_ps();
    let wp = w.as_ptr();
    // (AVX2's prefetch distance)
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
        let z = _mm256_setzero_si256();
        let p01 = dpbusd(dpbusd(z, lo01, ylo), hi01, yhi);
        let p23 = dpbusd(dpbusd(z, lo23, ylo), hi23, yhi);
        // lanes: p01 = [row 0 ×4 | row 1 ×4], p23 = [row 2 ×4 | row 3 ×4]
        let t = _mm256_add_epi32(
            _mm256_unpacklo_epi32(p01, p23),
            _mm256_unpackhi_epi32(p01, p23),
        );
        let t = _mm256_add_epi32(t, _mm256_shuffle_epi32(t, 0b01_00_11_10));
        let isum = _mm_unpacklo_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        let isum = _mm_sub_epi32(isum, _mm_slli_epi32(_mm_set1_epi32(ab.sum), 4));
        let dw = _mm_cvtph_ps(_mm_loadl_epi64(b as *const __m128i));
        let scale = _mm_mul_ps(dw, _mm_set1_ps(ab.d));
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), scale, acc);
    }
    let mut out = [0.0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), acc);
    out
}

/// 4 Q4_K/Q5_K rows · one activation row: AVX2's `dot_q45_k_rows` with each scaled pair sum
/// taken by `vpdpwssd` (`madd` and the add in one).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
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
    let mut acc = _mm_setzero_ps();
    let wp = w.as_ptr();
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

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
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
        isum[r] = _mm256_dpwssd_epi32(isum[r], _mm256_maddubs_epi16(lo, y0), s1);
        isum[r] = _mm256_dpwssd_epi32(isum[r], _mm256_maddubs_epi16(hi, y1), s2);
    }
}

/// `vpshufb` masks: for chunk `k`, i16 scale `2k` repeated over the low lane and `2k + 1` over
/// the high lane (as AVX2's `Q6_SCALE_SHUF`).
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

/// One row's Q6_K super-block · one activation block, as AVX2's `q6_k_block`, with
/// `vpdpwssd` for the scaled sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6_k_block(b: *const u8, ab: &BlockQ8K) -> __m256i {
    let m4 = _mm256_set1_epi8(0xF);
    let m30 = _mm256_set1_epi8(0x30);
    let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
    let sc_lo = _mm256_permute2x128_si256(sc16, sc16, 0x00);
    let sc_hi = _mm256_permute2x128_si256(sc16, sc16, 0x11);
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
            let scv = _mm256_shuffle_epi8(scl, Q6_SCALE_SHUF[k]);
            let p = _mm256_maddubs_epi16(qk, load(y.add(128 * h + 32 * k)));
            isum = _mm256_dpwssd_epi32(isum, p, scv);
        }
    }
    isum
}

/// 4 Q6_K rows · one activation row: AVX2's `dot_q6_k_rows` on [`q6_k_block`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_q6_k_rows<const R: usize>(
    w: &[u8],
    strides: Strides,
    a: &[BlockQ8K],
) -> [f32; R] {
    assert!(R == 4, "dot_q6_k_rows: 4 rows at a time");
    let nb = a.len();
    let Strides { row: rs, block: bs } = strides;
    let mut acc = _mm_setzero_ps();
    let wp = w.as_ptr();
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
        let p = wp.add(i * bs + 208) as *const i16;
        let mut h = _mm_cvtsi32_si128(p.read_unaligned() as u16 as i32);
        h = _mm_insert_epi16::<1>(h, p.byte_add(rs).read_unaligned() as i32);
        h = _mm_insert_epi16::<2>(h, p.byte_add(2 * rs).read_unaligned() as i32);
        h = _mm_insert_epi16::<3>(h, p.byte_add(3 * rs).read_unaligned() as i32);
        let d = _mm_cvtph_ps(h);
        let scale = _mm_mul_ps(d, _mm_set1_ps(ab.d));
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sum4(&isum)), scale, acc);
    }
    let mut out = [0.0f32; R];
    _mm_storeu_ps(out.as_mut_ptr(), acc);
    out
}

/// The vector form of `scalar::repack_u8_q6_k` (Q6_K rows unpacked once per prefill chunk):
/// the same bytes, scales and corrections.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn repack_u8_q6_k(w: &[u8], out: &mut [BlockU8]) {
    let m4 = _mm256_set1_epi8(0xF);
    let m30 = _mm256_set1_epi8(0x30);
    let zero = _mm256_setzero_si256();
    for (b, o) in w.chunks_exact(210).zip(out.chunks_exact_mut(8)) {
        let b = b.as_ptr();
        let d = f16(b.add(208));
        for h in 0..2 {
            let ql0 = load(b.add(64 * h));
            let ql1 = load(b.add(64 * h + 32));
            let qh = load(b.add(128 + 32 * h));
            // q + 32 (0..63) of sub-blocks 4h + k: low nibble and bits 2k, 2k + 1 of qh at 4, 5
            let u = [
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
            for (k, &uk) in u.iter().enumerate() {
                let j = 4 * h + k;
                let q = _mm256_sub_epi8(uk, _mm256_set1_epi8(32));
                let ob = o.get_unchecked_mut(j);
                _mm256_storeu_si256(ob.u.as_mut_ptr() as *mut __m256i, q);
                // Σ (q + 32) per 8 bytes, exact; each half's Σ q takes 16 · 32 off
                let s = _mm256_sad_epu8(uk, zero);
                let s0 = _mm256_extract_epi64::<0>(s) + _mm256_extract_epi64::<1>(s) - 512;
                let s1 = _mm256_extract_epi64::<2>(s) + _mm256_extract_epi64::<3>(s) - 512;
                let (sc0, sc1) = (*b.add(192 + 2 * j) as i8, *b.add(193 + 2 * j) as i8);
                (ob.d, ob.m, ob.sc, ob.mn) = (d, 0.0, sc0 as u8, sc1 as u8);
                ob.corr = 128 * (sc0 as i32 * s0 as i32 + sc1 as i32 * s1 as i32);
            }
        }
    }
}
