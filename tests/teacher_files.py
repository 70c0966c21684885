"""Small teachers the tests build and save themselves (no download, no big model)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

import mimkit
from mimkit.config_schema import to_dict
from mimkit.engine.checkpoint import save_checkpoint
from mimkit.engine.config import ModelSection, PretrainConfig

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


TINY_MAE_ARGS = {
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "decoder_embed_dim": 16,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
    "img_size": 64,
}


IMAGENET_64_DATA = {"img_size": 64, "in_chans": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
"""The data fields a 64-px RGB run records (what an export reads for the encoder's input format)."""


def save_tiny_mae_checkpoint(path: Path, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A tiny MAE written as a mimkit checkpoint of a 64-px run (the record the engine writes); returns the path
    and the model."""
    torch.manual_seed(seed)
    mae = mimkit.create_model("mae_vit_tiny_patch16", **TINY_MAE_ARGS)
    record = {"model": {"name": "mae_vit_tiny_patch16", "args": TINY_MAE_ARGS}, "data": IMAGENET_64_DATA}
    return save_checkpoint(path, mae, {**record, "resolved_model": to_dict(mae.config)}), mae


def with_test_teachers(config: PretrainConfig, folder: Path) -> PretrainConfig:
    """``config`` with each teacher whose weights file is absent (shipped recipes leave the path to the user) swapped
    for the tiny ViT teacher saved in ``folder``, so the student builds; teacher-free configs come back unchanged."""
    args = dict(config.model.args)
    absent = [
        name
        for name in ("teacher", "second_teacher")
        if isinstance(args.get(name), dict) and not Path(args[name].get("weights") or "").is_file()
    ]
    if not absent:
        return config
    path = folder / "tiny_vit_teacher.safetensors"
    if not path.is_file():
        save_tiny_vit_teacher(path)
    args.update({name: tiny_vit_teacher_config(path) for name in absent})
    return dataclasses.replace(config, model=ModelSection(config.model.name, args))
