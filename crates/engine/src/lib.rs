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
pub mod device;
pub mod embed;
pub mod generate;
pub mod meta;
pub mod openai;
pub mod perplexity;
pub mod quantize;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod spec;
pub mod text;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_formats::{LoadOptions, TokenizerSource};
use kiln_models::{BuildOptions, CausalLM};
use kiln_tokenizer::{llama2_chat_prompt, render_chat_template, ChatMessage, Tokenizer};

pub use constraint::{Constraint, ConstraintSpec, Grammars};
pub use embed::Pooling;
pub use generate::{
    Completion, FinishReason, GenerateParams, Limits, Session, Speculation, Timings, TokenLogprob,
};
pub use sampler::SamplingParams;
// The types of the load-time settings in [`EngineOptions`].
pub use device::GpuUse;
pub use kiln_formats::resident::Residency;
pub use kiln_gpu::context::{list_adapters, may_have_gpu, NO_GPU_NOTE};
pub use kiln_gpu::plan as gpu_plan;
pub use kiln_gpu::{AdapterSummary, DeviceChoice, Features as GpuFeatures, GpuLayers};
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
    /// The caller's cancel check answered true ([`generate::generate_until`]).
    #[error("generation cancelled")]
    Cancelled,
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
    /// A draft model for speculative decoding (llama.cpp's `--model-draft`), loaded with the
    /// same settings; its vocabulary must be the model's.
    pub draft_model: Option<PathBuf>,
    /// How much of the vocabulary the draft model's output layer computes ([`DraftVocab`]).
    pub draft_vocab: DraftVocab,
    /// Where the forward pass runs (`kiln_gpu::DeviceChoice`): the CPU by default; `Auto` takes
    /// a discrete GPU when there is one, `Gpu` any adapter (a software one included). Without
    /// an adapter, or under `Auto` for an architecture the GPU backend does not run, the model
    /// runs on the CPU and [`Engine::device`] says why.
    pub device: DeviceChoice,
    /// The GPU kernels' optional device features: all the adapter offers (subgroups,
    /// `shader-f16`) by default; [`GpuFeatures::PORTABLE`] keeps to the portable kernels.
    pub gpu_features: GpuFeatures,
    /// How many of the model's `n_layers + 1` layers (its blocks and the output layer) run on
    /// the GPU, as llama.cpp's `-ngl` counts and orders them (the output layer first, then
    /// blocks from the last; the rest and the embedding on the CPU). `All` (the default) is
    /// an error when the model does not fit, except under `device: Auto`, which then runs as
    /// many as fit (maybe none) and says why; `Fit` always does. `Count(0)` is the CPU.
    pub gpu_layers: GpuLayers,
    /// Caps the device memory the fit check plans for (default: what the adapter reports, on
    /// Vulkan). A testing aid for the fit logic, and a way to leave room for other programs.
    pub gpu_memory: Option<u64>,
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
            draft_model: None,
            draft_vocab: DraftVocab::default(),
            device: DeviceChoice::Cpu,
            gpu_features: GpuFeatures::ALL,
            gpu_layers: GpuLayers::All,
            gpu_memory: None,
        }
    }
}

/// How much of the vocabulary a draft model proposes from (FR-Spec, "frequency-ranked
/// speculative sampling", Zhao et al. 2025): its output layer computes the logits of the first
/// `N` token ids only. BPE vocabularies (Qwen2's, Llama 3's, Gemma's) are ordered by merge
/// rank, so a prefix of the ids is their frequent tokens, and the output matrix of a small
/// model with a large vocabulary is much of what it reads per token (qwen2.5-coder-0.5b: 139
/// of ~375 MiB). The model still verifies every token over its whole vocabulary: greedy output
/// is unchanged and sampled output still follows the model's distribution exactly; only
/// drafts of rarer tokens are lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DraftVocab {
    /// The whole vocabulary.
    Full,
    /// [`DraftVocab::AUTO_ROWS`] ids when the vocabulary has more than twice as many, else
    /// the whole vocabulary.
    #[default]
    Auto,
    /// The first `N` ids (rounded up to whole 4-row groups of a rearranged output matrix).
    Prefix(usize),
}

impl DraftVocab {
    /// The prefix [`DraftVocab::Auto`] takes of a large vocabulary.
    pub const AUTO_ROWS: usize = 32768;

    /// The output rows to keep for a vocabulary of `vocab` tokens (`None`: all of them);
    /// a prefix longer than the vocabulary is an error.
    pub fn rows(self, vocab: usize) -> Result<Option<usize>, EngineError> {
        match self {
            DraftVocab::Full => Ok(None),
            DraftVocab::Auto => Ok((vocab > 2 * Self::AUTO_ROWS).then_some(Self::AUTO_ROWS)),
            DraftVocab::Prefix(n) if n == 0 || n > vocab => Err(EngineError::Invalid(format!(
                "the draft vocabulary must be 1 to {vocab} tokens (the vocabulary), \
                 \"full\" or \"auto\", not {n}"
            ))),
            DraftVocab::Prefix(n) => Ok((n < vocab).then_some(n)),
        }
    }
}

impl std::str::FromStr for DraftVocab {
    type Err = String;

    /// `full` (or `0`), `auto`, or a number of token ids.
    fn from_str(s: &str) -> Result<DraftVocab, String> {
        match s.trim() {
            "full" | "0" => Ok(DraftVocab::Full),
            "auto" => Ok(DraftVocab::Auto),
            n => n.parse().map(DraftVocab::Prefix).map_err(|_| {
                format!("draft vocabulary {s:?}: expected \"full\", \"auto\" or a number of tokens")
            }),
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
    /// The draft model for speculative decoding, when one was loaded.
    pub draft: Option<Arc<dyn CausalLM>>,
    /// Where the model runs, and why when it was not where `EngineOptions::device` asked
    /// ("device: cpu (no GPU adapter or driver found)"): one line to show the user.
    pub device: String,
    /// What the model holds on its GPU (`None` on the CPU).
    pub gpu: Option<GpuUse>,
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
        device::check_cpu_layers(opts.gpu_layers, opts.device).map_err(EngineError::Invalid)?;
        // The device first: the CPU's row interleaving is wasted work for a GPU's upload
        // (unless some blocks may stay on the CPU).
        let placement = if opts.gpu_layers == GpuLayers::Count(0) {
            kiln_gpu::Placement {
                gpu: None,
                note: "device: cpu (-ngl 0)".into(),
            }
        } else {
            kiln_gpu::Gpu::open_with(opts.device, opts.gpu_features)
                .map_err(|e| EngineError::Invalid(e.to_string()))?
        };
        let may_split = opts.gpu_layers != GpuLayers::All || opts.device == DeviceChoice::Auto;
        let load = LoadOptions {
            residency: opts.residency,
            interleave: opts.interleave && (placement.gpu.is_none() || may_split),
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
        let mut gpu_use = None;
        let trained = loaded.config.max_position_embeddings;
        let positions = opts.context.unwrap_or(trained).clamp(1, trained.max(1));
        let model = match placement.gpu {
            Some(gpu) => match device::place(gpu, loaded, opts, &build, positions) {
                Ok(device::Placed::Gpu { model, note, usage }) => {
                    device = note;
                    gpu_use = Some(usage);
                    model
                }
                Ok(device::Placed::Cpu { loaded, why }) => {
                    device = format!("device: cpu ({why})");
                    kiln_models::build_with(*loaded, &build)?
                }
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
        if let Some(d) = &opts.draft_model {
            let loaded = kiln_formats::load_with(d, &load)?;
            let draft_tokenizer = Tokenizer::from_source(&loaded.tokenizer)?;
            let mut draft = kiln_models::build_with(loaded, &build)?;
            check_draft_vocab(
                engine.model.as_ref(),
                &engine.tokenizer,
                draft.as_ref(),
                &draft_tokenizer,
            )
            .map_err(|e| match e {
                EngineError::Invalid(m) => {
                    EngineError::Invalid(format!("draft model {}: {m}", d.display()))
                }
                e => e,
            })?;
            if let Some(rows) = opts.draft_vocab.rows(draft.config().vocab_size)? {
                draft.limit_logits(rows).map_err(|e| {
                    EngineError::Invalid(format!("draft model {}: {e}", d.display()))
                })?;
            }
            engine.draft = Some(Arc::from(draft));
        }
        engine.device = device;
        engine.gpu = gpu_use;
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
            draft: None,
            device: "device: cpu".into(),
            gpu: None,
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
        generate::generate_until(
            self.model.as_ref(),
            self.draft.clone(),
            &self.tokenizer,
            &self.grammars,
            self.limits,
            prompts,
            params,
            on_text,
            &mut || false,
        )
    }

    /// The unit-length embeddings of tokenized inputs (see [`embed::embed`]), each within the
    /// engine's context.
    pub fn embed(
        &self,
        inputs: &[Vec<u32>],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let cfg = self.model.config();
        for t in inputs {
            embed::validate_input(t, self.limits.context, cfg.vocab_size)?;
        }
        inputs
            .iter()
            .map(|t| {
                embed::embed(
                    self.model.as_ref(),
                    t,
                    pooling,
                    self.limits.context,
                    self.limits.prefill_chunk,
                )
            })
            .collect()
    }

    /// [`Engine::generate`] that asks `cancelled()` before every step and ends with
    /// [`EngineError::Cancelled`] once it answers true; see [`generate::generate_until`].
    pub fn generate_until(
        &self,
        prompts: &[Vec<u32>],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(usize, &str),
        cancelled: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<Completion>, EngineError> {
        generate::generate_until(
            self.model.as_ref(),
            self.draft.clone(),
            &self.tokenizer,
            &self.grammars,
            self.limits,
            prompts,
            params,
            on_text,
            cancelled,
        )
    }

    /// A [`Session`]: generation that keeps its KV caches between calls, so that a
    /// conversation's next turn computes only its new tokens (`kiln chat`). Pass it to
    /// [`Engine::session_generate`].
    pub fn session(&self) -> Result<Session, EngineError> {
        Session::new(
            self.model.as_ref(),
            self.draft.clone(),
            &self.tokenizer,
            &self.grammars,
            self.limits,
            1,
        )
    }

    /// [`Engine::generate_until`] through a [`Session`] made by [`Engine::session`]: the
    /// prompt reuses what the session's earlier calls computed of its prefix.
    pub fn session_generate(
        &self,
        session: &mut Session,
        prompts: &[Vec<u32>],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(usize, &str),
        cancelled: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<Completion>, EngineError> {
        session.generate_until(
            self.model.as_ref(),
            &self.tokenizer,
            self.limits,
            prompts,
            params,
            on_text,
            cancelled,
        )
    }

    /// A conversation as prompt ids: through the model's chat template (with the generation
    /// prompt), or, for a Llama model without one, in Meta's Llama 2 `chat_completion` format
    /// (`[INST]`, `<<SYS>>`, BOS and EOS per exchange).
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        match &self.chat_template {
            Some(t) => {
                let tk = &self.tokenizer;
                let text =
                    render_chat_template(t, messages, true, &tk.bos_token(), &tk.eos_token())?;
                Ok(tk.encode(&text, true)?)
            }
            None if self.model.config().arch == kiln_formats::Arch::Llama => {
                Ok(llama2_chat_prompt(&self.tokenizer, messages)?)
            }
            None => Err(EngineError::Invalid(
                "this model has no chat template".into(),
            )),
        }
    }

    /// Perplexity of `tokens` (the text tokenized with [`Engine::tokenize`]) in chunks of
    /// `ctx`, as llama-perplexity computes it: each chunk starts with BOS when the model adds
    /// one. `on_chunk(i, n_chunks, running_ppl)` is called after every chunk.
    pub fn perplexity(
        &self,
        tokens: &[u32],
        ctx: usize,
        on_chunk: impl FnMut(usize, usize, f64),
    ) -> Result<perplexity::Perplexity, EngineError> {
        self.perplexity_until(tokens, ctx, on_chunk, || false)
    }

    /// [`Engine::perplexity`] that asks `cancelled` before every chunk and stops with
    /// [`EngineError::Cancelled`] when it answers true.
    pub fn perplexity_until(
        &self,
        tokens: &[u32],
        ctx: usize,
        on_chunk: impl FnMut(usize, usize, f64),
        cancelled: impl FnMut() -> bool,
    ) -> Result<perplexity::Perplexity, EngineError> {
        let bos = if self.tokenizer.adds_bos() {
            self.tokenizer.bos_id()
        } else {
            None
        };
        perplexity::perplexity_until(self.model.as_ref(), tokens, ctx, bos, on_chunk, cancelled)
    }

    /// The tokens that end generation (the tokenizer's and the model config's).
    pub fn eos_ids(&self) -> Vec<u32> {
        sequence::eos_ids(&self.tokenizer, &self.model.config().eos_token_ids)
    }
}

/// Checks that a draft model can draft for `model`: the same number of logits, and tokenizers
/// that agree on every token's bytes and on BOS and EOS (as llama.cpp's speculative example
/// checks), so that a drafted id means the same text to both.
pub fn check_draft_vocab(
    model: &dyn CausalLM,
    tokenizer: &Tokenizer,
    draft: &dyn CausalLM,
    draft_tokenizer: &Tokenizer,
) -> Result<(), EngineError> {
    let (a, b) = (model.config().vocab_size, draft.config().vocab_size);
    if a != b {
        return Err(EngineError::Invalid(format!(
            "its vocabulary has {b} tokens, the model's {a}: a draft must share the model's vocabulary"
        )));
    }
    let (ta, tb) = (tokenizer.vocab_size(), draft_tokenizer.vocab_size());
    if ta != tb {
        return Err(EngineError::Invalid(format!(
            "its tokenizer has {tb} tokens, the model's {ta}: a draft must share the model's vocabulary"
        )));
    }
    if tokenizer.bos_id() != draft_tokenizer.bos_id()
        || tokenizer.eos_ids() != draft_tokenizer.eos_ids()
    {
        return Err(EngineError::Invalid(format!(
            "its BOS/EOS tokens ({:?}/{:?}) are not the model's ({:?}/{:?}): a draft must share the model's vocabulary",
            draft_tokenizer.bos_id(),
            draft_tokenizer.eos_ids(),
            tokenizer.bos_id(),
            tokenizer.eos_ids()
        )));
    }
    if let Some(id) =
        (0..ta as u32).find(|&i| tokenizer.token_bytes(i) != draft_tokenizer.token_bytes(i))
    {
        return Err(EngineError::Invalid(format!(
            "token {id} is {:?} in its tokenizer and {:?} in the model's: a draft must share the model's vocabulary",
            String::from_utf8_lossy(&draft_tokenizer.token_bytes(id)),
            String::from_utf8_lossy(&tokenizer.token_bytes(id)),
        )));
    }
    Ok(())
}
