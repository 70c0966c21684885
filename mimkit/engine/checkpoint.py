"""Training checkpoints: one safetensors file per checkpoint, written atomically, loaded without pickle.

Tensors: ``model/<name>`` (weights), ``optimizer/<param index>/<field>`` (AdamW moments and step counts)
and ``rng/...`` (torch generator states). Everything else — the config, the train position, optimizer
hyper-parameters, Python and NumPy RNG states — is JSON in the safetensors metadata. Loading therefore
never executes code. Writing goes to a temporary file in the same folder, is flushed to disk, and then
replaces the target with ``os.replace``: a crash mid-write leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from mimkit.errors import CheckpointError

FORMAT = "mimkit-checkpoint/1"


@dataclass
class TrainPosition:
    """Where a run stands: optimizer steps done in total and within the current epoch."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    position: TrainPosition
    config: dict[str, Any]
    rng: dict[str, Any] | None


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Current torch (CPU and CUDA), NumPy and Python RNG states, split into tensors and JSON."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{index}"] = state
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["tensors"]["rng/torch"])
    cuda_states = [v for k, v in sorted(state["tensors"].items()) if k.startswith("rng/cuda/")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, fields in state["state"].items():
        for key, value in fields.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optimizer/{index}/{key}"] = tensor.detach().cpu().contiguous()
    return tensors, state["param_groups"]


def _atomic_write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    config: dict[str, Any],
    position: TrainPosition | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    with_rng: bool = True,
) -> Path:
    """Write a checkpoint atomically; returns its path."""
    path = Path(path)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(config),
        "position": json.dumps(asdict(position or TrainPosition())),
    }
    if optimizer is not None:
        opt_tensors, groups = _optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
        metadata["optimizer_param_groups"] = json.dumps(groups)
    if with_rng:
        rng_tensors, rng_meta = capture_rng()
        tensors.update(rng_tensors)
        metadata["rng"] = json.dumps(rng_meta)
    _atomic_write(path, save(tensors, metadata=metadata))
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a mimkit checkpoint (safetensors + JSON metadata; no code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable mimkit checkpoint: {err}") from err
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a mimkit checkpoint (format {metadata.get('format')!r}, expected {FORMAT})"
        )
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    optimizer = None
    if "optimizer_param_groups" in metadata:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, field = key.split("/", 2)
                state.setdefault(int(index), {})[field] = value
        optimizer = {"state": state, "param_groups": json.loads(metadata["optimizer_param_groups"])}
    rng = None
    if "rng" in metadata:
        rng = {
            **json.loads(metadata["rng"]),
            "tensors": {k: v for k, v in tensors.items() if k.startswith("rng/")},
        }
    return Checkpoint(
        model=model,
        optimizer=optimizer,
        position=TrainPosition(**json.loads(metadata["position"])),
        config=json.loads(metadata["config"]),
        rng=rng,
    )
