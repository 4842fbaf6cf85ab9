//! Embeddings: the hidden states a forward pass returns are those its logits are made from,
//! pooling and normalisation are what they say, chunking changes nothing, and on a real model
//! paraphrases are closer than unrelated sentences.

mod common;

use common::*;
use kiln_engine::embed::{cosine, embed};
use kiln_engine::{Engine, Pooling};
use kiln_models::{Logits, SeqInput};

/// Final hidden states of every position of `tokens` (one fresh sequence).
fn all_hidden(engine: &Engine, tokens: &[u32]) -> Vec<Vec<f32>> {
    let d = engine.model.config().hidden_size;
    let mut cache = engine.model.new_cache(tokens.len());
    let mut out = Vec::new();
    engine
        .model
        .forward_hidden(
            &mut [SeqInput {
                tokens,
                cache: &mut cache,
                logits: Logits::All,
            }],
            &mut out,
        )
        .unwrap();
    assert_eq!(out.len(), tokens.len() * d);
    out.chunks_exact(d).map(|r| r.to_vec()).collect()
}

/// The output matrix of the model file (`output.weight`, or the tied embeddings).
fn output_matrix(path: &std::path::Path) -> kiln_kernels::Tensor {
    let mut m = kiln_formats::load(path).unwrap();
    m.tensors
        .remove("output.weight")
        .or_else(|| m.tensors.remove("token_embd.weight"))
        .unwrap()
}

/// The hidden states times the output matrix, through the same kernel the model uses, are the
/// model's logits bit for bit: the hidden states are the ones after the final norm.
fn hidden_states_make_the_logits(path: &std::path::Path, text: &str) {
    let engine = engine(path);
    let cfg = engine.model.config().clone();
    assert!(cfg.final_logit_softcapping.is_none());
    let tokens = engine.tokenize(text).unwrap();
    let hidden = all_hidden(&engine, &tokens);
    let logits = all_logits(&engine, &tokens);
    let w = output_matrix(path);
    let pool = kiln_kernels::ThreadPool::new(2);
    let flat: Vec<f32> = hidden.concat();
    let mut made = vec![0.0; tokens.len() * cfg.vocab_size];
    kiln_kernels::matmul(&pool, &w, &flat, tokens.len(), &mut made);
    for (i, (got, want)) in made.chunks_exact(cfg.vocab_size).zip(&logits).enumerate() {
        assert_eq!(got, &want[..], "{}: position {i}", path.display());
    }
}

#[test]
fn fixture_hidden_states_are_after_the_final_norm() {
    for model in ["llama-mha", "qwen2-tiny"] {
        hidden_states_make_the_logits(
            &test_data().join("fixtures").join(model),
            "The quick brown fox jumps over the lazy dog.",
        );
    }
}

#[test]
fn gemma3_hidden_states_are_after_the_final_norm() {
    hidden_states_make_the_logits(
        &real_model("gemma-3-270m-q4_k_m.gguf"),
        "The quick brown fox jumps over the lazy dog.",
    );
}

#[test]
fn pooling_normalisation_and_chunking() {
    let engine = engine(&test_data().join("fixtures/llama-mha"));
    let tokens = engine
        .tokenize("A longer text, so that a small chunk size splits it into several passes.")
        .unwrap();
    let hidden = all_hidden(&engine, &tokens);
    let unit = |v: Vec<f64>| -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| (x / n) as f32).collect()
    };
    let d = hidden[0].len();
    let mean: Vec<f64> = (0..d)
        .map(|j| hidden.iter().map(|r| f64::from(r[j])).sum::<f64>() / hidden.len() as f64)
        .collect();
    let last: Vec<f64> = hidden
        .last()
        .unwrap()
        .iter()
        .map(|&x| f64::from(x))
        .collect();
    let ctx = engine.limits.context;
    for (pooling, want) in [(Pooling::Mean, unit(mean)), (Pooling::Last, unit(last))] {
        let whole = embed(engine.model.as_ref(), &tokens, pooling, ctx, 512).unwrap();
        let norm: f32 = whole.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{pooling:?}: norm {norm}");
        for (g, w) in whole.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{pooling:?}: {g} vs {w}");
        }
        for chunk in [1, 3, 7] {
            let pieces = embed(engine.model.as_ref(), &tokens, pooling, ctx, chunk).unwrap();
            assert_eq!(pieces, whole, "{pooling:?}, chunks of {chunk}");
        }
    }
    // Engine::embed is the same call, input by input.
    let two = engine
        .embed(&[tokens.clone(), tokens[..5].to_vec()], Pooling::Last)
        .unwrap();
    assert_eq!(
        two[0],
        embed(engine.model.as_ref(), &tokens, Pooling::Last, ctx, 512).unwrap()
    );
    assert_eq!(
        two[1],
        embed(engine.model.as_ref(), &tokens[..5], Pooling::Last, ctx, 512).unwrap()
    );
}

#[test]
fn bad_inputs_are_errors() {
    let engine = engine(&test_data().join("fixtures/llama-mha"));
    let vocab = engine.model.config().vocab_size as u32;
    let ctx = engine.limits.context;
    let e = engine.embed(&[vec![]], Pooling::Mean).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = engine.embed(&[vec![1, vocab]], Pooling::Mean).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let e = engine
        .embed(&[vec![1; ctx + 1]], Pooling::Mean)
        .unwrap_err();
    assert!(
        matches!(e, kiln_engine::EngineError::ContextLength { .. }),
        "{e}"
    );
    assert!("max".parse::<Pooling>().is_err());
    assert_eq!("LAST".parse::<Pooling>(), Ok(Pooling::Last));
}

/// On a real model (qwen2.5-coder-0.5b, the default pooling), every sentence is closer to its
/// paraphrase than to any of the unrelated sentences.
#[test]
fn paraphrases_are_closer_than_unrelated_sentences() {
    let engine = engine(&real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"));
    let pairs = [
        ("The cat sat on the mat.", "A cat was sitting on the rug."),
        (
            "How do I reverse a list in Python?",
            "What is the way to reverse a Python list?",
        ),
        (
            "The stock market fell sharply today.",
            "Share prices dropped steeply today.",
        ),
        (
            "It is raining heavily outside.",
            "There is a lot of rain falling outside.",
        ),
    ];
    let texts: Vec<&str> = pairs.iter().flat_map(|(a, b)| [*a, *b]).collect();
    let inputs: Vec<Vec<u32>> = texts.iter().map(|t| engine.tokenize(t).unwrap()).collect();
    let v = engine.embed(&inputs, Pooling::default()).unwrap();
    for p in 0..pairs.len() {
        let same = cosine(&v[2 * p], &v[2 * p + 1]);
        for q in (0..pairs.len()).filter(|&q| q != p) {
            for other in [2 * q, 2 * q + 1] {
                let diff = cosine(&v[2 * p], &v[other]);
                assert!(
                    same > diff,
                    "{:?} ~ {:?}: {same} is not above {diff} against {:?}",
                    texts[2 * p],
                    texts[2 * p + 1],
                    texts[other]
                );
            }
        }
    }
}
