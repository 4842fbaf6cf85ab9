#!/usr/bin/env bash
# kiln on IQ4_NL / IQ4_XS files made by llama.cpp's own `llama-quantize`: perplexity of the same
# file computed by kiln and by llama-perplexity, and speed (`kiln bench` and `llama-bench`,
# alternately, PASSES times each). Not a test: prints a table for BENCHMARKS.md.
#
#   bench/iq4-vs-llama-cpp.sh [-t THREADS] [-c CTX] [-p 512] [-n 128] [-r 3] [--passes 2]
#                             [MODEL_NAME [TYPE ...]]
#
# MODEL_NAME: a model kiln can pull (default gemma3-270m). The published files are Q4_K_M, so
# the common input is made first: `kiln quantize MODEL.gguf f16.gguf F16` (dequantised F16),
# then `llama-quantize f16.gguf TYPE` (IQ4_NL / IQ4_XS need no importance matrix). TYPE: default
# IQ4_NL IQ4_XS. LLAMA_BIN: a folder with llama-quantize, llama-perplexity and llama-bench
# (default: bench/build-llama-cpp.sh's).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 ctx=256 np=512 ng=128 reps=3 passes=2 model=gemma3-270m types=()
while (($#)); do
  case $1 in
    -t) threads=$2; shift 2 ;;
    -c) ctx=$2; shift 2 ;;
    -p) np=$2; shift 2 ;;
    -n) ng=$2; shift 2 ;;
    -r) reps=$2; shift 2 ;;
    --passes) passes=$2; shift 2 ;;
    *) if [[ $model == gemma3-270m && ${#types[@]} -eq 0 && $1 != IQ* && $1 != iq* ]]; then model=$1; else types+=("$1"); fi; shift ;;
  esac
done
((${#types[@]})) || types=(IQ4_NL IQ4_XS)

bin=${LLAMA_BIN:-$(bash bench/build-llama-cpp.sh)}
cargo build --release -q -p kiln-cli
kiln=target/release/kiln
text=tests/data/ppl-text.txt
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
src=$("$kiln" pull "$model")
"$kiln" quantize "$src" "$out/f16.gguf" F16 >/dev/null
echo "nproc $(nproc); $(uptime)" >&2
echo "$("$kiln" --version 2>/dev/null | head -1); cpu: $(grep -m1 -o 'avx512_vnni\|avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')" >&2

ppl_llama() {
  "$bin/llama-perplexity" -m "$1" -f "$text" -c "$ctx" -t "$threads" 2>&1 |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'
}
ppl_kiln() {
  "$kiln" perplexity -m "$1" -f "$text" -c "$ctx" -t "$threads" 2>/dev/null |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'
}

echo "| model | type | tensor types | kiln PPL | llama.cpp PPL | ratio |"
echo "| --- | --- | --- | ---: | ---: | ---: |"
for t in "${types[@]}"; do
  "$bin/llama-quantize" "$out/f16.gguf" "$out/$t.gguf" "$t" "$threads" >/dev/null 2>&1
  mix=$("$kiln" inspect "$out/$t.gguf" 2>/dev/null | awk '$2 == "" {next} $1 ~ /^[A-Z0-9_]+:$/ && $3 ~ /^tensors/ {sub(":", "", $1); printf "%s%s %s", sep, $1, $2; sep = ", "}')
  pk=$(ppl_kiln "$out/$t.gguf") pl=$(ppl_llama "$out/$t.gguf")
  printf '| %s | %s | %s | %s | %s | %.4f |\n' "$model" "$t" "$mix" "$pk" "$pl" "$(awk "BEGIN{print $pk/$pl}")"
done

for t in "${types[@]}"; do
  for ((pass = 1; pass <= passes; pass++)); do
    "$kiln" bench -m "$out/$t.gguf" -t "$threads" -p "$np" -n "$ng" -r "$reps" --json >"$out/$t.$pass.kiln.json"
    "$bin/llama-bench" -m "$out/$t.gguf" -t "$threads" -p "$np" -n "$ng" -r "$reps" -o json >"$out/$t.$pass.llama.json"
  done
done
python3 - "$out" "$model" "${types[@]}" <<'PY'
import json, sys, statistics, glob
out, model, types = sys.argv[1], sys.argv[2], sys.argv[3:]
print()
print("| model | type | test | kiln t/s | llama.cpp t/s | ratio |")
print("| --- | --- | --- | ---: | ---: | ---: |")
for ty in types:
    rows = {}
    for f in sorted(glob.glob(f"{out}/{ty}.*.json")):
        who = "kiln" if f.endswith(".kiln.json") else "llama"
        for t in json.load(open(f)):
            test = f"pp{t['n_prompt']}" if t["n_prompt"] else f"tg{t['n_gen']}"
            rows.setdefault(test, {"kiln": [], "llama": []})[who].append(t["avg_ts"])
    for test, v in rows.items():
        k, l = statistics.mean(v["kiln"]), statistics.mean(v["llama"])
        print(f"| {model} | {ty} | {test} | {k:.1f} | {l:.1f} | {k/l:.2f}x |")
PY
