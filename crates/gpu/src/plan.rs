//! Does a model fit a device? The device bytes of each offloadable layer (weights as uploaded,
//! the KV cache of a context's positions, the pass's scratch buffers), computed from the
//! tensors' types and shapes before anything is uploaded, against what the adapter offers: its
//! memory (where it reports it, or a cap the caller sets) and its largest binding (every buffer
//! of a pass is bound whole).
//!
//! llama.cpp counts `n_layers + 1` offloadable layers (the blocks and the output layer) and
//! offloads the output layer first, then blocks from the last (see `crate::split`).

use kiln_formats::{LoadedModel, ModelConfig};
use kiln_models::KvType;

use crate::split::GpuLayers;
use crate::upload::device_row_bytes;
use crate::GpuError;

/// A model's device bytes, layer by layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needs {
    pub n_layers: usize,
    /// Weights of each block as uploaded (matrices in their padded blocks, vectors as f32).
    pub blocks: Vec<u64>,
    /// The token embedding as uploaded (on the device only when every layer is).
    pub embed: u64,
    /// The output layer: final norm and output matrix (the embedding's bytes when tied).
    pub output: u64,
    /// Whether the output matrix is the embedding (then a full offload holds it once).
    pub tied: bool,
    /// One block's keys and values for `positions` positions.
    pub kv_per_block: u64,
    /// One block's key (or value) buffer: the largest binding the cache needs.
    pub kv_buffer: u64,
    pub positions: usize,
    /// Activation buffers of a pass of `rows` tokens.
    pub scratch: u64,
    /// The largest scratch buffer.
    pub scratch_buffer: u64,
}

/// Device bytes of one placement, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub weights: u64,
    pub kv: u64,
    pub scratch: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.weights + self.kv + self.scratch
    }
}

/// Bytes as people read them: "1.5 GiB", "12.0 MiB".
pub fn human(b: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    if b as f64 >= GIB {
        format!("{:.2} GiB", b as f64 / GIB)
    } else {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    }
}

/// Logits rows one pass reads back at a time (`model.rs` allocates this many).
pub(crate) fn logit_chunk(max_binding: u64, vocab: usize) -> usize {
    ((max_binding as usize / 4) / vocab.max(1)).clamp(1, 256)
}

impl Needs {
    /// The device bytes of `model` with an `kv_type` cache of `positions` positions and passes
    /// of up to `rows` tokens, on a device whose bindings cover at most `max_binding` bytes.
    pub fn of(
        model: &LoadedModel,
        kv_type: KvType,
        positions: usize,
        rows: usize,
        max_binding: u64,
    ) -> Result<Needs, GpuError> {
        let c = &model.config;
        let mut blocks = vec![0u64; c.n_layers];
        let mut embed = 0;
        let mut output = 0;
        let mut output_matrix = false;
        for (name, t) in &model.tensors {
            let bytes = if t.shape.len() >= 2 {
                let row = device_row_bytes(t.dtype, t.cols()).ok_or_else(|| {
                    GpuError::Unsupported(format!(
                        "{name}: the GPU kernels do not read {} weights",
                        t.dtype
                    ))
                })?;
                (t.n_elements() / t.cols().max(1) * row) as u64
            } else {
                (t.n_elements() * 4) as u64
            };
            if let Some(l) = name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|l| l.parse::<usize>().ok())
            {
                if let Some(b) = blocks.get_mut(l) {
                    *b += bytes;
                }
            } else if name == "token_embd.weight" {
                embed = bytes;
            } else if name == "output.weight" {
                output += bytes;
                output_matrix = true;
            } else if name == "output_norm.weight" {
                output += bytes;
            }
        }
        let tied = !output_matrix;
        if tied {
            output += embed;
        }
        let elem = kv_type.size() as u64;
        let kv_buffer = (c.n_kv_heads * c.head_dim * positions) as u64 * elem;
        let (scratch, scratch_buffer) = scratch_bytes(c, rows, max_binding);
        Ok(Needs {
            n_layers: c.n_layers,
            blocks,
            embed,
            output,
            tied,
            kv_per_block: 2 * kv_buffer,
            kv_buffer,
            positions,
            scratch,
            scratch_buffer,
        })
    }

    /// Offloadable layers: the blocks and the output layer.
    pub fn layers(&self) -> usize {
        self.n_layers + 1
    }

    /// Device bytes with `gpu_layers` layers offloaded (llama.cpp's order).
    pub fn usage(&self, gpu_layers: usize) -> Usage {
        let gpu_layers = gpu_layers.min(self.layers());
        if gpu_layers == 0 {
            return Usage::default();
        }
        let first = crate::split::cpu_blocks(self.n_layers, gpu_layers);
        let gpu_blocks = (self.n_layers - first) as u64;
        let mut weights = self.output + self.blocks[first..].iter().sum::<u64>();
        if gpu_layers == self.layers() && !self.tied {
            weights += self.embed;
        }
        Usage {
            weights,
            kv: gpu_blocks * self.kv_per_block,
            scratch: self.scratch,
        }
    }

    /// Why `gpu_layers` layers cannot run on a device with `memory` bytes (`None`: not
    /// reported) and bindings of `max_binding` bytes; `None` when they fit.
    pub fn misfit(
        &self,
        gpu_layers: usize,
        memory: Option<u64>,
        max_binding: u64,
    ) -> Option<String> {
        if gpu_layers == 0 {
            return None;
        }
        let u = self.usage(gpu_layers);
        if self.scratch_buffer > max_binding {
            return Some(format!(
                "a pass's activations need a {} buffer, over the device's largest binding ({})",
                human(self.scratch_buffer),
                human(max_binding)
            ));
        }
        if u.kv > 0 && self.kv_buffer > max_binding {
            return Some(format!(
                "one layer's keys for {} positions need {}, over the device's largest binding ({}); -c fewer positions fits",
                self.positions,
                human(self.kv_buffer),
                human(max_binding)
            ));
        }
        match memory {
            Some(m) if u.total() > m => Some(format!(
                "{} layers need {} (weights {}, KV cache {} for {} positions, scratch {}) and the device offers {}",
                gpu_layers.min(self.layers()),
                human(u.total()),
                human(u.weights),
                human(u.kv),
                self.positions,
                human(u.scratch),
                human(m)
            )),
            _ => None,
        }
    }

    /// The most layers (up to `at_most`) that fit.
    pub fn fit(&self, at_most: usize, memory: Option<u64>, max_binding: u64) -> usize {
        (0..=at_most.min(self.layers()))
            .rev()
            .find(|&n| self.misfit(n, memory, max_binding).is_none())
            .unwrap_or(0)
    }
}

/// The bytes of `model.rs`'s activation buffers for passes of `rows` tokens, and the largest.
fn scratch_bytes(c: &ModelConfig, rows: usize, max_binding: u64) -> (u64, u64) {
    let rows = rows.max(1);
    let logit_rows = logit_chunk(max_binding, c.vocab_size);
    let (d, qd, kvd) = (
        c.hidden_size,
        c.n_heads * c.head_dim,
        c.n_kv_heads * c.head_dim,
    );
    let f = |n: usize| ((n * 4).max(16) as u64).next_multiple_of(4);
    let per_row = [
        d,
        d,
        qd,
        kvd,
        kvd,
        qd,
        d,
        c.intermediate_size,
        c.intermediate_size,
        1,
        c.head_dim,
    ];
    let per_logit = [1, d, d, c.vocab_size];
    let bufs: Vec<u64> = per_row
        .iter()
        .map(|&w| f(rows * w))
        .chain(per_logit.iter().map(|&w| f(logit_rows * w)))
        .collect();
    (bufs.iter().sum(), bufs.iter().copied().max().unwrap_or(0))
}

/// Where a model runs: how many of its `n_layers + 1` layers go to the GPU (0: the CPU), and
/// a line saying why when that is fewer than asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub gpu_layers: usize,
    pub why: Option<String>,
}

/// Decides the layers for `ask` on a device offering `memory` bytes (`None`: unknown) and
/// bindings of `max_binding` bytes. `fall_back` (`--device auto`) turns a misfit into as many
/// layers as fit (maybe none) with a reason; otherwise a misfit of `all` or a count is an error
/// that names the largest count that fits. `Fit` always takes as many as fit.
pub fn decide(
    needs: &Needs,
    ask: GpuLayers,
    memory: Option<u64>,
    max_binding: u64,
    fall_back: bool,
) -> Result<Decision, String> {
    let want = match ask {
        GpuLayers::All | GpuLayers::Fit => needs.layers(),
        GpuLayers::Count(n) => n.min(needs.layers()),
    };
    let Some(why) = needs.misfit(want, memory, max_binding) else {
        return Ok(Decision {
            gpu_layers: want,
            why: None,
        });
    };
    let fits = needs.fit(want, memory, max_binding);
    if fall_back || ask == GpuLayers::Fit {
        let why = if fits == 0 {
            format!("the model does not fit: {why}")
        } else {
            format!(
                "{fits} of {} layers on the GPU (-ngl {fits}), the rest on the CPU: {why}",
                needs.layers()
            )
        };
        return Ok(Decision {
            gpu_layers: fits,
            why: Some(why),
        });
    }
    let hint = if fits > 0 {
        format!(
            "; -ngl {fits} fits ({fits} of {} layers on the GPU, the other blocks on the CPU)",
            needs.layers()
        )
    } else {
        "; not even the output layer fits (--device cpu runs it on the CPU)".into()
    };
    Err(format!("the model does not fit the GPU: {why}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 blocks of 100 bytes, an embedding of 50, an untied output layer of 30, KV 10 per block,
    /// scratch 5: the totals llama.cpp's order gives, and what each request decides.
    fn needs(tied: bool) -> Needs {
        Needs {
            n_layers: 4,
            blocks: vec![100; 4],
            embed: 50,
            output: if tied { 50 } else { 30 },
            tied,
            kv_per_block: 10,
            kv_buffer: 5,
            positions: 8,
            scratch: 5,
            scratch_buffer: 4,
        }
    }

    #[test]
    fn usage_follows_llama_cpp_s_order() {
        let n = needs(false);
        assert_eq!(n.usage(0).total(), 0);
        // the output layer alone, then blocks from the last, then the embedding with all
        assert_eq!(
            n.usage(1),
            Usage {
                weights: 30,
                kv: 0,
                scratch: 5
            }
        );
        assert_eq!(
            n.usage(2),
            Usage {
                weights: 130,
                kv: 10,
                scratch: 5
            }
        );
        assert_eq!(
            n.usage(4),
            Usage {
                weights: 330,
                kv: 30,
                scratch: 5
            }
        );
        assert_eq!(
            n.usage(5),
            Usage {
                weights: 480,
                kv: 40,
                scratch: 5
            }
        );
        assert_eq!(n.usage(99), n.usage(5));
        // tied: the output is the embedding, held once
        assert_eq!(needs(true).usage(5).weights, 450);
        assert_eq!(crate::split::cpu_blocks(4, 0), 4);
        assert_eq!(crate::split::cpu_blocks(4, 1), 4);
        assert_eq!(crate::split::cpu_blocks(4, 2), 3);
        assert_eq!(crate::split::cpu_blocks(4, 5), 0);
        assert_eq!(crate::split::cpu_blocks(4, 50), 0);
    }

    #[test]
    fn decisions_fit_fall_back_or_explain() {
        let n = needs(false);
        let all = decide(&n, GpuLayers::All, Some(1000), 1 << 20, false).unwrap();
        assert_eq!(
            all,
            Decision {
                gpu_layers: 5,
                why: None
            }
        );
        // unknown memory: only the bindings are checked
        assert_eq!(
            decide(&n, GpuLayers::All, None, 1 << 20, false)
                .unwrap()
                .gpu_layers,
            5
        );
        // 250 bytes: 2 layers (145) fit, 3 (255) do not
        let err = decide(&n, GpuLayers::All, Some(250), 1 << 20, false).unwrap_err();
        assert!(err.contains("-ngl 2 fits"), "{err}");
        assert!(err.contains("5 layers need"), "{err}");
        let err = decide(&n, GpuLayers::Count(3), Some(250), 1 << 20, false).unwrap_err();
        assert!(
            err.contains("3 layers need") && err.contains("-ngl 2 fits"),
            "{err}"
        );
        for (ask, fall_back) in [(GpuLayers::Fit, false), (GpuLayers::All, true)] {
            let d = decide(&n, ask, Some(250), 1 << 20, fall_back).unwrap();
            assert_eq!(d.gpu_layers, 2);
            assert!(d.why.unwrap().starts_with("2 of 5 layers on the GPU"));
        }
        assert_eq!(
            decide(&n, GpuLayers::Count(2), Some(250), 1 << 20, false)
                .unwrap()
                .gpu_layers,
            2
        );
        // nothing fits: the CPU under auto, an error otherwise
        let d = decide(&n, GpuLayers::All, Some(10), 1 << 20, true).unwrap();
        assert_eq!(d.gpu_layers, 0);
        assert!(d.why.unwrap().starts_with("the model does not fit"));
        let err = decide(&n, GpuLayers::All, Some(10), 1 << 20, false).unwrap_err();
        assert!(err.contains("not even the output layer"), "{err}");
        // a KV buffer over the binding limit: only the output layer (no cache) fits
        assert_eq!(
            decide(&n, GpuLayers::Fit, None, 4, false)
                .unwrap()
                .gpu_layers,
            1
        );
        let err = decide(&n, GpuLayers::All, None, 4, false).unwrap_err();
        assert!(err.contains("-c fewer positions"), "{err}");
    }

    #[test]
    fn layer_counts_parse_as_llama_cpp_spells_them() {
        assert_eq!("all".parse::<GpuLayers>(), Ok(GpuLayers::All));
        assert_eq!("AUTO".parse::<GpuLayers>(), Ok(GpuLayers::Fit));
        assert_eq!("12".parse::<GpuLayers>(), Ok(GpuLayers::Count(12)));
        assert!("-1".parse::<GpuLayers>().is_err());
        assert!("lots".parse::<GpuLayers>().is_err());
    }
}
