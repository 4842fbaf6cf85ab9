//! `POST /v1/embeddings`: OpenAI's request (`input` as a string, strings, token ids or lists of
//! token ids; `encoding_format` `float` or `base64`), answered with the engine's pooled,
//! unit-length final hidden states ([`kiln_engine::embed`]), computed on the engine thread
//! between generation steps.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_engine::openai::EmbeddingList;
use kiln_engine::EngineError;
use serde::Deserialize;

use crate::api::PromptInput;
use crate::completions::submit_error;
use crate::error::ApiError;
use crate::{read_json, AppState};

/// Most inputs per request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// The request body. Unknown fields are refused, as OpenAI's schema does
/// (`additionalProperties: false`).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    pub input: PromptInput,
    /// Any name: with one model loaded every name means it.
    #[serde(default)]
    #[allow(dead_code)]
    pub model: Option<String>,
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Refused: kiln returns the model's whole hidden state.
    #[serde(default)]
    pub dimensions: Option<serde_json::Value>,
    /// An end-user id (OpenAI uses it to watch for abuse); it changes nothing.
    #[serde(default)]
    #[allow(dead_code)]
    pub user: Option<String>,
}

pub(crate) async fn embeddings(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: EmbeddingRequest = read_json(&st, &headers, body).await?;
    if req.dimensions.is_some() {
        return Err(ApiError::invalid(
            "`dimensions` is not supported: kiln returns the model's whole final hidden state.",
        )
        .param("dimensions"));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "`encoding_format` must be \"float\" or \"base64\", got {other:?}"
            ))
            .param("encoding_format"))
        }
    };
    let tokenize = |s: &String| -> Result<Vec<u32>, ApiError> {
        if s.is_empty() {
            return Err(ApiError::invalid("`input` must not contain empty strings").param("input"));
        }
        st.vocab.encode(s, true).map_err(|e| {
            ApiError::invalid(format!("cannot tokenize the input: {e}")).param("input")
        })
    };
    let inputs: Vec<Vec<u32>> = match &req.input {
        PromptInput::Text(s) => vec![tokenize(s)?],
        PromptInput::Texts(v) => v.iter().map(tokenize).collect::<Result<_, _>>()?,
        PromptInput::Ids(ids) => vec![ids.clone()],
        PromptInput::IdLists(v) => v.clone(),
    };
    if inputs.is_empty() {
        return Err(ApiError::invalid("`input` is an empty list").param("input"));
    }
    if inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid(format!(
            "`input` has {} items; at most {MAX_INPUTS} per request",
            inputs.len()
        ))
        .param("input"));
    }
    if let Some(i) = inputs.iter().position(|t| t.is_empty()) {
        return Err(ApiError::invalid(format!(
            "input {i} has no tokens (this tokenizer adds no BOS to an empty text)"
        ))
        .param("input"));
    }
    let prompt_tokens = inputs.iter().map(Vec::len).sum();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Held until the answer comes: dropping it (the client went away) skips a waiting job.
    let _ticket = st
        .scheduler
        .embed(
            inputs,
            st.opts.pooling,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .map_err(|e| submit_error(e).param("input"))?;
    let vectors = rx
        .await
        .map_err(|_| ApiError::internal("the engine stopped"))?
        .map_err(|e| match e {
            EngineError::Invalid(_) | EngineError::ContextLength { .. } | EngineError::Model(_) => {
                ApiError::invalid(e.to_string()).param("input")
            }
            e => ApiError::internal(e.to_string()),
        })?;
    Ok(Json(EmbeddingList::new(
        st.opts.model_id.clone(),
        vectors,
        prompt_tokens,
        base64,
    ))
    .into_response())
}
