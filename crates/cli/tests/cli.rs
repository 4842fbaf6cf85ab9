//! The `kiln` binary end to end on the fixture models in tests/data/fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn test_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn golden(model: &str) -> Value {
    let p = test_data().join(format!("fixtures/golden/{model}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn prompt<'a>(g: &'a Value, name: &str) -> &'a Value {
    g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn complete_json_batch_with_echo_and_logprobs_matches_transformers() {
    let dir = test_data().join("fixtures/llama-mha");
    let g = golden("llama-mha");
    let (hello, qa) = (
        prompt(&g, "hello")["text"].as_str().unwrap(),
        prompt(&g, "qa")["text"].as_str().unwrap(),
    );
    let out = kiln(&[
        "complete",
        "-m",
        dir.to_str().unwrap(),
        "--json",
        "--echo",
        "--logprobs",
        "5",
        "--max-tokens",
        "20",
        "--threads",
        "2",
        "--prompt",
        hello,
        "--prompt",
        qa,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(v["object"], "text_completion");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    let mut prompt_tokens = 0;
    let mut completion_tokens = 0;
    for (i, name) in ["hello", "qa"].iter().enumerate() {
        let c = &choices[i];
        let p = prompt(&g, name);
        assert_eq!(c["index"], i);
        let prompt_ids = ids(&p["input_ids"]);
        assert_eq!(ids(&c["prompt_token_ids"]), prompt_ids);
        assert_eq!(ids(&c["token_ids"]), ids(&p["greedy"]["new_ids"]));
        let stopped = p["greedy"]["stopped_on_eos"].as_bool().unwrap();
        assert_eq!(c["finish_reason"], if stopped { "stop" } else { "length" });
        assert!(c["text"].as_str().unwrap().len() >= hello.len().min(1));
        let lp = &c["logprobs"];
        let n_total = prompt_ids.len() + c["token_ids"].as_array().unwrap().len();
        for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            assert_eq!(lp[key].as_array().unwrap().len(), n_total, "{key}");
        }
        assert!(lp["token_logprobs"][0].is_null());
        assert!(lp["top_logprobs"][0].is_null());
        for (k, want) in p["token_logprobs"].as_array().unwrap().iter().enumerate() {
            let got = lp["token_logprobs"][k + 1].as_f64().unwrap();
            assert!(
                (got - want.as_f64().unwrap()).abs() < 1e-4,
                "{name} prompt logprob {k}"
            );
        }
        // Keyed by token text, or `bytes:\xNN` for byte-fallback pieces of these random
        // models (all U+FFFD as text): five distinct tokens, five keys.
        let last = lp["top_logprobs"][n_total - 1].as_object().unwrap();
        assert_eq!(last.len(), 5, "{last:?}");
        let chosen = lp["tokens"][n_total - 1].as_str().unwrap();
        assert!(
            last.contains_key(chosen),
            "greedy token {chosen:?} is among the top logprobs"
        );
        let offsets: Vec<u64> = ids(&lp["text_offset"]);
        assert!(
            offsets.windows(2).all(|w| w[0] <= w[1]),
            "text offsets never go back"
        );
        prompt_tokens += prompt_ids.len();
        completion_tokens += c["token_ids"].as_array().unwrap().len();
    }
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], completion_tokens);
    assert_eq!(
        v["usage"]["total_tokens"],
        prompt_tokens + completion_tokens
    );
}

#[test]
fn ignore_eos_and_tokenize() {
    let dir = test_data().join("fixtures/llama-mha");
    let g = golden("llama-mha");
    let qa = prompt(&g, "qa");
    let out = kiln(&[
        "complete",
        "-m",
        dir.to_str().unwrap(),
        "--json",
        "--ignore-eos",
        "-n",
        "20",
        qa["text"].as_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        ids(&v["choices"][0]["token_ids"]),
        ids(&qa["greedy"]["new_ids_ignore_eos"])
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    let out = kiln(&[
        "tokenize",
        "-m",
        dir.to_str().unwrap(),
        "--json",
        qa["text"].as_str().unwrap(),
    ]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&v["ids"]), ids(&qa["input_ids"]));
}

#[test]
fn bad_input_gives_one_clear_line_and_nonzero_exit() {
    let dir = test_data().join("fixtures/llama-mha");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "complete".into(),
                "-m".into(),
                "/nonexistent/model.gguf".into(),
                "hi".into(),
            ],
            "neither an existing file",
        ),
        (
            vec![
                "complete".into(),
                "-m".into(),
                dir.display().to_string(),
                "--ctx-size".into(),
                "4".into(),
                "Hello world, this is long".into(),
            ],
            "context",
        ),
        (
            vec![
                "complete".into(),
                "-m".into(),
                dir.display().to_string(),
                "--temperature".into(),
                "-1".into(),
                "hi".into(),
            ],
            "temperature",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let out = kiln(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        // Without a terminal, "kiln: loading ..." notes may come before the error.
        let err: String = err.lines().filter(|l| !l.starts_with("kiln: ")).collect();
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// `kiln chat` on a Meta checkpoint without a chat template formats the dialog as Meta's
/// `chat_completion` does: each turn `[INST] user [/INST]` with BOS, earlier exchanges closed
/// with EOS.
#[test]
fn chat_on_a_meta_checkpoint_uses_llama2_format() {
    use std::io::Write;
    let dir = test_data().join("fixtures/llama-mha/meta/mp2");
    let d = dir.to_str().unwrap();
    let tokenize = |text: &str| -> Vec<u64> {
        let out = kiln(&["tokenize", "-m", d, "--json", text]);
        assert!(out.status.success());
        ids(&serde_json::from_slice::<Value>(&out.stdout).unwrap()["ids"])
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["chat", "-m", d, "--json", "-n", "6"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello\nHow are you?\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let turns: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(turns.len(), 2);
    assert_eq!(
        ids(&turns[0]["choices"][0]["prompt_token_ids"]),
        tokenize("[INST] Hello [/INST]")
    );
    assert!(turns.iter().all(|t| t["object"] == "chat.completion"));
    let second = ids(&turns[1]["choices"][0]["prompt_token_ids"]);
    let last = tokenize("[INST] How are you? [/INST]");
    assert!(second.ends_with(&last), "{second:?}");
    let first_exchange = &second[..second.len() - last.len()];
    assert_eq!(
        first_exchange.first(),
        Some(&1),
        "BOS opens the first exchange"
    );
    assert_eq!(
        first_exchange.last(),
        Some(&2),
        "EOS closes the first exchange"
    );
    // The second turn reuses the first's KV cache: its prompt tokens up to where they leave
    // what the first turn computed (its prompt and reply, less the last token sampled) are
    // reported as cached (OpenAI's usage.prompt_tokens_details), the rest as computed.
    let first_ids = ids(&turns[0]["choices"][0]["prompt_token_ids"]);
    let reply = ids(&turns[0]["choices"][0]["token_ids"]);
    let computed: Vec<u64> = [&first_ids[..], &reply[..reply.len() - 1]].concat();
    let shared = computed
        .iter()
        .zip(&second)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(shared >= first_ids.len() - 1, "{computed:?} {second:?}");
    let cached = |t: &Value| t["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    assert_eq!(cached(&turns[0]), Some(0));
    assert_eq!(cached(&turns[1]), Some(shared as u64));
}

/// One sampled `kiln complete --json` run on the llama-mha fixture; `extra` adds flags.
fn sampled_run(extra: &[&str]) -> Value {
    let dir = test_data().join("fixtures/llama-mha");
    let mut args = vec![
        "complete",
        "-m",
        dir.to_str().unwrap(),
        "--json",
        "--ignore-eos",
        "-n",
        "40",
        "--threads",
        "1",
        "--prompt",
        "Hello",
    ];
    args.extend_from_slice(extra);
    let out = kiln(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn the_seed_is_random_unless_given_and_a_given_seed_repeats() {
    // At temperature 5 the fixture's distribution is nearly flat over its vocabulary, so two
    // 40-token samples with different seeds are practically never equal.
    let hot = ["--temperature", "5"];
    let (a, b) = (sampled_run(&hot), sampled_run(&hot));
    assert_ne!(a["seed"], b["seed"], "each run draws its own seed");
    assert_ne!(a["choices"][0]["text"], b["choices"][0]["text"]);
    // The seed a run reports repeats it, through --seed and llama.cpp's -s and --temp.
    let seed = a["seed"]
        .as_u64()
        .expect("--json reports the seed")
        .to_string();
    let c = sampled_run(&["--temperature", "5", "--seed", &seed]);
    assert_eq!(c["seed"], a["seed"]);
    assert_eq!(c["choices"][0]["text"], a["choices"][0]["text"]);
    let d = sampled_run(&["-s", &seed, "--temp", "5"]);
    assert_eq!(d["choices"][0]["text"], a["choices"][0]["text"]);
}

/// `--logprobs` without `--json` prints a table after the text: one row per generated token
/// with the logprob and alternatives that `--json` reports for the same greedy run.
#[test]
fn logprobs_without_json_print_a_per_token_table() {
    let dir = test_data().join("fixtures/llama-mha");
    let common = [
        "complete",
        "-m",
        dir.to_str().unwrap(),
        "--logprobs",
        "2",
        "-n",
        "4",
        "--ignore-eos",
        "--threads",
        "1",
        "--prompt",
        "Hello",
    ];
    let json = kiln(&[&common[..], &["--json"]].concat());
    assert!(json.status.success());
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    let lp = &v["choices"][0]["logprobs"];
    let text = kiln(&common);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let stdout = String::from_utf8(text.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("token") && l.contains("logprob"))
        .expect("a table header after the text");
    let rows = &lines[header + 1..];
    assert_eq!(rows.len(), 4, "one row per generated token:\n{stdout}");
    // Quoted with escapes, except the already escaped `bytes:\xNN` names.
    let shown = |name: &str| {
        if name.starts_with("bytes:") {
            name.to_string()
        } else {
            format!("{name:?}")
        }
    };
    for (i, row) in rows.iter().enumerate() {
        let token = lp["tokens"][i].as_str().unwrap();
        assert!(row.starts_with(&shown(token)), "{row}");
        let logprob = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(row.contains(&format!("{logprob:.4}")), "{row} vs {logprob}");
        for (alt, l) in lp["top_logprobs"][i].as_object().unwrap() {
            let cell = format!("{} {:.4}", shown(alt), l.as_f64().unwrap());
            assert!(row.contains(&cell), "{row} lacks {cell}");
        }
    }
}

/// `kiln inspect` prints plain words, not Rust debug text (`Some(1)`, `Llama`): the
/// architecture by its GGUF name, special tokens by text and id, from the fixtures' configs.
#[test]
fn inspect_prints_human_readable_text() {
    for (model, arch, tokenizer) in [
        (
            "llama-mha",
            "llama",
            "512 tokens, bos <s> (1), eos </s> (2), adds bos",
        ),
        (
            "qwen2-tiny",
            "qwen2",
            "512 tokens, bos <|begin_of_text|> (510), eos <|end_of_text|> (511)",
        ),
    ] {
        let dir = test_data().join("fixtures").join(model);
        let out = kiln(&["inspect", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(&format!("architecture: {arch}\n")), "{text}");
        assert!(text.contains(tokenizer), "{text}");
        for debug in ["Some(", "None", "[", "{", "\""] {
            assert!(!text.contains(debug), "debug text {debug:?} in:\n{text}");
        }
    }
}

/// `kiln chat --json` reports the seed of the session: a random one unless `-s` is given, and
/// a given seed repeats the sampled replies.
#[test]
fn chat_seed_is_random_unless_given() {
    use std::io::Write;
    let dir = test_data().join("fixtures/llama-mha/meta/mp2");
    let chat = |extra: &[&str]| -> Value {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["chat", "-m", dir.to_str().unwrap(), "--json", "-n", "30"])
            .args(["--temp", "5", "-t", "1"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"Hello\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (a, b) = (chat(&[]), chat(&[]));
    assert_ne!(a["seed"], b["seed"]);
    let seed = a["seed"]
        .as_u64()
        .expect("--json reports the seed")
        .to_string();
    let c = chat(&["-s", &seed]);
    assert_eq!(
        c["choices"][0]["message"]["content"],
        a["choices"][0]["message"]["content"]
    );
}

/// A pull that waits on another pull's lock says so at once on stderr instead of looking hung.
#[test]
fn a_pull_waiting_on_another_says_so() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = std::env::temp_dir().join(format!("kiln-pull-wait-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = kiln_pull::find("gemma3-270m").unwrap();
    let lock = std::fs::File::create(dir.join(format!(".{}.lock", spec.file))).unwrap();
    lock.lock().unwrap();
    // KILN_PYTHON=false: once the lock is free the download fails at once, downloading nothing.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["pull", "gemma3-270m"])
        .env("KILN_MODELS", &dir)
        .env("KILN_PYTHON", "false")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(120));
    lock.unlock().unwrap();
    let status = child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let first = first.expect("kiln pull printed nothing while it waited on the lock");
    assert!(
        first.contains("waiting for another pull"),
        "first stderr line: {first}"
    );
    assert!(
        !status.success(),
        "the download should fail with KILN_PYTHON=false"
    );
}

/// A model without a chat template is a clear error in `kiln chat`, never a guessed format;
/// `--chat-template chatml` formats the dialog with the built-in ChatML; an unknown name is an
/// error that lists the built-in ones.
#[test]
fn chat_needs_a_template_or_chat_template() {
    use std::io::Write;
    let dir = test_data().join("fixtures/qwen2-tiny");
    let d = dir.to_str().unwrap();
    let chat = |extra: &[&str]| -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["chat", "-m", d, "--json", "-n", "4", "-t", "1"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"Hello\n").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = chat(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no chat template"), "{err}");
    assert!(err.contains("--chat-template"), "{err}");
    let out = chat(&["--chat-template", "no-such-template"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chatml, llama2, llama3, gemma"), "{err}");
    let out = chat(&["--chat-template", "chatml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let turn: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = kiln(&[
        "tokenize",
        "-m",
        d,
        "--json",
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    ]);
    assert!(want.status.success());
    let want: Value = serde_json::from_slice(&want.stdout).unwrap();
    assert_eq!(
        ids(&turn["choices"][0]["prompt_token_ids"]),
        ids(&want["ids"])
    );
}

/// `kiln embed`: one unit-length vector of the hidden size per text; `--json` is the server's
/// response object with the same vectors.
#[test]
fn embed_prints_unit_vectors() {
    let dir = test_data().join("fixtures/llama-mha");
    let d = dir.to_str().unwrap();
    let out = kiln(&["embed", "-m", d, "-t", "1", "A cat.", "A dog."]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Vec<f64>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for v in &lines {
        assert_eq!(v.len(), 64);
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    assert_ne!(lines[0], lines[1]);
    let out = kiln(&["embed", "-m", d, "-t", "1", "--json", "A cat.", "A dog."]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["object"], "list");
    for (i, want) in lines.iter().enumerate() {
        let got: Vec<f64> = serde_json::from_value(v["data"][i]["embedding"].clone()).unwrap();
        assert_eq!(&got, want);
    }
    let out = kiln(&["embed", "-m", d, "--pooling", "max", "x"]);
    assert!(!out.status.success());
}
/// `kiln inspect` names experts and rope scaling of the newer architectures' fixtures.
#[test]
fn inspect_shows_experts_and_rope_scaling() {
    for (model, line) in [
        (
            "mixtral-tiny",
            "experts:      4 per layer, 2 used per token, ffn 96 each, weights renormalised\n",
        ),
        (
            "phi3-tiny",
            "rope scaling: longrope, long factors past 128\n",
        ),
        ("qwen2-yarn-tiny", "rope scaling: yarn x4 from 64\n"),
    ] {
        let dir = test_data().join("fixtures/arch").join(model);
        let out = kiln(&["inspect", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(line), "{model}: {text}");
    }
}

/// `kiln complete` with a draft model or prompt lookup: the goldens' greedy tokens, `timings`
/// in `--json` with drafted and accepted counts; a draft with another vocabulary is refused.
#[test]
fn speculative_flags_keep_greedy_tokens_and_report_acceptance() {
    let dir = test_data().join("fixtures/llama-mha");
    let draft =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/data/synthetic/gqa-tied");
    let g = golden("llama-mha");
    let p = prompt(&g, "qa");
    let text = p["text"].as_str().unwrap();
    let base = [
        "complete",
        "-m",
        dir.to_str().unwrap(),
        "--json",
        "-n",
        "20",
        "--ignore-eos",
        "-t",
        "2",
    ];
    // The draft model, 4 tokens a step, every draft kept whatever its confidence; then more.
    let with_draft = |more: &[&'static str]| {
        let mut v = vec![
            "--model-draft",
            draft.to_str().unwrap(),
            "--draft-max",
            "4",
            "--draft-p-min",
            "0",
        ];
        v.extend(more);
        v
    };
    for extra in [
        // With lookup's proposals checked by the draft (the default with a draft model).
        with_draft(&[]),
        // The draft model alone.
        with_draft(&["--lookup-ngram", "0"]),
        vec!["--lookup-ngram", "2", "--draft-max", "6"],
        // The draft over the first half of the vocabulary.
        with_draft(&["--draft-vocab", "256"]),
    ] {
        let mut args = base.to_vec();
        args.extend(&extra);
        args.extend(["--", text]);
        let out = kiln(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            ids(&v["choices"][0]["token_ids"]),
            ids(&p["greedy"]["new_ids_ignore_eos"]),
            "{extra:?}"
        );
        let t = &v["timings"];
        assert_eq!(t["predicted_n"], 20);
        assert!(t["draft_n"].as_u64().unwrap() > 0, "{t}");
        assert!(t["draft_n_accepted"].as_u64().unwrap() <= t["draft_n"].as_u64().unwrap());
        assert!(t["predicted_ms"].as_f64().unwrap() >= 0.0);
    }
    let qwen = test_data().join("fixtures/qwen2-tiny");
    let mut args = base.to_vec();
    args.extend(["--model-draft", qwen.to_str().unwrap(), "--", text]);
    let out = kiln(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vocabulary"), "{err}");
    // A draft vocabulary past the vocabulary, not a number, or without a draft model.
    for (extra, want) in [
        (
            vec![
                "--model-draft",
                draft.to_str().unwrap(),
                "--draft-vocab",
                "513",
            ],
            "draft vocabulary",
        ),
        (
            vec![
                "--model-draft",
                draft.to_str().unwrap(),
                "--draft-vocab",
                "half",
            ],
            "--draft-vocab",
        ),
        (vec!["--draft-vocab", "256"], "--model-draft"),
    ] {
        let mut args = base.to_vec();
        args.extend(&extra);
        args.extend(["--", text]);
        let out = kiln(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{extra:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn constraint_flags_hold_the_output_and_refusals_are_one_clear_error() {
    let dir = test_data().join("fixtures/llama-mha");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "complete",
            "-m",
            dir.to_str().unwrap(),
            "--json",
            "-n",
            "40",
            "--threads",
            "1",
            "--temperature",
            "1",
            "-s",
            "7",
            "--prompt",
            "Hello",
        ];
        args.extend_from_slice(extra);
        kiln(&args)
    };
    let text = |out: Output| -> String {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    assert!(["yes", "no"].contains(&text(run(&["--regex", "(yes|no)"])).as_str()));
    let schema = r#"{"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false}"#;
    let v: Value = serde_json::from_str(&text(run(&["--schema", schema]))).unwrap();
    assert!(v["ok"].is_boolean(), "{v}");
    let out = run(&["--schema", r#"{"type": "array", "uniqueItems": true}"#]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uniqueItems"), "{err}");
}

/// The default `--device auto` on a machine without GPU hardware loads no GPU driver: the same
/// output and the same stderr as `--device cpu` (no device line, none of the warnings a Vulkan
/// driver prints, such as Mesa's about XDG_RUNTIME_DIR). Where a GPU may be present, auto may
/// add exactly one `kiln: device:` line.
#[test]
fn complete_with_the_default_device_prints_nothing_extra_without_a_gpu() {
    let dir = test_data().join("fixtures/llama-mha");
    let run = |device: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.env_remove("KILN_DEVICE")
            .env_remove("XDG_RUNTIME_DIR")
            .args([
                "complete",
                "-m",
                dir.to_str().unwrap(),
                "-n",
                "6",
                "-t",
                "1",
            ]);
        if let Some(d) = device {
            cmd.args(["--device", d]);
        }
        let out = cmd.arg("Hello").output().expect("run kiln");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let (auto, cpu) = (run(None), run(Some("cpu")));
    let (a, c) = (
        String::from_utf8_lossy(&auto.stderr),
        String::from_utf8_lossy(&cpu.stderr),
    );
    if kiln_engine::may_have_gpu() {
        eprintln!("default-device check: this machine may have a GPU, auto may add one line");
        let extra: Vec<&str> = a.lines().filter(|l| !c.contains(l)).collect();
        assert!(
            extra.len() <= 1 && extra.iter().all(|l| l.starts_with("kiln: device:")),
            "auto's stderr beyond --device cpu's: {extra:?}"
        );
    } else {
        assert_eq!(a, c, "auto printed something --device cpu does not");
        assert_eq!(auto.stdout, cpu.stdout);
    }
}

/// `--gpu-portable` reaches the device: the device line names the portable kernels (on an
/// adapter offering f16 or subgroups the default line names those instead).
#[test]
fn gpu_portable_flag_selects_the_portable_kernels() {
    if kiln_engine::list_adapters().is_empty() {
        eprintln!(
            "gpu_portable_flag: skipped, no GPU adapter (install mesa-vulkan-drivers for lavapipe)"
        );
        return;
    }
    let dir = test_data().join("fixtures/llama-mha");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "complete",
            "-m",
            dir.to_str().unwrap(),
            "-n",
            "2",
            "-t",
            "1",
        ];
        args.extend_from_slice(&["--device", "gpu"]);
        args.extend_from_slice(extra);
        args.push("Hello");
        let out = kiln(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err.lines()
            .find(|l| l.starts_with("kiln: device: gpu"))
            .unwrap_or_else(|| panic!("no device line in {err}"))
            .to_string()
    };
    let portable = run(&["--gpu-portable"]);
    assert!(portable.ends_with("kernels: portable"), "{portable}");
    let default = run(&[]);
    assert!(default.contains(", kernels: "), "{default}");
}

/// `kiln complete --chat` / `--chat-template` / `--system` formats each prompt as one user
/// turn, as `kiln chat` formats its first turn (the same prompt ids); without a template it is
/// the same clear error, never a guessed format.
#[test]
fn complete_chat_formats_prompts_as_kiln_chat_does() {
    use std::io::Write;
    let first_chat_turn = |d: &str, extra: &[&str], line: &str| -> Vec<u64> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["chat", "-m", d, "--json", "-n", "2", "-t", "1"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let turn: Value = serde_json::from_slice(&out.stdout).unwrap();
        ids(&turn["choices"][0]["prompt_token_ids"])
    };
    let complete = |d: &str, extra: &[&str]| -> Output {
        let mut args = vec!["complete", "-m", d, "--json", "-n", "2", "-t", "1"];
        args.extend_from_slice(extra);
        args.extend(["--prompt", "Hello", "--prompt", "Hi there"]);
        kiln(&args)
    };
    let prompt_ids = |out: &Output, i: usize| -> Vec<u64> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        ids(&v["choices"][i]["prompt_token_ids"])
    };
    let qwen = test_data().join("fixtures/qwen2-tiny");
    let q = qwen.to_str().unwrap();
    for extra in [
        &["--chat-template", "chatml"][..],
        &["--chat-template", "chatml", "--system", "Be brief."],
    ] {
        let out = complete(q, extra);
        assert_eq!(
            prompt_ids(&out, 0),
            first_chat_turn(q, extra, "Hello"),
            "{extra:?}"
        );
        // Each prompt of the batch is its own conversation.
        assert_eq!(
            prompt_ids(&out, 1),
            first_chat_turn(q, extra, "Hi there"),
            "{extra:?}"
        );
    }
    // No template: the same refusal as kiln chat's, with the way out for complete.
    let out = complete(q, &["--chat"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no chat template") && err.contains("leave out --chat"),
        "{err}"
    );
    // A Meta checkpoint: Meta's own format, as kiln chat formats it.
    let meta = test_data().join("fixtures/llama-mha/meta/mp2");
    let m = meta.to_str().unwrap();
    assert_eq!(
        prompt_ids(&complete(m, &["--chat"]), 0),
        first_chat_turn(m, &[], "Hello")
    );
    // Without --chat the prompt is plain text.
    assert_eq!(
        prompt_ids(&complete(q, &[]), 0),
        ids(&serde_json::from_slice::<Value>(
            &kiln(&["tokenize", "-m", q, "--json", "Hello"]).stdout
        )
        .unwrap()["ids"])
    );
}

/// `kiln chat`'s `/save FILE` writes the conversation as OpenAI's messages and `/load FILE`
/// continues it: the next turn's prompt is the one the unbroken chat had. A file that is not
/// a conversation is a clear error.
#[test]
fn chat_save_and_load_continue_a_conversation() {
    use std::io::Write;
    let dir = test_data().join("fixtures/qwen2-tiny");
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("talk.json");
    let f = file.to_str().unwrap();
    let chat = |extra: &[&str], input: &str| -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["chat", "-m", d, "--json", "-n", "4", "-t", "1"])
            .args(["--chat-template", "chatml"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let turns = |out: &Output| -> Vec<Value> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let system = ["--system", "Be brief."];
    let whole = turns(&chat(&system, "Hello\nHow are you?\n"));
    assert_eq!(whole.len(), 2);
    let saved = turns(&chat(&system, &format!("Hello\n/save {f}\n")));
    let messages: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let reply = saved[0]["choices"][0]["message"]["content"].clone();
    assert_eq!(
        messages,
        serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": reply},
        ])
    );
    // A new chat, without --system: the loaded file brings it back.
    let resumed = turns(&chat(&[], &format!("/load {f}\nHow are you?\n")));
    assert_eq!(resumed.len(), 1);
    assert_eq!(
        ids(&resumed[0]["choices"][0]["prompt_token_ids"]),
        ids(&whole[1]["choices"][0]["prompt_token_ids"])
    );
    std::fs::write(&file, r#"[{"role": "robot", "content": "x"}]"#).unwrap();
    let out = chat(&[], &format!("/load {f}\nHi\n"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("role \"robot\""), "{err}");
}
