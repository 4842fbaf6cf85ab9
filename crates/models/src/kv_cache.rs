//! The key/value cache of one sequence.

/// Keys and values of every layer for one sequence, laid out `[layer][kv_head][position][head_dim]`
/// so attention reads each head's history sequentially.
///
/// The cache belongs to the engine's sequence, not to the model: the model only appends to it
/// during `forward` and reads it back.
pub struct KvCache {
    n_layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvCache {
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize, capacity: usize) -> KvCache {
        let size = n_layers * n_kv_heads * capacity * head_dim;
        KvCache {
            n_layers,
            n_kv_heads,
            head_dim,
            capacity,
            len: 0,
            k: vec![0.0; size],
            v: vec![0.0; size],
        }
    }

    /// Positions stored so far: the next token goes at position `len()`.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by this cache.
    pub fn memory_bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<f32>()
    }

    /// Forgets positions from `len` on (used to roll back or reuse a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes room for at least `capacity` positions, keeping what is stored.
    pub fn reserve(&mut self, capacity: usize) {
        if capacity <= self.capacity {
            return;
        }
        let mut grown = KvCache::new(self.n_layers, self.n_kv_heads, self.head_dim, capacity);
        let hd = self.head_dim;
        for l in 0..self.n_layers {
            for h in 0..self.n_kv_heads {
                let src = self.offset(l, h, 0);
                let dst = grown.offset(l, h, 0);
                let n = self.len * hd;
                grown.k[dst..dst + n].copy_from_slice(&self.k[src..src + n]);
                grown.v[dst..dst + n].copy_from_slice(&self.v[src..src + n]);
            }
        }
        grown.len = self.len;
        *self = grown;
    }

    fn offset(&self, layer: usize, head: usize, pos: usize) -> usize {
        ((layer * self.n_kv_heads + head) * self.capacity + pos) * self.head_dim
    }

    /// Stores key and value of `head` at `pos` in `layer` (`pos` may be ≥ `len()` while a
    /// forward pass is filling new positions; `advance` then commits them).
    pub fn store(&mut self, layer: usize, head: usize, pos: usize, k: &[f32], v: &[f32]) {
        let o = self.offset(layer, head, pos);
        self.k[o..o + self.head_dim].copy_from_slice(k);
        self.v[o..o + self.head_dim].copy_from_slice(v);
    }

    /// Keys and values of `head` in `layer` for positions `0..end`.
    pub fn head(&self, layer: usize, head: usize, end: usize) -> (&[f32], &[f32]) {
        let o = self.offset(layer, head, 0);
        let n = end * self.head_dim;
        (&self.k[o..o + n], &self.v[o..o + n])
    }

    /// Commits `n` newly stored positions.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.len <= self.capacity);
    }
}
