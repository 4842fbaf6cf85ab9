//! Byte storage shared by tensors: a slice of a memory-mapped file or an owned buffer.

use std::sync::Arc;

/// A cheaply clonable byte range, immutable once shared. Tensors of a memory-mapped model all
/// point into the same mapping, so loading a model copies nothing.
#[derive(Clone)]
pub struct Storage {
    owner: Owner,
    start: usize,
    len: usize,
}

/// Memory that may be rewritten while only one [`Storage`] refers to it.
pub trait WritableBytes: AsRef<[u8]> + AsMut<[u8]> + Send + Sync {}
impl<T: AsRef<[u8]> + AsMut<[u8]> + Send + Sync> WritableBytes for T {}

#[derive(Clone)]
enum Owner {
    Fixed(Arc<dyn AsRef<[u8]> + Send + Sync>),
    Writable(Arc<dyn WritableBytes>),
}

impl Storage {
    /// The whole of `owner` (for example a `memmap2::Mmap`), never written.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Storage {
        let len = (*owner).as_ref().len();
        Storage {
            owner: Owner::Fixed(owner),
            start: 0,
            len,
        }
    }

    /// The whole of `owner`, which [`Storage::bytes_mut`] may rewrite before it is shared
    /// (a loader rearranging weights in place for the kernels).
    pub fn writable(owner: Arc<dyn WritableBytes>) -> Storage {
        let len = (*owner).as_ref().len();
        Storage {
            owner: Owner::Writable(owner),
            start: 0,
            len,
        }
    }

    pub fn from_vec(bytes: Vec<u8>) -> Storage {
        Storage::writable(Arc::new(bytes))
    }

    /// The bytes, writable, when the memory allows it and no other `Storage` (no clone, no
    /// slice) refers to it.
    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match &mut self.owner {
            Owner::Fixed(_) => None,
            Owner::Writable(o) => {
                let (start, len) = (self.start, self.len);
                Arc::get_mut(o).map(|o| &mut (*o).as_mut()[start..start + len])
            }
        }
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
        let all = match &self.owner {
            Owner::Fixed(o) => (**o).as_ref(),
            Owner::Writable(o) => (**o).as_ref(),
        };
        &all[self.start..self.start + self.len]
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
