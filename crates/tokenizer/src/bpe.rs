//! Byte-level BPE with merge ranks (GGUF `tokenizer.ggml.model = "gpt2"`), following
//! llama.cpp's `llm_tokenizer_bpe_session`: pre-tokenize, map bytes to GPT-2's stand-in
//! characters, then merge the lowest-ranked adjacent pair (ties: leftmost) until none is left.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::pretok::{self, PreTok};
use crate::unicode::byte_encode;
use crate::vocab::Vocab;

pub(crate) struct Bpe {
    /// "left right" → rank (first occurrence wins).
    ranks: HashMap<String, u32>,
    pub pre: PreTok,
    /// A pre-token that is itself in the vocabulary is emitted whole (Llama 3).
    pub ignore_merges: bool,
}

struct Pair {
    rank: u32,
    left: usize,
    right: usize,
    size: usize,
}
impl PartialEq for Pair {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pair {
    /// The heap's top is the lowest rank, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        o.rank.cmp(&self.rank).then_with(|| o.left.cmp(&self.left))
    }
}

impl Bpe {
    pub fn new(merges: &[String], pre: PreTok, ignore_merges: bool) -> Bpe {
        let mut ranks = HashMap::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte; "left right" is then
            // the line itself (a line without such a space gives an empty pair).
            let has_split = m.as_bytes().iter().skip(1).any(|&b| b == b' ');
            let key = if has_split {
                m.clone()
            } else {
                " ".to_string()
            };
            ranks.entry(key).or_insert(i as u32);
        }
        Bpe {
            ranks,
            pre,
            ignore_merges,
        }
    }

    /// Encodes ordinary text (no special tokens in it) and appends the ids to `out`.
    pub fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut word = String::new();
        let mut key = String::new();
        for (s, e) in pretok::split(self.pre, text) {
            word.clear();
            byte_encode(&text.as_bytes()[s..e], &mut word);
            if self.ignore_merges {
                if let Some(id) = vocab.id(&word) {
                    out.push(id);
                    continue;
                }
            }
            self.encode_word(vocab, &word, &mut key, out);
        }
    }

    fn encode_word(&self, vocab: &Vocab, word: &str, key: &mut String, out: &mut Vec<u32>) {
        // Symbols: (start, len) byte ranges of `word`, linked list.
        let mut start: Vec<usize> = Vec::new();
        let mut len: Vec<usize> = Vec::new();
        for (i, c) in word.char_indices() {
            start.push(i);
            len.push(c.len_utf8());
        }
        let n = start.len();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (0..n)
            .map(|i| if i + 1 == n { usize::MAX } else { i + 1 })
            .collect();
        let mut heap = BinaryHeap::new();
        let rank_of = |key: &mut String, l: usize, r: usize, start: &[usize], len: &[usize]| {
            key.clear();
            key.push_str(&word[start[l]..start[l] + len[l]]);
            key.push(' ');
            key.push_str(&word[start[r]..start[r] + len[r]]);
            self.ranks.get(key.as_str()).copied()
        };
        for i in 1..n {
            if let Some(rank) = rank_of(key, i - 1, i, &start, &len) {
                heap.push(Pair {
                    rank,
                    left: i - 1,
                    right: i,
                    size: len[i - 1] + len[i],
                });
            }
        }
        while let Some(p) = heap.pop() {
            if len[p.left] == 0 || len[p.right] == 0 || len[p.left] + len[p.right] != p.size {
                continue;
            }
            len[p.left] += len[p.right];
            len[p.right] = 0;
            let nx = next[p.right];
            next[p.left] = nx;
            if nx != usize::MAX {
                prev[nx] = p.left;
            }
            let pv = prev[p.left];
            if pv != usize::MAX {
                if let Some(rank) = rank_of(key, pv, p.left, &start, &len) {
                    heap.push(Pair {
                        rank,
                        left: pv,
                        right: p.left,
                        size: len[pv] + len[p.left],
                    });
                }
            }
            if nx != usize::MAX {
                if let Some(rank) = rank_of(key, p.left, nx, &start, &len) {
                    heap.push(Pair {
                        rank,
                        left: p.left,
                        right: nx,
                        size: len[p.left] + len[nx],
                    });
                }
            }
        }
        let mut i = if n == 0 { usize::MAX } else { 0 };
        while i != usize::MAX {
            let piece = &word[start[i]..start[i] + len[i]];
            match vocab.id(piece) {
                Some(id) => out.push(id),
                None => {
                    // llama.cpp looks up each byte of the piece as a one-byte token; only
                    // ASCII bytes can be found that way.
                    for b in piece.bytes() {
                        if b.is_ascii() {
                            let mut tmp = [0u8; 4];
                            if let Some(id) = vocab.id((b as char).encode_utf8(&mut tmp)) {
                                out.push(id);
                            }
                        }
                    }
                }
            }
            i = next[i];
        }
    }
}
