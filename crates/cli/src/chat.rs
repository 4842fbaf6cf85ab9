//! `kiln chat`: an interactive terminal chat with history, through the model's chat template
//! (or `--chat-template`, or Meta's Llama 2 `[INST]` format for Meta checkpoints without one).
//!
//! On a terminal the line is edited with rustyline (arrows, history of the session, Ctrl-R),
//! lines starting with `/` are commands (`/help`; `/save FILE` and `/load FILE` keep a
//! conversation), the editor's history is kept in `$KILN_HOME/chat_history`, Ctrl-C stops the reply being written (what
//! was shown of it stays in the conversation) and Ctrl-D or `/bye` ends the chat. Without a
//! terminal (a pipe, `--json`) lines are read as they come, commands included.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_engine::{openai, Engine, EngineOptions, GenerateParams, SamplingParams};
use kiln_tokenizer::{llama2_chat_prompt, render_chat_template, ChatMessage};

use crate::chat_template;
use crate::constraint_arg::ConstraintArgs;
use crate::model_arg::{resolve_model, ModelArgs};
use crate::prompt::process_escapes;
use crate::seed::seed_or_random;

/// The model `kiln chat` uses without `-m`: an instruct model, so that chat works at once.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b";

/// `-m`'s help for `kiln chat` (its default differs from the other commands').
pub const MODEL_HELP: &str = "A GGUF file, a Hugging Face directory (config.json + safetensors), a Meta checkpoint directory (params.json + consolidated.*.pth), or a known model name. Default: qwen2.5-coder-0.5b (an instruct model; pulled on first use).";

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_name = "NAME|FILE", help = chat_template::HELP)]
    pub chat_template: Option<String>,
    /// A system message at the start of the conversation (`/system TEXT` changes it).
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
    /// Print the seed, and after each reply one line with its speed (prompt and reply tokens
    /// per second), on stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    #[command(flatten)]
    pub constraint: ConstraintArgs,
}

const HELP: &str = "\
/help          this list
/bye           end the chat (Ctrl-D too)
/clear         forget the conversation (the system message stays)
/system TEXT   set the system message (and forget the conversation)
/save FILE     write the conversation to FILE (JSON: OpenAI's messages)
/load FILE     continue the conversation saved in FILE
//TEXT         send TEXT starting with one /
Ctrl-C         stop the reply being written (what was shown of it stays in the conversation)";

/// A line typed at the prompt.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Message(String),
    Help,
    Bye,
    Clear,
    System(String),
    Save(String),
    Load(String),
    Unknown(String),
}

fn parse_line(line: &str) -> Line {
    if let Some(rest) = line.strip_prefix("//") {
        return Line::Message(format!("/{rest}"));
    }
    let Some(cmd) = line.strip_prefix('/') else {
        return Line::Message(line.to_string());
    };
    let (name, arg) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
    match name {
        "help" | "?" => Line::Help,
        "bye" | "exit" | "quit" => Line::Bye,
        "clear" => Line::Clear,
        "system" => Line::System(arg.trim().to_string()),
        "save" => Line::Save(arg.trim().to_string()),
        "load" => Line::Load(arg.trim().to_string()),
        _ => Line::Unknown(name.to_string()),
    }
}

/// Set by SIGINT while a reply is being written (the terminal is not in raw mode then).
static STOP: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// From now on Ctrl-C stops a reply instead of ending the process.
fn catch_ctrl_c() {
    #[cfg(unix)]
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// A conversation as `/save` writes it: OpenAI's `messages` (role and content), pretty JSON.
fn save(path: &str, history: &[ChatMessage]) -> Result<()> {
    anyhow::ensure!(!path.is_empty(), "/save needs a file name");
    let json = serde_json::to_string_pretty(history)?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write {path}"))
}

/// A conversation `/save` wrote (or any OpenAI `messages` array of system, user and assistant
/// turns, the system message first): the system message and the whole history.
fn load(path: &str) -> Result<(Option<String>, Vec<ChatMessage>)> {
    anyhow::ensure!(!path.is_empty(), "/load needs a file name");
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let items: Vec<serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("{path}: not a JSON array of messages"))?;
    let mut history = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let field = |k: &str| m.get(k).and_then(|v| v.as_str());
        let (Some(role), Some(content)) = (field("role"), field("content")) else {
            bail!("{path}: message {i} needs a string role and content");
        };
        match role {
            "system" if i == 0 => {}
            "user" | "assistant" => {}
            "system" => bail!("{path}: message {i}: a system message must come first"),
            r => bail!("{path}: message {i}: role {r:?} (system, user or assistant)"),
        }
        history.push(ChatMessage::new(role, content));
    }
    let system = history
        .first()
        .filter(|m| m.role == "system")
        .map(|m| m.content.clone());
    Ok((system, history))
}

/// The file the line editor keeps its history in, across sessions.
fn history_file() -> std::path::PathBuf {
    kiln_pull::kiln_home().join("chat_history")
}

/// Where lines come from: an editor on a terminal, else plain lines.
enum Input {
    Editor(Box<rustyline::DefaultEditor>),
    Plain(std::io::StdinLock<'static>),
}

impl Input {
    /// The next line, `None` at the end (Ctrl-D, end of input).
    fn read(&mut self) -> Result<Option<String>> {
        match self {
            Input::Editor(ed) => loop {
                match ed.readline("> ") {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = ed.add_history_entry(line.as_str());
                            // Kept across sessions; a history that cannot be written is no
                            // reason to stop chatting.
                            let file = history_file();
                            if let Some(dir) = file.parent() {
                                let _ = std::fs::create_dir_all(dir);
                            }
                            let _ = ed.append_history(&file);
                        }
                        return Ok(Some(line));
                    }
                    Err(rustyline::error::ReadlineError::Interrupted) => {
                        eprintln!("(Ctrl-D or /bye ends the chat; /help lists the commands)");
                    }
                    Err(rustyline::error::ReadlineError::Eof) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            },
            Input::Plain(stdin) => {
                let mut line = String::new();
                if stdin.read_line(&mut line)? == 0 {
                    return Ok(None);
                }
                Ok(Some(line.trim_end_matches(['\n', '\r']).to_string()))
            }
        }
    }
}

/// The conversation's prompt ids: the chat template's rendering, or Meta's format.
pub(crate) fn prompt_ids(
    engine: &Engine,
    template: Option<&str>,
    history: &[ChatMessage],
) -> Result<Vec<u32>> {
    let tk = &engine.tokenizer;
    Ok(match template {
        Some(t) => {
            let bos = tk.bos_token();
            let text = render_chat_template(t, history, true, &bos, &tk.eos_token())?;
            // The template writes BOS itself when the model wants one (as the server does).
            let add_special = bos.is_empty() || !text.starts_with(&bos);
            tk.encode(&text, add_special)?
        }
        // Meta's chat_completion format, as the reference code builds it.
        None => llama2_chat_prompt(tk, history)?,
    })
}

pub fn run(a: ChatArgs) -> Result<()> {
    let model = a.model.model.as_deref().unwrap_or(DEFAULT_MODEL);
    let path = resolve_model(Some(model))?;
    let engine = a.model.load_path(
        &path,
        EngineOptions {
            context: a.ctx_size,
            ..Default::default()
        },
    )?;
    let template = chat_template::for_chat(
        a.chat_template.as_deref(),
        &engine,
        &path,
        "or use `kiln complete`",
    )?;
    let mut system = match &a.system {
        Some(s) if a.no_escape => Some(s.clone()),
        Some(s) => Some(process_escapes(s)?),
        None => None,
    };
    let start_history = |system: &Option<String>| -> Vec<ChatMessage> {
        system
            .iter()
            .map(|s| ChatMessage::new("system", s))
            .collect()
    };
    let mut history = start_history(&system);
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
    let terminal = interactive && std::io::stdin().is_terminal();
    let mut input = if terminal {
        let mut ed = rustyline::DefaultEditor::new()?;
        // Lines typed in earlier sessions (absent the first time).
        let _ = ed.load_history(&history_file());
        eprintln!(
            "kiln chat: {}. /help lists the commands; Ctrl-C stops a reply, Ctrl-D or /bye ends.",
            engine.name
        );
        catch_ctrl_c();
        Input::Editor(Box::new(ed))
    } else {
        Input::Plain(std::io::stdin().lock())
    };
    // The conversation's KV cache, kept between turns: each turn computes only the tokens
    // after what the previous turns left in it.
    let mut session = engine.session()?;
    let mut out = std::io::stdout();
    let mut turn = 0;
    while let Some(line) = input.read()? {
        if line.trim().is_empty() {
            continue;
        }
        let text = match parse_line(&line) {
            Line::Message(t) => t,
            Line::Help => {
                eprintln!("{HELP}");
                continue;
            }
            Line::Bye => break,
            Line::Clear => {
                history = start_history(&system);
                session.forget();
                eprintln!("(conversation cleared)");
                continue;
            }
            Line::System(s) => {
                system = (!s.is_empty()).then_some(s);
                history = start_history(&system);
                session.forget();
                eprintln!(
                    "(system message {}; conversation cleared)",
                    if system.is_some() { "set" } else { "removed" }
                );
                continue;
            }
            Line::Save(f) => {
                match save(&f, &history) {
                    Ok(()) => eprintln!("(conversation saved to {f})"),
                    Err(e) if terminal => eprintln!("error: {e:#}"),
                    Err(e) => return Err(e),
                }
                continue;
            }
            Line::Load(f) => {
                match load(&f) {
                    Ok((s, h)) => {
                        eprintln!("(conversation loaded from {f}: {} messages)", h.len());
                        system = s;
                        history = h;
                    }
                    Err(e) if terminal => eprintln!("error: {e:#}"),
                    Err(e) => return Err(e),
                }
                continue;
            }
            Line::Unknown(c) => {
                eprintln!("unknown command /{c}; /help lists the commands (//text sends /text)");
                continue;
            }
        };
        history.push(ChatMessage::new("user", &text));
        let prompt = match prompt_ids(&engine, template.as_deref(), &history) {
            Ok(p) => p,
            Err(e) if terminal => {
                history.pop();
                eprintln!("error: {e:#}");
                continue;
            }
            Err(e) => return Err(e),
        };
        STOP.store(false, Ordering::SeqCst);
        let start = Instant::now();
        let mut first_text: Option<Instant> = None;
        let mut shown = String::new();
        let result = engine.session_generate(
            &mut session,
            std::slice::from_ref(&prompt),
            &params,
            &mut |_, t| {
                first_text.get_or_insert_with(Instant::now);
                shown.push_str(t);
                if interactive {
                    let _ = write!(out, "{t}");
                    let _ = out.flush();
                }
            },
            &mut || STOP.load(Ordering::SeqCst),
        );
        let r = match result {
            Ok(r) => Some(r),
            Err(kiln_engine::EngineError::Cancelled) => None,
            Err(e) if terminal => {
                history.pop();
                eprintln!("\nerror: {e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let end = Instant::now();
        let Some(r) = r else {
            // Stopped by Ctrl-C: the conversation keeps what was shown.
            writeln!(out, " [stopped]")?;
            if a.verbose {
                eprintln!(
                    "[prompt {} tokens; reply stopped after {:.2} s]",
                    prompt.len(),
                    (end - start).as_secs_f64()
                );
            }
            history.push(ChatMessage::new("assistant", &shown));
            continue;
        };
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
            // OpenAI's usage field for prompt tokens served from the cache (earlier turns).
            obj["usage"]["prompt_tokens_details"] =
                serde_json::json!({ "cached_tokens": prompt.len() - c.timings.prompt_tokens });
            writeln!(out, "{}", serde_json::to_string(&obj)?)?;
        } else {
            writeln!(out)?;
        }
        if a.verbose {
            eprintln!(
                "{}",
                speed_line(
                    prompt.len(),
                    c.timings.prompt_tokens,
                    c.token_ids.len(),
                    start,
                    first_text,
                    end
                )
            );
        }
        history.push(ChatMessage::new("assistant", &c.text));
        turn += 1;
    }
    Ok(())
}

/// `[prompt 12 new tokens (140 cached) in 0.31 s, 38.7 t/s | reply 17 tokens in 0.52 s, 30.8
/// t/s]`: the prompt's computed tokens (the rest came from the earlier turns' cache) until the
/// first text, the reply after it (its first token is counted with the prompt's pass, so the
/// reply rate is over the tokens after the first).
fn speed_line(
    prompt: usize,
    computed: usize,
    reply: usize,
    start: Instant,
    first: Option<Instant>,
    end: Instant,
) -> String {
    let first = first.unwrap_or(end);
    let (p, g) = ((first - start).as_secs_f64(), (end - first).as_secs_f64());
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    format!(
        "[prompt {computed} new tokens ({} cached) in {p:.2} s, {:.1} t/s | reply {reply} tokens in {g:.2} s, {:.1} t/s]",
        prompt - computed,
        rate(computed, p),
        rate(reply.saturating_sub(1), g)
    )
}

#[cfg(test)]
mod tests {
    use super::{parse_line, Line};

    #[test]
    fn commands_are_parsed_and_other_lines_are_messages() {
        assert_eq!(parse_line("/help"), Line::Help);
        assert_eq!(parse_line("/bye"), Line::Bye);
        assert_eq!(parse_line("/clear"), Line::Clear);
        assert_eq!(
            parse_line("/system Be  brief. "),
            Line::System("Be  brief.".into())
        );
        assert_eq!(parse_line("/system"), Line::System(String::new()));
        assert_eq!(parse_line("/nope x"), Line::Unknown("nope".into()));
        assert_eq!(parse_line("/save a b.json"), Line::Save("a b.json".into()));
        assert_eq!(parse_line("/load  c.json "), Line::Load("c.json".into()));
        assert_eq!(
            parse_line("//etc/hosts?"),
            Line::Message("/etc/hosts?".into())
        );
        assert_eq!(parse_line("hi /bye"), Line::Message("hi /bye".into()));
    }
}
