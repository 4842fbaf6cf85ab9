//! SentencePiece `tokenizer.model` (a `ModelProto` protobuf), read with a small hand-written
//! protobuf decoder, and SentencePiece's own BPE encoding.

use std::collections::HashMap;

use crate::spm;
use crate::vocab::{attr, Vocab};
use crate::{Result, TokenizerError};

fn invalid(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid(format!("tokenizer.model: {}", msg.into()))
}

/// One protobuf field value.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterates over (field number, value) of one message.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| invalid("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(invalid("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| invalid("field runs past the end of its message"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        let v = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| invalid("length too large"))?;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            w => return Err(invalid(format!("unsupported wire type {w}"))),
        };
        Ok(Some((field, v)))
    }
}

fn as_str(b: &[u8]) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| invalid("piece is not UTF-8"))
}

/// The parts of `ModelProto` the encoder needs.
pub(crate) struct SpModel {
    pub vocab: Vocab,
    pub model_type: i64,
    pub byte_fallback: bool,
    pub unk_id: Option<u32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
    pub treat_whitespace_as_suffix: bool,
    /// User-defined pieces, matched whole (longest first) before merging.
    user_defined: HashMap<String, u32>,
    user_lens: Vec<usize>,
}

/// Protobuf int32 fields are encoded as 64-bit two's-complement varints.
fn int32(v: u64) -> i64 {
    v as i64 as i32 as i64
}

impl SpModel {
    pub fn parse(data: &[u8]) -> Result<SpModel> {
        let mut texts = Vec::new();
        let mut scores = Vec::new();
        let mut attrs = Vec::new();
        let (mut model_type, mut byte_fallback) = (1i64, false);
        let (mut unk, mut bos, mut eos) = (0i64, 1i64, 2i64);
        let mut treat_ws_suffix = false;
        let (mut add_dummy, mut remove_ws, mut escape_ws) = (true, true, true);
        let mut charsmap_len = 0usize;
        let mut f = Fields::new(data);
        while let Some((field, v)) = f.next_field()? {
            match (field, v) {
                (1, Value::Bytes(piece)) => {
                    let (mut text, mut score, mut ty) = (String::new(), 0f32, 1i64);
                    let mut pf = Fields::new(piece);
                    while let Some((pfield, pv)) = pf.next_field()? {
                        match (pfield, pv) {
                            (1, Value::Bytes(b)) => text = as_str(b)?,
                            (2, Value::Fixed32(x)) => score = f32::from_bits(x),
                            (3, Value::Varint(x)) => ty = int32(x),
                            _ => {}
                        }
                    }
                    texts.push(text);
                    scores.push(score);
                    attrs.push(attr::from_type(ty));
                }
                (2, Value::Bytes(spec)) => {
                    let mut tf = Fields::new(spec);
                    while let Some((tfield, tv)) = tf.next_field()? {
                        match (tfield, tv) {
                            (3, Value::Varint(x)) => model_type = int32(x),
                            (24, Value::Varint(x)) => treat_ws_suffix = x != 0,
                            (35, Value::Varint(x)) => byte_fallback = x != 0,
                            (40, Value::Varint(x)) => unk = int32(x),
                            (41, Value::Varint(x)) => bos = int32(x),
                            (42, Value::Varint(x)) => eos = int32(x),
                            _ => {}
                        }
                    }
                }
                (3, Value::Bytes(spec)) => {
                    let mut nf = Fields::new(spec);
                    while let Some((nfield, nv)) = nf.next_field()? {
                        match (nfield, nv) {
                            (2, Value::Bytes(b)) => charsmap_len = b.len(),
                            (3, Value::Varint(x)) => add_dummy = x != 0,
                            (4, Value::Varint(x)) => remove_ws = x != 0,
                            (5, Value::Varint(x)) => escape_ws = x != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if texts.is_empty() {
            return Err(invalid("no pieces (not a SentencePiece model?)"));
        }
        if charsmap_len > 0 {
            return Err(TokenizerError::Unsupported(
                "tokenizer.model with a normalization charsmap (only identity normalization is supported)".into(),
            ));
        }
        let n = texts.len() as i64;
        let id = |x: i64| (0..n).contains(&x).then_some(x as u32);
        let mut user_defined = HashMap::new();
        let mut user_lens = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            if attrs[i] & attr::USER_DEFINED != 0 && !t.is_empty() {
                user_defined.insert(t.clone(), i as u32);
                if !user_lens.contains(&t.len()) {
                    user_lens.push(t.len());
                }
            }
        }
        user_lens.sort_unstable_by(|a, b| b.cmp(a));
        let mut seen = std::collections::HashSet::new();
        if !texts.iter().all(|t| seen.insert(t.as_str())) {
            return Err(invalid("duplicate pieces"));
        }
        Ok(SpModel {
            vocab: Vocab::new(texts, scores, attrs),
            model_type,
            byte_fallback,
            unk_id: id(unk),
            bos_id: id(bos),
            eos_id: id(eos),
            add_dummy_prefix: add_dummy,
            remove_extra_whitespaces: remove_ws,
            escape_whitespaces: escape_ws,
            treat_whitespace_as_suffix: treat_ws_suffix,
            user_defined,
            user_lens,
        })
    }

    fn normalize(&self, text: &str) -> String {
        let mut s: String = if self.remove_extra_whitespaces {
            let mut out = String::with_capacity(text.len());
            for w in text.split(' ').filter(|w| !w.is_empty()) {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(w);
            }
            out
        } else {
            text.to_string()
        };
        if s.is_empty() {
            return s;
        }
        if self.add_dummy_prefix {
            if self.treat_whitespace_as_suffix {
                s.push(' ');
            } else {
                s.insert(0, ' ');
            }
        }
        if self.escape_whitespaces {
            s = s.replace(' ', "\u{2581}");
        }
        s
    }

    /// A piece merging may produce (SentencePiece's `pieces_`: normal, user-defined, unused).
    fn mergeable(&self, piece: &str) -> Option<u32> {
        let id = self.vocab.id(piece)?;
        let a = self.vocab.attr(id);
        (a & (attr::NORMAL | attr::USER_DEFINED | attr::UNUSED) != 0).then_some(id)
    }

    /// SentencePiece's `Encode` → ids (no BOS/EOS).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let norm = self.normalize(text);
        let mut symbols = Vec::new();
        let mut pos = 0;
        while pos < norm.len() {
            let mut matched = 0;
            for &l in &self.user_lens {
                if let Some(p) = norm.get(pos..pos + l) {
                    if self.user_defined.contains_key(p) {
                        matched = l;
                        break;
                    }
                }
            }
            let frozen = matched > 0;
            if !frozen {
                matched = norm[pos..].chars().next().map_or(1, char::len_utf8);
            }
            symbols.push(spm::Symbol {
                start: pos,
                len: matched,
                frozen,
            });
            pos += matched;
        }
        let mut rev_merge: HashMap<String, (String, String)> = HashMap::new();
        let finals = spm::merge(
            &norm,
            &symbols,
            |p| self.mergeable(p).map(|id| self.vocab.scores[id as usize]),
            |piece, l, r| {
                if let Some(id) = self.mergeable(piece) {
                    if self.vocab.attr(id) & attr::UNUSED != 0 {
                        rev_merge.insert(
                            piece.to_string(),
                            (
                                norm[l.0..l.0 + l.1].to_string(),
                                norm[r.0..r.0 + r.1].to_string(),
                            ),
                        );
                    }
                }
            },
        );
        for (s, l) in finals {
            self.resegment(&norm[s..s + l], &rev_merge, out, 0)?;
        }
        Ok(())
    }

    fn resegment(
        &self,
        piece: &str,
        rev_merge: &HashMap<String, (String, String)>,
        out: &mut Vec<u32>,
        depth: usize,
    ) -> Result<()> {
        let id = self.vocab.id(piece);
        if let Some(id) = id {
            if self.vocab.attr(id) & attr::UNUSED != 0 && depth < 64 {
                if let Some((l, r)) = rev_merge.get(piece) {
                    self.resegment(l, rev_merge, out, depth + 1)?;
                    return self.resegment(r, rev_merge, out, depth + 1);
                }
            }
            if Some(id) != self.unk_id {
                out.push(id);
                return Ok(());
            }
        }
        if self.byte_fallback {
            for b in piece.bytes() {
                let id = self
                    .vocab
                    .id(&format!("<0x{b:02X}>"))
                    .ok_or_else(|| invalid(format!("byte fallback piece <0x{b:02X}> missing")))?;
                out.push(id);
            }
            return Ok(());
        }
        out.push(
            self.unk_id
                .ok_or_else(|| invalid("text not encodable and the model has no unk piece"))?,
        );
        Ok(())
    }
}
