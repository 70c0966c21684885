"""benchmarks/dense_quality.py: a miniature run pretrains, trains both arms of both tasks and records them."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.conftest import REPO_ROOT, needs_fashion_mnist


def load_script(monkeypatch):
    """The script as a module (registered first: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location("dense_quality", REPO_ROOT / "benchmarks" / "dense_quality.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@needs_fashion_mnist
def test_miniature_benchmark_compares_pretrained_and_random_arms(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    load_script(monkeypatch).main(
        [
            f"--out={out}",
            "--pretrain-steps=2",
            "--train-images=4",
            "--val-images=2",
            "--canvas=64",
            "--img-size=64",
            "--detect-steps=2",
            "--segment-steps=2",
            "--batch-size=2",
            "--warmup-steps=1",
            "--detect-set",
            "model.fpn_channels=16",
            "train.visualize_images=0",
            "--segment-set",
            "model.channels=16",
            "model.aux_channels=8",
            "train.visualize_images=0",
        ]
    )
    results = json.loads((out / "results.json").read_text())
    runs = {(run["task"], run["arm"]): run for run in results["runs"]}
    assert set(runs) == {(task, arm) for task in ("detect", "segment") for arm in ("pretrained", "random")}
    assert {"bbox_AP", "segm_AP"} <= set(runs["detect", "pretrained"]["metrics"])
    assert "mIoU" in runs["segment", "random"]["metrics"]
    pretrained_config = (out / "detect_pretrained" / "config.yaml").read_text()
    assert results["checkpoint"] in pretrained_config and results["pretrain_seconds"] > 0
    assert "checkpoint: null" in (out / "segment_random" / "config.yaml").read_text()
    table = capsys.readouterr().out
    assert "| detect | bbox_AP |" in table and "| segment | mIoU |" in table
