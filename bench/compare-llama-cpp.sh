#!/usr/bin/env bash
# Side-by-side speed of kiln and llama.cpp on the same GGUF files, same machine, same threads.
# Runs `kiln bench` and `llama-bench` alternately (PASSES times each) and prints kiln/llama.cpp
# ratios per model and test. Not a test: run it on an idle machine.
#
#   bench/compare-llama-cpp.sh [-t THREADS] [-p 512] [-n 128] [-r 3] [--passes 2] [MODEL_NAME ...]
#
# MODEL_NAME: gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b (default: all three).
# Prints the machine (nproc, CPU model and SIMD flags, kiln's kernel level, load average before
# and after) beside the table: a ratio taken on a loaded machine says so.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 np=512 ng=128 reps=3 passes=2 models=()
while (($#)); do
  case $1 in
    -t) threads=$2; shift 2 ;;
    -p) np=$2; shift 2 ;;
    -n) ng=$2; shift 2 ;;
    -r) reps=$2; shift 2 ;;
    --passes) passes=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "compare-llama-cpp.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) models+=("$1"); shift ;;
  esac
done
((${#models[@]})) || models=(gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b)

bin=$(bash bench/build-llama-cpp.sh)
cargo build --release -q -p kiln-cli
kiln=target/release/kiln
out=$(mktemp -d)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for m in "${models[@]}"; do
  file=$("$kiln" pull "$m")
  for ((pass = 1; pass <= passes; pass++)); do
    echo "== $m pass $pass" >&2
    /usr/bin/time -f %M -o "$out/$m.$pass.kiln.rss" \
      "$kiln" bench -m "$file" -t "$threads" -p "$np" -n "$ng" -r "$reps" --json >"$out/$m.$pass.kiln.json"
    /usr/bin/time -f %M -o "$out/$m.$pass.llama.rss" \
      "$bin/llama-bench" -m "$file" -t "$threads" -p "$np" -n "$ng" -r "$reps" -o json >"$out/$m.$pass.llama.json"
  done
done

echo "machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|fma|f16c)' | sort | tr '\n' ' ')"
echo "load average (1, 5, 15 min): before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" "$threads" "${models[@]}" <<'PY'
import json, sys, statistics, glob, os
out, threads, models = sys.argv[1], sys.argv[2], sys.argv[3:]
for f in sorted(glob.glob(f"{out}/*.kiln.json"))[:1]:
    print(f"kiln {json.load(open(f))[0].get('device', 'device: ?')}; threads {threads}")
print(f"| model | test | kiln t/s | llama.cpp t/s | ratio | kiln peak RSS | llama.cpp peak RSS |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for m in models:
    rows = {}
    rss = {"kiln": [], "llama": []}
    for f in sorted(glob.glob(f"{out}/{m}.*.json")):
        who = "kiln" if f.endswith(".kiln.json") else "llama"
        for t in json.load(open(f)):
            test = f"pp{t['n_prompt']}" if t["n_prompt"] else f"tg{t['n_gen']}"
            rows.setdefault(test, {"kiln": [], "llama": []})[who].append(t["avg_ts"])
        rss[who].append(int(open(f[:-5] + ".rss").read().split()[-1]) * 1024)
    for test, v in rows.items():
        k, l = statistics.mean(v["kiln"]), statistics.mean(v["llama"])
        print(f"| {m} | {test} | {k:.1f} | {l:.1f} | {k/l:.2f}x | {max(rss['kiln'])/2**20:.0f} MiB | {max(rss['llama'])/2**20:.0f} MiB |")
PY
