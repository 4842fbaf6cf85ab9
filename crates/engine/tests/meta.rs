//! Meta's `Llama.generate` semantics (`kiln_engine::meta`) on the Meta-format fixtures (MP=1,
//! MP=2) against the transformers goldens, and the context bound: prompt plus generated tokens
//! never exceed the context (Meta's `max_seq_len`).

use std::path::{Path, PathBuf};

use kiln_engine::meta::{self, MetaParams};
use kiln_engine::{Engine, EngineOptions, FinishReason, GenerateParams};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures")
}

fn load(dir: &Path, context: usize) -> Engine {
    Engine::load(
        dir,
        &EngineOptions {
            threads: 2,
            context: Some(context),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("golden/llama-mha.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn generation_ends_when_prompt_and_tokens_fill_the_context() {
    let g = golden();
    let p = &g["prompts"][0];
    let prompt = ids(&p["input_ids"]);
    assert_eq!(p["greedy"]["stopped_on_eos"], false);
    let want = ids(&p["greedy"]["new_ids"]);
    let engine = load(&fixtures().join("llama-mha"), 24);
    let params = GenerateParams {
        max_tokens: 100,
        ..Default::default()
    };
    let out = engine
        .generate(std::slice::from_ref(&prompt), &params, &mut |_, _| {})
        .unwrap();
    assert_eq!(out[0].finish_reason, FinishReason::Length);
    assert_eq!(prompt.len() + out[0].token_ids.len(), 24);
    assert_eq!(out[0].token_ids, want[..14]);
    // A prompt one short of the context gets one token; a full one none.
    for (context, n) in [(prompt.len() + 1, 1), (prompt.len(), 0)] {
        let engine = load(&fixtures().join("llama-mha"), context);
        let out = engine
            .generate(std::slice::from_ref(&prompt), &params, &mut |_, _| {})
            .unwrap();
        assert_eq!(out[0].token_ids.len(), n, "context {context}");
        assert_eq!(out[0].finish_reason, FinishReason::Length);
    }
}

#[test]
fn meta_generate_with_echo_and_logprobs_matches_transformers() {
    let g = golden();
    let prompts: Vec<Vec<u32>> = g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| ids(&p["input_ids"]))
        .collect();
    for dir in ["llama-mha/meta", "llama-mha/meta/mp2"] {
        let engine = load(&fixtures().join(dir), 256);
        let params = MetaParams {
            max_gen_len: 20,
            temperature: 0.0,
            top_p: 0.9,
            logprobs: true,
            echo: true,
            seed: 1,
        };
        let out = meta::generate(&engine, &prompts, &params, &mut || false).unwrap();
        let lps = out.logprobs.unwrap();
        for (i, p) in g["prompts"].as_array().unwrap().iter().enumerate() {
            let mut new = ids(&p["greedy"]["new_ids"]);
            if let Some(k) = new.iter().position(|&t| t == 2) {
                new.truncate(k);
            }
            let mut want = prompts[i].clone();
            want.extend(&new);
            assert_eq!(out.tokens[i], want, "{dir} prompt {i}");
            assert_eq!(lps[i].len(), want.len());
            assert_eq!(lps[i][0], 0.0);
            for (k, w) in p["token_logprobs"].as_array().unwrap().iter().enumerate() {
                let w = w.as_f64().unwrap() as f32;
                assert!(
                    (lps[i][k + 1] - w).abs() < 1e-4,
                    "{dir} prompt {i} token {k}"
                );
            }
        }
    }
}

#[test]
fn cancelled_generation_stops() {
    let engine = load(&fixtures().join("llama-mha"), 256);
    let prompt = engine.tokenize("Hello world").unwrap();
    let params = GenerateParams {
        max_tokens: 200,
        ignore_eos: true,
        ..Default::default()
    };
    let mut steps = 0;
    let r = engine.generate_until(&[prompt], &params, &mut |_, _| {}, &mut || {
        steps += 1;
        steps > 3
    });
    assert!(matches!(r, Err(kiln_engine::EngineError::Cancelled)));
    assert_eq!(steps, 4);
}

#[test]
fn model_parallel_size_is_checked_against_the_shards() {
    let meta_dir = fixtures().join("llama-mha/meta");
    meta::check_model_parallel_size(&meta_dir, 1).unwrap();
    meta::check_model_parallel_size(&meta_dir.join("mp2"), 2).unwrap();
    assert!(meta::check_model_parallel_size(&meta_dir.join("mp2"), 1).is_err());
    assert!(meta::check_model_parallel_size(&fixtures().join("llama-mha"), 2).is_err());
}
