//! The `-m/--model` argument shared by every subcommand, and loading with a progress display.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::builder::{BoolishValueParser, FalseyValueParser};
use clap::{ArgAction, Args};
use kiln_engine::{
    DeviceChoice, DraftVocab, Engine, EngineOptions, GpuFeatures, GpuLayers, Isa, KvType, Numerics,
    Residency, Speculation,
};
use kiln_pull::Progress;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A GGUF file, a Hugging Face directory (config.json + safetensors), a Meta checkpoint
    /// directory (params.json + consolidated.*.pth), or a known model name. Default: gemma3-270m.
    #[arg(short = 'm', long = "model", alias = "ckpt-dir")]
    pub model: Option<String>,
    /// Use this tokenizer.json or tokenizer.model instead of the model's own.
    #[arg(long, value_name = "FILE")]
    pub tokenizer_path: Option<PathBuf>,
    /// Kernel threads (default: one per core).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub engine: EngineFlags,
}

/// Load-time settings for comparisons and experiments; each also reads a `KILN_*` variable
/// (the CLI is the only place kiln reads the environment).
#[derive(Args, Clone, Debug)]
pub struct EngineFlags {
    /// Kernel instruction-set level: scalar, avx2, avx512 (AVX-512 F/BW/VL + VNNI), neon or
    /// neon+dotprod (default: the best this CPU runs).
    #[arg(long, env = "KILN_ISA", value_name = "LEVEL")]
    pub isa: Option<Isa>,
    /// KV cache type: f16 or f32 (default: f16 for quantised weights, as llama.cpp; else f32).
    #[arg(long, env = "KILN_CACHE_TYPE", value_name = "TYPE")]
    pub cache_type: Option<KvType>,
    /// Arithmetic to reproduce: exact (transformers) or ggml (llama.cpp's f16 roundings).
    /// Default: ggml for quantised weights, else exact.
    #[arg(long, env = "KILN_NUMERICS", value_name = "NUMERICS")]
    pub numerics: Option<Numerics>,
    /// Memory-map the weights even when they fit in memory (default: read a GGUF file that
    /// fits in half the available memory into huge-page-backed memory).
    #[arg(long, env = "KILN_MMAP", value_parser = FalseyValueParser::new())]
    pub mmap: bool,
    /// Keep quantised matrices in the file's row order instead of the kernels' interleaved one
    /// (results are identical; for speed comparisons). KILN_INTERLEAVE=0 does the same.
    #[arg(
        long = "no-interleave",
        env = "KILN_INTERLEAVE",
        action = ArgAction::SetFalse,
        value_parser = BoolishValueParser::new(),
        hide_env = true
    )]
    pub interleave: bool,
    /// Where the model runs: auto (a discrete GPU if there is one, else the CPU), cpu, gpu
    /// (the best adapter, a software Vulkan driver such as lavapipe included) or gpu:N. The GPU
    /// backend (wgpu: Vulkan, Metal, DX12) runs every architecture kiln runs; without an
    /// adapter, kiln says so in one line and runs on the CPU. `auto` loads no GPU driver on a
    /// machine without GPU hardware (Linux: no PCI display controller or GPU device node) and
    /// then says nothing.
    #[arg(
        long,
        env = "KILN_DEVICE",
        value_name = "DEVICE",
        default_value = "auto"
    )]
    pub device: DeviceChoice,
    /// Keep the GPU kernels to their portable variants on any adapter: no subgroup reductions,
    /// no f16 weight tiles (default: those the adapter offers; the device line names them).
    #[arg(long, env = "KILN_GPU_PORTABLE", value_parser = FalseyValueParser::new())]
    pub gpu_portable: bool,
    /// Layers to run on the GPU (llama.cpp's -ngl): N of the model's n_layers + 1 (its blocks
    /// and the output layer, counted and ordered as llama.cpp does: the output layer first,
    /// then blocks from the last; the rest and the token embedding run on the CPU), `auto` (as
    /// many as fit in the device's memory) or `all`. Default: all with --device gpu (an error
    /// naming the -ngl that fits when they do not); as many as fit with --device auto.
    #[arg(
        long = "gpu-layers",
        alias = "n-gpu-layers",
        env = "KILN_GPU_LAYERS",
        value_name = "N"
    )]
    pub gpu_layers: Option<GpuLayers>,
    /// Device memory the fit check may plan for, in bytes or with K/M/G (e.g. 512M). Default:
    /// what the adapter reports (Vulkan). A testing aid for the fit check, and a way to leave
    /// room for other programs on the GPU.
    #[arg(long, env = "KILN_GPU_MEMORY", value_name = "BYTES", value_parser = parse_bytes)]
    pub gpu_memory: Option<u64>,
}

/// `512M`, `4G`, `1048576`: a size in bytes (K, M, G and T are powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: a size in bytes, or with K, M, G or T")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: a size in bytes, or with K, M, G or T"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("{s:?}: a size above 0"));
    }
    Ok((n * mult as f64) as u64)
}

impl EngineFlags {
    /// `opts` with these settings applied.
    pub fn apply(&self, opts: EngineOptions) -> EngineOptions {
        EngineOptions {
            isa: self.isa.or(opts.isa),
            kv_type: self.cache_type.or(opts.kv_type),
            numerics: self.numerics.or(opts.numerics),
            residency: if self.mmap {
                Some(Residency::Mapped)
            } else {
                opts.residency
            },
            interleave: opts.interleave && self.interleave,
            device: self.device,
            gpu_features: if self.gpu_portable {
                GpuFeatures::PORTABLE
            } else {
                opts.gpu_features
            },
            gpu_layers: self.gpu_layers.unwrap_or(opts.gpu_layers),
            gpu_memory: self.gpu_memory.or(opts.gpu_memory),
            ..opts
        }
    }
}

/// Speculative decoding (llama.cpp's names): a draft model and/or prompt lookup draft tokens
/// that the model verifies several at a time. Greedy output is unchanged; sampled output keeps
/// the model's distribution.
#[derive(Args, Clone, Debug)]
pub struct SpecArgs {
    /// A draft model sharing the model's vocabulary (a file or a known model name), e.g.
    /// qwen2.5-coder-0.5b for qwen2.5-coder-1.5b.
    #[arg(long = "model-draft", alias = "md", value_name = "MODEL")]
    pub model_draft: Option<String>,
    /// Tokens drafted per step at most.
    #[arg(long, alias = "draft", value_name = "N", default_value_t = Speculation::default().draft_max as u64,
          value_parser = clap::value_parser!(u64).range(0..=Speculation::MAX_DRAFT as u64))]
    pub draft_max: u64,
    /// Shorter drafts are not verified (the step decodes one token).
    #[arg(long, value_name = "N", default_value_t = Speculation::default().draft_min as u64,
          value_parser = clap::value_parser!(u64).range(0..=Speculation::MAX_DRAFT as u64))]
    pub draft_min: u64,
    /// The draft model stops at a token it gives less than this probability.
    #[arg(long, value_name = "P", default_value_t = Speculation::default().p_min, value_parser = unit_interval)]
    pub draft_p_min: f32,
    /// Prompt-lookup drafting: propose what followed the longest earlier match of the last N
    /// tokens (then fewer) in the prompt and output, at most as many tokens as the match is long
    /// (0 = off; no second model needed). With --model-draft, the draft model checks each
    /// proposal in one batched pass, keeps it up to the first token it would not have drafted
    /// itself and drafts on from there (greedy: the same drafts in fewer passes). [default: 4 with
    /// --model-draft, else 0]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(0..=Speculation::MAX_NGRAM as u64))]
    pub lookup_ngram: Option<u64>,
    /// How much of the vocabulary the draft model proposes from: its output layer computes
    /// only the first N token ids (FR-Spec; BPE ids are ordered by frequency; N rounded up to
    /// a multiple of 4 for an interleaved output matrix), which makes each draft token
    /// cheaper. `full` (or 0): the whole vocabulary; `auto` (the default): 32768 when the
    /// vocabulary has more than 65536 tokens, else full. The model still
    /// verifies over its whole vocabulary, so output is unchanged (greedy: token for token).
    #[arg(long, value_name = "N|auto|full", value_parser = parse_draft_vocab)]
    pub draft_vocab: Option<DraftVocab>,
}

fn parse_draft_vocab(s: &str) -> Result<DraftVocab, String> {
    s.parse()
}

fn unit_interval(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        Ok(x) => Err(format!("must be in [0, 1], got {x}")),
        Err(e) => Err(e.to_string()),
    }
}

impl SpecArgs {
    /// The requests' speculation settings.
    pub fn speculation(&self) -> Result<Speculation> {
        let s = Speculation {
            draft_model: self.model_draft.is_some(),
            draft_max: self.draft_max as usize,
            draft_min: self.draft_min as usize,
            p_min: self.draft_p_min,
            lookup_ngram: match self.lookup_ngram {
                Some(n) => n as usize,
                None if self.model_draft.is_some() => Speculation::DRAFT_LOOKUP_NGRAM,
                None => 0,
            },
        };
        s.validate().map_err(anyhow::Error::msg)?;
        Ok(s)
    }

    /// The draft model's vocabulary setting (`--draft-vocab` needs `--model-draft`).
    pub fn draft_vocab(&self) -> Result<DraftVocab> {
        match (self.draft_vocab, &self.model_draft) {
            (Some(_), None) => bail!("--draft-vocab needs a draft model (--model-draft)"),
            (v, _) => Ok(v.unwrap_or_default()),
        }
    }

    /// The draft model's path (pulled on first use when it is a known name).
    pub fn draft_path(&self) -> Result<Option<PathBuf>> {
        self.model_draft
            .as_deref()
            .map(|m| resolve_model(Some(m)))
            .transpose()
    }
}

impl ModelArgs {
    /// A path as given, or a known model name (pulled on first use; none = the default model).
    pub fn resolve(&self) -> Result<PathBuf> {
        resolve_model(self.model.as_deref())
    }

    pub fn load(&self, opts: EngineOptions) -> Result<Engine> {
        let path = self.resolve()?;
        self.load_path(&path, opts)
    }

    /// [`ModelArgs::load`] of an already resolved model path.
    pub fn load_path(&self, path: &std::path::Path, opts: EngineOptions) -> Result<Engine> {
        let opts = self.engine.apply(EngineOptions {
            threads: self.threads,
            tokenizer_path: self.tokenizer_path.clone().or(opts.tokenizer_path),
            ..opts
        });
        let msg = format!("loading {}", path.display());
        note_without_terminal(&msg);
        let bar = spinner(&msg);
        let engine =
            Engine::load(path, &opts).with_context(|| format!("cannot load {}", path.display()));
        bar.finish_and_clear();
        let engine = engine?;
        // One line whenever the device was not simply the CPU asked for; `auto` on a machine
        // without any GPU is the CPU as asked for.
        if opts.device != DeviceChoice::Cpu && engine.device != kiln_engine::NO_GPU_NOTE {
            eprintln!("kiln: {}", engine.device);
        }
        Ok(engine)
    }
}

/// Writes `msg` as one stderr line when stderr is not a terminal, where the progress bars
/// draw nothing: a log or CI run then still says why it is waiting.
pub fn note_without_terminal(msg: &str) {
    if !std::io::stderr().is_terminal() {
        eprintln!("kiln: {msg}");
    }
}

/// A spinner on stderr (hidden when stderr is not a terminal).
pub fn spinner(msg: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Resolves a model argument, pulling a known model with a progress bar when it is missing.
pub fn resolve_model(arg: Option<&str>) -> Result<PathBuf> {
    let mut bar: Option<indicatif::ProgressBar> = None;
    let name = arg.unwrap_or(kiln_pull::DEFAULT_MODEL);
    let path = kiln_pull::resolve_model(arg, true, &mut |p| {
        if matches!(p, Progress::Downloading { part: 1, .. }) {
            note_without_terminal(&format!("pulling {name} (first use; cached afterwards)"));
        }
        show_progress(&mut bar, p)
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(path?)
}

/// Draws pull progress: one step per downloaded part.
pub fn show_progress(bar: &mut Option<indicatif::ProgressBar>, p: Progress) {
    match p {
        Progress::Downloading { part, parts, .. } => {
            let b = bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::new(parts as u64);
                b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {pos}/{len} parts {elapsed}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b
            });
            b.set_message(format!("pulling part {part}"));
        }
        Progress::Appended { part, .. } => {
            if let Some(b) = bar {
                b.set_position(part as u64);
            }
        }
        Progress::Verifying { .. } => {
            if let Some(b) = bar {
                b.set_message("verifying sha256".to_string());
            }
        }
        // Without this line a second pull waiting on the first looks hung.
        Progress::Waiting { .. } => eprintln!("kiln: {p}"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        spec: SpecArgs,
    }

    fn lookup_ngram(args: &[&str]) -> usize {
        let args = std::iter::once("kiln").chain(args.iter().copied());
        Cli::try_parse_from(args)
            .unwrap()
            .spec
            .speculation()
            .unwrap()
            .lookup_ngram
    }

    #[test]
    fn prompt_lookup_is_on_with_a_draft_model_unless_told_otherwise() {
        assert_eq!(lookup_ngram(&[]), 0);
        assert_eq!(
            lookup_ngram(&["--model-draft", "draft.gguf"]),
            Speculation::DRAFT_LOOKUP_NGRAM
        );
        assert_eq!(
            lookup_ngram(&["--model-draft", "draft.gguf", "--lookup-ngram", "0"]),
            0
        );
        assert_eq!(lookup_ngram(&["--lookup-ngram", "3"]), 3);
    }
}
