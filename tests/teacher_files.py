"""Small teachers the tests build and save themselves (no download, no big model)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

TINY_VIT_ARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 64}


def save_tiny_vit_teacher(path: Path, seed: int = 0, **model_args) -> Path:
    """A randomly initialised ``vit_tiny_patch16_224`` shrunk to 32 wide, 2 deep, 64 px (``model_args`` change
    that), saved as safetensors."""
    torch.manual_seed(seed)
    network = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY_VIT_ARGS, **model_args})
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    return path


def tiny_vit_teacher_config(path: Path) -> dict:
    """The ``teacher`` field (as a mapping) for the file :func:`save_tiny_vit_teacher` wrote."""
    return {"kind": "timm_vit", "name": "vit_tiny_patch16_224", "weights": str(path), "model_args": TINY_VIT_ARGS}
