//! What OpenAI clients read: logprob values that compare equal where they should (as
//! lm-evaluation-harness computes `is_greedy`), a key per distinct token, usage counted as
//! OpenAI counts it, and every response and stream chunk checked against OpenAI's published
//! schemas (tests/data/openai/schemas.json, extracted by tests/data/openai/extract.py).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kiln_engine::scheduler::{SchedulerConfig, Vocab};
use serde_json::{json, Value};

fn cfg() -> SchedulerConfig {
    SchedulerConfig {
        slots: 4,
        context: 256,
        max_queue: 64,
        prefill_chunk: 5,
        prefix_cache: 4,
    }
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = c.get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The JSON objects of a stream (without the final `[DONE]`, which must be there).
async fn post_stream(c: &reqwest::Client, url: &str, body: &Value) -> Vec<Value> {
    let r = c.post(url).json(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut payloads = sse_payloads(&r.text().await.unwrap());
    assert_eq!(payloads.pop().as_deref(), Some("[DONE]"));
    payloads
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect()
}

/// A prompt of token ids in which every token after the first is the model's greedy choice.
fn greedy_prompt(first: u32, len: usize) -> Vec<u32> {
    let mut p = vec![first];
    p.extend(reference_greedy(&[first], len - 1));
    assert!(!p.contains(&EOS));
    p
}

/// lm-evaluation-harness `local-completions`: `is_greedy` is
/// `token_logprob == max(top_logprobs.values())`, with JSON numbers read as Python floats (f64).
fn assert_greedy_reads_greedy(logprobs: &Value, from: usize) {
    let tokens = logprobs["token_logprobs"].as_array().unwrap();
    let tops = logprobs["top_logprobs"].as_array().unwrap();
    assert!(tokens.len() > from, "{logprobs}");
    for i in from..tokens.len() {
        let token = tokens[i].as_f64().unwrap();
        let max = tops[i]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(token, max, "position {i} is greedy: {logprobs}");
    }
}

#[tokio::test]
async fn greedy_tokens_read_as_greedy_in_completions_and_chat() {
    let s = start_fake(cfg(), fake_opts(), Duration::ZERO).await;
    let c = reqwest::Client::new();
    let prompts = vec![greedy_prompt(3, 9), greedy_prompt(17, 12)];
    let body = json!({
        "prompt": prompts, "echo": true, "logprobs": 1, "max_tokens": 1, "temperature": 0,
    });
    let (st, v) = post_json(&c, &s.url("/v1/completions"), &body).await;
    assert_eq!(st, 200, "{v}");
    for (ch, p) in v["choices"].as_array().unwrap().iter().zip(&prompts) {
        let lp = &ch["logprobs"];
        assert_eq!(lp["tokens"].as_array().unwrap().len(), p.len() + 1);
        // The first prompt token has no logprob; every later one and the generated one is greedy.
        assert!(lp["token_logprobs"][0].is_null());
        assert_greedy_reads_greedy(lp, 1);
    }

    // The generated tokens of a stream (greedy sampling) compare the same way.
    let body = json!({
        "prompt": prompts[0], "logprobs": 3, "max_tokens": 6, "temperature": 0, "stream": true,
        "ignore_eos": true,
    });
    let chunks = post_stream(&c, &s.url("/v1/completions"), &body).await;
    let mut seen = 0;
    for o in &chunks {
        let lp = &o["choices"][0]["logprobs"];
        if !lp.is_null() {
            assert_greedy_reads_greedy(lp, 0);
            seen += 1;
        }
    }
    assert_eq!(seen, 6);

    // Chat: `logprob` against the most likely `top_logprobs[].logprob`.
    let chat = |stream: bool| {
        json!({
            "messages": [{"role": "user", "content": "abc"}], "max_tokens": 5, "temperature": 0,
            "logprobs": true, "top_logprobs": 2, "stream": stream,
        })
    };
    let (st, v) = post_json(&c, &s.url("/v1/chat/completions"), &chat(false)).await;
    assert_eq!(st, 200, "{v}");
    let mut entries: Vec<Value> = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    for o in post_stream(&c, &s.url("/v1/chat/completions"), &chat(true)).await {
        if let Some(c) = o["choices"][0]["logprobs"]["content"].as_array() {
            entries.extend(c.iter().cloned());
        }
    }
    assert!(entries.len() >= 2, "{v}");
    for e in &entries {
        let max = e["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(e["logprob"].as_f64().unwrap(), max, "{e}");
    }
}

/// Letters' tokens, except that each digit token is a lone UTF-8 continuation byte (as
/// byte-fallback pieces are): all of them decode to U+FFFD.
struct BytePieces;

impl Vocab for BytePieces {
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, String> {
        Letters.encode(text, add_special)
    }
    fn decode(&self, ids: &[u32], _skip: bool) -> String {
        let b: Vec<u8> = ids.iter().flat_map(|&i| self.token_bytes(i)).collect();
        String::from_utf8_lossy(&b).into_owned()
    }
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        match id {
            26..=35 => vec![0x80 + (id - 26) as u8],
            _ => Letters.token_bytes(id),
        }
    }
    fn eos_ids(&self) -> Vec<u32> {
        Letters.eos_ids()
    }
    fn bos_id(&self) -> Option<u32> {
        None
    }
}

#[tokio::test]
async fn tokens_with_the_same_text_keep_their_own_keys_and_bytes() {
    let s = start_fake_vocab(cfg(), fake_opts(), Duration::ZERO, Arc::new(BytePieces)).await;
    let c = reqwest::Client::new();
    let body = json!({"prompt": [1, 2, 3], "logprobs": 20, "max_tokens": 4, "temperature": 0});
    let (st, v) = post_json(&c, &s.url("/v1/completions"), &body).await;
    assert_eq!(st, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let mut byte_keys = 0;
    for top in lp["top_logprobs"].as_array().unwrap() {
        let top = top.as_object().unwrap();
        // 20 distinct tokens (of 40), some of them digits: 20 keys, none of them U+FFFD.
        assert_eq!(top.len(), 20, "{top:?}");
        assert!(top.keys().all(|k| !k.contains('\u{fffd}')), "{top:?}");
        byte_keys += top.keys().filter(|k| k.starts_with("bytes:\\x8")).count();
    }
    assert!(byte_keys > 0, "{lp}");

    let body = json!({
        "messages": [{"role": "user", "content": "abc"}], "max_tokens": 4, "temperature": 0,
        "logprobs": true, "top_logprobs": 20,
    });
    let (st, v) = post_json(&c, &s.url("/v1/chat/completions"), &body).await;
    assert_eq!(st, 200, "{v}");
    let choice = &v["choices"][0];
    let ids: Vec<u32> = serde_json::from_value(choice["token_ids"].clone()).unwrap();
    let content = choice["logprobs"]["content"].as_array().unwrap();
    for (e, &id) in content.iter().zip(&ids) {
        assert_eq!(e["bytes"], json!(BytePieces.token_bytes(id)), "{e}");
        let tokens: std::collections::HashSet<&str> = e["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let bytes: Vec<u8> = serde_json::from_value(t["bytes"].clone()).unwrap();
                let token = t["token"].as_str().unwrap();
                if std::str::from_utf8(&bytes).is_err() {
                    let hex: String = bytes.iter().map(|b| format!("\\x{b:02x}")).collect();
                    assert_eq!(token, format!("bytes:{hex}"));
                }
                token
            })
            .collect();
        assert_eq!(tokens.len(), 20, "{e}");
    }
}

#[tokio::test]
async fn usage_counts_a_prompt_once_however_many_choices() {
    let s = start_fake(cfg(), fake_opts(), Duration::ZERO).await;
    let c = reqwest::Client::new();
    let usage_of = |chunks: &[Value]| chunks.last().unwrap()["usage"].clone();

    let prompts = vec![vec![1u32, 2, 3], vec![4u32, 5, 6, 7, 8]];
    let body = json!({"prompt": prompts, "n": 2, "max_tokens": 3, "seed": 5, "ignore_eos": true});
    let (st, v) = post_json(&c, &s.url("/v1/completions"), &body).await;
    assert_eq!(st, 200, "{v}");
    let expect = json!({"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20});
    assert_eq!(v["usage"], expect);
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let chunks = post_stream(&c, &s.url("/v1/completions"), &sbody).await;
    assert_eq!(usage_of(&chunks), expect);

    let body = json!({
        "messages": [{"role": "user", "content": "abc"}], "n": 3, "max_tokens": 2, "seed": 5,
        "ignore_eos": true,
    });
    let (st, v) = post_json(&c, &s.url("/v1/chat/completions"), &body).await;
    assert_eq!(st, 200, "{v}");
    let prompt_len = v["choices"][0]["prompt_token_ids"]
        .as_array()
        .unwrap()
        .len();
    let expect = json!({
        "prompt_tokens": prompt_len, "completion_tokens": 6, "total_tokens": prompt_len + 6,
    });
    assert_eq!(v["usage"], expect);
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let chunks = post_stream(&c, &s.url("/v1/chat/completions"), &sbody).await;
    assert_eq!(usage_of(&chunks), expect);
}

// ---- OpenAI's schemas -------------------------------------------------------------------

/// kiln's documented extension fields (crates/server/README.md).
const EXTENSIONS: &[&str] = &["prompt_token_ids", "token_ids", "context_length"];

fn schemas() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/openai/schemas.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["schemas"].clone()
}

/// A JSON Schema check of the keywords OpenAI's components use ($ref, type, nullable, enum,
/// anyOf/oneOf/allOf, required, properties, additionalProperties, items). Properties a schema
/// does not list are errors, except kiln's documented extensions.
fn check(defs: &Value, schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    if v.is_null() && schema["nullable"] == json!(true) {
        return;
    }
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        let target = defs.get(name).unwrap_or_else(|| panic!("no schema {name}"));
        check(defs, target, v, path, errs);
    }
    let passes = |s: &Value| {
        let mut e = Vec::new();
        check(defs, s, v, path, &mut e);
        e.is_empty()
    };
    if let Some(any) = schema["anyOf"].as_array() {
        if !any.iter().any(passes) {
            errs.push(format!("{path}: {v} matches no anyOf branch"));
        }
    }
    if let Some(one) = schema["oneOf"].as_array() {
        if one.iter().filter(|s| passes(s)).count() != 1 {
            errs.push(format!(
                "{path}: {v} does not match exactly one oneOf branch"
            ));
        }
    }
    for s in schema["allOf"].as_array().into_iter().flatten() {
        check(defs, s, v, path, errs);
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(v) {
            errs.push(format!("{path}: {v} is not one of {values:?}"));
        }
    }
    if let Some(t) = schema["type"].as_str() {
        let ok = match t {
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            other => panic!("type {other}"),
        };
        if !ok {
            errs.push(format!("{path}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(obj) = v.as_object() {
        for r in schema["required"].as_array().into_iter().flatten() {
            if !obj.contains_key(r.as_str().unwrap()) {
                errs.push(format!("{path}: required `{r}` is missing"));
            }
        }
        let props = schema["properties"].as_object();
        for (k, x) in obj {
            let p = format!("{path}.{k}");
            match (
                props.and_then(|m| m.get(k)),
                &schema["additionalProperties"],
            ) {
                (Some(s), _) => check(defs, s, x, &p, errs),
                (None, extra) if extra.is_object() => check(defs, extra, x, &p, errs),
                (None, _) if props.is_some() && !EXTENSIONS.contains(&k.as_str()) => {
                    errs.push(format!("{p}: not in OpenAI's schema"))
                }
                _ => {}
            }
        }
    }
    if let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            check(defs, items, x, &format!("{path}[{i}]"), errs);
        }
    }
}

fn assert_valid(defs: &Value, name: &str, v: &Value) {
    let mut errs = Vec::new();
    check(defs, &json!({"$ref": name}), v, name, &mut errs);
    assert!(errs.is_empty(), "{errs:#?}\n{v:#}");
}

/// Where OpenAI's own API sends what its spec does not say, kiln does as the API does:
/// - with `echo` the first prompt token has a null `token_logprobs` and `top_logprobs` entry
///   (nothing predicts it);
/// - completion streams use `CreateCompletionResponse`'s shape (the spec says so) with a null
///   `finish_reason` until a choice ends and a null `usage` before the usage chunk.
///
/// This patches those nulls in, and adds the stream's schema as `CreateCompletionStreamChunk`.
fn as_openai_sends(defs: &mut Value) {
    let nullable = |s: &mut Value| *s = json!({"anyOf": [s.clone(), {"type": "null"}]});
    let lp = &mut defs["CreateCompletionResponse"]["properties"]["choices"]["items"]["properties"]
        ["logprobs"]["anyOf"][0]["properties"];
    nullable(&mut lp["token_logprobs"]["items"]);
    nullable(&mut lp["top_logprobs"]["items"]);
    let mut s = defs["CreateCompletionResponse"].clone();
    nullable(&mut s["properties"]["choices"]["items"]["properties"]["finish_reason"]);
    nullable(&mut s["properties"]["usage"]);
    defs["CreateCompletionStreamChunk"] = s;
}

#[test]
fn the_schema_check_rejects_what_openai_would_not_send() {
    let defs = schemas();
    let mut errs = Vec::new();
    let bad = json!({"error": {"message": "m", "type": "t", "code": 3}});
    check(
        &defs,
        &json!({"$ref": "ErrorResponse"}),
        &bad,
        "e",
        &mut errs,
    );
    assert_eq!(errs.len(), 2, "{errs:?}"); // `param` missing, `code` not a string
    let mut errs = Vec::new();
    let bad = json!({"object": "list", "data": [{"id": "m", "object": "model", "created": 1,
        "owned_by": "o", "flavour": "x"}]});
    check(
        &defs,
        &json!({"$ref": "ListModelsResponse"}),
        &bad,
        "m",
        &mut errs,
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
}

#[tokio::test]
async fn every_response_and_chunk_has_openais_schema() {
    let mut defs = schemas();
    as_openai_sends(&mut defs);
    let s = start_fake(cfg(), fake_opts(), Duration::ZERO).await;
    let c = reqwest::Client::new();

    let completion = json!({
        "prompt": ["abc", "de"], "n": 2, "max_tokens": 4, "logprobs": 2, "echo": true, "seed": 1,
    });
    let (st, v) = post_json(&c, &s.url("/v1/completions"), &completion).await;
    assert_eq!(st, 200, "{v}");
    assert_valid(&defs, "CreateCompletionResponse", &v);
    let mut sbody = completion.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let chunks = post_stream(&c, &s.url("/v1/completions"), &sbody).await;
    assert!(chunks.len() > 4);
    for o in &chunks {
        assert_valid(&defs, "CreateCompletionStreamChunk", o);
    }

    let chat = json!({
        "messages": [{"role": "user", "content": "abc"}], "n": 2, "max_tokens": 4,
        "logprobs": true, "top_logprobs": 2, "seed": 1,
    });
    let (st, v) = post_json(&c, &s.url("/v1/chat/completions"), &chat).await;
    assert_eq!(st, 200, "{v}");
    assert_valid(&defs, "CreateChatCompletionResponse", &v);
    let mut sbody = chat.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let chunks = post_stream(&c, &s.url("/v1/chat/completions"), &sbody).await;
    assert!(chunks.len() > 4);
    for o in &chunks {
        assert_valid(&defs, "CreateChatCompletionStreamResponse", o);
    }

    let (st, v) = get(&c, &s.url("/v1/models")).await;
    assert_eq!(st, 200);
    assert_valid(&defs, "ListModelsResponse", &v);
    let (st, v) = get(&c, &s.url("/v1/models/hash-model")).await;
    assert_eq!(st, 200);
    assert_valid(&defs, "Model", &v);

    let (st, v) = post_json(
        &c,
        &s.url("/v1/completions"),
        &json!({"prompt": "a", "n": 0}),
    )
    .await;
    assert_eq!(st, 400);
    assert_valid(&defs, "ErrorResponse", &v);
    let (st, v) = get(&c, &s.url("/v1/models/other")).await;
    assert_eq!(st, 404);
    assert_valid(&defs, "ErrorResponse", &v);

    let (st, v) = post_json(
        &c,
        &s.url("/v1/embeddings"),
        &json!({"input": ["abc", "de"], "model": "any"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_valid(&defs, "CreateEmbeddingResponse", &v);
    let (st, v) = post_json(
        &c,
        &s.url("/v1/embeddings"),
        &json!({"input": "abc", "dimensions": 8}),
    )
    .await;
    assert_eq!(st, 400);
    assert_valid(&defs, "ErrorResponse", &v);
}
