//! aarch64 NEON kernels: widening multiplies on every aarch64 CPU, `sdot` (inline assembly,
//! as the dotprod intrinsics are not stable Rust) where the dotprod extension is present.
//! Tested under qemu-aarch64 (see the crate docs). Kept deliberately simple: weights are unpacked to
//! signed bytes, multiplied 16 at a time with `vmull_s8`, and the integer sums are scaled in
//! scalar code exactly as in the scalar reference. Callers guarantee activation lengths.

use super::scalar::LegacyKind;
use crate::quant::{f16_at, kscale_min, BlockQ8K, BlockQ8_32};
use std::arch::aarch64::*;

/// Σ a_i·b_i over 16 signed bytes, as four i32 partial sums: one `sdot` when `DOT` (the
/// caller checked the dotprod extension), else widening multiplies.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot16<const DOT: bool>(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if DOT {
        let mut r = vdupq_n_s32(0);
        // Inline assembly: the dotprod intrinsics are not stable Rust yet.
        std::arch::asm!(
            ".arch_extension dotprod",
            "sdot {r:v}.4s, {a:v}.16b, {b:v}.16b",
            r = inout(vreg) r,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
        return r;
    }
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot32<const DOT: bool>(q: &[int8x16_t; 2], y: *const i8) -> i32 {
    vaddvq_s32(vaddq_s32(
        dot16::<DOT>(q[0], vld1q_s8(y)),
        dot16::<DOT>(q[1], vld1q_s8(y.add(16))),
    ))
}

/// The 32 weights of a legacy block as signed bytes (Q4_1 / Q5_1: 0..31, still positive).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn unpack_legacy(kind: LegacyKind, b: &[u8]) -> [int8x16_t; 2] {
    match kind {
        LegacyKind::Q4_0 | LegacyKind::Q4_1 => {
            let off = if kind == LegacyKind::Q4_0 { 2 } else { 4 };
            let x = vld1q_u8(b.as_ptr().add(off));
            let lo = vreinterpretq_s8_u8(vandq_u8(x, vdupq_n_u8(0xF)));
            let hi = vreinterpretq_s8_u8(vshrq_n_u8(x, 4));
            if kind == LegacyKind::Q4_0 {
                let eight = vdupq_n_s8(8);
                [vsubq_s8(lo, eight), vsubq_s8(hi, eight)]
            } else {
                [lo, hi]
            }
        }
        LegacyKind::Q5_0 | LegacyKind::Q5_1 => {
            let (h, off) = if kind == LegacyKind::Q5_0 {
                (2, 16)
            } else {
                (4, 0)
            };
            let qh = u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]]);
            let qs = &b[h + 4..h + 20];
            let mut q = [0i8; 32];
            for l in 0..16 {
                q[l] = (((qs[l] & 0xF) as u32 | (((qh >> l) & 1) << 4)) as i32 - off) as i8;
                q[l + 16] =
                    (((qs[l] >> 4) as u32 | (((qh >> (l + 16)) & 1) << 4)) as i32 - off) as i8;
            }
            [vld1q_s8(q.as_ptr()), vld1q_s8(q.as_ptr().add(16))]
        }
        LegacyKind::Q8_0 | LegacyKind::Q8_1 => {
            let off = if kind == LegacyKind::Q8_0 { 2 } else { 4 };
            let p = b.as_ptr().add(off) as *const i8;
            [vld1q_s8(p), vld1q_s8(p.add(16))]
        }
        LegacyKind::IQ4_NL => {
            let t = vld1q_s8(crate::quant::IQ4_KVALUES.as_ptr());
            let x = vld1q_u8(b.as_ptr().add(2));
            let lo = vqtbl1q_s8(t, vandq_u8(x, vdupq_n_u8(0xF)));
            let hi = vqtbl1q_s8(t, vshrq_n_u8(x, 4));
            [lo, hi]
        }
    }
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_legacy_n<const DOT: bool, const N: usize>(
    kind: LegacyKind,
    w: &[u8],
    a: [&[BlockQ8_32]; N],
) -> [f32; N] {
    let mut out = [0.0f32; N];
    for (i, b) in w.chunks_exact(kind.block_bytes()).enumerate() {
        let d = f16_at(b, 0);
        let q = unpack_legacy(kind, b);
        for t in 0..N {
            let ab = a[t].get_unchecked(i);
            let isum = dot32::<DOT>(&q, ab.qs.as_ptr());
            out[t] += d * ab.d * isum as f32;
            if kind.has_min() {
                out[t] += f16_at(b, 2) * ab.s;
            }
        }
    }
    out
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_q4_k_n<const DOT: bool, const N: usize>(
    w: &[u8],
    a: [&[BlockQ8K]; N],
) -> [f32; N] {
    let mut out = [0.0f32; N];
    let m4 = vdupq_n_u8(0xF);
    for (i, b) in w.chunks_exact(144).enumerate() {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, mn) = kscale_min(&b[4..16]);
        let mut isum = [0i32; N];
        for j in 0..4 {
            let q0 = vld1q_u8(b.as_ptr().add(16 + 32 * j));
            let q1 = vld1q_u8(b.as_ptr().add(32 + 32 * j));
            let lo = [
                vreinterpretq_s8_u8(vandq_u8(q0, m4)),
                vreinterpretq_s8_u8(vandq_u8(q1, m4)),
            ];
            let hi = [
                vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)),
                vreinterpretq_s8_u8(vshrq_n_u8(q1, 4)),
            ];
            for t in 0..N {
                let y = a[t].get_unchecked(i).qs.as_ptr().add(64 * j);
                isum[t] += sc[2 * j] as i32 * dot32::<DOT>(&lo, y)
                    + sc[2 * j + 1] as i32 * dot32::<DOT>(&hi, y.add(32));
            }
        }
        for t in 0..N {
            let ab = a[t].get_unchecked(i);
            let mut msum = 0i32;
            for g in 0..16 {
                msum += mn[g / 2] as i32 * ab.bsums[g] as i32;
            }
            out[t] += ab.d * (d * isum[t] as f32 - dmin * msum as f32);
        }
    }
    out
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_q6_k_n<const DOT: bool, const N: usize>(
    w: &[u8],
    a: [&[BlockQ8K]; N],
) -> [f32; N] {
    let mut out = [0.0f32; N];
    let m4 = vdupq_n_u8(0xF);
    let m3 = vdupq_n_u8(3);
    let m32 = vdupq_n_s8(32);
    for (i, b) in w.chunks_exact(210).enumerate() {
        let p = b.as_ptr();
        let d = f16_at(b, 208);
        let mut isum = [0i32; N];
        for h in 0..2 {
            for k in 0..4 {
                let mut q = [vdupq_n_s8(0); 2];
                for (half, qv) in q.iter_mut().enumerate() {
                    let l0 = 16 * half;
                    let lb = vld1q_u8(p.add(64 * h + 32 * (k & 1) + l0));
                    let low = if k < 2 {
                        vandq_u8(lb, m4)
                    } else {
                        vshrq_n_u8(lb, 4)
                    };
                    let hb = vld1q_u8(p.add(128 + 32 * h + l0));
                    let high = match k {
                        0 => vandq_u8(hb, m3),
                        1 => vandq_u8(vshrq_n_u8(hb, 2), m3),
                        2 => vandq_u8(vshrq_n_u8(hb, 4), m3),
                        _ => vshrq_n_u8(hb, 6),
                    };
                    *qv = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, vshlq_n_u8(high, 4))), m32);
                }
                let s0 = b[192 + 8 * h + 2 * k] as i8 as i32;
                let s1 = b[192 + 8 * h + 2 * k + 1] as i8 as i32;
                for t in 0..N {
                    let y = a[t].get_unchecked(i).qs.as_ptr().add(128 * h + 32 * k);
                    isum[t] += s0 * vaddvq_s32(dot16::<DOT>(q[0], vld1q_s8(y)))
                        + s1 * vaddvq_s32(dot16::<DOT>(q[1], vld1q_s8(y.add(16))));
                }
            }
        }
        for t in 0..N {
            out[t] += d * a[t].get_unchecked(i).d * isum[t] as f32;
        }
    }
    out
}
