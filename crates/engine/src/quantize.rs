//! `kiln quantize IN OUT TYPE`: any model kiln reads (GGUF of any type, a Hugging Face
//! directory, a Meta checkpoint) written as a GGUF file of a quantised type, choosing each
//! tensor's type as llama.cpp's `llama-quantize` does for the same file type.
//!
//! Per-tensor choices (llama.cpp's rules, for the architectures kiln runs):
//! * only matrices are quantised: tensors of two or more dimensions whose name ends in
//!   `weight`, except norms (`*_norm.weight`) and MoE routers (`ffn_gate_inp.weight`); the
//!   others keep their values (as F32, as llama.cpp's converter stores vectors);
//! * the output matrix (`output.weight`, or `token_embd.weight` when the embeddings are tied):
//!   Q8_0 when its rows are not whole blocks of the mix's type, else Q6_K unless the mix is
//!   Q8_0;
//! * `Q4_K_M` / `Q5_K_M`: `attn_v` and `ffn_down` get Q6_K in the layers `use_more_bits`
//!   picks (the first and last eighth, and every third layer between); `Q4_K_S`: `attn_v` of
//!   the first 4 layers and `ffn_down` of the first eighth get Q5_K; `IQ4_NL` / `IQ4_XS`:
//!   `ffn_down` of the first eighth, and `attn_v` when 4 or more query heads share a kv head,
//!   get Q5_K;
//! * a tensor whose rows are not whole blocks falls back: Q4_K → Q5_0, Q5_K → Q5_1,
//!   Q6_K → Q8_0, IQ4_XS → IQ4_NL, and F16 when even that does not fit (llama.cpp refuses rows that are not
//!   whole blocks of a 32-element type; kiln writes those in F16 too, with the same warning).
//!
//! Tensors are quantised one at a time (rows split over threads) and streamed into the file,
//! which is written under a temporary name and renamed at the end: a failure or a
//! cancellation leaves nothing at the output path.

use std::path::Path;

use kiln_formats::{gguf, FormatError, MetaValue, Tensor};
use kiln_kernels::quant;
use kiln_kernels::DType;

use crate::EngineError;

/// A file type `kiln quantize` writes (llama.cpp's `llama_ftype`, same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
}

impl FileType {
    pub const ALL: [FileType; 15] = [
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q8_0,
        FileType::Q4_K_S,
        FileType::Q4_K_M,
        FileType::Q5_K_S,
        FileType::Q5_K_M,
        FileType::Q6_K,
        FileType::IQ4_NL,
        FileType::IQ4_XS,
        FileType::F16,
        FileType::BF16,
        FileType::F32,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "F32",
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q4_0 => "Q4_0",
            FileType::Q4_1 => "Q4_1",
            FileType::Q5_0 => "Q5_0",
            FileType::Q5_1 => "Q5_1",
            FileType::Q8_0 => "Q8_0",
            FileType::Q4_K_S => "Q4_K_S",
            FileType::Q4_K_M => "Q4_K_M",
            FileType::Q5_K_S => "Q5_K_S",
            FileType::Q5_K_M => "Q5_K_M",
            FileType::Q6_K => "Q6_K",
            FileType::IQ4_NL => "IQ4_NL",
            FileType::IQ4_XS => "IQ4_XS",
        }
    }

    /// Parses a name as `llama-quantize` spells it (case-insensitive).
    pub fn parse(s: &str) -> Option<FileType> {
        FileType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// The `general.file_type` number (`llama_ftype`).
    pub fn ftype(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q4_K_S => 14,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_S => 16,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
            FileType::IQ4_NL => 25,
            FileType::IQ4_XS => 30,
            FileType::BF16 => 32,
        }
    }

    /// The type of the tensors no rule picks for.
    pub fn default_type(self) -> DType {
        match self {
            FileType::F32 => DType::F32,
            FileType::F16 => DType::F16,
            FileType::BF16 => DType::BF16,
            FileType::Q4_0 => DType::Q4_0,
            FileType::Q4_1 => DType::Q4_1,
            FileType::Q5_0 => DType::Q5_0,
            FileType::Q5_1 => DType::Q5_1,
            FileType::Q8_0 => DType::Q8_0,
            FileType::Q4_K_S | FileType::Q4_K_M => DType::Q4_K,
            FileType::Q5_K_S | FileType::Q5_K_M => DType::Q5_K,
            FileType::Q6_K => DType::Q6_K,
            FileType::IQ4_NL => DType::IQ4_NL,
            FileType::IQ4_XS => DType::IQ4_XS,
        }
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the model looks like to the type rules.
#[derive(Clone, Copy, Debug)]
pub struct ModelShape {
    pub n_layers: usize,
    /// Whether the file has its own `output.weight` (else the embeddings are tied).
    pub has_output: bool,
    /// Query heads per key/value head (llama.cpp's `n_gqa`).
    pub n_gqa: usize,
}

/// Whether llama.cpp quantises a tensor of this name and shape at all.
pub fn is_quantizable(name: &str, shape: &[usize]) -> bool {
    shape.len() >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third
/// layer between them.
fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8).rem_euclid(3) == 2
}

/// `blk.N.` → N.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The type `ftype` gives the tensor `name` of `shape` (outermost first; the rows are the last
/// dimension), or `None` to keep its values in their own type (vectors, norms, routers).
pub fn tensor_type(
    ftype: FileType,
    name: &str,
    shape: &[usize],
    model: ModelShape,
) -> Result<Option<DType>, EngineError> {
    if !is_quantizable(name, shape) {
        return Ok(None);
    }
    let default = ftype.default_type();
    if !default.is_quantized() {
        return Ok(Some(default));
    }
    let cols = shape.last().copied().unwrap_or(1);
    let mut t = default;
    let is_output = name == "output.weight" || (!model.has_output && name == "token_embd.weight");
    let n = model.n_layers;
    if is_output {
        if cols % default.block_size() != 0 {
            t = DType::Q8_0;
        } else if t != DType::Q8_0 {
            t = DType::Q6_K;
        }
    } else if name.contains("attn_v.weight") || name.contains("attn_qkv.weight") {
        let i = layer_of(name).unwrap_or(0);
        if name.contains("attn_qkv.weight") {
            match ftype {
                FileType::Q4_K_M => t = DType::Q5_K,
                FileType::Q5_K_M => t = DType::Q6_K,
                _ => {}
            }
        } else {
            match ftype {
                FileType::Q4_K_M | FileType::Q5_K_M if use_more_bits(i, n) => t = DType::Q6_K,
                FileType::Q4_K_S if i < 4 => t = DType::Q5_K,
                FileType::IQ4_NL | FileType::IQ4_XS if model.n_gqa >= 4 => t = DType::Q5_K,
                _ => {}
            }
        }
    } else if name.contains("ffn_down") {
        let i = layer_of(name).unwrap_or(0);
        match ftype {
            FileType::Q4_K_M | FileType::Q5_K_M if use_more_bits(i, n) => t = DType::Q6_K,
            FileType::Q4_K_S if i < n / 8 => t = DType::Q5_K,
            FileType::IQ4_NL | FileType::IQ4_XS if i < n / 8 => t = DType::Q5_K,
            _ => {}
        }
    }
    // Rows that are not whole blocks of the chosen type.
    if cols % t.block_size() != 0 {
        let fallback = match t {
            DType::Q4_K => DType::Q5_0,
            DType::Q5_K => DType::Q5_1,
            DType::Q6_K => DType::Q8_0,
            DType::IQ4_XS => DType::IQ4_NL,
            // (llama.cpp refuses these; kiln keeps the tensor in F16 instead)
            _ => DType::F16,
        };
        t = if cols % fallback.block_size() == 0 {
            fallback
        } else {
            DType::F16
        };
    }
    Ok(Some(t))
}

/// One tensor of the plan: its name, its source type and the type it is written in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub from: DType,
    pub to: DType,
}

/// What [`quantize`] did.
#[derive(Clone, Debug)]
pub struct Report {
    pub tensors: Vec<PlannedTensor>,
    /// Tensors that were already quantised and were dequantised to be quantised again.
    pub requantized: usize,
    pub bytes_in: usize,
    pub bytes_out: usize,
}

/// Orders tensors as llama.cpp's loader does: the ones outside the blocks first, then block by
/// block (by number, not by text), each by name.
fn file_order(names: &mut [String]) {
    names.sort_by(|a, b| {
        let la = layer_of(a).map_or(-1, |v| v as i64);
        let lb = layer_of(b).map_or(-1, |v| v as i64);
        la.cmp(&lb).then_with(|| a.cmp(b))
    });
}

/// Quantises the model at `src` into the GGUF file `out` as `ftype`. `cancelled` is checked
/// between tensors; `progress(done, total, name)` is called before each tensor.
pub fn quantize(
    src: &Path,
    out: &Path,
    ftype: FileType,
    threads: usize,
    cancelled: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Report, EngineError> {
    let model = kiln_formats::load_with(
        src,
        &kiln_formats::LoadOptions {
            residency: Some(kiln_formats::resident::Residency::Mapped),
            interleave: false,
        },
    )?;
    let is_gguf = model.format.starts_with("GGUF");
    // A GGUF file keeps its own metadata and tensors (already in GGUF's names and layout);
    // other formats are converted as `kiln convert` does.
    let (mut meta, tensors): crate::convert::GgufParts = if is_gguf {
        let meta = model
            .metadata
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("split.")
                    && !matches!(
                        k.as_str(),
                        "general.file_type" | "general.quantization_version" | "general.alignment"
                    )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (meta, model.tensors.clone())
    } else {
        crate::convert::gguf_parts(&model, src)?
    };
    meta.push(("general.quantization_version".into(), MetaValue::U32(2)));
    meta.push(("general.file_type".into(), MetaValue::U32(ftype.ftype())));
    let shape = ModelShape {
        n_layers: model.config.n_layers,
        has_output: tensors.contains_key("output.weight"),
        n_gqa: model.config.n_heads / model.config.n_kv_heads.max(1),
    };
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    file_order(&mut names);
    let mut plan = Vec::with_capacity(names.len());
    for name in &names {
        let t = &tensors[name];
        let to = match tensor_type(ftype, name, &t.shape, shape)? {
            Some(to) => to,
            // Kept values: vectors as F32 (llama.cpp's converter stores them so).
            None if matches!(t.dtype, DType::F16 | DType::BF16) && t.shape.len() < 2 => DType::F32,
            None => t.dtype,
        };
        if !quant::can_quantize(to) && to != t.dtype {
            return Err(EngineError::Invalid(format!(
                "{name}: kiln cannot write {to} tensors"
            )));
        }
        plan.push(PlannedTensor {
            name: name.clone(),
            shape: t.shape.clone(),
            from: t.dtype,
            to,
        });
    }
    let requantized = plan
        .iter()
        .filter(|p| p.from.is_quantized() && p.from != p.to)
        .count();
    let specs: Vec<gguf::TensorSpec> = plan
        .iter()
        .map(|p| gguf::TensorSpec {
            name: p.name.clone(),
            dtype: p.to,
            shape: p.shape.clone(),
        })
        .collect();
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let total = plan.len();
    let mut bytes_out = 0usize;
    gguf::write_streamed(
        out,
        meta.iter().map(|(k, v)| (k.as_str(), v)),
        &specs,
        &mut |i| {
            if cancelled() {
                return Err(FormatError::Invalid("cancelled".into()));
            }
            let p = &plan[i];
            progress(i, total, &p.name);
            let t = &tensors[&p.name];
            let data = if p.to == p.from {
                t.plain_bytes().into_owned()
            } else {
                convert_tensor(t, p.to, threads)
            };
            bytes_out += data.len();
            Ok(data)
        },
    )?;
    progress(total, total, "");
    Ok(Report {
        bytes_in: tensors.values().map(|t| t.data.len()).sum(),
        tensors: plan,
        requantized,
        bytes_out,
    })
}

/// `t`'s values in type `to`, rows split over `threads` threads.
fn convert_tensor(t: &Tensor, to: DType, threads: usize) -> Vec<u8> {
    let (rows, cols) = (t.rows(), t.cols());
    let row_out = to.bytes_for(cols).expect("planned types fit the rows");
    let mut out = vec![0u8; rows * row_out];
    let per = rows.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        for (c, chunk) in out.chunks_mut(per * row_out).enumerate() {
            s.spawn(move || {
                let mut buf = vec![0.0f32; cols];
                for (k, o) in chunk.chunks_exact_mut(row_out).enumerate() {
                    t.dequantize_row(c * per + k, &mut buf);
                    quant::quantize(to, &buf, o);
                }
            });
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's layer choice for 24 layers (qwen2.5-0.5b): layers 0-2, 21-23, and
    /// 5, 8, 11, 14, 17, 20.
    #[test]
    fn more_bits_layers() {
        let got: Vec<usize> = (0..24).filter(|&i| use_more_bits(i, 24)).collect();
        assert_eq!(got, [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]);
    }

    /// llama-quantize's IQ4_NL / IQ4_XS choices on gemma3-270m (18 layers, 4 query heads per
    /// kv head, rows of 640 and 1024 in the blocks, 2048 in ffn_down; tied embeddings): what
    /// its IQ4_XS file holds (IQ4_NL 72 tensors, IQ4_XS 34, Q5_1 18, Q5_K 2, Q8_0 1).
    #[test]
    fn iq4_choices() {
        let m = ModelShape {
            n_layers: 18,
            has_output: false,
            n_gqa: 4,
        };
        for (ftype, wide) in [
            (FileType::IQ4_XS, DType::IQ4_XS),
            (FileType::IQ4_NL, DType::IQ4_NL),
        ] {
            let ty = |name: &str, shape: &[usize]| tensor_type(ftype, name, shape, m).unwrap();
            assert_eq!(ty("token_embd.weight", &[262144, 640]), Some(DType::Q8_0));
            // rows of 640 are not whole 256-blocks: IQ4_XS falls back to IQ4_NL
            assert_eq!(ty("blk.5.attn_q.weight", &[1024, 640]), Some(DType::IQ4_NL));
            assert_eq!(ty("blk.5.ffn_up.weight", &[2048, 640]), Some(DType::IQ4_NL));
            assert_eq!(ty("blk.5.attn_output.weight", &[640, 1024]), Some(wide));
            assert_eq!(ty("blk.5.ffn_down.weight", &[640, 2048]), Some(wide));
            // the first eighth's ffn_down and (n_gqa >= 4) every attn_v get Q5_K (640: Q5_1)
            assert_eq!(ty("blk.1.ffn_down.weight", &[640, 2048]), Some(DType::Q5_K));
            assert_eq!(ty("blk.2.ffn_down.weight", &[640, 2048]), Some(wide));
            assert_eq!(ty("blk.9.attn_v.weight", &[256, 640]), Some(DType::Q5_1));
            let mha = ModelShape { n_gqa: 1, ..m };
            let v = tensor_type(ftype, "blk.9.attn_v.weight", &[256, 640], mha).unwrap();
            assert_eq!(v, Some(DType::IQ4_NL));
        }
    }

    #[test]
    fn q4_k_m_choices() {
        let m = ModelShape {
            n_layers: 24,
            has_output: false,
            n_gqa: 7,
        };
        let ty =
            |name: &str, shape: &[usize]| tensor_type(FileType::Q4_K_M, name, shape, m).unwrap();
        // tied embeddings with 896-wide rows: the output rule gives Q8_0
        assert_eq!(ty("token_embd.weight", &[151936, 896]), Some(DType::Q8_0));
        // rows of 896 are not whole 256-blocks: Q4_K falls back to Q5_0, Q6_K to Q8_0
        assert_eq!(ty("blk.3.attn_q.weight", &[896, 896]), Some(DType::Q5_0));
        assert_eq!(ty("blk.0.attn_v.weight", &[128, 896]), Some(DType::Q8_0));
        assert_eq!(ty("blk.3.attn_v.weight", &[128, 896]), Some(DType::Q5_0));
        // ffn_down rows of 4864 = 19·256 keep the k-quants
        assert_eq!(ty("blk.0.ffn_down.weight", &[896, 4864]), Some(DType::Q6_K));
        assert_eq!(ty("blk.3.ffn_down.weight", &[896, 4864]), Some(DType::Q4_K));
        assert_eq!(ty("blk.3.attn_norm.weight", &[896]), None);
        assert_eq!(ty("blk.3.attn_q.bias", &[896]), None);
        let untied = ModelShape {
            n_layers: 32,
            has_output: true,
            n_gqa: 4,
        };
        let ty = |name: &str| tensor_type(FileType::Q4_K_M, name, &[4096, 4096], untied).unwrap();
        assert_eq!(ty("output.weight"), Some(DType::Q6_K));
        assert_eq!(ty("token_embd.weight"), Some(DType::Q4_K));
        assert_eq!(ty("blk.4.attn_v.weight"), Some(DType::Q4_K));
        assert_eq!(ty("blk.6.attn_v.weight"), Some(DType::Q6_K));
        assert_eq!(
            tensor_type(FileType::Q8_0, "output.weight", &[4096, 4096], untied).unwrap(),
            Some(DType::Q8_0)
        );
        assert_eq!(
            tensor_type(FileType::Q4_0, "output.weight", &[4096, 4096], untied).unwrap(),
            Some(DType::Q6_K)
        );
        // a row of 40 values fits no block type: F16
        assert_eq!(
            tensor_type(FileType::Q6_K, "blk.0.attn_q.weight", &[8, 40], untied).unwrap(),
            Some(DType::F16)
        );
        assert_eq!(
            tensor_type(FileType::Q4_0, "blk.0.attn_q.weight", &[8, 40], untied).unwrap(),
            Some(DType::F16)
        );
    }

    #[test]
    fn file_order_is_by_layer_number() {
        let mut names: Vec<String> = ["blk.10.a", "blk.2.b", "output.weight", "blk.2.a"]
            .map(String::from)
            .to_vec();
        file_order(&mut names);
        assert_eq!(names, ["output.weight", "blk.2.a", "blk.2.b", "blk.10.a"]);
    }
}
