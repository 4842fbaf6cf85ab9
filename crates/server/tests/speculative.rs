//! `kiln serve` with speculative decoding (a draft model and prompt lookup) over the tiny
//! llama-mha fixture: greedy answers equal transformers' goldens, a request may turn drafting
//! off or resize it, bad sizes are a 400, and /metrics counts drafted and accepted tokens.

mod common;

use common::{fixture, llama_mha_golden, start_engine, TestServer};
use kiln_engine::scheduler::SchedulerConfig;
use kiln_engine::{Engine, EngineOptions, Speculation};
use kiln_server::ServerOptions;
use serde_json::{json, Value};

async fn start() -> TestServer {
    let engine = Engine::load(
        &fixture("llama-mha"),
        &EngineOptions {
            threads: 1,
            max_batch: 3,
            // The model as its own draft (every draft accepted; prompt lookup's drafts are
            // mostly rejected): both outcomes go through the server's path.
            draft_model: Some(fixture("llama-mha")),
            ..Default::default()
        },
    )
    .expect("loading the fixtures");
    assert!(engine.draft.is_some());
    let cfg = SchedulerConfig {
        slots: 3,
        context: engine.limits.context,
        max_queue: 64,
        prefill_chunk: 8,
        prefix_cache: 3,
    };
    let opts = ServerOptions {
        model_id: "llama-mha".into(),
        speculation: Speculation {
            draft_max: 4,
            p_min: 0.0,
            lookup_ngram: 2,
            ..Speculation::default()
        },
        ..Default::default()
    };
    start_engine(engine, cfg, opts).await
}

async fn drafted(c: &reqwest::Client, s: &TestServer) -> (u64, u64) {
    let text = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
            .parse()
            .unwrap()
    };
    assert!(text.contains("kiln_draft_acceptance_rate "));
    (
        value("kiln_draft_tokens_total"),
        value("kiln_draft_tokens_accepted_total"),
    )
}

#[tokio::test]
async fn speculative_greedy_equals_golden_and_is_counted() {
    let s = start().await;
    let c = reqwest::Client::new();
    let g = llama_mha_golden();
    let mut before = drafted(&c, &s).await;
    assert_eq!(before, (0, 0));
    for p in g["prompts"].as_array().unwrap() {
        for speculative in [json!(true), json!(false)] {
            let body = json!({"prompt": p["text"], "max_tokens": 20, "temperature": 0,
                              "ignore_eos": true, "speculative": speculative});
            let r = c
                .post(s.url("/v1/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            assert_eq!(
                v["choices"][0]["token_ids"], p["greedy"]["new_ids_ignore_eos"],
                "{} speculative {speculative}",
                p["name"]
            );
            let after = drafted(&c, &s).await;
            if speculative == json!(false) {
                assert_eq!(after, before, "a request that turned drafting off drafted");
            } else {
                assert!(after.0 > before.0 && after.1 <= after.0);
            }
            before = after;
        }
    }
    assert!(before.1 > 0, "no draft was ever accepted: {before:?}");
}

#[tokio::test]
async fn bad_draft_sizes_are_a_400() {
    let s = start().await;
    let c = reqwest::Client::new();
    for extra in [
        json!({"speculative.n_max": 1000}),
        json!({"speculative.n_max": -1}),
        json!({"speculative.n_max": 2, "speculative.n_min": 3}),
        json!({"speculative.p_min": 2.0}),
    ] {
        let mut body = json!({"prompt": "Hello", "max_tokens": 4});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = c
            .post(s.url("/v1/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("speculative")
                || e["error"]["param"]
                    .as_str()
                    .unwrap_or("")
                    .contains("speculative"),
            "{e}"
        );
    }
    // A smaller draft is fine.
    let r = c
        .post(s.url("/v1/completions"))
        .json(&json!({"prompt": "Hello", "max_tokens": 4, "speculative.n_max": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
