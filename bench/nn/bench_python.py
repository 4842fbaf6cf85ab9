#!/usr/bin/env python3
"""network.py under numpy against kiln.nn (the Python package), side by side in one process:
the same MNIST lists (kiln.nn.load_mnist(), mnist_loader's shape), Network([784, 30, 10]),
mini-batch 10, eta 3.0. Prints seconds per epoch for both and the ratio.

Two measures for kiln: the whole `net.SGD(...)` call divided by its epochs (what a Python
user waits for, including turning the lists into arrays and the per-epoch evaluation), and
the training part alone (the Rust trainer's own clock, as `kiln nn train` reports it). For
numpy, the training part of each epoch (evaluation excluded), as bench.py measures it.

usage: python3 bench/nn/bench_python.py [--numpy-epochs 2] [--kiln-epochs 30]
(needs the kiln package installed: pip install ./crates/python)
"""
import argparse
import contextlib
import io
import os
import platform
import random
import sys
import time

import numpy as np

import kiln

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import network_numpy  # noqa: E402  (the faithful numpy port of network.py)


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    keep = [f for f in ("avx2", "fma", "avx512f", "f16c") if f in flags]
                    return name, keep
    except OSError:
        pass
    return platform.processor(), []


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--numpy-epochs", type=int, default=2)
    p.add_argument("--kiln-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    name, flags = cpu_flags()
    print(f"CPU: {name}; flags: {' '.join(flags)}; cores: {os.cpu_count()}; load: {os.getloadavg()}")
    print(f"Python {platform.python_version()}, numpy {np.__version__}, kiln {kiln.__version__}")
    training_data, _, test_data = kiln.nn.load_mnist()

    random.seed(a.seed)
    np.random.seed(a.seed)
    ref = network_numpy.Network([784, 30, 10])
    data = list(training_data)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ref.SGD(data, a.numpy_epochs, 10, 3.0, test_data=test_data)
    sys.stdout.write(out.getvalue())
    np_secs = [float(l.split("(")[1].split(" s")[0]) for l in out.getvalue().splitlines()]
    np_mean = sum(np_secs) / len(np_secs)

    net = kiln.nn.Network([784, 30, 10], seed=a.seed)
    t0 = time.perf_counter()
    net.SGD(training_data, a.kiln_epochs, 10, 3.0, test_data=test_data)
    whole = (time.perf_counter() - t0) / a.kiln_epochs
    train = sum(h["train_seconds"] for h in net.history) / len(net.history)
    best = max(h["correct"] for h in net.history)

    print()
    print(f"numpy network.py: {np_mean:.3f} s/epoch (training part, mean of {len(np_secs)})")
    print(f"kiln.nn SGD call: {whole:.3f} s/epoch (whole call / {a.kiln_epochs} epochs)")
    print(f"kiln.nn training: {train:.3f} s/epoch (Rust trainer's clock)")
    print(f"kiln best test accuracy: {best} / {len(test_data)}")
    print(f"ratio numpy / kiln: {np_mean / whole:.1f}x (whole call), {np_mean / train:.1f}x (training part)")


if __name__ == "__main__":
    main()
