#!/usr/bin/env python3
"""Expected ids of SentencePiece itself (python `sentencepiece` 0.2.1) for the fixture
tokenizer.model (tests/data/fixtures/tokenizers/spm-bpe-512): every corpus.json string encoded
with `encode(text)` and BOS prepended (as Meta's `Tokenizer.encode(s, bos=True, eos=False)`
does), plus SentencePiece's decode of those ids; and Llama 2 chat prompts formatted as Meta's
`Llama.chat_completion` does (llama/generation.py of Llama 2 / Code Llama): each completed
exchange `f"{B_INST} {user.strip()} {E_INST} {answer.strip()} "` encoded with bos and eos, the
last user turn `f"{B_INST} {user.strip()} {E_INST}"` with bos only, a leading system message
folded into the first user turn as `B_SYS + system + E_SYS + user`.

Usage: pip install sentencepiece==0.2.1 && python3 gen_spm_expected.py"""
import json
import os

import sentencepiece as spm

here = os.path.dirname(os.path.abspath(__file__))
model = os.path.join(here, "../../../../tests/data/fixtures/tokenizers/spm-bpe-512/tokenizer.model")
sp = spm.SentencePieceProcessor(model_file=model)
bos, eos = sp.bos_id(), sp.eos_id()
corpus = json.load(open(os.path.join(here, "corpus.json"), encoding="utf-8"))

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def chat(dialog):
    if dialog[0]["role"] == "system":
        dialog = [
            {"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}
        ] + dialog[2:]
    ids = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        ids += [bos] + sp.encode(f"{B_INST} {(prompt['content']).strip()} {E_INST} {(answer['content']).strip()} ") + [eos]
    ids += [bos] + sp.encode(f"{B_INST} {(dialog[-1]['content']).strip()} {E_INST}")
    return ids


dialogs = [
    [{"role": "user", "content": "What is the largest animal?"}],
    [
        {"role": "system", "content": "Always answer with Haiku"},
        {"role": "user", "content": "I am going to Paris, what should I see?"},
    ],
    [
        {"role": "user", "content": "  Hello there  "},
        {"role": "assistant", "content": "\nGeneral Kenobi!\n"},
        {"role": "user", "content": "You are a bold one."},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a whale."},
        {"role": "assistant", "content": "Blue whale."},
        {"role": "user", "content": "Another?"},
    ],
]

out = {
    "generator": "tests/data/gen_spm_expected.py",
    "sentencepiece": spm.__version__,
    "ids": [[bos] + sp.encode(t) for t in corpus],
    "decode": [sp.decode(sp.encode(t)) for t in corpus],
    "chat": [{"dialog": d, "ids": chat(d)} for d in dialogs],
}
# Control-token text parsed (kiln's `encode_with(text, false, true)`): the text is split at
# control / unknown pieces' texts (longest first, leftmost), each piece between them encoded
# with `sp.encode` on its own.
import re

controls = sorted(
    [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)],
    key=lambda t: (-len(t), t),
)
special_re = re.compile("|".join(re.escape(t) for t in controls))


def encode_parsed(text):
    ids, last = [], 0
    for m in special_re.finditer(text):
        ids += sp.encode(text[last : m.start()]) + [sp.piece_to_id(m.group())]
        last = m.end()
    return ids + sp.encode(text[last:])


parsed_texts = [t for t in corpus if any(c in t for c in controls)] + [
    "<s>[INST] hi [/INST] hello </s><s>[INST] again [/INST]",
    "a<unk>b</s>",
]
out["parsed"] = [{"text": t, "ids": encode_parsed(t)} for t in parsed_texts]

# The vocabulary as a GGUF converter would store it (tokenizer.ggml.tokens / scores /
# token_type: 1 normal, 2 unknown, 3 control, 5 unused, 6 byte).
def ttype(i):
    if sp.is_unknown(i):
        return 2
    if sp.is_control(i):
        return 3
    if sp.is_unused(i):
        return 5
    if sp.is_byte(i):
        return 6
    return 1


out["vocab"] = {
    "tokens": [sp.id_to_piece(i) for i in range(sp.get_piece_size())],
    "scores": [sp.get_score(i) for i in range(sp.get_piece_size())],
    "token_type": [ttype(i) for i in range(sp.get_piece_size())],
}
with open(os.path.join(here, "spm_expected.json"), "w") as f:
    json.dump(out, f, ensure_ascii=True, separators=(",", ":"))
    f.write("\n")
print(len(corpus), "strings,", len(dialogs), "dialogs")
