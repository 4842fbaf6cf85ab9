"""kiln.LLM: results against the transformers goldens and the `kiln` binary (the same engine
calls), streaming, chat, tokenize/detokenize, perplexity, errors, and Ctrl-C."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import kiln

from conftest import DATA, FIXTURES, LLAMA_HF, run_kiln

GOLDEN = json.loads((FIXTURES / "golden" / "llama-mha.json").read_text())


@pytest.fixture(scope="module")
def llm():
    return kiln.LLM(str(LLAMA_HF))


def test_complete_greedy_matches_transformers(llm):
    prompts = [p["text"] for p in GOLDEN["prompts"]]
    out = llm.complete(prompts, max_tokens=20)
    assert isinstance(out, list) and len(out) == len(prompts)
    for p, c in zip(GOLDEN["prompts"], out):
        assert isinstance(c, kiln.Completion)
        assert c.prompt_token_ids == p["input_ids"]
        assert c.token_ids == p["greedy"]["new_ids"]
        assert c.finish_reason == ("stop" if p["greedy"]["stopped_on_eos"] else "length")
    one = llm.complete(prompts[0], max_tokens=20)
    assert isinstance(one, kiln.Completion) and one.token_ids == out[0].token_ids


def test_complete_logprobs_echo(llm):
    p = GOLDEN["prompts"][1]
    c = llm.complete(p["input_ids"], max_tokens=3, logprobs=2, echo=True)
    assert c.prompt_text == p["text"]
    assert [t.id for t in c.prompt_logprobs] == p["input_ids"]
    assert c.prompt_logprobs[0].logprob is None
    for t, want in zip(c.prompt_logprobs[1:], p["token_logprobs"]):
        assert abs(t.logprob - want) < 1e-4
    assert len(c.logprobs) == 3
    for t in c.logprobs:
        assert isinstance(t, kiln.TokenLogprob) and len(t.top) == 2
        assert t.top[0][0] == t.id  # greedy: the chosen token is the most likely
        assert abs(t.top[0][2] - t.logprob) < 1e-6


def test_complete_equals_kiln_complete_sampled(llm):
    kw = dict(max_tokens=16, temperature=0.9, top_p=0.9, top_k=40, seed=42, stop=["e"])
    c = llm.complete("Hello world", **kw)
    j = json.loads(run_kiln(
        "complete", "-m", LLAMA_HF, "-n", 16, "--temperature", 0.9, "--top-p", 0.9, "--top-k", 40,
        "--seed", 42, "--stop", "e", "--json", "--prompt", "Hello world",
    ))["choices"][0]
    assert c.seed == 42
    assert (c.text, c.token_ids, c.finish_reason) == (j["text"], j["token_ids"], j["finish_reason"])


def test_stream_pieces_make_the_completion(llm):
    s = llm.stream("Hello world", max_tokens=20)
    pieces = list(s)
    assert all(isinstance(p, str) for p in pieces)
    c = llm.complete("Hello world", max_tokens=20)
    assert "".join(pieces) == c.text
    assert s.result.token_ids == c.token_ids and s.result.finish_reason == c.finish_reason
    # a dropped stream stops its generation; the engine goes on serving
    it = llm.stream("Hello world", max_tokens=200, ignore_eos=True)
    next(it)
    it.close()
    del it
    assert llm.complete("Hello world", max_tokens=20).token_ids == c.token_ids


def test_chat_llama2_format_without_template(llm):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    ids = llm.chat_tokens(msgs)
    # Meta's format: "[INST] <<SYS>>\n...\n<</SYS>>\n\nHi [/INST]" with BOS
    want = llm.tokenize("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]")
    assert ids == want
    c = llm.chat(msgs, max_tokens=5)
    assert c.prompt_token_ids == ids


def test_chat_template_equals_kiln_chat():
    llm = kiln.LLM("qwen2.5-coder-0.5b")
    assert llm.engine.chat_template is not None
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    c = llm.chat(msgs, max_tokens=8)
    assert "<|im_start|>user" in llm.detokenize(c.prompt_token_ids)
    j = json.loads(run_kiln("chat", "-m", "qwen2.5-coder-0.5b", "-n", 8, "--json", stdin="What is 2+2?\n").splitlines()[0])
    choice = j["choices"][0]
    assert c.prompt_token_ids == choice["prompt_token_ids"]
    assert c.token_ids == choice["token_ids"]
    assert c.text == choice["message"]["content"]


def test_tokenize_detokenize(llm):
    p = GOLDEN["prompts"][0]
    assert llm.tokenize(p["text"]) == p["input_ids"]
    assert llm.tokenize(p["text"], add_special=False) == p["input_ids"][1:]
    assert llm.detokenize(p["input_ids"], skip_special=True) == p["text"]
    assert llm.detokenize(p["input_ids"]).startswith("<s>")


def test_perplexity_equals_kiln_perplexity(llm):
    text = (DATA / "ppl-text.txt").read_text()[:3000]
    r = llm.perplexity(text, ctx=64)
    assert isinstance(r, kiln.Perplexity) and r.tokens_scored > 0
    path = DATA / "ppl-text.txt"
    out = run_kiln("perplexity", "-m", LLAMA_HF, "-f", path, "--ctx", 64)
    full = llm.perplexity(path.read_text(), ctx=64)
    line = [l for l in out.splitlines() if l.startswith("Final estimate")][0]
    assert line == "Final estimate: PPL = {:.4f} +/- {:.5f}".format(full.ppl, full.stderr)


def test_bad_input_is_a_clear_error(llm):
    with pytest.raises(TypeError):
        llm.complete("Hi", max_tokns=3)  # an option kiln does not know
    with pytest.raises(ValueError, match="temperature"):
        llm.complete("Hi", temperature=-1.0)
    with pytest.raises(ValueError, match="context"):
        llm.complete("Hi " * 400)
    with pytest.raises(ValueError, match="vocabulary"):
        llm.complete([[1, 99999]])
    with pytest.raises(ValueError):
        kiln.LLM("/no/such/model.gguf")
    with pytest.raises(ValueError, match="isa"):
        kiln.LLM(str(LLAMA_HF), isa="sse9")


CTRL_C = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import kiln
    llm = kiln.LLM("gemma3-270m", context=2048)
    def interrupt():
        time.sleep(2)
        os.kill(os.getpid(), signal.SIGINT)
    for mode in ("complete", "stream"):
        threading.Thread(target=interrupt).start()
        try:
            if mode == "complete":
                c = llm.complete("Once upon a time", max_tokens=2000, ignore_eos=True)
            else:
                c = "".join(llm.stream("Once upon a time", max_tokens=2000, ignore_eos=True))
            print(mode, "finished", flush=True)
        except KeyboardInterrupt:
            print(mode, "interrupted", flush=True)
    print("after:", llm.complete("Hi", max_tokens=2).finish_reason, flush=True)
    """
)


def test_ctrl_c_stops_a_long_generation():
    # 2000 tokens take minutes on this model; Ctrl-C two seconds in must end each call with
    # KeyboardInterrupt, and the model must still answer afterwards.
    p = subprocess.run([sys.executable, "-c", CTRL_C], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["complete interrupted", "stream interrupted", "after: length"]


CTRL_C_PERPLEXITY = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import kiln
    llm = kiln.LLM("gemma3-270m", context=2048)
    text = open(sys.argv[1]).read()
    def interrupt():
        time.sleep(2)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=interrupt).start()
    try:
        llm.perplexity(text * 1000, ctx=2048)
        print("perplexity finished", flush=True)
    except KeyboardInterrupt:
        print("perplexity interrupted", flush=True)
    print("after:", llm.perplexity(text[:3000], ctx=64).tokens_scored > 0, flush=True)
    """
)


def test_ctrl_c_stops_perplexity():
    # ppl-text.txt 1000 times over is about 1750 chunks of 2048 tokens: an hour or more on this
    # model, far past the timeout. Ctrl-C two seconds in must end the call (before the next
    # chunk) with KeyboardInterrupt, and the model must still answer afterwards.
    p = subprocess.run(
        [sys.executable, "-c", CTRL_C_PERPLEXITY, str(DATA / "ppl-text.txt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["perplexity interrupted", "after: True"]


def test_gpu_device_and_split_match_the_goldens():
    """``device="gpu"`` (and ``gpu_layers``: the output layer and the last block on the GPU, the
    first block on the CPU) give the transformers goldens' greedy ids and echoed prompt logprobs
    within 1e-3, as the Rust GPU tests ask. Skipped, with the reason, where no GPU adapter
    exists (CI installs lavapipe, a software Vulkan driver)."""
    full = kiln.LLM(str(LLAMA_HF), device="gpu")
    if not full.device.startswith("device: gpu"):
        pytest.skip(f"no GPU adapter ({full.device})")
    assert full.engine.gpu_layers[:2] == (3, 3)
    split = kiln.LLM(str(LLAMA_HF), device="gpu", gpu_layers=2)
    assert "for 2 of 3 layers, 1 blocks on the CPU" in split.device, split.device
    assert split.engine.gpu_layers[:2] == (2, 3)
    for llm in (full, split):
        for p in GOLDEN["prompts"]:
            c = llm.complete(p["input_ids"], max_tokens=20, logprobs=1, echo=True)
            assert c.token_ids == p["greedy"]["new_ids"]
            for t, want in zip(c.prompt_logprobs[1:], p["token_logprobs"]):
                assert abs(t.logprob - want) < 1e-3
    with pytest.raises(ValueError, match="gpu_layers"):
        kiln.LLM(str(LLAMA_HF), device="gpu", gpu_layers="many")
    with pytest.raises(ValueError, match="--device cpu runs every layer on the CPU"):
        kiln.LLM(str(LLAMA_HF), device="cpu", gpu_layers=2)
