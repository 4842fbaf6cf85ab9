//! Byte storage shared by tensors: a slice of a memory-mapped file or an owned buffer.

use std::sync::Arc;

/// A cheaply clonable, immutable byte range. Tensors of a memory-mapped model all point into the
/// same mapping, so loading a model copies nothing.
#[derive(Clone)]
pub struct Storage {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl Storage {
    /// The whole of `owner` (for example a `memmap2::Mmap` or a `Vec<u8>`).
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Storage {
        let len = (*owner).as_ref().len();
        Storage {
            owner,
            start: 0,
            len,
        }
    }

    pub fn from_vec(bytes: Vec<u8>) -> Storage {
        Storage::new(Arc::new(bytes))
    }

    pub fn from_f32(values: &[f32]) -> Storage {
        Storage::from_vec(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// A sub-range; `None` when it does not lie inside this storage.
    pub fn slice(&self, offset: usize, len: usize) -> Option<Storage> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(Storage {
            owner: self.owner.clone(),
            start: self.start + offset,
            len,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({} bytes)", self.len)
    }
}
