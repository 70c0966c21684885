"""Whether a checkpoint's tensors fit the model, optimizer and run they are about to be loaded into.

``Module.load_state_dict`` answers a mismatch with a RuntimeError traceback and silently casts other dtypes;
``Optimizer.load_state_dict`` compares only the number of parameters, so a wrongly sized AdamW moment reaches the
fused kernel, which then reads and writes past its buffers. These checks run first and raise one
:class:`CheckpointError` listing the first few problems, with the tensors named as the file names them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mimkit.engine.checkpoint import TrainPosition
from mimkit.errors import CheckpointError

LISTED_PROBLEMS = 3
"""How many problems one error message names before counting the rest."""
OTHER_MODEL_HINT = "; was it written for another model or size?"

ADAMW_FIELDS = ("step", "exp_avg", "exp_avg_sq")
AMSGRAD_FIELD = "max_exp_avg_sq"
STEP_DTYPES = (torch.float32, torch.float64)
"""The dtypes torch keeps Adam's per-parameter step counts in."""


def _finite_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


HYPER_PARAMETERS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "lr": ("a finite number >= 0", lambda v: _finite_number(v) and v >= 0),
    "initial_lr": ("a finite number >= 0", lambda v: _finite_number(v) and v >= 0),
    "weight_decay": ("a finite number >= 0", lambda v: _finite_number(v) and v >= 0),
    "eps": ("a finite number > 0", lambda v: _finite_number(v) and v > 0),
    "betas": (
        "two numbers in [0, 1)",
        lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(_finite_number(b) and 0 <= b < 1 for b in v),
    ),
}
"""AdamW's numeric settings and what makes each one sane."""


def _refuse(source: Any, target: str, problems: list[str], hint: str) -> None:
    if not problems:
        return
    shown = "; ".join(problems[:LISTED_PROBLEMS])
    if len(problems) > LISTED_PROBLEMS:
        shown += f"; and {len(problems) - LISTED_PROBLEMS} more"
    raise CheckpointError(f"{source} does not fit {target}: {shown}{hint}")


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


@dataclass(frozen=True)
class LoadReport:
    """What loading weights into a model left out (``strict=False``): the model's tensors the weights lack (they
    keep the model's own initial values) and the weights' tensors the model has no place for (ignored)."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether every tensor of the model was loaded and every stored tensor used."""
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        if self.complete:
            return "every tensor loaded"
        parts = []
        for kind, names in (("missing", self.missing), ("unexpected", self.unexpected)):
            if names:
                more = ", ..." if len(names) > LISTED_PROBLEMS else ""
                parts.append(f"{len(names)} {kind} ({', '.join(names[:LISTED_PROBLEMS])}{more})")
        return "; ".join(parts)


def state_report(state: dict[str, torch.Tensor], module: nn.Module) -> LoadReport:
    """The tensors ``module`` has that ``state`` lacks, and those of ``state`` that ``module`` has no place for."""
    expected = module.state_dict()
    return LoadReport(
        missing=tuple(name for name in expected if name not in state),
        unexpected=tuple(name for name in state if name not in expected),
    )


def _fit_problems(state: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
    """Tensors of ``state`` whose shape or dtype differs from the module's tensor of that name."""
    expected = module.state_dict()
    problems = []
    for name, tensor in state.items():
        want = expected.get(name)
        if want is not None and tensor.shape != want.shape:
            problems.append(f"'{name}' has shape {_shape(tensor)}, expected {_shape(want)}")
        elif want is not None and tensor.dtype != want.dtype:
            problems.append(f"'{name}' is {tensor.dtype}, expected {want.dtype}")
    return problems


def model_state_problems(state: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
    """Missing and unexpected tensors, then tensors whose shape or dtype differs from the module's."""
    report = state_report(state, module)
    problems = [f"missing '{name}'" for name in report.missing]
    problems += [f"unexpected '{name:.200}'" for name in report.unexpected]
    return problems + _fit_problems(state, module)


def check_model_state(
    state: dict[str, torch.Tensor], module: nn.Module, source: Any, hint: str = OTHER_MODEL_HINT
) -> None:
    """Raise one CheckpointError unless ``state`` has exactly ``module``'s tensors, shapes and dtypes."""
    _refuse(source, f"this {type(module).__name__}", model_state_problems(state, module), hint)


def load_model_state(
    module: nn.Module, state: dict[str, torch.Tensor], source: Any, strict: bool = True, hint: str = OTHER_MODEL_HINT
) -> LoadReport:
    """Check ``state`` against ``module`` (:func:`check_model_state`), then load it; ``hint`` ends the error.

    ``strict=False`` loads the tensors that fit and returns the :class:`LoadReport` of those left out; a tensor of
    the module's name but another shape or dtype is refused either way (it cannot be what the name promises)."""
    if strict:
        check_model_state(state, module, source, hint)
        module.load_state_dict(state)
        return LoadReport()
    _refuse(source, f"this {type(module).__name__}", _fit_problems(state, module), OTHER_MODEL_HINT)
    report = state_report(state, module)
    module.load_state_dict({k: v for k, v in state.items() if k not in report.unexpected}, strict=False)
    return report


def group_problems(number: int, saved: dict[str, Any], group: dict[str, Any]) -> list[str]:
    """Numeric settings must be sane; switches (fused, amsgrad, ...) must be the ones this optimizer was built with."""
    problems = []
    for key, (rule, sane) in HYPER_PARAMETERS.items():
        if key in group and not sane(saved.get(key)):
            problems.append(f"parameter group {number}: '{key}' is {saved.get(key)!r:.40}, expected {rule}")
    for key, value in group.items():
        if (value is None or isinstance(value, bool)) and key in saved and saved[key] != value:
            problems.append(f"parameter group {number}: '{key}' is {saved[key]!r:.40}, expected {value!r}")
    return problems


def _step_is_sane(step: torch.Tensor) -> bool:
    if step.dim() != 0 or step.dtype not in STEP_DTYPES:
        return False
    value = step.item()
    return math.isfinite(value) and value >= 0 and value == round(value)


def _parameter_state_problems(
    index: int, values: dict[str, torch.Tensor], param: torch.Tensor, amsgrad: bool
) -> list[str]:
    """AdamW's state of one parameter: a step count and moments shaped and typed like the parameter."""
    fields = (*ADAMW_FIELDS, AMSGRAD_FIELD) if amsgrad else ADAMW_FIELDS
    problems = [f"tensor 'optimizer/{index}/{name}' is missing" for name in fields if name not in values]
    for name, tensor in values.items():
        label = f"tensor 'optimizer/{index}/{name:.100}'"
        if name not in fields:
            problems.append(f"unexpected {label}")
        elif name == "step" and not _step_is_sane(tensor):
            problems.append(f"{label} must be a whole, finite, non-negative float scalar")
        elif name != "step" and tensor.shape != param.shape:
            problems.append(f"{label} has shape {_shape(tensor)}, expected {_shape(param)} like its parameter")
        elif name != "step" and tensor.dtype != param.dtype:
            problems.append(f"{label} is {tensor.dtype}, expected {param.dtype} like its parameter")
    return problems


def optimizer_state_problems(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> list[str]:
    """What keeps ``state`` (as :func:`load_checkpoint` returns it) from being loaded into AdamW ``optimizer``."""
    saved_groups, groups = state["param_groups"], optimizer.param_groups
    if len(saved_groups) != len(groups):
        return [f"{len(saved_groups)} parameter groups, expected {len(groups)}"]
    problems: list[str] = []
    owners: dict[int, tuple[torch.Tensor, dict[str, Any]]] = {}
    for number, (saved, group) in enumerate(zip(saved_groups, groups, strict=True)):
        ids = saved.get("params") if isinstance(saved, dict) else None
        if not isinstance(ids, list) or len(ids) != len(group["params"]) or any(type(i) is not int for i in ids):
            problems.append(f"parameter group {number} does not list {len(group['params'])} parameter indices")
            continue
        owners.update((i, (param, group)) for i, param in zip(ids, group["params"], strict=True))
        problems += group_problems(number, saved, group)
    if not problems and len(owners) != sum(len(group["params"]) for group in groups):
        problems.append("parameter groups list a parameter index twice")
    for index, values in state["state"].items():
        if index not in owners:
            problems.append(f"tensors 'optimizer/{index}/...' belong to no parameter")
            continue
        param, group = owners[index]
        problems += _parameter_state_problems(index, values, param, bool(group.get("amsgrad")))
    return problems


def check_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer, source: Any) -> None:
    """Raise one CheckpointError unless ``state`` is AdamW state for exactly ``optimizer``'s parameters."""
    problems = optimizer_state_problems(state, optimizer)
    _refuse(source, "this run's optimizer", problems, "; was it written for another model or optimizer?")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], source: Any) -> None:
    """Check ``state`` against ``optimizer`` (:func:`check_optimizer_state`), then load it."""
    check_optimizer_state(state, optimizer, source)
    optimizer.load_state_dict(state)


def check_position_fits(position: TrainPosition, steps_per_epoch: int, source: Any) -> None:
    """A run of ``steps_per_epoch`` steps per epoch reaches ``position`` only if step = epoch x steps per epoch +
    step in epoch, with the step in epoch short of a whole epoch; any other position would never finish its epoch."""
    if position.step_in_epoch < steps_per_epoch and position.step == (
        position.epoch * steps_per_epoch + position.step_in_epoch
    ):
        return
    raise CheckpointError(
        f"{source} stands at step {position.step} (epoch {position.epoch}, step {position.step_in_epoch} within "
        f"it), which a run of {steps_per_epoch} steps per epoch never reaches; was it written with another batch "
        "size, accumulation or epoch length?"
    )
