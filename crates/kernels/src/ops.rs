//! Element-wise and row-wise operations of the forward pass.
//!
//! The slice operations use AVX2 when the CPU has it; [`mod@reference`] holds the scalar versions
//! they are tested against.

#[cfg(target_arch = "x86_64")]
#[inline]
fn avx2() -> bool {
    crate::dot::Isa::best().has_avx2()
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

/// Numerically stable softmax in place. The AVX2 form sums in 8 lanes (so its result may
/// differ from the reference's in the last bits); its `e^x` are glibc's `expf` (see
/// [`crate::exp`]), the same as the reference's where libm is glibc's FMA build.
pub fn softmax(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe { crate::ops_avx2::softmax(x) };
        return;
    }
    reference::softmax(x)
}

/// `gate[i] = gelu(gate[i]) * up[i]` as ggml computes it on the CPU (`ggml_vec_geglu_f32` with
/// `GGML_GELU_FP16`): the input is rounded to f16 and looked up in a table of
/// `f16(gelu_tanh(x))`, so the activation carries f16 precision; inputs at or beyond ±10 take
/// the limits (0 and x). Used where llama.cpp is the reference (quantised models).
pub fn gelu_tanh_mul_ggml(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gelu_tanh_mul_ggml: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe { crate::ops_avx2::gelu_tanh_mul_ggml(gate, up, gelu_f16_table()) };
        return;
    }
    reference::gelu_tanh_mul_ggml(gate, up)
}

/// ggml's GELU table: entry `h` is `f16(gelu(f32(h)))` for every f16 bit pattern `h`, with
/// gelu evaluated in f32 in ggml's form `0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²)))`.
pub fn gelu_f16_table() -> &'static [u16] {
    static TABLE: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        const COEF_A: f32 = 0.044_715;
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        (0..=u16::MAX)
            .map(|h| {
                let x = half::f16::from_bits(h).to_f32();
                let g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh());
                half::f16::from_f32(g).to_bits()
            })
            .collect()
    })
}

/// f32 → f16 bit patterns, rounding to nearest even (as F16C and ggml do).
pub fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe { crate::ops_avx2::f32_to_f16(src, dst) };
        return;
    }
    reference::f32_to_f16(src, dst)
}

/// f16 bit patterns → f32 (exact).
pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe { crate::ops_avx2::f16_to_f32(src, dst) };
        return;
    }
    reference::f16_to_f32(src, dst)
}

/// Σ a·b of an f32 vector and an f16 one (a query against f16 keys), in f32 in the lane order
/// of ggml's AVX2 `ggml_vec_dot_f16`: 4 × 8 fused multiply-add lanes over each 32 elements,
/// summed pairwise, tail in f64.
pub fn dot_f32_f16(a: &[f32], b: &[u16]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32_f16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        return unsafe { crate::ops_avx2::dot_f32_f16(a, b) };
    }
    reference::dot_f32_f16(a, b)
}

/// The scores of `H` (1 or 2) query rows against each of the keys stored back to back in
/// `keys` (`a[h].len()` elements each): `out[h][j] = dot_f32_f16(a[h], key j)`, bit-identical
/// to calling [`dot_f32_f16`] key by key; one call per row instead of one per key.
pub fn dot_f32_f16_keys<const H: usize>(a: [&[f32]; H], keys: &[u16], out: [&mut [f32]; H]) {
    assert!(H == 1 || H == 2, "dot_f32_f16_keys: 1 or 2 rows");
    let hd = a[0].len();
    let n = keys.len() / hd.max(1);
    assert!(
        (0..H).all(|h| a[h].len() == hd && out[h].len() == n) && n * hd == keys.len(),
        "dot_f32_f16_keys: lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    if avx2() && hd > 0 && hd % 32 == 0 {
        unsafe { crate::ops_avx2::dot_f32_f16_keys(a, keys, out) };
        return;
    }
    for (h, o) in out.into_iter().enumerate() {
        for (j, s) in o.iter_mut().enumerate() {
            *s = dot_f32_f16(a[h], &keys[j * hd..(j + 1) * hd]);
        }
    }
}

/// The f16 accumulator of ggml's one-row flash attention over a run of keys, widened into
/// `out`: starting from zero, for each key `j` in order and per element, `acc = f16(acc·ms[j])`
/// when `ms[j] != 1` (the running maximum moved), then `acc = f16(acc + v_j·vs[j])` with the
/// f32 fused multiply-add rounded once. `values` holds the keys' value rows back to back
/// (`out.len()` each). Bit-identical to [`reference::scale_f16`] and [`reference::mad_f16`] applied key by key; the
/// SIMD form keeps a slice of the accumulator in registers for the whole run of keys instead
/// of storing and reloading it for every key.
pub fn f16_weighted_sum(values: &[u16], ms: &[f32], vs: &[f32], out: &mut [f32]) {
    let hd = out.len();
    assert!(
        ms.len() == vs.len() && values.len() == vs.len() * hd,
        "f16_weighted_sum: lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe { crate::ops_avx2::f16_weighted_sum(values, ms, vs, out) };
        return;
    }
    reference::f16_weighted_sum(values, ms, vs, out)
}

/// [`f16_weighted_sum`] of two heads over the same values (two query heads sharing a kv
/// head): bit-identical to two calls, with each value element widened once for both.
pub fn f16_weighted_sum_x2(values: &[u16], ms: [&[f32]; 2], vs: [&[f32]; 2], out: [&mut [f32]; 2]) {
    let hd = out[0].len();
    assert!(
        out[1].len() == hd
            && (0..2).all(|h| ms[h].len() == vs[h].len() && values.len() == vs[h].len() * hd),
        "f16_weighted_sum_x2: lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe { crate::ops_avx2::f16_weighted_sum_x2(values, ms, vs, out) };
        return;
    }
    let [o0, o1] = out;
    reference::f16_weighted_sum(values, ms[0], vs[0], o0);
    reference::f16_weighted_sum(values, ms[1], vs[1], o1);
}

/// `y[i] += a · x[i]` with f16 `x` (attention's weighted sum over f16 values), one fused
/// multiply-add per element.
pub fn axpy_f16(y: &mut [f32], a: f32, x: &[u16]) {
    assert_eq!(y.len(), x.len(), "axpy_f16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        unsafe { crate::ops_avx2::axpy_f16(y, a, x) };
        return;
    }
    reference::axpy_f16(y, a, x)
}

/// `x[i] = e^x[i]`, bit-identical to libm's `expf` where that is glibc's FMA build (see
/// [`crate::exp`]); the vector levels run [`crate::exp::expf`], the others libm.
pub fn exp(x: &mut [f32]) {
    crate::exp::exp_slice_at(crate::dot::Isa::best(), x)
}

/// `gate[i] = silu(gate[i]) · up[i]`: the f32 steps of [`reference::silu_mul`] with the
/// vectorised [`crate::exp::expf`] (bit-identical to the reference where libm's `expf` is
/// glibc's FMA build, as on x86-64 Linux).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    crate::exp::silu_mul_at(crate::dot::Isa::best(), gate, up)
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
    use half::f16;

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

    pub fn gelu_tanh_mul_ggml(gate: &mut [f32], up: &[f32]) {
        let table = super::gelu_f16_table();
        for (g, &u) in gate.iter_mut().zip(up) {
            let x = *g;
            *g = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x * u
            } else {
                f16::from_bits(table[f16::from_f32(x).to_bits() as usize]).to_f32() * u
            };
        }
    }

    pub fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = f16::from_f32(v).to_bits();
        }
    }

    pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
        for (d, &h) in dst.iter_mut().zip(src) {
            *d = f16::from_bits(h).to_f32();
        }
    }

    /// Σ x_k·y_k over `n` terms in the order of ggml's AVX2 f16 dot: 4 × 8 fused
    /// multiply-add lanes over each 32 terms, the lanes summed pairwise, any tail in f64.
    fn dot_in_ggml_order(n: usize, term: impl Fn(usize) -> (f32, f32)) -> f32 {
        let body = n / 32 * 32;
        let mut acc = [[0.0f32; 8]; 4];
        for i in (0..body).step_by(32) {
            for (j, lanes) in acc.iter_mut().enumerate() {
                for (l, s) in lanes.iter_mut().enumerate() {
                    let (x, y) = term(i + 8 * j + l);
                    *s = x.mul_add(y, *s);
                }
            }
        }
        let r: [f32; 8] =
            std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
        let t: [f32; 4] = std::array::from_fn(|k| r[k] + r[k + 4]);
        let mut sum = ((t[0] + t[1]) + (t[2] + t[3])) as f64;
        for k in body..n {
            let (x, y) = term(k);
            sum += (x * y) as f64;
        }
        sum as f32
    }

    pub fn dot_f32_f16(a: &[f32], b: &[u16]) -> f32 {
        let h = |v: u16| f16::from_bits(v).to_f32();
        dot_in_ggml_order(a.len(), |k| (a[k], h(b[k])))
    }

    pub fn axpy_f16(y: &mut [f32], a: f32, x: &[u16]) {
        for (v, &b) in y.iter_mut().zip(x) {
            *v = a.mul_add(f16::from_bits(b).to_f32(), *v);
        }
    }

    pub fn f16_weighted_sum(values: &[u16], ms: &[f32], vs: &[f32], out: &mut [f32]) {
        let hd = out.len();
        let mut acc = vec![0u16; hd];
        for (j, (&m, &v)) in ms.iter().zip(vs).enumerate() {
            if m != 1.0 {
                scale_f16(&mut acc, m);
            }
            mad_f16(&mut acc, &values[j * hd..(j + 1) * hd], v);
        }
        for (o, &a) in out.iter_mut().zip(&acc) {
            *o = f16::from_bits(a).to_f32();
        }
    }

    pub fn mad_f16(y: &mut [u16], x: &[u16], v: f32) {
        for (d, &s) in y.iter_mut().zip(x) {
            let r = f16::from_bits(s)
                .to_f32()
                .mul_add(v, f16::from_bits(*d).to_f32());
            *d = f16::from_f32(r).to_bits();
        }
    }

    pub fn scale_f16(y: &mut [u16], v: f32) {
        for d in y.iter_mut() {
            *d = f16::from_f32(f16::from_bits(*d).to_f32() * v).to_bits();
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
    let mut angles = vec![[0.0; 2]; inv_freq.len()];
    rope_angles(pos, inv_freq, &mut angles);
    rope_rotate(x, &angles, style);
}

/// `(cos, sin)` of position `pos` for each frequency: a row's table, shared by all its heads.
pub fn rope_angles(pos: usize, inv_freq: &[f32], out: &mut [[f32; 2]]) {
    for (o, &f) in out.iter_mut().zip(inv_freq) {
        let (sin, cos) = (pos as f32 * f).sin_cos();
        *o = [cos, sin];
    }
}

/// Rotates one head `x` in place by the angles of [`rope_angles`] (`x.len() / 2` of them).
pub fn rope_rotate(x: &mut [f32], angles: &[[f32; 2]], style: RopeStyle) {
    let half = x.len() / 2;
    for (i, &[cos, sin]) in angles.iter().enumerate().take(half) {
        let (a, b) = match style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::Half => (i, i + half),
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos - x1 * sin;
        x[b] = x0 * sin + x1 * cos;
    }
}
