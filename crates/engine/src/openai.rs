//! OpenAI's response objects as typed structs, shared by the server and `kiln complete --json`:
//! text completions, chat completions, their stream chunks, usage, logprobs (legacy and chat
//! forms), errors and model objects.
//!
//! kiln's extension fields: every choice (and a stream's last chunk of a choice) carries
//! `prompt_token_ids` (the prompt as tokenized, BOS included) and `token_ids` (generated ids);
//! model objects carry `context_length`.
//!
//! Every log-probability is an `f32` and is written as one (the shortest text that reads back
//! as the same `f32`), so a value prints identically wherever it appears: a client comparing
//! `token_logprobs[i]` with `max(top_logprobs[i].values())` sees greedy tokens as greedy.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::scheduler::Vocab;
use crate::{Completion, GenerateParams, TokenLogprob};

/// What OpenAI writes for a log-probability it does not have.
pub const MISSING_LOGPROB: f32 = -9999.0;

#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    /// Adds one finished choice. OpenAI counts a prompt once, however many choices (`n`) it
    /// has: `first_of_prompt` marks the choice that counts it.
    pub fn add(&mut self, c: &Completion, first_of_prompt: bool) {
        if first_of_prompt {
            self.prompt_tokens += c.prompt_token_ids.len();
        }
        self.completion_tokens += c.token_ids.len();
        self.total_tokens = self.prompt_tokens + self.completion_tokens;
    }

    /// The usage of finished choices in request order, `n` consecutive choices per prompt.
    pub fn of(completions: &[Completion], n: usize) -> Usage {
        let mut u = Usage::default();
        for (i, c) in completions.iter().enumerate() {
            u.add(c, i % n.max(1) == 0);
        }
        u
    }
}

/// The parameters of the `j`-th choice of a prompt: its seed is `seed + j`, so `n` sampled
/// choices differ and each can be reproduced alone.
pub fn choice_params(p: &GenerateParams, j: usize) -> GenerateParams {
    let mut p = p.clone();
    p.sampling.seed = p.sampling.seed.wrapping_add(j as u64);
    p
}

/// A token's name in logprobs: its text, or OpenAI's `bytes:\xe2\x80` form when its bytes are
/// not valid UTF-8 (byte-fallback pieces), so distinct tokens do not all read as U+FFFD.
pub fn token_name(vocab: &dyn Vocab, id: u32, text: &str) -> String {
    let bytes = vocab.token_bytes(id);
    if std::str::from_utf8(&bytes).is_ok() {
        return text.to_string();
    }
    let mut s = String::from("bytes:");
    for b in bytes {
        s.push_str(&format!("\\x{b:02x}"));
    }
    s
}

/// The alternatives at one position, most likely first, written as a JSON object. Tokens with
/// the same name (the same bytes) keep the most likely one's value: a JSON object cannot hold a
/// key twice, and a later duplicate would replace the maximum in most parsers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprobs(pub Vec<(String, f32)>);

impl TopLogprobs {
    fn new(vocab: &dyn Vocab, top: &[(u32, String, f32)]) -> TopLogprobs {
        let mut out: Vec<(String, f32)> = Vec::with_capacity(top.len());
        for (id, text, v) in top {
            let name = token_name(vocab, *id, text);
            if !out.iter().any(|(k, _)| *k == name) {
                out.push((name, *v));
            }
        }
        TopLogprobs(out)
    }
}

impl Serialize for TopLogprobs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The legacy completions `logprobs` object.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct Logprobs {
    pub tokens: Vec<String>,
    /// `None` (null) for the first prompt token, which nothing predicts.
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<TopLogprobs>>,
    pub text_offset: Vec<usize>,
}

impl Logprobs {
    /// Appends one token; `with_top` gives it an (possibly empty) alternatives object.
    pub fn push(&mut self, vocab: &dyn Vocab, t: &TokenLogprob, with_top: bool) {
        self.tokens.push(token_name(vocab, t.id, &t.text));
        self.token_logprobs.push(t.logprob);
        self.top_logprobs.push(match t.logprob {
            Some(_) if with_top || !t.top.is_empty() => Some(TopLogprobs::new(vocab, &t.top)),
            _ => None,
        });
        self.text_offset.push(t.text_offset);
    }

    /// The entries of one token.
    pub fn one(vocab: &dyn Vocab, t: &TokenLogprob) -> Logprobs {
        let mut lp = Logprobs::default();
        lp.push(vocab, t, true);
        lp
    }
}

/// kiln's extension of every choice: the token ids (a stream sends them in a choice's last
/// chunk).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TokenIds {
    /// The prompt as tokenized, BOS included.
    pub prompt_token_ids: Vec<u32>,
    /// The generated ids.
    pub token_ids: Vec<u32>,
}

impl TokenIds {
    pub fn of(c: &Completion) -> TokenIds {
        TokenIds {
            prompt_token_ids: c.prompt_token_ids.clone(),
            token_ids: c.token_ids.clone(),
        }
    }
}

/// A response or stream chunk: what every object of one request shares, and its choices.
/// [`TextCompletion`], [`ChatCompletion`] and [`ChatChunk`] are its kinds.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Object<C> {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<C>,
    /// Always there in whole responses. In stream chunks absent (`None`) unless usage was asked
    /// for; then null (`Some(None)`) in every chunk but the last, which has only the usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// `text_completion`: a whole response, or a stream chunk (OpenAI uses one shape for both).
pub type TextCompletion = Object<TextChoice>;
/// `chat.completion`.
pub type ChatCompletion = Object<ChatChoice>;
/// `chat.completion.chunk`.
pub type ChatChunk = Object<ChatChunkChoice>;

/// One choice of a text completion, or a piece of one in a stream chunk.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TextChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<Logprobs>,
    /// Null in a stream until the choice's last chunk.
    pub finish_reason: Option<&'static str>,
    #[serde(flatten)]
    pub ids: Option<TokenIds>,
}

/// The fields every response and chunk of one request shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Header {
    fn object<C>(
        &self,
        object: &'static str,
        choices: Vec<C>,
        usage: Option<Option<Usage>>,
    ) -> Object<C> {
        Object {
            id: self.id.clone(),
            object,
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    /// A text completion stream chunk; `include_usage` makes its `usage` null.
    pub fn text_chunk(&self, choices: Vec<TextChoice>, include_usage: bool) -> TextCompletion {
        self.object("text_completion", choices, include_usage.then_some(None))
    }

    /// A chat stream chunk; `include_usage` makes its `usage` null.
    pub fn chat_chunk(&self, choices: Vec<ChatChunkChoice>, include_usage: bool) -> ChatChunk {
        self.object(
            "chat.completion.chunk",
            choices,
            include_usage.then_some(None),
        )
    }
}

/// One choice per completion, in order, `n` consecutive choices per prompt; with echo the text
/// and logprobs cover the prompt first.
pub fn text_completion(
    h: &Header,
    vocab: &dyn Vocab,
    completions: &[Completion],
    n: usize,
    echo: bool,
) -> TextCompletion {
    let choices = completions
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let logprobs = c.logprobs.as_ref().map(|generated| {
                let mut lp = Logprobs::default();
                if echo {
                    for t in c.prompt_logprobs.iter().flatten() {
                        lp.push(vocab, t, false);
                    }
                }
                for t in generated {
                    lp.push(vocab, t, true);
                }
                lp
            });
            let text = if echo {
                format!("{}{}", c.prompt_text, c.text)
            } else {
                c.text.clone()
            };
            TextChoice {
                index,
                text,
                logprobs,
                finish_reason: Some(c.finish_reason.as_str()),
                ids: Some(TokenIds::of(c)),
            }
        })
        .collect();
    let usage = Usage::of(completions, n);
    h.object("text_completion", choices, Some(Some(usage)))
}

/// One alternative in chat logprobs.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    /// The token's raw bytes (a piece of a character for byte-fallback tokens).
    pub bytes: Vec<u8>,
}

/// `ChatCompletionTokenLogprob`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

impl ChatTokenLogprob {
    pub fn new(vocab: &dyn Vocab, t: &TokenLogprob) -> ChatTokenLogprob {
        ChatTokenLogprob {
            token: token_name(vocab, t.id, &t.text),
            logprob: t.logprob.unwrap_or(MISSING_LOGPROB),
            bytes: vocab.token_bytes(t.id),
            top_logprobs: t
                .top
                .iter()
                .map(|(id, text, v)| ChatTopLogprob {
                    token: token_name(vocab, *id, text),
                    logprob: *v,
                    bytes: vocab.token_bytes(*id),
                })
                .collect(),
        }
    }
}

/// A chat choice's `logprobs`: the content tokens (end-of-sequence tokens left out: they are not
/// part of the message).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    /// Always null: kiln has no refusals.
    pub refusal: Option<Vec<ChatTokenLogprob>>,
}

impl ChatLogprobs {
    pub fn new<'a>(
        vocab: &dyn Vocab,
        eos: &[u32],
        tokens: impl IntoIterator<Item = &'a TokenLogprob>,
    ) -> ChatLogprobs {
        ChatLogprobs {
            content: tokens
                .into_iter()
                .filter(|t| !eos.contains(&t.id))
                .map(|t| ChatTokenLogprob::new(vocab, t))
                .collect(),
            refusal: None,
        }
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: &'static str,
    /// Null when the message is only tool calls.
    pub content: Option<String>,
    pub refusal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// A function call in an assistant message.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// A function call in a stream chunk's delta: kiln sends each call whole, in one chunk.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ToolCallDelta {
    pub index: usize,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
    #[serde(flatten)]
    pub ids: TokenIds,
}

/// One choice per completion (all of one prompt); `eos` ids are left out of the logprobs.
pub fn chat_completion(
    h: &Header,
    vocab: &dyn Vocab,
    eos: &[u32],
    completions: &[Completion],
) -> ChatCompletion {
    let choices = completions
        .iter()
        .enumerate()
        .map(|(index, c)| ChatChoice {
            index,
            message: ChatMessage {
                role: "assistant",
                content: Some(c.text.clone()),
                refusal: None,
                tool_calls: None,
            },
            logprobs: c
                .logprobs
                .as_ref()
                .map(|lp| ChatLogprobs::new(vocab, eos, lp)),
            finish_reason: c.finish_reason.as_str(),
            ids: TokenIds::of(c),
        })
        .collect();
    let usage = Usage::of(completions, completions.len());
    h.object("chat.completion", choices, Some(Some(usage)))
}

/// A stream chunk's `delta`.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    /// Null until the choice's last chunk.
    pub finish_reason: Option<&'static str>,
    #[serde(flatten)]
    pub ids: Option<TokenIds>,
}

/// `{"error": {...}}`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ErrorResponse {
    pub error: ErrorObject,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// A `model` object.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Model {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
    /// kiln: positions per sequence.
    pub context_length: usize,
}

/// `GET /v1/models`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}

impl ModelList {
    pub fn new(data: Vec<Model>) -> ModelList {
        ModelList {
            object: "list",
            data,
        }
    }
}

/// One vector of `/v1/embeddings`: floats, or (`encoding_format: "base64"`) the base64 of its
/// little-endian f32 bytes.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// The `/v1/embeddings` response.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct EmbeddingList {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

impl EmbeddingList {
    /// The response for `vectors` (in input order) from inputs of `prompt_tokens` tokens in
    /// all; `base64` encodes each as OpenAI's `encoding_format: "base64"` does.
    pub fn new(
        model: String,
        vectors: Vec<Vec<f32>>,
        prompt_tokens: usize,
        base64: bool,
    ) -> EmbeddingList {
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, v)| Embedding {
                object: "embedding",
                index,
                embedding: if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    EmbeddingVector::Base64(base64_encode(&bytes))
                } else {
                    EmbeddingVector::Float(v)
                },
            })
            .collect();
        EmbeddingList {
            object: "list",
            data,
            model,
            usage: EmbeddingUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        }
    }
}

/// Standard base64 (RFC 4648, with `=` padding).
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// RFC 4648's test vectors (section 10).
    #[test]
    fn base64_is_rfc_4648() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(super::base64_encode(plain.as_bytes()), encoded);
        }
    }

    use super::*;

    /// Token 0 is "a"; 1 and 2 are lone bytes of a three-byte character (both decode to U+FFFD).
    struct Bytes;

    impl Vocab for Bytes {
        fn encode(&self, _: &str, _: bool) -> Result<Vec<u32>, String> {
            Ok(Vec::new())
        }
        fn decode(&self, ids: &[u32], _: bool) -> String {
            let b: Vec<u8> = ids.iter().flat_map(|&i| self.token_bytes(i)).collect();
            String::from_utf8_lossy(&b).into_owned()
        }
        fn token_bytes(&self, id: u32) -> Vec<u8> {
            match id {
                0 => b"a".to_vec(),
                1 => vec![0xe2],
                _ => vec![0x80],
            }
        }
        fn eos_ids(&self) -> Vec<u32> {
            vec![]
        }
        fn bos_id(&self) -> Option<u32> {
            None
        }
    }

    fn lp(v: f32) -> TokenLogprob {
        TokenLogprob {
            id: 1,
            text: "\u{fffd}".into(),
            logprob: Some(v),
            top: vec![
                (1, "\u{fffd}".into(), v),
                (2, "\u{fffd}".into(), -3.0),
                (0, "a".into(), -4.0),
            ],
            text_offset: 0,
        }
    }

    /// Read back as f64, as Python and most JSON parsers do: the token's value must equal the
    /// same token's value among the alternatives.
    #[test]
    fn a_value_reads_back_the_same_as_token_and_as_alternative() {
        let v = -2.061_052_3_f32;
        // Printed, then parsed (to_value would widen both f32s exactly and hide the difference).
        let read = |s: String| -> serde_json::Value { serde_json::from_str(&s).unwrap() };
        let json = read(serde_json::to_string(&Logprobs::one(&Bytes, &lp(v))).unwrap());
        let token = json["token_logprobs"][0].as_f64().unwrap();
        assert_eq!(
            Some(token),
            json["top_logprobs"][0]["bytes:\\xe2"].as_f64(),
            "{json}"
        );
        let chat = read(serde_json::to_string(&ChatTokenLogprob::new(&Bytes, &lp(v))).unwrap());
        assert_eq!(
            chat["logprob"].as_f64(),
            chat["top_logprobs"][0]["logprob"].as_f64()
        );
        assert_eq!(chat["logprob"].as_f64(), Some(token));
    }

    #[test]
    fn byte_pieces_get_distinct_keys_and_raw_bytes() {
        let l = Logprobs::one(&Bytes, &lp(-1.0));
        assert_eq!(l.tokens, vec!["bytes:\\xe2"]);
        let keys: Vec<&str> = l.top_logprobs[0]
            .as_ref()
            .unwrap()
            .0
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, vec!["bytes:\\xe2", "bytes:\\x80", "a"]);
        let c = ChatTokenLogprob::new(&Bytes, &lp(-1.0));
        assert_eq!(c.bytes, vec![0xe2]);
        assert_eq!(c.top_logprobs[1].bytes, vec![0x80]);
        assert_eq!(c.top_logprobs[2].token, "a");
    }

    #[test]
    fn same_name_keeps_the_most_likely_value() {
        let top = TopLogprobs::new(&Bytes, &[(0, "a".into(), -1.0), (0, "a".into(), -5.0)]);
        assert_eq!(top.0, vec![("a".to_string(), -1.0)]);
    }

    fn done(prompt: usize, generated: usize) -> Completion {
        Completion {
            prompt_token_ids: vec![0; prompt],
            token_ids: vec![0; generated],
            prompt_text: String::new(),
            text: String::new(),
            finish_reason: crate::FinishReason::Length,
            prompt_logprobs: None,
            logprobs: None,
            timings: Default::default(),
        }
    }

    #[test]
    fn usage_counts_each_prompt_once() {
        // Two prompts (3 and 5 tokens), two choices each.
        let cs = [done(3, 1), done(3, 2), done(5, 1), done(5, 1)];
        let u = Usage::of(&cs, 2);
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (8, 5, 13)
        );
    }
}
