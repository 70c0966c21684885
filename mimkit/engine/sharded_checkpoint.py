"""Sharded checkpoints of FSDP runs (``train.strategy=fsdp``), through ``torch.distributed.checkpoint`` (DCP).

A checkpoint is a folder, ``checkpoints/step_NNNNNNNN.dcp``, and ``checkpoints/last.dcp`` is a symbolic link to the
latest one. Each process writes its shards of the weights and AdamW moments (DCP's ``.distcp`` files and its
``.metadata`` index); the folder also holds :data:`~mimkit.engine.checkpoint_metadata.SHARDED_METADATA` (the
config, train position and optimizer hyper-parameters, as JSON) and ``rng_<rank>.json`` (each process's RNG
states). Writing is atomic: every process writes into ``.step_NNNNNNNN.dcp.tmp``, then, after a barrier, the main
process renames it and swaps the ``last.dcp`` link (``os.replace``), so a crash leaves the previous checkpoint.

Nothing untrustworthy is written or loaded, and loading never executes code:

- Saving refuses (:class:`NonFiniteError`) weights or optimizer state holding NaN or infinity, on any process,
  before anything is written.
- DCP's ``.metadata`` index is a pickle, which ``FileSystemReader`` loads with plain ``pickle.load``. It is read
  here with an unpickler that admits only DCP's own metadata classes, torch dtypes and sizes (anything else is
  refused), and an index that lists a non-tensor (pickled) entry is refused: DCP would ``torch.load`` it with
  ``weights_only=False``; so is one naming shard files outside the folder. The tensors themselves DCP reads
  with ``torch.load(weights_only=True)``.
- Loading checks the JSON metadata (format, config, train position, optimizer hyper-parameters and parameter
  names), that the folder holds every tensor of the model and optimizer with its shape (DCP), that every loaded
  shard is finite, and the RNG states. DCP keeps no checksum, so flipped bits inside a finite tensor go unnoticed.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

from mimkit.engine.atomic_files import atomic_write
from mimkit.engine.checkpoint import (
    RESTORE_ADVICE,
    SCALER_KEY,
    TrainPosition,
    capture_rng,
    check_rng,
    first_non_finite,
    read_json,
    read_position,
    read_scaler,
    save_state_checkpoint,
)
from mimkit.engine.checkpoint_checks import group_problems
from mimkit.engine.checkpoint_metadata import SHARDED_FORMAT, SHARDED_METADATA, sharded_metadata
from mimkit.engine.distributed import barrier
from mimkit.engine.run_folder import LAST_SHARDED
from mimkit.errors import CheckpointError, MimkitError, NonFiniteError

SHARDED_SUFFIX = ".dcp"
STEP_PREFIX = "step_"

SAFE_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("collections", "OrderedDict"),
}
"""What DCP's ``.metadata`` pickle may name (besides torch dtypes); nothing else is imported or called."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"the index names {module}.{name:.60}, which a DCP index never holds")


class SafeReader(FileSystemReader):
    """DCP's file-system reader, reading the ``.metadata`` index without executing code (see the module doc)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        index = Path(self.path) / ".metadata"
        try:
            metadata = _MetadataUnpickler(io.BytesIO(index.read_bytes())).load()
        except Exception as err:
            raise CheckpointError(f"{self.path} has an unreadable DCP index ({err}); {RESTORE_ADVICE}") from err
        if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
            raise CheckpointError(f"{self.path} has a malformed DCP index; {RESTORE_ADVICE}")
        pickled = [k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)]
        if pickled:
            raise CheckpointError(
                f"{self.path} lists a pickled entry '{pickled[0]:.100}', which mimkit never writes; {RESTORE_ADVICE}"
            )
        files = {getattr(info, "relative_path", None) for info in (metadata.storage_data or {}).values()}
        if not all(isinstance(name, str) and name == Path(name).name for name in files):
            raise CheckpointError(f"{self.path} has an index naming files outside its folder; {RESTORE_ADVICE}")
        metadata.storage_meta = StorageMeta(load_id=self.load_id)
        return metadata


def is_sharded(path: Path) -> bool:
    """Whether ``path`` names a sharded checkpoint (a folder, or the ``last.dcp`` link to one)."""
    return path.is_dir()


def _local_tensors(tree: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a nested state dict by slash-joined name, each DTensor as this process's shard."""
    found: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(_local_tensors(value, f"{name}/"))
        elif isinstance(value, DTensor):
            found[name] = value.to_local()
        elif isinstance(value, torch.Tensor):
            found[name] = value
    return found


def _any_process(flag: bool, device: torch.device) -> bool:
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _first_non_finite_anywhere(tree: dict[str, Any], device: torch.device) -> str | None:
    """The first non-finite tensor of this process's shards, ``'(on another process)'`` where only another
    process holds one, or None."""
    bad = first_non_finite(_local_tensors(tree))
    if _any_process(bad is not None, device):
        return bad or "(on another process)"
    return None


def _rng_record() -> str:
    tensors, meta = capture_rng()
    return json.dumps({**meta, "tensors": {name: tensor.tolist() for name, tensor in tensors.items()}})


def _publish(temporary: Path, final: Path, keep: int) -> None:
    """Main process: move the written folder into place, point ``last.dcp`` at it, drop all but the ``keep``
    latest step folders (at least the new one)."""
    checkpoints = final.parent
    if final.exists():  # the same step written again: keep the old folder until the new one is in place
        replaced = final.with_name(f".{final.name}.old.tmp")
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
        os.rename(temporary, final)
        shutil.rmtree(replaced)
    else:
        os.rename(temporary, final)
    link = checkpoints / f".{LAST_SHARDED}.tmp"
    link.unlink(missing_ok=True)
    os.symlink(final.name, link)
    os.replace(link, checkpoints / LAST_SHARDED)
    steps = sorted(checkpoints.glob(f"{STEP_PREFIX}*{SHARDED_SUFFIX}"))
    for old in steps[: -max(keep, 1)]:
        if old != final:
            shutil.rmtree(old)


def save_sharded(
    checkpoints: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    position: TrainPosition,
    keep: int,
    scaler: dict[str, Any] | None = None,
) -> Path:
    """Every process: write the FSDP-sharded ``model`` and ``optimizer`` (with ``config``, ``position``, an fp16
    run's ``scaler`` state and each process's RNG states) as ``checkpoints/step_<step>.dcp`` and point
    ``checkpoints/last.dcp`` at it; returns the link. Raises :class:`NonFiniteError` (nothing written) where any
    process holds NaN or infinity."""
    model_state, optim_state = get_state_dict(model, optimizer)
    tensors = {"model": model_state, "optimizer": optim_state["state"]}
    device = next(model.parameters()).device
    bad = _first_non_finite_anywhere(tensors, device)
    if bad is not None:
        raise NonFiniteError(f"refusing to write a checkpoint into {checkpoints}: tensor '{bad}' holds NaN or infinity")
    name = f"{STEP_PREFIX}{position.step:08d}{SHARDED_SUFFIX}"
    final, temporary = checkpoints / name, checkpoints / f".{name}.tmp"
    main = dist.get_rank() == 0
    if main:
        shutil.rmtree(temporary, ignore_errors=True)
    barrier()
    dcp.save(tensors, checkpoint_id=temporary)
    atomic_write(temporary / f"rng_{dist.get_rank()}.json", _rng_record().encode())
    if main:
        metadata = {
            "format": SHARDED_FORMAT,
            "config": json.dumps(config),
            "position": json.dumps(asdict(position)),
            "optimizer_param_groups": json.dumps(optim_state["param_groups"]),
        }
        if scaler is not None:
            metadata[SCALER_KEY] = json.dumps(scaler, allow_nan=False)
        atomic_write(temporary / SHARDED_METADATA, json.dumps(metadata).encode())
    barrier()
    if main:
        _publish(temporary, final, keep)
    barrier()
    return checkpoints / LAST_SHARDED


def read_sharded_record(path: Path) -> tuple[dict[str, Any], TrainPosition, dict[str, Any] | None]:
    """The config, train position and gradient-scaler state (None without) a sharded checkpoint records (checked;
    no tensor is read)."""
    metadata = sharded_metadata(path)
    return read_json(path, metadata, "config", dict), read_position(path, metadata), read_scaler(path, metadata)


def _check_groups(path: Path, saved: list, groups: list[dict[str, Any]]) -> None:
    """The stored hyper-parameters must be sane and name this optimizer's parameters, group by group."""
    problems = [] if len(saved) == len(groups) else [f"{len(saved)} parameter groups, expected {len(groups)}"]
    for number, (stored, group) in enumerate(zip(saved, groups, strict=False)):
        if not isinstance(stored, dict) or stored.get("params") != group["params"]:
            problems.append(f"parameter group {number} lists other parameters")
        else:
            problems += group_problems(number, stored, group)
    if problems:
        raise CheckpointError(f"{path} does not fit this run's optimizer: {'; '.join(problems[:3])}")


def _read_rng(path: Path, rank: int) -> dict[str, Any]:
    """This process's RNG states (``rng_<rank>.json``; the main process's where the run had fewer processes)."""
    file = path / f"rng_{rank}.json"
    if not file.is_file():
        file = path / "rng_0.json"
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        record["tensors"] = {name: torch.tensor(v, dtype=torch.uint8) for name, v in record["tensors"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError, OverflowError) as err:
        raise CheckpointError(f"{file} is not a readable random-number state ({err}); {RESTORE_ADVICE}") from err
    check_rng(file, record)
    return record


def load_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Every process: load sharded checkpoint ``path`` into the FSDP-sharded ``model`` and ``optimizer`` (whatever
    the number of processes that wrote it); returns this process's RNG states, for ``restore_rng``. Raises
    :class:`CheckpointError` for anything that does not fit or is not finite (see the module doc)."""
    groups = read_json(path, sharded_metadata(path), "optimizer_param_groups", list)
    model_state, optim_state = get_state_dict(model, optimizer)
    _check_groups(path, groups, optim_state["param_groups"])
    tensors = {"model": model_state, "optimizer": optim_state["state"]}
    try:
        dcp.load(tensors, storage_reader=SafeReader(path))
    except CheckpointError:
        raise
    except Exception as err:  # DCP reports each process's failure in one CheckpointException
        reason = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} does not fit this run's model and optimizer ({reason}); was it written for another model?"
        ) from err
    bad = _first_non_finite_anywhere(tensors, next(model.parameters()).device)
    if bad is not None:
        raise CheckpointError(f"{path} holds NaN or infinite values in tensor '{bad}'; {RESTORE_ADVICE}")
    set_state_dict(
        model,
        optimizer,
        model_state_dict=model_state,
        optim_state_dict={"state": optim_state["state"], "param_groups": groups},
    )
    return _read_rng(path, dist.get_rank())


def _read_every_tensor(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded checkpoint, whole, by DCP's flat name (``model.<name>``,
    ``optimizer.<parameter>.<field>``), read in this one process."""
    reader = SafeReader(path)
    index = reader.read_metadata().state_dict_metadata
    tensors = {name: torch.empty(entry.size, dtype=entry.properties.dtype) for name, entry in index.items()}
    try:
        with warnings.catch_warnings():  # DCP warns that it loads in one process, which is the intent here
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(tensors, storage_reader=reader, no_dist=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable sharded checkpoint ({err}); {RESTORE_ADVICE}") from err
    return tensors


def convert_sharded(path: Path, output: Path) -> Path:
    """Write sharded checkpoint ``path`` as a single-file checkpoint ``output`` (weights, AdamW state, config and
    position; no RNG states, so it cannot resume a run) that ``mimkit finetune`` and ``mimkit export`` read. Runs in
    one process. ``output`` must not exist."""
    if output.exists() or output.is_symlink():
        raise MimkitError(f"{output} already exists; name a new file (or delete it first to replace it)")
    if not is_sharded(path):
        raise MimkitError(f"{path} is not a sharded checkpoint folder (an FSDP run's checkpoints/last.dcp)")
    config, position, _ = read_sharded_record(path)
    groups = read_json(path, sharded_metadata(path), "optimizer_param_groups", list)
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise CheckpointError(f"{path} has malformed optimizer parameter groups; {RESTORE_ADVICE}")
    numbers = {name: number for number, name in enumerate(n for group in groups for n in group["params"])}
    model_state: dict[str, torch.Tensor] = {}
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in _read_every_tensor(path).items():
        section, _, rest = name.partition(".")
        parameter, _, field = rest.rpartition(".")
        if section == "model":
            model_state[rest] = tensor
        elif section == "optimizer" and parameter in numbers:
            moments.setdefault(numbers[parameter], {})[field] = tensor
        else:
            raise CheckpointError(f"{path} holds an unexpected tensor '{name:.200}'; is it a mimkit checkpoint?")
    param_groups = [{**group, "params": [numbers[n] for n in group["params"]]} for group in groups]
    try:
        optimizer_state = {"state": moments, "param_groups": param_groups}
        save_state_checkpoint(output, model_state, config, position, optimizer_state, with_rng=False)
    except NonFiniteError as err:
        raise CheckpointError(f"{path} holds NaN or infinite values ({err}); {RESTORE_ADVICE}") from err
    return output
