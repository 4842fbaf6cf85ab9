//! Weights in an interleaved layout give exactly the results of the file's layout.

mod common;

use common::{random_weights, Rng};
use kiln_kernels::dot::{dot_q8_32_group4, dot_q8_32_rows, dot_q8k_group4, dot_q8k_rows, Isa};
use kiln_kernels::interleave::{self, group_to_rows, rows_to_group, Layout};
use kiln_kernels::matmul::matmul_with;
use kiln_kernels::quant::{quantize_q8_32, quantize_q8_k, BlockQ8K, BlockQ8_32};
use kiln_kernels::{DType, Storage, Tensor, ThreadPool};

/// The types that have a 4-row group layout.
const GROUPED: [DType; 10] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
];

/// `rows × cols` random weights, plain and rearranged into 4-row groups.
fn pair(rng: &mut Rng, dtype: DType, rows: usize, cols: usize) -> (Tensor, Tensor) {
    let plain = random_weights(rng, dtype, rows * cols);
    let mut grouped = plain.clone();
    interleave::rearrange(Layout::Rows4, dtype, cols, &mut grouped);
    let shape = vec![rows, cols];
    (
        Tensor::new(dtype, shape.clone(), Storage::from_vec(plain)).unwrap(),
        Tensor::with_layout(dtype, shape, Storage::from_vec(grouped), Layout::Rows4).unwrap(),
    )
}

/// A column count that suits `dtype`'s blocks.
fn cols_for(dtype: DType, small: usize) -> usize {
    if dtype.block_size() == 256 {
        small.div_ceil(256) * 256
    } else {
        small
    }
}

#[test]
fn groups_hold_the_same_bytes_rearranged() {
    let mut rng = Rng::new(5);
    for dtype in GROUPED {
        for cols in [cols_for(dtype, 32), cols_for(dtype, 320)] {
            let rows = random_weights(&mut rng, dtype, 4 * cols);
            let mut group = vec![0u8; rows.len()];
            rows_to_group(dtype, &rows, &mut group);
            if cols / dtype.block_size() > 1 || dtype == DType::Q5_0 {
                assert_ne!(group, rows, "{dtype} cols {cols}");
            }
            let mut back = vec![0u8; rows.len()];
            group_to_rows(dtype, &group, &mut back);
            assert_eq!(back, rows, "{dtype} cols {cols}");
        }
    }
}

#[test]
fn interleaved_tensor_reads_like_the_plain_one() {
    let mut rng = Rng::new(6);
    for dtype in GROUPED {
        let cols = cols_for(dtype, 608); // more than one block per row
        for rows in [4, 7, 37] {
            let (plain, grouped) = pair(&mut rng, dtype, rows, cols);
            assert_ne!(plain.data.bytes(), grouped.data.bytes(), "{dtype}");
            assert_eq!(&grouped.plain_bytes()[..], plain.data.bytes(), "{dtype}");
            assert_eq!(grouped.to_f32_vec(), plain.to_f32_vec(), "{dtype}");
            let (mut a, mut b) = (vec![0.0; cols], vec![0.0; cols]);
            for i in 0..rows {
                assert_eq!(grouped.row(i), plain.row(i), "{dtype} row {i} of {rows}");
                plain.dequantize_row(i, &mut a);
                grouped.dequantize_row(i, &mut b);
                assert_eq!(a, b, "{dtype} row {i} of {rows}");
            }
        }
    }
}

/// Every path (decode on the raw groups, the 4- and 8-token tiles and unpacked prefill on
/// chunks taken apart) gives the plain layout's results bit for bit, on every level.
#[test]
fn interleaved_matmul_is_bit_identical_to_plain() {
    let mut rng = Rng::new(7);
    let pool = ThreadPool::new(2);
    for (dtype, (rows, cols)) in GROUPED
        .iter()
        .flat_map(|&d| [(d, (4, 64)), (d, (37, 320)), (d, (130, 896))])
    {
        let cols = cols_for(dtype, cols);
        let (plain, grouped) = pair(&mut rng, dtype, rows, cols);
        for n in [1, 2, 5, 8, 16, 27] {
            let x = rng.vec(n * cols);
            for isa in Isa::available() {
                let mut want = vec![0.0f32; n * rows];
                let mut got = vec![0.0f32; n * rows];
                matmul_with(isa, &pool, &plain, &x, n, &mut want);
                matmul_with(isa, &pool, &grouped, &x, n, &mut got);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{dtype} {} {rows}x{cols} n={n}: token {} row {}: {g} vs {w}",
                        isa.name(),
                        i / rows,
                        i % rows
                    );
                }
            }
        }
    }
}

#[test]
fn group_kernels_equal_the_plain_four_row_kernels() {
    let mut rng = Rng::new(8);
    let cols = 2048;
    let x = rng.vec(cols);
    let mut a = vec![BlockQ8_32::default(); cols / 32];
    quantize_q8_32(&x, &mut a);
    let mut ak = vec![BlockQ8K::default(); cols / 256];
    quantize_q8_k(&x, &mut ak);
    for dtype in GROUPED {
        let rows = random_weights(&mut rng, dtype, 4 * cols);
        let mut group = vec![0u8; rows.len()];
        rows_to_group(dtype, &rows, &mut group);
        for isa in Isa::available() {
            let (want, got) = if dtype.block_size() == 256 {
                (
                    dot_q8k_rows::<4>(isa, dtype, &rows, &ak),
                    dot_q8k_group4(isa, dtype, &group, &ak),
                )
            } else {
                (
                    dot_q8_32_rows::<4>(isa, dtype, &rows, &a),
                    dot_q8_32_group4(isa, dtype, &group, &a),
                )
            };
            let name = isa.name();
            assert_eq!(
                got.map(f32::to_bits),
                want.map(f32::to_bits),
                "{dtype} {name}"
            );
        }
    }
}

#[test]
fn layouts_are_offered_only_where_they_apply() {
    let rows4 = if Isa::best().has_avx2() {
        Layout::Rows4
    } else {
        Layout::Plain
    };
    for dtype in GROUPED {
        assert_eq!(interleave::preferred(dtype, &[8, 256]), rows4, "{dtype}");
        assert_eq!(interleave::preferred(dtype, &[3, 256]), Layout::Plain);
        assert_eq!(interleave::preferred(dtype, &[256]), Layout::Plain);
    }
    for dtype in [
        DType::F32,
        DType::F16,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q8_1,
    ] {
        assert_eq!(
            interleave::preferred(dtype, &[8, 256]),
            Layout::Plain,
            "{dtype}"
        );
    }
    let bytes = Storage::from_vec(vec![0u8; 8 * 84]);
    assert!(Tensor::with_layout(DType::Q2_K, vec![8, 256], bytes, Layout::Rows4).is_err());
}

#[test]
#[should_panic(expected = "split a group")]
fn taking_rows_apart_from_the_middle_of_a_group_is_refused() {
    let mut rng = Rng::new(9);
    let (_, grouped) = pair(&mut rng, DType::Q5_0, 8, 64);
    let mut buf = Vec::new();
    interleave::plain_rows(
        Layout::Rows4,
        DType::Q5_0,
        64,
        grouped.data.bytes(),
        2,
        6,
        &mut buf,
    );
}

/// A prefix of a matrix's rows (a draft model's output layer over the first token ids) is a
/// view of the same bytes: in 4-row groups whole groups only, and its products are the whole
/// matrix's first rows bit for bit, plain or grouped, on every level and batch size.
#[test]
fn a_row_prefix_multiplies_like_the_first_rows_of_the_whole() {
    let mut rng = Rng::new(8);
    let pool = ThreadPool::new(2);
    let f32s = Tensor::from_f32(vec![37, 64], &rng.vec(37 * 64)).unwrap();
    for dtype in GROUPED.into_iter().chain([DType::F32]) {
        let cols = cols_for(dtype, 320);
        let rows = 37;
        let (plain, grouped) = if dtype == DType::F32 {
            (f32s.clone(), f32s.clone())
        } else {
            pair(&mut rng, dtype, rows, cols)
        };
        let cols = plain.cols();
        for w in [&plain, &grouped] {
            let grouped = w.layout == Layout::Rows4;
            assert_eq!(w.prefix_rows(5), if grouped { 8 } else { 5 });
            assert_eq!(w.prefix_rows(35), if grouped { 36 } else { 35 });
            assert_eq!(w.prefix_rows(99), rows);
            assert!(w.row_prefix(0).is_err());
            assert_eq!(w.row_prefix(5).is_err(), grouped, "{dtype}");
            for k in [4, 20, 36, rows] {
                let p = w.row_prefix(k).unwrap();
                assert_eq!((p.rows(), p.cols(), p.layout), (k, cols, w.layout));
                for i in 0..k {
                    assert_eq!(p.row(i), w.row(i), "{dtype} row {i} of {k}");
                }
                for n in [1, 3, 16, 19] {
                    let x = rng.vec(n * cols);
                    for isa in Isa::available() {
                        let mut whole = vec![0.0f32; n * rows];
                        let mut part = vec![0.0f32; n * k];
                        matmul_with(isa, &pool, w, &x, n, &mut whole);
                        matmul_with(isa, &pool, &p, &x, n, &mut part);
                        for t in 0..n {
                            let a = &whole[t * rows..t * rows + k];
                            let b = &part[t * k..(t + 1) * k];
                            assert!(
                                a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{dtype} {:?} {} {k} of {rows} rows, n={n}, token {t}",
                                w.layout,
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
    }
}
