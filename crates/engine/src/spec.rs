//! Speculative decoding's per-sequence state: where drafts come from (prompt lookup, a draft
//! model with its own KV cache and sampler) and what was drafted this step. The verification
//! itself is [`crate::sampler::Sampler::verify`], driven by [`crate::sequence::Sequence`];
//! the batched draft-model passes are [`crate::batch::Batch`]'s.
//!
//! With both sources, lookup's proposal is checked by the draft model before the model sees
//! it: one batched draft pass over the proposal gives the draft's own choice after each of its
//! tokens, and the proposal is kept up to the first token the draft would not have drafted
//! itself (under its own rule: top-1 at confidence ≥ `p_min`); there the draft's own token from
//! that pass follows, and drafting goes on one token a pass. A batched pass of k + 1 rows costs
//! about one draft pass plus a fraction per extra row, against k + 1 passes one by one.
//!
//! Invariant: between steps the draft cache holds a prefix of the sequence's tokens (prompt
//! then generated), never a rejected draft: after each verification both caches are cut back to
//! the tokens that were kept. Within a step it holds the sequence's tokens then a prefix of the
//! drafts (a proposal's tokens past the first the draft disagrees with are cut at once).

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
    /// What the draft model is fed next (catching up, then each new draft; in the first round,
    /// catching up then lookup's proposal).
    feed: Vec<u32>,
    /// Lookup's proposal awaiting the draft model's check (its first round only).
    proposed: Vec<u32>,
    /// The sequence's length when this step's draft began: where the drafts start in the draft
    /// model's cache.
    base: usize,
    /// Drafts this step may still add.
    budget: usize,
    /// The model input of the verification: the last sampled token then the drafts.
    pub(crate) verify: Vec<u32>,
    pub(crate) drafted: usize,
    pub(crate) accepted: usize,
}

/// What the draft model makes of one row of its logits ([`Spec::choose`]).
#[derive(Debug, PartialEq)]
enum Choice {
    /// Not confident enough to draft: drafting ends.
    Stop,
    /// The proposed token, which the draft would have chosen: drafted.
    Agreed,
    /// The draft's own token (the last of `drafts`): drafted.
    Own,
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
            proposed: Vec::new(),
            base: 0,
            budget: 0,
            verify: Vec::new(),
            drafted: 0,
            accepted: 0,
        }
    }

    /// Starts this step's draft for a sequence whose tokens so far are `tokens` (the last not
    /// yet in the model's cache), allowing `budget` drafts. The result says whether the draft
    /// model is to draft (rounds of [`Spec::model_input`] and [`Spec::model_rows`]): then its
    /// first round also checks lookup's proposal, if any. Without the draft model (none, or no
    /// room: `model_room` is how many positions it takes) lookup's proposal is the draft.
    pub(crate) fn begin(
        &mut self,
        tokens: &[u32],
        sampler: &Sampler,
        budget: usize,
        model_room: usize,
    ) -> bool {
        self.drafts.clear();
        self.proposals.clear();
        self.proposed.clear();
        self.budget = budget.min(self.params.draft_max);
        if self.budget == 0 {
            return false;
        }
        let found = if self.params.lookup_ngram > 0 {
            lookup(tokens, self.params.lookup_ngram, self.budget)
        } else {
            Vec::new()
        };
        match &self.cache {
            Some(cache) if tokens.len() + self.budget <= model_room => {
                self.sampler.copy_counts(sampler);
                self.base = tokens.len();
                self.feed.clear();
                self.feed.extend_from_slice(&tokens[cache.len()..]);
                self.feed.extend_from_slice(&found);
                self.proposed = found;
                true
            }
            _ => {
                // Point masses: a lookup draft is not drawn from a distribution.
                self.proposals = found.iter().map(|&t| vec![(t, 1.0)]).collect();
                self.drafts = found;
                false
            }
        }
    }

    /// The draft model's cache, when this sequence drafts with it.
    pub(crate) fn cache_mut(&mut self) -> Option<&mut KvCache> {
        self.cache.as_mut()
    }

    /// The draft model's input for the next draft round: every row back while lookup's
    /// proposal is checked, else the last.
    pub(crate) fn model_input(&mut self) -> SeqInput<'_> {
        SeqInput {
            tokens: &self.feed,
            cache: self.cache.as_mut().expect("drafting with a draft model"),
            logits: if self.proposed.is_empty() {
                Logits::Last
            } else {
                Logits::All
            },
        }
    }

    /// Logits rows the round's input ([`Spec::model_input`]) returns.
    pub(crate) fn model_row_count(&self) -> usize {
        if self.proposed.is_empty() {
            1
        } else {
            self.feed.len()
        }
    }

    /// Takes the draft model's logits after a round (`block`: [`Spec::model_row_count`] rows of
    /// `width`); `true` when it is to draft another token.
    pub(crate) fn model_rows(&mut self, block: &[f32], width: usize) -> bool {
        let proposed = std::mem::take(&mut self.proposed);
        let mut rows = block.chunks_exact(width);
        if proposed.is_empty() {
            let row = rows.next().expect("one row per draft round");
            return match self.choose(row, None) {
                Choice::Stop => false,
                Choice::Agreed | Choice::Own => self.next_round(),
            };
        }
        // The rows after the sequence's last token and after each proposed token: the draft's
        // own choice at each position, as if it had drafted the proposal one token at a time.
        let rows = rows.skip(self.feed.len() - proposed.len() - 1);
        for (i, row) in rows.enumerate() {
            if self.drafts.len() >= self.budget {
                break;
            }
            match self.choose(row, proposed.get(i).copied()) {
                Choice::Agreed => continue,
                Choice::Stop => break,
                Choice::Own => {
                    // The proposal's tokens from here on are not drafts: out of the cache,
                    // which holds the drafts before this one (it is fed next).
                    self.hold_drafts(self.drafts.len() - 1);
                    return self.next_round();
                }
            }
        }
        self.hold_drafts(self.drafts.len());
        false
    }

    /// The draft's choice after one row of its logits, under its drafting rule: stop below
    /// `p_min` confidence; keep `proposed` when it is the draft's most likely token (a point
    /// mass: deterministic given the context, so a valid proposal for rejection sampling, as
    /// lookup drafts are); otherwise the draft's own token, drawn from its distribution.
    fn choose(&mut self, row: &[f32], proposed: Option<u32>) -> Choice {
        let (q, confidence) = self.sampler.distribution(row);
        if confidence < self.params.p_min as f64 {
            return Choice::Stop;
        }
        if proposed == Some(q[0].0) {
            let tok = q[0].0;
            self.sampler.observe(tok);
            self.drafts.push(tok);
            self.proposals.push(vec![(tok, 1.0)]);
            return Choice::Agreed;
        }
        let tok = if q.len() == 1 {
            q[0].0
        } else {
            self.sampler.draw(&q)
        };
        self.sampler.observe(tok);
        self.drafts.push(tok);
        self.proposals.push(q);
        Choice::Own
    }

    /// After a draft of the draft's own: the next round feeds it, while the budget allows.
    fn next_round(&mut self) -> bool {
        if self.drafts.len() >= self.budget {
            return false;
        }
        self.feed.clear();
        self.feed
            .push(*self.drafts.last().expect("a draft was just made"));
        true
    }

    /// Cuts the draft cache back to the sequence and its first `drafts` drafts.
    fn hold_drafts(&mut self, drafts: usize) {
        if let Some(c) = &mut self.cache {
            c.truncate(self.base + drafts);
        }
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

    const WIDTH: usize = 16;

    /// A draft logits row that is sure of `tok`.
    fn sure(tok: u32) -> Vec<f32> {
        let mut row = vec![0.0; WIDTH];
        row[tok as usize] = 10.0;
        row
    }

    /// A row with no confident choice (every token 1/16).
    fn unsure() -> Vec<f32> {
        vec![0.0; WIDTH]
    }

    fn speculation(draft_max: usize) -> Speculation {
        Speculation {
            draft_model: true,
            draft_max,
            draft_min: 0,
            p_min: 0.5,
            lookup_ngram: 3,
        }
    }

    /// A spec with a draft cache holding the first `held` of `tokens`, begun on them.
    fn begun(sp: Speculation, sampling: &SamplingParams, tokens: &[u32], held: usize) -> Spec {
        let mut cache = KvCache::new(1, 1, 1, 64);
        cache.advance(held);
        let mut spec = Spec::new(sp, sampling, Some(cache));
        assert!(spec.begin(tokens, &Sampler::new(sampling.clone()), 64, 64));
        spec
    }

    /// One draft round: the input's rows are `rows` (the model's pass stores every fed token).
    fn round(spec: &mut Spec, rows: &[Vec<f32>]) -> bool {
        let input = spec.model_input();
        let fed = input.tokens.len();
        let all = input.logits == Logits::All;
        input.cache.advance(fed);
        assert_eq!(spec.model_row_count(), rows.len());
        assert_eq!(all, rows.len() > 1);
        spec.model_rows(&rows.concat(), WIDTH)
    }

    fn cache_len(spec: &mut Spec) -> usize {
        spec.cache_mut().unwrap().len()
    }

    /// "1 2 3 4 5 6 1 2 3": lookup proposes 4 5 6 (a 3-token match).
    const TOKENS: [u32; 9] = [1, 2, 3, 4, 5, 6, 1, 2, 3];

    #[test]
    fn the_draft_keeps_the_proposal_up_to_its_first_disagreement_then_drafts_on() {
        let greedy = SamplingParams::default();
        // The draft cache lags two tokens: both are fed before the proposal, and the first
        // one's row (here sure of 15) is not a choice.
        let mut spec = begun(speculation(8), &greedy, &TOKENS, 7);
        assert_eq!(spec.feed, [2, 3, 4, 5, 6]);
        let more = round(&mut spec, &[sure(15), sure(4), sure(5), sure(9), sure(11)]);
        // 4 and 5 agreed; after 5 the draft wants 9: its own draft, fed next; 6 (position 11)
        // is out of the cache, 4 and 5 stay in it.
        assert!(more);
        assert_eq!(spec.drafts, [4, 5, 9]);
        assert_eq!(cache_len(&mut spec), TOKENS.len() + 2);
        assert_eq!(spec.feed, [9]);
        assert!(round(&mut spec, &[sure(7)]));
        assert!(!round(&mut spec, &[unsure()]));
        assert_eq!(spec.drafts, [4, 5, 9, 7]);
        assert!(spec
            .proposals
            .iter()
            .zip(&spec.drafts)
            .all(|(q, &d)| q == &[(d, 1.0)]));
        spec.finish_draft(3, TOKENS.len());
        assert_eq!(spec.verify, [3, 4, 5, 9, 7]);
    }

    #[test]
    fn an_agreed_proposal_is_followed_by_the_drafts_next_token_within_the_budget() {
        let greedy = SamplingParams::default();
        // Every proposed token agreed; the row after the last gives one more draft, which
        // fills the budget of 4: no further round, the cache holds the proposal.
        let mut spec = begun(speculation(4), &greedy, &TOKENS, 8);
        assert!(!round(&mut spec, &[sure(4), sure(5), sure(6), sure(8)]));
        assert_eq!(spec.drafts, [4, 5, 6, 8]);
        assert_eq!(cache_len(&mut spec), TOKENS.len() + 3);
        // A budget the proposal fills: the row after it is not used.
        let mut spec = begun(speculation(2), &greedy, &TOKENS, 8);
        assert_eq!(spec.feed, [3, 4, 5]);
        assert!(!round(&mut spec, &[sure(4), sure(5), sure(8)]));
        assert_eq!(spec.drafts, [4, 5]);
        // Not confident after the last sampled token: no draft, nothing of the proposal kept.
        let mut spec = begun(speculation(8), &greedy, &TOKENS, 8);
        assert!(!round(&mut spec, &[unsure(), sure(5), sure(6), sure(8)]));
        assert!(spec.drafts.is_empty());
        assert_eq!(cache_len(&mut spec), TOKENS.len());
        // Not confident in the middle: the agreed prefix is the draft.
        let mut spec = begun(speculation(8), &greedy, &TOKENS, 8);
        assert!(!round(&mut spec, &[sure(4), unsure(), sure(6), sure(8)]));
        assert_eq!(spec.drafts, [4]);
        assert_eq!(cache_len(&mut spec), TOKENS.len() + 1);
    }

    #[test]
    fn without_a_match_or_without_the_draft_model_drafting_is_as_before() {
        let greedy = SamplingParams::default();
        // No match: one row per round.
        let tokens = [1, 2, 3, 4];
        let mut spec = begun(speculation(8), &greedy, &tokens, 3);
        assert_eq!(spec.feed, [4]);
        assert!(round(&mut spec, &[sure(5)]));
        assert!(!round(&mut spec, &[unsure()]));
        assert_eq!(spec.drafts, [5]);
        // Lookup alone, or a draft model with no room: the proposal is the draft.
        for (cache, room) in [(None, 64), (Some(KvCache::new(1, 1, 1, 64)), 10)] {
            let mut spec = Spec::new(speculation(8), &greedy, cache);
            assert!(!spec.begin(&TOKENS, &Sampler::new(greedy.clone()), 64, room));
            assert_eq!(spec.drafts, [4, 5, 6]);
        }
    }

    #[test]
    fn sampled_drafts_keep_agreed_proposals_as_point_masses() {
        let sampling = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            seed: 7,
            ..Default::default()
        };
        let mut spec = begun(speculation(8), &sampling, &TOKENS, 8);
        // 4 is the draft's most likely token after 3: kept, as a point mass. After 4 the
        // draft's most likely is 9: its own draw from its distribution (9 or 12).
        let mut mixed = sure(9);
        mixed[12] = 9.5;
        assert!(round(&mut spec, &[sure(4), mixed, sure(6), sure(8)]));
        assert_eq!(spec.drafts[0], 4);
        assert_eq!(spec.proposals[0], [(4, 1.0)]);
        assert!([9, 12].contains(&spec.drafts[1]));
        let q = &spec.proposals[1];
        assert_eq!(q.len(), 2);
        assert_eq!((q[0].0, q[1].0), (9, 12));
        assert!((q[0].1 + q[1].1 - 1.0).abs() < 1e-9 && q[0].1 > q[1].1);
        assert_eq!(cache_len(&mut spec), TOKENS.len() + 1);
    }

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
