#!/usr/bin/env python3
"""Writes the small PyTorch / Meta checkpoint fixtures used by crates/formats/tests/meta_*.rs.

No torch needed: `torch.save` pickles (protocol 2) a state dict with a Pickler whose
persistent_id turns each storage into ('storage', torch.<Type>Storage, key, 'cpu', numel), and
tensors reduce to torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
OrderedDict()). This script does the same with stand-in `torch` modules registered in
sys.modules (so pickle writes exactly the same GLOBAL references) and writes the zip layout
`<top>/data.pkl`, `<top>/byteorder`, `<top>/data/<key>`, `<top>/version`.

Expected values (hex of the raw little-endian bytes, shapes, config numbers) are computed here
with numpy, independently of kiln. Run from anywhere: python3 gen_pth_fixtures.py
(numpy 2.x; output is deterministic except the random hostile-marker names, which are fixed
once generated and recorded in hostile.json).
"""
import collections
import io
import json
import os
import pickle
import secrets
import shutil
import struct
import subprocess
import sys
import types
import zipfile

import numpy as np

OUT = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------- stand-in torch modules
torch_mod = types.ModuleType("torch")
utils_mod = types.ModuleType("torch._utils")


def _rebuild_tensor_v2(*args):  # never called: only referenced by name
    raise RuntimeError


def _rebuild_parameter(*args):
    raise RuntimeError


for f in (_rebuild_tensor_v2, _rebuild_parameter):
    f.__module__ = "torch._utils"
    f.__qualname__ = f.__name__
    setattr(utils_mod, f.__name__, f)

STORAGE_CLASSES = {}
for kind in ["FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage"]:
    cls = type(kind, (), {})
    cls.__module__ = "torch"
    cls.__qualname__ = kind
    setattr(torch_mod, kind, cls)
    STORAGE_CLASSES[kind] = cls
torch_mod._utils = utils_mod
sys.modules["torch"] = torch_mod
sys.modules["torch._utils"] = utils_mod

ELEM = {"FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8}


class Storage:
    def __init__(self, kind, data: bytes, key, numel=None):
        self.kind, self.data, self.key = kind, data, key
        self.numel = len(data) // ELEM[kind] if numel is None else numel


class Tensor:
    def __init__(self, storage, offset, shape, stride=None, param=False):
        self.storage, self.offset, self.shape = storage, offset, tuple(shape)
        if stride is None:
            stride, acc = [], 1
            for d in reversed(self.shape):
                stride.insert(0, acc)
                acc *= d
        self.stride, self.param = tuple(stride), param

    def __reduce_ex__(self, proto):
        if self.param:
            inner = Tensor(self.storage, self.offset, self.shape, self.stride)
            return (_rebuild_parameter, (inner, True, collections.OrderedDict()))
        return (_rebuild_tensor_v2, (self.storage, self.offset, self.shape, self.stride, False,
                                     collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", STORAGE_CLASSES[obj.kind], obj.key, "cpu", obj.numel)
        return None


def bf16_bytes(a):
    a = np.asarray(a, dtype=np.float32)
    bits = a.view(np.uint32)
    assert np.all(bits & 0xFFFF == 0), "values must be exact in bfloat16"
    return (bits >> 16).astype("<u2").tobytes()


def storage_of(arr, key):
    """arr: numpy float32/float16 array, or ('bf16', float32 array)."""
    if isinstance(arr, tuple):
        return Storage("BFloat16Storage", bf16_bytes(arr[1]), key), arr[1].shape
    kind = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
            np.dtype(np.int64): "LongStorage"}[arr.dtype]
    return Storage(kind, np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes(), key), arr.shape


def save(path, obj, storages, top=None, protocol=2, compression=zipfile.ZIP_STORED, extra_members=()):
    top = top or os.path.splitext(os.path.basename(path))[0]
    buf = io.BytesIO()
    TorchPickler(buf, protocol=protocol).dump(obj)
    def put(z, name, data):  # fixed timestamps: the output does not depend on the clock
        z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                   compress_type=compression)

    with zipfile.ZipFile(path, "w", compression=compression) as z:
        put(z, f"{top}/data.pkl", buf.getvalue())
        put(z, f"{top}/byteorder", "little")
        for s in storages:
            put(z, f"{top}/data/{s.key}", s.data)
        put(z, f"{top}/version", "3\n")
        for name, data in extra_members:
            put(z, f"{top}/{name}", data)


def save_state_dict(path, sd, **kw):
    """sd: name -> array; one storage per tensor, keys 0, 1, ..."""
    obj, storages = {}, []
    for i, (name, arr) in enumerate(sd.items()):
        s, shape = storage_of(arr, str(i))
        storages.append(s)
        obj[name] = Tensor(s, 0, shape)
    save(path, obj, storages, **kw)


def hexof(arr):
    if isinstance(arr, tuple):
        return bf16_bytes(arr[1]).hex()
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes().hex()


ALLOWED = {"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
           "collections.OrderedDict", "torch.FloatStorage"}


def forbidden_global(path):
    """The first global outside the allow-list that the file's pickle names, as pickletools
    reads it (protocol 2 writes Python 2 names: posix.system, __builtin__.eval, ...)."""
    import pickletools
    with zipfile.ZipFile(path) as z:
        pkl = z.read([n for n in z.namelist() if n.endswith("/data.pkl")][0])
    strings = []
    for op, arg, _ in pickletools.genops(pkl):
        if op.name == "GLOBAL":
            name = arg.replace(" ", ".")
        elif op.name == "STACK_GLOBAL":
            name = f"{strings[-2]}.{strings[-1]}"
        else:
            if isinstance(arg, str):
                strings.append(arg)
            continue
        if name not in ALLOWED:
            return name
    raise AssertionError(f"{path}: no forbidden global")


# ---------------------------------------------------------------- PyTorch-level fixtures
def pytorch_fixtures():
    d = os.path.join(OUT, "pth")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(7)
    expected = {}

    # dtypes.pth: f32 / f16 / bf16, two views of one shared storage, a parameter, a size-1
    # dimension with an arbitrary stride, an int64 tensor, a non-tensor value; saved as an
    # OrderedDict with `_metadata` (as nn.Module.state_dict() returns), which adds a BUILD.
    f32 = rng.standard_normal((2, 3)).astype(np.float32)
    f16 = rng.standard_normal(4).astype(np.float16)
    bf = ("bf16", (np.arange(4, dtype=np.float32).reshape(2, 2) - 1.5) * 0.25)
    shared = np.arange(10, dtype=np.float32) * 0.5
    s_f32, _ = storage_of(f32, "0")
    s_f16, _ = storage_of(f16, "1")
    s_bf, _ = storage_of(bf, "2")
    s_sh, _ = storage_of(shared, "3")
    s_row, _ = storage_of(np.array([1.0, 2.0, 3.0], dtype=np.float32), "4")
    s_int, _ = storage_of(np.array([5, 6], dtype=np.int64), "5")
    sd = collections.OrderedDict()
    sd["f32"] = Tensor(s_f32, 0, (2, 3))
    sd["f16"] = Tensor(s_f16, 0, (4,))
    sd["bf16"] = Tensor(s_bf, 0, (2, 2))
    sd["view_a"] = Tensor(s_sh, 2, (2, 2))
    sd["view_b"] = Tensor(s_sh, 6, (4,))
    sd["param"] = Tensor(s_f32, 0, (2, 3), param=True)
    sd["row"] = Tensor(s_row, 0, (1, 3), stride=(99, 1))
    sd["ints"] = Tensor(s_int, 0, (2,))
    sd["step"] = 5
    sd._metadata = collections.OrderedDict({"": {"version": 1}})
    storages = [s_f32, s_f16, s_bf, s_sh, s_row, s_int]
    expected["dtypes"] = {
        "f32": {"dtype": "F32", "shape": [2, 3], "hex": hexof(f32)},
        "f16": {"dtype": "F16", "shape": [4], "hex": hexof(f16)},
        "bf16": {"dtype": "BF16", "shape": [2, 2], "hex": hexof(bf)},
        "view_a": {"dtype": "F32", "shape": [2, 2], "hex": hexof(shared[2:6])},
        "view_b": {"dtype": "F32", "shape": [4], "hex": hexof(shared[6:10])},
        "param": {"dtype": "F32", "shape": [2, 3], "hex": hexof(f32)},
        "row": {"dtype": "F32", "shape": [1, 3], "hex": hexof(np.array([1, 2, 3], dtype=np.float32))},
    }
    save(os.path.join(d, "dtypes.pth"), sd, storages, top="archive")
    # The same with protocol 4 (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL), and deflated.
    save(os.path.join(d, "dtypes_proto4.pth"), sd, storages, top="archive", protocol=4)
    save(os.path.join(d, "dtypes_deflated.pth"), sd, storages, top="archive",
         compression=zipfile.ZIP_DEFLATED)
    # Zip64 form (as torch writes checkpoints over 4 GiB): with the limits lowered to 0,
    # zipfile gives every member zip64 extra fields (local and central, 0xFFFFFFFF in the
    # 32-bit fields) and writes the zip64 end record and locator.
    limits = (zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT)
    zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = 0, 0
    try:
        save(os.path.join(d, "dtypes_zip64.pth"), sd, storages, top="archive")
    finally:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = limits
    with open(os.path.join(d, "dtypes_zip64.pth"), "rb") as f:
        raw = f.read()
    assert b"PK\x06\x06" in raw and b"PK\x06\x07" in raw, "zip64 records missing"
    with zipfile.ZipFile(os.path.join(d, "dtypes_zip64.pth")) as z:
        assert z.testzip() is None

    # A transposed (non-contiguous) view.
    s, _ = storage_of(np.arange(6, dtype=np.float32), "0")
    save(os.path.join(d, "noncontiguous.pth"), {"t": Tensor(s, 0, (3, 2), stride=(1, 3))}, [s])
    # A storage whose declared element count disagrees with its member's bytes.
    s = Storage("FloatStorage", np.arange(9, dtype=np.float32).tobytes(), "0", numel=10)
    save(os.path.join(d, "bad_storage_size.pth"), {"t": Tensor(s, 0, (10,))}, [s])
    # A view reaching past the end of its storage.
    s, _ = storage_of(np.arange(4, dtype=np.float32), "0")
    save(os.path.join(d, "view_out_of_range.pth"), {"t": Tensor(s, 2, (4,))}, [s])
    # A tensor whose storage member is absent.
    s, _ = storage_of(np.arange(4, dtype=np.float32), "0")
    save(os.path.join(d, "missing_member.pth"), {"t": Tensor(s, 0, (4,))}, [])

    # Hostile checkpoints: a state dict whose second value reduces to a dangerous call.
    class Evil:
        def __init__(self, func, args):
            self.func, self.args = func, args

        def __reduce__(self):
            return (self.func, self.args)

    hostile = {}
    for fname, func, make_args in [
        ("hostile_os_system.pth", os.system, lambda m: (f"touch {m}",)),
        ("hostile_builtins_eval.pth", eval, lambda m: (f"open('{m}', 'w').close()",)),
        ("hostile_subprocess_popen.pth", subprocess.Popen, lambda m: (["touch", m],)),
    ]:
        marker = f"/tmp/kiln-pwned-{secrets.token_hex(8)}"
        s, _ = storage_of(np.arange(4, dtype=np.float32), "0")
        obj = {"tok_embeddings.weight": Tensor(s, 0, (4,)), "payload": Evil(func, make_args(marker))}
        save(os.path.join(d, fname), obj, [s])
        hostile[fname] = {"marker": marker, "global": forbidden_global(os.path.join(d, fname))}
    # Protocol 4 writes STACK_GLOBAL instead of GLOBAL.
    marker = f"/tmp/kiln-pwned-{secrets.token_hex(8)}"
    s, _ = storage_of(np.arange(4, dtype=np.float32), "0")
    path = os.path.join(d, "hostile_os_system_proto4.pth")
    save(path, {"w": Tensor(s, 0, (4,)), "payload": Evil(os.system, (f"touch {marker}",))}, [s], protocol=4)
    hostile["hostile_os_system_proto4.pth"] = {"marker": marker, "global": forbidden_global(path)}

    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump({"tensors": expected, "hostile": hostile}, f, indent=1, sort_keys=True)


# ---------------------------------------------------------------- Meta-format directories
def tiny_sentencepiece(n_pieces, bos, eos):
    """A minimal SentencePiece ModelProto: n pieces (field 1) and a trainer_spec (field 2)
    with bos_id (41) and eos_id (42) set."""
    def varint(v):
        out = b""
        while True:
            b = v & 0x7F
            v >>= 7
            if v:
                out += bytes([b | 0x80])
            else:
                return out + bytes([b])

    def field(num, wire, payload):
        key = varint((num << 3) | wire)
        if wire == 2:
            return key + varint(len(payload)) + payload
        return key + payload

    out = b""
    for i in range(n_pieces):
        piece = field(1, 2, f"p{i}".encode()) + field(2, 5, struct.pack("<f", -float(i)))
        out += field(1, 2, piece)
    spec = field(41, 0, varint(bos)) + field(42, 0, varint(eos)) + field(3, 0, varint(n_pieces))
    return out + field(2, 2, spec)


def meta_weights(rng, dim, n_layers, n_heads, n_kv, hidden, vocab, kind):
    hd = dim // n_heads

    def w(*shape):
        a = rng.standard_normal(shape).astype(np.float32)
        if kind == "bf16":
            a = (np.round(a * 8) / 8).astype(np.float32)  # exact in bfloat16
            return ("bf16", a)
        return a

    sd = {"tok_embeddings.weight": w(vocab, dim)}
    for l in range(n_layers):
        p = f"layers.{l}."
        sd[p + "attention.wq.weight"] = w(n_heads * hd, dim)
        sd[p + "attention.wk.weight"] = w(n_kv * hd, dim)
        sd[p + "attention.wv.weight"] = w(n_kv * hd, dim)
        sd[p + "attention.wo.weight"] = w(dim, n_heads * hd)
        sd[p + "feed_forward.w1.weight"] = w(hidden, dim)
        sd[p + "feed_forward.w2.weight"] = w(dim, hidden)
        sd[p + "feed_forward.w3.weight"] = w(hidden, dim)
        sd[p + "attention_norm.weight"] = w(dim)
        sd[p + "ffn_norm.weight"] = w(dim)
    sd["norm.weight"] = w(dim)
    sd["output.weight"] = w(vocab, dim)
    return sd


def split(sd, mp, emb_axis):
    """fairscale's split: column-parallel along 0, row-parallel along 1, norms replicated."""
    shards = [dict() for _ in range(mp)]
    for name, arr in sd.items():
        is_bf = isinstance(arr, tuple)
        a = arr[1] if is_bf else arr
        if name == "tok_embeddings.weight":
            axis = emb_axis
        elif any(k in name for k in ("wq", "wk", "wv", "w1", "w3")) or name == "output.weight":
            axis = 0
        elif any(k in name for k in ("wo", "w2")):
            axis = 1
        else:
            axis = None
        parts = [a] * mp if axis is None else np.split(a, mp, axis=axis)
        for r in range(mp):
            p = np.ascontiguousarray(parts[r])
            shards[r][name] = ("bf16", p) if is_bf else p
    return shards


def meta_fixtures():
    root = os.path.join(OUT, "meta")
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    expected = {}

    # Llama 3 style: GQA, ffn_dim_multiplier, scaled rope, tiktoken tokenizer, bf16,
    # tok_embeddings split along the vocabulary (dim 0), MP=2.
    rng = np.random.default_rng(3)
    ranks = 8
    dim, n_layers, n_heads, n_kv, vocab = 16, 1, 4, 2, ranks + 256
    mult, multiple_of = 1.3, 8
    hidden = int(2 * 4 * dim / 3)
    hidden = int(mult * hidden)
    hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
    sd = meta_weights(rng, dim, n_layers, n_heads, n_kv, hidden, vocab, "bf16")
    d = os.path.join(root, "llama3-mp2")
    os.makedirs(d)
    params = {"dim": dim, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv,
              "vocab_size": vocab, "ffn_dim_multiplier": mult, "multiple_of": multiple_of,
              "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True}
    json.dump(params, open(os.path.join(d, "params.json"), "w"))
    for r, shard in enumerate(split(sd, 2, emb_axis=0)):
        save_state_dict(os.path.join(d, f"consolidated.{r:02d}.pth"), shard)
    import base64
    with open(os.path.join(d, "tokenizer.model"), "w") as f:
        for i in range(ranks):
            f.write(f"{base64.b64encode(bytes([97 + i])).decode()} {i}\n")
    expected["llama3-mp2"] = {
        "params": params, "hidden": hidden, "vocab": vocab, "bos": ranks, "eos": [ranks + 1, ranks + 9],
        "tensors": {n: {"shape": list(a[1].shape), "hex": hexof(a)} for n, a in sd.items()},
    }

    # Llama 2 style, float32, MP=2 (embeddings split along dim 1), tiny SentencePiece model
    # with bos 5 / eos 6, vocab_size -1, plus `rope.freqs` (ignored by Meta's loader).
    rng = np.random.default_rng(4)
    dim, n_layers, n_heads, vocab = 8, 1, 2, 16
    hidden = 8 * ((int(2 * 4 * dim / 3) + 7) // 8)
    sd = meta_weights(rng, dim, n_layers, n_heads, n_heads, hidden, vocab, "f32")
    base = os.path.join(root, "llama2-mp2")
    os.makedirs(base)
    params = {"dim": dim, "multiple_of": 8, "n_heads": n_heads, "n_layers": n_layers,
              "norm_eps": 1e-05, "vocab_size": -1}
    json.dump(params, open(os.path.join(base, "params.json"), "w"))
    shards = split(sd, 2, emb_axis=1)
    for r, shard in enumerate(shards):
        shard = dict(shard)
        shard["rope.freqs"] = np.ones(dim // n_heads // 2, dtype=np.float32)
        save_state_dict(os.path.join(base, f"consolidated.{r:02d}.pth"), shard)
    open(os.path.join(base, "tokenizer.model"), "wb").write(tiny_sentencepiece(vocab, 5, 6))
    expected["llama2-mp2"] = {
        "params": params, "hidden": hidden, "vocab": vocab, "bos": 5, "eos": [6],
        "tensors": {n: {"shape": list(a.shape), "hex": hexof(a)} for n, a in sd.items()},
    }

    # Broken variants of llama2-mp2 (only one thing wrong in each).
    def variant(name, mutate):
        d = os.path.join(root, name)
        os.makedirs(d)
        shutil.copy(os.path.join(base, "params.json"), d)
        shutil.copy(os.path.join(base, "tokenizer.model"), d)
        sh = [dict(s) for s in shards]
        mutate(sh)
        for r, shard in enumerate(sh):
            save_state_dict(os.path.join(d, f"consolidated.{r:02d}.pth"), shard)

    def bad_shape(sh):  # wo is split along dim 1; shard 1's has a different dim 0
        sh[1]["layers.0.attention.wo.weight"] = np.zeros((dim + 2, dim // 2), dtype=np.float32)

    def bad_norm(sh):
        sh[1]["norm.weight"] = sh[1]["norm.weight"] + np.float32(1)

    def bad_dtype(sh):
        sh[1]["layers.0.attention.wq.weight"] = sh[1]["layers.0.attention.wq.weight"].astype(np.float16)

    def missing_tensor(sh):
        del sh[1]["layers.0.feed_forward.w3.weight"]

    def extra_tensor(sh):
        for s in sh:
            s["layers.0.attention.bogus.weight"] = np.zeros(2, dtype=np.float32)

    def three_shards(sh):  # an extra rank: every split tensor gets too big
        sh.append(dict(sh[1]))

    variant("bad-shape", bad_shape)
    variant("bad-norm", bad_norm)
    variant("bad-dtype", bad_dtype)
    variant("missing-tensor", missing_tensor)
    variant("extra-tensor", extra_tensor)
    variant("extra-shard", three_shards)

    with open(os.path.join(root, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    pytorch_fixtures()
    meta_fixtures()
