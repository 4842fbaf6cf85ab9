//! tiktoken-format `tokenizer.model` (Llama 3): one "base64(token bytes) rank" line per
//! token; special tokens follow the ranks. Encoding splits with the Llama 3 regex and then
//! merges byte pairs by rank, as tiktoken does.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use base64::Engine;

use crate::{Result, TokenizerError};

/// Llama 3's pre-tokenizer pattern (Meta's `tokenizer.py`).
pub(crate) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3.1's special tokens, in order after the ranks (256 in all).
pub(crate) fn llama3_special_tokens() -> Vec<String> {
    let mut v: Vec<String> = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|step_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let named = v.len();
    for i in 0..256 - named {
        v.push(format!("<|reserved_special_token_{}|>", 2 + i));
    }
    v
}

pub(crate) struct Tiktoken {
    pub ranks: HashMap<Vec<u8>, u32>,
    /// id → bytes (ordinary tokens) or special-token text.
    pub tokens: Vec<Vec<u8>>,
    pub n_base: usize,
    pub specials: HashMap<String, u32>,
    regex: fancy_regex::Regex,
}

/// Does `data` look like a tiktoken ranks file (first line "base64 integer")?
pub(crate) fn looks_like_tiktoken(data: &[u8]) -> bool {
    let line = data.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(tok), Some(rank), None) => {
            !tok.is_empty()
                && base64::engine::general_purpose::STANDARD
                    .decode(tok)
                    .is_ok()
                && rank.parse::<u32>().is_ok()
        }
        _ => false,
    }
}

struct Pair {
    rank: u32,
    left: usize,
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
    fn cmp(&self, o: &Self) -> Ordering {
        o.rank.cmp(&self.rank).then_with(|| o.left.cmp(&self.left))
    }
}

impl Tiktoken {
    pub fn parse(data: &[u8], specials: &[String]) -> Result<Tiktoken> {
        let text = std::str::from_utf8(data)
            .map_err(|_| TokenizerError::Invalid("tiktoken file is not UTF-8".into()))?;
        let mut ranks = HashMap::new();
        let mut max_rank = 0usize;
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let bad = || TokenizerError::Invalid(format!("tiktoken file: bad line {}", i + 1));
            let (tok, rank) = line.split_once(' ').ok_or_else(bad)?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(tok)
                .map_err(|_| bad())?;
            let rank: u32 = rank.trim().parse().map_err(|_| bad())?;
            if rank as usize > 16_000_000 {
                return Err(bad());
            }
            max_rank = max_rank.max(rank as usize);
            if ranks.insert(bytes, rank).is_some() {
                return Err(bad());
            }
        }
        if ranks.is_empty() {
            return Err(TokenizerError::Invalid(
                "tiktoken file has no tokens".into(),
            ));
        }
        let n_base = max_rank + 1;
        if n_base != ranks.len() {
            return Err(TokenizerError::Invalid(
                "tiktoken file: ranks are not 0..n without gaps".into(),
            ));
        }
        let mut tokens = vec![Vec::new(); n_base];
        for (b, &r) in &ranks {
            tokens[r as usize] = b.clone();
        }
        let mut special_map = HashMap::new();
        for (i, s) in specials.iter().enumerate() {
            special_map.insert(s.clone(), (n_base + i) as u32);
            tokens.push(s.as_bytes().to_vec());
        }
        let regex = fancy_regex::Regex::new(LLAMA3_PATTERN)
            .map_err(|e| TokenizerError::Invalid(format!("regex: {e}")))?;
        Ok(Tiktoken {
            ranks,
            tokens,
            n_base,
            specials: special_map,
            regex,
        })
    }

    /// Encodes ordinary text (special-token text is encoded as text, as Meta's
    /// `Tokenizer.encode` does with `disallowed_special=()`).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut last = 0;
        for m in self.regex.find_iter(text) {
            let m = m.map_err(|e| TokenizerError::Invalid(format!("regex: {e}")))?;
            // The pattern's last alternatives match any character, so pieces are contiguous;
            // still, never drop text.
            if m.start() > last {
                self.encode_piece(&text.as_bytes()[last..m.start()], out);
            }
            self.encode_piece(m.as_str().as_bytes(), out);
            last = m.end();
        }
        if last < text.len() {
            self.encode_piece(&text.as_bytes()[last..], out);
        }
        Ok(())
    }

    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(&r) = self.ranks.get(piece) {
            out.push(r);
            return;
        }
        let n = piece.len();
        let mut len = vec![1usize; n];
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (0..n)
            .map(|i| if i + 1 == n { usize::MAX } else { i + 1 })
            .collect();
        let mut heap = BinaryHeap::new();
        let rank = |l: usize, size: usize| self.ranks.get(&piece[l..l + size]).copied();
        for i in 1..n {
            if let Some(r) = rank(i - 1, 2) {
                heap.push(Pair {
                    rank: r,
                    left: i - 1,
                    size: 2,
                });
            }
        }
        while let Some(p) = heap.pop() {
            let right = p.left + len[p.left];
            if len[p.left] == 0
                || right >= n
                || len[right] == 0
                || len[p.left] + len[right] != p.size
            {
                continue;
            }
            len[p.left] += len[right];
            len[right] = 0;
            let nx = next[right];
            next[p.left] = nx;
            if nx != usize::MAX {
                prev[nx] = p.left;
            }
            let pv = prev[p.left];
            if pv != usize::MAX {
                if let Some(r) = rank(pv, len[pv] + len[p.left]) {
                    heap.push(Pair {
                        rank: r,
                        left: pv,
                        size: len[pv] + len[p.left],
                    });
                }
            }
            if nx != usize::MAX {
                if let Some(r) = rank(p.left, len[p.left] + len[nx]) {
                    heap.push(Pair {
                        rank: r,
                        left: p.left,
                        size: len[p.left] + len[nx],
                    });
                }
            }
        }
        let mut i = 0;
        while i != usize::MAX && i < n {
            let bytes = &piece[i..i + len[i]];
            // Every single byte has a rank in a complete tiktoken vocabulary.
            if let Some(&r) = self.ranks.get(bytes) {
                out.push(r);
            }
            i = next[i];
        }
    }
}
