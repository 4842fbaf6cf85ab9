//! One request's life, whoever drives it ([`crate::generate::generate`] or the server's
//! [`crate::scheduler::Scheduler`], both through [`crate::batch::Batch`]): validation, the
//! sampler with its penalties and logit bias, stop strings, end-of-sequence tokens, prompt and
//! generated logprobs, the finish reason and the final [`Completion`].

use std::time::Instant;

use kiln_models::{KvCache, Logits, SeqInput};
use kiln_tokenizer::Tokenizer;

use crate::constraint::Active;
use crate::generate::{Completion, FinishReason, GenerateParams, Timings, TokenLogprob};
use crate::sampler::{log_softmax, top_n, Sampler};
use crate::spec::Spec;
use crate::text::TextStream;
use crate::EngineError;

/// What generation (and the server around it) needs from a tokenizer.
pub trait Vocab: Send + Sync {
    /// Text to ids; with `add_special` the model's BOS is prepended when it uses one.
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, String>;
    /// Ids to text; with `skip_special` control tokens are left out.
    fn decode(&self, ids: &[u32], skip_special: bool) -> String;
    /// The raw bytes one token stands for.
    fn token_bytes(&self, id: u32) -> Vec<u8>;
    /// Tokens the tokenizer says end generation (see [`eos_ids`] for the full set).
    fn eos_ids(&self) -> Vec<u32>;
    fn bos_id(&self) -> Option<u32>;
    /// Control tokens (BOS, EOS, chat markers): never part of a constraint's text.
    fn is_special(&self, _id: u32) -> bool {
        false
    }
    /// BOS as chat templates receive it (`bos_token`; empty when there is none).
    fn bos_token(&self) -> String {
        self.bos_id()
            .map(|i| self.decode(&[i], false))
            .unwrap_or_default()
    }
    /// EOS as chat templates receive it (`eos_token`; empty when there is none).
    fn eos_token(&self) -> String {
        self.eos_ids()
            .first()
            .map(|&i| self.decode(&[i], false))
            .unwrap_or_default()
    }
}

impl Vocab for Tokenizer {
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, String> {
        Tokenizer::encode(self, text, add_special).map_err(|e| e.to_string())
    }
    fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        Tokenizer::decode(self, ids, skip_special)
    }
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        Tokenizer::token_bytes(self, id)
    }
    fn eos_ids(&self) -> Vec<u32> {
        Tokenizer::eos_ids(self).to_vec()
    }
    fn bos_id(&self) -> Option<u32> {
        Tokenizer::bos_id(self)
    }
    fn is_special(&self, id: u32) -> bool {
        Tokenizer::is_special(self, id)
    }
    fn bos_token(&self) -> String {
        Tokenizer::bos_token(self)
    }
    fn eos_token(&self) -> String {
        Tokenizer::eos_token(self)
    }
}

/// The tokens that end generation: the tokenizer's end-of-sequence tokens and those the
/// model's config adds (`ModelConfig::eos_token_ids`), each once, the tokenizer's first.
pub fn eos_ids(vocab: &dyn Vocab, model_eos: &[u32]) -> Vec<u32> {
    let mut eos = vocab.eos_ids();
    for &t in model_eos {
        if !eos.contains(&t) {
            eos.push(t);
        }
    }
    eos
}

/// Checks one request against a context of `context` positions and a vocabulary of
/// `vocab_size` tokens: a non-empty prompt that fits, ids and `logit_bias` ids inside the
/// vocabulary, sane sampling parameters.
pub fn validate_request(
    prompt: &[u32],
    params: &GenerateParams,
    context: usize,
    vocab_size: usize,
) -> Result<(), EngineError> {
    params.sampling.validate().map_err(EngineError::Invalid)?;
    params
        .speculation
        .validate()
        .map_err(EngineError::Invalid)?;
    if params.constraint.is_some() && params.ignore_eos {
        return Err(EngineError::Invalid(
            "ignore_eos cannot be combined with a constraint (response_format, grammar, regex): \
             the constraint decides where the output ends"
                .into(),
        ));
    }
    if prompt.is_empty() {
        return Err(EngineError::Invalid(
            "the prompt is empty (no tokens)".into(),
        ));
    }
    if prompt.len() > context {
        return Err(EngineError::ContextLength {
            tokens: prompt.len(),
            context,
        });
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(EngineError::Invalid(format!(
            "token id {bad} is outside the vocabulary ({vocab_size})"
        )));
    }
    if let Some(&(bad, _)) = params
        .sampling
        .logit_bias
        .iter()
        .find(|&&(t, _)| t as usize >= vocab_size)
    {
        return Err(EngineError::Invalid(format!(
            "logit_bias token id {bad} is outside the vocabulary ({vocab_size})"
        )));
    }
    Ok(())
}

/// One token with its logprob and the `n` most likely tokens of the distribution `lp`.
pub(crate) fn token_logprob(
    vocab: &dyn Vocab,
    id: u32,
    logprob: Option<f32>,
    lp: &[f32],
    n: usize,
    offset: usize,
) -> TokenLogprob {
    let text = |t: u32| String::from_utf8_lossy(&vocab.token_bytes(t)).into_owned();
    TokenLogprob {
        id,
        text: text(id),
        logprob,
        top: top_n(lp, n)
            .into_iter()
            .map(|(t, v)| (t, text(t), v))
            .collect(),
        text_offset: offset,
    }
}

/// Character offsets of a prompt's tokens in its decoded text, one token at a time in linear
/// time: each step decodes only a short window of recent tokens (the difference between the
/// window with and without the new token is what the token adds), so tokenizer rules that
/// depend on the position (a stripped leading space) and multi-byte characters split across
/// tokens come out as when decoding the whole prefix. A token that starts inside a character
/// gets that character's offset (an incomplete character is not counted, as in the
/// generated text's offsets).
pub(crate) struct PromptOffsets {
    /// The window starts here: one token of context before `read`.
    prefix: usize,
    /// Tokens before this are counted in `chars`.
    read: usize,
    chars: usize,
}

/// Tokens that end inside a character wait for the rest of it, but no longer than this (tokens
/// without bytes in between could otherwise grow the window, and the work, without bound).
const MAX_PENDING_TOKENS: usize = 8;

impl PromptOffsets {
    pub(crate) fn new() -> PromptOffsets {
        PromptOffsets {
            prefix: 0,
            read: 0,
            chars: 0,
        }
    }

    /// The offset of token `k` of `prompt`, i.e. the characters that `prompt[..k]` decodes to
    /// (skipping special tokens). Call with `k = 1, 2, 3, ...` in order.
    pub(crate) fn offset_of(&mut self, vocab: &dyn Vocab, prompt: &[u32], k: usize) -> usize {
        debug_assert!(k > self.read);
        let new_bytes: Vec<u8> = prompt[self.read..k]
            .iter()
            .flat_map(|&t| vocab.token_bytes(t))
            .collect();
        if ends_inside_a_char(&new_bytes) && k - self.read < MAX_PENDING_TOKENS {
            return self.chars;
        }
        let before = vocab.decode(&prompt[self.prefix..self.read], true);
        let after = vocab.decode(&prompt[self.prefix..k], true);
        self.chars += after.chars().count().saturating_sub(before.chars().count());
        self.prefix = self.read;
        self.read = k;
        self.chars
    }
}

/// Whether `bytes` end with an incomplete UTF-8 sequence (one more byte could complete it).
fn ends_inside_a_char(mut bytes: &[u8]) -> bool {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(_) => return false,
            Err(e) => match e.error_len() {
                None => return true,
                Some(bad) => bytes = &bytes[e.valid_up_to() + bad..],
            },
        }
    }
}

/// What a sequence puts into a step: its last token, or a chunk of its prompt.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Part {
    Decode,
    Prefill(Chunk),
}

/// Prompt positions `start..end`, and which of their logits come back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chunk {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) mode: Logits,
}

impl Chunk {
    /// Logits rows the model returns for this chunk.
    pub(crate) fn rows(&self) -> usize {
        match self.mode {
            Logits::All => self.end - self.start,
            Logits::Last => 1,
            Logits::None => 0,
        }
    }
}

/// One request being generated: its KV cache and everything between logits and a
/// [`Completion`].
pub(crate) struct Sequence {
    prompt: Vec<u32>,
    params: GenerateParams,
    cache: KvCache,
    /// Prompt tokens already in the cache.
    fed: usize,
    /// Prompt tokens that came with a reused cache instead of being computed.
    cached_tokens: usize,
    sampler: Sampler,
    generated: Vec<u32>,
    stream: TextStream,
    prompt_text: String,
    prompt_chars: usize,
    prompt_offsets: PromptOffsets,
    prompt_logprobs: Option<Vec<TokenLogprob>>,
    logprobs: Option<Vec<TokenLogprob>>,
    finish: Option<FinishReason>,
    /// Speculative decoding, when the request drafts.
    spec: Option<Spec>,
    started: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// The running constraint, if the request has one.
    constraint: Option<Active>,
}

impl Sequence {
    /// A sequence whose `cache` already holds the first `fed` prompt tokens.
    pub(crate) fn new(
        vocab: &dyn Vocab,
        prompt: Vec<u32>,
        params: GenerateParams,
        cache: KvCache,
        fed: usize,
        spec: Option<Spec>,
        constraint: Option<Active>,
    ) -> Sequence {
        let has_constraint = constraint.is_some();
        let mut sampler = Sampler::new(params.sampling.clone());
        prompt.iter().for_each(|&t| sampler.observe(t));
        let prompt_text = if params.echo {
            vocab.decode(&prompt, true)
        } else {
            String::new()
        };
        // Nothing predicts the first token: its logprob is None (Meta's and OpenAI's echo).
        let prompt_logprobs = wants_prompt_logprobs(&params)
            .then(|| vec![token_logprob(vocab, prompt[0], None, &[], 0, 0)]);
        Sequence {
            stream: TextStream::new(&params.stop),
            logprobs: params.logprobs.map(|_| Vec::new()),
            prompt_chars: prompt_text.chars().count(),
            prompt_text,
            prompt_offsets: PromptOffsets::new(),
            prompt_logprobs,
            sampler,
            generated: Vec::new(),
            finish: None,
            constraint,
            cache,
            fed,
            cached_tokens: fed,
            prompt,
            params,
            // A constrained sequence decodes plainly: drafts are not checked against its
            // grammar, so verifying them could keep tokens the grammar forbids.
            spec: if has_constraint { None } else { spec },
            started: Instant::now(),
            first_token: None,
            last_token: None,
        }
    }

    /// What this sequence puts into the next forward pass, taking prompt tokens from the
    /// step's prefill `budget`; `None` when the budget is spent.
    pub(crate) fn plan(&self, budget: &mut usize) -> Option<Part> {
        let n = self.prompt.len();
        if self.fed >= n {
            return Some(Part::Decode);
        }
        if *budget == 0 {
            return None;
        }
        let end = (self.fed + *budget).min(n);
        *budget -= end - self.fed;
        let mode = if wants_prompt_logprobs(&self.params) {
            Logits::All
        } else if end == n {
            Logits::Last
        } else {
            Logits::None
        };
        Some(Part::Prefill(Chunk {
            start: self.fed,
            end,
            mode,
        }))
    }

    /// The model input for `part` (as planned by [`Sequence::plan`]; a decoding sequence with
    /// drafts feeds its last token and the drafts, and wants every row back).
    pub(crate) fn input(&mut self, part: Part) -> SeqInput<'_> {
        let (tokens, logits) = match part {
            Part::Decode if self.drafts() > 0 => (
                &self.spec.as_ref().expect("drafts come from a spec").verify[..],
                Logits::All,
            ),
            // A decoding sequence has sampled a token: prefill ends by sampling or finishing.
            Part::Decode => (
                std::slice::from_ref(self.generated.last().expect("a sampled token")),
                Logits::Last,
            ),
            Part::Prefill(chunk) => (&self.prompt[chunk.start..chunk.end], chunk.mode),
        };
        SeqInput {
            tokens,
            cache: &mut self.cache,
            logits,
        }
    }

    /// Tokens drafted for this step's verification.
    pub(crate) fn drafts(&self) -> usize {
        self.spec.as_ref().map_or(0, |s| s.drafts.len())
    }

    /// Logits rows a decode step returns: one, or one per draft and one after them.
    pub(crate) fn decode_rows(&self) -> usize {
        1 + self.drafts()
    }

    /// Starts this step's draft (a decoding sequence). `true` when the draft model is to draft
    /// ([`Sequence::spec_mut`]'s rounds follow; the first checks lookup's proposal, if any);
    /// without the draft model prompt lookup drafts at once.
    /// `model_room`: positions the draft model takes.
    pub(crate) fn begin_draft(&mut self, context: usize, model_room: usize) -> bool {
        let Some(spec) = self.spec.as_mut() else {
            return false;
        };
        // Drafts fit the token budget with one token after them (the model's own), and the
        // context: the last token and the drafts are stored.
        let done = self.prompt.len() + self.generated.len();
        let budget = (self
            .params
            .max_tokens
            .saturating_sub(self.generated.len() + 1))
        .min(context.saturating_sub(done));
        let mut tokens = Vec::with_capacity(done);
        tokens.extend_from_slice(&self.prompt);
        tokens.extend_from_slice(&self.generated);
        spec.begin(&tokens, &self.sampler, budget, model_room.min(context))
    }

    /// The draft model's input while the prompt is computed: the draft's cache catches up to
    /// the end of the model's chunk (without logits), so that drafting starts at once when
    /// generation does. `None` without a draft model or when it has no room for the prompt.
    pub(crate) fn draft_prefill(&mut self, part: Part, room: usize) -> Option<SeqInput<'_>> {
        let Part::Prefill(chunk) = part else {
            return None;
        };
        let cache = self.spec.as_mut()?.cache_mut()?;
        let from = cache.len();
        if from >= chunk.end || chunk.end > room {
            return None;
        }
        Some(SeqInput {
            tokens: &self.prompt[from..chunk.end],
            cache,
            logits: Logits::None,
        })
    }

    /// Drafted and accepted tokens so far.
    pub(crate) fn draft_counts(&self) -> (usize, usize) {
        self.spec
            .as_ref()
            .map_or((0, 0), |s| (s.drafted, s.accepted))
    }

    pub(crate) fn spec_mut(&mut self) -> &mut Spec {
        self.spec.as_mut().expect("a drafting sequence")
    }

    /// Ends this step's draft: the verification input is ready.
    pub(crate) fn end_draft(&mut self) {
        let last = *self.generated.last().expect("a sampled token");
        let len = self.prompt.len() + self.generated.len();
        if let Some(spec) = self.spec.as_mut() {
            spec.finish_draft(last, len);
        }
    }

    /// Verifies this step's drafts against the model's rows (`block`: one row after the last
    /// token, then one after each draft): each draft is kept or replaced as
    /// [`Sampler::verify`] decides, up to the first replaced; when every draft is kept, one
    /// more token is sampled from the last row. Each token is recorded as [`Sequence::sample`]
    /// records it, from its own row, so logprobs, penalties, stop strings and limits see the
    /// same sequence as plain decoding. Both caches are then cut back to the tokens kept.
    pub(crate) fn verify(
        &mut self,
        vocab: &dyn Vocab,
        ctx: &StepContext<'_>,
        block: &[f32],
        lp: &mut Vec<f32>,
    ) -> Vec<Sampled> {
        let spec = self.spec.as_mut().expect("drafts come from a spec");
        let drafts = std::mem::take(&mut spec.drafts);
        let proposals = std::mem::take(&mut spec.proposals);
        spec.drafted += drafts.len();
        let v = ctx.vocab_size;
        let mut out = Vec::with_capacity(drafts.len() + 1);
        for (i, row) in block.chunks_exact(v).enumerate() {
            let (tok, kept) = match drafts.get(i) {
                Some(&d) => self.sampler.verify(row, d, &proposals[i]),
                None => (self.sampler.sample(row), false),
            };
            if kept {
                self.spec.as_mut().expect("checked").accepted += 1;
            }
            out.push(self.record(vocab, ctx, tok, row, lp, false));
            if !kept || self.finish.is_some() {
                break;
            }
        }
        // The model's cache holds every token but the last sampled one.
        let held = self.prompt.len() + self.generated.len() - 1;
        self.cache.truncate(held);
        self.spec.as_mut().expect("checked").rolled_back(held);
        out
    }

    /// Whether the step running `part` ends with this sequence sampling a token.
    pub(crate) fn samples_after(&self, part: Part) -> bool {
        match part {
            Part::Decode => true,
            Part::Prefill(chunk) => chunk.end == self.prompt.len(),
        }
    }

    /// Lends out the constraint (to compute its next mask on another thread during the
    /// forward pass); give it back with [`Sequence::put_constraint`].
    pub(crate) fn take_constraint(&mut self) -> Option<Active> {
        self.constraint.take()
    }

    pub(crate) fn put_constraint(&mut self, c: Active) {
        self.constraint = Some(c);
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    pub(crate) fn cached_tokens(&self) -> usize {
        self.cached_tokens
    }

    /// The cache with the tokens it holds, for reuse by a prompt that shares a prefix.
    pub(crate) fn into_cached_tokens(self) -> Option<(Vec<u32>, KvCache)> {
        let held = self.cache.len();
        if held == 0 {
            return None;
        }
        let mut tokens = self.prompt;
        tokens.extend_from_slice(&self.generated);
        tokens.truncate(held);
        Some((tokens, self.cache))
    }

    /// Takes the logits rows of a prefill chunk (`block`: one row per position for
    /// `Logits::All`, the last for `Logits::Last`). At the end of the prompt the first token
    /// is sampled (returned as for [`Sequence::sample`]) unless the sequence ends at once.
    pub(crate) fn prefilled(
        &mut self,
        vocab: &dyn Vocab,
        ctx: &StepContext<'_>,
        chunk: Chunk,
        block: &[f32],
        lp: &mut Vec<f32>,
    ) -> Option<Sampled> {
        let Chunk { start, end, mode } = chunk;
        let vocab_size = ctx.vocab_size;
        if mode == Logits::All {
            let n = self.prompt.len();
            let top = self.params.logprobs.unwrap_or(0);
            for (j, row) in block.chunks_exact(vocab_size).enumerate() {
                let pos = start + j;
                if pos + 1 < n {
                    let tok = self.prompt[pos + 1];
                    log_softmax(row, lp);
                    let offset = self.prompt_offsets.offset_of(vocab, &self.prompt, pos + 1);
                    let t = token_logprob(vocab, tok, Some(lp[tok as usize]), lp, top, offset);
                    if let Some(out) = self.prompt_logprobs.as_mut() {
                        out.push(t);
                    }
                }
            }
        }
        self.fed = end;
        if end < self.prompt.len() {
            return None;
        }
        // A prompt that fills the context has no room for a token (Meta: "length").
        if self.params.max_tokens == 0 || self.prompt.len() >= ctx.context {
            self.finish = Some(FinishReason::Length);
            return None;
        }
        let last = &block[block.len() - vocab_size..];
        Some(self.sample(vocab, ctx, last, lp))
    }

    /// After the prefill chunk that ends the prompt: the prompt's text and logprobs when they are
    /// to be echoed with logprobs.
    pub(crate) fn echoed_prompt(&self, part: Part) -> Option<(String, Vec<TokenLogprob>)> {
        match part {
            Part::Prefill(chunk) if chunk.end == self.prompt.len() => self
                .prompt_logprobs
                .as_ref()
                .map(|lps| (self.prompt_text.clone(), lps.clone())),
            _ => None,
        }
    }

    /// Samples the next token from `row`, records it (logprobs, text, stop conditions) and
    /// returns it with the text that became final.
    pub(crate) fn sample(
        &mut self,
        vocab: &dyn Vocab,
        ctx: &StepContext<'_>,
        row: &[f32],
        lp: &mut Vec<f32>,
    ) -> Sampled {
        // A constraint limits the choice to the tokens its grammar allows next. A grammar with
        // no way on (an llguidance error) ends the sequence with an end-of-sequence token.
        let mut grammar_done = false;
        let picked = self.constraint.as_mut().map(|c| match c.mask() {
            Ok(mask) if mask.num_set() > 0 => {
                Some(self.sampler.sample_masked(row, Some(mask.as_slice())))
            }
            _ => None,
        });
        let tok = match picked {
            None => self.sampler.sample(row),
            Some(Some(tok)) => {
                let c = self.constraint.as_mut().expect("a constraint");
                // A complete grammar allows only end-of-sequence tokens next, so the model
                // ends as it would have (the same tokens as unconstrained greedy output); with
                // no such token the sequence ends here.
                grammar_done = match c.commit(tok) {
                    Ok(complete) => complete && ctx.eos.is_empty(),
                    Err(_) => true,
                };
                tok
            }
            Some(None) => {
                grammar_done = true;
                match ctx.eos.first() {
                    Some(&e) => e,
                    None => self.sampler.sample(row),
                }
            }
        };
        self.record(vocab, ctx, tok, row, lp, grammar_done)
    }

    /// Records `tok`, chosen from `row`: logprobs, text, penalties and stop conditions
    /// (`grammar_done`: the constraint ends the sequence here).
    fn record(
        &mut self,
        vocab: &dyn Vocab,
        ctx: &StepContext<'_>,
        tok: u32,
        row: &[f32],
        lp: &mut Vec<f32>,
        grammar_done: bool,
    ) -> Sampled {
        let now = Instant::now();
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        let offset = self.prompt_chars + self.stream.char_len();
        let logprob = self.params.logprobs.map(|n| {
            log_softmax(row, lp);
            token_logprob(vocab, tok, Some(lp[tok as usize]), lp, n, offset)
        });
        if let (Some(t), Some(out)) = (&logprob, self.logprobs.as_mut()) {
            out.push(t.clone());
        }
        self.generated.push(tok);
        self.sampler.observe(tok);
        // An end-of-sequence token adds no text; a stop string ends the text before it. The
        // prompt and the generated tokens together fill at most the context (Meta's max_seq_len).
        let eos_hit = !self.params.ignore_eos && ctx.eos.contains(&tok);
        if eos_hit || self.stream.push(&vocab.token_bytes(tok)) || grammar_done {
            self.finish = Some(FinishReason::Stop);
        } else if self.generated.len() >= self.params.max_tokens
            // Prompt and generated tokens fill the context (Meta's `total_len`); counted from the
            // tokens, not the cache, which a verification pass holds longer for a moment.
            || self.prompt.len() + self.generated.len() >= ctx.context
        {
            self.finish = Some(FinishReason::Length);
        }
        let text = if self.finish.is_some() {
            self.stream.finish().to_string()
        } else {
            self.stream.take_ready().to_string()
        };
        Sampled {
            id: tok,
            text,
            logprob,
        }
    }

    /// The result of a finished sequence; what is left (prompt, generated ids, cache) stays
    /// for the prefix cache.
    pub(crate) fn take_completion(&mut self) -> Completion {
        Completion {
            prompt_token_ids: self.prompt.clone(),
            token_ids: self.generated.clone(),
            prompt_text: std::mem::take(&mut self.prompt_text),
            text: self.stream.text().to_string(),
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            prompt_logprobs: self.prompt_logprobs.take(),
            logprobs: self.logprobs.take(),
            timings: self.timings(),
        }
    }

    fn timings(&self) -> Timings {
        let first = self.first_token.unwrap_or_else(Instant::now);
        let last = self.last_token.unwrap_or(first);
        Timings {
            prompt_tokens: self.prompt.len() - self.cached_tokens,
            prompt_seconds: first.duration_since(self.started).as_secs_f64(),
            generate_seconds: last.duration_since(first).as_secs_f64(),
            draft_tokens: self.spec.as_ref().map_or(0, |s| s.drafted),
            draft_accepted: self.spec.as_ref().map_or(0, |s| s.accepted),
        }
    }
}

/// Logprobs of the prompt need the logits of every prompt position.
fn wants_prompt_logprobs(params: &GenerateParams) -> bool {
    params.echo && params.logprobs.is_some()
}

/// What holds for every sequence of a step.
pub(crate) struct StepContext<'a> {
    pub(crate) eos: &'a [u32],
    pub(crate) context: usize,
    pub(crate) vocab_size: usize,
}

/// A token just sampled, with the text that became final with it.
pub(crate) struct Sampled {
    pub(crate) id: u32,
    pub(crate) text: String,
    pub(crate) logprob: Option<TokenLogprob>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte tokens with a SentencePiece-like rule: the first piece loses a leading space.
    struct Bytes;
    impl Vocab for Bytes {
        fn encode(&self, text: &str, _add_special: bool) -> Result<Vec<u32>, String> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn decode(&self, ids: &[u32], _skip_special: bool) -> String {
            let bytes: Vec<u8> = ids.iter().map(|&t| t as u8).collect();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            text.strip_prefix(' ').map(str::to_string).unwrap_or(text)
        }
        fn token_bytes(&self, id: u32) -> Vec<u8> {
            vec![id as u8]
        }
        fn eos_ids(&self) -> Vec<u32> {
            vec![0]
        }
        fn bos_id(&self) -> Option<u32> {
            None
        }
    }

    /// The offset of each prompt token, as decoding the prefix gives it: its characters, less a
    /// trailing incomplete character (which decodes to one U+FFFD).
    #[test]
    fn prompt_offsets_equal_decoding_the_prefix() {
        let text = " Grüße, 🦀 und 東京! \u{FFFD}x";
        let mut prompt = Bytes.encode(text, false).unwrap();
        // An invalid byte in the middle stays one U+FFFD of its own.
        prompt.insert(3, 0xff);
        let mut offsets = PromptOffsets::new();
        for k in 1..prompt.len() {
            let prefix = &prompt[..k];
            let bytes: Vec<u8> = prefix.iter().map(|&t| t as u8).collect();
            let decoded = Bytes.decode(prefix, true);
            let expect = decoded.chars().count() - usize::from(ends_inside_a_char(&bytes));
            assert_eq!(offsets.offset_of(&Bytes, &prompt, k), expect, "token {k}");
        }
    }

    #[test]
    fn eos_ids_are_the_tokenizers_then_the_models_once() {
        assert_eq!(eos_ids(&Bytes, &[5, 0, 5]), vec![0, 5]);
        assert_eq!(eos_ids(&Bytes, &[]), vec![0]);
    }

    #[test]
    fn logit_bias_outside_the_vocabulary_is_refused() {
        let mut params = GenerateParams::default();
        params.sampling.logit_bias = vec![(3, 1.0), (10, -1.0)];
        let e = validate_request(&[1, 2], &params, 8, 10).unwrap_err();
        assert!(e.to_string().contains("logit_bias token id 10"), "{e}");
        params.sampling.logit_bias.pop();
        assert!(validate_request(&[1, 2], &params, 8, 10).is_ok());
    }
}
