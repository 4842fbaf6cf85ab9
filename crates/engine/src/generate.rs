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
    if prompts.len() > limits.max_batch {
        return Err(EngineError::Invalid(format!(
            "batch of {} prompts is larger than the maximum batch size {}",
            prompts.len(),
            limits.max_batch
        )));
    }
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
        batch.add(model, tokenizer, p.clone(), params.clone(), i)?;
    }
    let mut out: Vec<Option<Completion>> = vec![None; prompts.len()];
    while !batch.is_empty() {
        let report = batch.step(model, tokenizer, &mut |&mut i, event| {
            if let Event::Token { text, .. } = event {
                if !text.is_empty() {
                    on_text(i, &text);
                }
            }
        })?;
        for f in report.finished {
            out[f.tag] = Some(f.completion);
        }
    }
    Ok(out
        .into_iter()
        .map(|c| c.expect("every admitted prompt finishes"))
        .collect())
}
