#!/usr/bin/env bash
# Proves that a fresh clone is complete: clones the committed HEAD of this repository into an
# empty temporary folder (nothing beside it: no reference folder next to the clone), points KILN_HOME at an empty folder,
# and runs the README's test command there, which must fetch the models and MNIST it needs.
# Uncommitted changes are not included. A cold build: about 15-20 minutes on 2 cores.
#
#   tests/fresh-clone.sh            KEEP=1 tests/fresh-clone.sh   (keeps the temporary folder)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
if [[ ${KEEP:-0} != 1 ]]; then trap 'rm -rf "$work"' EXIT; fi
echo "fresh-clone: $(git -C "$repo" rev-parse --short HEAD) into $work/kiln"

test_command='cargo test --release --workspace'
grep -qF "$test_command" "$repo/README.md" || {
  echo "fresh-clone: README.md no longer shows '$test_command'; update this script" >&2
  exit 1
}

git clone --quiet --no-local "$repo" "$work/kiln"
[[ ! -e $work/shared ]]
mkdir "$work/kiln-home"
export KILN_HOME=$work/kiln-home
unset KILN_MODELS CARGO_TARGET_DIR
cd "$work/kiln"
start=$SECONDS
status=0
$test_command || status=$?
echo "fresh-clone: '$test_command' exited $status after $((SECONDS - start)) s;" \
  "KILN_HOME holds $(du -sh "$KILN_HOME" | cut -f1)"
exit "$status"
