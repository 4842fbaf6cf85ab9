//! The SentencePiece (`llama`) vocabularies llama.cpp's own converter wrote for the tiny
//! architecture fixtures (tests/data/fixtures/arch/llama.cpp-gguf) tokenize as llama.cpp's
//! `llama-tokenize` does (data/arch_gguf_expected.json, made by gen_arch_gguf_expected.py with
//! the anchor build), on the golden prompts and the whole corpus, and as transformers does on
//! the fixtures' `tokenizer.model` (the goldens' input_ids) everywhere but in one place that
//! llama.cpp chose: its converter writes `tokenizer.ggml.add_space_prefix = false` for every
//! Gemma and Gemma 2 model (right for Gemma's own tokenizer, whose `add_dummy_prefix` is off;
//! the fixtures share a tokenizer whose `add_dummy_prefix` is on), so llama.cpp, and kiln with
//! it, does not put the lone "▁" transformers puts before "Hello". With the flag as the
//! tokenizer.model says, kiln gives transformers' ids on that file too.

mod common;

use kiln_formats::{MetaValue, TokenizerSource};
use kiln_tokenizer::Tokenizer;
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn arch(path: &str) -> std::path::PathBuf {
    common::test_data().join("fixtures/arch").join(path)
}

fn tokenizer(meta: &std::collections::BTreeMap<String, MetaValue>) -> Tokenizer {
    Tokenizer::from_source(&TokenizerSource::Gguf(meta.clone())).unwrap()
}

#[test]
fn llama_cpp_written_vocabularies_tokenize_as_llama_tokenize_and_transformers() {
    let expected = common::read_json(&common::data("arch_gguf_expected.json"));
    let corpus = common::read_json(&common::data("corpus.json"));
    let texts: Vec<&str> = corpus
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut checked = 0;
    for (model, exp) in expected["models"].as_object().unwrap() {
        let golden = common::read_json(&arch(&format!("golden/{model}.json")));
        let meta = common::gguf_tokenizer_meta(&arch(&format!("llama.cpp-gguf/{model}.gguf")));
        let tk = tokenizer(&meta);
        let prompts = golden["prompts"].as_array().unwrap();
        if exp.get("llama_cpp_cannot_load").is_some() {
            // (phi3-tiny: llama.cpp's loader refuses this vocabulary; kiln still tokenizes it
            // as transformers does.)
            for p in prompts {
                let text = p["text"].as_str().unwrap();
                assert_eq!(
                    tk.encode(text, true).unwrap(),
                    ids(&p["input_ids"]),
                    "{model}"
                );
            }
            continue;
        }
        let gemma = model.starts_with("gemma");
        assert_eq!(
            meta.get("tokenizer.ggml.add_space_prefix"),
            gemma.then_some(&MetaValue::Bool(false)),
            "{model}: llama.cpp's converter writes add_space_prefix = false for Gemma only"
        );
        for (p, want) in prompts.iter().zip(exp["prompts"].as_array().unwrap()) {
            let text = p["text"].as_str().unwrap();
            let llama = ids(&want["ids"]);
            let got = tk.encode(text, true).unwrap();
            assert_eq!(got, llama, "{model} {text:?}: kiln vs llama-tokenize");
            let hf = ids(&p["input_ids"]);
            if !gemma {
                assert_eq!(got, hf, "{model} {text:?}: kiln vs transformers");
                continue;
            }
            // Gemma 2: the dummy-prefix "▁" is missing, and with the flag as the
            // tokenizer.model has it, kiln gives transformers' ids.
            assert_ne!(got, hf, "{model} {text:?}");
            let mut on = meta.clone();
            on.insert(
                "tokenizer.ggml.add_space_prefix".into(),
                MetaValue::Bool(true),
            );
            assert_eq!(tokenizer(&on).encode(text, true).unwrap(), hf, "{model}");
        }
        let corpus_ids = exp["corpus"].as_array().unwrap();
        assert_eq!(corpus_ids.len(), texts.len());
        let mut failures = Vec::new();
        for (text, want) in texts.iter().zip(corpus_ids) {
            let mut want = ids(want);
            // Deliberate difference: llama.cpp keeps a doubled BOS (with a warning).
            if want.len() >= 2 && want[0] == want[1] && Some(want[0]) == tk.bos_id() {
                want.remove(0);
            }
            let got = tk.encode(text, true).unwrap();
            if got != want {
                failures.push(format!("{text:?}\n   got  {got:?}\n   want {want:?}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{model}: {} of {} differ from llama-tokenize:\n{}",
            failures.len(),
            texts.len(),
            failures.join("\n")
        );
        checked += 1;
    }
    assert_eq!(checked, 5, "five vocabularies llama.cpp loads");
}
