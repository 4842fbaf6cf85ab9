//! GGUF vocabularies of the real models against llama.cpp (commit 0c1e57098):
//! the anchor prompt ids (shared/anchors) and a corpus tokenized by `llama-tokenize`
//! (tests/data/gguf_corpus_expected.json, made by tests/data/gen_gguf_corpus.sh).
//! Skipped (with a message) when the model files are absent.

mod common;

use kiln_formats::TokenizerSource;
use kiln_tokenizer::Tokenizer;

const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

fn load(file: &str) -> Option<Tokenizer> {
    let p = common::model_path(file)?;
    let meta = common::gguf_tokenizer_meta(&p);
    Some(Tokenizer::from_source(&TokenizerSource::Gguf(meta)).unwrap())
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
    let anchors = common::read_json(&common::shared().join("anchors/llama-cpp-0c1e57098.json"));
    for (name, file) in [("gemma3-270m", GEMMA), ("qwen2.5-coder-0.5b", QWEN)] {
        let Some(tk) = load(file) else { continue };
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
    if let Some(g) = load(GEMMA) {
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
    }
    if let Some(q) = load(QWEN) {
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
}

#[test]
fn corpus_matches_llama_tokenize() {
    let expected_path = common::data("gguf_corpus_expected.json");
    if !expected_path.exists() {
        eprintln!("SKIPPED: {} not generated yet", expected_path.display());
        return;
    }
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
        let Some(tk) = load(file) else { continue };
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
    let text = std::fs::read_to_string(common::shared().join("data/ppl-text.txt")).unwrap();
    for file in [GEMMA, QWEN] {
        let Some(tk) = load(file) else { continue };
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
