"""``kiln.LLM``: the general API over kiln's engine (the calls ``kiln complete``, ``kiln chat``,
``kiln tokenize`` and ``kiln perplexity`` make)."""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Union, overload

from . import _kiln

Completion = _kiln.Completion
TokenLogprob = _kiln.TokenLogprob
Stream = _kiln.Stream

Prompt = Union[str, Sequence[int]]


class Perplexity(NamedTuple):
    """Perplexity as llama.cpp's ``llama-perplexity`` computes it."""

    ppl: float
    stderr: float
    tokens_scored: int


def _params(
    max_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: Optional[int] = None,
    stop: Union[None, str, Iterable[str]] = None,
    repeat_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logit_bias: Optional[Mapping[int, float]] = None,
    logprobs: Optional[int] = None,
    echo: bool = False,
    ignore_eos: bool = False,
) -> _kiln.Params:
    if isinstance(stop, str):
        stop = [stop]
    return _kiln.Params(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        seed=seed,
        stop=list(stop or []),
        repeat_penalty=repeat_penalty,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        logit_bias=[(int(k), float(v)) for k, v in (logit_bias or {}).items()],
        logprobs=logprobs,
        echo=echo,
        ignore_eos=ignore_eos,
    )


def _prompt(p: Prompt) -> Union[str, List[int]]:
    return p if isinstance(p, str) else [int(t) for t in p]


class LLM:
    """A loaded model.

    ``model`` is a GGUF file, a Hugging Face directory, a Meta checkpoint directory or a known
    model name (``gemma3-270m``, ``qwen2.5-coder-0.5b``, ...; pulled into ``$KILN_HOME/models``
    on first use); None loads the default model. The options are ``EngineOptions``' fields:
    ``tokenizer_path``, ``context`` (positions per sequence), ``max_batch``, ``threads`` (0: one
    per core), ``isa`` (``scalar``, ``avx2``, ...), ``numerics`` (``exact`` or ``ggml``),
    ``cache_type`` (``f16`` or ``f32``), ``mmap``, ``device`` (``cpu``, the default; ``auto``,
    ``gpu`` or ``gpu:N``), ``gpu_layers`` (``-ngl``: a count of the model's ``n_layers + 1``
    layers, ``"auto"`` or ``"all"``), ``gpu_memory`` (bytes the fit check may plan for).

    Sampling keywords of ``complete``, ``stream`` and ``chat`` (those of ``kiln complete``):
    ``max_tokens=128, temperature=0.0`` (greedy), ``top_p=1.0, top_k=0, min_p=0.0, seed=None``
    (a fresh seed, reported as ``Completion.seed``), ``stop`` (a string or strings),
    ``repeat_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0``, ``logit_bias``
    (``{token_id: bias}``), ``logprobs=None`` (an int: report each token's logprob and that many
    alternatives), ``echo=False``, ``ignore_eos=False``. Any other keyword is a ``TypeError``.
    """

    def __init__(
        self,
        model: Optional[str] = None,
        *,
        tokenizer_path: Optional[str] = None,
        context: Optional[int] = None,
        max_batch: int = 64,
        threads: int = 0,
        isa: Optional[str] = None,
        numerics: Optional[str] = None,
        cache_type: Optional[str] = None,
        mmap: bool = False,
        device: Optional[str] = None,
        gpu_layers: Optional[Union[int, str]] = None,
        gpu_memory: Optional[int] = None,
    ):
        self.engine = _kiln.Engine(
            None if model is None else str(model),
            tokenizer_path=None if tokenizer_path is None else str(tokenizer_path),
            context=context,
            max_batch=max_batch,
            threads=threads,
            isa=isa,
            numerics=numerics,
            cache_type=cache_type,
            mmap=mmap,
            device=device,
            gpu_layers=gpu_layers,
            gpu_memory=gpu_memory,
        )

    @property
    def context(self) -> int:
        """Positions per sequence (prompt plus generated tokens)."""
        return self.engine.context

    @property
    def device(self) -> str:
        """Where the model runs, and why when it is not where ``device`` asked."""
        return self.engine.device

    @overload
    def complete(self, prompts: Union[str, Sequence[int]], **sampling) -> Completion: ...
    @overload
    def complete(self, prompts: List[Prompt], **sampling) -> List[Completion]: ...

    def complete(self, prompts, **sampling):
        """Completes one prompt (a ``Completion``) or a list of prompts, run as one batch (a
        list of ``Completion``). A prompt is text (BOS added as the model wants) or a list of
        token ids (``[1, 2, 3]`` is one prompt, ``[[1, 2], [3]]`` two). Each ``Completion`` has ``text``, ``token_ids`` (a final end-of-sequence token
        included), ``prompt_token_ids``, ``finish_reason`` (``"stop"`` or ``"length"``),
        ``logprobs`` / ``prompt_logprobs`` (lists of ``TokenLogprob`` when asked) and
        ``seed``."""
        params = _params(**sampling)
        if isinstance(prompts, str) or (
            len(prompts) > 0 and all(isinstance(t, int) for t in prompts)
        ):
            return self.engine.complete([_prompt(prompts)], params)[0]
        return self.engine.complete([_prompt(p) for p in prompts], params)

    def stream(self, prompt: Prompt, **sampling) -> Stream:
        """Generates for one prompt, yielding text pieces as they become final. After the
        last piece, ``stream.result`` is the ``Completion``. Dropping or closing the stream
        stops the generation."""
        return self.engine.stream(_prompt(prompt), _params(**sampling))

    def chat(self, messages: Sequence[Mapping[str, str]], **sampling) -> Completion:
        """Answers a conversation (``[{"role": ..., "content": ...}, ...]``) through the
        model's chat template, or Llama 2's ``[INST]`` format for a Llama model without one.
        The reply is ``Completion.text``."""
        ids = self.chat_tokens(messages)
        return self.engine.complete([ids], _params(**sampling))[0]

    def chat_tokens(self, messages: Sequence[Mapping[str, str]]) -> List[int]:
        """The prompt ids ``chat`` generates from."""
        return self.engine.chat_prompt([(m["role"], m["content"]) for m in messages])

    def tokenize(self, text: str, add_special: bool = True) -> List[int]:
        """Text to ids (with the model's BOS when ``add_special`` and the model uses one)."""
        return self.engine.tokenize(text, add_special)

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Ids to text (control tokens left out with ``skip_special``)."""
        return self.engine.detokenize([int(i) for i in ids], skip_special)

    def perplexity(self, text: str, ctx: int = 512) -> Perplexity:
        """Perplexity of ``text`` in chunks of ``ctx`` tokens, as ``kiln perplexity``.
        Ctrl-C stops it before the next chunk (``KeyboardInterrupt``)."""
        return Perplexity(*self.engine.perplexity(text, ctx))
