#!/usr/bin/env bash
# Build the llama.cpp anchor (CPU, Release, -march=native) from the registry's llama-cpp-python source
# package, which vendors llama.cpp. Used only to measure kiln against llama.cpp side by side.
#
#   build-llama-cpp.sh [--dest DIR]     -> prints the bin folder (llama-bench, llama-completion, llama-simple,
#                                          llama-perplexity, llama-tokenize, llama-server, llama-cli, llama-quantize)
# About 17 minutes on 2 cores; idempotent (a finished build is reused).
set -euo pipefail
version=0.3.36                      # vendors llama.cpp commit 0c1e57098 (ggml 0.25.3)
dest=${KILN_ANCHORS:-${KILN_HOME:-$HOME/.cache/kiln}/anchors}/llama.cpp-0c1e57098
[[ ${1:-} == --dest ]] && dest=$2
bin=$dest/bin
targets=(llama-bench llama-completion llama-simple llama-perplexity llama-tokenize llama-server llama-cli llama-quantize)
if [[ -x $bin/llama-server && -x $bin/llama-bench && -x $bin/llama-quantize ]]; then echo "$bin"; exit 0; fi
command -v cmake >/dev/null || { apt-get update -q && apt-get install -y -q cmake; } >&2
src=$dest/src
mkdir -p "$src"
if [[ ! -f $src/vendor/llama.cpp/CMakeLists.txt ]]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  pip download --no-deps --no-binary :all: -q -d "$tmp" "llama-cpp-python==$version" >&2
  tar -xzf "$tmp"/llama_cpp_python-$version.tar.gz -C "$src" --strip-components=1
fi
cmake -S "$src/vendor/llama.cpp" -B "$dest/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_COMMIT=0c1e57098 >&2
cmake --build "$dest/build" -j"$(nproc)" --target "${targets[@]}" >&2
mkdir -p "$bin"
for t in "${targets[@]}"; do cp "$dest/build/bin/$t" "$bin/"; done
echo "$bin"
