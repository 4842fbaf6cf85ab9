#!/usr/bin/env python3
"""Gemma 3 config.json files in the forms kiln must read, and how transformers itself
interprets each, for kiln-formats' tests. Run from this directory:

    python3 -m venv venv && venv/bin/pip install transformers==5.24.0   # no torch needed
    venv/bin/python gen_hf_configs.py

Writes hf-configs/<name>.config.json and hf-configs/expected.json. The transformers-5 files are
written by `save_pretrained`; `gemma3-text-legacy` is the transformers-4 layout of the hub's
Gemma 3 text checkpoints (top-level rope_theta / rope_local_base_freq / rope_scaling /
sliding_window_pattern / torch_dtype), which transformers 5 still loads.
"""
import json
import os
import tempfile

from transformers import AutoConfig, Gemma3Config, Gemma3TextConfig

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf-configs")
os.makedirs(HERE, exist_ok=True)

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, sliding_window=16)


def save(name, cfg):
    d = tempfile.mkdtemp()
    cfg.save_pretrained(d)
    text = open(os.path.join(d, "config.json")).read()
    with open(os.path.join(HERE, name + ".config.json"), "w") as f:
        f.write(text)


save("gemma3-text-t5", Gemma3TextConfig(vocab_size=512, max_position_embeddings=256,
                                         query_pre_attn_scalar=32, eos_token_id=[1, 106], **SMALL))
save("gemma3-multimodal-t5", Gemma3Config(text_config=dict(
    rope_scaling={"rope_type": "linear", "factor": 8.0}, **SMALL)))

legacy = {
    "architectures": ["Gemma3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "bos_token_id": 2,
    "cache_implementation": "hybrid",
    "eos_token_id": [1, 106],
    "final_logit_softcapping": None,
    "head_dim": 32,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
    "model_type": "gemma3_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 8,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 32,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 16,
    "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "use_cache": True,
    "vocab_size": 512,
}
with open(os.path.join(HERE, "gemma3-text-legacy.config.json"), "w") as f:
    json.dump(legacy, f, indent=2)
    f.write("\n")

# The hub's multimodal Gemma 3 configs (transformers 4) list only the text_config values that
# differ from Gemma3TextConfig's defaults; everything else comes from those defaults.
legacy_mm = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "boi_token_index": 255999,
    "eoi_token_index": 256000,
    "eos_token_id": [1, 106],
    "image_token_index": 262144,
    "initializer_range": 0.02,
    "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "model_type": "gemma3_text",
        "num_hidden_layers": 8,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 16,
    },
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "vision_config": {"hidden_size": 32, "image_size": 32, "intermediate_size": 64,
                      "model_type": "siglip_vision_model", "num_attention_heads": 2,
                      "num_hidden_layers": 1, "patch_size": 16, "vision_use_head": False},
}
with open(os.path.join(HERE, "gemma3-multimodal-legacy.config.json"), "w") as f:
    json.dump(legacy_mm, f, indent=2)
    f.write("\n")

expected = {}
for name in ["gemma3-text-t5", "gemma3-multimodal-t5", "gemma3-text-legacy", "gemma3-multimodal-legacy"]:
    d = tempfile.mkdtemp()
    with open(os.path.join(HERE, name + ".config.json")) as src, open(os.path.join(d, "config.json"), "w") as dst:
        dst.write(src.read())
    top = AutoConfig.from_pretrained(d)
    c = top.get_text_config()
    rp = c.rope_parameters
    eos = c.eos_token_id
    expected[name] = {
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim, "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings, "sliding_window": c.sliding_window,
        "layer_types": c.layer_types, "query_pre_attn_scalar": c.query_pre_attn_scalar,
        "rope_parameters": rp, "tie_word_embeddings": top.tie_word_embeddings,
        "bos_token_id": c.bos_token_id, "eos_token_id": eos if isinstance(eos, list) else [eos],
        "final_logit_softcapping": c.final_logit_softcapping,
    }
with open(os.path.join(HERE, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
    f.write("\n")
