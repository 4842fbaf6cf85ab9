//! kiln against llama.cpp on the real GGUF models (../shared/anchors): prompt ids, the greedy
//! 32-token continuation, first-token top-5 logprobs, and perplexity.
//!
//! The models are fetched by .ci/run into ~/.cache/kiln/models; a missing model fails the test.

mod common;

use std::path::PathBuf;

use common::*;
use kiln_engine::{perplexity::perplexity, GenerateParams};
use serde_json::Value;

fn model_path(file: &str) -> PathBuf {
    let dir = std::env::var_os("KILN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kiln/models")
        });
    let p = dir.join(file);
    assert!(
        p.exists(),
        "{} is missing: run ../shared/scripts/fetch-models.sh (CI does)",
        p.display()
    );
    p
}

fn anchor(name: &str) -> Value {
    load_json(&shared().join("anchors/llama-cpp-0c1e57098.json"))["models"][name].clone()
}

fn check_greedy_and_logprobs(name: &str) {
    let a = anchor(name);
    let engine = engine(&model_path(a["file"].as_str().unwrap()));
    let prompt = engine.tokenize(a["prompt"].as_str().unwrap()).unwrap();
    assert_eq!(prompt, ids(&a["prompt_token_ids"]), "{name}: prompt ids");

    let params = GenerateParams {
        max_tokens: 32,
        logprobs: Some(5),
        ignore_eos: true,
        ..Default::default()
    };
    let out = engine
        .generate(std::slice::from_ref(&prompt), &params, &mut |_, _| {})
        .unwrap();
    let got = &out[0];
    let want = ids(&a["greedy_32"]["token_ids"]);
    let top2 = a["greedy_32"]["top2_logprobs_per_step"].as_array().unwrap();
    let mut agreed = want.len();
    for (k, (&g, &w)) in got.token_ids.iter().zip(&want).enumerate() {
        if g != w {
            // Acceptable only where llama.cpp's two best were within 0.1 and kiln took the second.
            let first = top2[k][0][1].as_f64().unwrap();
            let second_id = top2[k][1][0].as_u64().unwrap() as u32;
            let second = top2[k][1][1].as_f64().unwrap();
            assert!(
                first - second <= 0.1 && g == second_id,
                "{name}: step {k}: kiln chose {g}, llama.cpp {w} (top-2 gap {:.3})",
                first - second
            );
            agreed = k;
            break;
        }
    }
    if agreed == want.len() {
        assert_eq!(
            got.text,
            a["greedy_32"]["text"].as_str().unwrap(),
            "{name}: greedy text"
        );
    }

    // Top-5 logprobs of the first generated tokens, along the shared greedy path.
    let lp = got.logprobs.as_ref().unwrap();
    for (k, step) in a["first_tokens_top5_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .take(agreed)
    {
        for alt in step["top"].as_array().unwrap() {
            let id = alt[0].as_u64().unwrap() as u32;
            let want = alt[2].as_f64().unwrap() as f32;
            let have = lp[k].top.iter().find(|t| t.0 == id).map(|t| t.2);
            match have {
                Some(v) => assert!(
                    (v - want).abs() < 0.05,
                    "{name}: step {k} token {id}: {v} vs {want}"
                ),
                // Outside kiln's top-5: only acceptable for a near-tie at the 5th place.
                None => assert!(
                    (lp[k].top[4].2 - want).abs() < 0.05,
                    "{name}: step {k}: token {id} ({want}) missing from kiln's top-5"
                ),
            }
        }
    }
}

fn check_perplexity(name: &str) {
    let a = anchor(name);
    let engine = engine(&model_path(a["file"].as_str().unwrap()));
    let text = std::fs::read_to_string(shared().join("data/ppl-text.txt")).unwrap();
    let tokens = engine.tokenize(&text).unwrap();
    let bos = if engine.tokenizer.adds_bos() {
        engine.tokenizer.bos_id()
    } else {
        None
    };
    let ctx = a["perplexity"]["ctx"].as_u64().unwrap() as usize;
    let r = perplexity(engine.model.as_ref(), &tokens, ctx, bos, |_, _, _| {}).unwrap();
    let want = a["perplexity"]["ppl"].as_f64().unwrap();
    let rel = (r.ppl - want).abs() / want;
    assert!(
        rel < 0.01,
        "{name}: perplexity {:.4} vs llama.cpp {want} ({:.2}% off)",
        r.ppl,
        rel * 100.0
    );
}

#[test]
fn gemma3_270m_greedy_matches_llama_cpp() {
    check_greedy_and_logprobs("gemma3-270m");
}

#[test]
fn qwen2_5_coder_0_5b_greedy_matches_llama_cpp() {
    check_greedy_and_logprobs("qwen2.5-coder-0.5b");
}

#[test]
fn gemma3_270m_perplexity_within_1_percent_of_llama_cpp() {
    check_perplexity("gemma3-270m");
}

#[test]
fn qwen2_5_coder_0_5b_perplexity_within_1_percent_of_llama_cpp() {
    check_perplexity("qwen2.5-coder-0.5b");
}
