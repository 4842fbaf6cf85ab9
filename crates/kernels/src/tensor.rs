//! The weight/kernel seam: a typed block buffer (type, shape, bytes) that kernels know how to use.

use crate::interleave::{self, Layout};
use crate::{quant, DType, KernelError, Storage};
use std::borrow::Cow;

/// A tensor as stored: element type, shape (outermost dimension first, the last one contiguous)
/// and its bytes, still in their blocks, rows ordered as `layout` says (plain unless a loader
/// rearranged them for the kernels). Quantized tensors are never expanded wholesale.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Storage,
    pub layout: Layout,
}

impl Tensor {
    /// Checks that `data` holds exactly the bytes `shape` needs in `dtype` (plain rows).
    pub fn new(dtype: DType, shape: Vec<usize>, data: Storage) -> Result<Tensor, KernelError> {
        Tensor::with_layout(dtype, shape, data, Layout::Plain)
    }

    /// [`Tensor::new`] for bytes already in `layout`.
    pub fn with_layout(
        dtype: DType,
        shape: Vec<usize>,
        data: Storage,
        layout: Layout,
    ) -> Result<Tensor, KernelError> {
        if !interleave::supports(layout, dtype, &shape) {
            return Err(KernelError::Shape(format!(
                "{dtype} tensor of shape {shape:?} cannot be held in layout {layout:?}"
            )));
        }
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
            Some(need) if need == data.len() => Ok(Tensor {
                dtype,
                shape,
                data,
                layout,
            }),
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

    /// The blocks of row `i`, in file order whatever the layout.
    pub fn row(&self, i: usize) -> Cow<'_, [u8]> {
        let rb = self.row_bytes();
        let bytes = self.data.bytes();
        if self.layout == Layout::Plain || i >= self.rows() / 4 * 4 {
            return Cow::Borrowed(&bytes[i * rb..(i + 1) * rb]);
        }
        let g = i / 4 * 4;
        let mut buf = Vec::new();
        let rows = interleave::plain_rows(
            self.layout,
            self.dtype,
            self.cols(),
            bytes,
            g,
            g + 4,
            &mut buf,
        );
        Cow::Owned(rows[(i - g) * rb..(i - g + 1) * rb].to_vec())
    }

    /// The rows needed to hold `n` rows of this matrix as a prefix view: `n` itself, rounded up to
    /// a whole 4-row group in [`Layout::Rows4`] (whose groups are contiguous blocks, the last
    /// `rows % 4` rows plain), and at most [`Tensor::rows`].
    pub fn prefix_rows(&self, n: usize) -> usize {
        let rows = self.rows();
        let n = match self.layout {
            Layout::Plain => n,
            Layout::Rows4 => n.div_ceil(4) * 4,
        };
        n.min(rows)
    }

    /// The first `n` rows of a matrix, sharing its bytes (no copy): the same kernels give the
    /// same results for those rows, bit for bit. `n` must be a possible prefix in this layout
    /// ([`Tensor::prefix_rows`] returns `n`) and at least 1.
    pub fn row_prefix(&self, n: usize) -> Result<Tensor, KernelError> {
        if self.shape.len() != 2 || n == 0 || self.prefix_rows(n) != n {
            return Err(KernelError::Shape(format!(
                "{} rows of a {} tensor of shape {:?} in layout {:?} are not a prefix view",
                n, self.dtype, self.shape, self.layout
            )));
        }
        let len = n * self.row_bytes();
        let data = self.data.slice(0, len).ok_or_else(|| {
            KernelError::Shape(format!("{n} rows do not fit in {} bytes", self.data.len()))
        })?;
        Tensor::with_layout(self.dtype, vec![n, self.cols()], data, self.layout)
    }

    /// All the bytes with the rows in file order (what a file writer stores).
    pub fn plain_bytes(&self) -> Cow<'_, [u8]> {
        interleave::plain_bytes(self.layout, self.dtype, self.cols(), self.data.bytes())
    }

    /// Expands row `i` into `out` (length `cols()`).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        quant::dequantize(self.dtype, &self.row(i), out)
    }

    /// Expands the whole tensor. Meant for small tensors (norms, biases) and tests.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.n_elements()];
        quant::dequantize(self.dtype, &self.plain_bytes(), &mut out);
        out
    }
}
