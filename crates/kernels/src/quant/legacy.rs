//! The 32-element "legacy" block types: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1 (ggml layouts).
//!
//! Q4_0: f16 d, 16 bytes of nibbles; element l is the low nibble of byte l, element l+16 the
//! high one; y = d * (q - 8). Q4_1 adds an f16 min m after d: y = d * q + m. Q5_0 / Q5_1 put a
//! little-endian u32 of fifth bits (bit l for element l) before the nibbles: y = d * (q - 16)
//! or d * q + m. Q8_0: f16 d, 32 x i8; Q8_1 also stores s = d * Σq after d. y = d * q.

use super::f16_at;

pub fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for l in 0..16 {
        y[l] = d * ((qs[l] & 0xF) as i32 - 8) as f32;
        y[l + 16] = d * ((qs[l] >> 4) as i32 - 8) as f32;
    }
}

pub fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for l in 0..16 {
        y[l] = d * (qs[l] & 0xF) as f32 + m;
        y[l + 16] = d * (qs[l] >> 4) as f32 + m;
    }
}

fn q5(qs: &[u8], qh: u32, l: usize) -> (i32, i32) {
    let lo = (qs[l] & 0xF) as u32 | (((qh >> l) & 1) << 4);
    let hi = (qs[l] >> 4) as u32 | (((qh >> (l + 16)) & 1) << 4);
    (lo as i32, hi as i32)
}

pub fn dequant_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for l in 0..16 {
        let (lo, hi) = q5(qs, qh, l);
        y[l] = d * (lo - 16) as f32;
        y[l + 16] = d * (hi - 16) as f32;
    }
}

pub fn dequant_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for l in 0..16 {
        let (lo, hi) = q5(qs, qh, l);
        y[l] = d * lo as f32 + m;
        y[l + 16] = d * hi as f32 + m;
    }
}

pub fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[2..34]) {
        *o = d * (q as i8) as f32;
    }
}

pub fn dequant_q8_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[4..36]) {
        *o = d * (q as i8) as f32;
    }
}
