//! [`kiln_engine::Session`] (`kiln chat`'s turns): a call reuses the KV cache of what earlier
//! calls computed, computes only the tokens after the shared prefix (counted by
//! `Completion::timings.prompt_tokens`), and gives what a fresh `generate()` gives on the whole
//! prompt: greedy and seeded sampling, after a stopped reply, after an edited history, and
//! after `forget()`. The tiny transformers fixtures (one with sliding-window layers), and the
//! real chat model through its chat template.

mod common;

use common::*;
use kiln_engine::{Completion, Engine, EngineError, GenerateParams, SamplingParams};
use kiln_tokenizer::ChatMessage;

fn fresh(e: &Engine, prompt: &[u32], params: &GenerateParams) -> Completion {
    e.generate(&[prompt.to_vec()], params, &mut |_, _| {})
        .unwrap()
        .remove(0)
}

fn turn(
    e: &Engine,
    s: &mut kiln_engine::Session,
    prompt: &[u32],
    params: &GenerateParams,
) -> Completion {
    e.session_generate(s, &[prompt.to_vec()], params, &mut |_, _| {}, &mut || false)
        .unwrap()
        .remove(0)
}

/// The tokens a finished sequence leaves in its cache: the prompt and every generated token
/// but the last (sampled, never fed back).
fn held(prompt: &[u32], c: &Completion) -> usize {
    prompt.len() + c.token_ids.len() - 1
}

fn check_session(model: &str, params: &GenerateParams) {
    let dir = test_data().join("fixtures").join(model);
    let e = engine(&dir);
    let mut s = e.session().unwrap();
    let vocab = e.model.config().vocab_size as u32;

    // Turn 1: nothing kept yet, the whole prompt is computed.
    let p1 = e.tokenize("Q: What is the largest animal?\nA:").unwrap();
    let r1 = turn(&e, &mut s, &p1, params);
    assert_eq!(r1.timings.prompt_tokens, p1.len(), "{model}: turn 1");
    assert_eq!(r1.token_ids, fresh(&e, &p1, params).token_ids, "{model}");
    assert_eq!(
        s.kept_tokens(),
        held(&p1, &r1),
        "{model}: kept after turn 1"
    );

    // Turn 2 = turn 1's prompt and reply, then new tokens: only what follows the cached part
    // is computed, and the reply is the fresh run's.
    let mut p2 = p1.clone();
    p2.extend(&r1.token_ids);
    p2.extend(e.tokenize(" And the smallest one?").unwrap().iter().skip(1));
    let r2 = turn(&e, &mut s, &p2, params);
    assert_eq!(
        r2.timings.prompt_tokens,
        p2.len() - held(&p1, &r1),
        "{model}: turn 2 computes only its new tokens"
    );
    assert_eq!(r2.token_ids, fresh(&e, &p2, params).token_ids, "{model}");

    // A reply stopped after three steps keeps what it computed: prompt and two tokens.
    let mut p3 = p2.clone();
    p3.extend(&r2.token_ids);
    p3.extend([5 % vocab, 17 % vocab, 29 % vocab]);
    let mut steps = 0;
    let stopped = e.session_generate(&mut s, &[p3.clone()], params, &mut |_, _| {}, &mut || {
        steps += 1;
        steps > 3
    });
    assert!(matches!(stopped, Err(EngineError::Cancelled)), "{model}");
    assert_eq!(s.kept_tokens(), p3.len() + 2, "{model}: kept after Ctrl-C");

    // An edited history: the prompt leaves the kept tokens in the middle of turn 2.
    let cut = p1.len() + 2;
    let mut p4 = p3[..cut].to_vec();
    p4.extend([(p3[cut] + 1) % vocab, 3 % vocab]);
    let r4 = turn(&e, &mut s, &p4, params);
    assert_eq!(r4.timings.prompt_tokens, p4.len() - cut, "{model}: turn 4");
    assert_eq!(r4.token_ids, fresh(&e, &p4, params).token_ids, "{model}");

    // forget(): a new conversation computes everything again.
    s.forget();
    assert_eq!(s.kept_tokens(), 0);
    let r5 = turn(&e, &mut s, &p2, params);
    assert_eq!(r5.timings.prompt_tokens, p2.len(), "{model}: after forget");
    assert_eq!(r5.token_ids, r2.token_ids, "{model}");
}

fn greedy() -> GenerateParams {
    GenerateParams {
        max_tokens: 12,
        ignore_eos: true,
        ..Default::default()
    }
}

#[test]
fn session_reuses_the_cache_and_equals_fresh_runs_greedy() {
    check_session("qwen2-tiny", &greedy());
    // Sliding-window layers (every other one) and soft-caps.
    check_session("arch/gemma2-tiny", &greedy());
}

#[test]
fn session_reuses_the_cache_and_equals_fresh_runs_sampled() {
    let params = GenerateParams {
        sampling: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            seed: 1234,
            ..Default::default()
        },
        ..greedy()
    };
    check_session("qwen2-tiny", &params);
}

/// The real chat model through its template: the second turn's prompt (the first turn, its
/// reply rendered by the template, a new user message) shares everything with the kept cache up
/// to the reply's end, so the second turn computes few tokens; its reply is a fresh run's.
#[test]
fn chat_turns_on_the_real_model_compute_only_the_new_message() {
    let e = engine(&real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"));
    let params = GenerateParams {
        max_tokens: 24,
        ..Default::default()
    };
    let mut s = e.session().unwrap();
    let mut history = vec![
        ChatMessage::new("system", "You are a terse assistant."),
        ChatMessage::new("user", "Name a prime number between 10 and 20."),
    ];
    let p1 = e.chat_prompt(&history).unwrap();
    let r1 = turn(&e, &mut s, &p1, &params);
    assert_eq!(r1.timings.prompt_tokens, p1.len());
    history.push(ChatMessage::new("assistant", &r1.text));
    let new = "And one between 20 and 30?";
    history.push(ChatMessage::new("user", new));
    let p2 = e.chat_prompt(&history).unwrap();
    let r2 = turn(&e, &mut s, &p2, &params);
    let computed = r2.timings.prompt_tokens;
    // The template's end-of-turn after the reply, the new user turn and the assistant header.
    let message = e.tokenizer.encode(new, false).unwrap().len();
    assert!(
        computed <= message + 12 && computed < p2.len() / 2,
        "turn 2 computed {computed} of its {} prompt tokens (the message is {message})",
        p2.len()
    );
    let again = fresh(&e, &p2, &params);
    assert_eq!(r2.token_ids, again.token_ids);
    assert_eq!(r2.text, again.text);
}
