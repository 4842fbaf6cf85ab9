//! The HTTP layer against a hash model (logits are a hash of the tokens so far): request
//! parsing, responses, streams, errors, auth, limits, queueing and cancellation.

mod common;

use std::time::Duration;

use common::*;
use kiln_engine::scheduler::SchedulerConfig;
use kiln_server::ServerOptions;
use serde_json::{json, Value};

fn cfg(slots: usize, max_queue: usize) -> SchedulerConfig {
    SchedulerConfig {
        slots,
        context: 256,
        max_queue,
        prefill_chunk: 7,
        prefix_cache: 4,
    }
}

async fn post_stream(c: &reqwest::Client, url: &str, body: &Value) -> Vec<String> {
    let r = c.post(url).json(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    sse_payloads(&r.text().await.unwrap())
}

fn assert_error(v: &Value, kind: &str) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["type"], kind, "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

#[tokio::test]
async fn completions_equal_reference_greedy_and_stream_equals_non_stream() {
    let s = start_fake(cfg(4, 16), fake_opts(), Duration::ZERO).await;
    let c = reqwest::Client::new();
    let prompt: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5];
    let body = json!({"model": "hash-model", "prompt": prompt, "max_tokens": 12, "temperature": 0});
    let (st, v) = post_json(&c, &s.url("/v1/completions"), &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let choice = &v["choices"][0];
    let expect = reference_greedy(&prompt, 12);
    let ids: Vec<u32> = serde_json::from_value(choice["token_ids"].clone()).unwrap();
    assert_eq!(ids, expect);
    let prompt_ids: Vec<u32> = serde_json::from_value(choice["prompt_token_ids"].clone()).unwrap();
    assert_eq!(prompt_ids, prompt);
    let text = choice["text"].as_str().unwrap().to_string();
    assert_eq!(text, Letters.decode_all(&expect));
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(v["usage"]["completion_tokens"], expect.len());

    // The same request streamed: text chunks concatenate to the same text.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let chunks = post_stream(&c, &s.url("/v1/completions"), &sbody).await;
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let objs: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    let mut streamed = String::new();
    let mut finish = None;
    for o in &objs[..objs.len() - 1] {
        assert_eq!(o["object"], "text_completion");
        assert!(o["usage"].is_null());
        let ch = &o["choices"][0];
        streamed.push_str(ch["text"].as_str().unwrap());
        if !ch["finish_reason"].is_null() {
            finish = Some(ch["finish_reason"].clone());
            assert_eq!(ch["token_ids"], choice["token_ids"]);
        }
    }
    assert_eq!(streamed, text);
    assert_eq!(finish.unwrap(), choice["finish_reason"]);
    let usage = objs.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], v["usage"]);
}

trait DecodeAll {
    fn decode_all(&self, ids: &[u32]) -> String;
}
impl DecodeAll for Letters {
    fn decode_all(&self, ids: &[u32]) -> String {
        use kiln_engine::scheduler::Vocab;
        self.decode(ids, true)
    }
}

#[tokio::test]
async fn prompt_forms_n_seed_echo_logprobs_and_stop() {
    let s = start_fake(cfg(3, 64), fake_opts(), Duration::ZERO).await;
    let c = reqwest::Client::new();
    let url = s.url("/v1/completions");
    // A list of strings and a list of id lists: one choice per prompt, in order.
    let (st, v) = post_json(
        &c,
        &url,
        &json!({"prompt": ["abc", "hello world"], "max_tokens": 5, "temperature": 0}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    let hello: Vec<u32> = "hello world"
        .bytes()
        .map(|b| {
            b"abcdefghijklmnopqrstuvwxyz0123456789 .\n"
                .iter()
                .position(|&a| a == b)
                .unwrap() as u32
        })
        .collect();
    assert_eq!(
        v["choices"][1]["token_ids"],
        json!(reference_greedy(&hello, 5))
    );
    let (_, v2) = post_json(
        &c,
        &url,
        &json!({"prompt": [[0, 1, 2], hello], "max_tokens": 5, "temperature": 0}),
    )
    .await;
    assert_eq!(v2["choices"][1]["token_ids"], v["choices"][1]["token_ids"]);
    assert_eq!(v2["choices"][0]["token_ids"], v["choices"][0]["token_ids"]);

    // Seeds reproduce; n choices differ from each other.
    let sampled = json!({"prompt": "abc", "max_tokens": 16, "temperature": 1.0, "seed": 7, "n": 3, "ignore_eos": true});
    let (_, a) = post_json(&c, &url, &sampled).await;
    let (_, b) = post_json(&c, &url, &sampled).await;
    for i in 0..3 {
        assert_eq!(a["choices"][i]["token_ids"], b["choices"][i]["token_ids"]);
        assert_eq!(a["choices"][i]["index"], i);
    }
    assert_ne!(a["choices"][0]["token_ids"], a["choices"][1]["token_ids"]);

    // Echo with logprobs: the prompt's tokens come first, with the hash model's log-softmax.
    let p: Vec<u32> = vec![5, 6, 7, 8];
    let (_, e) = post_json(
        &c,
        &url,
        &json!({"prompt": p, "max_tokens": 2, "temperature": 0, "echo": true, "logprobs": 2}),
    )
    .await;
    let ch = &e["choices"][0];
    assert!(ch["text"].as_str().unwrap().starts_with("fghi"));
    let lp = &ch["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    assert!(lp["token_logprobs"][0].is_null());
    for i in 1..4 {
        let l = hash_logits(&p[..i]);
        let m = l.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let lse = m + l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        let want = l[p[i] as usize] as f64 - lse;
        let got = lp["token_logprobs"][i].as_f64().unwrap();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        assert_eq!(lp["text_offset"][i], i);
        assert_eq!(lp["top_logprobs"][i].as_object().unwrap().len(), 2);
    }

    // A stop string cuts the text.
    let (_, full) = post_json(
        &c,
        &url,
        &json!({"prompt": "abc", "max_tokens": 12, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    let stop = &text[4..6];
    let (_, cut) = post_json(&c, &url, &json!({"prompt": "abc", "max_tokens": 12, "temperature": 0, "ignore_eos": true, "stop": stop})).await;
    assert_eq!(cut["choices"][0]["text"], &text[..text.find(stop).unwrap()]);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn chat_non_stream_and_stream() {
    let s = start_fake(cfg(2, 8), fake_opts(), Duration::ZERO).await;
    let c = reqwest::Client::new();
    let url = s.url("/v1/chat/completions");
    let body = json!({
        "model": "hash-model",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_completion_tokens": 8,
        "temperature": 0,
        "logprobs": true,
        "top_logprobs": 2,
    });
    let (st, v) = post_json(&c, &url, &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let ch = &v["choices"][0];
    assert_eq!(ch["message"]["role"], "assistant");
    // The prompt is ChatML (the model has no template) with characters outside the toy
    // alphabet dropped by its tokenizer.
    let rendered = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    use kiln_engine::scheduler::Vocab;
    let prompt = Letters
        .encode(
            &rendered
                .chars()
                .filter(|c| c.is_ascii_lowercase() || *c == ' ' || *c == '\n')
                .collect::<String>(),
            true,
        )
        .unwrap();
    assert_eq!(ch["prompt_token_ids"], json!(prompt));
    assert_eq!(ch["token_ids"], json!(reference_greedy(&prompt, 8)));
    let content = ch["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let chunks = post_stream(&c, &url, &sbody).await;
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let objs: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    assert_eq!(objs[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = objs
        .iter()
        .filter_map(|o| o["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, ch["message"]["content"].as_str().unwrap());
    let last = objs.last().unwrap();
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(last["choices"][0]["finish_reason"], ch["finish_reason"]);
    assert_eq!(last["choices"][0]["delta"], json!({}));
}

#[tokio::test]
async fn sixteen_concurrent_equal_sequential() {
    let s = start_fake(cfg(4, 32), fake_opts(), Duration::ZERO).await;
    let c = reqwest::Client::new();
    let url = s.url("/v1/completions");
    let bodies: Vec<Value> = (0..16u32)
        .map(|i| {
            let p: Vec<u32> = (0..(3 + i * 5) % 40)
                .map(|k| (k * 7 + i) % 38)
                .chain([i % 38])
                .collect();
            json!({"prompt": p, "max_tokens": 10 + i % 5, "temperature": 0})
        })
        .collect();
    let mut sequential = Vec::new();
    for b in &bodies {
        sequential.push(post_json(&c, &url, b).await.1["choices"][0].clone());
    }
    let handles: Vec<_> = bodies
        .iter()
        .map(|b| {
            let (c, url, b) = (c.clone(), url.clone(), b.clone());
            tokio::spawn(async move { post_json(&c, &url, &b).await.1["choices"][0].clone() })
        })
        .collect();
    for (h, seq) in handles.into_iter().zip(&sequential) {
        let got = h.await.unwrap();
        assert_eq!(got["token_ids"], seq["token_ids"]);
        assert_eq!(got["text"], seq["text"]);
        let p: Vec<u32> = serde_json::from_value(seq["prompt_token_ids"].clone()).unwrap();
        let n = seq["token_ids"].as_array().unwrap().len();
        assert_eq!(seq["token_ids"], json!(reference_greedy(&p, n.max(1))[..n]));
    }
}

#[tokio::test]
async fn malformed_requests_get_400_never_5xx() {
    let s = start_fake(cfg(2, 8), fake_opts(), Duration::ZERO).await;
    let c = reqwest::Client::new();
    for path in ["/v1/completions", "/v1/chat/completions"] {
        let url = s.url(path);
        for raw in [
            "",
            "{",
            "[]",
            "null",
            "42",
            "{\"prompt\": }",
            "\u{0}",
            "{\"messages\": 5}",
        ] {
            let r = c
                .post(&url)
                .header("content-type", "application/json")
                .body(raw)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{path} {raw:?}");
            assert_error(&r.json().await.unwrap(), "invalid_request_error");
        }
    }
    let url = s.url("/v1/completions");
    for body in [
        json!({}),
        json!({"prompt": 5}),
        json!({"prompt": "abc", "max_tokens": "ten"}),
        json!({"prompt": "abc", "max_tokens": -1}),
        json!({"prompt": "abc", "temperature": -0.5}),
        json!({"prompt": "abc", "temperature": "hot"}),
        json!({"prompt": "abc", "top_p": 0}),
        json!({"prompt": "abc", "n": 0}),
        json!({"prompt": "abc", "logprobs": 99}),
        json!({"prompt": "abc", "logit_bias": {"x": 1}}),
        json!({"prompt": "abc", "logit_bias": {"1": 1000}}),
        json!({"prompt": "abc", "logit_bias": {"100000": 1}}),
        json!({"prompt": "abc", "stop": 3}),
        json!({"prompt": []}),
        json!({"prompt": [[]]}),
        json!({"prompt": [1, 2, 99999]}),
        json!({"prompt": [-1]}),
        json!({"prompt": "abc", "presence_penalty": 5}),
    ] {
        let (st, v) = post_json(&c, &url, &body).await;
        assert_eq!(st, 400, "{body} -> {v}");
        assert_error(&v, "invalid_request_error");
    }
    let url = s.url("/v1/chat/completions");
    for body in [
        json!({"messages": []}),
        json!({"messages": [{"content": "x"}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        json!({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}),
        json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -3}),
    ] {
        let (st, v) = post_json(&c, &url, &body).await;
        assert_eq!(st, 400, "{body} -> {v}");
        assert_error(&v, "invalid_request_error");
    }
    // Unknown endpoint: 404 in the error shape.
    let (st, v) = post_json(&c, &s.url("/v2/nothing"), &json!({})).await;
    assert_eq!(st, 404);
    assert_error(&v, "invalid_request_error");
}

#[tokio::test]
async fn limits_prompt_too_long_body_too_large_queue_full() {
    let s = start_fake(cfg(1, 1), fake_opts(), Duration::ZERO).await;
    let c = reqwest::Client::new();
    let url = s.url("/v1/completions");
    let (st, v) = post_json(&c, &url, &json!({"prompt": vec![1u32; 300]})).await;
    assert_eq!(st, 400);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("300") && msg.contains("256"), "{msg}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");

    let big = json!({"prompt": "a".repeat(100_000)});
    let (st, v) = post_json(&c, &url, &big).await;
    assert_eq!(st, 413, "{v}");
    assert_error(&v, "invalid_request_error");

    // One slot, one queue place: with the engine held, a third request gets 503 + Retry-After.
    s.set_gate(true);
    let spawn = |c: reqwest::Client, url: String| {
        tokio::spawn(async move {
            post_json(&c, &url, &json!({"prompt": [1, 2], "max_tokens": 3})).await
        })
    };
    let a = spawn(c.clone(), url.clone());
    let b = spawn(c.clone(), url.clone());
    while s.state.scheduler.outstanding() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = c
        .post(&url)
        .json(&json!({"prompt": [1, 2], "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_error(&r.json().await.unwrap(), "server_error");
    s.set_gate(false);
    assert_eq!(a.await.unwrap().0, 200);
    assert_eq!(b.await.unwrap().0, 200);
}

#[tokio::test]
async fn api_key_is_required_except_for_health() {
    let mut o = fake_opts();
    o.api_key = Some("sekret".into());
    let s = start_fake(cfg(1, 4), o, Duration::ZERO).await;
    let c = reqwest::Client::new();
    let body = json!({"prompt": "abc", "max_tokens": 2});
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer sekre"),
        Some("sekret"),
    ] {
        let mut r = c.post(s.url("/v1/completions")).json(&body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key");
    }
    let r = c.get(s.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(s.url("/v1/completions"))
        .bearer_auth("sekret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = c
        .get(s.url("/v1/models"))
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["id"], "hash-model");
}

#[tokio::test]
async fn disconnect_mid_stream_frees_the_slot() {
    // Paced so the long stream is still running when the client leaves.
    let s = start_fake(
        SchedulerConfig {
            context: 4096,
            ..cfg(1, 4)
        },
        fake_opts(),
        Duration::from_millis(2),
    )
    .await;
    let c = reqwest::Client::new();
    let url = s.url("/v1/completions");
    let mut r = c
        .post(&url)
        .json(&json!({"prompt": "abc", "max_tokens": 4000, "ignore_eos": true, "stream": true, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Read a few chunks, then hang up.
    let mut got = 0;
    while got < 3 {
        let chunk = r.chunk().await.unwrap().expect("stream ended early");
        got += chunk.iter().filter(|&&b| b == b'\n').count() / 2;
    }
    drop(r);
    // The only slot is free again: another request runs to its end.
    let (st, v) = post_json(
        &c,
        &url,
        &json!({"prompt": "xyz", "max_tokens": 5, "ignore_eos": true}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["token_ids"].as_array().unwrap().len(), 5);
    let stats = s.state.scheduler.stats();
    assert_eq!(stats.cancelled, 1);
    assert!(stats.generated_tokens < 4000);

    // The metrics say so too.
    let m = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("kiln_requests_cancelled_total 1"), "{m}");
    assert!(m.contains("# TYPE kiln_time_to_first_token_seconds histogram"));
    assert!(
        m.contains("kiln_time_to_first_token_seconds_count 2"),
        "{m}"
    );
    assert!(m.contains("kiln_queue_depth 0"));
    assert!(
        m.contains("kiln_http_responses_total{endpoint=\"/v1/completions\",status=\"200\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn disconnect_while_waiting_for_a_non_stream_answer_frees_the_slot() {
    // The load test (tests/server/load.py) also drops clients that wait for a whole answer.
    let s = start_fake(
        SchedulerConfig {
            context: 4096,
            ..cfg(1, 4)
        },
        fake_opts(),
        Duration::from_millis(2),
    )
    .await;
    let url = s.url("/v1/completions");
    // At 2 ms a step this answer needs 8 s; the client gives up long before (it drops the
    // connection on its timeout), while its request runs.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = impatient
        .post(&url)
        .json(&json!({"prompt": "abc", "max_tokens": 4000, "ignore_eos": true}))
        .send()
        .await;
    assert!(r.is_err_and(|e| e.is_timeout()));
    // The only slot is free again: another request runs to its end.
    let c = reqwest::Client::new();
    let (st, v) = post_json(
        &c,
        &s.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "ignore_eos": true}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let stats = s.state.scheduler.stats();
    assert_eq!((stats.cancelled, stats.finished), (1, 1));
    assert!(stats.generated_tokens < 4000);
    assert_eq!(stats.running + stats.queued, 0);
}

#[tokio::test]
async fn shutdown_drains_open_streams() {
    let mut s = start_fake(cfg(2, 4), fake_opts(), Duration::from_millis(1)).await;
    let c = reqwest::Client::new();
    let url = s.url("/v1/completions");
    let r = c
        .post(&url)
        .json(&json!({"prompt": "abc", "max_tokens": 50, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.shutdown.take().unwrap().send(()).unwrap();
    // The open stream still runs to its end.
    let chunks = sse_payloads(&r.text().await.unwrap());
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&chunks[chunks.len() - 2]).unwrap();
    assert_eq!(
        last["choices"][0]["token_ids"].as_array().unwrap().len(),
        50
    );
    s.task.await.unwrap().unwrap();
    assert_eq!(s.state.scheduler.stats().finished, 1);
}

/// With one model loaded, any `model` value names it (as llama-server does; litellm sends
/// `local` for `openai/local`); `/v1/models` lists the id and the `--alias` names, and
/// `GET /v1/models/{id}` finds exactly those.
#[tokio::test]
async fn any_model_name_is_served_and_aliases_are_listed() {
    let s = start_fake(
        cfg(2, 8),
        ServerOptions {
            aliases: vec!["local".into(), "hash-model".into(), "gpt-4o".into()],
            ..fake_opts()
        },
        Duration::ZERO,
    )
    .await;
    let c = reqwest::Client::new();
    for model in ["gpt-9", "openai/local", "local", ""] {
        let body = json!({"model": model, "prompt": "ab", "max_tokens": 2, "temperature": 0});
        let (st, v) = post_json(&c, &s.url("/v1/completions"), &body).await;
        assert_eq!(st, 200, "{model}: {v}");
        assert_eq!(v["model"], "hash-model");
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 2});
        let (st, v) = post_json(&c, &s.url("/v1/chat/completions"), &body).await;
        assert_eq!(st, 200, "{model}: {v}");
    }
    let v: Value = c
        .get(s.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    // The id first, each name once.
    assert_eq!(ids, ["hash-model", "local", "gpt-4o"]);
    for (id, found) in [
        ("local", true),
        ("gpt-4o", true),
        ("hash-model.gguf", true),
        ("gpt-9", false),
    ] {
        let r = c
            .get(s.url(&format!("/v1/models/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status() == 200, found, "{id}");
    }
}
