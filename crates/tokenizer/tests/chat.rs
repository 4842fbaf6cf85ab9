//! Chat templates rendered with minijinja against Python Jinja2's renderings (as transformers
//! sets it up; tests/data/gen_chat_expected.py), plus the documented prompt formats.

mod common;

use kiln_tokenizer::{
    builtin_chat_template, render_chat_template, render_chat_template_with_tools, ChatMessage,
};

fn template(name: &str) -> String {
    std::fs::read_to_string(common::data(&format!("{name}-chat-template.jinja"))).unwrap()
}

fn dialog(v: &serde_json::Value) -> Vec<ChatMessage> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

#[test]
fn templates_match_jinja2() {
    let exp = common::read_json(&common::data("chat_expected.json"));
    let cases = exp["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 60);
    for c in cases {
        let name = c["template"].as_str().unwrap();
        let d = dialog(&exp["dialogs"][c["dialog"].as_str().unwrap()]);
        let agp = c["add_generation_prompt"].as_bool().unwrap();
        let got = render_chat_template(&template(name), &d, agp, "<s>", "</s>");
        match c["output"].as_str() {
            Some(want) => assert_eq!(got.unwrap(), want, "{name} {} {agp}", c["dialog"]),
            None => {
                let e = got.expect_err("Jinja2 raised");
                assert!(
                    e.to_string().contains("Conversation roles must alternate"),
                    "{e}"
                );
            }
        }
    }
}

/// Tools, an assistant turn's tool calls and tool results render as transformers renders
/// them (Jinja2 reference in chat_tools_expected.json).
#[test]
fn tools_and_tool_calls_match_jinja2() {
    let exp = common::read_json(&common::data("chat_tools_expected.json"));
    let msgs: Vec<ChatMessage> = exp["dialog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let mut c =
                ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap());
            c.tool_calls = m.get("tool_calls").cloned();
            c.tool_call_id = m
                .get("tool_call_id")
                .and_then(|v| v.as_str())
                .map(String::from);
            c
        })
        .collect();
    let tools: Vec<serde_json::Value> = exp["tools"].as_array().unwrap().clone();
    let cases = exp["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for c in cases {
        let with_tools = c["tools"].as_bool().unwrap();
        let got = render_chat_template_with_tools(
            &template("qwen2.5-coder"),
            &msgs,
            with_tools.then_some(tools.as_slice()),
            true,
            "",
            "<|im_end|>",
        )
        .unwrap();
        assert_eq!(got, c["output"].as_str().unwrap(), "tools: {with_tools}");
    }
}

#[test]
fn documented_formats() {
    let user = [ChatMessage::new("user", "Hi")];
    assert_eq!(
        render_chat_template(&template("qwen2.5-coder"), &user, true, "", "<|im_end|>").unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        render_chat_template(&template("gemma3"), &user, true, "<bos>", "<eos>").unwrap(),
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
}

#[test]
fn template_embedded_in_the_qwen_gguf() {
    let p = common::model_path("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let meta = common::gguf_tokenizer_meta(&p);
    let tk =
        kiln_tokenizer::Tokenizer::from_source(&kiln_formats::TokenizerSource::Gguf(meta)).unwrap();
    assert_eq!(tk.chat_template().unwrap(), template("qwen2.5-coder"));
}

#[test]
fn syntax_errors_are_errors() {
    assert!(render_chat_template("{% for %}", &[], false, "", "").is_err());
    assert!(render_chat_template(
        "{{ messages[0].content.nosuchmethod() }}",
        &[ChatMessage::new("user", "x")],
        false,
        "",
        ""
    )
    .is_err());
}

/// kiln's built-in templates (`--chat-template NAME`, written for kiln) render what the model
/// templates they stand for render under Python's Jinja2 (chat_expected.json), on every dialog
/// those accept. ChatML is Qwen's template when a system message is given (Qwen adds a default
/// one otherwise).
#[test]
fn builtin_templates_match_the_model_templates_they_stand_for() {
    let exp = common::read_json(&common::data("chat_expected.json"));
    let mut compared = 0;
    for (builtin, reference) in [
        ("llama2", "llama2"),
        ("llama3", "llama3"),
        ("gemma", "gemma3"),
        ("chatml", "qwen2.5-coder"),
    ] {
        let t = builtin_chat_template(builtin).unwrap();
        for c in exp["cases"].as_array().unwrap() {
            let dname = c["dialog"].as_str().unwrap();
            if c["template"] != reference || (builtin == "chatml" && dname != "system") {
                continue;
            }
            let Some(want) = c["output"].as_str() else {
                continue;
            };
            let d = dialog(&exp["dialogs"][dname]);
            let agp = c["add_generation_prompt"].as_bool().unwrap();
            let got = render_chat_template(t, &d, agp, "<s>", "</s>").unwrap();
            assert_eq!(
                got, want,
                "{builtin} on {dname}, add_generation_prompt {agp}"
            );
            compared += 1;
        }
    }
    assert!(compared >= 20, "only {compared} renderings compared");
    assert!(builtin_chat_template("ChatML").is_some());
    assert!(builtin_chat_template("vicuna").is_none());
}
