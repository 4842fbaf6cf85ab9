//! kiln's CPU kernels.
//!
//! Invariant: every optimised path equals its scalar reference within a stated tolerance,
//! and the path is chosen at run time from the CPU's features, never by build flags.

pub mod dtype;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod quant;
pub mod storage;
pub mod tensor;

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
