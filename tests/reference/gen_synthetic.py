#!/usr/bin/env python3
"""Generate tiny random Llama-family HF model directories plus golden outputs from reference.py.

Writes crates/engine/tests/data/synthetic/<name>/ (relative to the repo root) with config.json,
generation_config.json, tokenizer files (copied from the shared fixtures), model.safetensors and golden.json;
some models also get config.legacy.json (the same config in the transformers-4 form).

Usage (from the repo root):  python3 tests/reference/gen_synthetic.py [--fixtures DIR] [--out DIR] [--only NAME]

Deterministic: every model's weights come from numpy.random.default_rng(seed); rerunning gives identical files
(given the same numpy version). The golden values are computed by reference.py on the files as written (i.e. from
the F16 / BF16-rounded weights, upcast to float32 as transformers' dtype=float32 loading does).
A seed is accepted only if every greedy top1-top2 logit margin is >= MIN_GAP and each prompt's greedy output has at
least MIN_DISTINCT distinct ids (not one token repeated); otherwise the seed is bumped.
"""

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402

MIN_GAP = 2e-3  # smallest accepted greedy top1-top2 logit margin
MIN_DISTINCT = 5  # each prompt's 20 greedy tokens (ignoring eos) must hold at least this many distinct ids
GEMMA_EMBED_STD = 0.05
N_NEW = 20
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

SPM = {"dir": "tokenizers/spm-bpe-512", "golden": "llama-mha", "bos": 1, "eos": 2}
BL = {"dir": "tokenizers/bytelevel-bpe-512", "golden": "qwen2-tiny", "bos": 510, "eos": 511}

DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def llama_like_config(arch, model_type, tok, dtype, **kw):
    c = {
        "architectures": [arch],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": tok["bos"],
        "dtype": DTYPE_NAMES[dtype],
        "eos_token_id": tok["eos"],
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.2,
        "intermediate_size": 176,
        "max_position_embeddings": 256,
        "mlp_bias": False,
        "model_type": model_type,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 4,
        "pad_token_id": None,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": 512,
    }
    c.update(kw)
    return dict(sorted(c.items()))


def legacy_config(c):
    """transformers-4 form: top-level rope_theta / rope_scaling (/ rope_local_base_freq), torch_dtype."""
    c = copy.deepcopy(c)
    rp = c.pop("rope_parameters")
    c["torch_dtype"] = c.pop("dtype")
    if "full_attention" in rp:  # gemma3: per layer type
        full, local = rp["full_attention"], rp["sliding_attention"]
        assert local["rope_type"] == "default"
        c["rope_theta"] = full["rope_theta"]
        c["rope_local_base_freq"] = local["rope_theta"]
        scaling = {k: v for k, v in full.items() if k != "rope_theta"}
        c["rope_scaling"] = None if scaling.get("rope_type") == "default" else scaling
    else:
        c["rope_theta"] = rp["rope_theta"]
        scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        c["rope_scaling"] = None if scaling.get("rope_type") == "default" else scaling
    if c.get("model_type") == "gemma3_text":
        # oldest gemma3 form: no layer_types, only the period of the sliding/full pattern
        lt = c.pop("layer_types")
        pat = next(i + 1 for i, t in enumerate(lt) if t == "full_attention")
        assert lt == ["sliding_attention" if (i + 1) % pat else "full_attention" for i in range(len(lt))], lt
        c["sliding_window_pattern"] = pat
    return dict(sorted(c.items()))


MODELS = [
    {
        "name": "gqa-tied",
        "seed": 2001,
        "dtype": "F32",
        "tok": SPM,
        "what": "Llama, grouped-query attention 8 query heads / 2 kv heads (head_dim 8), tied embeddings, rope_theta 500000",
        "config": lambda: llama_like_config(
            "LlamaForCausalLM",
            "llama",
            SPM,
            "F32",
            head_dim=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
            tie_word_embeddings=True,
        ),
        "legacy": False,
    },
    {
        "name": "llama3-rope",
        "seed": 2002,
        "dtype": "F32",
        "tok": BL,
        "what": "Llama 3 style: rope_type llama3 (factor 8, low_freq_factor 1, high_freq_factor 4, "
        "original_max_position_embeddings 64, rope_theta 500000), GQA 4/2, untied, byte-level tokenizer",
        "config": lambda: llama_like_config(
            "LlamaForCausalLM",
            "llama",
            BL,
            "F32",
            num_key_value_heads=2,
            intermediate_size=128,
            rope_parameters={
                "factor": 8.0,
                "high_freq_factor": 4.0,
                "low_freq_factor": 1.0,
                "original_max_position_embeddings": 64,
                "rope_theta": 500000.0,
                "rope_type": "llama3",
            },
        ),
        "legacy": True,
    },
    {
        "name": "mistral-swa",
        "seed": 2003,
        "dtype": "F16",
        "tok": SPM,
        "what": "Mistral, sliding_window 8 on every layer (prompts are 10-95 tokens), GQA 4/2, 3 layers, F16 weights",
        "config": lambda: _mistral_config(),
        "legacy": False,
    },
    {
        "name": "gemma3-tiny",
        "seed": 2004,
        "dtype": "BF16",
        "tok": SPM,
        "what": "Gemma 3 text (gemma3_text): 4 heads / 1 kv head, head_dim 32 (q dim 128 != hidden 64), "
        "query_pre_attn_scalar 24 (!= head_dim), layer_types [sliding, sliding, full, sliding], sliding_window 8, "
        "rope theta 10000 (sliding) / 1000000 (full), q/k norms, 4 norms per layer with (1 + w), GELU-tanh MLP, "
        "embeddings x sqrt(64), tied, BF16 weights",
        "config": lambda: _gemma3_config(),
        "legacy": True,
    },
]


def _mistral_config():
    c = llama_like_config(
        "MistralForCausalLM",
        "mistral",
        SPM,
        "F16",
        num_hidden_layers=3,
        num_key_value_heads=2,
        sliding_window=8,
    )
    for k in ("attention_bias", "mlp_bias", "pretraining_tp"):  # not MistralConfig fields
        c.pop(k)
    return c


def _gemma3_config():
    c = {
        "architectures": ["Gemma3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": SPM["bos"],
        "dtype": "bfloat16",
        "eos_token_id": SPM["eos"],
        "final_logit_softcapping": None,
        "head_dim": 32,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 64,
        "initializer_range": 0.2,
        "intermediate_size": 128,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        "max_position_embeddings": 256,
        "model_type": "gemma3_text",
        "num_attention_heads": 4,
        "num_hidden_layers": 4,
        "num_key_value_heads": 1,
        "pad_token_id": 0,
        "query_pre_attn_scalar": 24,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
        },
        "sliding_window": 8,
        "tie_word_embeddings": True,
        "use_bidirectional_attention": False,
        "use_cache": True,
        "vocab_size": 512,
    }
    return c


def tensor_shapes(c):
    """HF parameter names and shapes (the state dict transformers saves), in module order."""
    hid, nh, nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or hid // nh
    inter = c["intermediate_size"]
    gemma = c["model_type"] == "gemma3_text"
    shapes = [("model.embed_tokens.weight", (c["vocab_size"], hid), "w")]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (nh * hd, hid), "w"),
            (p + "self_attn.k_proj.weight", (nkv * hd, hid), "w"),
            (p + "self_attn.v_proj.weight", (nkv * hd, hid), "w"),
            (p + "self_attn.o_proj.weight", (hid, nh * hd), "w"),
        ]
        if gemma:
            shapes += [(p + "self_attn.q_norm.weight", (hd,), "n"), (p + "self_attn.k_norm.weight", (hd,), "n")]
        shapes += [
            (p + "mlp.gate_proj.weight", (inter, hid), "w"),
            (p + "mlp.up_proj.weight", (inter, hid), "w"),
            (p + "mlp.down_proj.weight", (hid, inter), "w"),
            (p + "input_layernorm.weight", (hid,), "n"),
            (p + "post_attention_layernorm.weight", (hid,), "n"),
        ]
        if gemma:
            shapes += [
                (p + "pre_feedforward_layernorm.weight", (hid,), "n"),
                (p + "post_feedforward_layernorm.weight", (hid,), "n"),
            ]
    shapes.append(("model.norm.weight", (hid,), "n"))
    if not c["tie_word_embeddings"]:
        shapes.append(("lm_head.weight", (c["vocab_size"], hid), "w"))
    return shapes


def make_weights(c, seed):
    """Linear / embedding weights ~ N(0, 0.2^2); norm scales uniform in [0.5, 1.5) (gemma stores w = scale - 1).

    Gemma's embedding uses std 0.05 instead: it is multiplied by sqrt(64) = 8 on input, and with std 0.2 the
    (tied) embedding dominates the residual stream so that greedy decoding just repeats one token."""
    rng = np.random.default_rng(seed)
    gemma = c["model_type"] == "gemma3_text"
    out = {}
    for name, shape, kind in tensor_shapes(c):
        if kind == "w":
            std = GEMMA_EMBED_STD if gemma and name == "model.embed_tokens.weight" else 0.2
            a = rng.standard_normal(shape) * std
        else:
            a = rng.uniform(0.5, 1.5, shape)
            if gemma:
                a = a - 1.0
        out[name] = a.astype(np.float32)
    return out


def write_model(spec, cfg, seed, out_dir, fixtures):
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    dt = spec["dtype"]
    tensors = {}
    for name, a in make_weights(cfg, seed).items():
        _, raw = ref.round_to_dtype(a, dt)
        tensors[name] = (raw, dt, a.shape)
    ref.write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, metadata={"format": "pt"})
    write_json(os.path.join(out_dir, "config.json"), cfg)
    if spec["legacy"]:
        write_json(os.path.join(out_dir, "config.legacy.json"), legacy_config(cfg))
    tok = spec["tok"]
    write_json(
        os.path.join(out_dir, "generation_config.json"),
        {
            "_from_model_config": True,
            "bos_token_id": tok["bos"],
            "eos_token_id": tok["eos"],
            "output_attentions": False,
            "output_hidden_states": False,
            "use_cache": True,
        },
    )
    src = os.path.join(fixtures, tok["dir"])
    for n in sorted(os.listdir(src)):
        shutil.copyfile(os.path.join(src, n), os.path.join(out_dir, n))


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False, allow_nan=False)
        f.write("\n")


def max_diff_over_prompts(sd, cfg, prompts, overrides=None, other_cfg=None):
    d = 0.0
    for p in prompts:
        a = ref.forward(sd, cfg, p["input_ids"])
        b = ref.forward(sd, other_cfg or cfg, p["input_ids"], overrides)
        d = max(d, float(np.max(np.abs(a - b))))
    return d


def sensitivity(name, sd, cfg, prompts):
    """How much the logits move if a feature of this model is ignored (proves the goldens exercise it)."""
    longest = [max(prompts, key=lambda p: len(p["input_ids"]))]
    n = len(longest[0]["input_ids"])
    hd = cfg.head_dim
    default = lambda theta: ref._inv_freq({"rope_type": "default", "rope_theta": theta}, hd)  # noqa: E731
    v = {}
    if name == "gqa-tied":
        v["rope_theta_10000_instead_of_500000"] = {"inv_freq": {t: default(10000.0) for t in cfg.inv_freq}}
    if cfg.n_kv != cfg.n_heads and cfg.n_kv > 1:
        v["gqa_heads_mapped_h_mod_n_kv"] = {"kv_interleaved": True}
    if name == "llama3-rope":
        v["rope_scaling_ignored"] = {"inv_freq": {t: default(500000.0) for t in cfg.inv_freq}}
    if cfg.window is not None:
        v["sliding_window_ignored"] = {"no_window": True}
    if cfg.gemma:
        v["global_rope_theta_on_all_layers"] = {"inv_freq": {t: cfg.inv_freq["full_attention"] for t in cfg.inv_freq}}
        v["scale_head_dim_instead_of_query_pre_attn_scalar"] = {"scale": hd**-0.5}
    out = {}
    for k, ov in v.items():
        d = max_diff_over_prompts(sd, cfg, longest, ov)
        out[f"max_abs_logit_diff_if_{k}_({n}_tokens)"] = d
        assert d > 0.05, (name, k, d)
    return out


def build(spec, fixtures, out_root, self_check_results):
    shared = json.load(open(os.path.join(fixtures, "golden", spec["tok"]["golden"] + ".json")))
    eos = spec["tok"]["eos"]
    assert shared["tokenizer"]["eos_token_id"] == eos and shared["tokenizer"]["bos_token_id"] == spec["tok"]["bos"]
    cfg_json = spec["config"]()
    out_dir = os.path.join(out_root, spec["name"])
    seed = spec["seed"]
    while True:
        write_model(spec, cfg_json, seed, out_dir, fixtures)
        sd, cfg, dtypes = ref.load_model(out_dir)
        assert set(dtypes.values()) == {spec["dtype"]}
        prompts = []
        for sp in shared["prompts"]:
            r = ref.prompt_outputs(sd, cfg, sp["input_ids"], eos, N_NEW)
            r.pop("logits")
            prompts.append(
                {
                    "name": sp["name"],
                    "text": sp["text"],
                    "input_ids": sp["input_ids"],
                    "tokens": sp["tokens"],
                    "n_tokens": len(sp["input_ids"]),
                    **r,
                }
            )
        gap = min(min(p["greedy"]["min_top1_top2_gap"], p["greedy"]["min_top1_top2_gap_ignore_eos"]) for p in prompts)
        distinct = min(len(set(p["greedy"]["new_ids_ignore_eos"])) for p in prompts)
        if gap >= MIN_GAP and distinct >= MIN_DISTINCT:
            break
        print(f"  {spec['name']}: seed {seed}: min greedy gap {gap:.2e} (need {MIN_GAP}), min distinct greedy ids "
              f"{distinct} (need {MIN_DISTINCT}): next seed", flush=True)
        seed += 1

    checks = {}
    if spec["legacy"]:
        with open(os.path.join(out_dir, "config.legacy.json")) as f:
            lcfg = ref.Cfg(json.load(f))
        d = max_diff_over_prompts(sd, cfg, shared["prompts"], other_cfg=lcfg)
        assert d == 0.0, d
        checks["legacy_config_max_abs_logit_diff"] = d
    checks.update(sensitivity(spec["name"], sd, cfg, shared["prompts"]))
    st_keys = sorted(sd)
    checks["safetensors_keys"] = st_keys
    checks["safetensors_dtype"] = spec["dtype"]
    checks["reference_self_check_vs_transformers"] = self_check_results

    golden = {
        "model": spec["name"],
        "model_dir": spec["name"],
        "set": "synthetic",
        "what": spec["what"],
        "generator": "tests/reference/gen_synthetic.py (weights) + tests/reference/reference.py (numpy float32 forward)",
        "versions": {"python": platform.python_version(), "numpy": np.__version__},
        "dtype": "float32",
        "weights_dtype": spec["dtype"],
        "seed": seed,
        "config": cfg_json,
        "generation_config": json.load(open(os.path.join(out_dir, "generation_config.json"))),
        "tokenizer": {
            "files": spec["tok"]["dir"],
            "bos_token_id": spec["tok"]["bos"],
            "eos_token_id": eos,
            "adds_bos": True,
            "input_ids_from": f"shared fixtures golden/{spec['tok']['golden']}.json (same tokenizer)",
        },
        "min_top1_top2_gap": gap,
        "seed_rule": f"first seed from {spec['seed']} with min_top1_top2_gap >= {MIN_GAP} and >= {MIN_DISTINCT} "
        "distinct ids in every new_ids_ignore_eos",
        "notes": [
            "Not produced by transformers (not installable here): produced by tests/reference/reference.py, an independent "
            "numpy float32 implementation of the transformers forward pass, which reproduces the shared transformers "
            "goldens (llama-mha, qwen2-tiny) within the diffs in checks.reference_self_check_vs_transformers.",
            "Weights are read back from model.safetensors as written (F16/BF16 values upcast exactly to float32) and the "
            "whole forward runs in float32, like AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32, "
            "attn_implementation='eager').",
            "input_ids are copied from the shared golden of the same tokenizer (BOS included).",
            "top5[i] = 5 largest (token_id, logit) at position i (prediction of token i+1), logit descending.",
            "token_logprobs[i] = log_softmax(logits[i])[input_ids[i+1]] for i = 0..len-2.",
            "greedy: argmax loop with full recompute each step, max 20 new tokens; new_ids stops after eos (kept); "
            "new_ids_ignore_eos = exactly 20 argmax steps. min_top1_top2_gap (top level) = smallest greedy margin over "
            "all prompts and both variants.",
            "Suggested tolerances: logits / log-probs within ~1e-4 absolute; greedy ids exact; compare top-5 values with "
            "a tolerance rather than the order of near-ties.",
        ],
        "prompts": prompts,
        "checks": checks,
    }
    write_json(os.path.join(out_dir, "golden.json"), golden)
    return seed, gap, checks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "tests", "data", "fixtures"))
    ap.add_argument("--out", default=os.path.join(ROOT, "crates", "engine", "tests", "data", "synthetic"))
    ap.add_argument("--only", action="append", help="model name (repeatable)")
    a = ap.parse_args()
    print("reference self-check against the shared transformers goldens:", flush=True)
    ok, results = ref.self_check(a.fixtures)
    assert ok, "reference.py does not reproduce the transformers goldens"
    self_check = {
        k: {kk: (float(f"{vv:.3e}") if isinstance(vv, float) else vv) for kk, vv in d.items()}
        for k, d in results.items()
    }
    os.makedirs(a.out, exist_ok=True)
    for spec in MODELS:
        if a.only and spec["name"] not in a.only:
            continue
        seed, gap, checks = build(spec, a.fixtures, a.out, self_check)
        sens = {k: round(v, 4) for k, v in checks.items() if k.startswith("max_abs")}
        print(f"{spec['name']}: seed {seed}, min greedy gap {gap:.4f}, {sens}", flush=True)


if __name__ == "__main__":
    main()
