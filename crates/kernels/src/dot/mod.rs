//! Dot products of one weight row (raw ggml blocks) with one or several activation rows.
//!
//! Activations are quantised once per matmul (see [`crate::quant::act`]); each weight type then
//! has a portable scalar reference (`scalar.rs`) and SIMD paths chosen at run time from the CPU's
//! features ([`Isa`]). The `_n` entry points take `N` activation rows at once so that a weight
//! block is loaded and unpacked once for all of them (the prefill tile).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod iq4;
#[cfg(target_arch = "aarch64")]
mod neon;
pub(crate) mod scalar;
#[cfg(target_arch = "x86_64")]
mod small_avx2;
#[cfg(target_arch = "x86_64")]
mod small_avx512;

use crate::quant::{interleave8, BlockQ8K, BlockQ8_32, BlockQ8x8};
use crate::DType;
use scalar::LegacyKind;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// An instruction-set level with its own kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, the reference every other path is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (on top of AVX2): `vpdpbusd` / `vpdpwssd` kernels where
    /// they help, the AVX2 kernels elsewhere; bit-identical results to [`Isa::Avx2`].
    Avx512,
    /// aarch64 NEON (widening multiplies).
    Neon,
    /// aarch64 NEON with the dotprod extension (`sdot`).
    NeonDot,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon+dotprod",
        }
    }

    /// Whether this CPU can run the level's kernels.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Whether this is an x86-64 level that runs the AVX2 kernels (AVX2 itself, and AVX-512
    /// wherever it has no kernel of its own). Says nothing about availability.
    pub fn has_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512)
    }

    /// Every level this CPU can run, best last.
    pub fn available() -> Vec<Isa> {
        ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The level every kernel of this process uses: the one set by [`Isa::use_in_process`],
    /// else the best this CPU can run ([`Isa::detected`]).
    pub fn best() -> Isa {
        match CHOSEN.load(Ordering::Relaxed) {
            0 => Isa::detected(),
            n => ALL[usize::from(n) - 1],
        }
    }

    /// The best level this CPU can run (detected once).
    pub fn detected() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| *Isa::available().last().unwrap_or(&Isa::Scalar))
    }

    /// Makes every kernel of this process run `isa` from now on (e.g. the scalar reference,
    /// for comparisons). Process-wide because the kernels are free functions called from every
    /// model; every level handles every weight layout, so models loaded before keep working.
    pub fn use_in_process(isa: Isa) -> Result<(), IsaUnavailable> {
        if !isa.is_available() {
            return Err(IsaUnavailable(isa));
        }
        let n = ALL.iter().position(|&i| i == isa).unwrap_or(0) + 1;
        CHOSEN.store(n as u8, Ordering::Relaxed);
        Ok(())
    }
}

/// Every level, in the order [`CHOSEN`] numbers them (from 1).
const ALL: [Isa; 5] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon, Isa::NeonDot];

/// The level [`Isa::use_in_process`] set (its index in [`ALL`] plus one), 0 = detect.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// Asked for an instruction-set level this CPU cannot run.
#[derive(Debug, thiserror::Error)]
#[error("this CPU cannot run the {} kernels (it can run: {})", .0.name(), Isa::available().iter().map(|i| i.name()).collect::<Vec<_>>().join(", "))]
pub struct IsaUnavailable(pub Isa);

impl std::str::FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Isa, String> {
        ALL.into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = ALL.iter().map(|i| i.name()).collect();
                format!("unknown kernel level {s:?} (one of: {})", names.join(", "))
            })
    }
}

/// What was detected, e.g. `"x86_64 avx2 fma f16c avx512f=no ... -> kernels: avx2"`.
pub fn cpu_features() -> String {
    let mut s = String::from(std::env::consts::ARCH);
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! feat {
            ($($f:tt),*) => {$(
                s.push(' ');
                s.push_str($f);
                if !is_x86_feature_detected!($f) { s.push_str("=no"); }
            )*};
        }
        feat!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! feat {
            ($($f:tt),*) => {$(
                s.push(' ');
                s.push_str($f);
                if !std::arch::is_aarch64_feature_detected!($f) { s.push_str("=no"); }
            )*};
        }
        feat!("neon", "dotprod", "i8mm", "fp16");
    }
    s.push_str(" -> kernels: ");
    s.push_str(Isa::best().name());
    s
}

/// Which activation form a weight type is multiplied with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    /// Plain f32 (F32 / F16 / BF16 weights).
    F32,
    /// [`BlockQ8_32`] (the 32-element quant types).
    Q8_32,
    /// [`BlockQ8K`] (the k-quants).
    Q8K,
}

pub fn act_kind(dtype: DType) -> ActKind {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => ActKind::F32,
        DType::Q4_0
        | DType::Q4_1
        | DType::Q5_0
        | DType::Q5_1
        | DType::Q8_0
        | DType::Q8_1
        | DType::IQ4_NL => ActKind::Q8_32,
        DType::Q2_K
        | DType::Q3_K
        | DType::Q4_K
        | DType::Q5_K
        | DType::Q6_K
        | DType::Q8_K
        | DType::IQ4_XS => ActKind::Q8K,
    }
}

fn legacy_kind(dtype: DType) -> Option<LegacyKind> {
    Some(match dtype {
        DType::Q4_0 => LegacyKind::Q4_0,
        DType::Q4_1 => LegacyKind::Q4_1,
        DType::Q5_0 => LegacyKind::Q5_0,
        DType::Q5_1 => LegacyKind::Q5_1,
        DType::Q8_0 => LegacyKind::Q8_0,
        DType::Q8_1 => LegacyKind::Q8_1,
        DType::IQ4_NL => LegacyKind::IQ4_NL,
        _ => return None,
    })
}

fn check(
    dtype: DType,
    w: &[u8],
    n_act_blocks: impl Iterator<Item = usize>,
    per_block: usize,
) -> usize {
    let bb = dtype.block_bytes();
    assert!(
        w.len() % bb == 0,
        "dot: {} bytes are not whole {dtype} blocks",
        w.len()
    );
    let nb = w.len() / bb;
    let elems = nb * dtype.block_size();
    for n in n_act_blocks {
        assert_eq!(
            n * per_block,
            elems,
            "dot: activation row length differs from the weight row"
        );
    }
    nb
}

/// `out[t] = w · a[t]` for a row of a 32-element quant type (`Q4_0 … Q8_1`).
pub fn dot_q8_32_n<const N: usize>(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    a: [&[BlockQ8_32]; N],
) -> [f32; N] {
    let kind = legacy_kind(dtype)
        .unwrap_or_else(|| panic!("dot_q8_32_n: {dtype} is not a 32-element quant type"));
    check(dtype, w, a.iter().map(|r| r.len()), 32);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if isa.is_available() => unsafe { avx2::dot_legacy_n(kind, w, a) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.is_available() => unsafe { neon::dot_legacy_n::<false, N>(kind, w, a) },
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot if isa.is_available() => unsafe { neon::dot_legacy_n::<true, N>(kind, w, a) },
        _ => std::array::from_fn(|t| scalar::dot_legacy(kind, w, a[t])),
    }
}

/// `out[r] = w[r] · a` for `R` weight rows of a 32-element quant type stored back to back in
/// `w` (each `w.len() / R` bytes) and one activation row: the decode kernel.
pub fn dot_q8_32_rows<const R: usize>(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    a: &[BlockQ8_32],
) -> [f32; R] {
    let kind = legacy_kind(dtype)
        .unwrap_or_else(|| panic!("dot_q8_32_rows: {dtype} is not a 32-element quant type"));
    assert!(
        R > 0 && w.len() % R == 0,
        "dot_q8_32_rows: not {R} equal rows"
    );
    let row_bytes = w.len() / R;
    check(dtype, &w[..row_bytes], std::iter::once(a.len()), 32);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if isa.is_available() && R == 4 => unsafe {
            let strides = avx2::Strides {
                row: row_bytes,
                block: kind.block_bytes(),
            };
            if isa == Isa::Avx512 {
                avx512::dot_legacy_rows::<R>(kind, w, strides, a)
            } else {
                avx2::dot_legacy_rows::<R>(kind, w, strides, a)
            }
        },
        _ => std::array::from_fn(|r| {
            dot_q8_32_n(isa, dtype, &w[r * row_bytes..(r + 1) * row_bytes], [a])[0]
        }),
    }
}

/// `out[t] = w · a[t]` for 8 activation rows of a 32-element quant type: the prefill tile.
/// Convenience form that interleaves `a` itself; `matmul` interleaves once per token group and
/// calls [`dot_q8_32_g8`].
pub fn dot_q8_32_x8(isa: Isa, dtype: DType, w: &[u8], a: [&[BlockQ8_32]; 8]) -> [f32; 8] {
    let nb = a[0].len();
    assert!(
        a.iter().all(|r| r.len() == nb),
        "dot_q8_32_x8: activation rows differ in length"
    );
    let g: Vec<BlockQ8x8> = (0..nb)
        .map(|i| interleave8(std::array::from_fn(|t| &a[t][i])))
        .collect();
    dot_q8_32_g8(isa, dtype, w, &g, a)
}

/// [`dot_q8_32_x8`] with the 8 rows already interleaved (`g[i] == interleave8(a[..][i])`);
/// `a` (the same rows, plain) serves the levels without a group kernel.
pub fn dot_q8_32_g8(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    g: &[BlockQ8x8],
    a: [&[BlockQ8_32]; 8],
) -> [f32; 8] {
    let kind = legacy_kind(dtype)
        .unwrap_or_else(|| panic!("dot_q8_32_x8: {dtype} is not a 32-element quant type"));
    let nb = check(dtype, w, a.iter().map(|r| r.len()), 32);
    assert_eq!(
        g.len(),
        nb,
        "dot_q8_32_g8: {} interleaved blocks for {nb} weight blocks",
        g.len()
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => unsafe { avx512::dot_legacy_g8(kind, w, g) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => unsafe { avx2::dot_legacy_g8(kind, w, g) },
        _ => {
            let _ = kind;
            dot_q8_32_n(isa, dtype, w, a)
        }
    }
}

/// [`dot_q8_32_g8`] for `R` weight rows stored back to back in `w` (each `w.len() / R` bytes):
/// `out[r][t] = w[r] · a[t]`. Every activation load serves all `R` rows.
pub fn dot_q8_32_g8_rows<const R: usize>(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    g: &[BlockQ8x8],
    a: [&[BlockQ8_32]; 8],
) -> [[f32; 8]; R] {
    let kind = legacy_kind(dtype)
        .unwrap_or_else(|| panic!("dot_q8_32_g8_rows: {dtype} is not a 32-element quant type"));
    assert!(
        R > 0 && w.len() % R == 0,
        "dot_q8_32_g8_rows: not {R} equal rows"
    );
    let row_bytes = w.len() / R;
    let nb = check(dtype, &w[..row_bytes], a.iter().map(|r| r.len()), 32);
    assert_eq!(
        g.len(),
        nb,
        "dot_q8_32_g8_rows: {} interleaved blocks for {nb} weight blocks",
        g.len()
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => unsafe {
            avx512::dot_legacy_g8_rows::<R>(kind, w, row_bytes, g)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => unsafe {
            avx2::dot_legacy_g8_rows::<R>(kind, w, row_bytes, g)
        },
        _ => std::array::from_fn(|r| {
            dot_q8_32_g8(isa, dtype, &w[r * row_bytes..(r + 1) * row_bytes], g, a)
        }),
    }
}

/// 32 weights of a type of at most 5 bits unpacked for prefill, as unsigned bytes `u`. Prefill
/// unpacks a chunk of rows once and multiplies it with every token group, instead of unpacking
/// each block again for every group of 8 tokens.
///
/// Legacy types: `w = d·(u - off)` (Q4_0 off 8, Q5_0 off 16, `m` unused) or `w = d·u + m`
/// (Q4_1, Q5_1). Q4_K / Q5_K, one block per sub-block: `w = d·sc·u - m·mn` with the
/// super-block's `d` and `dmin` (as `m`) and the sub-block's integer scale and min, so that
/// the kernels can finish each super-block exactly as the one-token kernels do.
///
/// Q6_K, one block per 32 weights: `u` holds the signed 6-bit values `q` (as i8 bits), `sc`
/// and `mn` the i8 scales of the first and second 16, `d` the super-block's scale, and `corr`
/// is `128·Σ scale·q`. Its weights are too wide for unsigned `maddubs` sums to fit in i16 four
/// at a time, so the tiles take the activations offset by 128 instead
/// ([`BlockQ8x8::offset_by_128`]), unsigned, with the weights as the signed operand; `corr`
/// takes the offset back out of each exact integer sum.
///
/// Q8_0 and IQ4_NL are legacy types with `off` 128: `u = q + 128` for Q8_0's value, `v + 128`
/// for IQ4_NL's grid value.
/// IQ4_XS takes Q6_K's form, one block per sub-block: `u` the grid values (i8 bits), `sc` and
/// `mn` both the sub-block's scale `ls - 32`, `corr = 128·(ls - 32)·Σv`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockU8 {
    pub u: [u8; 32],
    pub d: f32,
    pub m: f32,
    pub sc: u8,
    pub mn: u8,
    pub corr: i32,
}

impl BlockU8 {
    /// The 32 weights in f32 (for tests).
    pub fn weights(&self, dtype: DType) -> [f32; 32] {
        std::array::from_fn(|l| {
            let u = self.u[l] as f32;
            match dtype {
                DType::Q4_0 => self.d * (u - 8.0),
                DType::Q5_0 => self.d * (u - 16.0),
                DType::Q8_0 | DType::IQ4_NL => self.d * (u - 128.0),
                DType::Q4_K | DType::Q5_K => self.d * self.sc as f32 * u - self.m * self.mn as f32,
                DType::Q6_K | DType::IQ4_XS => {
                    let scale = if l < 16 { self.sc } else { self.mn } as i8 as f32;
                    self.d * scale * self.u[l] as i8 as f32
                }
                _ => self.d * u + self.m,
            }
        })
    }
}

/// Whether `dtype` has the [`BlockU8`] prefill form (weights of at most 5 bits, so that four
/// `maddubs` sums fit in i16; Q6_K, with offset activations; and Q8_0 and the IQ4 types, whose
/// tiles need `vpdpbusd`: see [`has_u8_tile`]).
pub fn has_u8_form(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q4_K
            | DType::Q5_K
            | DType::Q6_K
            | DType::Q8_0
            | DType::IQ4_NL
            | DType::IQ4_XS
    )
}

/// Whether the unpacked tiles of `dtype` take the activations offset by 128
/// ([`BlockQ8x8::offset_by_128`]): Q6_K and IQ4_XS, whose weights are the signed operand.
pub fn u8_offset_acts(dtype: DType) -> bool {
    matches!(dtype, DType::Q6_K | DType::IQ4_XS)
}

/// Whether prefill at `isa` multiplies `dtype` in its unpacked form ([`BlockU8`]). Q8_0's
/// values and the IQ4 grid (|v| <= 127) offset to unsigned bytes, or taken with offset
/// activations, overflow `maddubs`' i16 pairs, so AVX2 keeps the 8-token tiles for them;
/// `vpdpbusd` sums to i32.
pub fn has_u8_tile(isa: Isa, dtype: DType) -> bool {
    let wide = matches!(dtype, DType::Q8_0 | DType::IQ4_NL | DType::IQ4_XS);
    has_u8_form(dtype)
        && isa.is_available()
        && if wide {
            isa == Isa::Avx512
        } else {
            isa.has_avx2()
        }
}

/// Unpacks one weight row of a type with [`has_u8_form`] into `out` (one block per 32
/// weights; for Q4_K / Q5_K one per sub-block, carrying its integer scale and min; for Q6_K
/// see [`BlockU8`]).
pub fn repack_u8(isa: Isa, dtype: DType, w: &[u8], out: &mut [BlockU8]) {
    assert!(
        has_u8_form(dtype),
        "repack_u8: {dtype} has no unpacked form"
    );
    assert_eq!(w.len() % dtype.block_bytes(), 0, "repack_u8: partial block");
    assert_eq!(
        w.len() / dtype.block_bytes() * dtype.block_size(),
        out.len() * 32,
        "repack_u8: row and output lengths differ"
    );
    if dtype == DType::Q6_K {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 && isa.is_available() {
            return unsafe { avx512::repack_u8_q6_k(w, out) };
        }
        // (elsewhere scalar: a row is unpacked once per matmul)
        return scalar::repack_u8_q6_k(w, out);
    }
    if dtype == DType::IQ4_XS {
        #[cfg(target_arch = "x86_64")]
        if isa.has_avx2() && isa.is_available() {
            return unsafe { iq4::repack_u8_iq4_xs(w, out) };
        }
        return scalar::repack_u8_iq4_xs(w, out);
    }
    let five = dtype == DType::Q5_K;
    match (isa, legacy_kind(dtype)) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, Some(kind)) if isa.is_available() => unsafe {
            avx2::repack_u8(kind, w, out)
        },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, None) if isa.is_available() => unsafe {
            avx2::repack_u8_k(five, w, out)
        },
        (_, Some(kind)) => scalar::repack_u8(kind, w, out),
        (_, None) => scalar::repack_u8_k(five, w, out),
    }
}

/// [`repack_u8`] for a 4-row group of Q5_0 in the [`crate::interleave::Layout::Rows4`] layout
/// (`out`: the 4 rows' blocks back to back), without taking the group apart into rows first.
pub fn repack_u8_q5_0_group(isa: Isa, w: &[u8], out: &mut [BlockU8]) {
    const GB: usize = crate::interleave::Q5_0_GROUP_BLOCK;
    assert_eq!(w.len() % GB, 0, "repack_u8_q5_0_group: partial block");
    assert_eq!(
        w.len() / GB * 4,
        out.len(),
        "repack_u8_q5_0_group: group and output lengths differ"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if isa.is_available() => unsafe {
            avx2::repack_u8_q5_0_group(w, out)
        },
        _ => {
            let mut rows = vec![0u8; w.len()];
            crate::interleave::q5_0_group_to_rows(w, &mut rows);
            let (rb, nb) = (w.len() / 4, out.len() / 4);
            for (r, o) in out.chunks_exact_mut(nb).enumerate() {
                repack_u8(isa, DType::Q5_0, &rows[r * rb..(r + 1) * rb], o);
            }
        }
    }
}

/// Checks the shapes every unpacked tile relies on: `R` rows of `nb` blocks, whole
/// super-blocks for the k-quants.
#[inline(always)]
fn check_u8_tile(what: &str, dtype: DType, rows: usize, w: &[BlockU8], nb: usize) {
    assert!(has_u8_form(dtype), "{what}: {dtype} has no unpacked form");
    assert_eq!(w.len(), rows * nb, "{what}: not {rows} rows of {nb} blocks");
    let kquant = matches!(
        dtype,
        DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::IQ4_XS
    );
    assert!(!kquant || nb % 8 == 0, "{what}: partial super-block");
}

/// `out[r][t] = w[r] · a[t]` for `R` unpacked rows of `dtype` stored back to back in `w` (each
/// `g.len()` blocks) and 8 interleaved tokens `g`. Bit-identical to the one-token kernels of
/// the same level (see the module docs).
pub fn dot_u8_g8_rows<const R: usize>(
    isa: Isa,
    dtype: DType,
    w: &[BlockU8],
    g: &[BlockQ8x8],
) -> [[f32; 8]; R] {
    let nb = g.len();
    check_u8_tile("dot_u8_g8_rows", dtype, R, w, nb);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => unsafe {
            match dtype {
                DType::Q4_0 => avx512::dot_u8_g8_rows::<0, R>(w, g),
                DType::Q4_1 => avx512::dot_u8_g8_rows::<1, R>(w, g),
                DType::Q5_0 => avx512::dot_u8_g8_rows::<2, R>(w, g),
                DType::Q5_1 => avx512::dot_u8_g8_rows::<3, R>(w, g),
                DType::Q8_0 => avx512::dot_u8_g8_rows::<4, R>(w, g),
                DType::IQ4_NL => avx512::dot_u8_g8_rows::<6, R>(w, g),
                DType::Q6_K => avx512::dot_u8q6_g8_rows::<true, R>(w, g),
                DType::IQ4_XS => avx512::dot_u8q6_g8_rows::<false, R>(w, g),
                _ => avx512::dot_u8k_g8_rows::<R>(w, g),
            }
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if has_u8_tile(isa, dtype) => unsafe {
            match dtype {
                DType::Q4_0 => avx2::dot_u8_g8_rows::<0, R>(w, g),
                DType::Q4_1 => avx2::dot_u8_g8_rows::<1, R>(w, g),
                DType::Q5_0 => avx2::dot_u8_g8_rows::<2, R>(w, g),
                DType::Q5_1 => avx2::dot_u8_g8_rows::<3, R>(w, g),
                DType::Q4_K => avx2::dot_u8k_g8_rows::<false, R>(w, g),
                DType::Q6_K => avx2::dot_u8q6_g8_rows::<R>(w, g),
                _ => avx2::dot_u8k_g8_rows::<true, R>(w, g),
            }
        },
        _ => std::array::from_fn(|r| {
            std::array::from_fn(|t| scalar::dot_u8_g8(dtype, &w[r * nb..(r + 1) * nb], g, t))
        }),
    }
}

/// [`dot_u8_g8_rows`] for two token groups at once: `out[k][r]` is rows `r` × group `g[k]`.
/// AVX2 has kernels of their own (each weight broadcast serves both groups); elsewhere this
/// is two calls. Bit-identical to [`dot_u8_g8_rows`] on each group. (The results in place:
/// [`dot_u8_g16_rows_to`].)
pub fn dot_u8_g16_rows<const R: usize>(
    isa: Isa,
    dtype: DType,
    w: &[BlockU8],
    g: [&[BlockQ8x8]; 2],
) -> [[[f32; 8]; R]; 2] {
    // token-major, as the in-place kernels store
    let mut tm = [[0.0f32; R]; 16];
    // SAFETY: `tm` holds the 16 tokens × `R` rows at stride `R`, and only this call sees it.
    unsafe { dot_u8_g16_rows_to::<R>(isa, dtype, w, g, tm.as_mut_ptr() as *mut f32, R) };
    std::array::from_fn(|k| std::array::from_fn(|r| std::array::from_fn(|t| tm[8 * k + t][r])))
}

/// [`dot_u8_g16_rows`] with the results stored in place: row `r` × token `t` of group `k` goes
/// to `*o.add((8 * k + t) * stride + r)` (a token-major output with `stride` floats per
/// token), which on AVX2 the kernel does itself, two rows per store.
///
/// # Safety
/// `o` must be valid for writes at all those `2 · 8 · R` places, and no one else may access
/// them meanwhile.
pub unsafe fn dot_u8_g16_rows_to<const R: usize>(
    isa: Isa,
    dtype: DType,
    w: &[BlockU8],
    g: [&[BlockQ8x8]; 2],
    o: *mut f32,
    stride: usize,
) {
    let nb = g[0].len();
    assert_eq!(g[1].len(), nb, "dot_u8_g16_rows: groups differ in length");
    check_u8_tile("dot_u8_g16_rows", dtype, R, w, nb);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => match dtype {
            DType::Q4_0 => avx512::dot_u8_g16_rows_to::<0, R>(w, g, o, stride),
            DType::Q4_1 => avx512::dot_u8_g16_rows_to::<1, R>(w, g, o, stride),
            DType::Q5_0 => avx512::dot_u8_g16_rows_to::<2, R>(w, g, o, stride),
            DType::Q5_1 => avx512::dot_u8_g16_rows_to::<3, R>(w, g, o, stride),
            DType::Q8_0 => avx512::dot_u8_g16_rows_to::<4, R>(w, g, o, stride),
            DType::IQ4_NL => avx512::dot_u8_g16_rows_to::<6, R>(w, g, o, stride),
            DType::Q4_K | DType::Q5_K => avx512::dot_u8k_g16_rows_to::<R>(w, g, o, stride),
            DType::IQ4_XS => avx512::dot_u8q6_g16_rows_to::<false, R>(w, g, o, stride),
            _ => avx512::dot_u8q6_g16_rows_to::<true, R>(w, g, o, stride),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if has_u8_tile(isa, dtype) => match dtype {
            DType::Q4_0 => avx2::dot_u8_g16_rows_to::<0, R>(w, g, o, stride),
            DType::Q4_1 => avx2::dot_u8_g16_rows_to::<1, R>(w, g, o, stride),
            DType::Q5_0 => avx2::dot_u8_g16_rows_to::<2, R>(w, g, o, stride),
            DType::Q5_1 => avx2::dot_u8_g16_rows_to::<3, R>(w, g, o, stride),
            DType::Q4_K => avx2::dot_u8k_g16_rows_to::<false, R>(w, g, o, stride),
            DType::Q5_K => avx2::dot_u8k_g16_rows_to::<true, R>(w, g, o, stride),
            _ => avx2::dot_u8q6_g16_rows_to::<R>(w, g, o, stride),
        },
        _ => {
            for (k, g) in g.into_iter().enumerate() {
                let v = dot_u8_g8_rows::<R>(isa, dtype, w, g);
                for (r, vr) in v.iter().enumerate() {
                    for (t, &x) in vr.iter().enumerate() {
                        *o.add((8 * k + t) * stride + r) = x;
                    }
                }
            }
        }
    }
}

/// `out[t] = w · a[t]` for a row of a k-quant type (`Q2_K … Q8_K`).
pub fn dot_q8k_n<const N: usize>(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    a: [&[BlockQ8K]; N],
) -> [f32; N] {
    assert_eq!(
        act_kind(dtype),
        ActKind::Q8K,
        "dot_q8k_n: {dtype} is not a k-quant"
    );
    check(dtype, w, a.iter().map(|r| r.len()), 256);
    match (isa, dtype) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::Q2_K) if isa.is_available() => {
            return unsafe { avx2::dot_q2_k_n(w, a) }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::Q3_K) if isa.is_available() => {
            return unsafe { avx2::dot_q3_k_n(w, a) }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::Q8_K) if isa.is_available() => {
            return unsafe { avx2::dot_q8_k_n(w, a) }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::Q4_K) if isa.is_available() => {
            return unsafe { avx2::dot_q4_k_n(w, a) }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::Q5_K) if isa.is_available() => {
            return unsafe { avx2::dot_q5_k_n(w, a) }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::Q6_K) if isa.is_available() => {
            return unsafe { avx2::dot_q6_k_n(w, a) }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::IQ4_XS) if isa.is_available() => {
            return unsafe { iq4::dot_iq4_xs_n(w, a) }
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::Neon, DType::Q4_K) if isa.is_available() => {
            return unsafe { neon::dot_q4_k_n::<false, N>(w, a) }
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::NeonDot, DType::Q4_K) if isa.is_available() => {
            return unsafe { neon::dot_q4_k_n::<true, N>(w, a) }
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::Neon, DType::Q6_K) if isa.is_available() => {
            return unsafe { neon::dot_q6_k_n::<false, N>(w, a) }
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::NeonDot, DType::Q6_K) if isa.is_available() => {
            return unsafe { neon::dot_q6_k_n::<true, N>(w, a) }
        }
        _ => {}
    }
    let f = match dtype {
        DType::Q2_K => scalar::dot_q2_k,
        DType::Q3_K => scalar::dot_q3_k,
        DType::Q4_K => scalar::dot_q4_k,
        DType::Q5_K => scalar::dot_q5_k,
        DType::Q6_K => scalar::dot_q6_k,
        DType::IQ4_XS => scalar::dot_iq4_xs,
        _ => scalar::dot_q8_k,
    };
    std::array::from_fn(|t| f(w, a[t]))
}

/// Whether `dtype` has a [`dot_q8k_rows`] kernel of its own at `isa` (else that falls back to
/// one row at a time, and callers may as well use [`dot_q8k_n`]).
pub fn has_q8k_rows(isa: Isa, dtype: DType) -> bool {
    let _ = dtype;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => {
            isa.is_available()
                && matches!(
                    dtype,
                    DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::IQ4_XS
                )
        }
        _ => false,
    }
}

/// `out[r] = w[r] · a` for `R` weight rows of a k-quant type stored back to back in `w` (each
/// `w.len() / R` bytes) and one activation row: the decode kernel. Bit-identical to
/// [`dot_q8k_n`] row by row.
pub fn dot_q8k_rows<const R: usize>(isa: Isa, dtype: DType, w: &[u8], a: &[BlockQ8K]) -> [f32; R] {
    assert_eq!(
        act_kind(dtype),
        ActKind::Q8K,
        "dot_q8k_rows: {dtype} is not a k-quant"
    );
    assert!(
        R > 0 && w.len() % R == 0,
        "dot_q8k_rows: not {R} equal rows"
    );
    let row_bytes = w.len() / R;
    check(dtype, &w[..row_bytes], std::iter::once(a.len()), 256);
    if R == 4 && has_q8k_rows(isa, dtype) {
        let strides = Strides {
            row: row_bytes,
            block: dtype.block_bytes(),
        };
        return q8k_rows4(isa, dtype, w, strides, a)[..R]
            .try_into()
            .expect("4 rows");
    }
    std::array::from_fn(|r| dot_q8k_n(isa, dtype, &w[r * row_bytes..(r + 1) * row_bytes], [a])[0])
}

#[cfg(target_arch = "x86_64")]
use avx2::Strides;
#[cfg(not(target_arch = "x86_64"))]
#[allow(dead_code)]
struct Strides {
    row: usize,
    block: usize,
}

#[cfg(not(target_arch = "x86_64"))]
impl Strides {
    fn group4(block_bytes: usize) -> Strides {
        Strides {
            row: block_bytes,
            block: 4 * block_bytes,
        }
    }
}

/// The AVX2 4-row k-quant decode kernels (callers check [`has_q8k_rows`]).
fn q8k_rows4(isa: Isa, dtype: DType, w: &[u8], strides: Strides, a: &[BlockQ8K]) -> [f32; 4] {
    let _ = (w, &strides, a);
    // SAFETY (all arms): `has_q8k_rows` said the CPU has AVX2 (and AVX-512 where `isa` is
    // that level); the callers checked the lengths of `w` and `a`.
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        return match dtype {
            DType::Q4_K => unsafe { avx512::dot_q45_k_rows::<false, 4>(w, strides, a) },
            DType::Q5_K => unsafe { avx512::dot_q45_k_rows::<true, 4>(w, strides, a) },
            // (no AVX-512 kernel of its own: the AVX2 one)
            DType::IQ4_XS => unsafe { iq4::dot_iq4_xs_rows::<4>(w, strides, a) },
            _ => unsafe { avx512::dot_q6_k_rows::<4>(w, strides, a) },
        };
    }
    let _ = isa;
    match dtype {
        #[cfg(target_arch = "x86_64")]
        DType::Q4_K => unsafe { avx2::dot_q45_k_rows::<false, 4>(w, strides, a) },
        #[cfg(target_arch = "x86_64")]
        DType::Q5_K => unsafe { avx2::dot_q45_k_rows::<true, 4>(w, strides, a) },
        #[cfg(target_arch = "x86_64")]
        DType::Q6_K => unsafe { avx2::dot_q6_k_rows::<4>(w, strides, a) },
        #[cfg(target_arch = "x86_64")]
        DType::IQ4_XS => unsafe { iq4::dot_iq4_xs_rows::<4>(w, strides, a) },
        _ => unreachable!("no 4-row decode kernel for {dtype}"),
    }
}

/// `out[r] = w[r] · a` for a 4-row group of a k-quant type ([`crate::interleave::Layout::Rows4`]):
/// the decode kernel on interleaved weights, bit-identical to [`dot_q8k_rows`] on the rows.
pub fn dot_q8k_group4(isa: Isa, dtype: DType, w: &[u8], a: &[BlockQ8K]) -> [f32; 4] {
    assert_eq!(
        w.len(),
        4 * a.len() * dtype.block_bytes(),
        "dot_q8k_group4: group and activations differ in length"
    );
    if has_q8k_rows(isa, dtype) {
        let bb = dtype.block_bytes();
        return q8k_rows4(isa, dtype, w, Strides::group4(bb), a);
    }
    let mut rows = vec![0u8; w.len()];
    crate::interleave::group_to_rows(dtype, w, &mut rows);
    dot_q8k_rows::<4>(isa, dtype, &rows, a)
}

/// `out[t] = w · a[t]` for 8 activation rows of a k-quant type: the prefill tile (on AVX2,
/// Q4_K / Q5_K / Q6_K share each super-block's float work across the 8 tokens).
pub fn dot_q8k_x8(isa: Isa, dtype: DType, w: &[u8], a: [&[BlockQ8K]; 8]) -> [f32; 8] {
    assert_eq!(
        act_kind(dtype),
        ActKind::Q8K,
        "dot_q8k_x8: {dtype} is not a k-quant"
    );
    check(dtype, w, a.iter().map(|r| r.len()), 256);
    match (isa, dtype) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::Q4_K) if isa.is_available() => unsafe {
            avx2::dot_q45_k_x8::<false>(w, a)
        },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::Q5_K) if isa.is_available() => unsafe {
            avx2::dot_q45_k_x8::<true>(w, a)
        },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::Q6_K) if isa.is_available() => unsafe {
            avx2::dot_q6_k_x8(w, a)
        },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, DType::IQ4_XS) if isa.is_available() => unsafe {
            iq4::dot_iq4_xs_n(w, a)
        },
        _ => {
            let [a0, a1, a2, a3, a4, a5, a6, a7] = a;
            let lo = dot_q8k_n(isa, dtype, w, [a0, a1, a2, a3]);
            let hi = dot_q8k_n(isa, dtype, w, [a4, a5, a6, a7]);
            std::array::from_fn(|t| if t < 4 { lo[t] } else { hi[t - 4] })
        }
    }
}

/// `out[t] = w · x[t]` for a row of plain floats (`F32`, `F16`, `BF16` bytes).
pub fn dot_float_n<const N: usize>(isa: Isa, dtype: DType, w: &[u8], x: [&[f32]; N]) -> [f32; N] {
    assert_eq!(
        act_kind(dtype),
        ActKind::F32,
        "dot_float_n: {dtype} is not a float type"
    );
    check(dtype, w, x.iter().map(|r| r.len()), 1);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if isa.is_available() => unsafe { avx2::dot_float_n(dtype, w, x) },
        _ => std::array::from_fn(|t| scalar::dot_float(dtype, w, x[t])),
    }
}

/// Σ a·b over f32 slices of equal length, with the best available SIMD.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if Isa::best().has_avx2() {
        return unsafe { avx2::dot_f32(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `out[r] = w[r] · a` for a 4-row group of a 32-element quant type
/// ([`crate::interleave::Layout::Rows4`]): the decode kernel on interleaved weights,
/// bit-identical to [`dot_q8_32_rows`] on the rows. Levels without a group kernel take the
/// group apart into plain rows.
pub fn dot_q8_32_group4(isa: Isa, dtype: DType, w: &[u8], a: &[BlockQ8_32]) -> [f32; 4] {
    let kind = legacy_kind(dtype)
        .unwrap_or_else(|| panic!("dot_q8_32_group4: {dtype} is not a 32-element quant type"));
    let bb = kind.block_bytes();
    assert_eq!(
        w.len(),
        4 * a.len() * bb,
        "dot_q8_32_group4: group and activations differ in length"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => unsafe {
            if dtype == DType::Q5_0 {
                avx512::dot_q5_0_r4(w, a)
            } else {
                let strides = Strides::group4(bb);
                avx512::dot_legacy_rows::<4>(kind, w, strides, a)
            }
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => unsafe {
            if dtype == DType::Q5_0 {
                avx2::dot_q5_0_r4(w, a)
            } else {
                let strides = Strides::group4(bb);
                avx2::dot_legacy_rows::<4>(kind, w, strides, a)
            }
        },
        _ => {
            let mut rows = vec![0u8; w.len()];
            crate::interleave::group_to_rows(dtype, w, &mut rows);
            dot_q8_32_rows::<4>(isa, dtype, &rows, a)
        }
    }
}

/// The most activation rows [`dot_q8_32_rows4_n`] and [`dot_q8k_rows4_n`] take in one call.
pub const SMALL_BATCH_MAX: usize = 16;

/// Checks a small-batch call's shapes: 4 rows of `nb` blocks in `w`, `a.len()` ≤
/// [`SMALL_BATCH_MAX`] activation rows of `nb` blocks each, one output per token. Returns `nb`.
fn check_small<T>(
    what: &str,
    dtype: DType,
    w: &[u8],
    a: &[&[T]],
    out: &[[f32; 4]],
    per_block: usize,
) -> usize {
    assert!(
        a.len() <= SMALL_BATCH_MAX && out.len() == a.len(),
        "{what}: {} tokens, {} outputs (at most {SMALL_BATCH_MAX})",
        a.len(),
        out.len()
    );
    assert!(w.len() % 4 == 0, "{what}: not 4 equal rows");
    check(
        dtype,
        &w[..w.len() / 4],
        a.iter().map(|r| r.len()),
        per_block,
    )
}

/// The small-batch kernel: `out[t][r] = w[r] · a[t]` for the 4 rows of a decode group of a
/// 32-element quant type (`grouped`: a [`crate::interleave::Layout::Rows4`] group, else 4
/// plain rows back to back) and `a.len()` ≤ [`SMALL_BATCH_MAX`] activation rows. Each weight
/// block is read and unpacked once for all the tokens. Bit-identical, token by token, to the
/// decode kernel ([`dot_q8_32_group4`] / [`dot_q8_32_rows`]) on that token alone.
pub fn dot_q8_32_rows4_n(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    grouped: bool,
    a: &[&[BlockQ8_32]],
    out: &mut [[f32; 4]],
) {
    let kind = legacy_kind(dtype)
        .unwrap_or_else(|| panic!("dot_q8_32_rows4_n: {dtype} is not a 32-element quant type"));
    check_small("dot_q8_32_rows4_n", dtype, w, a, out, 32);
    match isa {
        // SAFETY: the CPU has AVX2 (checked), the shapes were checked above.
        #[cfg(target_arch = "x86_64")]
        // (IQ4_NL has no small-batch kernel: it takes the per-token loop below.)
        Isa::Avx2 | Isa::Avx512 if isa.is_available() && kind != LegacyKind::IQ4_NL => unsafe {
            let bb = kind.block_bytes();
            if grouped && dtype == DType::Q5_0 {
                small_avx2::q5_0_r4_n(w, a, out)
            } else {
                let strides = Strides::four_rows(grouped, bb, w.len());
                small_avx2::legacy_rows_n(kind, w, strides, a, out)
            }
        },
        _ => {
            let _ = kind;
            for (o, a) in out.iter_mut().zip(a) {
                *o = if grouped {
                    dot_q8_32_group4(isa, dtype, w, a)
                } else {
                    dot_q8_32_rows::<4>(isa, dtype, w, a)
                };
            }
        }
    }
}

/// [`dot_q8_32_rows4_n`] for the k-quants: bit-identical, token by token, to
/// [`dot_q8k_group4`] / [`dot_q8k_rows`] on that token alone. Q4_K, Q5_K and Q6_K have
/// kernels of their own on AVX2 / AVX-512; the other types and levels run the decode kernel
/// once per token.
pub fn dot_q8k_rows4_n(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    grouped: bool,
    a: &[&[BlockQ8K]],
    out: &mut [[f32; 4]],
) {
    assert_eq!(
        act_kind(dtype),
        ActKind::Q8K,
        "dot_q8k_rows4_n: {dtype} is not a k-quant"
    );
    check_small("dot_q8k_rows4_n", dtype, w, a, out, 256);
    // IQ4_XS has a 4-row decode kernel but no small-batch one: it takes the per-token loop.
    #[cfg(target_arch = "x86_64")]
    if has_q8k_rows(isa, dtype) && matches!(dtype, DType::Q4_K | DType::Q5_K | DType::Q6_K) {
        let bb = dtype.block_bytes();
        let strides = Strides::four_rows(grouped, bb, w.len());
        // SAFETY: `has_q8k_rows` said the CPU has AVX2 (and AVX-512 where `isa` is that
        // level); the shapes were checked above.
        unsafe {
            if isa == Isa::Avx512 {
                match dtype {
                    DType::Q4_K => small_avx512::q45_k_rows_n::<false>(w, strides, a, out),
                    DType::Q5_K => small_avx512::q45_k_rows_n::<true>(w, strides, a, out),
                    _ => small_avx512::q6_k_rows_n(w, strides, a, out),
                }
                return;
            }
            match dtype {
                DType::Q4_K => small_avx2::q45_k_rows_n::<false>(w, strides, a, out),
                DType::Q5_K => small_avx2::q45_k_rows_n::<true>(w, strides, a, out),
                _ => small_avx2::q6_k_rows_n(w, strides, a, out),
            }
        }
        return;
    }
    for (o, a) in out.iter_mut().zip(a) {
        *o = if grouped {
            dot_q8k_group4(isa, dtype, w, a)
        } else {
            dot_q8k_rows::<4>(isa, dtype, w, a)
        };
    }
}
