//! `generate()` and the server's scheduler are one path: the same requests give the same
//! completions (ids, text, echo, logprobs, stop strings, finish reasons), whatever the
//! scheduler's chunking and admission order. Runs the tiny transformers fixtures in tests/data.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use kiln_engine::scheduler::{Event, Request, Scheduler, SchedulerConfig};
use kiln_engine::{Completion, Engine, EngineError, EngineOptions, GenerateParams, SamplingParams};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/fixtures")
        .join(name)
}

fn load(name: &str) -> Engine {
    let dir = fixture(name);
    Engine::load(
        &dir,
        &EngineOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// The character offset of each token of a prompt of valid text, by decoding its prefixes: the
/// characters of the prefix, or where the prefix ends inside a character (it decodes with a
/// U+FFFD: one per byte in Hugging Face's byte fallback) those of the last prefix that
/// ended on a character boundary.
fn prefix_offsets(engine: &Engine, ids: &[u32]) -> Vec<usize> {
    let mut last_whole = 0;
    (0..ids.len())
        .map(|k| {
            let text = engine.tokenizer.decode(&ids[..k], true);
            if !text.contains('\u{FFFD}') {
                last_whole = text.chars().count();
            }
            last_whole
        })
        .collect()
}

fn requests(engine: &Engine) -> Vec<(Vec<u32>, GenerateParams)> {
    let prompts: Vec<Vec<u32>> = [
        "Hello world",
        "Q: What is the largest animal?\nA:",
        "Grüße aus 東京 🦀, naïve café",
    ]
    .iter()
    .map(|t| engine.tokenize(t).unwrap())
    .collect();
    let echo = GenerateParams {
        max_tokens: 8,
        echo: true,
        logprobs: Some(3),
        ..Default::default()
    };
    let sampled = GenerateParams {
        max_tokens: 10,
        logprobs: Some(1),
        sampling: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 40,
            presence_penalty: 0.5,
            frequency_penalty: 0.2,
            repeat_penalty: 1.1,
            logit_bias: vec![(5, 2.0), (7, -100.0)],
            seed: 7,
            ..Default::default()
        },
        ignore_eos: true,
        ..Default::default()
    };
    // A stop string inside the greedy continuation, so that it is found and cut.
    let greedy = engine
        .generate(
            &prompts[..1],
            &GenerateParams {
                max_tokens: 12,
                ignore_eos: true,
                ..Default::default()
            },
            &mut |_, _| {},
        )
        .unwrap();
    let text = &greedy[0].text;
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "greedy text too short: {text:?}");
    let stop: String = chars[3..5].iter().collect();
    let stopped = GenerateParams {
        max_tokens: 12,
        stop: vec![stop],
        echo: true,
        ignore_eos: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    for params in [echo, sampled, stopped] {
        for p in &prompts {
            out.push((p.clone(), params.clone()));
        }
    }
    out
}

fn assert_same(a: &Completion, b: &Completion, what: &str) {
    assert_eq!(a.prompt_token_ids, b.prompt_token_ids, "{what}: prompt ids");
    assert_eq!(a.token_ids, b.token_ids, "{what}: ids");
    assert_eq!(a.text, b.text, "{what}: text");
    assert_eq!(a.prompt_text, b.prompt_text, "{what}: prompt text");
    assert_eq!(a.finish_reason, b.finish_reason, "{what}: finish reason");
    assert_eq!(
        a.prompt_logprobs, b.prompt_logprobs,
        "{what}: prompt logprobs"
    );
    assert_eq!(a.logprobs, b.logprobs, "{what}: logprobs");
}

fn check(name: &str) {
    let engine = load(name);
    let reqs = requests(&engine);
    // generate(): one request at a time, each with its own streamed text.
    let mut expected = Vec::new();
    for (prompt, params) in &reqs {
        let mut streamed = String::new();
        let c = engine
            .generate(std::slice::from_ref(prompt), params, &mut |_, t| {
                streamed.push_str(t)
            })
            .unwrap()
            .remove(0);
        assert_eq!(streamed, c.text);
        expected.push(c);
    }
    // The stop string was found and cut.
    let stopped = &expected[6];
    assert_eq!(stopped.finish_reason, kiln_engine::FinishReason::Stop);
    assert!(stopped.token_ids.len() < 12);
    // generate(): the whole batch at once.
    let prompts: Vec<Vec<u32>> = reqs.iter().map(|(p, _)| p.clone()).collect();
    for (k, params) in [&reqs[0].1, &reqs[3].1, &reqs[6].1].into_iter().enumerate() {
        let together = engine
            .generate(&prompts[..3], params, &mut |_, _| {})
            .unwrap();
        for (i, c) in together.iter().enumerate() {
            assert_same(
                c,
                &expected[k * 3 + i],
                &format!("{name} batch {k} prompt {i}"),
            );
        }
    }
    // Echoed offsets are those of the decoded prefix, on a prompt with multi-byte characters.
    let multi = &expected[2];
    let plp = multi.prompt_logprobs.as_ref().unwrap();
    assert_eq!(
        multi.prompt_text,
        engine.tokenizer.decode(&prompts[2], true)
    );
    assert!(!multi.prompt_text.contains('\u{FFFD}'));
    let want = prefix_offsets(&engine, &prompts[2]);
    for (k, t) in plp.iter().enumerate() {
        assert_eq!(t.id, prompts[2][k]);
        assert_eq!(t.text_offset, want[k], "{name}: offset of prompt token {k}");
    }
    // The prompt has characters split across byte tokens, so the case is covered.
    assert!((1..want.len()).any(|k| {
        engine
            .tokenizer
            .decode(&prompts[2][..k], true)
            .contains('\u{FFFD}')
    }));
    let gen = multi.logprobs.as_ref().unwrap();
    assert_eq!(gen[0].text_offset, multi.prompt_text.chars().count());

    // The server's scheduler: all requests at once, few slots, small prefill chunks, a prefix
    // cache, so that sequences are admitted late and prefilled across steps.
    let Engine {
        model, tokenizer, ..
    } = engine;
    let scheduler = Scheduler::start(
        model,
        Arc::new(tokenizer),
        SchedulerConfig {
            slots: 3,
            context: 512,
            max_queue: 64,
            prefill_chunk: 5,
            prefix_cache: 2,
        },
    );
    let mut pending = Vec::new();
    for (prompt, params) in &reqs {
        let (tx, rx) = mpsc::channel();
        let ticket = scheduler
            .submit(Request {
                prompt: prompt.clone(),
                params: params.clone(),
                sink: Box::new(move |e| tx.send(e).is_ok()),
            })
            .unwrap();
        pending.push((ticket, rx));
    }
    for (i, (_ticket, rx)) in pending.iter().enumerate() {
        let mut streamed = String::new();
        let got = loop {
            match rx.recv_timeout(Duration::from_secs(120)).unwrap() {
                Event::Token { text, .. } => streamed.push_str(&text),
                Event::Prompt { .. } => {}
                Event::Done { completion, .. } => break completion,
                Event::Error(e) => panic!("request {i}: {e}"),
            }
        };
        assert_same(&got, &expected[i], &format!("{name} scheduler request {i}"));
        assert_eq!(streamed, got.text);
    }
    scheduler.shutdown();
}

#[test]
fn generate_equals_the_scheduler_llama() {
    check("llama-mha");
}

#[test]
fn generate_equals_the_scheduler_qwen2() {
    check("qwen2-tiny");
}

#[test]
fn generate_refuses_logit_bias_outside_the_vocabulary() {
    let engine = load("llama-mha");
    let vocab = engine.model.config().vocab_size as u32;
    let mut params = GenerateParams::default();
    params.sampling.logit_bias = vec![(vocab, 1.0)];
    let prompt = engine.tokenize("Hello").unwrap();
    match engine.generate(&[prompt], &params, &mut |_, _| {}) {
        Err(EngineError::Invalid(msg)) => {
            assert!(
                msg.contains("logit_bias") && msg.contains(&vocab.to_string()),
                "{msg}"
            )
        }
        other => panic!("expected an error, got {other:?}"),
    }
}
