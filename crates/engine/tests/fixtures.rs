//! kiln against transformers' golden outputs for the tiny models in tests/data/fixtures.

mod common;

use common::*;

fn check_dir(model: &str) {
    let dir = test_data().join("fixtures").join(model);
    let golden = load_json(&test_data().join(format!("fixtures/golden/{model}.json")));
    let engine = engine(&dir);
    check_against_golden(&engine, &golden, true);
    check_batch_independence(&engine, &golden);
}

#[test]
fn llama_mha_matches_transformers() {
    check_dir("llama-mha");
}

#[test]
fn qwen2_tiny_matches_transformers() {
    check_dir("qwen2-tiny");
}

/// The transformers-4 form of config.json (top-level rope_theta, torch_dtype) loads to the same model.
#[test]
fn legacy_config_form_gives_the_same_results() {
    for model in ["llama-mha", "qwen2-tiny"] {
        let src = test_data().join("fixtures").join(model);
        let tmp = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
            }
        }
        std::fs::copy(
            test_data().join(format!("fixtures/legacy-configs/{model}.config.json")),
            tmp.path().join("config.json"),
        )
        .unwrap();
        let golden = load_json(&test_data().join(format!("fixtures/golden/{model}.json")));
        check_against_golden(&engine(tmp.path()), &golden, true);
    }
}

/// Configurations the tests/data fixtures do not cover, with goldens from the independent numpy
/// reference in tests/reference (itself checked against transformers' goldens).
fn check_synthetic(name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/synthetic")
        .join(name);
    let golden = load_json(&dir.join("golden.json"));
    let engine = engine(&dir);
    check_against_golden(&engine, &golden, true);
    check_batch_independence(&engine, &golden);
    if dir.join("config.legacy.json").exists() {
        let tmp = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
        std::fs::copy(
            dir.join("config.legacy.json"),
            tmp.path().join("config.json"),
        )
        .unwrap();
        check_against_golden(&common::engine(tmp.path()), &golden, true);
    }
}

#[test]
fn gqa_with_tied_embeddings() {
    check_synthetic("gqa-tied");
}

#[test]
fn llama3_rope_scaling() {
    check_synthetic("llama3-rope");
}

#[test]
fn mistral_sliding_window_f16() {
    check_synthetic("mistral-swa");
}

#[test]
fn gemma3_local_and_global_layers_bf16() {
    check_synthetic("gemma3-tiny");
}

/// Meta's original checkpoint of llama-mha (MP=1 and MP=2 shards, tokenizer.model read
/// directly) gives the same numbers as the Hugging Face directory.
#[test]
fn meta_checkpoints_match_transformers() {
    let golden = load_json(&test_data().join("fixtures/golden/llama-mha.json"));
    for sub in ["meta", "meta/mp2"] {
        let engine = engine(&test_data().join("fixtures/llama-mha").join(sub));
        check_against_golden(&engine, &golden, true);
    }
}

/// `kiln convert`: the MP=2 Meta checkpoint written as GGUF and as safetensors loads back to
/// the same logits (and still matches transformers).
#[test]
fn converted_meta_checkpoint_gives_identical_logits() {
    use kiln_engine::convert::{convert, Target};
    let src = test_data().join("fixtures/llama-mha/meta/mp2");
    let golden = load_json(&test_data().join("fixtures/golden/llama-mha.json"));
    let original = engine(&src);
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("llama-mha.gguf");
    let st = tmp.path().join("llama-mha-hf");
    convert(&src, Target::Gguf, &gguf).unwrap();
    convert(&src, Target::Safetensors, &st).unwrap();
    for out in [&gguf, &st] {
        let converted = engine(out);
        for p in golden["prompts"].as_array().unwrap() {
            let ids = ids(&p["input_ids"]);
            assert_eq!(
                converted.tokenize(p["text"].as_str().unwrap()).unwrap(),
                ids
            );
            let a = all_logits(&original, &ids);
            let b = all_logits(&converted, &ids);
            for (ra, rb) in a.iter().zip(&b) {
                let d = ra
                    .iter()
                    .zip(rb)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(d < 1e-5, "{}: logits differ by {d}", out.display());
            }
        }
        check_against_golden(&converted, &golden, true);
    }
    // GGUF keeps Meta's rope layout, so its logits are bit-identical.
    let ids = ids(&prompt(&golden, "paragraph")["input_ids"]);
    assert_eq!(
        all_logits(&original, &ids),
        all_logits(&engine(&gguf), &ids)
    );
}

/// `perplexity_until` asks before every chunk: a `true` stops it with `Cancelled`, and
/// never answering `true` gives `perplexity`'s result.
#[test]
fn perplexity_until_stops_before_the_next_chunk() {
    let engine = engine(&test_data().join("fixtures/llama-mha"));
    let text = std::fs::read_to_string(test_data().join("ppl-text.txt")).unwrap();
    let tokens = engine.tokenize(&text[..3000]).unwrap();
    let whole = engine.perplexity(&tokens, 64, |_, _, _| {}).unwrap();
    let mut asked = 0;
    let until = engine
        .perplexity_until(
            &tokens,
            64,
            |_, _, _| {},
            || {
                asked += 1;
                false
            },
        )
        .unwrap();
    assert_eq!(until.per_chunk, whole.per_chunk);
    assert_eq!(asked, whole.per_chunk.len());
    let chunks = std::cell::Cell::new(0);
    let r = engine.perplexity_until(
        &tokens,
        64,
        |_, _, _| chunks.set(chunks.get() + 1),
        || chunks.get() == 2,
    );
    assert!(
        matches!(r, Err(kiln_engine::EngineError::Cancelled)),
        "{r:?}"
    );
    assert_eq!(chunks.get(), 2);
}
