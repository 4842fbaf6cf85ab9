//! Block formats: dequantisation (the scalar reference) for every supported type.

mod float;

use crate::DType;

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
    match dtype {
        DType::F32 => float::f32_to_f32(src, out),
        DType::F16 => float::f16_to_f32(src, out),
        DType::BF16 => float::bf16_to_f32(src, out),
        other => unimplemented!("dequantize {other}"),
    }
}
