//! Quantisation of f32 weights into ggml's block types: what `kiln quantize` writes.
//!
//! Each quantiser follows the algorithm of ggml's reference quantisers (the ones llama.cpp's
//! `llama-quantize` runs when no importance matrix is given), written here from the block
//! formats and the algorithm's description:
//!
//! * Q8_0: `d = max|x| / 127`, `q = round(x / d)` (half away from zero).
//! * Q4_0 / Q5_0: `d = m / -8` (`/ -16`) where `m` is the value of largest magnitude, so that
//!   value maps to the most negative level exactly; `q = min(15, trunc(x / d + 8.5))`.
//! * Q4_1 / Q5_1: `d = (max - min) / 15` (`/ 31`), `m = min`, `q = trunc((x - min) / d + 0.5)`.
//! * Q4_K / Q5_K: per 32-element sub-block a (scale, min) pair fitted by weighted least squares
//!   over a sweep of candidate scales ([`make_qkx2_quants`], weights `rms + |x|`); the
//!   super-block keeps f16 `d` and `dmin` and 6-bit sub-block multipliers of them, and the
//!   values are re-quantised against the multipliers actually stored.
//! * Q6_K: per 16-element sub-block a signed scale from [`make_qx_quants`] (weights `x²`,
//!   19 candidate scales around `-32 / max`), 8-bit sub-block scales of an f16 `d`, values
//!   re-quantised against the stored scales.
//!
//! * IQ4_NL / IQ4_XS (ggml's `quantize_iq4_nl` / `quantize_iq4_xs` without an importance
//!   matrix): per 32-element sub-block a scale fitted by weighted least squares (weights `x²`)
//!   over 15 candidate scales around `-127 / max`, each value mapped to its nearest grid value
//!   ([`IQ4_KVALUES`](super::IQ4_KVALUES)); IQ4_NL stores that scale as the block's f16, IQ4_XS
//!   6-bit multipliers of `d = -max_scale / 32` and re-maps the values against them.
//!
//! Rounding is ggml's `nearest_int` (round half to even through the 1.5·2²³ trick), so for
//! the same input the blocks match llama.cpp's bit for bit up to its compiler's fused
//! multiply-adds in the least-squares sums.

use crate::DType;

/// Whether [`quantize`] can produce `dtype`.
pub fn can_quantize(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::F32
            | DType::F16
            | DType::BF16
            | DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q8_0
            | DType::Q4_K
            | DType::Q5_K
            | DType::Q6_K
            | DType::IQ4_NL
            | DType::IQ4_XS
    )
}

/// Quantises `src` (a whole number of `dtype` blocks) into `out`, which must hold exactly
/// `dtype.bytes_for(src.len())` bytes.
///
/// Panics on a length mismatch or a type [`can_quantize`] refuses (callers check both first).
pub fn quantize(dtype: DType, src: &[f32], out: &mut [u8]) {
    assert_eq!(
        Some(out.len()),
        dtype.bytes_for(src.len()),
        "quantize: {} values of {dtype} do not fill {} bytes",
        src.len(),
        out.len()
    );
    let f: fn(&[f32], &mut [u8]) = match dtype {
        DType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
            return;
        }
        DType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
            return;
        }
        DType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
            }
            return;
        }
        DType::Q4_0 => q4_0,
        DType::Q4_1 => q4_1,
        DType::Q5_0 => q5_0,
        DType::Q5_1 => q5_1,
        DType::Q8_0 => q8_0,
        DType::Q4_K => q4_k,
        DType::Q5_K => q5_k,
        DType::Q6_K => q6_k,
        DType::IQ4_NL => iq4_nl,
        DType::IQ4_XS => iq4_xs,
        other => panic!("quantize: no quantiser for {other}"),
    };
    let bs = dtype.block_size();
    let bb = dtype.block_bytes();
    for (x, y) in src.chunks_exact(bs).zip(out.chunks_exact_mut(bb)) {
        f(x, y);
    }
}

/// ggml's `nearest_int`: round half to even by adding 1.5·2²³ and reading the mantissa
/// (valid for |v| < 2²², as every caller's values are).
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let t = v + 12_582_912.0;
    (t.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

#[inline(always)]
fn put_f16(out: &mut [u8], v: f32) {
    out.copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
}

#[inline(always)]
fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// The value of largest magnitude (the first one on ties), and that magnitude.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

fn q8_0(x: &[f32], y: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(&mut y[0..2], d);
    for (q, &v) in y[2..34].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

fn q4_0(x: &[f32], y: &mut [u8]) {
    let (max, _) = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(&mut y[0..2], d);
    for j in 0..16 {
        let a = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let b = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        y[2 + j] = a | (b << 4);
    }
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn q4_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(&mut y[0..2], d);
    put_f16(&mut y[2..4], min);
    for j in 0..16 {
        let a = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let b = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        y[4 + j] = a | (b << 4);
    }
}

fn q5_0(x: &[f32], y: &mut [u8]) {
    let (max, _) = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(&mut y[0..2], d);
    let mut qh = 0u32;
    for j in 0..16 {
        let a = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let b = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        y[6 + j] = (a & 0xF) | ((b & 0xF) << 4);
        qh |= ((a as u32 >> 4) & 1) << j;
        qh |= ((b as u32 >> 4) & 1) << (j + 16);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

fn q5_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(&mut y[0..2], d);
    put_f16(&mut y[2..4], min);
    let mut qh = 0u32;
    for j in 0..16 {
        let a = (((x[j] - min) * id + 0.5) as u8).min(31);
        let b = (((x[j + 16] - min) * id + 0.5) as u8).min(31);
        y[8 + j] = (a & 0xF) | ((b & 0xF) << 4);
        qh |= ((a as u32 >> 4) & 1) << j;
        qh |= ((b as u32 >> 4) & 1) << (j + 16);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// Fits `x ≈ scale · L - min` with `L` in `0..=nmax` (ggml's `make_qkx2_quants`): start from
/// the range `[min(x, 0), max(x)]`, then try `nstep + 1` inverse scales
/// `(nmax + rmin + rdelta·k) / range`, solving the weighted least-squares scale and offset for
/// each candidate's levels and keeping the smallest weighted squared error. Returns
/// `(scale, min)` with `min ≥ 0` the amount subtracted; `l` receives the levels.
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|v| *v = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let w = weights[i];
            let lf = q as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Fits `x ≈ scale · (L - nmax)` with `L - nmax` in `-nmax..nmax` (ggml's `make_qx_quants`
/// with `x²` weights): the first scale maps the value of largest magnitude to `-nmax`; 18
/// more inverse scales `-(nmax + 0.1·k) / max` (k = ±1..±9) are tried and the one with the
/// best weighted least-squares fit is kept. Returns the scale; `l` receives the levels
/// (offset by `nmax`).
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    const GROUP_MAX_EPS: f32 = 1e-15;
    let (max, amax) = {
        let (mut max, mut amax) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        (max, amax)
    };
    if amax < GROUP_MAX_EPS {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = level(iscale, v);
        l[i] = (q + nmax) as u8;
        let w = v * v;
        let qf = q as f32;
        sumlx += w * v * qf;
        suml2 += w * qf * qf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (mut slx, mut sl2) = (0.0f32, 0.0f32);
        for &v in x {
            let qf = level(iscale, v) as f32;
            let w = v * v;
            slx += w * v * qf;
            sl2 += w * qf * qf;
        }
        if sl2 > 0.0 && slx * slx > best * sl2 {
            for (i, &v) in x.iter().enumerate() {
                l[i] = (level(iscale, v) + nmax) as u8;
            }
            scale = slx / sl2;
            best = scale * slx;
        }
    }
    scale
}

/// The 12 scale bytes of Q4_K / Q5_K: eight 6-bit scales and eight 6-bit mins.
fn pack_kscales(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// The shared part of Q4_K and Q5_K: fits the eight sub-blocks, stores `d`, `dmin` and the
/// scales into `head` (4 + 12 bytes) and returns the levels against the stored scales.
fn kquant_levels(x: &[f32], head: &mut [u8], nmax: i32, rmin: f32, nstep: i32) -> [u8; 256] {
    let mut l = [0u8; 256];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    let mut weights = [0.0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().fold(0.0, |a, v| a + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // (ggml stores nearest_int into a uint8_t before the MIN: keep that wrap)
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    put_f16(&mut head[0..2], max_scale / 63.0);
    put_f16(&mut head[2..4], max_min / 63.0);
    head[4..16].copy_from_slice(&pack_kscales(&ls, &lm));
    let d = f16_round(max_scale / 63.0);
    let dmin = f16_round(max_min / 63.0);
    for j in 0..8 {
        let dj = d * ls[j] as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * lm[j] as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dj).clamp(0, nmax);
            l[32 * j + ii] = q as u8;
        }
    }
    l
}

fn q4_k(x: &[f32], y: &mut [u8]) {
    let l = kquant_levels(x, &mut y[..16], 15, -1.0, 20);
    let qs = &mut y[16..144];
    for (c, j) in (0..256).step_by(64).enumerate() {
        for i in 0..32 {
            qs[32 * c + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

fn q5_k(x: &[f32], y: &mut [u8]) {
    let l = kquant_levels(x, &mut y[..16], 31, -0.5, 15);
    let (qh, ql) = y[16..176].split_at_mut(32);
    qh.iter_mut().for_each(|v| *v = 0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (c, n) in (0..256).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * c + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

fn q6_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; 256];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        let s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    // Layout: ql[128], qh[64], scales[16] (i8), d (f16).
    if max_abs_scale < 1e-15 {
        y.iter_mut().for_each(|v| *v = 0);
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(&mut y[208..210], 1.0 / iscale);
    let d = f16_round(1.0 / iscale);
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        y[192 + ib] = sc[ib] as u8;
    }
    for j in 0..16 {
        let dj = d * sc[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dj).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as u8;
        }
    }
    let (ql, rest) = y.split_at_mut(128);
    let qh = &mut rest[..64];
    for (c, j) in (0..256).step_by(128).enumerate() {
        for i in 0..32 {
            let (a, b, cc, dd) = (l[j + i], l[j + i + 32], l[j + i + 64], l[j + i + 96]);
            ql[64 * c + i] = (a & 0xF) | ((cc & 0xF) << 4);
            ql[64 * c + i + 32] = (b & 0xF) | ((dd & 0xF) << 4);
            qh[32 * c + i] = (a >> 4) | ((b >> 4) << 2) | ((cc >> 4) << 4) | ((dd >> 4) << 6);
        }
    }
}

/// ggml's `best_index_int8` on the IQ4 grid: the index of the grid value nearest `x` (the
/// upper one on a tie).
fn iq4_index(x: f32) -> u8 {
    let v = &super::IQ4_KVALUES;
    if x <= v[0] as f32 {
        return 0;
    }
    if x >= v[15] as f32 {
        return 15;
    }
    let (mut lo, mut hi) = (0usize, 15usize);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < v[mid] as f32 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - (v[hi - 1] as f32) < v[hi] as f32 - x {
        (hi - 1) as u8
    } else {
        hi as u8
    }
}

/// The scale of one 32-element IQ4 sub-block (0 for an all-but-zero one): the weighted
/// least-squares fit (weights `x²`) of the grid values chosen at `max / 127`, improved by the
/// best of the fits at the 15 scales `max / (i - 127)`, i = -7..=7.
fn iq4_sub_scale(x: &[f32]) -> f32 {
    const GROUP_MAX_EPS: f32 = 1e-15;
    const NTRY: i32 = 7;
    let k0 = super::IQ4_KVALUES[0] as f32;
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let fit = |id: f32| {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for &v in x {
            let q = super::IQ4_KVALUES[iq4_index(id * v) as usize] as f32;
            let w = v * v;
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let (sumqx, sumq2) = fit(1.0 / (-max / k0));
    let mut d = sumqx / sumq2;
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let (sumqx, sumq2) = fit((itry as f32 + k0) / max);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// 32 values as IQ4 nibbles against the scale `d` (its inverse, 0 for `d == 0`): the low
/// nibbles hold elements 0..16, the high ones 16..32.
fn iq4_pack(x: &[f32], d: f32, qs: &mut [u8]) {
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for j in 0..16 {
        qs[j] = iq4_index(id * x[j]) | (iq4_index(id * x[j + 16]) << 4);
    }
}

fn iq4_nl(x: &[f32], y: &mut [u8]) {
    let d = iq4_sub_scale(x);
    put_f16(&mut y[0..2], d);
    iq4_pack(x, d, &mut y[2..18]);
}

fn iq4_xs(x: &[f32], y: &mut [u8]) {
    let scales: [f32; 8] = std::array::from_fn(|j| iq4_sub_scale(&x[32 * j..32 * j + 32]));
    let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
    for &s in &scales {
        if s.abs() > amax {
            amax = s.abs();
            max_scale = s;
        }
    }
    let d = -max_scale / 32.0;
    put_f16(&mut y[0..2], d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    y[4..8].fill(0);
    for (j, &s) in scales.iter().enumerate() {
        let l = nearest_int(id * s).clamp(-32, 31);
        iq4_pack(
            &x[32 * j..32 * j + 32],
            d * l as f32,
            &mut y[8 + 16 * j..24 + 16 * j],
        );
        let l = (l + 32) as u8;
        y[4 + j / 2] |= (l & 0xF) << (4 * (j % 2));
        scales_h |= ((l >> 4) as u16) << (2 * j);
    }
    y[2..4].copy_from_slice(&scales_h.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (v, want) in [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
        ] {
            assert_eq!(nearest_int(v), want, "{v}");
        }
    }
}
