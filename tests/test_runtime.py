"""keep_freed_memory: freed large buffers stay in the process for reuse instead of going back to the kernel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parent.parent / "mimkit" / "runtime.py"
SCRIPT = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("runtime", sys.argv[2])
runtime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runtime)
took = runtime.keep_freed_memory() if sys.argv[1] == "keep" else False
page = os.sysconf("SC_PAGE_SIZE")
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
before = resident()
buffer = b"x" * (64 * 2**20)
del buffer
print(took, (resident() - before) / 2**20)
"""


def _retained_mib(mode: str, env: dict | None = None) -> tuple[bool, float]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(RUNTIME)], capture_output=True, text=True, check=True, env=env
    )
    took, mib = out.stdout.split()
    return took == "True", float(mib)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_freed_memory_is_kept_only_when_asked():
    took, kept = _retained_mib("keep")
    assert took
    assert kept > 60
    took, default = _retained_mib("default")
    assert not took
    assert default < 8


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_environment_opts_out():
    env = {**os.environ, "MIMKIT_KEEP_FREED_MEMORY": "0"}
    took, retained = _retained_mib("keep", env)
    assert not took
    assert retained < 8
