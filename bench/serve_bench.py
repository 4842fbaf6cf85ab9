#!/usr/bin/env python3
"""Serving benchmark (not a test): aggregate generated tokens/s and median time to first token
at 1, 4, 8 and 16 concurrent streams, for `kiln serve --parallel N` and `llama-server -np N` (the
llama.cpp anchor), side by side, as ratios.

Usage: bench/serve_bench.py [--model GGUF] [--kiln target/release/kiln] [--llama-bin DIR]
       [--tokens 64] [--threads 2] [--levels 1,4,8,16] [--ctx 512] [--json OUT]
For each level N, each server is started with N slots (N sequences decoded together), the same
threads, the same context per slot, warmed up, and then N clients each stream a greedy
completion of its own prompt (the same prompts for both servers) with `max_tokens` tokens and
`ignore_eos`. A level's tokens/s is all generated tokens over the level's wall time; TTFT is the
median over clients of the time from sending the request to the first text chunk. The servers
alternate level by level so that a change in machine load hits both. Without a llama-server
binary (`bash bench/build-llama-cpp.sh` builds it) only kiln is measured.
Before each run it waits (--wait-quiet seconds at most) for the CPUs to be mostly idle, and
prints how idle they were. Run it under `flock /tmp/kiln-bench.lock` where others benchmark too.
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
    """Streams one completion; out[i] = (ttft seconds, generated tokens)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
                       "ignore_eos": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:200]!r}")
    ttft = None
    chunks = 0
    reported = None
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        obj = json.loads(data)
        for c in obj.get("choices") or []:
            if c.get("text"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
            if c.get("token_ids") is not None:  # kiln's final chunk
                reported = len(c["token_ids"])
        if obj.get("usage"):
            reported = obj["usage"].get("completion_tokens", reported)
        if obj.get("timings", {}).get("predicted_n") is not None:  # llama-server
            reported = obj["timings"]["predicted_n"]
    conn.close()
    out[i] = (ttft if ttft is not None else time.perf_counter() - t0,
              reported if reported is not None else chunks)


def level(port, n, tokens):
    out = [None] * n
    threads = [threading.Thread(target=stream_one,
                                args=(port, PROMPTS[i % len(PROMPTS)] + f" #{i}", tokens, out, i))
               for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if any(o is None for o in out):
        raise RuntimeError("a client failed")
    total = sum(o[1] for o in out)
    if total != n * tokens:
        print(f"  note: {total} tokens generated, {n * tokens} asked", flush=True)
    return total / wall, statistics.median(o[0] for o in out), total, wall


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


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def cpu_idle(seconds=2.0):
    """Fraction of the machine's CPU time idle over the next `seconds`."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    i0, t0 = read()
    time.sleep(seconds)
    i1, t1 = read()
    return (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait, want=0.8):
    """Waits (up to max_wait seconds) until others leave the CPUs mostly idle; returns the idle
    fraction last seen. Two cores shared with builds make any timing noisy; this at least
    measures when nobody else is busy, and says how idle it was."""
    t0 = time.time()
    idle = cpu_idle()
    while idle < want and time.time() - t0 < max_wait:
        idle = cpu_idle()
    return idle


def measure(name, cmd, port, n, tokens, max_wait):
    idle = wait_quiet(max_wait)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        level(port, n, 4)  # warm-up: every slot once
        la = loadavg()
        tps, ttft, total, wall = level(port, n, tokens)
        print(f"{name:>13} streams={n:<3} tokens/s={tps:7.2f}  median TTFT={ttft:6.3f}s  "
              f"({total} tokens in {wall:.1f}s; CPU idle before {idle:.0%}, load avg {la:.2f})",
              flush=True)
        return {"streams": n, "tokens_per_s": tps, "median_ttft_s": ttft, "tokens": total,
                "wall_s": wall, "idle_before": idle, "loadavg_before": la}
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model",
                    default=f"{HOME}/.cache/kiln/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--llama-bin", default=None,
                    help="folder with llama-server (default: what build-llama-cpp.sh prints)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512, help="positions per slot")
    ap.add_argument("--levels", default="1,4,8,16")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--wait-quiet", type=float, default=300,
                    help="seconds to wait, before each run, for the CPUs to be ≥ 80%% idle")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    llama_bin = a.llama_bin
    if llama_bin is None:
        script = os.path.join(os.path.dirname(__file__), "build-llama-cpp.sh")
        if os.path.exists(script):
            r = subprocess.run(["bash", script], capture_output=True, text=True)
            llama_bin = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout else ""
        else:
            llama_bin = os.path.join(os.environ.get("KILN_HOME") or f"{HOME}/.cache/kiln",
                                     "anchors/llama.cpp-0c1e57098/bin")
    llama = os.path.join(llama_bin or "", "llama-server")
    have_llama = os.path.exists(llama)
    if not have_llama:
        print(f"(no {llama}: llama-server comparison skipped)")
    t = str(a.threads)
    results = {"kiln": [], "llama-server": []}
    for n in levels:
        kiln_cmd = [a.kiln, "serve", "-m", a.model, "--port", "18181", "-t", t,
                    "--parallel", str(n), "--ctx-size", str(a.ctx), "--max-queue", "256"]
        results["kiln"].append(measure("kiln", kiln_cmd, 18181, n, a.tokens, a.wait_quiet))
        if have_llama:
            llama_cmd = [llama, "-m", a.model, "--port", "18182", "-t", t, "-tb", t,
                         "-np", str(n), "-c", str(a.ctx * n), "--no-warmup"]
            results["llama-server"].append(measure("llama-server", llama_cmd, 18182, n,
                                                   a.tokens, a.wait_quiet))
    print()
    print("| streams | kiln tok/s | llama-server tok/s | ratio | kiln median TTFT | "
          "llama-server median TTFT | TTFT ratio |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, k in enumerate(results["kiln"]):
        if have_llama:
            ll = results["llama-server"][i]
            print(f"| {k['streams']} | {k['tokens_per_s']:.1f} | {ll['tokens_per_s']:.1f} | "
                  f"{k['tokens_per_s'] / ll['tokens_per_s']:.2f}x | "
                  f"{k['median_ttft_s'] * 1000:.0f} ms | {ll['median_ttft_s'] * 1000:.0f} ms | "
                  f"{k['median_ttft_s'] / ll['median_ttft_s']:.2f}x |")
        else:
            print(f"| {k['streams']} | {k['tokens_per_s']:.1f} | – | – | "
                  f"{k['median_ttft_s'] * 1000:.0f} ms | – | – |")
    print("(ratio = kiln / llama-server: above 1 kiln is faster in tok/s; below 1 kiln's TTFT is "
          "lower)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "tokens": a.tokens, "threads": a.threads,
                       "ctx_per_slot": a.ctx, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
