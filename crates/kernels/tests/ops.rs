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
        let mut s = g.clone();
        ops::silu_mul(&mut s, &u);
        close(&s, &silu, 1e-5, 1e-6, "silu_mul");
        let mut r = g.clone();
        reference::silu_mul(&mut r, &u);
        close(&r, &silu, 1e-5, 1e-6, "reference::silu_mul");
        let mut s = g.clone();
        ops::gelu_tanh_mul(&mut s, &u);
        close(&s, &gelu, 1e-5, 1e-6, "gelu_tanh_mul");
        let mut r = g.clone();
        reference::gelu_tanh_mul(&mut r, &u);
        close(&r, &gelu, 1e-5, 1e-6, "reference::gelu_tanh_mul");
    }
    // large magnitudes saturate cleanly
    let mut g = vec![-100.0f32, 100.0, -1000.0, 1000.0];
    ops::silu_mul(&mut g, &[1.0; 4]);
    assert!(
        g[0].abs() < 1e-30 && g[1] == 100.0 && g[2].abs() < 1e-30 && g[3] == 1000.0,
        "{g:?}"
    );
    let mut g = vec![-100.0f32, 100.0];
    ops::gelu_tanh_mul(&mut g, &[1.0; 2]);
    assert!(g[0].abs() < 1e-30 && g[1] == 100.0, "{g:?}");
}

#[test]
fn axpy_and_dot_match_definition() {
    let mut rng = Rng::new(4);
    for n in LENS {
        let x = rng.vec(n);
        let y = rng.vec(n);
        let want: Vec<f64> = y
            .iter()
            .zip(&x)
            .map(|(&b, &a)| b as f64 + 0.37 * a as f64)
            .collect();
        let mut got = y.clone();
        ops::axpy(&mut got, 0.37, &x);
        close(&got, &want, 1e-6, 1e-6, "axpy");
        let d: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
        let mag: f64 = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum();
        assert!((ops::dot(&x, &y) as f64 - d).abs() <= 1e-6 * mag);
    }
}
