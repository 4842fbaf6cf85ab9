//! kiln's generation engine: load a model, tokenize, generate, score.
//!
//! Invariant: a request's result does not depend on its batch-mates (own cache, own sampler,
//! own random stream; kernels compute rows independently).
//!
//! ```no_run
//! use kiln_engine::{Engine, EngineOptions, GenerateParams};
//! let engine = Engine::load("model.gguf".as_ref(), &EngineOptions::default())?;
//! let prompts = vec![engine.tokenize("Q: What is the largest animal?\nA:")?];
//! let out = engine.generate(&prompts, &GenerateParams::default(), &mut |_, text| print!("{text}"))?;
//! println!("\n{:?}", out[0].finish_reason);
//! # Ok::<(), kiln_engine::EngineError>(())
//! ```

pub mod batch;
pub mod constraint;
pub mod convert;
pub mod generate;
pub mod openai;
pub mod perplexity;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod text;
pub mod tools;

use std::path::{Path, PathBuf};

use kiln_formats::{LoadOptions, TokenizerSource};
use kiln_models::{BuildOptions, CausalLM};
use kiln_tokenizer::Tokenizer;

pub use constraint::{Constraint, ConstraintSpec, Grammars};
pub use generate::{Completion, FinishReason, GenerateParams, Limits, TokenLogprob};
pub use sampler::SamplingParams;
// The types of the load-time settings in [`EngineOptions`].
pub use kiln_formats::resident::Residency;
pub use kiln_kernels::Isa;
pub use kiln_models::{KvType, Numerics};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Format(#[from] kiln_formats::FormatError),
    #[error(transparent)]
    Tokenizer(#[from] kiln_tokenizer::TokenizerError),
    #[error(transparent)]
    Model(#[from] kiln_models::ModelError),
    #[error("prompt is {tokens} tokens long, but the context is {context} tokens")]
    ContextLength { tokens: usize, context: usize },
    #[error("{0}")]
    Invalid(String),
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Kernel threads (0 = one per core).
    pub threads: usize,
    /// Positions per sequence; `None` = the model's trained context.
    pub context: Option<usize>,
    pub max_batch: usize,
    /// A tokenizer to use instead of the model's own (`tokenizer.json` or `tokenizer.model`),
    /// like the `--tokenizer-path` of Meta's reference scripts.
    pub tokenizer_path: Option<PathBuf>,
    /// The kernels' instruction-set level; `None`: the best this CPU runs. The choice is
    /// process-wide ([`Isa::use_in_process`]): it also applies to engines loaded earlier.
    pub isa: Option<Isa>,
    /// The arithmetic regime; `None`: from the weights ([`Numerics::for_tensors`]).
    pub numerics: Option<Numerics>,
    /// The KV cache element type; `None`: the regime's default (f16 for quantised weights).
    pub kv_type: Option<KvType>,
    /// Mapped or read in; `None`: read in when the file fits in half the available memory.
    pub residency: Option<Residency>,
    /// Rearrange quantised matrices into the kernels' preferred layout (off: the file's order).
    pub interleave: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: 0,
            context: None,
            max_batch: 64,
            tokenizer_path: None,
            isa: None,
            numerics: None,
            kv_type: None,
            residency: None,
            interleave: true,
        }
    }
}

/// A model with its tokenizer, ready to generate.
pub struct Engine {
    pub model: Box<dyn CausalLM>,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub limits: Limits,
    /// What the model was loaded from, for display.
    pub name: String,
    /// Compiles constraints for this model's vocabulary (built on first use, then kept).
    pub grammars: std::sync::Arc<Grammars>,
}

impl Engine {
    /// Loads a GGUF file, a Hugging Face directory or a Meta checkpoint directory.
    pub fn load(path: &Path, opts: &EngineOptions) -> Result<Engine, EngineError> {
        // Before loading: the level decides which layout the loader rearranges weights into.
        if let Some(isa) = opts.isa {
            Isa::use_in_process(isa).map_err(|e| EngineError::Invalid(e.to_string()))?;
        }
        let load = LoadOptions {
            residency: opts.residency,
            interleave: opts.interleave,
        };
        let mut loaded = kiln_formats::load_with(path, &load)?;
        if let Some(t) = &opts.tokenizer_path {
            if !t.is_file() {
                return Err(EngineError::Invalid(format!(
                    "tokenizer {}: no such file",
                    t.display()
                )));
            }
            loaded.tokenizer = if t.extension().is_some_and(|e| e == "json") {
                TokenizerSource::HfJson(t.clone())
            } else {
                TokenizerSource::TokenizerModel(t.clone())
            };
        }
        let tokenizer = Tokenizer::from_source(&loaded.tokenizer)?;
        let chat_template = loaded.chat_template.clone();
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            opts.threads
        };
        let build = BuildOptions {
            threads,
            numerics: opts.numerics,
            kv_type: opts.kv_type,
        };
        let model = kiln_models::build_with(loaded, &build)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Engine::new(model, tokenizer, chat_template, opts, name))
    }

    pub fn new(
        model: Box<dyn CausalLM>,
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        opts: &EngineOptions,
        name: String,
    ) -> Engine {
        let trained = model.config().max_position_embeddings;
        let limits = Limits {
            context: opts.context.unwrap_or(trained).min(trained).max(1),
            max_batch: opts.max_batch.max(1),
            prefill_chunk: 512,
        };
        Engine {
            model,
            tokenizer,
            chat_template,
            limits,
            name,
            grammars: std::sync::Arc::new(Grammars::new()),
        }
    }

    /// Tokenizes a prompt the way the model expects it (BOS added when the model uses one).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenizer.encode(text, true)?)
    }

    /// Generates for a batch of tokenized prompts; see [`generate::generate`].
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<Vec<Completion>, EngineError> {
        generate::generate_with(
            self.model.as_ref(),
            &self.tokenizer,
            &self.grammars,
            self.limits,
            prompts,
            params,
            on_text,
        )
    }
}
