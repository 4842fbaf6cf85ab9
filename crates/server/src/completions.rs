//! `POST /v1/completions` and `POST /v1/chat/completions` through one pipeline: parse the
//! request into a [`Plan`] (jobs, one per choice), submit the jobs, then either collect the
//! completions into one response or stream server-sent events. Every object written is one of
//! the typed OpenAI structs in [`kiln_engine::openai`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_engine::openai::{
    self, ChatChunkChoice, ChatDelta, ChatLogprobs, Logprobs, TextChoice, TokenIds,
};
use kiln_engine::scheduler::{self, Event, SubmitError, Ticket};
use kiln_engine::{Completion, EngineError, GenerateParams, TokenLogprob};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::api::{ChatRequest, CompletionRequest, PromptInput};
use crate::error::ApiError;
use crate::{now, read_json, AppState};

/// Most choices one request may ask for (prompts × n).
const MAX_CHOICES: usize = 64;

pub(crate) async fn completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = read_json(&st, &headers, body).await?;
    let plan = text_plan(&st, &req)?;
    run(st, plan).await
}

pub(crate) async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: ChatRequest = read_json(&st, &headers, body).await?;
    let plan = chat_plan(&st, &req).await?;
    run(st, plan).await
}

/// Which endpoint's objects a request answers with.
#[derive(Clone, Copy)]
enum Kind {
    Text { echo: bool },
    Chat,
}

/// One submitted choice: its prompt and what it was asked.
struct Job {
    prompt: Vec<u32>,
    params: GenerateParams,
}

/// A parsed request: its jobs, `n` consecutive ones per prompt.
struct Plan {
    kind: Kind,
    n: usize,
    jobs: Vec<Job>,
    stream: bool,
    include_usage: bool,
}

/// `n` jobs per prompt, the j-th with seed `seed + j`.
fn jobs(prompts: &[Vec<u32>], params: &GenerateParams, n: usize) -> Vec<Job> {
    prompts
        .iter()
        .flat_map(|p| {
            (0..n).map(|j| Job {
                prompt: p.clone(),
                params: openai::choice_params(params, j),
            })
        })
        .collect()
}

fn tokenize(st: &AppState, text: &str) -> Result<Vec<u32>, ApiError> {
    st.vocab
        .encode(text, true)
        .map_err(|e| ApiError::invalid(format!("cannot tokenize the prompt: {e}")).param("prompt"))
}

fn text_plan(st: &AppState, req: &CompletionRequest) -> Result<Plan, ApiError> {
    let mut params = req.params(st.fresh_seed())?;
    params.speculation = req.common.speculation(&st.opts.speculation)?;
    let n = req.common.n()?;
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        PromptInput::Text(s) => vec![tokenize(st, s)?],
        PromptInput::Texts(v) => v
            .iter()
            .map(|s| tokenize(st, s))
            .collect::<Result<_, _>>()?,
        PromptInput::Ids(ids) => vec![ids.clone()],
        PromptInput::IdLists(v) => v.clone(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("`prompt` is an empty list").param("prompt"));
    }
    if prompts.len() * n > MAX_CHOICES {
        return Err(ApiError::invalid(format!(
            "at most {MAX_CHOICES} choices per request (prompts × n)"
        ))
        .param("n"));
    }
    Ok(Plan {
        kind: Kind::Text { echo: params.echo },
        n,
        jobs: jobs(&prompts, &params, n),
        stream: req.common.stream(),
        include_usage: req.common.include_usage(),
    })
}

async fn chat_plan(st: &AppState, req: &ChatRequest) -> Result<Plan, ApiError> {
    let (mut params, max) = req.params(st.fresh_seed())?;
    params.speculation = req.common.speculation(&st.opts.speculation)?;
    let n = req.common.n()?;
    let messages = req.template_messages()?;
    // The same rendering as `kiln chat` (the tokenizer crate's; a 400 when there is no template),
    // off the async runtime and with a deadline (the template is the model file's code).
    let bos = st.vocab.bos_token();
    let text = crate::render_chat(st, messages).await?;
    // The template writes BOS itself when the model wants one.
    let add_special = bos.is_empty() || !text.starts_with(&bos);
    let prompt = st
        .vocab
        .encode(&text, add_special)
        .map_err(|e| ApiError::invalid(format!("cannot tokenize the messages: {e}")))?;
    let context = st.scheduler.config().context;
    params.max_tokens = max.unwrap_or(context.saturating_sub(prompt.len()));
    Ok(Plan {
        kind: Kind::Chat,
        n,
        jobs: jobs(&[prompt], &params, n),
        stream: req.common.stream(),
        include_usage: req.common.include_usage(),
    })
}

/// Submits the jobs, then answers with one object or a stream.
async fn run(st: Arc<AppState>, plan: Plan) -> Result<Response, ApiError> {
    let prefix = match plan.kind {
        Kind::Text { .. } => "cmpl",
        Kind::Chat => "chatcmpl",
    };
    let writer = Writer {
        st: st.clone(),
        header: openai::Header {
            id: st.new_id(prefix),
            created: now(),
            model: st.opts.model_id.clone(),
        },
        kind: plan.kind,
        n: plan.n,
        include_usage: plan.include_usage,
    };
    // A stream opens with the echoed prompts (completions) or each choice's role (chat).
    let first = if plan.stream {
        writer.start(&plan.jobs)
    } else {
        Vec::new()
    };
    let n_jobs = plan.jobs.len();
    let (tickets, rx) = submit_all(&st, plan.jobs)?;
    if plan.stream {
        return Ok(stream(writer, first, tickets, rx, n_jobs));
    }
    let results = collect(rx, n_jobs).await?;
    drop(tickets);
    let vocab = st.vocab.as_ref();
    Ok(match plan.kind {
        Kind::Text { echo } => Json(openai::text_completion(
            &writer.header,
            vocab,
            &results,
            plan.n,
            echo,
        ))
        .into_response(),
        Kind::Chat => Json(openai::chat_completion(
            &writer.header,
            vocab,
            &st.eos,
            &results,
        ))
        .into_response(),
    })
}

pub(crate) fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull { .. } => ApiError::busy(e.to_string()),
        SubmitError::ShuttingDown => {
            let mut a = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e.to_string());
            a.retry_after = Some(5);
            a
        }
        SubmitError::Invalid(EngineError::ContextLength { tokens, context }) => ApiError::invalid(
            format!(
                "This model's maximum context length is {context} tokens, but the prompt is {tokens} tokens long."
            ),
        )
        .param("prompt")
        .code("context_length_exceeded"),
        SubmitError::Invalid(inner) => ApiError::invalid(inner.to_string()),
    }
}

/// Events of a request's choices, tagged with the choice's index.
type Events = mpsc::UnboundedReceiver<(usize, Event)>;

/// Submits every job; events arrive tagged with the job's index. On any refusal the jobs
/// already submitted are cancelled (their tickets dropped).
fn submit_all(st: &AppState, jobs: Vec<Job>) -> Result<(Vec<Ticket>, Events), ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tickets = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.into_iter().enumerate() {
        let tx = tx.clone();
        let t = st
            .scheduler
            .submit(scheduler::Request {
                prompt: job.prompt,
                params: job.params,
                sink: Box::new(move |e| tx.send((i, e)).is_ok()),
            })
            .map_err(submit_error)?;
        tickets.push(t);
    }
    Ok((tickets, rx))
}

/// Waits for every job's completion (non-streaming responses).
async fn collect(mut rx: Events, n: usize) -> Result<Vec<Completion>, ApiError> {
    let mut done: Vec<Option<Completion>> = (0..n).map(|_| None).collect();
    let mut left = n;
    while left > 0 {
        match rx.recv().await {
            Some((i, Event::Done { completion, .. })) => {
                done[i] = Some(completion);
                left -= 1;
            }
            Some((_, Event::Token { .. } | Event::Prompt { .. })) => {}
            Some((_, Event::Error(e))) => return Err(ApiError::internal(e)),
            None => return Err(ApiError::internal("the engine stopped")),
        }
    }
    Ok(done.into_iter().flatten().collect())
}

/// A stream chunk of either endpoint.
#[derive(Serialize)]
#[serde(untagged)]
enum Chunk {
    Text(openai::TextCompletion),
    Chat(openai::ChatChunk),
}

/// Turns scheduler events into the chunks of one request's stream.
struct Writer {
    st: Arc<AppState>,
    header: openai::Header,
    kind: Kind,
    /// Choices per prompt.
    n: usize,
    include_usage: bool,
}

impl Writer {
    fn text(&self, choice: TextChoice) -> Chunk {
        Chunk::Text(self.header.text_chunk(vec![choice], self.include_usage))
    }

    fn chat(&self, choice: ChatChunkChoice) -> Chunk {
        Chunk::Chat(self.header.chat_chunk(vec![choice], self.include_usage))
    }

    /// Chunks before any event: each echoed prompt's text, or each chat choice's role.
    fn start(&self, jobs: &[Job]) -> Vec<Chunk> {
        let vocab = self.st.vocab.as_ref();
        jobs.iter()
            .enumerate()
            .filter_map(|(index, job)| match self.kind {
                Kind::Text { echo: false } => None,
                // With logprobs the prompt is echoed when its logprobs are known
                // (`Event::Prompt`).
                Kind::Text { echo: true } if job.params.logprobs.is_some() => None,
                Kind::Text { echo: true } => {
                    let text = vocab.decode(&job.prompt, true);
                    (!text.is_empty()).then(|| {
                        self.text(TextChoice {
                            index,
                            text,
                            logprobs: None,
                            finish_reason: None,
                            ids: None,
                        })
                    })
                }
                Kind::Chat => Some(self.chat(ChatChunkChoice {
                    index,
                    delta: ChatDelta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                    },
                    logprobs: None,
                    finish_reason: None,
                    ids: None,
                })),
            })
            .collect()
    }

    /// The echoed prompt with its logprobs (completions with `echo` and `logprobs`).
    fn prompt(&self, index: usize, text: String, lps: &[TokenLogprob]) -> Chunk {
        let mut logprobs = Logprobs::default();
        for t in lps {
            logprobs.push(self.st.vocab.as_ref(), t, false);
        }
        self.text(TextChoice {
            index,
            text,
            logprobs: Some(logprobs),
            finish_reason: None,
            ids: None,
        })
    }

    /// A generated token's chunk; none when it brings neither text nor logprobs.
    fn token(&self, index: usize, id: u32, text: &str, lp: Option<&TokenLogprob>) -> Option<Chunk> {
        let vocab = self.st.vocab.as_ref();
        match self.kind {
            Kind::Text { .. } => {
                let logprobs = lp.map(|t| Logprobs::one(vocab, t));
                (!text.is_empty() || logprobs.is_some()).then(|| {
                    self.text(TextChoice {
                        index,
                        text: text.to_string(),
                        logprobs,
                        finish_reason: None,
                        ids: None,
                    })
                })
            }
            Kind::Chat => {
                let eos = &self.st.eos;
                let logprobs = lp
                    .filter(|_| !eos.contains(&id))
                    .map(|t| ChatLogprobs::new(vocab, eos, [t]));
                (!text.is_empty() || logprobs.is_some()).then(|| {
                    self.chat(ChatChunkChoice {
                        index,
                        delta: ChatDelta {
                            role: None,
                            content: Some(text.to_string()),
                        },
                        logprobs,
                        finish_reason: None,
                        ids: None,
                    })
                })
            }
        }
    }

    /// A choice's last chunk: its finish reason and kiln's token ids.
    fn done(&self, index: usize, c: &Completion) -> Chunk {
        let finish_reason = Some(c.finish_reason.as_str());
        let ids = Some(TokenIds::of(c));
        match self.kind {
            Kind::Text { .. } => self.text(TextChoice {
                index,
                text: String::new(),
                logprobs: None,
                finish_reason,
                ids,
            }),
            Kind::Chat => self.chat(ChatChunkChoice {
                index,
                delta: ChatDelta::default(),
                logprobs: None,
                finish_reason,
                ids,
            }),
        }
    }

    /// The last chunk when usage was asked for: no choices, only the usage.
    fn usage(&self, u: openai::Usage) -> Chunk {
        match self.kind {
            Kind::Text { .. } => {
                let mut c = self.header.text_chunk(Vec::new(), true);
                c.usage = Some(Some(u));
                Chunk::Text(c)
            }
            Kind::Chat => {
                let mut c = self.header.chat_chunk(Vec::new(), true);
                c.usage = Some(Some(u));
                Chunk::Chat(c)
            }
        }
    }
}

fn sse_json(v: &impl Serialize) -> SseEvent {
    SseEvent::default()
        .json_data(v)
        .unwrap_or_else(|e| sse_error(ApiError::internal(e.to_string())))
}

fn sse_error(e: ApiError) -> SseEvent {
    SseEvent::default()
        .json_data(e.body())
        .unwrap_or_else(|_| SseEvent::default().data("{}"))
}

/// What a stream still has to send.
struct StreamState {
    writer: Writer,
    rx: Events,
    /// Cancel the requests when the stream is dropped (the client went away).
    _tickets: Vec<Ticket>,
    pending: VecDeque<SseEvent>,
    left: usize,
    usage: openai::Usage,
    ended: bool,
}

/// Server-sent events: the chunks, the usage chunk when asked for, then `[DONE]`. An engine
/// error ends the stream with an error object instead.
fn stream(
    writer: Writer,
    first: Vec<Chunk>,
    tickets: Vec<Ticket>,
    rx: Events,
    n_jobs: usize,
) -> Response {
    let state = StreamState {
        pending: first.iter().map(sse_json).collect(),
        writer,
        rx,
        _tickets: tickets,
        left: n_jobs,
        usage: openai::Usage::default(),
        ended: false,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(e) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), s));
            }
            if s.ended {
                return None;
            }
            if s.left == 0 {
                if s.writer.include_usage {
                    s.pending.push_back(sse_json(&s.writer.usage(s.usage)));
                }
                s.pending.push_back(SseEvent::default().data("[DONE]"));
                s.ended = true;
                continue;
            }
            match s.rx.recv().await {
                None => {
                    s.pending
                        .push_back(sse_error(ApiError::internal("the engine stopped")));
                    s.ended = true;
                }
                Some((_, Event::Error(msg))) => {
                    s.pending.push_back(sse_error(ApiError::internal(msg)));
                    s.ended = true;
                }
                Some((i, Event::Prompt { text, logprobs })) => {
                    let c = s.writer.prompt(i, text, &logprobs);
                    s.pending.push_back(sse_json(&c));
                }
                Some((i, Event::Token { id, text, logprob })) => {
                    if let Some(c) = s.writer.token(i, id, &text, logprob.as_ref()) {
                        s.pending.push_back(sse_json(&c));
                    }
                }
                Some((i, Event::Done { completion, .. })) => {
                    s.left -= 1;
                    s.usage.add(&completion, i % s.writer.n == 0);
                    s.pending
                        .push_back(sse_json(&s.writer.done(i, &completion)));
                }
            }
        }
    });
    Sse::new(events).into_response()
}
