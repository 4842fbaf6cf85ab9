//! Weights on the device: a matrix's blocks, each padded to a 4-byte boundary so that WGSL
//! (which reads storage as 32-bit words) finds every field aligned. Never expanded to f32.

use kiln_kernels::{DType, Tensor};

use crate::{Gpu, GpuError};

/// How a type's blocks are stored on the device: zero bytes before (`front`) or after each
/// block so that it is a multiple of 4 bytes and its wide fields are aligned.
fn padding(t: DType) -> Option<(usize, usize)> {
    Some(match t {
        DType::F32 | DType::F16 | DType::BF16 => (0, 0),
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => (0, 0),
        // d (f16) first: two bytes in front put the quants on a word boundary
        DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => (2, 0),
        // d (f16) last
        DType::Q6_K => (0, 2),
        _ => return None,
    })
}

/// Whether the device kernels read weights of type `t`.
pub fn supported(t: DType) -> bool {
    padding(t).is_some()
}

/// Device bytes of one row of `cols` weights of type `t` as [`GpuMatrix::upload`] lays it out
/// (`None`: a type the kernels do not read), for estimating a model's size before uploading.
pub fn device_row_bytes(t: DType, cols: usize) -> Option<usize> {
    let (front, back) = padding(t)?;
    Some(if t.is_quantized() {
        cols / t.block_size() * (t.block_bytes() + front + back)
    } else {
        (cols / t.block_size() * t.block_bytes()).next_multiple_of(4)
    })
}

/// One slice of a matrix's rows in one buffer (a matrix larger than one binding may cover is
/// split by rows).
pub struct Part {
    pub buf: wgpu::Buffer,
    pub row0: usize,
    pub rows: usize,
}

/// A weight matrix `[rows, cols]` on the device.
pub struct GpuMatrix {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    /// Bytes from one row to the next on the device.
    pub row_stride: usize,
    pub parts: Vec<Part>,
}

impl GpuMatrix {
    /// Uploads a 2-D tensor (any row layout: rows are taken in file order).
    pub fn upload(gpu: &Gpu, t: &Tensor, name: &str) -> Result<GpuMatrix, GpuError> {
        GpuMatrix::upload_with_limit(gpu, t, name, gpu.max_binding as usize)
    }

    /// [`GpuMatrix::upload`] with buffers of at most `max_bytes` (tests split small matrices).
    pub fn upload_with_limit(
        gpu: &Gpu,
        t: &Tensor,
        name: &str,
        max_bytes: usize,
    ) -> Result<GpuMatrix, GpuError> {
        let (front, back) = padding(t.dtype).ok_or_else(|| {
            GpuError::Unsupported(format!(
                "{name}: the GPU kernels do not read {} weights",
                t.dtype
            ))
        })?;
        let (rows, cols) = (t.rows(), t.cols());
        let (bs, bb) = (t.dtype.block_size(), t.dtype.block_bytes());
        let plain = t.plain_bytes();
        let row_bytes = t.row_bytes();
        let padded_block = bb + front + back;
        let row_stride = if t.dtype.is_quantized() {
            cols / bs * padded_block
        } else {
            row_bytes.next_multiple_of(4)
        };
        let rows_per_part = (max_bytes.saturating_sub(16) / row_stride.max(1))
            .max(1)
            .min(rows.max(1));
        let mut parts = Vec::new();
        let mut row0 = 0;
        let mut bytes = Vec::new();
        while row0 < rows || (rows == 0 && parts.is_empty()) {
            let n = rows_per_part.min(rows - row0);
            bytes.clear();
            bytes.reserve(n * row_stride + 16);
            for r in row0..row0 + n {
                let row = &plain[r * row_bytes..(r + 1) * row_bytes];
                if t.dtype.is_quantized() {
                    for block in row.chunks_exact(bb) {
                        bytes.extend(std::iter::repeat_n(0u8, front));
                        bytes.extend_from_slice(block);
                        bytes.extend(std::iter::repeat_n(0u8, back));
                    }
                } else {
                    bytes.extend_from_slice(row);
                    bytes.resize(bytes.len().next_multiple_of(4), 0);
                }
            }
            // a few spare bytes: the float readers may touch the word after a short row
            bytes.extend_from_slice(&[0u8; 16]);
            parts.push(Part {
                buf: gpu.buffer_with(&bytes, name),
                row0,
                rows: n,
            });
            row0 += n;
            if rows == 0 {
                break;
            }
        }
        Ok(GpuMatrix {
            dtype: t.dtype,
            rows,
            cols,
            row_stride,
            parts,
        })
    }

    /// Device bytes of the matrix.
    pub fn memory_bytes(&self) -> usize {
        self.rows * self.row_stride
    }
}

/// An f32 vector on the device (norm weights, biases).
pub fn upload_f32(gpu: &Gpu, v: &[f32], name: &str) -> wgpu::Buffer {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    gpu.buffer_with(&bytes, name)
}
