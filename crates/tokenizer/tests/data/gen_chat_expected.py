#!/usr/bin/env python3
"""Renders the chat templates in this directory with Python's Jinja2 the way transformers'
`apply_chat_template` does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
loopcontrols, `raise_exception`, `tojson`), and writes chat_expected.json.

Templates: qwen2.5-coder-chat-template.jinja (tokenizer.chat_template of
qwen2.5-coder-0.5b-instruct-q4_k_m.gguf, extracted with gguf-py), gemma3-chat-template.jinja
(Gemma 3 instruct's template; the gemma-3-270m base GGUF has none), llama2-chat-template.jinja
(Llama 2 chat's hub template, uses `.strip()`), llama3-chat-template.jinja (Meta Llama 3
8B Instruct's tokenizer_config.json chat_template; a reference for kiln's built-in `llama3`), pycompat-chat-template.jinja (Python string
methods), tojson-chat-template.jinja (the `tojson` filter). Usage: python3 gen_chat_expected.py  (Jinja2 3.1.6)"""
import json
import os

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

here = os.path.dirname(os.path.abspath(__file__))


def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' own tojson filter
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

dialogs = {
    "single": [{"role": "user", "content": "What is the largest animal?"}],
    "system": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "  Hi there!  "},
    ],
    "multi": [
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": " Hi! How can I help? "},
        {"role": "user", "content": "Tell me a joke about whales!"},
    ],
    "escapes": [
        {"role": "user", "content": "quote \" backslash \\ newline \n tab \t ctrl \u0001 <html> & 'single' é 中 🦙"},
    ],
    "bad_order": [
        {"role": "assistant", "content": "I speak first"},
        {"role": "user", "content": "no"},
    ],
}
cases = []
for name in ["qwen2.5-coder", "gemma3", "llama2", "pycompat", "tojson", "llama3"]:
    src = open(os.path.join(here, f"{name}-chat-template.jinja"), encoding="utf-8").read()
    tmpl = env.from_string(src)
    for dname, msgs in dialogs.items():
        for agp in [False, True]:
            try:
                out = tmpl.render(messages=msgs, add_generation_prompt=agp, bos_token="<s>", eos_token="</s>")
                err = None
            except jinja2.exceptions.TemplateError as e:
                out, err = None, str(e)
            cases.append({"template": name, "dialog": dname, "add_generation_prompt": agp, "output": out, "error": err})
with open(os.path.join(here, "chat_expected.json"), "w") as f:
    json.dump({"generator": "tests/data/gen_chat_expected.py", "jinja2": jinja2.__version__, "dialogs": dialogs, "cases": cases}, f, indent=1, ensure_ascii=False)
    f.write("\n")
print(len(cases), "cases;", sum(c["error"] is not None for c in cases), "errors")
