//! Placing a model on a GPU: how many of its layers go there (`-ngl`, or as many as fit), the
//! whole-GPU or split forward pass that follows, and what it uses of the device.

use std::sync::Arc;

use kiln_formats::LoadedModel;
use kiln_gpu::plan::{decide, human, Needs, Usage};
use kiln_gpu::split::cpu_blocks;
use kiln_gpu::{DeviceChoice, Gpu, GpuError, GpuLayers, GpuLlama, SplitModel};
use kiln_models::{BuildOptions, CausalLM, Numerics};

use crate::EngineOptions;

/// What a model holds on its GPU, for reports (`kiln bench`, `kiln inspect`).
#[derive(Clone, Debug)]
pub struct GpuUse {
    /// The adapter, as `kiln inspect --devices` lists it.
    pub adapter: String,
    /// Offloaded layers, of [`GpuUse::layers`] (llama.cpp's count: the blocks and the output
    /// layer).
    pub gpu_layers: usize,
    pub layers: usize,
    /// Weight matrices as uploaded.
    pub weight_bytes: usize,
    /// The plan's estimate for one sequence of the engine's context (`positions`).
    pub planned: Usage,
    pub positions: usize,
    /// What the device offers: its reported memory, or `EngineOptions::gpu_memory` when lower.
    pub memory: Option<u64>,
}

impl std::fmt::Display for GpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}/{} layers, weights {}, KV cache up to {} ({} positions), scratch {}; device memory {}",
            self.adapter,
            self.gpu_layers,
            self.layers,
            human(self.weight_bytes as u64),
            human(self.planned.kv),
            self.positions,
            human(self.planned.scratch),
            self.memory.map_or("not reported".into(), human),
        )
    }
}

/// The outcome of [`place`]: a model on the GPU (whole or split), or the CPU with a reason.
pub(crate) enum Placed {
    Gpu {
        model: Box<dyn CausalLM>,
        note: String,
        usage: GpuUse,
    },
    Cpu {
        loaded: Box<LoadedModel>,
        why: String,
    },
}

/// The memory a device offers: the smaller of what it reports and the caller's cap.
pub(crate) fn offered(gpu: &Gpu, cap: Option<u64>) -> Option<u64> {
    match (gpu.memory, cap) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

/// The device's plan for `loaded` with `opts`: [`Needs`] for one sequence of `positions` and
/// passes of up to `rows` tokens, and the layers decided.
pub(crate) fn plan(
    gpu: &Gpu,
    loaded: &LoadedModel,
    opts: &EngineOptions,
    positions: usize,
    rows: usize,
) -> Result<(Needs, kiln_gpu::Decision), GpuError> {
    // The cache type the GPU part will use (`GpuLlama` follows the weights, as the CPU does).
    let kv = opts.kv_type.unwrap_or_else(|| {
        Numerics::for_tensors(loaded.tensors.values().map(|t| &t.dtype)).default_kv_type()
    });
    let needs = Needs::of(loaded, kv, positions, rows, gpu.max_binding)?;
    let decision = decide(
        &needs,
        opts.gpu_layers,
        offered(gpu, opts.gpu_memory),
        gpu.max_binding,
        opts.device == DeviceChoice::Auto,
    )
    .map_err(|e| GpuError::Device(format!("{}: {e}", gpu.adapter)))?;
    Ok((needs, decision))
}

/// Puts `loaded` on `gpu` as `opts` ask (see [`kiln_gpu::plan::decide`]).
pub(crate) fn place(
    gpu: Arc<Gpu>,
    loaded: LoadedModel,
    opts: &EngineOptions,
    build: &BuildOptions,
    positions: usize,
) -> Result<Placed, GpuError> {
    let rows = 512 + opts.max_batch;
    let (needs, d) = plan(&gpu, &loaded, opts, positions, rows)?;
    if d.gpu_layers == 0 {
        return Ok(Placed::Cpu {
            loaded: Box::new(loaded),
            why: d.why.unwrap_or_else(|| "-ngl 0".into()),
        });
    }
    let layers = needs.layers();
    let k = cpu_blocks(needs.n_layers, d.gpu_layers);
    let (model, weight_bytes): (Box<dyn CausalLM>, usize) = if d.gpu_layers == layers {
        let m = GpuLlama::new(gpu.clone(), loaded, opts.kv_type)?;
        let w = m.weight_bytes();
        (Box::new(m), w)
    } else {
        let m = SplitModel::new(gpu.clone(), loaded, build, k)?;
        let w = m.gpu_part().weight_bytes();
        (Box::new(m), w)
    };
    let mut note = format!("device: {}", gpu.adapter);
    if d.gpu_layers < layers {
        note += &format!(
            " for {} of {layers} layers, {k} blocks on the CPU",
            d.gpu_layers
        );
    }
    if let Some(why) = d.why {
        note += &format!(" ({why})");
    }
    note += &format!(", kernels: {}", gpu.features);
    Ok(Placed::Gpu {
        model,
        note,
        usage: GpuUse {
            adapter: gpu.adapter.to_string(),
            gpu_layers: d.gpu_layers,
            layers,
            weight_bytes,
            planned: needs.usage(d.gpu_layers),
            positions,
            memory: offered(&gpu, opts.gpu_memory),
        },
    })
}

/// `-ngl` for a run that stays on the CPU: only 0 (or none) is honoured there.
pub(crate) fn check_cpu_layers(layers: GpuLayers, device: DeviceChoice) -> Result<(), String> {
    match (layers, device) {
        (GpuLayers::Count(n), DeviceChoice::Cpu) if n > 0 => Err(format!(
            "-ngl {n} asks for GPU layers, but --device cpu runs every layer on the CPU"
        )),
        _ => Ok(()),
    }
}

/// What `opts` would put on a GPU for `loaded`, computed without uploading anything
/// (`kiln inspect --device gpu`).
pub struct PlanReport {
    /// The adapter, as `kiln inspect --devices` lists it.
    pub adapter: String,
    /// The memory the plan may use ([`EngineOptions::gpu_memory`] or the adapter's own).
    pub memory: Option<u64>,
    /// The device's largest binding (every buffer of a pass is bound whole).
    pub max_binding: u64,
    pub needs: Needs,
    /// The layers `opts.gpu_layers` gets, or why the model does not fit.
    pub decision: Result<kiln_gpu::Decision, String>,
}

/// The GPU plan of `loaded` under `opts` (`None`: `opts.device` runs on the CPU; the line
/// says why).
pub fn plan_report(
    loaded: &LoadedModel,
    opts: &EngineOptions,
) -> Result<Result<PlanReport, String>, crate::EngineError> {
    let placement =
        Gpu::open(opts.device).map_err(|e| crate::EngineError::Invalid(e.to_string()))?;
    let Some(gpu) = placement.gpu else {
        return Ok(Err(placement.note));
    };
    let trained = loaded.config.max_position_embeddings;
    let positions = opts.context.unwrap_or(trained).clamp(1, trained.max(1));
    let rows = 512 + opts.max_batch;
    let kv = opts.kv_type.unwrap_or_else(|| {
        Numerics::for_tensors(loaded.tensors.values().map(|t| &t.dtype)).default_kv_type()
    });
    let needs = Needs::of(loaded, kv, positions, rows, gpu.max_binding)
        .map_err(|e| crate::EngineError::Invalid(e.to_string()))?;
    let memory = offered(&gpu, opts.gpu_memory);
    let decision = decide(
        &needs,
        opts.gpu_layers,
        memory,
        gpu.max_binding,
        opts.device == DeviceChoice::Auto,
    );
    Ok(Ok(PlanReport {
        adapter: gpu.adapter.to_string(),
        memory,
        max_binding: gpu.max_binding,
        needs,
        decision,
    }))
}

/// Device bytes of a sequence's KV cache (a split cache's device part; 0 on the CPU).
pub fn cache_device_bytes(cache: &kiln_models::KvCache) -> usize {
    kiln_gpu::device_cache_bytes(cache)
}
