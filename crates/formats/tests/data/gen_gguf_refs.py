#!/usr/bin/env python3
"""Independent references for kiln-formats' GGUF tests, made with gguf-py (the `gguf` package,
llama.cpp's own Python reader/writer). Run from this directory:

    python3 gen_gguf_refs.py            # needs `pip install gguf==0.19.0 numpy`

Writes
  small.gguf / small.expected.json  a small GGUF v3 file holding every metadata value type
                                    (nested arrays included) and F32/F16/Q8_0/Q4_K tensors, and what
                                    gguf-py's writer put in it (metadata, tensor infos, sha256 of the bytes)
  real_gguf.expected.json           what gguf-py's reader finds in the real models under
                                    ~/.cache/kiln/models (scalar metadata, array lengths, tensor count,
                                    type histogram, a few tensors with shape and sha256)
"""
import collections
import hashlib
import json
import os
import sys

import gguf
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
T = gguf.GGUFValueType


def small():
    path = os.path.join(HERE, "small.gguf")
    w = gguf.GGUFWriter(path, "llama")
    meta = []  # (key, type name, value) in file order; general.architecture comes first

    def add(key, vtype, value, fn):
        fn(key, value)
        meta.append([key, vtype, value])

    meta.append(["general.architecture", "string", "llama"])
    add("general.name", "string", "kiln small test ✓", w.add_string)
    add("test.u8", "u8", 200, w.add_uint8)
    add("test.i8", "i8", -100, w.add_int8)
    add("test.u16", "u16", 60000, w.add_uint16)
    add("test.i16", "i16", -30000, w.add_int16)
    add("test.u32", "u32", 4000000000, w.add_uint32)
    add("test.i32", "i32", -2000000000, w.add_int32)
    add("test.f32", "f32", 0.25, w.add_float32)
    add("test.u64", "u64", 2**63 + 5, w.add_uint64)
    add("test.i64", "i64", -(2**62), w.add_int64)
    add("test.f64", "f64", -1.5e300, w.add_float64)
    add("test.bool", "bool", True, w.add_bool)
    add("test.arr_i32", "array", [1, -2, 3], w.add_array)
    add("test.arr_str", "array", ["a", "", "ünï"], w.add_array)
    add("test.nested", "array", [[1, 2], [3], [4, 5, 6]], w.add_array)
    add("llama.context_length", "u32", 128, w.add_uint32)
    add("llama.embedding_length", "u32", 64, w.add_uint32)
    add("llama.block_count", "u32", 1, w.add_uint32)
    add("llama.feed_forward_length", "u32", 96, w.add_uint32)
    add("llama.attention.head_count", "u32", 4, w.add_uint32)
    add("llama.attention.head_count_kv", "u32", 2, w.add_uint32)
    add("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5, w.add_float32)
    add("llama.rope.freq_base", "f32", 500000.0, w.add_float32)
    add("tokenizer.ggml.model", "string", "llama", w.add_string)
    add("tokenizer.ggml.tokens", "array", ["<unk>", "<s>", "</s>", "a", "b", "c", "d", "<|eot_id|>"], w.add_array)
    add("tokenizer.ggml.bos_token_id", "u32", 1, w.add_uint32)
    add("tokenizer.ggml.eos_token_id", "u32", 2, w.add_uint32)

    rng = np.random.default_rng(7)
    tensors = []
    def tensor(name, arr, shape, type_name, raw_dtype=None):
        if raw_dtype is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw_dtype)
        tensors.append({"name": name, "type": type_name, "shape": shape,
                        "nbytes": int(arr.nbytes), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()})

    tensor("token_embd.weight", rng.standard_normal((8, 64)).astype(np.float32), [8, 64], "F32")
    tensor("output_norm.weight", (rng.random(64) + 0.5).astype(np.float32), [64], "F32")
    tensor("blk.0.attn_q.weight", rng.integers(0, 256, (64, 64 // 32 * 34), dtype=np.uint8), [64, 64], "Q8_0",
           gguf.GGMLQuantizationType.Q8_0)
    tensor("blk.0.attn_k.weight", rng.standard_normal((32, 64)).astype(np.float16), [32, 64], "F16")
    tensor("blk.0.ffn_up.weight", rng.integers(0, 256, (3, 144), dtype=np.uint8), [3, 256], "Q4_K",
           gguf.GGMLQuantizationType.Q4_K)
    tensor("blk.0.attn_norm.weight", np.arange(64, dtype=np.float32), [64], "F32")

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Independent read-back with gguf-py's reader: data offsets and sizes.
    r = gguf.GGUFReader(path)
    for t, rt in zip(tensors, r.tensors):
        assert t["name"] == rt.name
        assert [int(x) for x in reversed(rt.shape)] == t["shape"], (t, rt.shape)
        assert rt.tensor_type.name == t["type"]
        t["data_offset"] = int(rt.data_offset)
    with open(os.path.join(HERE, "small.expected.json"), "w") as f:
        json.dump({"version": 3, "alignment": 32, "file_size": os.path.getsize(path),
                   "metadata": meta, "tensors": tensors}, f, indent=1, ensure_ascii=False)
        f.write("\n")


def value_of(field):
    t = field.types[0]
    if t == T.ARRAY:
        return None
    v = field.contents()
    if isinstance(v, float):
        return float(np.float32(v)) if t == T.FLOAT32 else v
    return v


def real():
    models = os.path.expanduser("~/.cache/kiln/models")
    out = {}
    for fname, sha_tensors in [
        ("gemma-3-270m-q4_k_m.gguf", ["output_norm.weight", "blk.0.attn_q.weight", "blk.17.post_ffw_norm.weight"]),
        ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", ["blk.0.attn_q.bias", "blk.0.ffn_down.weight", "output_norm.weight"]),
    ]:
        p = os.path.join(models, fname)
        if not os.path.exists(p):
            print("missing", p, file=sys.stderr)
            continue
        r = gguf.GGUFReader(p)
        scalars, arrays = {}, {}
        for k, f in r.fields.items():
            if k.startswith("GGUF."):
                continue
            if f.types[0] == T.ARRAY:
                arrays[k] = len(f.data)
            else:
                scalars[k] = value_of(f)
        hist = collections.Counter(t.tensor_type.name for t in r.tensors)
        tens = {}
        for t in r.tensors:
            if t.name in sha_tensors:
                tens[t.name] = {"type": t.tensor_type.name, "shape": [int(x) for x in reversed(t.shape)],
                                "sha256": hashlib.sha256(t.data.tobytes()).hexdigest()}
        out[fname] = {"version": int(r.fields["GGUF.version"].contents()), "n_tensors": len(r.tensors),
                      "n_kv": len(scalars) + len(arrays), "scalars": scalars,
                      "array_lengths": arrays, "type_histogram": dict(sorted(hist.items())), "tensors": tens,
                      "token_embd_shape": [int(x) for x in reversed(next(t for t in r.tensors if t.name == "token_embd.weight").shape)],
                      "has_output_weight": any(t.name == "output.weight" for t in r.tensors)}
    with open(os.path.join(HERE, "real_gguf.expected.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    small()
    real()
