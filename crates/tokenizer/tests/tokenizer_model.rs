//! `tokenizer.model` files: SentencePiece (fixture spm-bpe-512) against SentencePiece's own ids,
//! tiktoken (a small Llama-3-layout file) against tiktoken's ids, and Meta's Llama 2 chat
//! prompt format. Expected values: tests/data/gen_spm_expected.py, gen_tiktoken.py.

mod common;

use kiln_formats::TokenizerSource;
use kiln_tokenizer::{llama2_chat_prompt, ChatMessage, Tokenizer};

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn spm() -> Tokenizer {
    let p = common::test_data().join("fixtures/tokenizers/spm-bpe-512/tokenizer.model");
    Tokenizer::from_source(&TokenizerSource::TokenizerModel(p)).unwrap()
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
fn sentencepiece_fixture_strings() {
    let tk = spm();
    assert_eq!(tk.vocab_size(), 512);
    assert_eq!(tk.bos_id(), Some(1));
    assert_eq!(tk.eos_ids(), &[2]);
    assert!(tk.adds_bos());
    let checks =
        common::read_json(&common::test_data().join("fixtures/tokenizers/tokenizer_checks.json"));
    let strings = checks["spm-bpe-512"]["strings"].as_array().unwrap();
    assert_eq!(strings.len(), 13);
    for s in strings {
        let text = s["text"].as_str().unwrap();
        let want = ids(&s["sentencepiece_ids"]);
        let got = tk.encode(text, true).unwrap();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(
            tk.decode(&got, true),
            s["sentencepiece_decode"].as_str().unwrap(),
            "{text:?}"
        );
    }
}

#[test]
fn sentencepiece_corpus() {
    let tk = spm();
    let exp = common::read_json(&common::data("spm_expected.json"));
    let corpus = corpus();
    let want_ids = exp["ids"].as_array().unwrap();
    let want_dec = exp["decode"].as_array().unwrap();
    assert_eq!(want_ids.len(), corpus.len());
    let mut bad = Vec::new();
    for (i, text) in corpus.iter().enumerate() {
        let got = tk.encode(text, true).unwrap();
        if got != ids(&want_ids[i]) {
            bad.push(format!(
                "{text:?}\n  got  {got:?}\n  want {:?}",
                ids(&want_ids[i])
            ));
            continue;
        }
        let dec = tk.decode(&got, true);
        if dec != want_dec[i].as_str().unwrap() {
            bad.push(format!("decode {text:?}: {dec:?} vs {:?}", want_dec[i]));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        corpus.len(),
        bad.join("\n")
    );
}

#[test]
fn llama2_chat_prompts() {
    let tk = spm();
    let exp = common::read_json(&common::data("spm_expected.json"));
    let chats = exp["chat"].as_array().unwrap();
    assert!(chats.len() >= 4);
    for c in chats {
        let dialog: Vec<ChatMessage> = c["dialog"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        assert_eq!(
            llama2_chat_prompt(&tk, &dialog).unwrap(),
            ids(&c["ids"]),
            "{dialog:?}"
        );
    }
    // Bad dialogs are errors.
    let u = ChatMessage::new("user", "hi");
    let a = ChatMessage::new("assistant", "yo");
    assert!(llama2_chat_prompt(&tk, &[u.clone(), a.clone()]).is_err());
    assert!(llama2_chat_prompt(&tk, &[u.clone(), u.clone()]).is_err());
    assert!(llama2_chat_prompt(&tk, &[ChatMessage::new("user", "[INST] sneaky")]).is_err());
    assert!(llama2_chat_prompt(&tk, &[]).is_err());
}

#[test]
fn tiktoken_corpus() {
    let data = std::fs::read(common::data("tiktoken-small.model")).unwrap();
    let tk = Tokenizer::from_tokenizer_model_bytes(&data).unwrap();
    let exp = common::read_json(&common::data("tiktoken_expected.json"));
    let n = exp["n_ranks"].as_u64().unwrap() as usize;
    assert_eq!(tk.vocab_size(), n + 256);
    assert_eq!(tk.bos_id(), Some(exp["bos"].as_u64().unwrap() as u32));
    assert!(tk
        .eos_ids()
        .contains(&(exp["eot"].as_u64().unwrap() as u32)));
    assert_eq!(
        tk.token_to_id("<|eot_id|>"),
        Some(exp["eot"].as_u64().unwrap() as u32)
    );
    let corpus = corpus();
    let want = exp["ids"].as_array().unwrap();
    let mut bad = Vec::new();
    for (i, text) in corpus.iter().enumerate() {
        let got = tk.encode(text, true).unwrap();
        if got != ids(&want[i]) {
            bad.push(format!(
                "{text:?}\n  got  {got:?}\n  want {:?}",
                ids(&want[i])
            ));
        }
        assert_eq!(tk.decode(&got, true), *text);
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        corpus.len(),
        bad.join("\n")
    );
}

#[test]
fn format_detection_and_bad_input() {
    // A tiktoken file is detected by content even through the TokenizerModel source.
    let p = common::data("tiktoken-small.model");
    let tk = Tokenizer::from_source(&TokenizerSource::TokenizerModel(p)).unwrap();
    assert_eq!(tk.encode("", true).unwrap().len(), 1);
    // Garbage is an error, not a panic.
    for bad in [
        &b""[..],
        b"\x0a\xff\xff\xff\xff\x0f",
        b"\x0a\x05abc",
        b"hello world\n",
        b"\xff\xfe\x00",
    ] {
        assert!(
            Tokenizer::from_tokenizer_model_bytes(bad).is_err(),
            "{bad:?}"
        );
    }
    // A truncated SentencePiece model is an error.
    let data =
        std::fs::read(common::test_data().join("fixtures/tokenizers/spm-bpe-512/tokenizer.model"))
            .unwrap();
    assert!(Tokenizer::from_tokenizer_model_bytes(&data[..data.len() / 2]).is_err());
}

#[test]
fn parsing_special_text_on_request() {
    let tk = spm();
    let exp = common::read_json(&common::data("spm_expected.json"));
    let parsed = exp["parsed"].as_array().unwrap();
    assert!(parsed.len() >= 4);
    for p in parsed {
        let text = p["text"].as_str().unwrap();
        assert_eq!(
            tk.encode_with(text, false, true).unwrap(),
            ids(&p["ids"]),
            "{text:?}"
        );
    }
    // BOS stays single when the text starts with `<s>`.
    let ids_bos = tk.encode_with("<s>[INST] hi [/INST]", true, true).unwrap();
    assert_eq!(&ids_bos[..2], &[1, 429]);

    let data = std::fs::read(common::data("tiktoken-small.model")).unwrap();
    let tt = Tokenizer::from_tokenizer_model_bytes(&data).unwrap();
    let exp = common::read_json(&common::data("tiktoken_expected.json"));
    for p in exp["parsed"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        assert_eq!(
            tt.encode_with(text, false, true).unwrap(),
            ids(&p["ids"]),
            "{text:?}"
        );
    }
}
