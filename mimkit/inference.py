"""Using a trained checkpoint: rebuild its model and draw reconstructions for arbitrary images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mimkit.config_schema import from_dict
from mimkit.data import ImageFiles, eval_transform, load_readable
from mimkit.data.sources import image_files
from mimkit.engine.config import PretrainConfig
from mimkit.engine.config_parts import CLIP_SOURCES
from mimkit.engine.resume_config import run_fields
from mimkit.errors import MimkitError
from mimkit.load import load_pretraining_model
from mimkit.methods.base import PretrainingModel
from mimkit.output_guard import check_output
from mimkit.visualize import reconstruction_grid, save_reconstruction_grid


def load_pretrained(path: str | Path) -> tuple[PretrainingModel, PretrainConfig]:
    """The pretraining model stored in a mimkit checkpoint (or a ``save_pretrained`` folder of one), in eval mode,
    with its training config."""
    loaded = load_pretraining_model(path)
    if loaded.run is None:
        raise MimkitError(f"{path} records no training run (its data and normalization); use a pretraining checkpoint")
    return loaded.model, from_dict(PretrainConfig, run_fields(PretrainConfig, loaded.run["config"]))


def visualize_images(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    output: str | Path,
    seed: int = 0,
    max_images: int = 16,
) -> Path:
    """Write the reconstruction grid (original | masked | reconstruction | pasted) for image files, never over one
    of them or a checkpoint: at most ``max_images`` rows; of more images, a choice seeded by ``seed`` (the seed of
    the mask too)."""
    if max_images < 1:
        raise MimkitError(f"--max-images must be at least 1, got {max_images}")
    files = image_files(images)
    check_output(output, [checkpoint, *files])
    model, config = load_pretrained(checkpoint)
    if config.data.source in CLIP_SOURCES:
        raise MimkitError(
            f"{checkpoint} holds a video model; `mimkit visualize` draws images (pretraining runs draw their clips)"
        )
    transform = eval_transform(config.data.img_size, config.data.in_chans, config.data.mean, config.data.std)
    source = ImageFiles(files)
    chosen = seed if len(source) > max_images else None
    batch, skipped = load_readable(source, transform, limit=max_images, seed=chosen)
    if chosen is not None:
        print(f"drawing {max_images} of {len(source)} images, chosen with --seed {seed} (--max-images sets the number)")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s): " + "; ".join(skipped))
    if batch is None:
        raise MimkitError("none of the given images could be read")
    noise = model.sample_noise(len(batch), tuple(batch.shape[-2:]), torch.Generator().manual_seed(seed))
    tiles = reconstruction_grid(model, batch, config.data.mean, config.data.std, noise=noise)
    return save_reconstruction_grid(tiles, output)
