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
    self, ChatChunkChoice, ChatDelta, ChatLogprobs, FunctionCall, Logprobs, TextChoice, TokenIds,
    ToolCall, ToolCallDelta,
};
use kiln_engine::scheduler::{self, Event, SubmitError, Ticket};
use kiln_engine::tools::{self as calls, ToolChoice};
use kiln_engine::{Completion, Constraint, EngineError, GenerateParams, TokenLogprob};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::api::{ChatRequest, Common, CompletionRequest, PromptInput, ToolPlan};
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
    /// Chat requests with tools (and a `tool_choice` other than `none`): the output is read
    /// for calls.
    tools: Option<Arc<ToolPlan>>,
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

/// Compiles the request's constraint once for all its choices: a grammar or schema the engine
/// cannot compile is a 400 naming the problem.
fn compile(st: &AppState, common: &Common, params: &mut GenerateParams) -> Result<(), ApiError> {
    st.scheduler
        .compile(params)
        .map_err(|e| ApiError::invalid(e.to_string()).param(common.constraint_param()))
}

fn text_plan(st: &AppState, req: &CompletionRequest) -> Result<Plan, ApiError> {
    let mut params = req.params(st.fresh_seed())?;
    params.speculation = req.common.speculation(&st.opts.speculation)?;
    compile(st, &req.common, &mut params)?;
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
        tools: None,
    })
}

async fn chat_plan(st: &AppState, req: &ChatRequest) -> Result<Plan, ApiError> {
    let (mut params, max) = req.params(st.fresh_seed())?;
    params.speculation = req.common.speculation(&st.opts.speculation)?;
    let n = req.common.n()?;
    let messages = req.template_messages()?;
    // `tool_choice: none` leaves the tools out of the prompt.
    let tools = req.tool_plan()?.filter(|t| t.choice != ToolChoice::None);
    if let Some(t) = &tools {
        // `required` or a named function: the output is held to the call syntax.
        if let Some(spec) = calls::call_constraint(&t.functions, &t.choice, t.parallel) {
            if params.constraint.is_some() {
                return Err(ApiError::invalid(
                    "`tool_choice` \"required\" or a named function cannot be combined with `response_format`, `grammar` or `regex`",
                )
                .param("tool_choice"));
            }
            params.constraint = Some(Constraint::new(spec));
            st.scheduler
                .compile(&mut params)
                .map_err(|e| ApiError::invalid(e.to_string()).param("tools"))?;
        }
    }
    compile(st, &req.common, &mut params)?;
    // The same rendering as `kiln chat` (the tokenizer crate's; a 400 when there is no template),
    // off the async runtime and with a deadline (the template is the model file's code).
    let bos = st.vocab.bos_token();
    let functions = tools.as_ref().map(|t| t.functions.clone());
    let text = crate::render_chat(st, messages, functions).await?;
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
        tools: tools.map(Arc::new),
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
        tools: plan.tools.clone(),
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
        Kind::Chat => {
            let mut response = openai::chat_completion(&writer.header, vocab, &st.eos, &results);
            if let Some(t) = &plan.tools {
                for choice in &mut response.choices {
                    let text = choice.message.content.as_deref().unwrap_or_default();
                    if let Some((content, found)) = read_calls(&st, t, text) {
                        choice.message.content = content;
                        choice.message.tool_calls = Some(found);
                        choice.finish_reason = "tool_calls";
                    }
                }
            }
            Json(response).into_response()
        }
    })
}

/// The tool calls in a choice's text, with ids (only the first unless `parallel_tool_calls`),
/// and the content before them.
fn read_calls(st: &AppState, t: &ToolPlan, text: &str) -> Option<(Option<String>, Vec<ToolCall>)> {
    let (content, mut found) = calls::parse_calls(text, &t.functions)?;
    if !t.parallel {
        found.truncate(1);
    }
    let found = found
        .into_iter()
        .map(|c| ToolCall {
            id: st.new_id("call"),
            kind: "function",
            function: FunctionCall {
                name: c.name,
                arguments: c.arguments,
            },
        })
        .collect();
    Some((content, found))
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
    tools: Option<Arc<ToolPlan>>,
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
                        tool_calls: None,
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
                            tool_calls: None,
                        },
                        logprobs,
                        finish_reason: None,
                        ids: None,
                    })
                })
            }
        }
    }

    /// A chat choice's tool calls, all in one chunk.
    fn tool_calls(&self, index: usize, found: Vec<ToolCall>) -> Chunk {
        let deltas = found
            .into_iter()
            .enumerate()
            .map(|(k, c)| ToolCallDelta {
                index: k,
                id: c.id,
                kind: c.kind,
                function: c.function,
            })
            .collect();
        self.chat(ChatChunkChoice {
            index,
            delta: ChatDelta {
                role: None,
                content: None,
                tool_calls: Some(deltas),
            },
            logprobs: None,
            finish_reason: None,
            ids: None,
        })
    }

    /// A choice's last chunk: its finish reason and kiln's token ids.
    fn done(&self, index: usize, c: &Completion) -> Chunk {
        self.done_as(index, c, c.finish_reason.as_str())
    }

    fn done_as(&self, index: usize, c: &Completion, reason: &'static str) -> Chunk {
        let finish_reason = Some(reason);
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
    /// With tools: each choice's text so far, and how much of it was sent as content (text
    /// that may open a tool call is held back until it is known not to).
    held: Vec<String>,
    shown: Vec<usize>,
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
        held: vec![String::new(); n_jobs],
        shown: vec![0; n_jobs],
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
                    let text = if s.writer.tools.is_some() {
                        let held = &mut s.held[i];
                        held.push_str(&text);
                        let upto = calls::streamable_prefix(held).max(s.shown[i]);
                        let piece = held[s.shown[i]..upto].to_string();
                        s.shown[i] = upto;
                        piece
                    } else {
                        text
                    };
                    if let Some(c) = s.writer.token(i, id, &text, logprob.as_ref()) {
                        s.pending.push_back(sse_json(&c));
                    }
                }
                Some((i, Event::Done { completion, .. })) => {
                    s.left -= 1;
                    s.usage.add(&completion, i % s.writer.n == 0);
                    let found = s
                        .writer
                        .tools
                        .as_ref()
                        .and_then(|t| read_calls(&s.writer.st, t, &completion.text));
                    let done = match found {
                        Some((_, found)) => {
                            let c = s.writer.tool_calls(i, found);
                            s.pending.push_back(sse_json(&c));
                            s.writer.done_as(i, &completion, "tool_calls")
                        }
                        None => {
                            // Held-back text that did not open a call is content after all.
                            let rest = s.held[i].get(s.shown[i]..).unwrap_or_default();
                            if s.writer.tools.is_some() && !rest.is_empty() {
                                let rest = rest.to_string();
                                if let Some(c) = s.writer.token(i, 0, &rest, None) {
                                    s.pending.push_back(sse_json(&c));
                                }
                            }
                            s.writer.done(i, &completion)
                        }
                    };
                    s.pending.push_back(sse_json(&done));
                }
            }
        }
    });
    Sse::new(events).into_response()
}
