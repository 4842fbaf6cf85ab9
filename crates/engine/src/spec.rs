//! Speculative decoding's per-sequence state: where drafts come from (prompt lookup, a draft
//! model with its own KV cache and sampler) and what was drafted this step. The verification
//! itself is [`crate::sampler::Sampler::verify`], driven by [`crate::sequence::Sequence`];
//! the batched draft-model passes are [`crate::batch::Batch`]'s.
//!
//! Invariant: between steps the draft cache holds a prefix of the sequence's tokens (prompt
//! then generated), never a rejected draft: after each verification both caches are cut back to
//! the tokens that were kept.

use kiln_models::{KvCache, Logits, SeqInput};

use crate::generate::Speculation;
use crate::sampler::{Sampler, SamplingParams};

/// The draft of what follows `tokens`: the continuation of the earlier occurrence of its last
/// `n` tokens (`n` from `max_ngram` down to 1, the first size that matches anywhere) whose match
/// extends furthest back (the latest of equally long ones), at most `max` tokens and at most as
/// many as the match is long. Empty when nothing matches.
///
/// The length cap is why lookup pays: a continuation is trusted about as far as the context
/// backing it, so a one-token match proposes one token, and each rejected token costs a
/// verification row (~0.3 of a decode step on two cores). On the committed editing prompts it
/// kept 75% of the drafts instead of 40%, and lookup went from 1.12x to 1.70x plain decoding.
pub fn lookup(tokens: &[u32], max_ngram: usize, max: usize) -> Vec<u32> {
    let len = tokens.len();
    if len < 2 || max == 0 {
        return Vec::new();
    }
    // How far back a match is followed when ranking matches (a bound on the work).
    const EXTEND: usize = 256;
    for n in (1..=max_ngram.min(len - 1)).rev() {
        let pattern = &tokens[len - n..];
        let mut best: Option<(usize, usize)> = None; // (continuation start, match length)
                                                     // Starts `i` of earlier occurrences, latest first; each has a token after it.
        for i in (0..len - n).rev() {
            if &tokens[i..i + n] != pattern {
                continue;
            }
            let mut m = n;
            while m < EXTEND && i + n > m && tokens[i + n - m - 1] == tokens[len - m - 1] {
                m += 1;
            }
            if best.is_none_or(|(_, b)| m > b) {
                best = Some((i + n, m));
            }
        }
        if let Some((start, matched)) = best {
            return tokens[start..(start + max.min(matched)).min(len)].to_vec();
        }
    }
    Vec::new()
}

/// One sequence's speculative state.
pub(crate) struct Spec {
    pub(crate) params: Speculation,
    /// The draft model's cache of this sequence's tokens (when the draft model is used).
    cache: Option<KvCache>,
    /// The draft's sampler: the request's parameters with its own random stream, its penalty
    /// counts copied from the sequence's before each draft.
    sampler: Sampler,
    /// This step's drafts, and the proposal each was drawn from.
    pub(crate) drafts: Vec<u32>,
    pub(crate) proposals: Vec<Vec<(u32, f64)>>,
    /// What the draft model is fed next (catching up, then each new draft).
    feed: Vec<u32>,
    /// Drafts this step may still add.
    budget: usize,
    /// The model input of the verification: the last sampled token then the drafts.
    pub(crate) verify: Vec<u32>,
    pub(crate) drafted: usize,
    pub(crate) accepted: usize,
}

/// The stream the draft samples from: distinct from the request's own, so that its draws and
/// the verification's are independent.
const DRAFT_STREAM: u64 = 0x5bd1_e995_d3af_7c11;

impl Spec {
    /// State for a request drafting with `params`; `draft_cache` is the draft model's (empty)
    /// cache when the draft model is used.
    pub(crate) fn new(
        params: Speculation,
        sampling: &SamplingParams,
        draft_cache: Option<KvCache>,
    ) -> Spec {
        Spec {
            params,
            cache: draft_cache,
            sampler: Sampler::new(SamplingParams {
                seed: sampling.seed ^ DRAFT_STREAM,
                ..sampling.clone()
            }),
            drafts: Vec::new(),
            proposals: Vec::new(),
            feed: Vec::new(),
            budget: 0,
            verify: Vec::new(),
            drafted: 0,
            accepted: 0,
        }
    }

    /// Starts this step's draft for a sequence whose tokens so far are `tokens` (the last not
    /// yet in the model's cache), allowing `budget` drafts. Prompt lookup drafts at once; the
    /// result says whether the draft model is to draft (rounds of [`Spec::model_input`] and
    /// [`Spec::model_row`]). `model_room` is how many positions the draft model takes.
    pub(crate) fn begin(
        &mut self,
        tokens: &[u32],
        sampler: &Sampler,
        budget: usize,
        model_room: usize,
    ) -> bool {
        self.drafts.clear();
        self.proposals.clear();
        self.budget = budget.min(self.params.draft_max);
        if self.budget == 0 {
            return false;
        }
        if self.params.lookup_ngram > 0 {
            let found = lookup(tokens, self.params.lookup_ngram, self.budget);
            if !found.is_empty() {
                self.proposals = found.iter().map(|&t| vec![(t, 1.0)]).collect();
                self.drafts = found;
                return false;
            }
        }
        let Some(cache) = &self.cache else {
            return false;
        };
        if tokens.len() + self.budget > model_room {
            return false;
        }
        self.sampler.copy_counts(sampler);
        self.feed.clear();
        self.feed.extend_from_slice(&tokens[cache.len()..]);
        true
    }

    /// The draft model's cache, when this sequence drafts with it.
    pub(crate) fn cache_mut(&mut self) -> Option<&mut KvCache> {
        self.cache.as_mut()
    }

    /// The draft model's input for the next draft round.
    pub(crate) fn model_input(&mut self) -> SeqInput<'_> {
        SeqInput {
            tokens: &self.feed,
            cache: self.cache.as_mut().expect("drafting with a draft model"),
            logits: Logits::Last,
        }
    }

    /// Takes the draft model's logits after a round; `true` when it is to draft another token.
    pub(crate) fn model_row(&mut self, row: &[f32]) -> bool {
        let (q, confidence) = self.sampler.distribution(row);
        if confidence < self.params.p_min as f64 {
            return false;
        }
        let tok = if q.len() == 1 {
            q[0].0
        } else {
            self.sampler.draw(&q)
        };
        self.sampler.observe(tok);
        self.drafts.push(tok);
        self.proposals.push(q);
        if self.drafts.len() >= self.budget {
            return false;
        }
        self.feed.clear();
        self.feed.push(tok);
        true
    }

    /// Ends the draft of a sequence of `len` tokens, the last being `last`: too short a draft
    /// is dropped (and the draft model's cache forgets it); the verification input is built.
    pub(crate) fn finish_draft(&mut self, last: u32, len: usize) {
        if self.drafts.len() < self.params.draft_min.max(1) {
            self.drafts.clear();
            self.proposals.clear();
            if let Some(c) = &mut self.cache {
                c.truncate(len);
            }
        }
        self.verify.clear();
        self.verify.push(last);
        self.verify.extend_from_slice(&self.drafts);
    }

    /// After verification: the draft cache keeps at most the `held` positions the model's
    /// cache keeps.
    pub(crate) fn rolled_back(&mut self, held: usize) {
        if let Some(c) = &mut self.cache {
            c.truncate(held);
        }
        self.drafts.clear();
        self.proposals.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_takes_the_longest_earlier_match() {
        // "a b c d e | x c d f | ... c d": the last 2 tokens (c d) occur twice; the first
        // occurrence's match extends one further back (b c d against ... b c d).
        let t = [1, 2, 3, 4, 5, 9, 3, 4, 6, 7, 2, 3, 4];
        assert_eq!(lookup(&t, 2, 3), vec![5, 9, 3]);
        // ... and at most as many tokens as the match is long (3: b c d).
        assert_eq!(lookup(&t, 2, 10), vec![5, 9, 3]);
        // Equally long matches: the latest.
        let t = [3, 4, 6, 7, 8, 3, 4, 5, 3, 4];
        assert_eq!(lookup(&t, 2, 2), vec![5, 3]);
        // No 3-gram match: falls back to shorter n-grams; a 1-token match drafts 1 token.
        let t = [8, 1, 2, 9, 2];
        assert_eq!(lookup(&t, 3, 10), vec![9]);
        // A 3-gram whose match reaches 4 back drafts 4 tokens, not the 6 that follow it.
        let t = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3];
        assert_eq!(lookup(&t, 3, 10), vec![4, 5, 0, 1]);
        assert!(lookup(&[1, 2, 3], 3, 4).is_empty());
        assert!(lookup(&[1], 3, 4).is_empty());
        assert!(lookup(&[1, 1], 2, 0).is_empty());
    }
}
