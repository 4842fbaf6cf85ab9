"""Type stubs of ``kiln._kiln``, the Rust extension (thin shells over kiln_engine / kiln_nn)."""

import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

__version__: str
UNSAFE_ERROR: str

class TokenLogprob:
    """One token with its logprob (None for a first prompt token) and the most likely
    alternatives ``(id, text, logprob)``; ``text_offset`` is its character offset."""

    id: int
    text: str
    logprob: Optional[float]
    top: List[Tuple[int, str, float]]
    text_offset: int

class Completion:
    """The result for one prompt."""

    text: str
    prompt_text: str
    prompt_token_ids: List[int]
    token_ids: List[int]
    finish_reason: str
    logprobs: Optional[List[TokenLogprob]]
    prompt_logprobs: Optional[List[TokenLogprob]]
    seed: int

class Params:
    """Sampling and stopping settings (``kiln_engine::GenerateParams``)."""

    def __init__(
        self,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        seed: Optional[int] = None,
        stop: List[str] = ...,
        repeat_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: List[Tuple[int, float]] = ...,
        logprobs: Optional[int] = None,
        echo: bool = False,
        ignore_eos: bool = False,
    ) -> None: ...
    @property
    def seed(self) -> int: ...

class Stream:
    """Text pieces of one generation; ``result`` is the ``Completion`` once exhausted."""

    def __iter__(self) -> "Stream": ...
    def __next__(self) -> str: ...
    @property
    def result(self) -> Optional[Completion]: ...
    def close(self) -> None: ...

class Engine:
    """A loaded model (``kiln_engine::Engine``)."""

    def __init__(
        self,
        model: Optional[Union[str, os.PathLike]] = None,
        tokenizer_path: Optional[Union[str, os.PathLike]] = None,
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
    ) -> None: ...
    @property
    def path(self) -> Path: ...
    @property
    def device(self) -> str: ...
    @property
    def gpu_layers(self) -> Optional[Tuple[int, int, int]]: ...
    @property
    def name(self) -> str: ...
    @property
    def context(self) -> int: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> Optional[int]: ...
    @property
    def eos_ids(self) -> List[int]: ...
    @property
    def chat_template(self) -> Optional[str]: ...
    def tokenize(self, text: str, add_special: bool = True) -> List[int]: ...
    def detokenize(self, ids: List[int], skip_special: bool = False) -> str: ...
    def complete(self, prompts: List[Union[str, List[int]]], params: Params) -> List[Completion]: ...
    def chat_prompt(self, messages: List[Tuple[str, str]]) -> List[int]: ...
    def stream(self, prompt: Union[str, List[int]], params: Params) -> Stream: ...
    def meta_generate(
        self,
        prompt_tokens: List[List[int]],
        max_gen_len: int,
        temperature: float,
        top_p: float,
        logprobs: bool,
        echo: bool,
        seed: int,
    ) -> Tuple[List[List[int]], Optional[List[List[float]]]]: ...
    def meta_chat_dialog(self, messages: List[Tuple[str, str]]) -> Tuple[List[int], bool]: ...
    def perplexity(self, text: str, ctx: int) -> Tuple[float, float, int]: ...

class Network:
    """Nielsen's network in float32 (``kiln_nn::Network<f32>``); arrays travel as bytes."""

    def __init__(self, sizes: List[int], seed: int = 0) -> None: ...
    @property
    def sizes(self) -> List[int]: ...
    def weights_bytes(self, l: int) -> bytes: ...
    def biases_bytes(self, l: int) -> bytes: ...
    def set_weights(self, l: int, data: bytes) -> None: ...
    def set_biases(self, l: int, data: bytes) -> None: ...
    def feedforward(self, x: bytes) -> bytes: ...
    def backprop(self, x: bytes, y: bytes) -> Tuple[List[bytes], List[bytes]]: ...
    def update_mini_batch(self, inputs: bytes, labels: bytes, eta: float) -> None: ...
    def evaluate(self, inputs: bytes, labels: bytes) -> int: ...
    def sgd(
        self,
        inputs: bytes,
        labels: bytes,
        epochs: int,
        mini_batch_size: int,
        eta: float,
        test_inputs: Optional[bytes],
        test_labels: Optional[bytes],
        on_epoch: Callable[[int, Optional[int], int, float], None],
    ) -> List[Optional[int]]: ...

def check_model_parallel_size(path: Union[str, os.PathLike], n: int) -> None: ...
def resolve_model(model: Optional[str] = None) -> Path: ...
def load_mnist(data_dir: Optional[Union[str, os.PathLike]] = None) -> List[Tuple[bytes, bytes]]: ...
