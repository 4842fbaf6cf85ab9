#!/usr/bin/env python3
"""Load test of `kiln serve` (bounded, loopback only): many concurrent clients mixing
completions and chat, streaming and not, clients that disconnect mid-request, and malformed or
unauthorized requests.

Usage: load.py BASE_URL API_KEY SERVER_PID MODEL_ID CTX MAX_BODY [--clients 64] [--requests 500]
The server must already run at BASE_URL with --api-key API_KEY, --ctx-size CTX and
--max-body MAX_BODY (see run_load.sh); SERVER_PID is read for its resident memory.

What must hold (each is a failure otherwise):
  * no response has a 5xx status, and the server's own 5xx counters stay at zero;
  * every well-formed request is answered completely: a valid completion object, or a stream
    of valid chunks with exactly one finish_reason per choice that ends with `data: [DONE]`;
  * a streamed answer's text equals the non-streamed text of the same tokens; with --exact,
    greedy (and seeded) requests for the same prompt also give the same tokens whatever ran
    beside them (a shorter answer a prefix of a longer one): kiln's kernels give a token
    bit-identical results whatever its batch-mates (run_load.sh always passes --exact);
  * every malformed request gets its 4xx status with an OpenAI-shaped error body;
  * every client that disconnected was counted as a cancelled request by the server, and after
    the load no slot is busy and nothing is queued;
  * /health and /metrics answer throughout the load;
  * resident memory after the load (and a settle) is within the tolerance of the baseline
    measured after a warm-up that filled every KV cache the server may keep (see `warm_up`).
Only stdlib: http.client over raw sockets, so that disconnects and odd bodies are exact.
"""

import argparse
import http.client
import json
import random
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("base")
ap.add_argument("key")
ap.add_argument("pid", type=int)
ap.add_argument("model")
ap.add_argument("ctx", type=int)
ap.add_argument("max_body", type=int)
ap.add_argument("--clients", type=int, default=64)
ap.add_argument("--requests", type=int, default=500)
ap.add_argument("--slots", type=int, default=4, help="the server's --parallel")
ap.add_argument("--seed", type=int, default=4)
ap.add_argument("--exact", action="store_true",
                help="fail when the same request gives other tokens in another batch")
ARGS = ap.parse_args()

URL = urllib.parse.urlparse(ARGS.base)
HOST, PORT = URL.hostname, URL.port
assert HOST in ("127.0.0.1", "localhost", "::1"), "the load test runs on loopback only"
KEY = ARGS.key
TIMEOUT = 300  # seconds a single request may take before it counts as a hang

failures = []
fail_lock = threading.Lock()


def fail(msg):
    with fail_lock:
        failures.append(msg)
        if len(failures) <= 40:
            print("FAIL", msg, flush=True)


# ---------------------------------------------------------------- requests

COMPLETION_PROMPTS = [
    "The capital of France is",
    "def add(a, b):\n    return",
    "Once upon a time",
    "1, 2, 3, 4,",
    "The quick brown fox",
    "Q: What is the largest animal?\nA:",
    "import os\nimport sys\n",
    "Water boils at",
]
SYSTEM = "You are a terse assistant. Answer in one short sentence."
CHATS = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a color."}],
    [{"role": "user", "content": "Say hello."}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a fruit."}],
]


def auth(headers=None):
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    h.update(headers or {})
    return h


class Spec:
    """One request of the mix and what it must get back."""

    def __init__(self, kind, path, body, method="POST", headers=None, expect=200, **kw):
        self.kind, self.path, self.body, self.method = kind, path, body, method
        self.headers = auth() if headers is None else headers
        self.expect = expect
        self.kw = kw  # stream, chat, group key, max_tokens, chunked, ...


def well_formed(rng, i):
    chat = rng.random() < 0.45
    stream = rng.random() < 0.5
    max_tokens = rng.choice([2, 4, 6, 8])
    seeded = rng.random() < 0.25
    body = {"model": ARGS.model, "max_tokens": max_tokens, "stream": stream}
    if seeded:
        body.update(temperature=0.9, seed=rng.choice([1, 2]))
    else:
        body["temperature"] = 0
    if stream and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    if chat:
        which = rng.randrange(len(CHATS))
        body["messages"] = CHATS[which]
        path = "/v1/chat/completions"
    else:
        which = rng.randrange(len(COMPLETION_PROMPTS))
        body["prompt"] = COMPLETION_PROMPTS[which]
        path = "/v1/completions"
    if rng.random() < 0.1:
        del body["model"]  # optional
    group = (chat, which, body.get("seed"))
    return Spec("stream" if stream else "plain", path, json.dumps(body), stream=stream, chat=chat,
                group=group, max_tokens=max_tokens,
                include_usage="stream_options" in body)


def cancelling(rng, i):
    """A request long enough that the client is gone well before it could finish."""
    chat = i % 2 == 0
    stream = rng.random() < 0.75
    body = {"max_tokens": ARGS.ctx, "ignore_eos": True, "temperature": 0.7, "seed": i,
            "stream": stream}
    if chat:
        body["messages"] = CHATS[i % len(CHATS)]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = COMPLETION_PROMPTS[i % len(COMPLETION_PROMPTS)]
        path = "/v1/completions"
    return Spec("cancel", path, json.dumps(body), stream=stream, chat=chat,
                after=rng.uniform(0.05, 1.0))


def malformed(rng, i):
    """(body, status, expected error code or None); bodies are bytes."""
    C, M = "/v1/completions", "/v1/chat/completions"
    model = ARGS.model
    big = ARGS.max_body + 4096
    cases = [
        # invalid JSON
        ("invalid_json", C, b'{"prompt": "hi", "max_tokens": 4', 400, None),
        ("invalid_json", M, b"not json at all", 400, None),
        ("invalid_json", C, b"", 400, None),
        ("invalid_json", C, b'{"prompt": "\xff\xfe"}', 400, None),
        ("invalid_json", M, b'[{"role": "user", "content": "hi"}]', 400, None),
        # wrong types / values
        ("wrong_type", C, json.dumps({"prompt": "hi", "max_tokens": "ten"}).encode(), 400, None),
        ("wrong_type", C, json.dumps({"prompt": 42}).encode(), 400, None),
        ("wrong_type", C, json.dumps({"prompt": "hi", "temperature": "hot"}).encode(), 400, None),
        ("wrong_type", C, json.dumps({"prompt": "hi", "stream": "yes"}).encode(), 400, None),
        ("wrong_type", M, json.dumps({"messages": "hello"}).encode(), 400, None),
        ("wrong_type", M, json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), 400,
         None),
        ("wrong_value", C, json.dumps({"prompt": "hi", "max_tokens": -1}).encode(), 400, None),
        ("wrong_value", C, json.dumps({"prompt": "hi", "temperature": 7}).encode(), 400, None),
        ("wrong_value", M, json.dumps({"messages": CHATS[0], "n": 1000}).encode(), 400, None),
        ("wrong_value", C, json.dumps({"prompt": [1] * (ARGS.ctx + 1)}).encode(), 400,
         "context_length_exceeded"),
        # (no unknown-model case: with one model loaded any `model` name is served)
        # missing keys
        ("missing_key", C, json.dumps({"model": model, "max_tokens": 4}).encode(), 400, None),
        ("missing_key", M, json.dumps({"model": model}).encode(), 400, None),
        ("missing_key", M, json.dumps({"messages": []}).encode(), 400, None),
        # oversized bodies, with a Content-Length and chunked
        ("oversized", C, b'{"prompt": "' + b"a" * big + b'"}', 413, "request_too_large"),
        ("oversized_chunked", M, b'{"messages": "' + b"a" * big + b'"}', 413,
         "request_too_large"),
    ]
    kind, path, body, status, code = cases[i % len(cases)]
    return Spec(kind, path, body, expect=status, code=code, chunked=kind == "oversized_chunked")


def unauthorized(rng, i):
    body = json.dumps({"prompt": "hi", "max_tokens": 2})
    headers = [{"Content-Type": "application/json"},
               {"Content-Type": "application/json", "Authorization": "Bearer wrong-key"},
               {"Content-Type": "application/json", "Authorization": f"Basic {KEY}"}][i % 3]
    path = ["/v1/completions", "/v1/chat/completions", "/v1/models"][i % 3]
    method = "GET" if path == "/v1/models" else "POST"
    return Spec("unauthorized", path, None if method == "GET" else body, method=method,
                headers=headers, expect=401, code="invalid_api_key")


def plan(n, rng):
    n_cancel = max(1, n // 10)
    n_bad = max(1, n * 2 // 10)
    n_unauth = max(1, n // 25)
    n_misc = max(1, n // 50)
    n_good = n - n_cancel - n_bad - n_unauth - n_misc
    specs = [well_formed(rng, i) for i in range(n_good)]
    specs += [cancelling(rng, i) for i in range(n_cancel)]
    specs += [malformed(rng, i) for i in range(n_bad)]
    specs += [unauthorized(rng, i) for i in range(n_unauth)]
    for i in range(n_misc):
        if i % 2:
            specs.append(Spec("models", "/v1/models", None, method="GET"))
        else:
            specs.append(Spec("bad_path", "/v1/nope", b"{}", expect=404))
    rng.shuffle(specs)
    return specs


# ---------------------------------------------------------------- client side

def connect():
    return http.client.HTTPConnection(HOST, PORT, timeout=TIMEOUT)


def send(conn, spec):
    body = spec.body.encode() if isinstance(spec.body, str) else spec.body
    if spec.kw.get("chunked"):
        pieces = [body[i:i + 16384] for i in range(0, len(body), 16384)]
        conn.request(spec.method, spec.path, iter(pieces), spec.headers, encode_chunked=True)
    else:
        conn.request(spec.method, spec.path, body, spec.headers)


def check_error_body(spec, status, raw):
    try:
        err = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return fail(f"{spec.kind} {spec.path}: error body not in OpenAI's shape: {raw[:200]!r}")
    if not (isinstance(err.get("message"), str) and err["message"]
            and isinstance(err.get("type"), str) and "param" in err and "code" in err):
        fail(f"{spec.kind}: error object lacks message/type/param/code: {err}")
    if spec.kw.get("code") and err.get("code") != spec.kw["code"]:
        fail(f"{spec.kind}: error code {err.get('code')!r}, expected {spec.kw['code']!r}")


def check_choice_end(spec, where, finish, token_ids):
    if finish not in ("stop", "length"):
        fail(f"{where}: finish_reason {finish!r}")
    if not isinstance(token_ids, list) or not 1 <= len(token_ids) <= spec.kw["max_tokens"]:
        fail(f"{where}: token_ids {token_ids!r} (max_tokens {spec.kw['max_tokens']})")
    elif finish == "length" and len(token_ids) != spec.kw["max_tokens"]:
        fail(f"{where}: finish 'length' after {len(token_ids)} of {spec.kw['max_tokens']} tokens")


def read_plain(spec, resp, results):
    raw = resp.read()
    where = f"{spec.path} non-stream"
    try:
        obj = json.loads(raw)
        ch = obj["choices"]
        want = "chat.completion" if spec.kw["chat"] else "text_completion"
        if obj["object"] != want or len(ch) != 1 or ch[0]["index"] != 0:
            return fail(f"{where}: bad object {raw[:300]!r}")
        c = ch[0]
        if spec.kw["chat"]:
            text = c["message"]["content"]
            if c["message"]["role"] != "assistant":
                fail(f"{where}: role {c['message']['role']!r}")
        else:
            text = c["text"]
        if not isinstance(text, str):
            return fail(f"{where}: text {text!r}")
        check_choice_end(spec, where, c["finish_reason"], c["token_ids"])
        u = obj["usage"]
        if u["completion_tokens"] != len(c["token_ids"]) or \
                u["prompt_tokens"] != len(c["prompt_token_ids"]) or \
                u["total_tokens"] != u["prompt_tokens"] + u["completion_tokens"]:
            fail(f"{where}: usage {u} vs ids")
        results[spec.kw["group"]].append((c["token_ids"], text))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        fail(f"{where}: {e!r} in {raw[:300]!r}")


def sse_lines(resp):
    for raw in resp:
        line = raw.decode("utf-8")
        if line.strip():
            yield line.rstrip("\r\n")


def read_stream(spec, resp, results):
    where = f"{spec.path} stream"
    if not resp.getheader("Content-Type", "").startswith("text/event-stream"):
        return fail(f"{where}: content type {resp.getheader('Content-Type')!r}")
    text, finish, token_ids, usage, done, role = "", None, None, None, False, None
    n_finish = 0
    want = "chat.completion.chunk" if spec.kw["chat"] else "text_completion"
    try:
        for line in sse_lines(resp):
            if done:
                return fail(f"{where}: data after [DONE]: {line!r}")
            if not line.startswith("data: "):
                return fail(f"{where}: not an SSE data line: {line!r}")
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            obj = json.loads(data)
            if "error" in obj:
                return fail(f"{where}: error in stream: {obj}")
            if obj.get("object") != want:
                return fail(f"{where}: chunk object {obj.get('object')!r}")
            if obj.get("usage"):
                usage = obj["usage"]
                if obj["choices"]:
                    fail(f"{where}: usage chunk with choices")
                continue
            for c in obj["choices"]:
                if c["index"] != 0:
                    fail(f"{where}: choice index {c['index']}")
                if spec.kw["chat"]:
                    d = c["delta"]
                    role = role or d.get("role")
                    text += d.get("content") or ""
                else:
                    text += c["text"]
                if c.get("finish_reason") is not None:
                    n_finish += 1
                    finish = c["finish_reason"]
                    token_ids = c.get("token_ids")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return fail(f"{where}: {e!r}")
    if not done:
        return fail(f"{where}: the stream ended without data: [DONE]")
    if n_finish != 1:
        return fail(f"{where}: {n_finish} chunks with a finish_reason")
    if spec.kw["chat"] and role != "assistant":
        fail(f"{where}: no assistant role delta")
    check_choice_end(spec, where, finish, token_ids)
    if spec.kw["include_usage"]:
        if not usage or usage.get("completion_tokens") != len(token_ids or []):
            fail(f"{where}: usage {usage} vs {len(token_ids or [])} tokens")
    elif usage:
        fail(f"{where}: usage chunk not asked for")
    results[spec.kw["group"]].append((token_ids, text))


def run_cancel(spec, conn):
    """Sends, reads a little (stream) or nothing (non-stream), then drops the connection."""
    send(conn, spec)
    sock = conn.sock
    if spec.kw["stream"]:
        resp = conn.getresponse()
        if resp.status != 200:
            fail(f"cancel {spec.path}: status {resp.status}")
            return resp.status
        deadline = time.time() + spec.kw["after"]
        for line in sse_lines(resp):
            if line.startswith("data: ") and time.time() >= deadline:
                break
            if line == "data: [DONE]":
                fail(f"cancel {spec.path}: the stream finished; it should have outlived the client")
                break
        status = resp.status
    else:
        time.sleep(spec.kw["after"])
        status = 0  # never read
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
    return status


def run_one(spec, results, statuses):
    conn = connect()
    try:
        if spec.kind == "cancel":
            statuses[(spec.kind, run_cancel(spec, conn))] += 1
            return
        try:
            send(conn, spec)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a refused oversized body: the response is still there to read
        resp = conn.getresponse()
        statuses[(spec.kind, resp.status)] += 1
        if resp.status >= 500:
            fail(f"{spec.kind} {spec.path}: status {resp.status}: {resp.read()[:300]!r}")
            return
        if resp.status != spec.expect:
            fail(f"{spec.kind} {spec.path}: status {resp.status}, expected {spec.expect}: "
                 f"{resp.read()[:300]!r}")
            return
        if spec.expect != 200:
            check_error_body(spec, resp.status, resp.read())
            if resp.status == 413 and "oversized" not in spec.kind:
                fail("413 for a small body")
        elif spec.kind == "models":
            obj = json.loads(resp.read())
            # The served id (the first --alias) comes first; the file name follows it.
            if [m["id"] for m in obj["data"]][:1] != [ARGS.model]:
                fail(f"/v1/models: {obj}")
        elif spec.kw["stream"]:
            read_stream(spec, resp, results)
        else:
            read_plain(spec, resp, results)
    except (OSError, http.client.HTTPException) as e:
        fail(f"{spec.kind} {spec.method} {spec.path}: {type(e).__name__}: {e}")
    finally:
        conn.close()


def run_all(specs, clients):
    results = defaultdict(list)
    statuses = Counter()
    lock = threading.Lock()
    todo = list(reversed(specs))

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                spec = todo.pop()
            run_one(spec, results, statuses)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
        if t.is_alive():
            fail("a client thread hung")
    return results, statuses


def get(path, auth_header=True):
    conn = connect()
    conn.timeout = 30
    try:
        conn.request("GET", path, headers=auth() if auth_header else {})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def health():
    s, body = get("/health", auth_header=False)
    if s != 200:
        raise RuntimeError(f"/health {s}")
    return json.loads(body)


def metrics():
    s, body = get("/metrics")
    if s != 200:
        raise RuntimeError(f"/metrics {s}")
    out = {}
    for line in body.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? ([-+0-9.eEinfINFaN]+)$", line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def rss_kib():
    with open(f"/proc/{ARGS.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settle(deadline_s=120):
    """Waits until no slot is busy and nothing is queued."""
    t0 = time.time()
    while time.time() - t0 < deadline_s:
        h = health()
        if h["slots_processing"] == 0 and h["queued"] == 0:
            return h
        time.sleep(0.2)
    fail(f"the server is still busy {deadline_s}s after the load: {health()}")
    return health()


class Monitor(threading.Thread):
    """Polls /health and /metrics during the load; each must answer (30 s socket timeout)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.polls = 0
        self.max_s = 0.0
        self.peak_rss = 0

    def run(self):
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                health()
                metrics()
                self.polls += 1
            except (OSError, RuntimeError, http.client.HTTPException, ValueError) as e:
                fail(f"/health or /metrics during the load: {e!r}")
            self.max_s = max(self.max_s, time.perf_counter() - t0)
            self.peak_rss = max(self.peak_rss, rss_kib())
            self.stop.wait(0.25)


def five_xx(m):
    return sum(v for k, v in m.items() if k.startswith("kiln_http_responses_total")
               and re.search(r'status="5\d\d"', k))


def check_consistency(results):
    """Same tokens → same text, streamed or not; with --exact, same prompt and sampling → same
    tokens whatever the batch (a shorter answer a prefix of the longest)."""
    compared, differ = 0, 0
    for group, outs in results.items():
        texts = {}
        for ids, text in outs:
            if texts.setdefault(tuple(ids), text) != text:
                fail(f"group {group}: tokens {ids} gave texts {text!r} and {texts[tuple(ids)]!r}")
        outs = sorted(outs, key=lambda o: len(o[0]))
        longest = outs[-1][0]
        for ids, _ in outs:
            compared += 1
            if longest[:len(ids)] != ids:
                differ += 1
                if ARGS.exact:
                    fail(f"group {group}: tokens {ids} are not a prefix of {longest}")
    if differ and not ARGS.exact:
        print(f"info: {differ} of {compared} answers differ from another answer to the same "
              "request in another batch (--exact makes this a failure)")
    return compared


def warm_up(rng):
    """Brings the server to the state it keeps between loads, so that the baseline is fair.

    The server keeps, by design, up to `slots` finished KV caches for prefix reuse (the pool),
    each sized for prompt + answer (capped at the context), and every running sequence owns one.
    Two waves of `slots` distinct prompts of ctx - 8 tokens (8 generated) fill the pool with
    full-context caches and make the allocator hold `2 × slots` of them at the peak, which is
    the most the load can make it hold. Then one round of the load's own mix warms the HTTP
    side (64 connections, buffers, thread-local arenas).
    """
    for wave in range(2):
        specs = []
        for i in range(ARGS.slots):
            ids = [(wave * 97 + i * 31 + j * 7) % 5000 + 100 for j in range(ARGS.ctx - 8)]
            body = json.dumps({"prompt": ids, "max_tokens": 8, "ignore_eos": True,
                               "temperature": 0})
            specs.append(Spec("plain", "/v1/completions", body, stream=False, chat=False,
                              group=("warm", wave, i), max_tokens=8))
        run_all(specs, ARGS.slots)
    run_all(plan(min(ARGS.requests, ARGS.clients), random.Random(rng.random())), ARGS.clients)


def main():
    rng = random.Random(ARGS.seed)
    t_start = time.time()
    h0 = health()
    if h0["slots_idle"] != ARGS.slots:
        fail(f"--slots {ARGS.slots} but the server has {h0}")
    print(f"rss at start: {rss_kib() / 1024:.1f} MiB", flush=True)
    warm_up(rng)
    settle()
    time.sleep(1.0)
    base_rss = rss_kib()
    m0 = metrics()
    warm_failures = len(failures)
    print(f"warm-up done in {time.time() - t_start:.1f}s; baseline rss {base_rss / 1024:.1f} MiB",
          flush=True)

    specs = plan(ARGS.requests, rng)
    kinds = Counter(s.kind for s in specs)
    print(f"{len(specs)} requests from {ARGS.clients} clients: {dict(kinds)}", flush=True)
    mon = Monitor()
    mon.start()
    t0 = time.time()
    results, statuses = run_all(specs, ARGS.clients)
    wall = time.time() - t0
    mon.stop.set()
    mon.join()
    print(f"load done in {wall:.1f}s; /health+/metrics polled {mon.polls} times during it "
          f"(slowest {mon.max_s:.2f}s); peak rss {mon.peak_rss / 1024:.1f} MiB", flush=True)
    print("statuses:", dict(sorted(statuses.items(), key=str)), flush=True)

    # Slots are freed and counters agree.
    h = settle()
    time.sleep(2.0)
    m1 = metrics()
    d = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1}
    if five_xx(m1):
        fail(f"the server counted {five_xx(m1)} 5xx responses")
    if any(status >= 500 for (_, status) in statuses):
        fail("a 5xx status was seen")
    # A streaming client that disconnects had its request accepted (it got its 200 first), so
    # the server must count it cancelled; a non-streaming one may leave before the server even
    # parsed its request. None of them may run to the end (finished counts only well-formed).
    n_cancel = kinds["cancel"]
    n_cancel_stream = statuses[("cancel", 200)]
    cancelled = d["kiln_requests_cancelled_total"]
    if not n_cancel_stream <= cancelled <= n_cancel:
        fail(f"{n_cancel} clients disconnected ({n_cancel_stream} mid-stream) but the server "
             f"cancelled {cancelled:.0f} requests")
    accepted = d["kiln_requests_total"]
    if accepted != d["kiln_requests_finished_total"] + cancelled:
        fail(f"requests {accepted:.0f} != finished {d['kiln_requests_finished_total']:.0f} + "
             f"cancelled {cancelled:.0f}")
    n_ok = kinds["plain"] + kinds["stream"]
    if d["kiln_requests_finished_total"] != n_ok:
        fail(f"{n_ok} well-formed requests but {d['kiln_requests_finished_total']:.0f} finished")
    answered = sum(len(v) for v in results.values())
    if answered != n_ok:
        fail(f"{answered} of {n_ok} well-formed requests answered completely")
    if m1.get("kiln_running_sequences") != 0 or m1.get("kiln_queue_depth") != 0:
        fail(f"after the load: running {m1.get('kiln_running_sequences')}, "
             f"queued {m1.get('kiln_queue_depth')}")
    if h["slots_idle"] != ARGS.slots:
        fail(f"after the load /health says {h}")
    compared = check_consistency(results)

    # Memory back to the baseline.
    time.sleep(2.0)
    rss = rss_kib()
    tolerance = max(base_rss // 10, 16 * 1024)
    print(f"rss: baseline {base_rss / 1024:.1f} MiB, peak {mon.peak_rss / 1024:.1f} MiB, "
          f"after {rss / 1024:.1f} MiB (allowed ≤ {(base_rss + tolerance) / 1024:.1f} MiB)",
          flush=True)
    if rss > base_rss + tolerance:
        fail(f"resident memory {rss / 1024:.1f} MiB after the load, baseline "
             f"{base_rss / 1024:.1f} MiB (+{tolerance / 1024:.1f} MiB allowed)")

    print(f"checked: {n_ok} well-formed answered, {compared} compared across batches, "
          f"{n_cancel} disconnects → {cancelled:.0f} cancelled, "
          f"{kinds['unauthorized'] + sum(v for k, v in kinds.items() if k not in ('plain', 'stream', 'cancel', 'models', 'unauthorized'))} "
          f"refused with 4xx; {d.get('kiln_generated_tokens_total', 0):.0f} tokens generated; "
          f"total {time.time() - t_start:.1f}s")
    if warm_failures:
        print(f"({warm_failures} failures happened during the warm-up)")
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
