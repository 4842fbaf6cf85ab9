//! Hugging Face `tokenizer.json` through the `tokenizers` crate, with BOS/EOS from
//! `tokenizer_config.json` (and `generation_config.json`) beside it.

use std::collections::HashMap;
use std::path::Path;

use crate::unicode::char_to_byte;
use crate::{Result, TokenizerError};

pub(crate) struct HfModel {
    pub tk: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    pub adds_bos: bool,
    /// The decoder maps GPT-2 byte stand-ins back to bytes.
    byte_level: bool,
    /// `<0xNN>` tokens are bytes.
    byte_fallback: bool,
    /// id → content of added tokens (special or not), which decode as written.
    added: HashMap<u32, (String, bool)>,
    pub chat_template: Option<String>,
    pub bos_text: Option<String>,
    pub eos_text: Option<String>,
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| TokenizerError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TokenizerError::Invalid(format!("{}: {e}", path.display()))),
    }
}

/// A token given in a config as a string or as `{"content": ...}`.
fn token_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Runs a call into the `tokenizers` crate, turning a panic (it has a few on malformed
/// tokenizer.json files) into an error.
pub(crate) fn contained<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        TokenizerError::Invalid(format!("tokenizers crate failed in {what}: {msg}"))
    })
}

/// The components of a `Sequence` (or the component itself).
fn components<'a>(v: &'a serde_json::Value, list_key: &str) -> Vec<&'a serde_json::Value> {
    match v.get("type").and_then(|t| t.as_str()) {
        Some("Sequence") => v
            .get(list_key)
            .and_then(|l| l.as_array())
            .map(|l| l.iter().flat_map(|c| components(c, list_key)).collect())
            .unwrap_or_default(),
        _ => vec![v],
    }
}

/// Checks what the `tokenizers` crate accepts but then panics on: `Replace` steps with an
/// empty pattern, and a `TemplateProcessing` naming a special token it does not define.
fn check_tokenizer_json(raw: &serde_json::Value) -> std::result::Result<(), String> {
    let empty_pattern = |c: &serde_json::Value| {
        c.get("type").and_then(|t| t.as_str()) == Some("Replace")
            && c.get("pattern").is_some_and(|p| {
                ["String", "Regex"]
                    .iter()
                    .any(|k| p.get(k).and_then(|s| s.as_str()) == Some(""))
            })
    };
    for (section, list_key) in [("normalizer", "normalizers"), ("decoder", "decoders")] {
        if let Some(v) = raw.get(section) {
            if components(v, list_key).into_iter().any(empty_pattern) {
                return Err(format!("{section}: a Replace step has an empty pattern"));
            }
        }
    }
    // BPE strips the continuing-subword prefix from each merge's second part by byte count.
    if let Some(prefix) = raw
        .pointer("/model/continuing_subword_prefix")
        .and_then(|p| p.as_str())
        .filter(|p| !p.is_empty())
    {
        let merges = raw.pointer("/model/merges").and_then(|m| m.as_array());
        for m in merges.into_iter().flatten() {
            let second = match m {
                serde_json::Value::String(s) => s.split_once(' ').map(|(_, b)| b),
                serde_json::Value::Array(a) => a.get(1).and_then(|b| b.as_str()),
                _ => None,
            };
            if second.is_some_and(|b| !b.starts_with(prefix)) {
                return Err(format!(
                    "model: merge {m} does not continue with the continuing_subword_prefix {prefix:?}"
                ));
            }
        }
    }
    if let Some(pp) = raw.get("post_processor") {
        for p in components(pp, "processors") {
            if p.get("type").and_then(|t| t.as_str()) != Some("TemplateProcessing") {
                continue;
            }
            let defined = p.get("special_tokens").and_then(|m| m.as_object());
            for which in ["single", "pair"] {
                let steps = p.get(which).and_then(|s| s.as_array());
                for step in steps.into_iter().flatten() {
                    let Some(id) = step.pointer("/SpecialToken/id").and_then(|i| i.as_str()) else {
                        continue;
                    };
                    if !defined.is_some_and(|d| d.contains_key(id)) {
                        return Err(format!(
                            "post_processor: the {which} template uses special token {id:?}, which its special_tokens do not define"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Special-token ids a `TemplateProcessing` inserts must be tokens of the vocabulary.
fn check_template_ids(raw: &serde_json::Value, vocab: usize) -> std::result::Result<(), String> {
    let Some(pp) = raw.get("post_processor") else {
        return Ok(());
    };
    for p in components(pp, "processors") {
        let tokens = p.get("special_tokens").and_then(|m| m.as_object());
        for (name, t) in tokens.into_iter().flatten() {
            let ids = t.get("ids").and_then(|i| i.as_array());
            for id in ids.into_iter().flatten() {
                if id.as_u64().is_none_or(|i| i >= vocab as u64) {
                    return Err(format!(
                        "post_processor: special token {name:?} has id {id}, outside the vocabulary of {vocab}"
                    ));
                }
            }
        }
    }
    Ok(())
}

impl HfModel {
    pub fn load(path: &Path) -> Result<HfModel> {
        let raw = read_json(path)?
            .ok_or_else(|| TokenizerError::Invalid(format!("{}: not found", path.display())))?;
        check_tokenizer_json(&raw)
            .map_err(|e| TokenizerError::Invalid(format!("{}: {e}", path.display())))?;
        let tk = contained("loading tokenizer.json", || {
            tokenizers::Tokenizer::from_file(path)
        })?
        .map_err(|e| TokenizerError::Invalid(format!("{}: {e}", path.display())))?;
        check_template_ids(&raw, tk.get_vocab_size(true))
            .map_err(|e| TokenizerError::Invalid(format!("{}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json(&dir.join("tokenizer_config.json"))?;
        let gen = read_json(&dir.join("generation_config.json"))?;

        let decoder = raw
            .get("decoder")
            .map(|d| d.to_string())
            .unwrap_or_default();
        let byte_level = decoder.contains("\"ByteLevel\"");
        let byte_fallback = raw
            .pointer("/model/byte_fallback")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
            || decoder.contains("\"ByteFallback\"");

        let mut added = HashMap::new();
        for (id, tok) in tk.get_added_tokens_decoder() {
            added.insert(id, (tok.content.clone(), tok.special));
        }

        let cfg = config.as_ref();
        let bos_text = token_text(cfg.and_then(|c| c.get("bos_token")));
        let eos_text = token_text(cfg.and_then(|c| c.get("eos_token")));
        let mut bos = bos_text.as_deref().and_then(|t| tk.token_to_id(t));
        let mut eos = Vec::new();
        if let Some(id) = eos_text.as_deref().and_then(|t| tk.token_to_id(t)) {
            eos.push(id);
        }
        if let Some(g) = &gen {
            if bos.is_none() {
                bos = g
                    .get("bos_token_id")
                    .and_then(|v| v.as_u64())
                    .map(|v| v as u32);
            }
            match g.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => eos.extend(n.as_u64().map(|v| v as u32)),
                Some(serde_json::Value::Array(a)) => {
                    eos.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32))
                }
                _ => {}
            }
        }
        let mut seen = std::collections::HashSet::new();
        eos.retain(|id| seen.insert(*id));

        // Whether the post-processor prepends BOS: compare with and without special tokens.
        let with = contained("encode", || tk.encode("a", true))?
            .map_err(|e| TokenizerError::Invalid(e.to_string()))?;
        let without = contained("encode", || tk.encode("a", false))?
            .map_err(|e| TokenizerError::Invalid(e.to_string()))?;
        let adds_bos = match bos {
            Some(b) => with.get_ids().first() == Some(&b) && without.get_ids().first() != Some(&b),
            None => false,
        };
        let chat_template = match cfg.and_then(|c| c.get("chat_template")) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        }
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
        Ok(HfModel {
            tk,
            bos,
            eos,
            adds_bos,
            byte_level,
            byte_fallback,
            added,
            chat_template,
            bos_text,
            eos_text,
        })
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.added.get(&id).is_some_and(|(_, s)| *s)
    }

    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        if let Some((content, _)) = self.added.get(&id) {
            return content.as_bytes().to_vec();
        }
        let Some(tok) = self.tk.id_to_token(id) else {
            return Vec::new();
        };
        if self.byte_level {
            let mut out = Vec::with_capacity(tok.len());
            for c in tok.chars() {
                match char_to_byte(c) {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(c.to_string().as_bytes()),
                }
            }
            return out;
        }
        if self.byte_fallback {
            if let Some(b) = parse_byte_token(&tok) {
                return vec![b];
            }
        }
        tok.replace('\u{2581}', " ").into_bytes()
    }
}

/// `<0xNN>` → the byte.
pub(crate) fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
