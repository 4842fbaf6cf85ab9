//! A Hugging Face `tokenizer.json` written as GGUF `tokenizer.ggml.*` metadata, so that
//! `kiln convert` and `kiln quantize` carry the vocabulary of a Llama 3 / Qwen2 style
//! (byte-level BPE) or a SentencePiece-style (byte-fallback BPE) checkpoint into the file,
//! as llama.cpp's converter does:
//!
//! * byte-level BPE → `tokenizer.ggml.model = "gpt2"`, `pre` named from the pre-tokenizer's
//!   split regex (`llama-bpe`, `qwen2`, or `gpt-2` for the plain byte-level split), the
//!   tokens in id order (added tokens at their ids, gaps as `[PAD{id}]`), token types
//!   (control for special added tokens, user-defined for the others), and the merges as
//!   `"a b"` strings;
//! * byte-fallback BPE with a `▁` (Metaspace) pre-tokenizer → `"llama"`, with the scores
//!   llama.cpp's SentencePiece tokenizer merges by: a merged piece scores minus the rank of
//!   the first merge that makes it, so the earliest merge wins as in the BPE model.
//!
//! Whether BOS is added comes from the post-processor (a `TemplateProcessing` that starts
//! with a special token) or `tokenizer_config.json`'s `add_bos_token`. bos/eos ids are the
//! model configuration's (written with the model metadata).

use std::collections::HashMap;
use std::path::Path;

use kiln_formats::MetaValue;

use crate::{Result, TokenizerError};

/// The split regex of Llama 3's pre-tokenizer (llama.cpp's `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with single digits (llama.cpp's `qwen2`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn unsupported(path: &Path, what: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Unsupported(format!(
        "{}: writing this vocabulary as GGUF: {what}",
        path.display()
    ))
}

/// Every component of a pre-tokenizer / decoder / post-processor, flattening `Sequence`s.
fn parts<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    if v.is_null() {
        return;
    }
    let inner = ["pretokenizers", "decoders", "processors", "normalizers"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|x| x.as_array()));
    match inner {
        Some(list) => list.iter().for_each(|x| parts(x, out)),
        None => out.push(v),
    }
}

fn kind(v: &serde_json::Value) -> &str {
    v.get("type").and_then(|t| t.as_str()).unwrap_or("")
}

/// GGUF tokenizer metadata for the `tokenizer.json` at `path` (and the `tokenizer_config.json`
/// beside it, when present).
pub fn hf_json_gguf_metadata(path: &Path) -> Result<Vec<(String, MetaValue)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TokenizerError::Invalid(format!("{}: {e}", path.display())))?;
    let raw: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TokenizerError::Invalid(format!("{}: {e}", path.display())))?;
    let config: Option<serde_json::Value> = path
        .parent()
        .map(|d| d.join("tokenizer_config.json"))
        .filter(|p| p.is_file())
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok());
    let model = &raw["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(unsupported(
            path,
            format!("model type {} (only BPE)", model["type"]),
        ));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| unsupported(path, "model.vocab is not an object"))?;
    // Tokens in id order; added tokens at their ids.
    let mut by_id: HashMap<u32, String> = HashMap::new();
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .filter(|&i| i < u32::MAX as u64)
            .ok_or_else(|| unsupported(path, format!("token {t:?} has no valid id")))?;
        by_id.insert(id as u32, t.clone());
    }
    let mut added_type: HashMap<u32, i32> = HashMap::new();
    for a in raw["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(unsupported(path, "an added token without id or content"));
        };
        if id >= u32::MAX as u64 {
            return Err(unsupported(path, format!("added token id {id}")));
        }
        by_id.insert(id as u32, content.to_string());
        let special = a["special"].as_bool().unwrap_or(false);
        added_type.insert(id as u32, if special { 3 } else { 4 });
    }
    let n = by_id.keys().max().map_or(0, |m| *m as usize + 1);
    if n > 4 << 20 {
        return Err(unsupported(path, format!("{n} tokens")));
    }
    let tokens: Vec<String> = (0..n as u32)
        .map(|i| {
            by_id
                .get(&i)
                .cloned()
                .unwrap_or_else(|| format!("[PAD{i}]"))
        })
        .collect();
    let merges: Vec<String> = match model["merges"].as_array() {
        None => Vec::new(),
        Some(list) => list
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str())
                {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => Err(unsupported(path, "a merge that is not two strings")),
                },
                _ => Err(unsupported(path, "a merge that is not a string or a pair")),
            })
            .collect::<Result<_>>()?,
    };

    let mut pre = Vec::new();
    parts(&raw["pre_tokenizer"], &mut pre);
    let mut post = Vec::new();
    parts(&raw["post_processor"], &mut post);
    let byte_level = pre.iter().any(|p| kind(p) == "ByteLevel");
    let metaspace = pre.iter().any(|p| kind(p) == "Metaspace");

    // BOS: the post-processor's template starts with a special token, or the config says so.
    let template_bos = post.iter().any(|p| {
        kind(p) == "TemplateProcessing"
            && p["single"]
                .as_array()
                .and_then(|s| s.first())
                .is_some_and(|f| f.get("SpecialToken").is_some())
    });
    let add_bos = config
        .as_ref()
        .and_then(|c| c["add_bos_token"].as_bool())
        .unwrap_or(template_bos);
    let add_eos = config
        .as_ref()
        .and_then(|c| c["add_eos_token"].as_bool())
        .unwrap_or(false);

    let mut token_type: Vec<i32> = (0..n as u32)
        .map(|i| added_type.get(&i).copied().unwrap_or(1))
        .collect();
    let mut m: Vec<(String, MetaValue)> = Vec::new();
    if byte_level {
        if !raw["normalizer"].is_null()
            && !matches!(raw["normalizer"]["type"].as_str(), Some("NFC"))
        {
            return Err(unsupported(
                path,
                format!("normalizer {}", raw["normalizer"]["type"]),
            ));
        }
        let splits: Vec<&str> = pre
            .iter()
            .filter(|p| kind(p) == "Split")
            .filter_map(|p| p["pattern"]["Regex"].as_str())
            .collect();
        let name = match splits.as_slice() {
            [] => {
                let bl = pre.iter().find(|p| kind(p) == "ByteLevel").unwrap();
                if bl["use_regex"].as_bool() == Some(false) {
                    return Err(unsupported(path, "a byte-level split without its regex"));
                }
                "gpt-2"
            }
            [r] if *r == LLAMA3_SPLIT => "llama-bpe",
            [r] if *r == QWEN2_SPLIT => "qwen2",
            other => {
                return Err(unsupported(
                    path,
                    format!("the pre-tokenizer split {other:?} (known: Llama 3, Qwen2, GPT-2)"),
                ))
            }
        };
        if (name == "llama-bpe") != model["ignore_merges"].as_bool().unwrap_or(false) {
            return Err(unsupported(
                path,
                format!(
                    "ignore_merges = {} with the {name} split (llama.cpp ties the two)",
                    model["ignore_merges"]
                ),
            ));
        }
        m.push((
            "tokenizer.ggml.model".into(),
            MetaValue::String("gpt2".into()),
        ));
        m.push(("tokenizer.ggml.pre".into(), MetaValue::String(name.into())));
        m.push((
            "tokenizer.ggml.merges".into(),
            MetaValue::Array(merges.into_iter().map(MetaValue::String).collect()),
        ));
    } else if metaspace && model["byte_fallback"].as_bool() == Some(true) {
        // Scores: a merged piece gets minus the rank of the first merge that makes it; the
        // pieces no merge makes (characters, bytes, specials) score 0... except that
        // SentencePiece ranks whole-vocabulary pieces by id, so keep them below every merge.
        let mut scores = vec![0.0f32; n];
        let ids: HashMap<&str, usize> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let mut made = vec![false; n];
        for (rank, mg) in merges.iter().enumerate() {
            let Some((a, b)) = mg.split_once(' ') else {
                return Err(unsupported(path, format!("merge {mg:?}")));
            };
            if let Some(&id) = ids.get(format!("{a}{b}").as_str()) {
                if !made[id] {
                    made[id] = true;
                    scores[id] = -(rank as f32) - 1.0;
                }
            }
        }
        for (i, t) in tokens.iter().enumerate() {
            let byte = t.len() == 6 && t.starts_with("<0x") && t.ends_with('>');
            if byte {
                token_type[i] = 6;
            }
            if !made[i] && token_type[i] == 1 {
                // single characters: below every merge, in id order
                scores[i] = -(merges.len() as f32) - 1.0 - i as f32;
            }
        }
        if let Some(unk) = model["unk_token"].as_str().and_then(|u| ids.get(u)) {
            token_type[*unk] = 2;
            m.push((
                "tokenizer.ggml.unknown_token_id".into(),
                MetaValue::U32(*unk as u32),
            ));
        }
        let prepend = pre
            .iter()
            .find(|p| kind(p) == "Metaspace")
            .map(|p| {
                p["prepend_scheme"].as_str().map_or_else(
                    || p["add_prefix_space"].as_bool().unwrap_or(true),
                    |s| s != "never",
                )
            })
            .unwrap_or(true);
        m.push((
            "tokenizer.ggml.model".into(),
            MetaValue::String("llama".into()),
        ));
        m.push((
            "tokenizer.ggml.scores".into(),
            MetaValue::Array(scores.into_iter().map(MetaValue::F32).collect()),
        ));
        m.push((
            "tokenizer.ggml.add_space_prefix".into(),
            MetaValue::Bool(prepend),
        ));
    } else {
        return Err(unsupported(
            path,
            "a pre-tokenizer that is neither byte-level nor SentencePiece-style (Metaspace with byte fallback)",
        ));
    }
    m.push((
        "tokenizer.ggml.tokens".into(),
        MetaValue::Array(tokens.into_iter().map(MetaValue::String).collect()),
    ));
    m.push((
        "tokenizer.ggml.token_type".into(),
        MetaValue::Array(token_type.into_iter().map(MetaValue::I32).collect()),
    ));
    m.push((
        "tokenizer.ggml.add_bos_token".into(),
        MetaValue::Bool(add_bos),
    ));
    m.push((
        "tokenizer.ggml.add_eos_token".into(),
        MetaValue::Bool(add_eos),
    ));
    Ok(m)
}
