"""Read a released checkpoint without executing code.

The authors' training loops save ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}`` where ``args`` is a
pickled ``argparse.Namespace``. We unpickle with ``torch.load(weights_only=True)``, which refuses every
class not on an explicit allow-list; the only extra class we allow is ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from mimkit.pos_embed import sincos_2d

ALLOWED_CHECKPOINT_CLASSES = [argparse.Namespace]


def read_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Return the model ``state_dict`` stored at ``path`` (``.pth`` from the authors, or ``.safetensors``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    with torch.serialization.safe_globals(ALLOWED_CHECKPOINT_CLASSES):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError or RuntimeError for refused globals
            raise ValueError(
                f"{path} is not a loadable checkpoint or holds objects outside the safe allow-list "
                f"({', '.join(c.__qualname__ for c in ALLOWED_CHECKPOINT_CLASSES)}): {err}"
            ) from err
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return payload


def check_sincos_table(name: str, table: torch.Tensor) -> None:
    """Verify that a stored ``(1, [1 +] g*g, D)`` position table is the fixed sin-cos one mimkit recomputes.

    A leading zero row (for a class token) is recognised by the row count.
    """
    _, rows, dim = table.shape
    grid = int(round(rows**0.5))
    with_cls_row = grid * grid != rows
    if with_cls_row:
        grid = int(round((rows - 1) ** 0.5))
        if grid * grid != rows - 1:
            raise ValueError(f"{name} has {rows} rows, not a square grid (plus an optional class row)")
    expected = sincos_2d(dim, grid, grid, with_cls_row=with_cls_row)
    if not torch.allclose(table[0].float(), expected, atol=1e-6):
        raise ValueError(f"{name} is not the fixed sin-cos table mimkit recomputes; refusing to drop it silently")


def load_converted_weights(
    model: nn.Module, converted: dict[str, torch.Tensor], method: str, encoder_only: bool = False
) -> None:
    """Load already-renamed official weights, strict on every key that should be there.

    With ``encoder_only`` (a fine-tuning checkpoint) only the ``encoder.*`` keys must be present.
    """
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if encoder_only:
        missing = [k for k in missing if k.startswith("encoder.")]
    if missing or unexpected:
        raise ValueError(f"{method} weights do not fit the model: missing {missing}, unexpected {unexpected}")


def rename_by_prefix(key: str, prefixes: tuple[tuple[str, str], ...], method: str) -> str:
    """``key`` with the first matching official prefix replaced by mimkit's; unknown keys raise ``KeyError``."""
    for old, new in prefixes:
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(f"unexpected key in {method} state dict: '{key}'")
