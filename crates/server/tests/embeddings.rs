//! `/v1/embeddings` refuses what it cannot honour with OpenAI-shaped 400s, and a chat request to
//! a model without a chat template is a 400 (no format is guessed).

mod common;

use std::time::Duration;

use common::*;
use kiln_engine::scheduler::SchedulerConfig;
use serde_json::{json, Value};

fn cfg() -> SchedulerConfig {
    SchedulerConfig {
        slots: 2,
        context: 32,
        max_queue: 8,
        prefill_chunk: 5,
        prefix_cache: 2,
    }
}

#[tokio::test]
async fn embedding_requests_kiln_cannot_honour_are_400s() {
    let s = start_fake(cfg(), fake_opts(), Duration::ZERO).await;
    let c = reqwest::Client::new();
    let url = s.url("/v1/embeddings");
    let long = "a".repeat(33);
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"input": "abc", "dimensions": 4}),
            "dimensions",
            "not supported",
        ),
        (
            json!({"input": "abc", "encoding_format": "int8"}),
            "encoding_format",
            "float",
        ),
        (json!({"input": []}), "input", "empty list"),
        (json!({"input": ""}), "input", "empty strings"),
        (json!({"input": ["abc", ""]}), "input", "empty strings"),
        (json!({"input": [[]]}), "input", "no tokens"),
        (
            json!({"input": [1, 2, 40]}),
            "input",
            "outside the vocabulary",
        ),
        (json!({"input": long}), "input", "context length"),
        (
            json!({"input": "abc", "normalize": false}),
            "",
            "unknown field",
        ),
        (json!({"input": 5}), "", "Invalid request"),
        (json!({"model": "x"}), "", "missing field `input`"),
    ];
    for (body, param, needle) in cases {
        let (st, v) = post_json(&c, &url, &body).await;
        assert_eq!(st, 400, "{body}: {v}");
        let e = &v["error"];
        assert_eq!(e["type"], "invalid_request_error", "{body}: {v}");
        if !param.is_empty() {
            assert_eq!(e["param"], param, "{body}: {v}");
        }
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let too_many: Vec<&str> = vec!["a"; 2049];
    let (st, v) = post_json(&c, &url, &json!({"input": too_many})).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("2048"));
    // Still answering well-formed requests, in input order, with usage.
    let (st, v) = post_json(
        &c,
        &url,
        &json!({"input": ["abc", "de", "z"], "user": "u1"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "hash-model");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(d["object"], "embedding");
        // hidden_size 1, unit length.
        assert_eq!(d["embedding"].as_array().unwrap().len(), 1);
        assert_eq!(d["embedding"][0].as_f64().unwrap().abs(), 1.0);
    }
    assert_eq!(v["usage"], json!({"prompt_tokens": 6, "total_tokens": 6}));
}

#[tokio::test]
async fn chat_without_a_template_is_a_400_not_a_guess() {
    let s = start_fake_with_template(cfg(), fake_opts(), Duration::ZERO, None).await;
    let c = reqwest::Client::new();
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let (st, v) = post_json(&c, &s.url("/v1/chat/completions"), &body).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "chat_template_missing");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("--chat-template"), "{msg}");
    assert!(msg.contains("chatml, llama2, llama3, gemma"), "{msg}");
    // Completions still work.
    let (st, v) = post_json(
        &c,
        &s.url("/v1/completions"),
        &json!({"prompt": "hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
}
