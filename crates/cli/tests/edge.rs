//! The `kiln` binary against bad flags, closed pipes and stuck clients (kiln issue 20). Every
//! child process is waited for with a deadline and killed if it overstays; the server listens
//! on 127.0.0.1 only.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

fn fixture() -> String {
    data().join("fixtures/llama-mha").display().to_string()
}

fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env_remove("KILN_API_KEY");
    c
}

/// Waits for `child` at most `limit`; kills it (and fails) if it is still running then.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs kiln to its end (at most 60 s), capturing its output.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = kiln();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    wait_bounded(&mut child, Duration::from_secs(60), &format!("{args:?}"));
    child.wait_with_output().unwrap()
}

fn assert_clean_error(out: &Output, needle: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded: {err}");
    assert_ne!(out.status.code(), Some(101), "{what}: panicked: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(err.contains(needle), "{what}: no {needle:?} in {err}");
}

#[test]
fn serve_refuses_flags_that_would_mislead() {
    let m = fixture();
    for (args, env, needle) in [
        (vec!["--api-key", ""], vec![], "empty"),
        (vec![], vec![("KILN_API_KEY", "")], "empty"),
        (vec!["--ctx-size", "0"], vec![], "at least 1"),
        (vec!["--parallel", "0"], vec![], "at least 1"),
        (vec!["--prefill-chunk", "0"], vec![], "at least 1"),
        (vec!["--drain-timeout", "0"], vec![], "more than 0"),
    ] {
        let mut all = vec!["serve", "-m", &m, "--port", "0"];
        all.extend(&args);
        let out = run(&all, &env);
        assert_clean_error(&out, needle, &format!("{args:?} {env:?}"));
    }
}

#[test]
fn bench_without_repetitions_is_an_error() {
    // Zero repetitions would print NaN speeds.
    let out = run(&["bench", "-m", &fixture(), "-r", "0"], &[]);
    assert_clean_error(&out, "at least 1", "bench -r 0");
}

#[test]
fn perplexity_with_a_tiny_context_is_an_error() {
    let text = data().join("ppl-text.txt").display().to_string();
    for c in ["0", "1"] {
        let out = run(&["perplexity", "-m", &fixture(), "-f", &text, "-c", c], &[]);
        assert_clean_error(&out, "at least 4", &format!("-c {c}"));
    }
}

#[test]
fn a_closed_stdout_ends_quietly() {
    for args in [
        vec!["inspect".to_string(), fixture()],
        vec![
            "tokenize".to_string(),
            "-m".to_string(),
            fixture(),
            "hello".to_string(),
        ],
    ] {
        let mut child = kiln()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before kiln prints (as `| head` does once it has its lines).
        drop(child.stdout.take());
        let status = wait_bounded(
            &mut child,
            Duration::from_secs(60),
            "kiln with closed stdout",
        );
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(status.code(), Some(101), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

#[test]
fn tokenizer_path_is_used() {
    // A missing tokenizer is an error for every subcommand that loads a model.
    for sub in [
        vec!["tokenize", "hello"],
        vec!["complete", "--max-tokens", "1", "hello"],
    ] {
        let mut args = vec![sub[0], "-m"];
        let m = fixture();
        args.push(&m);
        args.extend(["--tokenizer-path", "/nonexistent/tokenizer.json"]);
        args.extend(&sub[1..]);
        let out = run(&args, &[]);
        assert_clean_error(&out, "/nonexistent/tokenizer.json", &format!("{sub:?}"));
    }
    // Another tokenizer gives its own ids (transformers' ids for it, from the fixture checks).
    let checks: Value = serde_json::from_str(
        &std::fs::read_to_string(data().join("fixtures/tokenizers/tokenizer_checks.json")).unwrap(),
    )
    .unwrap();
    let case = &checks["spm-bpe-512"]["strings"][0];
    let tok = data()
        .join("fixtures/tokenizers/spm-bpe-512/tokenizer.json")
        .display()
        .to_string();
    let out = run(
        &[
            "tokenize",
            "-m",
            &fixture(),
            "--tokenizer-path",
            &tok,
            "--json",
            case["text"].as_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ids"], case["ids"]);
}

/// Starts `kiln serve` on a free loopback port; returns the child and its address.
fn start_server(extra: &[&str]) -> (Child, String) {
    let m = fixture();
    let mut args = vec!["serve", "-m", &m, "--port", "0", "-t", "1", "-p", "1"];
    args.extend(extra);
    let mut child = kiln()
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("http://").nth(1) {
                let _ = tx.send(
                    rest.trim_end_matches("/v1")
                        .split('/')
                        .next()
                        .map(String::from),
                );
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Some(addr)) => (child, addr),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kiln serve did not start: {other:?}");
        }
    }
}

#[test]
fn serve_exits_on_sigterm_within_the_drain_deadline_despite_stuck_clients() {
    let (mut child, addr) = start_server(&["--drain-timeout", "1", "--read-timeout", "120"]);
    // One client stops in the middle of its headers, another in the middle of its body.
    let mut headers = TcpStream::connect(&addr).unwrap();
    headers
        .write_all(b"POST /v1/completions HTTP/1.1\r\nHost: te")
        .unwrap();
    let mut body = TcpStream::connect(&addr).unwrap();
    body.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{\"prompt\"",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_bounded(
        &mut child,
        Duration::from_secs(10),
        "kiln serve after SIGTERM",
    );
    assert!(status.success(), "{status:?}");
    // The drain deadline (1 s) plus the scheduler's shutdown, with room for a loaded machine.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop((headers, body));
}

/// llama.cpp's `-ngl N` / `--gpu-layers N` is one flag (not `-n gl`) on every command that
/// loads a model: a count with `--device cpu` is refused with one clear line (never ignored),
/// a value that is not a count, `auto` or `all` is a usage error, and `-ngl 0` runs on the CPU
/// and says so. (`crates/cli/tests/gpu.rs` runs the splits themselves on an adapter.)
#[test]
fn gpu_layers_are_one_flag_and_checked() {
    let m = fixture();
    let text = data().join("ppl-text.txt").display().to_string();
    for args in [
        &[
            "complete", "-m", &m, "-ngl", "99", "--device", "cpu", "--prompt", "x",
        ][..],
        &[
            "complete", "-m", &m, "-ngl=99", "--device", "cpu", "--prompt", "x",
        ],
        &[
            "perplexity",
            "-m",
            &m,
            "--gpu-layers",
            "2",
            "--device",
            "cpu",
            "-f",
            &text,
        ],
        &["bench", "-m", &m, "--n-gpu-layers", "1", "--device", "cpu"],
    ] {
        let out = run(args, &[]);
        assert_clean_error(&out, "-ngl", &format!("{args:?}"));
        assert_clean_error(
            &out,
            "--device cpu runs every layer on the CPU",
            &format!("{args:?}"),
        );
    }
    let out = run(
        &["complete", "-m", &m, "-ngl", "lots", "--prompt", "x"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_clean_error(
        &out,
        "a number of layers, `auto` (as many as fit) or `all`",
        "-ngl lots",
    );
    let out = run(
        &[
            "complete", "-m", &m, "-ngl", "0", "--device", "gpu", "-n", "2", "--prompt", "x",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kiln: device: cpu (-ngl 0)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kiln serve --alias` (repeatable): the first alias is the id, `/v1/models` lists every
/// alias and the file name, and a request naming another model is served, not refused.
#[test]
fn serve_lists_aliases_and_serves_any_model_name() {
    let (mut child, addr) = start_server(&["--alias", "local", "--alias", "tiny"]);
    let request = |req: String| -> String {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        out
    };
    let models =
        request("GET /v1/models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_string());
    let body = r#"{"model": "openai/whatever", "prompt": "Hi", "max_tokens": 2}"#;
    let completion = request(format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let _ = child.kill();
    let _ = child.wait();
    let json_of =
        |r: &str| -> Value { serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap() };
    assert!(models.starts_with("HTTP/1.1 200"), "{models}");
    let ids: Vec<String> = json_of(&models)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["local", "tiny", "llama-mha"]);
    assert!(completion.starts_with("HTTP/1.1 200"), "{completion}");
    assert_eq!(json_of(&completion)["model"], "local");
}
