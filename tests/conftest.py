"""Shared fixtures: a tiny pretraining config that runs in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from mimkit.data.sources import FASHION_MNIST_DIR
from mimkit.engine.config import load_pretrain_config

REPO_ROOT = Path(__file__).resolve().parent.parent

needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)

TINY_MODEL = [
    "model.name=mae_vit_tiny_patch16",
    "model.args.embed_dim=32",
    "model.args.depth=2",
    "model.args.num_heads=2",
    "model.args.decoder_embed_dim=16",
    "model.args.decoder_depth=1",
    "model.args.decoder_num_heads=2",
]


def tiny_overrides(output, *extra: str) -> list[str]:
    return [
        *TINY_MODEL,
        "data.source=samples",
        "data.img_size=64",
        "data.samples_per_epoch=32",
        "data.num_workers=0",
        "optim.base_lr=1e-3",
        "optim.warmup_epochs=0.5",
        "train.epochs=2",
        "train.batch_size=8",
        "train.log_every=1",
        "train.visualize_images=2",
        f"output={output}",
        *extra,
    ]


@pytest.fixture
def tiny_config(tmp_path):
    """``tiny_config(*overrides)`` builds a validated config writing under a fresh temporary folder."""

    def build(*extra: str, output=None):
        return load_pretrain_config(None, tiny_overrides(output or tmp_path / "run", *extra))

    return build
