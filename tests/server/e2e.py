#!/usr/bin/env python3
"""End-to-end check of `kiln serve` with the official `openai` client.

Usage: e2e.py BASE_URL API_KEY KILN_BINARY MODEL_PATH
The server must already run at BASE_URL (see run_e2e.sh). Expected values come from
independent sources: llama.cpp's prompt token ids (tests/data/anchors) and `kiln complete`, whose
greedy output the server must reproduce exactly.
"""

import json
import os
import subprocess
import sys

import openai
from openai import OpenAI

BASE, KEY, KILN, MODEL_PATH = sys.argv[1:5]
ANCHORS = os.path.join(os.path.dirname(__file__), "..", "data", "anchors",
                       "llama-cpp-0c1e57098.json")

client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=300)
failures = []
passed = 0


def check(name, cond, detail=""):
    global passed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failures.append(name)
        print(f"FAIL {name} {detail}")


def kiln_complete(prompt, n):
    out = subprocess.run([KILN, "complete", "-m", MODEL_PATH, "--json", "--temperature", "0",
                          "-n", str(n), "--prompt", prompt],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["choices"][0]


models = client.models.list()
model = models.data[0].id
check("models lists one model", len(models.data) == 1, models)

# Prompt token ids equal llama.cpp's for the same text.
with open(ANCHORS) as f:
    anchor = json.load(f)["models"]["qwen2.5-coder-0.5b"]
PROMPT = anchor["prompt"]
r = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0)
c = r.choices[0]
prompt_ids = c.model_extra["prompt_token_ids"]
check("prompt ids equal llama.cpp's", prompt_ids == anchor["prompt_token_ids"],
      f"{prompt_ids} vs {anchor['prompt_token_ids']}")
check("usage counts", r.usage.prompt_tokens == len(prompt_ids)
      and r.usage.completion_tokens == len(c.model_extra["token_ids"]), r.usage)

# Greedy equals `kiln complete`.
ref = kiln_complete(PROMPT, 24)
check("greedy equals kiln complete", c.model_extra["token_ids"] == ref["token_ids"],
      f"{c.model_extra['token_ids']} vs {ref['token_ids']}")
check("greedy text equals kiln complete", c.text == ref["text"], f"{c.text!r} vs {ref['text']!r}")
llama_ids = anchor["greedy_32"]["token_ids"]
same = 0
for a, b in zip(c.model_extra["token_ids"], llama_ids):
    if a != b:
        break
    same += 1
print(f"info greedy agrees with llama.cpp on the first {same} of 24 tokens")

# Streaming gives the same text.
text = ""
finish = None
for chunk in client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0,
                                       stream=True):
    text += chunk.choices[0].text
    finish = chunk.choices[0].finish_reason or finish
check("stream text equals non-stream", text == c.text, f"{text!r} vs {c.text!r}")
check("stream finish reason", finish == c.finish_reason, finish)

# Usage in streams.
chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0,
                                        stream=True, stream_options={"include_usage": True}))
check("stream usage chunk", chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
      and chunks[-1].choices == [], chunks[-1])

# Logprobs: the chosen greedy token is the top alternative, logprobs are <= 0.
r = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3)
lp = r.choices[0].logprobs
check("logprobs per token", len(lp.tokens) == 8 and len(lp.token_logprobs) == 8
      and all(len(t) == 3 for t in lp.top_logprobs), lp)
check("greedy token is top-1", all(abs(max(t.values()) - l) < 1e-5
                                   for t, l in zip(lp.top_logprobs, lp.token_logprobs)), lp)
check("logprobs are log-probabilities", all(l <= 1e-6 for l in lp.token_logprobs), lp)

# Echo with logprobs covers the prompt.
r = client.completions.create(model=model, prompt=PROMPT, max_tokens=2, temperature=0, logprobs=1,
                              echo=True)
ch = r.choices[0]
check("echo text starts with the prompt", ch.text.startswith(PROMPT), ch.text)
check("echo logprobs cover prompt + generated",
      len(ch.logprobs.tokens) == len(prompt_ids) + 2 and ch.logprobs.token_logprobs[0] is None, ch.logprobs)

# Stop strings cut the text.
full = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0).choices[0].text
stop = full[6:10]
r = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "zzzz"])
check("stop string", r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop",
      f"{r.choices[0].text!r} / {full!r} / {stop!r}")

# Seeds reproduce; different seeds differ.
def sampled(seed):
    return client.completions.create(model=model, prompt="def quicksort(arr):", max_tokens=32,
                                     temperature=1.0, seed=seed).choices[0].text
a, b, d = sampled(1234), sampled(1234), sampled(999)
check("same seed same text", a == b, f"{a!r} vs {b!r}")
check("other seed other text", a != d, a)

# Several prompts and n choices.
r = client.completions.create(model=model, prompt=["1, 2, 3,", "a, b, c,"], max_tokens=4, temperature=0.7,
                              n=2, seed=5)
check("prompts x n choices", [x.index for x in r.choices] == [0, 1, 2, 3], r.choices)

# Chat.
messages = [{"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Write a Python function that adds two numbers."}]
r = client.chat.completions.create(model=model, messages=messages, max_tokens=48, temperature=0)
m = r.choices[0].message
check("chat answers", m.role == "assistant" and len(m.content) > 0, r)
check("chat prompt uses the template", r.choices[0].model_extra["prompt_token_ids"][:1] != [], r)
# The server renders the template exactly as `kiln chat` does (one path, the tokenizer crate's),
# and greedy answers agree.
cli = json.loads(subprocess.run([KILN, "chat", "-m", MODEL_PATH, "--json", "-n", "8",
                                 "--system", messages[0]["content"]],
                                input=messages[1]["content"] + "\n", check=True,
                                capture_output=True, text=True).stdout.splitlines()[0])
check("kiln chat --json is a chat.completion", cli["object"] == "chat.completion", cli)
cli = cli["choices"][0]
check("chat prompt ids equal kiln chat's",
      r.choices[0].model_extra["prompt_token_ids"] == cli["prompt_token_ids"],
      f"{r.choices[0].model_extra['prompt_token_ids']} vs {cli['prompt_token_ids']}")
check("chat greedy equals kiln chat", r.choices[0].model_extra["token_ids"][:8] == cli["token_ids"],
      f"{r.choices[0].model_extra['token_ids']} vs {cli['token_ids']}")
text = ""
for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=48, temperature=0,
                                            stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
check("chat stream equals non-stream", text == m.content, f"{text!r} vs {m.content!r}")
r = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=6, temperature=0,
                                   logprobs=True, top_logprobs=2)
content = r.choices[0].logprobs.content
check("chat logprobs", len(content) == r.usage.completion_tokens and r.usage.completion_tokens <= 6
      and all(len(t.top_logprobs) == 2 for t in content), r)
r = client.chat.completions.create(model=model, messages=messages, max_tokens=64, temperature=0.8, seed=7)
r2 = client.chat.completions.create(model=model, messages=messages, max_tokens=64, temperature=0.8, seed=7)
check("chat seed reproducible", r.choices[0].message.content == r2.choices[0].message.content)
stop_at = m.content[5:9]
r = client.chat.completions.create(model=model, messages=messages, max_tokens=48, temperature=0, stop=stop_at)
check("chat stop", r.choices[0].message.content == m.content[:m.content.index(stop_at)], r)

# Errors.
try:
    OpenAI(base_url=BASE, api_key="wrong", max_retries=0).models.list()
    check("wrong key rejected", False)
except openai.AuthenticationError:
    check("wrong key rejected", True)
# One model is loaded, so any `model` value names it (as llama-server does; litellm sends
# "openai/local"), while /v1/models/{id} knows only the listed names.
r = client.completions.create(model="openai/local", prompt="x", max_tokens=1)
check("any model name served", len(r.choices) == 1 and r.model == model, r.model)
try:
    client.models.retrieve("no-such-model")
    check("unknown model id 404", False)
except openai.NotFoundError:
    check("unknown model id 404", True)
try:
    client.completions.create(model=model, prompt=[1] * 100_000, max_tokens=1)
    check("oversize prompt 400", False)
except openai.BadRequestError as e:
    check("oversize prompt 400", "100000" in str(e), str(e))

# Embeddings through the SDK: float and base64 (the SDK decodes it) give the same vectors, of
# unit length; a paraphrase is closer than an unrelated sentence; `dimensions` is refused.
import math

texts = ["The cat sat on the mat.", "A cat was sitting on the rug.",
         "The stock market fell sharply today.", "How do I reverse a list in Python?"]
ef = client.embeddings.create(model="openai/local", input=texts, encoding_format="float")
eb = client.embeddings.create(model=model, input=texts, encoding_format="base64")
vf = [d.embedding for d in ef.data]
vb = [d.embedding for d in eb.data]
if vb and isinstance(vb[0], str):  # an SDK that leaves base64 to the caller
    import base64
    import struct
    vb = [list(struct.unpack(f"<{len(base64.b64decode(b)) // 4}f", base64.b64decode(b))) for b in vb]


def f32(v):
    """JSON floats parse as doubles; the vectors are f32s: compare them as f32s."""
    import struct
    return list(struct.unpack(f"<{len(v)}f", struct.pack(f"<{len(v)}f", *v)))


check("embeddings float equals base64", [f32(v) for v in vf] == [f32(v) for v in vb]
      and len(vf) == 4 and len(vf[0]) > 100, (len(vf), len(vf[0]) if vf else 0))
check("embeddings in order with usage", [d.index for d in ef.data] == [0, 1, 2, 3]
      and ef.usage.prompt_tokens > 0 and ef.usage.total_tokens == ef.usage.prompt_tokens, ef.usage)
check("embeddings unit length", all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4 for v in vf))


def cos(a, b):
    return sum(x * y for x, y in zip(a, b))


check("paraphrase closer than unrelated",
      cos(vf[0], vf[1]) > max(cos(vf[0], vf[2]), cos(vf[0], vf[3])),
      [cos(vf[0], vf[i]) for i in (1, 2, 3)])
ids = client.embeddings.create(model=model, input=[prompt_ids], encoding_format="float")
ids_text = client.embeddings.create(model=model, input=PROMPT, encoding_format="float")
check("embeddings of token ids equal those of the text", ids.data[0].embedding == ids_text.data[0].embedding)
try:
    client.embeddings.create(model=model, input="x", dimensions=8)
    check("embeddings dimensions 400", False)
except openai.BadRequestError as e:
    check("embeddings dimensions 400", "dimensions" in str(e), str(e))

# Structured output: `parse` with pydantic models, 20 seeded sampled runs each. The output must
# parse and validate every time (the SDK validates it against the model; a failure raises).
from enum import Enum
from typing import List, Literal, Optional

from pydantic import BaseModel, Field


class Address(BaseModel):
    street: str = Field(max_length=40)
    city: str = Field(max_length=30)


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=130)
    address: Address


class Item(BaseModel):
    name: str = Field(max_length=24)
    quantity: int = Field(ge=1, le=99)


class Order(BaseModel):
    items: List[Item] = Field(min_length=1, max_length=3)


class Color(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Paint(BaseModel):
    color: Color
    finish: Literal["matte", "gloss"]


class Profile(BaseModel):
    username: str = Field(max_length=20)
    nickname: Optional[str] = Field(default=None, max_length=20)
    age: Optional[int] = Field(default=None, ge=13, le=120)


class Rating(BaseModel):
    stars: int = Field(ge=1, le=5)
    confidence_percent: int = Field(ge=0, le=100)
    recommended: bool


SCHEMAS = [
    (Person, "Invent a person with a name, an age and an address. Answer in JSON."),
    (Order, "Invent a small grocery order as JSON."),
    (Paint, "Pick a paint color and finish. Answer in JSON."),
    (Profile, "Invent a user profile as JSON."),
    (Rating, "Rate the movie Casablanca as JSON."),
]
for schema, question in SCHEMAS:
    ok = 0
    errors = []
    for seed in range(20):
        try:
            r = client.beta.chat.completions.parse(
                model=model, messages=[{"role": "user", "content": question}],
                response_format=schema, temperature=0.8, seed=seed, max_tokens=160)
            parsed = r.choices[0].message.parsed
            if isinstance(parsed, schema):
                ok += 1
            else:
                errors.append(r.choices[0].message.content)
        except Exception as e:  # noqa: BLE001 - any failure counts
            errors.append(repr(e)[:300])
    check(f"parse {schema.__name__}: 20 of 20 sampled runs valid", ok == 20,
          f"{ok}/20: {errors[:2]}")

# json_object: any JSON object; the same text streamed.
q = [{"role": "user", "content": "Describe a cat as a JSON object."}]
r = client.chat.completions.create(model=model, messages=q, response_format={"type": "json_object"},
                                   temperature=0, max_tokens=96)
try:
    obj = json.loads(r.choices[0].message.content)
    check("json_object is an object", isinstance(obj, dict), r.choices[0].message.content)
except ValueError:
    check("json_object is an object", False, r.choices[0].message.content)
text = ""
for chunk in client.chat.completions.create(model=model, messages=q, response_format={"type": "json_object"},
                                            temperature=0, max_tokens=96, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
check("json_object stream equals non-stream", text == r.choices[0].message.content, text)

# kiln's extensions on /v1/completions: a regex and a Lark grammar.
r = client.completions.create(model=model, prompt="The year the first moon landing happened:", max_tokens=8,
                              temperature=0.9, seed=3, extra_body={"regex": "[0-9]{4}"})
check("regex holds", len(r.choices[0].text) == 4 and r.choices[0].text.isdigit(), r.choices[0].text)
r = client.completions.create(model=model, prompt="Is water wet? Answer:", max_tokens=8, temperature=0.9, seed=3,
                              extra_body={"grammar": 'start: " " ("yes" | "no")'})
check("grammar holds", r.choices[0].text in (" yes", " no"), r.choices[0].text)

# Errors: a schema the engine cannot compile, a malformed tools entry.
try:
    client.chat.completions.create(model=model, messages=q, max_tokens=8, response_format={
        "type": "json_schema", "json_schema": {"name": "s", "schema": {
            "type": "array", "items": {"type": "string"}, "uniqueItems": True}}})
    check("uncompilable schema 400", False)
except openai.BadRequestError as e:
    check("uncompilable schema 400", "uniqueItems" in str(e) and e.body.get("param") == "response_format",
          str(e))
for bad in ([{"type": "function"}], [{"type": "function", "function": {"name": "no spaces allowed"}}],
            [{"type": "retrieval", "function": {"name": "f"}}]):
    try:
        client.chat.completions.create(model=model, messages=q, max_tokens=8, tools=bad)
        check(f"malformed tools 400 {bad}", False)
    except openai.BadRequestError as e:
        check(f"malformed tools 400 {bad}", e.status_code == 400 and e.body.get("type") ==
              "invalid_request_error", str(e))

# Tools: a weather function, called, answered, and the answer fed back; streamed and not.
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}]
QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def weather_loop(stream, tool_choice):
    messages = list(QUESTION)
    if stream:
        calls = {}
        finish = None
        for chunk in client.chat.completions.create(model=model, messages=messages, tools=TOOLS,
                                                    tool_choice=tool_choice, temperature=0, max_tokens=96,
                                                    stream=True):
            if not chunk.choices:
                continue
            ch = chunk.choices[0]
            finish = ch.finish_reason or finish
            for tc in ch.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                c["id"] += tc.id or ""
                c["name"] += (tc.function.name or "") if tc.function else ""
                c["arguments"] += (tc.function.arguments or "") if tc.function else ""
        calls = [calls[i] for i in sorted(calls)]
    else:
        r = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice=tool_choice,
                                           temperature=0, max_tokens=96)
        finish = r.choices[0].finish_reason
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in r.choices[0].message.tool_calls or []]
    label = f"tools ({'stream' if stream else 'whole'}, {tool_choice})"
    check(f"{label}: a call", finish == "tool_calls" and len(calls) >= 1
          and calls[0]["name"] == "get_weather", f"{finish} {calls}")
    if not calls:
        return
    args = json.loads(calls[0]["arguments"])
    check(f"{label}: arguments valid", isinstance(args.get("city"), str)
          and args.get("unit", "celsius") in ("celsius", "fahrenheit"), args)
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls]})
    for c in calls:
        messages.append({"role": "tool", "tool_call_id": c["id"],
                         "content": json.dumps({"city": "Paris", "temperature_c": 23, "sky": "sunny"})})
    r = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0,
                                       max_tokens=64)
    m = r.choices[0].message
    check(f"{label}: final answer", r.choices[0].finish_reason == "stop" and not m.tool_calls
          and m.content and "23" in m.content, m)


for stream in (False, True):
    for choice in ("auto", "required", {"type": "function", "function": {"name": "get_weather"}}):
        weather_loop(stream, choice)

print(f"{passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
