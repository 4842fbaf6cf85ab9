//! The real HTTP server over the tiny llama-mha fixture (a Hugging Face directory), checked
//! against the transformers goldens in tests/data/fixtures/golden/llama-mha.json.

mod common;

use common::{fixture, llama_mha_golden, sse_payloads, start_engine, TestServer};
use kiln_engine::scheduler::SchedulerConfig;
use kiln_engine::{Engine, EngineOptions};
use kiln_server::ServerOptions;
use serde_json::{json, Value};

async fn start(slots: usize, prefill_chunk: usize) -> TestServer {
    let engine = Engine::load(
        &fixture("llama-mha"),
        &EngineOptions {
            threads: 1,
            context: None,
            max_batch: slots,
            ..Default::default()
        },
    )
    .expect("loading the llama-mha fixture");
    let cfg = SchedulerConfig {
        slots,
        context: engine.limits.context,
        max_queue: 64,
        prefill_chunk,
        prefix_cache: slots,
    };
    let opts = ServerOptions {
        model_id: "llama-mha".into(),
        ..Default::default()
    };
    start_engine(engine, cfg, opts).await
}

async fn post(c: &reqwest::Client, url: &str, body: &Value) -> Value {
    let r = c.post(url).json(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

#[tokio::test]
async fn echo_logprobs_equal_golden_prompt_logprobs() {
    let s = start(4, 8).await;
    let c = reqwest::Client::new();
    let g = llama_mha_golden();
    for p in g["prompts"].as_array().unwrap() {
        let v = post(
            &c,
            &s.url("/v1/completions"),
            &json!({"prompt": p["text"], "max_tokens": 0, "echo": true, "logprobs": 1, "temperature": 0}),
        )
        .await;
        let ch = &v["choices"][0];
        assert_eq!(ids(&ch["prompt_token_ids"]), ids(&p["input_ids"]));
        let lp = &ch["logprobs"]["token_logprobs"];
        let want = p["token_logprobs"].as_array().unwrap();
        assert_eq!(lp.as_array().unwrap().len(), want.len() + 1);
        assert!(lp[0].is_null());
        for (i, w) in want.iter().enumerate() {
            let got = lp[i + 1].as_f64().unwrap();
            let w = w.as_f64().unwrap();
            assert!(
                (got - w).abs() < 1e-4,
                "{} token {}: {got} vs {w}",
                p["name"],
                i + 1
            );
        }
    }
}

#[tokio::test]
async fn greedy_equals_golden_stream_or_not() {
    let s = start(4, 8).await;
    let c = reqwest::Client::new();
    let g = llama_mha_golden();
    for p in g["prompts"].as_array().unwrap() {
        let greedy = &p["greedy"];
        for (ignore_eos, key) in [(true, "new_ids_ignore_eos"), (false, "new_ids")] {
            let body = json!({"prompt": p["text"], "max_tokens": 20, "temperature": 0, "ignore_eos": ignore_eos});
            let v = post(&c, &s.url("/v1/completions"), &body).await;
            assert_eq!(
                ids(&v["choices"][0]["token_ids"]),
                ids(&greedy[key]),
                "{}",
                p["name"]
            );
            let mut sb = body.clone();
            sb["stream"] = json!(true);
            let r = c
                .post(s.url("/v1/completions"))
                .json(&sb)
                .send()
                .await
                .unwrap();
            let chunks = sse_payloads(&r.text().await.unwrap());
            assert_eq!(chunks.last().unwrap(), "[DONE]");
            let mut text = String::new();
            for ch in &chunks[..chunks.len() - 1] {
                let o: Value = serde_json::from_str(ch).unwrap();
                text.push_str(o["choices"][0]["text"].as_str().unwrap());
                if !o["choices"][0]["finish_reason"].is_null() {
                    assert_eq!(o["choices"][0]["token_ids"], v["choices"][0]["token_ids"]);
                }
            }
            assert_eq!(text, v["choices"][0]["text"].as_str().unwrap());
        }
    }
}

#[tokio::test]
async fn sixteen_concurrent_requests_equal_sequential_ones() {
    let s = start(8, 16).await;
    let c = reqwest::Client::new();
    let g = llama_mha_golden();
    let texts: Vec<String> = g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_string())
        .collect();
    let bodies: Vec<Value> = (0..16usize)
        .map(|i| {
            let text = &texts[i % texts.len()];
            if i % 4 == 3 {
                json!({"prompt": text, "max_tokens": 12 + i, "temperature": 0.9, "top_p": 0.95, "seed": i, "ignore_eos": true})
            } else {
                json!({"prompt": text, "max_tokens": 8 + i, "temperature": 0, "ignore_eos": i % 2 == 0})
            }
        })
        .collect();
    let url = s.url("/v1/completions");
    let mut sequential = Vec::new();
    for b in &bodies {
        sequential.push(post(&c, &url, b).await);
    }
    let handles: Vec<_> = bodies
        .iter()
        .map(|b| {
            let (c, url, b) = (c.clone(), url.clone(), b.clone());
            tokio::spawn(async move { post(&c, &url, &b).await })
        })
        .collect();
    for (i, (h, seq)) in handles.into_iter().zip(&sequential).enumerate() {
        let got = h.await.unwrap();
        assert_eq!(
            got["choices"][0]["token_ids"], seq["choices"][0]["token_ids"],
            "request {i}"
        );
        assert_eq!(
            got["choices"][0]["text"], seq["choices"][0]["text"],
            "request {i}"
        );
    }
    // The greedy ignore-eos ones also equal the goldens (a prefix of the 20 greedy ids).
    for (i, seq) in sequential.iter().enumerate() {
        if i % 4 != 3 && i % 2 == 0 {
            let p = &g["prompts"][i % texts.len()];
            let want = ids(&p["greedy"]["new_ids_ignore_eos"]);
            let got = ids(&seq["choices"][0]["token_ids"]);
            let n = got.len().min(want.len());
            assert_eq!(got[..n], want[..n], "request {i}");
        }
    }
}

/// `/v1/embeddings` answers with the engine's embeddings (the same call `kiln embed` makes),
/// as floats or as the base64 of their little-endian f32 bytes.
#[tokio::test]
async fn embeddings_are_the_engines_as_float_or_base64() {
    let s = start(2, 8).await;
    let c = reqwest::Client::new();
    let texts = ["The quick brown fox.", "A slow green turtle, walking."];
    let float = post(
        &c,
        &s.url("/v1/embeddings"),
        &json!({"input": texts, "model": "anything", "encoding_format": "float"}),
    )
    .await;
    let b64 = post(
        &c,
        &s.url("/v1/embeddings"),
        &json!({"input": texts, "encoding_format": "base64"}),
    )
    .await;
    let engine = Engine::load(
        &fixture("llama-mha"),
        &EngineOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let inputs: Vec<Vec<u32>> = texts.iter().map(|t| engine.tokenize(t).unwrap()).collect();
    let want = engine
        .embed(&inputs, kiln_engine::Pooling::default())
        .unwrap();
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    assert_eq!(float["usage"]["prompt_tokens"], tokens);
    assert_eq!(float["usage"]["total_tokens"], tokens);
    for (i, w) in want.iter().enumerate() {
        let got: Vec<f32> = serde_json::from_value(float["data"][i]["embedding"].clone()).unwrap();
        assert_eq!(&got, w, "input {i}");
        assert_eq!(got.len(), engine.model.config().hidden_size);
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            b64["data"][i]["embedding"].as_str().unwrap(),
            kiln_engine::openai::base64_encode(&bytes),
            "input {i}"
        );
    }
}
