//! Weights in an interleaved layout give exactly the results of the file's layout.

mod common;

use common::{random_weights, Rng};
use kiln_kernels::dot::{dot_q5_0_r4, dot_q8_32_rows, Isa};
use kiln_kernels::interleave::{self, q5_0_group_to_rows, q5_0_rows_to_group, Layout};
use kiln_kernels::matmul::matmul_with;
use kiln_kernels::quant::{quantize_q8_32, BlockQ8_32};
use kiln_kernels::{DType, Storage, Tensor, ThreadPool};

/// `rows × cols` random Q5_0 weights, plain and rearranged into 4-row groups.
fn pair(rng: &mut Rng, rows: usize, cols: usize) -> (Tensor, Tensor) {
    let plain = random_weights(rng, DType::Q5_0, rows * cols);
    let mut grouped = plain.clone();
    interleave::rearrange(Layout::Rows4, DType::Q5_0, cols, &mut grouped);
    let shape = vec![rows, cols];
    (
        Tensor::new(DType::Q5_0, shape.clone(), Storage::from_vec(plain)).unwrap(),
        Tensor::with_layout(
            DType::Q5_0,
            shape,
            Storage::from_vec(grouped),
            Layout::Rows4,
        )
        .unwrap(),
    )
}

#[test]
fn q5_0_groups_hold_the_same_bytes_rearranged() {
    let mut rng = Rng::new(5);
    for cols in [32, 320] {
        let rows = random_weights(&mut rng, DType::Q5_0, 4 * cols);
        let mut group = vec![0u8; rows.len()];
        q5_0_rows_to_group(&rows, &mut group);
        assert_ne!(group, rows);
        let mut back = vec![0u8; rows.len()];
        q5_0_group_to_rows(&group, &mut back);
        assert_eq!(back, rows, "cols {cols}");
        let mut back = vec![0u8; rows.len()];
        interleave::q5_0_group_to_rows_scalar(&group, &mut back);
        assert_eq!(back, rows, "cols {cols}, portable form");
    }
}

#[test]
fn interleaved_tensor_reads_like_the_plain_one() {
    let mut rng = Rng::new(6);
    for rows in [4, 7, 37] {
        let (plain, grouped) = pair(&mut rng, rows, 96);
        assert_ne!(plain.data.bytes(), grouped.data.bytes());
        assert_eq!(&grouped.plain_bytes()[..], plain.data.bytes());
        assert_eq!(grouped.to_f32_vec(), plain.to_f32_vec());
        let (mut a, mut b) = (vec![0.0; 96], vec![0.0; 96]);
        for i in 0..rows {
            assert_eq!(grouped.row(i), plain.row(i), "row {i} of {rows}");
            plain.dequantize_row(i, &mut a);
            grouped.dequantize_row(i, &mut b);
            assert_eq!(a, b, "row {i} of {rows}");
        }
    }
}

/// Every path (decode on the raw groups, the 4- and 8-token tiles and unpacked prefill on
/// chunks taken apart) gives the plain layout's results bit for bit, on every level.
#[test]
fn interleaved_matmul_is_bit_identical_to_plain() {
    let mut rng = Rng::new(7);
    let pool = ThreadPool::new(2);
    for (rows, cols) in [(4, 64), (37, 320), (130, 896)] {
        let (plain, grouped) = pair(&mut rng, rows, cols);
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
                        "{} {rows}x{cols} n={n}: token {} row {}: {g} vs {w}",
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
fn group_kernel_equals_the_plain_four_row_kernel() {
    let mut rng = Rng::new(8);
    let cols = 2048;
    let rows = random_weights(&mut rng, DType::Q5_0, 4 * cols);
    let mut group = vec![0u8; rows.len()];
    q5_0_rows_to_group(&rows, &mut group);
    let mut a = vec![BlockQ8_32::default(); cols / 32];
    quantize_q8_32(&rng.vec(cols), &mut a);
    for isa in Isa::available() {
        let want = dot_q8_32_rows::<4>(isa, DType::Q5_0, &rows, &a);
        let got = dot_q5_0_r4(isa, &group, &a);
        assert_eq!(
            got.map(f32::to_bits),
            want.map(f32::to_bits),
            "{}",
            isa.name()
        );
    }
}

#[test]
fn layouts_are_offered_only_where_they_apply() {
    let rows4 = if Isa::best() == Isa::Avx2 && std::env::var_os("KILN_INTERLEAVE").is_none() {
        Layout::Rows4
    } else {
        Layout::Plain
    };
    assert_eq!(interleave::preferred(DType::Q5_0, &[8, 64]), rows4);
    assert_eq!(interleave::preferred(DType::Q5_0, &[3, 64]), Layout::Plain);
    assert_eq!(interleave::preferred(DType::Q5_0, &[64]), Layout::Plain);
    assert_eq!(interleave::preferred(DType::Q8_0, &[8, 64]), Layout::Plain);
    let bytes = Storage::from_vec(vec![0u8; 8 * 2 * 34]);
    assert!(Tensor::with_layout(DType::Q8_0, vec![8, 64], bytes, Layout::Rows4).is_err());
}

#[test]
#[should_panic(expected = "split a group")]
fn taking_rows_apart_from_the_middle_of_a_group_is_refused() {
    let mut rng = Rng::new(9);
    let (_, grouped) = pair(&mut rng, 8, 64);
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
