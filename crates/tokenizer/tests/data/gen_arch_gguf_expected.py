#!/usr/bin/env python3
"""Tokenizes, with llama.cpp's `llama-tokenize` (the anchor build, commit 0c1e57098), the
golden prompts of the tiny architecture fixtures and every string of corpus.json, on the six
GGUF files llama.cpp's own converter wrote from those fixtures
(tests/data/fixtures/arch/llama.cpp-gguf; SentencePiece `llama` vocabularies), and writes
arch_gguf_expected.json.

For each string and model it runs exactly:

    llama-tokenize -m MODEL -f TEXTFILE --no-escape --ids --log-disable

TEXTFILE holds the string's UTF-8 bytes verbatim. BOS is added as the model says and
special-token text is parsed (llama-tokenize's defaults, what `llama-completion -p` does).

Usage: python3 gen_arch_gguf_expected.py [LLAMA_BIN_DIR]
"""
import json
import os
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.abspath(os.path.join(here, "../../../.."))
home = os.path.expanduser("~")
bin_dir = sys.argv[1] if len(sys.argv) > 1 else f"{home}/.cache/kiln/anchors/llama.cpp-0c1e57098/bin"
arch = os.path.join(repo, "tests/data/fixtures/arch")
models = ["llama32-tiny", "qwen3-tiny", "gemma2-tiny", "phi3-tiny", "qwen2-yarn-tiny", "mixtral-tiny"]

corpus = json.load(open(os.path.join(here, "corpus.json"), encoding="utf-8"))
exe = os.path.join(bin_dir, "llama-tokenize")
out = {
    "generator": "crates/tokenizer/tests/data/gen_arch_gguf_expected.py",
    "command": "llama-tokenize -m MODEL -f TEXTFILE --no-escape --ids --log-disable",
    "llama_cpp": "commit 0c1e57098 (vendored by llama-cpp-python 0.3.36)",
    "models": {},
}


def tokenize(model_path, text, path):
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))
    p = subprocess.run(
        [exe, "-m", model_path, "-f", path, "--no-escape", "--ids", "--log-disable"],
        capture_output=True,
    )
    if p.returncode != 0:
        # phi3-tiny: llama.cpp's vocabulary loader fails on it ("error loading model
        # vocabulary: unordered_map::at", as its log says when it gets written: this build's
        # asynchronous logger often exits without it). Recorded, not an error here.
        raise LookupError(f"llama-tokenize exits with {p.returncode}: llama.cpp does not load this vocabulary")
    lines = [l for l in p.stdout.decode().splitlines() if l.startswith("[")]
    return json.loads(lines[-1])


with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "text.txt")
    for name in models:
        gguf = os.path.join(arch, "llama.cpp-gguf", f"{name}.gguf")
        golden = json.load(open(os.path.join(arch, "golden", f"{name}.json"), encoding="utf-8"))
        try:
            out["models"][name] = {
                "prompts": [
                    {"name": p["name"], "ids": tokenize(gguf, p["text"], path)}
                    for p in golden["prompts"]
                ],
                "corpus": [tokenize(gguf, t, path) for t in corpus],
            }
        except LookupError as e:
            out["models"][name] = {"llama_cpp_cannot_load": str(e)}
        print(name, "done", file=sys.stderr)
with open(os.path.join(here, "arch_gguf_expected.json"), "w") as f:
    json.dump(out, f, separators=(",", ":"))
    f.write("\n")
