//! A model split between the CPU and a GPU, as llama.cpp's `-ngl N` splits it.
//!
//! llama.cpp counts a model's blocks plus its output layer (final norm and output matrix) as
//! `n_layers + 1` offloadable layers and offloads from the end: `-ngl 1` puts only the output
//! layer on the GPU, `-ngl N` adds the last `N - 1` blocks, `-ngl n_layers + 1` (or more) puts
//! every block there. The token embedding always stays on the CPU in llama.cpp; kiln keeps it
//! there too for a split, and looks tokens up on the device only when the whole model is
//! there (then [`crate::GpuLlama`] runs alone and token ids, not hidden states, cross).
//!
//! A [`SplitModel`] owns the two parts: the CPU front (`kiln_models::build_front`: embedding
//! and blocks `0..k`) and the GPU back ([`GpuLlama::back`]: blocks `k..n_layers`, final norm,
//! output). Each step runs the front, uploads its residual stream once (`n_tokens ×
//! hidden_size` f32), runs the back, and reads back only the logits asked for. Each layer's
//! keys and values live where the layer runs: a sequence's [`KvCache`] holds a [`SplitKv`]
//! with a host cache for the front's blocks and a device cache for the back's.

use std::any::Any;
use std::sync::{Arc, Mutex};

use kiln_formats::{LoadedModel, ModelConfig};
use kiln_models::{
    BuildOptions, CausalLM, DeviceCache, KvCache, KvType, Logits, ModelError, SeqInput,
};

use crate::model::GpuLlama;
use crate::{Gpu, GpuError};

/// How many of a model's `n_layers + 1` offloadable layers run on the GPU (`-ngl`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuLayers {
    /// Every layer (`-ngl all`; the default with `--device gpu`): an error when they do not fit.
    #[default]
    All,
    /// As many as fit in the device's memory (`-ngl auto`; what `--device auto` does).
    Fit,
    /// Exactly this many, counted as llama.cpp counts them (the output layer first, then blocks
    /// from the last); more than `n_layers + 1` means all.
    Count(usize),
}

impl std::str::FromStr for GpuLayers {
    type Err = String;

    fn from_str(s: &str) -> Result<GpuLayers, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(GpuLayers::All),
            "auto" => Ok(GpuLayers::Fit),
            n => n.parse::<usize>().map(GpuLayers::Count).map_err(|_| {
                format!("gpu layers {s:?}: a number of layers, `auto` (as many as fit) or `all`")
            }),
        }
    }
}

impl std::fmt::Display for GpuLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuLayers::All => f.write_str("all"),
            GpuLayers::Fit => f.write_str("auto"),
            GpuLayers::Count(n) => write!(f, "{n}"),
        }
    }
}

/// Blocks that run on the CPU when `gpu_layers` of the `n_layers + 1` offloadable layers run on
/// the GPU (llama.cpp's order: the output layer first, then blocks from the last).
pub fn cpu_blocks(n_layers: usize, gpu_layers: usize) -> usize {
    (n_layers + 1).saturating_sub(gpu_layers).min(n_layers)
}

/// A sequence's cache in a split model: the front's blocks on the host, the back's on the
/// device. The outer [`KvCache`] keeps the length the engine sees (it truncates it to roll
/// back); each pass first cuts both parts to it.
pub struct SplitKv {
    host: KvCache,
    device: KvCache,
}

impl SplitKv {
    /// Bytes of the device part.
    pub fn device_bytes(&self) -> usize {
        self.device.memory_bytes()
    }

    /// Bytes of the host part.
    pub fn host_bytes(&self) -> usize {
        self.host.memory_bytes()
    }
}

impl DeviceCache for SplitKv {
    fn reserve(&mut self, capacity: usize, _len: usize) {
        self.host.reserve(capacity);
        self.device.reserve(capacity);
    }

    fn memory_bytes(&self) -> usize {
        self.host.memory_bytes() + self.device.memory_bytes()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Device bytes of a cache made by a GPU model, whole or split (the host part of a split
/// cache not counted); 0 for a CPU cache.
pub fn device_cache_bytes(cache: &KvCache) -> usize {
    match cache.device() {
        Some(d) => match d.as_any().downcast_ref::<SplitKv>() {
            Some(s) => s.device_bytes(),
            None => d.memory_bytes(),
        },
        None => 0,
    }
}

/// Embedding and the first blocks on the CPU, the rest and the output layer on a GPU.
pub struct SplitModel {
    cfg: ModelConfig,
    front: Box<dyn CausalLM>,
    back: GpuLlama,
    residual: Mutex<Vec<f32>>,
}

impl SplitModel {
    /// Splits `model` with `cpu_blocks` blocks on the CPU (at most `n_layers`; see
    /// [`cpu_blocks`]) and the rest on `gpu`. `build` sets the CPU part's threads, numerics and
    /// cache type (the GPU part honours the cache type).
    pub fn new(
        gpu: Arc<Gpu>,
        model: LoadedModel,
        build: &BuildOptions,
        cpu_blocks: usize,
    ) -> Result<SplitModel, GpuError> {
        let cfg = model.config.clone();
        if cpu_blocks > cfg.n_layers {
            return Err(GpuError::Model(ModelError::Input(format!(
                "a split model keeps at most its {} blocks on the CPU, not {cpu_blocks}",
                cfg.n_layers
            ))));
        }
        // The two parts share the weights' storage; each takes the tensors it needs.
        let back_tensors = model
            .tensors
            .iter()
            .filter(|(name, _)| !is_front_tensor(name, cpu_blocks))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let back_model = LoadedModel {
            config: cfg.clone(),
            tensors: back_tensors,
            tokenizer: model.tokenizer.clone(),
            chat_template: None,
            metadata: Default::default(),
            format: model.format.clone(),
        };
        let back = GpuLlama::back(gpu, back_model, build.kv_type, cpu_blocks)?;
        let front = kiln_models::build_front(model, build, cpu_blocks)?;
        if front.kv_type() != back.kv_type() {
            return Err(GpuError::Model(ModelError::Input(format!(
                "the CPU part caches {} and the GPU part {}",
                front.kv_type().name(),
                back.kv_type().name()
            ))));
        }
        Ok(SplitModel {
            cfg,
            front,
            back,
            residual: Mutex::new(Vec::new()),
        })
    }

    /// Blocks on the CPU (the GPU runs the rest and the output layer).
    pub fn cpu_blocks(&self) -> usize {
        self.back.first_block()
    }

    /// The device part.
    pub fn gpu_part(&self) -> &GpuLlama {
        &self.back
    }
}

/// Whether a tensor belongs only to the CPU part's blocks.
fn is_front_tensor(name: &str, cpu_blocks: usize) -> bool {
    name.strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|l| l.parse::<usize>().ok())
        .is_some_and(|l| l < cpu_blocks)
}

impl CausalLM for SplitModel {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn kv_type(&self) -> KvType {
        self.back.kv_type()
    }

    fn new_cache(&self, capacity: usize) -> KvCache {
        let c = &self.cfg;
        let store = SplitKv {
            host: self.front.new_cache(capacity),
            device: self.back.new_cache(capacity),
        };
        KvCache::on_device(
            c.n_layers,
            c.n_kv_heads,
            c.head_dim,
            capacity,
            self.kv_type(),
            Box::new(store),
        )
    }

    fn forward(&self, batch: &mut [SeqInput<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        kiln_models::layers::prepare_batch(
            batch,
            self.cfg.vocab_size,
            self.cfg.max_position_embeddings,
        )?;
        // Both parts continue from the length the engine kept.
        for s in batch.iter_mut() {
            let len = s.cache.len();
            let Some(kv) = s
                .cache
                .device_mut()
                .and_then(|d| d.as_any_mut().downcast_mut::<SplitKv>())
            else {
                return Err(ModelError::Input(
                    "a KV cache made by another backend was passed to a split model".into(),
                ));
            };
            kv.host.truncate(len);
            kv.device.truncate(len);
            if kv.host.len() != len || kv.device.len() != len {
                return Err(ModelError::Input(format!(
                    "a split cache holds {} / {} positions where {len} are expected",
                    kv.host.len(),
                    kv.device.len()
                )));
            }
        }
        let mut residual = self.residual.lock().unwrap_or_else(|e| e.into_inner());
        residual.clear();
        {
            let mut front: Vec<SeqInput<'_>> = batch
                .iter_mut()
                .map(|s| SeqInput {
                    tokens: s.tokens,
                    cache: &mut split_kv(s.cache).host,
                    logits: Logits::None,
                })
                .collect();
            self.front.forward_residual(&mut front, &mut residual)?;
        }
        {
            let mut back: Vec<SeqInput<'_>> = batch
                .iter_mut()
                .map(|s| SeqInput {
                    tokens: s.tokens,
                    cache: &mut split_kv(s.cache).device,
                    logits: s.logits,
                })
                .collect();
            self.back
                .forward_from_residual(&mut back, &residual, logits)?;
        }
        kiln_models::layers::advance_caches(batch);
        Ok(())
    }

    fn n_threads(&self) -> usize {
        self.front.n_threads()
    }
}

fn split_kv(cache: &mut KvCache) -> &mut SplitKv {
    cache
        .device_mut()
        .and_then(|d| d.as_any_mut().downcast_mut::<SplitKv>())
        .expect("checked at the start of the pass")
}
