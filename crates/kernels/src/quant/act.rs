//! Activation blocks: the 8-bit form activations take once per matmul, so that every weight
//! row can be multiplied with integer dot products.
//!
//! They reproduce ggml's CPU quantisers bit for bit: Q8_0/Q8_1 (for the 32-element weight
//! types) and Q8_K (for the k-quants). Quantised weights come from llama.cpp's world and are
//! checked against it, and these models are sensitive enough to rounding that an 8-bit value
//! one step off, repeated over a layer, moves logprobs by hundredths; so the 32-element block's
//! scale is rounded to f16 as ggml stores it (kept here as the f32 of that f16, so the dot
//! kernels read it directly), its multiplier is `127 / max` (not `1 / d`), and values round
//! half to even as ggml's SIMD quantisers and `nearest_int` do.

/// 32 activations: `x ≈ d * qs`, with `s = d * Σ qs` (what Q4_1 / Q5_1 need for their min)
/// and `sum = Σ qs` (what takes the offset of unsigned Q5_0 weights off exactly).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockQ8_32 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
    pub sum: i32,
}

/// 256 activations: `x ≈ d * qs`, with `bsums[g] = Σ qs[16g..16g+16]` (ggml's Q8_K).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16],
        }
    }
}

/// Rounds to the nearest integer, half to even (the FPU's default mode), without a libm call:
/// adding 1.5·2^23 leaves the rounded value in the low mantissa bits. Exact for |v| < 2^22,
/// which covers every use here (|v| ≤ 128).
#[inline(always)]
pub(crate) fn round_even(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    ((v + MAGIC).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// `v` rounded to the nearest f16 (ties to even), as an f32.
#[inline(always)]
pub fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Quantises `x` (a multiple of 32 long) like ggml's x86 `quantize_row_q8_0`/`q8_1`:
/// `d = f16(max|x| / 127)`, `q = round_even(x · (127 / max|x|))`. `s = d · Σq` in f32 (ggml's
/// Q8_1 rounds it to f16 from the unrounded scale; only Q4_1/Q5_1 weights read it, and keeping
/// it consistent with `d` and `q` keeps their dot products exact against the dequantised
/// blocks).
pub fn quantize_q8_32(x: &[f32], out: &mut [BlockQ8_32]) {
    assert_eq!(x.len(), out.len() * 32, "quantize_q8_32: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if crate::dot::Isa::best().has_avx2() {
        return unsafe { crate::ops_avx2::quantize_q8_32(x, out) };
    }
    quantize_q8_32_scalar(x, out)
}

/// The scalar reference of [`quantize_q8_32`].
pub fn quantize_q8_32_scalar(x: &[f32], out: &mut [BlockQ8_32]) {
    assert_eq!(x.len(), out.len() * 32, "quantize_q8_32: length mismatch");
    for (xb, o) in x.chunks_exact(32).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in o.qs.iter_mut().zip(xb) {
            let r = round_even(v * id);
            *q = r as i8;
            sum += r;
        }
        o.d = round_f16(d);
        o.s = o.d * sum as f32;
        o.sum = sum;
    }
}

/// Quantises `x` (a multiple of 256 long) like ggml's `quantize_row_q8_K_ref`: the value of
/// largest magnitude maps to -127 (so d may be negative), `q = round_even(x * -127 / max)`.
pub fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * 256, "quantize_q8_k: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if crate::dot::Isa::best().has_avx2() {
        return unsafe { crate::ops_avx2::quantize_q8_k(x, out) };
    }
    quantize_q8_k_scalar(x, out)
}

/// The scalar reference of [`quantize_q8_k`].
pub fn quantize_q8_k_scalar(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * 256, "quantize_q8_k: length mismatch");
    for (xb, o) in x.chunks_exact(256).zip(out.iter_mut()) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *o = BlockQ8K::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in o.qs.iter_mut().zip(xb) {
            *q = round_even(iscale * v).min(127) as i8;
        }
        for (g, s) in o.bsums.iter_mut().enumerate() {
            *s = o.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
        }
        o.d = 1.0 / iscale;
    }
}

/// Block `i` of 8 activation rows, interleaved for the prefill tile: `qs[32j + 4t + u]` is
/// element `4j + u` of token `t`, so one 32-byte load holds 4 elements of all 8 tokens and a
/// broadcast weight dword multiplies them without any horizontal reduction. `sum[t]` is
/// `Σ qs` of token `t` (for the unsigned-weight offset correction). `off16[2t + p]` is 16 ·
/// the sum of token `t`'s elements `4j + 2p` and `4j + 2p + 1` (j = 0..8): the Q5_0 offset's
/// share of i16 lane `2t + p` of a `maddubs` chain over the block (|off16| <= 16 · 16 · 127).
/// Only [`interleave8`] fills it.
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8x8 {
    pub qs: [i8; 256],
    pub d: [f32; 8],
    pub s: [f32; 8],
    pub sum: [i32; 8],
    pub off16: [i16; 16],
}

impl Default for BlockQ8x8 {
    fn default() -> Self {
        BlockQ8x8 {
            qs: [0; 256],
            d: [0.0; 8],
            s: [0.0; 8],
            sum: [0; 8],
            off16: [0; 16],
        }
    }
}

impl BlockQ8x8 {
    /// The block with every activation byte offset by 128 (`a + 128`, read as unsigned), the
    /// form the Q6_K prefill tiles take (see `dot::BlockU8`); scales and sums unchanged.
    pub fn offset_by_128(&self) -> BlockQ8x8 {
        let mut o = *self;
        for q in o.qs.iter_mut() {
            *q = (*q as u8 ^ 0x80) as i8;
        }
        o
    }
}

/// Interleaves block `i` of 8 quantised rows (see [`BlockQ8x8`]).
pub fn interleave8(a: [&BlockQ8_32; 8]) -> BlockQ8x8 {
    #[cfg(target_arch = "x86_64")]
    if crate::dot::Isa::best().has_avx2() {
        return unsafe { crate::ops_avx2::interleave8(a) };
    }
    interleave8_scalar(a)
}

/// The scalar reference of [`interleave8`].
pub fn interleave8_scalar(a: [&BlockQ8_32; 8]) -> BlockQ8x8 {
    let mut o = BlockQ8x8::default();
    for (t, b) in a.iter().enumerate() {
        for j in 0..8 {
            for u in 0..4 {
                o.qs[32 * j + 4 * t + u] = b.qs[4 * j + u];
            }
        }
        for p in 0..2 {
            let pairs: i32 = (0..8)
                .map(|j| b.qs[4 * j + 2 * p] as i32 + b.qs[4 * j + 2 * p + 1] as i32)
                .sum();
            o.off16[2 * t + p] = (16 * pairs) as i16;
        }
        o.d[t] = b.d;
        o.s[t] = b.s;
        o.sum[t] = b.sum;
    }
    o
}
