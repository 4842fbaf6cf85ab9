//! The `-m/--model` argument shared by every subcommand, and loading with a progress display.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::builder::{BoolishValueParser, FalseyValueParser};
use clap::{ArgAction, Args};
use kiln_engine::{DeviceChoice, Engine, EngineOptions, Isa, KvType, Numerics, Residency};
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
    /// Kernel instruction-set level: scalar, avx2, neon or neon+dotprod (default: the best
    /// this CPU runs).
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
    /// backend (wgpu: Vulkan, Metal, DX12) runs Llama, Mistral and Qwen2; without an adapter,
    /// kiln says so in one line and runs on the CPU.
    #[arg(
        long,
        env = "KILN_DEVICE",
        value_name = "DEVICE",
        default_value = "auto"
    )]
    pub device: DeviceChoice,
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
            ..opts
        }
    }
}

impl ModelArgs {
    /// A path as given, or a known model name (pulled on first use; none = the default model).
    pub fn resolve(&self) -> Result<PathBuf> {
        resolve_model(self.model.as_deref())
    }

    pub fn load(&self, opts: EngineOptions) -> Result<Engine> {
        let path = self.resolve()?;
        let opts = self.engine.apply(EngineOptions {
            threads: self.threads,
            tokenizer_path: self.tokenizer_path.clone().or(opts.tokenizer_path),
            ..opts
        });
        let msg = format!("loading {}", path.display());
        note_without_terminal(&msg);
        let bar = spinner(&msg);
        let engine =
            Engine::load(&path, &opts).with_context(|| format!("cannot load {}", path.display()));
        bar.finish_and_clear();
        let engine = engine?;
        // One line whenever the device was not simply the CPU asked for.
        if opts.device != DeviceChoice::Cpu {
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
        _ => {}
    }
}
