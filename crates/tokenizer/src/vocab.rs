//! A vocabulary (id ↔ piece text, scores, token attributes) and the splitting of special
//! tokens out of a text, as llama.cpp's `tokenizer_st_partition` does it.

use std::collections::HashMap;

/// Token attributes (llama.cpp's `llama_token_attr` bits; GGUF `token_type` and
/// SentencePiece piece types map onto them).
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;

    /// GGUF `tokenizer.ggml.token_type` / SentencePiece `Type` (same numbering).
    pub fn from_type(t: i64) -> u16 {
        match t {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => 0,
        }
    }
}

/// A piece of input after special tokens are split out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Frag {
    /// Byte range of ordinary text.
    Text(usize, usize),
    Token(u32),
}

pub(crate) struct Vocab {
    pub texts: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u16>,
    pub map: HashMap<String, u32>,
    special: SpecialMatcher,
}

/// Finds occurrences of special-token texts.
#[derive(Default)]
struct SpecialMatcher {
    /// text → (id, priority): priority 0 is matched first (longest text first, then lowest id).
    map: HashMap<Vec<u8>, (u32, u32)>,
    /// Distinct text lengths (descending) of the specials starting with each byte.
    lens_by_first: Vec<Vec<usize>>,
}

impl Vocab {
    /// `texts` must be free of duplicates (a later duplicate would shadow an earlier one).
    pub fn new(texts: Vec<String>, scores: Vec<f32>, attrs: Vec<u16>) -> Vocab {
        let mut map = HashMap::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            map.insert(t.clone(), i as u32);
        }
        let mut v = Vocab {
            texts,
            scores,
            attrs,
            map,
            special: SpecialMatcher::default(),
        };
        v.rebuild_specials();
        v
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn id(&self, text: &str) -> Option<u32> {
        self.map.get(text).copied()
    }

    pub fn attr(&self, id: u32) -> u16 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    /// Rebuilds the special-token matcher after attributes changed: every control,
    /// user-defined and unknown token, longest first.
    pub fn rebuild_specials(&mut self) {
        let mut ids: Vec<u32> = (0..self.texts.len() as u32)
            .filter(|&id| {
                self.attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
                    && !self.texts[id as usize].is_empty()
            })
            .collect();
        ids.sort_by(|&a, &b| {
            self.texts[b as usize]
                .len()
                .cmp(&self.texts[a as usize].len())
                .then(a.cmp(&b))
        });
        let mut m = SpecialMatcher {
            map: HashMap::with_capacity(ids.len()),
            lens_by_first: vec![Vec::new(); 256],
        };
        for (prio, &id) in ids.iter().enumerate() {
            let t = self.texts[id as usize].as_bytes();
            m.map.insert(t.to_vec(), (id, prio as u32));
            let lens = &mut m.lens_by_first[t[0] as usize];
            if !lens.contains(&t.len()) {
                lens.push(t.len());
            }
        }
        for lens in &mut m.lens_by_first {
            lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        self.special = m;
    }

    /// Splits `text` into ordinary text and special tokens. Specials are taken longest first;
    /// each one's occurrences left to right, never overlapping a special already taken. With
    /// `parse_special` false only user-defined tokens are split out (control and unknown
    /// tokens stay text), as in llama.cpp.
    pub fn partition(&self, text: &str, parse_special: bool) -> Vec<Frag> {
        let bytes = text.as_bytes();
        let n = bytes.len();
        // (priority, start, len, id) of every occurrence.
        let mut occ: Vec<(u32, usize, usize, u32)> = Vec::new();
        if !self.special.map.is_empty() {
            for start in 0..n {
                let lens = &self.special.lens_by_first[bytes[start] as usize];
                for &len in lens {
                    if start + len > n {
                        continue;
                    }
                    if let Some(&(id, prio)) = self.special.map.get(&bytes[start..start + len]) {
                        if !parse_special
                            && self.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0
                        {
                            continue;
                        }
                        occ.push((prio, start, len, id));
                    }
                }
            }
        }
        if occ.is_empty() {
            return if n == 0 {
                Vec::new()
            } else {
                vec![Frag::Text(0, n)]
            };
        }
        occ.sort_unstable();
        let mut taken = vec![false; n];
        let mut accepted: Vec<(usize, usize, u32)> = Vec::new();
        for &(_, start, len, id) in &occ {
            if taken[start..start + len].iter().any(|&t| t) {
                continue;
            }
            taken[start..start + len].iter_mut().for_each(|t| *t = true);
            accepted.push((start, len, id));
        }
        accepted.sort_unstable();
        let mut out = Vec::with_capacity(accepted.len() * 2 + 1);
        let mut pos = 0;
        for (start, len, id) in accepted {
            if start > pos {
                out.push(Frag::Text(pos, start));
            }
            out.push(Frag::Token(id));
            pos = start + len;
        }
        if pos < n {
            out.push(Frag::Text(pos, n));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(items: &[(&str, u16)]) -> Vocab {
        Vocab::new(
            items.iter().map(|(t, _)| t.to_string()).collect(),
            vec![0.0; items.len()],
            items.iter().map(|(_, a)| *a).collect(),
        )
    }

    #[test]
    fn longest_first_and_user_defined_always() {
        let v = vocab(&[
            ("a", attr::NORMAL),
            ("<s>", attr::CONTROL),
            ("\n", attr::USER_DEFINED),
            ("\n\n", attr::USER_DEFINED),
        ]);
        let f = v.partition("x<s>\n\n\ny", true);
        assert_eq!(
            f,
            vec![
                Frag::Text(0, 1),
                Frag::Token(1),
                Frag::Token(3),
                Frag::Token(2),
                Frag::Text(7, 8)
            ]
        );
        let f = v.partition("x<s>\ny", false);
        assert_eq!(f, vec![Frag::Text(0, 4), Frag::Token(2), Frag::Text(5, 6)]);
        assert!(v.partition("", true).is_empty());
    }
}
