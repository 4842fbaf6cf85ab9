//! Request bodies of the OpenAI endpoints and their checks.

use std::collections::HashMap;

use kiln_engine::{GenerateParams, SamplingParams, Speculation};
use serde::Deserialize;

use crate::error::ApiError;

/// `prompt` of `/v1/completions`: a string, a list of strings, token ids, or lists of token ids.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// `stop`: one string or a list.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Fields shared by both endpoints.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct Common {
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopInput>,
    pub n: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub ignore_eos: Option<bool>,
    /// kiln: `false` turns the server's speculative decoding off for this request.
    pub speculative: Option<bool>,
    /// llama-server's per-request draft sizes.
    #[serde(rename = "speculative.n_max")]
    pub speculative_n_max: Option<i64>,
    #[serde(rename = "speculative.n_min")]
    pub speculative_n_min: Option<i64>,
    #[serde(rename = "speculative.p_min")]
    pub speculative_p_min: Option<f32>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct CompletionRequest {
    pub prompt: PromptInput,
    pub max_tokens: Option<i64>,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub common: Common,
}

/// `content` of a chat message: a string, or a list of parts of which the text ones are used.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug, Clone)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub common: Common,
}

/// The message roles OpenAI's chat API knows.
pub const CHAT_ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Most alternatives reported per token.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most choices per prompt.
pub const MAX_N: usize = 16;

fn non_negative(v: Option<i64>, name: &str) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x < 0 => {
            Err(ApiError::invalid(format!("`{name}` must be ≥ 0, got {x}")).param(name))
        }
        Some(x) => Ok(Some(x as usize)),
    }
}

impl Common {
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    pub fn n(&self) -> Result<usize, ApiError> {
        let n = non_negative(self.n, "n")?.unwrap_or(1);
        if n == 0 || n > MAX_N {
            return Err(
                ApiError::invalid(format!("`n` must be in 1..={MAX_N}, got {n}")).param("n"),
            );
        }
        Ok(n)
    }

    /// The request's speculative decoding: the server's, unless the request turns it off or
    /// changes the draft sizes.
    pub fn speculation(&self, server: &Speculation) -> Result<Speculation, ApiError> {
        if self.speculative == Some(false) {
            return Ok(Speculation::off());
        }
        let mut s = server.clone();
        if let Some(n) = non_negative(self.speculative_n_max, "speculative.n_max")? {
            s.draft_max = n;
        }
        if let Some(n) = non_negative(self.speculative_n_min, "speculative.n_min")? {
            s.draft_min = n;
        }
        if let Some(p) = self.speculative_p_min {
            s.p_min = p;
        }
        s.validate().map_err(|e| {
            ApiError::invalid(format!("speculative decoding: {e}")).param("speculative")
        })?;
        Ok(s)
    }

    /// The generation parameters (without the token budget and logprobs, set per endpoint).
    /// `default_seed` is used when the request gives none.
    pub fn params(&self, default_seed: u64) -> Result<GenerateParams, ApiError> {
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopInput::One(s)) => vec![s.clone()],
            Some(StopInput::Many(v)) => v.clone(),
        };
        if stop.len() > 16 {
            return Err(ApiError::invalid("`stop` has more than 16 strings").param("stop"));
        }
        let mut logit_bias = Vec::new();
        for (k, &v) in self.logit_bias.iter().flatten() {
            let id: u32 = k.trim().parse().map_err(|_| {
                ApiError::invalid(format!("`logit_bias` keys must be token ids, got {k:?}"))
                    .param("logit_bias")
            })?;
            if !(-100.0..=100.0).contains(&v) {
                return Err(ApiError::invalid(format!(
                    "`logit_bias` values must be in [-100, 100], got {v}"
                ))
                .param("logit_bias"));
            }
            logit_bias.push((id, v));
        }
        logit_bias.sort_by_key(|&(id, _)| id);
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: non_negative(self.top_k, "top_k")?.unwrap_or(0),
            min_p: self.min_p.unwrap_or(0.0),
            repeat_penalty: self.repeat_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logit_bias,
            seed: self.seed.map(|s| s as u64).unwrap_or(default_seed),
        };
        if !(0.0..=2.0).contains(&sampling.temperature) {
            return Err(ApiError::invalid(format!(
                "`temperature` must be in [0, 2], got {}",
                sampling.temperature
            ))
            .param("temperature"));
        }
        for (name, v) in [
            ("presence_penalty", sampling.presence_penalty),
            ("frequency_penalty", sampling.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(
                    ApiError::invalid(format!("`{name}` must be in [-2, 2], got {v}")).param(name),
                );
            }
        }
        sampling.validate().map_err(ApiError::invalid)?;
        Ok(GenerateParams {
            max_tokens: 16,
            sampling,
            stop,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            logprobs: None,
            echo: false,
            speculation: Speculation::off(),
        })
    }
}

impl CompletionRequest {
    pub fn params(&self, default_seed: u64) -> Result<GenerateParams, ApiError> {
        let mut p = self.common.params(default_seed)?;
        p.max_tokens = non_negative(self.max_tokens, "max_tokens")?.unwrap_or(16);
        p.logprobs = non_negative(self.logprobs, "logprobs")?;
        if p.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(
                ApiError::invalid(format!("`logprobs` must be in 0..={MAX_TOP_LOGPROBS}"))
                    .param("logprobs"),
            );
        }
        p.echo = self.echo.unwrap_or(false);
        Ok(p)
    }
}

impl ChatRequest {
    /// `max_tokens` is `None` when the request sets no limit (the context then limits).
    pub fn params(&self, default_seed: u64) -> Result<(GenerateParams, Option<usize>), ApiError> {
        let mut p = self.common.params(default_seed)?;
        let max = match non_negative(self.max_completion_tokens, "max_completion_tokens")? {
            Some(m) => Some(m),
            None => non_negative(self.max_tokens, "max_tokens")?,
        };
        if self.logprobs.unwrap_or(false) {
            let top = non_negative(self.top_logprobs, "top_logprobs")?.unwrap_or(0);
            if top > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid(format!(
                    "`top_logprobs` must be in 0..={MAX_TOP_LOGPROBS}"
                ))
                .param("top_logprobs"));
            }
            p.logprobs = Some(top);
        } else if self.top_logprobs.is_some() {
            return Err(
                ApiError::invalid("`top_logprobs` requires `logprobs: true`").param("top_logprobs"),
            );
        }
        Ok((p, max))
    }

    /// The messages as plain text, for the template.
    pub fn template_messages(&self) -> Result<Vec<kiln_tokenizer::ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("`messages` is empty").param("messages"));
        }
        self.messages
            .iter()
            .map(|m| {
                // A role a template does not expect is skipped or mis-rendered without a word.
                if !CHAT_ROLES.contains(&m.role.as_str()) {
                    return Err(ApiError::invalid(format!(
                        "unknown message role {:?}: expected one of {}",
                        m.role,
                        CHAT_ROLES.join(", ")
                    ))
                    .param("messages"));
                }
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(s)) => s.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut s = String::new();
                        for p in parts {
                            if p.kind != "text" {
                                return Err(ApiError::invalid(format!(
                                    "message content of type {:?} is not supported (text only)",
                                    p.kind
                                ))
                                .param("messages"));
                            }
                            s.push_str(p.text.as_deref().unwrap_or(""));
                        }
                        s
                    }
                };
                Ok(kiln_tokenizer::ChatMessage {
                    role: m.role.clone(),
                    content,
                })
            })
            .collect()
    }
}
