#!/usr/bin/env python3
"""Independent float32 numpy re-implementation of the Hugging Face transformers causal-LM forward pass.

Reads an HF model directory (config.json + model.safetensors) and computes logits the way
`AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32, attn_implementation="eager")` does on CPU,
for the architectures kiln supports from HF directories:

* `llama`, `mistral`, `qwen2`: RMSNorm `w * (x * rsqrt(mean(x^2) + eps))`, rotate-half RoPE (default or
  `llama3` scaling), GQA, optional q/k/v (and o) biases, optional sliding window (key j visible from query i
  iff `i - window < j <= i`), SiLU-gated MLP, tied or untied lm_head.
* `gemma3_text`: embeddings times `sqrt(hidden_size)` (cast to float32), RMSNorm `x * rsqrt(mean(x^2) + eps) * (1 + w)`,
  per-head q_norm / k_norm before RoPE, scores scaled by `query_pre_attn_scalar ** -0.5`, optional attention logit
  soft-capping, pre/post attention and pre/post feed-forward norms, GELU(tanh)-gated MLP, per-layer
  sliding/full attention (`layer_types`, or legacy `sliding_window_pattern`), RoPE theta per layer type
  (transformers-5 `rope_parameters: {full_attention: {...}, sliding_attention: {...}}`, or legacy
  `rope_theta` + `rope_local_base_freq`), tied lm_head, optional final logit soft-capping.

config.json may be in the transformers-5 form (`rope_parameters`) or the transformers-4 form (`rope_theta`,
`rope_scaling`). model.safetensors is parsed here with json + numpy (F32, F16, BF16); weights are upcast to float32
exactly as `dtype=torch.float32` loading does.

Written from the documented semantics and transformers' modeling_llama / modeling_mistral / modeling_qwen2 /
modeling_gemma3 / masking_utils / modeling_rope_utils source (read, not copied).

`python reference.py --self-check` re-computes the shared transformers goldens
(tests/data/fixtures/golden/{llama-mha,qwen2-tiny}.json, or --fixtures DIR) with this code and asserts
last_logits / top5 values / token_logprobs within 2e-5 and greedy ids exactly, for both config forms.
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np

F32 = np.float32

# ------------------------------------------------------------------------------------------- safetensors

_ST_DTYPES = {"F32": (np.dtype("<f4"), 4), "F16": (np.dtype("<f2"), 2), "BF16": (np.dtype("<u2"), 2)}


def load_safetensors(path):
    """Parse a .safetensors file: u64 LE header length, JSON header, raw little-endian data.

    Returns {name: float32 ndarray} (F16 / BF16 upcast exactly) and {name: dtype string}."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    out, dtypes = {}, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _ST_DTYPES:
            raise ValueError(f"{name}: unsupported dtype {dt}")
        npdt, size = _ST_DTYPES[dt]
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if end - start != count * size:
            raise ValueError(f"{name}: byte size {end - start} does not match shape {shape} x {size}")
        raw = np.frombuffer(blob, dtype=npdt, count=count, offset=base + start)
        if dt == "BF16":
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = raw.astype(np.float32)
        out[name] = arr.reshape(shape).copy()
        dtypes[name] = dt
    return out, dtypes


def round_to_dtype(a, dt):
    """Round float32 values to F32 / F16 / BF16 (round to nearest even); returns (float32 values, raw bytes)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dt == "F32":
        return a.copy(), a.astype("<f4").tobytes()
    if dt == "F16":
        h = a.astype("<f2")
        return h.astype(np.float32), h.tobytes()
    if dt == "BF16":
        bits = a.view(np.uint32).astype(np.uint64)
        assert np.all(np.isfinite(a))
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        back = (rounded.astype(np.uint32) << 16).view(np.float32)
        return back.reshape(a.shape), rounded.astype("<u2").tobytes()
    raise ValueError(dt)


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: (raw bytes, dtype string, shape)}; written sorted by name, header padded to 8 bytes."""
    header, offset, chunks = {}, 0, []
    if metadata is not None:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        raw, dt, shape = tensors[name]
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        chunks.append(raw)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for c in chunks:
            f.write(c)


# ----------------------------------------------------------------------------------------------- config

SUPPORTED = ("llama", "mistral", "qwen2", "gemma3_text")


def _inv_freq(rp, head_dim):
    """Inverse RoPE frequencies (float32) for one rope parameter dict {rope_type, rope_theta, ...}."""
    rtype = rp.get("rope_type", rp.get("type", "default")) or "default"
    theta = float(rp["rope_theta"])
    # transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in float32
    expo = (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / F32(head_dim)).astype(np.float32)
    powed = np.power(np.float64(F32(theta)), expo.astype(np.float64)).astype(np.float32)
    inv = (F32(1.0) / powed).astype(np.float32)
    if rtype == "default":
        return inv
    if rtype == "llama3":
        factor = float(rp["factor"])
        lo = float(rp["low_freq_factor"])
        hi = float(rp["high_freq_factor"])
        old = float(rp["original_max_position_embeddings"])
        low_wavelen = old / lo
        high_wavelen = old / hi
        wavelen = (F32(2 * math.pi) / inv).astype(np.float32)
        # long wavelengths (low frequencies) are divided by factor, short ones kept, the band between interpolated
        scaled = np.where(wavelen > low_wavelen, inv / F32(factor), inv).astype(np.float32)
        smooth = ((F32(old) / wavelen - F32(lo)) / F32(hi - lo)).astype(np.float32)
        smoothed = ((F32(1) - smooth) * scaled / F32(factor) + smooth * scaled).astype(np.float32)
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise NotImplementedError(f"rope_type {rtype!r}")


class Cfg:
    """Normalised view of config.json (both transformers-5 and legacy transformers-4 forms)."""

    def __init__(self, c):
        self.raw = c
        mt = c.get("model_type")
        if mt not in SUPPORTED:
            raise NotImplementedError(f"model_type {mt!r}")
        self.model_type = mt
        self.gemma = mt == "gemma3_text"
        self.hidden = c["hidden_size"]
        self.n_layers = c["num_hidden_layers"]
        self.n_heads = c["num_attention_heads"]
        self.n_kv = c.get("num_key_value_heads") or self.n_heads
        self.head_dim = c.get("head_dim") or self.hidden // self.n_heads
        self.eps = float(c["rms_norm_eps"])
        self.vocab = c["vocab_size"]
        self.tie = bool(c.get("tie_word_embeddings", self.gemma))
        act = c.get("hidden_activation") if self.gemma else c.get("hidden_act", "silu")
        self.act = act or ("gelu_pytorch_tanh" if self.gemma else "silu")
        if self.act not in ("silu", "gelu_pytorch_tanh"):
            raise NotImplementedError(self.act)
        if self.gemma:
            self.scale = float(c.get("query_pre_attn_scalar", 256)) ** -0.5
            self.attn_softcap = c.get("attn_logit_softcapping")
            self.final_softcap = c.get("final_logit_softcapping")
        else:
            self.scale = self.head_dim**-0.5
            self.attn_softcap = None
            self.final_softcap = None

        # ---- sliding window and layer types
        window = c.get("sliding_window")
        if mt == "qwen2" and not c.get("use_sliding_window", False):
            window = None
        if mt == "llama":
            window = None
        self.window = window
        lt = c.get("layer_types")
        if lt is None:
            if self.gemma:
                pat = c.get("sliding_window_pattern", c.get("_sliding_window_pattern", 6))
                lt = ["sliding_attention" if (i + 1) % pat else "full_attention" for i in range(self.n_layers)]
            elif mt == "qwen2":
                mwl = c.get("max_window_layers", self.n_layers)
                lt = [
                    "sliding_attention" if window is not None and i >= mwl else "full_attention"
                    for i in range(self.n_layers)
                ]
            else:  # mistral: every layer uses the window when one is set
                lt = ["sliding_attention" if window is not None else "full_attention"] * self.n_layers
        if len(lt) != self.n_layers or any(t not in ("full_attention", "sliding_attention") for t in lt):
            raise ValueError(f"bad layer_types {lt}")
        self.layer_types = list(lt)

        # ---- rope parameters per layer type
        rp = c.get("rope_parameters")
        default_theta = {"full_attention": 1e6, "sliding_attention": 1e4} if self.gemma else None
        per_type = {}
        if rp is not None and ("full_attention" in rp or "sliding_attention" in rp):
            for t in ("full_attention", "sliding_attention"):
                d = dict(rp.get(t) or {"rope_type": "default"})
                if "rope_theta" not in d:
                    d["rope_theta"] = default_theta[t] if default_theta else 10000.0
                per_type[t] = d
        elif rp is not None:
            d = dict(rp)
            d.setdefault("rope_theta", c.get("rope_theta", 10000.0))
            per_type = {"full_attention": d, "sliding_attention": d}
        else:  # legacy form
            full = {"rope_type": "default"}
            rs = c.get("rope_scaling")
            if rs:
                full.update(rs)
                if "type" in full and "rope_type" not in full:
                    full["rope_type"] = full.pop("type")
            full["rope_theta"] = c.get("rope_theta", default_theta["full_attention"] if self.gemma else 10000.0)
            if self.gemma:
                local = {"rope_type": "default", "rope_theta": c.get("rope_local_base_freq", 1e4)}
            else:
                local = full
            per_type = {"full_attention": full, "sliding_attention": local}
        if self.gemma and rp is not None and "full_attention" not in rp and "sliding_attention" not in rp:
            # flat rope_parameters on a gemma3 config: local layers still use rope_local_base_freq
            per_type["sliding_attention"] = {"rope_type": "default", "rope_theta": c.get("rope_local_base_freq", 1e4)}
        self.rope = per_type
        self.inv_freq = {t: _inv_freq(p, self.head_dim) for t, p in per_type.items()}


# ---------------------------------------------------------------------------------------------- forward


def _rms(x, w, eps, gemma):
    var = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    y = x * (F32(1.0) / np.sqrt(var + F32(eps))).astype(np.float32)
    if gemma:
        return (y * (F32(1.0) + w)).astype(np.float32)
    return (w * y).astype(np.float32)


def _act(x, kind):
    if kind == "silu":
        return (x / (F32(1.0) + np.exp(-x))).astype(np.float32)
    # gelu, tanh approximation (torch gelu(approximate="tanh"))
    inner = F32(math.sqrt(2.0 / math.pi)) * (x + F32(0.044715) * x * x * x)
    return (F32(0.5) * x * (F32(1.0) + np.tanh(inner))).astype(np.float32)


def _lin(sd, x, name):
    y = x @ sd[name + ".weight"].T
    b = sd.get(name + ".bias")
    return (y + b if b is not None else y).astype(np.float32)


def _rope_tables(inv, positions):
    freqs = (positions.astype(np.float32)[:, None] * inv[None, :]).astype(np.float32)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def _apply_rope(x, cos, sin):
    # x: [T, H, hd]; rotate_half pairs element j with element j + hd/2
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos[:, None, :] + rot * sin[:, None, :]).astype(np.float32)


def _softmax(s):
    m = np.max(s, axis=-1, keepdims=True)
    e = np.exp(s - m)
    return (e / np.sum(e, axis=-1, keepdims=True, dtype=np.float32)).astype(np.float32)


def forward(sd, cfg, tokens, overrides=None):
    """Logits [T, vocab] (float32) for token ids `tokens` at positions 0..T-1.

    overrides (for sensitivity checks only): {"no_window": True} ignores sliding windows,
    {"inv_freq": {type: array}} replaces RoPE frequencies, {"scale": float} replaces the score scale,
    {"kv_interleaved": True} maps query head h to kv head h % n_kv (a wrong GQA grouping)."""
    ov = overrides or {}
    tokens = np.asarray(tokens, dtype=np.int64)
    T = tokens.shape[0]
    nh, nkv, hd = cfg.n_heads, cfg.n_kv, cfg.head_dim
    g = cfg.gemma
    pos = np.arange(T)
    inv = ov.get("inv_freq", cfg.inv_freq)
    tables = {t: _rope_tables(inv[t], pos) for t in set(cfg.layer_types)}
    causal = pos[None, :] <= pos[:, None]
    masks = {"full_attention": causal}
    if cfg.window is not None and not ov.get("no_window"):
        masks["sliding_attention"] = causal & (pos[None, :] > pos[:, None] - cfg.window)
    else:
        masks["sliding_attention"] = causal
    scale = F32(ov.get("scale", cfg.scale))

    emb = sd["model.embed_tokens.weight"]
    h = emb[tokens].astype(np.float32)
    if g:
        h = (h * F32(math.sqrt(cfg.hidden))).astype(np.float32)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        lt = cfg.layer_types[i]
        cos, sin = tables[lt]
        x = _rms(h, sd[p + "input_layernorm.weight"], cfg.eps, g)
        q = _lin(sd, x, p + "self_attn.q_proj").reshape(T, nh, hd)
        k = _lin(sd, x, p + "self_attn.k_proj").reshape(T, nkv, hd)
        v = _lin(sd, x, p + "self_attn.v_proj").reshape(T, nkv, hd)
        if g:
            q = _rms(q, sd[p + "self_attn.q_norm.weight"], cfg.eps, True)
            k = _rms(k, sd[p + "self_attn.k_norm.weight"], cfg.eps, True)
        q = _apply_rope(q, cos, sin)
        k = _apply_rope(k, cos, sin)
        rep = nh // nkv
        out = np.empty((T, nh, hd), dtype=np.float32)
        for hh in range(nh):
            kv = hh // rep  # query head hh uses kv head hh // (n_heads / n_kv_heads)
            if ov.get("kv_interleaved"):
                kv = hh % nkv
            s = (q[:, hh, :] @ k[:, kv, :].T).astype(np.float32) * scale
            if cfg.attn_softcap is not None:
                c = F32(cfg.attn_softcap)
                s = (np.tanh(s / c) * c).astype(np.float32)
            s = np.where(masks[lt], s, F32(-np.inf))
            out[:, hh, :] = _softmax(s) @ v[:, kv, :]
        a = _lin(sd, out.reshape(T, nh * hd), p + "self_attn.o_proj")
        if g:
            a = _rms(a, sd[p + "post_attention_layernorm.weight"], cfg.eps, True)
            h = (h + a).astype(np.float32)
            x = _rms(h, sd[p + "pre_feedforward_layernorm.weight"], cfg.eps, True)
        else:
            h = (h + a).astype(np.float32)
            x = _rms(h, sd[p + "post_attention_layernorm.weight"], cfg.eps, False)
        m = _act(_lin(sd, x, p + "mlp.gate_proj"), cfg.act) * _lin(sd, x, p + "mlp.up_proj")
        m = _lin(sd, m.astype(np.float32), p + "mlp.down_proj")
        if g:
            m = _rms(m, sd[p + "post_feedforward_layernorm.weight"], cfg.eps, True)
        h = (h + m).astype(np.float32)
    h = _rms(h, sd["model.norm.weight"], cfg.eps, g)
    if cfg.tie:
        if "lm_head.weight" in sd:
            raise ValueError("tie_word_embeddings is true but lm_head.weight is present")
        w_out = emb
    else:
        w_out = sd["lm_head.weight"]
    logits = (h @ w_out.T).astype(np.float32)
    if cfg.final_softcap is not None:
        c = F32(cfg.final_softcap)
        logits = (np.tanh(logits / c) * c).astype(np.float32)
    return logits


def log_softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    s = x - m
    return (s - np.log(np.sum(np.exp(s), axis=-1, keepdims=True, dtype=np.float32))).astype(np.float32)


def greedy(sd, cfg, ids, n, eos_id):
    """Argmax loop with full recompute every step; stops after eos (kept) unless eos_id is None."""
    cur = list(ids)
    new, gaps = [], []
    for _ in range(n):
        last = forward(sd, cfg, cur)[-1]
        order = np.argsort(-last, kind="stable")
        nxt = int(order[0])
        gaps.append(float(last[order[0]]) - float(last[order[1]]))
        new.append(nxt)
        cur.append(nxt)
        if eos_id is not None and nxt == eos_id:
            break
    return new, gaps


def load_model(model_dir, config_name="config.json"):
    with open(os.path.join(model_dir, config_name)) as f:
        cfg = Cfg(json.load(f))
    sd, dtypes = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    return sd, cfg, dtypes


def f32list(a):
    return [float(v) for v in np.asarray(a, dtype=np.float32).astype(np.float64)]


def prompt_outputs(sd, cfg, ids, eos_id, n_new=20):
    """Everything the golden files hold for one prompt."""
    logits = forward(sd, cfg, ids)
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
    lp = log_softmax(logits)
    tgt = np.asarray(ids[1:])
    token_lp = lp[np.arange(len(ids) - 1), tgt]
    # generation that ignores eos; the eos-stopping run is its prefix up to and including the first eos
    new_ids_noeos, gaps_noeos = greedy(sd, cfg, ids, n_new, None)
    cut = new_ids_noeos.index(eos_id) + 1 if eos_id in new_ids_noeos else len(new_ids_noeos)
    new_ids, gaps = new_ids_noeos[:cut], gaps_noeos[:cut]
    return {
        "logits": logits,
        "last_logits": f32list(logits[-1]),
        "top5": [[[int(j), float(np.float32(logits[t, j]))] for j in order[t]] for t in range(len(ids))],
        "token_logprobs": f32list(token_lp),
        "sum_logprob": float(token_lp.astype(np.float64).sum()),
        "greedy": {
            "new_ids": new_ids,
            "n_new": len(new_ids),
            "stopped_on_eos": eos_id in new_ids,
            "min_top1_top2_gap": min(gaps),
            "top1_top2_gaps": gaps,
            "new_ids_ignore_eos": new_ids_noeos,
            "min_top1_top2_gap_ignore_eos": min(gaps_noeos),
        },
    }


# ------------------------------------------------------------------------------------------- self check


def compare_with_golden(sd, cfg, golden):
    """Max abs diffs of this reference vs a transformers golden file; greedy ids must be equal."""
    eos = golden["tokenizer"]["eos_token_id"]
    d = {"last_logits": 0.0, "top5": 0.0, "token_logprobs": 0.0}
    greedy_equal = True
    for p in golden["prompts"]:
        ids = p["input_ids"]
        r = prompt_outputs(sd, cfg, ids, eos)
        d["last_logits"] = max(d["last_logits"], float(np.max(np.abs(np.array(r["last_logits"]) - p["last_logits"]))))
        for t, (mine, ref) in enumerate(zip(r["top5"], p["top5"])):
            # compare values by rank, and the logit of each reference id in our logits (robust to near-ties)
            mv = np.array([v for _, v in mine])
            rv = np.array([v for _, v in ref])
            d["top5"] = max(d["top5"], float(np.max(np.abs(mv - rv))))
            ours_at_ref_ids = r["logits"][t, [i for i, _ in ref]]
            d["top5"] = max(d["top5"], float(np.max(np.abs(ours_at_ref_ids - rv))))
        d["token_logprobs"] = max(
            d["token_logprobs"], float(np.max(np.abs(np.array(r["token_logprobs"]) - p["token_logprobs"])))
        )
        g, rg = r["greedy"], p["greedy"]
        if g["new_ids"] != rg["new_ids"] or g["new_ids_ignore_eos"] != rg["new_ids_ignore_eos"]:
            greedy_equal = False
            print("greedy mismatch", golden["model"], p["name"], g["new_ids"], rg["new_ids"], file=sys.stderr)
    d["greedy_ids_equal"] = greedy_equal
    return d


def self_check(fixtures, tol=2e-5):
    results = {}
    ok = True
    for name in ("llama-mha", "qwen2-tiny"):
        with open(os.path.join(fixtures, "golden", name + ".json")) as f:
            golden = json.load(f)
        model_dir = os.path.join(fixtures, name)
        sd, _ = load_safetensors(os.path.join(model_dir, "model.safetensors"))
        for form, path in (
            ("config.json", os.path.join(model_dir, "config.json")),
            ("legacy", os.path.join(fixtures, "legacy-configs", name + ".config.json")),
        ):
            with open(path) as f:
                cfg = Cfg(json.load(f))
            d = compare_with_golden(sd, cfg, golden)
            results[f"{name} ({form})"] = d
            good = d["greedy_ids_equal"] and all(d[k] <= tol for k in ("last_logits", "top5", "token_logprobs"))
            ok &= good
            print(
                f"{name:10s} {form:11s} max|dlast_logits|={d['last_logits']:.3e} max|dtop5|={d['top5']:.3e} "
                f"max|dtoken_logprobs|={d['token_logprobs']:.3e} greedy_equal={d['greedy_ids_equal']} "
                f"{'OK' if good else 'FAIL'}"
            )
    return ok, results


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--self-check", action="store_true", help="reproduce the shared transformers goldens")
    ap.add_argument("--fixtures", default=os.path.normpath(os.path.join(here, "..", "data", "fixtures")))
    ap.add_argument("--model", help="HF model dir: print top-5 at the last position for --ids")
    ap.add_argument("--config", default="config.json")
    ap.add_argument("--ids", help="comma separated token ids")
    a = ap.parse_args()
    if a.self_check:
        ok, _ = self_check(a.fixtures)
        print("self-check", "PASSED" if ok else "FAILED")
        sys.exit(0 if ok else 1)
    if a.model:
        sd, cfg, _ = load_model(a.model, a.config)
        ids = [int(x) for x in a.ids.split(",")]
        last = forward(sd, cfg, ids)[-1]
        top = np.argsort(-last, kind="stable")[:5]
        print([(int(i), float(last[i])) for i in top])
        return
    ap.print_help()


if __name__ == "__main__":
    main()
