//! Structured output and tool requests through the HTTP server, on the tiny llama-mha fixture (a
//! real Llama tokenizer over random weights: whatever it would write, the constraint holds it).
//! Tool calls themselves need a longer context than the fixture's 256 positions (the tools'
//! system prompt alone is longer): tests/server/e2e.py runs them on qwen2.5-coder-0.5b.

mod common;

use common::{fixture, post_json, sse_payloads, start_engine, TestServer};
use kiln_engine::scheduler::SchedulerConfig;
use kiln_engine::{Engine, EngineOptions};
use kiln_server::ServerOptions;
use serde_json::{json, Value};

async fn start() -> TestServer {
    let mut engine = Engine::load(
        &fixture("llama-mha"),
        &EngineOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .expect("loading the llama-mha fixture");
    // The fixture has no chat template: the chat requests here use the built-in ChatML, as
    // `kiln serve --chat-template chatml` would.
    engine.chat_template = engine
        .chat_template
        .or_else(|| kiln_tokenizer::builtin_chat_template("chatml").map(String::from));
    let cfg = SchedulerConfig {
        slots: 4,
        context: engine.limits.context,
        max_queue: 64,
        prefill_chunk: 64,
        prefix_cache: 0,
    };
    let opts = ServerOptions {
        model_id: "llama-mha".into(),
        ..Default::default()
    };
    start_engine(engine, cfg, opts).await
}

/// The chunks of a stream, parsed (without `[DONE]`).
async fn stream(c: &reqwest::Client, url: &str, body: &Value) -> Vec<Value> {
    let mut b = body.clone();
    b["stream"] = json!(true);
    let r = c.post(url).json(&b).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let chunks = sse_payloads(&r.text().await.unwrap());
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect()
}

#[tokio::test]
async fn regex_grammar_and_schema_hold_on_both_endpoints() {
    let s = start().await;
    let c = reqwest::Client::new();
    for (seed, extra) in [
        (1, json!({"regex": "(yes|no)"})),
        (
            2,
            json!({"grammar": "start: \"A\" | \"B\" \" and \" \"C\""}),
        ),
    ] {
        let mut body =
            json!({"prompt": "Answer:", "max_tokens": 16, "temperature": 1.0, "seed": seed});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (st, v) = post_json(&c, &s.url("/v1/completions"), &body).await;
        assert_eq!(st, 200, "{v}");
        let text = v["choices"][0]["text"].as_str().unwrap();
        assert!(["yes", "no", "A", "B and C"].contains(&text), "{text:?}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let chunks = stream(&c, &s.url("/v1/completions"), &body).await;
        let streamed: String = chunks
            .iter()
            .map(|o| o["choices"][0]["text"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(streamed, text);
    }
    // A JSON schema on chat: every sampled answer is an object valid against it.
    let schema = json!({"type": "object", "additionalProperties": false, "required": ["ok", "n"],
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1, "maximum": 3}}});
    for seed in 0..4 {
        let body = json!({"messages": [{"role": "user", "content": "JSON please"}], "max_tokens": 200,
            "temperature": 0.7, "seed": seed,
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": true}}});
        let (st, v) = post_json(&c, &s.url("/v1/chat/completions"), &body).await;
        assert_eq!(st, 200, "{v}");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        let out: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(out["ok"].is_boolean(), "{out}");
        assert!((1..=3).contains(&out["n"].as_i64().unwrap()), "{out}");
        assert_eq!(out.as_object().unwrap().len(), 2, "{out}");
    }
}

#[tokio::test]
async fn refused_constraints_and_tools_are_400s_naming_the_problem() {
    let s = start().await;
    let c = reqwest::Client::new();
    let chat = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let cases = [
        (
            chat(
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "s",
                "schema": {"type": "array", "uniqueItems": true}}}}),
            ),
            "uniqueItems",
            "response_format",
        ),
        (
            chat(
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name",
                "schema": {}}}}),
            ),
            "json_schema.name",
            "response_format",
        ),
        (chat(json!({"grammar": "start: ("})), "Lark", "grammar"),
        (
            chat(json!({"regex": "(", "grammar": "start: \"a\""})),
            "at most one",
            "",
        ),
        (
            chat(json!({"regex": "a+", "ignore_eos": true})),
            "ignore_eos",
            "",
        ),
        (
            chat(json!({"tools": [{"type": "function"}]})),
            "function",
            "",
        ),
        (
            chat(json!({"tools": [{"type": "function", "function": {"name": "has space"}}]})),
            "function.name",
            "tools",
        ),
        (
            chat(json!({"tools": [{"type": "code", "function": {"name": "f"}}]})),
            "type",
            "tools",
        ),
        (
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}),
            ),
            "parameters",
            "tools",
        ),
        (
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            ),
            "not in `tools`",
            "tool_choice",
        ),
        (
            chat(json!({"tool_choice": "required"})),
            "needs `tools`",
            "tool_choice",
        ),
        (
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "f",
                "parameters": {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": true}}}}}],
                "tool_choice": "required"}),
            ),
            "uniqueItems",
            "tools",
        ),
        (
            json!({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "s",
                "schema": {"type": "array", "uniqueItems": true}}}}),
            "uniqueItems",
            "response_format",
        ),
    ];
    for (body, needle, param) in cases {
        let url = if body.get("prompt").is_some() {
            s.url("/v1/completions")
        } else {
            s.url("/v1/chat/completions")
        };
        let (st, v) = post_json(&c, &url, &body).await;
        assert_eq!(st, 400, "{body}: {v}");
        let e = &v["error"];
        assert_eq!(e["type"], "invalid_request_error", "{v}");
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{needle}: {v}"
        );
        if !param.is_empty() {
            assert_eq!(e["param"], param, "{v}");
        }
    }
}
