//! Cost of the attention kernels over an f16 KV cache on cache-resident data (single thread,
//! thread CPU time): nanoseconds per key for one query row of head dim 256 (gemma-3) and 64
//! (qwen2.5). Scores of two heads: `ops::dot_f32_f16` per key and head against
//! `ops::dot_f32_f16_keys` over all keys at once; the f16 weighted sum (ggml's accumulator) of
//! one head (`ops::f16_weighted_sum`) and of two heads at once (`ops::f16_weighted_sum_x2`).
//!
//! cargo run --release -p kiln-kernels --example attn_bench. `KILN_ISA=scalar` for the reference.
#[path = "../tests/common/mod.rs"]
mod common;

use kiln_kernels::ops;
use std::hint::black_box;

use common::ns_per_call;

fn main() {
    // A program, like the CLI, may read the environment; the library does not.
    if let Ok(v) = std::env::var("KILN_ISA") {
        let isa = v.parse().unwrap_or_else(|e| panic!("KILN_ISA: {e}"));
        kiln_kernels::Isa::use_in_process(isa).unwrap_or_else(|e| panic!("KILN_ISA: {e}"));
    }
    let keys = 512;
    for hd in [256, 64] {
        // deterministic, f16-representable data in the range real caches hold
        let val = |i: usize| ((i * 7919 % 2003) as f32 / 1001.0 - 1.0) * 3.0;
        let mut k16 = vec![0u16; keys * hd];
        let mut v16 = vec![0u16; keys * hd];
        let kf: Vec<f32> = (0..keys * hd).map(val).collect();
        let vf: Vec<f32> = (0..keys * hd).map(|i| val(i + 17)).collect();
        ops::f32_to_f16(&kf, &mut k16);
        ops::f32_to_f16(&vf, &mut v16);
        let q0: Vec<f32> = (0..hd).map(|i| val(i + 5) * 0.1).collect();
        let q1: Vec<f32> = (0..hd).map(|i| val(i + 9) * 0.1).collect();
        // a running maximum that moves now and then, as real scores do
        let ms: Vec<f32> = (0..keys)
            .map(|j| if j % 37 == 0 { 0.9 } else { 1.0 })
            .collect();
        let vs: Vec<f32> = (0..keys).map(|j| (j % 13) as f32 / 13.0).collect();
        let ms2: Vec<f32> = ms.iter().rev().copied().collect();
        let vs2: Vec<f32> = vs.iter().rev().copied().collect();
        let (mut out, mut out2) = (vec![0.0f32; hd], vec![0.0f32; hd]);
        let (mut s0, mut s1) = (vec![0.0f32; keys], vec![0.0f32; keys]);

        let per_key = ns_per_call(|| {
            for j in 0..keys {
                let k = black_box(&k16[j * hd..(j + 1) * hd]);
                black_box((ops::dot_f32_f16(&q0, k), ops::dot_f32_f16(&q1, k)));
            }
        }) / keys as f64;
        let all_keys = ns_per_call(|| {
            ops::dot_f32_f16_keys([&q0, &q1], black_box(&k16), [&mut s0, &mut s1]);
            black_box((&s0, &s1));
        }) / keys as f64;
        let wsum = ns_per_call(|| {
            ops::f16_weighted_sum(black_box(&v16), &ms, &vs, &mut out);
            black_box(&out);
        }) / keys as f64;
        let wsum2 = ns_per_call(|| {
            let o = [&mut out[..], &mut out2[..]];
            ops::f16_weighted_sum_x2(black_box(&v16), [&ms, &ms2], [&vs, &vs2], o);
            black_box((&out, &out2));
        }) / keys as f64;
        println!(
            "head dim {hd:3}: scores of 2 heads {per_key:6.2} ns/key key by key, \
             {all_keys:6.2} all keys at once; f16 weighted sum of 1 head {wsum:6.2} ns/key, \
             of 2 heads at once {wsum2:6.2}"
        );
    }
}
