//! Portable scalar reference dot products: one weight row (raw ggml blocks) × one quantised
//! activation row. Every SIMD path is tested against these.

use super::BlockU8;
use crate::quant::{
    f16_at, iq4_values, iq4_xs_scales, kscale_min, q3k_scales, BlockQ8K, BlockQ8_32, BlockQ8x8,
};
use crate::DType;

fn idot(w: impl Iterator<Item = i32>, a: &[i8]) -> i32 {
    w.zip(a).map(|(x, &y)| x * y as i32).sum()
}

/// The 32 signed integer weights of one legacy block (for Q4_1/Q5_1 the unsigned ones).
fn legacy_q(dtype: LegacyKind, b: &[u8]) -> [i32; 32] {
    let mut q = [0i32; 32];
    match dtype {
        LegacyKind::Q4_0 | LegacyKind::Q4_1 => {
            let (qs, off) = if dtype == LegacyKind::Q4_0 {
                (&b[2..18], 8)
            } else {
                (&b[4..20], 0)
            };
            for l in 0..16 {
                q[l] = (qs[l] & 0xF) as i32 - off;
                q[l + 16] = (qs[l] >> 4) as i32 - off;
            }
        }
        LegacyKind::Q5_0 | LegacyKind::Q5_1 => {
            let (h, off) = if dtype == LegacyKind::Q5_0 {
                (2, 16)
            } else {
                (4, 0)
            };
            let qh = u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]]);
            let qs = &b[h + 4..h + 20];
            for l in 0..16 {
                q[l] = ((qs[l] & 0xF) as u32 | (((qh >> l) & 1) << 4)) as i32 - off;
                q[l + 16] = ((qs[l] >> 4) as u32 | (((qh >> (l + 16)) & 1) << 4)) as i32 - off;
            }
        }
        LegacyKind::Q8_0 | LegacyKind::Q8_1 => {
            let o = if dtype == LegacyKind::Q8_0 { 2 } else { 4 };
            for l in 0..32 {
                q[l] = b[o + l] as i8 as i32;
            }
        }
        LegacyKind::IQ4_NL => {
            for (q, v) in q.iter_mut().zip(iq4_values(&b[2..18])) {
                *q = v as i32;
            }
        }
    }
    q
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum LegacyKind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    /// Q4_0's layout with the nibbles standing for `IQ4_KVALUES[q]`: signed, like Q8_0.
    #[allow(non_camel_case_types)]
    IQ4_NL,
}

impl LegacyKind {
    pub fn block_bytes(self) -> usize {
        match self {
            LegacyKind::Q4_0 => 18,
            LegacyKind::Q4_1 => 20,
            LegacyKind::Q5_0 => 22,
            LegacyKind::Q5_1 => 24,
            LegacyKind::Q8_0 => 34,
            LegacyKind::Q8_1 => 36,
            LegacyKind::IQ4_NL => 18,
        }
    }
    /// Whether the block has an f16 min after d (Q4_1, Q5_1).
    pub fn has_min(self) -> bool {
        matches!(self, LegacyKind::Q4_1 | LegacyKind::Q5_1)
    }
    /// What makes the block's values unsigned bytes, `u = q + offset`, in the unpacked form
    /// ([`BlockU8`]) and the `vpdpbusd` kernels: 0 for Q4_1 / Q5_1, whose values are unsigned.
    pub fn unsigned_offset(self) -> i32 {
        match self {
            LegacyKind::Q4_0 => 8,
            LegacyKind::Q5_0 => 16,
            LegacyKind::Q8_0 | LegacyKind::Q8_1 | LegacyKind::IQ4_NL => 128,
            LegacyKind::Q4_1 | LegacyKind::Q5_1 => 0,
        }
    }
}

/// Unpacks a legacy row (4/5-bit, Q8_0, IQ4_NL) into [`BlockU8`]s (see its docs for the form).
pub(crate) fn repack_u8(kind: LegacyKind, w: &[u8], out: &mut [BlockU8]) {
    let off = kind.unsigned_offset();
    for (b, o) in w.chunks_exact(kind.block_bytes()).zip(out) {
        let q = legacy_q(kind, b);
        for (u, &v) in o.u.iter_mut().zip(&q) {
            *u = (v + off) as u8;
        }
        o.d = f16_at(b, 0);
        o.m = if kind.has_min() { f16_at(b, 2) } else { 0.0 };
    }
}

/// Unpacks a Q4_K (`five == false`) or Q5_K row into [`BlockU8`]s, one per 32-element
/// sub-block (see its docs for the form).
pub(crate) fn repack_u8_k(five: bool, w: &[u8], out: &mut [BlockU8]) {
    let bb = if five { 176 } else { 144 };
    for (b, o) in w.chunks_exact(bb).zip(out.chunks_exact_mut(8)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, mn) = kscale_min(&b[4..16]);
        let qs = if five { &b[48..176] } else { &b[16..144] };
        for (j, o) in o.iter_mut().enumerate() {
            for l in 0..32 {
                let byte = qs[32 * (j / 2) + l];
                let mut u = if j % 2 == 0 { byte & 0xF } else { byte >> 4 };
                if five {
                    u |= ((b[16 + l] >> j) & 1) << 4;
                }
                o.u[l] = u;
            }
            (o.d, o.m, o.sc, o.mn) = (d, dmin, sc[j], mn[j]);
        }
    }
}

/// Unpacks a Q6_K row into [`BlockU8`]s, one per 32 weights (see its docs for the form).
pub(crate) fn repack_u8_q6_k(w: &[u8], out: &mut [BlockU8]) {
    for (b, o) in w.chunks_exact(210).zip(out.chunks_exact_mut(8)) {
        let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
        let d = f16_at(b, 208);
        // block j holds elements 32j.. = 128h + 32k.. (h = j / 4, k = j % 4)
        for (j, o) in o.iter_mut().enumerate() {
            let (h, k) = (j / 4, j % 4);
            let (sc0, sc1) = (scales[2 * j] as i8, scales[2 * j + 1] as i8);
            let mut sums = [0i32; 2];
            for l in 0..32 {
                let lbyte = ql[64 * h + 32 * (k & 1) + l];
                let low = if k < 2 { lbyte & 0xF } else { lbyte >> 4 };
                let high = (qh[32 * h + l] >> (2 * k)) & 3;
                let q = (low | (high << 4)) as i8 - 32;
                o.u[l] = q as u8;
                sums[l / 16] += q as i32;
            }
            (o.d, o.m, o.sc, o.mn) = (d, 0.0, sc0 as u8, sc1 as u8);
            o.corr = 128 * (sc0 as i32 * sums[0] + sc1 as i32 * sums[1]);
        }
    }
}

/// Unpacks an IQ4_XS row into [`BlockU8`]s, one per 32-element sub-block, in Q6_K's form
/// (see its docs).
pub(crate) fn repack_u8_iq4_xs(w: &[u8], out: &mut [BlockU8]) {
    for (b, o) in w.chunks_exact(136).zip(out.chunks_exact_mut(8)) {
        let d = f16_at(b, 0);
        let sc = iq4_xs_scales(b);
        for (j, o) in o.iter_mut().enumerate() {
            let v = iq4_values(&b[8 + 16 * j..24 + 16 * j]);
            for (u, &v) in o.u.iter_mut().zip(&v) {
                *u = v as u8;
            }
            let sum: i32 = v.iter().map(|&v| v as i32).sum();
            (o.d, o.m, o.sc, o.mn) = (d, 0.0, sc[j] as u8, sc[j] as u8);
            o.corr = 128 * sc[j] as i32 * sum;
        }
    }
}

/// Σ w·x of an unpacked row with one token (`t`) of interleaved activation blocks, in the
/// canonical order (per block, or per super-block for the k-quants: the exact integer dot,
/// then one fused multiply-add per scale).
pub(crate) fn dot_u8_g8(dtype: DType, w: &[BlockU8], g: &[BlockQ8x8], t: usize) -> f32 {
    let idot = |b: &BlockU8, ab: &BlockQ8x8| -> i32 {
        (0..8)
            .flat_map(|j| (0..4).map(move |u| (j, u)))
            .map(|(j, u)| b.u[4 * j + u] as i32 * ab.qs[32 * j + 4 * t + u] as i32)
            .sum()
    };
    let mut acc = 0.0f32;
    match dtype {
        DType::Q6_K | DType::IQ4_XS => {
            // activations offset by 128 (`BlockQ8x8::offset_by_128`): take the offset back out
            for (wb, gb) in w.chunks_exact(8).zip(g.chunks_exact(8)) {
                let mut isum = 0i32;
                for (b, ab) in wb.iter().zip(gb) {
                    for (half, scale) in [b.sc, b.mn].into_iter().enumerate() {
                        let s: i32 = (16 * half..16 * half + 16)
                            .map(|l| {
                                let a = ab.qs[32 * (l / 4) + 4 * t + l % 4] as u8 as i32;
                                b.u[l] as i8 as i32 * a
                            })
                            .sum();
                        isum += scale as i8 as i32 * s;
                    }
                    isum -= b.corr;
                }
                acc = (isum as f32).mul_add(wb[0].d * gb[0].d[t], acc);
            }
        }
        DType::Q4_K | DType::Q5_K => {
            for (wb, gb) in w.chunks_exact(8).zip(g.chunks_exact(8)) {
                let (mut isum, mut msum) = (0i32, 0i32);
                for (b, ab) in wb.iter().zip(gb) {
                    isum += b.sc as i32 * idot(b, ab);
                    msum += b.mn as i32 * ab.sum[t];
                }
                let da = gb[0].d[t];
                acc = (isum as f32).mul_add(wb[0].d * da, acc);
                acc = (-(msum as f32)).mul_add(wb[0].m * da, acc);
            }
        }
        _ => {
            let off = super::legacy_kind(dtype).map_or(0, LegacyKind::unsigned_offset);
            for (b, ab) in w.iter().zip(g) {
                let isum = idot(b, ab) - off * ab.sum[t];
                acc = (isum as f32).mul_add(b.d * ab.d[t], acc);
                if off == 0 {
                    acc = b.m.mul_add(ab.s[t], acc);
                }
            }
        }
    }
    acc
}

/// Σ w·x for a legacy-type row against Q8_32 activations.
pub(crate) fn dot_legacy(kind: LegacyKind, w: &[u8], a: &[BlockQ8_32]) -> f32 {
    let bb = kind.block_bytes();
    let mut sum = 0.0f32;
    for (b, ab) in w.chunks_exact(bb).zip(a) {
        let q = legacy_q(kind, b);
        let isum = idot(q.iter().copied(), &ab.qs);
        let d = f16_at(b, 0);
        sum += d * ab.d * isum as f32;
        if kind.has_min() {
            sum += f16_at(b, 2) * ab.s;
        }
    }
    sum
}

pub(crate) fn dot_q2_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (b, ab) in w.chunks_exact(84).zip(a) {
        let scales = &b[0..16];
        let qs = &b[16..80];
        let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
        let mut isum = 0i32;
        let mut msum = 0i32;
        for g in 0..16 {
            let mut s = 0i32;
            for e in 16 * g..16 * g + 16 {
                let (h, sh, l) = (e / 128, (e / 32) % 4, e % 32);
                let q = ((qs[32 * h + l] >> (2 * sh)) & 3) as i32;
                s += q * ab.qs[e] as i32;
            }
            isum += (scales[g] & 0xF) as i32 * s;
            msum += (scales[g] >> 4) as i32 * ab.bsums[g] as i32;
        }
        sum += ab.d * (d * isum as f32 - dmin * msum as f32);
    }
    sum
}

pub(crate) fn dot_q3_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (b, ab) in w.chunks_exact(110).zip(a) {
        let hmask = &b[0..32];
        let qs = &b[32..96];
        let sc = q3k_scales(&b[96..108]);
        let d = f16_at(b, 108);
        let mut isum = 0i32;
        for (g, &scg) in sc.iter().enumerate() {
            let mut s = 0i32;
            for e in 16 * g..16 * g + 16 {
                let (h, sh, l) = (e / 128, (e / 32) % 4, e % 32);
                let low = ((qs[32 * h + l] >> (2 * sh)) & 3) as i32;
                let high = (hmask[l] >> (4 * h + sh)) & 1;
                let q = low - if high == 1 { 0 } else { 4 };
                s += q * ab.qs[e] as i32;
            }
            isum += scg as i32 * s;
        }
        sum += d * ab.d * isum as f32;
    }
    sum
}

fn dot_q45_k(w: &[u8], a: &[BlockQ8K], five: bool) -> f32 {
    let bb = if five { 176 } else { 144 };
    let mut sum = 0.0f32;
    for (b, ab) in w.chunks_exact(bb).zip(a) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, mn) = kscale_min(&b[4..16]);
        let (qh, qs) = if five {
            (&b[16..48], &b[48..176])
        } else {
            (&b[0..0], &b[16..144])
        };
        let mut isum = 0i32;
        let mut msum = 0i32;
        for j in 0..4 {
            let (mut s1, mut s2) = (0i32, 0i32);
            for l in 0..32 {
                let q = qs[32 * j + l];
                let (mut lo, mut hi) = ((q & 0xF) as i32, (q >> 4) as i32);
                if five {
                    lo |= (((qh[l] >> (2 * j)) & 1) as i32) << 4;
                    hi |= (((qh[l] >> (2 * j + 1)) & 1) as i32) << 4;
                }
                s1 += lo * ab.qs[64 * j + l] as i32;
                s2 += hi * ab.qs[64 * j + 32 + l] as i32;
            }
            isum += sc[2 * j] as i32 * s1 + sc[2 * j + 1] as i32 * s2;
            let bs = |g: usize| ab.bsums[g] as i32;
            msum += mn[2 * j] as i32 * (bs(4 * j) + bs(4 * j + 1))
                + mn[2 * j + 1] as i32 * (bs(4 * j + 2) + bs(4 * j + 3));
        }
        sum += ab.d * (d * isum as f32 - dmin * msum as f32);
    }
    sum
}

pub(crate) fn dot_q4_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    dot_q45_k(w, a, false)
}

pub(crate) fn dot_q5_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    dot_q45_k(w, a, true)
}

pub(crate) fn dot_q6_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (b, ab) in w.chunks_exact(210).zip(a) {
        let ql = &b[0..128];
        let qh = &b[128..192];
        let scales = &b[192..208];
        let d = f16_at(b, 208);
        let mut isum = 0i32;
        for h in 0..2 {
            for k in 0..4 {
                for half in 0..2 {
                    let mut s = 0i32;
                    for l in 16 * half..16 * half + 16 {
                        let lbyte = ql[64 * h + 32 * (k & 1) + l];
                        let low = if k < 2 { lbyte & 0xF } else { lbyte >> 4 };
                        let high = (qh[32 * h + l] >> (2 * k)) & 3;
                        let q = (low | (high << 4)) as i32 - 32;
                        s += q * ab.qs[128 * h + 32 * k + l] as i32;
                    }
                    isum += scales[8 * h + 2 * k + half] as i8 as i32 * s;
                }
            }
        }
        // the canonical float step (one fused multiply-add, as the SIMD kernels and the
        // unpacked tiles finish a super-block)
        sum = (isum as f32).mul_add(d * ab.d, sum);
    }
    sum
}

/// Σ w·x for an IQ4_XS row against Q8_K activations: per super-block the exact integer sum
/// Σ_j (ls_j - 32) · Σ KVALUES[q]·a, then the canonical fused multiply-add (as Q6_K).
pub(crate) fn dot_iq4_xs(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (b, ab) in w.chunks_exact(136).zip(a) {
        let sc = iq4_xs_scales(b);
        let mut isum = 0i32;
        for j in 0..8 {
            let v = iq4_values(&b[8 + 16 * j..24 + 16 * j]);
            let s = idot(v.iter().map(|&v| v as i32), &ab.qs[32 * j..32 * j + 32]);
            isum += sc[j] as i32 * s;
        }
        sum = (isum as f32).mul_add(f16_at(b, 0) * ab.d, sum);
    }
    sum
}

pub(crate) fn dot_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (b, ab) in w.chunks_exact(292).zip(a) {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let isum = idot(b[4..260].iter().map(|&q| q as i8 as i32), &ab.qs);
        sum += d * ab.d * isum as f32;
    }
    sum
}

/// Σ w·x for a plain float row (F32/F16/BF16 bytes) against f32 activations.
pub(crate) fn dot_float(dtype: crate::DType, w: &[u8], x: &[f32]) -> f32 {
    use crate::DType;
    match dtype {
        DType::F32 => w
            .chunks_exact(4)
            .zip(x)
            .map(|(b, &v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v)
            .sum(),
        DType::F16 => w
            .chunks_exact(2)
            .zip(x)
            .map(|(b, &v)| half::f16::from_le_bytes([b[0], b[1]]).to_f32() * v)
            .sum(),
        DType::BF16 => w
            .chunks_exact(2)
            .zip(x)
            .map(|(b, &v)| half::bf16::from_le_bytes([b[0], b[1]]).to_f32() * v)
            .sum(),
        other => unreachable!("dot_float on {other}"),
    }
}
