//! The llama.cpp-style conveniences of `kiln complete`: prompt escapes, `-f`, `-n`, `-c`,
//! `--version`, and the one-line load message when stderr is not a terminal.

use std::path::PathBuf;
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn tiny_model() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/llama-mha");
    p.to_str().unwrap().to_string()
}

/// The README's first command: a shell passes `\n` as two characters. Escapes are processed,
/// so gemma3-270m sees a real newline and answers (greedy, 16 tokens) exactly as it does
/// for the real-newline prompt; with --no-escape it sees the backslash.
#[test]
fn escaped_prompt_answers_like_the_real_newline_prompt() {
    let run = |prompt: &str, extra: &[&str]| {
        let mut args = vec![
            "complete",
            "-m",
            "gemma3-270m",
            "--temperature",
            "0",
            "-n",
            "16",
            "--echo",
            "-t",
            "2",
        ];
        args.extend_from_slice(extra);
        args.push(prompt);
        ok(&kiln(&args))
    };
    let real = run("Q: What is the largest animal?\nA:", &[]);
    let escaped = run(r"Q: What is the largest animal?\nA:", &[]);
    assert_eq!(escaped, real);
    assert!(real.starts_with("Q: What is the largest animal?\nA:"));
    // The answer is text, not the model repeating the prompt's pattern.
    assert!(!real.contains("A: A:"), "{real}");
    // --stop takes the same escapes: stopping at the first newline of the answer.
    let answer = &real["Q: What is the largest animal?\nA:".len()..];
    let first_line = answer.split('\n').next().unwrap();
    assert!(first_line.len() + 1 < answer.len(), "{answer:?}");
    let stopped = run(r"Q: What is the largest animal?\nA:", &["--stop", r"\n"]);
    assert_eq!(
        stopped,
        format!("Q: What is the largest animal?\nA:{first_line}\n")
    );
    let literal = run(r"Q: What is the largest animal?\nA:", &["--no-escape"]);
    assert!(literal.starts_with(r"Q: What is the largest animal?\nA:"));
    assert_ne!(literal, real);
}

#[test]
fn prompt_files_are_read_verbatim_and_stderr_says_what_loads() {
    let dir = std::env::temp_dir().join(format!("kiln-prompt-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prompt.txt");
    std::fs::write(&file, r"Hello\nworld").unwrap();
    let model = tiny_model();
    let out = kiln(&[
        "complete",
        "-m",
        &model,
        "-f",
        file.to_str().unwrap(),
        "-n",
        "2",
        "--echo",
    ]);
    let text = ok(&out);
    assert!(text.starts_with(r"Hello\nworld"), "{text}");
    // stderr is a pipe here, where no progress bar draws: one line says what is loading.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("kiln: loading ") && l.ends_with("llama-mha")),
        "{err}"
    );
    let missing = kiln(&["complete", "-m", &model, "-f", "/nonexistent/prompt.txt"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/prompt.txt"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn short_flags_set_tokens_and_context() {
    let model = tiny_model();
    let out = kiln(&[
        "complete",
        "-m",
        &model,
        "-n",
        "3",
        "--ignore-eos",
        "--json",
        "Hello",
    ]);
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // -c is --ctx-size: a context of 2 positions cannot hold this prompt.
    let out = kiln(&["complete", "-m", &model, "-c", "2", "Hello world, hello"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the context is 2 tokens"), "{err}");
}

#[test]
fn version_prints_the_package_version() {
    let out = ok(&kiln(&["--version"]));
    assert_eq!(out.trim(), format!("kiln {}", env!("CARGO_PKG_VERSION")));
}

/// The load settings are flags, each with its `KILN_*` variable; bad values are refused.
#[test]
fn engine_flags_and_their_environment_variables_are_checked() {
    let model = tiny_model();
    let run = |env: Option<(&str, &str)>, args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.args(["complete", "-m", &model, "-n", "2", "--json"])
            .args(args)
            .arg("Hello");
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let want = |out: &Output| {
        let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
        v["choices"][0]["text"].clone()
    };
    let base = want(&run(None, &[]));
    // A float model with mapped, plain-order weights gives the same text.
    assert_eq!(want(&run(None, &["--mmap", "--no-interleave"])), base);
    assert_eq!(want(&run(Some(("KILN_INTERLEAVE", "0")), &[])), base);
    for (env, args, expect) in [
        (None, &["--isa", "sse9"][..], "unknown kernel level"),
        (Some(("KILN_ISA", "sse9")), &[][..], "unknown kernel level"),
        (None, &["--cache-type", "f64"][..], "f32 or f16"),
        (Some(("KILN_CACHE_TYPE", "f64")), &[][..], "f32 or f16"),
        (Some(("KILN_NUMERICS", "fast")), &[][..], "exact or ggml"),
        // --tokenizer-path reaches the loader.
        (
            None,
            &["--tokenizer-path", "/nonexistent/t.json"][..],
            "no such file",
        ),
    ] {
        let out = run(env, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{env:?} {args:?}: {err}"
        );
    }
    #[cfg(target_arch = "x86_64")]
    {
        let out = run(None, &["--isa", "neon"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot run the neon kernels"), "{err}");
    }
}

/// `kiln inspect` (the one model description kiln has) on gemma3-270m, against the facts of
/// its GGUF file (gguf-py's counts: crates/formats/tests/data/real_gguf.expected.json).
#[test]
fn inspect_describes_a_real_model() {
    let text = ok(&kiln(&["inspect", "gemma3-270m"]));
    for want in [
        "architecture: gemma3",
        "18 layers, hidden 640, ffn 2048, 4 q heads / 1 kv heads, head dim 256, vocab 262144",
        "sliding win:  512 on 15 of 18 layers",
        "output:       tied to token_embd",
        "in 236 tensors",
        "F32:  109 tensors",
        "Q5_0:   81 tensors",
        "eos <eos> (1), <end_of_turn> (106)",
        "KV cache (f16)",
    ] {
        assert!(text.contains(want), "inspect lacks {want:?}:\n{text}");
    }
}
