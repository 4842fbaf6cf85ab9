//! kiln's CPU kernels.
//!
//! Invariant: every optimised path equals its scalar reference within a stated tolerance,
//! and the path is chosen at run time from the CPU's features, never by build flags.
//!
//! - [`quant`]: ggml block layouts, dequantisation of every type (checked bit-exactly against
//!   gguf-py vectors, `tests/data/gen_quant_vectors.py`), and the 8-bit activation blocks
//!   ([`quant::BlockQ8_32`] for the 32-element types, [`quant::BlockQ8K`] for the k-quants).
//! - [`dot`]: integer dot products of one weight row with 1, 4 or 8 activation rows: a scalar
//!   reference plus AVX2 (+FMA+F16C), AVX-512 (F/BW/VL + VNNI, bit-identical to AVX2) and
//!   aarch64 NEON paths ([`Isa`], [`cpu_features`]).
//! - [`matmul()`]: `out = x · wᵀ` for `n` tokens. Activations are quantised once per call;
//!   weight rows are handed out in chunks from an atomic counter; prefill multiplies each
//!   weight block with 8 tokens at a time.
//! - [`interleave`]: weight rows rearranged at load time for the decode kernels (Q5_0 in
//!   4-row groups), with the same results bit for bit as the file's layout.
//! - [`ThreadPool`]: persistent workers parked between operations.
//! - [`ops`]: rms_norm, softmax, SwiGLU/GeGLU gates, axpy, dot (AVX2 + scalar references).
//! - [`exp`]: `e^x` bit-identical to glibc's `expf` (FMA build), scalar and AVX2 / AVX-512
//!   slices; SiLU and the softmaxes use it.
//!
//! Benchmarks: `cargo run --release -p kiln-kernels --example matmul_bench -- 2 128` (per
//! type and shape) or `-- 2 128 qwen` (every linear layer of a qwen2.5-0.5b forward pass);
//! `--example dot_bench` (single kernels); `--example pool_bench`.
//!
//! The aarch64 paths run their tests under user-mode QEMU (needs `qemu-user-static` and the
//! `aarch64-unknown-linux-musl` Rust target):
//! `CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
//! CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64-static
//! cargo test --release -p kiln-kernels --target aarch64-unknown-linux-musl`.

// Kernels index blocks by position on purpose; `is_multiple_of` is newer than the MSRV.
#![allow(clippy::needless_range_loop, clippy::manual_is_multiple_of)]

pub mod dot;
pub mod dtype;
pub mod exp;
pub mod interleave;
pub mod matmul;
pub mod ops;
#[cfg(target_arch = "x86_64")]
mod ops_avx2;
pub mod pool;
pub mod quant;
pub mod storage;
pub mod tensor;

pub use dot::{cpu_features, Isa, IsaUnavailable};
pub use dtype::DType;
pub use interleave::Layout;
pub use matmul::matmul;
pub use pool::ThreadPool;
pub use storage::Storage;
pub use tensor::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{0}")]
    Shape(String),
    #[error("unsupported tensor type {0}")]
    Unsupported(DType),
}
