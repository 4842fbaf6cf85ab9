//! Block formats: dequantisation (the scalar reference) for every supported type, and the
//! quantisation of activations into the 8-bit blocks the integer dot products consume.

pub mod act;
mod float;
mod iquants;
mod kquants;
mod legacy;
mod quantize;

use crate::DType;

pub use act::{interleave8, quantize_q8_32, quantize_q8_k, BlockQ8K, BlockQ8_32, BlockQ8x8};
pub use iquants::KVALUES as IQ4_KVALUES;
pub(crate) use iquants::{iq4_values, iq4_xs_scales};
pub use quantize::{can_quantize, quantize};

/// Expands `src`, a whole number of `dtype` blocks, into `out` (one f32 per element).
///
/// Panics if the lengths disagree: callers size buffers from the tensor shape, which
/// `Tensor::new` has already checked against the bytes.
pub fn dequantize(dtype: DType, src: &[u8], out: &mut [f32]) {
    assert_eq!(
        Some(src.len()),
        dtype.bytes_for(out.len()),
        "dequantize: {} bytes of {dtype} cannot hold {} values",
        src.len(),
        out.len()
    );
    let bs = dtype.block_size();
    let bb = dtype.block_bytes();
    let f: fn(&[u8], &mut [f32]) = match dtype {
        DType::F32 => return float::f32_to_f32(src, out),
        DType::F16 => return float::f16_to_f32(src, out),
        DType::BF16 => return float::bf16_to_f32(src, out),
        DType::Q4_0 => legacy::dequant_q4_0,
        DType::Q4_1 => legacy::dequant_q4_1,
        DType::Q5_0 => legacy::dequant_q5_0,
        DType::Q5_1 => legacy::dequant_q5_1,
        DType::Q8_0 => legacy::dequant_q8_0,
        DType::Q8_1 => legacy::dequant_q8_1,
        DType::Q2_K => kquants::dequant_q2_k,
        DType::Q3_K => kquants::dequant_q3_k,
        DType::Q4_K => kquants::dequant_q4_k,
        DType::Q5_K => kquants::dequant_q5_k,
        DType::Q6_K => kquants::dequant_q6_k,
        DType::Q8_K => kquants::dequant_q8_k,
        DType::IQ4_NL => iquants::dequant_iq4_nl,
        DType::IQ4_XS => iquants::dequant_iq4_xs,
    };
    for (b, o) in src.chunks_exact(bb).zip(out.chunks_exact_mut(bs)) {
        f(b, o);
    }
}

/// The little-endian IEEE half at `b[off..off + 2]`, widened to f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Unpacks the eight 6-bit (scale, min) pairs of a Q4_K / Q5_K block's 12 scale bytes.
#[inline(always)]
pub(crate) fn kscale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
    }
    for j in 4..8 {
        sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    (sc, mn)
}

/// Unpacks the sixteen signed 6-bit scales of a Q3_K block's 12 scale bytes.
#[inline(always)]
pub(crate) fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0xF } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}
