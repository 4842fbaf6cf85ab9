//! SentencePiece-style BPE: start from single characters, repeatedly merge the adjacent pair
//! whose concatenation is the highest-scoring piece (ties: leftmost), as SentencePiece's
//! `bpe_model.cc` and llama.cpp's `llm_tokenizer_spm` do.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

pub(crate) struct Symbol {
    pub start: usize,
    pub len: usize,
    /// Never merged with a neighbour (SentencePiece user-defined symbols).
    pub frozen: bool,
}

struct Node {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
    frozen: bool,
}

const NONE: usize = usize::MAX;

/// Called with (merged piece, left (start, len), right (start, len)).
type OnMerge<'a> = dyn FnMut(&str, (usize, usize), (usize, usize)) + 'a;

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The heap's top is the highest score, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Merges the symbols of `text`; `score(piece)` gives the score of a mergeable piece (None:
/// not a piece that merging may produce). `on_merge(piece, left, right)` is called for every
/// candidate pair pushed (SentencePiece records unused pieces' halves there). Returns the
/// final symbols as byte ranges of `text`, in order.
pub(crate) fn merge(
    text: &str,
    symbols: &[Symbol],
    score: impl Fn(&str) -> Option<f32>,
    mut on_merge: impl FnMut(&str, (usize, usize), (usize, usize)),
) -> Vec<(usize, usize)> {
    let n = symbols.len();
    let mut nodes: Vec<Node> = symbols
        .iter()
        .enumerate()
        .map(|(i, s)| Node {
            start: s.start,
            len: s.len,
            prev: if i == 0 { NONE } else { i - 1 },
            next: if i + 1 == n { NONE } else { i + 1 },
            frozen: s.frozen,
        })
        .collect();
    let mut heap = BinaryHeap::new();
    let try_add = |nodes: &Vec<Node>,
                   heap: &mut BinaryHeap<Bigram>,
                   on_merge: &mut OnMerge,
                   left: usize,
                   right: usize| {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (&nodes[left], &nodes[right]);
        if l.frozen || r.frozen {
            return;
        }
        let piece = &text[l.start..r.start + r.len];
        if let Some(s) = score(piece) {
            heap.push(Bigram {
                score: s,
                left,
                right,
                size: piece.len(),
            });
            on_merge(piece, (l.start, l.len), (r.start, r.len));
        }
    };
    for i in 1..n {
        try_add(&nodes, &mut heap, &mut on_merge, i - 1, i);
    }
    while let Some(b) = heap.pop() {
        let (ll, rl) = (nodes[b.left].len, nodes[b.right].len);
        // Stale: one side was merged away or grew since the pair was queued.
        if ll == 0 || rl == 0 || ll + rl != b.size {
            continue;
        }
        nodes[b.left].len += rl;
        nodes[b.right].len = 0;
        let next = nodes[b.right].next;
        nodes[b.left].next = next;
        if next != NONE {
            nodes[next].prev = b.left;
        }
        let prev = nodes[b.left].prev;
        try_add(&nodes, &mut heap, &mut on_merge, prev, b.left);
        try_add(&nodes, &mut heap, &mut on_merge, b.left, next);
    }
    let mut out = Vec::new();
    let mut i = if n == 0 { NONE } else { 0 };
    while i != NONE {
        out.push((nodes[i].start, nodes[i].len));
        i = nodes[i].next;
    }
    out
}

/// One symbol per character of `text`.
pub(crate) fn chars(text: &str) -> Vec<Symbol> {
    text.char_indices()
        .map(|(i, c)| Symbol {
            start: i,
            len: c.len_utf8(),
            frozen: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_score_first_leftmost_on_ties() {
        let scores = [("ab", 1.0f32), ("bc", 2.0), ("abc", 0.5), ("cd", 2.0)];
        let score = |p: &str| scores.iter().find(|(s, _)| *s == p).map(|(_, v)| *v);
        let text = "abcd";
        let out = merge(text, &chars(text), score, |_, _, _| {});
        let pieces: Vec<&str> = out.iter().map(|&(s, l)| &text[s..s + l]).collect();
        // bc (2.0, left 1) beats cd (2.0, left 2); then a + bc = abc (0.5).
        assert_eq!(pieces, ["abc", "d"]);
    }
}
