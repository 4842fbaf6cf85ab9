//! `kiln serve`: an OpenAI-compatible HTTP server (axum + tokio) over the continuous-batching
//! [`Scheduler`].
//!
//! Endpoints: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`,
//! `POST /v1/embeddings`, `GET /health`, `GET /metrics`. Streams are server-sent events as OpenAI sends them
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
mod embeddings;
pub mod error;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_engine::openai;
use kiln_engine::scheduler::{self, Scheduler, SchedulerConfig, Vocab};
use kiln_engine::tools::{fold_tools_into_messages, template_renders_tools, Function};
use kiln_engine::{EngineError, Pooling, Speculation};
use kiln_models::CausalLM;
use kiln_tokenizer::{builtin_chat_template_names, render_chat_template_with_tools, ChatMessage};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Server settings that are not the scheduler's.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The model's id: responses name it, and `/v1/models` lists it first.
    pub model_id: String,
    /// More names `/v1/models` lists for the same model (`kiln serve --alias`). A request's
    /// `model` needs not be any of them: with one model loaded every name means it.
    pub aliases: Vec<String>,
    /// When set, every endpoint but `/health` wants `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Request bodies larger than this get 413.
    pub max_body_bytes: usize,
    /// A client that has not sent a request's headers within this is disconnected.
    pub header_timeout: Duration,
    /// A request whose body has not arrived whole within this gets 408.
    pub body_timeout: Duration,
    /// After shutdown begins, open connections get this long to finish; then they are closed.
    pub drain_timeout: Duration,
    /// Longest a chat template may render (templates come from the model file: untrusted).
    pub template_timeout: Duration,
    /// How `/v1/embeddings` pools a text's hidden states (`kiln serve --pooling`).
    pub pooling: Pooling,
    /// Speculative decoding for every request (`kiln serve --model-draft`, `--lookup-ngram`);
    /// a request may turn it off (`"speculative": false`) or change the draft sizes
    /// (llama-server's `speculative.n_max`, `speculative.n_min`, `speculative.p_min`).
    pub speculation: Speculation,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            model_id: "kiln".into(),
            aliases: Vec::new(),
            api_key: None,
            max_body_bytes: 2 << 20,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            template_timeout: Duration::from_secs(10),
            pooling: Pooling::default(),
            speculation: Speculation::off(),
        }
    }
}

/// Chat templates rendering at once. A template that never ends keeps its thread (a thread
/// cannot be stopped), so this bounds how many cores hostile templates can take.
const TEMPLATE_RENDERS: usize = 4;

/// Everything the handlers share.
pub struct AppState {
    pub scheduler: Arc<Scheduler>,
    pub vocab: Arc<dyn Vocab>,
    /// The template chat requests are rendered with (the model's, or `--chat-template`);
    /// without one, chat requests are refused (400), never guessed.
    pub chat_template: Option<String>,
    pub opts: ServerOptions,
    eos: Vec<u32>,
    created: u64,
    next_id: AtomicU64,
    /// HTTP responses by (endpoint, status).
    responses: Mutex<BTreeMap<(String, u16), u64>>,
    /// Permits to render a chat template (see [`TEMPLATE_RENDERS`]).
    template_renders: Arc<Semaphore>,
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
            template_renders: Arc::new(Semaphore::new(TEMPLATE_RENDERS)),
        })
    }

    /// The state `kiln serve` runs: a continuous-batching [`Scheduler`] over `model` (with
    /// `draft` for the requests that speculate), `vocab` for both, and the end-of-sequence ids
    /// of the model's config added to the tokenizer's. Fails as
    /// [`Scheduler::start_with_draft`] does (a draft whose vocabulary differs).
    pub fn start(
        model: Box<dyn CausalLM>,
        draft: Option<Arc<dyn CausalLM>>,
        vocab: Arc<dyn Vocab>,
        chat_template: Option<String>,
        cfg: SchedulerConfig,
        opts: ServerOptions,
    ) -> Result<Arc<AppState>, EngineError> {
        let extra_eos = model.config().eos_token_ids.clone();
        let scheduler = Scheduler::start_with_draft(model, draft, vocab.clone(), cfg)?;
        Ok(AppState::new(
            Arc::new(scheduler),
            vocab,
            chat_template,
            &extra_eos,
            opts,
        ))
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

    /// Every name a `GET /v1/models/{id}` finds: the id and the aliases, each also with or
    /// without `.gguf`.
    fn known_model(&self, m: &str) -> Option<&str> {
        self.model_names().find(|id| {
            m == *id || m.strip_suffix(".gguf") == Some(id) || id.strip_suffix(".gguf") == Some(m)
        })
    }

    /// The id, then the aliases, each once.
    fn model_names(&self) -> impl Iterator<Item = &str> {
        let id = self.opts.model_id.as_str();
        std::iter::once(id).chain(
            self.opts
                .aliases
                .iter()
                .enumerate()
                .filter(move |(i, a)| a.as_str() != id && !self.opts.aliases[..*i].contains(a))
                .map(|(_, a)| a.as_str()),
        )
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
        .route("/v1/embeddings", post(embeddings::embeddings))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then lets open requests finish (streams included) for up
/// to [`ServerOptions::drain_timeout`], closes the connections still open, and drains the
/// scheduler.
///
/// Connections are HTTP/1.1 with a header-read timeout ([`ServerOptions::header_timeout`]), so a
/// client that never finishes its headers cannot hold a connection, and with half-close
/// support: a client that sends its request and then shuts down its write side still gets
/// the reply.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let scheduler = state.scheduler.clone();
    let drain = state.opts.drain_timeout;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.opts.header_timeout)
        .half_close(true);
    let app = router(state);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of descriptors and the like: wait a little instead of spinning.
                        eprintln!("kiln serve: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let tcp = Arc::new(tcp);
                let io = TokioIo::new(SharedSocket(tcp.clone()));
                let svc = TowerToHyperService::new(app.clone());
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ClientSocket(tcp.clone()));
                    hyper::service::Service::call(&svc, req)
                });
                let conn = http.serve_connection(io, svc);
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        eprintln!(
            "kiln serve: closing {} connection(s) still open after {:?}",
            conns.len(),
            drain
        );
        // Dropping a connection closes its socket; streams it fed cancel their requests.
        conns.shutdown().await;
    }
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
        "/health"
        | "/metrics"
        | "/v1/models"
        | "/v1/completions"
        | "/v1/chat/completions"
        | "/v1/embeddings" => path.clone(),
        p if p.starts_with("/v1/models/") => "/v1/models/{id}".into(),
        _ => "other".into(),
    };
    let socket = req.extensions().get::<ClientSocket>().cloned();
    let response = if path != "/health" && !authorized(&st, req.headers()) {
        ApiError::unauthorized().into_response()
    } else if let (Some(ClientSocket(socket)), true) = (socket, req.method() == Method::POST) {
        reply_watching_eof(req, next, socket).await
    } else {
        next.run(req).await
    };
    if let Ok(mut m) = st.responses.lock() {
        *m.entry((endpoint, response.status().as_u16())).or_insert(0) += 1;
    }
    response
}

/// The connection's socket, for [`reply_watching_eof`] to see the client end its side.
#[derive(Clone)]
struct ClientSocket(Arc<tokio::net::TcpStream>);

/// A connection's socket, shared: hyper reads and writes it, and [`reply_watching_eof`] peeks
/// at it while a reply is pending (hyper does not read then, so that half-closed requests get
/// their replies).
struct SharedSocket(Arc<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for SharedSocket {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for SharedSocket {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return std::task::Poll::Ready(r),
            }
        }
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return std::task::Poll::Ready(r),
            }
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    /// The socket closes (FIN) when the connection drops its last handle.
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Whitespace sent this often to a client that ended its side while its reply is pending.
const EOF_HEARTBEAT: Duration = Duration::from_millis(250);

/// A POST whose client ends its side of the connection after sending the whole request has
/// either half-closed (and waits for the reply) or gone away, and a socket cannot tell which
/// until something is written to it. So the reply starts then: status 200, a JSON body led by
/// a space every [`EOF_HEARTBEAT`]. A client that waits gets its answer (an error that comes
/// later keeps its OpenAI-shaped body under status 200); one that left resets the connection,
/// the reply is dropped, and with it the request's generation.
async fn reply_watching_eof(
    req: Request,
    next: Next,
    socket: Arc<tokio::net::TcpStream>,
) -> Response {
    use futures_util::StreamExt;
    let (parts, body) = req.into_parts();
    // Whether the handler read the whole body: an EOF before that is a cut-short body (400).
    let (read_tx, mut read_rx) = tokio::sync::watch::channel(false);
    let body = futures_util::stream::unfold(
        (body.into_data_stream(), Some(read_tx)),
        |(mut chunks, read)| async move {
            match chunks.next().await {
                Some(chunk) => Some((chunk, (chunks, read))),
                None => {
                    if let Some(r) = read {
                        r.send_replace(true);
                    }
                    None
                }
            }
        },
    );
    let mut reply = Box::pin(next.run(Request::from_parts(parts, Body::from_stream(body))));
    let ended_after_request = async {
        if read_rx.wait_for(|r| *r).await.is_err() {
            return std::future::pending::<()>().await;
        }
        let mut byte = [0u8; 1];
        match socket.peek(&mut byte).await {
            // EOF, or a reset: the client ended its side.
            Ok(0) | Err(_) => {}
            // A next request, pipelined: the client is there.
            Ok(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        r = &mut reply => return r,
        _ = ended_after_request => {}
    }
    enum State<F> {
        Waiting(std::pin::Pin<Box<F>>),
        Forwarding(axum::body::BodyDataStream),
    }
    let stream = futures_util::stream::unfold(State::Waiting(reply), |state| async move {
        match state {
            State::Waiting(mut reply) => tokio::select! {
                r = &mut reply => {
                    let mut data = r.into_body().into_data_stream();
                    let first = data.next().await?;
                    Some((first, State::Forwarding(data)))
                }
                _ = tokio::time::sleep(EOF_HEARTBEAT) => {
                    Some((Ok(Bytes::from_static(b" ")), State::Waiting(reply)))
                }
            },
            State::Forwarding(mut data) => {
                let next = data.next().await?;
                Some((next, State::Forwarding(data)))
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| ApiError::internal("response").into_response())
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
        "Unknown endpoint: this server has /v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings, /health and /metrics.",
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!(
            "Method {} is not allowed for {}.",
            req.method(),
            req.uri().path()
        ),
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

fn model_object(st: &AppState, id: &str) -> openai::Model {
    openai::Model {
        id: id.to_string(),
        object: "model",
        created: st.created,
        owned_by: "kiln".into(),
        context_length: st.scheduler.config().context,
    }
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    let list = st.model_names().map(|id| model_object(&st, id)).collect();
    Json(openai::ModelList::new(list)).into_response()
}

async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if let Some(name) = st.known_model(&id) {
        Json(model_object(&st, name)).into_response()
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
        "kiln_draft_tokens_total",
        "counter",
        "Tokens drafted for speculative decoding and verified by the model.",
        one(s.draft_tokens.to_string()),
    );
    metric(
        "kiln_draft_tokens_accepted_total",
        "counter",
        "Drafted tokens the model accepted.",
        one(s.draft_accepted.to_string()),
    );
    metric(
        "kiln_draft_acceptance_rate",
        "gauge",
        "Accepted drafted tokens per drafted token since start (0 before any draft).",
        one(format!(
            "{}",
            if s.draft_tokens > 0 {
                s.draft_accepted as f64 / s.draft_tokens as f64
            } else {
                0.0
            }
        )),
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

/// Reads and parses a JSON body: 413 over the limit, 408 when it does not arrive in time, 400
/// for a malformed or cut-short body and for bad JSON or types.
async fn read_json<T: DeserializeOwned>(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = read_body(st, headers, body).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("The body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid("The body must be a JSON object."));
    }
    serde_json::from_value(value).map_err(|e| ApiError::invalid(format!("Invalid request: {e}")))
}

async fn read_body(st: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    use futures_util::StreamExt;
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
    let collect = async {
        let mut buf = Vec::new();
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::invalid(format!(
                    "The request body could not be read: {}",
                    error_chain(&e)
                ))
                .code("invalid_body")
            })?;
            // Chunked bodies declare no length: count as they come.
            if buf.len() + chunk.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    let timeout = st.opts.body_timeout;
    tokio::time::timeout(timeout, collect)
        .await
        .unwrap_or_else(|_| Err(ApiError::body_timeout(timeout)))
}

/// An error and its sources, `: `-separated (axum's body error says only "error reading a body").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// Renders the chat template (the model's, or `--chat-template`'s) on a thread of its own with a
/// deadline, so a slow or endless template cannot stall the async runtime (`/health` included).
/// A template that fails or runs out of time is a 500: the template, not the request, is at
/// fault. Without a template the request is a 400: no format is guessed.
pub(crate) async fn render_chat(
    st: &AppState,
    messages: Vec<ChatMessage>,
    functions: Option<Vec<Function>>,
) -> Result<String, ApiError> {
    let Some(template) = st.chat_template.clone() else {
        return Err(ApiError::invalid(format!(
            "This model has no chat template, so chat requests cannot be formatted. Start kiln serve \
             with --chat-template NAME (built in: {}) or --chat-template FILE (a Jinja template), \
             or send the prompt as text to /v1/completions.",
            builtin_chat_template_names()
        ))
        .param("messages")
        .code("chat_template_missing"));
    };
    let timeout = st.opts.template_timeout;
    let too_slow = || {
        ApiError::internal(format!(
            "The model's chat template did not finish rendering within {} s.",
            timeout.as_secs_f32()
        ))
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let permit = tokio::time::timeout_at(deadline, st.template_renders.clone().acquire_owned())
        .await
        .map_err(|_| too_slow())?
        .map_err(|_| ApiError::internal("the template renderer is closed"))?;
    let (bos, eos) = (st.vocab.bos_token(), st.vocab.eos_token());
    // A template that renders tools gets them (and the calls and results in the history) as
    // transformers passes them; for one that does not, they become text in the messages.
    let (messages, tools) = if template_renders_tools(&template) {
        let tools: Option<Vec<Value>> =
            functions.map(|fs| fs.iter().map(Function::to_openai).collect());
        (messages, tools)
    } else {
        (
            fold_tools_into_messages(messages, functions.as_deref()),
            None,
        )
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own, not the runtime's blocking pool: a runtime waits for its blocking
    // tasks when it shuts down, and an endless template would keep the server from exiting.
    std::thread::Builder::new()
        .name("kiln-template".into())
        .spawn(move || {
            let _permit = permit;
            let _ = tx.send(render_chat_template_with_tools(
                &template,
                &messages,
                tools.as_deref(),
                true,
                &bos,
                &eos,
            ));
        })
        .map_err(|e| ApiError::internal(format!("cannot start the template renderer: {e}")))?;
    match tokio::time::timeout_at(deadline, rx).await {
        Err(_) => Err(too_slow()),
        // The thread ended without a result: the renderer panicked.
        Ok(Err(_)) => Err(ApiError::internal(
            "The model's chat template failed: the renderer stopped",
        )),
        Ok(Ok(Err(e))) => Err(ApiError::internal(format!(
            "The model's chat template failed: {e}"
        ))),
        Ok(Ok(Ok(text))) => Ok(text),
    }
}
