#!/usr/bin/env python3
"""A faithful numpy port of Michael Nielsen's network.py (Python 3), for side-by-side timing
and accuracy against `kiln nn train`.

Same algorithm, same structure: N(0,1) biases then weights (np.random.randn), sigmoid layers,
quadratic cost, per-epoch random.shuffle of the training list, consecutive mini-batches,
per-example backprop summed over the mini-batch, `w - (eta/len(mini_batch))*nw`, evaluation =
argmax == label. Data: the MNIST IDX files with Nielsen's split (first 50 000 training
images train, t10k tests; pixels byte/256), shaped like his load_data_wrapper.

usage: network_numpy.py [--data DIR] [--epochs 30] [--batch-size 10] [--eta 3.0]
                        [--layers 784,30,10] [--seed 0] [--train-limit N]
prints network.py's line per epoch plus the wall and CPU seconds of the training part.
"""
import argparse
import gzip
import os
import random
import struct
import time

import numpy as np


class Network(object):
    def __init__(self, sizes):
        self.num_layers = len(sizes)
        self.sizes = sizes
        self.biases = [np.random.randn(y, 1) for y in sizes[1:]]
        self.weights = [np.random.randn(y, x) for x, y in zip(sizes[:-1], sizes[1:])]

    def feedforward(self, a):
        for b, w in zip(self.biases, self.weights):
            a = sigmoid(np.dot(w, a) + b)
        return a

    def SGD(self, training_data, epochs, mini_batch_size, eta, test_data=None):
        if test_data:
            n_test = len(test_data)
        n = len(training_data)
        for j in range(epochs):
            t0 = time.perf_counter()
            c0 = time.process_time()
            random.shuffle(training_data)
            mini_batches = [training_data[k:k + mini_batch_size] for k in range(0, n, mini_batch_size)]
            for mini_batch in mini_batches:
                self.update_mini_batch(mini_batch, eta)
            secs = time.perf_counter() - t0
            cpu = time.process_time() - c0
            if test_data:
                print("Epoch {0}: {1} / {2}  ({3:.3f} s, cpu {4:.3f} s)".format(
                    j, self.evaluate(test_data), n_test, secs, cpu), flush=True)
            else:
                print("Epoch {0} complete  ({1:.3f} s, cpu {2:.3f} s)".format(j, secs, cpu), flush=True)

    def update_mini_batch(self, mini_batch, eta):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        self.weights = [w - (eta / len(mini_batch)) * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - (eta / len(mini_batch)) * nb for b, nb in zip(self.biases, nabla_b)]

    def backprop(self, x, y):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        activation = x
        activations = [x]
        zs = []
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = self.cost_derivative(activations[-1], y) * sigmoid_prime(zs[-1])
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for l in range(2, self.num_layers):
            z = zs[-l]
            sp = sigmoid_prime(z)
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * sp
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return (nabla_b, nabla_w)

    def evaluate(self, test_data):
        test_results = [(np.argmax(self.feedforward(x)), y) for (x, y) in test_data]
        return sum(int(x == y) for (x, y) in test_results)

    def cost_derivative(self, output_activations, y):
        return (output_activations - y)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    return sigmoid(z) * (1 - sigmoid(z))


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, nd = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 0x08, path
    dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def vectorized_result(j):
    e = np.zeros((10, 1))
    e[j] = 1.0
    return e


def load_data_wrapper(d):
    """Nielsen's split and shapes: training (x (784,1), one-hot y (10,1)), test (x, int)."""
    tr_x = read_idx(os.path.join(d, "train-images-idx3-ubyte.gz")).reshape(-1, 784)
    tr_y = read_idx(os.path.join(d, "train-labels-idx1-ubyte.gz"))
    te_x = read_idx(os.path.join(d, "t10k-images-idx3-ubyte.gz")).reshape(-1, 784)
    te_y = read_idx(os.path.join(d, "t10k-labels-idx1-ubyte.gz"))
    # mnist.pkl.gz stores float32 byte/256; network.py then works in float64 after np ops
    tr_x = tr_x[:50000].astype(np.float32) / 256.0
    te_x = te_x.astype(np.float32) / 256.0
    training = [(np.reshape(x, (784, 1)), vectorized_result(y)) for x, y in zip(tr_x, tr_y[:50000])]
    test = [(np.reshape(x, (784, 1)), int(y)) for x, y in zip(te_x, te_y)]
    return training, test


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=os.path.expanduser("~/.cache/kiln/mnist"))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--eta", type=float, default=3.0)
    p.add_argument("--layers", default="784,30,10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=0)
    a = p.parse_args()
    random.seed(a.seed)
    np.random.seed(a.seed)
    training, test = load_data_wrapper(a.data)
    if a.train_limit:
        training = training[:a.train_limit]
    net = Network([int(s) for s in a.layers.split(",")])
    net.SGD(training, a.epochs, a.batch_size, a.eta, test_data=test)


if __name__ == "__main__":
    main()
