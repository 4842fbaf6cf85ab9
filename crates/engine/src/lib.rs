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
pub mod convert;
pub mod generate;
pub mod openai;
pub mod perplexity;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod text;

use std::path::{Path, PathBuf};

use kiln_formats::{LoadOptions, TokenizerSource};
use kiln_models::{BuildOptions, CausalLM};
use kiln_tokenizer::Tokenizer;

pub use generate::{Completion, FinishReason, GenerateParams, Limits, TokenLogprob};
pub use sampler::SamplingParams;
// The types of the load-time settings in [`EngineOptions`].
pub use kiln_formats::resident::Residency;
pub use kiln_gpu::context::list_adapters;
pub use kiln_gpu::{AdapterSummary, DeviceChoice};
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
    /// Where the forward pass runs (`kiln_gpu::DeviceChoice`): the CPU by default; `Auto` takes
    /// a discrete GPU when there is one, `Gpu` any adapter (a software one included). Without
    /// an adapter, or under `Auto` for an architecture the GPU backend does not run, the model
    /// runs on the CPU and [`Engine::device`] says why.
    pub device: DeviceChoice,
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
            device: DeviceChoice::Cpu,
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
    /// Where the model runs, and why when it was not where `EngineOptions::device` asked
    /// ("device: cpu (no GPU adapter or driver found)"): one line to show the user.
    pub device: String,
}

impl Engine {
    /// Loads a GGUF file, a Hugging Face directory or a Meta checkpoint directory.
    pub fn load(path: &Path, opts: &EngineOptions) -> Result<Engine, EngineError> {
        // Before loading: the level decides which layout the loader rearranges weights into.
        if let Some(isa) = opts.isa {
            Isa::use_in_process(isa).map_err(|e| EngineError::Invalid(e.to_string()))?;
        }
        // The device first: the CPU's row interleaving is wasted work for a GPU's upload.
        let placement =
            kiln_gpu::Gpu::open(opts.device).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let load = LoadOptions {
            residency: opts.residency,
            interleave: opts.interleave && placement.gpu.is_none(),
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
        let mut device = placement.note;
        let model = match placement.gpu {
            Some(gpu) => match kiln_gpu::GpuLlama::new(gpu, loaded, opts.kv_type) {
                Ok(m) => Box::new(m) as Box<dyn CausalLM>,
                Err(e @ kiln_gpu::GpuError::Unsupported(_))
                    if opts.device == DeviceChoice::Auto =>
                {
                    // `auto` never fails for want of GPU support: the weights are loaded again
                    // (the GPU build consumed them) and run on the CPU.
                    device = format!("device: cpu ({e})");
                    let loaded = kiln_formats::load_with(path, &load)?;
                    kiln_models::build_with(loaded, &build)?
                }
                Err(e) => return Err(EngineError::Invalid(e.to_string())),
            },
            None => kiln_models::build_with(loaded, &build)?,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut engine = Engine::new(model, tokenizer, chat_template, opts, name);
        engine.device = device;
        Ok(engine)
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
            device: "device: cpu".into(),
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
        generate::generate(
            self.model.as_ref(),
            &self.tokenizer,
            self.limits,
            prompts,
            params,
            on_text,
        )
    }
}
