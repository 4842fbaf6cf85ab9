"""Shared paths for the kiln Python package's tests.

The tests read the fixtures in the repository's tests/data and compare against the `kiln`
binary (KILN_BIN, default target/release/kiln); a missing binary is a failure, not a skip.
"""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data"
FIXTURES = DATA / "fixtures"
META = FIXTURES / "llama-mha" / "meta"
META_MP2 = META / "mp2"
LLAMA_HF = FIXTURES / "llama-mha"


def kiln_bin() -> str:
    b = os.environ.get("KILN_BIN") or str(ROOT / "target" / "release" / "kiln")
    if not os.path.exists(b):
        pytest.fail(f"the kiln binary is missing at {b} (build it: cargo build --release -p kiln-cli, or set KILN_BIN)")
    return b


def run_kiln(*args: str, stdin: str = "") -> str:
    p = subprocess.run(
        [kiln_bin(), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise AssertionError(f"kiln {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p.stdout
