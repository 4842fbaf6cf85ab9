//! `kiln bench`: prompt-processing and generation speed in llama-bench's shape.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use kiln_engine::EngineOptions;
use kiln_models::{CausalLM, Logits, SeqInput};
use serde_json::json;

use crate::model_arg::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths to time (comma-separated; 0 = none).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to time (comma-separated; 0 = none).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5, value_parser = crate::serve::positive)]
    pub repetitions: usize,
    /// Print a JSON array shaped like `llama-bench -o json`.
    #[arg(long)]
    pub json: bool,
}

struct Test {
    n_prompt: usize,
    n_gen: usize,
    samples: Vec<f64>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let engine = a.model.load(EngineOptions::default())?;
    let model = engine.model.as_ref();
    let vocab = model.config().vocab_size as u32;
    let mut tests: Vec<Test> = Vec::new();
    for &p in a.n_prompt.iter().filter(|&&p| p > 0) {
        tests.push(Test {
            n_prompt: p,
            n_gen: 0,
            samples: Vec::new(),
        });
    }
    for &n in a.n_gen.iter().filter(|&&n| n > 0) {
        tests.push(Test {
            n_prompt: 0,
            n_gen: n,
            samples: Vec::new(),
        });
    }
    // Pseudo-random token ids, as llama-bench uses; the same every run.
    let tokens: Vec<u32> = (0..a.n_prompt.iter().copied().max().unwrap_or(0).max(1) as u64)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % vocab as u64) as u32)
        .collect();
    // The largest KV cache a test held on the device.
    let mut kv_device = 0;
    for t in tests.iter_mut() {
        // One warm-up pass, then the timed repetitions.
        for rep in 0..=a.repetitions {
            let (secs, kv) = if t.n_prompt > 0 {
                time_prompt(model, &tokens[..t.n_prompt])?
            } else {
                time_generation(model, t.n_gen, tokens[0])?
            };
            kv_device = kv_device.max(kv);
            if rep > 0 {
                t.samples.push((t.n_prompt + t.n_gen) as f64 / secs);
            }
        }
    }
    let size: usize = engine_weight_bytes(&a)?;
    let threads = model.n_threads();
    let name = engine.name.clone();
    let peak = peak_rss_bytes();
    if a.json {
        let arr: Vec<_> = tests
            .iter()
            .map(|t| {
                let (avg, sd) = mean_sd(&t.samples);
                json!({
                    "model_filename": a.model.model.clone().unwrap_or_else(|| name.clone()),
                    "model_type": format!("{:?}", model.config().arch),
                    "model_size": size,
                    "n_threads": threads,
                    "n_prompt": t.n_prompt,
                    "n_gen": t.n_gen,
                    "avg_ts": avg,
                    "stddev_ts": sd,
                    "samples_ts": t.samples,
                    "peak_rss_bytes": peak,
                    "device": engine.device,
                    "gpu": engine.gpu.as_ref().map(|g| json!({
                        "adapter": g.adapter,
                        "gpu_layers": g.gpu_layers,
                        "layers": g.layers,
                        "weight_bytes": g.weight_bytes,
                        "kv_cache_bytes": kv_device,
                        "memory_bytes": g.memory,
                    })),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&arr)?);
    } else {
        println!("{}", engine.device);
        if let Some(g) = &engine.gpu {
            println!(
                "gpu memory: {} of {} layers on {}: weights {:.1} MiB, KV cache {:.1} MiB (the largest cache of these tests){}",
                g.gpu_layers,
                g.layers,
                g.adapter,
                g.weight_bytes as f64 / 1048576.0,
                kv_device as f64 / 1048576.0,
                g.memory.map_or(String::new(), |m| format!(
                    "; the device offers {:.1} MiB",
                    m as f64 / 1048576.0
                ))
            );
        }
        println!("| model | size | threads | test | t/s |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        for t in &tests {
            let (avg, sd) = mean_sd(&t.samples);
            let test = if t.n_prompt > 0 {
                format!("pp{}", t.n_prompt)
            } else {
                format!("tg{}", t.n_gen)
            };
            println!(
                "| {name} | {:.2} MiB | {threads} | {test} | {avg:.2} ± {sd:.2} |",
                size as f64 / 1048576.0
            );
        }
        println!("peak RSS: {:.1} MiB", peak as f64 / 1048576.0);
    }
    Ok(())
}

/// Seconds for the pass, and the device bytes of its KV cache.
fn time_prompt(model: &dyn CausalLM, tokens: &[u32]) -> Result<(f64, usize)> {
    let mut cache = model.new_cache(tokens.len());
    let mut logits = Vec::new();
    let start = Instant::now();
    let mut batch = [SeqInput {
        tokens,
        cache: &mut cache,
        logits: Logits::Last,
    }];
    model.forward(&mut batch, &mut logits)?;
    let secs = start.elapsed().as_secs_f64();
    Ok((secs, kiln_engine::device::cache_device_bytes(&cache)))
}

fn time_generation(model: &dyn CausalLM, n: usize, first: u32) -> Result<(f64, usize)> {
    let mut cache = model.new_cache(n);
    let mut logits = Vec::new();
    let mut tok = first;
    let start = Instant::now();
    for _ in 0..n {
        logits.clear();
        let mut batch = [SeqInput {
            tokens: std::slice::from_ref(&tok),
            cache: &mut cache,
            logits: Logits::Last,
        }];
        model.forward(&mut batch, &mut logits)?;
        tok = kiln_engine::sampler::argmax(&logits);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((secs, kiln_engine::device::cache_device_bytes(&cache)))
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn engine_weight_bytes(a: &BenchArgs) -> Result<usize> {
    let path = a.model.resolve()?;
    Ok(if path.is_file() {
        std::fs::metadata(&path)?.len() as usize
    } else {
        0
    })
}

/// Peak resident memory of this process (Linux `VmHWM`; 0 where unknown).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
