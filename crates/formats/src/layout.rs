//! Row layouts of the query and key projections for the two rope pairings.
//!
//! Rotate-half (Hugging Face, GGUF qwen2/gemma3) pairs element `i` of a head with `i + d/2`;
//! interleaved (Meta, GGUF llama) pairs `2i` with `2i + 1`. Converting a checkpoint between the
//! two reorders the output rows of `attn_q` / `attn_k` (and their biases) within each head:
//! interleaved row `2i + j` is rotate-half row `j * d/2 + i`.

use std::collections::BTreeMap;

use kiln_kernels::ops::RopeStyle;
use kiln_kernels::{Storage, Tensor};

use crate::{FormatError, ModelConfig, Result};

/// Reorders the outermost rows of `t` (`n_heads` heads of `shape[0] / n_heads` rows each) from
/// the `from` layout to the `to` layout. Works for any element or block type: rows are moved whole.
pub fn reorder_rope_rows(
    t: &Tensor,
    n_heads: usize,
    from: RopeStyle,
    to: RopeStyle,
) -> Result<Tensor> {
    if from == to {
        return Ok(t.clone());
    }
    let rows = t.shape.first().copied().unwrap_or(0);
    if n_heads == 0 || rows % n_heads != 0 || !(rows / n_heads).is_multiple_of(2) {
        return Err(FormatError::Invalid(format!(
            "cannot split {rows} rows into {n_heads} heads of even size"
        )));
    }
    let hd = rows / n_heads;
    let half = hd / 2;
    let row_bytes = t.data.len() / rows;
    let src = t.plain_bytes(); // (rows in file order, whatever layout the loader chose)
    let mut out = vec![0u8; src.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let inter = h * hd + 2 * i + j;
                let rot = h * hd + j * half + i;
                let (dst, from_row) = match to {
                    RopeStyle::Interleaved => (inter, rot),
                    RopeStyle::Half => (rot, inter),
                };
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&src[from_row * row_bytes..(from_row + 1) * row_bytes]);
            }
        }
    }
    Tensor::new(t.dtype, t.shape.clone(), Storage::from_vec(out))
        .map_err(|e| FormatError::Invalid(e.to_string()))
}

/// The model with its q/k projections (weights and biases) rewritten for rope layout `to`.
pub fn with_rope_style(
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, Tensor>,
    to: RopeStyle,
) -> Result<(ModelConfig, BTreeMap<String, Tensor>)> {
    let mut out = tensors.clone();
    if cfg.rope_style != to {
        for (name, t) in tensors {
            let heads = if name.contains(".attn_q.") {
                cfg.n_heads
            } else if name.contains(".attn_k.") {
                cfg.n_kv_heads
            } else {
                continue;
            };
            let t2 = reorder_rope_rows(t, heads, cfg.rope_style, to)
                .map_err(|e| FormatError::Invalid(format!("tensor {name}: {e}")))?;
            out.insert(name.clone(), t2);
        }
    }
    let mut cfg = cfg.clone();
    cfg.rope_style = to;
    Ok((cfg, out))
}
