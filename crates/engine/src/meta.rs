//! The semantics of Meta's reference `llama.Llama` (`llama/generation.py` of the Llama 2 and
//! Code Llama repositories) on top of [`crate::generate`]: what `generate`, `text_completion`
//! and `chat_completion` return. The Python package's `kiln.Llama` is a shell over these.
//!
//! Meta's `generate(prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo)` returns
//! per prompt the generated tokens (the prompt's too with `echo`), cut before the first
//! end-of-sequence token and after `max_gen_len` new tokens, with generation also ending at
//! `max_seq_len` positions; with `logprobs`, one logprob per returned token: the log-softmax of
//! the raw logits (before temperature) at the token, and 0.0 for the first prompt token (its
//! slot in Meta's tensor is never written).

use kiln_tokenizer::{llama2_chat_prompt_unchecked, llama2_special_tag, ChatMessage};

use crate::generate::{Completion, GenerateParams};
use crate::sampler::SamplingParams;
use crate::{Engine, EngineError};

/// What `chat_completion` answers instead of a reply to a dialog that contains one of the
/// special tags (`[INST]`, `[/INST]`, `<<SYS>>`, `<</SYS>>`); Meta's `UNSAFE_ERROR`.
pub const UNSAFE_ERROR: &str = "Error: special tags are not allowed as part of the prompt.";

/// The arguments of Meta's `generate` (beyond the prompts) plus the seed of kiln's random
/// stream (Meta seeds torch once in `Llama.build`).
#[derive(Clone, Debug)]
pub struct MetaParams {
    pub max_gen_len: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub logprobs: bool,
    pub echo: bool,
    pub seed: u64,
}

/// Meta's result: per prompt its tokens, and with `logprobs` one logprob per token.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaOutput {
    pub tokens: Vec<Vec<u32>>,
    pub logprobs: Option<Vec<Vec<f32>>>,
}

impl MetaParams {
    /// The engine's parameters for these: sampling by temperature and top-p only, logprobs of
    /// the chosen tokens, echo.
    pub fn generate_params(&self) -> GenerateParams {
        GenerateParams {
            max_tokens: self.max_gen_len,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
                ..Default::default()
            },
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: self.logprobs.then_some(0),
            echo: self.echo,
            ..Default::default()
        }
    }
}

/// Meta's `generate`: runs the prompts as one batch (at most the engine's `max_batch`, each
/// at most its context, Meta's `max_batch_size` and `max_seq_len`) and shapes the result as
/// Meta does. `cancelled` is asked before every step.
pub fn generate(
    engine: &Engine,
    prompt_tokens: &[Vec<u32>],
    params: &MetaParams,
    cancelled: &mut dyn FnMut() -> bool,
) -> Result<MetaOutput, EngineError> {
    let done = engine.generate_until(
        prompt_tokens,
        &params.generate_params(),
        &mut |_, _| {},
        cancelled,
    )?;
    Ok(shape(
        &done,
        &engine.eos_ids(),
        params.logprobs,
        params.echo,
    ))
}

/// Meta's output shape from engine completions: with `echo` the prompt's tokens first; cut
/// before the first end-of-sequence token (in the prompt too, as Meta cuts the whole row).
pub fn shape(done: &[Completion], eos: &[u32], logprobs: bool, echo: bool) -> MetaOutput {
    let mut tokens = Vec::with_capacity(done.len());
    let mut lps = Vec::with_capacity(done.len());
    for c in done {
        let mut t: Vec<u32> = Vec::new();
        let mut l: Vec<f32> = Vec::new();
        if echo {
            t.extend(&c.prompt_token_ids);
            if logprobs {
                match &c.prompt_logprobs {
                    Some(p) => l.extend(p.iter().map(|x| x.logprob.unwrap_or(0.0))),
                    None => l.extend(std::iter::repeat_n(0.0, c.prompt_token_ids.len())),
                }
            }
        }
        t.extend(&c.token_ids);
        if logprobs {
            l.extend(
                c.logprobs
                    .iter()
                    .flatten()
                    .map(|x| x.logprob.unwrap_or(0.0)),
            );
        }
        if let Some(cut) = t.iter().position(|id| eos.contains(id)) {
            t.truncate(cut);
            l.truncate(cut);
        }
        tokens.push(t);
        lps.push(l);
    }
    MetaOutput {
        tokens,
        logprobs: logprobs.then_some(lps),
    }
}

/// One dialog of `chat_completion` as prompt ids in Meta's Llama 2 format, and whether it is
/// "unsafe" (holds a special tag: Meta still generates, but answers [`UNSAFE_ERROR`]).
/// Role errors are errors, as Meta's assertions are.
pub fn chat_dialog(
    engine: &Engine,
    dialog: &[ChatMessage],
) -> Result<(Vec<u32>, bool), EngineError> {
    let unsafe_request = llama2_special_tag(dialog).is_some();
    let ids = llama2_chat_prompt_unchecked(&engine.tokenizer, dialog)?;
    Ok((ids, unsafe_request))
}

/// Meta's `model_parallel_size` check: it must equal the number of `consolidated.*.pth` shards
/// of a Meta checkpoint directory (kiln merges them in one process; the argument is only
/// checked). For other models only 1 is accepted.
pub fn check_model_parallel_size(path: &std::path::Path, n: usize) -> Result<(), EngineError> {
    let shards = if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| EngineError::Invalid(format!("{}: {e}", path.display())))?
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("consolidated.") && name.ends_with(".pth")
            })
            .count()
    } else {
        0
    };
    let expected = shards.max(1);
    if n != expected {
        return Err(EngineError::Invalid(format!(
            "model_parallel_size {n} does not match the checkpoint's {expected} shard(s) in {}",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{FinishReason, TokenLogprob};

    fn lp(id: u32, v: Option<f32>) -> TokenLogprob {
        TokenLogprob {
            id,
            text: String::new(),
            logprob: v,
            top: Vec::new(),
            text_offset: 0,
        }
    }

    fn completion() -> Completion {
        Completion {
            prompt_token_ids: vec![1, 5, 6],
            token_ids: vec![7, 8, 2],
            prompt_text: String::new(),
            text: String::new(),
            finish_reason: FinishReason::Stop,
            prompt_logprobs: Some(vec![lp(1, None), lp(5, Some(-1.0)), lp(6, Some(-2.0))]),
            logprobs: Some(vec![
                lp(7, Some(-3.0)),
                lp(8, Some(-4.0)),
                lp(2, Some(-5.0)),
            ]),
            timings: Default::default(),
        }
    }

    #[test]
    fn echo_and_logprobs_as_meta() {
        let out = shape(&[completion()], &[2], true, true);
        assert_eq!(out.tokens, vec![vec![1, 5, 6, 7, 8]]);
        assert_eq!(out.logprobs, Some(vec![vec![0.0, -1.0, -2.0, -3.0, -4.0]]));
    }

    #[test]
    fn without_echo_the_generated_tokens_cut_at_eos() {
        let out = shape(&[completion()], &[2], false, false);
        assert_eq!(out.tokens, vec![vec![7, 8]]);
        assert_eq!(out.logprobs, None);
    }

    #[test]
    fn an_eos_in_the_echoed_prompt_cuts_there() {
        let mut c = completion();
        c.prompt_token_ids = vec![1, 2, 6];
        let out = shape(&[c], &[2], true, true);
        assert_eq!(out.tokens, vec![vec![1]]);
        assert_eq!(out.logprobs, Some(vec![vec![0.0]]));
    }
}
