#!/usr/bin/env bash
# The Python package's tests, as CI runs them: build the wheel with maturin (in a scratch venv),
# install it into a fresh venv with numpy and pytest only, check that it imports with no Rust
# toolchain on PATH, then run pytest (crates/python/tests) with that venv's Python.
# Needs Rust, Python 3 with venv and pip, and access to the package registry. The tests compare
# with the `kiln` binary (KILN_BIN, default target/release/kiln; built here if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

export KILN_BIN=${KILN_BIN:-$root/target/release/kiln}
[ -x "$KILN_BIN" ] || cargo build --release -p kiln-cli

echo "-- maturin build (wheel)"
python3 -m venv "$work/build"
"$work/build/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.9.4,<2"
"$work/build/bin/maturin" build --release --manifest-path crates/python/Cargo.toml \
    --out "$work/dist" --compatibility linux
ls "$work/dist"

echo "-- fresh venv: the wheel, numpy (its dependency) and pytest"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "$work"/dist/kiln-*.whl pytest

echo "-- import without Rust"
env -i HOME="$HOME" PATH=/usr/bin:/bin "$work/venv/bin/python" -c '
import shutil, kiln
assert shutil.which("cargo") is None and shutil.which("rustc") is None, "Rust is on PATH"
print("kiln", kiln.__version__, "imports without Rust:", kiln.__file__)'

echo "-- pytest"
# From outside the source tree, so that `import kiln` is the installed wheel.
cd "$work"
PATH="$work/venv/bin:$PATH" "$work/venv/bin/python" -m pytest -q -p no:cacheprovider \
    "$root/crates/python/tests"
