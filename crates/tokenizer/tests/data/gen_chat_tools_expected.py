#!/usr/bin/env python3
"""Renders qwen2.5-coder-chat-template.jinja with tools and a tool-calling dialog (an assistant
turn with `tool_calls`, `tool` results) with Python's Jinja2 the way transformers'
`apply_chat_template(messages, tools=...)` does (same environment as gen_chat_expected.py), and
writes chat_tools_expected.json. Usage: python3 gen_chat_tools_expected.py  (Jinja2 3.1.6)"""
import json
import os

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

here = os.path.dirname(os.path.abspath(__file__))


def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' own tojson filter
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

tools = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
dialog = [
    {"role": "system", "content": "You are a weather bot."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": {"city": "Rome", "unit": "celsius"}}}]},
    {"role": "tool", "content": "{\"temperature_c\": 23}", "tool_call_id": "call_1"},
    {"role": "tool", "content": "{\"temperature_c\": 25}", "tool_call_id": "call_2"},
]
src = open(os.path.join(here, "qwen2.5-coder-chat-template.jinja"), encoding="utf-8").read()
tmpl = env.from_string(src)
cases = []
for with_tools in [True, False]:
    out = tmpl.render(messages=dialog, tools=tools if with_tools else None, add_generation_prompt=True,
                      bos_token="", eos_token="<|im_end|>")
    cases.append({"tools": with_tools, "output": out})
with open(os.path.join(here, "chat_tools_expected.json"), "w") as f:
    json.dump({"generator": "tests/data/gen_chat_tools_expected.py", "jinja2": jinja2.__version__,
               "tools": tools, "dialog": dialog, "cases": cases}, f, indent=1, ensure_ascii=False)
    f.write("\n")
print(len(cases), "cases")
