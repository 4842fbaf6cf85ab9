//! One seeded request with `n = 3` over the tiny llama-mha fixture gives the same choices
//! (text, token ids, logprobs, finish reasons) and usage three ways: the server's response, its
//! stream reassembled, and the engine call `kiln complete --json` makes, printed through the
//! same OpenAI schema.

mod common;

use common::{fixture, sse_payloads, start_engine, TestServer};
use kiln_engine::scheduler::SchedulerConfig;
use kiln_engine::{openai, Engine, EngineOptions, GenerateParams, SamplingParams};
use kiln_server::ServerOptions;
use serde_json::{json, Value};

fn load() -> Engine {
    Engine::load(
        &fixture("llama-mha"),
        &EngineOptions {
            threads: 1,
            max_batch: 4,
            ..Default::default()
        },
    )
    .expect("loading the llama-mha fixture")
}

async fn start() -> TestServer {
    let engine = load();
    let cfg = SchedulerConfig {
        slots: 4,
        context: engine.limits.context,
        max_queue: 64,
        prefill_chunk: engine.limits.prefill_chunk,
        prefix_cache: 4,
    };
    let opts = ServerOptions {
        model_id: "llama-mha".into(),
        ..Default::default()
    };
    start_engine(engine, cfg, opts).await
}

const PROMPT: &str = "The quick brown fox";
const SEED: u64 = 11;
const N: usize = 3;

/// The stream's chunks folded back into one choice per index, as a client would.
fn reassemble(chunks: &[Value]) -> (Vec<Value>, Value) {
    let mut choices: Vec<Value> = (0..N)
        .map(|i| {
            json!({
                "index": i, "text": "", "finish_reason": null,
                "logprobs": {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []},
            })
        })
        .collect();
    let mut usage = Value::Null;
    for o in chunks {
        assert!(o["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(o["id"], chunks[0]["id"], "one id for every chunk");
        if !o["usage"].is_null() {
            usage = o["usage"].clone();
        }
        for ch in o["choices"].as_array().unwrap() {
            let c = &mut choices[ch["index"].as_u64().unwrap() as usize];
            let text = c["text"].as_str().unwrap().to_string() + ch["text"].as_str().unwrap();
            c["text"] = json!(text);
            for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
                for x in ch["logprobs"][key].as_array().into_iter().flatten() {
                    c["logprobs"][key].as_array_mut().unwrap().push(x.clone());
                }
            }
            for key in ["finish_reason", "prompt_token_ids", "token_ids"] {
                if !ch[key].is_null() {
                    c[key] = ch[key].clone();
                }
            }
        }
    }
    (choices, usage)
}

/// The whole response to `body`, then the chunks of the same request streamed (with usage when
/// `include_usage`), checking the statuses and the closing `[DONE]`.
async fn whole_and_streamed(
    c: &reqwest::Client,
    url: &str,
    body: &Value,
    include_usage: bool,
) -> (Value, Vec<Value>) {
    let r = c.post(url).json(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let whole: Value = r.json().await.unwrap();
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    if include_usage {
        sbody["stream_options"] = json!({"include_usage": true});
    }
    let r = c.post(url).json(&sbody).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut payloads = sse_payloads(&r.text().await.unwrap());
    assert_eq!(payloads.pop().as_deref(), Some("[DONE]"));
    let chunks = payloads
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    (whole, chunks)
}

#[tokio::test]
async fn stream_non_stream_and_cli_json_agree_for_n_3() {
    let s = start().await;
    let c = reqwest::Client::new();
    let body = json!({
        "prompt": PROMPT, "n": N, "max_tokens": 8, "temperature": 0.9, "seed": SEED,
        "logprobs": 2, "ignore_eos": true,
    });
    let (whole, chunks) = whole_and_streamed(&c, &s.url("/v1/completions"), &body, true).await;
    let (streamed, streamed_usage) = reassemble(&chunks);

    // What `kiln complete --json` does, one engine call per choice with the server's seeds.
    let engine = load();
    let prompt = engine.tokenize(PROMPT).unwrap();
    let params = GenerateParams {
        max_tokens: 8,
        sampling: SamplingParams {
            temperature: 0.9,
            seed: SEED,
            ..Default::default()
        },
        ignore_eos: true,
        logprobs: Some(2),
        ..Default::default()
    };
    let mut results = Vec::new();
    for j in 0..N {
        let p = openai::choice_params(&params, j);
        results.extend(
            engine
                .generate(std::slice::from_ref(&prompt), &p, &mut |_, _| {})
                .unwrap(),
        );
    }
    let header = openai::Header {
        id: "cmpl-cli".into(),
        created: 0,
        model: "llama-mha".into(),
    };
    // As printed, then read back as a client reads it (to_value would widen every f32 exactly).
    let printed = serde_json::to_string(&openai::text_completion(
        &header,
        &engine.tokenizer,
        &results,
        N,
        false,
    ))
    .unwrap();
    let cli: Value = serde_json::from_str(&printed).unwrap();

    let choices = whole["choices"].as_array().unwrap();
    assert_eq!(choices.len(), N);
    // Three seeds, three different samples (else the comparison below proves little).
    assert_ne!(choices[0]["token_ids"], choices[1]["token_ids"]);
    assert_ne!(choices[1]["token_ids"], choices[2]["token_ids"]);
    assert_eq!(choices, cli["choices"].as_array().unwrap(), "server vs CLI");
    assert_eq!(choices, &streamed, "non-stream vs stream");
    assert_eq!(whole["usage"], cli["usage"]);
    assert_eq!(whole["usage"], streamed_usage);
    assert_eq!(
        whole["usage"]["prompt_tokens"].as_u64(),
        Some(prompt.len() as u64),
        "the prompt counts once for its three choices"
    );
}

/// `echo` with `logprobs`: the stream echoes the prompt with its logprobs (once the prefill has
/// computed them), so the reassembled stream equals the whole response.
#[tokio::test]
async fn stream_echoes_the_prompt_with_its_logprobs() {
    let s = start().await;
    let c = reqwest::Client::new();
    let body = json!({
        "prompt": PROMPT, "n": N, "max_tokens": 4, "temperature": 0.9, "seed": SEED,
        "logprobs": 2, "echo": true, "ignore_eos": true,
    });
    let (whole, chunks) = whole_and_streamed(&c, &s.url("/v1/completions"), &body, false).await;
    let (streamed, _) = reassemble(&chunks);
    let choices = whole["choices"].as_array().unwrap();
    let prompt_tokens = whole["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    for ch in choices {
        let tokens = ch["logprobs"]["tokens"].as_array().unwrap();
        assert_eq!(
            tokens.len(),
            prompt_tokens + 4,
            "prompt and generated tokens"
        );
        assert!(
            ch["logprobs"]["token_logprobs"][0].is_null(),
            "nothing predicts the first"
        );
        assert!(ch["text"].as_str().unwrap().starts_with(PROMPT));
    }
    assert_eq!(choices, &streamed, "non-stream vs stream");
}
