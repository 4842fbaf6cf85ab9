//! `kiln chat`: an interactive terminal chat with history, through the model's chat template
//! (or Meta's Llama 2 `[INST]` format for checkpoints without one).

use std::io::{BufRead, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use clap::Args;
use kiln_engine::{openai, EngineOptions, GenerateParams, SamplingParams};
use kiln_formats::Arch;
use kiln_tokenizer::{llama2_chat_prompt, render_chat_template, ChatMessage};

use crate::constraint_arg::ConstraintArgs;
use crate::model_arg::ModelArgs;
use crate::prompt::process_escapes;
use crate::seed::seed_or_random;

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message at the start of the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// New tokens per reply at most.
    #[arg(short = 'n', long, default_value_t = 512)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, visible_alias = "temp", default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sampling seed (default: a random one, shown by --verbose and in --json).
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    /// Positions per conversation (prompt + replies). Default: the model's.
    #[arg(short = 'c', long, value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Take escapes in --system literally (by default `\n` etc. become the characters they
    /// name, as in llama.cpp; what is typed at the prompt is never changed).
    #[arg(long)]
    pub no_escape: bool,
    /// Print each turn as one OpenAI `chat.completion` JSON line (its choice with kiln's
    /// prompt_token_ids and token_ids, and the `seed` used) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print the seed used on stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    #[command(flatten)]
    pub constraint: ConstraintArgs,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let engine = a.model.load(EngineOptions {
        context: a.ctx_size,
        ..Default::default()
    })?;
    let llama_arch = engine.model.config().arch == Arch::Llama;
    if engine.chat_template.is_none() && !llama_arch {
        bail!("this model has no chat template");
    }
    let mut history: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &a.system {
        let s = if a.no_escape {
            s.clone()
        } else {
            process_escapes(s)?
        };
        history.push(ChatMessage::new("system", &s));
    }
    let seed = seed_or_random(a.seed);
    if a.verbose {
        eprintln!("seed: {seed}");
    }
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_p: a.top_p,
            seed,
            ..Default::default()
        },
        constraint: a.constraint.constraint()?,
        ..Default::default()
    };
    let interactive = !a.json;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for turn in 0.. {
        if interactive {
            write!(out, "> ")?;
            out.flush()?;
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        history.push(ChatMessage::new("user", line));
        let prompt = match &engine.chat_template {
            Some(t) => {
                let tk = &engine.tokenizer;
                let text =
                    render_chat_template(t, &history, true, &tk.bos_token(), &tk.eos_token())?;
                engine.tokenizer.encode(&text, true)?
            }
            // Meta's chat_completion format, as the reference code builds it.
            None => llama2_chat_prompt(&engine.tokenizer, &history)?,
        };
        let r = engine.generate(std::slice::from_ref(&prompt), &params, &mut |_, t| {
            if interactive {
                let _ = write!(out, "{t}");
                let _ = out.flush();
            }
        })?;
        let c = &r[0];
        if a.json {
            let created = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let header = openai::Header {
                id: format!("chatcmpl-{created}-{turn}"),
                created,
                model: engine.name.clone(),
            };
            // No logprobs are asked for, so no end-of-sequence ids need leaving out of them.
            let mut obj =
                serde_json::to_value(openai::chat_completion(&header, &engine.tokenizer, &[], &r))?;
            obj["seed"] = seed.into();
            writeln!(out, "{}", serde_json::to_string(&obj)?)?;
        } else {
            writeln!(out)?;
        }
        history.push(ChatMessage::new("assistant", &c.text));
    }
    Ok(())
}
