//! Constraints (JSON schemas, Lark grammars, regular expressions through llguidance) on the
//! real qwen2.5-coder-0.5b: greedy output that already satisfies a constraint is unchanged by
//! it, constrained outputs always satisfy it (sampled, batched), a constrained request does not
//! change its batch-mates, and a grammar llguidance refuses is a clear error.

mod common;

use common::*;
use kiln_engine::batch::{Batch, BatchConfig, Event};
use kiln_engine::{
    Completion, Constraint, ConstraintSpec, Engine, EngineError, FinishReason, GenerateParams,
    SamplingParams,
};
use kiln_tokenizer::{render_chat_template, ChatMessage};
use serde_json::{json, Value};

fn qwen() -> Engine {
    let a = load_json(&test_data().join("anchors/llama-cpp-0c1e57098.json"));
    engine(&real_model(
        a["models"]["qwen2.5-coder-0.5b"]["file"].as_str().unwrap(),
    ))
}

fn chat_prompt(e: &Engine, user: &str) -> Vec<u32> {
    let t = e
        .chat_template
        .as_deref()
        .expect("qwen has a chat template");
    let text = render_chat_template(
        t,
        &[ChatMessage::new("user", user)],
        true,
        &e.tokenizer.bos_token(),
        &e.tokenizer.eos_token(),
    )
    .unwrap();
    e.tokenizer.encode(&text, true).unwrap()
}

fn with(spec: ConstraintSpec, params: GenerateParams) -> GenerateParams {
    GenerateParams {
        constraint: Some(Constraint::new(spec)),
        ..params
    }
}

/// A regular expression matching exactly `text`.
fn literal(text: &str) -> String {
    regex_syntax::escape(text)
}

#[test]
fn greedy_output_that_satisfies_a_constraint_is_unchanged() {
    let e = qwen();
    let prompt = e
        .tokenize("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n")
        .unwrap();
    let free = GenerateParams {
        max_tokens: 24,
        ..Default::default()
    };
    let base = &e
        .generate(std::slice::from_ref(&prompt), &free, &mut |_, _| {})
        .unwrap()[0];
    assert_eq!(base.finish_reason, FinishReason::Length);
    // A character class of the text's own characters: it forbids almost everything else, and
    // the text (a prefix of a longer match, as the budget ends it) satisfies it.
    let mut chars: Vec<char> = base.text.chars().collect();
    chars.sort();
    chars.dedup();
    let class: String = chars.iter().map(|c| literal(&c.to_string())).collect();
    for spec in [
        ConstraintSpec::Regex(format!("[{class}]*")),
        ConstraintSpec::Regex(format!("{}(.|\\n)*", literal(&base.text))),
        ConstraintSpec::Lark(format!("start: /[{class}]*/")),
    ] {
        let c = &e
            .generate(
                std::slice::from_ref(&prompt),
                &with(spec.clone(), free.clone()),
                &mut |_, _| {},
            )
            .unwrap()[0];
        assert_eq!(c.token_ids, base.token_ids, "{spec:?}");
        assert_eq!(c.text, base.text);
    }

    // JSON: the model's own greedy answer, already valid against the schema, comes out the same.
    let prompt = chat_prompt(
        &e,
        "Reply with only this JSON and nothing else: {\"name\": \"Ann\", \"age\": 31}",
    );
    let free = GenerateParams {
        max_tokens: 40,
        ..Default::default()
    };
    let base = &e
        .generate(std::slice::from_ref(&prompt), &free, &mut |_, _| {})
        .unwrap()[0];
    let parsed: Value = serde_json::from_str(&base.text)
        .unwrap_or_else(|_| panic!("the model's free answer is JSON: {:?}", base.text));
    assert_eq!(parsed, json!({"name": "Ann", "age": 31}));
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": false,
    });
    for spec in [
        ConstraintSpec::JsonSchema(schema),
        ConstraintSpec::JsonObject,
    ] {
        let c = &e
            .generate(
                std::slice::from_ref(&prompt),
                &with(spec.clone(), free.clone()),
                &mut |_, _| {},
            )
            .unwrap()[0];
        assert_eq!(c.token_ids, base.token_ids, "{spec:?}");
        assert_eq!(c.finish_reason, FinishReason::Stop);
    }
}

/// Checks `v` against the schema of `sampled_json_always_validates` by hand.
fn valid_order(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    for k in &keys {
        if !["customer", "items", "priority", "note"].contains(k) {
            return Err(format!("unexpected key {k}"));
        }
    }
    let customer = o.get("customer").ok_or("no customer")?;
    let name = customer["name"].as_str().ok_or("customer.name")?;
    if name.chars().count() > 20 {
        return Err("customer.name too long".into());
    }
    if customer.as_object().unwrap().len() != 1 {
        return Err("customer has extra keys".into());
    }
    let items = o.get("items").and_then(Value::as_array).ok_or("items")?;
    if items.is_empty() || items.len() > 3 {
        return Err(format!("{} items", items.len()));
    }
    for it in items {
        it["sku"].as_str().ok_or("sku")?;
        let q = it["qty"].as_i64().ok_or("qty")?;
        if !(1..=9).contains(&q) {
            return Err(format!("qty {q}"));
        }
    }
    let p = o
        .get("priority")
        .and_then(Value::as_str)
        .ok_or("priority")?;
    if !["low", "high"].contains(&p) {
        return Err(format!("priority {p}"));
    }
    if let Some(n) = o.get("note") {
        if !n.is_null() && !n.is_string() {
            return Err("note".into());
        }
    }
    Ok(())
}

#[test]
fn sampled_json_always_validates_batched_and_streamed() {
    let e = qwen();
    let schema = json!({
        "type": "object",
        "properties": {
            "customer": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}},
                         "required": ["name"], "additionalProperties": false},
            "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                "type": "object",
                "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
                               "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["sku", "qty"], "additionalProperties": false}},
            "priority": {"enum": ["low", "high"]},
            "note": {"anyOf": [{"type": "string", "maxLength": 16}, {"type": "null"}]},
        },
        "required": ["customer", "items", "priority"],
        "additionalProperties": false,
    });
    let prompt = chat_prompt(&e, "Write a small shop order as JSON.");
    // Eight sampled requests with their own seeds in one batch (the server's step); the
    // streamed text of each equals its final text.
    let jobs: Vec<(Vec<u32>, GenerateParams)> = (0..8)
        .map(|seed| {
            let p = with(
                ConstraintSpec::JsonSchema(schema.clone()),
                GenerateParams {
                    max_tokens: 160,
                    sampling: SamplingParams {
                        temperature: 1.0,
                        seed,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            );
            (prompt.clone(), p)
        })
        .collect();
    let out = run_batch(&e, jobs);
    let mut distinct = std::collections::HashSet::new();
    for (i, (c, streamed)) in out.iter().enumerate() {
        let v: Value = serde_json::from_str(&c.text)
            .unwrap_or_else(|err| panic!("#{i}: not JSON ({err}): {:?}", c.text));
        valid_order(&v).unwrap_or_else(|err| panic!("#{i}: {err}: {v}"));
        assert_eq!(streamed, &c.text);
        assert_eq!(c.finish_reason, FinishReason::Stop, "{:?}", c.text);
        distinct.insert(c.text.clone());
    }
    assert!(distinct.len() > 1, "sampling with 8 seeds gave one answer");
}

/// Runs the requests in one batch; each completion with the text its events streamed.
fn run_batch(e: &Engine, jobs: Vec<(Vec<u32>, GenerateParams)>) -> Vec<(Completion, String)> {
    let mut batch = Batch::new(
        e.model.as_ref(),
        &e.tokenizer,
        BatchConfig {
            context: 512,
            prefill_chunk: 64,
            prefix_cache: 0,
        },
    );
    let n = jobs.len();
    for (i, (prompt, params)) in jobs.into_iter().enumerate() {
        batch
            .add(e.model.as_ref(), &e.tokenizer, prompt, params, i)
            .unwrap();
    }
    let mut streamed = vec![String::new(); n];
    let mut done: Vec<Option<Completion>> = vec![None; n];
    while !batch.is_empty() {
        let r = batch
            .step(e.model.as_ref(), &e.tokenizer, &mut |&mut i, ev| {
                if let Event::Token { text, .. } = ev {
                    streamed[i].push_str(&text);
                }
            })
            .unwrap();
        for f in r.finished {
            done[f.tag] = Some(f.completion);
        }
    }
    done.into_iter().map(Option::unwrap).zip(streamed).collect()
}

#[test]
fn a_constrained_request_does_not_change_its_batch_mates() {
    let e = qwen();
    let prompt = e.tokenize("The three primary colors are").unwrap();
    let free = GenerateParams {
        max_tokens: 16,
        ..Default::default()
    };
    let alone = &e
        .generate(std::slice::from_ref(&prompt), &free, &mut |_, _| {})
        .unwrap()[0];
    let constrained = with(
        ConstraintSpec::Regex(" [a-z]+, [a-z]+ and [a-z]+\\.".into()),
        free.clone(),
    );
    let c_alone = &e
        .generate(std::slice::from_ref(&prompt), &constrained, &mut |_, _| {})
        .unwrap()[0];
    let text = &c_alone.text;
    let words: Vec<&str> = text
        .trim_end_matches('.')
        .split([',', ' '])
        .filter(|w| !w.is_empty() && *w != "and")
        .collect();
    assert_eq!(words.len(), 3, "{text:?}");
    assert!(text.ends_with('.') && text.contains(" and "), "{text:?}");
    // Through the server's path: one batch with both requests in it.
    let done = run_batch(&e, vec![(prompt.clone(), free), (prompt, constrained)]);
    assert_eq!(done[0].0.token_ids, alone.token_ids);
    assert_eq!(done[1].0.token_ids, c_alone.token_ids);
}

#[test]
fn grammars_llguidance_refuses_are_clear_errors() {
    let e = qwen();
    let prompt = e.tokenize("x").unwrap();
    let cases = [
        (
            ConstraintSpec::JsonSchema(json!({"type": "array", "uniqueItems": true})),
            "uniqueItems",
        ),
        (ConstraintSpec::Lark("start: (".into()), "Lark grammar"),
        (
            ConstraintSpec::Regex("(unclosed".into()),
            "regular expression",
        ),
    ];
    for (spec, needle) in cases {
        let err = e
            .generate(
                std::slice::from_ref(&prompt),
                &with(spec.clone(), GenerateParams::default()),
                &mut |_, _| {},
            )
            .unwrap_err();
        assert!(
            matches!(&err, EngineError::Invalid(m) if m.contains(needle)),
            "{spec:?}: {err}"
        );
    }
    let err = e
        .generate(
            std::slice::from_ref(&prompt),
            &GenerateParams {
                ignore_eos: true,
                ..with(ConstraintSpec::JsonObject, GenerateParams::default())
            },
            &mut |_, _| {},
        )
        .unwrap_err();
    assert!(err.to_string().contains("ignore_eos"), "{err}");
}
