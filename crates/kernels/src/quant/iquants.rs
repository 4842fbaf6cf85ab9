//! The non-linear 4-bit types IQ4_NL and IQ4_XS (ggml layouts). A 4-bit index `q` picks the
//! value [`KVALUES`]`[q]` (an i8 grid, denser near zero) instead of standing for `q - 8`.
//!
//! - IQ4_NL (18 bytes, 32 elements): d f16, qs[16]. Element l (l < 16) is
//!   `d · KVALUES[qs[l] & 15]`, element l + 16 is `d · KVALUES[qs[l] >> 4]` (Q4_0's nibble
//!   order). Dotted with the 32-element Q8 activation blocks, like Q4_0.
//! - IQ4_XS (136 bytes, 256 elements): d f16 @0, scales_h u16 @2, scales_l[4] @4, qs[128] @8.
//!   Sub-block j (32 elements) has the 6-bit scale
//!   `ls = ((scales_l[j / 2] >> 4·(j % 2)) & 15) | (((scales_h >> 2j) & 3) << 4)` and the
//!   16 bytes of nibbles qs[16j..16j + 16] laid out as one IQ4_NL block; its elements are
//!   `d · (ls - 32) · KVALUES[q]`. Dotted with Q8_K activations, like the k-quants.

use super::f16_at;

/// The 16 values a 4-bit IQ4 index stands for (ggml's `kvalues_iq4nl`).
pub const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The eight signed sub-block scales `ls - 32` of an IQ4_XS block `b`.
#[inline(always)]
pub(crate) fn iq4_xs_scales(b: &[u8]) -> [i8; 8] {
    let sh = u16::from_le_bytes([b[2], b[3]]);
    std::array::from_fn(|j| {
        let lo = (b[4 + j / 2] >> (4 * (j % 2))) & 15;
        let hi = ((sh >> (2 * j)) & 3) as u8;
        (lo | (hi << 4)) as i8 - 32
    })
}

/// The 32 grid values of 16 bytes of IQ4 nibbles (low nibbles first, then high).
#[inline(always)]
pub(crate) fn iq4_values(qs: &[u8]) -> [i8; 32] {
    std::array::from_fn(|l| {
        let q = if l < 16 { qs[l] & 15 } else { qs[l - 16] >> 4 };
        KVALUES[q as usize]
    })
}

pub fn dequant_iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &v) in y.iter_mut().zip(&iq4_values(&b[2..18])) {
        *o = d * v as f32;
    }
}

pub fn dequant_iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let sc = iq4_xs_scales(b);
    for j in 0..8 {
        let dl = d * sc[j] as f32;
        let v = iq4_values(&b[8 + 16 * j..24 + 16 * j]);
        for (o, &v) in y[32 * j..32 * j + 32].iter_mut().zip(&v) {
            *o = dl * v as f32;
        }
    }
}
