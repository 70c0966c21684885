"""Discovery of parity cases: every ``*_case.json`` under ``$MIMKIT_PARITY_DIR/<method>/``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
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


def assert_gradient_norms(case: ParityCase, model: torch.nn.Module, map_key) -> None:
    """After ``backward``: every trainable parameter's gradient norm equals the official float64 one
    (``grad_norms_f64_hex``) to 1e-8 relative; ``map_key`` turns an official name into mimkit's."""
    grads = {name: p.grad for name, p in model.named_parameters()}
    checked = 0
    for official_name, norm_hex in case.spec["grad_norms_f64_hex"].items():
        if norm_hex is None:
            continue
        name = map_key(official_name)
        assert grads[name].norm().item() == pytest.approx(float.fromhex(norm_hex), rel=1e-8), name
        checked += 1
    assert checked == sum(1 for p in model.parameters() if p.requires_grad)


def state_dict_layout(method: str) -> dict:
    """The method's ``base_state_dict_layout.json`` (paper-size key lists), or a skip when it is absent."""
    path = parity_dir() / method / "base_state_dict_layout.json"
    if not path.is_file():
        pytest.skip(f"no parity layout at {path}")
    return json.loads(path.read_text())


def assert_official_keys_map_onto_parameters(spec: dict, model: torch.nn.Module, map_key) -> None:
    """Every official key of a layout ``spec`` that ``map_key`` keeps names a parameter of the same size, and every
    parameter is named by one."""
    params = dict(model.named_parameters())
    mapped = {}
    for entry in spec["state_dict"]:
        target = map_key(entry["key"])
        if target is not None:
            mapped[target] = torch.Size(entry["shape"]).numel()
    assert set(mapped) == set(params)
    assert all(params[name].numel() == size for name, size in mapped.items())
