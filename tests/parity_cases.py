"""Discovery of parity cases: every ``*_case.json`` under ``$MIMKIT_PARITY_DIR/<method>/``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parent.parent


def parity_dir() -> Path:
    return Path(os.environ.get("MIMKIT_PARITY_DIR", REPO_ROOT.parent / "shared" / "parity"))


@dataclass
class ParityCase:
    name: str
    spec: dict
    folder: Path

    def tensors(self, role: str) -> dict:
        """Load the case's ``weights``, ``inputs`` or ``outputs`` file, named in the case JSON."""
        files = [f for f in self.spec["files"] if f.endswith(f"_{role}.safetensors")]
        if len(files) != 1:
            raise AssertionError(f"case {self.name} names no unique {role} file: {list(self.spec['files'])}")
        return load_file(str(self.folder / files[0]))


def discover(method: str) -> list:
    """Pytest params, one per case file, with the case file's stem as id; a skip mark if none exist."""
    folder = parity_dir() / method
    cases = sorted(folder.glob("*_case.json")) if folder.is_dir() else []
    if not cases:
        reason = f"no parity cases under {folder} (set MIMKIT_PARITY_DIR)"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id=f"{method}-none")]
    return [pytest.param(ParityCase(path.stem, json.loads(path.read_text()), folder), id=path.stem) for path in cases]
