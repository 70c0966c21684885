"""Checkpoints: atomic writes, code-free loading, complete round trips; safe reading of official files; nothing
non-finite, corrupted or ill-fitting is written or loaded (checked through the CLI where a user meets it)."""

from __future__ import annotations

import argparse
import json
import os
import shutil

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from skimage import data

import mimkit
from mimkit.cli import main
from mimkit.engine.checkpoint import CHECKSUM_KEY, TrainPosition, content_checksum, load_checkpoint, save_checkpoint
from mimkit.engine.optim import build_optimizer
from mimkit.engine.pretrain import Pretrainer
from mimkit.errors import CheckpointError, NonFiniteError
from mimkit.eval.loading import load_encoder
from mimkit.official import load_mae_weights, read_official_checkpoint
from mimkit.teachers import TeacherConfig, build_teacher
from tests.conftest import tiny_overrides

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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The checkpoint of a 2-step tiny pretraining run (mid-epoch: 4 steps make an epoch), and a photo."""
    folder = tmp_path_factory.mktemp("tiny_run")
    assert main(["pretrain", *tiny_overrides(folder / "run", "train.max_steps=2")]) == 0
    Image.fromarray(data.astronaut()).save(folder / "photo.png")
    return folder / "run" / "checkpoints" / "last.safetensors", folder / "photo.png"


@pytest.fixture
def checkpoint(tiny_run, tmp_path):
    """A private copy of the tiny run's checkpoint."""
    return shutil.copy(tiny_run[0], tmp_path / "copy.safetensors")


def _rewrite(path, change):
    """Apply ``change(tensors, metadata)`` to a checkpoint file and store a valid checksum of the result, so that
    only the checks after the checksum can catch the change."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    change(tensors, metadata)
    metadata[CHECKSUM_KEY] = content_checksum(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


def _one_error_line(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _export(path, tmp_path):
    return main(["export", "--checkpoint", str(path), "--output", str(tmp_path / "encoder.safetensors")])


def _visualize(path, tmp_path, photo):
    return main(["visualize", "--checkpoint", str(path), "--images", str(photo), "--output", str(tmp_path / "v.png")])


def _resume(path, output):
    return main(["pretrain", "--resume-from", str(path), *tiny_overrides(output, "train.max_steps=3")])


def _nothing_stepped(output):
    metrics = output / "metrics.jsonl"
    assert not (output / "checkpoints" / "last.safetensors").exists()
    assert not metrics.exists() or not metrics.read_text().strip()


def test_a_flipped_bit_is_refused_by_export_visualize_and_resume(tiny_run, checkpoint, tmp_path, capsys):
    name = "model/encoder.blocks.0.attn.qkv.weight"
    raw = bytearray(checkpoint.read_bytes())
    header_size = int.from_bytes(raw[:8], "little")
    start = 8 + header_size + json.loads(raw[8 : 8 + header_size])[name]["data_offsets"][0]
    raw[start + 3] ^= 0x40  # the top exponent bit of the first float32: e.g. -0.137 becomes -4.6e37
    checkpoint.write_bytes(bytes(raw))
    with safe_open(str(checkpoint), framework="pt") as handle:
        flipped = handle.get_tensor(name).view(-1)[0]
    assert torch.isfinite(flipped) and abs(flipped) > 1e30  # finite, so only the checksum can tell
    assert _export(checkpoint, tmp_path) == 2
    _one_error_line(capsys, "is corrupted: checksum mismatch")
    assert _visualize(checkpoint, tmp_path, tiny_run[1]) == 2
    _one_error_line(capsys, "is corrupted: checksum mismatch")
    assert _resume(checkpoint, tmp_path / "resumed") == 2
    _one_error_line(capsys, "is corrupted: checksum mismatch")
    _nothing_stepped(tmp_path / "resumed")


def _resize_first_moment(tensors, metadata):
    tensors["optimizer/0/exp_avg"] = tensors["optimizer/0/exp_avg"][..., :-1].contiguous()


def _set(name, value):
    def change(tensors, metadata):
        tensors[name] = value(tensors[name]).contiguous()

    return change


def _set_group(key, value):
    def change(tensors, metadata):
        groups = json.loads(metadata["optimizer_param_groups"])
        groups[0][key] = value
        metadata["optimizer_param_groups"] = json.dumps(groups)

    return change


@pytest.mark.parametrize(
    "change, named",
    [
        pytest.param(_resize_first_moment, "'optimizer/0/exp_avg' has shape", id="moment-resized"),
        pytest.param(
            _set("optimizer/0/exp_avg_sq", lambda t: t.double()),
            "'optimizer/0/exp_avg_sq' is torch.float64",
            id="moment-dtype",
        ),
        pytest.param(_set("optimizer/0/step", lambda t: t - 10), "'optimizer/0/step' must be", id="negative-step"),
        pytest.param(_set("optimizer/0/step", lambda t: t.reshape(1)), "'optimizer/0/step' must be", id="step-shape"),
        pytest.param(_set("optimizer/3/exp_avg", lambda t: t * float("nan")), "'optimizer/3/exp_avg'", id="moment-nan"),
        pytest.param(
            _set("model/encoder.cls_token", lambda t: t.half()),
            "'encoder.cls_token' is torch.float16",
            id="weight-dtype",
        ),
        pytest.param(_set_group("betas", [1.5, 0.95]), "'betas' is [1.5, 0.95]", id="betas"),
        pytest.param(_set_group("fused", False), "'fused' is False", id="fused-switched"),
        pytest.param(_set("rng/torch", lambda t: t[:100]), "malformed random-number state", id="rng-size"),
    ],
)
def test_resume_refuses_state_that_does_not_fit_before_any_step(checkpoint, tmp_path, capsys, change, named):
    _rewrite(checkpoint, change)
    before = checkpoint.read_bytes()
    assert _resume(checkpoint, tmp_path / "resumed") == 2
    _one_error_line(capsys, str(checkpoint), named)
    _nothing_stepped(tmp_path / "resumed")
    assert checkpoint.read_bytes() == before


def test_resume_refuses_a_position_its_run_never_reaches(checkpoint, tmp_path, capsys):
    """Step 7 within an epoch of 4 steps: the epoch would never end (the loop used to spin without output)."""
    position = {"step": 7, "epoch": 0, "step_in_epoch": 7}
    _rewrite(checkpoint, lambda tensors, metadata: metadata.update(position=json.dumps(position)))
    assert _resume(checkpoint, tmp_path / "resumed") == 2
    _one_error_line(capsys, "stands at step 7", "4 steps per epoch never reaches")


@pytest.mark.parametrize(
    "key, text, message",
    [
        pytest.param(
            "position", '{"step": -1, "epoch": 0, "step_in_epoch": 0}', "malformed train position", id="negative-step"
        ),
        pytest.param(
            "position", '{"step": "2", "epoch": 0, "step_in_epoch": 2}', "malformed train position", id="garbled-step"
        ),
        pytest.param("position", '{"step": 2, "epoch": 0}', "malformed train position", id="missing-field"),
        pytest.param(
            "position", '{"step": 2, "epoch": 1, "step_in_epoch": 2}', "impossible train position", id="inconsistent"
        ),
        pytest.param("position", '{"step": 2, "epo', "malformed 'position' metadata", id="position-json"),
        pytest.param("config", "{nope", "malformed 'config' metadata", id="config-json"),
        pytest.param("config", "[1, 2]", "malformed 'config' metadata: not a JSON dict", id="config-list"),
        pytest.param("optimizer_param_groups", "{}", "malformed 'optimizer_param_groups'", id="groups-not-list"),
        pytest.param("rng", '{"numpy": [1], "python": []}', "malformed random-number state", id="rng-json"),
    ],
)
def test_malformed_metadata_is_refused_with_one_line(checkpoint, tmp_path, capsys, key, text, message):
    _rewrite(checkpoint, lambda tensors, metadata: metadata.update({key: text}))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(checkpoint)
    assert _export(checkpoint, tmp_path) == 2
    _one_error_line(capsys, str(checkpoint), message)


def test_a_nan_weight_with_a_valid_checksum_is_refused_on_load(tiny_run, checkpoint, tmp_path, capsys):
    _rewrite(checkpoint, _set("model/encoder.norm.weight", lambda t: t.index_fill(0, torch.tensor([3]), float("nan"))))
    assert _export(checkpoint, tmp_path) == 2
    _one_error_line(capsys, "NaN or infinite values in tensor 'model/encoder.norm.weight'")
    assert _visualize(checkpoint, tmp_path, tiny_run[1]) == 2
    _one_error_line(capsys, "NaN or infinite values in tensor 'model/encoder.norm.weight'")


def _record_wider_model(tensors, metadata):
    config = json.loads(metadata["config"])
    config["resolved_model"]["embed_dim"] = 48
    metadata["config"] = json.dumps(config)


def test_weights_of_another_model_size_are_refused_with_one_line(checkpoint, tmp_path, capsys):
    _rewrite(checkpoint, _record_wider_model)
    assert _export(checkpoint, tmp_path) == 2
    err = _one_error_line(
        capsys,
        "does not fit this VisionTransformerEncoder",
        "'blocks.0.attn.proj.bias' has shape (32,), expected (48,)",
    )
    assert "more; was it written for another model or size?" in err


def test_encoder_and_teacher_loading_check_the_weights_too(checkpoint, tmp_path):
    _rewrite(checkpoint, _record_wider_model)
    with pytest.raises(CheckpointError, match="does not fit this VisionTransformerEncoder"):
        load_encoder("mae_vit_tiny_patch16", {}, checkpoint)
    with pytest.raises(CheckpointError, match="does not fit this MAE"):
        build_teacher(TeacherConfig(kind="mimkit", weights=str(checkpoint)))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 100)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_encoder("mae_vit_tiny_patch16", {}, garbage)


def test_an_unknown_tensor_is_refused(checkpoint, capsys):
    _rewrite(checkpoint, lambda tensors, metadata: tensors.update({"extra/x": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra/x'"):
        load_checkpoint(checkpoint)


def test_a_file_without_checksum_loads_with_a_warning(checkpoint, capsys):
    """Files from mimkit versions before checksums: every other check applies, the checksum is reported missing."""
    with safe_open(str(checkpoint), framework="pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != CHECKSUM_KEY}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(tensors, str(checkpoint), metadata=metadata)
    assert load_checkpoint(checkpoint).position == TrainPosition(2, 0, 2)
    assert "carries no checksum" in capsys.readouterr().err


@pytest.mark.parametrize("poison", ["model", "optimizer"])
def test_save_refuses_non_finite_state_and_keeps_the_previous_file(tmp_path, poison):
    model, optimizer = _trained_pair()
    path = save_checkpoint(tmp_path / "last.safetensors", model, {}, TrainPosition(1), optimizer)
    good = path.read_bytes()
    model(torch.randn(2, 3, 32, 32))["loss"].backward()
    optimizer.step()
    with torch.no_grad():
        if poison == "model":
            model.decoder.pred.weight[0, 0] = float("inf")
        else:
            optimizer.state[model.decoder.pred.weight]["exp_avg_sq"][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"refusing to write checkpoint .*: tensor '\S+' holds NaN or infinite"):
        save_checkpoint(path, model, {}, TrainPosition(2), optimizer)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_pretraining_stops_when_the_weights_turn_non_finite_and_names_the_last_good_checkpoint(
    tmp_path, capsys, monkeypatch
):
    """Weights can go non-finite while the step's loss was finite: the run stops at the next checkpoint, whose
    predecessor stays the good one."""
    apply_update = Pretrainer._apply_update

    def update_then_poison(self, loss_sum):
        loss = apply_update(self, loss_sum)
        if self.position.step == 1:  # the second update
            with torch.no_grad():
                self.model.decoder.pred.weight[0, 0] = float("nan")
        return loss

    monkeypatch.setattr(Pretrainer, "_apply_update", update_then_poison)
    output = tmp_path / "run"
    assert main(["pretrain", *tiny_overrides(output, "train.checkpoint_every=1")]) == 2
    last = output / "checkpoints" / "last.safetensors"
    _one_error_line(
        capsys,
        "became non-finite by step 2",
        "'model/decoder.pred.weight' holds NaN",
        f"The last good checkpoint is {last}",
    )
    assert load_checkpoint(last).position.step == 1


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_checkpoints_follow_the_umask(tmp_path, umask, mode):
    model, _ = _trained_pair()
    previous = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "c.safetensors", model, {})
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode
