//! The 256-element "k-quant" super-block types: Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K (ggml layouts).
//!
//! Byte layouts (offsets within one block):
//! - Q2_K (84): scales[16] (low nibble scale, high nibble min, per 16 elements), qs[64] (2-bit),
//!   d f16 @80, dmin f16 @82. Element 128h+32s+l = (qs[32h+l] >> 2s) & 3; y = d*sc*q - dmin*m.
//! - Q3_K (110): hmask[32], qs[64], scales[12] (16 x 6-bit, offset 32), d f16 @108. Element
//!   128h+32s+l: low = (qs[32h+l] >> 2s) & 3, high bit = bit (4h+s) of hmask[l];
//!   q = low - (high ? 0 : 4); y = d * sc * q.
//! - Q4_K (144): d f16, dmin f16, scales[12] (8 x 6-bit scale/min), qs[128]. Element 64j+l
//!   (l<32) is the low nibble of qs[32j+l], 64j+32+l the high one; y = d*sc*q - dmin*m.
//! - Q5_K (176): as Q4_K plus qh[32] before qs: the fifth bit of element 64j+l is bit 2j of
//!   qh[l], of element 64j+32+l bit 2j+1.
//! - Q6_K (210): ql[128], qh[64], scales[16] i8, d f16 @208. In half h (128 elements),
//!   element 32k+l takes 4 bits from ql[64h + 32(k&1) + l] (low nibble for k<2, else high)
//!   and 2 bits from (qh[32h+l] >> 2k) & 3; q - 32, scale scales[8h + 2k + l/16].
//! - Q8_K (292): d f32, qs[256] i8, bsums[16] i16. y = d * q.

use super::{f16_at, kscale_min, q3k_scales};

pub fn dequant_q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for (e, o) in y.iter_mut().enumerate().take(256) {
        let (h, s, l) = (e / 128, (e / 32) % 4, e % 32);
        let q = (qs[32 * h + l] >> (2 * s)) & 3;
        let sc = scales[e / 16];
        let dl = d * (sc & 0xF) as f32;
        let ml = dmin * (sc >> 4) as f32;
        *o = dl * q as f32 - ml;
    }
}

pub fn dequant_q3_k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let sc = q3k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    for (e, o) in y.iter_mut().enumerate().take(256) {
        let (h, s, l) = (e / 128, (e / 32) % 4, e % 32);
        let low = ((qs[32 * h + l] >> (2 * s)) & 3) as i32;
        let high = (hmask[l] >> (4 * h + s)) & 1;
        let q = low - if high == 1 { 0 } else { 4 };
        let dl = d * sc[e / 16] as f32;
        *o = dl * q as f32;
    }
}

pub fn dequant_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, mn) = kscale_min(&b[4..16]);
    let qs = &b[16..144];
    for j in 0..4 {
        let (d1, m1) = (d * sc[2 * j] as f32, dmin * mn[2 * j] as f32);
        let (d2, m2) = (d * sc[2 * j + 1] as f32, dmin * mn[2 * j + 1] as f32);
        for l in 0..32 {
            let q = qs[32 * j + l];
            y[64 * j + l] = d1 * (q & 0xF) as f32 - m1;
            y[64 * j + 32 + l] = d2 * (q >> 4) as f32 - m2;
        }
    }
}

pub fn dequant_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, mn) = kscale_min(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for j in 0..4 {
        let (d1, m1) = (d * sc[2 * j] as f32, dmin * mn[2 * j] as f32);
        let (d2, m2) = (d * sc[2 * j + 1] as f32, dmin * mn[2 * j + 1] as f32);
        for l in 0..32 {
            let q = qs[32 * j + l];
            let lo = (q & 0xF) | (((qh[l] >> (2 * j)) & 1) << 4);
            let hi = (q >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4);
            y[64 * j + l] = d1 * lo as f32 - m1;
            y[64 * j + 32 + l] = d2 * hi as f32 - m2;
        }
    }
}

pub fn dequant_q6_k(b: &[u8], y: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_at(b, 208);
    for h in 0..2 {
        for k in 0..4 {
            for l in 0..32 {
                let lbyte = ql[64 * h + 32 * (k & 1) + l];
                let low = if k < 2 { lbyte & 0xF } else { lbyte >> 4 };
                let high = (qh[32 * h + l] >> (2 * k)) & 3;
                let q = (low | (high << 4)) as i32 - 32;
                let sc = scales[8 * h + 2 * k + l / 16] as i8;
                y[128 * h + 32 * k + l] = d * sc as f32 * q as f32;
            }
        }
    }
}

pub fn dequant_q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (o, &q) in y.iter_mut().zip(&b[4..260]) {
        *o = d * (q as i8) as f32;
    }
}
