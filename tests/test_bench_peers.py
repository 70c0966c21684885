"""``mimkit bench --peers``: transformers' and lightly's MAE compute mimkit's loss on the same weights and mask, and
are timed side by side with it."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from mimkit.cli import main
from mimkit.engine.optim import build_optimizer
from mimkit.peers import build_implementation, copy_mimkit_weights, mae_config

pytest.importorskip("transformers")
pytest.importorskip("lightly")

TINY = {"img_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 4, "decoder_embed_dim": 32, "decoder_depth": 1}


@pytest.mark.parametrize("peer", ["hf", "lightly"])
def test_peer_trains_like_mimkit_from_the_same_weights_images_and_masks(peer):
    config = mae_config("mae_vit_tiny_patch16", **TINY)
    torch.manual_seed(0)
    mimkit, other = build_implementation("mimkit", config), build_implementation(peer, config)
    copy_mimkit_weights(mimkit.model, other, peer)
    optimizers = [build_optimizer(m, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95)) for m in (mimkit, other)]
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 64, 64, generator=generator)
    for _ in range(3):  # equal losses after optimizer steps: equal gradients and parameter groups too
        noise = torch.rand(4, 16, generator=generator)
        losses = []
        for module, optimizer in zip((mimkit, other), optimizers, strict=True):
            loss = module(images, noise)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=0)


def test_lightly_keeps_the_class_token_and_mimkits_visible_patches():
    lightly = build_implementation("lightly", mae_config("mae_vit_tiny_patch16", **TINY))
    noise = torch.arange(16.0).flip(0)[None]  # patch 15 has the smallest noise
    idx_keep, idx_mask = lightly.token_indices(noise)
    assert idx_keep.tolist() == [[0, 16, 15, 14, 13]]  # class token, then the 4 patches of smallest noise (+1)
    assert sorted(idx_keep[0, 1:].tolist() + idx_mask[0].tolist()) == list(range(1, 17))


def test_bench_peers_times_the_three_implementations_through_the_cli(tmp_path, capsys):
    out = tmp_path / "peers.json"
    args = ["bench", "--peers", "--size", "small", "--batch", "2", "--image-size", "32", "--repeats", "1"]
    assert main([*args, "--warmup", "0", "--json", str(out)]) == 0
    results = {r["implementation"]: r for r in json.loads(out.read_text())}
    assert list(results) == ["mimkit", "hf", "lightly"]
    assert results["mimkit"]["speed_ratio"] == 1.0 and results["mimkit"]["loss_matches"] is None
    assert results["hf"]["loss_matches"] is True and results["lightly"]["loss_matches"] is True
    assert all(r["median_s"] > 0 and r["gflop_per_step"] > 0 and r["image_size"] == 32 for r in results.values())
    # lightly projects only the masked tokens to pixels, transformers also the class token
    assert results["lightly"]["gflop_per_step"] < results["mimkit"]["gflop_per_step"] < results["hf"]["gflop_per_step"]
    assert "| mimkit speed ratio |" in capsys.readouterr().out


def test_a_missing_peer_library_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lightly", None)
    assert main(["bench", "--peers", "--size", "small"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --peers needs lightly") and "pip install 'mimkit[bench]'" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--methods", "convmae"], "MAE implementations only"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--quality"], "choose one"),
    ],
)
def test_peers_mistakes_end_in_one_line_before_anything_runs(options, message, capsys):
    assert main(["bench", "--peers", *options]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
