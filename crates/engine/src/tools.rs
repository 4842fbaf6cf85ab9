//! Tool calling (OpenAI's `tools`): the call syntax, the grammar that forces a call, the
//! system-prompt form for chat templates that do not render tools, and reading calls back out
//! of the generated text.
//!
//! kiln uses one call syntax, the one Qwen2.5's template (and Hermes-style templates) teach the
//! model: each call is a JSON object with the function's `name` and its `arguments` inside
//! `<tool_call>` tags,
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! A template that renders `tools` itself (it mentions them) gets them as a template variable;
//! for one that does not, [`system_prompt`] writes them into the system message in that form.

use kiln_tokenizer::ChatMessage;
use serde_json::{json, Value};

use crate::constraint::ConstraintSpec;

/// What opens a tool call in the output.
pub const CALL_OPEN: &str = "<tool_call>";
/// What closes it.
pub const CALL_CLOSE: &str = "</tool_call>";

/// One function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    pub name: String,
    pub description: Option<String>,
    /// A JSON schema of the arguments object.
    pub parameters: Value,
}

impl Function {
    /// The tool as OpenAI's request writes it (`{"type": "function", "function": {...}}`),
    /// which is what chat templates receive.
    pub fn to_openai(&self) -> Value {
        let mut f = json!({"name": self.name});
        if let Some(d) = &self.description {
            f["description"] = json!(d);
        }
        f["parameters"] = self.parameters.clone();
        json!({"type": "function", "function": f})
    }
}

/// OpenAI's `tool_choice`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never call a tool (the tools stay in the prompt).
    None,
    /// The model decides.
    Auto,
    /// At least one call, to any of the tools.
    Required,
    /// A call to this function.
    Named(String),
}

/// The text a template without tool support gets in (or as) its system message: the tools'
/// signatures and the call syntax, in the words Qwen2.5's template uses.
pub fn system_prompt(functions: &[Function]) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for f in functions {
        s.push('\n');
        s.push_str(&f.to_openai().to_string());
    }
    s.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// Whether a chat template renders tools itself (it uses a `tools` variable).
pub fn template_renders_tools(template: &str) -> bool {
    template.contains("tools")
}

/// A call as the output syntax writes it.
fn call_text(name: &str, arguments: &Value) -> String {
    format!(
        "{CALL_OPEN}\n{}\n{CALL_CLOSE}",
        json!({"name": name, "arguments": arguments})
    )
}

/// The messages for a template that does not render tools: `functions` (when given) in the
/// system message ([`system_prompt`], after the system message's own text, or as a system
/// message of its own), an assistant turn's calls as call text after its content, and `tool`
/// turns as user turns holding `<tool_response>` blocks (consecutive ones in one turn, so that
/// user and assistant turns still alternate).
pub fn fold_tools_into_messages(
    messages: Vec<ChatMessage>,
    functions: Option<&[Function]>,
) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let mut after_tool = false;
    for mut m in messages {
        match m.role.as_str() {
            "tool" => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                match out.last_mut() {
                    Some(prev) if after_tool => {
                        prev.content.push('\n');
                        prev.content.push_str(&block);
                    }
                    _ => out.push(ChatMessage::new("user", &block)),
                }
                after_tool = true;
                continue;
            }
            "assistant" => {
                if let Some(Value::Array(calls)) = m.tool_calls.take() {
                    for c in calls {
                        let f = c.get("function").unwrap_or(&c);
                        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
                        let args = f.get("arguments").cloned().unwrap_or(json!({}));
                        if !m.content.is_empty() {
                            m.content.push('\n');
                        }
                        m.content.push_str(&call_text(name, &args));
                    }
                }
            }
            _ => {}
        }
        m.tool_call_id = None;
        m.name = None;
        after_tool = false;
        out.push(m);
    }
    if let Some(fs) = functions {
        let text = system_prompt(fs);
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                first.content.push_str("\n\n");
                first.content.push_str(&text);
            }
            _ => out.insert(0, ChatMessage::new("system", &text)),
        }
    }
    out
}

/// The JSON schema of one call to `f`: its name, and arguments valid against its parameters.
fn call_schema(f: &Function) -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"const": f.name},
            "arguments": f.parameters,
        },
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// The constraint that makes the output tool calls only: one call (to `choice`'s function, or
/// to any of `functions` for `Required`), or several one after another when `parallel`.
/// `None` for `Auto` and `None` (the model writes what it wants).
pub fn call_constraint(
    functions: &[Function],
    choice: &ToolChoice,
    parallel: bool,
) -> Option<ConstraintSpec> {
    let schema = match choice {
        ToolChoice::None | ToolChoice::Auto => return None,
        ToolChoice::Named(name) => call_schema(functions.iter().find(|f| &f.name == name)?),
        ToolChoice::Required => {
            let any: Vec<Value> = functions.iter().map(call_schema).collect();
            json!({"anyOf": any})
        }
    };
    let repeat = if parallel { "(\"\\n\" call)*" } else { "" };
    Some(ConstraintSpec::Lark(format!(
        "start: call {repeat}\ncall: {open} \"\\n\" body \"\\n\" {close}\nbody: %json {schema}\n",
        open = serde_json::to_string(CALL_OPEN).expect("a string"),
        close = serde_json::to_string(CALL_CLOSE).expect("a string"),
    )))
}

/// One call read from the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub name: String,
    /// The arguments as JSON text (OpenAI's `function.arguments`).
    pub arguments: String,
}

/// One call object, `{"name": one of functions, "arguments": object or JSON text of one}`.
fn read_call(body: &Value, functions: &[Function]) -> Option<Call> {
    let name = body.get("name")?.as_str()?.to_string();
    if !functions.iter().any(|f| f.name == name) {
        return None;
    }
    let arguments = match body.get("arguments")? {
        a @ Value::Object(_) => a.to_string(),
        // Some models write the arguments as a JSON string, as OpenAI's wire format does.
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(a @ Value::Object(_)) => a.to_string(),
            _ => return None,
        },
        _ => return None,
    };
    Some(Call { name, arguments })
}

/// Reads the calls out of generated text: the text before the first `<tool_call>` (trimmed;
/// `None` when empty) and every call. A text that is nothing but one call object, without the
/// tags (small models write that), is one call too. `None` when the text has no call, or a
/// call that is not `{"name": string, "arguments": object}` (the text is then content, as
/// written), or a name that is not one of `functions`.
pub fn parse_calls(text: &str, functions: &[Function]) -> Option<(Option<String>, Vec<Call>)> {
    let Some(first) = text.find(CALL_OPEN) else {
        let body: Value = serde_json::from_str(text.trim()).ok()?;
        return Some((None, vec![read_call(&body, functions)?]));
    };
    let content = text[..first].trim();
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(at) = rest.find(CALL_OPEN) {
        // Only whitespace may stand between calls.
        if !rest[..at].trim().is_empty() {
            return None;
        }
        let body_start = at + CALL_OPEN.len();
        // An unclosed last call (the budget ran out) is not a call.
        let end = rest[body_start..].find(CALL_CLOSE)? + body_start;
        let body: Value = serde_json::from_str(rest[body_start..end].trim()).ok()?;
        calls.push(read_call(&body, functions)?);
        rest = &rest[end + CALL_CLOSE.len()..];
    }
    if !rest.trim().is_empty() {
        return None;
    }
    Some(((!content.is_empty()).then(|| content.to_string()), calls))
}

/// How much of `text` can be shown as content while a stream runs: everything before a
/// `<tool_call>`, less a tail that could still become one; nothing while the text is a JSON
/// object that could still be a bare call.
pub fn streamable_prefix(text: &str) -> usize {
    let t = text.trim_start();
    if t.is_empty() || t.starts_with('{') {
        return 0;
    }
    if let Some(at) = text.find(CALL_OPEN) {
        return at;
    }
    for k in (1..CALL_OPEN.len()).rev() {
        if text.ends_with(&CALL_OPEN[..k]) {
            return text.len() - k;
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Function {
        Function {
            name: "get_weather".into(),
            description: Some("Weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        }
    }

    #[test]
    fn calls_are_read_with_their_content() {
        let f = [weather()];
        let text = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Rome\\\"}\"}\n</tool_call>";
        let (content, calls) = parse_calls(text, &f).unwrap();
        assert_eq!(content.as_deref(), Some("Let me look."));
        assert_eq!(
            calls,
            vec![
                Call {
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into()
                },
                Call {
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Rome"}"#.into()
                }
            ]
        );
    }

    #[test]
    fn a_bare_call_object_is_a_call() {
        let text = " {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n";
        let (content, calls) = parse_calls(text, &[weather()]).unwrap();
        assert_eq!(content, None);
        assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
    }

    #[test]
    fn text_that_is_not_a_valid_call_stays_text() {
        let f = [weather()];
        for text in [
            "no call here",
            "{\"name\": \"get_weather\"}",
            "{\"name\": \"other\", \"arguments\": {}}",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
            "<tool_call>\n{\"name\": \"other\", \"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": 3}\n</tool_call>",
            "<tool_call>\nnot json\n</tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call> and more",
        ] {
            assert_eq!(parse_calls(text, &f), None, "{text}");
        }
    }

    #[test]
    fn streams_hold_back_what_could_open_a_call() {
        assert_eq!(streamable_prefix("Hello <tool"), 6);
        assert_eq!(streamable_prefix("Hello <tool_call>\n{"), 6);
        assert_eq!(streamable_prefix("a < b"), 5);
        assert_eq!(streamable_prefix("x<"), 1);
        assert_eq!(streamable_prefix("  {\"name\": 1"), 0);
    }

    #[test]
    fn templates_without_tools_get_them_as_text() {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(json!([{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]));
        let msgs = vec![
            ChatMessage::new("user", "Weather?"),
            call,
            ChatMessage::new("tool", "sunny"),
            ChatMessage::new("tool", "warm"),
        ];
        let out = fold_tools_into_messages(msgs, Some(&[weather()]));
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(
            out[0].content.contains("\"name\":\"get_weather\""),
            "{}",
            out[0].content
        );
        let body = json!({"name": "get_weather", "arguments": {"city": "Paris"}});
        assert_eq!(out[2].content, format!("<tool_call>\n{body}\n</tool_call>"));
        assert_eq!(
            out[3].content,
            "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nwarm\n</tool_response>"
        );
        // What the model writes is what the parser reads back.
        let (_, calls) = parse_calls(&out[2].content, &[weather()]).unwrap();
        assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
    }

    #[test]
    fn forced_calls_have_a_grammar_and_auto_has_none() {
        let f = [weather()];
        assert_eq!(call_constraint(&f, &ToolChoice::Auto, true), None);
        assert_eq!(call_constraint(&f, &ToolChoice::None, true), None);
        assert_eq!(
            call_constraint(&f, &ToolChoice::Named("nope".into()), true),
            None
        );
        let Some(ConstraintSpec::Lark(g)) =
            call_constraint(&f, &ToolChoice::Named("get_weather".into()), false)
        else {
            panic!("a Lark grammar")
        };
        assert!(g.contains("\"<tool_call>\"") && g.contains("%json"), "{g}");
    }
}
