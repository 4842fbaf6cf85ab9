//! Matrix products of a weight tensor with a batch of activation rows.

use crate::pool::{split_range, ThreadPool};
use crate::Tensor;

/// `out[t][r] = Σ_c w[r][c] · x[t][c]` for `n` activation rows `x` (row-major `n × cols`);
/// `out` is row-major `n × rows`. This is `x · wᵀ`, the shape of every linear layer.
pub fn matmul(pool: &ThreadPool, w: &Tensor, x: &[f32], n: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    assert_eq!(
        x.len(),
        n * cols,
        "matmul: activations are not {n} × {cols}"
    );
    assert_eq!(out.len(), n * rows, "matmul: output is not {n} × {rows}");
    let out_ptr = SendPtr(out.as_mut_ptr());
    pool.run(&|i, nt| {
        let range = split_range(rows, i, nt);
        let mut wrow = vec![0.0f32; cols];
        for r in range {
            w.dequantize_row(r, &mut wrow);
            for t in 0..n {
                let v = dot_f32(&wrow, &x[t * cols..(t + 1) * cols]);
                // SAFETY: threads own disjoint row ranges, so each (t, r) is written once.
                unsafe { *out_ptr.get().add(t * rows + r) = v };
            }
        }
    });
}

/// Plain f32 dot product (the scalar reference).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A raw pointer that may cross threads: used only for disjoint writes.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    pub fn get(self) -> *mut T {
        self.0
    }
}
