//! `--chat-template NAME|FILE`: one of the tokenizer crate's built-in templates, or a Jinja
//! file, checked once at start-up by rendering a short dialog with it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_tokenizer::{builtin_chat_template, builtin_chat_template_names, render_chat_template};
use kiln_tokenizer::{ChatMessage, Tokenizer};

/// The help text of the flag (shared by `chat` and `serve`).
pub const HELP: &str = "Chat template to use instead of the model's: a built-in name (chatml, llama2, llama3, gemma) or a Jinja file (Hugging Face's chat_template format). Needed for models that ship none.";

/// The template to render chats with: `arg` (a built-in name or a file) when given, else the
/// model's own. A template that does not render a system + user dialog is an error here, not
/// at the first message.
pub fn resolve(
    arg: Option<&str>,
    from_model: Option<String>,
    tokenizer: &Tokenizer,
) -> Result<Option<String>> {
    let Some(arg) = arg else {
        return Ok(from_model);
    };
    let template = match builtin_chat_template(arg) {
        Some(t) => t.to_string(),
        None => {
            let p = Path::new(arg);
            if !p.is_file() {
                bail!(
                    "--chat-template {arg}: not a built-in template ({}) nor a file",
                    builtin_chat_template_names()
                );
            }
            std::fs::read_to_string(p)
                .with_context(|| format!("--chat-template: cannot read {}", p.display()))?
        }
    };
    let probe = [
        ChatMessage::new("system", "You are helpful."),
        ChatMessage::new("user", "Hi"),
    ];
    render_chat_template(
        &template,
        &probe,
        true,
        &tokenizer.bos_token(),
        &tokenizer.eos_token(),
    )
    .with_context(|| format!("--chat-template {arg} does not render a system + user dialog"))?;
    Ok(Some(template))
}

/// The error for a model without a chat template; `otherwise` ends it ("or use `kiln
/// complete`").
pub fn missing(model: &str, otherwise: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{model} has no chat template (it may be a base model, not an instruct one): give \
         --chat-template NAME (built in: {}) or --chat-template FILE, {otherwise}",
        builtin_chat_template_names()
    )
}

/// The template a chat with `engine` (loaded from `path`) is formatted with: `arg`, else the
/// model's own; `None` for a Meta checkpoint without either (Meta's own `[INST]` format is
/// used, [`crate::chat::prompt_ids`]); a clear error for any other model without one.
pub fn for_chat(
    arg: Option<&str>,
    engine: &kiln_engine::Engine,
    path: &Path,
    otherwise: &str,
) -> Result<Option<String>> {
    let template = resolve(arg, engine.chat_template.clone(), &engine.tokenizer)?;
    // Meta's checkpoints carry no template; their reference chat format is known.
    if template.is_none() && !path.join("params.json").is_file() {
        return Err(missing(&engine.name, otherwise));
    }
    Ok(template)
}
