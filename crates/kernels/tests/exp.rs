//! `exp::expf` (the port of glibc's `expf`) against libm, and the vector levels of the slice
//! `e^x` and of SiLU against it, bit for bit, over a sample of every f32 bit pattern.

mod common;

use common::Rng;
use kiln_kernels::exp::{exp_slice_at, expf, silu_mul_at};
use kiln_kernels::ops::reference;
use kiln_kernels::Isa;

/// Every `STEP`-th f32 bit pattern (a prime, so every exponent and many mantissa endings
/// are hit), about 17 million values.
const STEP: u32 = 251;

/// The edges: zeros, subnormals, the special-case border (|x| = 88), the overflow and
/// underflow thresholds and their neighbours, infinities and NaNs (quiet, signalling, both
/// signs, with payloads).
fn edges() -> Vec<f32> {
    let mut v = Vec::new();
    let around = |v: &mut Vec<f32>, bits: u32| {
        for d in 0..=64u32 {
            v.push(f32::from_bits(bits.wrapping_add(d)));
            v.push(f32::from_bits(bits.wrapping_sub(d)));
        }
    };
    for b in [
        0x0000_0000u32, // +0
        0x8000_0000,    // -0
        0x0000_0001,    // smallest subnormal
        0x007f_ffff,    // largest subnormal
        0x8000_0001,
        0x807f_ffff,
        0x3f80_0000, // 1
        0xbf80_0000, // -1
        0x42b0_0000, // 88: the special branch starts
        0xc2b0_0000, // -88
        0x42b1_7217, // 0x1.62e42ep6: the last finite result
        0xc2ce_8ecf, // -0x1.9d1d9ep6: below, the smallest subnormal
        0xc2cf_f1b4, // -0x1.9fe368p6: below, 0
        0x7f7f_ffff, // f32::MAX
        0xff7f_ffff, // f32::MIN
        0x7f80_0000, // +inf
        0xff80_0000, // -inf
        0x7fc0_0000, // quiet NaN
        0xffc0_0000, // -NaN
        0x7f80_0001, // signalling NaN
        0xff80_0001,
        0x7fc1_2345, // payload
        // the two inputs (of all 2^32) where an unfused `r = z − kd` rounds differently
        0x4202_422f,
        0xc27c_65d9,
    ] {
        around(&mut v, b);
    }
    for x in [
        88.0f32, -88.0, 88.5, 88.72, 88.7228, 89.0, -103.0, -103.28, -103.5, -103.97, -104.0,
        -87.33655, 88.37626, 1e-10, -1e-10, 0.5, -0.5, 10.0, -10.0,
    ] {
        v.push(x);
    }
    v
}

/// The sample in slices of about a million, each handed to `f`.
fn for_sample(mut f: impl FnMut(&[f32])) {
    f(&edges());
    let mut chunk = Vec::with_capacity(1 << 20);
    let mut bits = 0u32;
    loop {
        chunk.push(f32::from_bits(bits));
        if chunk.len() == 1 << 20 {
            f(&chunk);
            chunk.clear();
        }
        match bits.checked_add(STEP) {
            Some(b) => bits = b,
            None => break,
        }
    }
    f(&chunk);
}

fn first_mismatch(x: &[f32], got: &[f32], want: impl Fn(f32) -> f32) -> Option<String> {
    x.iter().zip(got).find_map(|(&v, &g)| {
        let w = want(v);
        (g.to_bits() != w.to_bits()).then(|| {
            format!(
                "x = {v:e} ({:#010x}): {g:e} ({:#010x}) vs {w:e} ({:#010x})",
                v.to_bits(),
                g.to_bits(),
                w.to_bits()
            )
        })
    })
}

/// The x86 vector levels, with one line for each this CPU lacks.
fn vector_levels() -> Vec<Isa> {
    let mut levels = Vec::new();
    for isa in [Isa::Avx2, Isa::Avx512] {
        if isa.is_available() {
            levels.push(isa);
        } else {
            println!(
                "exp: this CPU cannot run the {} level; its vector expf is not tested here",
                isa.name()
            );
        }
    }
    levels
}

#[test]
fn vector_exp_equals_the_scalar_port_bit_for_bit() {
    let levels = vector_levels();
    let mut n = 0;
    for_sample(|x| {
        n += x.len();
        for &isa in &levels {
            // whole slice, then an odd length (the padded tail)
            for len in [x.len(), x.len().saturating_sub(3)] {
                let mut y = x[..len].to_vec();
                exp_slice_at(isa, &mut y);
                if let Some(m) = first_mismatch(&x[..len], &y, expf) {
                    panic!("{} exp != exp::expf at {m}", isa.name());
                }
            }
        }
    });
    assert!(n > 17_000_000, "{n}");
}

/// Whether Rust's `f32::exp` is glibc's FMA build here (x86-64 glibc Linux on a CPU with AVX2
/// and FMA, where glibc's ifunc picks `__expf_fma`); one line when it is not.
fn libm_is_glibc_fma() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    {
        if is_x86_feature_detected!("fma") && is_x86_feature_detected!("avx2") {
            return true;
        }
        println!("exp: libm is glibc but this CPU lacks FMA/AVX2 (glibc's other build rounds differently); the libm comparison is skipped");
        false
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")))]
    {
        println!(
            "exp: libm is not glibc on x86-64; the comparison of exp::expf with it is skipped"
        );
        false
    }
}

#[test]
fn scalar_port_equals_glibc_expf_bit_for_bit() {
    if !libm_is_glibc_fma() {
        return;
    }
    for_sample(|x| {
        let got: Vec<f32> = x.iter().map(|&v| expf(v)).collect();
        if let Some(m) = first_mismatch(x, &got, f32::exp) {
            panic!("exp::expf != libm expf at {m}");
        }
    });
}

#[test]
fn scalar_port_is_exp() {
    // independent of libm's bits: within one f32 ulp of e^x evaluated in f64, exact limits
    let mut rng = Rng::new(7);
    for _ in 0..100_000 {
        let x = (rng.f32() - 0.5) * 200.0;
        let want = (x as f64).exp();
        let got = expf(x) as f64;
        if want < f32::MIN_POSITIVE as f64 {
            assert!((got - want).abs() <= 1.5e-45, "{x}: {got} vs {want}");
        } else if want > f32::MAX as f64 {
            assert_eq!(got, f64::INFINITY, "{x}");
        } else {
            let ulp = (want as f32).to_bits();
            let ulp = f32::from_bits(ulp + 1) as f64 - f32::from_bits(ulp) as f64;
            assert!((got - want).abs() <= ulp, "{x}: {got} vs {want}");
        }
    }
    assert_eq!(expf(0.0), 1.0);
    assert_eq!(expf(f32::NEG_INFINITY), 0.0);
    assert_eq!(expf(f32::INFINITY), f32::INFINITY);
    assert_eq!(expf(100.0), f32::INFINITY);
    assert_eq!(expf(-110.0), 0.0);
    assert!(expf(f32::NAN).is_nan());
}

/// SiLU-gated in the reference's f32 steps with the port's `e^x`.
fn silu_mul_with_port(g: f32, u: f32) -> f32 {
    g / (1.0 + expf(-g)) * u
}

#[test]
fn vector_silu_mul_equals_scalar_bit_for_bit() {
    let levels = vector_levels();
    let glibc = libm_is_glibc_fma();
    let mut rng = Rng::new(11);
    let check = |g: &[f32], u: &[f32]| {
        for &isa in &levels {
            let mut got = g.to_vec();
            silu_mul_at(isa, &mut got, u);
            for i in 0..g.len() {
                let want = silu_mul_with_port(g[i], u[i]);
                assert_eq!(
                    got[i].to_bits(),
                    want.to_bits(),
                    "{} silu_mul({}, {}): {} vs {want}",
                    isa.name(),
                    g[i],
                    u[i],
                    got[i]
                );
            }
            if glibc {
                let mut want = g.to_vec();
                reference::silu_mul(&mut want, u);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{} silu_mul != reference::silu_mul", isa.name());
            }
        }
    };
    // activations (lengths with and without tails), then the edges against random up
    for n in [1, 7, 8, 9, 15, 16, 17, 100, 8960] {
        let g: Vec<f32> = rng.vec(n).iter().map(|v| v * 8.0).collect();
        let u = rng.vec(n);
        check(&g, &u);
    }
    let g = edges();
    let u = rng.vec(g.len());
    check(&g, &u);
    // a sample of every bit pattern as the gate
    let mut n = 0;
    for_sample(|g| {
        if n < 4 {
            let u = rng.vec(g.len());
            check(g, &u);
        }
        n += 1;
    });
}

#[test]
fn dispatched_ops_use_the_same_bits() {
    // ops::exp / ops::silu_mul at the process's level equal the level functions
    let mut rng = Rng::new(5);
    let x: Vec<f32> = rng.vec(1000).iter().map(|v| v * 30.0).collect();
    let u = rng.vec(1000);
    let isa = Isa::best();
    let (mut a, mut b) = (x.clone(), x.clone());
    kiln_kernels::ops::exp(&mut a);
    exp_slice_at(isa, &mut b);
    assert_eq!(a, b);
    let (mut a, mut b) = (x.clone(), x.clone());
    kiln_kernels::ops::silu_mul(&mut a, &u);
    silu_mul_at(isa, &mut b, &u);
    assert_eq!(a, b);
}

/// Every f32 bit pattern (about a minute): the port against libm, the vector levels against
/// the port. `cargo test --release -p kiln-kernels --test exp -- --ignored`.
#[test]
#[ignore]
fn every_input_bit_for_bit() {
    let glibc = libm_is_glibc_fma();
    let levels = vector_levels();
    let mut x = Vec::with_capacity(1 << 20);
    let mut bits = 0u64;
    while bits <= u32::MAX as u64 {
        x.clear();
        x.extend((bits..bits + (1 << 20)).map(|b| f32::from_bits(b as u32)));
        bits += 1 << 20;
        let port: Vec<f32> = x.iter().map(|&v| expf(v)).collect();
        if glibc {
            if let Some(m) = first_mismatch(&x, &port, f32::exp) {
                panic!("exp::expf != libm expf at {m}");
            }
        }
        for &isa in &levels {
            let mut y = x.clone();
            exp_slice_at(isa, &mut y);
            if let Some(m) = first_mismatch(&x, &y, expf) {
                panic!("{} exp != exp::expf at {m}", isa.name());
            }
        }
    }
}
