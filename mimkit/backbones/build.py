"""Building an encoder from a method's config: every constructor argument the config has a field for."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from torch import nn

EncoderT = TypeVar("EncoderT", bound=nn.Module)


def encoder_from_config(encoder_class: type[EncoderT], config: Any) -> EncoderT:
    """``encoder_class(**fields)`` with the config fields named like the constructor's parameters (``embed_dim``,
    ``depth``, ``img_size`` ...); parameters the config lacks keep their defaults."""
    return encoder_class(**encoder_arguments(encoder_class, config))


def encoder_arguments(encoder_class: type, config: Any) -> dict[str, Any]:
    """The constructor arguments :func:`encoder_from_config` passes: the config fields the constructor names."""
    parameters = inspect.signature(encoder_class).parameters
    return {name: getattr(config, name) for name in parameters if hasattr(config, name)}
