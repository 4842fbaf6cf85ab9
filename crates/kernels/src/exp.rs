//! `e^x` in f32, bit-identical to glibc's `expf` on x86-64 with FMA, one element or a slice
//! at a time (AVX2 / AVX-512 for slices).
//!
//! glibc's `expf` (`sysdeps/ieee754/flt-32/e_expf.c`, from ARM's optimized-routines) works in
//! f64: `x·32/ln2 = k + r` with integer `k` and `|r| ≤ 1/2`, `2^(k/32)` from a 32-entry table
//! with `k / 32` added to the exponent bits, `2^(r/32)` by a cubic, one rounding to f32 at the
//! end. On x86-64 with FMA, glibc's ifunc runs `__expf_fma`, the same C compiled with FMA
//! contraction; its machine code (glibc 2.36) fuses five of the steps: `k + SHIFT`, `r`, both
//! polynomial halves and the final Horner step. [`expf`] takes exactly those steps, so it
//! equals that build bit for bit on every input (tested against `f32::exp` over a sample of
//! all bit patterns where Rust's libm is glibc's on an FMA CPU). The vector versions take the
//! same f64 steps lane by lane (the table by lane loads / register permutes) and send any
//! 8-lane group holding a special input (`|x| ≥ 88`, inf, NaN) through [`expf`].
//!
//! The constants are glibc's `__exp2f_data` (`tab`, `invln2_scaled`, `poly_scaled` and
//! `shift`), read out of libm.so.6 (2.36); the table is `bits(2^(i/32)) − (i << 47)`, which a
//! test derives again from `f64::exp2`.

use crate::Isa;

/// Table bits: `k mod 32` indexes [`TAB`].
const N: u64 = 32;

/// `bits(2^(i/32)) − (i << 47)`: adding `k << 47` puts `k / 32` into the exponent.
pub(crate) const TAB: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// `32 / ln 2` (0x1.71547652b82fep+5).
const INVLN2N: f64 = f64::from_bits(0x40471547652b82fe);
/// `1.5 · 2^52`: adding it rounds an f64 of magnitude < 2^51 to an integer in the low bits.
const SHIFT: f64 = f64::from_bits(0x4338000000000000);
/// The cubic for `2^(r/32) ≈ C0·r³ + C1·r² + C2·r + 1` (0x1.c6af84b912394p-20,
/// 0x1.ebfce50fac4f3p-13, 0x1.62e42ff0c52d6p-6).
const C0: f64 = f64::from_bits(0x3ebc6af84b912394);
const C1: f64 = f64::from_bits(0x3f2ebfce50fac4f3);
const C2: f64 = f64::from_bits(0x3f962e42ff0c52d6);

/// `|x|` bit patterns from here on (|x| ≥ 88, inf, NaN) take the special-case branch.
const SPECIAL_ABS_BITS: u32 = 0x42b0_0000;
/// Above this (0x1.62e42ep6 ≈ 88.72) the result overflows to +inf.
const OVERFLOW: f32 = f32::from_bits(0x42b17217);
/// Below this (-0x1.9fe368p6 ≈ -103.97) the result is 0.
const UNDERFLOW: f32 = f32::from_bits(0xc2cff1b4);
/// Below this (-0x1.9d1d9ep6 ≈ -103.28) glibc returns the smallest subnormal
/// (`__math_may_uflowf`: `0x1.4p-75f²` rounded).
const MAY_UNDERFLOW: f32 = f32::from_bits(0xc2ce8ecf);

/// `e^x`, bit-identical to glibc's `__expf_fma` (the reference of the slice versions).
#[inline]
pub fn expf(x: f32) -> f32 {
    if x.to_bits() & 0x7fff_ffff >= SPECIAL_ABS_BITS {
        if let Some(y) = special(x) {
            return y;
        }
    }
    let xd = x as f64;
    let kd = INVLN2N.mul_add(xd, SHIFT);
    let ki = kd.to_bits();
    let kd = kd - SHIFT;
    let r = INVLN2N.mul_add(xd, -kd);
    let s = f64::from_bits(TAB[(ki % N) as usize].wrapping_add(ki << 47));
    let z = C0.mul_add(r, C1);
    let r2 = r * r;
    let y = C2.mul_add(r, 1.0);
    let y = z.mul_add(r2, y);
    (y * s) as f32
}

/// glibc's special-case branch (`|x| ≥ 88`, inf, NaN); `None` for the inputs it passes on to
/// the ordinary steps (−103.28 ≤ x ≤ 88.72).
#[cold]
fn special(x: f32) -> Option<f32> {
    let bits = x.to_bits();
    if bits == f32::NEG_INFINITY.to_bits() {
        Some(0.0)
    } else if bits & 0x7fff_ffff >= 0x7f80_0000 {
        Some(x + x)
    } else if x > OVERFLOW {
        Some(f32::INFINITY)
    } else if x < UNDERFLOW {
        Some(0.0)
    } else if x < MAY_UNDERFLOW {
        Some(f32::from_bits(1))
    } else {
        None
    }
}

/// `x[i] = e^x[i]` at kernel level `isa`: [`expf`]'s results on the x86 vector levels;
/// libm's `f32::exp` on the others (the same bits where libm is glibc's on an FMA CPU).
///
/// Panics if this CPU cannot run `isa`.
pub fn exp_slice_at(isa: Isa, x: &mut [f32]) {
    assert!(isa.is_available(), "exp: {} unavailable", isa.name());
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 {
            unsafe { x86::exp_slice_avx512(x) };
            return;
        }
        if isa.has_avx2() {
            unsafe { x86::exp_slice_avx2(x) };
            return;
        }
    }
    for v in x {
        *v = v.exp();
    }
}

/// `gate[i] = gate[i] / (1 + e^−gate[i]) · up[i]` (SiLU-gated, the f32 steps of
/// [`crate::ops::reference::silu_mul`]) at kernel level `isa`, with `e^x` as in
/// [`exp_slice_at`]: bit-identical to the reference where libm's `expf` is glibc's FMA build.
///
/// Panics if this CPU cannot run `isa` or the lengths differ.
pub fn silu_mul_at(isa: Isa, gate: &mut [f32], up: &[f32]) {
    assert!(isa.is_available(), "silu_mul: {} unavailable", isa.name());
    assert_eq!(gate.len(), up.len(), "silu_mul: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 {
            unsafe { x86::silu_mul_avx512(gate, up) };
            return;
        }
        if isa.has_avx2() {
            unsafe { x86::silu_mul_avx2(gate, up) };
            return;
        }
    }
    crate::ops::reference::silu_mul(gate, up)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    //! The AVX2 + FMA and AVX-512 forms of [`super::expf`]: 8 floats per step, widened to f64
    //! (two 4-lane halves on AVX2, one 8-lane register on AVX-512).

    use super::{expf, C0, C1, C2, INVLN2N, SHIFT, SPECIAL_ABS_BITS, TAB};
    use std::arch::x86_64::*;

    /// The lanes of `x` that need glibc's special-case branch, as a `movemask` bit set.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn special_lanes(x: __m256) -> i32 {
        let abs = _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7fff_ffff));
        let special = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(SPECIAL_ABS_BITS as i32 - 1));
        _mm256_movemask_ps(_mm256_castsi256_ps(special))
    }

    /// `y` with the lanes in `mask` replaced by [`expf`] of `x`'s.
    #[cold]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fix_lanes(x: __m256, y: __m256, mask: i32) -> __m256 {
        let (mut xs, mut ys) = ([0.0f32; 8], [0.0f32; 8]);
        _mm256_storeu_ps(xs.as_mut_ptr(), x);
        _mm256_storeu_ps(ys.as_mut_ptr(), y);
        for i in 0..8 {
            if mask & (1 << i) != 0 {
                ys[i] = expf(xs[i]);
            }
        }
        _mm256_loadu_ps(ys.as_ptr())
    }

    /// [`expf`]'s ordinary steps on 4 lanes (AVX2 + FMA); the table read by four scalar loads
    /// (a `vpgatherqq` measured slower on Zen 4, and is microcode-slowed on Intel since GDS).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp4_avx2(x: __m128) -> __m128 {
        let xd = _mm256_cvtps_pd(x);
        let invln2n = _mm256_set1_pd(INVLN2N);
        let shift = _mm256_set1_pd(SHIFT);
        let kd = _mm256_fmadd_pd(invln2n, xd, shift);
        let ki = _mm256_castpd_si256(kd);
        let kd = _mm256_sub_pd(kd, shift);
        let r = _mm256_fmsub_pd(invln2n, xd, kd);
        let idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
        let mut lanes = [0u64; 4];
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, idx);
        let t = _mm256_setr_epi64x(
            TAB[(lanes[0] & 31) as usize] as i64,
            TAB[(lanes[1] & 31) as usize] as i64,
            TAB[(lanes[2] & 31) as usize] as i64,
            TAB[(lanes[3] & 31) as usize] as i64,
        );
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        let z = _mm256_fmadd_pd(_mm256_set1_pd(C0), r, _mm256_set1_pd(C1));
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(_mm256_set1_pd(C2), r, _mm256_set1_pd(1.0));
        let y = _mm256_fmadd_pd(z, r2, y);
        _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
    }

    /// [`expf`] of 8 lanes (AVX2 + FMA).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp8_avx2(x: __m256) -> __m256 {
        let lo = exp4_avx2(_mm256_castps256_ps128(x));
        let hi = exp4_avx2(_mm256_extractf128_ps::<1>(x));
        let y = _mm256_set_m128(hi, lo);
        match special_lanes(x) {
            0 => y,
            mask => fix_lanes(x, y, mask),
        }
    }

    /// [`expf`] of 8 lanes (AVX-512F: one 8-lane f64 pass; the table through two
    /// two-register permutes and a blend on index bit 4).
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub(crate) unsafe fn exp8_avx512(x: __m256) -> __m256 {
        let xd = _mm512_cvtps_pd(x);
        let invln2n = _mm512_set1_pd(INVLN2N);
        let shift = _mm512_set1_pd(SHIFT);
        let kd = _mm512_fmadd_pd(invln2n, xd, shift);
        let ki = _mm512_castpd_si512(kd);
        let kd = _mm512_sub_pd(kd, shift);
        let r = _mm512_fmsub_pd(invln2n, xd, kd);
        let tab = TAB.as_ptr() as *const __m512i;
        let t_lo =
            _mm512_permutex2var_epi64(_mm512_loadu_si512(tab), ki, _mm512_loadu_si512(tab.add(1)));
        let t_hi = _mm512_permutex2var_epi64(
            _mm512_loadu_si512(tab.add(2)),
            ki,
            _mm512_loadu_si512(tab.add(3)),
        );
        let upper = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(16));
        let t = _mm512_mask_blend_epi64(upper, t_lo, t_hi);
        let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
        let z = _mm512_fmadd_pd(_mm512_set1_pd(C0), r, _mm512_set1_pd(C1));
        let r2 = _mm512_mul_pd(r, r);
        let y = _mm512_fmadd_pd(_mm512_set1_pd(C2), r, _mm512_set1_pd(1.0));
        let y = _mm512_fmadd_pd(z, r2, y);
        let y = _mm512_cvtpd_ps(_mm512_mul_pd(y, s));
        match special_lanes(x) {
            0 => y,
            mask => fix_lanes(x, y, mask),
        }
    }

    /// `x / (1 + e^−x) · u` on 8 lanes, with `e` from `$exp8`.
    macro_rules! silu8 {
        ($x:expr, $u:expr, $exp8:ident) => {{
            let x = $x;
            let e = $exp8(_mm256_xor_ps(x, _mm256_set1_ps(-0.0)));
            _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e)), $u)
        }};
    }

    macro_rules! slice_fns {
        ($exp_slice:ident, $silu_mul:ident, $exp8:ident, $features:literal) => {
            /// `x[i] = e^x[i]` (see [`super::exp_slice_at`]); the tail through a padded block.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn $exp_slice(x: &mut [f32]) {
                let mut chunks = x.chunks_exact_mut(8);
                for c in &mut chunks {
                    let p = c.as_mut_ptr();
                    _mm256_storeu_ps(p, $exp8(_mm256_loadu_ps(p)));
                }
                let tail = chunks.into_remainder();
                if !tail.is_empty() {
                    let mut buf = [0.0f32; 8];
                    buf[..tail.len()].copy_from_slice(tail);
                    _mm256_storeu_ps(buf.as_mut_ptr(), $exp8(_mm256_loadu_ps(buf.as_ptr())));
                    let n = tail.len();
                    tail.copy_from_slice(&buf[..n]);
                }
            }

            /// `gate = silu(gate) · up` (see [`super::silu_mul_at`]); lengths checked there.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn $silu_mul(gate: &mut [f32], up: &[f32]) {
                let body = gate.len() / 8 * 8;
                let (g, u) = (gate.as_mut_ptr(), up.as_ptr());
                let mut i = 0;
                while i < body {
                    let y = silu8!(_mm256_loadu_ps(g.add(i)), _mm256_loadu_ps(u.add(i)), $exp8);
                    _mm256_storeu_ps(g.add(i), y);
                    i += 8;
                }
                let n = gate.len() - body;
                if n > 0 {
                    let (mut bg, mut bu) = ([0.0f32; 8], [0.0f32; 8]);
                    bg[..n].copy_from_slice(&gate[body..]);
                    bu[..n].copy_from_slice(&up[body..]);
                    let y = silu8!(
                        _mm256_loadu_ps(bg.as_ptr()),
                        _mm256_loadu_ps(bu.as_ptr()),
                        $exp8
                    );
                    _mm256_storeu_ps(bg.as_mut_ptr(), y);
                    gate[body..].copy_from_slice(&bg[..n]);
                }
            }
        };
    }

    slice_fns!(exp_slice_avx2, silu_mul_avx2, exp8_avx2, "avx2,fma");
    slice_fns!(
        exp_slice_avx512,
        silu_mul_avx512,
        exp8_avx512,
        "avx2,fma,avx512f"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_two_to_the_i_over_32_less_the_exponent_step() {
        for (i, &t) in TAB.iter().enumerate() {
            let want = (i as f64 / 32.0).exp2().to_bits() - ((i as u64) << 47);
            assert_eq!(t, want, "entry {i}");
        }
        assert_eq!(INVLN2N, 32.0 / std::f64::consts::LN_2);
        assert_eq!(SHIFT, 1.5 * (1u64 << 52) as f64);
        // the cubic's coefficients are ln2/32 powers over factorials, refitted: within 1e-4
        let l = std::f64::consts::LN_2 / 32.0;
        for (c, want) in [(C2, l), (C1, l * l / 2.0), (C0, l * l * l / 6.0)] {
            assert!((c / want - 1.0).abs() < 1e-4, "{c} vs {want}");
        }
    }
}
