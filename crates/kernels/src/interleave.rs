//! Weight rows rearranged at load time for the decode kernels.
//!
//! The decode kernels multiply 4 weight rows with one token at a time. Rows stored back to back
//! make that 4 interleaved streams of reads, which this machine's memory serves markedly slower
//! than one sequential stream (the hardware prefetcher follows one stream best). So a loader
//! rewrites each matrix as groups of 4 rows whose blocks are interleaved column by column
//! ([`Layout::Rows4`]): the kernels then read one stream. Q5_0 goes further: the 4 rows' high
//! bits sit side by side, so that one load and two operations per row expand them (the
//! per-row expansion of the fifth bits otherwise costs as much as the products). A group holds
//! the same bytes rearranged, so a loader can rewrite a resident file in place and memory use
//! does not change.
//!
//! Invariant: a tensor gives the same results, bit for bit, in every layout. Everything that
//! reads a tensor's rows (matmul, dequantisation, file writers) looks at its [`Layout`].

use crate::{DType, Isa};
use std::borrow::Cow;

/// How a matrix's rows are ordered in its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// Row after row, each row's blocks in order: the layout of every file format.
    #[default]
    Plain,
    /// Rows in groups of 4, interleaved block column by block column: the 4 rows' blocks `i`
    /// side by side (Q5_0: merged, [`q5_0_rows_to_group`]). The last `rows % 4` rows stay
    /// plain.
    Rows4,
}

/// Bytes of one block column of a 4-row Q5_0 group: 4 f16 scales, 16 bytes of high bits,
/// 4 × 16 bytes of nibbles (4 × 22 in all).
pub const Q5_0_GROUP_BLOCK: usize = 88;

/// Where the high bit of weight `16h + k` of row `r` of a group sits in byte `k` of the
/// group's 16 high-bit bytes: `Q5_0_HIGH_BIT[r][h]`. The AVX2 kernel pairs rows 0-1 and 2-3 in
/// one vector (one row per 128-bit lane) and needs each row's bits at bit 4: a right shift
/// by 0..3 or a left shift by 1..4 of 64-bit lanes moves them there without crossing bytes.
pub const Q5_0_HIGH_BIT: [[u32; 2]; 4] = [[4, 6], [5, 7], [3, 1], [2, 0]];

/// The layout the kernels of this process's level ([`Isa::best`]) want for a matrix of
/// `dtype` and `shape`. (A loader asked to keep the file's order simply does not call this.)
pub fn preferred(dtype: DType, shape: &[usize]) -> Layout {
    if supports(Layout::Rows4, dtype, shape) && shape[0] >= 4 && Isa::best().has_avx2() {
        Layout::Rows4
    } else {
        Layout::Plain
    }
}

/// Whether `layout` can hold a tensor of `dtype` and `shape` (4-row groups: the types with
/// 4-row decode kernels).
pub fn supports(layout: Layout, dtype: DType, shape: &[usize]) -> bool {
    match layout {
        Layout::Plain => true,
        Layout::Rows4 => {
            use DType::*;
            shape.len() == 2
                && matches!(
                    dtype,
                    Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K | IQ4_NL | IQ4_XS
                )
        }
    }
}

/// Rewrites `bytes`, the plain rows of a matrix of `dtype` with `cols` columns, into `layout`.
pub fn rearrange(layout: Layout, dtype: DType, cols: usize, bytes: &mut [u8]) {
    if layout == Layout::Plain {
        return;
    }
    let group = 4 * row_bytes(dtype, cols);
    let mut tmp = vec![0u8; group];
    for g in bytes.chunks_exact_mut(group) {
        tmp.copy_from_slice(g);
        rows_to_group(dtype, &tmp, g);
    }
}

/// Rewrites 4 rows of `dtype` stored back to back (`rows`) as one group (`out`, the same
/// length): block `i` of row `r` goes to position `4i + r` (Q5_0: [`q5_0_rows_to_group`]).
pub fn rows_to_group(dtype: DType, rows: &[u8], out: &mut [u8]) {
    if dtype == DType::Q5_0 {
        return q5_0_rows_to_group(rows, out);
    }
    let bb = dtype.block_bytes();
    assert!(
        rows.len() % (4 * bb) == 0 && out.len() == rows.len(),
        "rows_to_group: {} bytes are not 4 equal {dtype} rows",
        rows.len()
    );
    let nb = rows.len() / (4 * bb);
    for (k, o) in out.chunks_exact_mut(bb).enumerate() {
        o.copy_from_slice(&rows[row_block(k, nb, bb)]);
    }
}

/// Where block `k` of a group (block `k / 4` of row `k % 4`) lies in the group's 4 plain rows
/// of `nb` blocks of `bb` bytes.
fn row_block(k: usize, nb: usize, bb: usize) -> std::ops::Range<usize> {
    let (i, r) = (k / 4, k % 4);
    (r * nb + i) * bb..(r * nb + i + 1) * bb
}

/// The inverse of [`rows_to_group`].
pub fn group_to_rows(dtype: DType, group: &[u8], out: &mut [u8]) {
    if dtype == DType::Q5_0 {
        return q5_0_group_to_rows(group, out);
    }
    let bb = dtype.block_bytes();
    assert!(
        group.len() % (4 * bb) == 0 && out.len() == group.len(),
        "group_to_rows: {} bytes are not a {dtype} group",
        group.len()
    );
    let nb = group.len() / (4 * bb);
    for (k, b) in group.chunks_exact(bb).enumerate() {
        out[row_block(k, nb, bb)].copy_from_slice(b);
    }
}

/// Rows `r0..r1` of a matrix in `layout` as plain bytes; `r0` must start a group. Borrowed
/// when they are plain already, else rearranged into `buf`.
pub fn plain_rows<'a>(
    layout: Layout,
    dtype: DType,
    cols: usize,
    bytes: &'a [u8],
    r0: usize,
    r1: usize,
    buf: &'a mut Vec<u8>,
) -> &'a [u8] {
    let rb = row_bytes(dtype, cols);
    let src = &bytes[r0 * rb..r1 * rb];
    let rows = bytes.len() / rb.max(1);
    let grouped_end = (rows / 4 * 4).min(r1);
    if layout == Layout::Plain || r0 >= grouped_end {
        return src;
    }
    assert!(
        r0 % 4 == 0 && (grouped_end - r0) % 4 == 0,
        "plain_rows: rows {r0}..{r1} split a group"
    );
    buf.resize(src.len(), 0);
    let split = (grouped_end - r0) * rb;
    for (g, out) in src[..split]
        .chunks_exact(4 * rb)
        .zip(buf[..split].chunks_exact_mut(4 * rb))
    {
        group_to_rows(dtype, g, out);
    }
    buf[split..].copy_from_slice(&src[split..]);
    buf
}

/// The whole matrix as plain bytes.
pub fn plain_bytes(layout: Layout, dtype: DType, cols: usize, bytes: &[u8]) -> Cow<'_, [u8]> {
    if layout == Layout::Plain || bytes.is_empty() {
        return Cow::Borrowed(bytes);
    }
    let rows = bytes.len() / row_bytes(dtype, cols);
    let mut buf = Vec::new();
    plain_rows(layout, dtype, cols, bytes, 0, rows, &mut buf);
    Cow::Owned(buf)
}

fn row_bytes(dtype: DType, cols: usize) -> usize {
    cols / dtype.block_size() * dtype.block_bytes()
}

/// Byte `k` of `SPREAD[x]` is bit `k` of `x`: spreads 8 high bits over 8 bytes.
const SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut x = 0;
    while x < 256 {
        let mut k = 0;
        while k < 8 {
            t[x] |= (((x >> k) & 1) as u64) << (8 * k);
            k += 1;
        }
        x += 1;
    }
    t
};

/// Bit `k` of the result is bit 0 of byte `k` of `v` (the inverse of [`SPREAD`]): the
/// multiplication moves every byte's bit to the top byte without carries.
fn gather_bits(v: u64) -> u8 {
    ((v & 0x0101_0101_0101_0101).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// Rewrites 4 Q5_0 rows stored back to back (`rows`, each `rows.len() / 4` bytes) as one
/// group (`out`, the same length). Block column `i` of the group is 88 bytes: the 4 rows' f16
/// scales, their high bits (16 bytes, see [`Q5_0_HIGH_BIT`]), then each row's 16 bytes of
/// nibbles.
pub fn q5_0_rows_to_group(rows: &[u8], out: &mut [u8]) {
    assert!(
        rows.len() % Q5_0_GROUP_BLOCK == 0 && out.len() == rows.len(),
        "q5_0_rows_to_group: {} bytes are not 4 equal Q5_0 rows",
        rows.len()
    );
    let row_bytes = rows.len() / 4;
    for (i, o) in out.chunks_exact_mut(Q5_0_GROUP_BLOCK).enumerate() {
        let mut high = [0u64; 2]; // the 16 high-bit bytes
        for (r, bits) in Q5_0_HIGH_BIT.iter().enumerate() {
            let b = &rows[r * row_bytes + i * 22..r * row_bytes + (i + 1) * 22];
            o[2 * r..2 * r + 2].copy_from_slice(&b[..2]);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for (h, &bit) in bits.iter().enumerate() {
                let half = qh >> (16 * h);
                high[0] |= SPREAD[(half & 0xFF) as usize] << bit;
                high[1] |= SPREAD[((half >> 8) & 0xFF) as usize] << bit;
            }
            o[24 + 16 * r..40 + 16 * r].copy_from_slice(&b[6..22]);
        }
        o[8..16].copy_from_slice(&high[0].to_le_bytes());
        o[16..24].copy_from_slice(&high[1].to_le_bytes());
    }
}

/// The inverse of [`q5_0_rows_to_group`].
pub fn q5_0_group_to_rows(group: &[u8], out: &mut [u8]) {
    assert!(
        group.len() % Q5_0_GROUP_BLOCK == 0 && out.len() == group.len(),
        "q5_0_group_to_rows: {} bytes are not a Q5_0 group",
        group.len()
    );
    let row_bytes = group.len() / 4;
    for (i, g) in group.chunks_exact(Q5_0_GROUP_BLOCK).enumerate() {
        let high = [
            u64::from_le_bytes(g[8..16].try_into().expect("8 bytes")),
            u64::from_le_bytes(g[16..24].try_into().expect("8 bytes")),
        ];
        for (r, bits) in Q5_0_HIGH_BIT.iter().enumerate() {
            let b = &mut out[r * row_bytes + i * 22..r * row_bytes + (i + 1) * 22];
            b[..2].copy_from_slice(&g[2 * r..2 * r + 2]);
            let mut qh = 0u32;
            for (h, &bit) in bits.iter().enumerate() {
                let lo = gather_bits(high[0] >> bit) as u32;
                let hi = gather_bits(high[1] >> bit) as u32;
                qh |= (lo | hi << 8) << (16 * h);
            }
            b[2..6].copy_from_slice(&qh.to_le_bytes());
            b[6..22].copy_from_slice(&g[24 + 16 * r..40 + 16 * r]);
        }
    }
}
