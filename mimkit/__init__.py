"""mimkit: masked-image-modeling pretraining of vision backbones.

``import mimkit`` is light (no torch), so the command line can answer ``--help`` and validate a config at once.
The model API loads on first use: ``mimkit.create_model``, ``mimkit.create_encoder``, ``mimkit.list_models`` and
``mimkit.model_config``; loading the models also registers mimkit's encoders in timm (as ``import mimkit.export``
does). So does the training API (:mod:`mimkit.api`): ``mimkit.pretrain``, ``mimkit.finetune``, ``mimkit.linprobe``
and ``mimkit.knn``; ``mimkit.Callback`` is the base of the training loops' callbacks.
The model API loads on first use: ``mimkit.create_model``, ``mimkit.create_encoder``, ``mimkit.list_models``,
``mimkit.model_config``, ``mimkit.load_checkpoint`` and ``mimkit.from_pretrained`` (``docs/models.md``); loading the
models also registers mimkit's encoders in timm (as ``import mimkit.export`` does).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": "mimkit.models",
    "create_encoder": "mimkit.models",
    "list_models": "mimkit.model_configs.registry",
    "model_config": "mimkit.model_configs.registry",
    "Callback": "mimkit.engine.callbacks",
    "pretrain": "mimkit.api",
    "finetune": "mimkit.api",
    "linprobe": "mimkit.api",
    "knn": "mimkit.api",
    "load_checkpoint": "mimkit.load",
    "from_pretrained": "mimkit.load",
    "LoadedCheckpoint": "mimkit.load",
    "LoadReport": "mimkit.engine.checkpoint_checks",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mimkit' has no attribute {name!r}")
    if _LAZY[name] in ("mimkit.models", "mimkit.load"):
        importlib.import_module("mimkit.export")  # puts the mimkit_* encoders in timm's registry
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
