#!/usr/bin/env bash
# Speculative decoding on the committed code prompts (bench/spec-prompts: write a function,
# continue a file, edit a given snippet), greedy, side by side in one run:
#   plain     kiln's plain decoding of the target
#   draft     the target with the draft model alone (--model-draft, --lookup-ngram 0), once per
#             --draft-vocab value
#             (comma-separated, e.g. full,65536,32768,16384: one column each, run in turn on
#             each prompt; default: kiln's default)
#   draft+lookup  the target with the draft model checking prompt lookup's proposals
#             (--model-draft with --lookup-ngram, kiln's default with a draft model; the
#             draft's --draft-max, --draft-p-min and default --draft-vocab), on every prompt
#   lookup    the target with prompt lookup alone (--lookup-ngram), on the editing prompts
#   llama.cpp llama-speculative with the same files, prompts and draft sizes, when the anchor
#             binaries have it
# Prints generated tokens per second (tokens after the first over the time from the first to
# the last; model loading and the prompt excluded), ratios to plain decoding, acceptance rates,
# and whether every run's tokens equal plain decoding's. Not a test: run it on an idle machine.
#
#   bench/speculative.sh [-t THREADS] [-n TOKENS] [--target NAME] [--draft NAME]
#                        [--draft-max N] [--draft-p-min P] [--draft-vocab N,...]
#                        [--lookup-ngram N] [--lookup-max N]
#                        [--no-llama] (kiln only: leave llama-speculative out)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 n=128 target=qwen2.5-coder-1.5b draft=qwen2.5-coder-0.5b
draft_max=8 p_min=0.75 ngram=4 lookup_max=12 no_llama= draft_vocab=
while (($#)); do
  case $1 in
    -t) threads=$2; shift 2 ;;
    -n) n=$2; shift 2 ;;
    --target) target=$2; shift 2 ;;
    --draft) draft=$2; shift 2 ;;
    --draft-max) draft_max=$2; shift 2 ;;
    --draft-p-min) p_min=$2; shift 2 ;;
    --draft-vocab) draft_vocab=$2; shift 2 ;;
    --lookup-ngram) ngram=$2; shift 2 ;;
    --lookup-max) lookup_max=$2; shift 2 ;;
    --no-llama) no_llama=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
# KILN=path/to/kiln uses that binary instead of building one.
if [[ -z ${KILN:-} ]]; then
  cargo build --release -q -p kiln-cli
fi
kiln=${KILN:-target/release/kiln}
tfile=$("$kiln" pull "$target")
dfile=$("$kiln" pull "$draft")
out=$(mktemp -d)
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), nproc $(nproc)"
echo "load at start: $(uptime | sed 's/.*load average/load average/')"
echo "CPU flags: $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' | grep -E '^(avx|avx2|fma|f16c|avx512[a-z_]*|avx_vnni|amx[a-z_]*)$' | sort | xargs)"
echo "threads $threads, -n $n, greedy; target $target, draft $draft (--draft-max $draft_max --draft-p-min $p_min --draft-vocab ${draft_vocab:-default}); lookup --lookup-ngram $ngram --draft-max $lookup_max"
IFS=, read -r -a vocabs <<<"${draft_vocab:-default}"
anchors=${KILN_HOME:-$HOME/.cache/kiln}/anchors/llama.cpp-0c1e57098/bin
spec_bin=""
if [[ -n $no_llama ]]; then
  echo "llama.cpp: left out (--no-llama)"
elif [[ -x $anchors/llama-speculative ]]; then
  spec_bin=$anchors/llama-speculative
else
  echo "llama.cpp: no llama-speculative in $anchors; its column is left out"
fi
for f in bench/spec-prompts/*.txt; do
  p=$(basename "$f" .txt)
  echo "== $p" >&2
  common=(complete -m "$tfile" -t "$threads" -n "$n" -f "$f" --json --seed 0)
  "$kiln" "${common[@]}" >"$out/$p.plain.json"
  for v in "${vocabs[@]}"; do
    dv=()
    [[ $v == default ]] || dv=(--draft-vocab "$v")
    "$kiln" "${common[@]}" --model-draft "$dfile" --draft-max "$draft_max" --draft-p-min "$p_min" "${dv[@]}" \
      --lookup-ngram 0 >"$out/$p.draft-$v.json"
  done
  "$kiln" "${common[@]}" --model-draft "$dfile" --draft-max "$draft_max" --draft-p-min "$p_min" \
    --lookup-ngram "$ngram" >"$out/$p.both.json"
  if [[ $p == *edit* ]]; then
    "$kiln" "${common[@]}" --lookup-ngram "$ngram" --draft-max "$lookup_max" >"$out/$p.lookup.json"
  fi
  if [[ -n $spec_bin ]]; then
    "$spec_bin" -m "$tfile" -md "$dfile" -f "$f" -n "$n" -t "$threads" -td "$threads" --temp 0 \
      --spec-draft-n-max "$draft_max" --spec-draft-p-min "$p_min" -c 4096 -ngl 0 \
      >"$out/$p.llama.txt" 2>&1 || echo "llama-speculative failed on $p (see $out/$p.llama.txt)" >&2
  fi
done

python3 - "$out" "${vocabs[@]}" <<'PY'
import glob, json, os, re, sys
out = sys.argv[1]
drafts = [f"draft-{v}" for v in sys.argv[2:]]
def load(p, kind):
    f = f"{out}/{p}.{kind}.json"
    if not os.path.exists(f):
        return None
    j = json.load(open(f))
    return j["timings"], j["choices"][0]["text"]
def llama(p):
    f = f"{out}/{p}.llama.txt"
    if not os.path.exists(f):
        return None
    t = open(f).read()
    m = re.search(r"decoded\s+(\d+)\s+tokens in\s+([\d.]+)\s+seconds, speed:\s+([\d.]+)", t)
    d = re.search(r"n_drafted\s*=\s*(\d+)", t)
    a = re.search(r"n_accept\s*=\s*(\d+)", t)
    if not m:
        return None
    return (float(m.group(3)), (int(a.group(1)) / int(d.group(1)) if a and d and int(d.group(1)) else None),
            int(m.group(1)), float(m.group(2)), (int(a.group(1)), int(d.group(1))) if a and d else (0, 0))
prompts = sorted(os.path.basename(f)[:-len(".plain.json")] for f in glob.glob(f"{out}/*.plain.json"))
head = "".join(f" {d} t/s | ratio | accepted |" for d in drafts)
print(f"| prompt | tokens | plain t/s |{head} draft+lookup t/s | ratio | accepted | lookup t/s | ratio | accepted | llama-speculative t/s | accepted | same tokens |")
print("| --- | ---: | ---: |" + " ---: | ---: | ---: |" * (len(drafts) + 2) + " ---: | ---: | --- |")
tot = {k: [0, 0.0] for k in ("plain", "lookup", "plain_edit", "llama", "both", "both_edit", "plain_other", "both_other", *drafts, *(d + "_edit" for d in drafts), *(d + "_other" for d in drafts))}
llama_acc = [0, 0]
acc = {k: [0, 0] for k in ("lookup", "both", *drafts)}
all_same = True
for p in prompts:
    (tp, text) = load(p, "plain")
    row = [p, str(tp["predicted_n"]), f"{tp['predicted_per_second']:.2f}"]
    same = []
    def add(kind, t):
        tot[kind][0] += t["predicted_n"] - 1
        tot[kind][1] += t["predicted_ms"] / 1e3
    part = "_edit" if "edit" in p else "_other"
    add("plain", tp)
    add("plain" + part, tp)
    for kind in (*drafts, "both", "lookup"):
        r = load(p, kind)
        if r is None:
            row += ["", "", ""]
            continue
        t, txt = r
        add(kind, t)
        if kind != "lookup":
            add(kind + part, t)
        acc[kind][0] += t["draft_n_accepted"]; acc[kind][1] += t["draft_n"]
        rate = t["acceptance_rate"]
        row += [f"{t['predicted_per_second']:.2f}", f"{t['predicted_per_second'] / tp['predicted_per_second']:.2f}x",
                f"{rate:.0%}" if rate is not None else "-"]
        same.append(txt == text and t["predicted_n"] == tp["predicted_n"])
    l = llama(p)
    if l:
        tot["llama"][0] += l[2]; tot["llama"][1] += l[3]
        llama_acc[0] += l[4][0]; llama_acc[1] += l[4][1]
    row += [f"{l[0]:.2f}", f"{l[1]:.0%}" if l[1] is not None else "-"] if l else ["", ""]
    ok = all(same)
    all_same &= ok
    row.append("yes" if ok else "NO")
    print("| " + " | ".join(row) + " |")
def rate(k):
    n, s = tot[k]
    return n / s if s else 0.0
print()
for d in (*drafts, "both"):
    name = "draft+lookup" if d == "both" else d
    print(f"all prompts: plain {rate('plain'):.2f} t/s, {name} {rate(d):.2f} t/s = {rate(d) / rate('plain'):.2f}x, "
          f"acceptance {acc[d][0]}/{acc[d][1]} = {acc[d][0] / max(acc[d][1], 1):.0%}; "
          f"editing prompts {rate(d + '_edit') / max(rate('plain_edit'), 1e-9):.2f}x, "
          f"the others {rate(d + '_other') / max(rate('plain_other'), 1e-9):.2f}x")
if tot["lookup"][1]:
    print(f"editing prompts: plain {rate('plain_edit'):.2f} t/s, lookup {rate('lookup'):.2f} t/s = {rate('lookup') / rate('plain_edit'):.2f}x, "
          f"acceptance {acc['lookup'][0]}/{acc['lookup'][1]} = {acc['lookup'][0] / max(acc['lookup'][1], 1):.0%}")
if tot["llama"][1]:
    print(f"llama-speculative (same files, prompts, --draft-max, --draft-p-min): {rate('llama'):.2f} t/s "
          f"(decoded tokens over its decode time), acceptance {llama_acc[0]}/{llama_acc[1]} = "
          f"{llama_acc[0] / max(llama_acc[1], 1):.0%}; " + ", ".join(f"kiln {d} / llama-speculative = {rate(d) / rate('llama'):.2f}x" for d in drafts))
print("tokens identical to plain decoding:", "yes, every run" if all_same else "NO")
PY
echo "load at end: $(uptime | sed 's/.*load average/load average/')"
