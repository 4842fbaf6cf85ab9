//! The AVX-512 level against the AVX2 level, bit for bit, kernel by kernel and through
//! `matmul` (both layouts, decode, the 8- and 16-token tiles and the tails). Closeness of both
//! to the scalar reference is checked by the tests that run every level (dot_parity.rs,
//! matmul.rs, interleave.rs); bit-identity to AVX2 is what keeps the anchors and batch
//! invariance of the AVX2 level holding when AVX-512 is auto-selected. On a CPU without
//! AVX-512 F/BW/VL/VNNI each test prints one line saying so.

mod common;

use common::{random_weights, Rng, QUANT_TYPES};
use kiln_kernels::dot::{
    dot_q8_32_g8_rows, dot_q8_32_group4, dot_q8_32_rows, dot_q8_32_x8, dot_q8k_group4,
    dot_q8k_rows, dot_u8_g16_rows, dot_u8_g8_rows, has_u8_form, repack_u8, u8_offset_acts, BlockU8,
    Isa,
};
use kiln_kernels::interleave::{self, rows_to_group, Layout};
use kiln_kernels::matmul::matmul_with;
use kiln_kernels::quant::{interleave8, quantize_q8_32, quantize_q8_k, BlockQ8K, BlockQ8_32};
use kiln_kernels::{DType, Storage, Tensor, ThreadPool};

/// Whether this CPU runs both levels; prints the one line otherwise.
fn both_levels(test: &str) -> bool {
    if Isa::Avx512.is_available() && Isa::Avx2.is_available() {
        return true;
    }
    println!(
        "{test}: not run, this CPU has no AVX-512 F/BW/VL/VNNI ({})",
        kiln_kernels::cpu_features()
    );
    false
}

fn bits<const N: usize>(v: [f32; N]) -> [u32; N] {
    v.map(f32::to_bits)
}

fn q32(x: &[f32]) -> Vec<BlockQ8_32> {
    let mut q = vec![BlockQ8_32::default(); x.len() / 32];
    quantize_q8_32(x, &mut q);
    q
}

fn qk(x: &[f32]) -> Vec<BlockQ8K> {
    let mut q = vec![BlockQ8K::default(); x.len() / 256];
    quantize_q8_k(x, &mut q);
    q
}

/// Activations at the extremes of the integer ranges (all ±127 after quantisation) for some
/// rows, random for the others.
fn acts(rng: &mut Rng, cols: usize, which: usize) -> Vec<f32> {
    match which % 4 {
        0 => vec![1.0; cols],
        1 => vec![-1.0; cols],
        _ => rng.vec(cols),
    }
}

#[test]
fn legacy_decode_and_tiles_match_avx2() {
    if !both_levels("legacy_decode_and_tiles_match_avx2") {
        return;
    }
    let mut rng = Rng::new(101);
    for dtype in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q8_1,
        DType::IQ4_NL,
    ] {
        for cols in [32usize, 640, 4864] {
            let w = random_weights(&mut rng, dtype, 4 * cols);
            let rb = w.len() / 4;
            for which in 0..4 {
                let q = q32(&acts(&mut rng, cols, which));
                let a = bits(dot_q8_32_rows::<4>(Isa::Avx512, dtype, &w, &q));
                let b = bits(dot_q8_32_rows::<4>(Isa::Avx2, dtype, &w, &q));
                assert_eq!(a, b, "{dtype} cols {cols}: 4-row decode");
                if dtype != DType::Q8_1 {
                    let mut g = vec![0u8; w.len()];
                    rows_to_group(dtype, &w, &mut g);
                    let a = bits(dot_q8_32_group4(Isa::Avx512, dtype, &g, &q));
                    let b = bits(dot_q8_32_group4(Isa::Avx2, dtype, &g, &q));
                    assert_eq!(a, b, "{dtype} cols {cols}: 4-row group decode");
                }
            }
            // the 8-token tiles on packed rows (one row and two)
            let qs: Vec<Vec<BlockQ8_32>> = (0..8).map(|t| q32(&acts(&mut rng, cols, t))).collect();
            let a8: [&[BlockQ8_32]; 8] = std::array::from_fn(|t| &qs[t][..]);
            let g: Vec<_> = (0..cols / 32)
                .map(|i| interleave8(std::array::from_fn(|t| &qs[t][i])))
                .collect();
            let one = |isa| bits(dot_q8_32_x8(isa, dtype, &w[..rb], a8));
            assert_eq!(one(Isa::Avx512), one(Isa::Avx2), "{dtype} cols {cols}: x8");
            let two = |isa| dot_q8_32_g8_rows::<2>(isa, dtype, &w[..2 * rb], &g, a8).map(bits);
            assert_eq!(
                two(Isa::Avx512),
                two(Isa::Avx2),
                "{dtype} cols {cols}: g8 rows"
            );
        }
    }
}

#[test]
fn kquant_decode_matches_avx2() {
    if !both_levels("kquant_decode_matches_avx2") {
        return;
    }
    let mut rng = Rng::new(103);
    for dtype in [DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::IQ4_XS] {
        for cols in [256usize, 1536, 4864] {
            let w = random_weights(&mut rng, dtype, 4 * cols);
            let mut g = vec![0u8; w.len()];
            rows_to_group(dtype, &w, &mut g);
            for which in 0..4 {
                let q = qk(&acts(&mut rng, cols, which));
                let a = bits(dot_q8k_rows::<4>(Isa::Avx512, dtype, &w, &q));
                let b = bits(dot_q8k_rows::<4>(Isa::Avx2, dtype, &w, &q));
                assert_eq!(a, b, "{dtype} cols {cols}: 4-row decode");
                let a = bits(dot_q8k_group4(Isa::Avx512, dtype, &g, &q));
                let b = bits(dot_q8k_group4(Isa::Avx2, dtype, &g, &q));
                assert_eq!(a, b, "{dtype} cols {cols}: 4-row group decode");
            }
        }
    }
}

/// The unpacked prefill tiles (one and two token groups, one and two rows), with weights at
/// their largest values and activations at ±127 in some blocks.
#[test]
fn unpacked_tiles_match_avx2() {
    if !both_levels("unpacked_tiles_match_avx2") {
        return;
    }
    let mut rng = Rng::new(107);
    for dtype in QUANT_TYPES.into_iter().filter(|&d| has_u8_form(d)) {
        let cols = 1024;
        let nb = cols / 32;
        let w = random_weights(&mut rng, dtype, 2 * cols);
        let rb = w.len() / 2;
        let mut u = vec![BlockU8::default(); 2 * nb];
        for r in 0..2 {
            repack_u8(
                Isa::Avx2,
                dtype,
                &w[r * rb..(r + 1) * rb],
                &mut u[r * nb..(r + 1) * nb],
            );
        }
        let mut u512 = vec![BlockU8::default(); 2 * nb];
        for r in 0..2 {
            let o = &mut u512[r * nb..(r + 1) * nb];
            repack_u8(Isa::Avx512, dtype, &w[r * rb..(r + 1) * rb], o);
        }
        for (a, b) in u.iter().zip(&u512) {
            assert_eq!(
                (a.u, a.d.to_bits(), a.m.to_bits(), a.sc, a.mn, a.corr),
                (b.u, b.d.to_bits(), b.m.to_bits(), b.sc, b.mn, b.corr),
                "{dtype}: unpacking"
            );
        }
        // the extremes: the largest unpacked value in the first blocks of row 0
        let max = match dtype {
            DType::Q4_0 | DType::Q4_1 | DType::Q4_K => 15,
            DType::Q6_K => 0xE0,   // -32, the most negative 6-bit weight
            DType::IQ4_NL => 1,    // -127 + 128, the grid's largest magnitude
            DType::Q8_0 => 1,      // -127 + 128
            DType::IQ4_XS => 0x81, // -127
            _ => 31,
        };
        for b in u.iter_mut().take(nb / 2) {
            b.u = [max; 32];
            if u8_offset_acts(dtype) {
                // keep the form whole: the offset's share of the new weights
                let q = max as i8 as i32;
                b.corr = 128 * 16 * q * (b.sc as i8 as i32 + b.mn as i8 as i32);
            }
        }
        let groups: Vec<Vec<_>> = (0..2)
            .map(|k| {
                let qs: Vec<Vec<BlockQ8_32>> =
                    (0..8).map(|t| q32(&acts(&mut rng, cols, t + k))).collect();
                (0..nb)
                    .map(|i| {
                        let b = interleave8(std::array::from_fn(|t| &qs[t][i]));
                        if u8_offset_acts(dtype) {
                            b.offset_by_128()
                        } else {
                            b
                        }
                    })
                    .collect()
            })
            .collect();
        let g = [&groups[0][..], &groups[1][..]];
        for gk in g {
            let a = dot_u8_g8_rows::<2>(Isa::Avx512, dtype, &u, gk).map(bits);
            let b = dot_u8_g8_rows::<2>(Isa::Avx2, dtype, &u, gk).map(bits);
            assert_eq!(a, b, "{dtype}: one group, two rows");
            let a = dot_u8_g8_rows::<1>(Isa::Avx512, dtype, &u[nb..], gk).map(bits);
            let b = dot_u8_g8_rows::<1>(Isa::Avx2, dtype, &u[nb..], gk).map(bits);
            assert_eq!(a, b, "{dtype}: one group, one row");
        }
        let a = dot_u8_g16_rows::<2>(Isa::Avx512, dtype, &u, g).map(|k| k.map(bits));
        let b = dot_u8_g16_rows::<2>(Isa::Avx2, dtype, &u, g).map(|k| k.map(bits));
        assert_eq!(a, b, "{dtype}: two groups, two rows");
        // four rows (the AVX-512 prefill's widest tile): rows 0, 1 twice over
        let u4 = [&u[..], &u[..]].concat();
        let a = dot_u8_g16_rows::<4>(Isa::Avx512, dtype, &u4, g).map(|k| k.map(bits));
        let b = dot_u8_g16_rows::<4>(Isa::Avx2, dtype, &u4, g).map(|k| k.map(bits));
        assert_eq!(a, b, "{dtype}: two groups, four rows");
        let a = dot_u8_g16_rows::<1>(Isa::Avx512, dtype, &u[..nb], g).map(|k| k.map(bits));
        let b = dot_u8_g16_rows::<1>(Isa::Avx2, dtype, &u[..nb], g).map(|k| k.map(bits));
        assert_eq!(a, b, "{dtype}: two groups, one row");
    }
}

/// Whole matrix products, every quantised type, plain and 4-row group layouts, token counts
/// that take every path (decode, 4-token tiles, one and two 8-token groups, tails).
#[test]
fn matmul_matches_avx2_bit_for_bit() {
    if !both_levels("matmul_matches_avx2_bit_for_bit") {
        return;
    }
    let mut rng = Rng::new(109);
    let pool = ThreadPool::new(2);
    for dtype in QUANT_TYPES {
        let cols = if dtype.block_size() == 256 { 768 } else { 640 };
        let rows = 39; // 4-, 2- and 1-row passes
        let plain = random_weights(&mut rng, dtype, rows * cols);
        let mut tensors =
            vec![Tensor::new(dtype, vec![rows, cols], Storage::from_vec(plain.clone())).unwrap()];
        if interleave::supports(Layout::Rows4, dtype, &[rows, cols]) {
            let mut grouped = plain;
            interleave::rearrange(Layout::Rows4, dtype, cols, &mut grouped);
            tensors.push(
                Tensor::with_layout(
                    dtype,
                    vec![rows, cols],
                    Storage::from_vec(grouped),
                    Layout::Rows4,
                )
                .unwrap(),
            );
        }
        for w in &tensors {
            for n in [1usize, 3, 8, 13, 16, 27, 40, 67] {
                let x = rng.vec(n * cols);
                let mut a = vec![f32::NAN; n * rows];
                let mut b = vec![f32::NAN; n * rows];
                matmul_with(Isa::Avx512, &pool, w, &x, n, &mut a);
                matmul_with(Isa::Avx2, &pool, w, &x, n, &mut b);
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(
                        p.to_bits(),
                        q.to_bits(),
                        "{dtype} {:?} n={n}: token {} row {}: avx512 {p} vs avx2 {q}",
                        w.layout,
                        i / rows,
                        i % rows
                    );
                }
            }
        }
    }
}
