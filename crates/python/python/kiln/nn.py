"""``kiln.nn``: Nielsen's network.py (``Network``) and mnist_loader (``load_mnist``), trained
by kiln's Rust trainer (``kiln_nn``, the trainer of ``kiln nn train``).

Change ``import network`` to ``from kiln import nn as network`` and ``mnist_loader``'s
``load_data_wrapper()`` to ``kiln.nn.load_mnist()``; the session of the book's chapter 1 then
runs unchanged::

    training_data, validation_data, test_data = kiln.nn.load_mnist()
    net = network.Network([784, 30, 10])
    net.SGD(training_data, 30, 10, 3.0, test_data=test_data)

Data are network.py's: lists of ``(x, y)`` with ``x`` a column vector of inputs and ``y`` the
one-hot column vector of the class (training data) or the class as an int (test data). Two
stacked arrays ``(X, Y)`` work too: ``X`` of shape ``(n, inputs)``, ``Y`` the ``n`` classes or
an ``(n, classes)`` one-hot array. Training is on class labels (the quadratic cost against the
one-hot target, as in network.py).

Parameters are float32 in Rust. ``weights`` and ``biases`` return copies as numpy arrays
(shapes as network.py's: ``(n_out, n_in)`` and ``(n_out, 1)``); assign a list of arrays to
change them. The random streams differ from numpy's: ``Network(sizes, seed=0)`` draws the
initial N(0, 1) parameters and every epoch's shuffle from kiln's generator.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _kiln

Example = Tuple[np.ndarray, Any]
Data = Union[Sequence[Example], Tuple[np.ndarray, np.ndarray]]


def sigmoid(z):
    """The sigmoid function (network.py's)."""
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    """Derivative of the sigmoid function (network.py's)."""
    return sigmoid(z) * (1 - sigmoid(z))


def _label(y: Any) -> int:
    if isinstance(y, (int, np.integer)):
        return int(y)
    a = np.asarray(y)
    if a.ndim == 0:
        return int(a)
    a = a.ravel()
    k = int(np.argmax(a))
    if a[k] != 1 or np.count_nonzero(a) != 1:
        raise ValueError(
            "kiln.nn trains on class labels: each y must be a class number or a one-hot vector"
        )
    return k


def _stacked(data: Data, dim: int) -> Tuple[bytes, bytes]:
    """Inputs as float32 bytes (row per example) and labels as bytes."""
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and isinstance(data[0], np.ndarray)
        and data[0].ndim == 2
        and isinstance(data[1], np.ndarray)
        and len(data[0]) == len(data[1])
        and data[0].shape[1] == dim
    ):
        x, y = data
        if y.ndim == 2:
            labels = [_label(row) for row in y]
        else:
            labels = [int(v) for v in y]
    else:
        data = list(data)
        if not data:
            raise ValueError("no examples")
        x = np.stack([np.asarray(e[0], dtype=np.float32).reshape(-1) for e in data])
        labels = [_label(e[1]) for e in data]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"examples have {x.shape[-1]} inputs, the network takes {dim}")
    if any(not 0 <= v < 256 for v in labels):
        raise ValueError("class labels must be in 0..255")
    return x.tobytes(), bytes(labels)


class Network:
    """network.py's ``Network``: a fully connected sigmoid network with the quadratic cost,
    N(0, 1) initial weights and biases, trained by mini-batch SGD."""

    def __init__(self, sizes: Sequence[int], seed: int = 0):
        self._net = _kiln.Network([int(s) for s in sizes], seed)
        self.sizes: List[int] = list(self._net.sizes)
        self.num_layers: int = len(self.sizes)
        self.history: List[dict] = []

    @property
    def weights(self) -> List[np.ndarray]:
        """Copies of the weight matrices, ``weights[l]`` of shape ``(sizes[l+1], sizes[l])``."""
        return [
            np.frombuffer(self._net.weights_bytes(l), dtype=np.float32)
            .reshape(self.sizes[l + 1], self.sizes[l])
            .copy()
            for l in range(self.num_layers - 1)
        ]

    @weights.setter
    def weights(self, ws: Sequence[np.ndarray]) -> None:
        if len(ws) != self.num_layers - 1:
            raise ValueError(f"{len(ws)} weight matrices for {self.num_layers} layers")
        for l, w in enumerate(ws):
            w = np.asarray(w, dtype=np.float32)
            if w.shape != (self.sizes[l + 1], self.sizes[l]):
                raise ValueError(f"layer {l}: weights of shape {w.shape}")
            self._net.set_weights(l, np.ascontiguousarray(w).tobytes())

    @property
    def biases(self) -> List[np.ndarray]:
        """Copies of the bias vectors, ``biases[l]`` of shape ``(sizes[l+1], 1)``."""
        return [
            np.frombuffer(self._net.biases_bytes(l), dtype=np.float32)
            .reshape(self.sizes[l + 1], 1)
            .copy()
            for l in range(self.num_layers - 1)
        ]

    @biases.setter
    def biases(self, bs: Sequence[np.ndarray]) -> None:
        if len(bs) != self.num_layers - 1:
            raise ValueError(f"{len(bs)} bias vectors for {self.num_layers} layers")
        for l, b in enumerate(bs):
            b = np.asarray(b, dtype=np.float32).reshape(-1)
            if b.shape != (self.sizes[l + 1],):
                raise ValueError(f"layer {l}: {b.shape[0]} biases")
            self._net.set_biases(l, b.tobytes())

    def feedforward(self, a: np.ndarray) -> np.ndarray:
        """The output for input ``a`` (a column vector), as a ``(sizes[-1], 1)`` array."""
        x = np.ascontiguousarray(np.asarray(a, dtype=np.float32).reshape(-1))
        out = self._net.feedforward(x.tobytes())
        return np.frombuffer(out, dtype=np.float32).reshape(-1, 1).copy()

    def SGD(
        self,
        training_data: Data,
        epochs: int,
        mini_batch_size: int,
        eta: float,
        test_data: Optional[Data] = None,
    ) -> None:
        """network.py's ``SGD``: ``epochs`` passes over the shuffled training data in
        mini-batches of ``mini_batch_size`` with learning rate ``eta``. Prints
        ``Epoch j: correct / n_test`` after each epoch with test data (else ``Epoch j
        complete``), as network.py. ``self.history`` then holds one dict per epoch:
        ``epoch``, ``correct`` (None without test data) and ``train_seconds`` (the SGD
        updates of that epoch, measured by the Rust trainer). Ctrl-C stops training within a
        few mini-batches (``KeyboardInterrupt``; the weights keep the updates made so far)."""
        dim = self.sizes[0]
        x, y = _stacked(training_data, dim)
        tx = ty = None
        if test_data is not None:
            tx, ty = _stacked(test_data, dim)

        self.history: List[dict] = []

        def on_epoch(j: int, correct: Optional[int], n_test: int, seconds: float) -> None:
            self.history.append({"epoch": j, "correct": correct, "train_seconds": seconds})
            if correct is not None:
                print("Epoch {0}: {1} / {2}".format(j, correct, n_test), flush=True)
            else:
                print("Epoch {0} complete".format(j), flush=True)

        self._net.sgd(x, y, int(epochs), int(mini_batch_size), float(eta), tx, ty, on_epoch)

    def update_mini_batch(self, mini_batch: Data, eta: float) -> None:
        """network.py's ``update_mini_batch``: one gradient-descent step on ``mini_batch``."""
        x, y = _stacked(mini_batch, self.sizes[0])
        self._net.update_mini_batch(x, y, float(eta))

    def backprop(self, x: np.ndarray, y: np.ndarray) -> Tuple[List[np.ndarray], List[np.ndarray]]:
        """network.py's ``backprop``: ``(nabla_b, nabla_w)``, the gradient of the quadratic
        cost for one example, layer by layer, shaped like ``biases`` and ``weights``."""
        xb = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1)).tobytes()
        yb = np.ascontiguousarray(np.asarray(y, dtype=np.float32).reshape(-1)).tobytes()
        nb, nw = self._net.backprop(xb, yb)
        nabla_b = [
            np.frombuffer(b, dtype=np.float32).reshape(-1, 1).copy() for b in nb
        ]
        nabla_w = [
            np.frombuffer(w, dtype=np.float32).reshape(self.sizes[l + 1], self.sizes[l]).copy()
            for l, w in enumerate(nw)
        ]
        return nabla_b, nabla_w

    def evaluate(self, test_data: Data) -> int:
        """network.py's ``evaluate``: how many examples the network classifies right."""
        x, y = _stacked(test_data, self.sizes[0])
        return self._net.evaluate(x, y)

    def cost_derivative(self, output_activations: np.ndarray, y: np.ndarray) -> np.ndarray:
        """network.py's ``cost_derivative`` (of the quadratic cost)."""
        return output_activations - y


def _vectorized_result(j: int) -> np.ndarray:
    e = np.zeros((10, 1))
    e[j] = 1.0
    return e


def load_mnist(data_dir: Optional[str] = None):
    """mnist_loader's ``load_data_wrapper()``: ``(training_data, validation_data,
    test_data)``, lists of ``(x, y)`` with ``x`` a ``(784, 1)`` float32 column of pixels in
    [0, 1) (byte / 256, as in Nielsen's ``mnist.pkl.gz``) and ``y`` a ``(10, 1)`` one-hot
    vector (training) or the digit (validation, test). 50 000 / 10 000 / 10 000 images.

    The IDX files are fetched on first use into ``$KILN_HOME/mnist`` (default
    ``~/.cache/kiln/mnist``), sha256-checked, or read from ``data_dir``."""
    sets = _kiln.load_mnist(data_dir)
    out = []
    for i, (pix, lab) in enumerate(sets):
        x = np.frombuffer(pix, dtype=np.uint8).reshape(-1, 784).astype(np.float32) / 256
        labels = np.frombuffer(lab, dtype=np.uint8)
        cols = [x[k].reshape(784, 1) for k in range(len(labels))]
        if i == 0:
            out.append([(c, _vectorized_result(int(l))) for c, l in zip(cols, labels)])
        else:
            out.append([(c, int(l)) for c, l in zip(cols, labels)])
    return tuple(out)
