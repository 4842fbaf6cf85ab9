//! GGUF v2/v3: a memory-mapped reader that checks every count, length and offset against the
//! file before using it, the mapping of GGUF metadata to [`ModelConfig`], and a writer.
//!
//! Layout (little-endian): magic `GGUF`, `u32` version, `u64` tensor count, `u64` metadata
//! count, the metadata key/value pairs, the tensor infos (name, `u32` n_dims, `u64` dims
//! innermost first, `u32` ggml type, `u64` offset), padding to `general.alignment` (default 32),
//! then the tensor data; each tensor's offset is relative to the start of the data section.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use kiln_kernels::ops::RopeStyle;
use kiln_kernels::{interleave, DType, Layout, Storage, Tensor};

use crate::resident::{read_file_resident, Residency};
use crate::{
    config::{bounded, checked_head_dim, MAX_DIM, MAX_LAYERS, MAX_VOCAB},
    eog_token_ids, io_err, Arch, FormatError, LoadedModel, MetaValue, ModelConfig, MoeConfig,
    Result, RopeScaling, TokenizerSource,
};

pub const MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays accepted (real files use 1; the limit keeps recursion bounded).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most metadata array elements accepted in one file, all arrays together. Real vocabularies hold
/// a few hundred thousand tokens (three arrays of them); the cap bounds memory for hostile files.
pub const MAX_METADATA_ELEMENTS: u64 = 1 << 24;

/// Metadata value type numbers (`gguf_type`).
mod vt {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// The name ggml gives a type number, for error messages about types kiln does not read.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_2 (removed from ggml)",
        5 => "Q4_3 (removed from ggml)",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        31..=33 => "Q4_0_N_M (removed from ggml)",
        34 => "TQ1_0",
        35 => "TQ2_0",
        36..=38 => "IQ4_NL_N_M (removed from ggml)",
        39 => "MXFP4",
        _ => return None,
    })
}

/// One tensor as described in the file's header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    /// Outermost dimension first (the reverse of the file's order).
    pub shape: Vec<usize>,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    pub n_bytes: usize,
    /// The rows' order in memory: the file's ([`Layout::Plain`]) unless
    /// [`GgufFile::interleave`] rearranged them.
    pub layout: Layout,
}

/// A parsed GGUF file: its metadata and tensor infos, all checked against the file.
pub struct GgufFile {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
    /// Absolute offset of the data section.
    pub data_offset: usize,
    data: Storage,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// True when `bytes` starts with the GGUF magic.
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && bytes[..4] == MAGIC
}

fn invalid(msg: impl Into<String>) -> FormatError {
    FormatError::Invalid(msg.into())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    elements: u64,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(invalid(format!(
                "truncated: {} needs {n} bytes at offset {}, but the file ends at {}",
                what(),
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.remaining() as u64 {
            return Err(invalid(format!(
                "{}: string length {len} at offset {} runs past the end of the file ({} bytes left)",
                what(),
                self.pos - 8,
                self.remaining()
            )));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| invalid(format!("{}: string is not valid UTF-8", what())))
    }

    fn value(&mut self, ty: u32, depth: usize, key: &str) -> Result<MetaValue> {
        let what = || format!("value of metadata key {key:?}");
        Ok(match ty {
            vt::U8 => MetaValue::U8(self.array::<1>(&what)?[0]),
            vt::I8 => MetaValue::I8(self.array::<1>(&what)?[0] as i8),
            vt::U16 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            vt::I16 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            vt::U32 => MetaValue::U32(u32::from_le_bytes(self.array(&what)?)),
            vt::I32 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            vt::F32 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            vt::U64 => MetaValue::U64(u64::from_le_bytes(self.array(&what)?)),
            vt::I64 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            vt::F64 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            vt::BOOL => match self.array::<1>(&what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(invalid(format!(
                        "metadata key {key:?}: bool value {b} is neither 0 nor 1"
                    )))
                }
            },
            vt::STRING => MetaValue::String(self.string(&what)?),
            vt::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(invalid(format!(
                        "metadata key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let et = self.u32(&|| format!("element type of metadata key {key:?}"))?;
                let n = self.u64(&|| format!("length of metadata array {key:?}"))?;
                let min = min_value_size(et).ok_or_else(|| {
                    invalid(format!(
                        "metadata key {key:?}: unknown array element type {et} at offset {}",
                        self.pos - 12
                    ))
                })?;
                if n > (self.remaining() / min) as u64 {
                    return Err(invalid(format!(
                        "metadata array {key:?} claims {n} elements, more than the {} bytes left in the file can hold",
                        self.remaining()
                    )));
                }
                self.elements += n;
                if self.elements > MAX_METADATA_ELEMENTS {
                    return Err(FormatError::Unsupported(format!(
                        "metadata arrays hold more than {MAX_METADATA_ELEMENTS} elements in all"
                    )));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et, depth + 1, key)?);
                }
                MetaValue::Array(v)
            }
            other => {
                return Err(invalid(format!(
                    "metadata key {key:?}: unknown value type {other} at offset {}",
                    self.pos - 4
                )))
            }
        })
    }
}

/// The fewest bytes one value of metadata type `ty` takes, or `None` for an unknown type.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        vt::U8 | vt::I8 | vt::BOOL => 1,
        vt::U16 | vt::I16 => 2,
        vt::U32 | vt::I32 | vt::F32 => 4,
        vt::U64 | vt::I64 | vt::F64 | vt::STRING => 8,
        vt::ARRAY => 12,
        _ => return None,
    })
}

fn align_up(x: usize, a: usize) -> Option<usize> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

impl GgufFile {
    /// Memory-maps and parses `path` (for reading metadata: nothing is read until touched).
    /// Errors name the path.
    pub fn open(path: &Path) -> Result<GgufFile> {
        GgufFile::open_in(path, Residency::Mapped)
    }

    /// Parses `path` with its bytes held as `residency` says (see [`crate::resident`]).
    pub fn open_in(path: &Path, residency: Residency) -> Result<GgufFile> {
        let storage = match residency {
            Residency::Mapped => map_file(path)?,
            Residency::Resident => read_file_resident(path)?,
        };
        GgufFile::parse(storage).map_err(|e| crate::with_path(e, path))
    }

    /// Parses a whole GGUF file held in `data`.
    pub fn parse(data: Storage) -> Result<GgufFile> {
        let buf = data.bytes();
        let mut r = Reader {
            buf,
            pos: 0,
            elements: 0,
        };
        let magic = r.array::<4>(&|| "magic".into())?;
        if magic != MAGIC {
            return Err(invalid(format!(
                "not a GGUF file (magic {:02x?}, expected \"GGUF\")",
                magic
            )));
        }
        let version = r.u32(&|| "version".into())?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(FormatError::Unsupported(
                    "GGUF version 1 (only v2 and v3 are read)".into(),
                ))
            }
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(FormatError::Unsupported("big-endian GGUF file".into()))
            }
            v => return Err(invalid(format!("unknown GGUF version {v}"))),
        }
        let n_tensors = r.u64(&|| "tensor count".into())?;
        let n_kv = r.u64(&|| "metadata count".into())?;
        // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
        if n_kv > (r.remaining() / 13) as u64 {
            return Err(invalid(format!(
                "header claims {n_kv} metadata entries, more than the {} bytes left in the file can hold",
                r.remaining()
            )));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut seen = std::collections::HashSet::new();
        for i in 0..n_kv {
            let key = r.string(&|| format!("key of metadata entry {i}"))?;
            let ty = r.u32(&|| format!("type of metadata key {key:?}"))?;
            let value = r.value(ty, 0, &key)?;
            if !seen.insert(key.clone()) {
                return Err(invalid(format!("duplicate metadata key {key:?}")));
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, MetaValue::U32(a))) if *a != 0 && a.is_power_of_two() => *a as usize,
            Some((_, v)) => {
                return Err(invalid(format!(
                    "general.alignment must be a u32 power of two, found {v:?}"
                )))
            }
        };
        // A tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
        if n_tensors > (r.remaining() / 24) as u64 {
            return Err(invalid(format!(
                "header claims {n_tensors} tensors, more than the {} bytes left in the file can hold",
                r.remaining()
            )));
        }
        let mut infos = Vec::with_capacity(n_tensors as usize);
        let mut names = std::collections::HashSet::new();
        for i in 0..n_tensors {
            let name = r.string(&|| format!("name of tensor {i}"))?;
            let info = read_tensor_info(&mut r, name)?;
            if !names.insert(info.name.clone()) {
                return Err(invalid(format!("duplicate tensor name {:?}", info.name)));
            }
            infos.push(info);
        }
        let data_offset =
            align_up(r.pos, alignment).ok_or_else(|| invalid("data offset overflows"))?;
        for t in &infos {
            if t.offset % alignment as u64 != 0 {
                return Err(invalid(format!(
                    "tensor {:?}: offset {} is not a multiple of the alignment {alignment}",
                    t.name, t.offset
                )));
            }
            let end = (data_offset as u64)
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes as u64));
            match end {
                Some(end) if end <= buf.len() as u64 => {}
                _ => {
                    return Err(invalid(format!(
                        "tensor {:?}: data ({} bytes at offset {} + {}) runs past the end of the file ({} bytes)",
                        t.name,
                        t.n_bytes,
                        data_offset,
                        t.offset,
                        buf.len()
                    )))
                }
            }
        }
        Ok(GgufFile {
            version,
            metadata,
            tensors: infos,
            alignment,
            data_offset,
            data,
        })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The metadata as a sorted map.
    pub fn metadata_map(&self) -> BTreeMap<String, MetaValue> {
        self.metadata.iter().cloned().collect()
    }

    /// `general.architecture`, when present and a string.
    pub fn architecture(&self) -> Option<&str> {
        match self.get("general.architecture") {
            Some(MetaValue::String(s)) => Some(s),
            _ => None,
        }
    }

    pub fn file_size(&self) -> usize {
        self.data.len()
    }

    /// A zero-copy view of one tensor's data.
    pub fn tensor(&self, info: &TensorInfo) -> Result<Tensor> {
        let start = self.data_offset + info.offset as usize;
        let bytes = self
            .data
            .slice(start, info.n_bytes)
            .ok_or_else(|| invalid(format!("tensor {:?} lies outside the file", info.name)))?;
        Tensor::with_layout(info.dtype, info.shape.clone(), bytes, info.layout)
            .map_err(|e| invalid(format!("tensor {:?}: {e}", info.name)))
    }

    /// Rewrites in place the tensors this CPU's kernels want in another row layout
    /// ([`interleave::preferred`]). Only possible while the bytes are writable and no tensor
    /// view has been taken (a resident file just read); a mapped file keeps the file's layout.
    /// Tensors whose bytes overlap another's are left alone. Returns how many were rearranged.
    pub fn interleave(&mut self) -> usize {
        let data_offset = self.data_offset;
        let Some(bytes) = self.data.bytes_mut() else {
            return 0;
        };
        let range = |t: &TensorInfo| {
            let start = data_offset + t.offset as usize;
            start..start + t.n_bytes
        };
        let mut order: Vec<usize> = (0..self.tensors.len()).collect();
        order.sort_by_key(|&i| range(&self.tensors[i]).start);
        let mut done = 0;
        let mut end_before = 0; // the furthest end of the tensors that start earlier
        for (k, &i) in order.iter().enumerate() {
            let r = range(&self.tensors[i]);
            let next_start = order
                .get(k + 1)
                .map_or(usize::MAX, |&j| range(&self.tensors[j]).start);
            let alone = end_before <= r.start && r.end <= next_start;
            end_before = end_before.max(r.end);
            let t = &self.tensors[i];
            let layout = interleave::preferred(t.dtype, &t.shape);
            if layout == Layout::Plain || !alone || r.end > bytes.len() {
                continue;
            }
            interleave::rearrange(layout, t.dtype, t.shape[1], &mut bytes[r]);
            self.tensors[i].layout = layout;
            done += 1;
        }
        done
    }

    /// Every tensor, by name, as zero-copy views.
    pub fn tensor_map(&self) -> Result<BTreeMap<String, Tensor>> {
        self.tensors
            .iter()
            .map(|t| Ok((t.name.clone(), self.tensor(t)?)))
            .collect()
    }
}

fn read_tensor_info(r: &mut Reader<'_>, name: String) -> Result<TensorInfo> {
    let n_dims = r.u32(&|| format!("n_dims of tensor {name:?}"))?;
    if n_dims as usize > MAX_DIMS {
        return Err(invalid(format!(
            "tensor {name:?} has {n_dims} dimensions (at most {MAX_DIMS})"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        let d = r.u64(&|| format!("dimensions of tensor {name:?}"))?;
        if d > i64::MAX as u64 || d > usize::MAX as u64 {
            return Err(invalid(format!(
                "tensor {name:?} has an absurd dimension {d}"
            )));
        }
        dims.push(d as usize);
    }
    let ty = r.u32(&|| format!("type of tensor {name:?}"))?;
    let offset = r.u64(&|| format!("offset of tensor {name:?}"))?;
    let dtype = DType::from_ggml_id(ty).ok_or_else(|| match ggml_type_name(ty) {
        Some(n) => FormatError::Unsupported(format!(
            "tensor {name:?} has ggml type {ty} ({n}), which kiln does not read"
        )),
        None => invalid(format!("tensor {name:?} has unknown ggml type {ty}")),
    })?;
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= i64::MAX as usize)
        .ok_or_else(|| {
            invalid(format!(
                "tensor {name:?}: element count of {dims:?} overflows"
            ))
        })?;
    let row = dims.first().copied().unwrap_or(1);
    if row % dtype.block_size() != 0 {
        return Err(invalid(format!(
            "tensor {name:?}: row length {row} is not a multiple of the {dtype} block size {}",
            dtype.block_size()
        )));
    }
    let n_bytes = dtype
        .bytes_for(n)
        .ok_or_else(|| invalid(format!("tensor {name:?}: byte size of {dims:?} overflows")))?;
    dims.reverse();
    Ok(TensorInfo {
        name,
        dtype,
        shape: dims,
        offset,
        n_bytes,
        layout: Layout::Plain,
    })
}

pub(crate) use crate::resident::map_file;

fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path).map_err(|e| io_err(path, e))?.len())
}

// ---------------------------------------------------------------------------------------------
// Metadata → ModelConfig

/// Typed lookups into GGUF metadata with messages that name the key.
pub(crate) struct Meta<'a> {
    pub file: &'a GgufFile,
    pub arch: &'a str,
}

impl Meta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn opt_uint(&self, full: &str) -> Result<Option<u64>> {
        match self.file.get(full) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                invalid(format!(
                    "metadata {full}: expected an unsigned integer, found {v:?}"
                ))
            }),
        }
    }

    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        let full = self.key(k);
        match self.opt_uint(&full)? {
            None => Ok(None),
            Some(v) if v <= u32::MAX as u64 => Ok(Some(v as usize)),
            Some(v) => Err(invalid(format!(
                "metadata {full}: value {v} is absurdly large"
            ))),
        }
    }

    fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?
            .ok_or_else(|| invalid(format!("missing metadata key {}", self.key(k))))
    }

    fn opt_f32(&self, k: &str) -> Result<Option<f32>> {
        let full = self.key(k);
        match self.file.get(&full) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| invalid(format!("metadata {full}: expected a number, found {v:?}"))),
        }
    }

    fn opt_str(&self, full: &str) -> Option<&str> {
        match self.file.get(full) {
            Some(MetaValue::String(s)) => Some(s),
            _ => None,
        }
    }
}

/// `split.count` of a file, when it is one part of several.
fn split_count(file: &GgufFile) -> Option<u64> {
    file.get("split.count")
        .and_then(MetaValue::as_u64)
        .filter(|&n| n > 1)
}

/// The file names of all parts of a split GGUF whose first part is `first`
/// (`NAME-00001-of-0000N.gguf`, llama.cpp's gguf-split naming).
pub fn split_paths(first: &Path, count: u64) -> Result<Vec<std::path::PathBuf>> {
    let name = first.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let suffix = format!("-00001-of-{count:05}.gguf");
    let prefix = name.strip_suffix(&suffix).ok_or_else(|| {
        invalid(format!(
            "split GGUF with {count} parts, but the file name does not end in {suffix}"
        ))
    })?;
    Ok((1..=count)
        .map(|i| first.with_file_name(format!("{prefix}-{i:05}-of-{count:05}.gguf")))
        .collect())
}

/// Reads a GGUF model from `path`, including every part of a split file (give the first part).
/// The weights are read into memory when they fit, else mapped ([`Residency::for_len`]).
pub fn load_path(path: &Path) -> Result<LoadedModel> {
    load_path_with(path, &crate::LoadOptions::default())
}

/// [`load_path`] with the residency and layout `opts` ask for.
pub fn load_path_with(path: &Path, opts: &crate::LoadOptions) -> Result<LoadedModel> {
    let residency = |len: u64| opts.residency.unwrap_or_else(|| Residency::for_len(len));
    let mut file = GgufFile::open_in(path, residency(file_len(path)?))?;
    if opts.interleave {
        file.interleave();
    }
    let Some(count) = split_count(&file) else {
        return load_file(file).map_err(|e| crate::with_path(e, path));
    };
    let no = file.get("split.no").and_then(MetaValue::as_u64);
    if no != Some(0) {
        return Err(invalid(format!(
            "{}: split part {no:?} of {count}; give the first part (split.no = 0)",
            path.display()
        )));
    }
    let paths = split_paths(path, count).map_err(|e| crate::with_path(e, path))?;
    for p in &paths {
        if !p.is_file() {
            return Err(invalid(format!(
                "{}: missing split part {}",
                path.display(),
                p.display()
            )));
        }
    }
    let mut total = 0u64;
    for p in &paths {
        total = total.saturating_add(file_len(p)?);
    }
    // The other parts are read in only if all of them fit (the first part already was if it
    // fits on its own).
    let residency = residency(total);
    let mut tensors = file.tensor_map()?;
    for (i, p) in paths.iter().enumerate().skip(1) {
        let mut part = GgufFile::open_in(p, residency)?;
        if opts.interleave {
            part.interleave();
        }
        let ok = part.get("split.no").and_then(MetaValue::as_u64) == Some(i as u64)
            && split_count(&part) == Some(count);
        if !ok {
            return Err(invalid(format!(
                "{}: split.no / split.count do not say part {} of {count}",
                p.display(),
                i + 1
            )));
        }
        for (name, t) in part.tensor_map()? {
            if tensors.insert(name.clone(), t).is_some() {
                return Err(invalid(format!(
                    "{}: tensor {name} also in an earlier part",
                    p.display()
                )));
            }
        }
    }
    if let Some(n) = file.get("split.tensors.count").and_then(MetaValue::as_u64) {
        if n != tensors.len() as u64 {
            return Err(invalid(format!(
                "{}: split.tensors.count is {n}, the parts hold {}",
                path.display(),
                tensors.len()
            )));
        }
    }
    assemble(file, tensors).map_err(|e| crate::with_path(e, path))
}

/// Reads a model from one parsed GGUF file (not a part of a split file: see [`load_path`]).
pub fn load_file(file: GgufFile) -> Result<LoadedModel> {
    if let Some(n) = split_count(&file) {
        return Err(FormatError::Unsupported(format!(
            "split GGUF (split.count = {n}) read without its other parts (use gguf::load_path)"
        )));
    }
    let tensors = file.tensor_map()?;
    assemble(file, tensors)
}

fn assemble(file: GgufFile, tensors: BTreeMap<String, Tensor>) -> Result<LoadedModel> {
    let config = config_from_gguf(&file, &tensors)?;
    let version = file.version;
    // Moved, not copied: vocabularies are large.
    let metadata: BTreeMap<String, MetaValue> = file.metadata.into_iter().collect();
    let tok: BTreeMap<String, MetaValue> = metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let chat_template = match metadata.get("tokenizer.chat_template") {
        Some(MetaValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(LoadedModel {
        config,
        tensors,
        tokenizer: TokenizerSource::Gguf(tok),
        chat_template,
        metadata,
        format: format!("GGUF v{version}"),
    })
}

/// Builds the [`ModelConfig`] from GGUF metadata (and the tensors, for vocabulary size, tied
/// output and `rope_freqs`).
pub fn config_from_gguf(
    file: &GgufFile,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<ModelConfig> {
    let arch_name = file
        .architecture()
        .ok_or_else(|| invalid("missing metadata key general.architecture"))?;
    let arch = match arch_name {
        "llama" => Arch::Llama,
        "mistral" => Arch::Mistral,
        "qwen2" => Arch::Qwen2,
        "gemma3" => Arch::Gemma3,
        "qwen3" => Arch::Qwen3,
        "qwen3moe" => Arch::Qwen3Moe,
        "gemma2" => Arch::Gemma2,
        "olmo2" => Arch::Olmo2,
        "phi3" => Arch::Phi3,
        other => {
            return Err(FormatError::Unsupported(format!(
                "GGUF architecture {other:?} (kiln reads llama, mistral, qwen2, qwen3, qwen3moe, \
                 gemma2, gemma3, olmo2, phi3)"
            )))
        }
    };
    let m = Meta {
        file,
        arch: arch_name,
    };
    let dim = |k: &str, v: usize| bounded(&format!("{arch_name}.{k}"), v, MAX_DIM);
    let hidden_size = dim("embedding_length", m.usize("embedding_length")?)?;
    let n_layers = bounded(
        &format!("{arch_name}.block_count"),
        m.usize("block_count")?,
        MAX_LAYERS,
    )?;
    let n_heads = dim("attention.head_count", m.usize("attention.head_count")?)?;
    let n_kv_heads = dim(
        "attention.head_count_kv",
        m.opt_usize("attention.head_count_kv")?.unwrap_or(n_heads),
    )?;
    let intermediate_size = dim("feed_forward_length", m.usize("feed_forward_length")?)?;
    let head_dim = checked_head_dim(
        &format!("{arch_name}: "),
        "embedding length",
        hidden_size,
        n_heads,
        n_kv_heads,
        m.opt_usize("attention.key_length")?,
        |d| dim("attention.key_length", d),
    )?;
    if let Some(v) = m.opt_usize("attention.value_length")? {
        if v != head_dim {
            return Err(FormatError::Unsupported(format!(
                "{arch_name}: value length {v} differs from key length {head_dim}"
            )));
        }
    }
    if let Some(r) = m.opt_usize("rope.dimension_count")? {
        if r != head_dim {
            return Err(FormatError::Unsupported(format!(
                "{arch_name}: partial rotary embedding ({r} of {head_dim} dimensions)"
            )));
        }
    }
    let rms_norm_eps = m
        .opt_f32("attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| {
            invalid(format!(
                "missing metadata key {arch_name}.attention.layer_norm_rms_epsilon"
            ))
        })?;
    let rope_theta = m.opt_f32("rope.freq_base")?.unwrap_or(10_000.0);
    let max_position_embeddings = m.opt_usize("context_length")?.unwrap_or(2048);

    let mut rope_scaling = match m.opt_str(&m.key("rope.scaling.type")) {
        None | Some("none") => None,
        Some("yarn") => {
            let factor = m.opt_f32("rope.scaling.factor")?.ok_or_else(|| {
                invalid(format!("{arch_name}: yarn rope scaling without a factor"))
            })?;
            let orig = m
                .opt_usize("rope.scaling.original_context_length")?
                .ok_or_else(|| {
                    invalid(format!(
                        "{arch_name}: yarn rope scaling without rope.scaling.original_context_length"
                    ))
                })?;
            // ggml multiplies cos/sin by 1 + 0.1 ln(factor) (times an optional attn_factor).
            let mscale = if factor > 1.0 {
                1.0 + 0.1 * factor.ln()
            } else {
                1.0
            };
            let attn = m.opt_f32("rope.scaling.attn_factor")?.unwrap_or(1.0);
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast: m.opt_f32("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                beta_slow: m.opt_f32("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                attention_factor: mscale * attn,
                truncate: true,
            })
        }
        Some("linear") => {
            let factor = m.opt_f32("rope.scaling.factor")?.ok_or_else(|| {
                invalid(format!("{arch_name}: linear rope scaling without a factor"))
            })?;
            Some(RopeScaling::Linear { factor })
        }
        Some(other) => {
            return Err(FormatError::Unsupported(format!(
                "rope scaling type {other:?}"
            )))
        }
    };
    if rope_scaling.is_none() {
        if let Some(f) = m.opt_f32("rope.scale_linear")? {
            if f != 1.0 {
                rope_scaling = Some(RopeScaling::Linear { factor: f });
            }
        }
    }
    if let (Some(long), Some(short)) = (
        tensors.get("rope_factors_long.weight"),
        tensors.get("rope_factors_short.weight"),
    ) {
        let read = |t: &Tensor, name: &str| {
            if t.dtype != DType::F32 || t.n_elements() != head_dim / 2 {
                return Err(invalid(format!(
                    "{name} must be F32 with {} values, found {} {:?}",
                    head_dim / 2,
                    t.dtype,
                    t.shape
                )));
            }
            Ok(t.to_f32_vec())
        };
        let orig = m
            .opt_usize("rope.scaling.original_context_length")?
            .ok_or_else(|| {
                invalid(format!(
                    "{arch_name}: rope_factors_long without rope.scaling.original_context_length"
                ))
            })?;
        rope_scaling = Some(RopeScaling::LongRope {
            short_factor: read(short, "rope_factors_short.weight")?,
            long_factor: read(long, "rope_factors_long.weight")?,
            original_max_position_embeddings: orig,
            attention_factor: m.opt_f32("rope.scaling.attn_factor")?.unwrap_or(1.0),
        });
    }
    if let Some(t) = tensors.get("rope_freqs.weight") {
        if t.dtype != DType::F32 || t.n_elements() != head_dim / 2 {
            return Err(invalid(format!(
                "rope_freqs.weight must be F32 with {} values, found {} {:?}",
                head_dim / 2,
                t.dtype,
                t.shape
            )));
        }
        if rope_scaling.is_some() {
            return Err(FormatError::Unsupported(
                "both rope_freqs.weight and a rope scaling type".into(),
            ));
        }
        rope_scaling = Some(RopeScaling::FreqFactors(t.to_f32_vec()));
    }

    let vocab_size = match tensors.get("token_embd.weight") {
        Some(t) if t.shape.len() == 2 => t.shape[0],
        Some(t) => {
            return Err(invalid(format!(
                "token_embd.weight has shape {:?}",
                t.shape
            )))
        }
        None => match file.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(a)) => a.len(),
            _ => return Err(invalid("no token_embd.weight and no tokenizer.ggml.tokens")),
        },
    };
    let vocab_size = bounded("vocabulary size", vocab_size, MAX_VOCAB)?;

    let tok_id = |k: &str| -> Result<Option<u32>> {
        match m.opt_uint(k)? {
            None => Ok(None),
            Some(v) if v < vocab_size as u64 => Ok(Some(v as u32)),
            Some(v) => Err(invalid(format!(
                "metadata {k}: token id {v} is outside the vocabulary of {vocab_size}"
            ))),
        }
    };
    let bos_token_id = tok_id("tokenizer.ggml.bos_token_id")?;
    let mut eos_token_ids = Vec::new();
    for k in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = tok_id(k)? {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }
    if let Some(MetaValue::Array(tokens)) = file.get("tokenizer.ggml.tokens") {
        for id in eog_token_ids(tokens.iter().map(|t| match t {
            MetaValue::String(s) => s.as_str(),
            _ => "",
        })) {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }

    let sliding = m.opt_usize("attention.sliding_window")?.filter(|&w| w > 0);
    let (rope_style, sliding_window, sliding_layers, rope_local_theta, query_pre_attn_scalar) =
        match arch {
            Arch::Llama | Arch::Mistral | Arch::Mixtral => {
                (RopeStyle::Interleaved, sliding, Vec::new(), None, None)
            }
            // llama.cpp reads phi3.attention.sliding_window but attends without a window (its
            // "Phi SWA is currently disabled"); kiln follows the engine GGUF files are made for.
            Arch::Phi3 => (RopeStyle::Half, None, Vec::new(), None, None),
            Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe | Arch::Olmo2 => {
                if let Some(w) = sliding.filter(|&w| w < max_position_embeddings) {
                    return Err(FormatError::Unsupported(format!(
                        "{arch_name} with a sliding window of {w}"
                    )));
                }
                (RopeStyle::Half, None, Vec::new(), None, None)
            }
            Arch::Gemma2 => {
                // llama.cpp: even layers use the window, odd ones are global; the attention scale
                // is (n_embd / n_head)^-0.5 for the 46-layer 27B, head_dim^-0.5 otherwise.
                // llama.cpp's default window for Gemma 2 is 4096.
                let window = sliding.unwrap_or(4096);
                let scalar = if n_layers == 46 {
                    hidden_size / n_heads
                } else {
                    head_dim
                };
                (
                    RopeStyle::Half,
                    Some(window),
                    (0..n_layers).map(|il| il % 2 == 0).collect(),
                    None,
                    Some(scalar as f32),
                )
            }
            Arch::Gemma3 => {
                // llama.cpp: pattern 6, layer il is global iff il % 6 == 5; local rope base 10 000.
                let window = sliding.ok_or_else(|| {
                    invalid("missing metadata key gemma3.attention.sliding_window")
                })?;
                let layers = match file.get("gemma3.attention.sliding_window_pattern") {
                    None => (0..n_layers).map(|il| il % 6 != 5).collect(),
                    // A period p: layer il is global iff il % p == p - 1.
                    Some(v) if v.as_u64().is_some_and(|p| p > 0) => {
                        let p = v.as_u64().unwrap_or(1) as usize;
                        (0..n_layers).map(|il| il % p != p - 1).collect()
                    }
                    // One flag per layer, true for sliding-window layers.
                    Some(MetaValue::Array(a)) if a.len() == n_layers => a
                        .iter()
                        .map(|b| match b {
                            MetaValue::Bool(b) => Ok(*b),
                            other => Err(invalid(format!("gemma3.attention.sliding_window_pattern holds {other:?}"))),
                        })
                        .collect::<Result<Vec<bool>>>()?,
                    Some(other) => {
                        return Err(invalid(format!(
                            "gemma3.attention.sliding_window_pattern: expected a period or {n_layers} flags, found {}",
                            crate::short_value(other)
                        )))
                    }
                };
                // llama.cpp scales Gemma 3 27B (62 layers) by (n_embd / n_head)^-0.5, all others by
                // head_dim^-0.5, matching each model's query_pre_attn_scalar.
                let scalar = if n_layers == 62 {
                    hidden_size / n_heads
                } else {
                    head_dim
                };
                (
                    RopeStyle::Half,
                    Some(window),
                    layers,
                    Some(10_000.0),
                    Some(scalar as f32),
                )
            }
        };
    // llama.cpp soft-caps Gemma 2 always, at 50 (attention) and 30 (final) unless the file says.
    let softcap_default = |k: &str| match (arch, k) {
        (Arch::Gemma2, "attn_logit_softcapping") => Some(50.0),
        (Arch::Gemma2, "final_logit_softcapping") => Some(30.0),
        _ => None,
    };
    let softcap = |k: &str| -> Result<Option<f32>> {
        Ok(m.opt_f32(k)?.or(softcap_default(k)).filter(|&v| v > 0.0))
    };
    let n_experts = m.opt_usize("expert_count")?.unwrap_or(0);
    let moe = if n_experts > 0 {
        let n_used = m.usize("expert_used_count")?;
        let expert_ffn = match m.opt_usize("expert_feed_forward_length")? {
            Some(f) => f,
            None => intermediate_size,
        };
        // llama.cpp renormalises the chosen experts' weights for Mixtral (llama) and Qwen3-MoE.
        let norm_topk = match file.get(&m.key("expert_weights_norm")) {
            Some(MetaValue::Bool(b)) => *b,
            _ => true,
        };
        Some(MoeConfig {
            n_experts: dim("expert_count", n_experts)?,
            n_used,
            expert_ffn: dim("expert_feed_forward_length", expert_ffn)?,
            norm_topk,
        })
    } else {
        None
    };
    // GGUF Mistral and Mixtral files say `llama`; a sliding window or experts make the difference.
    let arch = match arch {
        Arch::Llama if moe.is_some() => Arch::Mixtral,
        Arch::Llama if sliding_window.is_some() => Arch::Mistral,
        other => other,
    };
    if moe.is_some() && !matches!(arch, Arch::Mixtral | Arch::Qwen3Moe) {
        return Err(FormatError::Unsupported(format!(
            "{arch_name} with {n_experts} experts"
        )));
    }
    if moe.is_none() && arch == Arch::Qwen3Moe {
        return Err(invalid("qwen3moe without qwen3moe.expert_count"));
    }

    Ok(ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        rms_norm_eps,
        rope_theta,
        rope_local_theta,
        rope_scaling,
        rope_style,
        max_position_embeddings,
        sliding_window,
        sliding_layers,
        tie_word_embeddings: !tensors.contains_key("output.weight"),
        query_pre_attn_scalar,
        final_logit_softcapping: softcap("final_logit_softcapping")?,
        attn_logit_softcapping: softcap("attn_logit_softcapping")?,
        bos_token_id,
        eos_token_ids,
        moe,
    })
}

// ---------------------------------------------------------------------------------------------
// Writer

fn value_type(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => vt::U8,
        MetaValue::I8(_) => vt::I8,
        MetaValue::U16(_) => vt::U16,
        MetaValue::I16(_) => vt::I16,
        MetaValue::U32(_) => vt::U32,
        MetaValue::I32(_) => vt::I32,
        MetaValue::U64(_) => vt::U64,
        MetaValue::I64(_) => vt::I64,
        MetaValue::F32(_) => vt::F32,
        MetaValue::F64(_) => vt::F64,
        MetaValue::Bool(_) => vt::BOOL,
        MetaValue::String(_) => vt::STRING,
        MetaValue::Array(_) => vt::ARRAY,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue, key: &str) -> Result<()> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::Array(items) => {
            // An empty array is written with element type u8 (any type would do).
            let et = items.first().map(value_type).unwrap_or(vt::U8);
            if items.iter().any(|i| value_type(i) != et) {
                return Err(invalid(format!(
                    "metadata array {key:?} mixes element types"
                )));
            }
            out.extend_from_slice(&et.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i, key)?;
            }
        }
    }
    Ok(())
}

/// Writes a GGUF v3 file: the metadata in the order given, then the tensors in the order given,
/// each padded to `general.alignment` (32 unless the metadata sets it), as gguf-py lays files out.
/// Writes to a temporary file beside `path` and renames it, so a file that is mapped while it is
/// replaced is never truncated under the mapping, and a failure leaves no partial file.
pub fn write<'a, M, T>(path: &Path, metadata: M, tensors: T) -> Result<()>
where
    M: IntoIterator<Item = (&'a str, &'a MetaValue)>,
    T: IntoIterator<Item = (&'a str, &'a Tensor)>,
{
    write_atomic(path, |w| write_to(w, metadata, tensors))
}

/// The temporary name [`write`] and [`write_streamed`] write to before renaming.
pub fn temporary_path(path: &Path) -> std::path::PathBuf {
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(".kiln-tmp");
    path.with_file_name(tmp_name)
}

/// Runs `body` on a buffered writer of [`temporary_path`]`(path)`, syncs the file and renames
/// it to `path`; on any error the temporary file is removed and `path` is untouched.
fn write_atomic(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    let tmp = temporary_path(path);
    let result = (|| {
        let f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        body(&mut w)?;
        w.flush().map_err(|e| io_err(&tmp, e))?;
        w.into_inner()
            .map_err(|e| io_err(&tmp, e.into_error()))?
            .sync_all()
            .map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A tensor's header entry, for [`write_streamed`]: its data is produced later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    /// Outermost first, as [`Tensor::shape`].
    pub shape: Vec<usize>,
}

/// Writes a GGUF v3 file whose tensors are produced one at a time: `produce(i)` returns the
/// bytes of `specs[i]` (rows in file order), called in order, so that only one tensor's data is
/// held at once. Temporary name and rename as [`write`]: an error from `produce` (a cancelled
/// run, a failed quantisation) or from the disk leaves no file at `path`.
pub fn write_streamed<'a, M>(
    path: &Path,
    metadata: M,
    specs: &[TensorSpec],
    produce: &mut dyn FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()>
where
    M: IntoIterator<Item = (&'a str, &'a MetaValue)>,
{
    write_atomic(path, |w| {
        let metadata: Vec<_> = metadata.into_iter().collect();
        let (head, alignment, sizes) = header(&metadata, specs)?;
        let werr = |e: std::io::Error| invalid(format!("writing GGUF: {e}"));
        w.write_all(&head).map_err(werr)?;
        let zeros = vec![0u8; alignment];
        for (i, spec) in specs.iter().enumerate() {
            let data = produce(i)?;
            if data.len() != sizes[i] {
                return Err(invalid(format!(
                    "tensor {:?}: {} bytes produced for {} of {}",
                    spec.name,
                    data.len(),
                    sizes[i],
                    spec.dtype
                )));
            }
            w.write_all(&data).map_err(werr)?;
            let n = data.len();
            let pad = align_up(n, alignment).unwrap_or(n) - n;
            w.write_all(&zeros[..pad]).map_err(werr)?;
        }
        Ok(())
    })
}

/// The header (magic, counts, metadata, tensor infos, padding) of a file with these tensors,
/// its alignment and each tensor's data size.
fn header(
    metadata: &[(&str, &MetaValue)],
    specs: &[TensorSpec],
) -> Result<(Vec<u8>, usize, Vec<usize>)> {
    let alignment = match metadata.iter().find(|(k, _)| *k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, MetaValue::U32(a))) if *a != 0 && a.is_power_of_two() => *a as usize,
        Some((_, v)) => {
            return Err(invalid(format!(
                "general.alignment must be a u32 power of two, found {v:?}"
            )))
        }
    };
    let mut head = Vec::new();
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(specs.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    let mut keys = std::collections::HashSet::new();
    for (k, v) in metadata {
        if !keys.insert(*k) {
            return Err(invalid(format!("duplicate metadata key {k:?}")));
        }
        put_str(&mut head, k);
        head.extend_from_slice(&value_type(v).to_le_bytes());
        put_value(&mut head, v, k)?;
    }
    let mut offset = 0usize;
    let mut names = std::collections::HashSet::new();
    let mut sizes = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = spec.name.as_str();
        if !names.insert(name) {
            return Err(invalid(format!("duplicate tensor name {name:?}")));
        }
        if spec.shape.len() > MAX_DIMS {
            return Err(invalid(format!(
                "tensor {name:?} has more than {MAX_DIMS} dimensions"
            )));
        }
        let n = spec
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| invalid(format!("tensor {name:?}: size overflows")))?;
        let cols = spec.shape.last().copied().unwrap_or(1);
        let size = spec
            .dtype
            .bytes_for(n)
            .filter(|_| cols % spec.dtype.block_size() == 0)
            .ok_or_else(|| {
                invalid(format!(
                    "tensor {name:?}: rows of {cols} are not whole {} blocks",
                    spec.dtype
                ))
            })?;
        put_str(&mut head, name);
        head.extend_from_slice(&(spec.shape.len() as u32).to_le_bytes());
        for &d in spec.shape.iter().rev() {
            head.extend_from_slice(&(d as u64).to_le_bytes());
        }
        head.extend_from_slice(&spec.dtype.ggml_id().to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = align_up(offset + size, alignment).ok_or_else(|| invalid("file too large"))?;
        sizes.push(size);
    }
    let padded = align_up(head.len(), alignment).ok_or_else(|| invalid("header too large"))?;
    head.resize(padded, 0);
    Ok((head, alignment, sizes))
}

/// [`write()`] into any writer (for example a `Vec<u8>`).
pub fn write_to<'a, W, M, T>(mut w: W, metadata: M, tensors: T) -> Result<()>
where
    W: Write,
    M: IntoIterator<Item = (&'a str, &'a MetaValue)>,
    T: IntoIterator<Item = (&'a str, &'a Tensor)>,
{
    let metadata: Vec<_> = metadata.into_iter().collect();
    let tensors: Vec<_> = tensors.into_iter().collect();
    let mut specs = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        // Re-check the invariant Tensor::new establishes (the fields are public).
        Tensor::new(t.dtype, t.shape.clone(), t.data.clone())
            .map_err(|e| invalid(format!("tensor {name:?}: {e}")))?;
        specs.push(TensorSpec {
            name: name.to_string(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        });
    }
    let (head, alignment, _) = header(&metadata, &specs)?;
    let werr = |e: std::io::Error| invalid(format!("writing GGUF: {e}"));
    w.write_all(&head).map_err(werr)?;
    let zeros = vec![0u8; alignment];
    for (_, t) in &tensors {
        let n = t.data.len();
        w.write_all(&t.plain_bytes()).map_err(werr)?;
        let pad = align_up(n, alignment).unwrap_or(n) - n;
        w.write_all(&zeros[..pad]).map_err(werr)?;
    }
    Ok(())
}

/// [`write_to`] into a new `Vec<u8>`.
pub fn to_bytes<'a, M, T>(metadata: M, tensors: T) -> Result<Vec<u8>>
where
    M: IntoIterator<Item = (&'a str, &'a MetaValue)>,
    T: IntoIterator<Item = (&'a str, &'a Tensor)>,
{
    let mut v = Vec::new();
    write_to(&mut v, metadata, tensors)?;
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// ModelConfig → metadata (for writing GGUF files)

/// The rope layout GGUF files of an architecture use (llama.cpp's convention).
pub fn gguf_rope_style(arch: Arch) -> RopeStyle {
    match arch {
        Arch::Llama | Arch::Mistral | Arch::Mixtral => RopeStyle::Interleaved,
        Arch::Qwen2
        | Arch::Gemma3
        | Arch::Qwen3
        | Arch::Qwen3Moe
        | Arch::Gemma2
        | Arch::Olmo2
        | Arch::Phi3 => RopeStyle::Half,
    }
}

/// GGUF model metadata (`general.architecture` and the `{arch}.*` keys, plus the bos/eos token
/// ids) that [`config_from_gguf`] reads back as `cfg`. Tokenizer vocabulary keys are not included.
/// Errors when `cfg` holds something GGUF cannot say (Gemma 3 with other than llama.cpp's fixed
/// layer pattern, local rope base or attention scale).
pub fn metadata_from_config(cfg: &ModelConfig) -> Result<Vec<(String, MetaValue)>> {
    let arch = match cfg.arch {
        Arch::Llama | Arch::Mistral | Arch::Mixtral => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::Gemma3 => "gemma3",
        Arch::Qwen3 => "qwen3",
        Arch::Qwen3Moe => "qwen3moe",
        Arch::Gemma2 => "gemma2",
        Arch::Olmo2 => "olmo2",
        Arch::Phi3 => "phi3",
    };
    let u = |v: usize| MetaValue::U32(v as u32);
    let k = |s: &str| format!("{arch}.{s}");
    let mut m = vec![
        (
            "general.architecture".to_string(),
            MetaValue::String(arch.into()),
        ),
        (k("context_length"), u(cfg.max_position_embeddings)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("block_count"), u(cfg.n_layers)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.n_heads)),
        (k("attention.head_count_kv"), u(cfg.n_kv_heads)),
        (k("attention.key_length"), u(cfg.head_dim)),
        (k("attention.value_length"), u(cfg.head_dim)),
        (
            k("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(cfg.rms_norm_eps),
        ),
        (k("rope.freq_base"), MetaValue::F32(cfg.rope_theta)),
    ];
    let unsupported = |what: String| {
        Err(FormatError::Unsupported(format!(
            "GGUF {arch} cannot express {what}"
        )))
    };
    match cfg.arch {
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe | Arch::Olmo2 => {
            if cfg.sliding_window.is_some() {
                return unsupported("a sliding window".into());
            }
        }
        Arch::Gemma2 => {
            let Some(w) = cfg.sliding_window else {
                return unsupported("Gemma 2 without a sliding window".into());
            };
            let pattern: Vec<bool> = (0..cfg.n_layers).map(|il| il % 2 == 0).collect();
            if cfg.sliding_layers != pattern {
                return unsupported(format!(
                    "the sliding layer pattern {:?}",
                    cfg.sliding_layers
                ));
            }
            let scalar = if cfg.n_layers == 46 {
                cfg.hidden_size / cfg.n_heads
            } else {
                cfg.head_dim
            };
            if cfg.query_pre_attn_scalar.unwrap_or(scalar as f32) != scalar as f32 {
                return unsupported(format!(
                    "query_pre_attn_scalar {:?}",
                    cfg.query_pre_attn_scalar
                ));
            }
            m.push((k("attention.sliding_window"), u(w)));
        }
        // (llama.cpp ignores a phi3 window when reading; it is written as llama.cpp's converter does.)
        Arch::Mistral | Arch::Mixtral | Arch::Phi3 => {
            if let Some(w) = cfg.sliding_window {
                if !cfg.sliding_layers.is_empty() && cfg.sliding_layers.iter().any(|&s| !s) {
                    return unsupported("sliding windows on only some layers".into());
                }
                m.push((k("attention.sliding_window"), u(w)));
            }
        }
        Arch::Gemma3 => {
            let Some(w) = cfg.sliding_window else {
                return unsupported("Gemma 3 without a sliding window".into());
            };
            let pattern: Vec<bool> = (0..cfg.n_layers).map(|il| il % 6 != 5).collect();
            if cfg.sliding_layers != pattern {
                return unsupported(format!(
                    "the sliding layer pattern {:?}",
                    cfg.sliding_layers
                ));
            }
            if cfg.rope_local_theta != Some(10_000.0) {
                return unsupported(format!("a local rope base of {:?}", cfg.rope_local_theta));
            }
            let scalar = if cfg.n_layers == 62 {
                cfg.hidden_size / cfg.n_heads
            } else {
                cfg.head_dim
            };
            if cfg.query_pre_attn_scalar != Some(scalar as f32) {
                return unsupported(format!(
                    "query_pre_attn_scalar {:?}",
                    cfg.query_pre_attn_scalar
                ));
            }
            m.push((k("attention.sliding_window"), u(w)));
        }
    }
    if (cfg.arch != Arch::Gemma3 && cfg.rope_local_theta.is_some())
        || (!matches!(cfg.arch, Arch::Gemma3 | Arch::Gemma2) && cfg.query_pre_attn_scalar.is_some())
    {
        return unsupported("a local rope base or query_pre_attn_scalar".into());
    }
    if let Some(moe) = &cfg.moe {
        if !matches!(cfg.arch, Arch::Mixtral | Arch::Qwen3Moe) {
            return unsupported("experts".into());
        }
        if !moe.norm_topk {
            // llama.cpp renormalises the chosen experts' weights of both architectures.
            return unsupported("experts without renormalised top-k weights".into());
        }
        m.push((k("expert_count"), u(moe.n_experts)));
        m.push((k("expert_used_count"), u(moe.n_used)));
        m.push((k("expert_feed_forward_length"), u(moe.expert_ffn)));
    }
    match &cfg.rope_scaling {
        Some(RopeScaling::Linear { factor }) => {
            m.push((k("rope.scaling.type"), MetaValue::String("linear".into())));
            m.push((k("rope.scaling.factor"), MetaValue::F32(*factor)));
        }
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
            truncate,
        }) => {
            if !truncate {
                return unsupported("YaRN without truncate".into());
            }
            let mscale = if *factor > 1.0 {
                1.0 + 0.1 * factor.ln()
            } else {
                1.0
            };
            m.push((k("rope.scaling.type"), MetaValue::String("yarn".into())));
            m.push((k("rope.scaling.factor"), MetaValue::F32(*factor)));
            m.push((
                k("rope.scaling.original_context_length"),
                u(*original_max_position_embeddings),
            ));
            m.push((k("rope.scaling.yarn_beta_fast"), MetaValue::F32(*beta_fast)));
            m.push((k("rope.scaling.yarn_beta_slow"), MetaValue::F32(*beta_slow)));
            if (attention_factor / mscale - 1.0).abs() > 1e-6 {
                m.push((
                    k("rope.scaling.attn_factor"),
                    MetaValue::F32(attention_factor / mscale),
                ));
            }
        }
        Some(RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            ..
        }) => {
            if cfg.arch != Arch::Phi3 {
                return unsupported("LongRoPE scaling".into());
            }
            m.push((
                k("rope.scaling.original_context_length"),
                u(*original_max_position_embeddings),
            ));
            m.push((
                k("rope.scaling.attn_factor"),
                MetaValue::F32(*attention_factor),
            ));
        }
        _ => {}
    }
    if let Some(c) = cfg.final_logit_softcapping {
        m.push((k("final_logit_softcapping"), MetaValue::F32(c)));
    }
    if let Some(c) = cfg.attn_logit_softcapping {
        m.push((k("attn_logit_softcapping"), MetaValue::F32(c)));
    }
    if let Some(b) = cfg.bos_token_id {
        m.push(("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(b)));
    }
    if let Some(&e) = cfg.eos_token_ids.first() {
        m.push(("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(e)));
    }
    Ok(m)
}

/// llama.cpp's per-frequency factors for Llama 3 scaling (its `rope_freqs.weight`).
pub fn llama3_rope_factors(cfg: &ModelConfig) -> Option<Vec<f32>> {
    let Some(RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    }) = cfg.rope_scaling
    else {
        return None;
    };
    let old = original_max_position_embeddings as f32;
    let low_wavelen = old / low_freq_factor;
    let high_wavelen = old / high_freq_factor;
    let half = cfg.head_dim / 2;
    Some(
        (0..half)
            .map(|i| {
                let freq = 1.0 / cfg.rope_theta.powf((2 * i) as f32 / cfg.head_dim as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth =
                        (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect(),
    )
}

/// The tensors as a GGUF file of `cfg.arch` stores them: q/k rows in the architecture's rope
/// layout, and `rope_freqs.weight` for frequency-factor scaling. Returns the config as the written
/// file will read back (its `rope_style`, and Llama 3 scaling as frequency factors).
pub fn gguf_tensors(
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<(ModelConfig, BTreeMap<String, Tensor>)> {
    let (mut cfg, mut out) =
        crate::layout::with_rope_style(cfg, tensors, gguf_rope_style(cfg.arch))?;
    if let Some(RopeScaling::LongRope {
        short_factor,
        long_factor,
        ..
    }) = &cfg.rope_scaling
    {
        for (name, f) in [
            ("rope_factors_long.weight", long_factor),
            ("rope_factors_short.weight", short_factor),
        ] {
            let t = Tensor::from_f32(vec![f.len()], f).map_err(|e| invalid(e.to_string()))?;
            out.insert(name.into(), t);
        }
    }
    let factors = match &cfg.rope_scaling {
        Some(RopeScaling::FreqFactors(f)) => Some(f.clone()),
        Some(RopeScaling::Llama3 { .. }) => llama3_rope_factors(&cfg),
        _ => None,
    };
    if let Some(f) = factors {
        let t = Tensor::from_f32(vec![f.len()], &f).map_err(|e| invalid(e.to_string()))?;
        out.insert("rope_freqs.weight".into(), t);
        cfg.rope_scaling = Some(RopeScaling::FreqFactors(f));
    }
    Ok((cfg, out))
}
