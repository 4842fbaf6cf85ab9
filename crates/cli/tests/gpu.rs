//! The `kiln` binary on a GPU adapter: `-ngl` splits answer as the full offload does and say
//! where the layers run, `KILN_GPU_LAYERS` is read, a model over `--gpu-memory` is refused with
//! the `-ngl` that fits, `kiln inspect --device gpu` prints the plan, and `kiln bench` reports
//! the adapter and the device memory used. On CI the adapter is Mesa's lavapipe; without one
//! each test prints one line and skips.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/fixtures/llama-mha")
        .display()
        .to_string()
}

fn kiln(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args)
        .env_remove("KILN_GPU_LAYERS")
        .env_remove("KILN_DEVICE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run kiln")
}

fn ok(out: &Output, what: &str) -> (String, String) {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{what}: {e}");
    (o, e)
}

fn have_gpu(test: &str) -> bool {
    let (o, _) = ok(&kiln(&["inspect", "--devices"], &[]), "inspect --devices");
    let none = o.starts_with("no GPU adapter");
    if none {
        eprintln!("{test}: skipped, no GPU adapter or driver");
    }
    !none
}

fn token_ids(json: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["choices"][0]["token_ids"].clone()
}

#[test]
fn ngl_splits_answer_as_the_full_offload_and_say_where_layers_run() {
    if !have_gpu("cli -ngl") {
        return;
    }
    let m = fixture();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["complete", "-m", &m, "-n", "6", "--json", "--device", "gpu"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--prompt", "The quick brown fox"]);
        ok(&kiln(&args, env), &format!("{extra:?}"))
    };
    let (full, err) = run(&[], &[]);
    assert!(err.contains("kiln: device: gpu"), "{err}");
    assert!(!err.contains("layers"), "{err}");
    let (split, err) = run(&["-ngl", "2"], &[]);
    assert!(
        err.contains("for 2 of 3 layers, 1 blocks on the CPU"),
        "{err}"
    );
    assert_eq!(token_ids(&split), token_ids(&full));
    let (env_split, err) = run(&[], &[("KILN_GPU_LAYERS", "1")]);
    assert!(
        err.contains("for 1 of 3 layers, 2 blocks on the CPU"),
        "{err}"
    );
    assert_eq!(token_ids(&env_split), token_ids(&full));

    let out = kiln(
        &[
            "complete",
            "-m",
            &m,
            "--device",
            "gpu",
            "--gpu-memory",
            "1K",
            "--prompt",
            "x",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the model does not fit the GPU"), "{err}");
}

#[test]
fn inspect_and_bench_report_the_adapter_and_device_memory() {
    if !have_gpu("cli inspect/bench on the gpu") {
        return;
    }
    let m = fixture();
    let (o, _) = ok(
        &kiln(&["inspect", &m, "--device", "gpu", "-c", "128"], &[]),
        "inspect --device gpu",
    );
    assert!(o.contains("\ngpu:          gpu:"), "{o}");
    assert!(o.contains("  all 3 layers: "), "{o}");
    assert!(o.contains("for 128 positions"), "{o}");
    assert!(o.contains("  -ngl all: 3/3 layers on the GPU"), "{o}");
    let (o, _) = ok(
        &kiln(&["inspect", &m, "--device", "cpu"], &[]),
        "inspect --device cpu",
    );
    assert!(o.contains("gpu:          none (device: cpu)"), "{o}");

    let (o, _) = ok(
        &kiln(
            &[
                "bench", "-m", &m, "--device", "gpu", "-ngl", "2", "-p", "8", "-n", "4", "-r", "1",
            ],
            &[],
        ),
        "bench",
    );
    let line = o
        .lines()
        .find(|l| l.starts_with("gpu memory: 2 of 3 layers on gpu:"))
        .unwrap_or_else(|| panic!("{o}"));
    assert!(
        line.contains("weights") && line.contains("KV cache"),
        "{line}"
    );
    let (o, _) = ok(
        &kiln(
            &[
                "bench", "-m", &m, "--device", "gpu", "-p", "8", "-n", "4", "-r", "1", "--json",
            ],
            &[],
        ),
        "bench --json",
    );
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    let g = &v[0]["gpu"];
    assert_eq!(
        (g["gpu_layers"].as_u64(), g["layers"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(g["weight_bytes"].as_u64().unwrap() > 0, "{g}");
    // The fixture: 2 blocks × keys and values × 4 heads × 16 dims × (8 or more) positions × f32.
    assert!(
        g["kv_cache_bytes"].as_u64().unwrap() >= 2 * 2 * 4 * 16 * 8 * 4,
        "{g}"
    );
}
