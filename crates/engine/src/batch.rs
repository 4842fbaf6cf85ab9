//! The synchronous core of generation: a set of running [`Sequence`]s and the step that advances
//! them all with one batched forward pass. [`crate::generate::generate`] drives it until every
//! prompt is done; the server's [`crate::scheduler::Scheduler`] drives it from its engine thread,
//! adding and cancelling requests between steps. Both get the same results.
//!
//! Each step feeds every decoding sequence its last sampled token, plus chunks of the prompts of
//! prefilling sequences (chunked prefill: at most `prefill_chunk` prompt tokens per step, shared
//! in order of arrival, so running streams are never stalled by a long prompt for more than one
//! chunk).
//!
//! Finished sequences leave their caches in a small pool keyed by their tokens; a new prompt
//! that shares a prefix with one of them (a system prompt) reuses that cache up to the common
//! prefix instead of recomputing it.

use std::collections::VecDeque;
use std::sync::Arc;

use kiln_models::{CausalLM, KvCache, SeqInput};

use crate::constraint::{Active, Grammars};
use crate::generate::{Completion, GenerateParams, TokenLogprob};
use crate::sequence::{eos_ids, validate_request, Part, Sampled, Sequence, StepContext, Vocab};
use crate::spec::Spec;
use crate::EngineError;

/// What happens to a request, in order: `Token`* then `Done` (or `Error`).
#[derive(Debug)]
pub enum Event {
    /// A generated token. `text` is the text that became final with it (possibly empty: an
    /// incomplete character or a possible stop string is held back; the token that ends the
    /// sequence carries whatever was held). `logprob` is set when logprobs were asked for.
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The echoed prompt with its logprobs, sent once its prefill is done and before its first
    /// token; only for requests with both `echo` and `logprobs` (a stream echoes the prompt
    /// with them, as the whole response does).
    Prompt {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// The finished result (same shape as [`crate::generate::generate`]'s).
    Done {
        completion: Completion,
        /// Prompt tokens taken from the prefix cache instead of being computed.
        cached_tokens: usize,
    },
    Error(String),
}

/// How a [`Batch`] runs its sequences.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// Positions per sequence (prompt plus generated); at most the model's trained context.
    pub context: usize,
    /// Prompt tokens prefilled per step, over all prefilling sequences.
    pub prefill_chunk: usize,
    /// Finished caches kept for prefix reuse (0 = off).
    pub prefix_cache: usize,
}

/// A sequence that ended in the last step, with the tag it was added with.
pub struct Finished<T> {
    pub tag: T,
    pub completion: Completion,
    /// Prompt tokens taken from the prefix cache instead of being computed.
    pub cached_tokens: usize,
}

/// What one [`Batch::step`] did.
pub struct StepReport<T> {
    /// Tokens sampled in this step.
    pub generated: usize,
    /// Tokens drafted and verified in this step, and those of them the model kept.
    pub drafted: usize,
    pub accepted: usize,
    /// Sequences that ended in this step, in the order they were added.
    pub finished: Vec<Finished<T>>,
}

/// Running sequences, each with a caller's tag `T` (an index, a reply channel, ...).
pub struct Batch<T> {
    cfg: BatchConfig,
    eos: Vec<u32>,
    vocab_size: usize,
    running: Vec<(T, Sequence)>,
    /// Finished caches with the tokens they hold, oldest first.
    pool: VecDeque<(Vec<u32>, KvCache)>,
    /// The draft model for speculative decoding (its vocabulary is the model's).
    draft: Option<Arc<dyn CausalLM>>,
    /// Compiles the requests' constraints.
    grammars: Arc<Grammars>,
}

impl<T> Batch<T> {
    /// An empty batch for `model`, whose end-of-sequence set is built from `vocab` and the
    /// model's config.
    pub fn new(model: &dyn CausalLM, vocab: &dyn Vocab, cfg: BatchConfig) -> Batch<T> {
        Batch::with_grammars(model, vocab, cfg, Arc::new(Grammars::new()))
    }

    /// [`Batch::new`] with a grammar compiler for `model` and `vocab` shared with others.
    pub fn with_grammars(
        model: &dyn CausalLM,
        vocab: &dyn Vocab,
        cfg: BatchConfig,
        grammars: Arc<Grammars>,
    ) -> Batch<T> {
        let mc = model.config();
        Batch {
            cfg: BatchConfig {
                context: cfg.context.clamp(1, mc.max_position_embeddings.max(1)),
                prefill_chunk: cfg.prefill_chunk.max(1),
                prefix_cache: cfg.prefix_cache,
            },
            eos: eos_ids(vocab, &mc.eos_token_ids),
            vocab_size: mc.vocab_size,
            running: Vec::new(),
            pool: VecDeque::new(),
            draft: None,
            grammars,
        }
    }

    /// The batch's grammar compiler.
    pub fn grammars(&self) -> &Arc<Grammars> {
        &self.grammars
    }

    /// Compiles the request's constraint, if it has one that is not compiled yet (a grammar
    /// llguidance refuses is `EngineError::Invalid`, naming the problem). [`Batch::add`]
    /// compiles what is not; compiling first lets a request be refused before it queues, and
    /// `n` copies of a request share one compilation.
    pub fn compile(
        &self,
        vocab: &dyn Vocab,
        params: &mut GenerateParams,
    ) -> Result<(), EngineError> {
        match params.constraint.as_mut() {
            Some(c) => self.grammars.compile(vocab, self.vocab_size, &self.eos, c),
            None => Ok(()),
        }
    }

    /// Drafts with `draft` for the requests that ask for it (see
    /// [`crate::generate::Speculation`]). Its vocabulary must be the model's (checking that
    /// the two tokenizers agree is the caller's part, [`crate::check_draft_vocab`]); its
    /// logits may cover a prefix of it ([`CausalLM::limit_logits`]).
    pub fn set_draft(
        &mut self,
        model: &dyn CausalLM,
        draft: Option<Arc<dyn CausalLM>>,
    ) -> Result<(), EngineError> {
        if let Some(d) = &draft {
            let (a, b) = (model.config().vocab_size, d.config().vocab_size);
            if a != b {
                return Err(EngineError::Invalid(format!(
                    "the draft model's vocabulary ({b} tokens) is not the model's ({a})"
                )));
            }
        }
        self.draft = draft;
        Ok(())
    }

    /// Whether a draft model is set.
    pub fn has_draft(&self) -> bool {
        self.draft.is_some()
    }

    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// The tokens that end generation (unless `ignore_eos`).
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// Checks a request without adding it (see [`validate_request`]).
    pub fn validate(&self, prompt: &[u32], params: &GenerateParams) -> Result<(), EngineError> {
        validate_request(prompt, params, self.cfg.context, self.vocab_size)
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Starts a request; its prompt is computed in the next steps. Returns the prompt tokens
    /// found in the prefix cache.
    pub fn add(
        &mut self,
        model: &dyn CausalLM,
        vocab: &dyn Vocab,
        prompt: Vec<u32>,
        params: GenerateParams,
        tag: T,
    ) -> Result<usize, EngineError> {
        self.validate(&prompt, &params)?;
        let constraint = match &params.constraint {
            Some(c) => Some(self.grammars.start(vocab, self.vocab_size, &self.eos, c)?),
            None => None,
        };
        let n = prompt.len();
        // Caches grow on demand; start with room for a moderate answer.
        let capacity = (n + params.max_tokens.min(512)).min(self.cfg.context);
        // Prompt logprobs need every position's logits, so such a prompt is computed whole.
        let reusable = !(params.echo && params.logprobs.is_some());
        // The longest cached prefix, leaving at least one prompt token to compute the logits of.
        let mut best: Option<(usize, usize)> = None;
        if reusable {
            for (i, (tokens, _)) in self.pool.iter().enumerate() {
                let lcp = tokens
                    .iter()
                    .zip(&prompt)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(n - 1);
                if lcp > 0 && !matches!(best, Some((_, l)) if l >= lcp) {
                    best = Some((i, lcp));
                }
            }
        }
        let (cache, fed) = match best.and_then(|(i, lcp)| self.pool.remove(i).map(|e| (e, lcp))) {
            Some(((_, mut cache), lcp)) => {
                cache.truncate(lcp);
                cache.reserve(capacity);
                (cache, lcp)
            }
            None => (model.new_cache(capacity), 0),
        };
        let sp = &params.speculation;
        let use_model = sp.draft_model && self.draft.is_some();
        let spec = (sp.draft_max > 0 && (use_model || sp.lookup_ngram > 0)).then(|| {
            let draft_cache = self
                .draft
                .as_ref()
                .filter(|_| use_model)
                .map(|d| d.new_cache(capacity));
            Spec::new(sp.clone(), &params.sampling, draft_cache)
        });
        self.running.push((
            tag,
            Sequence::new(vocab, prompt, params, cache, fed, spec, constraint),
        ));
        Ok(fed)
    }

    /// Removes the sequences whose tag matches (cancelled requests); their caches go to the
    /// prefix pool.
    pub fn remove_where(&mut self, mut cancelled: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if cancelled(&self.running[i].0) {
                let (tag, seq) = self.running.remove(i);
                self.retire(seq);
                removed.push(tag);
            } else {
                i += 1;
            }
        }
        removed
    }

    /// Removes every sequence without keeping its cache (after a failed step, whose caches may
    /// hold half-written positions).
    pub fn clear(&mut self) -> Vec<T> {
        self.running.drain(..).map(|(tag, _)| tag).collect()
    }

    /// One batched forward pass over every running sequence; `emit` receives each sampled
    /// token (`Event::Token`) as it is chosen. Sequences that end are removed and returned.
    /// After an error the batch's sequences should be [`Batch::clear`]ed. `model` and `vocab`
    /// are those the batch was made with (the batch does not own them, so that a caller can
    /// lend them: `generate()` borrows the engine's).
    pub fn step(
        &mut self,
        model: &dyn CausalLM,
        vocab: &dyn Vocab,
        emit: &mut dyn FnMut(&mut T, Event),
    ) -> Result<StepReport<T>, EngineError> {
        // Plan: decoders feed one token; prefilling sequences share the prefill budget in order.
        let mut budget = self.cfg.prefill_chunk;
        let parts: Vec<Option<Part>> = self
            .running
            .iter()
            .map(|(_, s)| s.plan(&mut budget))
            .collect();

        // Draft: prompt lookup at once; the draft model in batched rounds of one token (the
        // first also checking lookup's proposal, when there is one).
        let context = self.cfg.context;
        let room = self
            .draft
            .as_ref()
            .map_or(0, |d| d.config().max_position_embeddings);
        let mut drafting: Vec<bool> = self
            .running
            .iter_mut()
            .zip(&parts)
            .map(|((_, s), part)| {
                matches!(part, Some(Part::Decode)) && s.begin_draft(context, room)
            })
            .collect();
        if let Some(draft) = &self.draft {
            // The draft model computes the prompts beside the model (as llama.cpp's
            // speculative example does), so that its first draft need not.
            let mut inputs: Vec<SeqInput<'_>> = self
                .running
                .iter_mut()
                .zip(&parts)
                .filter_map(|((_, s), part)| part.and_then(|p| s.draft_prefill(p, room)))
                .collect();
            if !inputs.is_empty() {
                draft.forward(&mut inputs, &mut Vec::new())?;
            }
            drop(inputs);
            // The draft's rows may cover only a prefix of the vocabulary
            // ([`crate::DraftVocab`]): its proposals are then over those ids.
            let width = draft.logit_rows();
            let mut dlogits = Vec::new();
            while drafting.iter().any(|&d| d) {
                dlogits.clear();
                let mut inputs: Vec<SeqInput<'_>> = self
                    .running
                    .iter_mut()
                    .zip(&drafting)
                    .filter(|(_, d)| **d)
                    .map(|((_, s), _)| s.spec_mut().model_input())
                    .collect();
                draft.forward(&mut inputs, &mut dlogits)?;
                drop(inputs);
                // Each drafting sequence's rows, in order: one, or (checking lookup's
                // proposal) one per token fed.
                let mut at = 0;
                for ((_, s), d) in self.running.iter_mut().zip(drafting.iter_mut()) {
                    if *d {
                        let spec = s.spec_mut();
                        let end = at + spec.model_row_count() * width;
                        *d = spec.model_rows(&dlogits[at..end], width);
                        at = end;
                    }
                }
            }
        }
        for ((_, s), part) in self.running.iter_mut().zip(&parts) {
            if matches!(part, Some(Part::Decode)) {
                s.end_draft();
            }
        }

        // The constraints of the sequences that sample after this pass compute their masks on
        // another thread while the forward pass runs.
        let mut constrained: Vec<(usize, Active)> = Vec::new();
        for (i, ((_, s), part)) in self.running.iter_mut().zip(&parts).enumerate() {
            if let Some(part) = *part {
                if s.samples_after(part) {
                    if let Some(c) = s.take_constraint() {
                        constrained.push((i, c));
                    }
                }
            }
        }

        let mut logits = Vec::new();
        let running = &mut self.running;
        let (forward, constrained) = std::thread::scope(|scope| {
            let masks = (!constrained.is_empty()).then(|| {
                scope.spawn(move || {
                    for (_, c) in constrained.iter_mut() {
                        c.prepare();
                    }
                    constrained
                })
            });
            let mut inputs: Vec<SeqInput<'_>> = Vec::with_capacity(running.len());
            for ((_, s), part) in running.iter_mut().zip(&parts) {
                if let Some(part) = *part {
                    inputs.push(s.input(part));
                }
            }
            let forward = if inputs.is_empty() {
                Ok(())
            } else {
                model.forward(&mut inputs, &mut logits)
            };
            drop(inputs);
            let constrained = match masks {
                Some(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                None => Vec::new(),
            };
            (forward, constrained)
        });
        for (i, c) in constrained {
            self.running[i].1.put_constraint(c);
        }
        forward?;

        // Hand every sequence its rows.
        let ctx = StepContext {
            eos: &self.eos,
            context: self.cfg.context,
            vocab_size: self.vocab_size,
        };
        let vocab_size = self.vocab_size;
        let mut row = 0;
        let mut lp = Vec::new();
        let mut generated = 0;
        let (mut drafted, mut accepted) = (0, 0);
        for ((tag, s), part) in self.running.iter_mut().zip(&parts) {
            let Some(part) = *part else { continue };
            let rows = match part {
                Part::Decode => s.decode_rows(),
                Part::Prefill(chunk) => chunk.rows(),
            };
            let block = &logits[row * vocab_size..(row + rows) * vocab_size];
            row += rows;
            let sampled = match part {
                Part::Decode if rows > 1 => {
                    let before = s.draft_counts();
                    let out = s.verify(vocab, &ctx, block, &mut lp);
                    let after = s.draft_counts();
                    drafted += after.0 - before.0;
                    accepted += after.1 - before.1;
                    out
                }
                Part::Decode => vec![s.sample(vocab, &ctx, block, &mut lp)],
                Part::Prefill(chunk) => s
                    .prefilled(vocab, &ctx, chunk, block, &mut lp)
                    .into_iter()
                    .collect(),
            };
            if let Some((text, logprobs)) = s.echoed_prompt(part) {
                emit(tag, Event::Prompt { text, logprobs });
            }
            for Sampled { id, text, logprob } in sampled {
                generated += 1;
                emit(tag, Event::Token { id, text, logprob });
            }
        }

        // Retire finished sequences.
        let mut finished = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].1.is_finished() {
                let (tag, mut seq) = self.running.remove(i);
                finished.push(Finished {
                    tag,
                    completion: seq.take_completion(),
                    cached_tokens: seq.cached_tokens(),
                });
                self.retire(seq);
            } else {
                i += 1;
            }
        }
        Ok(StepReport {
            generated,
            drafted,
            accepted,
            finished,
        })
    }

    /// Drops the kept caches of the prefix pool.
    pub fn forget(&mut self) {
        self.pool.clear();
    }

    /// Positions held by the prefix pool's caches.
    pub fn pooled_tokens(&self) -> usize {
        self.pool.iter().map(|(t, _)| t.len()).sum()
    }

    /// Keeps a finished sequence's cache, keyed by the tokens it holds, for prefix reuse.
    fn retire(&mut self, s: Sequence) {
        if self.cfg.prefix_cache == 0 {
            return;
        }
        let Some((tokens, cache)) = s.into_cached_tokens() else {
            return;
        };
        // An entry whose tokens are a prefix of the new one is superseded by it.
        self.pool.retain(|(t, _)| !tokens.starts_with(t));
        while self.pool.len() >= self.cfg.prefix_cache {
            self.pool.pop_front();
        }
        self.pool.push_back((tokens, cache));
    }
}
