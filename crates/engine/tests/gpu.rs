//! The GPU backend (`--device gpu`) through the engine, against the same references as the CPU
//! path: every transformers fixture that the GPU runs (Llama, Qwen2, GQA with tied embeddings,
//! Llama 3 rope scaling, Mistral's sliding window in F16) with logits and prompt logprobs
//! within 1e-3 and identical greedy ids, batches, and a real quantised model's greedy 32 tokens
//! against the CPU path. On CI the adapter is Mesa's lavapipe (software Vulkan); a machine
//! without any adapter prints one line per test and skips.

mod common;

use common::*;
use kiln_engine::{DeviceChoice, Engine, EngineOptions, GenerateParams};
use kiln_models::{Logits, SeqInput};

const GPU_TOL: f32 = 1e-3;

/// The engine on `--device gpu`, or `None` (after saying so) without an adapter.
fn gpu_engine(dir: &std::path::Path, test: &str) -> Option<Engine> {
    let e = Engine::load(
        dir,
        &EngineOptions {
            threads: 2,
            device: DeviceChoice::Gpu(None),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("loading {} on the GPU: {e}", dir.display()));
    if !e.device.starts_with("device: gpu") {
        eprintln!("{test}: skipped, no GPU adapter ({})", e.device);
        return None;
    }
    Some(e)
}

/// Every transformers fixture in the repository, found by listing its folders (so a fixture
/// added later is checked here too): the first set (tests/data/fixtures), the architectures
/// (tests/data/fixtures/arch: Llama 3.2, Qwen3, Gemma 2, OLMo 2, Phi-3 with LongRoPE, Qwen2 with
/// YaRN, Mixtral, Qwen3-MoE), their GGUF files written by llama.cpp's converter, and the
/// synthetic configurations (GQA + tied, Llama 3 rope, Mistral's window in F16, Gemma 3 in
/// BF16), each through `--device gpu` against its golden. Failures are collected and reported
/// together, by fixture.
#[test]
fn gpu_every_fixture_matches_transformers() {
    let d = test_data();
    let synthetic = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/synthetic");
    // (name, model path, golden, whether the golden's text tokenizes to its ids here)
    let mut cases: Vec<(String, std::path::PathBuf, std::path::PathBuf, bool)> = Vec::new();
    let dirs = |root: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(root)
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let name = |p: &std::path::Path| p.file_stem().unwrap().to_string_lossy().into_owned();
    for (root, golden_dir) in [
        (d.join("fixtures"), d.join("fixtures/golden")),
        (d.join("fixtures/arch"), d.join("fixtures/arch/golden")),
    ] {
        for dir in dirs(&root) {
            if dir.join("config.json").is_file() {
                let golden = golden_dir.join(format!("{}.json", name(&dir)));
                cases.push((name(&dir), dir, golden, true));
            }
        }
    }
    for file in dirs(&d.join("fixtures/arch/llama.cpp-gguf")) {
        let golden = d.join(format!("fixtures/arch/golden/{}.json", name(&file)));
        // kiln's reading of the SentencePiece vocabulary llama.cpp writes differs from
        // transformers' on a lone "▁" (see arch_fixtures.rs): ids come from the golden.
        cases.push((
            format!("llama.cpp-gguf/{}", name(&file)),
            file,
            golden,
            false,
        ));
    }
    for dir in dirs(&synthetic) {
        if dir.join("golden.json").is_file() {
            cases.push((
                format!("synthetic/{}", name(&dir)),
                dir.clone(),
                dir.join("golden.json"),
                true,
            ));
        }
    }
    assert!(cases.len() >= 20, "found only {} fixtures", cases.len());
    let mut failed = Vec::new();
    for (name, model, golden, tokenize) in &cases {
        assert!(
            golden.is_file(),
            "{name}: no golden at {}",
            golden.display()
        );
        let Some(engine) = gpu_engine(model, &format!("gpu {name}")) else {
            return;
        };
        let golden = load_json(golden);
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_against_golden_within(&engine, &golden, *tokenize, GPU_TOL);
            check_batch_independence(&engine, &golden);
        }));
        match run {
            Ok(()) => eprintln!("gpu {name}: matches its golden"),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failed.push(format!("{name}: {msg}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} fixtures failed on the GPU:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

/// Continuous batching's common case: a decoding sequence's next-token logits are the same bit
/// for bit whether it steps alone or beside another request's 20-token prefill (which takes the
/// tiled matrix kernel while the decoding row keeps the matrix-vector one), on a dense model and
/// a mixture of experts.
#[test]
fn gpu_decoding_beside_a_prefill_is_bit_identical_to_decoding_alone() {
    for model in ["llama32-tiny", "qwen3moe-tiny"] {
        let dir = test_data().join("fixtures/arch").join(model);
        let Some(engine) = gpu_engine(&dir, &format!("gpu decode beside prefill {model}")) else {
            return;
        };
        let m = &engine.model;
        let vocab = m.config().vocab_size as u32;
        let prompt: Vec<u32> = (0..7).map(|i| (i * 37 + 5) % vocab).collect();
        let other: Vec<u32> = (0..20).map(|i| (i * 53 + 11) % vocab).collect();
        let next = [(prompt[3] + 1) % vocab];
        let step = |with_other: bool| -> Vec<f32> {
            let mut cache = m.new_cache(16);
            let mut out = Vec::new();
            m.forward(
                &mut [SeqInput {
                    tokens: &prompt,
                    cache: &mut cache,
                    logits: Logits::None,
                }],
                &mut out,
            )
            .unwrap();
            let mut other_cache = m.new_cache(32);
            let mut batch = vec![SeqInput {
                tokens: &next,
                cache: &mut cache,
                logits: Logits::Last,
            }];
            if with_other {
                batch.push(SeqInput {
                    tokens: &other,
                    cache: &mut other_cache,
                    logits: Logits::Last,
                });
            }
            m.forward(&mut batch, &mut out).unwrap();
            out.truncate(vocab as usize);
            out
        };
        let (alone, beside) = (step(false), step(true));
        assert!(
            alone
                .iter()
                .zip(&beside)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{model}: a prefilling batch-mate changed the decoding row's logits"
        );
    }
}

/// Rope scaling past the original context, where the fixtures' goldens do not reach: 160
/// positions of Phi-3's LongRoPE (the long factors from position 128 on), Qwen2's YaRN (factor 4
/// over 64) and Llama 3.2's frequency ramp, every position's logits within 1e-3 of the CPU path.
#[test]
fn gpu_rope_scaling_past_the_original_context_follows_the_cpu() {
    for model in ["phi3-tiny", "qwen2-yarn-tiny", "llama32-tiny"] {
        let dir = test_data().join("fixtures/arch").join(model);
        let Some(gpu) = gpu_engine(&dir, &format!("gpu long rope {model}")) else {
            return;
        };
        let cpu = engine(&dir);
        let vocab = cpu.model.config().vocab_size as u32;
        let tokens: Vec<u32> = (0..160).map(|i| (i * 31 + 7) % vocab).collect();
        let (want, got) = (all_logits(&cpu, &tokens), all_logits(&gpu, &tokens));
        for (pos, (w, g)) in want.iter().zip(&got).enumerate() {
            let d = w
                .iter()
                .zip(g)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(d < GPU_TOL, "{model} position {pos}: logits differ by {d}");
        }
    }
}

/// `auto` keeps a CPU adapter (lavapipe) off and an architecture the GPU does not run on the
/// CPU; `cpu` never opens a device; an adapter index past the list is a clear error.
#[test]
fn device_choice_falls_back_to_the_cpu_and_rejects_unknown_adapters() {
    let dir = test_data().join("fixtures/llama-mha");
    let load = |device| {
        Engine::load(
            &dir,
            &EngineOptions {
                threads: 1,
                device,
                ..Default::default()
            },
        )
    };
    assert_eq!(load(DeviceChoice::Cpu).unwrap().device, "device: cpu");
    let auto = load(DeviceChoice::Auto).unwrap();
    let adapters = kiln_gpu::context::list_adapters();
    if !adapters.iter().any(|a| a.kind == "discrete") {
        assert!(auto.device.starts_with("device: cpu ("), "{}", auto.device);
    }
    let err = load(DeviceChoice::Gpu(Some(adapters.len())))
        .err()
        .expect("no such adapter");
    assert!(err.to_string().contains("no such adapter"), "{err}");
    assert_eq!(
        "gpu:1".parse::<DeviceChoice>(),
        Ok(DeviceChoice::Gpu(Some(1)))
    );
    assert!("tpu".parse::<DeviceChoice>().is_err());
    assert!("gpu:x".parse::<DeviceChoice>().is_err());
}

/// A real quantised model on the GPU: greedy 32 tokens as the CPU path chooses them, or
/// divergent only where the CPU's two best logprobs were within 0.1 and the GPU took the second
/// (its matrix kernels multiply f32 activations; the CPU's round them to 8 bits).
fn real_model_greedy_32_follows_the_cpu_path(file: &str, prompt: &str, test: &str) {
    let path = real_model(file);
    let Some(gpu) = gpu_engine(&path, test) else {
        return;
    };
    let cpu = engine(&path);
    let prompt = cpu.tokenize(prompt).unwrap();
    let params = GenerateParams {
        max_tokens: 32,
        logprobs: Some(2),
        ignore_eos: true,
        ..Default::default()
    };
    let want = &cpu
        .generate(std::slice::from_ref(&prompt), &params, &mut |_, _| {})
        .unwrap()[0];
    let got = &gpu
        .generate(std::slice::from_ref(&prompt), &params, &mut |_, _| {})
        .unwrap()[0];
    let steps = want.logprobs.as_ref().unwrap();
    for (k, (&g, &w)) in got.token_ids.iter().zip(&want.token_ids).enumerate() {
        if g != w {
            let top = &steps[k].top;
            let gap = top[0].2 - top[1].2;
            assert!(
                gap <= 0.1 && g == top[1].0,
                "{test}: step {k}: GPU chose {g}, CPU {w} (CPU top-2 gap {gap:.3})"
            );
            eprintln!("{test}: diverged at step {k} at a near-tie (gap {gap:.3})");
            return;
        }
        let a = got.logprobs.as_ref().unwrap()[k].logprob.unwrap();
        let b = steps[k].logprob.unwrap();
        assert!(
            (a - b).abs() < 0.25,
            "{test}: step {k}: logprob {a} vs CPU {b}"
        );
    }
    assert_eq!(got.token_ids.len(), 32);
    eprintln!("{test}: 32 greedy tokens identical to the CPU path");
}

/// qwen2.5-coder-0.5b (Q4_K/Q6_K/Q5_0...): the Qwen2 block.
#[test]
fn gpu_real_model_greedy_32_follows_the_cpu_path() {
    real_model_greedy_32_follows_the_cpu_path(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "def fibonacci(n):",
        "gpu qwen2.5-coder-0.5b",
    );
}

/// gemma3-270m, the default model (Q4_K_M; Q8_0 and Q6_K too): q/k norms, post-norms, GELU
/// through ggml's table, local and global layers with their own rope bases, scaled embeddings.
#[test]
fn gpu_gemma3_270m_greedy_32_follows_the_cpu_path() {
    real_model_greedy_32_follows_the_cpu_path(
        "gemma-3-270m-q4_k_m.gguf",
        "Q: What is the largest animal?\nA:",
        "gpu gemma3-270m",
    );
}
