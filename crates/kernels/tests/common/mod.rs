//! Deterministic random data for the kernel tests (no dependencies), and the thread CPU clock
//! the kernel benchmarks (examples/) time with.
#![allow(dead_code)]

use kiln_kernels::DType;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal, with occasional outliers like real activations.
    pub fn act(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.f32() - 0.5).sum();
        if self.next_u64() % 41 < 1 {
            s * 12.0
        } else {
            s
        }
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.act()).collect()
    }
}

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
}

/// `n` valid elements of `dtype`: random block bytes with finite, small scales.
pub fn random_weights(rng: &mut Rng, dtype: DType, n: usize) -> Vec<u8> {
    match dtype {
        DType::F32 => return rng.vec(n).iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => {
            return rng
                .vec(n)
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect()
        }
        DType::BF16 => {
            return rng
                .vec(n)
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect()
        }
        _ => {}
    }
    let bb = dtype.block_bytes();
    let nb = n / dtype.block_size();
    let mut out = vec![0u8; nb * bb];
    for b in out.chunks_exact_mut(bb) {
        for x in b.iter_mut() {
            *x = rng.next_u64() as u8;
        }
        let s = 0.002 + 0.02 * rng.f32();
        let m = 0.002 + 0.02 * rng.f32();
        match dtype {
            DType::Q4_0 | DType::Q5_0 | DType::Q8_0 | DType::IQ4_NL => put_f16(b, 0, s),
            // (sub-block scales up to ±32 times the grid's ±127: a smaller d)
            DType::IQ4_XS => put_f16(b, 0, s / 16.0),
            DType::Q4_1 | DType::Q5_1 | DType::Q8_1 => {
                put_f16(b, 0, s);
                put_f16(b, 2, -m);
            }
            DType::Q2_K => {
                put_f16(b, 80, s);
                put_f16(b, 82, m);
            }
            DType::Q3_K => put_f16(b, 108, s),
            DType::Q4_K | DType::Q5_K => {
                put_f16(b, 0, s);
                put_f16(b, 2, m);
            }
            DType::Q6_K => put_f16(b, 208, s),
            DType::Q8_K => b[0..4].copy_from_slice(&s.to_le_bytes()),
            _ => unreachable!(),
        }
    }
    out
}

pub const QUANT_TYPES: [DType; 14] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q8_1,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::Q8_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
];

/// CPU time the calling thread has run, in seconds (Linux `schedstat`; `None` elsewhere).
pub fn thread_cpu() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? * 1e-9)
}

/// Nanoseconds per call of `f` over >= 0.4 s of calls (after one warm-up call), as this
/// thread's CPU time (0 where the clock is missing): the examples' timer for one-thread kernels.
pub fn ns_per_call(mut f: impl FnMut()) -> f64 {
    let cpu = || thread_cpu().unwrap_or(0.0);
    f();
    let start = std::time::Instant::now();
    let t = cpu();
    let mut iters = 0u64;
    while start.elapsed().as_secs_f64() < 0.4 {
        for _ in 0..10 {
            f();
        }
        iters += 10;
    }
    (cpu() - t) * 1e9 / iters as f64
}
