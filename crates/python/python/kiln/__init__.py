"""kiln for Python: Llama-family models on a CPU, and Nielsen's network.py.

* ``kiln.Llama`` has the shape of Meta's ``llama.Llama`` (``Llama.build``, ``text_completion``,
  ``chat_completion``, ``generate``): change ``from llama import Llama`` to
  ``from kiln import Llama`` and Meta's example scripts run on a CPU, in one process, for any
  model-parallel count.
* ``kiln.LLM`` is the general API: ``complete``, ``stream``, ``chat``, ``tokenize``,
  ``detokenize``, ``perplexity``.
* ``kiln.nn`` has the shape of network.py (``Network``, ``SGD``, ...) and mnist_loader
  (``load_mnist``).

The engine is kiln's Rust engine (the same calls as the ``kiln`` CLI and server); the
interpreter lock is released while it computes, and Ctrl-C stops a long generation.
"""

from ._kiln import __version__
from .llama import (
    ChatPrediction,
    CompletionPrediction,
    Dialog,
    Llama,
    Message,
    Tokenizer,
)
from .llm import LLM, Completion, Perplexity, Stream, TokenLogprob
from . import nn

__all__ = [
    "__version__",
    "Llama",
    "Tokenizer",
    "Dialog",
    "Message",
    "CompletionPrediction",
    "ChatPrediction",
    "LLM",
    "Completion",
    "TokenLogprob",
    "Stream",
    "Perplexity",
    "nn",
]
