#!/usr/bin/env bash
# Two kiln binaries (a change's before and after) timed alternately by `kiln bench`, PASSES
# times each, with llama-bench alongside when its folder is given: prompt processing and
# generation t/s per pass, then the after/before (and after/llama.cpp) ratios of the means.
# Not a test: prints a table for BENCHMARKS.md, with nproc, the CPU flags and the load.
#
#   bench/before-after.sh BEFORE_KILN AFTER_KILN [-m MODEL] [-t 2] [-p 512] [-n 32] [-r 3]
#                         [--passes 3] [--llama LLAMA_BIN]
#
# MODEL: a GGUF file or a name kiln can pull (default qwen2.5-coder-1.5b). Making the two
# binaries: `cargo build --release -p kiln-cli && cp target/release/kiln /tmp/kiln-after`, the
# same at the commit before (`git checkout -q REV`, build, copy, `git checkout -q -`).
set -euo pipefail
(($# >= 2)) || { sed -n '2,12p' "$0"; exit 2; }
before=$1 after=$2
shift 2
model=qwen2.5-coder-1.5b threads=2 np=512 ng=32 reps=3 passes=3 llama=
while (($#)); do
  case $1 in
    -m) model=$2; shift 2 ;;
    -t) threads=$2; shift 2 ;;
    -p) np=$2; shift 2 ;;
    -n) ng=$2; shift 2 ;;
    -r) reps=$2; shift 2 ;;
    --passes) passes=$2; shift 2 ;;
    --llama) llama=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -f $model ]] || model=$("$after" pull "$model")
echo "nproc $(nproc); $(uptime)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-); flags: $(grep -m1 -o 'avx512_vnni\|avx512f\|avx2\|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')"
"$after" bench --help >/dev/null

# t/s of pp and tg from `kiln bench --json` / `llama-bench -o json`: "PP TG"
speeds() {
  python3 -c '
import json, sys
rows = json.load(sys.stdin)
pp = [r["avg_ts"] for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0]
tg = [r["avg_ts"] for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0]
print(f"{pp[0]:.2f} {tg[0]:.2f}")'
}
declare -A sum_pp sum_tg
names=(before after)
[[ -n $llama ]] && names+=(llama.cpp)
for n in "${names[@]}"; do sum_pp[$n]=0 sum_tg[$n]=0; done
echo "| pass | binary | pp$np t/s | tg$ng t/s |"
echo "| ---: | --- | ---: | ---: |"
for ((pass = 1; pass <= passes; pass++)); do
  for n in "${names[@]}"; do
    case $n in
      before) s=$("$before" bench -m "$model" -t "$threads" -p "$np" -n "$ng" -r "$reps" --json 2>/dev/null | speeds) ;;
      after) s=$("$after" bench -m "$model" -t "$threads" -p "$np" -n "$ng" -r "$reps" --json 2>/dev/null | speeds) ;;
      llama.cpp) s=$("$llama/llama-bench" -m "$model" -t "$threads" -p "$np" -n "$ng" -r "$reps" -o json 2>/dev/null | speeds) ;;
    esac
    read -r pp tg <<<"$s"
    echo "| $pass | $n | $pp | $tg |"
    sum_pp[$n]=$(awk "BEGIN{print ${sum_pp[$n]} + $pp}") sum_tg[$n]=$(awk "BEGIN{print ${sum_tg[$n]} + $tg}")
  done
done
ratio() { awk "BEGIN{printf \"%.3f\", $1 / $2}"; }
echo
echo "after/before: pp $(ratio "${sum_pp[after]}" "${sum_pp[before]}")x, tg $(ratio "${sum_tg[after]}" "${sum_tg[before]}")x"
if [[ -n $llama ]]; then
  echo "after/llama.cpp: pp $(ratio "${sum_pp[after]}" "${sum_pp[llama.cpp]}")x, tg $(ratio "${sum_tg[after]}" "${sum_tg[llama.cpp]}")x"
  echo "before/llama.cpp: pp $(ratio "${sum_pp[before]}" "${sum_pp[llama.cpp]}")x, tg $(ratio "${sum_tg[before]}" "${sum_tg[llama.cpp]}")x"
fi
echo "load after: $(uptime)"
