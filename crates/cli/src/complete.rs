//! `kiln complete`: one batch of prompts, streamed to the terminal or printed as JSON.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use kiln_engine::sequence::Vocab;
use kiln_engine::{
    openai, Completion, EngineOptions, GenerateParams, SamplingParams, TokenLogprob,
};
use kiln_tokenizer::ChatMessage;

use crate::chat_template;
use crate::constraint_arg::ConstraintArgs;
use crate::model_arg::{ModelArgs, SpecArgs};
use crate::prompt::process_escapes;
use crate::seed::seed_or_random;

#[derive(Args, Debug)]
pub struct CompleteArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// A prompt (repeatable; all prompts run as one batch).
    #[arg(long = "prompt", value_name = "TEXT")]
    pub prompts: Vec<String>,
    /// A prompt given without --prompt. With no prompt at all, stdin is read.
    #[arg(value_name = "PROMPT")]
    pub positional: Vec<String>,
    /// Send each prompt as a user message, formatted by the model's chat template (or
    /// --chat-template) with the assistant's turn opened, so that an instruct model answers it
    /// (one turn; `kiln chat` for more). A model without a template needs --chat-template.
    #[arg(long)]
    pub chat: bool,
    /// The chat template for --chat (implies it): a built-in name (chatml, llama2, llama3,
    /// gemma) or a Jinja file (Hugging Face's chat_template format), instead of the model's.
    #[arg(long, value_name = "NAME|FILE")]
    pub chat_template: Option<String>,
    /// A system message before each prompt (implies --chat).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Read a prompt from this file, verbatim (repeatable).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Take `\n \r \t \' \" \\ \xHH` in --prompt, PROMPT and --stop literally (by default
    /// they become the characters they name, as in llama.cpp; files and stdin are never changed).
    #[arg(long)]
    pub no_escape: bool,
    /// New tokens at most (Meta: max_gen_len).
    #[arg(short = 'n', long, default_value_t = 128, alias = "max-gen-len")]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(
        long,
        visible_alias = "temp",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Sampling seed (default: a random one, shown by --verbose and in --json).
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// llama.cpp-style repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub frequency_penalty: f32,
    /// Report logprobs of each token and this many alternatives (a table after the text, or in
    /// the --json object).
    #[arg(long, value_name = "N")]
    pub logprobs: Option<usize>,
    /// Include the prompt (and its logprobs) in the output.
    #[arg(long)]
    pub echo: bool,
    /// Keep going past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one OpenAI `text_completion` JSON object (with the `seed` used and `timings`:
    /// prompt and generation time, drafted and accepted tokens) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Print the seed used on stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Positions per sequence (prompt + generated); Meta: max_seq_len. Default: the model's.
    #[arg(short = 'c', long, alias = "max-seq-len", value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Prompts per batch at most (Meta: max_batch_size).
    #[arg(long, default_value_t = 64)]
    pub max_batch_size: usize,
    #[command(flatten)]
    pub constraint: ConstraintArgs,
}

pub fn run(a: CompleteArgs) -> Result<()> {
    let escape = |t: &String| {
        if a.no_escape {
            Ok(t.clone())
        } else {
            process_escapes(t)
        }
    };
    let mut texts = a
        .prompts
        .iter()
        .chain(&a.positional)
        .map(escape)
        .collect::<Result<Vec<_>>>()?;
    for f in &a.files {
        texts.push(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the prompt file {}", f.display()))?,
        );
    }
    let stop = a.stop.iter().map(escape).collect::<Result<Vec<_>>>()?;
    if texts.is_empty() {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the prompt from stdin")?;
        texts.push(s);
    }
    let system = a.system.as_ref().map(escape).transpose()?;
    let speculation = a.spec.speculation()?;
    let path = a.model.resolve()?;
    let engine = a.model.load_path(
        &path,
        EngineOptions {
            context: a.ctx_size,
            max_batch: a.max_batch_size,
            draft_model: a.spec.draft_path()?,
            draft_vocab: a.spec.draft_vocab()?,
            ..Default::default()
        },
    )?;
    let chat = a.chat || a.chat_template.is_some() || system.is_some();
    let prompts = if chat {
        let template = chat_template::for_chat(
            a.chat_template.as_deref(),
            &engine,
            &path,
            "or leave out --chat",
        )?;
        let prompts = texts
            .iter()
            .map(|t| {
                let mut messages: Vec<ChatMessage> = system
                    .iter()
                    .map(|s| ChatMessage::new("system", s))
                    .collect();
                messages.push(ChatMessage::new("user", t));
                crate::chat::prompt_ids(&engine, template.as_deref(), &messages)
            })
            .collect::<Result<Vec<_>>>()?;
        // What --echo shows is the formatted prompt.
        for (t, p) in texts.iter_mut().zip(&prompts) {
            *t = engine.tokenizer.decode(p, false);
        }
        prompts
    } else {
        texts
            .iter()
            .map(|t| engine.tokenize(t))
            .collect::<Result<Vec<_>, _>>()?
    };
    let seed = seed_or_random(a.seed);
    if a.verbose {
        eprintln!("seed: {seed}");
    }
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            presence_penalty: a.presence_penalty,
            frequency_penalty: a.frequency_penalty,
            logit_bias: Vec::new(),
            seed,
        },
        stop,
        ignore_eos: a.ignore_eos,
        logprobs: a.logprobs,
        echo: a.echo,
        speculation,
        constraint: a.constraint.constraint()?,
    };

    let stream = !a.json && prompts.len() == 1;
    let mut out = std::io::stdout().lock();
    if stream && a.echo {
        write!(out, "{}", texts[0])?;
    }
    let results = engine.generate(&prompts, &params, &mut |_, text| {
        if stream {
            let _ = write!(out, "{text}");
            let _ = out.flush();
        }
    })?;
    if a.json {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = openai::Header {
            id: format!("cmpl-{created}"),
            created,
            model: engine.name.clone(),
        };
        // One choice per prompt: each prompt's tokens count once in `usage`.
        let mut obj = serde_json::to_value(openai::text_completion(
            &header,
            &engine.tokenizer,
            &results,
            1,
            a.echo,
        ))?;
        // kiln's additions: the seed, so that a sampled run can be repeated with --seed, and
        // the timings (in llama-server's names) with the drafts' acceptance.
        obj["seed"] = seed.into();
        obj["timings"] = timings_json(&results);
        writeln!(out, "{}", serde_json::to_string_pretty(&obj)?)?;
    } else if stream {
        writeln!(out)?;
        write_logprob_table(&mut out, &engine.tokenizer, &results[0])?;
    } else {
        for (i, r) in results.iter().enumerate() {
            let echo = if a.echo { r.prompt_text.as_str() } else { "" };
            writeln!(
                out,
                "--- prompt {i} ({}) ---\n{echo}{}",
                r.finish_reason.as_str(),
                r.text
            )?;
            write_logprob_table(&mut out, &engine.tokenizer, r)?;
        }
    }
    Ok(())
}

/// llama-server's `timings` over the batch (for one prompt, that prompt's): prompt tokens
/// computed and the time until the first token; generated tokens and the time from the first to
/// the last; `predicted_per_second` counts the tokens after the first. `draft_n` tokens were
/// drafted and verified, `draft_n_accepted` of them kept.
fn timings_json(results: &[Completion]) -> serde_json::Value {
    let max = |f: fn(&Completion) -> f64| results.iter().map(f).fold(0.0, f64::max);
    let sum = |f: fn(&Completion) -> usize| results.iter().map(f).sum::<usize>();
    let prompt_ms = max(|c| c.timings.prompt_seconds) * 1e3;
    let predicted_ms = max(|c| c.timings.generate_seconds) * 1e3;
    let prompt_n = sum(|c| c.timings.prompt_tokens);
    let predicted_n = sum(|c| c.token_ids.len());
    let draft_n = sum(|c| c.timings.draft_tokens);
    let draft_n_accepted = sum(|c| c.timings.draft_accepted);
    let per_second = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    serde_json::json!({
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_second": per_second(prompt_n, prompt_ms),
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_second": per_second(predicted_n.saturating_sub(results.len()), predicted_ms),
        "draft_n": draft_n,
        "draft_n_accepted": draft_n_accepted,
        "acceptance_rate": (draft_n > 0).then(|| draft_n_accepted as f64 / draft_n as f64),
    })
}

/// With `--logprobs` and no `--json`: one row per token (the prompt's first with `--echo`), its
/// logprob and the most likely alternatives. Token texts are quoted with escapes so that
/// spaces and newlines stay visible (invalid UTF-8 as `bytes:\xNN`, as in --json); a first prompt token, which nothing predicts, shows `-`.
fn write_logprob_table(out: &mut impl Write, vocab: &dyn Vocab, c: &Completion) -> Result<()> {
    let Some(generated) = &c.logprobs else {
        return Ok(());
    };
    let rows: Vec<&TokenLogprob> = c
        .prompt_logprobs
        .iter()
        .flatten()
        .chain(generated)
        .collect();
    let quoted = |id: u32, text: &str| {
        // `bytes:\xNN` names are already escaped; quoting them again would double the `\`.
        let name = openai::token_name(vocab, id, text);
        if name.starts_with("bytes:") {
            name
        } else {
            format!("{name:?}")
        }
    };
    let width = rows
        .iter()
        .map(|t| quoted(t.id, &t.text).chars().count())
        .max()
        .unwrap_or(0)
        .max("token".len());
    writeln!(
        out,
        "{:<width$}  {:>9}  top alternatives",
        "token", "logprob"
    )?;
    for t in rows {
        let logprob = t.logprob.map_or("-".to_string(), |l| format!("{l:.4}"));
        let top = t
            .top
            .iter()
            .map(|(id, text, l)| format!("{} {l:.4}", quoted(*id, text)))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            out,
            "{:<width$}  {logprob:>9}  {top}",
            quoted(t.id, &t.text)
        )?;
    }
    Ok(())
}
