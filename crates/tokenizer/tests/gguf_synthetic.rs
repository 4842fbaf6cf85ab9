//! The GGUF code paths on vocabularies built from the fixture tokenizers (so they run without
//! the real models): a `llama` vocabulary from spm-bpe-512 against SentencePiece's ids, and a
//! `gpt2` vocabulary (pre `llama-bpe`) from bytelevel-bpe-512's tokenizer.json against the
//! `tokenizers` crate on the same file.

mod common;

use std::collections::BTreeMap;

use kiln_formats::{MetaValue, TokenizerSource};
use kiln_tokenizer::Tokenizer;

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn strs(v: Vec<String>) -> MetaValue {
    MetaValue::Array(v.into_iter().map(MetaValue::String).collect())
}

fn corpus() -> Vec<String> {
    let c = common::read_json(&common::data("corpus.json"));
    c.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn llama_vocab_equals_sentencepiece() {
    let exp = common::read_json(&common::data("spm_expected.json"));
    let v = &exp["vocab"];
    let mut meta = BTreeMap::new();
    meta.insert(
        "tokenizer.ggml.model".into(),
        MetaValue::String("llama".into()),
    );
    meta.insert(
        "tokenizer.ggml.tokens".into(),
        strs(
            v["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect(),
        ),
    );
    meta.insert(
        "tokenizer.ggml.scores".into(),
        MetaValue::Array(
            v["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| MetaValue::F32(s.as_f64().unwrap() as f32))
                .collect(),
        ),
    );
    meta.insert(
        "tokenizer.ggml.token_type".into(),
        MetaValue::Array(
            v["token_type"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| MetaValue::I32(s.as_i64().unwrap() as i32))
                .collect(),
        ),
    );
    meta.insert("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(1));
    meta.insert("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(2));
    let tk = Tokenizer::from_source(&TokenizerSource::Gguf(meta)).unwrap();
    assert!(tk.adds_bos());
    let want = exp["ids"].as_array().unwrap();
    let corpus = corpus();
    let mut compared = 0;
    for (i, text) in corpus.iter().enumerate() {
        let want = ids(&want[i]);
        // Without special-token parsing llama.cpp's SPM tokenizer is SentencePiece's BPE.
        assert_eq!(tk.encode_with(text, true, false).unwrap(), want, "{text:?}");
        if !["<s>", "</s>", "<unk>"].iter().any(|s| text.contains(s)) {
            assert_eq!(tk.encode(text, true).unwrap(), want, "{text:?}");
            compared += 1;
        }
        // Decoding gives the text back (the leading space of the dummy prefix removed).
        let dec = tk.decode(&tk.encode_with(text, false, false).unwrap(), true);
        assert_eq!(dec, exp["decode"][i].as_str().unwrap(), "{text:?}");
    }
    assert!(compared > 240);
    // With parsing, `<s>` in the text is the BOS token (kept once) and the text after a
    // special token gets the space prefix again, as in llama.cpp.
    let got = tk.encode("<s> hi</s>", true).unwrap();
    assert_eq!(got[0], 1);
    assert_ne!(got[1], 1);
    assert_eq!(*got.last().unwrap(), 2);
}

#[test]
fn gpt2_vocab_equals_tokenizers_crate() {
    let path = common::test_data().join("fixtures/tokenizers/bytelevel-bpe-512/tokenizer.json");
    let json = common::read_json(&path);
    let vocab = json["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); 512];
    let mut types = vec![1i32; 512];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    for a in json["added_tokens"].as_array().unwrap() {
        let id = a["id"].as_u64().unwrap() as usize;
        tokens[id] = a["content"].as_str().unwrap().to_string();
        types[id] = if a["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
    }
    let merges: Vec<String> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(p) => {
                format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap())
            }
            _ => panic!("merge format"),
        })
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert(
        "tokenizer.ggml.model".into(),
        MetaValue::String("gpt2".into()),
    );
    meta.insert(
        "tokenizer.ggml.pre".into(),
        MetaValue::String("llama-bpe".into()),
    );
    meta.insert("tokenizer.ggml.tokens".into(), strs(tokens));
    meta.insert(
        "tokenizer.ggml.token_type".into(),
        MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
    );
    meta.insert("tokenizer.ggml.merges".into(), strs(merges));
    meta.insert("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(510));
    meta.insert("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(511));
    let tk = Tokenizer::from_source(&TokenizerSource::Gguf(meta)).unwrap();
    assert!(tk.adds_bos());
    assert!(tk.eos_ids().contains(&511));
    let reference = tokenizers::Tokenizer::from_file(&path).unwrap();
    let mut bad = Vec::new();
    for text in corpus() {
        let want = reference
            .encode(text.as_str(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        let got = tk.encode(&text, true).unwrap();
        if got != want {
            bad.push(format!("{text:?}\n  got  {got:?}\n  want {want:?}"));
        }
        let bytes: Vec<u8> = got[1..].iter().flat_map(|&id| tk.token_bytes(id)).collect();
        assert_eq!(String::from_utf8_lossy(&bytes), text);
    }
    assert!(bad.is_empty(), "{} differ:\n{}", bad.len(), bad.join("\n"));
}
