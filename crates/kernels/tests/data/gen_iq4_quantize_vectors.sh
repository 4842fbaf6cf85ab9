#!/usr/bin/env bash
# Expected IQ4_NL / IQ4_XS blocks for kiln's quantiser (crates/kernels/tests/quantize.rs), made
# by ggml's own quantize_iq4_nl / quantize_iq4_xs (no importance matrix, as llama-quantize runs
# them) from the llama.cpp anchor build (bench/build-llama-cpp.sh; the committed vectors were
# made with llama.cpp 0c1e57098's libggml-base.a, gcc, the build's default flags).
#
#   bash gen_iq4_quantize_vectors.sh [ANCHOR_DIR]
#
# Writes into ./quant/: iq4_quantize.input (f32: 32 rows × 512, normal values with outliers and
# one all-zero sub-block), IQ4_NL.quantized and IQ4_XS.quantized (the blocks ggml wrote).
set -euo pipefail
cd "$(dirname "$0")"
anchor=${1:-$HOME/.cache/kiln/anchors/llama.cpp-0c1e57098}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - <<'PY'
import numpy as np
rng = np.random.default_rng(20261207)
x = rng.standard_normal(32 * 512).astype(np.float32) * 0.05
x[rng.integers(0, x.size, x.size // 37)] *= 20.0
x[512 + 64:512 + 96] = 0.0  # an all-zero sub-block
x.astype("<f4").tofile("quant/iq4_quantize.input")
PY
gcc -O2 -o "$tmp/q" ggml_iq4_quantize.c "$anchor/build/ggml/src/libggml-base.a" -fopenmp -lstdc++ -lm -lpthread
"$tmp/q" quant/iq4_quantize.input 512 quant/IQ4_NL.quantized quant/IQ4_XS.quantized
ls -l quant/iq4_quantize.input quant/IQ4_NL.quantized quant/IQ4_XS.quantized
