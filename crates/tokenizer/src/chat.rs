//! Chat prompts: Jinja chat templates (as Hugging Face renders them) and Meta's Llama 2
//! `chat_completion` format.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, Value};

use crate::{Result, Tokenizer, TokenizerError};

/// One chat turn. The tool fields are rendered only when set (as transformers passes
/// OpenAI-style messages to templates).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's tool calls: `[{"id", "type": "function", "function": {"name",
    /// "arguments"}}]`, `arguments` as a JSON object (templates write it with `tojson`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A `tool` turn's answer to this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `tool` turn's function name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_string(),
            content: content.to_string(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
}

/// ChatML (Qwen, many fine-tunes): `<|im_start|>role\ncontent<|im_end|>\n` per message.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Llama 2 chat: `<s>[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] answer </s>`, the
/// system message folded into the first user turn, each turn stripped (Meta's
/// `chat_completion` layout).
pub const LLAMA2: &str = "{% if messages and messages[0]['role'] == 'system' %}{% set sys = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}{% for m in msgs %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + ((sys if loop.first else '') + m['content']).strip() + ' [/INST]' }}{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% else %}{{ raise_exception('llama2 chat: roles must be system (first), user or assistant') }}{% endif %}{% endfor %}";

/// Llama 3 / 3.x instruct: `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>`
/// after `<|begin_of_text|>` (the tokenizer's BOS).
pub const LLAMA3: &str = "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'].strip() + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Gemma (2 and 3) instruct: `<start_of_turn>user\ncontent<end_of_turn>\n`, the assistant
/// role named `model`, a system message prepended to the first user turn.
pub const GEMMA: &str = "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'].strip() + '\n\n' %}{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}{% for m in msgs %}{% if m['role'] == 'assistant' %}{% set role = 'model' %}{% elif m['role'] == 'user' %}{% set role = 'user' %}{% else %}{{ raise_exception('gemma chat: roles must be system (first), user or assistant') }}{% endif %}{{ '<start_of_turn>' + role + '\n' + (sys if loop.first else '') + m['content'].strip() + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// The built-in chat templates (`--chat-template NAME`), for models whose file has none.
pub const BUILTIN_CHAT_TEMPLATES: [(&str, &str); 4] = [
    ("chatml", CHATML),
    ("llama2", LLAMA2),
    ("llama3", LLAMA3),
    ("gemma", GEMMA),
];

/// The built-in template called `name` (see [`BUILTIN_CHAT_TEMPLATES`]).
pub fn builtin_chat_template(name: &str) -> Option<&'static str> {
    BUILTIN_CHAT_TEMPLATES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, t)| *t)
}

/// The names of the built-in templates, comma-separated (for messages).
pub fn builtin_chat_template_names() -> String {
    BUILTIN_CHAT_TEMPLATES
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn raise_exception(msg: String) -> std::result::Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31) (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `strftime_now(format)` (Llama 3.x templates): the current UTC time; supports
/// %d %m %Y %y %b %B %H %M %S %%.
fn strftime_now(fmt: String) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('H') => out.push_str(&format!("{:02}", sod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", sod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", sod % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)` (what transformers'
/// `tojson` filter calls): `", "` / `": "` separators, or newlines and `indent` spaces.
fn py_json(
    v: &Value,
    indent: Option<usize>,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), Error> {
    let (item_sep, newline) = match indent {
        Some(n) => (
            ",".to_string(),
            format!("\n{}", " ".repeat(n * (level + 1))),
        ),
        None => (", ".to_string(), String::new()),
    };
    if out.len() > crate::sandbox::MAX_VALUE_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: the output is over the chat template size limit",
        ));
    }
    let close = match indent {
        Some(n) => format!("\n{}", " ".repeat(n * level)),
        None => String::new(),
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                if f.is_finite() && f == f.trunc() && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"));
                } else if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else {
                    out.push_str(&format!("{f}"));
                }
            }
        }
        ValueKind::String => json_string(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&item_sep);
                }
                out.push_str(&newline);
                py_json(item, indent, level + 1, out)?;
            }
            out.push_str(&close);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&item_sep);
                }
                out.push_str(&newline);
                match k.as_str() {
                    Some(s) => json_string(s, out),
                    None => json_string(&k.to_string(), out),
                }
                out.push_str(": ");
                py_json(&v.get_item(k)?, indent, level + 1, out)?;
            }
            out.push_str(&close);
            out.push('}');
        }
        _ => json_string(&v.to_string(), out),
    }
    Ok(())
}

fn tojson(v: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    // The indent is repeated at every nesting level; real templates use 2 or 4.
    if indent.is_some_and(|n| n > 64) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: indent over 64 is not supported",
        ));
    }
    let mut out = String::new();
    py_json(&v, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// The functions and filters transformers gives chat templates.
fn add_hf_globals(env: &mut Environment<'_>) {
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
}

/// Renders a Hugging Face chat template the way `transformers` does (Jinja with
/// `trim_blocks` and `lstrip_blocks`, Python string methods such as `.strip()`,
/// `raise_exception`, `strftime_now`), with `messages`, `add_generation_prompt`,
/// `bos_token` and `eos_token` in scope.
///
/// The template is untrusted (it comes from the model file): it runs with a step budget, a
/// recursion limit and a memory budget (see `sandbox`), and a template that exceeds them is
/// an error for this render.
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    render_chat_template_with_tools(
        template,
        messages,
        None,
        add_generation_prompt,
        bos_token,
        eos_token,
    )
}

/// [`render_chat_template`] with `tools` in scope too (OpenAI's tool objects, `{"type":
/// "function", "function": {"name", "description", "parameters"}}`, as transformers'
/// `apply_chat_template(tools=...)` passes them); `None` renders `tools` as `none`.
pub fn render_chat_template_with_tools(
    template: &str,
    messages: &[ChatMessage],
    tools: Option<&[serde_json::Value]>,
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let ctx = context! {
        messages => messages,
        tools => tools,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    crate::sandbox::render_untrusted(template, ctx, add_hf_globals)
        .map_err(|e| TokenizerError::Invalid(format!("chat template: {e}")))
}

/// Python's `str.strip()` (whitespace as `str.isspace` sees it).
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Meta's Llama 2 `chat_completion` prompt as token ids: an optional leading system message
/// folded into the first user turn inside `<<SYS>>` tags, every completed (user, assistant)
/// exchange encoded as `[INST] user [/INST] answer ` with BOS and EOS, then the last user
/// turn as `[INST] user [/INST]` with BOS only.
pub fn llama2_chat_prompt(tokenizer: &Tokenizer, dialog: &[ChatMessage]) -> Result<Vec<u32>> {
    if let Some(tag) = llama2_special_tag(dialog) {
        return Err(TokenizerError::Invalid(format!(
            "llama 2 chat: message contains the special tag {tag}"
        )));
    }
    llama2_chat_prompt_unchecked(tokenizer, dialog)
}

const B_INST: &str = "[INST]";
const E_INST: &str = "[/INST]";

/// The first of Meta's special tags (`[INST]`, `[/INST]`, `<<SYS>>`, `<</SYS>>`) that a message
/// of `dialog` contains (Meta's `chat_completion` calls such a request unsafe).
pub fn llama2_special_tag(dialog: &[ChatMessage]) -> Option<&'static str> {
    dialog.iter().find_map(|m| {
        [B_INST, E_INST, "<<SYS>>", "<</SYS>>"]
            .into_iter()
            .find(|tag| m.content.contains(tag))
    })
}

/// [`llama2_chat_prompt`] without refusing special tags in the messages: Meta's
/// `chat_completion` encodes such a dialog and generates for it (and then answers its
/// `UNSAFE_ERROR` instead of the text).
pub fn llama2_chat_prompt_unchecked(
    tokenizer: &Tokenizer,
    dialog: &[ChatMessage],
) -> Result<Vec<u32>> {
    const B_SYS: &str = "<<SYS>>\n";
    const E_SYS: &str = "\n<</SYS>>\n\n";
    let bad = |m: &str| TokenizerError::Invalid(format!("llama 2 chat: {m}"));
    let mut turns: Vec<ChatMessage> = dialog.to_vec();
    if turns.first().is_some_and(|m| m.role == "system") {
        if turns.len() < 2 {
            return Err(bad("a system message needs a user message after it"));
        }
        let sys = turns.remove(0);
        turns[0].content = format!("{B_SYS}{}{E_SYS}{}", sys.content, turns[0].content);
    }
    for (i, m) in turns.iter().enumerate() {
        let want = if i % 2 == 0 { "user" } else { "assistant" };
        if m.role != want {
            return Err(bad(
                "roles must be system (optional), then user/assistant alternating",
            ));
        }
    }
    if turns.last().map(|m| m.role.as_str()) != Some("user") {
        return Err(bad("the last message must be from the user"));
    }
    let eos = *tokenizer
        .eos_ids()
        .first()
        .ok_or_else(|| bad("tokenizer has no EOS token"))?;
    let mut ids = Vec::new();
    for pair in turns.chunks(2) {
        if let [prompt, answer] = pair {
            let text = format!(
                "{B_INST} {} {E_INST} {} ",
                py_strip(&prompt.content),
                py_strip(&answer.content)
            );
            ids.extend(tokenizer.encode(&text, true)?);
            ids.push(eos);
        }
    }
    let last = &turns[turns.len() - 1];
    ids.extend(tokenizer.encode(
        &format!("{B_INST} {} {E_INST}", py_strip(&last.content)),
        true,
    )?);
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ]
    }

    #[test]
    fn chatml_fallback() {
        let s = render_chat_template(CHATML, &msgs(), true, "", "").unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let s = render_chat_template(CHATML, &msgs(), false, "", "").unwrap();
        assert!(s.ends_with("Hi<|im_end|>\n"), "{s}");
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let t = "{{ bos_token }}{% for m in messages %}{% if m.role not in ['system', 'user'] %}{{ raise_exception('bad role') }}{% endif %}[{{ m.role.upper() }}] {{ m.content.strip() }}\n{% endfor %}";
        let s = render_chat_template(t, &msgs(), true, "<s>", "</s>").unwrap();
        assert_eq!(s, "<s>[SYSTEM] Be brief.\n[USER] Hi\n");
        let mut bad = msgs();
        bad[0].role = "tool".into();
        let e = render_chat_template(t, &bad, true, "<s>", "</s>").unwrap_err();
        assert!(e.to_string().contains("bad role"), "{e}");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = "{{ raise_exception('nope') }}";
        let e = render_chat_template(t, &[], false, "", "").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
