//! `kiln serve`: the OpenAI-compatible HTTP server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use kiln_engine::scheduler::SchedulerConfig;
use kiln_engine::{Engine, EngineOptions, Pooling};
use kiln_server::{AppState, ServerOptions};

use crate::chat_template;
use crate::model_arg::{ModelArgs, SpecArgs};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Speculative decoding for every request (a request may send `"speculative": false`).
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Address to listen on (loopback by default; use 0.0.0.0 to accept remote clients).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences generated at once (continuous batching slots).
    #[arg(long, short = 'p', alias = "np", default_value_t = 4, value_parser = positive)]
    pub parallel: usize,
    /// Positions per slot (prompt + generated). Default: 4096, or less if the model's context is.
    #[arg(long, short = 'c', value_name = "N", value_parser = positive)]
    pub ctx_size: Option<usize>,
    /// Require `Authorization: Bearer KEY` (also read from KILN_API_KEY; must not be empty).
    #[arg(long, env = "KILN_API_KEY", hide_env_values = true, value_parser = non_empty_key)]
    pub api_key: Option<String>,
    /// Requests that may wait for a slot; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Prompt tokens prefilled per engine step (longer prompts are processed in chunks).
    #[arg(long, default_value_t = 256, value_parser = positive)]
    pub prefill_chunk: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 2 << 20)]
    pub max_body: usize,
    /// Another name for the model in /v1/models (repeatable; the first one is the id responses
    /// give, else the model's file name). Requests may name the model anything.
    #[arg(long, value_name = "NAME")]
    pub alias: Vec<String>,
    /// Seconds a client has to send a request's headers, and again its body (then 408).
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = positive_secs)]
    pub read_timeout: f64,
    /// Chat template for /v1/chat/completions instead of the model's. Without either, chat
    /// requests are refused (400); built-in names: chatml, llama2, llama3, gemma; or a Jinja
    /// file.
    #[arg(long, value_name = "NAME|FILE")]
    pub chat_template: Option<String>,
    /// How /v1/embeddings pools a text's final hidden states: mean (every token, BOS
    /// included) or last (the last token's, for models trained that way).
    #[arg(long, value_name = "mean|last", default_value = "mean")]
    pub pooling: Pooling,
    /// Seconds open requests get to finish after SIGTERM or Ctrl-C; then they are cut off.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = positive_secs)]
    pub drain_timeout: f64,
}

/// A count that must be at least 1 (0 would be silently raised or make a useless server).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1e6 => Ok(x),
        Ok(_) => Err("must be more than 0 and at most 1000000 seconds".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// An empty key would turn authentication off without a word.
fn non_empty_key(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err(
            "the API key is empty (unset KILN_API_KEY or leave out --api-key to serve without one)"
                .into(),
        )
    } else {
        Ok(s.to_string())
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    let speculation = a.spec.speculation()?;
    let engine = a.model.load(EngineOptions {
        threads: 0,
        context: Some(a.ctx_size.unwrap_or(4096)),
        max_batch: a.parallel,
        draft_model: a.spec.draft_path()?,
        draft_vocab: a.spec.draft_vocab()?,
        ..Default::default()
    })?;
    let Engine {
        model,
        tokenizer,
        chat_template,
        limits,
        name,
        draft,
        ..
    } = engine;
    let chat_template =
        chat_template::resolve(a.chat_template.as_deref(), chat_template, &tokenizer)?;
    if chat_template.is_none() {
        eprintln!(
            "kiln serve: {name} has no chat template: /v1/chat/completions answers 400 (give --chat-template to format chats)"
        );
    }
    let cfg = SchedulerConfig {
        slots: a.parallel,
        context: limits.context,
        max_queue: a.max_queue,
        prefill_chunk: a.prefill_chunk,
        prefix_cache: a.parallel,
    };
    let state = AppState::start(
        model,
        draft,
        Arc::new(tokenizer),
        chat_template,
        cfg,
        ServerOptions {
            model_id: a.alias.first().cloned().unwrap_or_else(|| name.clone()),
            aliases: a.alias.iter().skip(1).cloned().chain([name]).collect(),
            api_key: a.api_key.clone(),
            max_body_bytes: a.max_body,
            header_timeout: Duration::from_secs_f64(a.read_timeout),
            body_timeout: Duration::from_secs_f64(a.read_timeout),
            drain_timeout: Duration::from_secs_f64(a.drain_timeout),
            pooling: a.pooling,
            speculation,
            ..ServerOptions::default()
        },
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "kiln serve: {} on http://{local}/v1 ({} slots × {} positions)",
            state.opts.model_id,
            state.scheduler.config().slots,
            state.scheduler.config().context
        );
        kiln_server::serve(listener, state, kiln_server::shutdown_signal()).await?;
        eprintln!("kiln serve: stopped");
        Ok(())
    })
}
