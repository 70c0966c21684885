"""benchmarks/memory_table.py: the accounting behind the memory table, checked on a tiny model."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from mimkit.engine.strategy import training_blocks
from tests.conftest import REPO_ROOT

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1}


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("memory_table", REPO_ROOT / "benchmarks" / "memory_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _tiny(device: str):
    import mimkit

    torch.manual_seed(0)
    return mimkit.create_model("mae_vit_tiny_patch16", img_size=64, **TINY).to(device)


def _count(script, model, batch: int):
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    noise = model.sample_noise(batch, (64, 64), generator).to(device)
    return script.saved_activations(model, torch.rand(batch, 3, 64, 64).to(device), noise)


def test_bytes_counted_on_meta_equal_those_a_real_forward_saves(script):
    on_cpu, on_meta = _count(script, _tiny("cpu"), 4), _count(script, _tiny("meta"), 4)
    assert on_meta == on_cpu
    assert len(training_blocks(_tiny("meta"))) == TINY["depth"] + TINY["decoder_depth"]
    assert 0 < on_cpu.largest_block < on_cpu.in_blocks < on_cpu.total


def test_activations_are_linear_in_the_batch_and_checkpointing_keeps_less(script):
    model = _tiny("meta")
    predicted = script.measure(model, batch=16, img_size=64)
    assert predicted == _count(script, model, 16)
    assert predicted.checkpointed < predicted.total


def test_fsdp_shards_weights_gradients_and_adamw_state_over_8_gpus(script):
    row = script.MemoryRow("tiny", 8, trained=8_000_000, frozen=1_000, largest_block_params=100, fp32=None, bf16=None)
    assert row.states == 8_000_000 * 16 + 4 * 1_000  # fp32 weights + grads + two AdamW moments; frozen weights
    assert row.fsdp_states == (8_000_000 * 16) // 8 + 4 * 1_000 + 100 * (2 * 2 + 4)


def test_the_table_lists_each_size_with_its_batch_and_source(script, capsys):
    script.main(["--methods", "MAE ViT"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| MAE ViT")]
    assert [row.split(" | ")[1] for row in rows] == [
        "`mae_vit_base_patch16`",
        "`mae_vit_large_patch16`",
        "`mae_vit_huge_patch14`",
    ]
    assert all(row.split(" | ")[3] == "64" for row in rows)
    assert "over 64 GPUs" in out and "LocalMIM has no huge size" in out
