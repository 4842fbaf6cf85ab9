//! The GPU backend: one portable path through `wgpu` (Vulkan, Metal, DX12), compute shaders in
//! WGSL.
//!
//! * [`Gpu`] finds an adapter for a [`DeviceChoice`] and owns the device, its queue and the
//!   compiled pipelines.
//! * [`ops`] records the kernels (matrix products with the weights dequantized inside the
//!   kernel, RMSNorm, rope, attention over a device KV cache, gated activations, residual adds,
//!   embedding lookup) into a [`ops::Recorder`], which submits them as one command buffer.
//! * [`GpuLlama`] is the forward pass of every architecture (Llama, Mistral, Qwen2, Qwen3,
//!   Gemma 2/3, OLMo 2, Phi-3, Mixtral, Qwen3-MoE) on the device, a
//!   [`kiln_models::CausalLM`] like the CPU's, so the engine drives it unchanged. Weights,
//!   activations and the KV cache stay on the device; only the logits asked for come back.
//! * [`SplitModel`] splits a model between the CPU and the GPU as llama.cpp's `-ngl` does
//!   ([`split`]); [`plan`] estimates each layer's device bytes and decides how many fit.
//!
//! Invariants: the CPU path is the reference (every kernel has a test against the kernels
//! crate's scalar path); weights are uploaded in their quantized blocks (padded to 4-byte
//! alignment, never expanded to f32); a machine without an adapter or driver gets `None` from
//! [`Gpu::open`] with a note to print, never a panic.

pub mod cache;
pub mod context;
pub mod model;
pub mod ops;
pub mod plan;
pub mod split;
pub mod upload;

pub use context::{AdapterSummary, DeviceChoice, Features, Gpu, Placement};
pub use model::GpuLlama;
pub use plan::{Decision, Needs, Usage};
pub use split::{device_cache_bytes, GpuLayers, SplitModel};

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{0}")]
    Device(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Model(#[from] kiln_models::ModelError),
}
