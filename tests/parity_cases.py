"""Discovery of parity cases: every ``*_case.json`` under ``$MIMKIT_PARITY_DIR/<method>/``."""

from __future__ import annotations

import json
import math
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
    """One case: its JSON (``spec``) and the folder of its safetensors files. The tests take every size and setting
    from here (batch, image size, loss setting, token grids), so any case in the documented format is checked."""

    name: str
    spec: dict
    folder: Path

    def tensors(self, role: str) -> dict:
        """Load the case's ``weights``, ``inputs`` or ``outputs`` file, named in the case JSON, and check that it
        holds exactly the tensors, shapes and dtypes the JSON lists (inputs: images of ``batch`` x ``image_size``)."""
        files = [f for f in self.spec["files"] if f.endswith(f"_{role}.safetensors")]
        if len(files) != 1:
            raise AssertionError(f"case {self.name} names no unique {role} file: {list(self.spec['files'])}")
        tensors = load_file(str(self.folder / files[0]))
        listing = self.spec["files"][files[0]]
        assert set(tensors) == set(listing), f"{files[0]} holds other tensors than the case lists"
        for key, tensor in tensors.items():
            assert list(tensor.shape) == listing[key]["shape"], f"{files[0]}: {key} is {list(tensor.shape)}"
            assert str(tensor.dtype).removeprefix("torch.") == listing[key]["dtype"], f"{files[0]}: {key} dtype"
        if role == "inputs":
            assert tensors["images"].shape[0] == self.batch
            assert tensors["images"].shape[-2:] == (self.image_size, self.image_size)
        return tensors

    @property
    def batch(self) -> int:
        return self.spec["batch"]

    @property
    def image_size(self) -> int:
        return self.spec["image_size"]

    @property
    def norm_pix_loss(self) -> bool:
        """The primary loss setting (``primary_loss_setting``); the constructor arguments may not contradict it."""
        setting = bool(self.spec["primary_loss_setting"]["norm_pix_loss"])
        assert self.spec["constructor_args"].get("norm_pix_loss", setting) == setting, "the case contradicts itself"
        return setting

    def loss_key(self, precision: str, norm_pix: bool | None = None) -> str:
        """The stored name of the loss with ``norm_pix`` (default: the primary setting, the loss whose gradient norms
        the case holds): ``loss_normpix_<precision>`` or ``loss_pixel_<precision>``."""
        norm_pix = self.norm_pix_loss if norm_pix is None else norm_pix
        return f"loss_{'normpix' if norm_pix else 'pixel'}_{precision}"


def grid_side(tokens: int) -> int:
    """The side of a square token grid of ``tokens`` tokens."""
    side = math.isqrt(tokens)
    assert side * side == tokens, f"{tokens} tokens are not a square grid"
    return side


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
