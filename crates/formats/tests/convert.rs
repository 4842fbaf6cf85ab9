//! The pieces `kiln convert` builds on: rope row layouts, ModelConfig → GGUF metadata and
//! config.json, and whole-model round trips between the formats.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_formats::layout::reorder_rope_rows;
use kiln_formats::{gguf, hf, load, Arch, MetaValue, ModelConfig, RopeScaling};
use kiln_kernels::ops::{rope, RopeStyle};
use kiln_kernels::Tensor;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/fixtures")
        .join(name)
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn matvec(w: &[f32], rows: usize, x: &[f32]) -> Vec<f32> {
    let cols = x.len();
    (0..rows)
        .map(|r| (0..cols).map(|c| w[r * cols + c] * x[c]).sum())
        .collect()
}

#[test]
fn reordered_rows_make_interleaved_rope_equal_rotate_half_rope() {
    // q = W x, rotated with rotate-half pairs, must be the same vector (up to the same row order)
    // as q' = W' x rotated with interleaved pairs, where W' is W reordered.
    let (heads, hd, cols) = (3, 8, 5);
    let rows = heads * hd;
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let x: Vec<f32> = (0..cols).map(|i| i as f32 * 0.3 - 0.7).collect();
    let half = Tensor::from_f32(vec![rows, cols], &w).unwrap();
    let inter = reorder_rope_rows(&half, heads, RopeStyle::Half, RopeStyle::Interleaved).unwrap();
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
        .collect();
    let pos = 7;
    let mut qh = matvec(&half.to_f32_vec(), rows, &x);
    let mut qi = matvec(&inter.to_f32_vec(), rows, &x);
    for h in 0..heads {
        rope(
            &mut qh[h * hd..(h + 1) * hd],
            pos,
            &inv_freq,
            RopeStyle::Half,
        );
        rope(
            &mut qi[h * hd..(h + 1) * hd],
            pos,
            &inv_freq,
            RopeStyle::Interleaved,
        );
    }
    // Attention only sees dot products within a head, which a common row permutation keeps.
    let qh_as_inter = reorder_rope_rows(
        &Tensor::from_f32(vec![rows, 1], &qh).unwrap(),
        heads,
        RopeStyle::Half,
        RopeStyle::Interleaved,
    )
    .unwrap();
    for (a, b) in qh_as_inter.to_f32_vec().iter().zip(&qi) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    // And back.
    let back = reorder_rope_rows(&inter, heads, RopeStyle::Interleaved, RopeStyle::Half).unwrap();
    assert_eq!(back.to_f32_vec(), w);
    assert!(reorder_rope_rows(&half, 5, RopeStyle::Half, RopeStyle::Interleaved).is_err());
}

#[test]
fn rows_reorder_like_the_meta_permutation_in_the_fixture_readme() {
    // README: HF q_proj = permute(wq), permute(w) = w.view(n, d1/n/2, 2, d2).transpose(1, 2):
    // HF row (h, j, i) [j < 2, i < hd/2] = Meta row (h, i, j), i.e. HF row h*hd + j*hd/2 + i
    // comes from Meta (interleaved) row h*hd + 2i + j.
    let (n, hd) = (2, 6);
    let meta: Vec<f32> = (0..n * hd).map(|r| r as f32).collect();
    let t = Tensor::from_f32(vec![n * hd, 1], &meta).unwrap();
    let hf_rows = reorder_rope_rows(&t, n, RopeStyle::Interleaved, RopeStyle::Half)
        .unwrap()
        .to_f32_vec();
    for h in 0..n {
        for j in 0..2 {
            for i in 0..hd / 2 {
                assert_eq!(
                    hf_rows[h * hd + j * hd / 2 + i],
                    (h * hd + 2 * i + j) as f32
                );
            }
        }
    }
}

fn configs() -> Vec<(String, ModelConfig)> {
    let mut out = vec![];
    for name in ["llama-mha", "qwen2-tiny"] {
        out.push((name.to_string(), load(&fixture(name)).unwrap().config));
    }
    for name in [
        "gemma3-text-t5",
        "gemma3-multimodal-t5",
        "gemma3-text-legacy",
        "gemma3-multimodal-legacy",
    ] {
        let v = read_json(&data(&format!("hf-configs/{name}.config.json")));
        out.push((name.to_string(), hf::config_from_json(&v, None).unwrap()));
    }
    let mut mistral = read_json(&fixture("llama-mha/config.json"));
    mistral["model_type"] = json!("mistral");
    mistral["sliding_window"] = json!(64);
    out.push((
        "mistral".into(),
        hf::config_from_json(&mistral, None).unwrap(),
    ));
    let mut llama3 = read_json(&fixture("llama-mha/config.json"));
    llama3["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    llama3["eos_token_id"] = json!([2, 5]);
    out.push((
        "llama3".into(),
        hf::config_from_json(&llama3, None).unwrap(),
    ));
    out
}

#[test]
fn config_json_round_trip() {
    for (name, c) in configs() {
        let v = hf::config_to_json(&c).unwrap();
        let back = hf::config_from_json(&v, None).unwrap();
        assert_eq!(back, c, "{name}");
    }
    // Mistral without a window key gets transformers' default, with null none.
    let mut m = read_json(&fixture("llama-mha/config.json"));
    m["model_type"] = json!("mistral");
    assert_eq!(
        hf::config_from_json(&m, None).unwrap().sliding_window,
        Some(4096)
    );
    m["sliding_window"] = Value::Null;
    assert_eq!(hf::config_from_json(&m, None).unwrap().sliding_window, None);
}

fn metadata_file(c: &ModelConfig) -> (Vec<(String, MetaValue)>, BTreeMap<String, Tensor>) {
    let meta = gguf::metadata_from_config(c).unwrap();
    let embd = Tensor::from_f32(vec![c.vocab_size, 2], &vec![0.0; c.vocab_size * 2]).unwrap();
    let mut t = BTreeMap::new();
    t.insert("token_embd.weight".to_string(), embd);
    (meta, t)
}

#[test]
fn gguf_metadata_round_trip() {
    let mut done = vec![];
    for (name, c) in configs() {
        if name.starts_with("gemma3-multimodal") {
            // query_pre_attn_scalar 256 with head_dim 32: not expressible (see below).
            continue;
        }
        done.push(name.clone());
        let (mut c2, mut tensors) = metadata_file(&c);
        let (want, extra) = gguf::gguf_tensors(&c, &BTreeMap::new()).unwrap();
        tensors.extend(extra);
        let bytes = gguf::to_bytes(
            c2.iter().map(|(k, v)| (k.as_str(), v)),
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
        )
        .unwrap();
        let f = gguf::GgufFile::parse(kiln_kernels::Storage::from_vec(bytes)).unwrap();
        let mut got = gguf::config_from_gguf(&f, &f.tensor_map().unwrap()).unwrap();
        // Only the first eos id has a GGUF key; the file has no output.weight here.
        got.tie_word_embeddings = c.tie_word_embeddings;
        let mut want = want;
        want.eos_token_ids.truncate(1);
        assert_eq!(got, want, "{name}");
        assert_eq!(got.rope_style, gguf::gguf_rope_style(c.arch));
        c2.clear();
    }
    assert_eq!(done.len(), 6);
    // Llama 3 scaling travels as frequency factors: 1 for short wavelengths, 1/8 of the
    // frequency (factor 8) for long ones.
    let (_, c) = configs().into_iter().find(|(n, _)| n == "llama3").unwrap();
    let f = gguf::llama3_rope_factors(&c).unwrap();
    assert_eq!(f.len(), 8);
    assert_eq!(f[0], 1.0);
    assert_eq!(f[7], 8.0);
    assert!(f.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn gguf_metadata_matches_what_llama_cpp_wrote_in_the_real_files() {
    for (name, arch) in [("gemma3-270m", "gemma3"), ("qwen2.5-coder-0.5b", "qwen2")] {
        // Pulled through kiln's own `pull` code on first use.
        let path =
            kiln_pull::resolve_model(Some(name), true, &mut |p| eprintln!("pulling {name}: {p}"))
                .unwrap_or_else(|e| panic!("pulling {name}: {e}"));
        let m = load(&path).unwrap();
        let ours: BTreeMap<String, MetaValue> = gguf::metadata_from_config(&m.config)
            .unwrap()
            .into_iter()
            .collect();
        let mut n = 0;
        for (k, v) in &m.metadata {
            if k.starts_with(&format!("{arch}.")) || k == "general.architecture" {
                let mine = ours
                    .get(k)
                    .unwrap_or_else(|| panic!("{name}: {k} not written"));
                assert_eq!(
                    mine.as_f64().or(mine.as_str().map(|_| 0.0)),
                    v.as_f64().or(v.as_str().map(|_| 0.0)),
                    "{name}: {k}"
                );
                assert_eq!(mine.as_str(), v.as_str(), "{name}: {k}");
                n += 1;
            }
        }
        assert!(n >= 9, "{name}: only {n} keys compared");
        assert_eq!(
            ours["tokenizer.ggml.bos_token_id"],
            m.metadata["tokenizer.ggml.bos_token_id"]
        );
        assert_eq!(
            ours["tokenizer.ggml.eos_token_id"],
            m.metadata["tokenizer.ggml.eos_token_id"]
        );
    }
}

#[test]
fn llama_hf_to_gguf_to_hf_is_exact() {
    let src = load(&fixture("llama-mha")).unwrap();
    let (cfg, tensors) = gguf::gguf_tensors(&src.config, &src.tensors).unwrap();
    assert_eq!(cfg.rope_style, RopeStyle::Interleaved);
    // q/k rows moved, everything else untouched.
    assert!(
        tensors["blk.0.attn_q.weight"].data.bytes()
            != src.tensors["blk.0.attn_q.weight"].data.bytes()
    );
    assert!(
        tensors["blk.0.attn_v.weight"].data.bytes()
            == src.tensors["blk.0.attn_v.weight"].data.bytes()
    );
    let mut meta = gguf::metadata_from_config(&cfg).unwrap();
    let tokens = MetaValue::Array(
        (0..cfg.vocab_size)
            .map(|i| MetaValue::String(format!("t{i}")))
            .collect(),
    );
    meta.push(("tokenizer.ggml.tokens".into(), tokens));
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("llama.gguf");
    gguf::write(
        &p,
        meta.iter().map(|(k, v)| (k.as_str(), v)),
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
    )
    .unwrap();
    let g = load(&p).unwrap();
    assert_eq!(g.config, cfg);
    // Back to Hugging Face: names, layout and bytes as the fixture stores them.
    let hf_back = hf::hf_tensors(&g.config, &g.tensors).unwrap();
    let original = hf::read_safetensors(&fixture("llama-mha/model.safetensors")).unwrap();
    assert_eq!(hf_back.len(), original.len());
    for (k, t) in &original {
        assert!(hf_back[k].data.bytes() == t.data.bytes(), "{k}");
    }
    // And a whole HF directory written from the GGUF model loads as the original.
    let out = d.path().join("hf");
    std::fs::create_dir(&out).unwrap();
    let json = hf::config_to_json(&g.config).unwrap();
    std::fs::write(out.join("config.json"), json.to_string()).unwrap();
    hf::write_safetensors(
        &out.join("model.safetensors"),
        hf_back.iter().map(|(k, v)| (k.as_str(), v)),
        None,
    )
    .unwrap();
    std::fs::copy(
        fixture("llama-mha/tokenizer.json"),
        out.join("tokenizer.json"),
    )
    .unwrap();
    let again = load(&out).unwrap();
    assert_eq!(again.config, src.config);
    for (k, t) in &src.tensors {
        assert!(again.tensors[k].data.bytes() == t.data.bytes(), "{k}");
    }
}

#[test]
fn unrepresentable_configs_are_refused() {
    let (_, mut c) = configs()
        .into_iter()
        .find(|(n, _)| n == "gemma3-text-t5")
        .unwrap();
    c.rope_local_theta = Some(5000.0);
    assert!(gguf::metadata_from_config(&c).is_err());
    let (_, mut c) = configs()
        .into_iter()
        .find(|(n, _)| n == "gemma3-multimodal-t5")
        .unwrap();
    // query_pre_attn_scalar 256 with head_dim 32: llama.cpp would scale by 32^-0.5.
    let e = gguf::metadata_from_config(&c).unwrap_err().to_string();
    assert!(e.contains("query_pre_attn_scalar"), "{e}");
    c.rope_scaling = Some(RopeScaling::FreqFactors(vec![1.0; 16]));
    assert!(hf::config_to_json(&c).is_err());
    let (_, mut l) = configs()
        .into_iter()
        .find(|(n, _)| n == "llama-mha")
        .unwrap();
    l.sliding_window = Some(8);
    assert!(gguf::metadata_from_config(&l).is_err());
    assert_eq!(l.arch, Arch::Llama);
}
