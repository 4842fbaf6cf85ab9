//! Speculative decoding (a draft model, prompt lookup, the draft model checking lookup's
//! proposals): greedy output is plain decoding's token
//! for token (ids, logprobs, finish reasons; one prompt or a batch; through `generate()` and the
//! scheduler), and sampled output follows the model's distribution exactly (chi-square over many
//! seeded draws against the distribution computed from the model's logits). Runs the tiny
//! transformers fixtures in tests/data and the real models (pulled on first use).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use common::*;
use kiln_engine::generate::generate_with_draft;
use kiln_engine::sampler::Sampler;
use kiln_engine::scheduler::{Event, Request, Scheduler, SchedulerConfig};
use kiln_engine::{
    Completion, DraftVocab, Engine, EngineError, EngineOptions, GenerateParams, SamplingParams,
    Speculation,
};
use kiln_formats::ModelConfig;
use kiln_models::{CausalLM, KvType, Logits, ModelError, SeqInput};

fn fixture(name: &str) -> PathBuf {
    test_data().join("fixtures").join(name)
}

fn synthetic(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/synthetic")
        .join(name)
}

fn load(path: &Path, draft: Option<&Path>) -> Engine {
    load_vocab(path, draft, DraftVocab::default())
}

/// [`load`] with the draft's output layer over `draft_vocab`.
fn load_vocab(path: &Path, draft: Option<&Path>, draft_vocab: DraftVocab) -> Engine {
    Engine::load(
        path,
        &EngineOptions {
            threads: 2,
            draft_model: draft.map(Path::to_path_buf),
            draft_vocab,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Prompts with repeated stretches (so that prompt lookup finds matches) and without.
const PROMPTS: [&str; 4] = [
    "Hello world",
    "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return",
    "the cat sat on the mat. the cat sat on the mat. the cat",
    "Q: What is the largest animal?\nA:",
];

/// A fixed, token-dependent shift of the logits: a draft distribution near the model's but not
/// equal to it (the tiny fixtures are random models that agree with no other model, so another
/// fixture's drafts are all rejected).
fn perturb(row: &mut [f32]) {
    for (i, v) in row.iter_mut().enumerate() {
        *v += ((i * 7919) % 13) as f32 * 0.12 - 0.7;
    }
}

/// A model whose logits are perturbed ([`perturb`]): the draft for its own unperturbed self.
struct Perturbed(Box<dyn CausalLM>);

impl CausalLM for Perturbed {
    fn config(&self) -> &ModelConfig {
        self.0.config()
    }
    fn kv_type(&self) -> KvType {
        self.0.kv_type()
    }
    fn forward(&self, batch: &mut [SeqInput<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        let start = logits.len();
        self.0.forward(batch, logits)?;
        let v = self.logit_rows();
        logits[start..].chunks_exact_mut(v).for_each(perturb);
        Ok(())
    }
    fn n_threads(&self) -> usize {
        self.0.n_threads()
    }
    fn logit_rows(&self) -> usize {
        self.0.logit_rows()
    }
    fn limit_logits(&mut self, rows: usize) -> Result<usize, ModelError> {
        self.0.limit_logits(rows)
    }
}

fn perturbed(path: &Path) -> Arc<dyn CausalLM> {
    Arc::new(Perturbed(load(path, None).model))
}

/// [`perturbed`] with its output layer restricted to the first `rows` ids (the proposal is
/// then 0 outside them).
fn perturbed_prefix(path: &Path, rows: usize) -> Arc<dyn CausalLM> {
    let mut m = Perturbed(load(path, None).model);
    assert_eq!(m.limit_logits(rows).unwrap(), rows);
    Arc::new(m)
}

/// `engine.generate` with `draft` as the draft model.
fn generate_drafting(
    engine: &Engine,
    draft: &Arc<dyn CausalLM>,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
) -> Vec<Completion> {
    generate_with_draft(
        engine.model.as_ref(),
        Some(draft.clone()),
        &engine.tokenizer,
        engine.limits,
        prompts,
        params,
        &mut |_, _| {},
    )
    .unwrap()
}

fn spec(draft_model: bool, lookup: usize, draft_max: usize, p_min: f32) -> Speculation {
    Speculation {
        draft_model,
        draft_max,
        draft_min: 0,
        p_min,
        lookup_ngram: lookup,
    }
}

fn greedy(max_tokens: usize, speculation: Speculation) -> GenerateParams {
    GenerateParams {
        max_tokens,
        ignore_eos: true,
        logprobs: Some(2),
        speculation,
        ..Default::default()
    }
}

fn same(a: &[Completion], b: &[Completion], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.token_ids, y.token_ids, "{what}: prompt {i} tokens");
        assert_eq!(x.text, y.text, "{what}: prompt {i} text");
        assert_eq!(x.finish_reason, y.finish_reason, "{what}: prompt {i}");
        assert_eq!(x.logprobs, y.logprobs, "{what}: prompt {i} logprobs");
    }
}

/// Greedy decoding of every prompt, alone and as one batch, with each draft source, equals
/// plain decoding; the drafts are really used (some verified, some accepted).
fn check_greedy_identity(target: &Path, draft: &Path) {
    let engine = load(target, Some(draft));
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| engine.tokenize(p).unwrap())
        .collect();
    let plain = engine
        .generate(&prompts, &greedy(40, Speculation::off()), &mut |_, _| {})
        .unwrap();
    for (what, sp) in [
        ("draft model", spec(true, 0, 6, 0.0)),
        ("draft model, p_min 0.02", spec(true, 0, 16, 0.02)),
        ("prompt lookup", spec(false, 3, 8, 0.0)),
        ("draft model checking lookup", spec(true, 2, 4, 0.0)),
        (
            "draft model checking lookup, p_min 0.02",
            spec(true, 3, 16, 0.02),
        ),
    ] {
        let batch = engine
            .generate(&prompts, &greedy(40, sp.clone()), &mut |_, _| {})
            .unwrap();
        same(&plain, &batch, &format!("{what}, batch"));
        let drafted: usize = batch.iter().map(|c| c.timings.draft_tokens).sum();
        let accepted: usize = batch.iter().map(|c| c.timings.draft_accepted).sum();
        eprintln!("{what}: {accepted} of {drafted} drafts accepted");
        assert!(
            drafted > 0 && accepted <= drafted,
            "{what}: {accepted} of {drafted}"
        );
        for (i, p) in prompts.iter().enumerate() {
            let one = engine
                .generate(
                    std::slice::from_ref(p),
                    &greedy(40, sp.clone()),
                    &mut |_, _| {},
                )
                .unwrap();
            same(&plain[i..i + 1], &one, &format!("{what}, prompt {i} alone"));
        }
    }
    // A draft near the model (its own perturbed logits): drafts both kept and replaced.
    let near = perturbed(target);
    for sp in [spec(true, 0, 5, 0.0), spec(true, 0, 16, 0.3)] {
        let p_min = sp.p_min;
        let fast = generate_drafting(&engine, &near, &prompts, &greedy(40, sp.clone()));
        same(&plain, &fast, "perturbed self-draft");
        let drafted: usize = fast.iter().map(|c| c.timings.draft_tokens).sum();
        let accepted: usize = fast.iter().map(|c| c.timings.draft_accepted).sum();
        eprintln!("perturbed self-draft, p_min {p_min}: {accepted} of {drafted} drafts accepted");
        if p_min == 0.0 {
            assert!(
                accepted > 0 && accepted < drafted,
                "{accepted} of {drafted}"
            );
        }
        // Checking lookup's proposals with the draft model changes how many passes drafting
        // takes, not the greedy drafts: the draft's own choices, the same bit for bit in a
        // batched pass (batch invariance), so the same drafts are verified and kept.
        for n in [1, 3] {
            let both = Speculation {
                lookup_ngram: n,
                ..sp.clone()
            };
            let checked = generate_drafting(&engine, &near, &prompts, &greedy(40, both));
            same(&plain, &checked, "perturbed self-draft checking lookup");
            for (i, (a, b)) in fast.iter().zip(&checked).enumerate() {
                assert_eq!(
                    (a.timings.draft_tokens, a.timings.draft_accepted),
                    (b.timings.draft_tokens, b.timings.draft_accepted),
                    "prompt {i}, p_min {p_min}, lookup {n}: the drafts differ"
                );
            }
        }
    }
    // Penalties and a context that ends generation: still the plain tokens.
    let mut params = greedy(40, Speculation::off());
    params.sampling.repeat_penalty = 1.3;
    params.sampling.presence_penalty = 0.4;
    let short = Engine::load(
        target,
        &EngineOptions {
            threads: 2,
            context: Some(56),
            draft_model: Some(draft.to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    for e in [&engine, &short] {
        let plain = e.generate(&prompts, &params, &mut |_, _| {}).unwrap();
        let mut sp = params.clone();
        sp.speculation = spec(true, 3, 5, 0.0);
        let fast = e.generate(&prompts, &sp, &mut |_, _| {}).unwrap();
        same(&plain, &fast, "penalties / short context");
    }
}

#[test]
fn greedy_is_plain_decoding_on_llama_fixture() {
    // gqa-tied shares llama-mha's tokenizer: a different model, so drafts are also rejected.
    check_greedy_identity(&fixture("llama-mha"), &synthetic("gqa-tied"));
}

#[test]
fn greedy_is_plain_decoding_on_qwen2_fixture() {
    check_greedy_identity(&fixture("qwen2-tiny"), &synthetic("llama3-rope"));
}

#[test]
fn a_model_drafting_for_itself_has_every_draft_accepted() {
    // The model verifies k tokens in one pass and drafts them one per pass: the same logits
    // bit for bit (batch invariance), so greedy drafts are never rejected.
    let dir = fixture("qwen2-tiny");
    let engine = load(&dir, Some(&dir));
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| engine.tokenize(p).unwrap())
        .collect();
    let out = engine
        .generate(&prompts, &greedy(40, spec(true, 0, 7, 0.0)), &mut |_, _| {})
        .unwrap();
    for c in &out {
        assert!(c.timings.draft_tokens > 0);
        assert_eq!(c.timings.draft_accepted, c.timings.draft_tokens);
    }
}

#[test]
fn a_draft_with_another_vocabulary_is_refused() {
    let e = Engine::load(
        &fixture("llama-mha"),
        &EngineOptions {
            draft_model: Some(fixture("qwen2-tiny")),
            ..Default::default()
        },
    );
    match e {
        Err(EngineError::Invalid(m)) => {
            assert!(m.contains("draft model") && m.contains("vocabulary"), "{m}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a draft with another tokenizer was accepted"),
    }
}

#[test]
fn bad_speculation_settings_are_refused() {
    let engine = load(&fixture("llama-mha"), None);
    let p = vec![engine.tokenize("Hello").unwrap()];
    for (sp, want) in [
        (spec(true, 0, 65, 0.5), "draft_max"),
        (spec(true, 17, 4, 0.5), "lookup_ngram"),
        (spec(true, 0, 4, 1.5), "p_min"),
        (
            Speculation {
                draft_min: 5,
                ..spec(true, 0, 4, 0.5)
            },
            "draft_min",
        ),
    ] {
        let e = engine
            .generate(&p, &greedy(4, sp), &mut |_, _| {})
            .unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}

/// The scheduler (the server's path) gives `generate()`'s speculative results, with requests
/// drafting beside requests that do not.
#[test]
fn scheduler_speculates_per_request() {
    let engine = load(&fixture("llama-mha"), Some(&synthetic("gqa-tied")));
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| engine.tokenize(p).unwrap())
        .collect();
    let plain = engine
        .generate(&prompts, &greedy(24, Speculation::off()), &mut |_, _| {})
        .unwrap();
    let Engine {
        model,
        tokenizer,
        draft,
        ..
    } = engine;
    let scheduler = Scheduler::start_with_draft(
        model,
        draft,
        Arc::new(tokenizer),
        SchedulerConfig {
            slots: 3,
            context: 256,
            prefill_chunk: 5,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rxs = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let sp = if i % 2 == 0 {
            spec(true, 2, 5, 0.0)
        } else {
            Speculation::off()
        };
        let (tx, rx) = mpsc::channel();
        let ticket = scheduler
            .submit(Request {
                prompt: p.clone(),
                params: greedy(24, sp),
                sink: Box::new(move |e| tx.send(e).is_ok()),
            })
            .unwrap();
        rxs.push((ticket, rx));
    }
    let mut out = Vec::new();
    for (_ticket, rx) in rxs {
        let mut streamed = Vec::new();
        loop {
            match rx.recv().unwrap() {
                Event::Token { id, .. } => streamed.push(id),
                Event::Done { completion, .. } => {
                    assert_eq!(streamed, completion.token_ids, "every token is streamed");
                    out.push(completion);
                    break;
                }
                Event::Error(e) => panic!("{e}"),
                Event::Prompt { .. } => {}
            }
        }
    }
    same(&plain, &out, "scheduler");
    assert!(out[0].timings.draft_tokens > 0 && out[1].timings.draft_tokens == 0);
    let stats = scheduler.stats();
    let drafted: usize = out.iter().map(|c| c.timings.draft_tokens).sum();
    let accepted: usize = out.iter().map(|c| c.timings.draft_accepted).sum();
    assert_eq!(stats.draft_tokens as usize, drafted);
    assert_eq!(stats.draft_accepted as usize, accepted);
    scheduler.shutdown();
}

/// Pearson's chi-square of `counts` (n draws) against probabilities `p`, cells with expected
/// counts under 5 merged into one; returns (statistic, degrees of freedom).
fn chi_square(counts: &[usize], p: &[f64]) -> (f64, usize) {
    let n: usize = counts.iter().sum();
    let (mut stat, mut cells) = (0.0, 0);
    let (mut small_obs, mut small_exp) = (0.0, 0.0);
    for (&c, &q) in counts.iter().zip(p) {
        let e = q * n as f64;
        if e < 5.0 {
            small_obs += c as f64;
            small_exp += e;
        } else {
            stat += (c as f64 - e).powi(2) / e;
            cells += 1;
        }
    }
    if small_exp > 0.0 {
        stat += (small_obs - small_exp).powi(2) / small_exp;
        cells += 1;
    }
    (stat, cells - 1)
}

/// The chi-square quantile at 1 - 1e-4 (Wilson–Hilferty).
fn chi_square_critical(df: usize) -> f64 {
    let k = df as f64;
    let z = 3.719; // the standard normal's 1 - 1e-4 quantile
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// The exact distribution of the first `n` generated tokens: every sequence of tokens the
/// sampler can choose, with its probability (the sampler's transforms, penalties included, on
/// the model's logits after each prefix).
fn exact_joint(
    engine: &Engine,
    prompt: &[u32],
    sampling: &SamplingParams,
    n: usize,
    shift: bool,
) -> Vec<(Vec<u32>, f64)> {
    let mut out = vec![(Vec::new(), 1.0)];
    for _ in 0..n {
        let mut next = Vec::new();
        for (seq, p) in out {
            let mut tokens = prompt.to_vec();
            tokens.extend(&seq);
            let mut logits = all_logits(engine, &tokens).pop().unwrap();
            if shift {
                perturb(&mut logits);
            }
            let mut s = Sampler::new(sampling.clone());
            tokens.iter().for_each(|&t| s.observe(t));
            let (dist, _) = s.distribution(&logits);
            for (t, q) in dist {
                let mut longer = seq.clone();
                longer.push(t);
                next.push((longer, p * q));
            }
        }
        out = next;
    }
    out
}

/// Draws `draws` seeded completions of `n` tokens (drafting with `draft`, or by prompt lookup)
/// and compares their frequencies with the model's exact distribution (and, to show the test
/// can fail, with the perturbed model's, which the draft model follows).
#[allow(clippy::too_many_arguments)]
fn check_distribution(
    engine: &Engine,
    draft: &Arc<dyn CausalLM>,
    prompt: Vec<u32>,
    sampling: SamplingParams,
    sp: Speculation,
    n: usize,
    draws: u64,
    must_accept: bool,
) {
    let joint = exact_joint(engine, &prompt, &sampling, n, false);
    let index: std::collections::HashMap<Vec<u32>, usize> = joint
        .iter()
        .enumerate()
        .map(|(i, (s, _))| (s.clone(), i))
        .collect();
    let mut counts = vec![0usize; joint.len()];
    let (mut drafted, mut accepted) = (0, 0);
    for seed in 0..draws {
        let params = GenerateParams {
            max_tokens: n,
            ignore_eos: true,
            sampling: SamplingParams {
                seed,
                ..sampling.clone()
            },
            speculation: sp.clone(),
            ..Default::default()
        };
        let c = generate_drafting(engine, draft, std::slice::from_ref(&prompt), &params);
        let c = &c[0];
        drafted += c.timings.draft_tokens;
        accepted += c.timings.draft_accepted;
        let i = *index
            .get(&c.token_ids)
            .unwrap_or_else(|| panic!("{:?} has probability 0", c.token_ids));
        counts[i] += 1;
    }
    // Drafts were made and verified, and (with a draft model) both kept and replaced: the
    // test exercises the acceptance test and the residual distribution.
    assert!(
        drafted >= draws as usize && accepted < drafted && (accepted > 0 || !must_accept),
        "{accepted} of {drafted} drafts accepted"
    );
    let p: Vec<f64> = joint.iter().map(|(_, q)| *q).collect();
    let (stat, df) = chi_square(&counts, &p);
    let critical = chi_square_critical(df);
    eprintln!(
        "chi-square {stat:.1} on {df} df (critical {critical:.1}); acceptance {accepted}/{drafted}"
    );
    assert!(
        stat < critical,
        "speculative samples do not follow the model: chi-square {stat:.1} ≥ {critical:.1} ({df} df)"
    );
    // The same counts against the draft's distribution are far off: the test has power.
    let other = exact_joint(engine, &prompt, &sampling, n, true);
    let q: Vec<f64> = joint
        .iter()
        .map(|(s, _)| other.iter().find(|(t, _)| t == s).map_or(1e-12, |e| e.1))
        .collect();
    let (stat, df) = chi_square(&counts, &q);
    assert!(stat > chi_square_critical(df), "{stat:.1} on {df} df");
}

/// `prompt` with every token that can be sampled first also earlier in the prompt, followed by
/// two tokens: prompt lookup then always drafts after the first token (the fixtures are random
/// models, whose output would otherwise rarely repeat the prompt).
fn with_lookup_matches(
    engine: &Engine,
    mut prompt: Vec<u32>,
    sampling: &SamplingParams,
) -> Vec<u32> {
    for _ in 0..20 {
        let first = exact_joint(engine, &prompt, sampling, 1, false);
        let missing: Vec<u32> = first
            .iter()
            .map(|(s, _)| s[0])
            .filter(|t| !prompt[..prompt.len() - 2].contains(t))
            .collect();
        if missing.is_empty() {
            return prompt;
        }
        // Each followed by its likely continuation, so that some drafts are accepted.
        for t in missing {
            let mut after = prompt.clone();
            after.push(t);
            for _ in 0..2 {
                let row = all_logits(engine, &after).pop().unwrap();
                after.push(kiln_engine::sampler::argmax(&row));
            }
            let n = after.len();
            prompt.splice(1..1, [t, after[n - 2], after[n - 1]]);
        }
    }
    panic!("no prompt found whose first tokens all occur in it");
}

#[test]
fn sampled_speculative_output_follows_the_model() {
    // llama-mha drafted for by its perturbed self: q near p but not p.
    let engine = load(&fixture("llama-mha"), None);
    let draft = perturbed(&fixture("llama-mha"));
    let sampling = SamplingParams {
        temperature: 1.3,
        top_k: 3,
        ..Default::default()
    };
    // Four tokens: the first comes from the prompt's pass, the others from drafts of at most
    // two, verified (with one more token after a fully accepted draft).
    let prompt = engine.tokenize("the cat sat on the mat. the cat").unwrap();
    check_distribution(
        &engine,
        &draft,
        prompt.clone(),
        sampling.clone(),
        spec(true, 0, 2, 0.0),
        4,
        3000,
        true,
    );
    // With penalties, top-p and min-p, and prompt lookup's fixed drafts (point masses).
    let sampling = SamplingParams {
        temperature: 0.9,
        top_k: 4,
        top_p: 0.95,
        min_p: 0.02,
        presence_penalty: 0.7,
        repeat_penalty: 1.1,
        ..Default::default()
    };
    let prompt = with_lookup_matches(&engine, prompt, &sampling);
    check_distribution(
        &engine,
        &draft,
        prompt.clone(),
        sampling.clone(),
        spec(false, 2, 2, 0.0),
        3,
        3000,
        true,
    );
    // Both: lookup's proposal kept (as point masses) where the draft's most likely token is
    // the proposed one, the draft's own draws from its distribution after that.
    check_distribution(
        &engine,
        &draft,
        prompt,
        sampling,
        spec(true, 2, 2, 0.0),
        3,
        3000,
        true,
    );
}

#[test]
fn sampled_speculation_is_reproducible_for_a_seed() {
    let engine = load(&fixture("qwen2-tiny"), Some(&synthetic("llama3-rope")));
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| engine.tokenize(p).unwrap())
        .collect();
    let params = GenerateParams {
        max_tokens: 30,
        ignore_eos: true,
        sampling: SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            seed: 42,
            ..Default::default()
        },
        speculation: spec(true, 2, 4, 0.0),
        ..Default::default()
    };
    let a = engine.generate(&prompts, &params, &mut |_, _| {}).unwrap();
    let b = engine.generate(&prompts, &params, &mut |_, _| {}).unwrap();
    same(&a, &b, "same seed");
    // A request's result does not depend on its batch-mates.
    for (i, p) in prompts.iter().enumerate() {
        let one = engine
            .generate(std::slice::from_ref(p), &params, &mut |_, _| {})
            .unwrap();
        same(&a[i..i + 1], &one, "alone");
    }
}

/// Real models: qwen2.5-coder-0.5b drafting for itself (the degenerate case: every draft is
/// the model's own greedy token; over its first 32768 ids, every draft the model's choice is
/// in; also checking lookup's proposals, batched) and prompt lookup on gemma3-270m and
/// qwen2.5-coder-0.5b give plain decoding's tokens.
#[test]
fn greedy_is_plain_decoding_on_real_models() {
    let code = "Rename the variable `total` to `sum` in this function:\n\n\
                def mean(values):\n    total = 0\n    for v in values:\n        total += v\n    \
                return total / len(values)\n\nAnswer:\n\ndef mean(values):\n";
    let qwen = real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let gemma = real_model("gemma-3-270m-q4_k_m.gguf");
    for (model, draft) in [(&qwen, Some(&qwen)), (&gemma, None)] {
        let engine = load_vocab(model, draft.map(PathBuf::as_path), DraftVocab::Full);
        let prompts = vec![
            engine.tokenize(code).unwrap(),
            engine.tokenize("def fibonacci(n):").unwrap(),
        ];
        let plain = engine
            .generate(&prompts, &greedy(48, Speculation::off()), &mut |_, _| {})
            .unwrap();
        let mut sps = vec![("prompt lookup", spec(false, 3, 10, 0.0))];
        if draft.is_some() {
            sps.push(("itself as draft", spec(true, 0, 6, 0.0)));
            sps.push(("itself as draft checking lookup", spec(true, 3, 6, 0.0)));
        }
        let mut counts = Vec::new();
        for (what, sp) in sps {
            let fast = engine
                .generate(&prompts, &greedy(48, sp), &mut |_, _| {})
                .unwrap();
            same(&plain, &fast, what);
            let drafted: usize = fast.iter().map(|c| c.timings.draft_tokens).sum();
            let accepted: usize = fast.iter().map(|c| c.timings.draft_accepted).sum();
            eprintln!("{what}: {accepted} of {drafted}");
            assert!(accepted > 0, "{what}: {accepted} of {drafted}");
            if what.starts_with("itself as draft") {
                assert_eq!(accepted, drafted, "{what}");
                counts.push(drafted);
            }
        }
        // The batched check of lookup's proposals drafts what the draft drafts one by one.
        if let [alone, checked] = counts[..] {
            assert_eq!(alone, checked, "itself as draft, with and without lookup");
        }
        if draft.is_some() {
            let part = load_vocab(
                model,
                draft.map(PathBuf::as_path),
                DraftVocab::Prefix(32768),
            );
            assert_eq!(part.draft.as_ref().unwrap().logit_rows(), 32768);
            let fast = part
                .generate(&prompts, &greedy(48, spec(true, 0, 6, 0.0)), &mut |_, _| {})
                .unwrap();
            same(&plain, &fast, "itself as draft over 32768 ids");
            let drafted: usize = fast.iter().map(|c| c.timings.draft_tokens).sum();
            let accepted: usize = fast.iter().map(|c| c.timings.draft_accepted).sum();
            eprintln!("itself as draft over 32768 ids: {accepted} of {drafted}");
            // Every draft kept when every choice of the model is among the draft's ids.
            let inside = plain.iter().flat_map(|c| &c.token_ids).all(|&t| t < 32768);
            assert!(
                accepted > 0 && (!inside || accepted == drafted),
                "{accepted} of {drafted}"
            );
        }
    }
}

/// The logits rows of `tokens`: the first `prefill` computed in one pass (every row), the
/// others decoded one at a time, as a draft computes them.
fn logits_of(model: &dyn CausalLM, tokens: &[u32], prefill: usize) -> Vec<Vec<f32>> {
    let width = model.logit_rows();
    let mut cache = model.new_cache(tokens.len());
    let mut out = Vec::new();
    model
        .forward(
            &mut [SeqInput {
                tokens: &tokens[..prefill],
                cache: &mut cache,
                logits: Logits::All,
            }],
            &mut out,
        )
        .unwrap();
    for t in prefill..tokens.len() {
        model
            .forward(
                &mut [SeqInput {
                    tokens: &tokens[t..t + 1],
                    cache: &mut cache,
                    logits: Logits::Last,
                }],
                &mut out,
            )
            .unwrap();
    }
    assert_eq!(out.len(), tokens.len() * width);
    out.chunks_exact(width).map(<[f32]>::to_vec).collect()
}

/// A model whose output layer is restricted to `rows` ids gives logits rows of that width
/// (rounded up to whole 4-row groups when its output matrix is rearranged into them, which
/// `grouped` says), equal bit for bit to the first ids of the whole model's, in prefill and
/// in decode; the embedding stays whole (the prompt has ids past the prefix); the whole layer
/// comes back when asked for.
fn check_prefix_logits(path: &Path, rows: usize, grouped: bool) {
    let full = load(path, None);
    let mut part = load(path, None);
    let vocab = full.model.config().vocab_size;
    let width = part.model.limit_logits(rows).unwrap();
    let want = if grouped { rows.div_ceil(4) * 4 } else { rows };
    assert_eq!(width, want.min(vocab), "{}: {rows} rows", path.display());
    assert_eq!(part.model.logit_rows(), width);
    let tokens: Vec<u32> = (0..14).map(|i| ((i * 7919 + 5) % vocab) as u32).collect();
    assert!(width == vocab || tokens.iter().any(|&t| t as usize >= width));
    let a = logits_of(full.model.as_ref(), &tokens, 9);
    let b = logits_of(part.model.as_ref(), &tokens, 9);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(y.len(), width);
        let same = x[..width]
            .iter()
            .zip(y)
            .all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(
            same,
            "{}: row {i} differs in its first {width} logits",
            path.display()
        );
    }
    assert_eq!(part.model.limit_logits(vocab).unwrap(), vocab);
    assert_eq!(part.model.logit_rows(), vocab);
    assert_eq!(logits_of(part.model.as_ref(), &tokens, 9), a);
}

#[test]
fn a_restricted_output_layer_gives_the_first_logits_of_the_whole() {
    // Untied (llama-mha), tied (qwen2-tiny, gqa-tied) and gemma3's model; plain f32 rows.
    for dir in [
        fixture("llama-mha"),
        fixture("qwen2-tiny"),
        synthetic("gqa-tied"),
        synthetic("gemma3-tiny"),
    ] {
        for rows in [256, 101, 1, 512] {
            check_prefix_logits(&dir, rows, false);
        }
    }
}

#[test]
fn a_restricted_output_layer_of_a_real_model_gives_the_first_logits_of_the_whole() {
    // qwen2.5-coder-0.5b: its own Q8_0 output matrix, rearranged in 4-row groups where the CPU
    // has AVX2 (a prefix of 1001 rows is then 1004).
    let qwen = real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let grouped = kiln_engine::Isa::best().has_avx2();
    if !grouped {
        eprintln!("no AVX2: the output matrix stays in plain rows; 4-row groups not exercised");
    }
    for rows in [32768, 1001] {
        check_prefix_logits(&qwen, rows, grouped);
    }
}

#[test]
fn bad_draft_vocabularies_are_refused() {
    for (s, want) in [
        ("full", Some(DraftVocab::Full)),
        ("0", Some(DraftVocab::Full)),
        ("auto", Some(DraftVocab::Auto)),
        ("32768", Some(DraftVocab::Prefix(32768))),
        ("-3", None),
        ("half", None),
    ] {
        assert_eq!(s.parse::<DraftVocab>().ok(), want, "{s}");
    }
    assert_eq!(DraftVocab::Auto.rows(151936).unwrap(), Some(32768));
    assert_eq!(DraftVocab::Auto.rows(65536).unwrap(), None);
    assert_eq!(DraftVocab::Prefix(512).rows(512).unwrap(), None);
    for n in [0, 513] {
        let e = Engine::load(
            &fixture("llama-mha"),
            &EngineOptions {
                draft_model: Some(synthetic("gqa-tied")),
                draft_vocab: DraftVocab::Prefix(n),
                ..Default::default()
            },
        );
        match e {
            Err(EngineError::Invalid(m)) => assert!(m.contains("draft vocabulary"), "{m}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a draft vocabulary of {n} tokens was accepted"),
        }
    }
    // A model that cannot restrict its output layer says so.
    struct Opaque(Box<dyn CausalLM>);
    impl CausalLM for Opaque {
        fn config(&self) -> &ModelConfig {
            self.0.config()
        }
        fn forward(&self, b: &mut [SeqInput<'_>], l: &mut Vec<f32>) -> Result<(), ModelError> {
            self.0.forward(b, l)
        }
        fn n_threads(&self) -> usize {
            1
        }
    }
    let mut m = Opaque(load(&fixture("llama-mha"), None).model);
    let e = m.limit_logits(256).unwrap_err().to_string();
    assert!(e.contains("cannot restrict its output layer"), "{e}");
    assert_eq!(m.logit_rows(), 512);
    let mut m = load(&fixture("llama-mha"), None).model;
    assert!(m.limit_logits(0).is_err());
}

/// Greedy decoding with a draft over the first half of the vocabulary equals plain decoding,
/// with drafts kept and rejected, and with penalties and a logit bias towards an id the draft
/// cannot propose.
#[test]
fn greedy_is_plain_decoding_with_a_draft_vocabulary_prefix() {
    for (target, draft) in [
        (fixture("llama-mha"), synthetic("gqa-tied")),
        (fixture("qwen2-tiny"), fixture("qwen2-tiny")),
    ] {
        let engine = load_vocab(&target, Some(&draft), DraftVocab::Prefix(256));
        assert_eq!(engine.draft.as_ref().unwrap().logit_rows(), 256);
        let prompts: Vec<Vec<u32>> = PROMPTS
            .iter()
            .map(|p| engine.tokenize(p).unwrap())
            .collect();
        let mut variants = vec![greedy(40, Speculation::off())];
        let mut biased = greedy(40, Speculation::off());
        biased.sampling.logit_bias = vec![(300, 2.5), (400, 1.5), (7, -2.0)];
        biased.sampling.repeat_penalty = 1.3;
        biased.sampling.presence_penalty = 0.4;
        variants.push(biased);
        for params in variants {
            let plain = engine.generate(&prompts, &params, &mut |_, _| {}).unwrap();
            let past = plain
                .iter()
                .flat_map(|c| &c.token_ids)
                .filter(|&&t| t >= 256)
                .count();
            assert!(past > 0, "no generated id lies past the draft's prefix");
            for sp in [
                spec(true, 0, 6, 0.0),
                spec(true, 0, 16, 0.02),
                spec(true, 2, 4, 0.0),
            ] {
                let mut p = params.clone();
                p.speculation = sp.clone();
                let fast = engine.generate(&prompts, &p, &mut |_, _| {}).unwrap();
                same(&plain, &fast, &format!("{}, {sp:?}", target.display()));
                let drafted: usize = fast.iter().map(|c| c.timings.draft_tokens).sum();
                let accepted: usize = fast.iter().map(|c| c.timings.draft_accepted).sum();
                eprintln!(
                    "{}: {accepted} of {drafted} drafts accepted",
                    target.display()
                );
                assert!(drafted > 0 && accepted <= drafted);
                if target == draft && sp.lookup_ngram == 0 {
                    // Itself as draft: kept where the model's choice is in the prefix, and
                    // not where it is past it.
                    assert!(
                        accepted > 0 && accepted < drafted,
                        "{accepted} of {drafted}"
                    );
                }
                for (i, pr) in prompts.iter().enumerate() {
                    let one = engine
                        .generate(std::slice::from_ref(pr), &p, &mut |_, _| {})
                        .unwrap();
                    same(&plain[i..i + 1], &one, "alone");
                }
            }
        }
        // A draft near the model, restricted.
        let near = perturbed_prefix(&target, 256);
        let plain = engine
            .generate(&prompts, &greedy(40, Speculation::off()), &mut |_, _| {})
            .unwrap();
        let fast = generate_drafting(&engine, &near, &prompts, &greedy(40, spec(true, 0, 5, 0.0)));
        same(&plain, &fast, "perturbed restricted self-draft");
    }
}

#[test]
fn sampled_speculative_output_follows_the_model_with_a_draft_vocabulary_prefix() {
    // llama-mha drafted for by its perturbed self over the first half of its vocabulary: the
    // proposal is 0 for the other half, which the model still samples.
    let engine = load(&fixture("llama-mha"), None);
    let draft = perturbed_prefix(&fixture("llama-mha"), 256);
    let sampling = SamplingParams {
        temperature: 1.3,
        top_k: 3,
        presence_penalty: 0.3,
        logit_bias: vec![(300, 1.0)],
        ..Default::default()
    };
    let prompt = engine.tokenize("the cat sat on the mat. the cat").unwrap();
    check_distribution(
        &engine,
        &draft,
        prompt,
        sampling,
        spec(true, 0, 2, 0.0),
        4,
        3000,
        true,
    );
}
