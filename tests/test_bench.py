"""``mimkit bench``: one full-step timing per method and size, with FLOPs, MFU and the anchors' ratio."""

from __future__ import annotations

import json

from mimkit.bench import ANCHORS, SIZES
from mimkit.cli import main


def test_bench_times_a_step_in_a_fresh_process_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--methods", "mae", "--sizes", "small", "--batch", "4", "--repeats", "1", "--json", str(out)]
    assert main(args) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["model"] == "mae_vit_tiny_patch16" and result["image_size"] == 96
    assert result["gflop_per_step"] > 0 and 0 < result["mfu"] < 2 and result["peak_memory_mb"] > 0
    assert result["anchor_s"] is None  # the anchors were timed at batch 32; no ratio for another batch
    assert "median s" in capsys.readouterr().out


def test_every_anchor_has_a_configuration_and_unknown_names_fail_early(capsys):
    assert all((method, size) in SIZES for method, size, _ in ANCHORS)
    assert main(["bench", "--methods", "simmim"]) == 2
    assert "no benchmark configuration" in capsys.readouterr().err
