//! kiln against llama.cpp on the real GGUF models (tests/data/anchors): prompt ids, the greedy
//! 32-token continuation, first-token top-5 logprobs, and perplexity.
//!
//! The models are pulled on first use into `$KILN_HOME/models` (default ~/.cache/kiln/models).

mod common;

use common::*;
use kiln_engine::{perplexity::perplexity, GenerateParams};
use serde_json::Value;

fn anchor(name: &str) -> Value {
    load_json(&test_data().join("anchors/llama-cpp-0c1e57098.json"))["models"][name].clone()
}

fn check_greedy_and_logprobs(name: &str) {
    let a = anchor(name);
    let engine = engine(&real_model(a["file"].as_str().unwrap()));
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

    // How close logprobs can be. These small quantised models re-quantise their activations
    // to 8 bits before every matmul, so a last-bit difference anywhere (a summation order, an
    // exp) flips some 8-bit values and moves logprobs by hundredths to tenths. llama.cpp itself
    // moves that much: on one CPU the anchor commit's own alternatives (`--no-repack`, which only
    // changes the Q4_K kernels' summation order; `-fa off`) differ from its default by a mean
    // of 0.08 / 0.05 (gemma / qwen) over the top-5 of 24 prompts' first tokens, with a median
    // per-prompt maximum of 0.13 / 0.07; and the anchor (made on an AVX-512 machine) differs
    // from the same commit on an AVX2 machine by up to 0.10 / 0.09 at step 0. kiln reproduces
    // ggml's roundings where they are coarser than f32 (8-bit activation blocks, f16 KV cache,
    // f16 flash-attention accumulator, f16 GELU table), and is as far from llama.cpp as
    // llama.cpp's own alternatives are (mean 0.09 / 0.05 on the same 24 prompts); a per-value
    // bound of 0.05 at a single step would need ggml's exact float summation orders for the
    // anchor machine's instruction set. So means over every step where the greedy paths agree
    // are held tight, and single values loosely: the chosen tokens' logprobs (near 0, and
    // stable) within 0.05 on average, the runners-up (far down the tail, where the same noise
    // moves them most: llama.cpp on AVX2 is 0.12 / 0.07 from the anchor on average, kiln
    // 0.13-0.15 / 0.06 across its ISAs and cache types) within 0.2 on average, and the first
    // token's top-5 within 0.15 each.
    let lp = got.logprobs.as_ref().unwrap();
    for (rank, bound) in [(0, 0.05f32), (1, 0.2)] {
        let mut diffs = Vec::new();
        for (k, step) in top2.iter().enumerate().take(agreed) {
            let alt = &step[rank];
            let id = alt[0].as_u64().unwrap() as u32;
            let want = alt[1].as_f64().unwrap() as f32;
            if let Some(t) = lp[k].top.iter().find(|t| t.0 == id) {
                diffs.push((t.2 - want).abs());
            }
        }
        let mean = diffs.iter().sum::<f32>() / diffs.len().max(1) as f32;
        assert!(
            diffs.len() + 1 >= agreed && mean < bound,
            "{name}: mean |logprob - llama.cpp| of the rank-{rank} tokens over {} of {agreed} \
             steps is {mean:.4}",
            diffs.len()
        );
    }
    for (k, step) in a["first_tokens_top5_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .take(agreed.min(1))
    {
        let chosen = step["logprob"].as_f64().unwrap() as f32;
        let mine = lp[k].logprob.unwrap();
        assert!(
            (mine - chosen).abs() < 0.15,
            "{name}: step {k}: chosen token logprob {mine} vs llama.cpp {chosen}"
        );
        for alt in step["top"].as_array().unwrap() {
            let id = alt[0].as_u64().unwrap() as u32;
            let want = alt[2].as_f64().unwrap() as f32;
            match lp[k].top.iter().find(|t| t.0 == id).map(|t| t.2) {
                Some(v) => assert!(
                    (v - want).abs() < 0.15,
                    "{name}: step {k} token {id}: {v} vs {want}"
                ),
                // Outside kiln's top-5: only acceptable for a near-tie at the 5th place.
                None => assert!(
                    (lp[k].top[4].2 - want).abs() < 0.15,
                    "{name}: step {k}: token {id} ({want}) missing from kiln's top-5"
                ),
            }
        }
    }
}

fn check_perplexity(name: &str) {
    let a = anchor(name);
    let engine = engine(&real_model(a["file"].as_str().unwrap()));
    let text = std::fs::read_to_string(test_data().join("ppl-text.txt")).unwrap();
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
