//! The weight/kernel seam: a typed block buffer (type, shape, bytes) that kernels know how to use.

use crate::{quant, DType, KernelError, Storage};

/// A tensor as stored: element type, shape (outermost dimension first, the last one contiguous)
/// and its bytes, still in their blocks. Quantized tensors are never expanded wholesale.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Storage,
}

impl Tensor {
    /// Checks that `data` holds exactly the bytes `shape` needs in `dtype`.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Storage) -> Result<Tensor, KernelError> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let row = shape.last().copied().unwrap_or(1);
        let need = n.and_then(|n| {
            if row % dtype.block_size() != 0 {
                None
            } else {
                dtype.bytes_for(n)
            }
        });
        match need {
            Some(need) if need == data.len() => Ok(Tensor { dtype, shape, data }),
            _ => Err(KernelError::Shape(format!(
                "{dtype} tensor of shape {shape:?} cannot be stored in {} bytes",
                data.len()
            ))),
        }
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Tensor, KernelError> {
        Tensor::new(DType::F32, shape, Storage::from_f32(values))
    }

    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of a row (the last, contiguous dimension).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows: the product of every dimension but the last.
    pub fn rows(&self) -> usize {
        self.n_elements().checked_div(self.cols()).unwrap_or(0)
    }

    pub fn row_bytes(&self) -> usize {
        self.cols() / self.dtype.block_size() * self.dtype.block_bytes()
    }

    /// The raw blocks of row `i`.
    pub fn row(&self, i: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data.bytes()[i * rb..(i + 1) * rb]
    }

    /// Expands row `i` into `out` (length `cols()`).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        quant::dequantize(self.dtype, self.row(i), out)
    }

    /// Expands the whole tensor. Meant for small tensors (norms, biases) and tests.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.n_elements()];
        quant::dequantize(self.dtype, self.data.bytes(), &mut out);
        out
    }
}
