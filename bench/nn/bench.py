#!/usr/bin/env python3
"""Side-by-side: the numpy port of network.py (network_numpy.py) and `kiln nn train`, same data,
same settings ([784,30,10], batch 10, eta 3.0, quadratic cost, N(0,1) init, seed), one after the
other on an otherwise idle machine. Prints the seconds per epoch (training part, evaluation
excluded, for both; wall clock and CPU time of the process / training thread) and the ratios.

usage: python3 bench/nn/bench.py [--epochs 2] [--kiln-epochs N] [--kiln target/release/kiln]
(builds kiln with cargo first unless --no-build). --kiln-epochs defaults to --epochs.
"""
import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LINE = re.compile(r"Epoch (\d+): (\d+) / (\d+)\s+\(([\d.]+) s, cpu ([\d.]+) s\)")


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.exit("command failed: %s" % proc.returncode)
    rows = [(int(m[1]), int(m[2]), int(m[3]), float(m[4]), float(m[5])) for m in LINE.finditer(proc.stdout)]
    if not rows:
        sys.exit("no epoch lines in the output")
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--kiln-epochs", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=os.path.expanduser("~/.cache/kiln/mnist"))
    p.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"))
    p.add_argument("--no-build", action="store_true")
    a = p.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "kiln-cli"], cwd=ROOT, check=True)
    common = ["--epochs", str(a.epochs), "--batch-size", "10", "--eta", "3.0", "--layers", "784,30,10",
              "--seed", str(a.seed), "--data", a.data]
    np_rows = run([sys.executable, os.path.join(HERE, "network_numpy.py")] + common)
    kiln_common = list(common)
    kiln_common[1] = str(a.kiln_epochs or a.epochs)
    k_rows = run([a.kiln, "nn", "train", "--cost", "quadratic", "--init", "large"] + kiln_common)
    def mean(rows, i):
        return sum(r[i] for r in rows) / len(rows)
    np_s, k_s = mean(np_rows, 3), mean(k_rows, 3)
    np_c, k_c = mean(np_rows, 4), mean(k_rows, 4)
    print()
    print("| | epochs | wall s/epoch (mean) | wall s/epoch (fastest) | CPU s/epoch (mean) | best accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rows in (("numpy network.py port", np_rows), ("kiln nn train", k_rows)):
        print("| %s | %d | %.3f | %.3f | %.3f | %d / %d |" % (
            name, len(rows), mean(rows, 3), min(r[3] for r in rows), mean(rows, 4),
            max(r[1] for r in rows), rows[0][2]))
    print()
    print("kiln is %.1fx faster per epoch than the numpy port (wall, mean vs mean); %.1fx in CPU time"
          % (np_s / k_s, np_c / k_c))


if __name__ == "__main__":
    main()
