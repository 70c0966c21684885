"""Forward hooks that record what chosen modules receive or return, for the duration of a ``with`` block.

They read intermediate tokens (MR-MAE's multi-layer fusion on ConvViT's stage 3, a teacher's last-block input)
without changing the encoders' or timm's forward code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def recorded_inputs(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Every call of ``module`` appends its first positional input to the yielded list."""
    inputs: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _module, args: inputs.append(args[0]))
    try:
        yield inputs
    finally:
        handle.remove()


@contextmanager
def recorded_outputs(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Every call of one of ``modules`` appends its output to the yielded list (in call order)."""
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _module, _args, out: outputs.append(out)) for m in modules]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()
