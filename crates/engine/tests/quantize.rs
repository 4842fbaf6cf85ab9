//! `kiln convert` from tokenizer.json checkpoints and `kiln quantize`, against the fixtures'
//! transformers goldens; and that a failed or cancelled run leaves nothing behind.

mod common;

use std::path::Path;

use common::*;
use kiln_engine::convert::{convert, convert_with, Target};
use kiln_engine::quantize::{quantize, FileType};

fn quantized(src: &Path, out: &Path, t: FileType) {
    quantize(src, out, t, 2, &|| false, &mut |_, _, _| {}).unwrap();
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn mean_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let (s, n) = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold((0.0f64, 0usize), |(s, n), (x, y)| {
            (s + (x - y).abs() as f64, n + 1)
        });
    (s / n.max(1) as f64) as f32
}

/// qwen2-tiny (tokenizer.json only, byte-level BPE with Llama 3's split) written as GGUF:
/// same ids as transformers, logits within f32 rounding of the original.
#[test]
fn tokenizer_json_checkpoint_converts_to_gguf() {
    let src = test_data().join("fixtures/qwen2-tiny");
    let golden = load_json(&test_data().join("fixtures/golden/qwen2-tiny.json"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("qwen2-tiny.gguf");
    convert(&src, Target::Gguf, &out).unwrap();
    let original = engine(&src);
    let converted = engine(&out);
    check_against_golden(&converted, &golden, true);
    for p in golden["prompts"].as_array().unwrap() {
        let ids = ids(&p["input_ids"]);
        let d = max_diff(&all_logits(&original, &ids), &all_logits(&converted, &ids));
        assert!(d < 1e-5, "logits differ by {d}");
    }
}

/// Q8_0 of both fixtures (from the Hugging Face directory, and from a converted GGUF):
/// the same ids, and greedy decoding that picks the float model's token wherever the float
/// model's top-2 gap exceeds what quantisation moves the logits (these tiny random models
/// have large activations, so Q8_0 moves their logits by tenths).
#[test]
fn q8_0_fixtures_keep_greedy_where_the_gap_allows() {
    for model in ["qwen2-tiny", "llama-mha"] {
        let src = test_data().join("fixtures").join(model);
        let golden = load_json(&test_data().join(format!("fixtures/golden/{model}.json")));
        let tmp = tempfile::tempdir().unwrap();
        let q8 = tmp.path().join("q8.gguf");
        quantized(&src, &q8, FileType::Q8_0);
        let via_gguf = tmp.path().join("f32.gguf");
        convert(&src, Target::Gguf, &via_gguf).unwrap();
        let q8b = tmp.path().join("q8b.gguf");
        quantized(&via_gguf, &q8b, FileType::Q8_0);
        let original = engine(&src);
        let q = engine(&q8);
        // (the same weights either way: only general.name differs)
        let probe = ids(&golden["prompts"][0]["input_ids"]);
        assert_eq!(all_logits(&q, &probe), all_logits(&engine(&q8b), &probe));
        let (mut checked, mut total) = (0, 0);
        for p in golden["prompts"].as_array().unwrap() {
            let input = ids(&p["input_ids"]);
            assert_eq!(q.tokenize(p["text"].as_str().unwrap()).unwrap(), input);
            let d = max_diff(&all_logits(&original, &input), &all_logits(&q, &input));
            let mean = mean_diff(&all_logits(&original, &input), &all_logits(&q, &input));
            println!("{model}: Q8_0 logits differ by {d} at most, {mean} on average");

            // Greedy on the Q8_0 model; at each step its token must be the float model's
            // argmax unless the float model's own margin is within what the quantisation
            // moves logits (the largest difference seen on this sequence).
            let params = kiln_engine::GenerateParams {
                max_tokens: 20,
                ignore_eos: true,
                ..Default::default()
            };
            let got = q
                .generate(std::slice::from_ref(&input), &params, &mut |_, _| {})
                .unwrap()
                .remove(0)
                .token_ids;
            let mut seq = input.clone();
            seq.extend(&got);
            let fl = all_logits(&original, &seq);
            let ql = all_logits(&q, &seq);
            let d = max_diff(&fl, &ql);
            for (k, &tok) in got.iter().enumerate() {
                let row = &fl[input.len() - 1 + k];
                let best = row.iter().cloned().fold(f32::MIN, f32::max);
                let margin = best - row[tok as usize];
                assert!(
                    margin <= 2.0 * d,
                    "{model} step {k}: Q8_0 chose {tok}, {margin} below the float argmax \
                     (quantisation moves logits by up to {d})"
                );
                if margin == 0.0 {
                    checked += 1;
                }
            }
            total += got.len();
        }
        println!("{model}: {checked} of {total} greedy steps identical");
        assert!(
            checked * 10 >= total * 8,
            "{model}: only {checked} of {total} greedy steps identical"
        );
    }
}

/// Every file type quantises a fixture to a model that loads and tokenizes the same, with
/// logits that move less the more bits the type has.
#[test]
fn every_file_type_loads() {
    let src = test_data().join("fixtures/qwen2-tiny");
    let golden = load_json(&test_data().join("fixtures/golden/qwen2-tiny.json"));
    let input = ids(&golden["prompts"][0]["input_ids"]);
    let original = engine(&src);
    let want = all_logits(&original, &input);
    let tmp = tempfile::tempdir().unwrap();
    let mut err = std::collections::BTreeMap::new();
    for t in FileType::ALL {
        let out = tmp.path().join(format!("{t}.gguf"));
        quantized(&src, &out, t);
        let e = engine(&out);
        assert_eq!(
            e.tokenize(golden["prompts"][0]["text"].as_str().unwrap())
                .unwrap(),
            input
        );
        err.insert(t.name(), mean_diff(&want, &all_logits(&e, &input)));
    }
    println!("{err:?}");
    assert!(err["F32"] < 1e-6, "{err:?}");
    assert!(err["F16"] < err["Q8_0"] && err["Q8_0"] < err["Q5_0"] && err["Q5_0"] < err["Q4_0"]);
    // the non-linear grid beats Q4_0's even steps at the same bits (0.27 against 0.36)
    assert!(err["IQ4_NL"] < err["Q4_0"], "{err:?}");
}

/// A run that fails part-way (here cancelled after a few tensors, the path Ctrl-C and write
/// errors take) leaves neither a partial output nor its temporary file, and an existing output
/// untouched.
#[test]
fn a_failed_run_leaves_nothing_behind() {
    let src = test_data().join("fixtures/qwen2-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let after = |n: usize| {
        let calls = std::cell::Cell::new(0usize);
        move || {
            calls.set(calls.get() + 1);
            calls.get() > n
        }
    };
    let listing = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let gguf = tmp.path().join("m.gguf");
    let e = convert_with(&src, Target::Gguf, &gguf, &after(3)).unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
    let e = quantize(&src, &gguf, FileType::Q8_0, 2, &after(5), &mut |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
    let hf = tmp.path().join("m-hf");
    assert!(convert_with(&src, Target::Safetensors, &hf, &after(1)).is_err());
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
    // an existing file stays as it was
    std::fs::write(&gguf, b"keep me").unwrap();
    assert!(quantize(&src, &gguf, FileType::Q4_0, 2, &after(2), &mut |_, _, _| {}).is_err());
    assert_eq!(std::fs::read(&gguf).unwrap(), b"keep me");
    assert_eq!(listing(tmp.path()), ["m.gguf"]);
    // and the same runs, not cancelled, write complete outputs
    quantized(&src, &gguf, FileType::Q4_0);
    convert(&src, Target::Safetensors, &hf).unwrap();
    assert_eq!(listing(tmp.path()), ["m-hf", "m.gguf"]);
    engine(&gguf);
    engine(&hf);
}
