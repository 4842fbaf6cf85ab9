//! AVX2 + FMA versions of the per-token element-wise operations (see `ops`). Callers check
//! `Isa::Avx2.is_available()`.

use crate::exp::expf;
use crate::exp::x86::exp8_avx2;
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
        let e = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(p.add(c)), mv));
        _mm256_storeu_ps(p.add(c), e);
        sum = _mm256_add_ps(sum, e);
        c += 8;
    }
    let mut s = hsum(sum);
    for v in &mut x[c..] {
        *v = expf(*v - max);
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

/// Round-half-to-even of 8 lanes (exactly like `act::round_even`), as i32.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn round_even8(p: __m256) -> __m256i {
    _mm256_cvtps_epi32(_mm256_round_ps(
        p,
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    ))
}

/// Packs 4 × 8 i32 (each in -128..=127) into 32 i8 in order.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack32(q: [__m256i; 4]) -> __m256i {
    let a = _mm256_packs_epi32(q[0], q[1]); // lanes: q0lo q1lo | q0hi q1hi (i16)
    let b = _mm256_packs_epi32(q[2], q[3]);
    let c = _mm256_packs_epi16(a, b); // q0lo q1lo q2lo q3lo | q0hi q1hi q2hi q3hi (i8, 4 each)
    _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `quantize_q8_32` with AVX2; bit-identical to the scalar version.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_q8_32(x: &[f32], out: &mut [crate::quant::BlockQ8_32]) {
    let sign = _mm256_set1_ps(-0.0);
    for (xb, o) in x.chunks_exact(32).zip(out.iter_mut()) {
        let p = xb.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let m01 = _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
        let m23 = _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]));
        let amax = hmax(_mm256_max_ps(m01, m23));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        let q = [0, 1, 2, 3].map(|k| round_even8(_mm256_mul_ps(v[k], idv)));
        let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        let sum = _mm_cvtsi128_si32(s);
        _mm256_storeu_si256(o.qs.as_mut_ptr() as *mut __m256i, pack32(q));
        o.d = crate::quant::act::round_f16(d);
        o.s = o.d * sum as f32;
        o.sum = sum;
    }
}

/// `interleave8` with AVX2: the 8 × 8 dwords transposed in registers, `off16` from the
/// interleaved rows with the same `maddubs` chain the Q5_0 tile runs. Identical to the
/// scalar version.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn interleave8(a: [&crate::quant::BlockQ8_32; 8]) -> crate::quant::BlockQ8x8 {
    let mut o = crate::quant::BlockQ8x8::default();
    let r = a.map(|b| _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i));
    // dwords j and j + 4 of each pair of tokens, then of each four, then across the halves
    let lo = |x, y| _mm256_unpacklo_epi32(x, y);
    let hi = |x, y| _mm256_unpackhi_epi32(x, y);
    let t = [
        lo(r[0], r[1]),
        hi(r[0], r[1]),
        lo(r[2], r[3]),
        hi(r[2], r[3]),
        lo(r[4], r[5]),
        hi(r[4], r[5]),
        lo(r[6], r[7]),
        hi(r[6], r[7]),
    ];
    let u = [
        _mm256_unpacklo_epi64(t[0], t[2]),
        _mm256_unpackhi_epi64(t[0], t[2]),
        _mm256_unpacklo_epi64(t[1], t[3]),
        _mm256_unpackhi_epi64(t[1], t[3]),
        _mm256_unpacklo_epi64(t[4], t[6]),
        _mm256_unpackhi_epi64(t[4], t[6]),
        _mm256_unpacklo_epi64(t[5], t[7]),
        _mm256_unpackhi_epi64(t[5], t[7]),
    ];
    let ones = _mm256_set1_epi8(1);
    let mut pairs = _mm256_setzero_si256();
    for j in 0..4 {
        let v = [
            _mm256_permute2x128_si256(u[j], u[j + 4], 0x20),
            _mm256_permute2x128_si256(u[j], u[j + 4], 0x31),
        ];
        for (h, v) in v.into_iter().enumerate() {
            let p = o.qs.as_mut_ptr().add(32 * (j + 4 * h)) as *mut __m256i;
            _mm256_store_si256(p, v);
            pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(ones, v));
        }
    }
    let off16 = _mm256_slli_epi16(pairs, 4);
    _mm256_store_si256(o.off16.as_mut_ptr() as *mut __m256i, off16);
    for (t, b) in a.iter().enumerate() {
        o.d[t] = b.d;
        o.s[t] = b.s;
        o.sum[t] = b.sum;
    }
    o
}

/// `quantize_q8_k` with AVX2; bit-identical to the scalar version.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_q8_k(x: &[f32], out: &mut [crate::quant::BlockQ8K]) {
    let sign = _mm256_set1_ps(-0.0);
    for (xb, o) in x.chunks_exact(256).zip(out.iter_mut()) {
        let p = xb.as_ptr();
        let mut m = _mm256_setzero_ps();
        for k in 0..32 {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * k))));
        }
        let amax = hmax(m);
        if amax == 0.0 {
            *o = crate::quant::BlockQ8K::default();
            continue;
        }
        // the first element of largest magnitude, with its sign (as the scalar loop finds it)
        let av = _mm256_set1_ps(amax);
        let mut max = amax;
        for k in 0..32 {
            let hit = _mm256_movemask_ps(_mm256_cmp_ps(
                _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * k))),
                av,
                _CMP_EQ_OQ,
            ));
            if hit != 0 {
                max = xb[8 * k + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let iv = _mm256_set1_ps(iscale);
        let lim = _mm256_set1_epi32(127);
        for c in 0..8 {
            let q = [0, 1, 2, 3].map(|k| {
                _mm256_min_epi32(
                    round_even8(_mm256_mul_ps(iv, _mm256_loadu_ps(p.add(32 * c + 8 * k)))),
                    lim,
                )
            });
            for g in 0..2 {
                let s = _mm256_add_epi32(q[2 * g], q[2 * g + 1]);
                let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
                o.bsums[2 * c + g] = _mm_cvtsi128_si32(s) as i16;
            }
            _mm256_storeu_si256(o.qs.as_mut_ptr().add(32 * c) as *mut __m256i, pack32(q));
        }
        o.d = 1.0 / iscale;
    }
}

/// `ops::gelu_tanh_mul_ggml`: f16 rounding by F16C, table lookups, f16 → f32 by F16C;
/// bit-identical to the scalar version.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gelu_tanh_mul_ggml(gate: &mut [f32], up: &[f32], table: &[u16]) {
    let n = gate.len().min(up.len());
    let lo = _mm256_set1_ps(-10.0);
    let hi = _mm256_set1_ps(10.0);
    let mut c = 0;
    let mut idx = [0u16; 8];
    let mut val = [0u16; 8];
    while c + 8 <= n {
        let p = gate.as_mut_ptr().add(c);
        let x = _mm256_loadu_ps(p);
        let u = _mm256_loadu_ps(up.as_ptr().add(c));
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
        _mm_storeu_si128(idx.as_mut_ptr() as *mut __m128i, h);
        for (v, &i) in val.iter_mut().zip(&idx) {
            *v = *table.get_unchecked(i as usize);
        }
        let g = _mm256_cvtph_ps(_mm_loadu_si128(val.as_ptr() as *const __m128i));
        let mut y = _mm256_mul_ps(g, u);
        y = _mm256_blendv_ps(y, _mm256_mul_ps(x, u), _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
        y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LE_OQ));
        _mm256_storeu_ps(p, y);
        c += 8;
    }
    crate::ops::reference::gelu_tanh_mul_ggml(&mut gate[c..n], &up[c..n]);
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let mut c = 0;
    while c + 8 <= n {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(c)));
        _mm_storeu_si128(dst.as_mut_ptr().add(c) as *mut __m128i, h);
        c += 8;
    }
    crate::ops::reference::f32_to_f16(&src[c..n], &mut dst[c..n]);
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut c = 0;
    while c + 8 <= n {
        let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(c) as *const __m128i));
        _mm256_storeu_ps(dst.as_mut_ptr().add(c), v);
        c += 8;
    }
    crate::ops::reference::f16_to_f32(&src[c..n], &mut dst[c..n]);
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f16(p: *const u16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// `ops::dot_f32_f16`; bit-identical to the scalar version.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f32_f16(a: &[f32], b: &[u16]) -> f32 {
    let n = a.len().min(b.len());
    let body = n / 32 * 32;
    let mut acc = [_mm256_setzero_ps(); 4];
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    while i < body {
        for (j, s) in acc.iter_mut().enumerate() {
            *s = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8 * j)),
                load_f16(pb.add(i + 8 * j)),
                *s,
            );
        }
        i += 32;
    }
    let r = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
    let t0 = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
    let t1 = _mm_hadd_ps(t0, t0);
    let mut sum = _mm_cvtss_f32(_mm_hadd_ps(t1, t1)) as f64;
    for k in body..n {
        sum += (a[k] * half::f16::from_bits(b[k]).to_f32()) as f64;
    }
    sum as f32
}

/// `ops::dot_f32_f16_keys` for head dims that are multiples of 32: per key the same four
/// accumulators and the same reduction as [`dot_f32_f16`], with the last horizontal adds
/// done for four keys at once (`hadd` of two keys' halves keeps each key's pairing).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f32_f16_keys<const H: usize>(
    a: [&[f32]; H],
    keys: &[u16],
    out: [&mut [f32]; H],
) {
    let hd = a[0].len();
    debug_assert!(hd % 32 == 0);
    let n = keys.len() / hd;
    let mut halves = [[_mm_setzero_ps(); 4]; H];
    let mut j = 0;
    while j < n {
        let quad = (n - j).min(4);
        for kk in 0..quad {
            let pb = keys.as_ptr().add((j + kk) * hd);
            let mut acc = [[_mm256_setzero_ps(); 4]; H];
            let mut i = 0;
            while i < hd {
                for jj in 0..4 {
                    let k = load_f16(pb.add(i + 8 * jj));
                    for h in 0..H {
                        let q = _mm256_loadu_ps(a[h].as_ptr().add(i + 8 * jj));
                        acc[h][jj] = _mm256_fmadd_ps(q, k, acc[h][jj]);
                    }
                }
                i += 32;
            }
            for h in 0..H {
                let r = _mm256_add_ps(
                    _mm256_add_ps(acc[h][0], acc[h][2]),
                    _mm256_add_ps(acc[h][1], acc[h][3]),
                );
                halves[h][kk] = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
            }
        }
        for h in 0..H {
            let [x0, x1, x2, x3] = halves[h];
            let s = _mm_hadd_ps(_mm_hadd_ps(x0, x1), _mm_hadd_ps(x2, x3));
            let mut four = [0.0f32; 4];
            _mm_storeu_ps(four.as_mut_ptr(), s);
            out[h][j..j + quad].copy_from_slice(&four[..quad]);
        }
        j += quad;
    }
}

/// `ops::f16_weighted_sum`: 8 vectors (64 elements) of the accumulator at a time stay in
/// registers, as f32 values rounded to f16 after every step, while all keys stream past.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_weighted_sum(values: &[u16], ms: &[f32], vs: &[f32], out: &mut [f32]) {
    let hd = out.len();
    let n8 = hd / 8;
    let mut v0 = 0;
    while v0 + 8 <= n8 {
        weighted_sum_vectors::<1, 8>(values, hd, 8 * v0, [ms], [vs], [out.as_mut_ptr()]);
        v0 += 8;
    }
    while v0 < n8 {
        weighted_sum_vectors::<1, 1>(values, hd, 8 * v0, [ms], [vs], [out.as_mut_ptr()]);
        v0 += 1;
    }
    weighted_sum_tail(values, ms, vs, &mut out[8 * n8..]);
}

/// `ops::f16_weighted_sum_x2`: two heads' accumulators, 6 vectors each, share every widened
/// value vector; twelve independent rounding chains keep the conversion units busy.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_weighted_sum_x2(
    values: &[u16],
    ms: [&[f32]; 2],
    vs: [&[f32]; 2],
    out: [&mut [f32]; 2],
) {
    let hd = out[0].len();
    let n8 = hd / 8;
    let [o0, o1] = out;
    let ptrs = [o0.as_mut_ptr(), o1.as_mut_ptr()];
    let mut v0 = 0;
    // passes of 6 vectors, but 8 left go as two of 4 (never fewer than 8 chains)
    while n8 - v0 >= 6 && n8 - v0 != 8 {
        weighted_sum_vectors::<2, 6>(values, hd, 8 * v0, ms, vs, ptrs);
        v0 += 6;
    }
    while v0 + 4 <= n8 {
        weighted_sum_vectors::<2, 4>(values, hd, 8 * v0, ms, vs, ptrs);
        v0 += 4;
    }
    while v0 + 2 <= n8 {
        weighted_sum_vectors::<2, 2>(values, hd, 8 * v0, ms, vs, ptrs);
        v0 += 2;
    }
    while v0 < n8 {
        weighted_sum_vectors::<2, 1>(values, hd, 8 * v0, ms, vs, ptrs);
        v0 += 1;
    }
    weighted_sum_tail(values, ms[0], vs[0], &mut o0[8 * n8..]);
    weighted_sum_tail(values, ms[1], vs[1], &mut o1[8 * n8..]);
}

/// The last `out.len()` (< 8) elements of each value row, in scalar.
fn weighted_sum_tail(values: &[u16], ms: &[f32], vs: &[f32], out: &mut [f32]) {
    if out.is_empty() {
        return;
    }
    let hd = values.len() / vs.len().max(1);
    let tail = hd - out.len();
    let mut acc = vec![0u16; out.len()];
    for (j, (&m, &v)) in ms.iter().zip(vs).enumerate() {
        if m != 1.0 {
            crate::ops::reference::scale_f16(&mut acc, m);
        }
        crate::ops::reference::mad_f16(&mut acc, &values[j * hd + tail..(j + 1) * hd], v);
    }
    for (o, &a) in out.iter_mut().zip(&acc) {
        *o = half::f16::from_bits(a).to_f32();
    }
}

/// Rounds each lane to the nearest f16 (ties to even) and widens it back.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_f16(x: __m256) -> __m256 {
    _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
}

/// The weighted sums of `H` heads for the `V` vectors of elements `e0..e0 + 8V`, written to
/// `out[h][e0..]`: each value vector is widened once for all heads.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_sum_vectors<const H: usize, const V: usize>(
    values: &[u16],
    hd: usize,
    e0: usize,
    ms: [&[f32]; H],
    vs: [&[f32]; H],
    out: [*mut f32; H],
) {
    let mut acc = [[_mm256_setzero_ps(); V]; H];
    let mut p = values.as_ptr().add(e0);
    for j in 0..vs[0].len() {
        for h in 0..H {
            let m = *ms[h].get_unchecked(j);
            if m != 1.0 {
                let mv = _mm256_set1_ps(m);
                for a in acc[h].iter_mut() {
                    *a = round_f16(_mm256_mul_ps(*a, mv));
                }
            }
        }
        let wv: [__m256; H] = std::array::from_fn(|h| _mm256_set1_ps(*vs[h].get_unchecked(j)));
        for k in 0..V {
            let v = load_f16(p.add(8 * k));
            for h in 0..H {
                acc[h][k] = round_f16(_mm256_fmadd_ps(v, wv[h], acc[h][k]));
            }
        }
        p = p.add(hd);
    }
    for h in 0..H {
        for (k, a) in acc[h].iter().enumerate() {
            _mm256_storeu_ps(out[h].add(e0 + 8 * k), *a);
        }
    }
}

/// `ops::axpy_f16`; bit-identical to the scalar version.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn axpy_f16(y: &mut [f32], a: f32, x: &[u16]) {
    let n = y.len().min(x.len());
    let av = _mm256_set1_ps(a);
    let mut c = 0;
    while c + 8 <= n {
        let p = y.as_mut_ptr().add(c);
        _mm256_storeu_ps(
            p,
            _mm256_fmadd_ps(av, load_f16(x.as_ptr().add(c)), _mm256_loadu_ps(p)),
        );
        c += 8;
    }
    crate::ops::reference::axpy_f16(&mut y[c..n], a, &x[c..n]);
}
