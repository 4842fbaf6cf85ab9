//! `kiln quantize` on the real models: the Q4_K_M per-tensor types equal the ones llama.cpp's
//! llama-quantize chose in the published Q4_K_M files, and a Q8_0 made from an F16 copy keeps
//! the F16 model's perplexity within 1%.

mod common;

use common::*;
use kiln_engine::perplexity::perplexity;
use kiln_engine::quantize::{quantize, tensor_type, FileType, ModelShape};

/// The published files were made by llama-quantize from the original weights: every tensor's
/// type there is what the Q4_K_M rules give for its name and shape. gemma3-270m was made by a
/// llama.cpp that walks the layers in number order (as the anchor build does, and kiln);
/// qwen2.5-coder-0.5b (2024) by one that counted them in name order (blk.0, blk.1, blk.10,
/// ...), which moves the `use_more_bits` layers: checked with that order.
#[test]
fn q4_k_m_types_match_llama_quantize_on_real_files() {
    for (file, name_order) in [
        ("gemma-3-270m-q4_k_m.gguf", false),
        ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", true),
    ] {
        let m = kiln_formats::load(&real_model(file)).unwrap();
        let shape = ModelShape {
            n_layers: m.config.n_layers,
            has_output: m.tensors.contains_key("output.weight"),
            n_gqa: m.config.n_heads / m.config.n_kv_heads,
        };
        let mut by_name: Vec<String> = (0..m.config.n_layers).map(|i| i.to_string()).collect();
        by_name.sort();
        let counted = |name: &str| -> String {
            let Some(rest) = name.strip_prefix("blk.") else {
                return name.to_string();
            };
            let (n, tail) = rest.split_once('.').unwrap();
            let i = by_name.iter().position(|s| s == n).unwrap();
            format!("blk.{i}.{tail}")
        };
        let mut n = 0;
        for (name, t) in &m.tensors {
            let as_counted = if name_order {
                counted(name)
            } else {
                name.clone()
            };
            if let Some(want) = tensor_type(FileType::Q4_K_M, &as_counted, &t.shape, shape).unwrap()
            {
                assert_eq!(want, t.dtype, "{file}: {name} {:?}", t.shape);
                n += 1;
            }
        }
        assert!(n > 100, "{file}: {n} quantized tensors");
    }
}

fn ppl(path: &std::path::Path, text: &str) -> f64 {
    let engine = engine(path);
    let tokens = engine.tokenize(text).unwrap();
    let bos = engine
        .tokenizer
        .adds_bos()
        .then(|| engine.tokenizer.bos_id())
        .flatten();
    // 4 windows of 128 tokens keep this quick on 2 cores
    let tokens = &tokens[..tokens.len().min(4 * 128)];
    perplexity(engine.model.as_ref(), tokens, 128, bos, |_, _, _| {})
        .unwrap()
        .ppl
}

#[test]
fn q8_0_from_f16_keeps_perplexity_within_1_percent() {
    let src = real_model("gemma-3-270m-q4_k_m.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let f16 = tmp.path().join("f16.gguf");
    let q8 = tmp.path().join("q8.gguf");
    let r = quantize(&src, &f16, FileType::F16, 0, &|| false, &mut |_, _, _| {}).unwrap();
    assert!(
        r.requantized > 100,
        "the source is quantized: {}",
        r.requantized
    );
    quantize(&f16, &q8, FileType::Q8_0, 0, &|| false, &mut |_, _, _| {}).unwrap();
    let text = std::fs::read_to_string(test_data().join("ppl-text.txt")).unwrap();
    let (a, b) = (ppl(&f16, &text), ppl(&q8, &text));
    let rel = (b - a).abs() / a;
    println!(
        "gemma3-270m perplexity: F16 {a:.4}, Q8_0 {b:.4} ({:.3}%)",
        rel * 100.0
    );
    assert!(rel < 0.01, "F16 {a} vs Q8_0 {b}");
}
