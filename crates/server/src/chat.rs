//! Chat templates: the model's Jinja template rendered with minijinja (Python string methods
//! available, as Hugging Face templates expect), or ChatML when the model has none.

use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

/// One message as the template sees it.
#[derive(Clone, Debug, Serialize)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
}

/// ChatML, used when the model ships no template (llama.cpp does the same).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Renders `template` over `messages`, the way `transformers`' `apply_chat_template` does.
pub fn render(
    template: &str,
    messages: &[TemplateMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
    env.add_template("chat", template)
        .map_err(|e| format!("the model's chat template does not parse: {e}"))?;
    let tmpl = env.get_template("chat").map_err(|e| e.to_string())?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
        tools => minijinja::Value::UNDEFINED,
    })
    .map_err(|e| {
        let mut msg = format!("chat template: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        msg
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<TemplateMessage> {
        vec![
            TemplateMessage {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            TemplateMessage {
                role: "user".into(),
                content: "Hi".into(),
            },
        ]
    }

    #[test]
    fn chatml_fallback() {
        let s = render(CHATML, &msgs(), true, "", "").unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let t = "{{ bos_token }}{% for m in messages %}{% if m.role not in ['system', 'user'] %}{{ raise_exception('bad role') }}{% endif %}[{{ m.role.upper() }}] {{ m.content.strip() }}\n{% endfor %}";
        let s = render(t, &msgs(), true, "<s>", "</s>").unwrap();
        assert_eq!(s, "<s>[SYSTEM] Be brief.\n[USER] Hi\n");
        let mut bad = msgs();
        bad[0].role = "tool".into();
        assert!(render(t, &bad, true, "<s>", "</s>")
            .unwrap_err()
            .contains("bad role"));
    }
}
