#!/usr/bin/env python3
"""Independent test vectors for kiln's block dequantisation (crates/kernels/tests/quant_vectors.rs).

Run from this directory (needs `pip install gguf numpy`; vectors committed were made with gguf 0.19.0):

    python3 gen_quant_vectors.py

For every block type it writes into ./quant/:
  <TYPE>.blocks  raw ggml block bytes (N_BLOCKS blocks)
  <TYPE>.f32     the dequantized values gguf-py computes for them (little-endian f32)
  <TYPE>.input   (types gguf-py can quantize) the f32 input the blocks were quantized from

Types gguf-py can quantize (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 BF16) are quantized from deterministic data;
the k-quants and IQ4_NL / IQ4_XS (dequantize only in gguf-py) use random block bytes whose f16
scales are forced to finite values. gguf-py has neither Q8_1 nor Q8_K (activation-only types); their expected values
are computed here from the ggml definition y = d * q with numpy.
"""
import os
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

N_BLOCKS = 4
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quant")
rng = np.random.default_rng(20261128)


def write(name, blocks, values, inp=None):
    os.makedirs(OUT, exist_ok=True)
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
    values = np.ascontiguousarray(values, dtype="<f4")
    assert np.all(np.isfinite(values)), name
    blocks.tofile(os.path.join(OUT, name + ".blocks"))
    values.tofile(os.path.join(OUT, name + ".f32"))
    if inp is not None:
        np.ascontiguousarray(inp, dtype="<f4").tofile(os.path.join(OUT, name + ".input"))
    print(f"{name}: {blocks.size} bytes -> {values.size} values")


def data(n):
    # smooth-ish values with outliers, like real weights/activations
    x = rng.standard_normal(n).astype(np.float32) * 0.05
    x[rng.integers(0, n, n // 37)] *= 20.0
    return x


def f16_bytes(v):
    return np.array(v, dtype="<f2").reshape(-1).view(np.uint8)


# Types gguf-py quantizes: quantize deterministic data, then dequantize with gguf-py.
for name, qt in [("Q4_0", T.Q4_0), ("Q4_1", T.Q4_1), ("Q5_0", T.Q5_0), ("Q5_1", T.Q5_1), ("Q8_0", T.Q8_0), ("BF16", T.BF16)]:
    n = N_BLOCKS * 32
    x = data(n)
    q = quants.quantize(x.reshape(1, n), qt)
    y = quants.dequantize(q, qt)
    write(name, q.reshape(-1), y.reshape(-1), x)

# F16: plain conversion.
x = data(64)
write("F16", x.astype("<f2").view(np.uint8), x.astype("<f2").astype(np.float32), x)

# k-quants: random bytes with finite f16 scales, dequantized by gguf-py.
K_LAYOUT = {  # type: (block bytes, [(offset of an f16 scale, magnitude)])
    "Q2_K": (T.Q2_K, 84, [(80, 0.02), (82, 0.01)]),
    "Q3_K": (T.Q3_K, 110, [(108, 0.01)]),
    "Q4_K": (T.Q4_K, 144, [(0, 0.005), (2, 0.01)]),
    "Q5_K": (T.Q5_K, 176, [(0, 0.003), (2, 0.01)]),
    "Q6_K": (T.Q6_K, 210, [(208, 0.002)]),
}
for name, (qt, bb, scales) in K_LAYOUT.items():
    b = rng.integers(0, 256, (N_BLOCKS, bb), dtype=np.uint8)
    for off, mag in scales:
        v = (rng.random(N_BLOCKS) * mag + mag / 10).astype(np.float32)
        b[:, off:off + 2] = f16_bytes(v).reshape(N_BLOCKS, 2)
    y = quants.dequantize(b.reshape(1, -1), qt)
    write(name, b.reshape(-1), y.reshape(-1))

# Q8_1: d f16, s f16 (= d * sum(q), unused by dequantisation), 32 x i8. y = d * q.
d = (rng.random(N_BLOCKS) * 0.01 + 0.001).astype(np.float16)
q = rng.integers(-127, 128, (N_BLOCKS, 32)).astype(np.int8)
s = (d.astype(np.float32) * q.astype(np.float32).sum(axis=1)).astype(np.float16)
b = np.concatenate([f16_bytes(d).reshape(N_BLOCKS, 2), f16_bytes(s).reshape(N_BLOCKS, 2), q.view(np.uint8)], axis=1)
write("Q8_1", b.reshape(-1), (d.astype(np.float32)[:, None] * q.astype(np.float32)).reshape(-1))

# Q8_K: d f32, 256 x i8, 16 x i16 bsums (sum of each group of 16 q). y = d * q.
d = (rng.random(N_BLOCKS) * 0.01 + 0.001).astype("<f4")
q = rng.integers(-127, 128, (N_BLOCKS, 256)).astype(np.int8)
bs = q.astype(np.int16).reshape(N_BLOCKS, 16, 16).sum(axis=2).astype("<i2")
b = np.concatenate([d.view(np.uint8).reshape(N_BLOCKS, 4), q.view(np.uint8), bs.view(np.uint8).reshape(N_BLOCKS, 32)], axis=1)
write("Q8_K", b.reshape(-1), (d[:, None] * q.astype(np.float32)).reshape(-1))

# IQ4_NL / IQ4_XS (non-linear 4-bit grids; dequantize only in gguf-py): random block bytes
# whose f16 scale d is forced to a finite value, dequantized by gguf-py. (Appended after the
# types above so that their random draws, and so their vectors, are unchanged.)
IQ_LAYOUT = {  # type: (block bytes, offset of d, magnitude)
    "IQ4_NL": (T.IQ4_NL, 18, 0, 0.002),
    "IQ4_XS": (T.IQ4_XS, 136, 0, 0.0005),
}
for name, (qt, bb, off, mag) in IQ_LAYOUT.items():
    b = rng.integers(0, 256, (N_BLOCKS, bb), dtype=np.uint8)
    v = (rng.random(N_BLOCKS) * mag + mag / 10).astype(np.float32)
    b[:, off:off + 2] = f16_bytes(v).reshape(N_BLOCKS, 2)
    y = quants.dequantize(b.reshape(1, -1), qt)
    write(name, b.reshape(-1), y.reshape(-1))

# Real weight rows (first 2 rows of one tensor per type the test models use), if the model is
# present: python3 gen_quant_vectors.py [path/to/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf]
import sys
from gguf import GGUFReader

model = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
    "~/.cache/kiln/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
if os.path.exists(model):
    reader = GGUFReader(model)
    wanted = {"blk.0.ffn_down.weight": "Q6_K", "blk.11.ffn_down.weight": "Q4_K",
              "blk.0.ffn_gate.weight": "Q5_0", "blk.0.attn_v.weight": "Q8_0"}
    for t in reader.tensors:
        if t.name in wanted:
            assert t.tensor_type.name == wanted[t.name], (t.name, t.tensor_type.name)
            rows = np.ascontiguousarray(t.data[:2])  # (2, row bytes)
            y = quants.dequantize(rows, t.tensor_type)
            with open(os.path.join(OUT, f"real_{t.tensor_type.name}.shape"), "w") as f:
                f.write(f"{t.name} 2 {y.shape[-1]}\n")
            write(f"real_{t.tensor_type.name}", rows.reshape(-1), y.reshape(-1))
else:
    print(f"{model} not found: real-row vectors not regenerated")
