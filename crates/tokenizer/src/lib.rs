//! Text ↔ token ids.
//!
//! Invariant: ids equal the reference tokenizer's (SentencePiece, `tokenizers`, llama.cpp's
//! `llama-tokenize` for GGUF vocabularies), and BOS is added at most once.
//!
//! Sources:
//! * [`TokenizerSource::HfJson`]: `tokenizer.json` through the `tokenizers` crate; BOS/EOS from
//!   `tokenizer_config.json` / `generation_config.json` beside it.
//! * [`TokenizerSource::Gguf`]: the `tokenizer.ggml.*` metadata. `llama` vocabularies use
//!   SentencePiece-style BPE by scores, `gpt2` ones byte-level BPE by merge ranks with the
//!   pre-tokenizer named by `tokenizer.ggml.pre`; both as llama.cpp tokenizes them (special
//!   tokens in the text are parsed, as `llama-tokenize` and `llama-completion` do).
//! * [`TokenizerSource::TokenizerModel`]: SentencePiece `tokenizer.model` (encoded as
//!   SentencePiece does: special-token text stays text) or a tiktoken ranks file (Llama 3).

pub mod chat;

mod bpe;
mod gguf_vocab;
mod hf;
mod pretok;
mod sandbox;
mod sentencepiece;
mod spm;
mod tiktoken;
mod unicode;
mod vocab;

use std::collections::BTreeMap;

use kiln_formats::{MetaValue, TokenizerSource};

use crate::bpe::Bpe;
use crate::pretok::PreTok;
use crate::sentencepiece::SpModel;
use crate::tiktoken::Tiktoken;
use crate::vocab::{attr, Frag, Vocab};

pub use chat::{
    builtin_chat_template, builtin_chat_template_names, llama2_chat_prompt,
    llama2_chat_prompt_unchecked, llama2_special_tag, render_chat_template,
    render_chat_template_with_tools, ChatMessage, BUILTIN_CHAT_TEMPLATES, CHATML,
};
pub use gguf_vocab::hf_json_gguf_metadata;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{0}")]
    Invalid(String),
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, TokenizerError>;

enum Model {
    Hf(Box<hf::HfModel>),
    /// GGUF `llama`: llama.cpp's SPM tokenizer.
    GgufSpm {
        vocab: Vocab,
        add_space_prefix: bool,
    },
    /// GGUF `gpt2`: llama.cpp's BPE tokenizer.
    GgufBpe {
        vocab: Vocab,
        bpe: Bpe,
    },
    SentencePiece(Box<SpModel>),
    Tiktoken(Box<Tiktoken>),
}

/// A loaded tokenizer with its special tokens.
pub struct Tokenizer {
    model: Model,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

fn meta_str<'a>(m: &'a BTreeMap<String, MetaValue>, key: &str) -> Option<&'a str> {
    match m.get(key)? {
        MetaValue::String(s) => Some(s),
        _ => None,
    }
}

fn meta_int(v: &MetaValue) -> Option<i64> {
    Some(match *v {
        MetaValue::U8(x) => x as i64,
        MetaValue::I8(x) => x as i64,
        MetaValue::U16(x) => x as i64,
        MetaValue::I16(x) => x as i64,
        MetaValue::U32(x) => x as i64,
        MetaValue::I32(x) => x as i64,
        MetaValue::U64(x) => i64::try_from(x).ok()?,
        MetaValue::I64(x) => x,
        _ => return None,
    })
}

fn meta_u32(m: &BTreeMap<String, MetaValue>, key: &str) -> Option<i64> {
    meta_int(m.get(key)?)
}

fn meta_bool(m: &BTreeMap<String, MetaValue>, key: &str) -> Option<bool> {
    match m.get(key)? {
        MetaValue::Bool(b) => Some(*b),
        v => meta_int(v).map(|x| x != 0),
    }
}

fn meta_array<'a>(m: &'a BTreeMap<String, MetaValue>, key: &str) -> Option<&'a [MetaValue]> {
    match m.get(key)? {
        MetaValue::Array(a) => Some(a),
        _ => None,
    }
}

fn invalid(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid(msg.into())
}

/// Token texts llama.cpp treats as end-of-generation (and forces to control type).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
];
/// FIM pad / repo / file-separator tokens: also end-of-generation in llama.cpp.
const FIM_EOG_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];
/// Other control-looking tokens llama.cpp forces to control type (EOM / FIM).
const FIM_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];

impl Tokenizer {
    pub fn from_source(source: &TokenizerSource) -> Result<Tokenizer> {
        match source {
            TokenizerSource::HfJson(path) => {
                let m = hf::HfModel::load(path)?;
                Ok(Tokenizer {
                    bos: m.bos,
                    eos: m.eos.clone(),
                    add_bos: m.adds_bos,
                    add_eos: false,
                    chat_template: m.chat_template.clone(),
                    model: Model::Hf(Box::new(m)),
                })
            }
            TokenizerSource::Gguf(meta) => Self::from_gguf(meta),
            TokenizerSource::TokenizerModel(path) => {
                let data =
                    std::fs::read(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
                Self::from_tokenizer_model_bytes(&data)
            }
        }
    }

    /// A `tokenizer.model` given as bytes: SentencePiece protobuf or tiktoken ranks (Llama 3
    /// special tokens appended), detected from the content.
    pub fn from_tokenizer_model_bytes(data: &[u8]) -> Result<Tokenizer> {
        if tiktoken::looks_like_tiktoken(data) {
            let t = Tiktoken::parse(data, &tiktoken::llama3_special_tokens())?;
            let sp = |s: &str| t.specials.get(s).copied();
            let bos = sp("<|begin_of_text|>");
            let eos = ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]
                .iter()
                .filter_map(|s| sp(s))
                .collect();
            return Ok(Tokenizer {
                bos,
                eos,
                add_bos: bos.is_some(),
                add_eos: false,
                chat_template: None,
                model: Model::Tiktoken(Box::new(t)),
            });
        }
        let m = SpModel::parse(data)?;
        if m.model_type != 2 {
            return Err(TokenizerError::Unsupported(format!(
                "SentencePiece model type {} (only BPE, type 2, is supported)",
                m.model_type
            )));
        }
        Ok(Tokenizer {
            bos: m.bos_id,
            eos: m.eos_id.into_iter().collect(),
            add_bos: m.bos_id.is_some(),
            add_eos: false,
            chat_template: None,
            model: Model::SentencePiece(Box::new(m)),
        })
    }

    fn from_gguf(meta: &BTreeMap<String, MetaValue>) -> Result<Tokenizer> {
        let model = meta_str(meta, "tokenizer.ggml.model")
            .ok_or_else(|| invalid("GGUF: tokenizer.ggml.model missing"))?;
        let tokens = meta_array(meta, "tokenizer.ggml.tokens")
            .ok_or_else(|| invalid("GGUF: tokenizer.ggml.tokens missing"))?;
        let n = tokens.len();
        let mut texts = Vec::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            match t {
                MetaValue::String(s) if s.is_empty() => texts.push(format!("[EMPTY_{i}]")),
                MetaValue::String(s) => texts.push(s.clone()),
                _ => return Err(invalid("GGUF: tokenizer.ggml.tokens is not a string array")),
            }
        }
        let scores = match meta_array(meta, "tokenizer.ggml.scores") {
            Some(a) => {
                if a.len() < n {
                    return Err(invalid("GGUF: fewer scores than tokens"));
                }
                a[..n]
                    .iter()
                    .map(|v| match *v {
                        MetaValue::F32(x) => Ok(x),
                        MetaValue::F64(x) => Ok(x as f32),
                        ref v => meta_int(v)
                            .map(|x| x as f32)
                            .ok_or_else(|| invalid("GGUF: bad score")),
                    })
                    .collect::<Result<Vec<f32>>>()?
            }
            None => vec![0.0; n],
        };
        let mut attrs = match meta_array(meta, "tokenizer.ggml.token_type") {
            Some(a) => {
                if a.len() < n {
                    return Err(invalid("GGUF: fewer token types than tokens"));
                }
                a[..n]
                    .iter()
                    .map(|v| meta_int(v).map(attr::from_type).unwrap_or(0))
                    .collect()
            }
            None => vec![attr::NORMAL; n],
        };

        let (default_bos, default_eos, default_add_bos): (Option<u32>, Option<u32>, bool);
        let pre_name = meta_str(meta, "tokenizer.ggml.pre").unwrap_or("default");
        let mut bpe_setup = None;
        match model {
            "llama" => {
                default_bos = Some(1);
                default_eos = Some(2);
                default_add_bos = true;
            }
            "gpt2" => {
                default_bos = Some(11);
                default_eos = Some(11);
                let (pre, ignore_merges, add_bos) = match pre_name {
                    "default" => (PreTok::Default, false, false),
                    "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
                    | "midm-2.0" | "lfm2" => (PreTok::Llama3, true, true),
                    "dbrx" | "smaug-bpe" | "chatglm-bpe" => (PreTok::Llama3, false, false),
                    "qwen2" | "deepseek-r1-qwen" | "kormo" | "stablelm2" | "hunyuan" | "megrez" => {
                        (PreTok::Qwen2, false, false)
                    }
                    "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
                    | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en"
                    | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "exaone4"
                    | "trillion" => (PreTok::Gpt2, false, false),
                    other => {
                        return Err(TokenizerError::Unsupported(format!(
                            "GGUF pre-tokenizer '{other}'"
                        )))
                    }
                };
                let merges = meta_array(meta, "tokenizer.ggml.merges")
                    .ok_or_else(|| invalid("GGUF: tokenizer.ggml.merges missing"))?
                    .iter()
                    .map(|v| match v {
                        MetaValue::String(s) => Ok(s.clone()),
                        _ => Err(invalid("GGUF: merges is not a string array")),
                    })
                    .collect::<Result<Vec<String>>>()?;
                let clean_spaces =
                    !matches!(pre_name, "qwen2" | "deepseek-r1-qwen" | "kormo" | "hunyuan");
                bpe_setup = Some(Bpe::new(merges, pre, ignore_merges, clean_spaces));
                default_add_bos = add_bos;
            }
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "GGUF tokenizer model '{other}'"
                )))
            }
        }
        let in_range = |id: i64| (0..n as i64).contains(&id).then_some(id as u32);
        let bos = match meta_u32(meta, "tokenizer.ggml.bos_token_id") {
            Some(id) => in_range(id).or(default_bos.filter(|&d| (d as usize) < n)),
            None => default_bos.filter(|&d| (d as usize) < n),
        };
        let eos = match meta_u32(meta, "tokenizer.ggml.eos_token_id") {
            Some(id) => in_range(id).or(default_eos.filter(|&d| (d as usize) < n)),
            None => default_eos.filter(|&d| (d as usize) < n),
        };
        let add_bos = meta_bool(meta, "tokenizer.ggml.add_bos_token").unwrap_or(default_add_bos);
        let add_eos = meta_bool(meta, "tokenizer.ggml.add_eos_token").unwrap_or(false);

        // End-of-generation tokens and llama.cpp's forcing of control-looking tokens to
        // control type (which makes them parsed out of text as special tokens).
        let mut eog: Vec<u32> = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let t = t.as_str();
            let is_eog = EOG_TEXTS.contains(&t) || FIM_EOG_TEXTS.contains(&t);
            if is_eog || FIM_TEXTS.contains(&t) {
                attrs[i] |= attr::CONTROL;
            }
            if is_eog {
                eog.push(i as u32);
            }
            if matches!(
                t,
                "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>"
            ) {
                attrs[i] = attr::USER_DEFINED;
            }
        }
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = meta_u32(meta, key).and_then(in_range) {
                eog.push(id);
            }
        }
        let mut eos_ids: Vec<u32> = eos.into_iter().collect();
        for id in eog {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let vocab = Vocab::new(texts, scores, attrs)
            .map_err(|t| invalid(format!("GGUF: duplicate token text {t:?}")))?;
        let model = match bpe_setup {
            Some(bpe) => Model::GgufBpe { vocab, bpe },
            None => Model::GgufSpm {
                vocab,
                add_space_prefix: meta_bool(meta, "tokenizer.ggml.add_space_prefix")
                    .unwrap_or(true),
            },
        };
        if add_bos && bos.is_none() {
            return Err(invalid("GGUF: the model adds BOS but has no BOS token"));
        }
        Ok(Tokenizer {
            model,
            bos,
            eos: eos_ids,
            add_bos,
            add_eos: add_eos && eos.is_some(),
            chat_template: meta_str(meta, "tokenizer.chat_template").map(str::to_string),
        })
    }

    /// Encodes `text`; with `add_special` the model's BOS is prepended when the model adds one
    /// (never twice: a text that already starts with BOS keeps just that one).
    /// Special-token text in `text` is parsed as those tokens for GGUF and `tokenizer.json`
    /// vocabularies (as llama.cpp and transformers do); a SentencePiece or tiktoken
    /// `tokenizer.model` encodes it as text, as SentencePiece and Meta's code do (use
    /// [`Tokenizer::encode_with`] to parse it there too, e.g. for a rendered chat template).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let parse = !matches!(self.model, Model::SentencePiece(_) | Model::Tiktoken(_));
        self.encode_with(text, add_special, parse)
    }

    /// [`Tokenizer::encode`] with control over special-token parsing. GGUF: `parse_special =
    /// false` leaves control tokens' text as text, as `llama-tokenize --no-parse-special`
    /// does (user-defined tokens are always split out). `tokenizer.model`: `true` splits
    /// control-token text (`<s>`, `<|eot_id|>`, ...) out first and encodes the text between
    /// separately (SentencePiece adds its dummy-prefix space to each such piece). A
    /// `tokenizer.json` always parses its added tokens (as the `tokenizers` crate does).
    pub fn encode_with(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let want_bos = add_special && self.add_bos;
        match &self.model {
            Model::Hf(m) => {
                let enc = hf::contained("encode", || m.tk.encode(text, add_special))?
                    .map_err(|e| invalid(format!("tokenizers: {e}")))?;
                out.extend_from_slice(enc.get_ids());
            }
            Model::GgufSpm {
                vocab,
                add_space_prefix,
            } => {
                if want_bos {
                    out.extend(self.bos);
                }
                let mut prev_special = true;
                let mut buf = String::new();
                for frag in vocab.partition(text, parse_special) {
                    match frag {
                        Frag::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                        Frag::Text(s, e) => {
                            buf.clear();
                            if *add_space_prefix && prev_special {
                                buf.push(' ');
                            }
                            buf.push_str(&text[s..e]);
                            let escaped = buf.replace(' ', "\u{2581}");
                            gguf_spm_encode(vocab, &escaped, &mut out)?;
                            prev_special = false;
                        }
                    }
                }
                if add_special && self.add_eos {
                    out.extend(self.eos.first());
                }
            }
            Model::GgufBpe { vocab, bpe } => {
                if want_bos {
                    out.extend(self.bos);
                }
                for frag in vocab.partition(text, parse_special) {
                    match frag {
                        Frag::Token(id) => out.push(id),
                        Frag::Text(s, e) => bpe.encode(vocab, &text[s..e], &mut out),
                    }
                }
                if add_special && self.add_eos {
                    out.extend(self.eos.first());
                }
            }
            Model::SentencePiece(m) => {
                if want_bos {
                    out.extend(self.bos);
                }
                if parse_special {
                    let frags = m
                        .vocab
                        .partition_with(text, |a| a & (attr::CONTROL | attr::UNKNOWN) != 0);
                    for frag in frags {
                        match frag {
                            Frag::Token(id) => out.push(id),
                            Frag::Text(s, e) => m.encode(&text[s..e], &mut out)?,
                        }
                    }
                } else {
                    m.encode(text, &mut out)?;
                }
            }
            Model::Tiktoken(t) => {
                if want_bos {
                    out.extend(self.bos);
                }
                if parse_special {
                    let mut last = 0;
                    for mt in t.special_regex.find_iter(text) {
                        t.encode(&text[last..mt.start()], &mut out)?;
                        out.extend(t.specials.get(mt.as_str()));
                        last = mt.end();
                    }
                    t.encode(&text[last..], &mut out)?;
                } else {
                    t.encode(text, &mut out)?;
                }
            }
        }
        // BOS at most once.
        if want_bos
            && out.len() >= 2
            && self.bos.is_some()
            && out[0] == out[1]
            && Some(out[0]) == self.bos
        {
            out.remove(0);
        }
        Ok(out)
    }

    /// Decodes ids to text; with `skip_special` control tokens (BOS, EOS, ...) are left out.
    /// Invalid UTF-8 (a sequence cut inside a character) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        if let Model::Hf(m) = &self.model {
            if ids.iter().all(|&id| (id as usize) < self.vocab_size()) {
                if let Ok(Ok(s)) = hf::contained("decode", || m.tk.decode(ids, skip_special)) {
                    return s;
                }
            }
        }
        let mut ids = ids;
        let mut bytes = Vec::new();
        match &self.model {
            Model::GgufSpm {
                add_space_prefix, ..
            } => {
                // llama.cpp's `detokenize`: the first piece loses one leading space when the
                // vocabulary adds a space prefix, except after a skipped leading BOS.
                let mut strip = *add_space_prefix;
                if skip_special
                    && self.add_bos
                    && !ids.is_empty()
                    && ids.first() == self.bos.as_ref()
                {
                    strip = false;
                    ids = &ids[1..];
                }
                if skip_special && self.add_eos && !ids.is_empty() && ids.last() == self.eos.first()
                {
                    ids = &ids[..ids.len() - 1];
                }
                for (i, &id) in ids.iter().enumerate() {
                    if skip_special && self.is_special(id) {
                        continue;
                    }
                    let b = self.token_bytes(id);
                    let b = if i == 0 && strip && b.first() == Some(&b' ') {
                        &b[1..]
                    } else {
                        &b[..]
                    };
                    bytes.extend_from_slice(b);
                }
            }
            Model::SentencePiece(m) => {
                // SentencePiece: the first non-control piece loses the dummy-prefix space.
                let mut strip = m.add_dummy_prefix && !m.treat_whitespace_as_suffix;
                for &id in ids {
                    let special = self.is_special(id);
                    if special && skip_special {
                        continue;
                    }
                    let b = self.token_bytes(id);
                    if !special && strip {
                        strip = false;
                        if b.first() == Some(&b' ') {
                            bytes.extend_from_slice(&b[1..]);
                            continue;
                        }
                    }
                    bytes.extend_from_slice(&b);
                }
            }
            _ => {
                for &id in ids {
                    if !(skip_special && self.is_special(id)) {
                        bytes.extend_from_slice(&self.token_bytes(id));
                    }
                }
                if let Model::GgufBpe { bpe, .. } = &self.model {
                    if bpe.clean_spaces {
                        bytes = bpe::clean_spaces(&bytes);
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The raw bytes one token stands for (spaces restored, byte-fallback tokens as their byte).
    /// Special tokens give their text; an id out of range gives nothing.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match &self.model {
            Model::Hf(m) => m.token_bytes(id),
            Model::GgufSpm { vocab, .. } | Model::GgufBpe { vocab, .. } => {
                let Some(text) = vocab.texts.get(id as usize) else {
                    return Vec::new();
                };
                let a = vocab.attr(id);
                let byte_level = matches!(self.model, Model::GgufBpe { .. });
                if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
                    text.as_bytes().to_vec()
                } else if a & attr::NORMAL != 0 {
                    if byte_level {
                        let mut out = Vec::with_capacity(text.len());
                        for c in text.chars() {
                            match unicode::char_to_byte(c) {
                                Some(b) => out.push(b),
                                None => out.extend_from_slice(c.to_string().as_bytes()),
                            }
                        }
                        out
                    } else {
                        text.replace('\u{2581}', " ").into_bytes()
                    }
                } else if a & attr::BYTE != 0 {
                    match hf::parse_byte_token(text) {
                        Some(b) => vec![b],
                        None if byte_level => text
                            .chars()
                            .next()
                            .and_then(unicode::char_to_byte)
                            .map(|b| vec![b])
                            .unwrap_or_default(),
                        None => Vec::new(),
                    }
                } else {
                    Vec::new()
                }
            }
            Model::SentencePiece(m) => {
                let Some(text) = m.vocab.texts.get(id as usize) else {
                    return Vec::new();
                };
                if m.vocab.attr(id) & attr::BYTE != 0 {
                    if let Some(b) = hf::parse_byte_token(text) {
                        return vec![b];
                    }
                }
                text.replace('\u{2581}', " ").into_bytes()
            }
            Model::Tiktoken(t) => t.tokens.get(id as usize).cloned().unwrap_or_default(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.model {
            Model::Hf(m) => m.tk.get_vocab_size(true),
            Model::GgufSpm { vocab, .. } | Model::GgufBpe { vocab, .. } => vocab.len(),
            Model::SentencePiece(m) => m.vocab.len(),
            Model::Tiktoken(t) => t.tokens.len(),
        }
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    /// Every token that ends generation (EOS first, then end-of-turn tokens and the like).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }
    /// Whether encoding with `add_special` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }
    /// Control (and unknown) tokens: BOS, EOS, chat markers, ...
    pub fn is_special(&self, id: u32) -> bool {
        match &self.model {
            Model::Hf(m) => m.is_special(id),
            Model::GgufSpm { vocab, .. } | Model::GgufBpe { vocab, .. } => {
                vocab.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0
            }
            Model::SentencePiece(m) => m.vocab.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0,
            Model::Tiktoken(t) => (id as usize) >= t.n_base && (id as usize) < t.tokens.len(),
        }
    }

    /// The id of a token given by its exact text (special tokens included).
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        match &self.model {
            Model::Hf(m) => m.tk.token_to_id(text),
            Model::GgufSpm { vocab, .. } | Model::GgufBpe { vocab, .. } => vocab.id(text),
            Model::SentencePiece(m) => m.vocab.id(text),
            Model::Tiktoken(t) => t
                .specials
                .get(text)
                .copied()
                .or_else(|| t.ranks.get(text.as_bytes()).copied()),
        }
    }

    /// The stored text of a token (e.g. `"<bos>"`, `"▁the"`, `"Ġthe"`), for chat templates
    /// (`bos_token`) and display.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.model {
            Model::Hf(m) => m.tk.id_to_token(id),
            Model::GgufSpm { vocab, .. } | Model::GgufBpe { vocab, .. } => {
                vocab.texts.get(id as usize).cloned()
            }
            Model::SentencePiece(m) => m.vocab.texts.get(id as usize).cloned(),
            Model::Tiktoken(t) => t
                .tokens
                .get(id as usize)
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        }
    }

    /// The chat template shipped with the tokenizer (GGUF `tokenizer.chat_template`,
    /// `tokenizer_config.json` `chat_template`), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// BOS / EOS token texts, as chat templates receive them (empty when absent).
    pub fn bos_token(&self) -> String {
        if let Model::Hf(m) = &self.model {
            if let Some(t) = &m.bos_text {
                return t.clone();
            }
        }
        self.bos
            .and_then(|id| self.id_to_token(id))
            .unwrap_or_default()
    }
    pub fn eos_token(&self) -> String {
        if let Model::Hf(m) = &self.model {
            if let Some(t) = &m.eos_text {
                return t.clone();
            }
        }
        self.eos
            .first()
            .and_then(|&id| self.id_to_token(id))
            .unwrap_or_default()
    }
}

/// llama.cpp's `llm_tokenizer_spm_session::tokenize` on whitespace-escaped text: merges into
/// any vocabulary entry by score, then byte fallback for what is left.
fn gguf_spm_encode(vocab: &Vocab, text: &str, out: &mut Vec<u32>) -> Result<()> {
    let symbols = spm::chars(text);
    let finals = spm::merge(
        text,
        &symbols,
        |p| vocab.id(p).map(|id| vocab.scores[id as usize]),
        |_, _, _| {},
    );
    for (s, l) in finals {
        let piece = &text[s..s + l];
        if let Some(id) = vocab.id(piece) {
            out.push(id);
            continue;
        }
        for b in piece.bytes() {
            let id = vocab
                .id(&format!("<0x{b:02X}>"))
                .or_else(|| {
                    let c = [b];
                    std::str::from_utf8(&c).ok().and_then(|s| vocab.id(s))
                })
                .ok_or_else(|| invalid(format!("no byte token for 0x{b:02X}")))?;
            out.push(id);
        }
    }
    Ok(())
}

/// GGUF `tokenizer.ggml.*` metadata (llama.cpp's `llama` tokenizer model: pieces, scores and
/// token types) for a SentencePiece `tokenizer.model`, so a converted checkpoint carries its
/// vocabulary. bos/eos ids are left to the model metadata.
pub fn sentencepiece_gguf_metadata(
    model_bytes: &[u8],
) -> Result<Vec<(String, kiln_formats::MetaValue)>> {
    use kiln_formats::MetaValue;
    use vocab::attr;
    let sp = sentencepiece::SpModel::parse(model_bytes)?;
    let v = &sp.vocab;
    // GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    let ty = |a: u16| -> i32 {
        if a & attr::UNKNOWN != 0 {
            2
        } else if a & attr::CONTROL != 0 {
            3
        } else if a & attr::USER_DEFINED != 0 {
            4
        } else if a & attr::UNUSED != 0 {
            5
        } else if a & attr::BYTE != 0 {
            6
        } else {
            1
        }
    };
    let mut m = vec![
        (
            "tokenizer.ggml.model".to_string(),
            MetaValue::String("llama".into()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            MetaValue::Array(v.texts.iter().cloned().map(MetaValue::String).collect()),
        ),
        (
            "tokenizer.ggml.scores".to_string(),
            MetaValue::Array(v.scores.iter().map(|&s| MetaValue::F32(s)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            MetaValue::Array(v.attrs.iter().map(|&a| MetaValue::I32(ty(a))).collect()),
        ),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            MetaValue::Bool(true),
        ),
        (
            "tokenizer.ggml.add_eos_token".to_string(),
            MetaValue::Bool(false),
        ),
        (
            "tokenizer.ggml.add_space_prefix".to_string(),
            MetaValue::Bool(sp.add_dummy_prefix),
        ),
    ];
    if let Some(u) = sp.unk_id {
        m.push((
            "tokenizer.ggml.unknown_token_id".to_string(),
            MetaValue::U32(u),
        ));
    }
    Ok(m)
}
