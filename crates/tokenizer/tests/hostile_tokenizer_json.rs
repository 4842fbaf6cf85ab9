//! tokenizer.json files that made the `tokenizers` crate panic at load (issue 20): each is a
//! clear error from `Tokenizer::from_source`, and nothing panics afterwards either.

use std::path::{Path, PathBuf};

use kiln_formats::TokenizerSource;
use kiln_tokenizer::Tokenizer;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/fixtures")
        .join(name)
        .join("tokenizer.json")
}

/// Loads `fixture`'s tokenizer.json after `edit`.
fn load_edited(fixture_name: &str, edit: impl FnOnce(&mut Value)) -> Result<Tokenizer, String> {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(fixture_name)).unwrap()).unwrap();
    edit(&mut v);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, v.to_string()).unwrap();
    Tokenizer::from_source(&TokenizerSource::HfJson(p)).map_err(|e| e.to_string())
}

#[test]
fn the_fixtures_load() {
    for f in ["llama-mha", "qwen2-tiny"] {
        let t = load_edited(f, |_| {}).unwrap();
        assert!(!t.encode("hello world", true).unwrap().is_empty());
    }
}

#[test]
fn replace_normalizer_with_an_empty_pattern_is_refused() {
    for pattern in [json!({"String": ""}), json!({"Regex": ""})] {
        let e = load_edited("llama-mha", |v| {
            v["normalizer"] = json!({"type": "Replace", "pattern": pattern, "content": "x"});
        })
        .map(|_| ())
        .unwrap_err();
        assert!(e.contains("empty pattern"), "{e}");
        // Nested in a Sequence too.
        let e = load_edited("llama-mha", |v| {
            v["normalizer"] = json!({"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": pattern, "content": "x"}
            ]});
        })
        .map(|_| ())
        .unwrap_err();
        assert!(e.contains("empty pattern"), "{e}");
    }
}

#[test]
fn template_processing_naming_an_unknown_special_token_is_refused() {
    let e = load_edited("llama-mha", |v| {
        v["post_processor"]["single"][0]["SpecialToken"]["id"] = json!("<nope>");
    })
    .map(|_| ())
    .unwrap_err();
    assert!(e.contains("<nope>"), "{e}");
    // Inside a Sequence of processors (as Llama 3 / Qwen write them).
    let e = load_edited("qwen2-tiny", |v| {
        v["post_processor"]["processors"][1]["pair"][0]["SpecialToken"]["id"] = json!("<nope>");
    })
    .map(|_| ())
    .unwrap_err();
    assert!(e.contains("<nope>"), "{e}");
}

#[test]
fn special_token_ids_outside_the_vocabulary_are_refused() {
    let e = load_edited("llama-mha", |v| {
        v["post_processor"]["special_tokens"]["<s>"]["ids"] = json!([1_000_000]);
    })
    .map(|_| ())
    .unwrap_err();
    assert!(e.contains("1000000"), "{e}");
}

#[test]
fn merges_without_the_continuing_subword_prefix_are_refused() {
    // Found by the fuzzing harness: the tokenizers crate slices each merge's second part by
    // the prefix's length and panicked on a shorter one.
    let e = load_edited("qwen2-tiny", |v| {
        v["model"]["continuing_subword_prefix"] = json!("<unk>");
    })
    .map(|_| ())
    .unwrap_err();
    assert!(e.contains("continuing_subword_prefix"), "{e}");
}
