//! `-ngl N` (`EngineOptions::gpu_layers`): a model split between the CPU and the GPU as llama.cpp
//! splits it (the output layer first, then blocks from the last), and the fit check that
//! refuses, or under `auto` shrinks, a placement the device cannot hold.
//!
//! Every split of the transformers fixtures (N = 0, the output layer alone, some blocks, all)
//! matches the goldens (logits, echoed prompt logprobs within 1e-3, greedy ids) and the full
//! offload; each layer's KV cache lives where the layer runs; a real quantised model's greedy
//! 32 tokens split agree with the full offload. On CI the adapter is Mesa's lavapipe; without
//! an adapter each test prints one line and skips.

mod common;

use common::*;
use kiln_engine::{DeviceChoice, Engine, EngineOptions, GenerateParams, GpuLayers};
use kiln_gpu::plan::Needs;

const GPU_TOL: f32 = 1e-3;

fn opts(layers: GpuLayers) -> EngineOptions {
    EngineOptions {
        threads: 2,
        device: DeviceChoice::Gpu(None),
        gpu_layers: layers,
        ..Default::default()
    }
}

/// Whether this machine has an adapter (says so in one line when it has none).
fn have_gpu(test: &str) -> bool {
    let all = kiln_gpu::context::list_adapters();
    if all.is_empty() {
        eprintln!("{test}: skipped, no GPU adapter or driver");
    }
    !all.is_empty()
}

fn load(dir: &std::path::Path, o: &EngineOptions) -> Engine {
    Engine::load(dir, o).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// Prompt logprobs (echo) and greedy ids of every golden prompt.
fn echo(engine: &Engine, golden: &serde_json::Value) -> Vec<(Vec<u32>, Vec<f32>)> {
    let params = GenerateParams {
        max_tokens: 8,
        echo: true,
        logprobs: Some(1),
        ignore_eos: true,
        ..Default::default()
    };
    golden["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let ids = ids(&p["input_ids"]);
            let c = engine
                .generate(std::slice::from_ref(&ids), &params, &mut |_, _| {})
                .unwrap()
                .remove(0);
            let mut lp: Vec<f32> = c.prompt_logprobs.unwrap()[1..]
                .iter()
                .map(|t| t.logprob.unwrap())
                .collect();
            lp.extend(c.logprobs.unwrap().iter().map(|t| t.logprob.unwrap()));
            (c.token_ids, lp)
        })
        .collect()
}

fn check_splits(dir: &std::path::Path, golden: &std::path::Path, test: &str) {
    if !have_gpu(test) {
        return;
    }
    let golden = load_json(golden);
    let full = load(dir, &opts(GpuLayers::All));
    let n_layers = full.model.config().n_layers;
    assert_eq!(full.gpu.as_ref().unwrap().gpu_layers, n_layers + 1);
    let want = echo(&full, &golden);
    for n in 0..=n_layers + 1 {
        let e = load(dir, &opts(GpuLayers::Count(n)));
        let what = format!("{test} -ngl {n}");
        match n {
            0 => {
                assert_eq!(e.device, "device: cpu (-ngl 0)", "{what}");
                assert!(e.gpu.is_none());
            }
            _ => {
                let g = e.gpu.as_ref().unwrap();
                assert_eq!((g.gpu_layers, g.layers), (n, n_layers + 1), "{what}");
                assert!(e.device.starts_with("device: gpu"), "{what}: {}", e.device);
                if n <= n_layers {
                    let cpu = n_layers + 1 - n;
                    assert!(
                        e.device.contains(&format!(
                            "for {n} of {} layers, {cpu} blocks on the CPU",
                            n_layers + 1
                        )),
                        "{what}: {}",
                        e.device
                    );
                }
                check_cache_placement(&e, n);
            }
        }
        // The goldens: logits, echoed prompt logprobs and greedy ids (batched too).
        check_against_golden_within(&e, &golden, false, GPU_TOL);
        // And the full offload, step by step.
        for (i, ((ids, lp), (want_ids, want_lp))) in echo(&e, &golden).iter().zip(&want).enumerate()
        {
            assert_eq!(ids, want_ids, "{what} prompt {i}: greedy ids");
            for (k, (a, b)) in lp.iter().zip(want_lp).enumerate() {
                assert!(
                    (a - b).abs() < GPU_TOL,
                    "{what} prompt {i} step {k}: {a} vs {b}"
                );
            }
        }
    }
}

/// A split cache holds the CPU's blocks on the host and the GPU's on the device: its device
/// bytes are exactly the offloaded blocks' keys and values.
fn check_cache_placement(e: &Engine, gpu_layers: usize) {
    let c = e.model.config();
    let cap = 40;
    let cache = e.model.new_cache(cap);
    let per_block = 2 * c.n_kv_heads * c.head_dim * cap * e.model.kv_type().size();
    let gpu_blocks = c.n_layers - kiln_gpu::split::cpu_blocks(c.n_layers, gpu_layers);
    assert_eq!(kiln_gpu::device_cache_bytes(&cache), gpu_blocks * per_block);
    assert_eq!(cache.memory_bytes(), c.n_layers * per_block);
}

#[test]
fn gpu_splits_of_llama_mha_match_the_full_offload() {
    let d = test_data();
    check_splits(
        &d.join("fixtures/llama-mha"),
        &d.join("fixtures/golden/llama-mha.json"),
        "gpu split llama-mha",
    );
}

#[test]
fn gpu_splits_of_qwen2_tiny_match_the_full_offload() {
    let d = test_data();
    check_splits(
        &d.join("fixtures/qwen2-tiny"),
        &d.join("fixtures/golden/qwen2-tiny.json"),
        "gpu split qwen2-tiny",
    );
}

/// Tied output (the GPU part uploads the embedding as its output matrix) and Mistral's sliding
/// window in F16 over three blocks.
#[test]
fn gpu_splits_of_synthetic_configs_match_the_full_offload() {
    for name in ["gqa-tied", "mistral-swa"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/synthetic")
            .join(name);
        check_splits(&dir, &dir.join("golden.json"), &format!("gpu split {name}"));
    }
}

/// The fit check: the device bytes the plan estimates are those the upload makes (weights),
/// a cap below the whole model is a clear error naming the `-ngl` that fits, `-ngl auto`
/// takes exactly that many and says why, a cap below the output layer leaves nothing, and
/// `-ngl` with `--device cpu` is refused.
#[test]
fn gpu_fit_check_refuses_or_shrinks_to_what_fits() {
    let test = "gpu fit check";
    let dir = test_data().join("fixtures/llama-mha");
    let err = Engine::load(
        &dir,
        &EngineOptions {
            device: DeviceChoice::Cpu,
            gpu_layers: GpuLayers::Count(3),
            ..Default::default()
        },
    )
    .err()
    .expect("-ngl with --device cpu");
    assert!(
        err.to_string()
            .contains("--device cpu runs every layer on the CPU"),
        "{err}"
    );
    if !have_gpu(test) {
        return;
    }
    let o = |layers, cap| EngineOptions {
        context: Some(128),
        gpu_memory: cap,
        ..opts(layers)
    };
    let full = load(&dir, &o(GpuLayers::All, None));
    let g = full.gpu.clone().unwrap();
    assert_eq!(g.positions, 128);
    // The estimate against the upload: the matrices exactly, plus the f32 vectors (norms).
    let loaded = kiln_formats::load(&dir).unwrap();
    let vectors: usize = loaded
        .tensors
        .values()
        .filter(|t| t.shape.len() == 1)
        .map(|t| t.n_elements() * 4)
        .sum();
    assert_eq!(g.planned.weights as usize, g.weight_bytes + vectors);
    let c = &loaded.config;
    assert_eq!(
        g.planned.kv as usize,
        c.n_layers * 2 * c.n_kv_heads * c.head_dim * 128 * full.model.kv_type().size()
    );
    let needs = Needs::of(
        &loaded,
        full.model.kv_type(),
        128,
        512 + EngineOptions::default().max_batch,
        u64::MAX,
    )
    .unwrap();
    let layers = needs.layers();
    assert_eq!(needs.usage(layers), g.planned);
    // A cap one byte short of two layers: one fits.
    let cap = needs.usage(2).total() - 1;
    assert!(needs.usage(1).total() <= cap);
    let err = Engine::load(&dir, &o(GpuLayers::All, Some(cap)))
        .err()
        .expect("does not fit");
    let msg = err.to_string();
    assert!(msg.contains("the model does not fit the GPU"), "{msg}");
    assert!(msg.contains(&format!("{layers} layers need")), "{msg}");
    assert!(msg.contains("-ngl 1 fits"), "{msg}");
    let err = Engine::load(&dir, &o(GpuLayers::Count(2), Some(cap)))
        .err()
        .unwrap();
    assert!(err.to_string().contains("2 layers need"), "{err}");
    let fit = load(&dir, &o(GpuLayers::Fit, Some(cap)));
    assert_eq!(fit.gpu.as_ref().unwrap().gpu_layers, 1);
    assert!(
        fit.device
            .contains(&format!("(1 of {layers} layers on the GPU (-ngl 1)")),
        "{}",
        fit.device
    );
    check_against_golden_within(
        &fit,
        &load_json(&test_data().join("fixtures/golden/llama-mha.json")),
        false,
        GPU_TOL,
    );
    // Nothing fits: `auto` layers run on the CPU and say why; `all` is an error.
    let none = load(&dir, &o(GpuLayers::Fit, Some(16)));
    assert!(none.gpu.is_none());
    assert!(
        none.device
            .starts_with("device: cpu (the model does not fit"),
        "{}",
        none.device
    );
    let err = Engine::load(&dir, &o(GpuLayers::All, Some(16)))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("not even the output layer fits"),
        "{err}"
    );
}

/// qwen2.5-coder-0.5b (Q4_K/Q6_K/Q5_0...) with 13 of its 25 layers on the GPU: greedy 32 tokens
/// as the full offload chooses them, or divergent only at a near-tie (the CPU's blocks round
/// activations to 8 bits before quantised products; the GPU's multiply them in f32).
#[test]
fn gpu_real_model_split_follows_the_full_offload() {
    let test = "gpu split real model";
    if !have_gpu(test) {
        return;
    }
    let path = real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let full = load(&path, &opts(GpuLayers::All));
    let split = load(&path, &opts(GpuLayers::Count(13)));
    assert!(
        split
            .device
            .contains("for 13 of 25 layers, 12 blocks on the CPU"),
        "{}",
        split.device
    );
    let prompt = full.tokenize("def fibonacci(n):").unwrap();
    let params = GenerateParams {
        max_tokens: 32,
        logprobs: Some(2),
        ignore_eos: true,
        ..Default::default()
    };
    let want = &full
        .generate(std::slice::from_ref(&prompt), &params, &mut |_, _| {})
        .unwrap()[0];
    let got = &split
        .generate(std::slice::from_ref(&prompt), &params, &mut |_, _| {})
        .unwrap()[0];
    let steps = want.logprobs.as_ref().unwrap();
    let mut max_diff = 0.0f32;
    for (k, (&g, &w)) in got.token_ids.iter().zip(&want.token_ids).enumerate() {
        if g != w {
            let top = &steps[k].top;
            let gap = top[0].2 - top[1].2;
            assert!(
                gap <= 0.1 && g == top[1].0,
                "step {k}: split chose {g}, full offload {w} (top-2 gap {gap:.3})"
            );
            eprintln!("{test}: diverged at step {k} at a near-tie (gap {gap:.3})");
            return;
        }
        let a = got.logprobs.as_ref().unwrap()[k].logprob.unwrap();
        let b = steps[k].logprob.unwrap();
        max_diff = max_diff.max((a - b).abs());
        assert!(
            (a - b).abs() < 0.25,
            "step {k}: logprob {a} vs full offload {b}"
        );
    }
    eprintln!(
        "{test}: 32 ids identical; chosen logprobs within {max_diff:.2e} of the full offload"
    );
    assert_eq!(got.token_ids.len(), 32);
}

/// Perplexity (llama-perplexity's chunks, every row's logits read back) on the GPU, whole and
/// split, equals the CPU's on the llama-mha fixture to f32 rounding.
#[test]
fn gpu_perplexity_matches_the_cpu() {
    let test = "gpu perplexity";
    if !have_gpu(test) {
        return;
    }
    let dir = test_data().join("fixtures/llama-mha");
    let text = std::fs::read_to_string(test_data().join("ppl-text.txt")).unwrap();
    let ppl = |e: &Engine| {
        let tokens = e.tokenize(&text).unwrap();
        let bos = e.tokenizer.bos_id().filter(|_| e.tokenizer.adds_bos());
        kiln_engine::perplexity::perplexity(
            e.model.as_ref(),
            &tokens[..1024],
            128,
            bos,
            |_, _, _| {},
        )
        .unwrap()
    };
    let want = ppl(&engine(&dir));
    for layers in [GpuLayers::All, GpuLayers::Count(2), GpuLayers::Count(1)] {
        let got = ppl(&load(&dir, &opts(layers)));
        assert_eq!(got.tokens_scored, want.tokens_scored);
        let rel = (got.ppl - want.ppl).abs() / want.ppl;
        assert!(
            rel < 1e-4,
            "-ngl {layers}: ppl {} vs CPU {} ({rel:.1e})",
            got.ppl,
            want.ppl
        );
        eprintln!(
            "{test} -ngl {layers}: {:.4} vs CPU {:.4} (relative {rel:.1e})",
            got.ppl, want.ppl
        );
    }
}
