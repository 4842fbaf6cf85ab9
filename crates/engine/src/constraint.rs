//! Structured output: a [`Constraint`] (any JSON object, a JSON schema, a Lark grammar or a
//! regular expression) limits which tokens a sequence may sample. The grammars are compiled
//! and run by the `llguidance` crate over a token trie (`toktrie`) built from the model's own
//! vocabulary; kiln applies the mask llguidance computes to the logits in the one sampling
//! path ([`crate::sampler::Sampler::sample_masked`]), so batching, streaming, logprobs and
//! seeds work as without a constraint.
//!
//! The mask for a sequence's next token is computed while the batch's forward pass runs
//! ([`crate::batch::Batch::step`]): the token it depends on was sampled in the previous step.
//!
//! A token allowed by the mask is any token whose bytes continue a valid prefix of the
//! grammar's language, so a constraint that the unconstrained output already satisfies does
//! not change greedy output. End-of-sequence tokens are allowed exactly when the grammar can
//! end, and only they once it cannot continue (finish reason `stop`).

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};

use crate::sequence::Vocab;
use crate::EngineError;

/// What a constraint asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstraintSpec {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this JSON schema.
    JsonSchema(serde_json::Value),
    /// A grammar in llguidance's Lark syntax (`start: ...`).
    Lark(String),
    /// Text matching this regular expression (Rust `regex` syntax), whole.
    Regex(String),
}

impl ConstraintSpec {
    /// What the constraint is, for messages (`JSON schema`, `Lark grammar`, ...).
    pub fn what(&self) -> &'static str {
        match self {
            ConstraintSpec::JsonObject => "JSON object",
            ConstraintSpec::JsonSchema(_) => "JSON schema",
            ConstraintSpec::Lark(_) => "Lark grammar",
            ConstraintSpec::Regex(_) => "regular expression",
        }
    }

    fn grammar(&self) -> TopLevelGrammar {
        match self {
            ConstraintSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(serde_json::json!({"type": "object"}))
            }
            ConstraintSpec::JsonSchema(s) => TopLevelGrammar::from_json_schema(s.clone()),
            ConstraintSpec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            ConstraintSpec::Regex(r) => TopLevelGrammar::from_regex(r),
        }
    }
}

/// A constraint on a request's output: part of [`crate::GenerateParams`]. Compiled once per
/// request ([`Grammars::compile`]; the batch compiles one that is not), then each sequence
/// runs its own copy of the compiled parser.
pub struct Constraint {
    spec: ConstraintSpec,
    /// Boxed: a parser is large, and requests travel through channels.
    compiled: Option<Box<Matcher>>,
}

impl Constraint {
    pub fn new(spec: ConstraintSpec) -> Constraint {
        Constraint {
            spec,
            compiled: None,
        }
    }

    pub fn spec(&self) -> &ConstraintSpec {
        &self.spec
    }

    pub fn is_compiled(&self) -> bool {
        self.compiled.is_some()
    }
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Constraint {
            spec: self.spec.clone(),
            compiled: self.compiled.as_ref().map(|m| Box::new(m.deep_clone())),
        }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("spec", &self.spec)
            .field("compiled", &self.compiled.is_some())
            .finish()
    }
}

impl PartialEq for Constraint {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

/// The grammar compiler of one model and vocabulary: llguidance's `ParserFactory` over a
/// token trie of the vocabulary, built on first use (it takes a moment for a large vocabulary)
/// and shared by every request after that.
#[derive(Default)]
pub struct Grammars {
    factory: OnceLock<Result<Factory, String>>,
}

struct Factory {
    factory: ParserFactory,
    /// The end-of-sequence token the trie knows; the others of the EOS set follow it.
    trie_eos: u32,
    eos: Arc<[u32]>,
}

/// The bytes the trie gives token `id`: its text, or for a special token (control tokens,
/// end-of-sequence tokens) llguidance's marker byte 0xFF before its name, so that no text
/// lexeme matches it; a token without bytes gets a name of its own (`\xFF[id]`).
fn trie_word(vocab: &dyn Vocab, id: u32, eos: &[u32]) -> Vec<u8> {
    let bytes = vocab.token_bytes(id);
    if bytes.is_empty() {
        let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        w.extend_from_slice(format!("[{id}]").as_bytes());
        return w;
    }
    if vocab.is_special(id) || eos.contains(&id) {
        let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        w.extend_from_slice(&bytes);
        return w;
    }
    bytes
}

impl Grammars {
    pub fn new() -> Grammars {
        Grammars::default()
    }

    /// The factory for `vocab` (logits of `vocab_size` entries; `eos` ends generation).
    fn factory(
        &self,
        vocab: &dyn Vocab,
        vocab_size: usize,
        eos: &[u32],
    ) -> Result<&Factory, EngineError> {
        self.factory
            .get_or_init(|| {
                let words: Vec<Vec<u8>> = (0..vocab_size as u32)
                    .map(|id| trie_word(vocab, id, eos))
                    .collect();
                let trie_eos = eos.first().copied().unwrap_or(0);
                let mut info = TokRxInfo::new(vocab_size as u32, trie_eos);
                info.tok_bos = vocab.bos_id().filter(|&b| (b as usize) < vocab_size);
                let trie = TokTrie::from(&info, &words);
                let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
                let mut factory = ParserFactory::new_simple(&env)
                    .map_err(|e| format!("cannot set up the grammar engine: {e}"))?;
                // Errors are returned, not printed.
                factory.quiet();
                Ok(Factory {
                    factory,
                    trie_eos,
                    eos: eos.iter().copied().collect(),
                })
            })
            .as_ref()
            .map_err(|e| EngineError::Invalid(e.clone()))
    }

    /// Compiles `c` (unless it is already): a grammar llguidance cannot compile is an
    /// `EngineError::Invalid` whose message names the problem (an unsupported schema keyword,
    /// a Lark syntax error, ...).
    pub fn compile(
        &self,
        vocab: &dyn Vocab,
        vocab_size: usize,
        eos: &[u32],
        c: &mut Constraint,
    ) -> Result<(), EngineError> {
        if c.compiled.is_some() {
            return Ok(());
        }
        let f = self.factory(vocab, vocab_size, eos)?;
        let parser = f.factory.create_parser(c.spec.grammar()).map_err(|e| {
            EngineError::Invalid(format!(
                "invalid {}: {}",
                c.spec.what(),
                first_lines(&format!("{e:#}"))
            ))
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::Invalid(format!(
                "invalid {}: {e}",
                c.spec.what()
            )));
        }
        c.compiled = Some(Box::new(matcher));
        Ok(())
    }

    /// A sequence's running copy of a compiled constraint.
    pub(crate) fn start(
        &self,
        vocab: &dyn Vocab,
        vocab_size: usize,
        eos: &[u32],
        c: &Constraint,
    ) -> Result<Active, EngineError> {
        let f = self.factory(vocab, vocab_size, eos)?;
        let matcher = match &c.compiled {
            Some(m) => m.deep_clone(),
            None => {
                let mut c = c.clone();
                self.compile(vocab, vocab_size, eos, &mut c)?;
                *c.compiled.expect("compiled above")
            }
        };
        Ok(Active {
            matcher,
            mask: None,
            trie_eos: f.trie_eos,
            eos: f.eos.clone(),
        })
    }
}

/// An llguidance error's message, at most its first few lines.
fn first_lines(s: &str) -> String {
    let lines: Vec<&str> = s.lines().take(4).collect();
    lines.join(" ")
}

/// One sequence's constraint while it generates: the parser and the mask for its next token.
pub(crate) struct Active {
    matcher: Matcher,
    mask: Option<Result<SimpleVob, String>>,
    trie_eos: u32,
    eos: Arc<[u32]>,
}

impl Active {
    /// Computes the mask for the next token, unless it is known already.
    pub(crate) fn prepare(&mut self) {
        if self.mask.is_some() {
            return;
        }
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map(|mut m| {
                if m.is_allowed(self.trie_eos) {
                    for &e in self.eos.iter() {
                        if (e as usize) < m.len() {
                            m.allow_token(e);
                        }
                    }
                }
                m
            })
            .map_err(|e| e.to_string());
        self.mask = Some(mask);
    }

    /// The tokens allowed next (computed if needed), or why there are none.
    pub(crate) fn mask(&mut self) -> Result<&SimpleVob, String> {
        self.prepare();
        match self.mask.as_ref().expect("prepared") {
            Ok(m) => Ok(m),
            Err(e) => Err(e.clone()),
        }
    }

    /// Advances past the sampled token. Returns whether the grammar is complete and cannot
    /// continue (only end-of-sequence tokens are allowed next).
    pub(crate) fn commit(&mut self, token: u32) -> Result<bool, String> {
        self.mask = None;
        if self.eos.contains(&token) {
            return Ok(true);
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| e.to_string())?;
        Ok(self.matcher.is_stopped())
    }
}
