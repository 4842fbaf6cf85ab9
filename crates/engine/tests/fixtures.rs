//! kiln against transformers' golden outputs for the tiny models in ../shared/fixtures.

mod common;

use common::*;

fn check_dir(model: &str) {
    let dir = shared().join("fixtures").join(model);
    let golden = load_json(&shared().join(format!("fixtures/golden/{model}.json")));
    let engine = engine(&dir);
    check_against_golden(&engine, &golden, true);
    check_batch_independence(&engine, &golden);
}

#[test]
fn llama_mha_matches_transformers() {
    check_dir("llama-mha");
}

#[test]
fn qwen2_tiny_matches_transformers() {
    check_dir("qwen2-tiny");
}

/// The transformers-4 form of config.json (top-level rope_theta, torch_dtype) loads to the same model.
#[test]
fn legacy_config_form_gives_the_same_results() {
    for model in ["llama-mha", "qwen2-tiny"] {
        let src = shared().join("fixtures").join(model);
        let tmp = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
            }
        }
        std::fs::copy(
            shared().join(format!("fixtures/legacy-configs/{model}.config.json")),
            tmp.path().join("config.json"),
        )
        .unwrap();
        let golden = load_json(&shared().join(format!("fixtures/golden/{model}.json")));
        check_against_golden(&engine(tmp.path()), &golden, true);
    }
}
