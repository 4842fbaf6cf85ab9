//! Chat templates come from model files: hostile ones must fail fast with a clear error,
//! never hang, abort on a huge allocation, or overflow the stack.

use std::time::{Duration, Instant};

use kiln_tokenizer::{render_chat_template, ChatMessage};

fn render(template: &str) -> (Result<String, String>, Duration) {
    let msgs = [ChatMessage::new("user", "hello")];
    let start = Instant::now();
    let r = render_chat_template(template, &msgs, true, "<s>", "</s>").map_err(|e| e.to_string());
    (r, start.elapsed())
}

/// Renders `template`, expecting an error containing `needle` within 5 s.
fn assert_refused(template: &str, needle: &str) {
    let (r, took) = render(template);
    let e = r.expect_err("a hostile template rendered");
    assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
    assert!(e.starts_with("chat template: "), "{e}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn nested_loops_run_out_of_fuel() {
    assert_refused(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "fuel",
    );
}

#[test]
fn string_doubling_in_a_loop_is_refused() {
    assert_refused(
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
        "limits",
    );
    assert_refused(
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "limits",
    );
}

#[test]
fn straight_line_doubling_is_refused() {
    let mut t = String::from("{% set s = 'abcd' %}");
    for _ in 0..40 {
        t.push_str("{% set s = s ~ s %}");
    }
    assert_refused(&t, "limits");
}

#[test]
fn doubling_through_captured_output_is_refused() {
    let mut t = String::from("{% set s = 'abcd' %}");
    for _ in 0..40 {
        t.push_str("{% set s %}{{ s }}{{ s }}{% endset %}");
    }
    assert_refused(&t, "limits");
}

#[test]
fn doubling_through_a_recursive_macro_is_refused() {
    assert_refused(
        "{% macro d(s, n) %}{% if n > 0 %}{{ d(s ~ s ~ s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}{{ d('ab', 16) }}",
        "limits",
    );
}

#[test]
fn doubling_through_filters_and_methods_is_refused() {
    assert_refused(
        "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s|replace('a', 'aa') %}{% endfor %}",
        "limits",
    );
    assert_refused(
        "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s.replace('a', 'aa') %}{% endfor %}",
        "limits",
    );
    assert_refused(
        "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = [ns.s, ns.s]|join('') %}{% endfor %}",
        "limits",
    );
    assert_refused(
        "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ''.join([ns.s, ns.s]) %}{% endfor %}",
        "limits",
    );
}

#[test]
fn huge_repeats_and_size_arguments_are_refused() {
    // Literal sizes are refused before compiling (minijinja folds constants at compile time).
    assert_refused("{{ 'a' * 1000000000 }}", "over the limit");
    assert_refused("{{ ([1] * 1000000000)|list|length }}", "over the limit");
    let chain = vec!["('x' * 100000)"; 20].join(" ~ ");
    assert_refused(&format!("{{{{ {chain} }}}}"), "`*` operators");
    // Sizes computed at run time are charged when used.
    assert_refused("{% set n = 50000 %}{{ 'abcd' * (n * n) }}", "limits");
    assert_refused("{% set n = 50000 %}{{ ([1] * (n * n))|length }}", "limits");
    assert_refused("{% set n = 50000 %}{{ 'a\\nb'|indent(n * n) }}", "limit");
    assert_refused(
        "{% set n = 50000 %}{{ [1, 2]|batch(n * n, 0)|list }}",
        "limit",
    );
    assert_refused("{% set n = 50000 %}{{ [1, 2]|slice(n * n)|list }}", "limit");
    assert_refused("{{ messages|tojson(indent=100000) }}", "indent");
    assert_refused("{{ '%1000000000s'|format('x') }}", "limit");
    assert_refused("{{ 123456789012345678901234567890 }}", "over the limit");
}

#[test]
fn list_doubling_is_refused() {
    assert_refused(
        "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}",
        "limits",
    );
}

#[test]
fn literal_text_in_a_long_loop_is_bounded() {
    // 10 KB of literal text emitted 100 000 times would be a 1 GB prompt.
    let t = format!(
        "{{% for i in range(100000) %}}{}{{% endfor %}}",
        "x".repeat(10_000)
    );
    assert_refused(&t, "fuel");
}

#[test]
fn unbounded_recursion_is_refused() {
    assert_refused(
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "recursion",
    );
}

#[test]
fn deeply_nested_values_do_not_overflow_the_stack() {
    // Nesting built in a loop (not limited by the parser) is displayed and dropped recursively.
    let (r, took) = render(
        "{% set ns = namespace(x=1) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x|length }}",
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(r.unwrap(), "1");
}

#[test]
fn ordinary_operators_still_work() {
    let (r, _) = render(
        "{% set one = 1 %}{% set two = 2 %}{% set half = 1.5 %}{% set ab = 'ab' %}{% set big = 100000 %}{% set p = big * big %}\
         {{ one + two }} {{ two * 3 }} {{ half + one }} {{ ab ~ one }} {{ ab + 'cd' }} {{ 'x' * (two + 1) }} \
         {{ ([one] + [2, 3])|length }} {{ ([one, 2] * two)|join(',') }} {{ p * p }} \
         {{ (p * p) ~ '' }} {{ 'a-b'.replace('-', '+') }} {{ ', '.join(['a', 'b']) }} {{ 'a'|indent(2) }}",
    );
    assert_eq!(
        r.unwrap(),
        "3 6 2.5 ab1 abcd xxx 3 1,2,1,2 100000000000000000000 100000000000000000000 a+b a, b a"
    );
    let (r, _) = render("{{ 'a' + 1 }}");
    assert!(r.unwrap_err().contains("unsupported types"));
}

#[test]
fn a_long_conversation_still_renders() {
    // 2 000 turns through a ChatML-style template stays well inside the step budget.
    let msgs: Vec<ChatMessage> = (0..2000)
        .map(|i| {
            ChatMessage::new(
                if i % 2 == 0 { "user" } else { "assistant" },
                "some text here",
            )
        })
        .collect();
    let out = render_chat_template(kiln_tokenizer::CHATML, &msgs, true, "", "").unwrap();
    assert_eq!(out.matches("<|im_start|>").count(), 2001);
}

#[test]
fn real_templates_render_long_conversations_within_the_limits() {
    // Every template in the test data that renders a short dialog renders a 1 000-message one
    // too: the step and byte budgets leave real templates plenty of room.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let turn = |i: usize| {
        let role = if i.is_multiple_of(2) {
            "user"
        } else {
            "assistant"
        };
        ChatMessage::new(
            role,
            "A sentence of ordinary length, repeated in every turn.",
        )
    };
    let mut rendered = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with("-chat-template.jinja") {
            continue;
        }
        let t = std::fs::read_to_string(&path).unwrap();
        let short: Vec<ChatMessage> = (0..2).map(turn).collect();
        if render_chat_template(&t, &short, true, "<s>", "</s>").is_err() {
            continue;
        }
        let long: Vec<ChatMessage> = (0..1001).map(turn).collect();
        let start = Instant::now();
        let out = render_chat_template(&t, &long, true, "<s>", "</s>")
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            out.matches("A sentence").count() >= 1001,
            "{}",
            path.display()
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        rendered += 1;
    }
    assert!(rendered >= 3, "only {rendered} templates rendered");
}
