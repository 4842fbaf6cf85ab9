//! Human-readable views of a GGUF file's metadata (`kiln inspect` describes loaded models).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::MetaValue;

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
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
