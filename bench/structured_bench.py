#!/usr/bin/env python3
"""Structured-output benchmark (not a test): decode tokens/s with a JSON-schema constraint
against unconstrained decoding, and time to first token with a fresh (never seen) schema against
none, on `kiln serve` and, when the anchor binary exists, on `llama-server` with its own
`json_schema` (the same GGUF file, the same threads), side by side.

Usage: bench/structured_bench.py [--models gemma3-270m,qwen2.5-coder-0.5b] [--kiln target/release/kiln]
       [--llama-bin DIR] [--threads 2] [--tokens 128] [--reps 5] [--json OUT]

Decode: one stream at a time, greedy. Unconstrained runs use `ignore_eos` and `max_tokens`; the
constrained runs use a schema whose shortest valid answer is longer than `max_tokens` (an array
of at least 64 small objects), so both generate exactly `max_tokens` tokens. Decode tokens/s is
(tokens - 1) over the time from the first to the last token chunk. TTFT: the time from sending
the request to the first chunk, for a short prompt, with no constraint and with a schema that
differs from every earlier one (a fresh property name), so its compilation is in the time.
Medians over `--reps`. Prints CPU flags and the machine's load; run it on a quiet machine
(`flock /tmp/kiln-bench.lock`), and read the ratios, which one run measures side by side.
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time

HOME = os.path.expanduser("~")
PROMPT = "List products of a hardware store as JSON."


def schema(tag):
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [f"items_{tag}"],
        "properties": {
            f"items_{tag}": {
                "type": "array",
                "minItems": 64,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "name", "price"],
                    "properties": {
                        "id": {"type": "integer", "minimum": 0},
                        "name": {"type": "string", "maxLength": 16},
                        "price": {"type": "number", "minimum": 0},
                    },
                },
            }
        },
    }


def start(cmd, port, log):
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return p
        except OSError:
            pass
        if p.poll() is not None:
            raise SystemExit(f"server exited: {' '.join(cmd)}")
        time.sleep(0.5)
    p.kill()
    raise SystemExit("server did not start")


def stream(port, body):
    """Returns (seconds to the first chunk, chunk times) of a streamed chat completion."""
    body = dict(body, stream=True)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {r.read()[:500]!r}")
    times = []
    buf = b""
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        o = json.loads(data)
        ch = o.get("choices") or []
        if ch and (ch[0].get("delta", {}).get("content")):
            times.append(time.perf_counter())
            buf += ch[0]["delta"]["content"].encode()
    return (times[0] - t0 if times else float("nan")), times, buf.decode()


def measure(port, tokens, reps, llama):
    out = {}
    msgs = [{"role": "user", "content": PROMPT}]
    base = {"messages": msgs, "temperature": 0, "max_tokens": tokens}
    free = dict(base, ignore_eos=True) if not llama else dict(base, ignore_eos=True)
    stream(port, free)  # warm-up
    tps = {"free": [], "schema": []}
    fresh = 0
    for _ in range(reps):
        for kind in ("free", "schema"):
            if kind == "free":
                b = free
            else:
                fresh += 1
                s = schema(f"d{fresh}")
                b = dict(base, response_format={"type": "json_schema",
                                                "json_schema": {"name": "store", "schema": s}})
            _, times, text = stream(port, b)
            n = len(times)
            if n > 1:
                tps[kind].append((n - 1) / (times[-1] - times[0]))
    out["decode_tps_free"] = statistics.median(tps["free"])
    out["decode_tps_schema"] = statistics.median(tps["schema"])
    ttft = {"free": [], "schema": []}
    short = {"messages": msgs, "temperature": 0, "max_tokens": 2}
    for _ in range(reps):
        for kind in ("free", "schema"):
            if kind == "free":
                b = short
            else:
                fresh += 1
                b = dict(short, response_format={"type": "json_schema", "json_schema": {
                    "name": "store", "schema": schema(f"t{fresh}")}})
            t, _, _ = stream(port, b)
            ttft[kind].append(t)
    out["ttft_ms_free"] = 1000 * statistics.median(ttft["free"])
    out["ttft_ms_schema"] = 1000 * statistics.median(ttft["schema"])
    return out


def cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                f = set(line.split(":", 1)[1].split())
                return " ".join(x for x in ("avx2", "fma", "f16c", "avx512f", "avx512vnni") if x in f)
    except OSError:
        pass
    return "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gemma3-270m,qwen2.5-coder-0.5b")
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--llama-bin", default=os.path.join(HOME, ".cache/kiln/anchors/llama.cpp-0c1e57098/bin"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    print(f"cpu flags: {cpu_flags()}; load average: {os.getloadavg()}; threads {a.threads}")
    server = os.path.join(a.llama_bin, "llama-server")
    results = {}
    for name in a.models.split(","):
        path = subprocess.run([a.kiln, "pull", name], check=True, capture_output=True, text=True).stdout.strip()
        rows = {}
        port = 18290
        with open(os.devnull, "w") as log:
            # gemma3-270m is a base model without a chat template: kiln asks for one (llama-server
            # falls back to ChatML by itself), so both format the chat as ChatML.
            template = ["--chat-template", "chatml"] if name == "gemma3-270m" else []
            p = start([a.kiln, "serve", "-m", path, "--port", str(port), "--parallel", "1", "-t", str(a.threads),
                       "--ctx-size", "1024", "--device", "cpu"] + template, port, log)
            try:
                rows["kiln"] = measure(port, a.tokens, a.reps, False)
            finally:
                p.terminate()
                p.wait()
            if os.access(server, os.X_OK):
                p = start([server, "-m", path, "--port", str(port + 1), "-np", "1", "-t", str(a.threads),
                           "-c", "1024", "--jinja"], port + 1, log)
                try:
                    rows["llama-server"] = measure(port + 1, a.tokens, a.reps, True)
                finally:
                    p.terminate()
                    p.wait()
        results[name] = rows
        for who, r in rows.items():
            print(f"{name:20} {who:13} decode {r['decode_tps_free']:7.1f} tok/s free, "
                  f"{r['decode_tps_schema']:7.1f} with schema ({r['decode_tps_schema'] / r['decode_tps_free']:.3f}); "
                  f"TTFT {r['ttft_ms_free']:6.1f} ms free, {r['ttft_ms_schema']:6.1f} ms fresh schema "
                  f"(+{r['ttft_ms_schema'] - r['ttft_ms_free']:.1f} ms)")
        if "llama-server" not in rows:
            print(f"{name:20} llama-server: no binary at {server} (bash bench/build-llama-cpp.sh builds it)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu_flags": cpu_flags(), "threads": a.threads, "results": results}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
