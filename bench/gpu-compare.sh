#!/usr/bin/env bash
# kiln's GPU backend side by side with llama.cpp's own GPU build: the same GGUF files on the same
# card, `kiln bench --device gpu` and `llama-bench -ngl 99` alternately (PASSES times each),
# prompt processing (pp) and generation (tg) tokens/s as kiln/llama.cpp ratios, with the adapter
# each one used, the CPU and the load printed beside them. Not a test: run it on an idle machine.
#
#   bench/gpu-compare.sh [--backend cuda|vulkan] [-p 512] [-n 128] [-r 3] [--passes 2]
#                        [--device gpu|gpu:N] [MODEL ...]
#
# MODEL: gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b (default: all three; `kiln pull`
# names, or paths to GGUF files).
#
# llama.cpp: LLAMA_CPP_BIN=DIR takes the llama-bench in DIR (a GPU build). Without it, llama.cpp
# is built once (cached in $KILN_HOME/anchors/llama.cpp-0c1e57098-BACKEND) from the registry's
# llama-cpp-python 0.3.36 source package, as bench/build-llama-cpp.sh builds the CPU anchor, with
# -DGGML_CUDA=ON (the default where nvcc is found; --backend cuda) or -DGGML_VULKAN=ON (the default
# elsewhere; needs glslc and the Vulkan and SPIR-V headers: Debian's glslc, libvulkan-dev and
# spirv-headers, apt-installed when missing; the headers must know VK_EXT_layer_settings, which
# Debian 12's 1.3.239 do not: the script says so before building). CUDA_ARCHITECTURES (default
# native) sets the CUDA build's targets. LLAMA_CPP_SDIST=FILE uses that source package file
# instead of downloading it; the CPU anchor's unpacked source is reused when present.
# kiln: KILN_BIN=FILE takes that binary, else `cargo build --release -p kiln-cli`.
#
# On a machine without internet (a lent GPU machine): everything must be brought along —
#   * the models: $KILN_HOME/models/*.gguf with their .sha256-ok markers (or pass GGUF paths);
#   * kiln: a release binary built elsewhere for the same CPU architecture (KILN_BIN=...);
#   * llama.cpp: its GPU llama-bench (LLAMA_CPP_BIN=...), or the source package
#     (LLAMA_CPP_SDIST=.../llama_cpp_python-0.3.36.tar.gz; `python3 -m pip download --no-deps
#     --no-binary :all: llama-cpp-python==0.3.36`) and the build tools (cmake, and nvcc for
#     --backend cuda or glslc + Vulkan headers for vulkan) on that machine.
#   * a Vulkan loader and driver (libvulkan1 and the vendor's ICD) for kiln's wgpu backend.
#   For example, with NVIDIA's CUDA image (nvcc, cmake) and the files under ./carry:
#     KILN_HOME=$PWD/carry/kiln KILN_BIN=carry/kiln LLAMA_CPP_SDIST=carry/llama_cpp_python-0.3.36.tar.gz \
#       bench/gpu-compare.sh --backend cuda
#   The device tool of the workplace this was written in carries at most 64 MiB per call, which
#   none of the three models fits: there the comparison waits for a machine that holds them.
#
# Here (no GPU: Mesa's lavapipe is kiln's adapter, numbers not judged), a quick run that shows the
# script works end to end, llama.cpp's CPU anchor standing in for a GPU build:
#   LLAMA_CPP_BIN=~/.cache/kiln/anchors/llama.cpp-0c1e57098/bin bench/gpu-compare.sh -p 16 -n 4 -r 1 --passes 1
set -euo pipefail
cd "$(dirname "$0")/.."
np=512 ng=128 reps=3 passes=2 backend=vulkan device=gpu models=()
command -v nvcc >/dev/null && backend=cuda
while (($#)); do
  case $1 in
    -p) np=$2; shift 2 ;;
    -n) ng=$2; shift 2 ;;
    -r) reps=$2; shift 2 ;;
    --passes) passes=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) models+=("$1"); shift ;;
  esac
done
((${#models[@]})) || models=(gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b)
[[ $backend == vulkan || $backend == cuda ]] || { echo "--backend: vulkan or cuda" >&2; exit 2; }

# llama.cpp's llama-bench with the GPU backend, built once from the llama-cpp-python sdist.
build_llama_gpu() {
  local version=0.3.36 commit=0c1e57098
  local anchors=${KILN_ANCHORS:-${KILN_HOME:-$HOME/.cache/kiln}/anchors}
  local dest=$anchors/llama.cpp-$commit-$backend
  if [[ -x $dest/bin/llama-bench ]]; then echo "$dest/bin"; return; fi
  local src=$anchors/llama.cpp-$commit/src # the CPU anchor's unpacked source, when built
  if [[ ! -f $src/vendor/llama.cpp/CMakeLists.txt ]]; then
    src=$dest/src
    mkdir -p "$src"
    if [[ ! -f $src/vendor/llama.cpp/CMakeLists.txt ]]; then
      local sdist=${LLAMA_CPP_SDIST:-}
      if [[ -z $sdist ]]; then
        local tmp; tmp=$(mktemp -d)
        python3 -m pip download --no-deps --no-binary :all: -q -d "$tmp" "llama-cpp-python==$version" >&2
        sdist=$tmp/llama_cpp_python-$version.tar.gz
      fi
      tar -xzf "$sdist" -C "$src" --strip-components=1
    fi
  fi
  local flags=()
  case $backend in
    vulkan)
      # the shader compiler, the Vulkan headers and loader, and SPIR-V's headers (ggml-vulkan's
      # CMake asks for SPIRV-Headers' package)
      local pkgs=(glslc libvulkan-dev spirv-headers)
      if ! command -v glslc >/dev/null || [[ ! -f /usr/include/vulkan/vulkan.h ]] ||
        [[ ! -d /usr/include/spirv ]]; then
        { apt-get install -y -q "${pkgs[@]}" || { apt-get update -q && apt-get install -y -q "${pkgs[@]}"; }; } >&2
      fi
      # this llama.cpp's ggml-vulkan.cpp uses VK_EXT_layer_settings, newer than some distributions'
      # headers (Debian 12's 1.3.239 lacks it; its build then fails after the shaders)
      if ! grep -q VK_EXT_layer_settings /usr/include/vulkan/vulkan_core.h 2>/dev/null; then
        echo "llama.cpp's Vulkan backend needs Vulkan headers with VK_EXT_layer_settings (these" \
          "are $(grep -m1 -o 'VK_HEADER_VERSION [0-9]*' /usr/include/vulkan/vulkan_core.h)):" \
          "install newer ones (e.g. Debian 13's libvulkan-dev, or LunarG's SDK), use --backend cuda," \
          "or point LLAMA_CPP_BIN at a GPU build of llama-bench" >&2
        exit 1
      fi
      flags=(-DGGML_VULKAN=ON) ;;
    cuda) flags=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES:-native}") ;;
  esac
  command -v cmake >/dev/null || { apt-get update -q && apt-get install -y -q cmake; } >&2
  cmake -S "$src/vendor/llama.cpp" -B "$dest/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_COMMIT=$commit "${flags[@]}" >&2
  cmake --build "$dest/build" -j"$(nproc)" --target llama-bench >&2
  mkdir -p "$dest/bin"
  cp "$dest/build/bin/llama-bench" "$dest/bin/"
  echo "$dest/bin"
}

bin=${LLAMA_CPP_BIN:-$(build_llama_gpu)}
[[ -x $bin/llama-bench ]] || { echo "no llama-bench in $bin" >&2; exit 1; }
if [[ -n ${KILN_BIN:-} ]]; then
  kiln=$KILN_BIN
else
  cargo build --release -q -p kiln-cli
  kiln=target/release/kiln
fi

echo "== $(date -u +%FT%TZ) $(uname -m), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
echo "   CPU flags: $(grep -m1 -E '^(flags|Features)' /proc/cpuinfo | tr ' ' '\n' |
  grep -x -E 'avx2|avx512f|avx512bw|avx512vl|avx512_vnni|avx_vnni|fma|f16c|asimd|asimddp' | xargs)"
echo "   load: $(uptime | sed 's/.*load average/load average/')"
command -v nvidia-smi >/dev/null && nvidia-smi -L | sed 's/^/   /'
echo "== kiln's adapters (kiln inspect --devices; the run uses --device $device)"
"$kiln" inspect --devices 2>/dev/null | sed 's/^/   /'

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for m in "${models[@]}"; do
  if [[ -f $m ]]; then file=$m; else file=$("$kiln" pull "$m"); fi
  name=$(basename "$file")
  printf '%s\n' "$file" >"$out/$name.path"
  for ((pass = 1; pass <= passes; pass++)); do
    echo "== $name pass $pass" >&2
    "$kiln" bench -m "$file" --device "$device" -p "$np" -n "$ng" -r "$reps" --json \
      >"$out/$name.$pass.kiln.json" 2>"$out/$name.$pass.kiln.err" || echo "   kiln failed" >&2
    "$bin/llama-bench" -m "$file" -ngl 99 -p "$np" -n "$ng" -r "$reps" -o json \
      >"$out/$name.$pass.llama.json" 2>"$out/$name.$pass.llama.err" || echo "   llama-bench failed" >&2
  done
done

python3 - "$out" "$passes" <<'PY'
import glob, json, os, statistics, sys
out, passes = sys.argv[1], int(sys.argv[2])
names = sorted(os.path.basename(p)[:-5] for p in glob.glob(f"{out}/*.path"))

def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None

def why(path):
    lines = [l for l in open(path).read().splitlines() if l.strip() and "XDG_RUNTIME_DIR" not in l]
    errs = [l for l in lines if "error" in l.lower()]
    return (errs or lines or ["no output"])[-1].strip()

print("| model | test | kiln t/s | llama.cpp t/s | kiln / llama.cpp |")
print("| --- | --- | ---: | ---: | ---: |")
devices, notes = {}, []
for m in names:
    rows = {}
    for p in range(1, passes + 1):
        for who in ("kiln", "llama"):
            base = f"{out}/{m}.{p}.{who}"
            runs = load(base + ".json")
            if not runs:
                notes.append(f"{m}: {who} failed: {why(base + '.err')}")
                continue
            for t in runs:
                test = f"pp{t['n_prompt']}" if t["n_prompt"] else f"tg{t['n_gen']}"
                rows.setdefault(test, {"kiln": [], "llama": []})[who].append(t["avg_ts"])
                if who == "kiln":
                    devices.setdefault("kiln", set()).add(t.get("device", "?"))
                else:
                    gpu = t.get("gpu_info") or "no GPU"
                    devices.setdefault("llama.cpp", set()).add(
                        f"backends {t.get('backends', '?')}, {gpu}, -ngl {t.get('n_gpu_layers', '?')}")
    for test, v in rows.items():
        k = statistics.mean(v["kiln"]) if v["kiln"] else None
        l = statistics.mean(v["llama"]) if v["llama"] else None
        fk = f"{k:.1f}" if k else "-"
        fl = f"{l:.1f}" if l else "-"
        ratio = f"{k / l:.2f}x" if k and l else "-"
        print(f"| {m} | {test} | {fk} | {fl} | {ratio} |")
for who, ds in devices.items():
    for d in sorted(ds):
        print(f"{who}: {d}")
if any("CPU" == d.split(",")[0].removeprefix("backends ").strip() for d in devices.get("llama.cpp", ())):
    print("note: this llama-bench has no GPU backend (a CPU build): the ratios do not compare GPUs")
for n in notes:
    print("note:", n)
PY
