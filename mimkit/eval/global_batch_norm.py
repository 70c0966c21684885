"""Batch normalization over the global batch of all processes, on any device (the linear probe's feature norm)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from mimkit.engine.distributed import sum_across_processes


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics are those of the batch of every process together, so N processes
    normalize as one process with their combined batch does; alone it is ``BatchNorm1d``.

    ``torch.nn.SyncBatchNorm`` does this on GPUs only (it refuses CPU tensors, so gloo runs). Statistics are
    summed without a backward pass, so the input must not need gradients: the probe's features come from a frozen
    encoder under ``no_grad``."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(features)
        if features.requires_grad:
            raise RuntimeError("GlobalBatchNorm1d passes no gradient to its input; give it features without one")
        count = sum_across_processes(torch.tensor(float(len(features)), device=features.device))
        mean = sum_across_processes(features.sum(dim=0)) / count
        var = sum_across_processes((features - mean).square().sum(dim=0)) / count
        if self.track_running_stats and self.running_mean is not None:
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
            self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
            self.running_var.mul_(1 - factor).add_(var * count / (count - 1), alpha=factor)
        normed = (features - mean) * torch.rsqrt(var + self.eps)
        return normed * self.weight + self.bias if self.affine else normed
