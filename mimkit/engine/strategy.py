"""How a model is spread over the processes of a run: ``train.strategy`` (DDP or FSDP2) and
``train.activation_checkpointing``, both applied to the same units, the model's *blocks*.

:func:`training_blocks` is the one place that decides what a block is: every outermost transformer, Swin or
convolution block of an encoder or decoder (:data:`BLOCK_TYPES`). FSDP2 (``fully_shard``) shards each block, then
the root module (which keeps the embeddings, norms and heads); activation checkpointing recomputes each block's
activations in the backward pass instead of keeping them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial, wraps

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from mimkit.backbones.convvit import ConvBlock
from mimkit.backbones.swin import SwinBlock
from mimkit.engine.distributed import DistInfo
from mimkit.errors import MimkitError

BLOCK_TYPES: tuple[type[nn.Module], ...] = (Block, ConvBlock, SwinBlock)
"""The repeated units of every mimkit encoder and decoder: timm's ViT block (ViT encoders, the ConvViT's last
stage, MAE decoders), the ConvViT's convolution block and the Swin block."""


def training_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks (:data:`BLOCK_TYPES`) in module order, outermost only."""
    blocks: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, BLOCK_TYPES):
            blocks.append(module)
            inside.update(id(sub) for sub in module.modules())
    return blocks


def checkpoint_activations(model: nn.Module, enable: bool = True) -> int:
    """Recompute each block's activations in the backward pass (non-reentrant ``torch.utils.checkpoint``, which
    replays the RNG state, so drop path draws the same paths); ``enable=False`` switches it off again. The block's
    ``forward`` is replaced on the instance (the class's own ``forward`` is what is wrapped, so switching on twice
    wraps once), and parameter and state-dict names stay as they were. Returns the number of blocks."""
    blocks = training_blocks(model)
    for block in blocks:
        vars(block).pop("forward", None)
        if enable:
            block.forward = wraps(block.forward)(partial(checkpoint, block.forward, use_reentrant=False))
    return len(blocks)


def shard_model(model: nn.Module, precision: str) -> None:
    """FSDP2: shard every block, then the root. With ``bf16`` the blocks compute in bf16 and gradients are reduced
    in fp32; the sharded fp32 parameters are the master weights the optimizer updates. Each process initialised
    its own copy (seeded by rank): like DDP, every process starts from the main process's weights and buffers."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    options = {"mp_policy": policy} if precision == "bf16" else {}
    for block in training_blocks(model):
        fully_shard(block, **options)
    fully_shard(model, **options)


def is_sharded_model(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard_model`."""
    return isinstance(model, FSDPModule)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with whole CPU tensors; for a sharded model a collective (every process calls it)
    whose result only the main process receives (the others get an empty dict)."""
    if not is_sharded_model(model):
        return model.state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@dataclass
class ParallelModel:
    """The model as this run trains it: ``module`` is what the forward pass calls (the model itself, or its DDP
    wrapper); ``model`` is the model (sharded in place under FSDP)."""

    model: nn.Module
    module: nn.Module
    strategy: str

    @property
    def sharded(self) -> bool:
        return is_sharded_model(self.model)

    @contextmanager
    def gradient_sync(self, sync: bool) -> Iterator[None]:
        """Around a micro-batch's forward and backward: ``sync=False`` keeps its gradients local (accumulated
        until the step's last micro-batch), DDP's ``no_sync`` or FSDP2's ``set_requires_gradient_sync``."""
        if self.sharded:
            self.model.set_requires_gradient_sync(sync)
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)
            return
        skip = isinstance(self.module, DistributedDataParallel) and not sync
        with self.module.no_sync() if skip else nullcontext():
            yield


def parallelize(model: nn.Module, dist: DistInfo, strategy: str, precision: str, activation_checkpointing: bool):
    """Apply ``train.activation_checkpointing`` and ``train.strategy`` to ``model`` (already on its device). Build
    the optimizer after this: FSDP2 replaces the parameters by sharded ones."""
    if strategy == "fsdp" and dist.world_size < 2:
        raise MimkitError(
            "train.strategy=fsdp shards the model over several processes; launch with torchrun "
            "--nproc_per_node=N (N >= 2) or use train.strategy=ddp for one process"
        )
    if activation_checkpointing:
        checkpoint_activations(model)
    if strategy == "fsdp":
        shard_model(model, precision)
        return ParallelModel(model, model, strategy)
    if dist.world_size > 1:
        device_ids = [dist.device] if dist.device.type == "cuda" else None
        return ParallelModel(model, DistributedDataParallel(model, device_ids=device_ids), strategy)
    return ParallelModel(model, model, strategy)
