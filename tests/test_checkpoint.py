"""Checkpoints: atomic writes, code-free loading, complete round trips; safe reading of official files."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

import mimkit
from mimkit.engine.checkpoint import TrainPosition, load_checkpoint, save_checkpoint
from mimkit.engine.optim import build_optimizer
from mimkit.official import load_mae_weights, read_official_checkpoint

SMALL = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def _trained_pair():
    model = mimkit.create_model("mae_vit_tiny_patch16", **SMALL)
    optimizer = build_optimizer(model, 1e-3, 0.05, (0.9, 0.95))
    model(torch.randn(2, 3, 32, 32))["loss"].backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_restores_model_optimizer_position_and_config(tmp_path):
    model, optimizer = _trained_pair()
    path = save_checkpoint(tmp_path / "c.safetensors", model, {"a": [1, 2]}, TrainPosition(7, 1, 3), optimizer)
    loaded = load_checkpoint(path)
    assert loaded.position == TrainPosition(7, 1, 3)
    assert loaded.config == {"a": [1, 2]}
    fresh = mimkit.create_model("mae_vit_tiny_patch16", **SMALL)
    fresh.load_state_dict(loaded.model)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    restored = build_optimizer(fresh, 1e-3, 0.05, (0.9, 0.95))
    restored.load_state_dict(loaded.optimizer)
    original = optimizer.state_dict()["state"]
    for index, fields in restored.state_dict()["state"].items():
        for key, value in fields.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(original[index][key]))


def test_crash_mid_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    model, _ = _trained_pair()
    path = save_checkpoint(tmp_path / "last.safetensors", model, {}, TrainPosition(1))
    good = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, {}, TrainPosition(2))
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_loading_something_else_is_a_clear_error(tmp_path):
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable mimkit checkpoint"):
        load_checkpoint(bogus)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")


class Exploit:
    """Unpickling this would run code; the official reader must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _official_state_dict(model):
    from mimkit.pos_embed import sincos_2d

    renames = {
        "encoder.": "",
        "decoder.embed.": "decoder_embed.",
        "decoder.blocks.": "decoder_blocks.",
        "decoder.norm.": "decoder_norm.",
        "decoder.pred.": "decoder_pred.",
        "decoder.mask_token": "mask_token",
    }
    out = {}
    for key, value in model.state_dict().items():
        for new, old in renames.items():
            if key.startswith(new):
                out[old + key[len(new) :]] = value
                break
    out["pos_embed"] = sincos_2d(32, 14, 14, with_cls_row=True)[None]
    out["decoder_pos_embed"] = sincos_2d(16, 14, 14, with_cls_row=True)[None]
    return out


def test_official_pth_with_argparse_namespace_loads_and_exploits_are_refused(tmp_path):
    model = mimkit.create_model("mae_vit_tiny_patch16", **SMALL)
    official = tmp_path / "checkpoint-799.pth"
    torch.save({"model": _official_state_dict(model), "epoch": 799, "args": argparse.Namespace(lr=1e-3)}, official)
    other = mimkit.create_model("mae_vit_tiny_patch16", **SMALL)
    load_mae_weights(other, read_official_checkpoint(official))
    images, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 4)
    assert torch.equal(model(images, noise=noise)["pred"], other(images, noise=noise)["pred"])

    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": Exploit()}, evil)
    with pytest.raises(ValueError, match="outside the safe allow-list"):
        read_official_checkpoint(evil)


def test_wrong_sincos_table_is_refused():
    model = mimkit.create_model("mae_vit_tiny_patch16", **SMALL)
    state = _official_state_dict(model)
    state["pos_embed"] = state["pos_embed"] + 1
    with pytest.raises(ValueError, match="not the fixed sin-cos table"):
        load_mae_weights(model, state)
