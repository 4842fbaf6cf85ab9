#!/usr/bin/env python3
"""SentencePiece's own ids for Gemma 3's vocabulary, as a reference for the GGUF `llama`
tokenizer while llama-tokenize output is not available.

Rebuilds a SentencePiece ModelProto from gemma-3-270m-q4_k_m.gguf's tokenizer metadata
(pieces, scores, types; BPE, byte_fallback, identity normalization, no dummy prefix, no
whitespace removal, as `tokenizer.ggml.add_space_prefix = false`), serialized by hand, and
encodes every corpus.json string with python sentencepiece 0.2.1 (`encode(text)`, no BOS).
The unk piece (id 3) is stored as type UNKNOWN (SentencePiece requires one); control-token
text is not parsed by SentencePiece, so the test compares with kiln's
`encode_with(text, false, false)`.

Usage: pip install sentencepiece==0.2.1 gguf && python3 gen_gemma_spm_reference.py [MODEL]"""
import json
import os
import struct
import sys

import sentencepiece as spm
from gguf import GGUFReader

here = os.path.dirname(os.path.abspath(__file__))
path = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/kiln/models/gemma-3-270m-q4_k_m.gguf")
r = GGUFReader(path)
tokens = r.fields["tokenizer.ggml.tokens"].contents()
scores = r.fields["tokenizer.ggml.scores"].contents()
types = r.fields["tokenizer.ggml.token_type"].contents()
unk = r.fields["tokenizer.ggml.unknown_token_id"].contents()


def varint(n):
    out = b""
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def key(field, wire):
    return varint(field << 3 | wire)


def ld(field, payload):
    return key(field, 2) + varint(len(payload)) + payload


def vi(field, n):
    return key(field, 0) + varint(n)


proto = b""
for i, (t, s, ty) in enumerate(zip(tokens, scores, types)):
    ty = 2 if i == unk else ty
    proto += ld(1, ld(1, t.encode("utf-8")) + key(2, 5) + struct.pack("<f", s) + vi(3, ty))
trainer = vi(3, 2) + vi(4, len(tokens)) + vi(35, 1) + vi(40, unk) + vi(41, 2) + vi(42, 1) + vi(43, 0)
proto += ld(2, trainer)
proto += ld(3, ld(1, b"identity") + vi(3, 0) + vi(4, 0) + vi(5, 1))
sp = spm.SentencePieceProcessor(model_proto=proto)
corpus = json.load(open(os.path.join(here, "corpus.json"), encoding="utf-8"))
out = {
    "generator": "tests/data/gen_gemma_spm_reference.py",
    "sentencepiece": spm.__version__,
    "ids": [sp.encode(t) for t in corpus],
}
with open(os.path.join(here, "gemma_spm_reference.json"), "w") as f:
    json.dump(out, f, separators=(",", ":"))
    f.write("\n")
print(len(corpus), "strings")
