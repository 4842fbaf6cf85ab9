//! A human-readable description of a loaded model, for `kiln inspect`.

use std::collections::BTreeMap;
use std::fmt::Write;

use kiln_kernels::{DType, Tensor};

use crate::{LoadedModel, MetaValue, RopeScaling};

/// Number of tensors of each type, ordered by type name.
pub fn type_histogram(tensors: &BTreeMap<String, Tensor>) -> BTreeMap<&'static str, usize> {
    let mut h = BTreeMap::new();
    for t in tensors.values() {
        *h.entry(t.dtype.name()).or_insert(0) += 1;
    }
    h
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Architecture, sizes, attention layout, tensor type histogram and a memory estimate.
pub fn summary(model: &LoadedModel) -> String {
    let c = &model.config;
    let mut s = String::new();
    let name = model
        .metadata
        .get("general.name")
        .and_then(MetaValue::as_str);
    let _ = writeln!(s, "format:        {}", model.format);
    match name {
        Some(n) => {
            let _ = writeln!(s, "architecture:  {} ({n})", c.arch);
        }
        None => {
            let _ = writeln!(s, "architecture:  {}", c.arch);
        }
    }
    let _ = writeln!(
        s,
        "shape:         {} layers, hidden {}, ffn {}, vocab {}",
        c.n_layers, c.hidden_size, c.intermediate_size, c.vocab_size
    );
    let _ = writeln!(
        s,
        "attention:     {} query heads, {} kv heads, head dim {}{}",
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        match c.query_pre_attn_scalar {
            Some(q) => format!(", scores scaled by {q}^-0.5"),
            None => String::new(),
        }
    );
    let mut rope = format!("theta {}", c.rope_theta);
    if let Some(l) = c.rope_local_theta {
        let _ = write!(rope, " (sliding layers {l})");
    }
    let _ = write!(rope, ", {:?} pairs", c.rope_style);
    match &c.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            let _ = write!(rope, ", linear scaling x{factor}");
        }
        Some(RopeScaling::Llama3 {
            factor,
            original_max_position_embeddings,
            ..
        }) => {
            let _ = write!(
                rope,
                ", llama3 scaling x{factor} from {original_max_position_embeddings}"
            );
        }
        Some(RopeScaling::FreqFactors(f)) => {
            let _ = write!(rope, ", {} frequency factors", f.len());
        }
    }
    let _ = writeln!(s, "rope:          {rope}");
    let _ = writeln!(s, "context:       {} positions", c.max_position_embeddings);
    if let Some(w) = c.sliding_window {
        let n = (0..c.n_layers).filter(|&l| c.is_sliding(l)).count();
        let _ = writeln!(
            s,
            "sliding:       window {w} on {n} of {} layers",
            c.n_layers
        );
    }
    let _ = writeln!(s, "norm eps:      {}", c.rms_norm_eps);
    let _ = writeln!(
        s,
        "output:        {}",
        if c.tie_word_embeddings {
            "tied to token_embd"
        } else {
            "own matrix"
        }
    );
    let ids = |v: &[u32]| {
        v.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "tokens:        bos {}, eos [{}]",
        c.bos_token_id.map_or("none".to_string(), |b| b.to_string()),
        ids(&c.eos_token_ids)
    );
    let _ = writeln!(
        s,
        "chat template: {}",
        if model.chat_template.is_some() {
            "yes"
        } else {
            "no"
        }
    );
    let n_params: usize = model.tensors.values().map(|t| t.n_elements()).sum();
    let bytes: usize = model.tensors.values().map(|t| t.data.len()).sum();
    let _ = writeln!(
        s,
        "parameters:    {:.3} M ({} tensors)",
        n_params as f64 / 1e6,
        model.tensors.len()
    );
    let hist: Vec<String> = type_histogram(&model.tensors)
        .into_iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    let _ = writeln!(s, "tensor types:  {}", hist.join(", "));
    let quant_bytes: usize = model
        .tensors
        .values()
        .filter(|t| t.dtype != DType::F32)
        .map(|t| t.data.len())
        .sum();
    let _ = writeln!(
        s,
        "memory:        weights {} ({:.2} bits/weight; {} in non-F32 tensors), KV cache (f32) {} per 1024 tokens, {} at full context",
        mib(bytes),
        if n_params == 0 { 0.0 } else { bytes as f64 * 8.0 / n_params as f64 },
        mib(quant_bytes),
        mib(c.kv_cache_bytes_f32(1024)),
        mib(c.kv_cache_bytes_f32(c.max_position_embeddings)),
    );
    s
}

/// A short rendering of a metadata value: arrays show their length and first few items, long
/// strings are cut (with their length given).
pub fn short_value(v: &MetaValue) -> String {
    const MAX_STR: usize = 60;
    match v {
        MetaValue::String(s) => {
            let one_line: String = s.chars().map(|c| if c == '\n' { '⏎' } else { c }).collect();
            if one_line.chars().count() > MAX_STR {
                let cut: String = one_line.chars().take(MAX_STR).collect();
                format!("{cut:?}… ({} bytes)", s.len())
            } else {
                format!("{one_line:?}")
            }
        }
        MetaValue::Array(a) => {
            let head: Vec<String> = a.iter().take(4).map(short_value).collect();
            let more = if a.len() > 4 { ", …" } else { "" };
            format!("[{} items: {}{more}]", a.len(), head.join(", "))
        }
        MetaValue::U8(x) => x.to_string(),
        MetaValue::I8(x) => x.to_string(),
        MetaValue::U16(x) => x.to_string(),
        MetaValue::I16(x) => x.to_string(),
        MetaValue::U32(x) => x.to_string(),
        MetaValue::I32(x) => x.to_string(),
        MetaValue::U64(x) => x.to_string(),
        MetaValue::I64(x) => x.to_string(),
        MetaValue::F32(x) => x.to_string(),
        MetaValue::F64(x) => x.to_string(),
        MetaValue::Bool(x) => x.to_string(),
    }
}

/// Every metadata key with a short value, then (when `tensors` is set) every tensor with its type,
/// shape and offset: a view of any GGUF file, even one whose architecture kiln does not run.
pub fn describe_gguf(file: &crate::GgufFile, tensors: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "GGUF v{}, {} metadata keys, {} tensors, alignment {}, data at offset {}, {} bytes",
        file.version,
        file.metadata.len(),
        file.tensors.len(),
        file.alignment,
        file.data_offset,
        file.file_size()
    );
    for (k, v) in &file.metadata {
        let _ = writeln!(s, "  {k} = {}", short_value(v));
    }
    let mut hist: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for t in &file.tensors {
        let e = hist.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    let h: Vec<String> = hist
        .iter()
        .map(|(t, (n, b))| format!("{t} {n} ({})", mib(*b)))
        .collect();
    let _ = writeln!(s, "tensor types: {}", h.join(", "));
    if tensors {
        for t in &file.tensors {
            let _ = writeln!(
                s,
                "  {:<40} {:<5} {:?} @ {}",
                t.name,
                t.dtype.name(),
                t.shape,
                t.offset
            );
        }
    }
    s
}
