"""``kiln.Llama``: the interface of Meta's reference ``llama.Llama`` (``llama/generation.py`` of
the Llama 2 and Code Llama repositories), computed by kiln on a CPU in one process.

The semantics are Meta's (they live in the Rust engine, ``kiln_engine::meta``): ``generate``
returns per prompt the new tokens (the prompt's too with ``echo``), cut before the first
end-of-sequence token and after ``max_gen_len`` new tokens, generation ending at
``max_seq_len`` positions; with ``logprobs`` one logprob per returned token (the
log-softmax of the raw logits, 0.0 for the first prompt token). ``max_gen_len`` defaults to
``max_seq_len - 1``. ``chat_completion`` formats dialogs with Llama 2's ``[INST]`` and
``<<SYS>>`` tags, BOS and EOS per exchange.

Differences: no torch, no process group; ``model_parallel_size`` is only checked against the
checkpoint's shard count (kiln merges the shards). Sampling uses kiln's random stream: call
number ``k`` (from 0) of ``generate``/``text_completion``/``chat_completion`` on a ``Llama``
samples with seed ``seed + k``, i.e. like ``kiln complete --seed``; greedy output
(``temperature=0``) does not depend on it.
"""

from __future__ import annotations

from typing import List, Literal, Optional, Tuple, TypedDict, Union

from . import _kiln

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    role: Role
    content: str


class CompletionPrediction(TypedDict, total=False):
    generation: str
    tokens: List[str]  # not required
    logprobs: List[float]  # not required


class ChatPrediction(TypedDict, total=False):
    generation: Message
    tokens: List[str]  # not required
    logprobs: List[float]  # not required


Dialog = List[Message]


class Tokenizer:
    """Meta's ``llama.Tokenizer`` interface over the model's tokenizer."""

    def __init__(self, engine: _kiln.Engine):
        self._engine = engine
        #: Vocabulary size.
        self.n_words: int = engine.vocab_size
        #: Beginning-of-sequence id (-1 when the model has none).
        self.bos_id: int = engine.bos_id if engine.bos_id is not None else -1
        eos = engine.eos_ids
        #: End-of-sequence id (-1 when the model has none).
        self.eos_id: int = eos[0] if eos else -1
        #: As Meta's SentencePiece tokenizer: no padding token.
        self.pad_id: int = -1

    def encode(self, s: str, bos: bool, eos: bool) -> List[int]:
        """Text to ids, with BOS first and EOS last when asked (as Meta's ``encode``)."""
        assert type(s) is str
        t = self._engine.tokenize(s, False)
        if bos and self.bos_id >= 0:
            t = [self.bos_id] + t
        if eos and self.eos_id >= 0:
            t = t + [self.eos_id]
        return t

    def decode(self, t: Union[int, List[int]]) -> str:
        """Ids (or one id) to text; control tokens (BOS, EOS) decode to nothing."""
        if isinstance(t, int):
            t = [t]
        return self._engine.detokenize(list(t), True)


class _Params:
    def __init__(self, max_seq_len: int, max_batch_size: int):
        self.max_seq_len = max_seq_len
        self.max_batch_size = max_batch_size


class _Model:
    """Stands in for Meta's ``Transformer`` where scripts read ``generator.model.params``."""

    def __init__(self, params: _Params):
        self.params = params


class Llama:
    """A model with Meta's ``Llama`` interface. Make one with :meth:`Llama.build`."""

    @staticmethod
    def build(
        ckpt_dir: str,
        tokenizer_path: Optional[str],
        max_seq_len: int,
        max_batch_size: int,
        model_parallel_size: Optional[int] = None,
        seed: int = 1,
    ) -> "Llama":
        """Loads a model as Meta's ``Llama.build`` does, without torch or a process group.

        ``ckpt_dir`` is a Meta checkpoint directory (``params.json`` and any number of
        ``consolidated.*.pth`` shards), or a GGUF file, a Hugging Face directory or a known
        model name (then ``tokenizer_path`` may be None: the model's own tokenizer is used).
        ``max_seq_len`` bounds prompt plus generated tokens (at most the model's trained
        context), ``max_batch_size`` the prompts per call. ``model_parallel_size``, when given,
        must equal the checkpoint's shard count (Meta's check). ``seed`` seeds sampling.
        """
        if max_seq_len < 1 or max_batch_size < 1:
            raise ValueError("max_seq_len and max_batch_size must be at least 1")
        path = _kiln.resolve_model(str(ckpt_dir))
        if model_parallel_size is not None:
            _kiln.check_model_parallel_size(str(path), int(model_parallel_size))
        engine = _kiln.Engine(
            str(path),
            tokenizer_path=None if tokenizer_path is None else str(tokenizer_path),
            context=max_seq_len,
            max_batch=max_batch_size,
        )
        return Llama(engine, Tokenizer(engine), max_seq_len, max_batch_size, seed)

    def __init__(
        self,
        engine: _kiln.Engine,
        tokenizer: Tokenizer,
        max_seq_len: int,
        max_batch_size: int,
        seed: int = 1,
    ):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model = _Model(_Params(max_seq_len, max_batch_size))
        self._seed = seed
        self._calls = 0

    def _next_seed(self) -> int:
        s = (self._seed + self._calls) % (1 << 64)
        self._calls += 1
        return s

    def generate(
        self,
        prompt_tokens: List[List[int]],
        max_gen_len: int,
        temperature: float = 0.6,
        top_p: float = 0.9,
        logprobs: bool = False,
        echo: bool = False,
    ) -> Tuple[List[List[int]], Optional[List[List[float]]]]:
        """Meta's ``generate``: ``(tokens, logprobs)`` per prompt (``logprobs`` None unless
        asked). Greedy when ``temperature`` is 0, else temperature + top-p sampling."""
        return self.engine.meta_generate(
            [list(p) for p in prompt_tokens],
            int(max_gen_len),
            float(temperature),
            float(top_p),
            bool(logprobs),
            bool(echo),
            self._next_seed(),
        )

    def text_completion(
        self,
        prompts: List[str],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
        logprobs: bool = False,
        echo: bool = False,
    ) -> List[CompletionPrediction]:
        """Meta's ``text_completion``: ``[{"generation": str}]``, with ``"tokens"`` and
        ``"logprobs"`` when ``logprobs``."""
        if max_gen_len is None:
            max_gen_len = self.model.params.max_seq_len - 1
        prompt_tokens = [self.tokenizer.encode(x, bos=True, eos=False) for x in prompts]
        generation_tokens, generation_logprobs = self.generate(
            prompt_tokens=prompt_tokens,
            max_gen_len=max_gen_len,
            temperature=temperature,
            top_p=top_p,
            logprobs=logprobs,
            echo=echo,
        )
        if logprobs:
            assert generation_logprobs is not None
            return [
                {
                    "generation": self.tokenizer.decode(t),
                    "tokens": [self.tokenizer.decode(x) for x in t],
                    "logprobs": logprobs_i,
                }
                for t, logprobs_i in zip(generation_tokens, generation_logprobs)
            ]
        return [{"generation": self.tokenizer.decode(t)} for t in generation_tokens]

    def chat_completion(
        self,
        dialogs: List[Dialog],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
        logprobs: bool = False,
    ) -> List[ChatPrediction]:
        """Meta's ``chat_completion``: ``[{"generation": {"role": "assistant", "content":
        str}}]`` (plus ``"tokens"``, ``"logprobs"`` when ``logprobs``). A dialog containing
        ``[INST]``, ``[/INST]``, ``<<SYS>>`` or ``<</SYS>>`` gets Meta's error text as content."""
        if max_gen_len is None:
            max_gen_len = self.model.params.max_seq_len - 1
        prompt_tokens = []
        unsafe_requests = []
        for dialog in dialogs:
            ids, unsafe = self.engine.meta_chat_dialog(
                [(m["role"], m["content"]) for m in dialog]
            )
            prompt_tokens.append(ids)
            unsafe_requests.append(unsafe)
        generation_tokens, generation_logprobs = self.generate(
            prompt_tokens=prompt_tokens,
            max_gen_len=max_gen_len,
            temperature=temperature,
            top_p=top_p,
            logprobs=logprobs,
        )

        def content(t: List[int], unsafe: bool) -> str:
            return _kiln.UNSAFE_ERROR if unsafe else self.tokenizer.decode(t)

        if logprobs:
            assert generation_logprobs is not None
            return [
                {
                    "generation": {"role": "assistant", "content": content(t, unsafe)},
                    "tokens": [self.tokenizer.decode(x) for x in t],
                    "logprobs": logprobs_i,
                }
                for t, logprobs_i, unsafe in zip(
                    generation_tokens, generation_logprobs, unsafe_requests
                )
            ]
        return [
            {"generation": {"role": "assistant", "content": content(t, unsafe)}}
            for t, unsafe in zip(generation_tokens, unsafe_requests)
        ]
