//! Element-wise and row-wise operations of the forward pass.
//!
//! The slice operations use AVX2 when the CPU has it; [`mod@reference`] holds the scalar versions
//! they are tested against.

#[cfg(target_arch = "x86_64")]
#[inline]
fn avx2() -> bool {
    crate::dot::Isa::best() == crate::dot::Isa::Avx2
}

/// `out = w * x / sqrt(mean(x²) + eps)`, accumulated in f32 like transformers.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        w.len() >= x.len() && out.len() >= x.len(),
        "rms_norm: weight/output shorter than x"
    );
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe {
            let scale = 1.0 / (crate::ops_avx2::sum_squares(x) / x.len() as f32 + eps).sqrt();
            crate::ops_avx2::scale_mul(x, scale, w, out);
        }
        return;
    }
    reference::rms_norm(x, w, eps, out)
}

/// RMS-normalises `x` in place with weight `w`.
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    assert!(
        w.len() >= x.len(),
        "rms_norm_inplace: weight shorter than x"
    );
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe {
            let scale = 1.0 / (crate::ops_avx2::sum_squares(x) / x.len() as f32 + eps).sqrt();
            crate::ops_avx2::scale_mul_inplace(x, scale, w);
        }
        return;
    }
    reference::rms_norm_inplace(x, w, eps)
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe { crate::ops_avx2::softmax(x) };
        return;
    }
    reference::softmax(x)
}

/// `gate[i] = silu(gate[i]) * up[i]` (the SwiGLU feed-forward gate).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe { crate::ops_avx2::silu_mul(gate, up) };
        return;
    }
    reference::silu_mul(gate, up)
}

/// `gate[i] = gelu_tanh(gate[i]) * up[i]` (the GeGLU feed-forward gate).
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gelu_tanh_mul: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe { crate::ops_avx2::gelu_tanh_mul(gate, up) };
        return;
    }
    reference::gelu_tanh_mul(gate, up)
}

/// `y += a * x` (attention's weighted sum of values).
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe { crate::ops_avx2::axpy(y, a, x) };
        return;
    }
    reference::axpy(y, a, x)
}

/// Σ a·b (attention scores), SIMD when available.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    crate::dot::dot_f32(a, b)
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (`gelu_pytorch_tanh`).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

/// Scalar reference versions of the slice operations.
pub mod reference {
    use super::{gelu_tanh, silu};

    pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
            *o = v * scale * g;
        }
    }

    pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
        let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for (v, &g) in x.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }

    pub fn softmax(x: &mut [f32]) {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in x.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in x.iter_mut() {
            *v *= inv;
        }
    }

    pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
        for (g, &u) in gate.iter_mut().zip(up) {
            *g = silu(*g) * u;
        }
    }

    pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
        for (g, &u) in gate.iter_mut().zip(up) {
            *g = gelu_tanh(*g) * u;
        }
    }

    pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (v, &b) in y.iter_mut().zip(x) {
            *v += a * b;
        }
    }
}

/// How a head's dimensions are paired for rotary embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): Meta's original checkpoints and GGUF `llama`.
    Interleaved,
    /// Element i pairs with i + d/2 ("rotate half"): Hugging Face and GGUF NeoX-style archs.
    Half,
}

/// Rotates one head `x` (length `head_dim`) in place; `inv_freq` has `head_dim/2` entries.
pub fn rope(x: &mut [f32], pos: usize, inv_freq: &[f32], style: RopeStyle) {
    let half = x.len() / 2;
    for (i, &f) in inv_freq.iter().enumerate() {
        let angle = pos as f32 * f;
        let (sin, cos) = angle.sin_cos();
        let (a, b) = match style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::Half => (i, i + half),
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos - x1 * sin;
        x[b] = x0 * sin + x1 * cos;
    }
}
