"""torchrun / DistributedDataParallel plumbing. Without torchrun everything degrades to one process."""

from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mimkit.errors import MimkitError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error, not a silent fallback."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise MimkitError("train.device is 'cuda' but no CUDA device is visible; use train.device=auto or cpu")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device_choice: str) -> DistInfo:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU), or run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(shutdown)  # a group left to interpreter teardown can abort the process (gloo's threads)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def sum_across_processes(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (identity for one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def mean_across_processes(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over all processes (identity for one process)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return sum_across_processes(value) / world


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (registered to run at exit by :func:`init_distributed`). FSDP's modules live on in
    reference cycles after a command returns, holding the group and its pending gloo work; collected later, at
    interpreter teardown, they once aborted a process in CI ("terminate called without an active
    exception"). They are collected here, while the group and the interpreter are still whole."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def leave_together() -> None:
    """After a command succeeded: wait for every process, then leave the group. A process that tears its group down
    while another still uses it can abort at exit (FSDP runs on gloo did, about one run in three). Not on errors: a
    process that failed alone must exit at once, so that torchrun stops the others."""
    if dist.is_initialized():
        dist.barrier()
        shutdown()
