//! Saved models in network2.py's JSON shape:
//! `{"sizes": [...], "weights": [[[...]...]...], "biases": [[[b], ...]...], "cost": "CrossEntropyCost"}`
//! (biases are column vectors, `sizes[l+1] × 1`), so network2.py's `load` reads them.

use crate::{Cost, Float, Network, NnError};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Serialize, Deserialize)]
struct Network2Json {
    sizes: Vec<usize>,
    weights: Vec<Vec<Vec<f64>>>,
    biases: Vec<Vec<Vec<f64>>>,
    cost: String,
}

/// The network as network2.py's JSON text.
pub fn to_network2_json<T: Float>(net: &Network<T>) -> String {
    let sizes = net.sizes().to_vec();
    let weights = net
        .weights()
        .iter()
        .zip(sizes.windows(2))
        .map(|(w, p)| {
            w.chunks(p[0])
                .map(|row| row.iter().map(|v| v.to_f64()).collect())
                .collect()
        })
        .collect();
    let biases = net
        .biases()
        .iter()
        .map(|b| b.iter().map(|v| vec![v.to_f64()]).collect())
        .collect();
    let j = Network2Json {
        sizes,
        weights,
        biases,
        cost: net.cost().network2_name().to_string(),
    };
    serde_json::to_string(&j).expect("plain numbers serialise")
}

/// Writes the network to `path` as network2.py's JSON.
pub fn save_model<T: Float>(net: &Network<T>, path: &Path) -> Result<(), NnError> {
    std::fs::write(path, to_network2_json(net)).map_err(|source| NnError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a model saved by [`save_model`] or by network2.py's `save`.
pub fn load_model<T: Float>(path: &Path) -> Result<Network<T>, NnError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| NnError::Io {
        path: p.clone(),
        source,
    })?;
    let bad = |msg: String| NnError::Format {
        path: p.clone(),
        msg,
    };
    let j: Network2Json = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let cost = Cost::parse(&j.cost).map_err(|e| bad(e.to_string()))?;
    if j.sizes.len() < 2
        || j.weights.len() != j.sizes.len() - 1
        || j.biases.len() != j.sizes.len() - 1
    {
        return Err(bad(format!(
            "{} layer sizes, {} weight and {} bias matrices",
            j.sizes.len(),
            j.weights.len(),
            j.biases.len()
        )));
    }
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for (l, p) in j.sizes.windows(2).enumerate() {
        let (w, b) = (&j.weights[l], &j.biases[l]);
        if w.len() != p[1] || w.iter().any(|r| r.len() != p[0]) {
            return Err(bad(format!("layer {l}: weights are not {}x{}", p[1], p[0])));
        }
        if b.len() != p[1] || b.iter().any(|r| r.len() != 1) {
            return Err(bad(format!("layer {l}: biases are not {}x1", p[1])));
        }
        weights.push(w.iter().flatten().map(|&v| T::from_f64(v)).collect());
        biases.push(b.iter().map(|r| T::from_f64(r[0])).collect());
    }
    Network::from_parts(&j.sizes, weights, biases, cost, 0).map_err(|e| bad(e.to_string()))
}
