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
