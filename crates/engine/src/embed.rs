//! Embeddings: a text's final hidden states (after the model's final norm, before the output
//! matrix) pooled into one vector and scaled to unit length, as `/v1/embeddings` and
//! `kiln embed` return them.
//!
//! A causal model's hidden state at a position has seen only the tokens up to it, so `Last`
//! pooling (the last token's state, which has seen the whole text) suits models trained for it
//! (Qwen3-Embedding, e5-mistral), and `Mean` (every token's state averaged, BOS included, as
//! llama.cpp's mean pooling) suits the rest. A long input runs in chunks through one KV cache;
//! the result does not depend on the chunk size (a token's state never depends on how its
//! prompt was chunked).

use kiln_models::{CausalLM, Logits, SeqInput};

use crate::EngineError;

/// How the hidden states of an input's tokens become one vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pooling {
    /// The average over every token (BOS included).
    #[default]
    Mean,
    /// The last token's state.
    Last,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Last => "last",
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;

    fn from_str(s: &str) -> Result<Pooling, String> {
        match s.to_ascii_lowercase().as_str() {
            "mean" => Ok(Pooling::Mean),
            "last" => Ok(Pooling::Last),
            _ => Err(format!("unknown pooling {s:?} (mean or last)")),
        }
    }
}

/// Checks an input before any work: not empty, within `context` positions, ids inside the
/// vocabulary.
pub fn validate_input(
    tokens: &[u32],
    context: usize,
    vocab_size: usize,
) -> Result<(), EngineError> {
    if tokens.is_empty() {
        return Err(EngineError::Invalid("an input to embed is empty".into()));
    }
    if tokens.len() > context {
        return Err(EngineError::ContextLength {
            tokens: tokens.len(),
            context,
        });
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(EngineError::Invalid(format!(
            "token id {bad} is outside the vocabulary ({vocab_size})"
        )));
    }
    Ok(())
}

/// The unit-length embedding of one tokenized input, computed `chunk` tokens per forward pass.
/// A vector of zeros (possible only in theory) is returned as it is.
pub fn embed(
    model: &dyn CausalLM,
    tokens: &[u32],
    pooling: Pooling,
    context: usize,
    chunk: usize,
) -> Result<Vec<f32>, EngineError> {
    let cfg = model.config();
    validate_input(
        tokens,
        context.min(cfg.max_position_embeddings),
        cfg.vocab_size,
    )?;
    let d = cfg.hidden_size;
    let chunk = chunk.max(1);
    let mut cache = model.new_cache(tokens.len());
    let mut sum = vec![0f64; d];
    let mut hidden = Vec::new();
    let n_chunks = tokens.len().div_ceil(chunk);
    for (i, piece) in tokens.chunks(chunk).enumerate() {
        let logits = match pooling {
            Pooling::Mean => Logits::All,
            Pooling::Last if i + 1 == n_chunks => Logits::Last,
            Pooling::Last => Logits::None,
        };
        hidden.clear();
        model.forward_hidden(
            &mut [SeqInput {
                tokens: piece,
                cache: &mut cache,
                logits,
            }],
            &mut hidden,
        )?;
        for row in hidden.chunks_exact(d) {
            sum.iter_mut()
                .zip(row)
                .for_each(|(s, &h)| *s += f64::from(h));
        }
    }
    if pooling == Pooling::Mean {
        let n = tokens.len() as f64;
        sum.iter_mut().for_each(|s| *s /= n);
    }
    let norm = sum.iter().map(|s| s * s).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 1.0 };
    Ok(sum.iter().map(|s| (s * scale) as f32).collect())
}

/// The cosine similarity of two vectors (the dot product of unit-length embeddings).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na * nb)) as f32
    }
}
