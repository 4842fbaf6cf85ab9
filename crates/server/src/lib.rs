//! `kiln serve`: an OpenAI-compatible HTTP server (axum + tokio) over the continuous-batching
//! [`Scheduler`].
//!
//! Endpoints: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`,
//! `GET /health`, `GET /metrics`. Streams are server-sent events as OpenAI sends them
//! (`data: {json}` chunks, then `data: [DONE]`). Errors have OpenAI's shape. Every choice
//! carries kiln's `prompt_token_ids` and `token_ids`, as `kiln complete --json` does.
//!
//! ```no_run
//! # async fn f(state: std::sync::Arc<kiln_server::AppState>) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! kiln_server::serve(listener, state, kiln_server::shutdown_signal()).await
//! # }
//! ```

pub mod api;
mod completions;
pub mod error;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_engine::openai;
use kiln_engine::scheduler::{self, Scheduler, Vocab};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::error::ApiError;

/// Server settings that are not the scheduler's.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The id clients use in `model` (and `/v1/models` lists).
    pub model_id: String,
    /// When set, every endpoint but `/health` wants `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Request bodies larger than this get 413.
    pub max_body_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            model_id: "kiln".into(),
            api_key: None,
            max_body_bytes: 2 << 20,
        }
    }
}

/// Everything the handlers share.
pub struct AppState {
    pub scheduler: Arc<Scheduler>,
    pub vocab: Arc<dyn Vocab>,
    pub chat_template: Option<String>,
    pub opts: ServerOptions,
    eos: Vec<u32>,
    created: u64,
    next_id: AtomicU64,
    /// HTTP responses by (endpoint, status).
    responses: Mutex<BTreeMap<(String, u16), u64>>,
}

impl AppState {
    /// `extra_eos`: end-of-sequence ids the model's config adds to the tokenizer's.
    pub fn new(
        scheduler: Arc<Scheduler>,
        vocab: Arc<dyn Vocab>,
        chat_template: Option<String>,
        extra_eos: &[u32],
        opts: ServerOptions,
    ) -> Arc<AppState> {
        let eos = kiln_engine::sequence::eos_ids(vocab.as_ref(), extra_eos);
        Arc::new(AppState {
            scheduler,
            vocab,
            chat_template,
            opts,
            eos,
            created: now(),
            next_id: AtomicU64::new(1),
            responses: Mutex::new(BTreeMap::new()),
        })
    }

    fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:06x}", self.created)
    }

    /// A seed for requests that give none: different every request.
    fn fresh_seed(&self) -> u64 {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn check_model(&self, model: &Option<String>) -> Result<(), ApiError> {
        match model {
            None => Ok(()),
            Some(m) if self.knows_model(m) => Ok(()),
            Some(m) => Err(ApiError::unknown_model(m, &self.opts.model_id)),
        }
    }

    fn knows_model(&self, m: &str) -> bool {
        let id = &self.opts.model_id;
        m == id || m.strip_suffix(".gguf") == Some(id) || id.strip_suffix(".gguf") == Some(m)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The routes, with API-key checking and response counting.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(completions::chat_completions))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then lets open requests finish (streams included) and
/// drains the scheduler.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let scheduler = state.scheduler.clone();
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tokio::task::spawn_blocking(move || scheduler.shutdown())
        .await
        .map_err(std::io::Error::other)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// API key check (constant-time) and counting of responses per endpoint and status.
async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let endpoint = match path.as_str() {
        "/health" | "/metrics" | "/v1/models" | "/v1/completions" | "/v1/chat/completions" => {
            path.clone()
        }
        p if p.starts_with("/v1/models/") => "/v1/models/{id}".into(),
        _ => "other".into(),
    };
    let response = if path != "/health" && !authorized(&st, req.headers()) {
        ApiError::unauthorized().into_response()
    } else {
        next.run(req).await
    };
    if let Ok(mut m) = st.responses.lock() {
        *m.entry((endpoint, response.status().as_u16())).or_insert(0) += 1;
    }
    response
}

fn authorized(st: &AppState, headers: &HeaderMap) -> bool {
    let Some(key) = &st.opts.api_key else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    let (a, b) = (given.as_bytes(), key.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff)) as usize;
    }
    diff == 0
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "Unknown endpoint: this server has /v1/models, /v1/completions, /v1/chat/completions, /health and /metrics.",
    )
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let s = st.scheduler.stats();
    Json(json!({
        "status": "ok",
        "slots_idle": s.slots.saturating_sub(s.running),
        "slots_processing": s.running,
        "queued": s.queued,
    }))
    .into_response()
}

fn model_object(st: &AppState) -> openai::Model {
    openai::Model {
        id: st.opts.model_id.clone(),
        object: "model",
        created: st.created,
        owned_by: "kiln".into(),
        context_length: st.scheduler.config().context,
    }
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    Json(openai::ModelList::new(vec![model_object(&st)])).into_response()
}

async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if st.knows_model(&id) {
        Json(model_object(&st)).into_response()
    } else {
        ApiError::unknown_model(&id, &st.opts.model_id).into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let s = st.scheduler.stats();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    let responses: Vec<(String, String)> = st
        .responses
        .lock()
        .map(|m| {
            m.iter()
                .map(|((e, c), n)| {
                    (
                        format!("{{endpoint=\"{e}\",status=\"{c}\"}}"),
                        n.to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    metric(
        "kiln_http_responses_total",
        "counter",
        "HTTP responses by endpoint and status.",
        responses,
    );
    metric(
        "kiln_requests_total",
        "counter",
        "Generation requests accepted by the scheduler (one per choice).",
        one(s.requests.to_string()),
    );
    metric(
        "kiln_requests_finished_total",
        "counter",
        "Generation requests that ran to the end.",
        one(s.finished.to_string()),
    );
    metric(
        "kiln_requests_cancelled_total",
        "counter",
        "Generation requests cancelled (client gone).",
        one(s.cancelled.to_string()),
    );
    metric(
        "kiln_requests_rejected_total",
        "counter",
        "Generation requests refused because the queue was full.",
        one(s.rejected.to_string()),
    );
    metric(
        "kiln_prompt_tokens_total",
        "counter",
        "Prompt tokens of admitted requests.",
        one(s.prompt_tokens.to_string()),
    );
    metric(
        "kiln_prompt_tokens_cached_total",
        "counter",
        "Prompt tokens reused from the prefix cache instead of computed.",
        one(s.cached_prompt_tokens.to_string()),
    );
    metric(
        "kiln_generated_tokens_total",
        "counter",
        "Generated tokens.",
        one(s.generated_tokens.to_string()),
    );
    metric(
        "kiln_engine_steps_total",
        "counter",
        "Batched forward passes.",
        one(s.steps.to_string()),
    );
    metric(
        "kiln_engine_busy_seconds_total",
        "counter",
        "Time the engine loop spent in steps.",
        one(format!("{}", s.busy_seconds)),
    );
    metric(
        "kiln_queue_depth",
        "gauge",
        "Requests waiting for a slot.",
        one(s.queued.to_string()),
    );
    metric(
        "kiln_running_sequences",
        "gauge",
        "Sequences in the running batch.",
        one(s.running.to_string()),
    );
    metric(
        "kiln_slots",
        "gauge",
        "Sequences that may run at once.",
        one(s.slots.to_string()),
    );
    metric(
        "kiln_tokens_per_second",
        "gauge",
        "Generated tokens per second over the last second or so (0 when idle).",
        one(format!("{}", s.tokens_per_second)),
    );
    let mut hist: Vec<(String, String)> = scheduler::TTFT_BUCKETS
        .iter()
        .zip(&s.ttft_buckets)
        .map(|(le, n)| (format!("_bucket{{le=\"{le}\"}}"), n.to_string()))
        .collect();
    hist.push(("_bucket{le=\"+Inf\"}".into(), s.ttft_count.to_string()));
    hist.push(("_sum".into(), format!("{}", s.ttft_sum_seconds)));
    hist.push(("_count".into(), s.ttft_count.to_string()));
    metric(
        "kiln_time_to_first_token_seconds",
        "histogram",
        "Time from submission to the first generated token.",
        hist,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// Reads and parses a JSON body: 413 over the limit, 400 for bad JSON or types.
async fn read_json<T: DeserializeOwned>(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let limit = st.opts.max_body_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ApiError::too_large(limit));
        }
    }
    let bytes: Bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("The body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid("The body must be a JSON object."));
    }
    serde_json::from_value(value).map_err(|e| ApiError::invalid(format!("Invalid request: {e}")))
}
