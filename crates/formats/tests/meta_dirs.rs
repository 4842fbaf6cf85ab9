//! Small Meta checkpoint directories written by tests/data/gen_pth_fixtures.py (numpy does the
//! fairscale-style split): a Llama 3 style bf16 model (GQA, ffn_dim_multiplier, scaled rope,
//! tiktoken tokenizer, embeddings split along the vocabulary), a Llama 2 style one (vocab -1,
//! `rope.freqs`, SentencePiece with bos 5 / eos 6), and broken variants of the latter.

use std::path::{Path, PathBuf};

use kiln_formats::meta::{ffn_hidden_size, load_meta_dir, sniff_tokenizer, TokenizerKind};
use kiln_formats::{RopeScaling, TokenizerSource};
use kiln_kernels::ops::RopeStyle;
use kiln_kernels::DType;

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/meta")
        .join(name)
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir("expected.json")).unwrap()).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Meta name -> canonical GGUF name (llama.cpp's tensor names for the `llama` arch).
fn gguf_name(meta: &str) -> String {
    let fixed = [
        ("tok_embeddings.weight", "token_embd.weight"),
        ("norm.weight", "output_norm.weight"),
        ("output.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(m, _)| *m == meta) {
        return g.to_string();
    }
    let rest = meta.strip_prefix("layers.").unwrap();
    let (l, rest) = rest.split_once('.').unwrap();
    let part = match rest {
        "attention.wq.weight" => "attn_q",
        "attention.wk.weight" => "attn_k",
        "attention.wv.weight" => "attn_v",
        "attention.wo.weight" => "attn_output",
        "feed_forward.w1.weight" => "ffn_gate",
        "feed_forward.w2.weight" => "ffn_down",
        "feed_forward.w3.weight" => "ffn_up",
        "attention_norm.weight" => "attn_norm",
        "ffn_norm.weight" => "ffn_norm",
        other => panic!("{other}"),
    };
    format!("blk.{l}.{part}.weight")
}

fn load_err(d: &Path) -> String {
    match load_meta_dir(d) {
        Ok(_) => panic!("{} loaded but should not", d.display()),
        Err(e) => e.to_string(),
    }
}

fn check_against_expected(name: &str, dtype: DType) -> kiln_formats::LoadedModel {
    let exp = &expected()[name];
    let m = load_meta_dir(&dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let tensors = exp["tensors"].as_object().unwrap();
    assert_eq!(m.tensors.len(), tensors.len(), "{name}");
    for (meta_name, t) in tensors {
        let ours = &m.tensors[&gguf_name(meta_name)];
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(ours.shape, shape, "{name} {meta_name}");
        assert_eq!(ours.dtype, dtype, "{name} {meta_name}");
        assert_eq!(
            hex(ours.data.bytes()),
            t["hex"].as_str().unwrap(),
            "{name} {meta_name}"
        );
    }
    let c = &m.config;
    let p = &exp["params"];
    assert_eq!(c.hidden_size as u64, p["dim"].as_u64().unwrap());
    assert_eq!(c.n_layers as u64, p["n_layers"].as_u64().unwrap());
    assert_eq!(c.n_heads as u64, p["n_heads"].as_u64().unwrap());
    assert_eq!(
        c.n_kv_heads as u64,
        p.get("n_kv_heads")
            .unwrap_or(&p["n_heads"])
            .as_u64()
            .unwrap()
    );
    assert_eq!(c.head_dim, c.hidden_size / c.n_heads);
    assert_eq!(c.intermediate_size as u64, exp["hidden"].as_u64().unwrap());
    assert_eq!(c.vocab_size as u64, exp["vocab"].as_u64().unwrap());
    assert_eq!(c.rms_norm_eps, p["norm_eps"].as_f64().unwrap() as f32);
    assert_eq!(c.bos_token_id.map(u64::from), exp["bos"].as_u64());
    let eos: Vec<u64> = exp["eos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        c.eos_token_ids
            .iter()
            .map(|&e| e as u64)
            .collect::<Vec<_>>(),
        eos
    );
    assert_eq!(c.rope_style, RopeStyle::Interleaved);
    assert!(!c.tie_word_embeddings);
    assert!(
        matches!(&m.tokenizer, TokenizerSource::TokenizerModel(p) if p == &dir(name).join("tokenizer.model"))
    );
    m
}

#[test]
fn llama3_style_bf16_gqa_vocab_parallel_embeddings() {
    let m = check_against_expected("llama3-mp2", DType::BF16);
    let c = &m.config;
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
    assert_eq!(c.max_position_embeddings, 131072);
    assert_eq!(
        sniff_tokenizer(&dir("llama3-mp2/tokenizer.model")).unwrap(),
        TokenizerKind::Tiktoken { ranks: 8 }
    );
}

#[test]
fn llama2_style_f32_vocab_from_embeddings_rope_freqs_ignored() {
    let m = check_against_expected("llama2-mp2", DType::F32);
    assert_eq!(m.config.rope_theta, 10000.0);
    assert_eq!(m.config.rope_scaling, None);
    assert_eq!(
        sniff_tokenizer(&dir("llama2-mp2/tokenizer.model")).unwrap(),
        TokenizerKind::SentencePiece {
            pieces: 16,
            bos: Some(5),
            eos: Some(6)
        }
    );
}

#[test]
fn real_sentencepiece_model_is_recognised() {
    // Tokenizer (a) of the tests/data fixtures: 512 pieces, bos 1, eos 2 (its README).
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/fixtures/llama-mha/tokenizer.model");
    assert_eq!(
        sniff_tokenizer(&p).unwrap(),
        TokenizerKind::SentencePiece {
            pieces: 512,
            bos: Some(1),
            eos: Some(2)
        }
    );
    let d = tempfile::tempdir().unwrap();
    let junk = d.path().join("tokenizer.model");
    std::fs::write(&junk, b"\xff\xff\xff\xff not a model").unwrap();
    assert!(sniff_tokenizer(&junk)
        .unwrap_err()
        .to_string()
        .contains("neither"));
}

#[test]
fn meta_ffn_formula() {
    // Llama 2 7B / 13B / 70B, Llama 3 8B / 70B, Code Llama 34B: published FFN widths.
    assert_eq!(ffn_hidden_size(4096, 256, None), 11008);
    assert_eq!(ffn_hidden_size(5120, 256, None), 13824);
    assert_eq!(ffn_hidden_size(8192, 4096, Some(1.3)), 28672);
    assert_eq!(ffn_hidden_size(4096, 1024, Some(1.3)), 14336);
    assert_eq!(ffn_hidden_size(8192, 256, Some(1.0)), 22016);
    assert_eq!(ffn_hidden_size(64, 16, None), 176);
}

#[test]
fn inconsistent_shards_are_clear_errors() {
    let e = load_err(&dir("bad-shape"));
    assert!(
        e.contains("layers.0.attention.wo.weight") && e.contains("outside the split dimension 1"),
        "{e}"
    );
    let e = load_err(&dir("bad-norm"));
    assert!(e.contains("replicated tensor `norm.weight` differs"), "{e}");
    let e = load_err(&dir("bad-dtype"));
    assert!(
        e.contains("torch.FloatStorage") && e.contains("torch.HalfStorage") && e.contains("wq"),
        "{e}"
    );
    let e = load_err(&dir("missing-tensor"));
    assert!(
        e.contains("consolidated.01.pth lacks tensor `layers.0.feed_forward.w3.weight`"),
        "{e}"
    );
    let e = load_err(&dir("extra-tensor"));
    assert!(
        e.contains("unexpected tensor `layers.0.attention.bogus.weight`"),
        "{e}"
    );
    let e = load_err(&dir("extra-shard"));
    assert!(
        e.contains("3 shards found") && e.contains("missing or extra"),
        "{e}"
    );
}

#[test]
fn a_hostile_shard_refuses_the_whole_directory() {
    let d = tempfile::tempdir().unwrap();
    for f in ["params.json", "tokenizer.model", "consolidated.00.pth"] {
        std::fs::copy(dir("llama2-mp2").join(f), d.path().join(f)).unwrap();
    }
    let pth = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pth");
    std::fs::copy(
        pth.join("hostile_os_system.pth"),
        d.path().join("consolidated.01.pth"),
    )
    .unwrap();
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pth.join("expected.json")).unwrap()).unwrap();
    let h = &exp["hostile"]["hostile_os_system.pth"];
    let marker = Path::new(h["marker"].as_str().unwrap());
    let _ = std::fs::remove_file(marker);
    let e = load_err(d.path());
    assert!(e.contains("consolidated.01.pth"), "{e}");
    assert!(
        e.contains(&format!(
            "refusing to load: pickle references forbidden global `{}`",
            h["global"].as_str().unwrap()
        )),
        "{e}"
    );
    assert!(!marker.exists());
}
