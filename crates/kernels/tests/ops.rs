//! The (SIMD-dispatched) slice operations against f64 evaluations of their definitions and
//! against the scalar reference versions.

mod common;

use common::Rng;
use kiln_kernels::ops::{self, reference};

fn close(got: &[f32], want: &[f64], rel: f64, abs: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= rel * w.abs() + abs,
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

const LENS: [usize; 7] = [1, 7, 8, 15, 64, 100, 4864];

#[test]
fn rms_norm_matches_definition() {
    let mut rng = Rng::new(1);
    for n in LENS {
        let x = rng.vec(n);
        let w = rng.vec(n);
        let ms: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64;
        let want: Vec<f64> = x
            .iter()
            .zip(&w)
            .map(|(a, b)| *a as f64 / (ms + 1e-6).sqrt() * *b as f64)
            .collect();
        let mut out = vec![0.0; n];
        ops::rms_norm(&x, &w, 1e-6, &mut out);
        close(&out, &want, 1e-5, 1e-6, "rms_norm");
        let mut y = x.clone();
        ops::rms_norm_inplace(&mut y, &w, 1e-6);
        close(&y, &want, 1e-5, 1e-6, "rms_norm_inplace");
        let mut r = vec![0.0; n];
        reference::rms_norm(&x, &w, 1e-6, &mut r);
        close(&r, &want, 1e-5, 1e-6, "reference::rms_norm");
    }
}

#[test]
fn softmax_matches_definition() {
    let mut rng = Rng::new(2);
    for n in LENS {
        let x: Vec<f32> = rng.vec(n).iter().map(|v| v * 8.0).collect();
        let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        let want: Vec<f64> = e.iter().map(|v| v / s).collect();
        let mut got = x.clone();
        ops::softmax(&mut got);
        close(&got, &want, 2e-6, 1e-9, "softmax");
        let mut r = x.clone();
        reference::softmax(&mut r);
        close(&r, &want, 2e-6, 1e-9, "reference::softmax");
    }
    // extreme inputs: underflow to exactly 0, no NaN
    let mut x = vec![0.0f32, -200.0, 50.0, -1e30];
    ops::softmax(&mut x);
    assert_eq!(x[2], 1.0);
    assert_eq!(x[1], 0.0);
    assert_eq!(x[3], 0.0);
}

#[test]
fn gated_activations_match_definition() {
    let mut rng = Rng::new(3);
    for n in LENS {
        let g: Vec<f32> = rng.vec(n).iter().map(|v| v * 6.0).collect();
        let u = rng.vec(n);
        let silu: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&a, &b)| a as f64 / (1.0 + (-(a as f64)).exp()) * b as f64)
            .collect();
        let gelu: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&a, &b)| {
                let a = a as f64;
                0.5 * a
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (a + 0.044715 * a * a * a)).tanh())
                    * b as f64
            })
            .collect();
        let mut r = g.clone();
        reference::silu_mul(&mut r, &u);
        close(&r, &silu, 1e-5, 1e-6, "reference::silu_mul");
        let mut r = g.clone();
        reference::gelu_tanh_mul(&mut r, &u);
        close(&r, &gelu, 1e-5, 1e-6, "reference::gelu_tanh_mul");
    }
    // large magnitudes saturate cleanly
    let mut g = vec![-100.0f32, 100.0, -1000.0, 1000.0];
    reference::silu_mul(&mut g, &[1.0; 4]);
    assert!(
        g[0].abs() < 1e-30 && g[1] == 100.0 && g[2].abs() < 1e-30 && g[3] == 1000.0,
        "{g:?}"
    );
    let mut g = vec![-100.0f32, 100.0];
    reference::gelu_tanh_mul(&mut g, &[1.0; 2]);
    assert!(g[0].abs() < 1e-30 && g[1] == 100.0, "{g:?}");
}

fn f16_bits(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|&v| half::f16::from_f32(v).to_bits())
        .collect()
}

fn widen(h: &[u16]) -> Vec<f64> {
    h.iter()
        .map(|&b| half::f16::from_bits(b).to_f32() as f64)
        .collect()
}

#[test]
fn f16_helpers_are_bit_identical_to_scalar_and_match_definition() {
    let mut rng = Rng::new(11);
    for n in [1, 7, 8, 31, 32, 33, 64, 100, 256, 4864] {
        let x: Vec<f32> = rng.vec(n).iter().map(|v| v * 3.0).collect();
        let y: Vec<f32> = rng.vec(n);
        // conversions: round to nearest even, both ways exact where representable
        let mut h = vec![0u16; n];
        ops::f32_to_f16(&x, &mut h);
        assert_eq!(h, f16_bits(&x), "f32_to_f16");
        let mut r = vec![0u16; n];
        reference::f32_to_f16(&x, &mut r);
        assert_eq!(h, r, "reference::f32_to_f16");
        let mut back = vec![0.0f32; n];
        ops::f16_to_f32(&h, &mut back);
        close(&back, &widen(&h), 0.0, 0.0, "f16_to_f32");

        let hy = f16_bits(&y);
        // mad and scale: one rounding to f16 of the f32 result
        for v in [0.37f32, -1.5, 1e-3] {
            let mut a = hy.clone();
            reference::mad_f16(&mut a, &h, v);
            let want: Vec<f64> = widen(&hy)
                .iter()
                .zip(widen(&h))
                .map(|(y, x)| y + x * v as f64)
                .collect();
            close(&widen_f32(&a), &want, 1e-3, 1e-7, "mad_f16");
            let mut a = hy.clone();
            reference::scale_f16(&mut a, v);
            let want: Vec<f64> = widen(&hy).iter().map(|y| y * v as f64).collect();
            close(&widen_f32(&a), &want, 1e-3, 1e-7, "scale_f16");
        }
    }
}

fn widen_f32(h: &[u16]) -> Vec<f32> {
    h.iter()
        .map(|&b| half::f16::from_bits(b).to_f32())
        .collect()
}

#[test]
fn ggml_gelu_uses_the_f16_table_and_is_bit_identical_to_scalar() {
    let mut rng = Rng::new(12);
    for n in [1, 7, 8, 64, 100, 2048] {
        let mut x: Vec<f32> = rng.vec(n).iter().map(|v| v * 6.0).collect();
        for (i, v) in [-10.0f32, 10.0, -10.5, 12.0, 9.99, -9.99, 0.0, 1e-4]
            .iter()
            .enumerate()
        {
            if i < n {
                x[i] = *v;
            }
        }
        let up = rng.vec(n);
        let mut got = x.clone();
        ops::gelu_tanh_mul_ggml(&mut got, &up);
        let mut r = x.clone();
        reference::gelu_tanh_mul_ggml(&mut r, &up);
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            r.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "gelu_tanh_mul_ggml n={n}"
        );
        for ((&g, &xi), &u) in got.iter().zip(&x).zip(&up) {
            let want = if xi <= -10.0 {
                0.0
            } else if xi >= 10.0 {
                xi * u
            } else {
                // the table's value for the f16-rounded input, itself rounded to f16
                let xh = half::f16::from_f32(xi).to_f32();
                half::f16::from_f32(ops::gelu_tanh(xh)).to_f32() * u
            };
            let exact = ops::gelu_tanh(xi) * u;
            assert!(
                (g - want).abs() <= 2e-3 * want.abs() + 1e-6,
                "gelu({xi}) * {u}: {g} vs {want}"
            );
            assert!(
                (g - exact).abs() <= 4e-3 * exact.abs() + 1e-3 * u.abs(),
                "gelu({xi}) * {u}: {g} vs exact {exact}"
            );
        }
    }
}

#[test]
fn mixed_f32_f16_dot_and_axpy_are_bit_identical_to_scalar_and_match_definition() {
    let mut rng = Rng::new(13);
    for n in [1, 7, 8, 31, 32, 33, 64, 100, 256] {
        let a = rng.vec(n);
        let h = f16_bits(&rng.vec(n));
        let d = ops::dot_f32_f16(&a, &h);
        assert_eq!(
            d.to_bits(),
            reference::dot_f32_f16(&a, &h).to_bits(),
            "n={n}"
        );
        let hw = widen(&h);
        let want: f64 = a.iter().zip(&hw).map(|(x, y)| *x as f64 * y).sum();
        let mag: f64 = a.iter().zip(&hw).map(|(x, y)| (*x as f64 * y).abs()).sum();
        assert!(
            (d as f64 - want).abs() <= 1e-6 * mag + 1e-9,
            "dot_f32_f16 {d} vs {want}"
        );
        let y0 = rng.vec(n);
        let mut y = y0.clone();
        ops::axpy_f16(&mut y, 0.3, &h);
        let mut r = y0.clone();
        reference::axpy_f16(&mut r, 0.3, &h);
        assert_eq!(y, r, "axpy_f16 n={n}");
        let want: Vec<f64> = y0
            .iter()
            .zip(&hw)
            .map(|(v, x)| *v as f64 + 0.3 * x)
            .collect();
        close(&y, &want, 1e-6, 1e-6, "axpy_f16");
    }
}

#[test]
fn f32_f16_dot_equals_the_scalar_reference() {
    let mut rng = Rng::new(17);
    for n in [1, 8, 31, 32, 33, 64, 100, 256] {
        let a = rng.vec(n);
        let k = f16_bits(&rng.vec(n));
        assert_eq!(
            ops::dot_f32_f16(&a, &k).to_bits(),
            reference::dot_f32_f16(&a, &k).to_bits(),
            "n={n}"
        );
    }
}

#[test]
fn dot_f32_f16_keys_equals_dot_f32_f16_key_by_key() {
    let mut rng = Rng::new(23);
    for hd in [8, 32, 40, 64, 128, 256] {
        for n in [1, 3, 4, 5, 9] {
            let (a0, a1) = (rng.vec(hd), rng.vec(hd));
            let keys = f16_bits(&rng.vec(n * hd));
            let (mut s0, mut s1) = (vec![0.0; n], vec![0.0; n]);
            ops::dot_f32_f16_keys([&a0, &a1], &keys, [&mut s0, &mut s1]);
            let mut one = vec![0.0; n];
            ops::dot_f32_f16_keys([&a1], &keys, [&mut one]);
            for j in 0..n {
                let k = &keys[j * hd..(j + 1) * hd];
                let want = [
                    reference::dot_f32_f16(&a0, k),
                    reference::dot_f32_f16(&a1, k),
                ];
                assert_eq!(s0[j].to_bits(), want[0].to_bits(), "hd {hd} n {n} key {j}");
                assert_eq!(s1[j].to_bits(), want[1].to_bits(), "hd {hd} n {n} key {j}");
                assert_eq!(one[j].to_bits(), want[1].to_bits(), "hd {hd} n {n} key {j}");
            }
        }
    }
}

#[test]
fn f16_weighted_sum_equals_scale_and_mad_key_by_key() {
    let mut rng = Rng::new(19);
    for hd in [3, 8, 16, 40, 64, 72, 100, 128, 256] {
        for n in [1, 2, 17] {
            let values = f16_bits(&rng.vec(n * hd));
            // weights in (0, 1]; every few keys the "maximum moves" and rescales
            let vs: Vec<f32> = (0..n)
                .map(|j| {
                    if j % 5 == 0 {
                        1.0
                    } else {
                        0.1 + 0.8 * rng.vec(1)[0].abs().min(1.0)
                    }
                })
                .collect();
            let ms: Vec<f32> = (0..n)
                .map(|j| {
                    if j % 5 == 0 {
                        0.25 + 0.5 * rng.vec(1)[0].abs().min(1.0)
                    } else {
                        1.0
                    }
                })
                .collect();
            let mut want = vec![0.0; hd];
            reference::f16_weighted_sum(&values, &ms, &vs, &mut want);
            // the reference is the key-by-key form
            let mut acc = vec![0u16; hd];
            for j in 0..n {
                if ms[j] != 1.0 {
                    reference::scale_f16(&mut acc, ms[j]);
                }
                reference::mad_f16(&mut acc, &values[j * hd..(j + 1) * hd], vs[j]);
            }
            assert_eq!(want, widen_f32(&acc), "hd {hd} n {n}");
            let mut got = vec![0.0; hd];
            ops::f16_weighted_sum(&values, &ms, &vs, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "hd {hd} n {n}");
            // two heads at once (the second with the weights reversed): each equals its own sum
            let (ms2, vs2): (Vec<f32>, Vec<f32>) = (
                ms.iter().rev().copied().collect(),
                vs.iter().rev().copied().collect(),
            );
            let mut want2 = vec![0.0; hd];
            reference::f16_weighted_sum(&values, &ms2, &vs2, &mut want2);
            let (mut g0, mut g1) = (vec![0.0; hd], vec![0.0; hd]);
            ops::f16_weighted_sum_x2(&values, [&ms, &ms2], [&vs, &vs2], [&mut g0, &mut g1]);
            assert_eq!(bits(&g0), bits(&want), "x2 head 0: hd {hd} n {n}");
            assert_eq!(bits(&g1), bits(&want2), "x2 head 1: hd {hd} n {n}");
        }
    }
}
