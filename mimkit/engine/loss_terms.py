"""The losses a step's record holds: the model's ``loss`` and each scalar part it reports (``loss_rec`` and
``loss_mimic`` of MR-MAE, ``loss_tap{k}`` of LocalMIM, the dense heads' parts), averaged over the step's
micro-batches and processes like the loss itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mimkit.engine.distributed import mean_across_processes


def split_loss(out: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A model output's ``loss``, to backpropagate, and its record terms: ``loss`` and every scalar ``loss_*``
    entry, detached, in fp32 (``loss`` first, then the parts in the model's order)."""
    parts = {
        name: value.detach().float()
        for name, value in out.items()
        if name.startswith("loss_") and torch.is_tensor(value) and value.dim() == 0
    }
    return out["loss"], {"loss": out["loss"].detach().float(), **parts}


class StepLosses:
    """A step's loss terms summed over its micro-batches."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, terms: Mapping[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value

    def mean(self, micro_batches: int) -> dict[str, float]:
        """Each term averaged over the ``micro_batches`` and over the processes (one all-reduce for all terms);
        starts the next step's sums."""
        names = list(self.sums)
        values = mean_across_processes(torch.stack([self.sums[name] for name in names]) / micro_batches).tolist()
        self.sums = {}
        return dict(zip(names, values, strict=True))
