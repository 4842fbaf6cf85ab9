//! Michael Nielsen's `network.py` (and the options of `network2.py`) in Rust: a fully
//! connected sigmoid network trained by mini-batch stochastic gradient descent on MNIST.
//!
//! ```no_run
//! use kiln_nn::{mnist, Network};
//! let data = mnist::load_nielsen::<f32>(&mnist::default_dir()?)?;
//! let mut net = Network::<f32>::new(&[784, 30, 10])?;
//! let report = net.sgd(&data.training, 30, 10, 3.0, Some(&data.test))?;
//! println!("best {:?} / 10000", report.best_accuracy());
//! # Ok::<(), kiln_nn::NnError>(())
//! ```
//!
//! A mini-batch is computed as two matrix products per layer (forward, and a fused
//! gradient-and-update product) with AVX2+FMA kernels chosen at run time and a portable
//! fallback; a seeded generator makes every run reproducible.

pub mod kernels;
pub mod mnist;
mod model;
mod network;
mod rng;

pub use kernels::{Float, KernelKind};
pub use model::{load_model, save_model, to_network2_json};
pub use network::{
    argmax, Cost, EpochReport, Evaluation, Event, Init, Monitor, Network, SgdConfig, TrainReport,
};
pub use rng::Rng;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid file: {msg}")]
    Format { path: String, msg: String },
    #[error("fetching MNIST failed: {0}")]
    Fetch(String),
    /// [`Network::train_until`]'s observer stopped the run.
    #[error("training cancelled")]
    Cancelled,
}

/// Labelled examples: `len()` rows of `dim()` inputs each, stored contiguously, and a class
/// label per row (the target is the one-hot vector of the label, as in network.py).
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset<T> {
    dim: usize,
    inputs: Vec<T>,
    labels: Vec<u8>,
    /// When the inputs are bytes scaled by 1/256 (MNIST pixels), the bytes themselves: the
    /// trainer reads these (a quarter of the memory traffic) and gets identical values.
    bytes: Option<Vec<u8>>,
}

impl<T: Float> Dataset<T> {
    /// Inputs given as bytes, each input `byte / 256` (Nielsen's MNIST pixel scaling).
    pub fn from_bytes(dim: usize, bytes: Vec<u8>, labels: Vec<u8>) -> Result<Self, NnError> {
        let inputs = bytes.iter().map(|&b| T::from_byte(b)).collect();
        let mut d = Dataset::new(dim, inputs, labels)?;
        d.bytes = Some(bytes);
        Ok(d)
    }

    /// This data set with its inputs also kept as bytes when every input is exactly
    /// `byte / 256` (MNIST pixels as mnist_loader gives them, converted to floats): the trainer
    /// then reads the bytes, a quarter of the memory traffic, and computes the same values.
    pub fn with_bytes_if_exact(mut self) -> Self {
        if self.bytes.is_some() {
            return self;
        }
        let mut bytes = Vec::with_capacity(self.inputs.len());
        for &v in &self.inputs {
            let scaled = v.to_f64() * 256.0;
            if !(0.0..=255.0).contains(&scaled) || scaled.fract() != 0.0 {
                return self;
            }
            let b = scaled as u8;
            if T::from_byte(b).to_f64() != v.to_f64() {
                return self;
            }
            bytes.push(b);
        }
        self.bytes = Some(bytes);
        self
    }
}

impl<T: Copy> Dataset<T> {
    /// `inputs.len()` must be `labels.len() * dim`.
    pub fn new(dim: usize, inputs: Vec<T>, labels: Vec<u8>) -> Result<Self, NnError> {
        if dim == 0 || inputs.len() != labels.len() * dim {
            return Err(NnError::Invalid(format!(
                "dataset: {} inputs for {} labels of dimension {dim}",
                inputs.len(),
                labels.len()
            )));
        }
        Ok(Dataset {
            dim,
            inputs,
            labels,
            bytes: None,
        })
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// All inputs, row after row.
    pub fn inputs(&self) -> &[T] {
        &self.inputs
    }
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
    /// Row `i`'s inputs.
    pub fn input(&self, i: usize) -> &[T] {
        &self.inputs[i * self.dim..(i + 1) * self.dim]
    }
    /// Pixel bytes, if the data set was made by [`Dataset::from_bytes`].
    pub fn bytes(&self) -> Option<&[u8]> {
        self.bytes.as_deref()
    }
    /// Splits into rows `..at` and `at..` (clamped) without copying the first part.
    pub fn split_at(mut self, at: usize) -> (Self, Self) {
        let at = at.min(self.len());
        let tail = Dataset {
            dim: self.dim,
            inputs: self.inputs.split_off(at * self.dim),
            labels: self.labels.split_off(at),
            bytes: self.bytes.as_mut().map(|b| b.split_off(at * self.dim)),
        };
        (self, tail)
    }
    /// A copy of rows `lo..hi` (clamped to the data).
    pub fn slice(&self, lo: usize, hi: usize) -> Self {
        let hi = hi.min(self.len());
        let lo = lo.min(hi);
        Dataset {
            dim: self.dim,
            inputs: self.inputs[lo * self.dim..hi * self.dim].to_vec(),
            labels: self.labels[lo..hi].to_vec(),
            bytes: self
                .bytes
                .as_ref()
                .map(|b| b[lo * self.dim..hi * self.dim].to_vec()),
        }
    }
}
