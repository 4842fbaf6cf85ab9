#!/usr/bin/env python3
"""Reads a saved model the way network2.py's `load` does and runs its `feedforward`.

usage: network2_load.py MODEL.json INPUT.json
INPUT.json is a list of input vectors; prints a JSON list of output vectors.
network2.py's load does: data = json.load(f); cost = getattr(module, data["cost"]);
Network(data["sizes"], cost=cost); weights = [np.array(w) for w in data["weights"]];
biases = [np.array(b) for b in data["biases"]]. numpy is used when installed; otherwise the same
shapes are checked and the same arithmetic done with lists (standard library only).
"""
import json
import math
import sys


class QuadraticCost:
    pass


class CrossEntropyCost:
    pass


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def main():
    with open(sys.argv[1]) as f:
        data = json.load(f)
    cost = {"QuadraticCost": QuadraticCost, "CrossEntropyCost": CrossEntropyCost}[data["cost"]]
    sizes = data["sizes"]
    assert len(data["weights"]) == len(data["biases"]) == len(sizes) - 1
    inputs = json.load(open(sys.argv[2]))
    try:
        import numpy as np
    except ImportError:
        np = None
    outs = []
    if np is not None:
        weights = [np.array(w) for w in data["weights"]]
        biases = [np.array(b) for b in data["biases"]]
        for (x, y), w, b in zip(zip(sizes[:-1], sizes[1:]), weights, biases):
            assert w.shape == (y, x) and b.shape == (y, 1), (w.shape, b.shape)
        for x in inputs:
            a = np.array(x, dtype=float).reshape(-1, 1)
            for w, b in zip(weights, biases):
                a = 1.0 / (1.0 + np.exp(-(np.dot(w, a) + b)))
            outs.append([float(v) for v in a.ravel()])
    else:
        for (x, y), w, b in zip(zip(sizes[:-1], sizes[1:]), data["weights"], data["biases"]):
            assert len(w) == y and all(len(r) == x for r in w)
            assert len(b) == y and all(len(c) == 1 for c in b)
        for x in inputs:
            a = list(x)
            for w, b in zip(data["weights"], data["biases"]):
                a = [sigmoid(sum(wi * ai for wi, ai in zip(row, a)) + bc[0]) for row, bc in zip(w, b)]
            outs.append(a)
    print(json.dumps({"cost": cost.__name__, "outputs": outs}))


if __name__ == "__main__":
    main()
