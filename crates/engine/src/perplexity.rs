//! Perplexity computed the way llama.cpp's `llama-perplexity` does, so the numbers compare.
//!
//! The text is tokenized once (with BOS when the model adds one) and cut into chunks of `ctx`
//! tokens; each chunk starts with BOS (replacing its first token) when the model adds one, is
//! evaluated from an empty cache, and only its second half is scored: the log-probability of
//! token j+1 given the tokens up to j, for j in `ctx/2 .. ctx-1`.

use kiln_models::{CausalLM, Logits, SeqInput};

use crate::sampler::log_softmax;
use crate::EngineError;

#[derive(Clone, Debug)]
pub struct Perplexity {
    /// Running estimate after each chunk.
    pub per_chunk: Vec<f64>,
    pub ppl: f64,
    /// Standard error of the estimate (as llama.cpp reports it).
    pub stderr: f64,
    pub tokens_scored: usize,
}

pub fn perplexity(
    model: &dyn CausalLM,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    on_chunk: impl FnMut(usize, usize, f64),
) -> Result<Perplexity, EngineError> {
    perplexity_until(model, tokens, ctx, bos, on_chunk, || false)
}

/// [`perplexity`] that asks `cancelled` before every chunk and stops with
/// [`EngineError::Cancelled`] when it answers true (Ctrl-C in the Python package).
pub fn perplexity_until(
    model: &dyn CausalLM,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    mut on_chunk: impl FnMut(usize, usize, f64),
    mut cancelled: impl FnMut() -> bool,
) -> Result<Perplexity, EngineError> {
    if ctx < 4 {
        return Err(EngineError::Invalid(format!(
            "context {ctx} is too small for perplexity"
        )));
    }
    let n_chunks = tokens.len() / ctx;
    if n_chunks == 0 || tokens.len() < 2 * ctx {
        return Err(EngineError::Invalid(format!(
            "need at least {} tokens for context {ctx}, the text has {}",
            2 * ctx,
            tokens.len()
        )));
    }
    let vocab = model.config().vocab_size;
    let first = ctx / 2;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut per_chunk = Vec::with_capacity(n_chunks);
    let mut chunk = Vec::with_capacity(ctx);
    let mut logits = Vec::new();
    let mut lp = Vec::new();
    let mut cache = model.new_cache(ctx);
    for c in 0..n_chunks {
        if cancelled() {
            return Err(EngineError::Cancelled);
        }
        chunk.clear();
        chunk.extend_from_slice(&tokens[c * ctx..(c + 1) * ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        cache.truncate(0);
        logits.clear();
        let mut batch = [SeqInput {
            tokens: &chunk,
            cache: &mut cache,
            logits: Logits::All,
        }];
        model.forward(&mut batch, &mut logits)?;
        for j in first..ctx - 1 {
            log_softmax(&logits[j * vocab..(j + 1) * vocab], &mut lp);
            let v = -(lp[chunk[j + 1] as usize] as f64);
            nll += v;
            nll2 += v * v;
            count += 1;
        }
        let ppl = (nll / count as f64).exp();
        per_chunk.push(ppl);
        on_chunk(c, n_chunks, ppl);
    }
    let mean = nll / count as f64;
    let var = (nll2 / count as f64 - mean * mean).max(0.0);
    let ppl = mean.exp();
    let stderr = if count > 1 {
        ppl * (var / (count as f64 - 1.0)).sqrt()
    } else {
        0.0
    };
    Ok(Perplexity {
        per_chunk,
        ppl,
        stderr,
        tokens_scored: count,
    })
}
