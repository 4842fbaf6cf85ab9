"""kiln.nn against network.py: the book's session reaches 95%; feedforward, backprop,
update_mini_batch and evaluate against the numpy port of network.py in bench/nn (Nielsen's
algorithm, run here as the reference on the same parameters)."""

import importlib.util
import io
import contextlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kiln
from kiln import nn as network  # was: import network

from conftest import ROOT

spec = importlib.util.spec_from_file_location("network_numpy", ROOT / "bench" / "nn" / "network_numpy.py")
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)


@pytest.fixture(scope="module")
def mnist():
    return kiln.nn.load_mnist()


def test_load_mnist_has_mnist_loaders_shape(mnist):
    training_data, validation_data, test_data = mnist
    assert (len(training_data), len(validation_data), len(test_data)) == (50000, 10000, 10000)
    x, y = training_data[0]
    assert x.shape == (784, 1) and y.shape == (10, 1) and y.sum() == 1.0
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() < 1.0
    assert np.all(x * 256 == np.round(x * 256))  # byte / 256
    x, y = test_data[0]
    assert x.shape == (784, 1) and isinstance(y, int) and 0 <= y <= 9


def twin(sizes, seed=3):
    """A kiln network and a numpy network.py with the same parameters (float64 copies)."""
    net = network.Network(sizes, seed=seed)
    ref = reference.Network(sizes)
    ref.weights = [w.astype(np.float64) for w in net.weights]
    ref.biases = [b.astype(np.float64) for b in net.biases]
    return net, ref


def test_parameters_have_network_py_shapes():
    net = network.Network([784, 30, 10])
    assert net.sizes == [784, 30, 10] and net.num_layers == 3
    assert [w.shape for w in net.weights] == [(30, 784), (10, 30)]
    assert [b.shape for b in net.biases] == [(30, 1), (10, 1)]
    w = net.weights
    assert abs(float(np.concatenate([v.ravel() for v in w]).std()) - 1.0) < 0.05  # N(0, 1)
    w[1][:] = 0.5
    net.weights = w
    assert np.all(net.weights[1] == 0.5)
    with pytest.raises(ValueError):
        net.weights = [w[0]]


def test_feedforward_backprop_update_evaluate_as_network_py(mnist):
    training_data, _, test_data = mnist
    net, ref = twin([784, 16, 12, 10])
    x, y = training_data[7]
    np.testing.assert_allclose(net.feedforward(x), ref.feedforward(x.astype(np.float64)), atol=1e-5)
    nb, nw = net.backprop(x, y)
    rb, rw = ref.backprop(x.astype(np.float64), y)
    for a, b in zip(nb + nw, rb + rw):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=2e-5)
    batch = training_data[100:110]
    net.update_mini_batch(batch, 3.0)
    ref.update_mini_batch([(x.astype(np.float64), y) for x, y in batch], 3.0)
    for a, b in zip(net.weights + net.biases, ref.weights + ref.biases):
        np.testing.assert_allclose(a, b, atol=1e-4)
    some = test_data[:500]
    assert net.evaluate(some) == ref.evaluate(some)
    # two stacked arrays work as the list of pairs does
    xs = np.stack([x.ravel() for x, _ in some])
    ys = np.array([y for _, y in some])
    assert net.evaluate((xs, ys)) == net.evaluate(some)


def test_network_py_session_reaches_95_percent(mnist):
    # The book's chapter 1 session, with only the import changed.
    training_data, validation_data, test_data = mnist
    net = network.Network([784, 30, 10])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        net.SGD(training_data, 30, 10, 3.0, test_data=test_data)
    lines = out.getvalue().splitlines()
    assert len(lines) == 30
    correct = []
    for j, line in enumerate(lines):
        m = re.fullmatch(r"Epoch (\d+): (\d+) / 10000", line)
        assert m and int(m[1]) == j, line
        correct.append(int(m[2]))
    assert max(correct) >= 9500, correct
    assert net.evaluate(test_data) == correct[-1]


def test_sgd_without_test_data_and_bad_data(capsys):
    net = network.Network([4, 3, 2])
    data = [(np.ones((4, 1)) * 0.5, np.array([[1.0], [0.0]])), (np.zeros((4, 1)), np.array([[0.0], [1.0]]))]
    net.SGD(data, 2, 1, 0.5)
    assert capsys.readouterr().out == "Epoch 0 complete\nEpoch 1 complete\n"
    with pytest.raises(ValueError, match="one-hot"):
        net.SGD([(np.zeros((4, 1)), np.array([[0.3], [0.7]]))], 1, 1, 0.5)
    with pytest.raises(ValueError, match="inputs"):
        net.SGD([(np.zeros((5, 1)), 0)], 1, 1, 0.5)
    with pytest.raises(ValueError):
        network.Network([784])


CTRL_C_SGD = textwrap.dedent(
    """
    import os, signal, threading, time
    import numpy as np
    from kiln import nn as network
    rng = np.random.default_rng(0)
    data = (rng.random((10000, 784), dtype=np.float32), rng.integers(0, 10, 10000))
    net = network.Network([784, 30, 10])
    def interrupt():
        time.sleep(1)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=interrupt).start()
    try:
        net.SGD(data, 10**7, 10, 3.0)
        print("SGD finished", flush=True)
    except KeyboardInterrupt:
        print("SGD interrupted", len(net.history) < 10**7, flush=True)
    net.SGD(data, 1, 10, 3.0)
    print("after:", len(net.history), flush=True)
    """
)


def test_ctrl_c_stops_sgd():
    # 10**7 epochs of 10 000 examples take days; Ctrl-C a second in must end SGD with
    # KeyboardInterrupt (signals are checked about 200 times an epoch), and the network
    # must still train afterwards.
    p = subprocess.run([sys.executable, "-c", CTRL_C_SGD], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = [l for l in p.stdout.splitlines() if not l.startswith("Epoch ")]
    assert lines == ["SGD interrupted True", "after: 1"], p.stdout[-2000:]
