//! PyTorch checkpoints as `torch.save` writes them (the zip format, PyTorch 1.6 and later),
//! read without running any Python.
//!
//! A checkpoint is a zip archive with one top folder (named after the file, e.g.
//! `consolidated.00/`, or `archive/`) holding `data.pkl`, a pickle of the saved object, and
//! `data/<key>`, one member per storage, raw little-endian elements. Tensors in the pickle are
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls whose storage is a
//! persistent id naming a member. [`pickle`] decodes the pickle with an allow-list of globals, so a
//! hostile checkpoint is refused instead of run.
//!
//! Stored (uncompressed) members are memory-mapped: tensors slice the mapping and nothing is
//! copied. Deflated members (never written by `torch.save`, but possible after re-zipping) are
//! decompressed into owned buffers. Every size and offset is checked against the file.
//! As with every memory-mapped loader, the file must not be truncated while it is in use.

pub mod pickle;
mod zip;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_kernels::{Storage, Tensor};
use memmap2::Mmap;

pub use pickle::{PickleError, StorageKind, StorageRef, TensorRef, Value};

use crate::{FormatError, Result};

/// Largest `data.pkl` accepted (a 70B-parameter shard's is ~100 KB).
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// One tensor of a checkpoint, described but not yet read.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub kind: StorageKind,
    pub shape: Vec<usize>,
    /// Zip member holding the storage.
    pub member: String,
    /// Byte range of this tensor inside the member (already checked).
    pub byte_offset: usize,
    pub byte_len: usize,
}

/// An opened checkpoint: the state dict's tensors, described, with their bytes still on disk.
pub struct PthFile {
    path: PathBuf,
    whole: Storage,
    entries: HashMap<String, zip::Entry>,
    tensors: BTreeMap<String, TensorInfo>,
    other_keys: Vec<String>,
    /// Decompressed deflated members, by name.
    inflated: Mutex<HashMap<String, Storage>>,
}

impl std::fmt::Debug for PthFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PthFile({}, {} tensors)",
            self.path.display(),
            self.tensors.len()
        )
    }
}

fn err(path: &Path, msg: impl std::fmt::Display) -> FormatError {
    FormatError::Invalid(format!("{}: {msg}", path.display()))
}

/// Checks a tensor view against its storage and the member holding it; returns its byte range.
fn check_view(t: &TensorRef, member_size: u64) -> std::result::Result<(usize, usize), String> {
    let es = t.storage.kind.element_size() as u64;
    let storage_bytes = t.storage.numel.checked_mul(es);
    if storage_bytes != Some(member_size) {
        return Err(format!(
            "storage `{}` should hold {} elements of {} ({} bytes) but its file member has {member_size} bytes",
            t.storage.key,
            t.storage.numel,
            t.storage.kind.class_name(),
            storage_bytes.map_or("too many".to_string(), |b| b.to_string()),
        ));
    }
    let numel = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    let Some(numel) = numel else {
        return Err(format!("tensor shape {:?} overflows", t.shape));
    };
    // Contiguous (row-major): each stride is the product of the later sizes. Dimensions of
    // size 1 may have any stride, as in PyTorch's own `is_contiguous`.
    let mut expect = 1u64;
    for (d, (&size, &stride)) in t.shape.iter().zip(&t.stride).enumerate().rev() {
        if size != 1 && stride != expect && numel != 0 {
            return Err(format!(
                "tensor of shape {:?} has strides {:?} (dimension {d}): not contiguous; save it with .contiguous()",
                t.shape, t.stride
            ));
        }
        expect = expect.saturating_mul(size);
    }
    let end = t.storage_offset.checked_add(numel);
    if end.is_none_or(|e| e > t.storage.numel) {
        return Err(format!(
            "tensor of shape {:?} at element offset {} does not fit in its storage of {} elements",
            t.shape, t.storage_offset, t.storage.numel
        ));
    }
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| format!("size {v} too large"));
    Ok((to_usize(t.storage_offset * es)?, to_usize(numel * es)?))
}

impl PthFile {
    /// Opens a checkpoint and describes its tensors. The saved object must be a dict (or
    /// `OrderedDict`) with string keys; its tensor values are the checkpoint's tensors, its
    /// other values are listed by [`PthFile::other_keys`].
    pub fn open(path: &Path) -> Result<PthFile> {
        let file = std::fs::File::open(path).map_err(|source| FormatError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the mapping is read-only; like every memory-mapped loader we rely on the
        // file not being truncated while the model is in use.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| FormatError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bytes: &[u8] = &map;
        if !bytes.starts_with(b"PK\x03\x04") {
            let what = if bytes.first() == Some(&0x80) {
                "a legacy (before PyTorch 1.6) checkpoint; re-save it with a newer torch.save"
            } else {
                "not a PyTorch zip checkpoint"
            };
            return Err(err(path, what));
        }
        let entries = zip::read_directory(bytes).map_err(|m| err(path, m))?;
        // The top folder's name varies: find the single `<top>/data.pkl`.
        let mut tops = entries
            .keys()
            .filter_map(|n| n.strip_suffix("/data.pkl"))
            .filter(|t| !t.contains('/'));
        let top = match (tops.next(), tops.next()) {
            (Some(t), None) => t.to_string(),
            (None, _) => return Err(err(path, "no `<folder>/data.pkl` in the zip archive")),
            (Some(_), Some(_)) => return Err(err(path, "several `data.pkl` in the zip archive")),
        };
        if let Some(e) = entries.get(&format!("{top}/byteorder")) {
            let order = zip::read_owned(bytes, e, 16).map_err(|m| err(path, m))?;
            if order != b"little" {
                return Err(err(
                    path,
                    format!(
                        "unsupported byte order `{}`",
                        String::from_utf8_lossy(&order)
                    ),
                ));
            }
        }
        let pkl = zip::read_owned(
            bytes,
            &entries[&format!("{top}/data.pkl")],
            MAX_PICKLE_BYTES,
        )
        .map_err(|m| err(path, m))?;
        let value = pickle::unpickle(&pkl).map_err(|e| err(path, e))?;
        let Value::Dict(pairs) = value else {
            return Err(err(path, "the saved object is not a dict of tensors"));
        };
        let mut tensors = BTreeMap::new();
        let mut other_keys = Vec::new();
        for (k, v) in pairs {
            let Value::Str(name) = k else {
                return Err(err(
                    path,
                    format!("state dict key of type {} is not a string", k.kind()),
                ));
            };
            let Value::Tensor(t) = v else {
                other_keys.push(name);
                continue;
            };
            let member = format!("{top}/data/{}", t.storage.key);
            let Some(e) = entries.get(&member) else {
                return Err(err(
                    path,
                    format!("tensor `{name}`: no archive member `{member}`"),
                ));
            };
            let (byte_offset, byte_len) =
                check_view(&t, e.size).map_err(|m| err(path, format!("tensor `{name}`: {m}")))?;
            let shape = t.shape.iter().map(|&d| d as usize).collect();
            let info = TensorInfo {
                kind: t.storage.kind,
                shape,
                member,
                byte_offset,
                byte_len,
            };
            tensors.insert(name, info);
        }
        Ok(PthFile {
            path: path.to_path_buf(),
            whole: Storage::new(Arc::new(map)),
            entries,
            tensors,
            other_keys,
            inflated: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state dict's tensors, by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// Keys of the state dict whose values are not tensors.
    pub fn other_keys(&self) -> &[String] {
        &self.other_keys
    }

    /// Reads tensor `name`: a slice of the memory-mapped file when its member is stored,
    /// else a slice of the member decompressed once.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let Some(info) = self.tensors.get(name) else {
            return Err(err(&self.path, format!("no tensor `{name}`")));
        };
        let Some(dtype) = info.kind.dtype() else {
            return Err(FormatError::Unsupported(format!(
                "{}: tensor `{name}` has element type {}; only float32, float16 and bfloat16 are supported",
                self.path.display(),
                info.kind.class_name()
            )));
        };
        let e = &self.entries[&info.member];
        let member = match e.method {
            zip::Method::Stored => self.whole.slice(e.data_start as usize, e.size as usize),
            zip::Method::Deflated => {
                let mut cache = self.inflated.lock().unwrap_or_else(|p| p.into_inner());
                if !cache.contains_key(&info.member) {
                    let bytes = zip::read_owned(self.whole.bytes(), e, e.size)
                        .map_err(|m| err(&self.path, m))?;
                    cache.insert(info.member.clone(), Storage::from_vec(bytes));
                }
                cache.get(&info.member).cloned()
            }
        };
        let data = member
            .and_then(|m| m.slice(info.byte_offset, info.byte_len))
            .ok_or_else(|| {
                err(
                    &self.path,
                    format!("tensor `{name}` lies outside its storage"),
                )
            })?;
        Tensor::new(dtype, info.shape.clone(), data)
            .map_err(|e| err(&self.path, format!("tensor `{name}`: {e}")))
    }

    /// Reads every tensor.
    pub fn load_all(&self) -> Result<BTreeMap<String, Tensor>> {
        self.tensors
            .keys()
            .map(|n| Ok((n.clone(), self.tensor(n)?)))
            .collect()
    }

    /// Whether `t`'s bytes lie inside this file's memory mapping (zero-copy).
    pub fn is_mapped(&self, t: &Tensor) -> bool {
        let whole = self.whole.bytes().as_ptr_range();
        let b = t.data.bytes().as_ptr_range();
        whole.start <= b.start && b.end <= whole.end
    }
}

/// Reads every tensor of a PyTorch checkpoint (a dict of tensors saved with `torch.save`).
pub fn load_pth(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    PthFile::open(path)?.load_all()
}
