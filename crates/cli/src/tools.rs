//! `kiln inspect`, `kiln tokenize`, `kiln perplexity`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use kiln_engine::EngineOptions;

use crate::model_arg::ModelArgs;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The model to describe (file, directory or known name).
    #[arg(value_name = "MODEL")]
    pub model: Option<String>,
    /// List the GPU adapters (`--device gpu:N` numbers them) instead of describing a model.
    #[arg(long)]
    pub devices: bool,
    /// Also show what the model would use of this device (gpu, gpu:N or auto): the adapter,
    /// its memory, and the weights, KV cache and scratch of the layers placed there.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<kiln_engine::DeviceChoice>,
    /// Layers the plan puts on the GPU, as for `kiln complete` (N, auto or all).
    #[arg(long = "gpu-layers", alias = "n-gpu-layers", value_name = "N")]
    pub gpu_layers: Option<kiln_engine::GpuLayers>,
    /// Positions of the KV cache the plan counts (default: the model's context).
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Device memory the plan may use (as `--gpu-memory` elsewhere).
    #[arg(long, value_name = "BYTES", value_parser = crate::model_arg::parse_bytes)]
    pub gpu_memory: Option<u64>,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    pub text: String,
    /// Print JSON: ids and the text of each token.
    #[arg(long)]
    pub json: bool,
    /// Do not add BOS.
    #[arg(long)]
    pub no_bos: bool,
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text file to score.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Tokens per chunk (at least 4: the second half of each chunk is scored).
    #[arg(short = 'c', long = "ctx", default_value_t = 512, value_parser = at_least_4)]
    pub ctx: usize,
}

fn at_least_4(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n < 4 => Err("must be at least 4".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    if a.devices {
        let all = kiln_engine::list_adapters();
        if all.is_empty() {
            println!("no GPU adapter or driver found (models run on the CPU)");
        }
        for d in all {
            println!("{d}");
        }
        return Ok(());
    }
    let path = crate::model_arg::resolve_model(a.model.as_deref())?;
    let loaded =
        kiln_formats::load(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let c = &loaded.config;
    println!("model:        {}", path.display());
    println!("format:       {}", loaded.format);
    println!("architecture: {}", c.arch);
    println!(
        "sizes:        {} layers, hidden {}, ffn {}, {} q heads / {} kv heads, head dim {}, vocab {}",
        c.n_layers, c.hidden_size, c.intermediate_size, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size
    );
    println!(
        "context:      {} (rope base {}{})",
        c.max_position_embeddings,
        c.rope_theta,
        c.rope_local_theta
            .map(|t| format!(", local {t}"))
            .unwrap_or_default()
    );
    if let Some(m) = &c.moe {
        println!(
            "experts:      {} per layer, {} used per token, ffn {} each{}",
            m.n_experts,
            m.n_used,
            m.expert_ffn,
            if m.norm_topk {
                ", weights renormalised"
            } else {
                ""
            }
        );
    }
    if let Some(s) = &c.rope_scaling {
        let what = match s {
            kiln_formats::RopeScaling::Linear { factor } => format!("linear x{factor}"),
            kiln_formats::RopeScaling::Llama3 { factor, .. } => format!("llama3 x{factor}"),
            kiln_formats::RopeScaling::FreqFactors(_) => "frequency factors (rope_freqs)".into(),
            kiln_formats::RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                ..
            } => format!("yarn x{factor} from {original_max_position_embeddings}"),
            kiln_formats::RopeScaling::LongRope {
                original_max_position_embeddings,
                ..
            } => format!("longrope, long factors past {original_max_position_embeddings}"),
        };
        println!("rope scaling: {what}");
    }
    if let Some(w) = c.sliding_window {
        let n = (0..c.n_layers).filter(|&l| c.is_sliding(l)).count();
        println!("sliding win:  {w} on {n} of {} layers", c.n_layers);
    }
    println!(
        "output:       {}",
        if c.tie_word_embeddings {
            "tied to token_embd"
        } else {
            "own matrix"
        }
    );
    let mut hist = std::collections::BTreeMap::<String, (usize, usize, usize)>::new();
    for t in loaded.tensors.values() {
        let e = hist.entry(t.dtype.to_string()).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.data.len();
    }
    let params: usize = hist.values().map(|v| v.1).sum();
    let bytes: usize = hist.values().map(|v| v.2).sum();
    println!(
        "parameters:   {:.1} M in {} tensors",
        params as f64 / 1e6,
        loaded.tensors.len()
    );
    for (ty, (n, p, b)) in &hist {
        println!(
            "  {ty:>5}: {n:>4} tensors, {:>8.1} M params, {:>8.1} MiB",
            *p as f64 / 1e6,
            *b as f64 / 1048576.0
        );
    }
    let tokenizer = kiln_tokenizer::Tokenizer::from_source(&loaded.tokenizer)?;
    // Each special token as its text and id, e.g. `<s> (1)`.
    let named = |id: u32| match tokenizer.id_to_token(id) {
        Some(t) => format!("{t} ({id})"),
        None => id.to_string(),
    };
    let bos = tokenizer.bos_id().map_or("none".to_string(), named);
    let eos = match tokenizer.eos_ids() {
        [] => "none".to_string(),
        ids => ids
            .iter()
            .map(|&id| named(id))
            .collect::<Vec<_>>()
            .join(", "),
    };
    println!(
        "tokenizer:    {} tokens, bos {bos}, eos {eos}, {} bos",
        tokenizer.vocab_size(),
        if tokenizer.adds_bos() {
            "adds"
        } else {
            "does not add"
        }
    );
    println!(
        "chat template: {}",
        if loaded.chat_template.is_some() {
            "yes"
        } else {
            "none"
        }
    );
    // The cache type the model will get: f16 for quantised weights (as llama.cpp), else f32.
    let kv = kiln_models::Numerics::for_tensors(loaded.tensors.values().map(|t| &t.dtype))
        .default_kv_type();
    let kv_bytes = match kv {
        kiln_models::KvType::F16 => 2,
        kiln_models::KvType::F32 => 4,
    };
    let kv_per_pos = 2 * c.n_layers * c.n_kv_heads * c.head_dim * kv_bytes;
    // GGUF weights are read into (huge-page) memory when they fit; other formats stay mapped.
    let file_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let held = if path.is_file() && loaded.format.starts_with("GGUF") {
        kiln_formats::resident::Residency::for_len(file_len)
    } else {
        kiln_formats::resident::Residency::Mapped
    };
    let held = match held {
        kiln_formats::resident::Residency::Mapped => "memory-mapped",
        kiln_formats::resident::Residency::Resident => "read into memory",
    };
    println!(
        "memory:       weights {:.1} MiB ({held}) + KV cache ({}) {:.1} KiB per position ({:.1} MiB at 4096)",
        bytes as f64 / 1048576.0,
        kv.name(),
        kv_per_pos as f64 / 1024.0,
        (kv_per_pos * 4096) as f64 / 1048576.0
    );
    if let Some(device) = a.device {
        let opts = EngineOptions {
            device,
            gpu_layers: a.gpu_layers.unwrap_or_default(),
            gpu_memory: a.gpu_memory,
            context: a.ctx_size,
            ..Default::default()
        };
        print_gpu_plan(&loaded, &opts)?;
    }
    Ok(())
}

/// The `gpu:` lines of `kiln inspect --device ...`.
fn print_gpu_plan(loaded: &kiln_formats::LoadedModel, opts: &EngineOptions) -> Result<()> {
    use kiln_engine::gpu_plan::human;
    let r = match kiln_engine::device::plan_report(loaded, opts)? {
        Ok(r) => r,
        Err(cpu) => {
            println!("gpu:          none ({cpu})");
            return Ok(());
        }
    };
    println!(
        "gpu:          {}, memory {}, largest binding {}",
        r.adapter,
        r.memory.map_or("not reported".into(), human),
        human(r.max_binding)
    );
    let n = &r.needs;
    let all = n.usage(n.layers());
    println!(
        "  all {} layers: {} (weights {}, KV cache {} for {} positions, scratch {})",
        n.layers(),
        human(all.total()),
        human(all.weights),
        human(all.kv),
        n.positions,
        human(all.scratch)
    );
    match &r.decision {
        Ok(d) if d.gpu_layers == 0 => println!(
            "  -ngl {}: every layer on the CPU; {}",
            opts.gpu_layers,
            d.why.as_deref().unwrap_or("-ngl 0")
        ),
        Ok(d) => {
            let u = n.usage(d.gpu_layers);
            println!(
                "  -ngl {}: {}/{} layers on the GPU, {} (weights {}, KV cache {}, scratch {}){}",
                opts.gpu_layers,
                d.gpu_layers,
                n.layers(),
                human(u.total()),
                human(u.weights),
                human(u.kv),
                human(u.scratch),
                d.why.as_ref().map_or(String::new(), |w| format!("; {w}"))
            );
        }
        Err(e) => println!("  -ngl {}: {e}", opts.gpu_layers),
    }
    Ok(())
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let tokenizer = match &a.model.tokenizer_path {
        // The model itself is not needed: only its tokenizer is asked for.
        Some(t) => {
            anyhow::ensure!(t.is_file(), "tokenizer {}: no such file", t.display());
            let source = if t.extension().is_some_and(|e| e == "json") {
                kiln_formats::TokenizerSource::HfJson(t.clone())
            } else {
                kiln_formats::TokenizerSource::TokenizerModel(t.clone())
            };
            kiln_tokenizer::Tokenizer::from_source(&source)
                .with_context(|| format!("cannot read the tokenizer {}", t.display()))?
        }
        None => {
            let path = a.model.resolve()?;
            let loaded = kiln_formats::load(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            kiln_tokenizer::Tokenizer::from_source(&loaded.tokenizer)?
        }
    };
    let ids = tokenizer.encode(&a.text, !a.no_bos)?;
    if a.json {
        let pieces: Vec<String> = ids
            .iter()
            .map(|&t| String::from_utf8_lossy(&tokenizer.token_bytes(t)).into_owned())
            .collect();
        println!("{}", serde_json::json!({ "ids": ids, "tokens": pieces }));
    } else {
        println!("{ids:?}");
    }
    Ok(())
}

pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let engine = a.model.load(EngineOptions::default())?;
    let tokens = engine.tokenize(&text)?;
    eprintln!(
        "{} tokens, {} chunks of {}",
        tokens.len(),
        tokens.len() / a.ctx,
        a.ctx
    );
    let r = engine.perplexity(&tokens, a.ctx, |i, _, ppl| {
        eprint!("[{}]{:.4},", i + 1, ppl);
    })?;
    eprintln!();
    println!("Final estimate: PPL = {:.4} +/- {:.5}", r.ppl, r.stderr);
    Ok(())
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// gemma3-270m (default), qwen2.5-coder-0.5b or qwen2.5-coder-1.5b.
    pub name: Option<String>,
    /// List the known models and whether each is downloaded.
    #[arg(long)]
    pub list: bool,
}

pub fn pull(a: PullArgs) -> Result<()> {
    if a.list {
        for spec in kiln_pull::known_models() {
            let state = match kiln_pull::cached_path(spec) {
                Some(p) => p.display().to_string(),
                None => "not downloaded".to_string(),
            };
            println!("{:<20} {:<45} {state}", spec.name, spec.file);
        }
        return Ok(());
    }
    let name = a.name.as_deref().unwrap_or(kiln_pull::DEFAULT_MODEL);
    let spec = kiln_pull::find(name).with_context(|| {
        let names: Vec<_> = kiln_pull::known_models().iter().map(|m| m.name).collect();
        format!("unknown model {name}; known: {}", names.join(", "))
    })?;
    let mut bar = None;
    let path = kiln_pull::pull(spec, &mut |p| {
        if matches!(p, kiln_pull::Progress::Downloading { part: 1, .. }) {
            crate::model_arg::note_without_terminal(&format!("pulling {name}"));
        }
        crate::model_arg::show_progress(&mut bar, p)
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!("{}", path?.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The model to convert (GGUF file, Hugging Face directory or Meta checkpoint directory).
    pub model: PathBuf,
    /// Output format.
    #[arg(long, value_parser = ["gguf", "safetensors"])]
    pub to: String,
    /// Output path (default: next to the input, `.gguf` or `-hf`).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    use kiln_engine::convert::Target;
    let (target, suffix) = match a.to.as_str() {
        "gguf" => (Target::Gguf, ".gguf"),
        _ => (Target::Safetensors, "-hf"),
    };
    let out = a.output.unwrap_or_else(|| {
        let name = a
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        a.model
            .with_file_name(format!("{}{suffix}", name.trim_end_matches(".gguf")))
    });
    let bar = crate::model_arg::spinner(&format!(
        "converting {} to {}",
        a.model.display(),
        out.display()
    ));
    crate::quantize::cancel_on_interrupt();
    let r = kiln_engine::convert::convert_with(&a.model, target, &out, &crate::quantize::cancelled);
    bar.finish_and_clear();
    if crate::quantize::cancelled() {
        anyhow::bail!("interrupted; nothing was written to {}", out.display());
    }
    r?;
    println!("{}", out.display());
    Ok(())
}
