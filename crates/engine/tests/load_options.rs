//! The load-time settings of `EngineOptions` (what the CLI's --isa, --cache-type, --numerics,
//! --mmap and --no-interleave set) reach the loader, the model and the kernels. Its own test
//! binary: the kernel level is process-wide.

use kiln_engine::{Engine, EngineOptions, Isa, KvType, Numerics, Residency};
use kiln_models::{Logits, SeqInput};

fn gemma3_270m() -> std::path::PathBuf {
    kiln_pull::resolve_model(Some("gemma3-270m"), true, &mut |_| {}).expect("gemma3-270m")
}

fn load(opts: EngineOptions) -> Engine {
    Engine::load(&gemma3_270m(), &EngineOptions { threads: 2, ..opts }).unwrap()
}

/// The logits after the prompt, as bit patterns.
fn last_logits(engine: &Engine) -> Vec<u32> {
    let tokens = engine
        .tokenize("Q: What is the largest animal?\nA:")
        .unwrap();
    let mut cache = engine.model.new_cache(tokens.len());
    let mut out = Vec::new();
    let mut batch = [SeqInput {
        tokens: &tokens,
        cache: &mut cache,
        logits: Logits::Last,
    }];
    engine.model.forward(&mut batch, &mut out).unwrap();
    out.iter().map(|x| x.to_bits()).collect()
}

fn argmax(logits: &[u32]) -> usize {
    (0..logits.len())
        .max_by(|&a, &b| f32::from_bits(logits[a]).total_cmp(&f32::from_bits(logits[b])))
        .unwrap()
}

#[test]
fn load_options_reach_the_loader_the_model_and_the_kernels() {
    // One engine at a time: each holds the whole model in memory.
    let want = {
        let base = load(EngineOptions::default());
        // A quantised model runs llama.cpp's numerics with an f16 cache unless told otherwise.
        assert_eq!(base.model.kv_type(), KvType::F16);
        last_logits(&base)
    };

    // Mapped weights in the file's order: slower, never different.
    let mapped = last_logits(&load(EngineOptions {
        residency: Some(Residency::Mapped),
        interleave: false,
        ..Default::default()
    }));
    assert!(mapped == want, "mapped/plain logits differ");

    let f32_cache = {
        let e = load(EngineOptions {
            kv_type: Some(KvType::F32),
            ..Default::default()
        });
        assert_eq!(e.model.kv_type(), KvType::F32);
        last_logits(&e)
    };
    // Another cache type rounds differently but predicts the same token.
    assert!(f32_cache != want && argmax(&f32_cache) == argmax(&want));

    // Exact numerics: transformers' f32 GELU, and an f32 cache by default.
    let exact = {
        let e = load(EngineOptions {
            numerics: Some(Numerics::Exact),
            ..Default::default()
        });
        assert_eq!(e.model.kv_type(), KvType::F32);
        last_logits(&e)
    };
    assert!(exact != f32_cache && argmax(&exact) == argmax(&want));

    // Last: the kernel level is process-wide.
    let scalar = last_logits(&load(EngineOptions {
        isa: Some(Isa::Scalar),
        ..Default::default()
    }));
    assert_eq!(Isa::best(), Isa::Scalar);
    assert!(argmax(&scalar) == argmax(&want));
}
