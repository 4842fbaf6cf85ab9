#!/usr/bin/env python3
"""A small tiktoken-format tokenizer.model (Llama 3 layout) and tiktoken's own ids for it.

1. Trains byte-level BPE ranks with tiktoken's reference trainer
   (`tiktoken._educational.bpe_train`, vocab 400, Llama 3 regex) on tests/data/ppl-text.txt.
2. Writes tiktoken-small.model: one "base64(bytes) rank" line per token, rank order.
3. Builds `tiktoken.Encoding` with Llama 3.1's 256 special tokens appended after the ranks
   (<|begin_of_text|> = n, <|end_of_text|> = n+1, ... as Meta's tokenizer.py numbers them) and
   encodes every corpus.json string as Meta's `Tokenizer.encode(s, bos=True, eos=False)` does:
   `[bos] + enc.encode(s, allowed_special=set(), disallowed_special=())`.

Usage: pip install tiktoken==0.14.0 && python3 gen_tiktoken.py"""
import base64
import json
import os

import tiktoken
from tiktoken._educational import bpe_train

here = os.path.dirname(os.path.abspath(__file__))
PAT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
text = open(os.path.join(here, "../../../../tests/data/ppl-text.txt"), encoding="utf-8").read()

import contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    ranks = bpe_train(text, 400, PAT)

with open(os.path.join(here, "tiktoken-small.model"), "w") as f:
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        f.write(base64.b64encode(tok).decode() + " " + str(rank) + "\n")

specials = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>",
]
specials += [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(specials))]
n = len(ranks)
enc = tiktoken.Encoding(
    name="kiln-test", pat_str=PAT, mergeable_ranks=ranks, special_tokens={s: n + i for i, s in enumerate(specials)}
)
bos = enc.encode_single_token("<|begin_of_text|>")
corpus = json.load(open(os.path.join(here, "corpus.json"), encoding="utf-8"))
out = {
    "generator": "tests/data/gen_tiktoken.py",
    "tiktoken": tiktoken.__version__,
    "n_ranks": n,
    "bos": bos,
    "eot": enc.encode_single_token("<|eot_id|>"),
    "ids": [[bos] + enc.encode(t, allowed_special=set(), disallowed_special=()) for t in corpus],
}
# Special-token text parsed (kiln's `encode_with(text, false, true)`): allowed_special="all".
parsed_texts = [
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "text <|eot_id|> more <|reserved_special_token_100|>",
    "<|begin_of_text|",
]
out["parsed"] = [{"text": t, "ids": enc.encode(t, allowed_special="all")} for t in parsed_texts]
with open(os.path.join(here, "tiktoken_expected.json"), "w") as f:
    json.dump(out, f, separators=(",", ":"))
    f.write("\n")
print(n, "ranks;", len(corpus), "strings")
