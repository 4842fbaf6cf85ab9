#!/usr/bin/env bash
# `kiln quantize` against llama.cpp's `llama-quantize` on the same input and type, perplexity
# side by side: both outputs measured by llama.cpp's own llama-perplexity (and kiln's), so the
# comparison is of the quantisers alone. Not a test: prints a table for BENCHMARKS.md.
#
#   bench/quantize-vs-llama-cpp.sh [-t THREADS] [-c CTX] [MODEL_NAME [TYPE ...]]
#
# MODEL_NAME: a model kiln can pull (default gemma3-270m). The published files are Q4_K_M, so
# the common input is made first: `kiln quantize MODEL.gguf f16.gguf F16` (dequantised F16).
# TYPE: default Q8_0 Q4_0 Q4_K_M Q5_K_M Q6_K (also: Q4_1 Q5_0 Q5_1 Q4_K_S Q5_K_S IQ4_NL IQ4_XS).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 ctx=256 model=gemma3-270m types=()
while (($#)); do
  case $1 in
    -t) threads=$2; shift 2 ;;
    -c) ctx=$2; shift 2 ;;
    *) if [[ $model == gemma3-270m && ${#types[@]} -eq 0 && $1 != Q* && $1 != q* && $1 != IQ* && $1 != iq* ]]; then model=$1; else types+=("$1"); fi; shift ;;
  esac
done
((${#types[@]})) || types=(Q8_0 Q4_0 Q4_K_M Q5_K_M Q6_K)

bin=${LLAMA_BIN:-$(bash bench/build-llama-cpp.sh)}   # LLAMA_BIN: a folder with llama-quantize and llama-perplexity
cargo build --release -q -p kiln-cli
kiln=target/release/kiln
text=tests/data/ppl-text.txt
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
src=$("$kiln" pull "$model")
"$kiln" quantize "$src" "$out/f16.gguf" F16 >/dev/null
grep -m1 -o 'avx512[a-z]*\|avx2\|fma\|f16c' /proc/cpuinfo | sort -u | tr '\n' ' ' >&2; echo >&2

ppl_llama() { # final estimate from llama-perplexity
  "$bin/llama-perplexity" -m "$1" -f "$text" -c "$ctx" -t "$threads" 2>&1 |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'
}
ppl_kiln() {
  "$kiln" perplexity -m "$1" -f "$text" -c "$ctx" -t "$threads" 2>/dev/null |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'
}

printf '%-8s %12s %12s %8s %12s %12s %10s %10s\n' type kiln_size llama_size size_r \
  ppl_kiln_q ppl_llama_q ppl_ratio kiln_ppl
base=$(ppl_llama "$out/f16.gguf")
echo "F16 input: llama-perplexity $base" >&2
for t in "${types[@]}"; do
  /usr/bin/time -f %e -o "$out/kt" "$kiln" quantize -t "$threads" "$out/f16.gguf" "$out/k.gguf" "$t" >/dev/null 2>&1
  /usr/bin/time -f %e -o "$out/lt" "$bin/llama-quantize" "$out/f16.gguf" "$out/l.gguf" "$t" "$threads" >/dev/null 2>&1
  ks=$(stat -c %s "$out/k.gguf") ls=$(stat -c %s "$out/l.gguf")
  pk=$(ppl_llama "$out/k.gguf") pl=$(ppl_llama "$out/l.gguf") kk=$(ppl_kiln "$out/k.gguf")
  printf '%-8s %12d %12d %8.4f %12s %12s %10.4f %10s   (time kiln %ss, llama %ss)\n' "$t" "$ks" "$ls" \
    "$(awk "BEGIN{print $ks/$ls}")" "$pk" "$pl" "$(awk "BEGIN{print $pk/$pl}")" "$kk" "$(cat "$out/kt")" "$(cat "$out/lt")"
done
