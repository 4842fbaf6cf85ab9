//! Meta checkpoints of the `llama-mha` fixture in tests/data (made by transformers + Meta's own split,
//! see tests/data/fixtures/README.md), checked against the Hugging Face copy of the same model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_formats::meta::{load_meta_dir, load_meta_with_tokenizer};
use kiln_formats::{Arch, LoadedModel, TokenizerSource};
use kiln_kernels::ops::RopeStyle;
use kiln_kernels::DType;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/fixtures/llama-mha")
        .join(rel)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The HF tensors, read with the `safetensors` crate: name -> (shape, values).
fn hf_tensors() -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            (name, (view.shape().to_vec(), f32s(view.data())))
        })
        .collect()
}

/// Undoes transformers' `permute` (tests/data/fixtures/README.md):
/// `w = hf.view(n_heads, 2, d1/n_heads/2, d2).transpose(1, 2).reshape(d1, d2)`.
fn unpermute(hf: &[f32], n_heads: usize, d1: usize, d2: usize) -> Vec<f32> {
    let half = d1 / n_heads / 2;
    let mut out = vec![0.0; d1 * d2];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                // out[h, i, j, :] = hf[h, j, i, :]
                let dst = (h * half * 2 + i * 2 + j) * d2;
                let src = (h * 2 * half + j * half + i) * d2;
                out[dst..dst + d2].copy_from_slice(&hf[src..src + d2]);
            }
        }
    }
    out
}

fn values(m: &LoadedModel, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = m.tensors.get(name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(t.dtype, DType::F32, "{name}");
    (t.shape.clone(), f32s(t.data.bytes()))
}

#[test]
fn config_matches_the_hf_copy_of_the_model() {
    let m = load_meta_dir(&fixture("meta")).unwrap();
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("config.json")).unwrap()).unwrap();
    let gen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("generation_config.json")).unwrap())
            .unwrap();
    let c = &m.config;
    let u = |k: &str| hf[k].as_u64().unwrap() as usize;
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(c.vocab_size, u("vocab_size"));
    assert_eq!(c.hidden_size, u("hidden_size"));
    assert_eq!(c.intermediate_size, u("intermediate_size"));
    assert_eq!(c.n_layers, u("num_hidden_layers"));
    assert_eq!(c.n_heads, u("num_attention_heads"));
    assert_eq!(c.n_kv_heads, u("num_key_value_heads"));
    assert_eq!(c.head_dim, u("head_dim"));
    assert_eq!(c.rms_norm_eps, hf["rms_norm_eps"].as_f64().unwrap() as f32);
    assert_eq!(
        c.rope_theta,
        hf["rope_parameters"]["rope_theta"].as_f64().unwrap() as f32
    );
    assert_eq!(
        c.tie_word_embeddings,
        hf["tie_word_embeddings"].as_bool().unwrap()
    );
    assert_eq!(c.rope_scaling, None);
    assert_eq!(c.sliding_window, None);
    assert_eq!(
        c.bos_token_id,
        Some(gen["bos_token_id"].as_u64().unwrap() as u32)
    );
    assert_eq!(
        c.eos_token_ids,
        vec![gen["eos_token_id"].as_u64().unwrap() as u32]
    );
    // Meta's layout: rope on adjacent pairs (the HF file uses rotate-half on permuted rows).
    assert_eq!(c.rope_style, RopeStyle::Interleaved);
    // params.json has no max_seq_len: Llama 2's 4096 is assumed.
    assert_eq!(c.max_position_embeddings, 4096);
    match &m.tokenizer {
        TokenizerSource::TokenizerModel(p) => assert_eq!(p, &fixture("meta/tokenizer.model")),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.tensors.len(), 2 + 1 + 2 * 9);
    assert_eq!(m.format, "Meta checkpoint (1 shard, F32)");
    assert!(kiln_formats::meta::is_meta_dir(&fixture("meta/mp2")));
    assert!(!kiln_formats::meta::is_meta_dir(&fixture("")));
}

#[test]
fn mp2_merges_to_exactly_mp1() {
    let one = load_meta_dir(&fixture("meta")).unwrap();
    let two = load_meta_dir(&fixture("meta/mp2")).unwrap();
    assert_eq!(one.config, two.config);
    assert_eq!(
        one.tensors.keys().collect::<Vec<_>>(),
        two.tensors.keys().collect::<Vec<_>>()
    );
    for (name, a) in &one.tensors {
        let b = &two.tensors[name];
        assert_eq!((a.dtype, &a.shape), (b.dtype, &b.shape), "{name}");
        assert!(
            a.data.bytes() == b.data.bytes(),
            "{name} differs after merging"
        );
    }
}

#[test]
fn meta_weights_are_the_hf_weights_in_meta_layout() {
    let hf = hf_tensors();
    for dir in ["meta", "meta/mp2"] {
        let m = load_meta_dir(&fixture(dir)).unwrap();
        let (n_heads, n_kv) = (m.config.n_heads, m.config.n_kv_heads);
        let mut pairs = vec![
            (
                "token_embd.weight".to_string(),
                "model.embed_tokens.weight".to_string(),
            ),
            ("output_norm.weight".into(), "model.norm.weight".into()),
            ("output.weight".into(), "lm_head.weight".into()),
        ];
        for l in 0..m.config.n_layers {
            for (k, h) in [
                ("attn_v", "self_attn.v_proj"),
                ("attn_output", "self_attn.o_proj"),
                ("ffn_gate", "mlp.gate_proj"),
                ("ffn_up", "mlp.up_proj"),
                ("ffn_down", "mlp.down_proj"),
                ("attn_norm", "input_layernorm"),
                ("ffn_norm", "post_attention_layernorm"),
            ] {
                pairs.push((
                    format!("blk.{l}.{k}.weight"),
                    format!("model.layers.{l}.{h}.weight"),
                ));
            }
            // q/k: Meta's rows are HF's un-permuted (adjacent rope pairs).
            for (k, h, heads) in [("attn_q", "q_proj", n_heads), ("attn_k", "k_proj", n_kv)] {
                let (shape, meta) = values(&m, &format!("blk.{l}.{k}.weight"));
                let (hshape, hvals) = &hf[&format!("model.layers.{l}.self_attn.{h}.weight")];
                assert_eq!(&shape, hshape);
                assert_ne!(&meta, hvals, "the permutation should matter");
                assert_eq!(
                    meta,
                    unpermute(hvals, heads, shape[0], shape[1]),
                    "{dir} {k} {l}"
                );
            }
        }
        for (ours, theirs) in pairs {
            let (shape, v) = values(&m, &ours);
            let (hshape, hv) = &hf[&theirs];
            assert_eq!(&shape, hshape, "{ours}");
            assert_eq!(&v, hv, "{dir}: {ours} != {theirs}");
        }
    }
}

#[test]
fn tokenizer_path_can_be_given() {
    let tok = fixture("tokenizer.model");
    let m = load_meta_with_tokenizer(&fixture("meta/mp2"), Some(&tok)).unwrap();
    match &m.tokenizer {
        TokenizerSource::TokenizerModel(p) => assert_eq!(p, &tok),
        other => panic!("{other:?}"),
    }
    let missing = fixture("no-such-tokenizer.model");
    let e = load_err(&fixture("meta"), Some(&missing));
    assert!(e.contains("tokenizer file not found"), "{e}");
}

/// The error loading `dir` gives (LoadedModel has no Debug, so no unwrap_err).
fn load_err(dir: &Path, tokenizer: Option<&Path>) -> String {
    match load_meta_with_tokenizer(dir, tokenizer) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// A writable copy of a fixture directory.
fn copy_dir(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
    }
    dir
}

#[test]
fn missing_shards_are_reported() {
    let d = copy_dir(&fixture("meta/mp2"));
    std::fs::remove_file(d.path().join("consolidated.01.pth")).unwrap();
    let e = load_err(d.path(), None);
    assert!(
        e.contains("shard missing or extra") && e.contains("1 shard found"),
        "{e}"
    );

    let d = copy_dir(&fixture("meta/mp2"));
    std::fs::remove_file(d.path().join("consolidated.00.pth")).unwrap();
    let e = load_err(d.path(), None);
    assert!(
        e.contains("missing checkpoint shard(s) consolidated.00.pth of 2"),
        "{e}"
    );

    let d = copy_dir(&fixture("meta/mp2"));
    std::fs::remove_file(d.path().join("consolidated.00.pth")).unwrap();
    std::fs::remove_file(d.path().join("consolidated.01.pth")).unwrap();
    let e = load_err(d.path(), None);
    assert!(e.contains("no consolidated.NN.pth"), "{e}");

    // No tokenizer here or in the parent (a temp dir's parent has none).
    let d = copy_dir(&fixture("meta/mp2"));
    std::fs::remove_file(d.path().join("tokenizer.model")).unwrap();
    let e = load_err(d.path(), None);
    assert!(e.contains("no tokenizer.model"), "{e}");

    // params.json that disagrees with the tensors.
    let d = copy_dir(&fixture("meta"));
    let p = d.path().join("params.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"multiple_of\": 16", "\"multiple_of\": 256");
    std::fs::write(&p, text).unwrap();
    let e = load_err(d.path(), None);
    assert!(e.contains("FFN size of 256"), "{e}");
    let text = std::fs::read_to_string(fixture("meta/params.json"))
        .unwrap()
        .replace("\"n_heads\": 4", "\"n_heads\": 3");
    std::fs::write(&p, text).unwrap();
    let e = load_err(d.path(), None);
    assert!(e.contains("n_heads"), "{e}");
}
