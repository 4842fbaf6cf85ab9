//! kiln's CPU kernels.
//!
//! Invariant: every optimised path equals its scalar reference within a stated tolerance,
//! and the path is chosen at run time from the CPU's features, never by build flags.

// Kernels index blocks by position on purpose; `is_multiple_of` is newer than the MSRV.
#![allow(clippy::needless_range_loop, clippy::manual_is_multiple_of)]

pub mod dot;
pub mod dtype;
pub mod matmul;
pub mod ops;
#[cfg(target_arch = "x86_64")]
mod ops_avx2;
pub mod pool;
pub mod quant;
pub mod storage;
pub mod tensor;

pub use dot::{cpu_features, Isa};
pub use dtype::DType;
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
