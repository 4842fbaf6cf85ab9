#!/usr/bin/env python3
"""Tokenizes every string of corpus.json with llama.cpp's `llama-tokenize` (the anchor build,
commit 0c1e57098) for both real GGUF models and writes gguf_corpus_expected.json.

For each string and model it runs exactly:

    llama-tokenize -m MODEL -f TEXTFILE --no-escape --ids --log-disable

TEXTFILE holds the string's UTF-8 bytes verbatim (`-f` reads the file as-is in this build;
`--no-escape` keeps backslashes literal). Everything else is llama-tokenize's default, which is
what `llama-completion -p` does to a prompt: BOS added when the model adds one
(`tokenizer.ggml.add_bos_token`), special-token text parsed (`parse_special` on).

Usage: python3 gen_gguf_corpus.py [LLAMA_BIN_DIR] [MODELS_DIR]
"""
import json
import os
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
home = os.path.expanduser("~")
bin_dir = sys.argv[1] if len(sys.argv) > 1 else f"{home}/.cache/kiln/anchors/llama.cpp-0c1e57098/build/bin"
models_dir = sys.argv[2] if len(sys.argv) > 2 else f"{home}/.cache/kiln/models"
models = {
    "gemma3-270m": "gemma-3-270m-q4_k_m.gguf",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}

corpus = json.load(open(os.path.join(here, "corpus.json"), encoding="utf-8"))
out = {
    "generator": "tests/data/gen_gguf_corpus.py",
    "command": "llama-tokenize -m MODEL -f TEXTFILE --no-escape --ids --log-disable",
    "llama_cpp": "commit 0c1e57098 (vendored by llama-cpp-python 0.3.36)",
    "model_files": models,
    "models": {},
}
exe = os.path.join(bin_dir, "llama-tokenize")
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "text.txt")
    for name, file in models.items():
        res = []
        for i, text in enumerate(corpus):
            with open(path, "wb") as f:
                f.write(text.encode("utf-8"))
            p = subprocess.run(
                [exe, "-m", os.path.join(models_dir, file), "-f", path, "--no-escape", "--ids", "--log-disable"],
                capture_output=True,
            )
            if p.returncode != 0:
                sys.exit(f"{name} #{i} {text!r}: rc {p.returncode}\n{p.stderr.decode(errors='replace')}")
            lines = [l for l in p.stdout.decode().splitlines() if l.startswith("[")]
            res.append(json.loads(lines[-1]))
        out["models"][name] = res
        print(name, "done", file=sys.stderr)
with open(os.path.join(here, "gguf_corpus_expected.json"), "w") as f:
    json.dump(out, f, separators=(",", ":"))
    f.write("\n")
