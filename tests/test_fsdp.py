"""FSDP2 (``train.strategy=fsdp``) on two CPU processes (gloo), sharded checkpoints, their conversion, and
activation checkpointing."""

from __future__ import annotations

import pickle
import sys
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from mimkit.cli import main
from mimkit.engine.checkpoint import load_checkpoint
from mimkit.engine.sharded_checkpoint import SafeReader, _read_every_tensor
from mimkit.engine.strategy import checkpoint_activations, training_blocks
from mimkit.errors import CheckpointError
from mimkit.eval.classifier import Classifier
from mimkit.models import create_encoder, create_model
from tests.conftest import tiny_overrides
from tests.test_distributed import _losses, _run, _run_two_processes
from tests.transfer_files import write_labelled_images

FSDP = "train.strategy=fsdp"
CHECKPOINTED = "train.activation_checkpointing=true"


def _convert(sharded, output) -> dict[str, torch.Tensor]:
    assert main(["convert-checkpoint", "--checkpoint", str(sharded), "--output", str(output)]) == 0
    return load_checkpoint(output).model


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_fsdp_pretraining_equals_one_process_and_converts(tmp_path):
    """2 FSDP processes x 2 images x 2 accumulated micro-batches match 1 process x 4 images x 2 (losses,
    weights, through the sharded checkpoint converted to a single file)."""
    one, two = tmp_path / "one", tmp_path / "two"
    accumulated = ("train.batch_size=4", "train.accum_steps=2")
    _run([sys.executable, "-m", "mimkit.cli", "pretrain", *tiny_overrides(one, *accumulated)])
    _run_two_processes("pretrain", *tiny_overrides(two, "train.batch_size=2", "train.accum_steps=2", FSDP))
    assert len(_losses(two)) == 8
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5)
    assert (two / "checkpoints" / "last.dcp").resolve().name == "step_00000008.dcp"
    converted = _convert(two / "checkpoints" / "last.dcp", tmp_path / "two.safetensors")
    assert _max_difference(converted, load_checkpoint(one / "checkpoints" / "last.safetensors").model) < 1e-5


def test_fsdp_resume_is_exact(tmp_path, capsys):
    """Two FSDP processes stopped after 2 steps, then resumed from the sharded checkpoint with a bare --resume:
    the same losses and weights as an uninterrupted run. Resuming it as another strategy is refused."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    _run_two_processes("pretrain", *tiny_overrides(whole, "train.batch_size=4", FSDP))
    _run_two_processes("pretrain", *tiny_overrides(split, "train.batch_size=4", "train.max_steps=2", FSDP))
    assert len(_losses(split)) == 2
    assert main(["pretrain", "--output", str(split), "--resume", "train.strategy=ddp"]) == 2
    assert "train.strategy" in capsys.readouterr().err
    assert main(["pretrain", "--output", str(split), "--resume", "--allow-changes", "train.strategy=ddp"]) == 2
    assert "is a sharded checkpoint, which resumes with train.strategy=fsdp" in capsys.readouterr().err
    _run_two_processes("pretrain", "--output", str(split), "--resume")
    assert _losses(split) == _losses(whole)
    resumed = _convert(split / "checkpoints" / "last.dcp", tmp_path / "split.safetensors")
    uninterrupted = _convert(whole / "checkpoints" / "last.dcp", tmp_path / "whole.safetensors")
    assert all(resumed[k].equal(uninterrupted[k]) for k in uninterrupted)


LEFT_ALIVE_SCRIPT = """
import gc, sys
from torch.distributed.fsdp import FSDPModule
from mimkit.cli import main
code = main(sys.argv[1:])
sys.exit(code or sum(isinstance(o, FSDPModule) for o in gc.get_objects()))
"""


def test_converted_checkpoint_loads_in_finetune_and_export(tmp_path, capsys):
    """A converted sharded checkpoint is a mimkit checkpoint: fine-tuning starts from it and export reads it; the
    conversion refuses to overwrite a file. Trained in bf16, FSDP keeps fp32 master weights. The finished command
    leaves no sharded module for interpreter teardown to collect (that aborted a process at exit)."""
    run = tmp_path / "run"
    bf16 = ("train.batch_size=4", "train.max_steps=1", "train.precision=bf16", FSDP)
    script = tmp_path / "left_alive.py"
    script.write_text(LEFT_ALIVE_SCRIPT)
    _run_two_processes("pretrain", *tiny_overrides(run, *bf16), program=(str(script),))
    converted = tmp_path / "converted.safetensors"
    assert {t.dtype for t in _convert(run / "checkpoints" / "last.dcp", converted).values()} == {torch.float32}
    capsys.readouterr()
    again = ["convert-checkpoint", "--checkpoint", str(run / "checkpoints" / "last.dcp"), "--output", str(converted)]
    assert main(again) == 2
    refusal = f"error: {converted} already exists; name a new file (or delete it first to replace it)"
    assert capsys.readouterr().err.strip().splitlines() == [refusal]
    assert main(["export", "--checkpoint", str(converted), "--output", str(tmp_path / "encoder.safetensors")]) == 0
    finetune = [
        "finetune",
        "--output",
        str(tmp_path / "finetune"),
        *write_labelled_images(tmp_path / "images"),
        "model.name=mae_vit_tiny_patch16",
        f"model.checkpoint={converted}",
        "data.img_size=64",
        "data.num_workers=0",
        "train.epochs=1",
        "train.batch_size=8",
        "train.max_steps=1",
    ]
    assert main(finetune) == 0


def test_fsdp_with_one_process_is_refused(tmp_path, capsys):
    assert main(["pretrain", *tiny_overrides(tmp_path / "run", FSDP)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: train.strategy=fsdp shards the model over several processes")


def test_fsdp_fine_tuning_equals_one_process(tmp_path):
    """FSDP fine-tuning with activation checkpointing: 2 processes x 4 images match 1 process x 8 images without
    either (losses, weights); the best checkpoint is gathered into one file."""
    common = [
        *write_labelled_images(tmp_path / "images"),
        "model.args.patch_size=4",
        "model.args.embed_dim=32",
        "model.args.depth=2",
        "model.args.num_heads=2",
        "data.img_size=16",
        "data.num_workers=0",
        "augment.mixup=0",
        "augment.cutmix=0",
        "train.drop_path=0",
        "train.epochs=1",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "mimkit.cli", "finetune", "--output", str(one), *common, "train.batch_size=8"])
    _run_two_processes("finetune", "--output", str(two), *common, "train.batch_size=4", FSDP, CHECKPOINTED)
    losses = [_losses(one), _losses(two)]
    assert len(losses[1]) == 4
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    sharded = _convert(two / "checkpoints" / "last.dcp", tmp_path / "two.safetensors")
    assert _max_difference(sharded, load_checkpoint(one / "checkpoints" / "last.safetensors").model) < 1e-5
    best = load_checkpoint(two / "checkpoints" / "best.safetensors").model  # gathered into one file
    assert best.keys() == sharded.keys()


def _loss_and_gradients(model: torch.nn.Module, images: torch.Tensor, **kwargs) -> tuple[float, dict]:
    torch.manual_seed(1)
    output = model(images, **kwargs)
    loss = output["loss"] if isinstance(output, dict) else output.square().mean()
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), gradients


@pytest.mark.parametrize("kind", ["mae_vit", "convmae", "swin_classifier"])
def test_activation_checkpointing_keeps_loss_and_gradients(kind):
    """Recomputing each block's activations (drop path on: RNG replayed) gives the same loss and gradients."""
    torch.manual_seed(0)
    if kind == "mae_vit":
        model, size = create_model("mae_vit_tiny_patch16", img_size=32, embed_dim=32, depth=2, num_heads=2), 32
    elif kind == "convmae":
        model, size = create_model("convmae_tiny", img_size=32), 32
    else:
        encoder = create_encoder("mixmae_swin_tiny", img_size=32)
        model, size = Classifier(encoder, 3), 32
    for module in model.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.3
    model.train()
    images = torch.rand(2, 3, size, size)
    kwargs = {} if kind == "swin_classifier" else {"noise": model.sample_noise(2, (size, size), torch.Generator())}
    plain = _loss_and_gradients(model, images, **kwargs)
    assert checkpoint_activations(model) == len(training_blocks(model)) > 0
    checkpointed = _loss_and_gradients(model, images, **kwargs)
    assert checkpointed[0] == pytest.approx(plain[0], abs=1e-6)
    assert plain[1].keys() == checkpointed[1].keys()
    assert max((plain[1][k] - checkpointed[1][k]).abs().max().item() for k in plain[1]) < 1e-6


def test_pretraining_with_activation_checkpointing_equals_without(tmp_path):
    """Through the command line, one process: the same losses with and without activation checkpointing."""
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    short = ("train.max_steps=2", "train.visualize_images=0")
    assert main(["pretrain", *tiny_overrides(plain, *short)]) == 0
    assert main(["pretrain", *tiny_overrides(checkpointed, *short, CHECKPOINTED)]) == 0
    assert _losses(checkpointed) == pytest.approx(_losses(plain), abs=1e-6)


def test_dcp_index_that_would_run_code_is_refused(tmp_path):
    """DCP's index is a pickle; one naming anything but DCP's metadata classes is refused, and nothing runs."""
    class Payload:
        def __reduce__(self):
            return (exec, ("open('%s', 'w').write('ran')" % (tmp_path / "ran"),))

    (tmp_path / "last.dcp").mkdir()
    (tmp_path / "last.dcp" / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="unreadable DCP index"):
        SafeReader(tmp_path / "last.dcp").read_metadata()
    assert not (tmp_path / "ran").exists()


def test_sharded_checkpoint_with_non_finite_values_is_not_resumed(tmp_path):
    """A sharded checkpoint whose weights hold NaN (written here by hand: mimkit refuses to write one) is refused on
    resume, naming the tensor."""
    run = tmp_path / "run"
    _run_two_processes("pretrain", *tiny_overrides(run, "train.batch_size=4", "train.max_steps=1", FSDP))
    folder = (run / "checkpoints" / "last.dcp").resolve()
    tensors = _read_every_tensor(folder)
    tensors["model.encoder.cls_token"] = torch.full_like(tensors["model.encoder.cls_token"], float("nan"))
    for shard in folder.glob("*.distcp"):
        shard.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(tensors, checkpoint_id=folder, no_dist=True)
    with pytest.raises(AssertionError, match="holds NaN or infinite values in tensor 'model.encoder.cls_token'"):
        _run_two_processes("pretrain", "--output", str(run), "--resume")
