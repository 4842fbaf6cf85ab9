//! Batched generation with the semantics of Meta's `Llama.generate`: a batch of prompts of
//! different lengths, a token budget, sampling, stop conditions, per-token logprobs and echo.
//!
//! Every sequence has its own KV cache, sampler and random stream, and every kernel computes
//! each row independently, so a prompt's result does not depend on its batch-mates.

use kiln_models::{CausalLM, KvCache, Logits, SeqInput};
use kiln_tokenizer::Tokenizer;

use crate::sampler::{log_softmax, top_n, Sampler, SamplingParams};
use crate::text::TextStream;
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

struct Sequence {
    prompt: Vec<u32>,
    cache: KvCache,
    sampler: Sampler,
    generated: Vec<u32>,
    stream: TextStream,
    logprobs: Option<Vec<TokenLogprob>>,
    prompt_logprobs: Option<Vec<TokenLogprob>>,
    prompt_text: String,
    finish: Option<FinishReason>,
    /// Logits predicting the next token.
    next_logits: Vec<f32>,
}

/// Runs a batch of tokenized prompts to completion. `on_text(i, s)` receives text of prompt `i`
/// as soon as it is final (never a partial character or a partial stop string).
pub fn generate(
    model: &dyn CausalLM,
    tokenizer: &Tokenizer,
    limits: Limits,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<Vec<Completion>, EngineError> {
    params.sampling.validate().map_err(EngineError::Invalid)?;
    if prompts.len() > limits.max_batch {
        return Err(EngineError::Invalid(format!(
            "batch of {} prompts is larger than the maximum batch size {}",
            prompts.len(),
            limits.max_batch
        )));
    }
    let vocab = model.config().vocab_size;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(EngineError::Invalid(format!(
                "prompt {i} is empty (no tokens)"
            )));
        }
        if p.len() > limits.context {
            return Err(EngineError::ContextLength {
                tokens: p.len(),
                context: limits.context,
            });
        }
        if let Some(&bad) = p.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::Invalid(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
    }
    let mut eos: Vec<u32> = tokenizer.eos_ids().to_vec();
    eos.extend(model.config().eos_token_ids.iter().copied());

    let mut seqs: Vec<Sequence> = prompts
        .iter()
        .map(|p| {
            let mut sampler = Sampler::new(params.sampling.clone());
            p.iter().for_each(|&t| sampler.observe(t));
            Sequence {
                prompt: p.clone(),
                cache: model.new_cache((p.len() + params.max_tokens).min(limits.context)),
                sampler,
                generated: Vec::new(),
                stream: TextStream::new(&params.stop),
                logprobs: params.logprobs.map(|_| Vec::new()),
                prompt_logprobs: None,
                prompt_text: if params.echo {
                    tokenizer.decode(p, true)
                } else {
                    String::new()
                },
                finish: None,
                next_logits: Vec::new(),
            }
        })
        .collect();

    prefill(model, tokenizer, limits, params, &mut seqs)?;

    // Decode: every unfinished sequence samples from its last logits, then all of them
    // advance one token in a single batched pass.
    let mut logits = Vec::new();
    let mut lp = Vec::new();
    loop {
        for (i, s) in seqs.iter_mut().enumerate() {
            if s.finish.is_some() {
                continue;
            }
            if params.max_tokens == 0 {
                s.finish = Some(FinishReason::Length);
                continue;
            }
            let tok = s.sampler.sample(&s.next_logits);
            let offset = s.prompt_text.chars().count() + s.stream.char_len();
            if let (Some(n), Some(out)) = (params.logprobs, s.logprobs.as_mut()) {
                log_softmax(&s.next_logits, &mut lp);
                out.push(token_logprob(
                    tokenizer,
                    tok,
                    Some(lp[tok as usize]),
                    &lp,
                    n,
                    offset,
                ));
            }
            s.generated.push(tok);
            s.sampler.observe(tok);
            let is_eos = !params.ignore_eos && eos.contains(&tok);
            // An EOS token ends the text without adding to it; a stop string cuts it.
            if is_eos || s.stream.push(&tokenizer.token_bytes(tok)) {
                s.finish = Some(FinishReason::Stop);
            } else if s.generated.len() >= params.max_tokens || s.cache.len() + 1 > limits.context {
                s.finish = Some(FinishReason::Length);
            }
            let ready = if s.finish.is_some() {
                s.stream.finish()
            } else {
                s.stream.take_ready()
            };
            if !ready.is_empty() {
                on_text(i, ready);
            }
        }
        let mut inputs: Vec<SeqInput<'_>> = Vec::new();
        let mut order = Vec::new();
        for (i, s) in seqs.iter_mut().enumerate() {
            if s.finish.is_none() {
                order.push(i);
                inputs.push(SeqInput {
                    tokens: std::slice::from_ref(s.generated.last().expect("sampled above")),
                    cache: &mut s.cache,
                    logits: Logits::Last,
                });
            }
        }
        if inputs.is_empty() {
            break;
        }
        logits.clear();
        model.forward(&mut inputs, &mut logits)?;
        drop(inputs);
        for (k, &i) in order.iter().enumerate() {
            let s = &mut seqs[i];
            s.next_logits.clear();
            s.next_logits
                .extend_from_slice(&logits[k * vocab..(k + 1) * vocab]);
        }
    }

    Ok(seqs
        .into_iter()
        .map(|s| Completion {
            text: s.stream.text().to_string(),
            prompt_token_ids: s.prompt,
            token_ids: s.generated,
            prompt_text: s.prompt_text,
            finish_reason: s.finish.unwrap_or(FinishReason::Length),
            prompt_logprobs: s.prompt_logprobs,
            logprobs: s.logprobs,
        })
        .collect())
}

/// Runs every prompt through the model in passes of at most `prefill_chunk` tokens, keeping
/// the logits of the last position (and of every position when echoing logprobs).
fn prefill(
    model: &dyn CausalLM,
    tokenizer: &Tokenizer,
    limits: Limits,
    params: &GenerateParams,
    seqs: &mut [Sequence],
) -> Result<(), EngineError> {
    let vocab = model.config().vocab_size;
    let want_all = params.echo && params.logprobs.is_some();
    let mut logits = Vec::new();
    let mut lp = Vec::new();
    for s in seqs.iter_mut() {
        let n = s.prompt.len();
        let mut plp = want_all.then(|| {
            let first = s.prompt[0];
            vec![token_logprob(tokenizer, first, None, &[], 0, 0)]
        });
        let mut done = 0;
        while done < n {
            let end = (done + limits.prefill_chunk.max(1)).min(n);
            logits.clear();
            let mut input = [SeqInput {
                tokens: &s.prompt[done..end],
                cache: &mut s.cache,
                logits: if want_all {
                    Logits::All
                } else if end == n {
                    Logits::Last
                } else {
                    Logits::None
                },
            }];
            model.forward(&mut input, &mut logits)?;
            if let Some(out) = plp.as_mut() {
                for (j, row) in logits.chunks_exact(vocab).enumerate() {
                    let pos = done + j;
                    if pos + 1 < n {
                        let tok = s.prompt[pos + 1];
                        log_softmax(row, &mut lp);
                        let offset = tokenizer.decode(&s.prompt[..pos + 1], true).chars().count();
                        out.push(token_logprob(
                            tokenizer,
                            tok,
                            Some(lp[tok as usize]),
                            &lp,
                            params.logprobs.unwrap_or(0),
                            offset,
                        ));
                    }
                }
            }
            if end == n {
                let last = logits.len() / vocab - 1;
                s.next_logits.clear();
                s.next_logits
                    .extend_from_slice(&logits[last * vocab..(last + 1) * vocab]);
            }
            done = end;
        }
        s.prompt_logprobs = plp;
        if s.prompt.len() >= limits.context && params.max_tokens > 0 {
            s.finish = Some(FinishReason::Length);
        }
    }
    Ok(())
}

fn token_logprob(
    tokenizer: &Tokenizer,
    id: u32,
    logprob: Option<f32>,
    lp: &[f32],
    n: usize,
    offset: usize,
) -> TokenLogprob {
    let text = |t: u32| String::from_utf8_lossy(&tokenizer.token_bytes(t)).into_owned();
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
