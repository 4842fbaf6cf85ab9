//! What a draft token costs against a decode step of the model it drafts for, with the
//! draft's output layer over the whole vocabulary and over prefixes of it (`--draft-vocab`):
//! each model decodes the same 64 tokens one at a time, the models taking turns (6 rounds,
//! the first a warm-up), so that load from other processes falls on all alike. Not a test.
//!
//!   cargo run --release -p kiln-engine --example draft_cost -- \
//!       [TARGET DRAFT [ROWS,...]]   (default: qwen2.5-coder-1.5b, -0.5b, 65536,32768,16384)
//!
//! Models are pulled on first use (file paths also work).

use std::time::Instant;

use kiln_engine::{Engine, EngineOptions};
use kiln_models::{Logits, SeqInput};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = args.first().map_or("qwen2.5-coder-1.5b", String::as_str);
    let draft = args.get(1).map_or("qwen2.5-coder-0.5b", String::as_str);
    let rows: Vec<usize> = args
        .get(2)
        .map_or("65536,32768,16384", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let path = |m: &str| kiln_pull::resolve_model(Some(m), true, &mut |_| {});
    let opts = EngineOptions {
        threads: 2,
        ..Default::default()
    };
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = flags
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let keep = |f: &str| {
        ["avx", "avx2", "fma", "f16c", "avx_vnni"].contains(&f) || f.starts_with("avx512")
    };
    let flags: Vec<&str> = flags.into_iter().filter(|f| keep(f)).collect();
    println!("CPU flags: {}", flags.join(" "));
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load at start: {}", load().trim());
    let mut models = vec![(
        format!("{target} (model)"),
        Engine::load(&path(target)?, &opts)?.model,
    )];
    for r in std::iter::once(0).chain(rows) {
        let mut d = Engine::load(&path(draft)?, &opts)?.model;
        if r > 0 {
            d.limit_logits(r)?;
        }
        models.push((format!("{draft} over {} ids", d.logit_rows()), d));
    }
    let (n, rounds) = (64, 6);
    let mut total = vec![0f64; models.len()];
    for round in 0..rounds {
        for (i, (_, model)) in models.iter().enumerate() {
            let mut cache = model.new_cache(n);
            let mut out = Vec::new();
            let t0 = Instant::now();
            for t in 0..n {
                out.clear();
                let tok = [(t * 37 + 11) as u32 % 30000];
                let mut batch = [SeqInput {
                    tokens: &tok,
                    cache: &mut cache,
                    logits: Logits::Last,
                }];
                model.forward(&mut batch, &mut out)?;
            }
            if round > 0 {
                total[i] += t0.elapsed().as_secs_f64();
            }
        }
    }
    let per = |t: f64| t / ((rounds - 1) * n) as f64 * 1e3;
    for ((name, _), &t) in models.iter().zip(&total) {
        println!(
            "{name}: {:.2} ms/token = {:.3} of a model step",
            per(t),
            t / total[0]
        );
    }
    println!("load at end: {}", load().trim());
    Ok(())
}
