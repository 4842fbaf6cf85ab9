//! Batched generation with the semantics of Meta's `Llama.generate`: a batch of prompts of
//! different lengths, a token budget, sampling, stop conditions, per-token logprobs and echo.
//!
//! Every sequence has its own KV cache, sampler and random stream, and every kernel computes
//! each row independently, so a prompt's result does not depend on its batch-mates.
//!
//! The types here are shared by every way of generating; the work is done by
//! [`crate::sequence`] (one request) and [`crate::batch`] (one step of many).

use kiln_models::CausalLM;
use kiln_tokenizer::Tokenizer;

use std::sync::Arc;

use crate::batch::{Batch, BatchConfig, Event};
use crate::constraint::{Constraint, Grammars};
use crate::sampler::SamplingParams;
use crate::EngineError;

/// What to generate for every prompt of a batch.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// New tokens at most (Meta's `max_gen_len`).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    /// Keep generating through end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Report each chosen token's logprob and this many alternatives (`Some(0)`: only the chosen).
    pub logprobs: Option<usize>,
    /// Return the prompt too, with its tokens' logprobs when `logprobs` is set.
    pub echo: bool,
    /// Limit the output to a JSON schema, a grammar or a regular expression.
    pub constraint: Option<Constraint>,
    /// Speculative decoding: how tokens are drafted for the model to verify.
    pub speculation: Speculation,
}

/// Speculative decoding for one request: a cheap source drafts tokens, the model checks them
/// all in one forward pass, and the first it disagrees with is replaced by its own choice.
/// Greedy output is the plain decoding's token for token; sampled output follows exactly the
/// distribution plain sampling draws from (speculative sampling by rejection, Leviathan et al.
/// 2023 / Chen et al. 2023), reproducibly for a seed but not the same draws as without drafts.
///
/// Two sources: the engine's draft model (when one is loaded and `draft_model` is set), and
/// prompt lookup (`lookup_ngram > 0`: the continuation of an earlier occurrence of the last
/// tokens, from the prompt or the text so far). When both are on, the draft model checks
/// lookup's proposal in one batched pass and keeps it up to the first token it would not have
/// drafted itself, then drafts on from there (see [`crate::spec`]): greedy drafts are then the
/// draft model's own, computed in fewer passes.
#[derive(Clone, Debug, PartialEq)]
pub struct Speculation {
    /// Draft with the engine's draft model, when it has one.
    pub draft_model: bool,
    /// Tokens drafted per step at most (llama.cpp's `--draft-max`); 0 turns speculation off.
    pub draft_max: usize,
    /// Drafts shorter than this are not verified: the step decodes one token instead
    /// (`--draft-min`).
    pub draft_min: usize,
    /// The draft model stops drafting at a token it gives less than this probability
    /// (`--draft-p-min`).
    pub p_min: f32,
    /// Prompt lookup: match the last `lookup_ngram` tokens (then fewer, down to 1) earlier in
    /// the sequence and draft what followed the longest match (0 = off).
    pub lookup_ngram: usize,
}

impl Default for Speculation {
    /// At most 8 drafts (llama.cpp drafts up to 16: kiln verifies up to 15 tokens with the
    /// small-batch kernels, which read the weights once for all of them, and on the CPUs
    /// measured longer drafts gained nothing), then llama.cpp's 0 and 0.75; prompt lookup off.
    fn default() -> Self {
        Speculation {
            draft_model: true,
            draft_max: 8,
            draft_min: 0,
            p_min: 0.75,
            lookup_ngram: 0,
        }
    }
}

impl Speculation {
    /// Most tokens a request may draft per step, and the longest lookup n-gram.
    pub const MAX_DRAFT: usize = 64;
    pub const MAX_NGRAM: usize = 16;
    /// The lookup n-gram `kiln complete` and `kiln serve` use with a draft model unless told
    /// otherwise (`--lookup-ngram`): the draft checks lookup's proposals, which leaves its
    /// drafts as they are and saves draft passes (on the committed code prompts, 26% of them;
    /// BENCHMARKS.md). [`Speculation::default`] keeps lookup off, since without a draft model
    /// it would turn speculation on.
    pub const DRAFT_LOOKUP_NGRAM: usize = 4;

    /// No drafting at all.
    pub fn off() -> Speculation {
        Speculation {
            draft_model: false,
            lookup_ngram: 0,
            ..Speculation::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.draft_max > Self::MAX_DRAFT {
            return Err(format!(
                "draft_max must be at most {}, got {}",
                Self::MAX_DRAFT,
                self.draft_max
            ));
        }
        if self.draft_min > self.draft_max {
            return Err(format!(
                "draft_min ({}) must not exceed draft_max ({})",
                self.draft_min, self.draft_max
            ));
        }
        if !(0.0..=1.0).contains(&self.p_min) {
            return Err(format!("draft p_min must be in [0, 1], got {}", self.p_min));
        }
        if self.lookup_ngram > Self::MAX_NGRAM {
            return Err(format!(
                "lookup_ngram must be at most {}, got {}",
                Self::MAX_NGRAM,
                self.lookup_ngram
            ));
        }
        Ok(())
    }
}

/// Where a request's time went, and how its drafts fared.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timings {
    /// Prompt tokens computed (not taken from the prefix cache).
    pub prompt_tokens: usize,
    /// From admission to the first generated token (the prompt's prefill).
    pub prompt_seconds: f64,
    /// From the first generated token to the last.
    pub generate_seconds: f64,
    /// Tokens drafted and sent to the model for verification.
    pub draft_tokens: usize,
    /// Drafted tokens the model accepted.
    pub draft_accepted: usize,
}

impl Timings {
    /// Accepted drafts per drafted token (`None` without drafts).
    pub fn acceptance_rate(&self) -> Option<f64> {
        (self.draft_tokens > 0).then(|| self.draft_accepted as f64 / self.draft_tokens as f64)
    }
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 64,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            echo: false,
            speculation: Speculation::default(),
            constraint: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// The token budget or the context ran out.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One token with its log-probability and the most likely alternatives at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub text: String,
    /// `None` for the first prompt token, which nothing predicts.
    pub logprob: Option<f32>,
    pub top: Vec<(u32, String, f32)>,
    /// Character offset of this token in the returned text.
    pub text_offset: usize,
}

/// The result for one prompt.
#[derive(Clone, Debug)]
pub struct Completion {
    /// The prompt as tokenized, BOS included.
    pub prompt_token_ids: Vec<u32>,
    /// Generated ids only (a final end-of-sequence token included).
    pub token_ids: Vec<u32>,
    /// The prompt's text when `echo`, else empty.
    pub prompt_text: String,
    /// Generated text (without a stop string or end-of-sequence token).
    pub text: String,
    pub finish_reason: FinishReason,
    /// With `echo` and `logprobs`: one entry per prompt token.
    pub prompt_logprobs: Option<Vec<TokenLogprob>>,
    /// With `logprobs`: one entry per generated token.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Time spent and speculative drafts.
    pub timings: Timings,
}

/// Limits that hold for every batch.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Positions per sequence (prompt plus generated tokens), Meta's `max_seq_len`.
    pub context: usize,
    /// Prompts per batch, Meta's `max_batch_size`.
    pub max_batch: usize,
    /// Tokens per forward pass while prefilling (longer prompts are processed in chunks).
    pub prefill_chunk: usize,
}

/// Runs a batch of tokenized prompts to completion. `on_text(i, s)` receives text of prompt `i`
/// as soon as it is final (never a partial character or a partial stop string).
///
/// This drives the same [`Batch`] step the server's scheduler runs, with every prompt admitted
/// at once: the results are the server's.
pub fn generate(
    model: &dyn CausalLM,
    tokenizer: &Tokenizer,
    limits: Limits,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<Vec<Completion>, EngineError> {
    let grammars = Arc::new(Grammars::new());
    generate_with(
        model, tokenizer, &grammars, limits, prompts, params, on_text,
    )
}

/// [`generate`] with a grammar compiler kept between calls (building one for a vocabulary
/// takes a moment; [`crate::Engine`] keeps its own).
pub fn generate_with(
    model: &dyn CausalLM,
    tokenizer: &Tokenizer,
    grammars: &Arc<Grammars>,
    limits: Limits,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<Vec<Completion>, EngineError> {
    generate_until(
        model,
        None,
        tokenizer,
        grammars,
        limits,
        prompts,
        params,
        on_text,
        &mut || false,
    )
}

/// [`generate`] with a draft model for speculative decoding (see [`Speculation`]; its
/// vocabulary must be the model's, [`crate::check_draft_vocab`]).
pub fn generate_with_draft(
    model: &dyn CausalLM,
    draft: Option<Arc<dyn CausalLM>>,
    tokenizer: &Tokenizer,
    limits: Limits,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<Vec<Completion>, EngineError> {
    generate_until(
        model,
        draft,
        tokenizer,
        &Arc::new(Grammars::new()),
        limits,
        prompts,
        params,
        on_text,
        &mut || false,
    )
}

/// [`generate_with_draft`] that asks `cancelled()` before every step (one forward pass: one
/// token, or one prefill chunk) and ends with [`EngineError::Cancelled`] when it answers true
/// (an interrupt, a dropped stream, `kiln chat`'s Ctrl-C). The text already handed to
/// `on_text` is all there is of the stopped replies.
#[allow(clippy::too_many_arguments)]
pub fn generate_until(
    model: &dyn CausalLM,
    draft: Option<Arc<dyn CausalLM>>,
    tokenizer: &Tokenizer,
    grammars: &Arc<Grammars>,
    limits: Limits,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(usize, &str),
    cancelled: &mut dyn FnMut() -> bool,
) -> Result<Vec<Completion>, EngineError> {
    let mut batch = Batch::with_grammars(
        model,
        tokenizer,
        BatchConfig {
            context: limits.context,
            prefill_chunk: limits.prefill_chunk,
            prefix_cache: 0,
        },
        grammars.clone(),
    );
    batch.set_draft(model, draft)?;
    run_batch(
        &mut batch, model, tokenizer, limits, prompts, params, on_text, cancelled,
    )
}

/// Admits every prompt into `batch` and steps it until all are done. A cancelled run leaves
/// its sequences' caches in the batch's prefix pool (they hold whole steps); a failed step
/// drops them (they may hold half-written positions).
#[allow(clippy::too_many_arguments)]
fn run_batch(
    batch: &mut Batch<usize>,
    model: &dyn CausalLM,
    tokenizer: &Tokenizer,
    limits: Limits,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(usize, &str),
    cancelled: &mut dyn FnMut() -> bool,
) -> Result<Vec<Completion>, EngineError> {
    if prompts.len() > limits.max_batch {
        return Err(EngineError::Invalid(format!(
            "batch of {} prompts is larger than the maximum batch size {}",
            prompts.len(),
            limits.max_batch
        )));
    }
    // The constraint is compiled once for the whole batch.
    let mut params = params.clone();
    batch.compile(tokenizer, &mut params)?;
    let params = &params;
    // Refuse the whole batch before computing anything.
    for (i, p) in prompts.iter().enumerate() {
        batch.validate(p, params).map_err(|e| match e {
            EngineError::Invalid(msg) if prompts.len() > 1 => {
                EngineError::Invalid(format!("prompt {i}: {msg}"))
            }
            e => e,
        })?;
    }
    for (i, p) in prompts.iter().enumerate() {
        if let Err(e) = batch.add(model, tokenizer, p.clone(), params.clone(), i) {
            batch.remove_where(|_| true);
            return Err(e);
        }
    }
    let mut out: Vec<Option<Completion>> = vec![None; prompts.len()];
    while !batch.is_empty() {
        if cancelled() {
            batch.remove_where(|_| true);
            return Err(EngineError::Cancelled);
        }
        let report = batch.step(model, tokenizer, &mut |&mut i, event| {
            if let Event::Token { text, .. } = event {
                if !text.is_empty() {
                    on_text(i, &text);
                }
            }
        });
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                batch.clear();
                return Err(e);
            }
        };
        for f in report.finished {
            out[f.tag] = Some(f.completion);
        }
    }
    Ok(out
        .into_iter()
        .map(|c| c.expect("every admitted prompt finishes"))
        .collect())
}

/// Generation that keeps its KV caches from one call to the next, for a conversation whose
/// every turn's prompt starts with the previous turn's prompt and reply (`kiln chat`): each
/// call's prompt reuses the longest prefix it shares with what an earlier call computed, so a
/// turn computes only its new tokens. It is the server's prefix cache ([`Batch`]'s pool of
/// finished caches) kept between calls, and the results are [`generate`]'s for the same
/// prompts. A stopped reply ([`EngineError::Cancelled`]) keeps what it computed too.
pub struct Session {
    batch: Batch<usize>,
}

impl Session {
    /// A session over `model` that keeps the caches of its last `keep` sequences (at least 1).
    pub fn new(
        model: &dyn CausalLM,
        draft: Option<Arc<dyn CausalLM>>,
        tokenizer: &Tokenizer,
        grammars: &Arc<Grammars>,
        limits: Limits,
        keep: usize,
    ) -> Result<Session, EngineError> {
        let mut batch = Batch::with_grammars(
            model,
            tokenizer,
            BatchConfig {
                context: limits.context,
                prefill_chunk: limits.prefill_chunk,
                prefix_cache: keep.max(1),
            },
            grammars.clone(),
        );
        batch.set_draft(model, draft)?;
        Ok(Session { batch })
    }

    /// [`generate_until`] through the kept caches. `model` and `tokenizer` must be those the
    /// session was made with. Each [`Completion::timings`] counts in `prompt_tokens` only the
    /// prompt tokens that were computed (the rest came from the kept caches).
    #[allow(clippy::too_many_arguments)]
    pub fn generate_until(
        &mut self,
        model: &dyn CausalLM,
        tokenizer: &Tokenizer,
        limits: Limits,
        prompts: &[Vec<u32>],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(usize, &str),
        cancelled: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<Completion>, EngineError> {
        run_batch(
            &mut self.batch,
            model,
            tokenizer,
            limits,
            prompts,
            params,
            on_text,
            cancelled,
        )
    }

    /// Forgets every kept cache (a new conversation).
    pub fn forget(&mut self) {
        self.batch.forget();
    }

    /// Positions held in kept caches.
    pub fn kept_tokens(&self) -> usize {
        self.batch.pooled_tokens()
    }
}
