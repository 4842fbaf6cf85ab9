//! `kiln quantize` and `kiln convert` end to end: outputs, messages, refusals, and Ctrl-C
//! leaving nothing behind.

use std::path::PathBuf;
use std::process::{Command, Output};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// `kiln quantize IN OUT TYPE`.
fn quantize(input: &str, output: &str, ty: &str) -> Output {
    kiln()
        .args(["quantize", input, output, ty])
        .output()
        .unwrap()
}

#[test]
fn quantize_writes_a_model_that_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q8.gguf");
    let src = data().join("fixtures/qwen2-tiny");
    let r = quantize(src.to_str().unwrap(), out.to_str().unwrap(), "q8_0");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        out.to_str().unwrap()
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("Q8_0"), "{err}");
    let r = kiln()
        .args(["inspect", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(r.status.success());
    assert!(String::from_utf8_lossy(&r.stdout).contains("Q8_0"));
    // requantising warns
    let out2 = tmp.path().join("q4.gguf");
    let r = quantize(out.to_str().unwrap(), out2.to_str().unwrap(), "Q4_0");
    assert!(r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("already quantized"));
}

#[test]
fn quantize_refuses_unknown_types_and_missing_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.gguf");
    let src = data().join("fixtures/qwen2-tiny");
    let r = quantize(src.to_str().unwrap(), out.to_str().unwrap(), "Q3_X");
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("unknown quantization type") && err.contains("Q4_K_M"),
        "{err}"
    );
    let r = quantize("/nonexistent/model", out.to_str().unwrap(), "Q8_0");
    assert_eq!(r.status.code(), Some(1));
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
