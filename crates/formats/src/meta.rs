//! Meta's original Llama checkpoints: a directory with `params.json`, `consolidated.00.pth` …
//! `consolidated.NN.pth` (one PyTorch state dict per model-parallel rank) and `tokenizer.model`
//! (SentencePiece for Llama 1/2 and Code Llama, tiktoken for Llama 3).
//!
//! Shards are merged the way fairscale split them: column-parallel weights (`wq wk wv w1 w3
//! output`) are concatenated along dimension 0, row-parallel ones (`wo w2`) along dimension 1,
//! `tok_embeddings` along dimension 1 (Llama 2 / Code Llama `ParallelEmbedding`) or dimension 0
//! (Llama 3 `VocabParallelEmbedding`; recognised because each shard then has all `dim` columns),
//! and norms are replicated (checked equal). `rope.freqs` is ignored, as `Llama.build` does.
//!
//! Rope layout: Meta's code rotates adjacent pairs `(2i, 2i+1)` of each head (it views a head as
//! `head_dim/2` complex numbers). Hugging Face's conversion script permutes the rows of `wq`/`wk`
//! so that its "rotate half" rope pairs `i` with `i + head_dim/2` instead, and llama.cpp's
//! converter undoes that permutation when it writes a GGUF `llama` model, whose rope also rotates
//! adjacent pairs. So Meta's `wq`/`wk` rows are already in the GGUF `llama` order: they are used
//! as they are, with [`RopeStyle::Interleaved`], and no permutation is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kiln_kernels::ops::RopeStyle;
use kiln_kernels::{Storage, Tensor};
use serde::Deserialize;

use crate::pytorch::{PthFile, TensorInfo};
use crate::{
    Arch, FormatError, LoadedModel, MetaValue, ModelConfig, Result, RopeScaling, TokenizerSource,
};

/// `params.json` as Meta's `ModelArgs` reads it (fields it does not know are ignored).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct MetaParams {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    #[serde(default)]
    pub n_kv_heads: Option<usize>,
    /// `-1` (Llama 1/2): taken from the tokenizer, here from `tok_embeddings`' shape.
    #[serde(default = "default_vocab")]
    pub vocab_size: i64,
    #[serde(default = "default_multiple_of")]
    pub multiple_of: usize,
    #[serde(default)]
    pub ffn_dim_multiplier: Option<f64>,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Llama 3.1 and later: Llama 3 frequency scaling.
    #[serde(default)]
    pub use_scaled_rope: Option<bool>,
    #[serde(default)]
    pub rope_scaling_factor: Option<f64>,
    #[serde(default)]
    pub rope_high_freq_factor: Option<f64>,
    #[serde(default)]
    pub max_seq_len: Option<usize>,
}

fn default_vocab() -> i64 {
    -1
}
fn default_multiple_of() -> usize {
    256
}
fn default_norm_eps() -> f64 {
    1e-5
}

/// Meta's FFN width: `int(2 * 4 * dim / 3)`, times `ffn_dim_multiplier` (truncated) when set,
/// rounded up to a multiple of `multiple_of`.
pub fn ffn_hidden_size(dim: usize, multiple_of: usize, ffn_dim_multiplier: Option<f64>) -> usize {
    let mut hidden = (2.0 * (4 * dim) as f64 / 3.0) as usize;
    if let Some(m) = ffn_dim_multiplier {
        hidden = (m * hidden as f64) as usize;
    }
    let m = multiple_of.max(1);
    hidden.div_ceil(m) * m
}

/// What `tokenizer.model` is.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerKind {
    /// A SentencePiece model: its piece count and the special ids its trainer spec sets.
    SentencePiece {
        pieces: usize,
        bos: Option<u32>,
        eos: Option<u32>,
    },
    /// A tiktoken rank file (Llama 3): `ranks` ordinary tokens; Llama 3 appends 256 special
    /// tokens after them (`<|begin_of_text|>` = ranks, `<|end_of_text|>` = ranks + 1,
    /// `<|eot_id|>` = ranks + 9).
    Tiktoken { ranks: usize },
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> FormatError {
    FormatError::Invalid(format!("{}: {msg}", path.display()))
}

fn io(path: &Path, source: std::io::Error) -> FormatError {
    FormatError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads and checks `params.json`.
pub fn read_params(path: &Path) -> Result<MetaParams> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let p: MetaParams = serde_json::from_str(&text).map_err(|e| bad(path, e))?;
    let fail = |m: String| Err(bad(path, m));
    if p.dim == 0 || p.n_heads == 0 || p.n_layers == 0 || p.dim > (1 << 20) || p.n_layers > 4096 {
        return fail(format!(
            "implausible dim {} / n_heads {} / n_layers {}",
            p.dim, p.n_heads, p.n_layers
        ));
    }
    if !p.dim.is_multiple_of(p.n_heads) || !(p.dim / p.n_heads).is_multiple_of(2) {
        return fail(format!(
            "dim {} is not n_heads {} times an even head size",
            p.dim, p.n_heads
        ));
    }
    let kv = p.n_kv_heads.unwrap_or(p.n_heads);
    if kv == 0 || kv > p.n_heads || !p.n_heads.is_multiple_of(kv) {
        return fail(format!(
            "n_kv_heads {kv} does not divide n_heads {}",
            p.n_heads
        ));
    }
    if p.multiple_of == 0 || p.multiple_of > (1 << 20) {
        return fail(format!("multiple_of {} is implausible", p.multiple_of));
    }
    if let Some(m) = p.ffn_dim_multiplier {
        if !(m.is_finite() && m > 0.0 && m < 64.0) {
            return fail(format!("ffn_dim_multiplier {m} is implausible"));
        }
    }
    if !(p.norm_eps.is_finite() && p.norm_eps > 0.0) {
        return fail(format!("norm_eps {} is not positive", p.norm_eps));
    }
    if p.rope_theta.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
        return fail("rope_theta is not positive".into());
    }
    Ok(p)
}

fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let x = *b.get(*at)?;
        *at += 1;
        v |= ((x & 0x7f) as u64) << shift;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Walks the fields of one protobuf message: calls `f(field, wire_type, varint_value, bytes)`.
fn proto_fields(b: &[u8], mut f: impl FnMut(u64, u64, u64, &[u8])) -> Option<()> {
    let mut at = 0;
    while at < b.len() {
        let key = varint(b, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = varint(b, &mut at)?;
                f(field, wire, v, &[]);
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                let body = b.get(at..at.checked_add(n)?)?;
                at += n;
                f(field, wire, 0, body);
            }
            2 => {
                let n = usize::try_from(varint(b, &mut at)?).ok()?;
                let body = b.get(at..at.checked_add(n)?)?;
                at += n;
                f(field, wire, 0, body);
            }
            _ => return None,
        }
    }
    Some(())
}

/// Tells a SentencePiece model from a tiktoken rank file, and reads what the loader needs.
pub fn sniff_tokenizer(path: &Path) -> Result<TokenizerKind> {
    let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
    if meta.len() > 256 << 20 {
        return Err(bad(path, "tokenizer file larger than 256 MiB"));
    }
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    // tiktoken: lines `<base64 token> <rank>`.
    let is_tiktoken_line = |l: &str| {
        let mut it = l.split(' ');
        match (it.next(), it.next(), it.next()) {
            (Some(tok), Some(rank), None) => {
                !tok.is_empty()
                    && tok
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c))
                    && !rank.is_empty()
                    && rank.bytes().all(|c| c.is_ascii_digit())
            }
            _ => false,
        }
    };
    if let Ok(text) = std::str::from_utf8(&bytes) {
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        if !lines.is_empty() && lines.iter().all(|l| is_tiktoken_line(l)) {
            return Ok(TokenizerKind::Tiktoken { ranks: lines.len() });
        }
    }
    // SentencePiece ModelProto: field 1 = pieces (repeated), field 2 = trainer_spec with
    // unk_id = 40, bos_id = 41, eos_id = 42 (defaults 0, 1, 2; -1 disables).
    let mut pieces = 0usize;
    let (mut bos, mut eos) = (1i64, 2i64);
    let mut spec_ok = true;
    let ok = proto_fields(&bytes, |field, wire, _, body| match (field, wire) {
        (1, 2) => pieces += 1,
        (2, 2) => {
            spec_ok &= proto_fields(body, |f, w, v, _| match (f, w) {
                (41, 0) => bos = v as i32 as i64,
                (42, 0) => eos = v as i32 as i64,
                _ => {}
            })
            .is_some();
        }
        _ => {}
    });
    if ok.is_none() || !spec_ok || pieces == 0 {
        return Err(bad(
            path,
            "neither a SentencePiece model nor a tiktoken rank file",
        ));
    }
    let id = |v: i64| u32::try_from(v).ok();
    Ok(TokenizerKind::SentencePiece {
        pieces,
        bos: id(bos),
        eos: id(eos),
    })
}

/// How a tensor is split across model-parallel shards.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Split {
    Axis(usize),
    /// tok_embeddings: dimension 1 (Llama 2) or 0 (Llama 3), told apart from the shapes.
    Embedding,
    Replicated,
}

/// The canonical name and split of a Meta tensor name; `None` for names Meta models lack.
fn canonical(name: &str) -> Option<(String, Split)> {
    let fixed = match name {
        "tok_embeddings.weight" => Some(("token_embd.weight", Split::Embedding)),
        "norm.weight" => Some(("output_norm.weight", Split::Replicated)),
        "output.weight" => Some(("output.weight", Split::Axis(0))),
        _ => None,
    };
    if let Some((n, s)) = fixed {
        return Some((n.to_string(), s));
    }
    let rest = name.strip_prefix("layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|c| c.is_ascii_digit()) || layer.len() > 6 {
        return None;
    }
    let layer: usize = layer.parse().ok()?;
    let (part, split) = match rest {
        "attention.wq.weight" => ("attn_q", Split::Axis(0)),
        "attention.wk.weight" => ("attn_k", Split::Axis(0)),
        "attention.wv.weight" => ("attn_v", Split::Axis(0)),
        "attention.wo.weight" => ("attn_output", Split::Axis(1)),
        "feed_forward.w1.weight" => ("ffn_gate", Split::Axis(0)),
        "feed_forward.w3.weight" => ("ffn_up", Split::Axis(0)),
        "feed_forward.w2.weight" => ("ffn_down", Split::Axis(1)),
        "attention_norm.weight" => ("attn_norm", Split::Replicated),
        "ffn_norm.weight" => ("ffn_norm", Split::Replicated),
        _ => return None,
    };
    Some((format!("blk.{layer}.{part}.weight"), split))
}

/// The `consolidated.NN.pth` files of `dir`, in rank order, checked to be 0..n without gaps.
fn find_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: BTreeMap<usize, PathBuf> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(idx) = name
            .strip_prefix("consolidated.")
            .and_then(|r| r.strip_suffix(".pth"))
        else {
            continue;
        };
        if idx.is_empty() || idx.len() > 4 || !idx.bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let i: usize = idx.parse().unwrap_or(usize::MAX);
        if let Some(prev) = found.insert(i, entry.path()) {
            return Err(bad(
                dir,
                format!("two files for shard {i}: {} and {name}", prev.display()),
            ));
        }
    }
    if found.is_empty() {
        return Err(bad(dir, "no consolidated.NN.pth checkpoint shards"));
    }
    let n = found.keys().next_back().map_or(0, |&k| k + 1);
    let missing: Vec<String> = (0..n)
        .filter(|i| !found.contains_key(i))
        .map(|i| format!("consolidated.{i:02}.pth"))
        .collect();
    if !missing.is_empty() {
        return Err(bad(
            dir,
            format!("missing checkpoint shard(s) {} of {n}", missing.join(", ")),
        ));
    }
    Ok(found.into_values().collect())
}

fn locate_tokenizer(dir: &Path, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(bad(p, "tokenizer file not found"));
        }
        return Ok(p.to_path_buf());
    }
    let here = dir.join("tokenizer.model");
    if here.is_file() {
        return Ok(here);
    }
    // Meta's Llama 2 downloads keep one tokenizer.model beside the model folders.
    if let Some(parent) = dir.parent() {
        let up = parent.join("tokenizer.model");
        if up.is_file() {
            return Ok(up);
        }
    }
    Err(bad(
        dir,
        "no tokenizer.model here or in the parent folder (pass the tokenizer path)",
    ))
}

/// Concatenates shard tensors along `axis`; every shard has the same shape outside `axis`.
fn concat(parts: &[Tensor], axis: usize) -> Vec<u8> {
    let shape = &parts[0].shape;
    let elem = parts[0].data.len() / parts[0].n_elements().max(1);
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product::<usize>() * elem;
    let total: usize = parts.iter().map(|p| p.data.len()).sum();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for p in parts {
            let chunk = p.shape[axis] * inner;
            out.extend_from_slice(&p.data.bytes()[o * chunk..(o + 1) * chunk]);
        }
    }
    out
}

/// Reads a Meta checkpoint directory, with its `tokenizer.model` (in `dir` or its parent).
pub fn load_meta_dir(dir: &Path) -> Result<LoadedModel> {
    load_meta_with_tokenizer(dir, None)
}

/// True when `dir` looks like a Meta checkpoint (`params.json` and `consolidated.00.pth`).
pub fn is_meta_dir(dir: &Path) -> bool {
    dir.join("params.json").is_file() && dir.join("consolidated.00.pth").is_file()
}

/// Reads a Meta checkpoint directory; `tokenizer_path` overrides where `tokenizer.model` is
/// looked for (`--ckpt-dir DIR --tokenizer-path FILE`).
pub fn load_meta_with_tokenizer(dir: &Path, tokenizer_path: Option<&Path>) -> Result<LoadedModel> {
    let params_path = dir.join("params.json");
    let params = read_params(&params_path)?;
    let tok_path = locate_tokenizer(dir, tokenizer_path)?;
    let tok_kind = sniff_tokenizer(&tok_path)?;
    let shard_paths = find_shards(dir)?;
    let shards = shard_paths
        .iter()
        .map(|p| PthFile::open(p))
        .collect::<Result<Vec<_>>>()?;
    let n = shards.len();
    let shard_name = |i: usize| format!("consolidated.{i:02}.pth");

    // Every shard must hold the same tensors.
    let names: BTreeSet<&String> = shards.iter().flat_map(|s| s.tensors().keys()).collect();
    for (i, s) in shards.iter().enumerate() {
        if let Some(missing) = names.iter().find(|k| !s.tensors().contains_key(k.as_str())) {
            return Err(bad(
                dir,
                format!(
                    "shard {} lacks tensor `{missing}` that other shards have",
                    shard_name(i)
                ),
            ));
        }
    }

    // Merge, tensor by tensor.
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for &name in &names {
        if name == "rope.freqs" {
            continue;
        }
        let Some((canon, split)) = canonical(name) else {
            return Err(bad(
                dir,
                format!("unexpected tensor `{name}` in a Meta Llama checkpoint"),
            ));
        };
        let infos: Vec<&TensorInfo> = shards.iter().map(|s| &s.tensors()[name]).collect();
        let first = infos[0];
        for (i, info) in infos.iter().enumerate() {
            if info.kind != first.kind {
                return Err(bad(
                    dir,
                    format!(
                        "tensor `{name}` is {} in {} but {} in {}",
                        first.kind.class_name(),
                        shard_name(0),
                        info.kind.class_name(),
                        shard_name(i)
                    ),
                ));
            }
            if info.shape.len() != first.shape.len() {
                return Err(bad(
                    dir,
                    format!(
                        "tensor `{name}` has shape {:?} in {} but {:?} in {}",
                        first.shape,
                        shard_name(0),
                        info.shape,
                        shard_name(i)
                    ),
                ));
            }
        }
        let tensor = if n == 1 {
            shards[0].tensor(name)?
        } else {
            let parts = shards
                .iter()
                .map(|s| s.tensor(name))
                .collect::<Result<Vec<_>>>()?;
            let axis = match split {
                Split::Axis(a) => Some(a),
                Split::Replicated => None,
                Split::Embedding => Some(if first.shape.get(1) == Some(&params.dim) {
                    0
                } else {
                    1
                }),
            };
            match axis {
                None => {
                    for (i, p) in parts.iter().enumerate() {
                        if p.shape != parts[0].shape || p.data.bytes() != parts[0].data.bytes() {
                            return Err(bad(
                                dir,
                                format!(
                                    "replicated tensor `{name}` differs between {} and {}",
                                    shard_name(0),
                                    shard_name(i)
                                ),
                            ));
                        }
                    }
                    parts[0].clone()
                }
                Some(axis) => {
                    if axis >= first.shape.len() {
                        return Err(bad(dir, format!("tensor `{name}` has shape {:?}: it cannot be split along dimension {axis}", first.shape)));
                    }
                    let mut shape = first.shape.clone();
                    for (i, info) in infos.iter().enumerate() {
                        let same = info
                            .shape
                            .iter()
                            .enumerate()
                            .all(|(d, &s)| d == axis || s == first.shape[d]);
                        if !same {
                            return Err(bad(dir, format!(
                                "tensor `{name}` has shape {:?} in {} but {:?} in {}: shards must agree outside the split dimension {axis}",
                                first.shape, shard_name(0), info.shape, shard_name(i)
                            )));
                        }
                    }
                    shape[axis] = infos.iter().map(|i| i.shape[axis]).sum();
                    let bytes = concat(&parts, axis);
                    Tensor::new(parts[0].dtype, shape, Storage::from_vec(bytes))
                        .map_err(|e| bad(dir, format!("merging `{name}`: {e}")))?
                }
            }
        };
        tensors.insert(canon, tensor);
    }

    // Configuration, checked against the merged shapes.
    let dim = params.dim;
    let n_heads = params.n_heads;
    let n_kv = params.n_kv_heads.unwrap_or(n_heads);
    let head_dim = dim / n_heads;
    let Some(embd) = tensors.get("token_embd.weight") else {
        return Err(bad(dir, "no tok_embeddings.weight"));
    };
    if embd.shape.len() != 2 || embd.shape[1] != dim {
        return Err(bad(
            dir,
            format!(
                "tok_embeddings has shape {:?} but params.json gives dim {dim}{}",
                embd.shape,
                shard_hint(n)
            ),
        ));
    }
    let vocab = embd.shape[0];
    if params.vocab_size > 0 && params.vocab_size as usize != vocab {
        return Err(bad(
            dir,
            format!(
                "params.json says vocab_size {} but tok_embeddings has {vocab} rows{}",
                params.vocab_size,
                shard_hint(n)
            ),
        ));
    }
    let hidden = ffn_hidden_size(dim, params.multiple_of, params.ffn_dim_multiplier);
    if let Some(gate) = tensors.get("blk.0.ffn_gate.weight") {
        if gate.shape.first() != Some(&hidden) {
            return Err(bad(dir, format!(
                "params.json gives an FFN size of {hidden} (multiple_of {}, ffn_dim_multiplier {:?}) but w1 has shape {:?}{}",
                params.multiple_of, params.ffn_dim_multiplier, gate.shape, shard_hint(n)
            )));
        }
    }
    let tied = !tensors.contains_key("output.weight");
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![vocab, dim]),
        ("output_norm.weight".into(), vec![dim]),
    ];
    if !tied {
        expected.push(("output.weight".into(), vec![vocab, dim]));
    }
    for l in 0..params.n_layers {
        let b = |p: &str| format!("blk.{l}.{p}.weight");
        expected.extend([
            (b("attn_norm"), vec![dim]),
            (b("attn_q"), vec![n_heads * head_dim, dim]),
            (b("attn_k"), vec![n_kv * head_dim, dim]),
            (b("attn_v"), vec![n_kv * head_dim, dim]),
            (b("attn_output"), vec![dim, n_heads * head_dim]),
            (b("ffn_norm"), vec![dim]),
            (b("ffn_gate"), vec![hidden, dim]),
            (b("ffn_up"), vec![hidden, dim]),
            (b("ffn_down"), vec![dim, hidden]),
        ]);
    }
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => {
                return Err(bad(
                    dir,
                    format!(
                        "checkpoint lacks `{name}` (n_layers is {})",
                        params.n_layers
                    ),
                ))
            }
            Some(t) if &t.shape != shape => {
                return Err(bad(
                    dir,
                    format!(
                        "`{name}` has shape {:?} but params.json implies {shape:?}{}",
                        t.shape,
                        shard_hint(n)
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    if tensors.len() != expected.len() {
        let known: BTreeSet<&String> = expected.iter().map(|(n, _)| n).collect();
        let extra: Vec<&String> = tensors
            .keys()
            .filter(|k| !known.contains(k))
            .take(4)
            .collect();
        return Err(bad(
            dir,
            format!(
                "checkpoint has tensors beyond n_layers {}: {extra:?}",
                params.n_layers
            ),
        ));
    }

    let (bos, eos, max_default) = match &tok_kind {
        TokenizerKind::SentencePiece { pieces, bos, eos } => {
            if *pieces > vocab {
                return Err(bad(
                    &tok_path,
                    format!("tokenizer has {pieces} pieces but the model only {vocab} embeddings"),
                ));
            }
            let max = if params.rope_theta == Some(1e6) {
                16384 // Code Llama
            } else if params.norm_eps <= 1e-6 {
                2048 // Llama 1
            } else {
                4096 // Llama 2
            };
            (*bos, eos.iter().copied().collect::<Vec<_>>(), max)
        }
        TokenizerKind::Tiktoken { ranks } => {
            if ranks + 256 > vocab {
                return Err(bad(&tok_path, format!(
                    "tokenizer has {ranks} ranks (+256 special tokens) but the model only {vocab} embeddings"
                )));
            }
            let r = *ranks as u32;
            (Some(r), vec![r + 1, r + 9], 8192)
        }
    };
    let scaled = params.use_scaled_rope.unwrap_or(false);
    let rope_scaling = scaled.then(|| RopeScaling::Llama3 {
        factor: params.rope_scaling_factor.unwrap_or(8.0) as f32,
        low_freq_factor: 1.0,
        high_freq_factor: params.rope_high_freq_factor.unwrap_or(4.0) as f32,
        original_max_position_embeddings: 8192,
    });
    let max_position_embeddings =
        params
            .max_seq_len
            .unwrap_or(if scaled { 131072 } else { max_default });
    let config = ModelConfig {
        arch: Arch::Llama,
        vocab_size: vocab,
        hidden_size: dim,
        intermediate_size: hidden,
        n_layers: params.n_layers,
        n_heads,
        n_kv_heads: n_kv,
        head_dim,
        rms_norm_eps: params.norm_eps as f32,
        rope_theta: params.rope_theta.unwrap_or(10000.0) as f32,
        rope_local_theta: None,
        rope_scaling,
        rope_style: RopeStyle::Interleaved,
        max_position_embeddings,
        sliding_window: None,
        sliding_layers: Vec::new(),
        tie_word_embeddings: tied,
        query_pre_attn_scalar: None,
        final_logit_softcapping: None,
        attn_logit_softcapping: None,
        bos_token_id: bos,
        eos_token_ids: eos,
        moe: None,
    };

    let mut metadata = BTreeMap::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(&params_path).unwrap_or_default(),
    ) {
        for (k, v) in map {
            let mv = match v {
                serde_json::Value::Bool(b) => MetaValue::Bool(b),
                serde_json::Value::Number(n) if n.is_i64() => {
                    MetaValue::I64(n.as_i64().unwrap_or(0))
                }
                serde_json::Value::Number(n) => MetaValue::F64(n.as_f64().unwrap_or(f64::NAN)),
                serde_json::Value::String(s) => MetaValue::String(s),
                _ => continue,
            };
            metadata.insert(format!("params.{k}"), mv);
        }
    }
    metadata.insert(
        "meta.model_parallel_shards".into(),
        MetaValue::U64(n as u64),
    );
    let tok_desc = match tok_kind {
        TokenizerKind::SentencePiece { .. } => "sentencepiece",
        TokenizerKind::Tiktoken { .. } => "tiktoken",
    };
    metadata.insert(
        "meta.tokenizer_kind".into(),
        MetaValue::String(tok_desc.into()),
    );
    let dtype = tensors["token_embd.weight"].dtype;

    Ok(LoadedModel {
        config,
        tensors,
        tokenizer: TokenizerSource::TokenizerModel(tok_path),
        chat_template: None,
        metadata,
        format: format!(
            "Meta checkpoint ({n} shard{}, {dtype})",
            if n == 1 { "" } else { "s" }
        ),
    })
}

fn shard_hint(n: usize) -> String {
    format!(
        " ({n} shard{} found; is a consolidated.NN.pth shard missing or extra?)",
        if n == 1 { "" } else { "s" }
    )
}
