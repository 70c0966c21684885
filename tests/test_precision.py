"""fp16 autocast with a gradient scaler: an overflowing step is skipped and counted (not fatal), the schedule goes
on, the scale survives a resume bit for bit, and a non-finite loss still stops the run."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from mimkit.cli import main
from mimkit.dense.demo_set import write_dense_demo
from mimkit.engine.checkpoint import load_checkpoint, save_checkpoint
from mimkit.engine.optim import adamw, build_scheduler, step_optimizer
from mimkit.engine.precision import grad_scaler
from mimkit.engine.pretrain import Pretrainer
from mimkit.engine.run_folder import LOG_NAME
from mimkit.errors import CheckpointError, NonFiniteLossError
from mimkit.eval.config import load_transfer_config
from mimkit.eval.transfer import TransferTrainer
from tests.conftest import needs_fashion_mnist, tiny_overrides
from tests.test_dense_cli import segment_args
from tests.test_distributed import _free_port, _run, _run_two_processes
from tests.transfer_files import write_labelled_images

FP16 = ("train.precision=fp16", "train.visualize_images=0")
INITIAL_SCALE = 2.0**16
"""torch.amp.GradScaler's default initial loss scale."""


TIMINGS = ("images_per_s", "data_s", "step_s")
"""Record fields measured by the clock, which no two runs share."""


def _records(output):
    """The run's metrics records without the clock's fields."""
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k not in TIMINGS} for record in records]


def _overflow_at(trainer, step: int) -> None:
    """Make the gradients of optimizer step ``step`` (1-based) overflow, as an fp16 backward can."""
    param = next(trainer.model.parameters())
    param.register_hook(lambda grad: grad * math.inf if trainer.position.step + 1 == step else grad)


def _checkpoint(output, step: int):
    return load_checkpoint(output / "checkpoints" / f"step_{step:08d}.safetensors")


def _equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _tiny_step(scaler, clip_grad=None, overflow=False):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    optimizer = adamw(model.parameters(), lr=0.1)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=0, min_lr=0.0)
    loss = model(torch.randn(16, 4)).square().mean()
    ((scaler.scale(loss) if scaler else loss) * (math.inf if overflow else 1)).backward()
    applied = step_optimizer(model, optimizer, scheduler, 0, clip_grad, scaler)
    return model, optimizer, applied


def test_the_scaler_unscales_before_clipping_and_skips_an_overflowing_step_without_touching_anything():
    plain, _, applied_plain = _tiny_step(None, clip_grad=0.01)
    scaler = torch.amp.GradScaler("cpu")
    scaled, _, applied = _tiny_step(scaler, clip_grad=0.01)
    assert applied and applied_plain
    assert _equal(scaled.state_dict(), plain.state_dict())  # clipped the true gradients, not the scaled ones

    scaler = torch.amp.GradScaler("cpu")
    skipped, optimizer, applied = _tiny_step(scaler, clip_grad=0.01, overflow=True)
    untouched, _, _ = _tiny_step(None, clip_grad=0.01)
    torch.manual_seed(0)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    assert not applied and scaler.get_scale() == INITIAL_SCALE / 2
    assert _equal(skipped.state_dict(), fresh.state_dict())
    assert all(float(state["step"]) == 0 and not state["exp_avg"].any() for state in optimizer.state.values())
    assert all(p.grad is None for p in skipped.parameters())


def test_an_overflowing_fp16_step_is_skipped_counted_and_the_run_goes_on(tiny_config, tmp_path):
    """Step 2's gradients overflow: its update is skipped (the weights and AdamW state after it are those after
    step 1), the scale halves, the learning-rate schedule advances as without the overflow, and step 3 trains."""
    every_step = ("train.max_steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=3")
    clean, overflowed = tmp_path / "clean", tmp_path / "overflowed"
    Pretrainer(tiny_config(*FP16, *every_step, output=clean)).run()
    trainer = Pretrainer(tiny_config(*FP16, *every_step, output=overflowed))
    _overflow_at(trainer, 2)
    summary = trainer.run()

    assert summary.steps == 3 and math.isfinite(summary.last_loss)
    clean_records, records = _records(clean), _records(overflowed)
    assert [r["skipped_steps"] for r in clean_records] == [0, 0, 0]
    assert [r["skipped_steps"] for r in records] == [0, 1, 1]
    assert [r["loss_scale"] for r in records] == [INITIAL_SCALE, INITIAL_SCALE / 2, INITIAL_SCALE / 2]
    assert [r["lr"] for r in records] == [r["lr"] for r in clean_records]  # the schedule advanced on the skip
    after_skip, after_step_1 = _checkpoint(overflowed, 2), _checkpoint(clean, 1)
    assert _equal(after_skip.model, after_step_1.model)
    assert _equal(after_skip.optimizer["state"][0], after_step_1.optimizer["state"][0])
    assert after_skip.scaler == {"scale": INITIAL_SCALE / 2, "growth_tracker": 0, "skipped_steps": 1}
    assert not _equal(_checkpoint(overflowed, 3).model, after_skip.model)  # step 3 applied its update
    log = (overflowed / LOG_NAME).read_text()
    assert "step 2: fp16 gradients overflowed, update skipped (not fatal); loss scale lowered to 32768" in log


def test_an_fp16_resume_restores_the_scale_and_continues_exactly(tiny_config, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    trainer = Pretrainer(tiny_config(*FP16, "train.max_steps=5", output=whole))
    _overflow_at(trainer, 2)
    trainer.run()
    trainer = Pretrainer(tiny_config(*FP16, "train.max_steps=3", output=split))
    _overflow_at(trainer, 2)
    trainer.run()
    resumed = Pretrainer(tiny_config(*FP16, "train.max_steps=5", output=split), resume="auto")
    assert resumed.precision.scaler.get_scale() == INITIAL_SCALE / 2
    resumed.run()

    assert _records(split) == _records(whole)
    last = "checkpoints/last.safetensors"
    whole_last, split_last = load_checkpoint(whole / last), load_checkpoint(split / last)
    assert _equal(whole_last.model, split_last.model)
    assert (
        split_last.scaler == whole_last.scaler == {"scale": INITIAL_SCALE / 2, "growth_tracker": 3, "skipped_steps": 1}
    )


def test_a_non_finite_loss_still_stops_an_fp16_run(tiny_config):
    trainer = Pretrainer(tiny_config(*FP16))
    with torch.no_grad():
        trainer.model.encoder.cls_token.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 1 "):
        trainer.run()


def test_fp16_pretraining_from_the_cli_logs_the_loss_scale(tmp_path, capsys):
    output = tmp_path / "run"
    assert main(["pretrain", *tiny_overrides(output, *FP16, "train.max_steps=2")]) == 0
    assert [r["loss_scale"] for r in _records(output)] == [INITIAL_SCALE, INITIAL_SCALE]
    assert "fp16" in capsys.readouterr().out
    assert main(["pretrain", *tiny_overrides(tmp_path / "bad", "train.precision=fp8")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "fp16" in error and "\n" not in error


def test_fine_tuning_skips_an_overflowing_fp16_step(tmp_path):
    images = write_labelled_images(tmp_path / "images")
    small_vit = ["model.args.patch_size=4", "model.args.embed_dim=32", "model.args.depth=1", "model.args.num_heads=2"]
    overrides = [*small_vit, *images, "data.img_size=16", "data.num_workers=0", "train.batch_size=8"]
    config = load_transfer_config(
        "finetune", None, [*overrides, "train.precision=fp16", "train.max_steps=3", f"output={tmp_path / 'ft'}"]
    )
    trainer = TransferTrainer(config)
    _overflow_at(trainer, 2)
    summary = trainer.run()
    records = [r for r in _records(tmp_path / "ft") if "loss" in r]
    assert summary.steps == 3 and [r["skipped_steps"] for r in records] == [0, 1, 1]
    assert load_checkpoint(tmp_path / "ft" / "checkpoints" / "last.safetensors").scaler["skipped_steps"] == 1


@pytest.mark.parametrize(
    "state", [{"scale": 0.0, "growth_tracker": 0, "skipped_steps": 0}, {"scale": 2.0, "growth_tracker": -1}]
)
def test_a_malformed_scaler_state_is_refused_on_load(tmp_path, state):
    path = save_checkpoint(tmp_path / "c.safetensors", torch.nn.Linear(2, 2), {}, scaler=state)
    with pytest.raises(CheckpointError, match="malformed gradient-scaler state"):
        load_checkpoint(path)
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "inf.safetensors", torch.nn.Linear(2, 2), {}, scaler={"scale": math.inf})


def test_two_fp16_processes_equal_one(tmp_path):
    """Under torchrun every rank shares one overflow decision (the scaler all-reduces it) and one loss scale."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "mimkit.cli", "pretrain", *tiny_overrides(one, *FP16, "train.max_steps=3")])
    _run_two_processes("pretrain", *tiny_overrides(two, *FP16, "train.max_steps=3", "train.batch_size=4"))
    assert [r["loss_scale"] for r in _records(two)] == [INITIAL_SCALE] * 3
    assert [r["loss"] for r in _records(two)] == pytest.approx([r["loss"] for r in _records(one)], abs=1e-3)


def _step_with_overflow_on_rank_0(rank: int, port: int, folder) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        scaler = grad_scaler(torch.device("cpu"))
        _, _, applied = _tiny_step(scaler, overflow=rank == 0)
        (folder / f"{rank}.json").write_text(json.dumps([applied, scaler.get_scale()]))
    finally:
        torch.distributed.destroy_process_group()


def test_when_one_process_overflows_every_process_skips_the_step(tmp_path):
    """With sharded gradients (FSDP) only one rank may see the overflow; all must skip, or the replicas drift."""
    torch.multiprocessing.spawn(_step_with_overflow_on_rank_0, args=(_free_port(), tmp_path), nprocs=2)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert results == [[False, INITIAL_SCALE / 2]] * 2


@needs_fashion_mnist
def test_an_fp16_segmentation_run_resumes_exactly_with_its_scale(tmp_path):
    """The tiny UperNet's fp16 gradients overflow at step 2 on their own: skipped, and the lowered scale is carried
    across the resume that follows."""
    demo = write_dense_demo(tmp_path / "demo", train_images=8, val_images=4, canvas=64)
    common = [*segment_args(demo), "train.iterations=4", "train.precision=fp16", "train.checkpoint_every=1"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main([*common, f"output={whole}"]) == 0
    assert main([*common, f"output={parts}", "train.max_steps=2"]) == 0
    assert main([*common, f"output={parts}", "--resume"]) == 0
    trained = [r for r in _records(parts) if "loss" in r]
    assert trained == [r for r in _records(whole) if "loss" in r]
    scales = [r["loss_scale"] for r in trained]
    assert scales[1] < INITIAL_SCALE and scales[2:] == [scales[1]] * 2  # fp16 overflowed before the split
    last = "checkpoints/last.safetensors"
    assert _equal(load_checkpoint(whole / last).model, load_checkpoint(parts / last).model)
