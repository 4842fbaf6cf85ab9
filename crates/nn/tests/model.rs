//! Saved models are network2.py's JSON: checked by reading one back with a Python port of
//! network2.py's `load` + `feedforward` (bench/nn/network2_load.py), and by round trips.
use kiln_nn::{load_model, save_model, Cost, Init, Network, NnError, Rng};
use std::path::PathBuf;
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-nn-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn network2_python_load_reads_our_models() {
    for (cost, name) in [
        (Cost::Quadratic, "QuadraticCost"),
        (Cost::CrossEntropy, "CrossEntropyCost"),
    ] {
        let net = Network::<f32>::with_options(&[6, 5, 4, 3], Init::Scaled, cost, 4).unwrap();
        let path = tmp(&format!("model-{name}.json"));
        save_model(&net, &path).unwrap();
        let mut rng = Rng::new(2);
        let inputs: Vec<Vec<f32>> = (0..3)
            .map(|_| (0..6).map(|_| rng.next_f64() as f32).collect())
            .collect();
        let in_path = tmp(&format!("inputs-{name}.json"));
        std::fs::write(&in_path, serde_json::to_string(&inputs).unwrap()).unwrap();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../bench/nn/network2_load.py"
        );
        let out = Command::new("python3")
            .arg(script)
            .arg(&path)
            .arg(&in_path)
            .output()
            .expect("python3 is needed for this test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["cost"], name);
        for (i, x) in inputs.iter().enumerate() {
            let ours = net.feedforward(x).unwrap();
            let theirs = v["outputs"][i].as_array().unwrap();
            assert_eq!(theirs.len(), 3);
            for (a, b) in ours.iter().zip(theirs) {
                let b = b.as_f64().unwrap();
                assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }
}

#[test]
fn json_shape_and_round_trip() {
    let net = Network::<f64>::with_options(&[4, 3, 2], Init::Large, Cost::CrossEntropy, 1).unwrap();
    let text = kiln_nn::to_network2_json(&net);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["sizes"], serde_json::json!([4, 3, 2]));
    assert_eq!(v["cost"], "CrossEntropyCost");
    // weights[0] is 3 rows of 4; biases[0] is a 3x1 column
    assert_eq!(v["weights"][0].as_array().unwrap().len(), 3);
    assert_eq!(v["weights"][0][0].as_array().unwrap().len(), 4);
    assert_eq!(v["biases"][0].as_array().unwrap().len(), 3);
    assert_eq!(v["biases"][0][0].as_array().unwrap().len(), 1);
    assert_eq!(
        v["weights"][0][1][2].as_f64().unwrap(),
        net.weights()[0][4 + 2]
    );
    let path = tmp("rt.json");
    save_model(&net, &path).unwrap();
    let back: Network<f64> = load_model(&path).unwrap();
    assert_eq!(back.sizes(), net.sizes());
    assert_eq!(back.weights(), net.weights());
    assert_eq!(back.biases(), net.biases());
    assert_eq!(back.cost(), Cost::CrossEntropy);
    // f32 models survive the f64 text exactly
    let n32 = Network::<f32>::new(&[4, 3, 2]).unwrap();
    save_model(&n32, &path).unwrap();
    let b32: Network<f32> = load_model(&path).unwrap();
    assert_eq!(b32.weights(), n32.weights());
}

#[test]
fn malformed_models_are_errors() {
    let cases = [
        "not json",
        r#"{"sizes":[2,1],"weights":[[[1,2]]],"biases":[[[0]]],"cost":"NoSuchCost"}"#,
        r#"{"sizes":[2,1],"weights":[[[1]]],"biases":[[[0]]],"cost":"QuadraticCost"}"#,
        r#"{"sizes":[2,1],"weights":[[[1,2]]],"biases":[[0]],"cost":"QuadraticCost"}"#,
        r#"{"sizes":[2],"weights":[],"biases":[],"cost":"QuadraticCost"}"#,
        r#"{"sizes":[2,1,1],"weights":[[[1,2]]],"biases":[[[0]]],"cost":"QuadraticCost"}"#,
    ];
    for (i, c) in cases.iter().enumerate() {
        let path = tmp(&format!("bad{i}.json"));
        std::fs::write(&path, c).unwrap();
        let r: Result<Network<f32>, NnError> = load_model(&path);
        assert!(matches!(r, Err(NnError::Format { .. })), "case {i}: {r:?}");
    }
    let ok = r#"{"sizes":[2,1],"weights":[[[1,2]]],"biases":[[[0.5]]],"cost":"QuadraticCost"}"#;
    let path = tmp("ok.json");
    std::fs::write(&path, ok).unwrap();
    let net: Network<f64> = load_model(&path).unwrap();
    let a = net.feedforward(&[0.25, 0.5]).unwrap()[0];
    let want = 1.0 / (1.0 + (-(0.25 + 1.0 + 0.5f64)).exp());
    assert!((a - want).abs() < 1e-15);
    assert!(load_model::<f32>(&tmp("missing.json")).is_err());
}
