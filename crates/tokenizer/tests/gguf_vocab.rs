//! tokenizer.json written as GGUF vocabulary metadata (what `kiln convert` / `kiln quantize`
//! store) tokenizes as transformers does: the ids in tokenizer_checks.json (made by
//! transformers 5.24) through the GGUF tokenizers (llama.cpp's algorithms).

mod common;

use std::collections::BTreeMap;

use kiln_formats::{MetaValue, TokenizerSource};
use kiln_tokenizer::{hf_json_gguf_metadata, Tokenizer};

fn gguf_tokenizer(dir: &str, bos: u32, eos: u32) -> (Tokenizer, BTreeMap<String, MetaValue>) {
    let p = common::test_data()
        .join("fixtures/tokenizers")
        .join(dir)
        .join("tokenizer.json");
    let mut meta: BTreeMap<String, MetaValue> =
        hf_json_gguf_metadata(&p).unwrap().into_iter().collect();
    // (the model metadata carries these; convert writes them from config.json)
    meta.insert("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(bos));
    meta.insert("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(eos));
    let tk = Tokenizer::from_source(&TokenizerSource::Gguf(meta.clone())).unwrap();
    (tk, meta)
}

fn check(dir: &str, model: &str) {
    let checks =
        common::read_json(&common::test_data().join("fixtures/tokenizers/tokenizer_checks.json"));
    let c = &checks[dir];
    let bos = c["bos"][1].as_u64().unwrap() as u32;
    let eos = c["eos"][1].as_u64().unwrap() as u32;
    let (tk, meta) = gguf_tokenizer(dir, bos, eos);
    assert_eq!(
        meta["tokenizer.ggml.model"],
        MetaValue::String(model.into()),
        "{dir}"
    );
    assert_eq!(tk.vocab_size(), c["vocab_size"].as_u64().unwrap() as usize);
    assert!(tk.adds_bos(), "{dir}");
    let strings = c["strings"].as_array().unwrap();
    assert!(strings.len() >= 13);
    for s in strings {
        let text = s["text"].as_str().unwrap();
        // llama.cpp's SentencePiece tokenizer prefixes a space to the text and to the text
        // after a special token even when it starts with a space, where transformers'
        // Metaspace does not: a known difference of the format, not of the conversion.
        if model == "llama" && (text.starts_with(' ') || text.contains("s> ")) {
            continue;
        }
        let mut want: Vec<u32> = s["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // (kiln adds BOS once to a text that starts with it; transformers twice)
        if want.len() >= 2 && want[0] == want[1] && want[0] == bos {
            want.remove(0);
        }
        assert_eq!(tk.encode(text, true).unwrap(), want, "{dir}: {text:?}");
        // (decoded without BOS: after a leading BOS llama.cpp keeps the space prefix)
        let body = if want.first() == Some(&bos) {
            &want[1..]
        } else {
            &want[..]
        };
        assert_eq!(
            tk.decode(body, true),
            s["decode_skip_special"].as_str().unwrap(),
            "{dir}: decode {text:?}"
        );
    }
}

#[test]
fn byte_level_bpe_as_gpt2_vocabulary() {
    check("bytelevel-bpe-512", "gpt2");
}

#[test]
fn sentencepiece_style_bpe_as_llama_vocabulary() {
    check("spm-bpe-512", "llama");
}

/// A pre-tokenizer split that is neither Llama 3's, Qwen2's nor GPT-2's is refused, not
/// written under a wrong name.
#[test]
fn unknown_split_is_refused() {
    let src = common::test_data().join("fixtures/tokenizers/bytelevel-bpe-512/tokenizer.json");
    let mut raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    raw["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+|\\s+".into();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, raw.to_string()).unwrap();
    let e = hf_json_gguf_metadata(&p).unwrap_err().to_string();
    assert!(e.contains("pre-tokenizer split"), "{e}");
}
