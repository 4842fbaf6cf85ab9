//! Activation blocks: the 8-bit form activations take once per matmul, so that every weight
//! row can be multiplied with integer dot products.
//!
//! They follow ggml's Q8_0/Q8_1 (for the 32-element weight types) and Q8_K (for the k-quants),
//! except that the 32-element block keeps its scale in f32 (ggml rounds it to f16), which is
//! as fast and slightly more accurate. The quantised values are identical to ggml's.

/// 32 activations: `x ≈ d * qs`, with `s = d * Σ qs` (what Q4_1 / Q5_1 need for their min).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockQ8_32 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
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

/// Rounds half away from zero like C's `roundf`, without a libm call (baseline x86-64 has no
/// rounding instruction). Exact for every finite input below 2^31 in magnitude.
#[inline(always)]
pub(crate) fn round_away(v: f32) -> i32 {
    let t = v as i32; // truncates toward zero
    let frac = v - t as f32; // exact: t and v share their exponent range
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// Quantises `x` (a multiple of 32 long) like ggml's `quantize_row_q8_0`/`q8_1` reference:
/// `d = max|x| / 127`, `q = round(x / d)` (half away from zero).
pub fn quantize_q8_32(x: &[f32], out: &mut [BlockQ8_32]) {
    assert_eq!(x.len(), out.len() * 32, "quantize_q8_32: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if crate::dot::Isa::best() == crate::dot::Isa::Avx2 {
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
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in o.qs.iter_mut().zip(xb) {
            let r = round_away(v * id);
            *q = r as i8;
            sum += r;
        }
        o.d = d;
        o.s = d * sum as f32;
    }
}

/// Quantises `x` (a multiple of 256 long) like ggml's `quantize_row_q8_K_ref`: the value of
/// largest magnitude maps to -127 (so d may be negative), `q = round(x * -127 / max)`.
pub fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * 256, "quantize_q8_k: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if crate::dot::Isa::best() == crate::dot::Isa::Avx2 {
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
            *q = round_away(iscale * v).min(127) as i8;
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
/// `Σ qs` of token `t` (for the unsigned-weight offset correction).
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8x8 {
    pub qs: [i8; 256],
    pub d: [f32; 8],
    pub s: [f32; 8],
    pub sum: [i32; 8],
}

impl Default for BlockQ8x8 {
    fn default() -> Self {
        BlockQ8x8 {
            qs: [0; 256],
            d: [0.0; 8],
            s: [0.0; 8],
            sum: [0; 8],
        }
    }
}

/// Interleaves block `i` of 8 quantised rows (see [`BlockQ8x8`]).
pub fn interleave8(a: [&BlockQ8_32; 8]) -> BlockQ8x8 {
    let mut o = BlockQ8x8::default();
    for (t, b) in a.iter().enumerate() {
        for j in 0..8 {
            for u in 0..4 {
                o.qs[32 * j + 4 * t + u] = b.qs[4 * j + u];
            }
        }
        o.d[t] = b.d;
        o.s[t] = b.s;
        o.sum[t] = b.qs.iter().map(|&v| v as i32).sum();
    }
    o
}
