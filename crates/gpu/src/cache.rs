//! A sequence's KV cache on the device: per layer, one key and one value buffer laid out
//! `[kv_head][position][head_dim]`, in f32 or f16 (two halves per 32-bit word).

use std::any::Any;
use std::sync::Arc;

use kiln_models::{DeviceCache, KvType};

use crate::ops::KvSlot;
use crate::Gpu;

pub struct GpuKv {
    gpu: Arc<Gpu>,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    kv_type: KvType,
    k: Vec<wgpu::Buffer>,
    v: Vec<wgpu::Buffer>,
}

impl GpuKv {
    pub fn new(
        gpu: Arc<Gpu>,
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        kv_type: KvType,
    ) -> GpuKv {
        let size = layer_bytes(n_kv_heads, head_dim, capacity, kv_type);
        let k = (0..n_layers).map(|_| gpu.buffer(size, "kv:k")).collect();
        let v = (0..n_layers).map(|_| gpu.buffer(size, "kv:v")).collect();
        GpuKv {
            gpu,
            n_kv_heads,
            head_dim,
            capacity,
            kv_type,
            k,
            v,
        }
    }

    /// Layer `l` as the kernels see it.
    pub fn slot(&self, l: usize) -> KvSlot<'_> {
        KvSlot {
            k: &self.k[l],
            v: &self.v[l],
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            capacity: self.capacity,
            f16: self.kv_type == KvType::F16,
        }
    }

    /// Whether this cache lives on `gpu`.
    pub fn on(&self, gpu: &Arc<Gpu>) -> bool {
        Arc::ptr_eq(&self.gpu, gpu)
    }
}

fn layer_bytes(n_kv_heads: usize, head_dim: usize, capacity: usize, t: KvType) -> u64 {
    (n_kv_heads * capacity * head_dim * t.size()) as u64
}

impl DeviceCache for GpuKv {
    fn reserve(&mut self, capacity: usize, len: usize) {
        if capacity <= self.capacity {
            return;
        }
        let size = layer_bytes(self.n_kv_heads, self.head_dim, capacity, self.kv_type);
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let head_old = (self.capacity * self.head_dim * self.kv_type.size()) as u64;
        let head_new = (capacity * self.head_dim * self.kv_type.size()) as u64;
        let used = (len * self.head_dim * self.kv_type.size()) as u64;
        let grow = |old: &mut Vec<wgpu::Buffer>, enc: &mut wgpu::CommandEncoder| {
            for b in old.iter_mut() {
                let nb = self.gpu.buffer(size, "kv");
                if used > 0 {
                    for h in 0..self.n_kv_heads as u64 {
                        // copies are in 4-byte units; an f16 cache's odd tail half is spare
                        let n = used.next_multiple_of(4);
                        enc.copy_buffer_to_buffer(b, h * head_old, &nb, h * head_new, n);
                    }
                }
                *b = nb;
            }
        };
        grow(&mut self.k, &mut enc);
        grow(&mut self.v, &mut enc);
        self.gpu.queue.submit([enc.finish()]);
        self.capacity = capacity;
    }

    fn memory_bytes(&self) -> usize {
        2 * self.k.len()
            * layer_bytes(self.n_kv_heads, self.head_dim, self.capacity, self.kv_type) as usize
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
