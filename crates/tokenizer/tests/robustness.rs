//! Arbitrary input never panics: random text (valid UTF-8 from random bytes and code points)
//! encodes, round-trips through token_bytes where the tokenizer is lossless, and random ids
//! (also out of range) decode.

mod common;

use kiln_formats::TokenizerSource;
use kiln_tokenizer::Tokenizer;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn text(&mut self, n: usize) -> String {
        let mut s = String::new();
        for _ in 0..n {
            let r = self.next();
            let c = match r % 6 {
                0 => ' ',
                1 => ['\n', '\t', '\r', '\'', '<', '>', '|'][(r >> 8) as usize % 7],
                2 => char::from_u32(0x20 + (r >> 8) as u32 % 0x5f).unwrap(),
                3 => char::from_u32((r >> 8) as u32 % 0x800).unwrap_or('?'),
                4 => char::from_u32((r >> 8) as u32 % 0x11_0000).unwrap_or('\u{fffd}'),
                _ => {
                    ['<', 's', '>', '/', '|', 'e', 'o', 't', '_', 'i', 'd'][(r >> 8) as usize % 11]
                }
            };
            s.push(c);
        }
        s
    }
}

fn tokenizers() -> Vec<(String, Tokenizer)> {
    let fx = common::test_data().join("fixtures/tokenizers");
    let mut v = vec![
        (
            "spm json".to_string(),
            TokenizerSource::HfJson(fx.join("spm-bpe-512/tokenizer.json")),
        ),
        (
            "bytelevel json".to_string(),
            TokenizerSource::HfJson(fx.join("bytelevel-bpe-512/tokenizer.json")),
        ),
        (
            "spm model".to_string(),
            TokenizerSource::TokenizerModel(fx.join("spm-bpe-512/tokenizer.model")),
        ),
        (
            "tiktoken".to_string(),
            TokenizerSource::TokenizerModel(common::data("tiktoken-small.model")),
        ),
    ];
    for f in [
        "gemma-3-270m-q4_k_m.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ] {
        let p = common::model_path(f);
        v.push((
            f.to_string(),
            TokenizerSource::Gguf(common::gguf_tokenizer_meta(&p)),
        ));
    }
    v.into_iter()
        .map(|(n, s)| (n, Tokenizer::from_source(&s).unwrap()))
        .collect()
}

#[test]
fn random_text_and_ids() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (name, tk) in tokenizers() {
        let lossless = !name.starts_with("spm");
        for i in 0..200 {
            let text = rng.text(1 + i % 60);
            for parse in [false, true] {
                let ids = tk.encode_with(&text, true, parse).unwrap();
                assert!(
                    ids.iter().all(|&id| (id as usize) < tk.vocab_size()),
                    "{name}"
                );
                if lossless && !parse {
                    let start = usize::from(tk.adds_bos());
                    let bytes: Vec<u8> = ids[start..]
                        .iter()
                        .flat_map(|&id| tk.token_bytes(id))
                        .collect();
                    assert_eq!(String::from_utf8_lossy(&bytes), text, "{name}");
                }
            }
            let ids: Vec<u32> = (0..20)
                .map(|_| (rng.next() % (tk.vocab_size() as u64 + 10)) as u32)
                .collect();
            let _ = tk.decode(&ids, false);
            let _ = tk.decode(&ids, true);
            for &id in &ids {
                let _ = tk.token_bytes(id);
                let _ = tk.is_special(id);
            }
        }
    }
}
