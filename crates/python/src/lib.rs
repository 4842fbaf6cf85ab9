//! `kiln._kiln`: the Rust half of the `kiln` Python package. Every function here is a thin
//! shell over a `kiln_engine` / `kiln_nn` call: arguments in, the engine's result out. The
//! Python half (`python/kiln`) gives them the shapes of Meta's `llama.Llama`, of a general
//! `LLM` class and of network.py.
//!
//! The interpreter is released (`Python::detach`) while the engine computes; between
//! generation steps, perplexity chunks and `nn` SGD mini-batches (about 200 checks an epoch)
//! the interpreter is briefly re-attached to check for signals, so Ctrl-C stops a long
//! generation, perplexity run or training with `KeyboardInterrupt`.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_engine::meta::{self, MetaParams};
use kiln_engine::{
    Completion, DeviceChoice, Engine, EngineError, EngineOptions, GenerateParams, GpuLayers, Isa,
    KvType, Numerics, Residency, SamplingParams, TokenLogprob,
};
use kiln_nn::{mnist, Dataset, Event, Network, SgdConfig};
use kiln_tokenizer::ChatMessage;
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

fn engine_err(e: EngineError) -> PyErr {
    match e {
        EngineError::Cancelled => PyKeyboardInterrupt::new_err("generation cancelled"),
        EngineError::Invalid(_) | EngineError::ContextLength { .. } | EngineError::Tokenizer(_) => {
            PyValueError::new_err(e.to_string())
        }
        e => PyRuntimeError::new_err(e.to_string()),
    }
}

fn value_err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A cancel check for `generate_until`, called between steps with the interpreter released:
/// attaches briefly and runs Python's signal handlers. A raised exception (KeyboardInterrupt
/// from Ctrl-C) is kept to be raised when generation has stopped.
struct SignalCheck {
    raised: Option<PyErr>,
}

impl SignalCheck {
    fn new() -> Self {
        SignalCheck { raised: None }
    }
    fn cancelled(&mut self) -> bool {
        if self.raised.is_none() {
            if let Err(e) = Python::attach(|py| py.check_signals()) {
                self.raised = Some(e);
            }
        }
        self.raised.is_some()
    }
    fn finish<T>(self, r: Result<T, EngineError>) -> PyResult<T> {
        match (r, self.raised) {
            (Err(EngineError::Cancelled), Some(e)) => Err(e),
            (r, _) => r.map_err(engine_err),
        }
    }
}

/// A seed for sampling when none is given: a fresh one per call (as the CLI), reported back.
fn fresh_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 of the time and the address of a local, so calls in one nanosecond differ.
    let local = 0u8;
    let mut z = t ^ ((&local as *const u8 as u64).rotate_left(32));
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 1
}

/// A prompt given as text or as token ids.
#[derive(FromPyObject)]
enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// One token with its logprob and the most likely alternatives.
#[pyclass(frozen, get_all, module = "kiln._kiln", name = "TokenLogprob")]
#[derive(Clone)]
struct PyTokenLogprob {
    id: u32,
    text: String,
    logprob: Option<f32>,
    top: Vec<(u32, String, f32)>,
    text_offset: usize,
}

#[pymethods]
impl PyTokenLogprob {
    fn __repr__(&self) -> String {
        format!(
            "TokenLogprob(id={}, text={:?}, logprob={:?})",
            self.id, self.text, self.logprob
        )
    }
}

impl From<&TokenLogprob> for PyTokenLogprob {
    fn from(t: &TokenLogprob) -> Self {
        PyTokenLogprob {
            id: t.id,
            text: t.text.clone(),
            logprob: t.logprob,
            top: t.top.clone(),
            text_offset: t.text_offset,
        }
    }
}

/// The result for one prompt.
#[pyclass(frozen, get_all, module = "kiln._kiln", name = "Completion")]
struct PyCompletion {
    text: String,
    prompt_text: String,
    prompt_token_ids: Vec<u32>,
    token_ids: Vec<u32>,
    finish_reason: &'static str,
    logprobs: Option<Vec<PyTokenLogprob>>,
    prompt_logprobs: Option<Vec<PyTokenLogprob>>,
    seed: u64,
}

#[pymethods]
impl PyCompletion {
    fn __repr__(&self) -> String {
        format!(
            "Completion(text={:?}, finish_reason={:?}, tokens={})",
            self.text,
            self.finish_reason,
            self.token_ids.len()
        )
    }
}

fn completion(c: Completion, seed: u64) -> PyCompletion {
    let conv =
        |v: &Option<Vec<TokenLogprob>>| v.as_ref().map(|v| v.iter().map(Into::into).collect());
    PyCompletion {
        logprobs: conv(&c.logprobs),
        prompt_logprobs: conv(&c.prompt_logprobs),
        text: c.text,
        prompt_text: c.prompt_text,
        prompt_token_ids: c.prompt_token_ids,
        token_ids: c.token_ids,
        finish_reason: c.finish_reason.as_str(),
        seed,
    }
}

/// Sampling and stopping settings, as `kiln complete` takes them.
#[pyclass(frozen, module = "kiln._kiln", name = "Params")]
#[derive(Clone)]
struct PyParams {
    params: GenerateParams,
}

#[pymethods]
impl PyParams {
    #[new]
    #[pyo3(signature = (max_tokens=128, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0,
        seed=None, stop=Vec::new(), repeat_penalty=1.0, presence_penalty=0.0,
        frequency_penalty=0.0, logit_bias=Vec::new(), logprobs=None, echo=false,
        ignore_eos=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_tokens: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        min_p: f32,
        seed: Option<u64>,
        stop: Vec<String>,
        repeat_penalty: f32,
        presence_penalty: f32,
        frequency_penalty: f32,
        logit_bias: Vec<(u32, f32)>,
        logprobs: Option<usize>,
        echo: bool,
        ignore_eos: bool,
    ) -> PyResult<Self> {
        let sampling = SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
            repeat_penalty,
            presence_penalty,
            frequency_penalty,
            logit_bias,
            seed: seed.unwrap_or_else(fresh_seed),
        };
        sampling.validate().map_err(value_err)?;
        Ok(PyParams {
            params: GenerateParams {
                max_tokens,
                sampling,
                stop,
                ignore_eos,
                logprobs,
                echo,
                ..Default::default()
            },
        })
    }

    #[getter]
    fn seed(&self) -> u64 {
        self.params.sampling.seed
    }
}

/// A loaded model: `kiln_engine::Engine`.
#[pyclass(frozen, module = "kiln._kiln", name = "Engine")]
struct PyEngine {
    engine: Arc<Engine>,
    path: PathBuf,
}

fn parse_opt<T: std::str::FromStr>(what: &str, v: Option<&str>) -> PyResult<Option<T>>
where
    T::Err: std::fmt::Display,
{
    v.map(|s| {
        s.parse::<T>()
            .map_err(|e| PyValueError::new_err(format!("{what} {s:?}: {e}")))
    })
    .transpose()
}

/// `gpu_layers=`: a count (`12`) or `"auto"` / `"all"`, as `-ngl` takes them.
#[derive(FromPyObject)]
enum LayersArg {
    Count(usize),
    Name(String),
}

impl LayersArg {
    fn parse(self) -> PyResult<GpuLayers> {
        match self {
            LayersArg::Count(n) => Ok(GpuLayers::Count(n)),
            LayersArg::Name(s) => s
                .parse::<GpuLayers>()
                .map_err(|e| PyValueError::new_err(format!("gpu_layers: {e}"))),
        }
    }
}

impl PyEngine {
    fn prompt_ids(&self, p: Prompt) -> PyResult<Vec<u32>> {
        match p {
            Prompt::Text(t) => self.engine.tokenize(&t).map_err(engine_err),
            Prompt::Ids(ids) => Ok(ids),
        }
    }
}

#[pymethods]
impl PyEngine {
    /// Loads `model`: a GGUF file, a Hugging Face directory, a Meta checkpoint directory or a
    /// known model name (pulled into `$KILN_HOME/models` on first use; None: the default).
    #[new]
    #[pyo3(signature = (model=None, tokenizer_path=None, context=None, max_batch=64, threads=0,
        isa=None, numerics=None, cache_type=None, mmap=false, device=None, gpu_layers=None,
        gpu_memory=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: Option<PathBuf>,
        tokenizer_path: Option<PathBuf>,
        context: Option<usize>,
        max_batch: usize,
        threads: usize,
        isa: Option<&str>,
        numerics: Option<&str>,
        cache_type: Option<&str>,
        mmap: bool,
        device: Option<&str>,
        gpu_layers: Option<LayersArg>,
        gpu_memory: Option<u64>,
    ) -> PyResult<Self> {
        let opts = EngineOptions {
            threads,
            context,
            max_batch,
            tokenizer_path,
            isa: parse_opt::<Isa>("isa", isa)?,
            numerics: parse_opt::<Numerics>("numerics", numerics)?,
            kv_type: parse_opt::<KvType>("cache_type", cache_type)?,
            residency: mmap.then_some(Residency::Mapped),
            interleave: true,
            device: parse_opt::<DeviceChoice>("device", device)?.unwrap_or(DeviceChoice::Cpu),
            gpu_layers: gpu_layers
                .map(LayersArg::parse)
                .transpose()?
                .unwrap_or_default(),
            gpu_memory,
            ..Default::default()
        };
        let arg = model.map(|p| p.to_string_lossy().into_owned());
        py.detach(move || {
            let path =
                kiln_pull::resolve_model(arg.as_deref(), true, &mut |_| {}).map_err(value_err)?;
            let engine = Engine::load(&path, &opts).map_err(|e| {
                PyValueError::new_err(format!("cannot load {}: {e}", path.display()))
            })?;
            Ok(PyEngine {
                engine: Arc::new(engine),
                path,
            })
        })
    }

    /// The path the model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }
    /// Where the model runs, and why when it is not where `device` asked ("device: cpu (no GPU
    /// adapter or driver found)", "device: gpu:0 ... for 13 of 25 layers, ...").
    #[getter]
    fn device(&self) -> String {
        self.engine.device.clone()
    }
    /// `(offloaded layers, all layers, weight bytes on the device)` on a GPU, else None.
    #[getter]
    fn gpu_layers(&self) -> Option<(usize, usize, usize)> {
        self.engine
            .gpu
            .as_ref()
            .map(|g| (g.gpu_layers, g.layers, g.weight_bytes))
    }
    #[getter]
    fn name(&self) -> String {
        self.engine.name.clone()
    }
    /// Positions per sequence (prompt plus generated tokens).
    #[getter]
    fn context(&self) -> usize {
        self.engine.limits.context
    }
    #[getter]
    fn max_batch(&self) -> usize {
        self.engine.limits.max_batch
    }
    #[getter]
    fn vocab_size(&self) -> usize {
        self.engine.tokenizer.vocab_size()
    }
    #[getter]
    fn bos_id(&self) -> Option<u32> {
        self.engine.tokenizer.bos_id()
    }
    /// The tokens that end generation.
    #[getter]
    fn eos_ids(&self) -> Vec<u32> {
        self.engine.eos_ids()
    }
    #[getter]
    fn chat_template(&self) -> Option<String> {
        self.engine.chat_template.clone()
    }

    /// Text to ids; with `add_special` the model's BOS is prepended when it uses one.
    #[pyo3(signature = (text, add_special=true))]
    fn tokenize(&self, text: &str, add_special: bool) -> PyResult<Vec<u32>> {
        self.engine
            .tokenizer
            .encode(text, add_special)
            .map_err(value_err)
    }

    /// Ids to text; with `skip_special` control tokens are left out.
    #[pyo3(signature = (ids, skip_special=false))]
    fn detokenize(&self, ids: Vec<u32>, skip_special: bool) -> String {
        self.engine.tokenizer.decode(&ids, skip_special)
    }

    /// Generates for a batch of prompts (text or ids); one `Completion` per prompt.
    fn complete(
        &self,
        py: Python<'_>,
        prompts: Vec<Prompt>,
        params: &PyParams,
    ) -> PyResult<Vec<PyCompletion>> {
        let ids = prompts
            .into_iter()
            .map(|p| self.prompt_ids(p))
            .collect::<PyResult<Vec<_>>>()?;
        let engine = &self.engine;
        let params = &params.params;
        let mut check = SignalCheck::new();
        let r = py.detach(|| {
            engine.generate_until(&ids, params, &mut |_, _| {}, &mut || check.cancelled())
        });
        let seed = params.sampling.seed;
        Ok(check
            .finish(r)?
            .into_iter()
            .map(|c| completion(c, seed))
            .collect())
    }

    /// A conversation (`(role, content)` pairs) as prompt ids: the model's chat template, or
    /// Meta's Llama 2 format for a Llama model without one.
    fn chat_prompt(&self, messages: Vec<(String, String)>) -> PyResult<Vec<u32>> {
        let msgs: Vec<ChatMessage> = messages
            .iter()
            .map(|(r, c)| ChatMessage::new(r, c))
            .collect();
        self.engine.chat_prompt(&msgs).map_err(engine_err)
    }

    /// Streams one prompt's text as it is generated.
    fn stream(&self, prompt: Prompt, params: &PyParams) -> PyResult<PyStream> {
        let ids = self.prompt_ids(prompt)?;
        let engine = self.engine.clone();
        let params = params.params.clone();
        let seed = params.sampling.seed;
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = channel();
        let stop = cancel.clone();
        std::thread::spawn(move || {
            let text_tx = tx.clone();
            let r = engine.generate_until(
                std::slice::from_ref(&ids),
                &params,
                &mut |_, t| {
                    let _ = text_tx.send(Piece::Text(t.to_string()));
                },
                &mut || stop.load(Ordering::Relaxed),
            );
            let _ = tx.send(match r {
                Ok(mut c) => Piece::Done(Box::new(c.remove(0))),
                Err(e) => Piece::Failed(e),
            });
        });
        Ok(PyStream {
            rx: Mutex::new(Some(rx)),
            cancel,
            result: Mutex::new(None),
            seed,
        })
    }

    /// Meta's `Llama.generate`: `(tokens, logprobs)` (see `kiln_engine::meta`).
    #[pyo3(signature = (prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo, seed))]
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::type_complexity)]
    fn meta_generate(
        &self,
        py: Python<'_>,
        prompt_tokens: Vec<Vec<u32>>,
        max_gen_len: usize,
        temperature: f32,
        top_p: f32,
        logprobs: bool,
        echo: bool,
        seed: u64,
    ) -> PyResult<(Vec<Vec<u32>>, Option<Vec<Vec<f32>>>)> {
        let params = MetaParams {
            max_gen_len,
            temperature,
            top_p,
            logprobs,
            echo,
            seed,
        };
        let engine = &self.engine;
        let mut check = SignalCheck::new();
        let r = py
            .detach(|| meta::generate(engine, &prompt_tokens, &params, &mut || check.cancelled()));
        let out = check.finish(r)?;
        Ok((out.tokens, out.logprobs))
    }

    /// One dialog of Meta's `chat_completion`: its prompt ids and whether it is unsafe.
    fn meta_chat_dialog(&self, messages: Vec<(String, String)>) -> PyResult<(Vec<u32>, bool)> {
        let msgs: Vec<ChatMessage> = messages
            .iter()
            .map(|(r, c)| ChatMessage::new(r, c))
            .collect();
        meta::chat_dialog(&self.engine, &msgs).map_err(engine_err)
    }

    /// Perplexity of `text` as llama-perplexity computes it: `(ppl, stderr, tokens_scored)`.
    /// Signals are checked before every chunk (Ctrl-C stops it with `KeyboardInterrupt`).
    fn perplexity(&self, py: Python<'_>, text: &str, ctx: usize) -> PyResult<(f64, f64, usize)> {
        let engine = &self.engine;
        let tokens = engine.tokenize(text).map_err(engine_err)?;
        let mut check = SignalCheck::new();
        let r =
            py.detach(|| engine.perplexity_until(&tokens, ctx, |_, _, _| {}, || check.cancelled()));
        let p = check.finish(r)?;
        Ok((p.ppl, p.stderr, p.tokens_scored))
    }
}

/// Meta's `model_parallel_size` check (see `kiln_engine::meta`).
#[pyfunction]
fn check_model_parallel_size(path: PathBuf, n: usize) -> PyResult<()> {
    meta::check_model_parallel_size(&path, n).map_err(engine_err)
}

/// Resolves a model argument as the CLI does (a path, or a known name, pulled on first use).
#[pyfunction]
#[pyo3(signature = (model=None))]
fn resolve_model(py: Python<'_>, model: Option<String>) -> PyResult<PathBuf> {
    py.detach(move || kiln_pull::resolve_model(model.as_deref(), true, &mut |_| {}))
        .map_err(value_err)
}

enum Piece {
    Text(String),
    Done(Box<Completion>),
    Failed(EngineError),
}

/// An iterator of text pieces; generation runs on its own thread and stops when the iterator
/// is dropped or interrupted.
#[pyclass(module = "kiln._kiln", name = "Stream")]
struct PyStream {
    rx: Mutex<Option<Receiver<Piece>>>,
    cancel: Arc<AtomicBool>,
    result: Mutex<Option<Py<PyCompletion>>>,
    seed: u64,
}

#[pymethods]
impl PyStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let mut guard = self
            .rx
            .lock()
            .map_err(|_| PyRuntimeError::new_err("stream poisoned"))?;
        let Some(rx) = guard.as_mut() else {
            return Ok(None);
        };
        loop {
            // Moved in as `&mut` (a `Receiver` is `Send`, not `Sync`).
            let r = &mut *rx;
            let got = py.detach(move || r.recv_timeout(Duration::from_millis(50)));
            match got {
                Ok(Piece::Text(t)) => return Ok(Some(t)),
                Ok(Piece::Done(c)) => {
                    *guard = None;
                    let c = Py::new(py, completion(*c, self.seed))?;
                    *self
                        .result
                        .lock()
                        .map_err(|_| PyRuntimeError::new_err("poisoned"))? = Some(c);
                    return Ok(None);
                }
                Ok(Piece::Failed(e)) => {
                    *guard = None;
                    return Err(engine_err(e));
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = py.check_signals() {
                        self.cancel.store(true, Ordering::Relaxed);
                        *guard = None;
                        return Err(e);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    *guard = None;
                    return Err(PyRuntimeError::new_err("generation thread ended"));
                }
            }
        }
    }

    /// The finished `Completion` (finish reason, ids, logprobs) once the stream is exhausted.
    #[getter]
    fn result(&self, py: Python<'_>) -> Option<Py<PyCompletion>> {
        self.result
            .lock()
            .ok()
            .and_then(|r| r.as_ref().map(|c| c.clone_ref(py)))
    }

    /// Stops the generation (also done when the stream is dropped).
    fn close(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for PyStream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Nielsen's network (`kiln_nn::Network<f32>`).
#[pyclass(module = "kiln._kiln", name = "Network")]
struct PyNetwork {
    net: Network<f32>,
}

/// A data set from row-major f32 inputs (as bytes) and class labels; inputs that are all
/// exact `byte / 256` values (MNIST pixels) are kept as bytes by the trainer.
fn dataset(dim: usize, inputs: &[u8], labels: &[u8]) -> PyResult<Dataset<f32>> {
    let d = Dataset::new(dim, f32_vec(inputs)?, labels.to_vec()).map_err(value_err)?;
    Ok(d.with_bytes_if_exact())
}

fn f32_bytes<'py>(py: Python<'py>, v: &[f32]) -> Bound<'py, PyBytes> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
    PyBytes::new(py, &bytes)
}

fn f32_vec(b: &[u8]) -> PyResult<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(PyValueError::new_err(
            "not a whole number of float32 values",
        ));
    }
    Ok(b.chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

#[pymethods]
impl PyNetwork {
    #[new]
    #[pyo3(signature = (sizes, seed=0))]
    fn new(sizes: Vec<usize>, seed: u64) -> PyResult<Self> {
        let net =
            Network::with_options(&sizes, kiln_nn::Init::Large, kiln_nn::Cost::Quadratic, seed)
                .map_err(value_err)?;
        Ok(PyNetwork { net })
    }

    #[getter]
    fn sizes(&self) -> Vec<usize> {
        self.net.sizes().to_vec()
    }

    /// Layer `l`'s weights as float32 bytes, row-major `sizes[l+1] x sizes[l]`.
    fn weights_bytes<'py>(&self, py: Python<'py>, l: usize) -> PyResult<Bound<'py, PyBytes>> {
        let w = self
            .net
            .weights()
            .get(l)
            .ok_or_else(|| value_err("no such layer"))?;
        Ok(f32_bytes(py, w))
    }
    fn biases_bytes<'py>(&self, py: Python<'py>, l: usize) -> PyResult<Bound<'py, PyBytes>> {
        let b = self
            .net
            .biases()
            .get(l)
            .ok_or_else(|| value_err("no such layer"))?;
        Ok(f32_bytes(py, b))
    }
    fn set_weights(&mut self, l: usize, data: &[u8]) -> PyResult<()> {
        let v = f32_vec(data)?;
        let w = self
            .net
            .weights_mut()
            .get_mut(l)
            .ok_or_else(|| value_err("no such layer"))?;
        if w.len() != v.len() {
            return Err(value_err(format!(
                "layer {l} has {} weights, got {}",
                w.len(),
                v.len()
            )));
        }
        w.copy_from_slice(&v);
        Ok(())
    }
    fn set_biases(&mut self, l: usize, data: &[u8]) -> PyResult<()> {
        let v = f32_vec(data)?;
        let b = self
            .net
            .biases_mut()
            .get_mut(l)
            .ok_or_else(|| value_err("no such layer"))?;
        if b.len() != v.len() {
            return Err(value_err(format!(
                "layer {l} has {} biases, got {}",
                b.len(),
                v.len()
            )));
        }
        b.copy_from_slice(&v);
        Ok(())
    }

    /// The output activations for one input (float32 bytes in and out).
    fn feedforward<'py>(&self, py: Python<'py>, x: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let out = self.net.feedforward(&f32_vec(x)?).map_err(value_err)?;
        Ok(f32_bytes(py, &out))
    }

    /// network.py's `backprop(x, y)`: `(nabla_b, nabla_w)` per layer, float32 bytes.
    #[allow(clippy::type_complexity)]
    fn backprop<'py>(
        &self,
        py: Python<'py>,
        x: &[u8],
        y: &[u8],
    ) -> PyResult<(Vec<Bound<'py, PyBytes>>, Vec<Bound<'py, PyBytes>>)> {
        let (nb, nw) = self
            .net
            .backprop(&f32_vec(x)?, &f32_vec(y)?)
            .map_err(value_err)?;
        Ok((
            nb.iter().map(|v| f32_bytes(py, v)).collect(),
            nw.iter().map(|v| f32_bytes(py, v)).collect(),
        ))
    }

    /// network.py's `update_mini_batch`: one gradient step on the given examples.
    fn update_mini_batch(&mut self, inputs: &[u8], labels: &[u8], eta: f64) -> PyResult<()> {
        let data = dataset(self.net.sizes()[0], inputs, labels)?;
        let idx: Vec<usize> = (0..data.len()).collect();
        let n = data.len();
        self.net
            .update_mini_batch(&data, &idx, eta, 0.0, n)
            .map_err(value_err)
    }

    /// network.py's `evaluate`: how many examples are classified right.
    fn evaluate(&self, py: Python<'_>, inputs: &[u8], labels: &[u8]) -> PyResult<usize> {
        let data = dataset(self.net.sizes()[0], inputs, labels)?;
        let net = &self.net;
        py.detach(|| net.evaluate(&data)).map_err(value_err)
    }

    /// network.py's `SGD`; `on_epoch(epoch, correct_or_None, n_test, train_seconds)` is called
    /// after every epoch (the Python side prints network.py's line). Returns the per-epoch
    /// accuracies.
    #[pyo3(signature = (inputs, labels, epochs, mini_batch_size, eta, test_inputs, test_labels, on_epoch))]
    #[allow(clippy::too_many_arguments)]
    fn sgd(
        &mut self,
        py: Python<'_>,
        inputs: &[u8],
        labels: &[u8],
        epochs: usize,
        mini_batch_size: usize,
        eta: f64,
        test_inputs: Option<&[u8]>,
        test_labels: Option<&[u8]>,
        on_epoch: Py<PyAny>,
    ) -> PyResult<Vec<Option<usize>>> {
        let dim = self.net.sizes()[0];
        let train = dataset(dim, inputs, labels)?;
        let test = match (test_inputs, test_labels) {
            (Some(x), Some(y)) => Some(dataset(dim, x, y)?),
            (None, None) => None,
            _ => return Err(value_err("test inputs and labels go together")),
        };
        let net = &mut self.net;
        let config = SgdConfig::new(epochs, mini_batch_size, eta);
        // Signals are checked at every progress event (about 200 an epoch), so Ctrl-C stops
        // training within a few mini-batches; an exception (KeyboardInterrupt, or one raised
        // by `on_epoch`) stops it and is raised here.
        let mut raised: Option<PyErr> = None;
        let r = py.detach(|| {
            net.train_until(&train, &config, test.as_ref(), |ev| {
                let res = Python::attach(|py| match ev {
                    Event::Progress { .. } => py.check_signals(),
                    Event::Epoch(e) => on_epoch
                        .call1(
                            py,
                            (
                                e.epoch,
                                e.evaluation_accuracy,
                                e.n_evaluation,
                                e.train_seconds,
                            ),
                        )
                        .map(|_| ()),
                });
                match res {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(err) => {
                        raised = Some(err);
                        ControlFlow::Break(())
                    }
                }
            })
        });
        if let Some(e) = raised {
            return Err(e);
        }
        let report = r.map_err(value_err)?;
        Ok(report
            .epochs
            .iter()
            .map(|e| e.evaluation_accuracy)
            .collect())
    }
}

/// MNIST in Nielsen's split, fetched on first use into `$KILN_HOME/mnist`: for training,
/// validation and test, `(pixels, labels)` as bytes (`n x 784` pixels, one label each).
#[pyfunction]
#[pyo3(signature = (data_dir=None))]
#[allow(clippy::type_complexity)]
fn load_mnist(
    py: Python<'_>,
    data_dir: Option<PathBuf>,
) -> PyResult<Vec<(Bound<'_, PyBytes>, Bound<'_, PyBytes>)>> {
    let m = py.detach(move || {
        let dir = match data_dir {
            Some(d) => d,
            None => mnist::default_dir()?,
        };
        mnist::ensure(&dir)?;
        mnist::load_nielsen::<f32>(&dir)
    });
    let m = m.map_err(value_err)?;
    let mut out = Vec::new();
    for d in [&m.training, &m.validation, &m.test] {
        let pix = d
            .bytes()
            .ok_or_else(|| PyRuntimeError::new_err("MNIST pixels not kept as bytes"))?;
        out.push((PyBytes::new(py, pix), PyBytes::new(py, d.labels())));
    }
    Ok(out)
}

#[pymodule]
fn _kiln(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<PyParams>()?;
    m.add_class::<PyCompletion>()?;
    m.add_class::<PyTokenLogprob>()?;
    m.add_class::<PyStream>()?;
    m.add_class::<PyNetwork>()?;
    m.add_function(wrap_pyfunction!(check_model_parallel_size, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_model, m)?)?;
    m.add_function(wrap_pyfunction!(load_mnist, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("UNSAFE_ERROR", meta::UNSAFE_ERROR)?;
    Ok(())
}
