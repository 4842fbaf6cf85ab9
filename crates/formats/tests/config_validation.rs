//! One validation of a model's configuration for every format (issue 20): zero sizes, heads
//! that do not divide, bad epsilons and rope bases, a zero context, token ids outside the
//! vocabulary, and ill-typed config.json fields are refused at load with the field named.

use std::path::{Path, PathBuf};

use kiln_formats::{gguf, MetaValue, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/fixtures")
        .join(name)
}

/// A copy of a fixture directory with `edit` applied to its config.json.
fn hf_with(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = fixture("llama-mha");
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    dir
}

fn load_err(path: &Path) -> String {
    match kiln_formats::load(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_fixture_itself_is_valid() {
    let m = kiln_formats::load(&fixture("llama-mha")).unwrap();
    m.config.validate().unwrap();
    let dir = hf_with(|_| {});
    kiln_formats::load(dir.path()).unwrap();
}

#[test]
fn bad_hf_configs_name_the_field() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "bos_token_id",
            999_999.into(),
            "bos_token_id 999999 is outside the vocabulary",
        ),
        (
            "eos_token_id",
            512.into(),
            "eos_token_id 512 is outside the vocabulary",
        ),
        ("hidden_act", 5.into(), "hidden_act must be a string"),
        (
            "rope_parameters",
            "yarn".into(),
            "rope_parameters must be an object",
        ),
        ("rms_norm_eps", (-1.0).into(), "rms_norm_eps = -1"),
        ("rms_norm_eps", 0.0.into(), "rms_norm_eps = 0"),
        (
            "max_position_embeddings",
            0.into(),
            "max_position_embeddings (context_length) is 0",
        ),
        (
            "intermediate_size",
            0.into(),
            "intermediate_size (feed_forward_length) is 0",
        ),
        ("num_hidden_layers", 0.into(), "n_layers (block_count) is 0"),
        ("vocab_size", 0.into(), "vocab_size is 0"),
        (
            "head_dim",
            0.into(),
            "head dimension 0 must be even and nonzero",
        ),
        ("num_key_value_heads", 3.into(), "cannot share 3 kv heads"),
    ];
    for (field, value, want) in cases {
        let dir = hf_with(|c| c[field] = value.clone());
        let e = load_err(dir.path());
        assert!(e.contains(want), "{field} = {value}: {e}");
    }
    // A rope base that is zero, negative or not a number (JSON has no NaN; a huge exponent
    // overflows f32 to infinity).
    for theta in [
        serde_json::json!(0.0),
        serde_json::json!(-10000.0),
        serde_json::json!(1e300),
    ] {
        let dir = hf_with(|c| c["rope_parameters"]["rope_theta"] = theta.clone());
        let e = load_err(dir.path());
        assert!(e.contains("rope_theta"), "rope_theta = {theta}: {e}");
    }
}

/// The llama-mha fixture as GGUF metadata and tensors.
fn gguf_parts() -> (
    Vec<(String, MetaValue)>,
    std::collections::BTreeMap<String, Tensor>,
) {
    let m = kiln_formats::load(&fixture("llama-mha")).unwrap();
    let (cfg, tensors) = gguf::gguf_tensors(&m.config, &m.tensors).unwrap();
    (gguf::metadata_from_config(&cfg).unwrap(), tensors)
}

fn write_gguf(
    meta: &[(String, MetaValue)],
    tensors: &std::collections::BTreeMap<String, Tensor>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    gguf::write(
        &dir.path().join("m.gguf"),
        meta.iter().map(|(k, v)| (k.as_str(), v)),
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
    )
    .unwrap();
    dir
}

fn set(meta: &mut [(String, MetaValue)], key: &str, v: MetaValue) {
    let slot = meta
        .iter_mut()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key}"));
    slot.1 = v;
}

#[test]
fn a_gguf_with_zero_ffn_and_zero_size_tensors_is_refused() {
    // Before: this passed validation (the tensors match a zero ffn) and then panicked with
    // `chunk size must be non-zero` in the forward pass.
    let (mut meta, mut tensors) = gguf_parts();
    set(&mut meta, "llama.feed_forward_length", MetaValue::U32(0));
    for (name, t) in tensors.iter_mut() {
        if name.contains("ffn_gate") || name.contains("ffn_up") {
            *t = Tensor::from_f32(vec![0, 64], &[]).unwrap();
        } else if name.contains("ffn_down") {
            *t = Tensor::from_f32(vec![64, 0], &[]).unwrap();
        }
    }
    let dir = write_gguf(&meta, &tensors);
    let e = load_err(&dir.path().join("m.gguf"));
    assert!(
        e.contains("intermediate_size (feed_forward_length) is 0"),
        "{e}"
    );
}

#[test]
fn bad_gguf_metadata_names_the_field() {
    let cases = [
        (
            "llama.context_length",
            MetaValue::U32(0),
            "context_length) is 0",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(f32::NAN),
            "rms_norm_eps = NaN",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(-1e-5),
            "rms_norm_eps = -0.00001",
        ),
        (
            "llama.rope.freq_base",
            MetaValue::F32(f32::NAN),
            "rope_theta = NaN",
        ),
        (
            "llama.rope.freq_base",
            MetaValue::F32(0.0),
            "rope_theta = 0",
        ),
    ];
    for (key, v, want) in cases {
        let (mut meta, tensors) = gguf_parts();
        set(&mut meta, key, v.clone());
        let dir = write_gguf(&meta, &tensors);
        let e = load_err(&dir.path().join("m.gguf"));
        assert!(e.contains(want), "{key} = {v:?}: {e}");
    }
}
