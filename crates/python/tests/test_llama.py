"""kiln.Llama against Meta's semantics: the calls of Meta's example scripts
(example_text_completion.py, example_chat_completion.py) with only the import changed, on the
Meta-format fixtures (MP=1 and MP=2), compared with `kiln complete --json`; `generate` with
echo and logprobs against the transformers goldens; the chat format against Meta's
chat_completion code, rebuilt here from llama/generation.py."""

import json
import math

import numpy as np
import pytest

from kiln import Llama  # was: from llama import Llama

from conftest import FIXTURES, META, META_MP2, run_kiln

GOLDEN = json.loads((FIXTURES / "golden" / "llama-mha.json").read_text())

# The shape of example_text_completion.py's prompts (short enough for the tiny model's
# 128-position budget in that script).
PROMPTS = [
    "I believe the meaning of life is",
    "Simply put, the theory of relativity states that ",
    "A brief message congratulating the team on the launch:\n\n        Hi everyone,\n\n        I just ",
    "Translate English to French:\n\n        sea otter => loutre de mer\n        cheese =>",
]


def build(ckpt, max_seq_len=128, max_batch_size=4, **kw):
    return Llama.build(
        ckpt_dir=str(ckpt),
        tokenizer_path=str(ckpt / "tokenizer.model"),
        max_seq_len=max_seq_len,
        max_batch_size=max_batch_size,
        **kw,
    )


def kiln_complete_json(ckpt, prompts, max_seq_len, max_batch_size, n, temperature, top_p, seed, echo=False):
    args = [
        "complete", "--ckpt-dir", ckpt, "--tokenizer-path", ckpt / "tokenizer.model",
        "--max-seq-len", max_seq_len, "--max-batch-size", max_batch_size, "-n", n,
        "--temperature", temperature, "--top-p", top_p, "--seed", seed,
        "--logprobs", "0", "--json", "--no-escape",
    ]
    if echo:
        args.append("--echo")
    for p in prompts:
        args += ["--prompt", p]
    return json.loads(run_kiln(*args))["choices"]


def cut_at_eos(ids, lps, eos):
    if eos in ids:
        k = ids.index(eos)
        return ids[:k], lps[:k]
    return ids, lps


@pytest.mark.parametrize("ckpt", [META, META_MP2], ids=["mp1", "mp2"])
def test_example_text_completion_equals_kiln_complete(ckpt):
    # example_text_completion.py's calls, with logprobs asked for so they can be compared.
    generator = build(ckpt, max_seq_len=128, max_batch_size=4)
    results = generator.text_completion(
        PROMPTS, max_gen_len=64, temperature=0.6, top_p=0.9, logprobs=True
    )
    choices = kiln_complete_json(ckpt, PROMPTS, 128, 4, 64, 0.6, 0.9, seed=1)
    eos = generator.tokenizer.eos_id
    assert len(results) == len(PROMPTS) == len(choices)
    for prompt, result, choice in zip(PROMPTS, results, choices):
        assert set(result) == {"generation", "tokens", "logprobs"}
        assert choice["prompt_token_ids"] == generator.tokenizer.encode(prompt, bos=True, eos=False)
        ids, lps = cut_at_eos(choice["token_ids"], choice["logprobs"]["token_logprobs"], eos)
        assert len(ids) <= 64
        assert result["tokens"] == [generator.tokenizer.decode(i) for i in ids]
        assert result["generation"] == generator.tokenizer.decode(ids)
        np.testing.assert_allclose(result["logprobs"], lps, rtol=0, atol=1e-6)
    # The script's own call (no logprobs): only "generation", the same texts (seed 1 again).
    again = build(ckpt).text_completion(PROMPTS, max_gen_len=64, temperature=0.6, top_p=0.9)
    assert again == [{"generation": r["generation"]} for r in results]


@pytest.mark.parametrize("ckpt", [META, META_MP2], ids=["mp1", "mp2"])
def test_generate_ids_equal_kiln_complete(ckpt):
    g = build(ckpt, seed=7)
    prompt_tokens = [g.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    tokens, logprobs = g.generate(prompt_tokens, max_gen_len=20, temperature=0.8, top_p=0.95, logprobs=True)
    choices = kiln_complete_json(ckpt, PROMPTS, 128, 4, 20, 0.8, 0.95, seed=7)
    for t, l, c in zip(tokens, logprobs, choices):
        ids, lps = cut_at_eos(c["token_ids"], c["logprobs"]["token_logprobs"], g.tokenizer.eos_id)
        assert t == ids
        np.testing.assert_allclose(l, lps, rtol=0, atol=1e-6)
    # Without logprobs Meta returns None for them.
    g2 = build(ckpt, seed=7)
    t2, l2 = g2.generate(prompt_tokens, max_gen_len=20, temperature=0.8, top_p=0.95)
    assert t2 == tokens and l2 is None
    # The next call samples with the next seed, as `kiln complete --seed 8`.
    t3, _ = g2.generate(prompt_tokens, max_gen_len=20, temperature=0.8, top_p=0.95)
    choices8 = kiln_complete_json(ckpt, PROMPTS, 128, 4, 20, 0.8, 0.95, seed=8)
    assert t3 == [cut_at_eos(c["token_ids"], c["token_ids"], g2.tokenizer.eos_id)[0] for c in choices8]


def log_softmax(v):
    v = np.asarray(v, dtype=np.float64)
    m = v.max()
    return v - (m + math.log(np.exp(v - m).sum()))


@pytest.mark.parametrize("ckpt", [META, META_MP2], ids=["mp1", "mp2"])
def test_generate_echo_logprobs_match_transformers(ckpt):
    g = build(ckpt, max_seq_len=256, max_batch_size=4)
    prompts = [p["input_ids"] for p in GOLDEN["prompts"]]
    tokens, logprobs = g.generate(prompts, max_gen_len=20, temperature=0, top_p=0.9, logprobs=True, echo=True)
    eos = GOLDEN["tokenizer"]["eos_token_id"]
    for p, t, l in zip(GOLDEN["prompts"], tokens, logprobs):
        n = len(p["input_ids"])
        new = p["greedy"]["new_ids"]
        if eos in new:  # Meta's generate drops the eos token and what follows
            new = new[: new.index(eos)]
        assert t == p["input_ids"] + new
        assert len(l) == len(t)
        assert l[0] == 0.0  # Meta never writes the first prompt token's slot
        np.testing.assert_allclose(l[1:n], p["token_logprobs"], rtol=0, atol=1e-4)
        if new:
            first = log_softmax(p["last_logits"])[new[0]]
            assert abs(l[n] - first) < 1e-4
    # Without echo: only the new tokens, with their logprobs.
    t2, l2 = g.generate(prompts, max_gen_len=20, temperature=0, top_p=0.9, logprobs=True)
    for t, l, te, le in zip(t2, l2, tokens, logprobs):
        assert t == te[len(te) - len(t):]
        assert l == le[len(le) - len(l):]


def test_max_gen_len_default_and_max_seq_len():
    g = build(META, max_seq_len=24, max_batch_size=2)
    prompt = g.tokenizer.encode("Hello world", bos=True, eos=False)
    (t,), _ = g.generate([prompt], max_gen_len=100, temperature=0)
    # generation ends at max_seq_len positions (the tiny model does not emit eos early here)
    golden = GOLDEN["prompts"][0]["greedy"]["new_ids"]
    assert not GOLDEN["prompts"][0]["greedy"]["stopped_on_eos"]
    assert len(prompt) + len(t) == 24
    assert t == golden[: len(t)]
    # max_gen_len=None means max_seq_len - 1 in text_completion
    r = g.text_completion(["Hello world"], temperature=0)
    assert r[0]["generation"] == g.tokenizer.decode(t)


def test_errors_are_clear():
    g = build(META, max_seq_len=16, max_batch_size=2)
    with pytest.raises(ValueError, match="context|tokens"):
        g.text_completion(["a long prompt " * 20], max_gen_len=4)
    with pytest.raises(ValueError, match="batch"):
        g.text_completion(["a", "b", "c"], max_gen_len=4)
    with pytest.raises(ValueError, match="model_parallel_size"):
        build(META_MP2, model_parallel_size=1)
    assert build(META_MP2, model_parallel_size=2) is not None
    with pytest.raises(ValueError):
        Llama.build("/nonexistent/ckpt", None, 16, 1)


# Meta's chat_completion prompt construction (llama/generation.py), written out here as the
# reference: system folded into the first user turn, each exchange BOS..EOS, last turn BOS only.
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def meta_chat_tokens(tokenizer, dialog):
    if dialog[0]["role"] == "system":
        dialog = [
            {"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}
        ] + dialog[2:]
    tokens = sum(
        [
            tokenizer.encode(f"{B_INST} {(p['content']).strip()} {E_INST} {(a['content']).strip()} ", bos=True, eos=True)
            for p, a in zip(dialog[::2], dialog[1::2])
        ],
        [],
    )
    tokens += tokenizer.encode(f"{B_INST} {(dialog[-1]['content']).strip()} {E_INST}", bos=True, eos=False)
    return tokens


DIALOGS = [
    [{"role": "user", "content": "what is the recipe of mayonnaise?"}],
    [
        {"role": "user", "content": "I am going to Paris, what should I see?"},
        {"role": "assistant", "content": "  The Eiffel Tower.\n"},
        {"role": "user", "content": "What is so great about #1?"},
    ],
    [
        {"role": "system", "content": "Always answer with Haiku"},
        {"role": "user", "content": "I am going to Paris, what should I see?"},
    ],
    [
        {"role": "system", "content": "Always answer with emojis"},
        {"role": "user", "content": "How to go from Beijing to NY?"},
    ],
]


@pytest.mark.parametrize("ckpt", [META, META_MP2], ids=["mp1", "mp2"])
def test_chat_completion_as_meta(ckpt):
    g = build(ckpt, max_seq_len=256, max_batch_size=8)
    for d in DIALOGS:
        ids, unsafe = g.engine.meta_chat_dialog([(m["role"], m["content"]) for m in d])
        assert ids == meta_chat_tokens(g.tokenizer, d)
        assert not unsafe
    # example_chat_completion.py's call (greedy so that the result can be rebuilt here)
    results = g.chat_completion(DIALOGS, max_gen_len=12, temperature=0, top_p=0.9, logprobs=True)
    tokens, logprobs = build(ckpt, max_seq_len=256, max_batch_size=8).generate(
        [meta_chat_tokens(g.tokenizer, d) for d in DIALOGS], max_gen_len=12, temperature=0, logprobs=True
    )
    for r, t, l in zip(results, tokens, logprobs):
        assert r["generation"] == {"role": "assistant", "content": g.tokenizer.decode(t)}
        assert r["tokens"] == [g.tokenizer.decode(x) for x in t]
        assert r["logprobs"] == l
    plain = g.chat_completion(DIALOGS, max_gen_len=12, temperature=0)
    assert plain == [{"generation": r["generation"]} for r in results]


def test_chat_completion_unsafe_and_bad_roles():
    g = build(META, max_seq_len=256, max_batch_size=4)
    r = g.chat_completion([[{"role": "user", "content": "hi [INST] there"}]], max_gen_len=4, temperature=0)
    assert r[0]["generation"] == {
        "role": "assistant",
        "content": "Error: special tags are not allowed as part of the prompt.",
    }
    with pytest.raises(ValueError, match="roles"):
        g.chat_completion([[{"role": "assistant", "content": "hi"}]], max_gen_len=4)
    with pytest.raises(ValueError, match="last message"):
        g.chat_completion(
            [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]], max_gen_len=4
        )


def test_tokenizer_is_metas():
    g = build(META)
    tk = g.tokenizer
    p = GOLDEN["prompts"][0]
    assert tk.encode(p["text"], bos=True, eos=False) == p["input_ids"]
    assert tk.encode(p["text"], bos=False, eos=True) == p["input_ids"][1:] + [tk.eos_id]
    assert tk.decode(p["input_ids"]) == p["text"]
    assert (tk.bos_id, tk.eos_id, tk.pad_id, tk.n_words) == (1, 2, -1, 512)


def test_other_model_kinds_load():
    # a Hugging Face directory, with its own tokenizer
    g = Llama.build(str(FIXTURES / "llama-mha"), None, 64, 2)
    prompt = GOLDEN["prompts"][0]["input_ids"]
    (t,), _ = g.generate([prompt], max_gen_len=5, temperature=0)
    assert t == GOLDEN["prompts"][0]["greedy"]["new_ids"][:5]
