//! The OpenAI legacy `text_completion` object, shared by `kiln complete --json` and the server.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{Completion, TokenLogprob};

#[derive(Serialize, Debug)]
pub struct TextCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Serialize, Debug)]
pub struct Choice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<Logprobs>,
    pub finish_reason: &'static str,
    /// kiln: the prompt as tokenized, BOS included.
    pub prompt_token_ids: Vec<u32>,
    /// kiln: generated ids only.
    pub token_ids: Vec<u32>,
}

#[derive(Serialize, Debug, Default)]
pub struct Logprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<Map<String, Value>>>,
    pub text_offset: Vec<usize>,
}

#[derive(Serialize, Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Logprobs {
    fn push(&mut self, t: &TokenLogprob, with_top: bool) {
        self.tokens.push(t.text.clone());
        self.token_logprobs.push(t.logprob);
        self.top_logprobs.push(match t.logprob {
            Some(_) if with_top || !t.top.is_empty() => Some(
                t.top
                    .iter()
                    .map(|(_, s, v)| (s.clone(), Value::from(*v as f64)))
                    .collect(),
            ),
            _ => None,
        });
        self.text_offset.push(t.text_offset);
    }
}

/// One choice per completion, in order; with echo the text and logprobs cover the prompt first.
pub fn text_completion(
    model: &str,
    completions: &[Completion],
    echo: bool,
    id: String,
    created: u64,
) -> TextCompletion {
    let mut usage = Usage::default();
    let choices = completions
        .iter()
        .enumerate()
        .map(|(index, c)| {
            usage.prompt_tokens += c.prompt_token_ids.len();
            usage.completion_tokens += c.token_ids.len();
            let logprobs = c.logprobs.as_ref().map(|gen| {
                let mut lp = Logprobs::default();
                if echo {
                    for t in c.prompt_logprobs.iter().flatten() {
                        lp.push(t, false);
                    }
                }
                for t in gen {
                    lp.push(t, true);
                }
                lp
            });
            let text = if echo {
                format!("{}{}", c.prompt_text, c.text)
            } else {
                c.text.clone()
            };
            Choice {
                index,
                text,
                logprobs,
                finish_reason: c.finish_reason.as_str(),
                prompt_token_ids: c.prompt_token_ids.clone(),
                token_ids: c.token_ids.clone(),
            }
        })
        .collect();
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    TextCompletion {
        id,
        object: "text_completion",
        created,
        model: model.to_string(),
        choices,
        usage,
    }
}
