//! The architectures added after the first fixture set (tests/data/fixtures/arch, made by
//! gen_arch_fixtures.py from transformers' own classes) against transformers' goldens: prompt
//! ids, logits, top-5, echoed prompt logprobs within 1e-4, greedy ids, a batch equal to each
//! prompt alone; and the same model written as GGUF by `kiln convert` (llama.cpp's tensor
//! names and metadata keys) giving the same logits.

mod common;

use common::*;
use kiln_engine::convert::{convert, Target};

fn arch_dir(model: &str) -> std::path::PathBuf {
    test_data().join("fixtures/arch").join(model)
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(ra, rb)| ra.iter().zip(rb).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

/// The Hugging Face directory against the golden, then its GGUF and safetensors conversions
/// (same logits, same golden).
fn check_arch(model: &str, gguf_arch: &str) {
    let dir = arch_dir(model);
    let golden = load_json(&test_data().join(format!("fixtures/arch/golden/{model}.json")));
    let original = engine(&dir);
    check_against_golden(&original, &golden, true);
    check_batch_independence(&original, &golden);

    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join(format!("{model}.gguf"));
    convert(&dir, Target::Gguf, &gguf).unwrap();
    let file = kiln_formats::GgufFile::open(&gguf).unwrap();
    assert_eq!(
        file.architecture(),
        Some(gguf_arch),
        "{model}: GGUF architecture"
    );
    let st = tmp.path().join(format!("{model}-hf"));
    convert(&dir, Target::Safetensors, &st).unwrap();
    for out in [&gguf, &st] {
        let converted = engine(out);
        assert_eq!(converted.model.config().arch, original.model.config().arch);
        for p in golden["prompts"].as_array().unwrap() {
            let ids = ids(&p["input_ids"]);
            let d = max_diff(&all_logits(&original, &ids), &all_logits(&converted, &ids));
            assert!(d < 1e-5, "{model} {}: logits differ by {d}", out.display());
        }
        check_against_golden(&converted, &golden, true);
    }
}

#[test]
fn llama32_tied_llama3_rope_matches_transformers() {
    check_arch("llama32-tiny", "llama");
}

#[test]
fn qwen3_qk_norm_matches_transformers() {
    check_arch("qwen3-tiny", "qwen3");
}

#[test]
fn gemma2_softcaps_and_sliding_layers_match_transformers() {
    check_arch("gemma2-tiny", "gemma2");
}

#[test]
fn olmo2_post_norms_match_transformers() {
    check_arch("olmo2-tiny", "olmo2");
}

#[test]
fn phi3_fused_projections_and_longrope_match_transformers() {
    check_arch("phi3-tiny", "phi3");
}

#[test]
fn qwen2_yarn_rope_matches_transformers() {
    check_arch("qwen2-yarn-tiny", "qwen2");
}

#[test]
fn mixtral_experts_match_transformers() {
    check_arch("mixtral-tiny", "llama");
}

#[test]
fn qwen3moe_experts_match_transformers() {
    check_arch("qwen3moe-tiny", "qwen3moe");
}
