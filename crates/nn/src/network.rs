//! The network: Nielsen's `network.py` (sigmoid layers, quadratic cost, mini-batch SGD) with the
//! options of `network2.py` (cross-entropy cost, L2 regularisation, scaled initialisation, early
//! stopping, monitoring), computed a whole mini-batch at a time.

use crate::kernels::{Float, KernelKind};
use crate::{Dataset, NnError, Rng};
use std::ops::ControlFlow;
use std::time::Instant;

/// The cost function minimised by SGD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// `½‖a − y‖²`; output error `(a − y) ⊙ σ'(z)` (network.py).
    Quadratic,
    /// `Σ −y ln a − (1 − y) ln(1 − a)`; output error `a − y` (network2.py).
    CrossEntropy,
}

impl Cost {
    /// The class name network2.py stores in a saved model.
    pub fn network2_name(self) -> &'static str {
        match self {
            Cost::Quadratic => "QuadraticCost",
            Cost::CrossEntropy => "CrossEntropyCost",
        }
    }

    /// Parses network2.py's class name or the CLI spelling (`quadratic`, `cross-entropy`).
    pub fn parse(s: &str) -> Result<Cost, NnError> {
        match s {
            "QuadraticCost" | "quadratic" => Ok(Cost::Quadratic),
            "CrossEntropyCost" | "cross-entropy" | "crossentropy" => Ok(Cost::CrossEntropy),
            _ => Err(NnError::Invalid(format!(
                "unknown cost {s:?} (quadratic | cross-entropy)"
            ))),
        }
    }

    /// The cost of one output `a` against the target `y` (network2.py's `fn`, with
    /// `nan_to_num` semantics for the cross-entropy: `0·ln 0` counts as 0, `ln 0` as a huge
    /// finite number).
    pub fn value<T: Float>(self, a: &[T], y: &[T]) -> f64 {
        match self {
            Cost::Quadratic => {
                0.5 * a
                    .iter()
                    .zip(y)
                    .map(|(&a, &y)| {
                        let d = a.to_f64() - y.to_f64();
                        d * d
                    })
                    .sum::<f64>()
            }
            Cost::CrossEntropy => a
                .iter()
                .zip(y)
                .map(|(&a, &y)| {
                    let (a, y) = (a.to_f64(), y.to_f64());
                    xlogy(-y, a) + xlogy(-(1.0 - y), 1.0 - a)
                })
                .sum(),
        }
    }
}

/// `c * ln(a)` as numpy's `nan_to_num(c * log(a))`: `0 * ln 0 → 0`, `±inf → ±f64::MAX`.
fn xlogy(c: f64, a: f64) -> f64 {
    let v = c * a.ln();
    if v.is_nan() {
        0.0
    } else if v.is_infinite() {
        if v > 0.0 {
            f64::MAX
        } else {
            f64::MIN
        }
    } else {
        v
    }
}

/// Weight initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Weights and biases N(0, 1) (network.py; network2.py's `large_weight_initializer`).
    Large,
    /// Weights N(0, 1)/√n_in, biases N(0, 1) (network2.py's `default_weight_initializer`).
    Scaled,
}

impl Init {
    /// Parses `large` or `scaled`.
    pub fn parse(s: &str) -> Result<Init, NnError> {
        match s {
            "large" => Ok(Init::Large),
            "scaled" => Ok(Init::Scaled),
            _ => Err(NnError::Invalid(format!(
                "unknown init {s:?} (large | scaled)"
            ))),
        }
    }
}

/// What to measure after each epoch (network2.py's `monitor_*` flags). Accuracy on the
/// evaluation data is always measured when evaluation data is given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Monitor {
    pub evaluation_cost: bool,
    pub training_cost: bool,
    pub training_accuracy: bool,
}

/// Settings of one training run.
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    pub epochs: usize,
    pub mini_batch_size: usize,
    /// Learning rate η.
    pub eta: f64,
    /// L2 regularisation λ (0 = none): `w ← (1 − ηλ/n) w − (η/m) Σ∇w`, biases not decayed.
    pub lambda: f64,
    /// Stop when the evaluation accuracy has not improved for this many epochs (0 = never).
    pub early_stopping_n: usize,
    pub monitor: Monitor,
}

impl SgdConfig {
    /// network.py's settings: no regularisation, no early stopping, no extra monitoring.
    pub fn new(epochs: usize, mini_batch_size: usize, eta: f64) -> Self {
        SgdConfig {
            epochs,
            mini_batch_size,
            eta,
            lambda: 0.0,
            early_stopping_n: 0,
            monitor: Monitor::default(),
        }
    }
}

/// What one epoch measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochReport {
    /// 0-based, as network.py prints it.
    pub epoch: usize,
    /// Seconds spent in the SGD updates of this epoch (monitoring not included).
    pub train_seconds: f64,
    /// CPU seconds of the training thread in the SGD updates (what the epoch costs on an idle
    /// core even when the machine is busy); `None` where the platform cannot tell.
    pub train_cpu_seconds: Option<f64>,
    /// Seconds spent measuring accuracy and cost after the epoch.
    pub eval_seconds: f64,
    pub n_training: usize,
    pub n_evaluation: usize,
    pub evaluation_accuracy: Option<usize>,
    pub evaluation_cost: Option<f64>,
    pub training_accuracy: Option<usize>,
    pub training_cost: Option<f64>,
}

/// What [`Network::train`] reports to its observer while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// `done` of `total` training examples of epoch `epoch` processed.
    Progress {
        epoch: usize,
        done: usize,
        total: usize,
    },
    /// An epoch finished and was measured.
    Epoch(&'a EpochReport),
}

/// The result of a training run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainReport {
    pub epochs: Vec<EpochReport>,
    /// True when early stopping ended the run before `epochs`.
    pub stopped_early: bool,
}

impl TrainReport {
    /// The best evaluation accuracy over the epochs, if measured.
    pub fn best_accuracy(&self) -> Option<usize> {
        self.epochs
            .iter()
            .filter_map(|e| e.evaluation_accuracy)
            .max()
    }
}

/// Correct count and summed cost over a data set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub correct: usize,
    /// Σ cost over the examples (without the L2 term, not divided by n).
    pub cost_sum: f64,
    pub n: usize,
}

/// A fully connected sigmoid network.
#[derive(Clone, Debug)]
pub struct Network<T: Float> {
    sizes: Vec<usize>,
    /// `weights[l]` is `sizes[l+1] × sizes[l]`, row-major.
    weights: Vec<Vec<T>>,
    biases: Vec<Vec<T>>,
    cost: Cost,
    rng: Rng,
    kernel: KernelKind,
    threads: usize,
}

/// Largest layer width or count accepted (guards against absurd allocations).
const MAX_WIDTH: usize = 1 << 20;
const MAX_PARAMS: usize = 1 << 30;

fn check_sizes(sizes: &[usize]) -> Result<(), NnError> {
    if sizes.len() < 2 {
        return Err(NnError::Invalid(format!(
            "a network needs at least two layers, got {sizes:?}"
        )));
    }
    if sizes.iter().any(|&s| s == 0 || s > MAX_WIDTH) {
        return Err(NnError::Invalid(format!(
            "layer sizes must be between 1 and {MAX_WIDTH}, got {sizes:?}"
        )));
    }
    let params: usize = sizes.windows(2).map(|p| p[0] * p[1] + p[1]).sum();
    if params > MAX_PARAMS {
        return Err(NnError::Invalid(format!(
            "{params} parameters is more than this trainer accepts"
        )));
    }
    Ok(())
}

impl<T: Float> Network<T> {
    /// network.py's `Network(sizes)`: N(0, 1) weights and biases, quadratic cost, seed 0.
    pub fn new(sizes: &[usize]) -> Result<Self, NnError> {
        Self::with_options(sizes, Init::Large, Cost::Quadratic, 0)
    }

    /// A fresh network. The seed determines the initial weights and every later shuffle.
    pub fn with_options(
        sizes: &[usize],
        init: Init,
        cost: Cost,
        seed: u64,
    ) -> Result<Self, NnError> {
        check_sizes(sizes)?;
        let mut rng = Rng::new(seed);
        // network.py draws all biases first, then all weights.
        let biases: Vec<Vec<T>> = sizes[1..]
            .iter()
            .map(|&n| (0..n).map(|_| T::from_f64(rng.normal())).collect())
            .collect();
        let weights: Vec<Vec<T>> = sizes
            .windows(2)
            .map(|p| {
                let scale = match init {
                    Init::Large => 1.0,
                    Init::Scaled => 1.0 / (p[0] as f64).sqrt(),
                };
                (0..p[0] * p[1])
                    .map(|_| T::from_f64(rng.normal() * scale))
                    .collect()
            })
            .collect();
        Ok(Network {
            sizes: sizes.to_vec(),
            weights,
            biases,
            cost,
            rng,
            kernel: KernelKind::detect(),
            threads: default_threads(),
        })
    }

    /// A network from given parameters (`weights[l]` row-major `sizes[l+1] × sizes[l]`).
    pub fn from_parts(
        sizes: &[usize],
        weights: Vec<Vec<T>>,
        biases: Vec<Vec<T>>,
        cost: Cost,
        seed: u64,
    ) -> Result<Self, NnError> {
        check_sizes(sizes)?;
        if weights.len() != sizes.len() - 1 || biases.len() != sizes.len() - 1 {
            return Err(NnError::Invalid(format!(
                "{} weight and {} bias arrays for {} layers",
                weights.len(),
                biases.len(),
                sizes.len()
            )));
        }
        for (l, p) in sizes.windows(2).enumerate() {
            if weights[l].len() != p[0] * p[1] || biases[l].len() != p[1] {
                return Err(NnError::Invalid(format!(
                    "layer {l}: expected {}x{} weights and {} biases, got {} and {}",
                    p[1],
                    p[0],
                    p[1],
                    weights[l].len(),
                    biases[l].len()
                )));
            }
        }
        Ok(Network {
            sizes: sizes.to_vec(),
            weights,
            biases,
            cost,
            rng: Rng::new(seed),
            kernel: KernelKind::detect(),
            threads: default_threads(),
        })
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }
    /// `weights()[l]`: row-major `sizes[l+1] × sizes[l]`.
    pub fn weights(&self) -> &[Vec<T>] {
        &self.weights
    }
    pub fn biases(&self) -> &[Vec<T>] {
        &self.biases
    }
    pub fn weights_mut(&mut self) -> &mut [Vec<T>] {
        &mut self.weights
    }
    pub fn biases_mut(&mut self) -> &mut [Vec<T>] {
        &mut self.biases
    }
    pub fn cost(&self) -> Cost {
        self.cost
    }
    pub fn set_cost(&mut self, cost: Cost) {
        self.cost = cost;
    }
    /// Re-seeds the shuffling stream.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }
    /// Chooses the kernel family (for comparisons; the default is the best detected one).
    pub fn set_kernel(&mut self, kind: KernelKind) {
        self.kernel = kind;
    }
    pub fn kernel(&self) -> KernelKind {
        self.kernel
    }
    /// Threads used for evaluation (training is one thread: the mini-batches are too small
    /// to split).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// network.py's `feedforward`: the output activations for one input.
    pub fn feedforward(&self, x: &[T]) -> Result<Vec<T>, NnError> {
        if x.len() != self.sizes[0] {
            return Err(NnError::Invalid(format!(
                "input has {} values, the network takes {}",
                x.len(),
                self.sizes[0]
            )));
        }
        let mut a = x.to_vec();
        for (w, b) in self.weights.iter().zip(&self.biases) {
            let n = b.len();
            let mut z = vec![T::zero(); n];
            T::forward_product(self.kernel, w, n, a.len(), b, &a, &[0], &mut z);
            z.iter_mut().for_each(|v| *v = v.sigmoid());
            a = z;
        }
        Ok(a)
    }

    /// The index of the largest output (the predicted digit).
    pub fn predict(&self, x: &[T]) -> Result<usize, NnError> {
        Ok(argmax(&self.feedforward(x)?))
    }

    /// network.py's `backprop` for one example, one layer at a time (the reference the batched
    /// trainer is tested against): the gradient of this example's cost, `(∇b, ∇w)` per layer.
    #[allow(clippy::type_complexity)]
    pub fn backprop(&self, x: &[T], y: &[T]) -> Result<(Vec<Vec<T>>, Vec<Vec<T>>), NnError> {
        let last = *self.sizes.last().unwrap_or(&0);
        if x.len() != self.sizes[0] || y.len() != last {
            return Err(NnError::Invalid(format!(
                "backprop: input {} / target {} values for a {:?} network",
                x.len(),
                y.len(),
                self.sizes
            )));
        }
        let mut acts: Vec<Vec<T>> = vec![x.to_vec()];
        for (w, b) in self.weights.iter().zip(&self.biases) {
            let a = acts.last().unwrap();
            let k = a.len();
            let out: Vec<T> = (0..b.len())
                .map(|j| {
                    let mut s = b[j];
                    for t in 0..k {
                        s += w[j * k + t] * a[t];
                    }
                    s.sigmoid()
                })
                .collect();
            acts.push(out);
        }
        let nl = self.weights.len();
        let mut nb: Vec<Vec<T>> = vec![Vec::new(); nl];
        let mut nw: Vec<Vec<T>> = vec![Vec::new(); nl];
        let out = &acts[nl];
        let mut delta: Vec<T> = out
            .iter()
            .zip(y)
            .map(|(&a, &y)| match self.cost {
                Cost::Quadratic => (a - y) * a * (T::one() - a),
                Cost::CrossEntropy => a - y,
            })
            .collect();
        for l in (0..nl).rev() {
            let prev = &acts[l];
            let k = prev.len();
            nw[l] = delta
                .iter()
                .flat_map(|&d| prev.iter().map(move |&p| d * p))
                .collect();
            nb[l] = delta.clone();
            if l > 0 {
                let w = &self.weights[l];
                delta = (0..k)
                    .map(|t| {
                        let mut s = T::zero();
                        for (j, &d) in delta.iter().enumerate() {
                            s += w[j * k + t] * d;
                        }
                        s * prev[t] * (T::one() - prev[t])
                    })
                    .collect();
            }
        }
        Ok((nb, nw))
    }

    fn check_data(&self, data: &Dataset<T>, what: &str) -> Result<(), NnError> {
        if data.dim() != self.sizes[0] {
            return Err(NnError::Invalid(format!(
                "{what} data has {} inputs per example, the network takes {}",
                data.dim(),
                self.sizes[0]
            )));
        }
        let classes = *self.sizes.last().unwrap();
        if let Some(&bad) = data.labels().iter().find(|&&l| l as usize >= classes) {
            return Err(NnError::Invalid(format!(
                "{what} data has label {bad}, the network has {classes} outputs"
            )));
        }
        Ok(())
    }

    /// network.py's `update_mini_batch` (with network2.py's L2 term): one gradient step on the
    /// examples `indices` of `data`; `n` is the training-set size used by the decay factor.
    pub fn update_mini_batch(
        &mut self,
        data: &Dataset<T>,
        indices: &[usize],
        eta: f64,
        lambda: f64,
        n: usize,
    ) -> Result<(), NnError> {
        self.check_data(data, "training")?;
        if indices.is_empty() || indices.iter().any(|&i| i >= data.len()) {
            return Err(NnError::Invalid(
                "mini-batch indices empty or out of range".into(),
            ));
        }
        let mut ws = Workspace::new(&self.sizes, indices.len());
        let decay = T::from_f64(1.0 - eta * lambda / n.max(1) as f64);
        self.forward_batch(&mut ws, 0, data, indices);
        self.step(&mut ws, data, indices, &[], T::from_f64(eta), decay);
        Ok(())
    }

    /// Loads the input rows of mini-batch `idx` into buffer set `slot` of the workspace (widening
    /// byte pixels into the staging rows, or pointing at the float rows in place).
    fn load_rows(
        kind: KernelKind,
        ws: &mut Workspace<T>,
        slot: usize,
        data: &Dataset<T>,
        idx: &[usize],
        dim: usize,
    ) {
        // Inputs stored as bytes (MNIST) are widened into a contiguous staging buffer: a quarter
        // of the memory traffic of reading scattered float rows, and cache-friendly rows after.
        if let Some(bytes) = data.bytes() {
            for (i, &ex) in idx.iter().enumerate() {
                let src = &bytes[ex * dim..(ex + 1) * dim];
                let dst = &mut ws.stage[slot][i * dim..(i + 1) * dim];
                crate::kernels::widen_bytes(kind, src, dst);
                ws.offs0[slot][i] = i * dim;
            }
        } else {
            for (o, &i) in ws.offs0[slot].iter_mut().zip(idx) {
                *o = i * dim;
            }
        }
    }

    /// The forward pass of mini-batch `idx` into buffer set `slot`.
    fn forward_batch(&self, ws: &mut Workspace<T>, slot: usize, data: &Dataset<T>, idx: &[usize]) {
        let m = idx.len();
        let dim = self.sizes[0];
        Self::load_rows(self.kernel, ws, slot, data, idx, dim);
        let staged = data.bytes().is_some();
        let input0: &[T] = if staged {
            &ws.stage[slot]
        } else {
            data.inputs()
        };
        for l in 0..self.weights.len() {
            let (n, k) = (self.sizes[l + 1], self.sizes[l]);
            let (before, after) = ws.acts[slot].split_at_mut(l);
            let out = &mut after[0][..m * n];
            let (x, offs): (&[T], &[usize]) = if l == 0 {
                (input0, &ws.offs0[slot][..m])
            } else {
                (&before[l - 1], &ws.offs[l - 1][..m])
            };
            let (w, b) = (&self.weights[l], &self.biases[l]);
            T::forward_product(self.kernel, w, n, k, b, x, offs, out);
            out.iter_mut().for_each(|v| *v = v.sigmoid());
        }
    }

    /// One SGD step over mini-batch `idx`, whose forward pass is already in buffer set
    /// `ws.cur`; when `next` is not empty, the next mini-batch's forward pass is computed with
    /// the updated weights in the same pass over them (into the other buffer set, which then
    /// becomes current).
    fn step(
        &mut self,
        ws: &mut Workspace<T>,
        data: &Dataset<T>,
        idx: &[usize],
        next: &[usize],
        eta: T,
        decay: T,
    ) {
        let m = idx.len();
        let mn = next.len();
        let nl = self.weights.len();
        let dim = self.sizes[0];
        let kind = self.kernel;
        let (cur, nxt) = (ws.cur, 1 - ws.cur);
        // output error
        {
            let n = self.sizes[nl];
            let a = &ws.acts[cur][nl - 1][..m * n];
            let d = &mut ws.deltas[nl - 1][..m * n];
            d.copy_from_slice(a);
            for (i, &ex) in idx.iter().enumerate() {
                let y = data.labels()[ex] as usize;
                d[i * n + y] -= T::one();
            }
            if self.cost == Cost::Quadratic {
                for (d, &a) in d.iter_mut().zip(a) {
                    *d *= a * (T::one() - a);
                }
            }
        }
        // backward: delta_l = (delta_{l+1} W_{l+1}) ⊙ a_l(1 − a_l), with the old weights
        for l in (0..nl - 1).rev() {
            let (n, k) = (self.sizes[l + 2], self.sizes[l + 1]);
            let (lo, hi) = ws.deltas.split_at_mut(l + 1);
            let (dn, d) = (&hi[0][..m * n], &mut lo[l][..m * k]);
            let w = &self.weights[l + 1];
            let a = &ws.acts[cur][l][..m * k];
            for i in 0..m {
                let row = &mut d[i * k..(i + 1) * k];
                row.iter_mut().for_each(|v| *v = T::zero());
                for j in 0..n {
                    let c = dn[i * n + j];
                    for (r, &wv) in row.iter_mut().zip(&w[j * k..(j + 1) * k]) {
                        *r += c * wv;
                    }
                }
                for (r, &av) in row.iter_mut().zip(&a[i * k..(i + 1) * k]) {
                    *r *= av * (T::one() - av);
                }
            }
        }
        // the next mini-batch's rows: widen them now, and start loading the one after
        if mn > 0 {
            Self::load_rows(kind, ws, nxt, data, next, dim);
        }
        let staged = data.bytes().is_some();
        // update: b -= (eta/m) Σ delta; w = decay w − (eta/m) Σ delta aᵀ; then forward(next)
        let scale = -eta / T::from_f64(m as f64);
        for l in 0..nl {
            let (n, k) = (self.sizes[l + 1], self.sizes[l]);
            let d = &ws.deltas[l][..m * n];
            let coef = &mut ws.coef[..n * m];
            for j in 0..n {
                let mut s = T::zero();
                for i in 0..m {
                    let c = scale * d[i * n + j];
                    coef[j * m + i] = c;
                    s += c;
                }
                self.biases[l][j] += s;
            }
            let (acts_c, acts_n) = if cur == 0 {
                let (a, b) = ws.acts.split_at_mut(1);
                (&a[0], &mut b[0])
            } else {
                let (a, b) = ws.acts.split_at_mut(1);
                (&b[0], &mut a[0])
            };
            let (xu, offs_u): (&[T], &[usize]) = if l == 0 {
                let x = if staged {
                    &ws.stage[cur][..]
                } else {
                    data.inputs()
                };
                (x, &ws.offs0[cur][..m])
            } else {
                (&acts_c[l - 1], &ws.offs[l - 1][..m])
            };
            if mn == 0 {
                T::update_product(kind, &mut self.weights[l], n, k, decay, coef, xu, offs_u);
                continue;
            }
            let (before, after) = acts_n.split_at_mut(l);
            let out = &mut after[0][..mn * n];
            let (xf, offs_f): (&[T], &[usize]) = if l == 0 {
                let x = if staged {
                    &ws.stage[nxt][..]
                } else {
                    data.inputs()
                };
                (x, &ws.offs0[nxt][..mn])
            } else {
                (&before[l - 1], &ws.offs[l - 1][..mn])
            };
            let (w, b) = (&mut self.weights[l], &self.biases[l]);
            T::update_forward(kind, w, n, k, decay, coef, xu, offs_u, b, xf, offs_f, out);
            out.iter_mut().for_each(|v| *v = v.sigmoid());
        }
        if mn > 0 {
            ws.cur = nxt;
        }
    }

    /// network.py's `SGD`: `epochs` passes over shuffled `training_data` in consecutive
    /// mini-batches; after each epoch, the number of `test_data` examples classified right.
    pub fn sgd(
        &mut self,
        training_data: &Dataset<T>,
        epochs: usize,
        mini_batch_size: usize,
        eta: f64,
        test_data: Option<&Dataset<T>>,
    ) -> Result<TrainReport, NnError> {
        let config = SgdConfig::new(epochs, mini_batch_size, eta);
        self.train(training_data, &config, test_data, |_| {})
    }

    /// network2.py's `SGD` with everything optional: L2, early stopping on the accuracy on
    /// `evaluation_data`, per-epoch monitoring; `observer` sees progress and epoch reports.
    pub fn train(
        &mut self,
        training_data: &Dataset<T>,
        config: &SgdConfig,
        evaluation_data: Option<&Dataset<T>>,
        mut observer: impl FnMut(Event<'_>),
    ) -> Result<TrainReport, NnError> {
        self.train_until(training_data, config, evaluation_data, |e| {
            observer(e);
            ControlFlow::Continue(())
        })
    }

    /// [`Network::train`] that stops when `observer` answers `Break` (to a progress event,
    /// about 200 an epoch, or an epoch's report): [`NnError::Cancelled`], with the weights
    /// as the mini-batches done so far left them (Ctrl-C in the Python package).
    pub fn train_until(
        &mut self,
        training_data: &Dataset<T>,
        config: &SgdConfig,
        evaluation_data: Option<&Dataset<T>>,
        mut observer: impl FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<TrainReport, NnError> {
        self.check_data(training_data, "training")?;
        if let Some(e) = evaluation_data {
            self.check_data(e, "evaluation")?;
        }
        let n = training_data.len();
        if n == 0 {
            return Err(NnError::Invalid("no training data".into()));
        }
        if config.mini_batch_size == 0 {
            return Err(NnError::Invalid(
                "mini-batch size must be at least 1".into(),
            ));
        }
        if !config.eta.is_finite() || !config.lambda.is_finite() || config.lambda < 0.0 {
            return Err(NnError::Invalid(format!(
                "eta must be finite and lambda finite and >= 0 (eta {}, lambda {})",
                config.eta, config.lambda
            )));
        }
        if config.early_stopping_n > 0 && evaluation_data.is_none() {
            return Err(NnError::Invalid(
                "early stopping needs evaluation data".into(),
            ));
        }
        let mbs = config.mini_batch_size.min(n);
        let mut ws = Workspace::new(&self.sizes, mbs);
        let eta = T::from_f64(config.eta);
        let decay = T::from_f64(1.0 - config.eta * config.lambda / n as f64);
        let mut order: Vec<usize> = (0..n).collect();
        let n_batches = n.div_ceil(mbs);
        let tick = (n_batches / 200).max(1);
        let mut report = TrainReport::default();
        let mut best = 0usize;
        let mut since_best = 0usize;
        for epoch in 0..config.epochs {
            let t0 = Instant::now();
            let c0 = thread_cpu_seconds();
            self.rng.shuffle(&mut order);
            ws.cur = 0;
            self.forward_batch(&mut ws, 0, training_data, &order[..mbs]);
            for (b, batch) in order.chunks(mbs).enumerate() {
                let next = order.get((b + 1) * mbs..).unwrap_or(&[]);
                let next = &next[..next.len().min(mbs)];
                // the mini-batch after next is scattered in memory: start loading it now
                let after = order.get((b + 2) * mbs..).unwrap_or(&[]);
                for &i in &after[..after.len().min(mbs)] {
                    let dim = training_data.dim();
                    match training_data.bytes() {
                        Some(x) => crate::kernels::prefetch_rows(x, &[i * dim], dim),
                        None => {
                            crate::kernels::prefetch_rows(training_data.inputs(), &[i * dim], dim)
                        }
                    }
                }
                self.step(&mut ws, training_data, batch, next, eta, decay);
                if (b + 1) % tick == 0 || b + 1 == n_batches {
                    let progress = Event::Progress {
                        epoch,
                        done: (b * mbs + batch.len()).min(n),
                        total: n,
                    };
                    if observer(progress).is_break() {
                        return Err(NnError::Cancelled);
                    }
                }
            }
            let train_seconds = t0.elapsed().as_secs_f64();
            let train_cpu_seconds = match (c0, thread_cpu_seconds()) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            let t1 = Instant::now();
            let mut er = EpochReport {
                epoch,
                train_seconds,
                train_cpu_seconds,
                n_training: n,
                ..Default::default()
            };
            let m = config.monitor;
            if m.training_cost || m.training_accuracy {
                let ev = self.evaluate_all(training_data);
                if m.training_cost {
                    er.training_cost = Some(self.mean_cost(&ev, config.lambda));
                }
                if m.training_accuracy {
                    er.training_accuracy = Some(ev.correct);
                }
            }
            if let Some(data) = evaluation_data {
                let ev = self.evaluate_all(data);
                er.n_evaluation = data.len();
                er.evaluation_accuracy = Some(ev.correct);
                if m.evaluation_cost {
                    er.evaluation_cost = Some(self.mean_cost(&ev, config.lambda));
                }
            }
            er.eval_seconds = t1.elapsed().as_secs_f64();
            if observer(Event::Epoch(&er)).is_break() {
                return Err(NnError::Cancelled);
            }
            let acc = er.evaluation_accuracy;
            report.epochs.push(er);
            if config.early_stopping_n > 0 {
                let acc = acc.unwrap_or(0);
                if acc > best {
                    best = acc;
                    since_best = 0;
                } else {
                    since_best += 1;
                }
                if since_best == config.early_stopping_n {
                    report.stopped_early = epoch + 1 < config.epochs;
                    break;
                }
            }
        }
        Ok(report)
    }

    /// network2.py's `total_cost`: mean cost plus `½(λ/n)Σ‖w‖²`, n = this data set's size.
    fn mean_cost(&self, ev: &Evaluation, lambda: f64) -> f64 {
        let n = ev.n.max(1) as f64;
        let sq: f64 = self
            .weights
            .iter()
            .flat_map(|w| w.iter())
            .map(|&v| v.to_f64() * v.to_f64())
            .sum();
        ev.cost_sum / n + 0.5 * (lambda / n) * sq
    }

    /// network.py's `evaluate`: how many examples the network classifies right.
    pub fn evaluate(&self, data: &Dataset<T>) -> Result<usize, NnError> {
        self.check_data(data, "test")?;
        Ok(self.evaluate_all(data).correct)
    }

    /// network2.py's `total_cost` on `data` (with the L2 term for `lambda`).
    pub fn total_cost(&self, data: &Dataset<T>, lambda: f64) -> Result<f64, NnError> {
        self.check_data(data, "evaluation")?;
        Ok(self.mean_cost(&self.evaluate_all(data), lambda))
    }

    /// Correct count and summed cost over `data`, batched and split over threads.
    pub fn evaluate_all(&self, data: &Dataset<T>) -> Evaluation {
        let n = data.len();
        let work: usize = n * self.weights.iter().map(|w| w.len()).sum::<usize>();
        let threads = if work < 2_000_000 { 1 } else { self.threads };
        if threads <= 1 || n < 2 * threads {
            return self.evaluate_range(data, 0, n);
        }
        let per = n.div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (lo, hi) = (t * per, ((t + 1) * per).min(n));
                    s.spawn(move || self.evaluate_range(data, lo, hi))
                })
                .collect();
            let mut total = Evaluation::default();
            for h in handles {
                let e = h.join().unwrap_or_default();
                total.correct += e.correct;
                total.cost_sum += e.cost_sum;
                total.n += e.n;
            }
            total
        })
    }

    fn evaluate_range(&self, data: &Dataset<T>, lo: usize, hi: usize) -> Evaluation {
        const BLOCK: usize = 12;
        let mut ws = Workspace::new(&self.sizes, BLOCK);
        let nl = self.weights.len();
        let classes = self.sizes[nl];
        let dim = self.sizes[0];
        let mut y = vec![T::zero(); classes];
        let mut ev = Evaluation {
            n: hi.saturating_sub(lo),
            ..Default::default()
        };
        let mut start = lo;
        while start < hi {
            let m = BLOCK.min(hi - start);
            for (i, o) in ws.offs0[0][..m].iter_mut().enumerate() {
                *o = (start + i) * dim;
            }
            for l in 0..nl {
                let (n, k) = (self.sizes[l + 1], self.sizes[l]);
                let (before, after) = ws.acts[0].split_at_mut(l);
                let out = &mut after[0][..m * n];
                let (x, offs): (&[T], &[usize]) = if l == 0 {
                    (data.inputs(), &ws.offs0[0][..m])
                } else {
                    (&before[l - 1], &ws.offs[l - 1][..m])
                };
                T::forward_product(
                    self.kernel,
                    &self.weights[l],
                    n,
                    k,
                    &self.biases[l],
                    x,
                    offs,
                    out,
                );
                out.iter_mut().for_each(|v| *v = v.sigmoid());
            }
            let out = &ws.acts[0][nl - 1];
            for i in 0..m {
                let a = &out[i * classes..(i + 1) * classes];
                let label = data.labels()[start + i] as usize;
                if argmax(a) == label {
                    ev.correct += 1;
                }
                y[label] = T::one();
                ev.cost_sum += self.cost.value(a, &y);
                y[label] = T::zero();
            }
            start += m;
        }
        ev
    }
}

/// Index of the first largest value (numpy's `argmax`).
pub fn argmax<T: Float>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// CPU time consumed by the calling thread, in seconds.
pub fn thread_cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Buffers for one mini-batch, allocated once per run. Inputs and activations come in two
/// sets (current and next mini-batch) for the fused update-and-forward pass.
struct Workspace<T> {
    cur: usize,
    offs0: [Vec<usize>; 2],
    /// `offs[l][i] = i * sizes[l+1]`: rows of the contiguous activations of layer l+1.
    offs: Vec<Vec<usize>>,
    acts: [Vec<Vec<T>>; 2],
    deltas: Vec<Vec<T>>,
    coef: Vec<T>,
    /// The mini-batch's input rows widened from bytes (`m × sizes[0]`).
    stage: [Vec<T>; 2],
}

impl<T: Float> Workspace<T> {
    fn new(sizes: &[usize], m: usize) -> Self {
        let layers = &sizes[1..];
        let acts = || layers.iter().map(|&n| vec![T::zero(); m * n]).collect();
        Workspace {
            cur: 0,
            offs0: [vec![0; m], vec![0; m]],
            offs: layers
                .iter()
                .map(|&n| (0..m).map(|i| i * n).collect())
                .collect(),
            acts: [acts(), acts()],
            deltas: layers.iter().map(|&n| vec![T::zero(); m * n]).collect(),
            coef: vec![T::zero(); m * layers.iter().copied().max().unwrap_or(1)],
            stage: [vec![T::zero(); m * sizes[0]], vec![T::zero(); m * sizes[0]]],
        }
    }
}
