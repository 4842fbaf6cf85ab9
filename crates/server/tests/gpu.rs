//! `kiln serve --device gpu`: the server's scheduler drives a GPU model (every layer, and an
//! `-ngl` split with the first block on the CPU) exactly as a CPU one. Two concurrent greedy
//! requests with echo and logprobs over the llama-mha fixture get the CPU engine's tokens and
//! logprobs within 1e-3 (the GPU's f32 rounding). On CI the adapter is Mesa's lavapipe; without
//! an adapter the test prints one line and skips.

mod common;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use common::{start_state, TestServer};
use kiln_engine::scheduler::{Scheduler, SchedulerConfig};
use kiln_engine::{DeviceChoice, Engine, EngineOptions, GenerateParams, GpuLayers};
use kiln_server::{AppState, ServerOptions};
use serde_json::{json, Value};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/data/fixtures/llama-mha"
);

fn load(device: DeviceChoice, gpu_layers: GpuLayers) -> Engine {
    Engine::load(
        Path::new(FIXTURE),
        &EngineOptions {
            threads: 1,
            max_batch: 4,
            device,
            gpu_layers,
            ..Default::default()
        },
    )
    .expect("loading the llama-mha fixture")
}

async fn start(engine: Engine) -> TestServer {
    let Engine {
        model,
        tokenizer,
        chat_template,
        limits,
        ..
    } = engine;
    let extra_eos = model.config().eos_token_ids.clone();
    let vocab = Arc::new(tokenizer);
    let scheduler = Arc::new(Scheduler::start(
        model,
        vocab.clone(),
        SchedulerConfig {
            slots: 4,
            context: limits.context,
            max_queue: 64,
            prefill_chunk: limits.prefill_chunk,
            prefix_cache: 4,
        },
    ));
    let state = AppState::new(
        scheduler,
        vocab,
        chat_template,
        &extra_eos,
        ServerOptions {
            model_id: "llama-mha".into(),
            ..Default::default()
        },
    );
    start_state(state, Arc::new((Mutex::new(false), Condvar::new()))).await
}

const PROMPTS: [&str; 2] = ["The quick brown fox", "Once upon a time"];
const MAX_TOKENS: usize = 6;

#[tokio::test]
async fn the_server_on_the_gpu_answers_as_the_cpu_engine() {
    if kiln_engine::list_adapters().is_empty() {
        eprintln!("server on the gpu: skipped, no GPU adapter or driver");
        return;
    }
    let cpu = load(DeviceChoice::Cpu, GpuLayers::All);
    let params = GenerateParams {
        max_tokens: MAX_TOKENS,
        logprobs: Some(1),
        echo: true,
        ignore_eos: true,
        ..Default::default()
    };
    let want: Vec<_> = PROMPTS
        .iter()
        .map(|p| {
            let ids = cpu.tokenize(p).unwrap();
            cpu.generate(&[ids], &params, &mut |_, _| {})
                .unwrap()
                .remove(0)
        })
        .collect();
    for layers in [GpuLayers::All, GpuLayers::Count(2)] {
        let engine = load(DeviceChoice::Gpu(None), layers);
        assert!(
            engine.device.starts_with("device: gpu"),
            "{}",
            engine.device
        );
        let s = start(engine).await;
        let c = reqwest::Client::new();
        let requests = PROMPTS.iter().map(|p| {
            let c = c.clone();
            let url = s.url("/v1/completions");
            async move {
                let body = json!({
                    "prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0.0,
                    "logprobs": 1, "echo": true, "ignore_eos": true,
                });
                let r = c.post(url).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.json::<Value>().await.unwrap()
            }
        });
        // Both at once: the scheduler batches them into the same GPU passes.
        let got = futures_join(requests.collect()).await;
        for (i, (v, w)) in got.iter().zip(&want).enumerate() {
            let ch = &v["choices"][0];
            let ids: Vec<u32> = ch["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, w.token_ids, "{layers}: prompt {i}: ids");
            let lps = ch["logprobs"]["token_logprobs"].as_array().unwrap();
            let mut want_lp: Vec<Option<f32>> = w
                .prompt_logprobs
                .as_ref()
                .unwrap()
                .iter()
                .map(|t| t.logprob)
                .collect();
            want_lp.extend(w.logprobs.as_ref().unwrap().iter().map(|t| t.logprob));
            assert_eq!(lps.len(), want_lp.len(), "{layers}: prompt {i}");
            for (k, (a, b)) in lps.iter().zip(&want_lp).enumerate() {
                match (a.as_f64(), b) {
                    (None, None) => {}
                    (Some(a), Some(b)) => assert!(
                        (a as f32 - b).abs() < 1e-3,
                        "{layers}: prompt {i} token {k}: {a} vs CPU {b}"
                    ),
                    other => panic!("{layers}: prompt {i} token {k}: {other:?}"),
                }
            }
        }
    }
}

/// Awaits every future, concurrently.
async fn futures_join<F: std::future::Future<Output = Value> + Send + 'static>(
    fs: Vec<F>,
) -> Vec<Value> {
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
