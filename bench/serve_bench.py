#!/usr/bin/env python3
"""Serving benchmark (not a test): aggregate generated tokens/s and time to first token at 1, 4,
8 and 16 concurrent streams, for `kiln serve` and, when built, `llama-server -np N`.

Usage: bench/serve_bench.py [--model GGUF] [--kiln target/release/kiln] [--llama-bin DIR]
       [--tokens 64] [--threads 2] [--levels 1,4,8,16] [--parallel 8]
Each client streams a 64-token greedy completion (ignore_eos) of its own prompt; a level's
tokens/s is all generated tokens over the wall time of the level, TTFT the median over clients.
Run it on an idle machine and compare the two servers side by side, as ratios.
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

HOME = os.path.expanduser("~")
PROMPTS = [
    "def fibonacci(n):",
    "Write a haiku about the sea.",
    "Q: What is the largest animal?\nA:",
    "The quick brown fox",
    "import numpy as np\n\n# compute the mean of",
    "Once upon a time, in a land far away,",
    "SELECT name, age FROM users WHERE",
    "fn main() {",
]


def stream_one(port, prompt, tokens, out, i):
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
                       "ignore_eos": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:200]!r}")
    ttft = None
    chunks = 0
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        obj = json.loads(data)
        if obj.get("choices") and obj["choices"][0].get("text"):
            chunks += 1
            if ttft is None:
                ttft = time.perf_counter() - t0
    conn.close()
    out[i] = (ttft if ttft is not None else time.perf_counter() - t0, tokens)


def level(port, n, tokens):
    out = [None] * n
    threads = [threading.Thread(target=stream_one, args=(port, PROMPTS[i % len(PROMPTS)] + f" #{i}",
                                                          tokens, out, i)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total = sum(o[1] for o in out)
    return total / wall, statistics.median(o[0] for o in out)


def wait_ready(port, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def run_server(name, cmd, port, levels, tokens):
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        level(port, 1, 8)  # warm-up
        rows = []
        for n in levels:
            tps, ttft = level(port, n, tokens)
            rows.append((n, tps, ttft))
            print(f"{name:>14} streams={n:<3} tokens/s={tps:7.1f}  median TTFT={ttft:6.2f}s", flush=True)
        return rows
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=f"{HOME}/.cache/kiln/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--llama-bin", default=f"{HOME}/.cache/kiln/anchors/llama.cpp-0c1e57098/bin")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=1024, help="positions per slot")
    ap.add_argument("--levels", default="1,4,8,16")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    results = {}
    results["kiln"] = run_server("kiln", [a.kiln, "serve", "-m", a.model, "--port", "18181", "-t", str(a.threads),
                                          "--parallel", str(a.parallel), "--ctx-size", str(a.ctx)],
                                 18181, levels, a.tokens)
    llama = os.path.join(a.llama_bin, "llama-server")
    if os.path.exists(llama):
        results["llama-server"] = run_server(
            "llama-server", [llama, "-m", a.model, "--port", "18182", "-t", str(a.threads), "-np", str(a.parallel),
                             "-c", str(a.ctx * a.parallel)], 18182, levels, a.tokens)
    else:
        print(f"(no {llama}: llama-server comparison skipped)")
    if "llama-server" in results:
        print("\nstreams  kiln/llama tokens/s  kiln/llama TTFT")
        for (n, kt, kf), (_, lt, lf) in zip(results["kiln"], results["llama-server"]):
            print(f"{n:>7}  {kt / lt:19.2f}  {kf / lf:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
