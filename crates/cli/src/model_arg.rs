//! The `-m/--model` argument shared by every subcommand, and loading with a progress display.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use kiln_engine::{Engine, EngineOptions};

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
}

/// Where the default model lives once pulled.
const DEFAULT_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

impl ModelArgs {
    pub fn resolve(&self) -> Result<PathBuf> {
        match &self.model {
            Some(m) => {
                let p = PathBuf::from(m);
                if !p.exists() {
                    anyhow::bail!("model {m}: no such file or directory");
                }
                Ok(p)
            }
            None => {
                let dir = std::env::var_os("KILN_MODELS")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME")
                            .map(|h| PathBuf::from(h).join(".cache/kiln/models"))
                    })
                    .context("cannot find the model cache: set HOME or KILN_MODELS")?;
                let p = dir.join(DEFAULT_MODEL_FILE);
                if !p.exists() {
                    anyhow::bail!("default model {} is not downloaded yet", p.display());
                }
                Ok(p)
            }
        }
    }

    pub fn load(&self, opts: EngineOptions) -> Result<Engine> {
        let path = self.resolve()?;
        let opts = EngineOptions {
            threads: self.threads,
            ..opts
        };
        let bar = spinner(&format!("loading {}", path.display()));
        let engine =
            Engine::load(&path, &opts).with_context(|| format!("cannot load {}", path.display()));
        bar.finish_and_clear();
        engine
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
