//! The real GGUF models (pulled on first use into `$KILN_HOME/models`, default
//! ~/.cache/kiln/models) against what gguf-py reads from them (tests/data/real_gguf.expected.json).

use std::path::PathBuf;

use kiln_formats::{load, Arch, LoadedModel, MetaValue, TokenizerSource};
use kiln_kernels::ops::RopeStyle;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The real model stored as `file`, pulled through kiln's own `pull` code when absent.
fn model_path(file: &str) -> PathBuf {
    let spec = kiln_pull::known_models()
        .iter()
        .find(|m| m.file == file)
        .unwrap_or_else(|| panic!("{file} is not a model kiln can pull"));
    kiln_pull::resolve_model(Some(spec.name), true, &mut |p| {
        eprintln!("pulling {}: {p}", spec.name)
    })
    .unwrap_or_else(|e| panic!("pulling {}: {e}", spec.name))
}

fn expected(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/real_gguf.expected.json");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    all[name].clone()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks metadata, tensor count, type histogram and sample tensors against gguf-py's reading.
fn check_against_gguf_py(m: &LoadedModel, e: &Value) {
    assert_eq!(m.format, format!("GGUF v{}", e["version"]));
    assert_eq!(m.tensors.len() as u64, e["n_tensors"].as_u64().unwrap());
    assert_eq!(m.metadata.len() as u64, e["n_kv"].as_u64().unwrap());
    for (k, v) in e["scalars"].as_object().unwrap() {
        let got = m.metadata.get(k).unwrap_or_else(|| panic!("missing {k}"));
        match v {
            Value::String(s) => assert_eq!(got.as_str(), Some(s.as_str()), "{k}"),
            Value::Bool(b) => assert_eq!(got, &MetaValue::Bool(*b), "{k}"),
            Value::Number(n) if n.is_f64() => assert_eq!(got.as_f64(), n.as_f64(), "{k}"),
            Value::Number(n) => assert_eq!(got.as_u64(), n.as_u64(), "{k}"),
            other => panic!("{k}: {other}"),
        }
    }
    for (k, n) in e["array_lengths"].as_object().unwrap() {
        let a = m.metadata[k]
            .as_array()
            .unwrap_or_else(|| panic!("{k} is not an array"));
        assert_eq!(a.len() as u64, n.as_u64().unwrap(), "{k}");
    }
    let mut hist = std::collections::BTreeMap::<&str, usize>::new();
    for t in m.tensors.values() {
        *hist.entry(t.dtype.name()).or_default() += 1;
    }
    let exp_hist = e["type_histogram"].as_object().unwrap();
    assert_eq!(hist.len(), exp_hist.len());
    for (t, n) in exp_hist {
        assert_eq!(
            hist.get(t.as_str()).copied(),
            n.as_u64().map(|n| n as usize),
            "{t}"
        );
    }
    for (name, t) in e["tensors"].as_object().unwrap() {
        let got = &m.tensors[name];
        assert_eq!(got.dtype.name(), t["type"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got.shape, shape, "{name}");
        assert_eq!(
            hex(&Sha256::digest(got.plain_bytes())),
            t["sha256"].as_str().unwrap(),
            "{name}"
        );
    }
    assert_eq!(
        m.tensors.contains_key("output.weight"),
        e["has_output_weight"].as_bool().unwrap()
    );
    // Every tokenizer key travels to the tokenizer.
    let TokenizerSource::Gguf(tok) = &m.tokenizer else {
        panic!("not a GGUF tokenizer")
    };
    let n_tok_keys = m
        .metadata
        .keys()
        .filter(|k| k.starts_with("tokenizer."))
        .count();
    assert_eq!(tok.len(), n_tok_keys);
    assert_eq!(
        tok["tokenizer.ggml.tokens"].as_array().unwrap().len() as u64,
        e["array_lengths"]["tokenizer.ggml.tokens"]
            .as_u64()
            .unwrap()
    );
}

#[test]
fn gemma3_270m() {
    let name = "gemma-3-270m-q4_k_m.gguf";
    let m = load(&model_path(name)).unwrap();
    let e = expected(name);
    check_against_gguf_py(&m, &e);
    let s = &e["scalars"];
    let c = &m.config;
    assert_eq!(c.arch, Arch::Gemma3);
    assert_eq!(c.rope_style, RopeStyle::Half);
    assert_eq!(
        c.hidden_size as u64,
        s["gemma3.embedding_length"].as_u64().unwrap()
    );
    assert_eq!(c.hidden_size, 640);
    assert_eq!(c.n_layers, 18);
    assert_eq!(c.intermediate_size, 2048);
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (4, 1, 256));
    assert_eq!(c.vocab_size, 262_144);
    assert_eq!(
        c.vocab_size as u64,
        e["token_embd_shape"][0].as_u64().unwrap()
    );
    assert_eq!(c.max_position_embeddings, 32768);
    assert_eq!(
        c.rms_norm_eps as f64,
        s["gemma3.attention.layer_norm_rms_epsilon"]
            .as_f64()
            .unwrap()
    );
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(c.rope_local_theta, Some(10_000.0));
    assert_eq!(c.rope_scaling, None);
    assert_eq!(c.sliding_window, Some(512));
    let global: Vec<usize> = (0..18).filter(|&l| !c.is_sliding(l)).collect();
    assert_eq!(global, vec![5, 11, 17]);
    assert_eq!(c.query_pre_attn_scalar, Some(256.0));
    assert!(c.tie_word_embeddings);
    assert_eq!(c.final_logit_softcapping, None);
    assert_eq!(c.bos_token_id, Some(2));
    // <eos> from the metadata, <end_of_turn> (id 106) recognised by its text.
    assert_eq!(c.eos_token_ids, vec![1, 106]);
    assert_eq!(m.chat_template, None);
    assert_eq!(
        c.n_params(),
        m.tensors.values().map(|t| t.n_elements()).sum::<usize>()
    );
}

#[test]
fn qwen25_coder_05b() {
    let name = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
    let m = load(&model_path(name)).unwrap();
    let e = expected(name);
    check_against_gguf_py(&m, &e);
    let c = &m.config;
    assert_eq!(c.arch, Arch::Qwen2);
    assert_eq!(c.rope_style, RopeStyle::Half);
    assert_eq!(c.hidden_size, 896);
    assert_eq!(c.n_layers, 24);
    assert_eq!(c.intermediate_size, 4864);
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (14, 2, 64));
    assert_eq!(c.vocab_size, 151_936);
    assert_eq!(c.max_position_embeddings, 32768);
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(c.rope_local_theta, None);
    assert_eq!(c.sliding_window, None);
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.bos_token_id, Some(151_643));
    // <|im_end|> from the metadata, <|endoftext|> recognised by its text (as Qwen's
    // generation_config lists both).
    assert_eq!(c.eos_token_ids, vec![151_645, 151_643]);
    let tmpl = m.chat_template.as_deref().unwrap();
    assert_eq!(Some(tmpl), e["scalars"]["tokenizer.chat_template"].as_str());
    assert!(m.tensors.contains_key("blk.23.attn_v.bias"));
    assert_eq!(
        c.n_params(),
        m.tensors.values().map(|t| t.n_elements()).sum::<usize>()
    );
}

#[test]
fn describe_any_gguf() {
    let f = kiln_formats::GgufFile::open(&model_path("gemma-3-270m-q4_k_m.gguf")).unwrap();
    let text = kiln_formats::describe_gguf(&f, true);
    assert!(
        text.starts_with("GGUF v3, 33 metadata keys, 236 tensors, alignment 32"),
        "{text}"
    );
    assert!(
        text.contains("  gemma3.attention.sliding_window = 512\n"),
        "{text}"
    );
    assert!(text.contains("  tokenizer.ggml.tokens = [262144 items: \"<pad>\", \"<eos>\", \"<bos>\", \"<unk>\", …]\n"), "{text}");
    assert!(text.contains("blk.0.attn_q.weight"), "{text}");
    assert!(text.contains("Q5_0 81 ("), "{text}");
    assert_eq!(text.lines().count(), 1 + 33 + 1 + 236);
}
