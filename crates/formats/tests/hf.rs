//! Hugging Face directories: the fixtures in tests/data (transformers 5.24 outputs, see
//! tests/data/fixtures/README.md), Gemma 3 configs as transformers reads them
//! (tests/data/gen_hf_configs.py), shards, writers and hostile inputs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kiln_formats::hf::{self, config_from_json};
use kiln_formats::{load, Arch, ModelConfig, RopeScaling, TokenizerSource};
use kiln_kernels::ops::RopeStyle;
use kiln_kernels::{DType, Storage, Tensor};
use safetensors::SafeTensors;
use serde_json::{json, Value};

fn test_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

fn fixture(name: &str) -> PathBuf {
    test_data().join("fixtures").join(name)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A copy of a fixture directory with another config.json.
fn with_config(src: &Path, config: &Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
        }
    }
    std::fs::copy(config, d.path().join("config.json")).unwrap();
    d
}

/// The stored tensors read with the safetensors crate directly: (dtype, shape, bytes).
fn reference_tensors(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                (
                    format!("{:?}", v.dtype()),
                    v.shape().to_vec(),
                    v.data().to_vec(),
                ),
            )
        })
        .collect()
}

fn canonical_of(hf_name: &str) -> String {
    // Written out independently of the crate's mapping, from the table in the task description.
    if hf_name == "model.embed_tokens.weight" {
        return "token_embd.weight".into();
    }
    if hf_name == "model.norm.weight" {
        return "output_norm.weight".into();
    }
    if hf_name == "lm_head.weight" {
        return "output.weight".into();
    }
    let parts: Vec<&str> = hf_name.split('.').collect();
    let (layer, module, suffix) = (
        parts[2],
        parts[3..parts.len() - 1].join("."),
        parts[parts.len() - 1],
    );
    let canon = match module.as_str() {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        other => panic!("{other}"),
    };
    format!("blk.{layer}.{canon}.{suffix}")
}

fn check_tensors_against_reference(dir: &Path, m: &kiln_formats::LoadedModel, tied: bool) {
    let reference = reference_tensors(&dir.join("model.safetensors"));
    let mut n = 0;
    for (hf_name, (dtype, shape, bytes)) in &reference {
        let canon = canonical_of(hf_name);
        if tied && canon == "output.weight" {
            continue;
        }
        let t = m
            .tensors
            .get(&canon)
            .unwrap_or_else(|| panic!("{canon} missing"));
        assert_eq!(dtype, "F32");
        assert_eq!(t.dtype, DType::F32);
        assert_eq!(&t.shape, shape, "{canon}");
        assert!(t.data.bytes() == bytes.as_slice(), "{canon} bytes differ");
        n += 1;
    }
    assert_eq!(m.tensors.len(), n);
}

#[test]
fn llama_mha_fixture() {
    let dir = fixture("llama-mha");
    let m = load(&dir).unwrap();
    let c = &m.config;
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(c.vocab_size, 512);
    assert_eq!(c.hidden_size, 64);
    assert_eq!(c.intermediate_size, 176);
    assert_eq!(c.n_layers, 2);
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (4, 4, 16));
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.rope_local_theta, None);
    assert_eq!(c.rope_scaling, None);
    assert_eq!(c.rope_style, RopeStyle::Half);
    assert_eq!(c.max_position_embeddings, 256);
    assert_eq!(c.sliding_window, None);
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.query_pre_attn_scalar, None);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, vec![2]);
    assert_eq!(m.tensors.len(), 21);
    assert_eq!(m.tensors["blk.1.attn_output.weight"].shape, vec![64, 64]);
    assert_eq!(m.tensors["blk.0.ffn_down.weight"].shape, vec![64, 176]);
    assert_eq!(m.tensors["output.weight"].shape, vec![512, 64]);
    check_tensors_against_reference(&dir, &m, false);
    assert!(matches!(&m.tokenizer, TokenizerSource::HfJson(p) if p.ends_with("tokenizer.json")));
    assert_eq!(m.chat_template, None);
    assert_eq!(m.format, "Hugging Face safetensors");
    assert_eq!(
        m.metadata["rope_parameters.rope_theta"].as_f64(),
        Some(10000.0)
    );
    assert_eq!(
        m.metadata["generation_config.eos_token_id"].as_u64(),
        Some(2)
    );
    assert_eq!(
        c.n_params(),
        m.tensors.values().map(|t| t.n_elements()).sum::<usize>()
    );
    // The golden file's record of the same config.
    let golden = read_json(&fixture("golden/llama-mha.json"));
    assert_eq!(
        golden["config"]["intermediate_size"].as_u64(),
        Some(c.intermediate_size as u64)
    );
}

#[test]
fn qwen2_tiny_fixture() {
    let dir = fixture("qwen2-tiny");
    let m = load(&dir).unwrap();
    let c = &m.config;
    assert_eq!(c.arch, Arch::Qwen2);
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.intermediate_size, c.n_layers),
        (512, 64, 176, 2)
    );
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (4, 2, 16));
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(c.rope_style, RopeStyle::Half);
    assert_eq!(c.sliding_window, None);
    assert!(c.sliding_layers.is_empty());
    assert!(c.tie_word_embeddings);
    assert!(!m.tensors.contains_key("output.weight"));
    assert_eq!(c.bos_token_id, Some(510));
    assert_eq!(c.eos_token_ids, vec![511]);
    assert_eq!(m.tensors.len(), 26);
    assert_eq!(m.tensors["blk.0.attn_k.bias"].shape, vec![32]);
    assert_eq!(m.tensors["blk.1.attn_q.bias"].shape, vec![64]);
    assert!(!m.tensors.contains_key("blk.0.attn_output.bias"));
    check_tensors_against_reference(&dir, &m, true);
    assert_eq!(
        c.n_params(),
        m.tensors.values().map(|t| t.n_elements()).sum::<usize>()
    );
}

#[test]
fn legacy_configs_give_identical_model_config() {
    for name in ["llama-mha", "qwen2-tiny"] {
        let dir = fixture(name);
        let legacy = fixture(&format!("legacy-configs/{name}.config.json"));
        let new = load(&dir).unwrap();
        let tmp = with_config(&dir, &legacy);
        let old = load(tmp.path()).unwrap();
        assert_eq!(new.config, old.config, "{name}");
        assert_eq!(
            new.tensors.keys().collect::<Vec<_>>(),
            old.tensors.keys().collect::<Vec<_>>()
        );
        // And without generation_config.json (ids then come from config.json).
        let gen = read_json(&dir.join("generation_config.json"));
        let a = config_from_json(&read_json(&legacy), None).unwrap();
        let b = config_from_json(&read_json(&dir.join("config.json")), Some(&gen)).unwrap();
        assert_eq!(a, b, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Gemma 3

fn gemma_expected() -> Value {
    read_json(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/hf-configs/expected.json"),
    )
}

fn gemma_config(name: &str) -> Value {
    read_json(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/data/hf-configs/{name}.config.json")),
    )
}

fn check_gemma_config(c: &ModelConfig, e: &Value, name: &str) {
    let u = |k: &str| e[k].as_u64().unwrap() as usize;
    assert_eq!(c.arch, Arch::Gemma3);
    assert_eq!(c.vocab_size, u("vocab_size"), "{name}");
    assert_eq!(c.hidden_size, u("hidden_size"), "{name}");
    assert_eq!(c.intermediate_size, u("intermediate_size"), "{name}");
    assert_eq!(c.n_layers, u("num_hidden_layers"), "{name}");
    assert_eq!(c.n_heads, u("num_attention_heads"), "{name}");
    assert_eq!(c.n_kv_heads, u("num_key_value_heads"), "{name}");
    assert_eq!(c.head_dim, u("head_dim"), "{name}");
    assert_eq!(
        c.max_position_embeddings,
        u("max_position_embeddings"),
        "{name}"
    );
    assert_eq!(
        c.rms_norm_eps as f64,
        e["rms_norm_eps"].as_f64().unwrap() as f32 as f64,
        "{name}"
    );
    assert_eq!(c.sliding_window, Some(u("sliding_window")), "{name}");
    let sliding: Vec<bool> = e["layer_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t == "sliding_attention")
        .collect();
    assert_eq!(c.sliding_layers, sliding, "{name}");
    assert_eq!(
        c.query_pre_attn_scalar,
        Some(e["query_pre_attn_scalar"].as_f64().unwrap() as f32),
        "{name}"
    );
    let rp = &e["rope_parameters"];
    assert_eq!(
        c.rope_theta as f64,
        rp["full_attention"]["rope_theta"].as_f64().unwrap(),
        "{name}"
    );
    assert_eq!(
        c.rope_local_theta.map(|t| t as f64),
        rp["sliding_attention"]["rope_theta"].as_f64(),
        "{name}"
    );
    match rp["full_attention"]["rope_type"].as_str().unwrap() {
        "default" => assert_eq!(c.rope_scaling, None, "{name}"),
        "linear" => assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Linear {
                factor: rp["full_attention"]["factor"].as_f64().unwrap() as f32
            }),
            "{name}"
        ),
        other => panic!("{other}"),
    }
    assert_eq!(
        c.tie_word_embeddings,
        e["tie_word_embeddings"].as_bool().unwrap(),
        "{name}"
    );
    assert_eq!(
        c.bos_token_id.map(|b| b as u64),
        e["bos_token_id"].as_u64(),
        "{name}"
    );
    assert_eq!(c.final_logit_softcapping, None);
    assert_eq!(c.rope_style, RopeStyle::Half);
}

#[test]
fn gemma3_configs_as_transformers_reads_them() {
    let exp = gemma_expected();
    for name in [
        "gemma3-text-t5",
        "gemma3-multimodal-t5",
        "gemma3-text-legacy",
        "gemma3-multimodal-legacy",
    ] {
        let c = config_from_json(&gemma_config(name), None).unwrap();
        check_gemma_config(&c, &exp[name], name);
        if name != "gemma3-multimodal-legacy" {
            // (That file's eos list is top-level, for generation; its text config keeps the default.)
            let eos: Vec<u32> = exp[name]["eos_token_id"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(c.eos_token_ids, eos, "{name}");
        } else {
            assert_eq!(c.eos_token_ids, vec![1, 106]);
        }
    }
    // The two text-config forms are the same model.
    assert_eq!(
        config_from_json(&gemma_config("gemma3-text-t5"), None).unwrap(),
        config_from_json(&gemma_config("gemma3-text-legacy"), None).unwrap()
    );
}

fn bf16(v: f32) -> [u8; 2] {
    ((v.to_bits() >> 16) as u16).to_le_bytes()
}

fn bf16_tensor(shape: Vec<usize>, f: impl Fn(usize) -> f32) -> Tensor {
    let n: usize = shape.iter().product();
    let bytes: Vec<u8> = (0..n).flat_map(|i| bf16(f(i))).collect();
    Tensor::new(DType::BF16, shape, Storage::from_vec(bytes)).unwrap()
}

/// Writes a tiny Gemma 3 HF directory (config from `config_name`) and returns its stored tensors.
fn gemma_dir(dir: &Path, config_name: &str, prefix: &str) -> BTreeMap<String, Tensor> {
    let cfg = gemma_config(config_name);
    let text = cfg.get("text_config").unwrap_or(&cfg);
    let g = |k: &str| text[k].as_u64().unwrap() as usize;
    let (d, l, ff, h, kv, hd) = (
        g("hidden_size"),
        g("num_hidden_layers"),
        g("intermediate_size"),
        g("num_attention_heads"),
        g("num_key_value_heads"),
        g("head_dim"),
    );
    let vocab = text["vocab_size"].as_u64().unwrap() as usize;
    let mut t = BTreeMap::new();
    let frac = |i: usize| ((i % 17) as f32 - 8.0) / 16.0; // exact in bf16
    t.insert(
        format!("{prefix}model.embed_tokens.weight"),
        bf16_tensor(vec![vocab, d], frac),
    );
    t.insert(
        format!("{prefix}model.norm.weight"),
        bf16_tensor(vec![d], frac),
    );
    for i in 0..l {
        let p = format!("{prefix}model.layers.{i}.");
        for (n, shape) in [
            ("self_attn.q_proj.weight", vec![h * hd, d]),
            ("self_attn.k_proj.weight", vec![kv * hd, d]),
            ("self_attn.v_proj.weight", vec![kv * hd, d]),
            ("self_attn.o_proj.weight", vec![d, h * hd]),
            ("self_attn.q_norm.weight", vec![hd]),
            ("self_attn.k_norm.weight", vec![hd]),
            ("mlp.gate_proj.weight", vec![ff, d]),
            ("mlp.up_proj.weight", vec![ff, d]),
            ("mlp.down_proj.weight", vec![d, ff]),
            ("input_layernorm.weight", vec![d]),
            ("post_attention_layernorm.weight", vec![d]),
            ("pre_feedforward_layernorm.weight", vec![d]),
            ("post_feedforward_layernorm.weight", vec![d]),
        ] {
            t.insert(format!("{p}{n}"), bf16_tensor(shape, frac));
        }
    }
    if !prefix.is_empty() {
        t.insert(
            "vision_tower.vision_model.post_layernorm.weight".into(),
            bf16_tensor(vec![4], frac),
        );
        t.insert(
            "multi_modal_projector.mm_soft_emb_norm.weight".into(),
            bf16_tensor(vec![4], frac),
        );
    }
    hf::write_safetensors(
        &dir.join("model.safetensors"),
        t.iter().map(|(k, v)| (k.as_str(), v)),
        None,
    )
    .unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        fixture("llama-mha/tokenizer.model"),
        dir.join("tokenizer.model"),
    )
    .unwrap();
    t
}

#[test]
fn gemma3_directory_names_and_norms() {
    let exp = gemma_expected();
    for (config_name, prefix) in [
        ("gemma3-text-t5", ""),
        ("gemma3-text-legacy", "language_model."),
    ] {
        let d = tempfile::tempdir().unwrap();
        let stored = gemma_dir(d.path(), config_name, prefix);
        let m = load(d.path()).unwrap();
        check_gemma_config(&m.config, &exp[config_name], config_name);
        assert!(matches!(&m.tokenizer, TokenizerSource::TokenizerModel(_)));
        let p = |s: &str| format!("{prefix}{s}");
        let pairs = [
            (
                "model.layers.3.input_layernorm.weight",
                "blk.3.attn_norm.weight",
                true,
            ),
            (
                "model.layers.3.post_attention_layernorm.weight",
                "blk.3.post_attention_norm.weight",
                true,
            ),
            (
                "model.layers.3.pre_feedforward_layernorm.weight",
                "blk.3.ffn_norm.weight",
                true,
            ),
            (
                "model.layers.3.post_feedforward_layernorm.weight",
                "blk.3.post_ffw_norm.weight",
                true,
            ),
            (
                "model.layers.3.self_attn.q_norm.weight",
                "blk.3.attn_q_norm.weight",
                true,
            ),
            (
                "model.layers.3.self_attn.k_norm.weight",
                "blk.3.attn_k_norm.weight",
                true,
            ),
            ("model.norm.weight", "output_norm.weight", true),
            (
                "model.layers.3.self_attn.q_proj.weight",
                "blk.3.attn_q.weight",
                false,
            ),
            (
                "model.layers.7.mlp.down_proj.weight",
                "blk.7.ffn_down.weight",
                false,
            ),
            ("model.embed_tokens.weight", "token_embd.weight", false),
        ];
        for (hf_name, canon, norm) in pairs {
            let src = &stored[&p(hf_name)];
            let got = &m.tensors[canon];
            assert_eq!(got.shape, src.shape, "{canon}");
            if norm {
                // Stored w (forward x * (1 + w)) becomes 1 + w, in F32.
                assert_eq!(got.dtype, DType::F32, "{canon}");
                let want: Vec<f32> = src.to_f32_vec().iter().map(|w| 1.0 + w).collect();
                assert_eq!(got.to_f32_vec(), want, "{canon}");
            } else {
                assert_eq!(got.dtype, DType::BF16, "{canon}");
                assert!(got.data.bytes() == src.data.bytes(), "{canon}");
            }
        }
        // 2 + 13 per layer; the vision tensors are skipped.
        assert_eq!(m.tensors.len(), 2 + 13 * m.config.n_layers);
        assert!(!m.tensors.contains_key("output.weight"));
        // Back to HF names and values.
        let back = hf::hf_tensors(&m.config, &m.tensors).unwrap();
        for (name, t) in &back {
            let src = &stored[&p(name)];
            assert_eq!(t.to_f32_vec(), src.to_f32_vec(), "{name}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shards, writers, templates, errors

fn split_into_shards(src: &Path, dst: &Path) {
    let tensors = hf::read_safetensors(&src.join("model.safetensors")).unwrap();
    let names: Vec<&String> = tensors.keys().collect();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        hf::write_safetensors(
            &dst.join(file),
            part.iter().map(|n| (n.as_str(), &tensors[*n])),
            None,
        )
        .unwrap();
        for n in part {
            map.insert((*n).clone(), json!(file));
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dst.join("model.safetensors.index.json"), index.to_string()).unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
}

#[test]
fn sharded_directory_equals_single_file() {
    let src = fixture("qwen2-tiny");
    let d = tempfile::tempdir().unwrap();
    split_into_shards(&src, d.path());
    let a = load(&src).unwrap();
    let b = load(d.path()).unwrap();
    assert_eq!(a.config, b.config);
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (k, t) in &a.tensors {
        assert!(b.tensors[k].data.bytes() == t.data.bytes(), "{k}");
        assert_eq!(b.tensors[k].shape, t.shape);
    }
    // Missing shard.
    std::fs::remove_file(d.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load(d.path()).err().unwrap().to_string();
    assert!(
        e.contains("missing shard file model-00002-of-00002.safetensors"),
        "{e}"
    );
}

#[test]
fn index_naming_a_tensor_its_shard_lacks_or_escaping_the_directory() {
    let src = fixture("qwen2-tiny");
    let d = tempfile::tempdir().unwrap();
    split_into_shards(&src, d.path());
    let ip = d.path().join("model.safetensors.index.json");
    let mut index = read_json(&ip);
    index["weight_map"]["model.norm.weight"] = json!("model-00001-of-00002.safetensors");
    index["weight_map"]["model.embed_tokens.weight"] = json!("model-00002-of-00002.safetensors");
    std::fs::write(&ip, index.to_string()).unwrap();
    let e = load(d.path()).err().unwrap().to_string();
    assert!(e.contains("is not in the shard"), "{e}");
    index["weight_map"]["model.norm.weight"] = json!("../../etc/passwd");
    std::fs::write(&ip, index.to_string()).unwrap();
    let e = load(d.path()).err().unwrap().to_string();
    assert!(e.contains("bad shard name"), "{e}");
}

#[test]
fn bad_safetensors_files() {
    let src = fixture("llama-mha");
    let good = std::fs::read(src.join("model.safetensors")).unwrap();
    let d = tempfile::tempdir().unwrap();
    let tmp = with_config(&src, &src.join("config.json"));
    let st = tmp.path().join("model.safetensors");
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short", good[..5].to_vec()),
        ("huge header length", {
            let mut b = good.clone();
            b[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
            b
        }),
        ("header not JSON", {
            let mut b = good.clone();
            b[8] = b'!';
            b
        }),
        ("truncated data", good[..good.len() - 1].to_vec()),
        ("truncated header", good[..8 + header_len / 2].to_vec()),
    ];
    // Every 997th prefix, too.
    for len in (0..good.len()).step_by(997) {
        cases.push(("prefix", good[..len].to_vec()));
    }
    for (what, bytes) in cases {
        std::fs::write(&st, &bytes).unwrap();
        let e = load(tmp.path())
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"))
            .to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("bad safetensors file"),
            "{what}: {e}"
        );
    }
    // An unsupported dtype, named.
    let i32t = safetensors::serialize(
        [(
            "model.norm.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![1], &[0u8; 4])
                .unwrap(),
        )],
        None,
    )
    .unwrap();
    let p = d.path().join("x.safetensors");
    std::fs::write(&p, i32t).unwrap();
    let e = hf::read_safetensors(&p).err().unwrap().to_string();
    assert!(e.contains("I32"), "{e}");
}

#[test]
fn safetensors_writer_round_trip() {
    let t1 = Tensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let t2 = bf16_tensor(vec![4], |i| i as f32);
    let t3 = Tensor::new(
        DType::F16,
        vec![2],
        Storage::from_vec(vec![0, 0x3c, 0, 0xc0]),
    )
    .unwrap();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let bytes = hf::safetensors_to_bytes([("a", &t1), ("b", &t2), ("c", &t3)], Some(meta)).unwrap();
    // Read with the safetensors crate directly...
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("a").unwrap().shape(), &[2, 3]);
    assert_eq!(st.tensor("b").unwrap().dtype(), safetensors::Dtype::BF16);
    assert_eq!(st.tensor("c").unwrap().data(), &[0, 0x3c, 0, 0xc0]);
    // ...and with kiln.
    let back = hf::read_safetensors_bytes(Storage::from_vec(bytes)).unwrap();
    assert_eq!(back["a"].to_f32_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(back["b"].to_f32_vec(), vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(back["c"].to_f32_vec(), vec![1.0, -2.0]);
    // Quantized tensors cannot go to safetensors.
    let q = Tensor::new(DType::Q8_0, vec![32], Storage::from_vec(vec![0; 34])).unwrap();
    let e = hf::safetensors_to_bytes([("q", &q)], None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("Q8_0"), "{e}");
}

#[test]
fn chat_templates() {
    let src = fixture("qwen2-tiny");
    let tmp = with_config(&src, &src.join("config.json"));
    let tc = tmp.path().join("tokenizer_config.json");
    let mut v = read_json(&tc);
    v["chat_template"] = json!("{{ messages }}");
    std::fs::write(&tc, v.to_string()).unwrap();
    assert_eq!(
        load(tmp.path()).unwrap().chat_template.as_deref(),
        Some("{{ messages }}")
    );
    v["chat_template"] =
        json!([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]);
    std::fs::write(&tc, v.to_string()).unwrap();
    assert_eq!(
        load(tmp.path()).unwrap().chat_template.as_deref(),
        Some("D")
    );
    std::fs::write(tmp.path().join("chat_template.jinja"), "J").unwrap();
    assert_eq!(
        load(tmp.path()).unwrap().chat_template.as_deref(),
        Some("J")
    );
}

#[test]
fn generation_config_eos_list_and_overrides() {
    let src = fixture("llama-mha");
    let tmp = with_config(&src, &src.join("config.json"));
    std::fs::write(
        tmp.path().join("generation_config.json"),
        r#"{"bos_token_id": 1, "eos_token_id": [2, 7, 2]}"#,
    )
    .unwrap();
    let c = load(tmp.path()).unwrap().config;
    assert_eq!(c.eos_token_ids, vec![2, 7]);
    assert_eq!(c.bos_token_id, Some(1));
}

#[test]
fn config_variants_and_errors() {
    let base = read_json(&fixture("llama-mha/config.json"));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        config_from_json(&v, None)
    };
    let c = with(&|v| {
        v["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    })
    .unwrap();
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        })
    );
    let c = with(&|v| {
        v.as_object_mut().unwrap().remove("rope_parameters");
        v["rope_theta"] = json!(10000.0);
        v["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
    })
    .unwrap();
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
    // YaRN: transformers 5's defaults (beta 32 / 1, truncate, the original context =
    // max_position_embeddings, attention factor 1 + 0.1 ln(factor)).
    let c = with(&|v| {
        v["rope_parameters"] = json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0})
    })
    .unwrap();
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: c.max_position_embeddings,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 1.0 + 0.1 * 4f32.ln(),
            truncate: true,
        })
    );
    let e = with(&|v| {
        v["rope_parameters"] = json!({"rope_type": "dynamic", "rope_theta": 1.0, "factor": 4.0})
    })
    .unwrap_err();
    assert!(e.to_string().contains("dynamic"), "{e}");
    let e = with(&|v| v["model_type"] = json!("gpt2")).unwrap_err();
    assert!(e.to_string().contains("gpt2"), "{e}");
    let e = with(&|v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    })
    .unwrap_err();
    assert!(e.to_string().contains("missing hidden_size"), "{e}");
    let e = with(&|v| v["num_key_value_heads"] = json!(3)).unwrap_err();
    assert!(e.to_string().contains("kv heads"), "{e}");
    let e = with(&|v| v["hidden_size"] = json!(-4)).unwrap_err();
    assert!(e.to_string().contains("hidden_size"), "{e}");
    let e = with(&|v| v["num_hidden_layers"] = json!(4_000_000_000u64)).unwrap_err();
    assert!(
        e.to_string()
            .contains("num_hidden_layers = 4000000000 is absurdly large"),
        "{e}"
    );
    let e = with(&|v| v["hidden_act"] = json!("relu")).unwrap_err();
    assert!(e.to_string().contains("relu"), "{e}");
    // Mistral: a window on every layer.
    let c = with(&|v| {
        v["model_type"] = json!("mistral");
        v["sliding_window"] = json!(4096);
    })
    .unwrap();
    assert_eq!((c.arch, c.sliding_window), (Arch::Mistral, Some(4096)));
    assert!(c.is_sliding(0) && c.is_sliding(1));
    // Qwen2 with sliding layers from max_window_layers.
    let mut q = read_json(&fixture("legacy-configs/qwen2-tiny.config.json"));
    q["use_sliding_window"] = json!(true);
    q["sliding_window"] = json!(32);
    q["max_window_layers"] = json!(1);
    let c = config_from_json(&q, None).unwrap();
    assert_eq!(c.sliding_window, Some(32));
    assert_eq!(c.sliding_layers, vec![false, true]);
}

#[test]
fn load_detects_formats_and_names_paths() {
    // A directory with params.json is a Meta checkpoint.
    let m = load(&fixture("llama-mha/meta")).unwrap();
    assert_eq!(m.config.arch, Arch::Llama);
    let d = tempfile::tempdir().unwrap();
    let e = load(d.path()).err().unwrap().to_string();
    assert!(e.contains("neither config.json"), "{e}");
    // config.json itself points at its directory.
    let m = load(&fixture("qwen2-tiny/config.json")).unwrap();
    assert_eq!(m.config.arch, Arch::Qwen2);
    // No weights.
    std::fs::copy(
        fixture("qwen2-tiny/config.json"),
        d.path().join("config.json"),
    )
    .unwrap();
    let e = load(d.path()).err().unwrap().to_string();
    assert!(e.contains("no model.safetensors"), "{e}");
    // Broken config.json.
    std::fs::write(d.path().join("config.json"), "{").unwrap();
    let e = load(d.path()).err().unwrap().to_string();
    assert!(e.contains("config.json: invalid JSON"), "{e}");
    // A tensor for a layer the config does not have.
    let src = fixture("qwen2-tiny");
    let tmp = with_config(&src, &src.join("config.json"));
    let mut t = hf::read_safetensors(&src.join("model.safetensors")).unwrap();
    let extra = t["model.norm.weight"].clone();
    t.insert("model.layers.9.input_layernorm.weight".into(), extra);
    hf::write_safetensors(
        &tmp.path().join("model.safetensors"),
        t.iter().map(|(k, v)| (k.as_str(), v)),
        None,
    )
    .unwrap();
    let e = load(tmp.path()).err().unwrap().to_string();
    assert!(e.contains("layer past the 2 configured"), "{e}");
    // An unknown tensor name.
    t.remove("model.layers.9.input_layernorm.weight");
    let extra = t["model.norm.weight"].clone();
    t.insert("model.layers.0.mystery.weight".into(), extra);
    hf::write_safetensors(
        &tmp.path().join("model.safetensors"),
        t.iter().map(|(k, v)| (k.as_str(), v)),
        None,
    )
    .unwrap();
    let e = load(tmp.path()).err().unwrap().to_string();
    assert!(
        e.contains("unknown tensor model.layers.0.mystery.weight"),
        "{e}"
    );
    // A tensor whose shape disagrees with the config.
    t.remove("model.layers.0.mystery.weight");
    t.insert(
        "model.norm.weight".into(),
        Tensor::from_f32(vec![3], &[1.0, 2.0, 3.0]).unwrap(),
    );
    hf::write_safetensors(
        &tmp.path().join("model.safetensors"),
        t.iter().map(|(k, v)| (k.as_str(), v)),
        None,
    )
    .unwrap();
    let e = load(tmp.path()).err().unwrap().to_string();
    assert!(e.contains("output_norm.weight has shape [3]"), "{e}");
}

#[test]
fn hf_model_through_gguf_writer_keeps_config_and_tensors() {
    // qwen2-tiny → GGUF (qwen2 keeps the rotate-half layout, so no permutation is needed) → load.
    let src = load(&fixture("qwen2-tiny")).unwrap();
    let c = &src.config;
    use kiln_formats::MetaValue as M;
    let tokens = M::Array(
        (0..c.vocab_size)
            .map(|i| M::String(format!("t{i}")))
            .collect(),
    );
    let meta: Vec<(&str, M)> = vec![
        ("general.architecture", M::String("qwen2".into())),
        (
            "qwen2.context_length",
            M::U32(c.max_position_embeddings as u32),
        ),
        ("qwen2.embedding_length", M::U32(c.hidden_size as u32)),
        ("qwen2.block_count", M::U32(c.n_layers as u32)),
        (
            "qwen2.feed_forward_length",
            M::U32(c.intermediate_size as u32),
        ),
        ("qwen2.attention.head_count", M::U32(c.n_heads as u32)),
        ("qwen2.attention.head_count_kv", M::U32(c.n_kv_heads as u32)),
        (
            "qwen2.attention.layer_norm_rms_epsilon",
            M::F32(c.rms_norm_eps),
        ),
        ("qwen2.rope.freq_base", M::F32(c.rope_theta)),
        ("tokenizer.ggml.model", M::String("gpt2".into())),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.bos_token_id", M::U32(510)),
        ("tokenizer.ggml.eos_token_id", M::U32(511)),
    ];
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("q.gguf");
    kiln_formats::gguf::write(
        &p,
        meta.iter().map(|(k, v)| (*k, v)),
        src.tensors.iter().map(|(k, v)| (k.as_str(), v)),
    )
    .unwrap();
    let g = load(&p).unwrap();
    assert_eq!(&g.config, c);
    for (k, t) in &src.tensors {
        assert!(g.tensors[k].data.bytes() == t.data.bytes(), "{k}");
        assert_eq!(g.tensors[k].shape, t.shape);
    }
    assert_eq!(g.format, "GGUF v3");
}

#[test]
fn safetensors_byte_flips_never_panic() {
    let good = std::fs::read(fixture("qwen2-tiny/model.safetensors")).unwrap();
    let header_len = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let cfg = load(&fixture("qwen2-tiny")).unwrap().config;
    let (mut ok, mut err) = (0, 0);
    for _ in 0..2000 {
        let mut b = good.clone();
        for _ in 0..1 + next() % 3 {
            let pos = (next() % header_len as u64) as usize;
            b[pos] = next() as u8;
        }
        match hf::read_safetensors_bytes(Storage::from_vec(b)) {
            Ok(t) => {
                ok += 1;
                if let Ok(c) = hf::canonical_tensors(&cfg, t) {
                    let _ = kiln_formats::validate_tensors(&cfg, &c);
                }
            }
            Err(_) => err += 1,
        }
    }
    assert!(err > 0, "ok {ok}");
}
