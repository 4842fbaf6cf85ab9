//! Helpers shared by the engine's integration tests: paths to the reference data, the real
//! models (fetched on first use), and the comparison of kiln's outputs with golden files in the
//! schema of tests/data/fixtures/golden.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kiln_engine::{Completion, Engine, EngineOptions, GenerateParams};
use kiln_models::{Logits, SeqInput};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The repository's test data (tests/data; see its README for provenance).
pub fn test_data() -> PathBuf {
    repo_root().join("tests/data")
}

/// The real GGUF model stored as `file`, pulled through kiln's own `pull` code (sha256-checked,
/// cached in `$KILN_HOME/models`) when it is not there yet.
pub fn real_model(file: &str) -> PathBuf {
    let spec = kiln_pull::known_models()
        .iter()
        .find(|m| m.file == file)
        .unwrap_or_else(|| panic!("{file} is not a model kiln can pull"));
    kiln_pull::resolve_model(Some(spec.name), true, &mut |p| {
        eprintln!("pulling {}: {p}", spec.name)
    })
    .unwrap_or_else(|e| panic!("pulling {}: {e}", spec.name))
}

pub fn load_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn engine(dir: &Path) -> Engine {
    Engine::load(
        dir,
        &EngineOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// Logits at every position of `tokens` (one fresh sequence).
pub fn all_logits(engine: &Engine, tokens: &[u32]) -> Vec<Vec<f32>> {
    let vocab = engine.model.config().vocab_size;
    let mut cache = engine.model.new_cache(tokens.len());
    let mut out = Vec::new();
    let mut batch = [SeqInput {
        tokens,
        cache: &mut cache,
        logits: Logits::All,
    }];
    engine.model.forward(&mut batch, &mut out).unwrap();
    out.chunks_exact(vocab).map(|r| r.to_vec()).collect()
}

const TOL: f32 = 1e-4;

/// Checks every prompt of a golden file: ids, last logits, top-5 at each position, echoed
/// prompt logprobs, greedy continuations (with and without EOS), and the batch.
pub fn check_against_golden(engine: &Engine, golden: &Value, check_tokenizer: bool) {
    check_against_golden_within(engine, golden, check_tokenizer, TOL)
}

/// [`check_against_golden`] with logits and logprobs within `tol` (the GPU path: 1e-3).
pub fn check_against_golden_within(
    engine: &Engine,
    golden: &Value,
    check_tokenizer: bool,
    tol: f32,
) {
    for p in golden["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let input_ids = ids(&p["input_ids"]);
        if check_tokenizer {
            let got = engine.tokenize(p["text"].as_str().unwrap()).unwrap();
            assert_eq!(got, input_ids, "{name}: prompt ids");
        }

        // Logits at every position: top-5 values (ties in any order) and the last row whole.
        let logits = all_logits(engine, &input_ids);
        let want_last = floats(&p["last_logits"]);
        let got_last = logits.last().unwrap();
        let max_diff = want_last
            .iter()
            .zip(got_last)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max_diff < tol, "{name}: last logits differ by {max_diff}");
        for (pos, top) in p["top5"].as_array().unwrap().iter().enumerate() {
            let row = &logits[pos];
            let mut got: Vec<f32> = row.clone();
            got.sort_by(|a, b| b.total_cmp(a));
            for (k, entry) in top.as_array().unwrap().iter().enumerate() {
                let id = entry[0].as_u64().unwrap() as usize;
                let v = entry[1].as_f64().unwrap() as f32;
                assert!(
                    (row[id] - v).abs() < tol,
                    "{name} pos {pos}: logit of {id} is {} not {v}",
                    row[id]
                );
                assert!(
                    (got[k] - v).abs() < tol,
                    "{name} pos {pos}: top-{k} value {} not {v}",
                    got[k]
                );
            }
        }

        // Echoed prompt logprobs through the generation path, then greedy ids.
        let params = GenerateParams {
            max_tokens: 20,
            echo: true,
            logprobs: Some(5),
            ..Default::default()
        };
        let out = engine
            .generate(std::slice::from_ref(&input_ids), &params, &mut |_, _| {})
            .unwrap();
        let c = &out[0];
        assert_eq!(c.prompt_token_ids, input_ids);
        let plp = c.prompt_logprobs.as_ref().unwrap();
        assert_eq!(plp.len(), input_ids.len());
        assert_eq!(
            plp[0].logprob, None,
            "{name}: the first prompt token has no logprob"
        );
        for (i, want) in floats(&p["token_logprobs"]).iter().enumerate() {
            let got = plp[i + 1].logprob.unwrap();
            assert!(
                (got - want).abs() < tol,
                "{name}: prompt logprob {i}: {got} vs {want}"
            );
        }
        let greedy = &p["greedy"];
        assert_eq!(c.token_ids, ids(&greedy["new_ids"]), "{name}: greedy ids");
        let lp = c.logprobs.as_ref().unwrap();
        assert_eq!(lp.len(), c.token_ids.len());
        for t in lp {
            assert_eq!(t.top[0].0, t.id, "{name}: greedy picks the top token");
        }

        let params = GenerateParams {
            max_tokens: 20,
            ignore_eos: true,
            ..Default::default()
        };
        let out = engine
            .generate(std::slice::from_ref(&input_ids), &params, &mut |_, _| {})
            .unwrap();
        assert_eq!(
            out[0].token_ids,
            ids(&greedy["new_ids_ignore_eos"]),
            "{name}: greedy ids ignoring eos"
        );
        assert_eq!(out[0].finish_reason, kiln_engine::FinishReason::Length);
    }
}

/// The golden's prompts generated as one batch and each alone (12 tokens, EOS ignored, top-2
/// logprobs): `(together, alone)`, one completion per prompt in each.
pub fn batched_and_alone(engine: &Engine, golden: &Value) -> (Vec<Completion>, Vec<Completion>) {
    let prompts: Vec<Vec<u32>> = golden["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| ids(&p["input_ids"]))
        .collect();
    let params = GenerateParams {
        max_tokens: 12,
        ignore_eos: true,
        logprobs: Some(2),
        ..Default::default()
    };
    let together = engine.generate(&prompts, &params, &mut |_, _| {}).unwrap();
    let alone = prompts
        .iter()
        .map(|p| {
            let mut one = engine
                .generate(std::slice::from_ref(p), &params, &mut |_, _| {})
                .unwrap();
            one.remove(0)
        })
        .collect();
    (together, alone)
}

/// The batched run equals each prompt run alone.
pub fn check_batch_independence(engine: &Engine, golden: &Value) {
    let (together, alone) = batched_and_alone(engine, golden);
    for (i, alone) in alone.iter().enumerate() {
        assert_eq!(
            together[i].token_ids, alone.token_ids,
            "prompt {i}: batch changed the ids"
        );
        let a: Vec<_> = together[i]
            .logprobs
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| t.logprob)
            .collect();
        let b: Vec<_> = alone
            .logprobs
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| t.logprob)
            .collect();
        assert_eq!(a, b, "prompt {i}: batch changed the logprobs");
    }
    if let Some(batched) = golden.get("batched") {
        // transformers' left-padded batch gives the same new ids as the unbatched runs.
        let two: Vec<Vec<u32>> = batched["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| ids(&prompt(golden, row["name"].as_str().unwrap())["input_ids"]))
            .collect();
        let params = GenerateParams {
            max_tokens: 20,
            ..Default::default()
        };
        let out = engine.generate(&two, &params, &mut |_, _| {}).unwrap();
        for (r, row) in batched["rows"].as_array().unwrap().iter().enumerate() {
            assert_eq!(out[r].prompt_token_ids, two[r]);
            assert_eq!(
                out[r].token_ids,
                ids(&row["new_ids_until_eos"]),
                "batched row {r}"
            );
        }
    }
}

/// The golden prompt called `name`.
pub fn prompt<'a>(golden: &'a Value, name: &str) -> &'a Value {
    golden["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no prompt {name}"))
}
