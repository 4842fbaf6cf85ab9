//! Text ↔ token ids.
//!
//! Invariant: ids equal the reference tokenizer's (SentencePiece, `tokenizers`, llama.cpp's
//! `llama-tokenize` for GGUF vocabularies), and BOS is added at most once.

use kiln_formats::TokenizerSource;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{0}")]
    Invalid(String),
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, TokenizerError>;

/// A loaded tokenizer with its special tokens.
pub struct Tokenizer {}

impl Tokenizer {
    pub fn from_source(_source: &TokenizerSource) -> Result<Tokenizer> {
        Err(TokenizerError::Unsupported("not yet".into()))
    }

    /// Encodes `text`; with `add_special` the model's BOS is prepended when the model adds one
    /// (never twice: a text that already starts with BOS keeps just that one).
    pub fn encode(&self, _text: &str, _add_special: bool) -> Result<Vec<u32>> {
        unimplemented!()
    }

    /// Decodes ids to text; with `skip_special` control tokens (BOS, EOS, ...) are left out.
    pub fn decode(&self, _ids: &[u32], _skip_special: bool) -> String {
        unimplemented!()
    }

    /// The raw bytes one token stands for (spaces restored, byte-fallback tokens as their byte).
    pub fn token_bytes(&self, _id: u32) -> Vec<u8> {
        unimplemented!()
    }

    pub fn vocab_size(&self) -> usize {
        0
    }
    pub fn bos_id(&self) -> Option<u32> {
        None
    }
    pub fn eos_ids(&self) -> &[u32] {
        &[]
    }
    /// Whether encoding with `add_special` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        false
    }
    pub fn is_special(&self, _id: u32) -> bool {
        false
    }
}
