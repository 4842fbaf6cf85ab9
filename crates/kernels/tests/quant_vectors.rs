//! Dequantisation checked against vectors made by gguf-py (tests/data/gen_quant_vectors.py).

use kiln_kernels::quant::{dequantize, quantize_q8_32, BlockQ8_32};
use kiln_kernels::DType;

fn read(name: &str) -> Option<Vec<u8>> {
    std::fs::read(format!(
        "{}/tests/data/quant/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .ok()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Distance in units in the last place (same-sign values; 0 for equal values).
fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    if a.signum() != b.signum() {
        return u32::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn dequantize_matches_gguf_py_for_every_type() {
    for dtype in DType::ALL {
        if dtype == DType::F32 {
            continue;
        }
        let blocks = read(&format!("{}.blocks", dtype.name()))
            .unwrap_or_else(|| panic!("no vectors for {dtype}"));
        let want = f32s(&read(&format!("{}.f32", dtype.name())).unwrap());
        let mut got = vec![f32::NAN; want.len()];
        dequantize(dtype, &blocks, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // gguf-py computes in the same order (scale products first), so this is exact;
            // one ulp is allowed for a differently associated product.
            assert!(
                ulps(*g, *w) <= 1,
                "{dtype} element {i}: got {g}, gguf-py {w}"
            );
        }
        assert!(!want.is_empty());
    }
}

#[test]
fn activation_q8_matches_gguf_py_q8_0() {
    let input = f32s(&read("Q8_0.input").unwrap());
    let blocks = read("Q8_0.blocks").unwrap();
    let mut q = vec![BlockQ8_32::default(); input.len() / 32];
    quantize_q8_32(&input, &mut q);
    for (i, (qb, gb)) in q.iter().zip(blocks.chunks_exact(34)).enumerate() {
        let d16 = half::f16::from_f32(qb.d).to_le_bytes();
        assert_eq!(d16, [gb[0], gb[1]], "block {i}: scale");
        let qs: Vec<u8> = qb.qs.iter().map(|&v| v as u8).collect();
        assert_eq!(&qs[..], &gb[2..34], "block {i}: quants");
        let sum: i32 = qb.qs.iter().map(|&v| v as i32).sum();
        assert_eq!(qb.s, qb.d * sum as f32);
    }
}

#[test]
fn dequantize_rejects_mismatched_lengths() {
    let r = std::panic::catch_unwind(|| {
        let mut out = vec![0.0; 32];
        dequantize(DType::Q4_0, &[0u8; 17], &mut out);
    });
    assert!(r.is_err());
}
