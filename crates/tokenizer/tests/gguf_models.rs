//! GGUF vocabularies of the real models against llama.cpp (commit 0c1e57098):
//! the anchor prompt ids (tests/data/anchors) and a corpus tokenized by `llama-tokenize`
//! (tests/data/gguf_corpus_expected.json, made by tests/data/gen_gguf_corpus.sh).
//! Absent model files fail the tests (CI fetches them).

mod common;

use kiln_formats::TokenizerSource;
use kiln_tokenizer::Tokenizer;

const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

fn load(file: &str) -> Tokenizer {
    let p = common::model_path(file);
    let t = std::time::Instant::now();
    let meta = common::gguf_tokenizer_meta(&p);
    let t2 = std::time::Instant::now();
    let tk = Tokenizer::from_source(&TokenizerSource::Gguf(meta)).unwrap();
    eprintln!(
        "{file}: metadata read {:?}, tokenizer built {:?}",
        t2 - t,
        t2.elapsed()
    );
    tk
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn anchor_prompt_ids() {
    let anchors = common::read_json(&common::test_data().join("anchors/llama-cpp-0c1e57098.json"));
    for (name, file) in [("gemma3-270m", GEMMA), ("qwen2.5-coder-0.5b", QWEN)] {
        let tk = load(file);
        let m = &anchors["models"][name];
        let want = ids(&m["prompt_token_ids"]);
        let got = tk.encode(m["prompt"].as_str().unwrap(), true).unwrap();
        assert_eq!(got, want, "{name}");
        // The greedy continuation decodes to llama.cpp's text.
        let cont = ids(&m["greedy_32"]["token_ids"]);
        assert_eq!(
            tk.decode(&cont, true),
            m["greedy_32"]["text"].as_str().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn special_tokens_and_flags() {
    let g = load(GEMMA);
    assert_eq!(g.vocab_size(), 262_144);
    assert_eq!(g.bos_id(), Some(2));
    assert!(g.adds_bos());
    assert_eq!(g.eos_ids()[0], 1);
    let eot = g.token_to_id("<end_of_turn>").unwrap();
    assert!(g.eos_ids().contains(&eot));
    assert!(g.is_special(2) && g.is_special(eot) && !g.is_special(107));
    // Control tokens in the text are parsed; BOS is never doubled.
    let ids = g
        .encode("<bos><start_of_turn>user\nHi<end_of_turn>", true)
        .unwrap();
    assert_eq!(&ids[..2], &[2, g.token_to_id("<start_of_turn>").unwrap()]);
    assert_eq!(*ids.last().unwrap(), eot);
    assert_eq!(g.decode(&ids, true), "user\nHi");
    assert_eq!(g.token_bytes(g.token_to_id("<0xE4>").unwrap()), vec![0xE4]);
    assert_eq!(g.token_bytes(g.token_to_id("▁the").unwrap()), b" the");
    let q = load(QWEN);
    assert_eq!(q.vocab_size(), 151_936);
    assert!(!q.adds_bos());
    assert_eq!(q.eos_ids()[0], 151_645);
    assert!(q.eos_ids().contains(&151_643));
    assert!(q.chat_template().unwrap().contains("<|im_start|>"));
    let ids = q.encode("<|im_start|>user\nhi<|im_end|>", true).unwrap();
    assert_eq!(ids[0], 151_644);
    assert_eq!(*ids.last().unwrap(), 151_645);
    // Without special parsing the markers are text.
    let plain = q.encode_with("<|im_start|>", true, false).unwrap();
    assert!(plain.len() > 1 && !plain.contains(&151_644));
    assert_eq!(q.token_bytes(q.token_to_id("Ġthe").unwrap()), b" the");
}

#[test]
fn corpus_matches_llama_tokenize() {
    let expected_path = common::data("gguf_corpus_expected.json");
    let corpus = common::read_json(&common::data("corpus.json"));
    let expected = common::read_json(&expected_path);
    let texts: Vec<&str> = corpus
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(texts.len() >= 200);
    for (name, file) in [("gemma3-270m", GEMMA), ("qwen2.5-coder-0.5b", QWEN)] {
        let tk = load(file);
        let exp = expected["models"][name].as_array().unwrap();
        assert_eq!(exp.len(), texts.len());
        let mut failures = Vec::new();
        for (text, want) in texts.iter().zip(exp) {
            let mut want = ids(want);
            // Deliberate difference: llama.cpp keeps a doubled BOS (with a warning).
            if want.len() >= 2
                && tk.adds_bos()
                && want[0] == want[1]
                && Some(want[0]) == tk.bos_id()
            {
                want.remove(0);
            }
            let got = tk.encode(text, true).unwrap();
            // Known difference, not yet fixed: Qwen's vocabulary has a plain-text "</s>" token
            // (128247) that llama.cpp matches as a special token, splitting off the space
            // before it. Asserted to still differ, so the fix will show up here.
            if name == "qwen2.5-coder-0.5b" && *text == "<s> literal special token text </s>" {
                assert_ne!(
                    got, want,
                    "{name}: known difference fixed? remove this exception"
                );
                continue;
            }
            if got != want {
                failures.push(format!("{text:?}\n   got  {got:?}\n   want {want:?}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{name}: {} of {} differ:\n{}",
            failures.len(),
            texts.len(),
            failures.join("\n")
        );
    }
}

#[test]
fn long_text_is_fast_enough_and_roundtrips() {
    // 17 KB of English: must stay far from quadratic behaviour (asserted only for
    // correctness here; the time is printed).
    let text = std::fs::read_to_string(common::test_data().join("ppl-text.txt")).unwrap();
    for file in [GEMMA, QWEN] {
        let tk = load(file);
        let t = std::time::Instant::now();
        let ids = tk.encode(&text, false).unwrap();
        eprintln!(
            "{file}: {} bytes -> {} tokens in {:?}",
            text.len(),
            ids.len(),
            t.elapsed()
        );
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| tk.token_bytes(id)).collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), text);
    }
}

/// Qwen2.5's vocabulary rebuilt as a `tokenizer.json` (byte-level BPE with the GGUF's merges,
/// Qwen2's split regex, its control / user-defined tokens as added tokens; no normalizer, as
/// llama.cpp has none) and run through the `tokenizers` crate: an independent reference for the
/// whole corpus while llama-tokenize output is not available.
#[test]
fn qwen_corpus_matches_tokenizers_crate() {
    use kiln_formats::MetaValue;
    let p = common::model_path(QWEN);
    let meta = common::gguf_tokenizer_meta(&p);
    let strs = |k: &str| -> Vec<String> {
        match &meta[k] {
            MetaValue::Array(a) => a
                .iter()
                .map(|v| match v {
                    MetaValue::String(s) => s.clone(),
                    _ => panic!("{k}"),
                })
                .collect(),
            _ => panic!("{k}"),
        }
    };
    let tokens = strs("tokenizer.ggml.tokens");
    let merges = strs("tokenizer.ggml.merges");
    let types: Vec<i64> = match &meta["tokenizer.ggml.token_type"] {
        MetaValue::Array(a) => a
            .iter()
            .map(|v| match v {
                MetaValue::I32(x) => *x as i64,
                _ => panic!(),
            })
            .collect(),
        _ => panic!(),
    };
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), serde_json::json!(i));
        if types[i] == 3 || types[i] == 4 {
            added.push(
                serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": types[i] == 3}),
            );
        }
    }
    let re = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let bl = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let j = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false}, bl]},
        "post_processor": null, "decoder": bl,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    });
    let reference: tokenizers::Tokenizer = j.to_string().parse().unwrap();
    let tk = Tokenizer::from_source(&TokenizerSource::Gguf(meta)).unwrap();
    let corpus = common::read_json(&common::data("corpus.json"));
    let mut bad = Vec::new();
    for text in corpus
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
    {
        let want = reference.encode(text, false).unwrap().get_ids().to_vec();
        let got = tk.encode(text, true).unwrap();
        if got != want {
            bad.push(format!("{text:?}\n   got  {got:?}\n   want {want:?}"));
        }
    }
    assert!(bad.is_empty(), "{} differ:\n{}", bad.len(), bad.join("\n"));
}

/// Gemma 3's vocabulary against SentencePiece itself (tests/data/gen_gemma_spm_reference.py
/// rebuilds the SentencePiece model from the GGUF metadata): without control-token parsing,
/// llama.cpp's SPM tokenizer is SentencePiece's BPE. Known difference: Gemma's user-defined
/// whitespace-run tokens ("  ", "   ", ...) are matched by llama.cpp on the raw text, while
/// SentencePiece matches user-defined pieces after turning spaces into "▁", so it never sees
/// them; texts with two spaces in a row are left out here (llama.cpp's corpus covers them).
#[test]
fn gemma_corpus_matches_sentencepiece() {
    let tk = load(GEMMA);
    let exp = common::read_json(&common::data("gemma_spm_reference.json"));
    let corpus = common::read_json(&common::data("corpus.json"));
    let mut bad = Vec::new();
    let mut compared = 0;
    let texts = corpus.as_array().unwrap();
    for (text, want) in texts.iter().zip(exp["ids"].as_array().unwrap()) {
        let text = text.as_str().unwrap();
        let want = ids(want);
        let got = tk.encode_with(text, false, false).unwrap();
        if text.contains("  ") {
            continue;
        }
        compared += 1;
        if got != want {
            bad.push(format!("{text:?}\n   got  {got:?}\n   want {want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        texts.len(),
        bad.join("\n")
    );
    assert!(compared >= 225, "{compared}");
}
