#!/usr/bin/env bash
# Fails when a locked dependency declares a `rust-version` above the workspace's (or a crate
# does not inherit the workspace's). Together with clippy's
# `incompatible_msrv` lint (std APIs newer than rust-version in kiln's own code) this is
# evidence, not proof, that a toolchain of that version builds kiln: it does not catch language
# features, compiler bugs or a dependency whose declared rust-version is wrong. Only building
# with that toolchain proves it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo metadata --format-version 1 --locked | python3 -c '
import json, sys

def version(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
ours = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
if len(ours) != 1 or None in ours:
    sys.exit(f"check-msrv: every crate must inherit one rust-version from the workspace, found {sorted(map(str, ours))}")
msrv = ours.pop()
# Every package in the lock file, for every platform: a dependency only built on another OS
# still sets the Rust that OS needs.
too_new = sorted(
    (p["name"], p["version"], p["rust_version"])
    for p in meta["packages"]
    if p["id"] not in members and p.get("rust_version") and version(p["rust_version"]) > version(msrv)
)
if too_new:
    for name, ver, rv in too_new:
        print(f"check-msrv: {name} {ver} needs Rust {rv}, above the workspace rust-version {msrv}", file=sys.stderr)
    sys.exit(1)
need = max((version(p["rust_version"]) for p in meta["packages"] if p["id"] not in members and p.get("rust_version")), default=(0, 0, 0))
need = ".".join(map(str, need))
print(f"check-msrv: rust-version {msrv}; the most any dependency declares is {need}")
'
