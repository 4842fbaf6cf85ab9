//! The key/value cache of one sequence.

use kiln_kernels::ops;

/// The element type the cache stores keys and values in.
///
/// `F16` halves the cache's memory and attention's bandwidth and is what llama.cpp keeps by
/// default, so it is the default for quantised models (where llama.cpp is the reference, see
/// [`crate::Numerics`]); `F32` keeps float models exact against transformers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    /// Bytes per stored element.
    pub fn size(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> Result<KvType, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(format!("unknown cache type {s:?} (f32 or f16)")),
        }
    }
}

enum Store {
    F32(Vec<f32>),
    /// IEEE half bit patterns.
    F16(Vec<u16>),
}

impl Store {
    fn new(t: KvType, size: usize) -> Store {
        match t {
            KvType::F32 => Store::F32(vec![0.0; size]),
            KvType::F16 => Store::F16(vec![0; size]),
        }
    }

    fn len(&self) -> usize {
        match self {
            Store::F32(v) => v.len(),
            Store::F16(v) => v.len(),
        }
    }

    fn write(&mut self, o: usize, x: &[f32]) {
        match self {
            Store::F32(v) => v[o..o + x.len()].copy_from_slice(x),
            Store::F16(v) => ops::f32_to_f16(x, &mut v[o..o + x.len()]),
        }
    }

    fn copy_to(&self, src: usize, dst: &mut Store, at: usize, n: usize) {
        match (self, dst) {
            (Store::F32(a), Store::F32(b)) => b[at..at + n].copy_from_slice(&a[src..src + n]),
            (Store::F16(a), Store::F16(b)) => b[at..at + n].copy_from_slice(&a[src..src + n]),
            _ => unreachable!("a cache keeps its element type when it grows"),
        }
    }
}

/// A cache kept by a backend outside host memory (a GPU's buffers): the backend that made it
/// is the only one that reads or writes it; the cache only asks it to grow.
pub trait DeviceCache: Send + Sync {
    /// Makes room for `capacity` positions, keeping the first `len`.
    fn reserve(&mut self, capacity: usize, len: usize);
    /// Bytes held on the device.
    fn memory_bytes(&self) -> usize;
    /// For the backend to reach its own type.
    fn as_any(&self) -> &dyn std::any::Any;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// One head's keys and values for positions `0..end`, `head_dim` values per position.
#[derive(Clone, Copy)]
pub enum HeadView<'a> {
    F32 {
        k: &'a [f32],
        v: &'a [f32],
    },
    /// IEEE half bit patterns.
    F16 {
        k: &'a [u16],
        v: &'a [u16],
    },
}

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
    kv_type: KvType,
    k: Store,
    v: Store,
    /// Set for a cache on a device: `k` and `v` are then empty.
    device: Option<Box<dyn DeviceCache>>,
}

impl KvCache {
    /// An f32 cache.
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize, capacity: usize) -> KvCache {
        KvCache::with_type(n_layers, n_kv_heads, head_dim, capacity, KvType::F32)
    }

    pub fn with_type(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        kv_type: KvType,
    ) -> KvCache {
        let size = n_layers * n_kv_heads * capacity * head_dim;
        KvCache {
            n_layers,
            n_kv_heads,
            head_dim,
            capacity,
            len: 0,
            kv_type,
            k: Store::new(kv_type, size),
            v: Store::new(kv_type, size),
            device: None,
        }
    }

    /// A cache whose keys and values live in a backend's device memory (`store` is made for
    /// `capacity` positions). Only that backend reads and writes it; [`KvCache::store`] and
    /// [`KvCache::view`] panic on it.
    pub fn on_device(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        kv_type: KvType,
        store: Box<dyn DeviceCache>,
    ) -> KvCache {
        KvCache {
            n_layers,
            n_kv_heads,
            head_dim,
            capacity,
            len: 0,
            kv_type,
            k: Store::new(kv_type, 0),
            v: Store::new(kv_type, 0),
            device: Some(store),
        }
    }

    /// The device store of a cache made by [`KvCache::on_device`].
    pub fn device(&self) -> Option<&dyn DeviceCache> {
        self.device.as_deref()
    }

    pub fn device_mut(&mut self) -> Option<&mut (dyn DeviceCache + 'static)> {
        self.device.as_deref_mut()
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

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Bytes held by this cache.
    pub fn memory_bytes(&self) -> usize {
        if let Some(d) = &self.device {
            return d.memory_bytes();
        }
        (self.k.len() + self.v.len()) * self.kv_type.size()
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
        if let Some(d) = &mut self.device {
            d.reserve(capacity, self.len);
            self.capacity = capacity;
            return;
        }
        let mut grown = KvCache::with_type(
            self.n_layers,
            self.n_kv_heads,
            self.head_dim,
            capacity,
            self.kv_type,
        );
        let n = self.len * self.head_dim;
        for l in 0..self.n_layers {
            for h in 0..self.n_kv_heads {
                let src = self.offset(l, h, 0);
                let dst = grown.offset(l, h, 0);
                self.k.copy_to(src, &mut grown.k, dst, n);
                self.v.copy_to(src, &mut grown.v, dst, n);
            }
        }
        grown.len = self.len;
        *self = grown;
    }

    fn offset(&self, layer: usize, head: usize, pos: usize) -> usize {
        ((layer * self.n_kv_heads + head) * self.capacity + pos) * self.head_dim
    }

    /// Stores key and value of `head` at `pos` in `layer` (`pos` may be ≥ `len()` while a
    /// forward pass is filling new positions; `advance` then commits them). An f16 cache
    /// rounds them to nearest even.
    pub fn store(&mut self, layer: usize, head: usize, pos: usize, k: &[f32], v: &[f32]) {
        assert!(self.device.is_none(), "KvCache::store on a device cache");
        assert!(k.len() == self.head_dim && v.len() == self.head_dim);
        let o = self.offset(layer, head, pos);
        self.k.write(o, k);
        self.v.write(o, v);
    }

    /// Keys and values of `head` in `layer` for positions `0..end`, in the stored type.
    pub fn view(&self, layer: usize, head: usize, end: usize) -> HeadView<'_> {
        assert!(self.device.is_none(), "KvCache::view on a device cache");
        let o = self.offset(layer, head, 0);
        let n = end * self.head_dim;
        match (&self.k, &self.v) {
            (Store::F32(k), Store::F32(v)) => HeadView::F32 {
                k: &k[o..o + n],
                v: &v[o..o + n],
            },
            (Store::F16(k), Store::F16(v)) => HeadView::F16 {
                k: &k[o..o + n],
                v: &v[o..o + n],
            },
            _ => unreachable!("keys and values share one element type"),
        }
    }

    /// Keys and values of `head` in `layer` for positions `0..end` of an f32 cache.
    ///
    /// Panics on an f16 cache (use [`KvCache::view`]).
    pub fn head(&self, layer: usize, head: usize, end: usize) -> (&[f32], &[f32]) {
        match self.view(layer, head, end) {
            HeadView::F32 { k, v } => (k, v),
            HeadView::F16 { .. } => panic!("KvCache::head on an f16 cache; use view"),
        }
    }

    /// Commits `n` newly stored positions.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.len <= self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seed: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((seed * 31 + i * 7) % 97) as f32 / 13.0 - 3.0)
            .collect()
    }

    #[test]
    fn f16_cache_rounds_stores_and_keeps_its_contents_when_growing() {
        for t in [KvType::F32, KvType::F16] {
            let mut c = KvCache::with_type(2, 2, 8, 2, t);
            for pos in 0..3 {
                if pos >= c.capacity() {
                    c.reserve(c.capacity() * 2);
                }
                for (l, h) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let s = pos * 4 + l * 2 + h;
                    c.store(l, h, pos, &row(s, 8), &row(s + 100, 8));
                }
                c.advance(1);
            }
            assert_eq!(c.kv_type(), t);
            assert_eq!(c.memory_bytes(), 2 * 2 * 2 * 4 * 8 * t.size());
            for (l, h) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let (mut k, mut v) = (vec![0.0; 24], vec![0.0; 24]);
                match c.view(l, h, 3) {
                    HeadView::F32 { k: a, v: b } => {
                        k.copy_from_slice(a);
                        v.copy_from_slice(b);
                    }
                    HeadView::F16 { k: a, v: b } => {
                        ops::f16_to_f32(a, &mut k);
                        ops::f16_to_f32(b, &mut v);
                    }
                }
                for pos in 0..3 {
                    let s = pos * 4 + l * 2 + h;
                    let round = |x: Vec<f32>| -> Vec<f32> {
                        match t {
                            KvType::F32 => x,
                            KvType::F16 => {
                                let mut h = vec![0u16; x.len()];
                                ops::f32_to_f16(&x, &mut h);
                                let mut y = vec![0.0; x.len()];
                                ops::f16_to_f32(&h, &mut y);
                                y
                            }
                        }
                    };
                    assert_eq!(&k[pos * 8..pos * 8 + 8], &round(row(s, 8))[..]);
                    assert_eq!(&v[pos * 8..pos * 8 + 8], &round(row(s + 100, 8))[..]);
                }
            }
        }
        assert_eq!("F16".parse::<KvType>(), Ok(KvType::F16));
        assert!("q8_0".parse::<KvType>().is_err());
    }

    /// A device cache asks its store to grow (keeping `len`), reports the store's memory, and
    /// refuses host reads and writes.
    #[test]
    fn a_device_cache_delegates_to_its_store() {
        struct Fake(Vec<(usize, usize)>);
        impl DeviceCache for Fake {
            fn reserve(&mut self, capacity: usize, len: usize) {
                self.0.push((capacity, len));
            }
            fn memory_bytes(&self) -> usize {
                1234
            }
            fn as_any(&self) -> &dyn std::any::Any {
                self
            }
            fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
                self
            }
        }
        let mut c = KvCache::on_device(2, 1, 4, 8, KvType::F16, Box::new(Fake(Vec::new())));
        c.advance(3);
        c.reserve(4); // within capacity: nothing asked
        c.reserve(20);
        assert_eq!(c.capacity(), 20);
        assert_eq!(c.memory_bytes(), 1234);
        let fake = c.device().unwrap().as_any().downcast_ref::<Fake>().unwrap();
        assert_eq!(fake.0, vec![(20, 3)]);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.store(0, 0, 3, &[0.0; 4], &[0.0; 4])
        }));
        assert!(caught.is_err(), "store on a device cache");
    }

    #[test]
    #[should_panic(expected = "f16 cache")]
    fn head_refuses_an_f16_cache() {
        let c = KvCache::with_type(1, 1, 4, 1, KvType::F16);
        let _ = c.head(0, 0, 1);
    }
}
