//! AVX2 + FMA versions of the per-token element-wise operations (see `ops`). Callers check
//! `Isa::Avx2.is_available()`.

use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hmax(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// e^x for 8 lanes: x = n·ln2 + r with |r| ≤ ln2/2, e^r by a degree-6 polynomial, 2^n through
/// the exponent bits. Relative error ~2e-7 for x in [-87, 88]; below that returns 0, above +inf.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
    let hi = _mm256_set1_ps(88.376_26);
    let lo = _mm256_set1_ps(-87.336_55);
    let xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    let n = _mm256_round_ps(
        _mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    // r = x - n ln2, with ln2 split in two for precision
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 120.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 24.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 6.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
    let e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    let y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    // exact limits outside the clamped range
    let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    _mm256_blendv_ps(
        y,
        _mm256_set1_ps(f32::INFINITY),
        _mm256_cmp_ps(x, hi, _CMP_GT_OQ),
    )
}

#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sum_squares(x: &[f32]) -> f32 {
    let mut a = [_mm256_setzero_ps(); 2];
    let mut c = 0;
    let p = x.as_ptr();
    while c + 16 <= x.len() {
        let v0 = _mm256_loadu_ps(p.add(c));
        let v1 = _mm256_loadu_ps(p.add(c + 8));
        a[0] = _mm256_fmadd_ps(v0, v0, a[0]);
        a[1] = _mm256_fmadd_ps(v1, v1, a[1]);
        c += 16;
    }
    let mut s = hsum(_mm256_add_ps(a[0], a[1]));
    for &v in &x[c..] {
        s += v * v;
    }
    s
}

/// out = x * scale * w
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn scale_mul(x: &[f32], scale: f32, w: &[f32], out: &mut [f32]) {
    let n = x.len().min(w.len()).min(out.len());
    let s = _mm256_set1_ps(scale);
    let mut c = 0;
    while c + 8 <= n {
        let v = _mm256_mul_ps(
            _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(c)), s),
            _mm256_loadu_ps(w.as_ptr().add(c)),
        );
        _mm256_storeu_ps(out.as_mut_ptr().add(c), v);
        c += 8;
    }
    for i in c..n {
        out[i] = x[i] * scale * w[i];
    }
}

#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn scale_mul_inplace(x: &mut [f32], scale: f32, w: &[f32]) {
    let n = x.len().min(w.len());
    let s = _mm256_set1_ps(scale);
    let mut c = 0;
    while c + 8 <= n {
        let p = x.as_mut_ptr().add(c);
        _mm256_storeu_ps(
            p,
            _mm256_mul_ps(
                _mm256_mul_ps(_mm256_loadu_ps(p), s),
                _mm256_loadu_ps(w.as_ptr().add(c)),
            ),
        );
        c += 8;
    }
    for i in c..n {
        x[i] = x[i] * scale * w[i];
    }
}

#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn softmax(x: &mut [f32]) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut c = 0;
    while c + 8 <= n {
        m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(c)));
        c += 8;
    }
    let mut max = hmax(m);
    for &v in &x[c..] {
        max = max.max(v);
    }
    let mv = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    c = 0;
    while c + 8 <= n {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(c)), mv));
        _mm256_storeu_ps(p.add(c), e);
        sum = _mm256_add_ps(sum, e);
        c += 8;
    }
    let mut s = hsum(sum);
    for v in &mut x[c..] {
        *v = (*v - max).exp();
        s += *v;
    }
    let inv = _mm256_set1_ps(1.0 / s);
    c = 0;
    while c + 8 <= n {
        _mm256_storeu_ps(p.add(c), _mm256_mul_ps(_mm256_loadu_ps(p.add(c)), inv));
        c += 8;
    }
    for v in &mut x[c..] {
        *v *= 1.0 / s;
    }
}

/// gate[i] = silu(gate[i]) * up[i]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let one = _mm256_set1_ps(1.0);
    let mut c = 0;
    while c + 8 <= n {
        let p = gate.as_mut_ptr().add(c);
        let g = _mm256_loadu_ps(p);
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(p, _mm256_mul_ps(s, _mm256_loadu_ps(up.as_ptr().add(c))));
        c += 8;
    }
    for i in c..n {
        gate[i] = crate::ops::silu(gate[i]) * up[i];
    }
}

/// gate[i] = gelu_tanh(gate[i]) * up[i], using 0.5 x (1 + tanh y) = x / (1 + e^{-2y})
/// (no cancellation for negative x).
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let one = _mm256_set1_ps(1.0);
    let k = _mm256_set1_ps(0.797_884_6);
    let c3 = _mm256_set1_ps(0.044_715);
    let mut c = 0;
    while c + 8 <= n {
        let p = gate.as_mut_ptr().add(c);
        let x = _mm256_loadu_ps(p);
        let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
        let y = _mm256_mul_ps(k, _mm256_fmadd_ps(c3, x3, x));
        let e = exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0), y));
        let g = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(p, _mm256_mul_ps(g, _mm256_loadu_ps(up.as_ptr().add(c))));
        c += 8;
    }
    for i in c..n {
        gate[i] = crate::ops::gelu_tanh(gate[i]) * up[i];
    }
}

/// y += a * x
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let av = _mm256_set1_ps(a);
    let mut c = 0;
    while c + 8 <= n {
        let p = y.as_mut_ptr().add(c);
        _mm256_storeu_ps(
            p,
            _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(c)), _mm256_loadu_ps(p)),
        );
        c += 8;
    }
    for i in c..n {
        y[i] += a * x[i];
    }
}
