//! The newer architectures' configurations and expert tensors: bad input is a clear error
//! naming what is wrong, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_formats::{hf, Arch, RopeScaling, Tensor};

fn arch_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/fixtures/arch")
        .join(name)
}

/// A copy of an arch fixture with `edit` applied to its config.json and `tensors` to its
/// tensors.
fn edited(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
    tensors: impl FnOnce(&mut BTreeMap<String, Tensor>),
) -> tempfile::TempDir {
    let src = arch_fixture(name);
    let dir = tempfile::tempdir().unwrap();
    for f in ["generation_config.json", "tokenizer.model"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let mut t = hf::read_safetensors(&src.join("model.safetensors")).unwrap();
    tensors(&mut t);
    hf::write_safetensors(
        &dir.path().join("model.safetensors"),
        t.iter().map(|(k, v)| (k.as_str(), v)),
        None,
    )
    .unwrap();
    dir
}

fn load_err(path: &Path) -> String {
    match kiln_formats::load(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn arch_fixtures_load_with_their_features() {
    let m = kiln_formats::load(&arch_fixture("mixtral-tiny")).unwrap();
    assert_eq!(m.config.arch, Arch::Mixtral);
    let moe = m.config.moe.as_ref().unwrap();
    assert_eq!((moe.n_experts, moe.n_used, moe.expert_ffn), (4, 2, 96));
    assert_eq!(m.tensors["blk.1.ffn_down_exps.weight"].shape, [4, 64, 96]);
    let m = kiln_formats::load(&arch_fixture("qwen3moe-tiny")).unwrap();
    let moe = m.config.moe.as_ref().unwrap();
    assert_eq!(
        (moe.n_experts, moe.expert_ffn, moe.norm_topk),
        (4, 48, true)
    );
    let m = kiln_formats::load(&arch_fixture("phi3-tiny")).unwrap();
    assert_eq!(m.tensors["blk.0.attn_qkv.weight"].shape, [64 + 2 * 32, 64]);
    assert_eq!(m.tensors["blk.0.ffn_up.weight"].shape, [2 * 176, 64]);
    match &m.config.rope_scaling {
        Some(RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            ..
        }) => {
            assert_eq!(*original_max_position_embeddings, 128);
            let want = (1.0f32 + 2f32.ln() / 128f32.ln()).sqrt();
            assert!((attention_factor - want).abs() < 1e-6);
        }
        other => panic!("phi3 rope scaling {other:?}"),
    }
    let m = kiln_formats::load(&arch_fixture("gemma2-tiny")).unwrap();
    assert_eq!(m.config.sliding_layers, [true, false, true, false]);
    assert_eq!(m.config.attn_logit_softcapping, Some(3.0));
}

#[test]
fn bad_expert_configs_and_tensors_are_clear_errors() {
    let d = edited(
        "mixtral-tiny",
        |c| c["num_experts_per_tok"] = 5.into(),
        |_| {},
    );
    let e = load_err(d.path());
    assert!(e.contains("4 experts, 5 used"), "{e}");

    let d = edited(
        "mixtral-tiny",
        |_| {},
        |t| {
            t.remove("model.layers.1.block_sparse_moe.experts.2.w3.weight");
        },
    );
    let e = load_err(d.path());
    assert!(
        e.contains("layer 1") && e.contains("experts [0, 1, 3]"),
        "{e}"
    );

    let d = edited(
        "mixtral-tiny",
        |_| {},
        |t| {
            let w = t["model.layers.0.block_sparse_moe.experts.0.w1.weight"].clone();
            t.insert(
                "model.layers.0.block_sparse_moe.experts.0.w9.weight".into(),
                w,
            );
        },
    );
    let e = load_err(d.path());
    assert!(e.contains("unknown expert tensor"), "{e}");

    let d = edited(
        "qwen3moe-tiny",
        |c| c["mlp_only_layers"] = serde_json::json!([1]),
        |_| {},
    );
    let e = load_err(d.path());
    assert!(e.contains("dense layers"), "{e}");

    let d = edited(
        "phi3-tiny",
        |c| c["rope_parameters"]["short_factor"] = serde_json::json!([1.0, 2.0]),
        |_| {},
    );
    let e = load_err(d.path());
    assert!(e.contains("short_factor has 2 values"), "{e}");
}

/// GGUF keys llama.cpp gives defaults: Gemma 2 without a window or soft-cap keys gets 4096,
/// 50 and 30; a phi3 window is read but not used (llama.cpp's Phi SWA is disabled).
#[test]
fn gguf_defaults_follow_llama_cpp() {
    use kiln_formats::{gguf, MetaValue};
    let read = |model: &str, drop: &[&str], add: Vec<(String, MetaValue)>| {
        let m = kiln_formats::load(&arch_fixture(model)).unwrap();
        let (cfg, tensors) = gguf::gguf_tensors(&m.config, &m.tensors).unwrap();
        let mut meta = gguf::metadata_from_config(&cfg).unwrap();
        meta.retain(|(k, _)| !drop.iter().any(|d| k.ends_with(d)));
        meta.extend(add);
        let bytes = gguf::to_bytes(
            meta.iter().map(|(k, v)| (k.as_str(), v)),
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
        )
        .unwrap();
        let f = gguf::GgufFile::parse(kiln_kernels::Storage::from_vec(bytes)).unwrap();
        gguf::config_from_gguf(&f, &f.tensor_map().unwrap()).unwrap()
    };
    let c = read(
        "gemma2-tiny",
        &[
            "sliding_window",
            "attn_logit_softcapping",
            "final_logit_softcapping",
        ],
        vec![],
    );
    assert_eq!(c.sliding_window, Some(4096));
    assert_eq!(c.attn_logit_softcapping, Some(50.0));
    assert_eq!(c.final_logit_softcapping, Some(30.0));
    let c = read(
        "phi3-tiny",
        &[],
        vec![("phi3.attention.sliding_window".into(), MetaValue::U32(2047))],
    );
    assert_eq!(c.sliding_window, None);
}
